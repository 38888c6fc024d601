"""Issue 17, its volumes half: `mirror pull --volume-size SIZE` writes the bundle as parts
for media with a size limit, and load, verify, inspect and serve read across the parts.

Generated images are pushed to the real registry with the independent pusher; the parts are
checked against a pull of the same images without volumes (byte for byte), against
sha256sum, and against skopeo reading their concatenation (an oracle that knows nothing of
parts). Broken sets are made by hand (a part removed, cut, changed, renamed, or one too
many) and refused naming the part, with nothing pushed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import tarfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import imagegen as ig
from tests.support.faultproxy import Fault
from tests.support.oracle import (
    check_layout,
    error_line,
    mirror_cmd,
    mirror_env,
    mirror_ok,
    run,
    run_mirror,
    skopeo_copy_ok,
    stopped_mirror,
)
from tests.support.pusher import push_image
from tests.support.registry import Registry, catalog
from tests.test_serve import start_serve, stop_serve

ROOT = Path(__file__).resolve().parents[1]
SIZE = 256 << 10  # --volume-size 256k: a bundle of about 1 MB makes four or five parts


def seed(reg: Registry, repo: str, rng: random.Random, n: int = 2) -> list[str]:
    """`n` images of two 200 KB layers each (random bytes: gzip leaves them as large)."""
    refs = []
    for i in range(n):
        img = ig.make_image(rng, ig.AMD64, "oci", layer_size=200_000)
        push_image(reg.url, f"{repo}/v{i}", img, ["1"])
        refs.append(f"{reg.host}/{repo}/v{i}:1")
    return refs


def pull(out: Path, refs: list[str], cache: Path, *args: object
         ) -> subprocess.CompletedProcess[str]:
    return mirror_ok("pull", *refs, "-o", out, "--cache", cache, *args)


def parts(out: Path) -> list[Path]:
    return sorted(out.parent.glob(out.name + ".[0-9][0-9][0-9]"))


def joined(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in parts(out))


def readme_whole_check(name: str) -> str:
    """README's check of a set of parts as a whole, without joining them, for `name`."""
    [line] = [ln for ln in (ROOT / "README.md").read_text().splitlines()
              if "cat site.tar.0*" in ln and "sha256sum -c" in ln]
    return line.split("#", 1)[0].strip().replace("site.tar", name)


def test_the_readmes_check_of_the_whole_runs_in_sh(tmp_path: Path) -> None:
    """README's `cat site.tar.0* | sha256sum -c ...` line, as written, under /bin/sh (dash
    here, as cron's and many scripts' shell): OK for parts that join to the file
    site.tar.sha256 names, FAILED for a damaged part. It used bash's `<(...)`, which sh
    refuses (Syntax error)."""
    whole = random.Random(7).randbytes(300_000)
    for n, at in enumerate(range(0, len(whole), 128 << 10), 1):
        (tmp_path / f"site.tar.{n:03d}").write_bytes(whole[at:at + (128 << 10)])
    (tmp_path / "site.tar.sha256").write_text(f"{hashlib.sha256(whole).hexdigest()}  site.tar\n")
    check = readme_whole_check("site.tar")
    good = run(["sh", "-c", check], cwd=tmp_path)
    assert good.returncode == 0 and "-: OK" in good.stdout, (good.stdout, good.stderr)
    (tmp_path / "site.tar.002").write_bytes(b"x" + whole[(128 << 10) + 1:256 << 10])
    bad = run(["sh", "-c", check], cwd=tmp_path)
    assert bad.returncode != 0 and "FAILED" in bad.stdout, (bad.stdout, bad.stderr)


def interrupted_pull(when: Callable[[], bool], never: str, *args: object) -> None:
    """`mirror pull ARGS` sent SIGINT as soon as `when()` holds: it must exit 130."""
    proc = stopped_mirror(when, never, "pull", *args)
    assert proc.returncode == 130, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["site.tar", "site.tar.zst"])
def test_parts_concatenate_to_the_plain_bundle(src_registry, repo_name, rng, tmp_path, name):
    """The parts, joined, are byte for byte the bundle a pull without volumes writes; each is
    at most SIZE; the sidecar lists each part's size and sha256 and the whole file's;
    sha256sum checks the parts and (over `cat`) the whole; a rerun says unchanged."""
    refs = seed(src_registry, repo_name, rng)
    plain = tmp_path / "plain" / name
    pull(plain, refs, tmp_path / "cache", "-q")
    out = tmp_path / "media" / name
    pull(out, refs, tmp_path / "cache", "-q", "--volume-size", "256k")
    got = parts(out)
    assert len(got) >= 3 and not out.exists()
    assert all(p.stat().st_size == SIZE for p in got[:-1]) and got[-1].stat().st_size <= SIZE
    whole = plain.read_bytes()
    assert joined(out) == whole
    side = json.loads((out.parent / (name + ".volumes.json")).read_text())
    assert side["size"] == len(whole) and side["volumeSize"] == SIZE
    assert side["sha256"] == hashlib.sha256(whole).hexdigest()
    assert [(p["name"], p["size"], p["sha256"]) for p in side["parts"]] == [
        (p.name, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) for p in got]
    assert (out.parent / (name + ".sha256")).read_text() == \
        (plain.parent / (name + ".sha256")).read_text()
    assert run(["sha256sum", "-c", f"{name}.parts.sha256"], cwd=out.parent).returncode == 0
    assert run(["sh", "-c", readme_whole_check(name)], cwd=out.parent).returncode == 0
    assert not list(out.parent.glob("*.partial"))

    mtimes = [p.stat().st_mtime_ns for p in got]
    again = pull(out, refs, tmp_path / "cache", "--volume-size", "256k")
    if not name.endswith(".zst"):  # the assembler's path says so on stderr
        assert "unchanged" in again.stdout + again.stderr
    assert [p.stat().st_mtime_ns for p in parts(out)] == mtimes

    # another size: the set is written again, the old set's extra parts gone
    pull(out, refs, tmp_path / "cache", "-q", "--volume-size", "512k")
    assert len(parts(out)) < len(got) and joined(out) == whole
    assert json.loads((out.parent / (name + ".volumes.json")).read_text())["volumeSize"] \
        == 512 << 10
    # and back to one file: the parts and their sidecars are removed
    pull(out, refs, tmp_path / "cache", "-q")
    assert out.read_bytes() == whole and parts(out) == []
    assert not (out.parent / (name + ".volumes.json")).exists()


@pytest.mark.slow
def test_load_verify_inspect_serve_and_skopeo_from_parts(src_registry, dst_registry,
                                                         repo_name, rng, tmp_path):
    """The first part, the sidecar, or the base name (only parts there) is the bundle for
    load, verify, inspect and serve; skopeo reads the joined file."""
    refs = seed(src_registry, repo_name, rng)
    out = tmp_path / "site.tar"
    pull(out, refs, tmp_path / "cache", "-q", "--volume-size", "256k")
    first, side = parts(out)[0], tmp_path / "site.tar.volumes.json"
    for given in (first, side, out):
        assert mirror_ok("verify", given).stdout.strip().endswith("OK")
        docs = json.loads(mirror_ok("inspect", given, "--json").stdout)
        assert sorted(d["reference"] for d in docs) == sorted(refs)
    prefix = f"vol-{repo_name.rsplit('-', 1)[-1]}"
    mirror_ok("load", first, "--to", f"{dst_registry.host}/{prefix}", "-q")
    lay = check_layout(_join(out, tmp_path / "joined.tar"))
    for ref in refs:
        repo = ref.split("/", 1)[1].rsplit(":", 1)[0]
        with urllib.request.urlopen(urllib.request.Request(
                f"{dst_registry.url}/v2/{prefix}/{repo}/manifests/1",
                headers={"Accept": ig.OCI_MANIFEST}, method="HEAD")) as r:
            assert r.headers["Docker-Content-Digest"] == lay.entry(ref)["digest"]
        skopeo_copy_ok(tmp_path / "joined.tar", ref, tmp_path / f"sk-{repo.replace('/', '-')}")

    proc, url = start_serve(first, tmp_path / "serve.log")
    try:
        digest = _across(tmp_path / "joined.tar")
        data = lay.blob(digest)
        repo = next(r for r in (ref.split("/", 1)[1].rsplit(":", 1)[0] for ref in refs)
                    if digest in _blobs_of(url, r))
        with urllib.request.urlopen(f"{url}/v2/{repo}/blobs/{digest}") as r:
            assert r.read() == data
        req = urllib.request.Request(f"{url}/v2/{repo}/blobs/{digest}",
                                     headers={"Range": "bytes=1000-199999"})
        with urllib.request.urlopen(req) as r:
            assert r.status == 206 and r.read() == data[1000:200000]
    finally:
        stop_serve(proc, signal.SIGINT)  # its stdout pipe closed too


def _across(tar: Path) -> str:
    """A blob whose bytes start in one part and end in the next."""
    with tarfile.open(tar) as tf:
        for ti in tf:
            first, last = ti.offset_data, ti.offset_data + ti.size - 1
            if ti.isfile() and ti.size > 200_000 and first // SIZE != last // SIZE:
                return "sha256:" + ti.name.rsplit("/", 1)[1]
    raise AssertionError("no blob crosses a part boundary")


def _blobs_of(url: str, repo: str) -> set[str]:
    req = urllib.request.Request(f"{url}/v2/{repo}/manifests/1",
                                 headers={"Accept": ig.OCI_MANIFEST})
    with urllib.request.urlopen(req) as r:
        m = json.load(r)
    return {m["config"]["digest"], *(x["digest"] for x in m["layers"])}


def _join(out: Path, dest: Path) -> Path:
    dest.write_bytes(joined(out))
    return dest


def _break(kind: str, out: Path) -> str:
    """Break the set one way; the name of the part every message must name."""
    ps = parts(out)
    if kind == "missing":
        ps[1].unlink()
        return ps[1].name
    if kind == "truncated":
        with open(ps[1], "r+b") as f:
            f.truncate(SIZE - 1000)
        return ps[1].name
    if kind == "damaged":
        with open(ps[2], "r+b") as f:
            f.seek(5000)
            b = f.read(1)
            f.seek(5000)
            f.write(bytes([b[0] ^ 0xFF]))
        return ps[2].name
    if kind == "reordered":  # parts 1 and 2 swapped by renaming: same sizes, other bytes
        tmp = ps[1].with_name("swap")
        ps[1].rename(tmp)
        ps[2].rename(ps[1])
        tmp.rename(ps[2])
        return ps[1].name
    if kind == "sidecar":  # the parts copied, their list not
        out.with_name(out.name + ".volumes.json").unlink()
        return out.name + ".volumes.json"
    assert kind == "extra"
    extra = out.with_name(f"{out.name}.{len(ps) + 1:03d}")
    shutil.copy(ps[0], extra)
    return extra.name


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "truncated", "damaged", "reordered", "extra",
                                  "sidecar"])
def test_broken_set_is_refused_naming_the_part(src_registry, registry_factory, repo_name, rng,
                                               tmp_path, kind):
    """load refuses the set before pushing anything (exit 10, the part named, the target
    empty); verify says which part to copy again, one line each (exit 7; a set without its
    sidecar is no set: exit 10, naming the sidecar)."""
    refs = seed(src_registry, repo_name, rng)
    out = tmp_path / "site.tar"
    pull(out, refs, tmp_path / "cache", "-q", "--volume-size", "256k")
    first = parts(out)[0]
    named = _break(kind, out)
    target = registry_factory()
    res = run_mirror("load", first, "--to", target.host)
    assert res.returncode == 10, res.stderr
    line = error_line(res)
    assert named in line and line.startswith("mirror: error: "), line
    assert catalog(target) == []
    res = run_mirror("verify", first)
    if kind == "sidecar":  # with the error's hint, as load gives it
        assert res.returncode == 10 and named in res.stdout + res.stderr
        assert "  hint: the sidecar is written beside site.tar.001" in res.stderr, res.stderr
        return
    assert res.returncode == 7, res.stdout + res.stderr
    wrong = [ln for ln in res.stdout.splitlines() if "part " in ln]
    assert any(named in ln for ln in wrong) and all("copy it again" in ln or "extra" in ln
                                                  for ln in wrong), res.stdout
    res = run_mirror("inspect", first)
    if kind in ("missing", "truncated", "extra"):  # inspect checks sizes, not hashes
        assert res.returncode == 10 and named in error_line(res)


@pytest.mark.slow
def test_interrupted_pull_leaves_the_old_set(src_registry, faultproxy, repo_name, rng,
                                             tmp_path):
    """SIGINT in the middle of a pull over an existing set: exit 130, the old parts and
    sidecars as they were, nothing of the new set left (no part, no .partial)."""
    refs = seed(src_registry, repo_name, rng)
    out = tmp_path / "site.tar"
    pull(out, refs, tmp_path / "cache", "-q", "--volume-size", "256k")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    more = seed(src_registry, repo_name + "-more", rng, n=1)
    proxy = faultproxy(src_registry.url)
    stall = proxy.add(Fault("stall", method="GET", path=r"/blobs/", delay=60, times=None))
    moved = [r.replace(src_registry.host, proxy.host) for r in [*refs, *more]]
    interrupted_pull(lambda: stall.hits > 0, "the download did not start", *moved, "-o",
                     out, "--cache", tmp_path / "cache2", "-q", "--volume-size", "200k")
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {n: b for n, b in after.items() if n.startswith("site.tar")} == before
    mirror_ok("verify", parts(out)[0])


def test_volume_size_units_and_presets(src_registry, repo_name, rng, tmp_path):
    """A size that is not one is refused before any work (exit 2); a preset larger than the
    bundle makes one part."""
    refs = seed(src_registry, repo_name, rng, n=1)
    out = tmp_path / "site.tar"
    res = run_mirror("pull", *refs, "-o", out, "--cache", tmp_path / "c", "--volume-size",
                     "4 gigs")
    assert res.returncode == 2 and "--volume-size" in error_line(res)
    res = run_mirror("pull", *refs, "-o", out, "--cache", tmp_path / "c", "--volume-size", "1k")
    assert res.returncode == 2 and "64k" in error_line(res)
    pull(out, refs, tmp_path / "c", "-q", "--volume-size", "fat32")
    assert [p.name for p in parts(out)] == ["site.tar.001"]
    side = json.loads((tmp_path / "site.tar.volumes.json").read_text())
    assert side["volumeSize"] == 4 * 1024**3 - 1


@pytest.mark.slow
def test_incremental_bundle_over_a_base_in_parts(src_registry, dst_registry, repo_name, rng,
                                                 tmp_path):
    """`--base site.tar.001` (a set) is the base as a whole: the new bundle records the
    base's name and whole sha256 (not its first part's) and leaves its blobs out; written as
    parts too, it loads over the base; `-o` the base's own set is refused."""
    refs = seed(src_registry, repo_name, rng)
    base = tmp_path / "site.tar"
    pull(base, refs, tmp_path / "cache", "-q", "--volume-size", "256k")
    more = seed(src_registry, repo_name + "-more", rng, n=1)
    res = run_mirror("pull", *refs, *more, "-o", base, "--cache", tmp_path / "cache",
                     "--base", parts(base)[0], "--volume-size", "256k")
    assert res.returncode == 2 and "--base" in error_line(res), res.stderr
    new = tmp_path / "night.tar"
    pull(new, [*refs, *more], tmp_path / "cache", "-q", "--base", parts(base)[0],
         "--volume-size", "256k")
    inv = json.loads(_member(_join(new, tmp_path / "night-joined.tar"), "mirror.json"))
    whole = json.loads((tmp_path / "site.tar.volumes.json").read_text())["sha256"]
    assert json.dumps(inv).count(whole) == 1 and "site.tar.001" not in json.dumps(inv)
    assert len(joined(new)) < len(joined(base))
    prefix = f"inc-{repo_name.rsplit('-', 1)[-1]}"
    mirror_ok("load", base, "--to", f"{dst_registry.host}/{prefix}", "-q")
    mirror_ok("load", parts(new)[0], "--to", f"{dst_registry.host}/{prefix}", "-q")


def _member(tar: Path, name: str) -> bytes:
    with tarfile.open(tar) as tf:
        f = tf.extractfile(name)
        assert f is not None
        return f.read()


@pytest.mark.slow
def test_pull_stopped_while_cutting_the_parts_leaves_the_old_set(src_registry, repo_name, rng,
                                                                 tmp_path):
    """SIGINT while the new set's parts are being cut (every byte fetched, the bundle whole):
    exit 130, the old set as it was, no part of the new one (no .partial left)."""
    img = ig.make_image(rng, ig.AMD64, "oci", layer_size=12_000_000)
    push_image(src_registry.url, f"{repo_name}/big", img, ["1"])
    refs = [f"{src_registry.host}/{repo_name}/big:1"]
    out = tmp_path / "site.tar"
    pull(out, refs, tmp_path / "cache", "-q", "--volume-size", "1M")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    interrupted_pull(lambda: bool(list(tmp_path.glob("site.tar.[0-9]*.partial"))),
                     "the parts were not cut", *refs, "-o", out, "--cache",
                     tmp_path / "cache", "-q", "--volume-size", "64k")
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before
    mirror_ok("verify", out)


@pytest.mark.parametrize("volume", [[], ["--volume-size", "256k"]], ids=["file", "parts"])
def test_serve_sends_the_served_bundle_after_a_rerun_replaced_it(src_registry, repo_name, rng,
                                                                 tmp_path, volume):
    """A nightly pull rewrites the bundle `mirror serve` is serving (other images, so other
    offsets): every blob it still names is sent with its own bytes (the sha256 its
    Docker-Content-Digest says), from the bundle it opened, never the new file's bytes at
    the old offsets."""
    refs = seed(src_registry, repo_name, rng)
    out = tmp_path / "site.tar"
    pull(out, refs[1:], tmp_path / "cache", "-q", *volume)
    proc, url = start_serve(parts(out)[0] if volume else out, tmp_path / "serve.log")
    try:
        repo = refs[1].split("/", 1)[1].rsplit(":", 1)[0]
        blobs = sorted(_blobs_of(url, repo))
        pull(out, refs, tmp_path / "cache", "-q", *volume)  # v0 first: every offset moves
        for digest in blobs:
            with urllib.request.urlopen(f"{url}/v2/{repo}/blobs/{digest}") as r:
                body = r.read()
                assert r.headers["Docker-Content-Digest"] == digest
            assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    finally:
        stop_serve(proc)


def test_rerun_removes_parts_no_sidecar_lists(src_registry, repo_name, rng, tmp_path):
    """Parts of a set whose sidecar is gone (a pull killed while naming its parts, a sidecar
    deleted) are removed when a rerun names its own, smaller set: the pull's success is a set
    that verify takes (not one every reader refuses for its extra parts), and the next rerun
    says unchanged."""
    refs = seed(src_registry, repo_name, rng)
    out = tmp_path / "site.tar"
    pull(out, refs, tmp_path / "cache", "-q", "--volume-size", "256k")
    assert len(parts(out)) > 2
    (tmp_path / "site.tar.volumes.json").unlink()
    (tmp_path / "site.tar.009.partial").write_bytes(b"left by a killed run")
    pull(out, refs, tmp_path / "cache", "-q", "--volume-size", "512k")
    listed = json.loads((tmp_path / "site.tar.volumes.json").read_text())["parts"]
    assert [p.name for p in parts(out)] == [p["name"] for p in listed] and len(listed) == 2
    assert not (tmp_path / "site.tar.009.partial").exists()
    assert mirror_ok("verify", out).stdout.strip().endswith("OK")
    assert "unchanged" in pull(out, refs, tmp_path / "cache", "--volume-size", "512k").stderr


def test_a_file_size_limit_says_where_the_parts_are_cut(src_registry, repo_name, rng,
                                                       tmp_path):
    """The output's file system takes files smaller than the bundle (FAT32's 4 GiB - 1, here
    `ulimit -f`): the pull fails naming the bundle's partial file (exit 1, nothing named),
    and says the whole bundle is written before the parts are cut, and what to do."""
    refs = seed(src_registry, repo_name, rng)
    out = tmp_path / "usb" / "site.tar"
    res = run(["prlimit", f"--fsize={600 << 10}", *mirror_cmd(
        "pull", *refs, "-o", out, "--cache", tmp_path / "cache", "-q", "--volume-size",
        "256k")], cwd=ROOT, env=mirror_env())
    assert res.returncode == 1 and "site.tar.partial: File too large" in error_line(res)
    assert "hint:" in res.stderr and "copy the parts to the medium" in res.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == []


def test_a_full_disk_while_cutting_the_parts_names_the_part(src_registry, repo_name, rng,
                                                            tmp_path, small_disk):
    """The disk has room for the new bundle but not for one part more, which cutting it
    needs: the pull said `site.tar.partial: No space left on device`, a file the user never
    sees, while the file that could not be written was the part being cut. It names that
    part now; still exit 1, the old set as it was, nothing of the new one left."""
    refs = seed(src_registry, repo_name, rng)
    plain = tmp_path / "plain" / "site.tar"
    pull(plain, refs, tmp_path / "cache", "-q")
    whole = plain.stat().st_size  # the new set's bundle, whatever its parts
    volume = (whole * 6 // 10) & ~4095  # two parts; the second, cut first, 0.4 of it
    disk = small_disk(4 << 20)
    out = disk / "site.tar"
    pull(out, refs[:1], tmp_path / "cache", "-q", "--volume-size", "256k")
    before = {p.name: p.read_bytes() for p in disk.iterdir()}
    st = os.statvfs(disk)
    room = whole + whole // 5  # the bundle fits, and half of the part cut first
    (disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - room))
    res = run(mirror_cmd("pull", *refs, "-o", out, "--cache", tmp_path / "cache", "-q",
                         "--volume-size", volume), cwd=ROOT, env=mirror_env())
    assert res.returncode == 1, res.stderr
    line = error_line(res)
    assert f"{out}.002: " in line and "No space left on device" in line, line
    assert ".partial" not in line and "room for the bundle and one part more" in line, line
    after = {p.name: p.read_bytes() for p in disk.iterdir() if p.name != "filler"}
    assert after == before
    mirror_ok("verify", out)


def test_serve_of_tar_zst_parts_says_how_to_join_them(src_registry, repo_name, rng, tmp_path):
    """serve refuses a .tar.zst given as parts (exit 10) with a command that decompresses
    the parts' concatenation (`zstd -d site.tar.zst.001` reads the first part alone and
    fails); that command's tar is then served."""
    refs = seed(src_registry, repo_name, rng, n=1)
    out = tmp_path / "site.tar.zst"
    pull(out, refs, tmp_path / "cache", "-q", "--volume-size", "64k")
    res = run_mirror("serve", parts(out)[0], "--listen", "127.0.0.1:0")
    assert res.returncode == 10 and "cannot be read at random" in error_line(res)
    command = res.stderr.split("`")[1]
    assert command.startswith("cat ") and f"{out}.0*" in command, res.stderr
    subprocess.run(command, shell=True, check=True, cwd=tmp_path)
    proc, _ = start_serve(tmp_path / "site.tar", tmp_path / "serve.log")
    assert stop_serve(proc) == 143


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_unchanged_rerun_restores_the_parts_sha256(src_registry, repo_name, rng, tmp_path,
                                                   damage):
    """A rerun that finds the set unchanged (the parts checked against the sidecar) writes
    OUT.parts.sha256 again when it is gone or damaged: `sha256sum -c` on it, the README's
    first check on the far side, works after every successful pull."""
    refs = seed(src_registry, repo_name, rng)
    out = tmp_path / "site.tar"
    pull(out, refs, tmp_path / "cache", "-q", "--volume-size", "256k")
    sums = tmp_path / "site.tar.parts.sha256"
    good = sums.read_bytes()
    if damage == "missing":
        sums.unlink()
    else:
        sums.write_text("garbage\n")
    assert "unchanged" in pull(out, refs, tmp_path / "cache", "--volume-size", "256k").stderr
    assert sums.read_bytes() == good
    assert run(["sha256sum", "-c", sums.name], cwd=tmp_path).returncode == 0


def test_an_extra_part_is_found_whatever_the_bundle_is_named(src_registry, repo_name, rng,
                                                              tmp_path):
    """A base name with glob characters (`site[1].tar`): an extra part beside the set is
    still named (verify exit 7, load exit 10 before any push), as for `site.tar`."""
    refs = seed(src_registry, repo_name, rng, n=1)
    out = tmp_path / "site[1].tar"
    pull(out, refs, tmp_path / "cache", "-q", "--volume-size", "128k")
    named = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("site[1].tar.0"))
    assert len(named) > 1
    extra = tmp_path / f"site[1].tar.{len(named) + 1:03d}"
    shutil.copy(tmp_path / named[-1], extra)
    res = run_mirror("verify", tmp_path / named[0])
    assert res.returncode == 7 and extra.name in res.stdout, res.stdout + res.stderr
    res = run_mirror("load", tmp_path / named[0], "--to", "127.0.0.1:9", "-q")
    assert res.returncode == 10 and extra.name in error_line(res)


def test_a_renamed_set_is_refused_saying_so(src_registry, repo_name, rng, tmp_path):
    """Every file of a set renamed (site.tar.* -> night.tar.*): load and verify refuse it
    (exit 10) saying the set was renamed and the names to give back, not 'not a valid list
    of parts', with the error's hint (verify's too); renamed back, it verifies."""
    refs = seed(src_registry, repo_name, rng, n=1)
    out = tmp_path / "site.tar"
    pull(out, refs, tmp_path / "cache", "-q", "--volume-size", "128k")
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in tmp_path.glob("site.tar.*"):
        f.rename(moved / f.name.replace("site.tar", "night.tar", 1))
    for cmd in ("verify", "load"):
        res = run_mirror(cmd, moved / "night.tar.001", "--to", "127.0.0.1:9", "-q") \
            if cmd == "load" else run_mirror(cmd, moved / "night.tar.001")
        assert res.returncode == 10, res.stderr
        said = res.stdout + res.stderr
        assert "renamed" in said and "site.tar.volumes.json" in said, said
        assert "  hint: the names are written inside the sidecars" in res.stderr, (cmd, said)
    for f in moved.iterdir():
        f.rename(moved / f.name.replace("night.tar", "site.tar", 1))
    mirror_ok("verify", moved / "site.tar.001")


def test_bundles_named_in_sequence_are_not_taken_for_parts(src_registry, dst_registry,
                                                           repo_name, rng, tmp_path):
    """`-o night.001`, then `-o night.002` (bundles numbered by night, no --volume-size):
    each is a bundle of its own with its .sha256, which verify, load and a rerun read as one
    (they were refused as parts of a set 'night' without its night.volumes.json)."""
    refs = seed(src_registry, repo_name, rng)
    first, second = tmp_path / "night.001", tmp_path / "night.002"
    pull(first, refs[:1], tmp_path / "cache", "-q")
    pull(second, refs[1:], tmp_path / "cache", "-q")
    for out in (first, second):
        assert mirror_ok("verify", out).stdout.strip().endswith("OK")
    prefix = f"seq-{repo_name.rsplit('-', 1)[-1]}"
    mirror_ok("load", second, "--to", f"{dst_registry.host}/{prefix}", "-q")
    assert f"{prefix}/{refs[1].split('/', 1)[1].rsplit(':', 1)[0]}" in catalog(dst_registry)
    assert "unchanged" in pull(second, refs[1:], tmp_path / "cache").stderr


def test_a_pull_removes_no_bundle_named_like_a_part(src_registry, repo_name, rng, tmp_path):
    """Bundles of their own named like parts of the output (site.tar.001 with its .sha256,
    an archived night) survive a pull to site.tar, with or without --volume-size."""
    refs = seed(src_registry, repo_name, rng, n=1)
    kept = tmp_path / "site.tar.007"
    pull(kept, refs, tmp_path / "cache", "-q")
    before = kept.read_bytes()
    pull(tmp_path / "site.tar", refs, tmp_path / "cache", "-q")
    pull(tmp_path / "site.tar", refs, tmp_path / "cache", "-q", "--volume-size", "128k")
    assert kept.read_bytes() == before
    mirror_ok("verify", kept)


def test_a_first_part_alone_is_said_to_be_one_part_of_a_set(src_registry, repo_name, rng,
                                                             tmp_path):
    """A set's first part copied alone under another name (renamed.001: no other part, no
    sidecar, no .sha256 beside it): verify, load and inspect said 'truncated: the tar ends
    in the middle of the archive', as if a bundle were cut short; they say it is one part of
    a set without its other parts and sidecar, and what to give instead (exit 10)."""
    refs = seed(src_registry, repo_name, rng, n=1)
    pull(tmp_path / "site.tar", refs, tmp_path / "cache", "-q", "--volume-size", "128k")
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("renamed.001", "site.tar.001"):
        shutil.copy(tmp_path / "site.tar.001", alone / name)
        base = name.rsplit(".", 1)[0]
        for cmd in (["verify"], ["load", "--to", "127.0.0.1:9", "-q"], ["inspect"]):
            res = run_mirror(cmd[0], alone / name, *cmd[1:])
            assert res.returncode == 10, (cmd, res.stderr)
            said = res.stdout + error_line(res)  # verify's problems go to stdout
            assert "truncated" not in said and "one part of a set" in said, (cmd, said)
            assert f"{base}.volumes.json" in said, (cmd, said)
            assert "  hint: give the set's first part with every part and its sidecar " \
                   "beside it" in res.stderr, (cmd, res.stderr)
    # a bundle really cut short, named as no part is, is still 'truncated'
    cut = alone / "cut.tar"
    cut.write_bytes((tmp_path / "site.tar.001").read_bytes())
    res = run_mirror("verify", cut)
    assert res.returncode == 10 and "truncated" in res.stdout, res.stdout + res.stderr
