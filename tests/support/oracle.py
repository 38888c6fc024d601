"""Independent checks of a bundle (Python's tarfile + hashlib only, nothing from mirror/), and
helpers to run the CLI and skopeo as subprocesses.

    layout = check_layout(bundle_path)        # raises AssertionError naming what is wrong
    layout.members, layout.index, layout.inventory, layout.manifests, layout.blob(digest)
    skopeo_copy_ok(bundle_path, ref_name, dest_dir)
    proc = run_mirror("pull", "127.0.0.1:5000/app:1", "-o", out, "--cache", cache)

`check_layout` reads a `.tar` or a `.tar.zst` (zstd magic) in one streaming pass and asserts:
only regular files and directories, relative names, no member twice; `oci-layout` is
`{"imageLayoutVersion": "1.0.0"}`; every `blobs/<alg>/<hex>` hashes to its name; every
index.json entry (and every referrer entry mirror.json lists: signatures, SBOMs and
attestations live there, not in index.json) names a blob of that size; every manifest
reachable from them has its config, layers and children in the tar at the declared size,
unless mirror.json lists the digest under "absent"; every path manifest.json (Docker's save
format) names is a blob in the tar.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository: `python -m mirror` runs from it
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
KEEP_BYTES = 4 << 20  # members up to this size are kept in memory (manifests, configs, JSON)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
IMAGE_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


@dataclass
class Layout:
    """What `check_layout` saw: member names in tar order, digests, and the small files."""

    members: list[str] = field(default_factory=list)  # every member name, in tar order
    sizes: dict[str, int] = field(default_factory=dict)  # file member name -> size
    sha256: dict[str, str] = field(default_factory=dict)  # file member name -> "sha256:<hex>"
    data: dict[str, bytes] = field(default_factory=dict)  # small file members' bytes
    index: dict[str, Any] = field(default_factory=dict)
    inventory: dict[str, Any] | None = None  # mirror.json, when present
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)  # digest -> parsed

    @property
    def entries(self) -> list[dict[str, Any]]:
        """index.json's entries and the referrer entries mirror.json lists."""
        return [*self.index["manifests"], *((self.inventory or {}).get("referrers") or [])]

    @property
    def blob_digests(self) -> set[str]:
        return {_digest_of(n) for n in self.sizes if _digest_of(n)}  # type: ignore[misc]

    @property
    def absent(self) -> dict[str, str]:
        return dict((self.inventory or {}).get("absent") or {})

    def blob(self, digest: str) -> bytes:
        return self.data[_blob_name(digest)]

    def entry(self, name: str) -> dict[str, Any]:
        """The index.json (or mirror.json referrer) entry whose ref.name is `name`."""
        for e in self.entries:
            if (e.get("annotations") or {}).get("org.opencontainers.image.ref.name") == name:
                return e
        raise AssertionError(f"no index.json entry named {name!r}: {self.entry_names()}")

    def entry_names(self) -> list[str]:
        return [(e.get("annotations") or {}).get("org.opencontainers.image.ref.name", "")
                for e in self.entries]


def _blob_name(digest: str) -> str:
    alg, _, hexpart = digest.partition(":")
    return f"blobs/{alg}/{hexpart}"


def _digest_of(name: str) -> str | None:
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "blobs":
        return f"{parts[1]}:{parts[2]}"
    return None


def _open_tar(path: Path, stack: list[Any]) -> tarfile.TarFile:
    with open(path, "rb") as f:
        magic = f.read(4)
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller through `stack`
    stack.append(raw)
    if magic == ZSTD_MAGIC:
        import zstandard

        zr = zstandard.ZstdDecompressor().stream_reader(raw)
        stack.append(zr)
        return tarfile.open(fileobj=zr, mode="r|")
    return tarfile.open(fileobj=raw, mode="r|")


def read_layout(path: Path | str) -> Layout:
    """One streaming pass over the tar: names, sizes, sha256 of every file, small bytes."""
    path = Path(path)
    out = Layout()
    stack: list[Any] = []
    try:
        tf = _open_tar(path, stack)
        with tf:
            for ti in tf:
                out.members.append(ti.name)
                if ti.isdir():
                    continue
                assert ti.isreg(), f"{path}: member {ti.name!r} is not a regular file"
                assert ti.name not in out.sizes, f"{path}: member {ti.name!r} appears twice"
                f = tf.extractfile(ti)
                assert f is not None
                h = hashlib.sha256()
                keep = bytearray() if ti.size <= KEEP_BYTES else None
                n = 0
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    n += len(chunk)
                    if keep is not None:
                        keep += chunk
                assert n == ti.size, f"{path}: member {ti.name!r} is truncated"
                out.sizes[ti.name] = ti.size
                out.sha256[ti.name] = "sha256:" + h.hexdigest()
                if keep is not None:
                    out.data[ti.name] = bytes(keep)
    finally:
        for obj in reversed(stack):
            obj.close()
    return out


def check_layout(bundle_path: Path | str) -> Layout:
    """Assert the bundle is a sound OCI image layout tar (see the module docstring)."""
    path = Path(bundle_path)
    lay = read_layout(path)
    for name in lay.members:
        norm = posixpath.normpath(name)
        assert not name.startswith("/") and not norm.startswith(".."), f"unsafe name {name!r}"
    assert "oci-layout" in lay.data, f"{path}: no oci-layout"
    assert json.loads(lay.data["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}, \
        f"{path}: oci-layout is {lay.data['oci-layout']!r}"
    assert "index.json" in lay.data, f"{path}: no index.json"
    lay.index = json.loads(lay.data["index.json"])
    assert lay.index.get("schemaVersion") == 2, f"{path}: index.json schemaVersion"
    assert isinstance(lay.index.get("manifests"), list), f"{path}: index.json has no manifests"
    if "mirror.json" in lay.data:
        lay.inventory = json.loads(lay.data["mirror.json"])
    for name in lay.sizes:
        digest = _digest_of(name)
        if digest is None:
            assert name in ("oci-layout", "index.json", "mirror.json", "manifest.json"), \
                f"{path}: unexpected member {name!r}"
            continue
        assert digest.startswith("sha256:"), f"{path}: {name}: only sha256 is expected"
        assert lay.sha256[name] == digest, \
            f"{path}: {name} hashes to {lay.sha256[name]}, not to its name"
    absent = lay.absent

    def need(desc: dict[str, Any], by: str) -> bool:
        """True if the blob is in the tar (size checked); False if absent on purpose."""
        digest, size = desc["digest"], desc["size"]
        name = _blob_name(digest)
        if name in lay.sizes:
            assert lay.sizes[name] == size, \
                f"{path}: {digest} has {lay.sizes[name]} bytes, {by} says {size}"
            return True
        assert digest in absent, f"{path}: {digest} (needed by {by}) is missing"
        return False

    for item in json.loads(lay.data.get("manifest.json", b"[]")):
        for member in [item["Config"], *item["Layers"]]:
            assert member in lay.sizes, f"{path}: manifest.json names {member!r}, not in the tar"
    todo = [(e, "index.json") for e in lay.entries]
    for e, _ in todo:
        assert _blob_name(e["digest"]) in lay.sizes, \
            f"{path}: index.json names {e['digest']}, which is not in the tar"
    while todo:
        desc, by = todo.pop()
        digest = desc["digest"]
        if digest in lay.manifests or not need(desc, by):
            continue
        body = json.loads(lay.blob(digest))
        lay.manifests[digest] = body
        media_type = body.get("mediaType") or desc.get("mediaType")
        if media_type in INDEX_TYPES or "manifests" in body:
            todo.extend((c, f"index {digest}") for c in body["manifests"])
        else:
            assert media_type in IMAGE_TYPES or "config" in body, \
                f"{path}: {digest} is neither a manifest nor an index"
            need(body["config"], f"manifest {digest}")
            for layer in body.get("layers") or []:
                if layer.get("urls") and layer["digest"] in absent:
                    continue
                need(layer, f"manifest {digest}")
    return lay


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def resolved(lock_path: Path | str) -> dict[str, Any]:
    """A lock file's resolution (what `mirror lock` records): all but the `bundle` a pull's
    lock file names besides."""
    doc = json.loads(Path(lock_path).read_text())
    doc.pop("bundle", None)
    return dict(doc)


def run(cmd: list[str], *, timeout: float = 180, cwd: Path | str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def mirror_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "mirror", *(str(a) for a in args)]


def mirror_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    return env


def run_mirror(*args: object, cwd: Path | str | None = None,
               timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`python -m mirror ARGS` as a subprocess (real exit code), from `cwd` (default: ROOT)."""
    return run(mirror_cmd(*args), timeout=timeout, cwd=cwd or ROOT, env=mirror_env())


def mirror_ok(*args: object, cwd: Path | str | None = None,
              timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """run_mirror, asserting exit code 0 (the message shows stdout and stderr)."""
    proc = run_mirror(*args, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, (
        f"mirror {' '.join(map(str, args))} exited {proc.returncode}\n"
        f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


# Python code (SIG: a signal's name, defined before it) that sends its own process SIG as the
# interpreter tears its modules down, 0.2 s before the process goes on: a stop in a run's last
# milliseconds, after Python's finalization has given the signals handled in Python their
# default action back (its _PySignal_Fini). The object whose __del__ sends it is freed when
# the module holding it goes; its class is made apart (exec), so that no function of that
# module ties its globals into a cycle, which the collector would not free: mirror's
# gc.freeze() leaves the objects of the start-up alone to the end
STOP_AS_IT_LEAVES = (  # SIG and LEFT (a path) set before it
    "import os, signal, sys, time\n"
    "_exit, _kill, _pid = os._exit, os.kill, os.getpid()\n"
    "def _leaving(code):\n"
    "    open(LEFT, 'w').close()\n"
    "    _kill(_pid, getattr(signal, SIG))\n"
    "    time.sleep(0.2)\n"
    "    _exit(code)\n"
    "os._exit = _leaving\n")


def stop_as_it_leaves(sig: str, left: Path) -> str:
    """Setup code for a `mirror` child (its main() with the command line's flags) that sends
    it `sig` as it leaves (mirror.cli._leave: its report written, its pools and threads
    done, os._exit next), 0.2 s before it goes; `left` is made then (the moment came)."""
    return f"SIG = {sig!r}\nLEFT = {str(left)!r}\n" + STOP_AS_IT_LEAVES


def env_stopped_as_it_leaves(sig: signal.Signals, where: Path) -> dict[str, str]:
    """mirror_env() for a `python -m mirror` sent `sig` as it leaves: stop_as_it_leaves as
    a sitecustomize in `where`, first on PYTHONPATH; `where / "left"` made then."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "sitecustomize.py").write_text(stop_as_it_leaves(sig.name, where / "left"))
    env = mirror_env()
    env["PYTHONPATH"] = f"{where}{os.pathsep}{env['PYTHONPATH']}"
    return env


def stopped_mirror(when: Callable[[], bool], never: str, *args: object,
                   sig: signal.Signals = signal.SIGINT, after: float = 0.0
                   ) -> subprocess.CompletedProcess[str]:
    """`python -m mirror ARGS` sent `sig` once `when()` holds (and `after` seconds more);
    its exit code and stderr. `never`: the failure's message should `when()` not hold within
    60 s, or the run end before."""
    proc = subprocess.Popen(mirror_cmd(*args), cwd=ROOT, env=mirror_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not when():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else never
            assert time.monotonic() < deadline, never
            time.sleep(0.01)
        time.sleep(after)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


def damaging(proxy: Any, held: str, stored: Path, *args: object, at: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    """`python -m mirror ARGS` (a run of two images through `proxy`, a
    tests.support.faultproxy.FaultProxy), the manifest GET of repository `held`'s tag 1
    held there until `stored`, a manifest in the cache's store that the run stored and
    released (RawManifest.release), has been damaged: after planning read it, before the
    run reads it back (a pull's bundle head, a sync's PUT). `at`: the path (a regex) of
    the GET held instead, one the run sends between the two (an image's config before its
    conversion reads the manifest, a platform's manifest before the filtered index is
    made). Its exit code and output."""
    from .faultproxy import Fault

    stall = proxy.add(Fault("stall", method="GET", path=at or rf"/v2/{held}/manifests/1$",
                            delay=3))
    proc = subprocess.Popen(mirror_cmd(*args), env=mirror_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (stored.exists() and stall.hits):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        stored.write_bytes(stored.read_bytes().replace(b"{", b" {", 1))  # same digest named
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def manifest_gone(proxy: Any, digest: str) -> Any:
    """`proxy`'s every GET of manifest `digest` answered 404 (a registry that no longer
    serves it): the fault, whose hits count them."""
    from .faultproxy import Fault

    return proxy.add(Fault("status", method="GET", path=f"/manifests/{digest}", status=404,
                           code="MANIFEST_UNKNOWN", times=None))


def tag_unserved(proxy: Any, repo: str, tag: str, kind: str) -> Any:
    """`proxy`'s every GET of `repo:tag` answered as a target that does not serve what the tag
    holds (its HEAD still says it does): `kind` "404" (MANIFEST_UNKNOWN) or "damaged" (a
    byte of the body flipped, Docker-Content-Digest as stored). The fault."""
    from .faultproxy import Fault

    path = rf"/v2/{repo}/manifests/{tag}$"
    if kind == "404":
        return proxy.add(Fault("status", method="GET", path=path, status=404,
                               code="MANIFEST_UNKNOWN", times=None))
    return proxy.add(Fault("flip_byte", method="GET", path=path, offset=40, times=None))


def lost_for_good(done: subprocess.CompletedProcess[str], digest: str, gone: Any,
                  hits: int = 1) -> None:
    """A run whose manifest `digest`, lost in the cache's store, was asked for again once and
    not served (`gone`: manifest_gone's fault, `hits` GETs of it in all): exit 7
    (integrity), the one error line naming the manifest, the cache's damage and the 404, no
    traceback."""
    assert done.returncode == 7, done.stderr
    line = error_line(done)
    assert digest in line and "no longer in the cache's store" in line, line
    assert "404" in line and gone.hits == hits, (line, gone.hits)
    assert "Traceback" not in done.stderr, done.stderr


def damaged_on_read(digest: str, *args: object) -> subprocess.CompletedProcess[str]:
    """`python -m mirror ARGS`, manifest `digest` damaged in the cache's store as the run
    first reads it back after storing it (tests.support.damage): a read that follows its
    GET with no request between. Its exit code and output."""
    return run([sys.executable, "-m", "tests.support.damage", digest.split(":", 1)[1],
                *(str(a) for a in args)], timeout=180, cwd=ROOT, env=mirror_env())


@contextlib.contextmanager
def downloading(proxy: Any, *args: object, finish: bool = True
                ) -> Iterator[subprocess.Popen[str]]:
    """`mirror ARGS` in the background, given back once it is downloading a blob through
    `proxy` (a tests.support.faultproxy.FaultProxy whose blob bodies the test slowed): the
    run holds its locks then. On leaving, it is waited for (`finish`: it must exit 0) or
    killed."""
    proc = subprocess.Popen(mirror_cmd(*args), env=mirror_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not any("/blobs/" in p for _, p, _ in proxy.requests):
            assert proc.poll() is None, f"the run ended first: {proc.communicate()[1]}"
            assert time.monotonic() < deadline, "the run never started downloading"
            time.sleep(0.05)
        yield proc
        if finish:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def skopeo(*args: object, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = run(["skopeo", *args], timeout=timeout)
    assert proc.returncode == 0, f"skopeo {' '.join(map(str, args))}: {proc.stderr}"
    return proc


def skopeo_copy_ok(bundle: Path | str, ref: str, dest_dir: Path | str,
                   all_: bool = True) -> Path:
    """`skopeo copy [--all] oci-archive:BUNDLE:REF oci:DEST_DIR:REF`; assert it succeeds and
    that the copied layout is sound; return DEST_DIR."""
    dest = Path(dest_dir)
    args = ["copy", *(["--all"] if all_ else []), f"oci-archive:{bundle}:{ref}",
            f"oci:{dest}:{ref}"]
    skopeo(*args)
    assert (dest / "oci-layout").is_file() and (dest / "index.json").is_file(), \
        f"skopeo wrote no layout in {dest}"
    for blob in (dest / "blobs" / "sha256").iterdir():
        assert file_sha256(blob) == f"sha256:{blob.name}", f"{blob} does not match its name"
    return dest


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert a finished command exited 0 (the message shows its output)."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one `mirror: error:` line a failed run must print."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mirror: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]
