"""The bundle matrix for the sinks that read bundles: verify, inspect, serve and the runtimes.

tests/test_matrix.py covers pull -> load; this file covers every other reader a user points
at a bundle. Its sources are test_matrix's (a Docker manifest list and an OCI index, three
platforms sharing a layer, a cosign signature tag and an OCI 1.1 SBOM with `subject` each;
the OCI index also with a BuildKit attestation; tag 2 gives amd64 a new layer), pushed with
tests/support alone. Each setting pulls a plain bundle (tag 1) and an incremental one (tags 1
and 2, `--base` the first bundle or its lock file). The settings are a pairwise covering design
over `--format keep|oci|docker`, platforms (all; a subset as a filtered index; a subset as a
sparse index), referrers (carried; `--no-referrers`), the container (`.tar`, `.tar.zst`, a
`.tar` cut in parts with `--volume-size`) and the base (the bundle; its lock file): 9 settings
instead of the product's 108 (test_the_design_covers_every_pair checks the pairs), each of them
both plain and incremental. Every bundle is checked, against its own bytes (read by
tests.support.oracle, nothing from mirror/) and against the source registry, by the readers
below (of parts, README's three names: verify gets the first part, inspect the sidecar, serve
the base name):

- `mirror verify`: exit 0; one byte changed in one blob, and in index.json (inside a tag, so
  the JSON stays whole and only `BUNDLE.sha256` covers it): exit 7, naming the blob, the
  file's sha256 and, for parts, the part to copy again;
- `mirror inspect --json`: every digest it names is a blob of the bundle, or labelled absent
  (a sparse index's other platforms; what the base carried, then a blob of the base bundle),
  and the source serves it (or, for a filtered or converted manifest, the source digest it
  labels);
- `mirror serve` (a `.tar` and parts, half of them under `--prefix`; a `.tar.zst` is
  refused, exit 10, as README says): HEAD/GET `Docker-Content-Digest` and `skopeo inspect
  --raw` of every tag and platform manifest (the bundle's bytes), HEAD of every blob it
  holds, `skopeo copy docker://... oci:DIR` of every tag (or, of a sparse index, every
  platform it holds; an incremental bundle's base blobs are BLOB_UNKNOWN naming the base
  instead), `_catalog` and `tags/list`, every referrer by digest and through the referrers
  API (its artifactType, the filter) or its cosign tag, `mirror inspect REFERENCE`, and
  `mirror pull` from serve with the setting's own flags giving the same digests;
- skopeo's `oci-archive:B.tar:REF` (the `.tar` settings): `inspect --raw` and `copy` of each
  OCI-typed image (of a sparse index, the host's platform), the bundle's digests; a
  Docker-typed one not found and an incremental bundle's image failing on a blob its base
  carried, as README says of Debian's skopeo 1.9;
- the runtimes, for each `.tar` and `.tar.zst` setting (README: "Using a bundle without a
  registry"): `docker load`, `podman load` and `ctr images import` of the plain bundle, then
  of the incremental one (after its base, as README says ctr needs), each image's ID or
  digest the bundle's for this amd64 host; a `.tar.zst` as it is to podman, through
  `zstd -dc` to docker and ctr, which refuse it as it is; a sparse index that carries the
  host's platform imported by ctr, and refused with `--all-platforms`; manifest.json's images
  alone (none, for an incremental bundle whose images all use the base's blobs) loaded by
  docker and podman with exit 0.

The settings run three at a time (their pulls, verify, inspect and serve); the runtimes,
one dockerd and one containerd (test_runtimes' fixtures) and one podman root for the module,
take the `.tar` bundles after them, in turn.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import subprocess
import tarfile
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import imagegen as ig
from tests.support.oracle import Layout, check_layout, error_line, run, run_mirror
from tests.support.pusher import PushError, blob_exists, get_manifest
from tests.support.registry import Registry
from tests.support.runtimes import CTR, DOCKER, Containerd, Dockerd, Podman
from tests.test_matrix import (
    FORMATS,
    PLATFORMS,
    SUBSET,
    Source,
    _expect_pull,
    _pull,
    _repo,
    run_settings,
    seed_source,
)
from tests.test_runtimes import containerd, dockerd  # noqa: F401 - the module's daemons
from tests.test_serve import http, start_serve, stop_serve

pytestmark = pytest.mark.slow  # the whole matrix: minutes

CONTAINERS = ("tar", "zst", "parts")
INTEGRITY, BUNDLE = 7, 10
VOLUME = "64k"  # the smallest --volume-size
OWN = 70_000  # each platform's own layer: every bundle in parts has two parts or more
REF = "org.opencontainers.image.ref.name"
SUBJECT = "dev.mirror.referrer.subject"
HOST_PLATFORM = "linux/amd64"  # what the runtimes here unpack and tag


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Setting:
    fmt: str
    platforms: str
    referrers: bool
    container: str
    base_is_lock: bool

    @property
    def id(self) -> str:
        return (f"{self.fmt}-{self.platforms}-{'refs' if self.referrers else 'norefs'}-"
                f"{self.container}-{'lock' if self.base_is_lock else 'bundle'}")

    @property
    def zst(self) -> bool:  # test_matrix._pull's name for the container
        return self.container == "zst"

    def flags(self) -> list[str]:
        out = ["--format", self.fmt, "--keep-going"]
        if self.platforms != "all":
            out += ["--platform", SUBSET, "--index", self.platforms]
        if self.container == "parts":
            out += ["--volume-size", VOLUME]
        return out + ([] if self.referrers else ["--no-referrers"])


def _design() -> list[Setting]:
    """An orthogonal array OA(9, 3^4) (columns a, b, a+b, a+2b mod 3; the last folded to two
    levels for the referrers) and a two-level column for the base found to cover its pairs."""
    base = (0, 1, 1, 0, 0, 1, 1, 0, 0)
    rows = [(a, b, (a + b) % 3, (a + 2 * b) % 3) for a in range(3) for b in range(3)]
    return [Setting(FORMATS[a], PLATFORMS[b], d != 1, CONTAINERS[c], bool(base[i]))
            for i, (a, b, c, d) in enumerate(rows)]


SETTINGS = _design()


@pytest.fixture(scope="module")
def source(src_registry: Registry) -> Source:
    return seed_source(src_registry, "sinks", OWN)


# -- one bundle and what each reader must say of it ------------------------------------------

@dataclass
class Built:
    """A bundle as the readers get it (`path`: the file, or a parts set's first part), and a
    single file of it for the oracle (`whole`: the parts joined)."""

    setting: Setting
    name: str  # "one" (plain) or "two" (incremental)
    path: Path
    whole: Path
    layout: Layout
    refs: list[str]  # the source references the pull asked for and got
    base: Built | None = None
    base_arg: Path | None = None

    @property
    def what(self) -> str:
        return f"{self.setting.id} {self.name}"

    def given(self, kind: str) -> Path:
        """What a reader is given: of parts (README: any of the three), the first part to
        verify, the sidecar to inspect, the base name to serve; else the file."""
        if self.setting.container != "parts":
            return self.path
        base = self.path.with_suffix("")
        return {"verify": self.path, "inspect": base.with_name(base.name + ".volumes.json"),
                "serve": base}[kind]


@dataclass
class Outcome:
    setting: Setting
    problems: list[str] = field(default_factory=list)
    checked: int = 0
    runtimes: list[Built] = field(default_factory=list)  # .tar, .tar.zst: in load order


def _build(s: Setting, src: Source, work: Path, name: str, tags: tuple[str, ...],
           out: Outcome, base: Built | None) -> Built:
    extra: list[object] = ["--lock-file", work / f"{name}.lock"]
    base_arg = None
    if base is not None:
        base_arg = work / "one.lock" if s.base_is_lock else base.path
        extra += ["--base", base_arg]
    bundle, report, proc = _pull(s, src, work, name, tags, *extra)
    _expect_pull(s, proc, report, out)
    path, whole = bundle, bundle
    if s.container == "parts":
        parts = sorted(bundle.parent.glob(bundle.name + ".0*"))
        assert len(parts) >= 2, f"{s.id}: {bundle.name} is {len(parts)} part(s)"
        path, whole = parts[0], work / f"{name}.joined.tar"
        whole.write_bytes(b"".join(p.read_bytes() for p in parts))
        want = bundle.with_name(bundle.name + ".sha256").read_text().split()[0]
        assert sha(whole.read_bytes()) == "sha256:" + want, f"{s.id}: parts joined"
    refs = [img["reference"] for img in report["images"] if not img["error"]]
    return Built(s, name, path, whole, check_layout(whole), refs, base, base_arg)


class Checks:
    """Collects what each reader says wrong of one bundle; asks the source once a digest."""

    def __init__(self, b: Built, src: Registry, out: Outcome) -> None:
        self.b, self.src, self.out = b, src, out
        self._source: dict[tuple[str, str, str], bool] = {}
        self.prefix = ""  # serve's --prefix

    def at(self, ref: str) -> str:
        """Where serve (and load) puts a source reference's repository."""
        return f"{self.prefix}/{_repo(ref)}" if self.prefix else _repo(ref)

    def problem(self, line: str) -> None:
        self.out.problems.append(f"{self.b.what}: {line}"[:600])

    def expect(self, ok: bool, line: str) -> None:
        self.out.checked += 1
        if not ok:
            self.problem(line)

    def source_has(self, repo: str, digest: str, kind: str) -> bool:
        key = (repo, digest, kind)
        if key not in self._source:
            if kind == "blob":
                self._source[key] = blob_exists(self.src.url, repo, digest)
            else:
                try:
                    body, _, _ = get_manifest(self.src.url, repo, digest)
                    self._source[key] = sha(body) == digest
                except PushError:
                    self._source[key] = False
        return self._source[key]


# -- mirror verify ---------------------------------------------------------------------------

def _copy_bundle(b: Built, where: Path) -> Path:
    """The bundle's files (its parts and sidecars, or the file and its .sha256), copied into
    `where` under their own names: what the reader gets there."""
    where.mkdir()
    for f in b.path.parent.iterdir():
        stem = b.path.name.rsplit(".", 1)[0] if b.setting.container == "parts" else b.path.name
        if f.name.startswith(stem) and not f.name.endswith(".lock"):
            shutil.copy(f, where / f.name)
    return where / b.path.name


def _flip(b: Built, copy: Path, offset: int) -> None:
    """Change one byte at `offset` of the bundle's tar (the joined parts' or the .tar.zst's
    decompressed tar), in the copy: the part that holds it, or the file recompressed."""
    if b.setting.container == "parts":
        part = copy.parent / f"{copy.name[:-4]}.{offset // 65536 + 1:03d}"
        offset %= 65536
    elif b.setting.container == "zst":
        part = copy.with_suffix("")  # x.tar
        run(["zstd", "-q", "-d", "-f", str(copy), "-o", str(part)])
    else:
        part = copy
    with open(part, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))
    if b.setting.container == "zst":
        run(["zstd", "-q", "-f", "--rm", str(part), "-o", str(copy)])


def _members(b: Built) -> dict[str, tarfile.TarInfo]:
    """The bundle's tar members, with their offsets (a .tar.zst's in its decompressed tar)."""
    tar = b.whole
    if b.setting.container == "zst":
        tar = b.whole.with_name(b.whole.name + ".plain.tar")
        if not tar.exists():
            with open(tar, "wb") as f:
                subprocess.run(["zstd", "-q", "-dc", str(b.whole)], stdout=f, check=True)
    with tarfile.open(tar) as tf:
        return {m.name: m for m in tf}


def check_verify(c: Checks, work: Path) -> None:
    b = c.b
    proc = run_mirror("verify", b.given("verify"))
    c.expect(proc.returncode == 0, f"verify: exit {proc.returncode}: {proc.stderr[-800:]}")
    members = _members(b)
    layer = next(m for n, m in reversed(members.items()) if n.startswith("blobs/") and m.isfile()
                 and n.split("/")[-1] not in {d.split(":")[1] for d in b.layout.manifests})
    index = members["index.json"]
    data = b.layout.data["index.json"]
    ref = data.index(f'"{REF}":"'.encode())
    tag_end = data.index(b'"', ref + len(REF) + 4) - 1  # the last character of a tag
    for what, offset in (("blob", layer.offset_data + layer.size // 2),
                         ("index.json", index.offset_data + tag_end)):
        copy = _copy_bundle(b, work / f"tamper-{b.name}-{what.split('.')[0]}")  # not named
        # index.json itself, which verify's lines must name
        _flip(b, copy, offset)
        bad = run_mirror("verify", copy)
        said = bad.stdout + bad.stderr
        c.expect(bad.returncode == INTEGRITY, f"verify of a changed {what}: exit "
                 f"{bad.returncode}, not 7: {said[-800:]}")
        c.expect(f"does not match {copy.parent / copy.name.split('.0')[0]}.sha256" in said
                 if b.setting.container == "parts" else f"does not match {copy}.sha256" in said,
                 f"verify of a changed {what} does not name the .sha256: {said[-800:]}")
        named = f"blob sha256:{layer.name.split('/')[-1]}" if what == "blob" else "index.json"
        c.expect(named in said, f"verify of a changed {what} does not name it: {said[-800:]}")
        if b.setting.container == "parts":
            c.expect("damaged" in said and "copy it again" in said,
                     f"verify of a changed part does not name it: {said[-800:]}")


# -- mirror inspect --json -------------------------------------------------------------------

def _inspected(c: Checks, doc: dict[str, Any], repo: str, what: str) -> None:
    b, digest = c.b, doc["digest"]
    if doc.get("absent"):  # a sparse index's other platform: the source's, not carried
        c.expect(b.setting.platforms == "sparse" and digest not in b.layout.blob_digests,
                 f"{what}: {digest} labelled absent ({doc['absent']!r})")
        c.expect(c.source_has(repo, digest, "manifest"), f"{what}: absent {digest}: not the "
                 "source's")
        return
    c.expect(digest in b.layout.manifests, f"{what}: manifest {digest} not in the bundle")
    replaced = doc.get("sourceDigest") or doc.get("convertedFrom")
    c.expect(c.source_has(repo, replaced or digest, "manifest"),
             f"{what}: {'labelled source ' if replaced else ''}manifest {replaced or digest} "
             "not served by the source")
    if doc.get("referrerOf"):
        c.expect(doc["referrerOf"] in b.layout.manifests, f"{what}: referrerOf "
                 f"{doc['referrerOf']} not in the bundle")
    if doc.get("referrerOfSource"):
        c.expect(c.source_has(repo, doc["referrerOfSource"], "manifest"),
                 f"{what}: referrerOfSource {doc['referrerOfSource']} not the source's")
    for blob in [doc["config"], *(doc.get("layers") or [])] if doc.get("config") else []:
        _blob(c, blob, repo, what)
    if doc.get("config"):
        _diff_ids(c, doc, what)
    for m in doc.get("manifests") or []:
        _inspected(c, m, repo, f"{what} > {m.get('platform')}")


def _blob(c: Checks, blob: dict[str, Any], repo: str, what: str) -> None:
    b, digest, absent = c.b, blob["digest"], blob.get("absent")
    if absent == "base":
        c.expect(b.base is not None and digest in b.base.layout.blob_digests
                 and digest not in b.layout.blob_digests,
                 f"{what}: {digest} labelled in the base, which does not carry it")
    else:
        c.expect(absent is None and digest in b.layout.blob_digests,
                 f"{what}: blob {digest} not in the bundle (absent: {absent!r})")
    c.expect(c.source_has(repo, digest, "blob"), f"{what}: blob {digest} not the source's")


def _diff_ids(c: Checks, doc: dict[str, Any], what: str) -> None:
    """The diff_ids inspect shows are those of the config; none for a config left to the
    base bundle (inspect reads this bundle alone)."""
    digest = doc["config"]["digest"]
    if digest not in c.b.layout.blob_digests:
        c.expect("diffIds" not in doc, f"{what}: diffIds of a config it does not hold")
        return
    ids = (json.loads(c.b.layout.blob(digest)).get("rootfs") or {}).get("diff_ids")
    if ids is not None:
        c.expect(doc.get("diffIds") == ids, f"{what}: diffIds {doc.get('diffIds')}, the "
                 f"config's {ids}")


def check_inspect(c: Checks) -> None:
    proc = run_mirror("inspect", c.b.given("inspect"), "--json")
    if proc.returncode:
        c.problem(f"inspect: exit {proc.returncode}: {proc.stderr[-800:]}")
        return
    docs = json.loads(proc.stdout)
    roots = {d["digest"] for d in docs if not d.get("referrerOf") and
             not d.get("referrerOfSource")}
    c.expect(roots == {e["digest"] for e in c.b.layout.index["manifests"]},
             f"inspect shows {sorted(roots)}, index.json has others")
    for doc in docs:
        _inspected(c, doc, _repo(doc["reference"]), f"inspect {doc['reference']}")


# -- mirror serve ----------------------------------------------------------------------------

def _children(lay: Layout, digest: str) -> list[str]:
    """The platform manifests (and attestations) an index in the bundle lists and holds."""
    doc = lay.manifests[digest]
    return [m["digest"] for m in doc.get("manifests") or [] if m["digest"] in lay.manifests]


def _serve_manifests(c: Checks, host: str, repo: str, tag: str, digest: str) -> None:
    lay = c.b.layout
    for ref, want in [(tag, digest), *((d, d) for d in _children(lay, digest))]:
        url = f"http://{host}/v2/{repo}/manifests/{ref}"
        for method in ("HEAD", "GET"):
            status, headers, body = http(url, method, headers={"Accept": ig.ACCEPT})
            c.expect(status == 200 and headers.get("Docker-Content-Digest") == want and
                     (method == "HEAD" or sha(body) == want),
                     f"serve {method} {repo}:{ref}: {status} {headers.get('Docker-Content-Digest')}"
                     f", not {want}")
        sep = ":" if ref == tag else "@"
        raw = run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                   f"docker://{host}/{repo}{sep}{ref}"])
        c.expect(raw.returncode == 0 and sha(raw.stdout.encode()) == want,
                 f"skopeo inspect --raw {repo}{sep}{ref}: {raw.stderr[-300:]}")


def _skopeo_copy(c: Checks, host: str, repo: str, ref: str, want: str, dest: Path) -> None:
    """skopeo copy into oci:DEST: an OCI-typed manifest keeps its digest and every blob is the
    bundle's; a Docker-typed one skopeo (Debian's 1.9) converts, config too: its layers are
    the bundle's (`skopeo inspect --raw` has checked the manifests' bytes)."""
    lay = c.b.layout
    argv = ["skopeo", "copy", "--src-tls-verify=false", f"docker://{host}/{repo}{ref}",
            f"oci:{dest}:x"]
    proc = run(argv[:2] + ["--all"] + argv[2:] if ref.startswith(":") else argv)
    if proc.returncode:
        c.problem(f"skopeo copy {repo}{ref}: {proc.stderr[-400:]}")
        return
    (entry,) = json.loads((dest / "index.json").read_text())["manifests"]
    copied = {f"sha256:{p.name}": p.read_bytes() for p in (dest / "blobs/sha256").iterdir()}
    c.expect(all(sha(v) == k for k, v in copied.items()), f"skopeo copy {repo}{ref}: damaged")
    oci = json.loads(lay.blob(want)).get("mediaType", ig.OCI_MANIFEST).startswith(
        "application/vnd.oci")
    if oci:
        c.expect(entry["digest"] == want, f"skopeo copy {repo}{ref}: {entry['digest']}, not "
                 f"{want}")
        c.expect(set(copied) <= lay.blob_digests, f"skopeo copy {repo}{ref}: blobs not the "
                 f"bundle's: {sorted(set(copied) - lay.blob_digests)}")
    for d in [want] if "config" in lay.manifests[want] else _children(lay, want):
        m = lay.manifests[d]  # skopeo's conversion rewrites a Docker config: the layers stay
        for blob in ([m["config"]] if oci else []) + m.get("layers", []):
            c.expect(blob["digest"] in copied, f"skopeo copy {repo}{ref}: no {blob['digest']}")


def _referrers(c: Checks, host: str) -> None:
    """Every referrer the bundle carries: by digest, and by the referrers API of its subject
    (one with a `subject`: its artifactType too, and the `?artifactType=` filter) or by its
    cosign tag (a signature without one)."""
    lay = c.b.layout
    for e in (lay.inventory or {}).get("referrers") or []:
        subject = e["annotations"][SUBJECT]
        repo = c.at(e["annotations"][REF])
        status, _, body = http(f"http://{host}/v2/{repo}/manifests/{e['digest']}",
                               headers={"Accept": ig.ACCEPT})
        c.expect(status == 200 and sha(body) == e["digest"],
                 f"serve {repo}@{e['digest']}: {status}")
        doc = lay.manifests[e["digest"]]
        if "subject" in doc:
            _referrer_listed(c, f"http://{host}/v2/{repo}/referrers/{subject}", e["digest"],
                             doc.get("artifactType") or doc["config"]["mediaType"])
        else:
            tag = subject.replace(":", "-") + ".sig"
            status, headers, _ = http(f"http://{host}/v2/{repo}/manifests/{tag}", "HEAD",
                                      headers={"Accept": ig.ACCEPT})
            c.expect(status == 200 and headers.get("Docker-Content-Digest") == e["digest"],
                     f"serve cosign tag {repo}:{tag}: {status}, not {e['digest']}")


def _referrer_listed(c: Checks, url: str, digest: str, kind: str) -> None:
    for query in ("", "?artifactType=" + urllib.parse.quote(kind)):
        status, _, body = http(url + query)
        listed = {m["digest"]: m.get("artifactType") for m in json.loads(body)["manifests"]} \
            if status == 200 else {}
        c.expect(listed.get(digest, "") == kind, f"serve referrers {url}{query}: {status}, "
                 f"{listed}: not {digest} ({kind})")
    status, _, body = http(f"{url}?artifactType=application/x-none")
    c.expect(status == 200 and json.loads(body)["manifests"] == [],
             f"serve referrers {url}?artifactType=application/x-none: {status} {body[:200]!r}")


def _blobs_served(c: Checks, host: str, repo: str, digest: str) -> None:
    """HEAD of every config and layer of the image the bundle holds: its size and digest."""
    lay = c.b.layout
    for d in [digest, *_children(lay, digest)]:
        m = lay.manifests[d]
        for blob in [m["config"], *m["layers"]] if "config" in m else []:
            if blob["digest"] not in lay.blob_digests:
                continue  # the base's: _copies asks for one
            status, headers, _ = http(f"http://{host}/v2/{repo}/blobs/{blob['digest']}",
                                      "HEAD")
            c.expect(status == 200 and headers.get("Docker-Content-Digest") == blob["digest"]
                     and headers.get("Content-Length") == str(blob["size"]),
                     f"serve HEAD blob {repo}@{blob['digest']}: {status} {headers}")


def _pulled_again(c: Checks, host: str, work: Path) -> None:
    """`mirror pull` from serve, with the setting's own flags (and base): the same images."""
    b, s = c.b, c.b.setting
    lay = b.layout
    refs = [f"{host}/{c.at(r)}:{r.rsplit(':', 1)[1]}" for r in b.refs]
    again = work / f"again-{b.name}.tar"
    flags = [f for f in s.flags() if f not in ("--volume-size", VOLUME)]
    extra = ["--base", b.base_arg] if b.base_arg else []
    proc = run_mirror("pull", *refs, "-o", again, "--cache", work / "again-cache", "-q",
                      "--insecure-registry", host, *flags, *extra)
    if proc.returncode:
        c.problem(f"mirror pull from serve: exit {proc.returncode}: {proc.stderr[-600:]}")
        return
    got = check_layout(again)
    by_tag = {e["annotations"][REF].split("/", 1)[1]: e["digest"] for e in got.index["manifests"]}
    want = {f"{c.at(e['annotations'][REF])}:{e['annotations'][REF].rsplit(':', 1)[1]}":
            e["digest"] for e in lay.index["manifests"]}
    c.expect(by_tag == want, f"mirror pull from serve: {by_tag}, not the bundle's {want}")
    c.expect(got.blob_digests <= lay.blob_digests, "mirror pull from serve: blobs not the "
             f"bundle's: {sorted(got.blob_digests - lay.blob_digests)}")
    # a referrer whose subject the bundle holds is found again (through serve's referrers
    # API or cosign tag); one keyed to a source digest the bundle replaced cannot be
    mine = {e["digest"] for e in (lay.inventory or {}).get("referrers") or []
            if e["annotations"][SUBJECT] in lay.manifests}
    theirs = {e["digest"] for e in (got.inventory or {}).get("referrers") or []}
    c.expect(mine <= theirs, f"mirror pull from serve: referrers {sorted(mine - theirs)} "
             "not found")


def check_serve(c: Checks, work: Path) -> None:
    b = c.b
    if b.setting.container == "zst":  # README: refused, exit 10, with what to do
        proc = run_mirror("serve", b.path, "--listen", "127.0.0.1:0")
        c.expect(proc.returncode == BUNDLE and "cannot be read at random" in proc.stderr and
                 f"zstd -d {b.path}" in proc.stderr,
                 f"serve of a .tar.zst: exit {proc.returncode}: {proc.stderr[-400:]}")
        if proc.returncode == BUNDLE:
            error_line(proc)
        return
    # half the bundles under a --prefix, each setting one of its two
    c.prefix = "px" if (SETTINGS.index(b.setting) + (b.base is None)) % 2 else ""
    proc, url = start_serve(b.given("serve"), work / f"serve-{b.name}.log", "-q",
                            *(["--prefix", c.prefix] if c.prefix else []))
    host = url.split("://", 1)[1]
    try:
        for e in b.layout.index["manifests"]:
            ref = e["annotations"][REF]
            repo, tag = c.at(ref), ref.rsplit(":", 1)[1]
            _serve_manifests(c, host, repo, tag, e["digest"])
            _copies(c, host, repo, tag, e["digest"], work)
            _inspect_served(c, host, repo, tag, e["digest"])
            _blobs_served(c, host, repo, e["digest"])
        _listed(c, host)
        _referrers(c, host)
        _pulled_again(c, host, work)
    finally:
        code = stop_serve(proc)
    c.expect(code == 143, f"serve stopped with exit {code}, not 143")


def _configs(lay: Layout, digest: str) -> list[str]:
    return [lay.manifests[d]["config"]["digest"] for d in [digest, *_children(lay, digest)]
            if "config" in lay.manifests[d]]


def _listed(c: Checks, host: str) -> None:
    """_catalog and tags/list: the bundle's repositories and tags (the images' and the cosign
    signatures'), each under serve's names."""
    tags: dict[str, set[str]] = {}
    lay = c.b.layout
    for e in [*lay.index["manifests"], *((lay.inventory or {}).get("referrers") or [])]:
        ref = e["annotations"][REF]
        tagged = tags.setdefault(c.at(ref), set())
        if "@" not in ref.split("/", 1)[1]:
            tagged.add(ref.rsplit(":", 1)[1])
    status, _, body = http(f"http://{host}/v2/_catalog")
    got = json.loads(body).get("repositories") if status == 200 else status
    c.expect(got == sorted(tags), f"serve _catalog: {got}, not {sorted(tags)}")
    for repo, want in tags.items():
        status, _, body = http(f"http://{host}/v2/{repo}/tags/list")
        listed = json.loads(body).get("tags") if status == 200 else status
        c.expect(listed == sorted(want), f"serve tags/list {repo}: {listed}, not {sorted(want)}")


def _inspect_served(c: Checks, host: str, repo: str, tag: str, digest: str) -> None:
    """`mirror inspect REFERENCE` of what serve answers: the bundle's digests (of a sparse
    index, the platforms it holds: `--platform`); of an incremental bundle, the configs the
    base carried are BLOB_UNKNOWN naming the base bundle (exit 5)."""
    subset = ["--platform", SUBSET] if c.b.setting.platforms == "sparse" else []
    proc = run_mirror("inspect", f"{host}/{repo}:{tag}", "--json", "--insecure-registry", host,
                      *subset)
    if c.b.base is not None and any(d not in c.b.layout.blob_digests for d in
                                    _configs(c.b.layout, digest)):
        c.expect(proc.returncode == 5 and "BLOB_UNKNOWN" in proc.stderr and
                 f"its base bundle ({c.b.base.path.name.split('.0')[0]}" in proc.stderr,
                 f"inspect {repo}:{tag} from serve: exit {proc.returncode}: "
                 f"{proc.stderr[-400:]}")
        return
    lay = c.b.layout
    lacks = [m["digest"] for m in lay.manifests[digest].get("manifests") or []
             if m["digest"] not in lay.manifests and m.get("platform", {}).get("os") in
             ("linux", "unknown") and m["platform"]["architecture"] in ("amd64", "arm64",
                                                                        "unknown")]
    if lacks:  # a sparse index left behind its attestations (--no-referrers): inspect, which
        # shows them, asks serve for one and stops, naming it
        c.expect(proc.returncode == 5 and "MANIFEST_UNKNOWN" in proc.stderr and
                 any(d in proc.stderr for d in lacks),
                 f"inspect {repo}:{tag} from serve: exit {proc.returncode}: "
                 f"{proc.stderr[-400:]}")
        return
    if proc.returncode:
        c.problem(f"inspect {host}/{repo}:{tag}: exit {proc.returncode}: {proc.stderr[-400:]}")
        return
    (doc,) = [d for d in json.loads(proc.stdout) if d["digest"] == digest] or [None]
    c.expect(doc is not None, f"inspect {repo}:{tag} from serve: not {digest}")
    shown = {m["digest"]: (m.get("config") or {}).get("digest")
             for m in (doc or {}).get("manifests") or []}
    want = {d: lay.manifests[d].get("config", {}).get("digest") for d in _children(lay, digest)}
    c.expect(shown == want, f"inspect {repo}:{tag} from serve: {shown}, not {want}")


def _copies(c: Checks, host: str, repo: str, tag: str, digest: str, work: Path) -> None:
    b = c.b
    dest = work / f"copy-{b.name}-{repo.replace('/', '-')}-{tag}"
    if b.base is not None:  # an incremental bundle: the base's blobs name the base bundle
        lay = b.layout
        gone = next((d for d in (lay.inventory or {}).get("blobs", {})
                     if d not in lay.blob_digests), None)
        if gone is None:
            return
        status, _, body = http(f"http://{host}/v2/{repo}/blobs/{gone}")
        c.expect(status == 404 and "BLOB_UNKNOWN" in body.decode() and
                 b.base.path.name.split(".0")[0] in body.decode(),
                 f"serve of a base blob: {status} {body[:300]!r}")
        return
    if b.setting.platforms != "sparse":
        _skopeo_copy(c, host, repo, ":" + tag, digest, dest)
        return
    for i, d in enumerate(_children(b.layout, digest)):  # a sparse index: what it holds
        _skopeo_copy(c, host, repo, "@" + d, d, dest.with_name(f"{dest.name}-{i}"))


# -- skopeo's oci-archive: ------------------------------------------------------------------

def check_oci_archive(c: Checks, work: Path) -> None:
    """`skopeo inspect --raw` and `skopeo copy oci-archive:B.tar:REF` (README's consumer table:
    Debian's skopeo 1.9 sees OCI-typed entries only, and fails on an image of an incremental
    bundle that uses a blob its base carried, `no such file or directory`)."""
    b, lay = c.b, c.b.layout
    for i, e in enumerate(lay.index["manifests"]):
        src = f"oci-archive:{b.path}:{e['annotations'][REF]}"
        raw = run(["skopeo", "inspect", "--raw", src])
        if not e["mediaType"].startswith("application/vnd.oci."):
            c.expect(raw.returncode != 0 and "no descriptor found for reference" in raw.stderr,
                     f"skopeo inspect --raw {src}: {raw.returncode} {raw.stderr[-300:]}")
            continue
        c.expect(raw.returncode == 0 and sha(raw.stdout.encode()) == e["digest"],
                 f"skopeo inspect --raw {src}: {raw.stderr[-300:]}")
        sparse = b.setting.platforms == "sparse"  # --all would need what it left out
        dest = work / f"archive-{b.name}-{i}"
        copy = run(["skopeo", "copy", *([] if sparse else ["--all"]), src, f"oci:{dest}:x"])
        if any(d not in lay.blob_digests for d in _blobs_of(lay, e["digest"])):
            c.expect(copy.returncode != 0 and "no such file or directory" in copy.stderr,
                     f"skopeo copy {src} (blobs in the base): {copy.returncode} "
                     f"{copy.stderr[-300:]}")
            continue
        want = _host_manifest(lay, e["digest"]) if sparse else e["digest"]
        got = json.loads((dest / "index.json").read_text())["manifests"][0]["digest"] \
            if copy.returncode == 0 else copy.stderr[-300:]
        c.expect(got == want, f"skopeo copy {src}: {got}, not {want}")


def _blobs_of(lay: Layout, digest: str) -> list[str]:
    """The configs and layers of the images an index in the bundle holds."""
    return [blob["digest"] for d in [digest, *_children(lay, digest)]
            for blob in ([lay.manifests[d]["config"], *lay.manifests[d]["layers"]]
                         if "config" in lay.manifests[d] else [])]


def _host_manifest(lay: Layout, digest: str) -> str:
    (entry,) = [m for m in lay.manifests[digest]["manifests"]
                if "{os}/{architecture}".format(**m.get("platform", {})) == HOST_PLATFORM]
    return entry["digest"]


# -- one setting ---------------------------------------------------------------------------

def run_setting(s: Setting, src: Source, work: Path) -> Outcome:
    out = Outcome(s)
    work.mkdir(parents=True)
    try:
        _run_setting(s, src, work, out)
    except AssertionError as e:  # the other settings go on
        out.problems.append(f"{s.id}: {e}")
    return out


def _run_setting(s: Setting, src: Source, work: Path, out: Outcome) -> None:
    one = _build(s, src, work, "one", ("1",), out, None)
    two = _build(s, src, work, "two", ("1", "2"), out, one)
    for b in (one, two):
        c = Checks(b, src.reg, out)
        check_verify(c, work)
        check_inspect(c)
        check_serve(c, work)
        if s.container == "tar":
            check_oci_archive(c, work)
    if s.container != "parts":  # README: join the parts first (cat), then as a .tar
        out.runtimes = [one, two]


@pytest.fixture(scope="module")
def outcomes(source: Source, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    return run_settings(SETTINGS, run_setting, source, tmp_path_factory.mktemp("sinks"))


def test_the_design_covers_every_pair() -> None:
    levels = {"fmt": FORMATS, "platforms": PLATFORMS, "referrers": (True, False),
              "container": CONTAINERS, "base_is_lock": (True, False)}
    for x, y in itertools.combinations(levels, 2):
        seen = {(getattr(s, x), getattr(s, y)) for s in SETTINGS}
        assert seen == set(itertools.product(levels[x], levels[y])), (x, y)
    assert len(SETTINGS) == 9


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.id)
def test_verify_inspect_and_serve_read_every_bundle(outcomes: dict[str, Outcome],
                                                    setting: Setting) -> None:
    out = outcomes[setting.id]
    assert not out.problems, "\n".join(out.problems)
    assert out.checked > 50, out.checked


# -- the runtimes -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    p = Podman(tmp_path_factory.mktemp("podman"))
    yield p
    p.stop()


def _host_config(lay: Layout, digest: str) -> str:
    """The config digest of the image a runtime on this host takes from the root `digest`."""
    doc = lay.manifests[digest]
    if "config" in doc:
        return doc["config"]["digest"]
    return lay.manifests[_host_manifest(lay, digest)]["config"]["digest"]


def _piped(argv: list[Any], b: Built) -> subprocess.CompletedProcess[str]:
    """`zstd -dc B.tar.zst | ARGV` (README: how docker and ctr 1.6 take a .tar.zst)."""
    with subprocess.Popen(["zstd", "-dc", str(b.path)], stdout=subprocess.PIPE) as z:
        proc = subprocess.run([str(a) for a in argv], stdin=z.stdout, capture_output=True,
                              text=True, timeout=300)
    assert z.returncode == 0, f"{b.what}: zstd -dc exited {z.returncode}"
    return proc


def _docker_load(docker: Dockerd, b: Built) -> subprocess.CompletedProcess[str]:
    if b.setting.container == "tar":
        return docker.cli("load", "-i", b.path, check=False)
    direct = docker.cli("load", "-i", b.path, check=False)  # README: it reads no zstd
    assert direct.returncode != 0 and "invalid tar header" in direct.stderr, \
        f"{b.what}: docker load -i of a .tar.zst: {direct.returncode} {direct.stderr}"
    return _piped([DOCKER, "-H", f"unix://{docker.sock}", "load"], b)


def _ctr_import(ctrd: Containerd, b: Built, *args: str) -> subprocess.CompletedProcess[str]:
    if b.setting.container == "tar":
        return ctrd.import_(b.path, *args, check=False)
    return _piped([CTR, "--address", ctrd.sock, "images", "import", "--snapshotter",
                   "native", *args, "-"], b)


def _check_docker_like(name: str, b: Built, proc: subprocess.CompletedProcess[str],
                       image: Callable[[str], dict[str, Any]]) -> None:
    """docker load / podman load: manifest.json's images, each tag's ID its amd64 config; an
    incremental bundle whose images all use the base's blobs lists none, and loads nothing
    with exit 0 (README)."""
    listed = json.loads(b.layout.data["manifest.json"])
    for item in listed:
        for part in [item["Config"], *item["Layers"]]:
            assert part in b.layout.sizes, f"{b.what}: manifest.json names {part}, not carried"
    assert proc.returncode == 0, f"{b.what}: {name} load: {proc.stderr}"
    by_tag = {t: item["Config"] for item in listed for t in item["RepoTags"] or []}
    for e in b.layout.index["manifests"]:
        ref = e["annotations"][REF]
        if ref not in by_tag:
            continue
        got = image(ref)["Id"]
        want = _host_config(b.layout, e["digest"])
        assert want.endswith(got.split(":")[-1]), f"{b.what}: {name}: {ref} is {got}, not {want}"
    if not listed:
        assert b.base is not None, f"{b.what}: manifest.json lists nothing"


def _check_ctr(ctrd: Containerd, b: Built) -> None:
    """ctr import (a .tar.zst through zstd -dc: README says ctr 1.6 reads no zstd), the base
    bundle imported before an incremental one; of a sparse index, `--all-platforms` fails on
    the platform left out, and this host's platform, which it carries, imports."""
    if b.setting.container == "zst":
        direct = ctrd.import_(b.path, check=False)
        assert direct.returncode != 0 and "invalid tar header" in direct.stderr, \
            f"{b.what}: ctr import of a .tar.zst: {direct.returncode} {direct.stderr}"
    if b.setting.platforms == "sparse":
        every = _ctr_import(ctrd, b, "--all-platforms")
        assert every.returncode != 0 and "not found" in every.stderr, \
            f"{b.what}: ctr import --all-platforms of a sparse index: {every.stderr}"
    imported = _ctr_import(ctrd, b)
    assert imported.returncode == 0, f"{b.what}: ctr import: {imported.stderr}"
    images = ctrd.images()
    for e in b.layout.index["manifests"]:
        ref = e["annotations"][REF]
        assert images[ref]["digest"] == e["digest"], (b.what, ref, images.get(ref))
        config = _host_config(b.layout, e["digest"])
        assert sha(ctrd.blob(config)) == config, (b.what, ref)


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.container != "parts"],
                         ids=lambda s: s.id)
def test_the_runtimes_open_the_bundles(outcomes: dict[str, Outcome], setting: Setting,
                                       dockerd, containerd, podman) -> None:  # noqa: F811
    """Each .tar and .tar.zst setting's plain bundle, then its incremental one, in docker,
    podman (a .tar.zst as it is) and ctr (README: Using a bundle without a registry)."""
    for b in outcomes[setting.id].runtimes:  # the base first, as README says ctr needs
        _check_docker_like("docker", b, _docker_load(dockerd, b), dockerd.image)
        _check_docker_like("podman", b, podman.cli("load", "-i", b.path, check=False),
                           podman.image)
        _check_ctr(containerd, b)
