"""Issue 2 acceptance: bad input gets a one-line error naming the file, image or registry, the
documented exit code (mirror/errors.py), and pushes nothing.

Broken bundles are derived from one good bundle by rewriting the tar with `tarfile` (a member
dropped, a byte flipped, a link, a device or a `../` path added); each load goes to its own
repository prefix at the target, which must have no tags afterwards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import signal
import socket
import socketserver
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import imagegen as ig
from tests.support.oracle import ROOT, check_layout, mirror_cmd, mirror_env, mirror_ok, run_mirror
from tests.support.pusher import list_tags, push_image
from tests.support.registry import Registry

EXIT = {"usage": 2, "registry": 3, "not-found": 5, "integrity": 7, "bundle": 10}


@dataclass
class Good:
    bundle: Path
    repo: str  # source repository; a load puts it at PREFIX/repo
    ref: str
    index: ig.Index


@pytest.fixture(scope="module")
def good(src_registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Good:
    rng = random.Random("test_bad_input")
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, "oci")
    repo = f"test/bad-input-{uuid.uuid4().hex[:8]}"
    push_image(src_registry.url, repo, index, ["v1"])
    ref = f"{src_registry.host}/{repo}:v1"
    tmp = tmp_path_factory.mktemp("good")
    bundle = tmp / "good.tar"
    mirror_ok("pull", ref, "-o", bundle, "--cache", tmp / "cache", "-q")
    check_layout(bundle)
    return Good(bundle, repo, ref, index)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single `mirror: error:` line (a `hint:` line may follow); no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mirror: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def fails(code: str, *args: object, cwd: Path | None = None) -> str:
    proc = run_mirror(*args, cwd=cwd)
    assert proc.returncode == EXIT[code], (
        f"mirror {' '.join(map(str, args))}: exit {proc.returncode}, wanted {EXIT[code]}\n"
        f"{proc.stderr}")
    return error_line(proc)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


def layer_member(good: Good) -> str:
    return "blobs/sha256/" + good.index.images[0].layers[0].digest.split(":", 1)[1]


Edit = Callable[[tarfile.TarInfo, bytes | None], tuple[tarfile.TarInfo, bytes | None] | None]


def rewrite(src: Path, dst: Path, edit: Edit | None = None,
            extra: tuple[tuple[tarfile.TarInfo, bytes | None], ...] = ()) -> Path:
    """Copy the tar member by member (names kept); `edit` may drop (None) or change one."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for ti in tin:
            f = tin.extractfile(ti) if ti.isreg() else None
            data = f.read() if f is not None else None
            item = edit(ti, data) if edit else (ti, data)
            if item is None:
                continue
            ti, data = item
            tout.addfile(ti, io.BytesIO(data) if data is not None else None)
        for ti, data in extra:
            tout.addfile(ti, io.BytesIO(data) if data is not None else None)
    return dst


def assert_nothing_pushed(dst_registry: Registry, prefix: str, good: Good) -> None:
    assert list_tags(dst_registry.url, f"{prefix}/{good.repo}") == []


def load_fails(code: str, bundle: Path, dst_registry: Registry, good: Good) -> str:
    prefix = f"bad-{uuid.uuid4().hex[:8]}"
    err = fails(code, "load", bundle, "--to", f"{dst_registry.host}/{prefix}", "--retries", "1")
    assert str(bundle) in err, err
    assert_nothing_pushed(dst_registry, prefix, good)
    return err


def verify_fails(bundle: Path) -> str:
    proc = run_mirror("verify", bundle)
    assert proc.returncode in (EXIT["integrity"], EXIT["bundle"]), proc.stdout + proc.stderr
    error_line(proc)
    return proc.stdout


# -- broken bundles ------------------------------------------------------------------------


def test_not_a_tar(good: Good, dst_registry: Registry, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(random.Random(1).randbytes(4096))
    err = load_fails("bundle", junk, dst_registry, good)
    assert "tar" in err
    verify_fails(junk)
    zst = tmp_path / "junk.tar.zst"  # zstd magic, then garbage
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + random.Random(2).randbytes(4096))
    load_fails("bundle", zst, dst_registry, good)
    missing = tmp_path / "nonexistent.tar"
    load_fails("bundle", missing, dst_registry, good)


@pytest.mark.parametrize("text", ["hello\n", "a line of text\n" * 40],
                         ids=["short", "longer-than-a-header"])
def test_text_file_is_not_a_tar(text: str, good: Good, dst_registry: Registry,
                                tmp_path: Path) -> None:
    """A text file given as the bundle (a README, a .sha256 given by mistake) is said to be
    no tar bundle; 'truncated ... copy the bundle again' is kept for a tar really cut short
    (test_truncated_bundle_is_called_truncated)."""
    import zstandard

    plain = tmp_path / "notes.tar"
    plain.write_text(text)
    packed = tmp_path / "notes.tar.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    for bundle, says in ((plain, "not a tar (nor a .tar.zst) bundle"),
                         (packed, "not a bundle: the zstd stream does not hold a tar")):
        for cmd in ("load", "inspect"):
            err = (load_fails("bundle", bundle, dst_registry, good) if cmd == "load"
                   else fails("bundle", "inspect", bundle))
            assert f"{bundle}: {says}" in err and "truncated" not in err, err
        proc = run_mirror("verify", bundle)
        assert proc.returncode == EXIT["bundle"], proc.stdout + proc.stderr
        error_line(proc)
        assert f"{bundle}: {says}" in proc.stdout and "truncated" not in proc.stdout, \
            proc.stdout


def test_the_checksum_file_given_as_the_bundle_names_the_bundle(
        good: Good, dst_registry: Registry) -> None:
    """`mirror verify site.tar.sha256` (the file `sha256sum -c` takes) said `not a tar (nor a
    .tar.zst) bundle` and nothing more; it now names the bundle to give instead."""
    sums = Path(f"{good.bundle}.sha256")
    assert sums.exists()
    proc = run_mirror("verify", sums)
    assert proc.returncode == EXIT["bundle"], proc.stdout + proc.stderr
    error_line(proc)
    assert f"hint: {sums} is the bundle's checksum: `mirror verify {good.bundle}`" \
        in proc.stderr, proc.stderr
    err = load_fails("bundle", sums, dst_registry, good)
    assert "not a tar" in err


def test_a_bundle_compressed_for_the_trip_is_named_so(good: Good, dst_registry: Registry,
                                                       tmp_path: Path) -> None:
    """A bundle gzip'ed (or xz'ed) to carry it: load and verify said `not a valid tar:
    invalid header` (or `truncated ... copy the bundle again`), as if it were damaged. Now
    they say which compression it is and to decompress it first."""
    import bz2
    import gzip
    import lzma

    data = good.bundle.read_bytes()
    for name, packed, kind, tool in (("g.tar.gz", gzip.compress(data), "gzip", "gunzip"),
                                     ("x.tar.xz", lzma.compress(data), "xz", "unxz"),
                                     ("b.tar.bz2", bz2.compress(data), "bzip2", "bunzip2")):
        bundle = tmp_path / name
        bundle.write_bytes(packed)
        proc = run_mirror("load", bundle, "--to", f"{dst_registry.host}/gz", "--retries", "1")
        assert proc.returncode == EXIT["bundle"], proc.stderr
        assert f"{bundle}: {kind}-compressed" in error_line(proc), proc.stderr
        assert f"({tool})" in proc.stderr, proc.stderr
        assert f"{kind}-compressed" in verify_fails(bundle)


def test_tar_without_oci_layout(good: Good, dst_registry: Registry, tmp_path: Path) -> None:
    bundle = rewrite(good.bundle, tmp_path / "nolayout.tar",
                     lambda ti, d: None if ti.name == "oci-layout" else (ti, d))
    err = load_fails("bundle", bundle, dst_registry, good)
    assert "oci-layout" in err
    assert "oci-layout" in verify_fails(bundle)


def test_an_empty_docker_archive_is_refused(dst_registry: Registry, tmp_path: Path) -> None:
    """A docker-archive whose manifest.json lists no image (`[]`): verify said OK and load
    exited 0 having pushed nothing, without a word; both now say so, exit 10."""
    import io
    import tarfile

    archive = tmp_path / "empty.tar"
    with tarfile.open(archive, "w") as tf:
        ti = tarfile.TarInfo("manifest.json")
        ti.size = 2
        tf.addfile(ti, io.BytesIO(b"[]"))
    proc = run_mirror("verify", archive)
    assert proc.returncode == EXIT["bundle"], proc.stdout + proc.stderr
    assert "manifest.json lists no image" in proc.stdout, proc.stdout
    err = fails("bundle", "load", archive, "--to", f"{dst_registry.host}/e")
    assert "manifest.json lists no image" in err, err


def test_manifest_json_that_does_not_match_the_images(good: Good, dst_registry: Registry,
                                                     tmp_path: Path) -> None:
    """manifest.json (what docker load and podman load read) naming the arm64 config with
    the amd64 layers: verify and load refuse the bundle (exit 10), naming manifest.json."""
    amd, arm = good.index.images

    def swap(ti: tarfile.TarInfo, data: bytes | None):
        if ti.name != "manifest.json" or data is None:
            return ti, data
        doc = json.loads(data)
        for item in doc:
            if item["Config"].endswith(arm.config.digest.split(":")[1]):
                item["Layers"] = [f"blobs/sha256/{la.digest.split(':')[1]}" for la in amd.layers]
        data = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
        ti.size = len(data)
        return ti, data

    bundle = rewrite(good.bundle, tmp_path / "docker-json.tar", swap)
    err = load_fails("bundle", bundle, dst_registry, good)
    assert "manifest.json" in err and arm.config.digest in err, err
    assert "manifest.json" in verify_fails(bundle)


def test_manifest_json_tag_that_index_json_does_not_give(good: Good, dst_registry: Registry,
                                                         tmp_path: Path) -> None:
    """manifest.json tagging the image another name (`docker load` would tag it
    `library/nginx:latest`, while index.json, which `mirror load` and `ctr import` read,
    names it good.ref): verify said OK; verify and load refuse it (exit 10), naming the
    tag."""
    bad_tag = "library/nginx:latest"

    def retag(ti: tarfile.TarInfo, data: bytes | None):
        if ti.name != "manifest.json" or data is None:
            return ti, data
        doc = json.loads(data)
        tagged = [item for item in doc if item["RepoTags"]]
        assert tagged, doc
        tagged[0]["RepoTags"] = [bad_tag]
        data = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
        ti.size = len(data)
        return ti, data

    bundle = rewrite(good.bundle, tmp_path / "retagged.tar", retag)
    err = load_fails("bundle", bundle, dst_registry, good)
    assert "manifest.json" in err and bad_tag in err, err
    assert bad_tag in verify_fails(bundle)
    assert f"{good.bundle}: OK" in mirror_ok("verify", good.bundle).stdout


def zstd(bundle: Path) -> Path:
    """The same tar, zstd-compressed (the reader streams those)."""
    import zstandard

    out = bundle.with_name(bundle.name + ".zst")
    out.write_bytes(zstandard.ZstdCompressor().compress(bundle.read_bytes()))
    return out


def one_image(src_registry: Registry, seed: str, layer_mib: int, *outs: Path) -> ig.Layer:
    """Push an amd64 image with one incompressible layer of `layer_mib` MiB (generated from
    `seed`) and pull it into each of `outs` (.tar or .tar.zst, each with its .sha256), with
    one cache beside the first; return the layer."""
    rng = random.Random(seed)
    layer = ig.make_layer(rng, size=layer_mib << 20, compressed=False)
    repo = f"test/{re.sub(r'[^a-z0-9]+', '-', seed.lower())}-{uuid.uuid4().hex[:8]}"
    push_image(src_registry.url, repo, ig.make_image(rng, ig.AMD64, "oci", layers=[layer]),
               ["v1"])
    for out in outs:
        mirror_ok("pull", f"{src_registry.host}/{repo}:v1", "-o", out, "--cache",
                  outs[0].parent / "cache", "-q")
    return layer


@pytest.mark.parametrize("fmt", ["tar", "zst"])
def test_bundle_with_a_blob_missing(fmt: str, good: Good, dst_registry: Registry,
                                    tmp_path: Path) -> None:
    name = layer_member(good)
    bundle = rewrite(good.bundle, tmp_path / "missing.tar",
                     lambda ti, d: None if ti.name == name else (ti, d))
    if fmt == "zst":
        bundle = zstd(bundle)
    digest = good.index.images[0].layers[0].digest
    with pytest.raises(AssertionError, match="missing"):
        check_layout(bundle)  # the oracle sees it too
    err = load_fails("bundle", bundle, dst_registry, good)
    assert "missing" in err and digest in err
    out = verify_fails(bundle)
    assert digest in out and "missing" in out


@pytest.mark.parametrize("fmt", ["tar", "zst"])
def test_bundle_with_a_flipped_byte(fmt: str, good: Good, dst_registry: Registry,
                                    tmp_path: Path) -> None:
    name = layer_member(good)

    def flip(ti: tarfile.TarInfo, data: bytes | None) -> tuple[tarfile.TarInfo, bytes | None]:
        if ti.name == name:
            assert data is not None
            b = bytearray(data)
            b[len(b) // 2] ^= 0xFF
            return ti, bytes(b)
        return ti, data

    bundle = rewrite(good.bundle, tmp_path / "flipped.tar", flip)
    if fmt == "zst":
        bundle = zstd(bundle)
    digest = good.index.images[0].layers[0].digest
    with pytest.raises(AssertionError, match="not to its name"):
        check_layout(bundle)  # the oracle sees it too
    err = load_fails("integrity", bundle, dst_registry, good)
    assert digest in err and "mismatch" in err, err
    out = verify_fails(bundle)
    assert digest in out and "mismatch" in out


@pytest.mark.parametrize("cut", [300, 1000, "half"])
@pytest.mark.parametrize("fmt", ["tar", "zst"])
def test_truncated_bundle_is_called_truncated(fmt: str, cut: int | str, good: Good,
                                              dst_registry: Registry, tmp_path: Path) -> None:
    """A bundle cut short in transit (the first 300 or 1000 bytes, or half of it) is called truncated,
    naming the file, exit 10; not "empty file", nor a traceback from tarfile."""
    src = good.bundle
    if fmt == "zst":  # mirror's own streaming zstd writer, as a user's bundle would be
        src = tmp_path / "whole.tar.zst"
        mirror_ok("pull", good.ref, "-o", src, "--cache", good.bundle.parent / "cache", "-q")
    data = src.read_bytes()
    bad = tmp_path / f"cut.{'tar.zst' if fmt == 'zst' else 'tar'}"
    bad.write_bytes(data[: cut if isinstance(cut, int) else len(data) // 2])
    proc = run_mirror("verify", bad)
    assert proc.returncode == EXIT["bundle"], proc.stdout + proc.stderr
    assert str(bad) in error_line(proc)
    kind = "tar.zst" if fmt == "zst" else "tar"
    assert f"{bad}: truncated: the {kind} ends in the middle of" in proc.stdout, proc.stdout
    assert "empty file" not in proc.stdout
    err = load_fails("bundle", bad, dst_registry, good)
    assert f"{bad}: truncated: the {kind} ends in the middle of" in err, err


def test_tar_zst_cut_inside_a_blob(good: Good, src_registry: Registry, dst_registry: Registry,
                                   tmp_path: Path) -> None:
    """A tar.zst that breaks off inside a large blob: the error names the file and the blob
    (the read of the blob's bytes used to end in tarfile's traceback)."""
    whole = tmp_path / "whole.tar.zst"
    layer = one_image(src_registry, "cut inside a blob", 2, whole)  # 2 MiB of zstd
    bad = tmp_path / "cut.tar.zst"
    bad.write_bytes(whole.read_bytes()[: whole.stat().st_size * 3 // 4])
    member = "blobs/sha256/" + layer.digest.split(":", 1)[1]
    proc = run_mirror("verify", bad)
    assert proc.returncode == EXIT["bundle"], proc.stdout + proc.stderr
    assert str(bad) in error_line(proc)
    assert f"{bad}: truncated: the tar.zst ends in the middle of '{member}'" in proc.stdout
    assert len(proc.stdout.splitlines()) == 1, proc.stdout  # not also a problem of the blob's
    err = load_fails("bundle", bad, dst_registry, good)
    assert f"{bad}: truncated: the tar.zst ends in the middle of '{member}'" in err, err


def test_tar_zst_starting_with_a_skippable_frame(good: Good, dst_registry: Registry,
                                                 tmp_path: Path) -> None:
    """zstd allows skippable frames anywhere, first too (`zstd` itself decompresses such a
    file): a bundle that starts with one is a .tar.zst, not "not a valid tar"."""
    import struct

    bundle = tmp_path / "skip.tar.zst"
    note = struct.pack("<II", 0x184D2A5E, 8) + b"metadata"
    bundle.write_bytes(note + zstd(good.bundle).read_bytes())
    assert f"{bundle}: OK" in mirror_ok("verify", bundle).stdout
    target = f"{dst_registry.host}/skip"
    mirror_ok("load", bundle, "--to", target, "-q")
    assert list_tags(dst_registry.url, f"skip/{good.repo}") == ["v1"]


def _info(name: str, kind: bytes, **attrs: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    for k, v in attrs.items():
        setattr(ti, k, v)
    return ti


@pytest.mark.parametrize("member", [
    pytest.param((_info("blobs/sha256/link", tarfile.SYMTYPE, linkname="/etc/passwd"), None),
                 id="symlink"),
    pytest.param((_info("blobs/sha256/hard", tarfile.LNKTYPE, linkname="oci-layout"), None),
                 id="hardlink"),
    pytest.param((_info("blobs/sha256/dev", tarfile.CHRTYPE, devmajor=1, devminor=3), None),
                 id="device"),
    pytest.param((_info("blobs/sha256/../../../evil", tarfile.REGTYPE, size=5), b"evil\n"),
                 id="dotdot"),
    pytest.param((_info("/etc/evil", tarfile.REGTYPE, size=5), b"evil\n"), id="absolute"),
])
def test_unsafe_tar_member(member: tuple[tarfile.TarInfo, bytes | None], good: Good,
                           dst_registry: Registry, tmp_path: Path) -> None:
    ti, _ = member
    bundle = rewrite(good.bundle, tmp_path / "unsafe.tar", extra=(member,))
    with tarfile.open(bundle) as tf:  # the member really is in the tar
        assert ti.name in tf.getnames()
    err = load_fails("bundle", bundle, dst_registry, good)
    assert repr(ti.name) in err or ti.name in err, err
    verify_fails(bundle)


def _docker_archive(path: Path, layers: list[tuple[str, str]], links: dict[str, str],
                    files: dict[str, bytes], tag: str) -> Path:
    """A docker-archive (manifest.json, `<id>.json`, `<dir>/layer.tar`): `layers` the
    (path, diff_id) pairs in order, `links` symlinks (path -> target), `files` the rest."""
    cfg = ig.dump_json({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [d for _, d in layers]}})
    cid = hashlib.sha256(cfg).hexdigest()
    items = [{"Config": f"{cid}.json", "RepoTags": [tag], "Layers": [p for p, _ in layers]}]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in {f"{cid}.json": cfg, **files,
                           "manifest.json": json.dumps(items).encode()}.items():
            tf.addfile(_info(name, tarfile.REGTYPE, size=len(data)), io.BytesIO(data))
        for name, target in links.items():
            tf.addfile(_info(name, tarfile.SYMTYPE, linkname=target))
    return path


@pytest.mark.parametrize("diff_id", ["sha256:nothex", 5, ["sha256:" + "0" * 64]],
                         ids=["not-hex", "number", "list"])
def test_docker_archive_diff_id_that_is_not_a_digest(diff_id: object, dst_registry: Registry,
                                                     tmp_path: Path) -> None:
    """A docker-archive whose config lists a diff_id that is not a digest: verify printed a
    traceback (exit 1), and load too for one that is not a string; each command now names
    it in one line (exit 10), nothing pushed."""
    rng = random.Random("bad-diff-id")
    layer = ig.make_layer(rng, compressed=False)
    bundle = _docker_archive(tmp_path / "bad-diff-id.tar", [("a/layer.tar", layer.diff_id)],
                             {}, {"a/layer.tar": layer.data}, f"{dst_registry.host}/src/bad:1")
    with tarfile.open(bundle) as tf:  # the config, its diff_id replaced
        members = [(ti, tf.extractfile(ti).read()) for ti in tf]  # type: ignore[union-attr]
    with tarfile.open(bundle, "w", format=tarfile.PAX_FORMAT) as tf:
        items = []
        for ti, data in members:
            if ti.name.endswith(".json") and ti.name != "manifest.json":
                cfg = json.loads(data)
                cfg["rootfs"]["diff_ids"] = [diff_id]
                data = ig.dump_json(cfg)
                ti.name = hashlib.sha256(data).hexdigest() + ".json"
                ti.size = len(data)
                items = [{"Config": ti.name, "RepoTags": [f"{dst_registry.host}/src/bad:1"],
                          "Layers": ["a/layer.tar"]}]
            if ti.name == "manifest.json":
                data = json.dumps(items).encode()
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    assert "diff_id 1" in verify_fails(bundle)
    err = fails("bundle", "inspect", bundle)
    assert "diff_id 1" in err, err
    prefix = f"bad-diff-{uuid.uuid4().hex[:8]}"
    err = fails("bundle", "load", bundle, "--to", f"{dst_registry.host}/{prefix}")
    assert "diff_id 1" in err, err
    assert list_tags(dst_registry.url, f"{prefix}/src/bad") == []


def test_docker_archive_layer_linked_under_a_wrong_diff_id(dst_registry: Registry,
                                                            tmp_path: Path) -> None:
    """A docker-archive whose one layer file is two layers (the second path a link to it,
    as docker save writes a repeated layer) under two diff_ids, one of which the file does
    not hash to: verify checked the file against one of them only (the last) and said OK,
    though load stops on the other. verify checks it against each (exit 7, naming it)."""
    rng = random.Random("linked-layer")
    real, other = ig.make_layer(rng, compressed=False), ig.make_layer(rng, compressed=False)
    tag = f"{dst_registry.host}/src/linked:1"
    bundle = _docker_archive(
        tmp_path / "linked.tar", [("b/layer.tar", other.diff_id), ("a/layer.tar", real.diff_id)],
        {"b/layer.tar": "../a/layer.tar"}, {"a/layer.tar": real.data}, tag)
    proc = run_mirror("verify", bundle)
    assert proc.returncode == EXIT["integrity"], proc.stdout + proc.stderr
    error_line(proc)
    assert other.diff_id in proc.stdout and "a/layer.tar" in proc.stdout, proc.stdout
    assert f"blob {real.diff_id}" not in proc.stdout, proc.stdout  # the one it hashes to
    prefix = f"linked-{uuid.uuid4().hex[:8]}"
    proc = run_mirror("load", bundle, "--to", f"{dst_registry.host}/{prefix}", "--retries", "1")
    assert proc.returncode == EXIT["integrity"], proc.stderr
    assert list_tags(dst_registry.url, f"{prefix}/src/linked") == []
    # the same archive with the diff_ids right (the link a repeated layer) is sound
    sound = _docker_archive(
        tmp_path / "sound.tar", [("b/layer.tar", real.diff_id), ("a/layer.tar", real.diff_id)],
        {"b/layer.tar": "../a/layer.tar"}, {"a/layer.tar": real.data}, tag)
    assert f"{sound}: OK" in mirror_ok("verify", sound).stdout


@pytest.mark.parametrize("link_first", [False, True], ids=["file-then-link", "link-then-file"])
def test_docker_archive_member_both_a_file_and_a_link(link_first: bool, dst_registry: Registry,
                                                      tmp_path: Path) -> None:
    """A docker-archive holding `a/layer.tar` twice, as a file (bytes that are not its
    diff_id's) and as a link to a file that is: verify hashed the link's target and said OK,
    while load read the file. Such a tar (a member twice) is refused, as two files are
    (exit 10), by verify and by load before anything is pushed."""
    rng = random.Random("file-and-link")
    real, other = ig.make_layer(rng, compressed=False), ig.make_layer(rng, compressed=False)
    tag = f"{dst_registry.host}/src/twice:1"
    cfg = ig.dump_json({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [real.diff_id]}})
    cid = hashlib.sha256(cfg).hexdigest()
    items = [{"Config": f"{cid}.json", "RepoTags": [tag], "Layers": ["a/layer.tar"]}]
    bundle = tmp_path / "twice.tar"
    with tarfile.open(bundle, "w", format=tarfile.PAX_FORMAT) as tf:
        def file(name: str, data: bytes) -> None:
            tf.addfile(_info(name, tarfile.REGTYPE, size=len(data)), io.BytesIO(data))

        file(f"{cid}.json", cfg)
        file("c/layer.tar", real.data)
        link = _info("a/layer.tar", tarfile.SYMTYPE, linkname="../c/layer.tar")
        if link_first:
            tf.addfile(link)
        file("a/layer.tar", other.data)
        if not link_first:
            tf.addfile(link)
        file("manifest.json", json.dumps(items).encode())
    proc = run_mirror("verify", bundle)
    assert proc.returncode == EXIT["bundle"], proc.stdout + proc.stderr
    assert "'a/layer.tar' appears twice" in proc.stdout, proc.stdout
    prefix = f"twice-{uuid.uuid4().hex[:8]}"
    err = fails("bundle", "load", bundle, "--to", f"{dst_registry.host}/{prefix}")
    assert "appears twice" in err, err
    assert list_tags(dst_registry.url, f"{prefix}/src/twice") == []


def edit_json(name: str, change: Callable[[str], str]) -> Edit:
    """An Edit that rewrites the text of member `name` (index.json, mirror.json, a blob)."""
    def edit(ti: tarfile.TarInfo, data: bytes | None) -> tuple[tarfile.TarInfo, bytes | None]:
        if ti.name != name or data is None:
            return ti, data
        text = change(data.decode())
        assert text != data.decode(), f"{name}: nothing changed"
        ti.size = len(text.encode())
        return ti, text.encode()
    return edit


def flipped(digest: str) -> str:
    """The digest with its last hex character changed: still a digest, another one."""
    return digest[:-1] + ("0" if digest[-1] != "0" else "1")


def inventory(bundle: Path) -> dict:
    with tarfile.open(bundle) as tf:
        f = tf.extractfile("mirror.json")
        assert f is not None
        return json.loads(f.read())


def verify_says(code: str, bundle: Path, *expect: str) -> str:
    """verify exits with `code`; one of its stdout lines names the bundle and all of
    `expect`; the error line names the bundle."""
    proc = run_mirror("verify", bundle)
    assert proc.returncode == EXIT[code], proc.stdout + proc.stderr
    assert str(bundle) in error_line(proc)
    lines = [ln for ln in proc.stdout.splitlines()
             if ln.startswith(f"{bundle}: ") and all(e in ln for e in expect)]
    assert lines, (expect, proc.stdout)
    return proc.stdout


@pytest.mark.parametrize("fmt", ["tar", "zst"])
def test_inventory_blob_entry_flipped(fmt: str, good: Good, dst_registry: Registry,
                                      tmp_path: Path) -> None:
    """mirror.json lists a blob that is not in the bundle (one hex digit of a key changed):
    verify and load both refuse it (exit 10), naming the bundle, mirror.json and the entry;
    load pushes nothing."""
    digest = good.index.images[0].layers[0].digest
    assert digest in inventory(good.bundle)["blobs"]
    bundle = rewrite(good.bundle, tmp_path / "inv.tar",
                     edit_json("mirror.json", lambda t: t.replace(digest, flipped(digest))))
    if fmt == "zst":
        bundle = zstd(bundle)
    verify_says("bundle", bundle, "mirror.json", flipped(digest), "not in the bundle")
    out = verify_says("bundle", bundle, "mirror.json", digest)  # and the real one unlisted
    assert "OK" not in out
    err = load_fails("bundle", bundle, dst_registry, good)
    assert "mirror.json" in err and (flipped(digest) in err or digest in err), err


@pytest.mark.parametrize("lie", ["own-tag", "wrong-subject"])
def test_inventory_referrer_that_is_not_one(lie: str, good: Good, dst_registry: Registry,
                                            tmp_path: Path) -> None:
    """mirror.json's referrers (which runtimes do not read) listing the amd64 image as a
    referrer of the index: under a tag of its own, load pushed that tag (`smuggled`, seen by
    no runtime and by no index.json); said to refer to a subject its manifest does not name,
    inspect showed it so. verify said OK to both; now verify and load refuse them (exit 10)."""
    amd = good.index.images[0]
    name = (f"{good.ref.rsplit(':', 1)[0]}:smuggled" if lie == "own-tag" else
            f"{good.ref.rsplit(':', 1)[0]}@{amd.manifest.digest}")
    entry = amd.manifest.descriptor(annotations={
        "org.opencontainers.image.ref.name": name, "io.containerd.image.name": name,
        "dev.mirror.referrer.subject": good.index.manifest.digest,
        "dev.mirror.referrer.kind": "signature"})

    def add(text: str) -> str:
        doc = json.loads(text)
        doc["referrers"] = [*doc.get("referrers", []), entry]
        return json.dumps(doc, indent=1) + "\n"

    bundle = rewrite(good.bundle, tmp_path / "referrer-lie.tar", edit_json("mirror.json", add))
    prefix = f"lie-{uuid.uuid4().hex[:8]}"
    err = fails("bundle", "load", bundle, "--to", f"{dst_registry.host}/{prefix}")
    assert f"referrer {amd.manifest.digest}" in err, err
    assert list_tags(dst_registry.url, f"{prefix}/{good.repo}") == []
    assert f"referrer {amd.manifest.digest}" in verify_fails(bundle)


def test_inventory_absent_entry_for_a_carried_blob(good: Good, dst_registry: Registry,
                                                   tmp_path: Path) -> None:
    """An `absent` entry naming no blob any manifest references: refused by both."""
    stranger = flipped(good.index.images[0].layers[0].digest)

    def add_absent(text: str) -> str:
        doc = json.loads(text)
        doc["absent"][stranger] = "foreign"
        return json.dumps(doc, indent=1) + "\n"

    bundle = rewrite(good.bundle, tmp_path / "absent.tar", edit_json("mirror.json", add_absent))
    verify_says("bundle", bundle, "mirror.json", stranger, "not referenced by any manifest")
    err = load_fails("bundle", bundle, dst_registry, good)
    assert stranger in err and "not referenced" in err, err


def bundle_zst(good: Good, tmp_path: Path) -> Path:
    """A .tar.zst of the good images written by mirror pull (with its .sha256)."""
    out = tmp_path / "whole.tar.zst"
    mirror_ok("pull", good.ref, "-o", out, "--cache", good.bundle.parent / "cache", "-q")
    return out


@pytest.mark.parametrize("fmt", ["tar", "zst"])
def test_junk_appended_to_the_bundle(fmt: str, good: Good, dst_registry: Registry,
                                     tmp_path: Path) -> None:
    """2000 random bytes appended in transit (sha256sum -c and zstd -t both fail): verify
    names the trailing data (exit 10) and the .sha256 that no longer matches; load refuses it
    before pushing anything."""
    src = good.bundle if fmt == "tar" else bundle_zst(good, tmp_path)
    bad = tmp_path / f"junk.{'tar' if fmt == 'tar' else 'tar.zst'}"
    bad.write_bytes(src.read_bytes() + random.Random(fmt).randbytes(2000))
    side = bad.with_name(bad.name + ".sha256")
    side.write_text(src.with_name(src.name + ".sha256").read_text().replace(src.name, bad.name))
    sha = subprocess.run(["sha256sum", "-c", side.name], cwd=tmp_path, capture_output=True,
                         text=True)
    assert sha.returncode != 0 and "FAILED" in sha.stdout, sha.stdout  # the outside judge
    out = verify_says("bundle", bad, "trailing data")
    assert f"{bad}: sha256 " in out and str(side) in out, out
    err = load_fails("bundle", bad, dst_registry, good)
    assert "trailing data" in err, err


def test_junk_after_the_last_zstd_frame_is_one_problem(good: Good, tmp_path: Path) -> None:
    """Bytes after the last zstd frame break the stream inside the last member read (zstd
    takes them for a frame). That is the bundle's one structural problem, said once: not
    also a problem of the blob being read, nor "truncated ... in the middle of" it (verify
    hashed blobs during the scan and took the stream's error for the blob's)."""
    src = bundle_zst(good, tmp_path)
    for junk in (random.Random("after the frames").randbytes(2000), bytes(100)):
        bad = tmp_path / "junk.tar.zst"
        bad.write_bytes(src.read_bytes() + junk)
        side = bad.with_name(bad.name + ".sha256")
        side.write_text(src.with_name(src.name + ".sha256").read_text())
        out = verify_says("bundle", bad, "trailing data", "after the zstd stream")
        lines = out.splitlines()
        assert len(lines) == 2 and "does not match" in lines[0], out
        assert "truncated" not in out and "blob " not in out, out


def test_zeros_appended_to_a_tar_only_fail_the_sha256(good: Good, tmp_path: Path) -> None:
    """Zeros after the end of a tar are padding as far as tar goes; the .sha256 beside the
    bundle still says the file changed: exit 7, one line naming both files."""
    bad = tmp_path / "padded.tar"
    bad.write_bytes(good.bundle.read_bytes() + bytes(4096))
    side = bad.with_name(bad.name + ".sha256")
    side.write_text(good.bundle.with_name(good.bundle.name + ".sha256").read_text())
    out = verify_says("integrity", bad, "does not match", str(side))
    assert len(out.splitlines()) == 1, out


def test_sidecar_checked_when_present(good: Good, tmp_path: Path) -> None:
    copy = tmp_path / "copy.tar"
    copy.write_bytes(good.bundle.read_bytes())
    proc = run_mirror("verify", copy, "-v")  # no .sha256 beside it: fine, a -v note
    assert proc.returncode == 0 and f"{copy}: OK" in proc.stdout, proc.stdout + proc.stderr
    assert "copy.tar.sha256" in proc.stderr, proc.stderr
    side = copy.with_name("copy.tar.sha256")
    side.write_text(good.bundle.with_name(good.bundle.name + ".sha256").read_text())
    assert f"{copy}: OK" in mirror_ok("verify", copy).stdout  # the name inside is not ours
    side.write_text(f"{'0' * 64}  copy.tar\n")
    verify_says("integrity", copy, str(side), "does not match")
    side.write_text("not a checksum\n")
    verify_says("integrity", copy, str(side), "not a sha256sum line")


def _bytes_read() -> int:
    """Bytes this process has read with read(2) and friends so far (/proc/self/io rchar)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.parametrize("fmt", ["tar", "tar.zst"])
def test_verify_reads_the_bundle_once(fmt: str, src_registry: Registry, tmp_path: Path) -> None:
    """With a .sha256 beside it, verify takes the file's sha256 from the same reads that hash
    the blobs: it reads about the bundle's size (6 MiB here), not twice (or, for a .tar.zst,
    three times: sidecar, scan, blobs). And it still catches a sidecar that does not match."""
    from mirror.verify import verify_bundle

    bundle = tmp_path / f"once.{fmt}"
    one_image(src_registry, f"read-once-{fmt}", 6, bundle)
    size = bundle.stat().st_size
    side = bundle.with_name(bundle.name + ".sha256")
    assert size > 6 << 20 and side.exists()
    notes: list[str] = []
    before = _bytes_read()
    problems, _ = verify_bundle(bundle, notes.append)
    read = _bytes_read() - before
    assert problems == [] and any("matches" in n for n in notes), (problems, notes)
    assert size <= read < size * 1.1, (read, size)
    side.write_text(f"{'1' * 64}  {bundle.name}\n")
    problems, structural = verify_bundle(bundle)
    assert len(problems) == 1 and "does not match" in problems[0] and not structural, problems


_PEAK_RSS = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def _verify_peak_rss(bundle: Path) -> int:
    """Peak RSS (KiB) of `mirror verify BUNDLE`, which must pass. Run from a small python
    that reports its one child's: a child of pytest's would count pytest's own peak (exec
    keeps the high-water mark of the process it replaces)."""
    from tests.support.oracle import mirror_cmd, mirror_env, run

    proc = run([sys.executable, "-c", _PEAK_RSS, *mirror_cmd("verify", bundle)],
               env=mirror_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return int(proc.stderr.split()[-1])


@pytest.mark.parametrize("fmt", ["tar", "tar.zst"])
@pytest.mark.slow
def test_verify_memory_does_not_grow_with_a_layer(fmt: str, good: Good, src_registry: Registry,
                                                  tmp_path: Path) -> None:
    """verify holds a few chunks of a layer at a time: its peak RSS on a bundle with a
    48 MiB layer (a .sha256 beside it) is within 12 MiB of its peak on the small good bundle
    (2-6 MiB more now). With 4 MiB reads (up to three more queued for the file's sha256;
    tarfile's copies of a .tar.zst's) it was 16 and 26 MiB more: 66 MiB on a .tar.zst with a
    1 GiB layer, over the 64 MiB budget (docs/BENCHMARKS.md)."""
    big = tmp_path / f"big.{fmt}"
    one_image(src_registry, f"memory-{fmt}", 48, big)
    small = tmp_path / f"small.{fmt}"
    mirror_ok("pull", good.ref, "-o", small, "--cache", good.bundle.parent / "cache", "-q")
    base = _verify_peak_rss(small)
    peak = _verify_peak_rss(big)
    assert peak - base < 12 << 10, (f"{peak - base} KiB more", peak, base)


def _oversized_member(good: Good, dst: Path, says: int | None) -> tuple[Path, int]:
    """The good tar with its first layer's bytes inverted, a member `pad` (1 byte) put before
    it whose pax header says it is `says` bytes (GNU.sparse.size: tarfile believes it), and a
    member `decoy` after it holding the layer's real bytes. `says` None: as far as `decoy`'s
    data (the returned number), so that reading `pad` from its start runs into `decoy`."""
    name = layer_member(good)
    with tarfile.open(good.bundle) as tf:
        f = tf.extractfile(name)
        assert f is not None
        real = f.read()
        layer = tf.getmember(name)
    pad = _info("pad", tarfile.REGTYPE, size=1)
    if says is not None:
        pad.pax_headers = {"GNU.sparse.size": str(says)}
    extra = ((pad, b"x"), (layer, bytes(b ^ 0xFF for b in real)),
             (_info("decoy", tarfile.REGTYPE, size=len(real)), real))
    bundle = rewrite(good.bundle, dst, lambda ti, d: None if ti.name == name else (ti, d),
                     extra)
    with tarfile.open(bundle) as tf:
        span = tf.getmember("decoy").offset_data - tf.getmember("pad").offset_data
    return bundle, span


def test_member_that_says_it_is_larger_than_it_is(good: Good, dst_registry: Registry,
                                                  tmp_path: Path) -> None:
    """A pax header may give a member a size larger than the bytes the tar holds for it
    (GNU.sparse.size, a sparse file's): tarfile believes it. verify reads a plain tar in one
    pass, so it read past `pad` into a later member and hashed the decoy's bytes in place of
    the tampered layer's: exit 0 for a bundle whose layer load (rightly) refuses. A bundle
    holds plain files only: exit 10 from both, naming the member."""
    _, span = _oversized_member(good, tmp_path / "probe.tar", None)
    bundle, again = _oversized_member(good, tmp_path / "sparse.tar", span)
    assert again == span
    with tarfile.open(bundle) as tf:
        assert tf.getmember("pad").size == span  # what tarfile says `pad` holds
    out = verify_says("bundle", bundle, "'pad'", "sparse")
    assert "OK" not in out
    err = load_fails("bundle", bundle, dst_registry, good)
    assert "'pad'" in err and "sparse" in err, err


@pytest.fixture(scope="module")
def big_bundles(src_registry: Registry, tmp_path_factory: pytest.TempPathFactory
                ) -> dict[str, Path]:
    """A .tar and a .tar.zst (each with its .sha256) of an image with a 128 MiB layer."""
    tmp = tmp_path_factory.mktemp("big")
    out = {fmt: tmp / f"big.{fmt}" for fmt in ("tar", "tar.zst")}
    one_image(src_registry, "big bundles", 128, *out.values())
    return out


def _proc_io(pid: int) -> int | None:
    """rchar of a running process (bytes read so far); None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    return next((int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("rchar:")),
                None)


def _bundle_position(pid: int, bundle: Path) -> int:
    """How far the process has read the bundle (the largest offset of its fds on it)."""
    pos = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if Path(os.readlink(fd)) != bundle:
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue
        pos = max(pos, int(info.split()[1]))  # "pos:\t<offset>" comes first
    return pos


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["sigint-130", "sigterm-143"])
@pytest.mark.parametrize("fmt", ["tar", "tar.zst"])
def test_signal_stops_verify_at_once(fmt: str, sig: signal.Signals, code: int,
                                     big_bundles: dict[str, Path]) -> None:
    """Ctrl-C (or SIGTERM) in the middle of a big bundle: verify stops reading it and exits
    130 (143) with one line. It used to read the bundle to its end first (verify runs on a
    worker thread, which the exit waits for): minutes for a 50 GB bundle."""
    bundle = big_bundles[fmt]
    size = bundle.stat().st_size
    proc = subprocess.Popen(mirror_cmd("verify", bundle), cwd=ROOT, env=mirror_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while _bundle_position(proc.pid, bundle) < 8 << 20:
            assert proc.poll() is None and time.monotonic() < deadline, "verify ended first"
            time.sleep(0.001)
        at_signal = _proc_io(proc.pid)
        assert at_signal is not None
        proc.send_signal(sig)
        last = at_signal
        while (now := _proc_io(proc.pid)) is not None and proc.poll() is None:
            last = now
            time.sleep(0.002)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == code, out + err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and sig.name in lines[0], err
    assert "OK" not in out, out
    assert last - at_signal < size // 4, f"read {last - at_signal} bytes after the signal"


class _FailsOffTheMainThread:
    """A sha256 whose update fails (MemoryError) on any thread but the main one."""

    def __init__(self, real: object) -> None:
        self._real = real

    def update(self, data: bytes) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise MemoryError("the sha256 thread ran out of memory")
        self._real.update(data)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


@pytest.mark.parametrize("fmt", ["tar", "tar.zst"])
def test_verify_does_not_hang_when_the_sha256_thread_fails(
        fmt: str, good: Good, src_registry: Registry, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The file's sha256 is taken on a thread of its own, fed through a queue two reads
    deep. When that thread failed, the reads filled the queue and verify waited on it for
    ever (Ctrl-C could not end it either). Its error is raised in verify instead."""
    from mirror.verify import verify_bundle

    bundle = tmp_path / f"b.{fmt}"
    one_image(src_registry, f"thread-fails-{fmt}", 16, bundle)
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: _FailsOffTheMainThread(real(*a)))
    ended: list[BaseException | tuple] = []

    def run() -> None:
        try:
            ended.append(verify_bundle(bundle))
        except BaseException as e:  # noqa: BLE001 - what verify raised is the result
            ended.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "verify hangs when its sha256 thread fails"
    assert isinstance(ended[0], MemoryError), ended


@pytest.mark.parametrize("member", ["index.json", "mirror.json"])
def test_malformed_digest_in_the_bundles_json(good: Good, dst_registry: Registry,
                                              tmp_path: Path, member: str) -> None:
    """One hex digit of a digest in index.json (the root's) or mirror.json (a config's)
    turned into a backtick: not a digest at all, so a broken bundle (exit 10) naming the
    bundle and the file, from verify, load and inspect; not exit 7, which is for bytes that
    do not match a digest."""
    digest = good.index.manifest.digest if member == "index.json" else \
        good.index.images[0].config.digest
    bad_digest = digest[:7] + "`" + digest[8:]
    bundle = rewrite(good.bundle, tmp_path / "bad.tar",
                     edit_json(member, lambda t: t.replace(digest, bad_digest)))
    verify_says("bundle", bundle, member, bad_digest)
    err = load_fails("bundle", bundle, dst_registry, good)
    assert member in err and bad_digest in err, err
    if member == "index.json":
        err = fails("bundle", "inspect", bundle)
        assert str(bundle) in err and "index.json" in err, err


def test_malformed_digest_in_a_manifest(good: Good, dst_registry: Registry,
                                        tmp_path: Path) -> None:
    """The index blob lists a child whose digest is not a digest, and is renamed to its new
    digest (index.json and mirror.json follow), so its bytes match: exit 10 naming the
    bundle and the index, from verify, load and inspect."""
    old = good.index.manifest
    child = good.index.images[0].manifest.digest
    bad_digest = child[:7] + "`" + child[8:]
    data = old.data.replace(child.encode(), bad_digest.encode())
    new = "sha256:" + hashlib.sha256(data).hexdigest()
    hexes = old.digest.split(":")[1], new.split(":")[1]

    def edit(ti: tarfile.TarInfo, d: bytes | None) -> tuple[tarfile.TarInfo, bytes | None]:
        if ti.name == f"blobs/sha256/{hexes[0]}":
            ti.name, ti.size = f"blobs/sha256/{hexes[1]}", len(data)
            return ti, data
        if ti.name in ("index.json", "mirror.json") and d is not None:
            text = d.decode().replace(old.digest, new).replace(
                f'"size":{len(old.data)}', f'"size":{len(data)}')
            ti.size = len(text.encode())
            return ti, text.encode()
        return ti, d

    bundle = rewrite(good.bundle, tmp_path / "manifest.tar", edit)
    verify_says("bundle", bundle, f"index {new}", bad_digest)
    err = load_fails("bundle", bundle, dst_registry, good)
    assert f"index {new}" in err and bad_digest in err, err
    err = fails("bundle", "inspect", bundle)
    assert str(bundle) in err and f"index {new}" in err, err


# -- registries and images ---------------------------------------------------------------


def test_unreachable_registry(good: Good, tmp_path: Path) -> None:
    host = f"127.0.0.1:{closed_port()}"
    out = tmp_path / "out.tar"
    err = fails("registry", "pull", f"{host}/app:v1", "-o", out, "--cache", tmp_path / "c",
                "--retries", "1")
    assert host in err and "unreachable" in err, err
    assert not out.exists()
    err = fails("registry", "load", good.bundle, "--to", f"{host}/x", "--retries", "1")
    assert host in err, err


def _serve(handler: type, port_box: list[int]) -> socketserver.ThreadingTCPServer:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port_box.append(server.server_address[1])
    return server


class _Banner(socketserver.BaseRequestHandler):
    """Another service on the port: a banner that is not HTTP (here an SSH server's)."""

    def handle(self) -> None:
        self.request.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        try:
            self.request.recv(65536)
        except OSError:
            pass


class _BodyOnHead(socketserver.StreamRequestHandler):
    """An HTTP server that answers /v2/ like a registry but sends a body after every HEAD
    answer too (a broken proxy): the client cannot parse what follows."""

    def handle(self) -> None:
        while True:
            line = self.rfile.readline()
            if not line:
                return
            length = 0
            while (h := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                if h.lower().startswith(b"content-length:"):
                    length = int(h.split(b":", 1)[1])
            self.rfile.read(length)
            body = b"{}"
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 2\r\nDocker-Distribution-API-Version: "
                             b"registry/2.0\r\n\r\n" + body)


def test_a_service_that_does_not_speak_http(good: Good, tmp_path: Path) -> None:
    """A port where something else answers (an SSH banner), or an answer aiohttp cannot
    parse (a body after a HEAD answer) ended in a Python traceback, exit 1 and no --report;
    now exit 3, one error line naming the host and what it answered, and the report."""
    ports: list[int] = []
    servers = [_serve(_Banner, ports), _serve(_BodyOnHead, ports)]
    banner, bad_head = (f"127.0.0.1:{p}" for p in ports)
    try:
        report = tmp_path / "r.json"
        for args in (("pull", f"{banner}/app:v1", "-o", tmp_path / "o.tar", "--cache",
                      tmp_path / "c"),
                     ("inspect", f"{banner}/app:v1"),
                     ("load", good.bundle, "--to", f"{banner}/x")):
            err = fails("registry", *args, "--retries", "1", "--report", report)
            assert f"{banner} does not answer as a registry" in err, (args[0], err)
            assert "SSH-2.0" in err, err
            assert json.loads(report.read_text())["exit_code"] == EXIT["registry"]
            report.unlink()
        # (it waits for a line, so the TLS try ends at --connect-timeout)
        err = fails("registry", "load", good.bundle, "--to", f"{bad_head}/x", "--retries", "1",
                    "--connect-timeout", "1", "--report", report)
        assert bad_head in err and "not a valid HTTP answer" in err, err
        assert json.loads(report.read_text())["error"] == err.removeprefix("mirror: error: ")
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_a_name_that_does_not_resolve(tmp_path: Path) -> None:
    """No --insecure-registry hint for a name that does not resolve (plain HTTP would not
    help); a name without a registry host means Docker Hub, and the error says so and how
    to name another registry (not `--insecure-registry docker.io`). Names under the reserved
    `.invalid` (RFC 2606) never resolve, wherever the tests run: Docker Hub's API host is
    looked up as `registry-1.docker.io.invalid` (a sitecustomize in the run's PYTHONPATH), so
    the test does not depend on Docker Hub being out of reach."""
    err = fails("registry", "pull", "registry.invalid/app:1", "-o", tmp_path / "o.tar",
                "--cache", tmp_path / "c", "--retries", "0")
    assert err.startswith("mirror: error: registry.invalid: registry unreachable"), err
    proc = run_mirror("pull", "registry.invalid/app:1", "-o", tmp_path / "o.tar", "--cache",
                      tmp_path / "c", "--retries", "0")
    assert "--insecure-registry" not in proc.stderr and "did not resolve" in proc.stderr, \
        proc.stderr
    site, asked = tmp_path / "site", tmp_path / "asked"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import socket\n"
        "_real = socket.getaddrinfo\n"
        "def getaddrinfo(host, *a, **kw):\n"
        "    if host == 'registry-1.docker.io':\n"
        "        host += '.invalid'\n"
        f"        open({str(asked)!r}, 'a').write(host + '\\n')\n"
        "    return _real(host, *a, **kw)\n"
        "socket.getaddrinfo = getaddrinfo\n")
    env = mirror_env()
    env["PYTHONPATH"] += os.pathsep + str(site)
    proc = subprocess.run(mirror_cmd("pull", "myapp:1", "-o", tmp_path / "o.tar", "--cache",
                                     tmp_path / "c", "--retries", "0"),
                          capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    assert proc.returncode == EXIT["registry"], proc.stderr
    assert error_line(proc).startswith("mirror: error: docker.io: registry unreachable"), \
        proc.stderr
    assert "registry-1.docker.io.invalid" not in proc.stderr, proc.stderr
    assert "--insecure-registry" not in proc.stderr, proc.stderr
    assert "Docker Hub (docker.io)" in proc.stderr and "localhost:5000/myapp:1" in proc.stderr, \
        proc.stderr
    assert len(proc.stderr.splitlines()) == 2, proc.stderr  # the line and its hint
    assert "registry-1.docker.io.invalid" in asked.read_text()  # the name looked up
    assert not (tmp_path / "o.tar").exists()


def test_web_server_that_is_not_a_registry(good: Good, tmp_path: Path) -> None:
    """A plain web server (GET /v2/ -> 404 with an HTML page) is not a registry: the run stops
    at /v2/ with exit 3 before any push (not a failed upload with an HTML body)."""
    import http.server

    seen: list[str] = []

    class Web(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(tmp_path), **kw)  # type: ignore[arg-type]

        def log_request(self, *a: object) -> None:
            seen.append(self.requestline)

        def log_message(self, *a: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Web)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    try:
        err = fails("registry", "load", good.bundle, "--to", f"{host}/x", "--retries", "1")
        assert f"{host} does not answer as a registry" in err and "HTTP 404" in err, err
        # one ping (the TLS try aside), nothing pushed
        assert [ln for ln in seen if ln.startswith(("GET", "HEAD", "POST", "PUT", "PATCH"))] \
            == ["GET /v2/ HTTP/1.1"], seen
        err = fails("registry", "pull", f"{host}/app:v1", "-o", tmp_path / "o.tar",
                    "--cache", tmp_path / "c", "--retries", "1")
        assert f"{host} does not answer as a registry" in err, err
        # a web page at /v2/ (200, text/html: a catch-all site) is no registry either; it
        # used to pass the ping and fail later on 'manifest is not JSON' (exit 9)
        (tmp_path / "v2").mkdir()
        (tmp_path / "v2" / "index.html").write_text("<html>welcome</html>")
        seen.clear()
        err = fails("registry", "load", good.bundle, "--to", f"{host}/x", "--retries", "1")
        assert f"{host} does not answer as a registry" in err and "text/html" in err, err
        assert [ln for ln in seen if ln.startswith(("GET", "HEAD", "POST", "PUT", "PATCH"))] \
            == ["GET /v2/ HTTP/1.1"], seen
    finally:
        server.shutdown()
        server.server_close()


def test_unknown_tag(good: Good, src_registry: Registry, tmp_path: Path) -> None:
    ref = f"{src_registry.host}/{good.repo}:no-such-tag"
    out = tmp_path / "out.tar"
    err = fails("not-found", "pull", ref, "-o", out, "--cache", tmp_path / "c")
    assert f"{src_registry.host}/{good.repo}" in err and "no-such-tag" in err, err
    assert not out.exists()
    err = fails("not-found", "pull", f"{src_registry.host}/test/no-such-repo-{uuid.uuid4().hex}",
                "-o", out, "--cache", tmp_path / "c")
    assert "no-such-repo" in err


# -- configuration and command line -------------------------------------------------------


def test_a_run_that_would_write_over_its_own_files_is_refused(good: Good,
                                                               tmp_path: Path) -> None:
    """`-o images.yaml` wrote the bundle over the config, `--report images.yaml` or
    `--lock-file images.yaml` the report or the lock over it, `--report images.lock` the report
    over the lock just written, `--report OUT` over the bundle, `load B --report B` over the
    bundle it loaded: all exit 0. Each is now exit 2 before any work, naming both, with every
    file as it was (and no report, which would be the damage)."""
    cfg = tmp_path / "images.yaml"
    text = f"version: 1\nimages:\n  - {good.ref}\n"
    cfg.write_text(text)
    lock = tmp_path / "images.lock"
    lock.write_text('{"lockVersion": 1, "images": {}, "blobs": {}}\n')
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(good.bundle.read_bytes())
    (tmp_path / "link.yaml").symlink_to(cfg)
    pull = ("pull", "-f", "images.yaml", "--cache", "c")
    cases = [
        ((*pull, "-o", "images.yaml"), "-o images.yaml is -f images.yaml"),
        ((*pull, "-o", "link.yaml"), "-o link.yaml is -f images.yaml"),
        ((*pull, "-o", "o.tar", "--report", "images.yaml"), "--report images.yaml is -f"),
        ((*pull, "-o", "o.tar", "--lock-file", "./images.yaml"), "--lock-file images.yaml is -f"),
        ((*pull, "-o", "o.tar", "--report", "images.lock"), "lock file images.lock is --report"),
        ((*pull, "-o", "b.tar", "--report", "b.tar"), "-o b.tar is --report b.tar"),
        ((*pull, "-o", "o.tar", "--report", "o.tar.sha256"), "o.tar.sha256 is --report"),
        (("lock", "-f", "images.yaml", "--lock-file", "images.yaml"), "--lock-file images.yaml"),
        (("load", "b.tar", "--to", "127.0.0.1:9/x", "--report", "b.tar"), "--report b.tar is"),
        (("verify", "b.tar", "--report", str(bundle)), f"--report {bundle} is the bundle b.tar"),
    ]
    before = {p.name: p.read_bytes() for p in (cfg, lock, bundle)}
    for args, says in cases:
        err = fails("usage", *args, cwd=tmp_path)
        assert says in err and "(the same file)" in err, (args, err)
        assert {p.name: p.read_bytes() for p in (cfg, lock, bundle)} == before, args
        assert not (tmp_path / "c").exists() and not (tmp_path / "o.tar").exists(), args
    # what may be one file still is: the new lock over the lock given as --base
    mirror_ok("pull", "-f", "images.yaml", "-o", "full.tar", "--cache", "c", "-q", cwd=tmp_path)
    mirror_ok("pull", "-f", "images.yaml", "-o", "inc.tar", "--cache", "c", "-q", "--base",
              "images.lock", cwd=tmp_path)


@pytest.mark.parametrize("args", [
    ("pull", "-f", "images.yaml", "-o", "o.tar", "--report", "-"),
    ("pull", "-f", "images.yaml", "-o", "-"),
    ("pull", "-f", "images.yaml", "-o", "o.tar", "--lock-file", "-"),
    ("verify", "b.tar", "--report", "-"),
])
def test_a_dash_for_a_file_is_refused(args: tuple[str, ...], good: Good,
                                      tmp_path: Path) -> None:
    """`--report -` wrote a file named `-` (a reader of the usual convention looks for the
    report on stdout and finds none). Every file argument is written atomically at the end,
    so none can be stdout: `-` is exit 2 before any work, saying so."""
    (tmp_path / "images.yaml").write_text(f"version: 1\nimages:\n  - {good.ref}\n")
    (tmp_path / "b.tar").write_bytes(good.bundle.read_bytes())
    err = fails("usage", *args, cwd=tmp_path)
    flag = args[args.index("-") - 1]
    assert f"{flag} -: " in err and "not stdout" in err, err
    assert not (tmp_path / "-").exists() and not (tmp_path / "o.tar").exists()


def test_two_registries_one_repository_and_tag(good: Good, src_registry: Registry,
                                               dst_registry: Registry, tmp_path: Path) -> None:
    """REG1/app:v1 and REG2/app:v1 (a registry and a mirror that drifted) both load as
    PREFIX/app:v1: pull wrote the bundle, exit 0, and every load of it was refused (exit
    10) on the far side. Different images under one target tag now fail the pull (exit 2,
    naming both and their digests; --keep-going: the later one only); the same image from
    two registries is fine."""
    rng = random.Random("two registries")
    other = ig.make_image(rng, ig.AMD64, "oci")
    push_image(dst_registry.url, good.repo, other, ["v1"])
    theirs = f"{dst_registry.host}/{good.repo}:v1"
    out = tmp_path / "b.tar"
    err = fails("usage", "pull", good.ref, theirs, "-o", out, "--cache", tmp_path / "c")
    assert f"{good.ref} and {theirs} would both be loaded as PREFIX/{good.repo}:v1" in err, err
    assert good.index.digest in err and other.digest in err, err
    assert not out.exists()
    proc = run_mirror("pull", good.ref, theirs, "-o", out, "--cache", tmp_path / "c",
                      "--keep-going", "--report", tmp_path / "r.json")
    assert proc.returncode == 13, proc.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [e["error_code"] for e in doc["images"]] == [None, EXIT["usage"]], doc
    mirror_ok("load", out, "--to", f"{dst_registry.host}/two", "-q")
    # the same bytes under both names: one image to load, nothing to refuse
    same = f"{good.repo}-same"
    for reg in (src_registry, dst_registry):
        push_image(reg.url, same, good.index, ["v1"])
    mirror_ok("pull", f"{src_registry.host}/{same}:v1", f"{dst_registry.host}/{same}:v1",
              "-o", tmp_path / "same.tar", "--cache", tmp_path / "c", "-q")


@pytest.mark.parametrize("flag", ["--connect-timeout", "--read-timeout"])
@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf"])
def test_a_timeout_that_is_not_a_positive_number_is_refused(flag: str, value: str, good: Good,
                                                            dst_registry: Registry,
                                                            tmp_path: Path) -> None:
    """`--read-timeout -5` or `--connect-timeout nan` was taken: every request then timed
    out at once and the run said `registry unreachable ... (after 5 tries)`, exit 3, about a
    registry that was up. A timeout is a positive number of seconds: exit 2 naming it, before
    anything is made (the cache was made before --jobs 0 or --retries -1 were refused)."""
    out = tmp_path / "o.tar"
    for args in (("pull", good.ref, "-o", out, "--cache", tmp_path / "c"),
                 ("load", good.bundle, "--to", f"{dst_registry.host}/t"),
                 ("inspect", good.ref)):
        err = fails("usage", *args, f"{flag}={value}")
        assert f"{flag} {value}: " in err and "positive number of seconds" in err, (args, err)
    assert not out.exists() and not (tmp_path / "c").exists()  # nothing made first


def test_yaml_typo_names_file_line_and_suggestion(good: Good, tmp_path: Path) -> None:
    (tmp_path / "images.yaml").write_text(
        "version: 1\n"
        "images:\n"
        f"  - ref: {good.ref}\n"
        "    platfrom: linux/arm64\n")
    err = fails("usage", "pull", "-f", "images.yaml", "-o", "out.tar", "--cache", "c",
                cwd=tmp_path)
    assert "images.yaml:4" in err and "platfrom" in err, err
    assert "did you mean 'platforms'" in err, err
    assert not (tmp_path / "out.tar").exists()


def test_yaml_unknown_platform_names_file_line(good: Good, tmp_path: Path) -> None:
    (tmp_path / "images.yaml").write_text(
        "images:\n"
        f"  - ref: {good.ref}\n"
        "    platforms: [linux/amd64, linux/amd46]\n")
    err = fails("usage", "pull", "-f", "images.yaml", "-o", "out.tar", "--cache", "c",
                cwd=tmp_path)
    assert "images.yaml:3" in err and "linux/amd46" in err, err


def test_one_reference_listed_twice_with_other_settings(good: Good, tmp_path: Path) -> None:
    """A bundle holds one entry per reference: the second listing must not silently replace
    the first (its platforms were dropped, their blobs carried unreferenced)."""
    (tmp_path / "images.yaml").write_text(
        "version: 1\n"
        "images:\n"
        f"  - {good.ref}\n"
        f"  - ref: {good.ref}\n"
        "    platforms: linux/arm64\n")
    err = fails("usage", "pull", "-f", "images.yaml", "-o", "out.tar", "--cache", "c",
                cwd=tmp_path)
    assert "images.yaml:4" in err and "images.yaml:3" in err and good.ref in err, err
    assert "platforms" in err, err
    assert not (tmp_path / "c").exists() and not (tmp_path / "out.tar").exists()
    # the same settings twice (or made the same by --platform) is no conflict
    mirror_ok("pull", "-f", "images.yaml", "-o", "out.tar", "--cache", "c", "-q",
              "--platform", "linux/arm64", cwd=tmp_path)
    layout = check_layout(tmp_path / "out.tar")
    assert layout.entry_names() == [good.ref]


def test_one_reference_listed_twice_with_its_platforms_in_another_order(good: Good,
                                                                         tmp_path: Path) -> None:
    """The same platform set in another order (or spelled another way) is the same setting:
    no conflict, one entry with both platforms."""
    (tmp_path / "images.yaml").write_text(
        "version: 1\n"
        "images:\n"
        f"  - ref: {good.ref}\n"
        "    platforms: [linux/amd64, linux/arm64]\n"
        f"  - ref: {good.ref}\n"
        "    platforms: aarch64,linux/amd64\n")
    mirror_ok("pull", "-f", "images.yaml", "-o", "out.tar", "--cache", "c", "-q",
              cwd=tmp_path)
    layout = check_layout(tmp_path / "out.tar")
    assert layout.entry_names() == [good.ref]
    assert len(layout.manifests) == 3  # the index and both platforms
    # another setting that does differ is the only one named
    with open(tmp_path / "images.yaml", "a") as f:
        f.write("    format: docker\n")
    err = fails("usage", "pull", "-f", "images.yaml", "-o", "out2.tar", "--cache", "c",
                cwd=tmp_path)
    assert "format: docker here, keep there" in err and "platforms" not in err, err


@pytest.mark.parametrize("platform", ["linux/amd46", "linux", "linux/arm64/v8/x", "lunix/amd64"])
def test_unknown_platform_on_the_command_line(platform: str, good: Good,
                                              tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    err = fails("usage", "pull", good.ref, "--platform", platform, "-o", out, "--cache",
                tmp_path / "c")
    assert platform in err, err
    assert not out.exists()


@pytest.mark.parametrize("ref", [
    "127.0.0.1:5000/Upper/Case:v1",
    "https://127.0.0.1:5000/app:v1",
    "127.0.0.1:5000/app:bad tag",
    "127.0.0.1:5000/app:-dash",
    "127.0.0.1:5000/app@sha256:1234",
    "127.0.0.1:5000/app//double:v1",
    "",
])
def test_bad_reference(ref: str, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    err = fails("usage", "pull", ref, "-o", out, "--cache", tmp_path / "c")
    if ref:
        assert ref in err, err
    assert not out.exists()


@pytest.mark.parametrize("made", [True, False], ids=["existing-dir", "trailing-slash"])
def test_output_that_is_a_directory_is_refused_first(good: Good, tmp_path: Path,
                                                     made: bool) -> None:
    """`-o bundles/` (or an existing directory): exit 2 before any download, naming what was
    given and what to give instead; not a late `bundles.partial: Is a directory`."""
    bundles = tmp_path / "bundles"
    if made:
        bundles.mkdir()
    given = str(bundles) if made else f"{bundles}/"
    err = fails("usage", "pull", good.ref, "-o", given, "--cache", tmp_path / "c")
    assert f"-o {given}: " in err and "a directory" in err, err
    assert str(bundles / "site.tar") in err, err
    assert not (tmp_path / "c").exists()  # nothing fetched
    assert not (tmp_path / "bundles.partial").exists()


@pytest.mark.parametrize("command", ["pull", "lock", "sync"])
@pytest.mark.parametrize("below", [False, True], ids=["a-file", "below-a-file"])
def test_a_cache_that_is_a_file_is_a_usage_error(good: Good, tmp_path: Path, command: str,
                                                 below: bool) -> None:
    """`--cache images.yaml` (a file given for the directory): exit 2 naming the cache, as
    `cache prune` says it; it was exit 1, `mirror: error: images.yaml: File exists` (the run
    lock's mkdir), naming neither the flag nor what is wrong."""
    given = tmp_path / "images.yaml"
    given.write_text("version: 1\n")
    cache = given / "sub" if below else given
    more = {"pull": ["-o", tmp_path / "out.tar"], "lock": ["--lock-file", tmp_path / "x.lock"],
            "sync": ["--to", "127.0.0.1:9/x", "--dry-run"]}[command]
    err = fails("usage", command, good.ref, *more, "--cache", cache)
    assert f"cache {cache}: " in err and "not a directory" in err, err
    assert given.read_text() == "version: 1\n"
    assert not (tmp_path / "out.tar").exists() and not (tmp_path / "x.lock").exists()


def test_output_name_and_compression_agree(good: Good, tmp_path: Path) -> None:
    """`-o site.tzst` or `site.tar.zstd` wrote a plain tar (only `.zst` compressed), and
    `-o site.tar.gz`, `.tgz` or `.tar.xz` a plain tar under a name that says gzip or xz
    (`tar xzf` fails on it). zstd names compress; a compression mirror does not write is
    refused (exit 2, before any download), naming the names it does write."""
    for name in ("a.tzst", "a.tar.zstd", "a.tar.zst"):
        out = tmp_path / name
        mirror_ok("pull", good.ref, "-o", out, "--cache", tmp_path / "c", "-q")
        assert out.read_bytes()[:4] == b"\x28\xb5\x2f\xfd", name  # zstd's magic
    for name in ("b.tar.gz", "b.tgz", "b.tar.xz", "b.tar.bz2"):
        err = fails("usage", "pull", good.ref, "-o", tmp_path / name, "--cache", tmp_path / "d")
        assert f"-o {tmp_path / name}: " in err and ".tar.zst" in err, err
        assert not (tmp_path / name).exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize("field,value", [
    ("sourceDigest", "sha256:XYZ"), ("sourceDigest", "sha256:" + "AB" * 32),
    ("sourceDigest", "md5:0123"), ("sourceDigest", ""), ("digest", "sha256:" + "0" * 63),
    ("digest", 7)])
def test_locked_with_a_malformed_digest_in_the_lock_file(good: Good, tmp_path: Path,
                                                         field: str, value: object) -> None:
    """A lock file whose entry names no digest where `sourceDigest` (the pin sent to the
    registry) or `digest` is (edited by hand, damaged) is bad input: exit 2, one line naming
    the lock file, the image and the field, before any request or cache; not the registry's
    500 for a digest it cannot parse, retried and blamed on it (exit 3)."""
    (tmp_path / "images.yaml").write_text(f"version: 1\nimages:\n  - {good.ref}\n")
    mirror_ok("lock", "-f", "images.yaml", "-q", cwd=tmp_path)
    lock = tmp_path / "images.lock"
    doc = json.loads(lock.read_text())
    doc["images"][good.ref][field] = value
    lock.write_text(json.dumps(doc))
    for args in (("pull", "-o", "out.tar", "--cache", "c"),
                 ("sync", "--to", "127.0.0.1:9/x", "--cache", "c")):
        err = fails("usage", args[0], "-f", "images.yaml", "--locked", "--retries", "0",
                    *args[1:], cwd=tmp_path)
        assert err.startswith(f"mirror: error: images.lock: not a valid lock file: {good.ref}: "
                              f"{field}: "), err
        assert repr(str(value)) in err or field == "digest" and value == 7, err
        assert not (tmp_path / "c").exists() and not (tmp_path / "out.tar").exists()


@pytest.mark.parametrize("compressed", [False, True], ids=["tar", "tar.zst"])
def test_base_whose_checksum_file_does_not_match_it(good: Good, tmp_path: Path,
                                                    compressed: bool) -> None:
    """`--base B` with a `B.sha256` that is not B's sha256 (o23 D2: zeros; the incremental
    bundle named its base `sha256:000...`, a digest no file has, in mirror.json, inspect and
    the far side's exit-11 hint): exit 7, one line naming both files and both digests,
    before any download; a matching one, or none, gives the base's real digest."""
    name = "base.tar.zst" if compressed else "base.tar"
    base = tmp_path / name
    if compressed:
        mirror_ok("pull", good.ref, "-o", base, "--cache", tmp_path / "c0", "-q")
    else:
        base.write_bytes(good.bundle.read_bytes())
    real = hashlib.sha256(base.read_bytes()).hexdigest()
    side = tmp_path / f"{name}.sha256"
    (tmp_path / "images.yaml").write_text(f"images:\n  - {good.ref}\n")
    pull = ("pull", "-f", "images.yaml", "-o", "inc.tar", "--base", name, "-q")
    for said in ("0" * 64, real[:63] + "x", ""):
        side.write_text(f"{said}  {name}\n" if said else "")
        err = fails("integrity", *pull, "--cache", "c", cwd=tmp_path)
        assert err.startswith(f"mirror: error: --base {name}: the base's sha256 is {real}, "
                              f"but {name}.sha256 says {said or 'nothing'}: "), err
        assert not (tmp_path / "c").exists() and not (tmp_path / "inc.tar").exists()
    for sidecar in (f"{real}  {name}\n", None):
        if sidecar is None:
            side.unlink()
        else:
            side.write_text(sidecar)
        mirror_ok(*pull, "--cache", "c", cwd=tmp_path)
        with tarfile.open(tmp_path / "inc.tar") as t:
            f = t.extractfile("mirror.json")
            assert f is not None
            assert json.load(f)["base"]["digest"] == f"sha256:{real}"


def test_base_that_is_neither_a_bundle_nor_a_lock_file(good: Good, tmp_path: Path) -> None:
    """`--base images.yaml` (meant: images.lock) says which option is wrong, before any
    download; not a bare 'images.yaml: truncated ... copy the bundle again'."""
    (tmp_path / "images.yaml").write_text(f"images:\n  - {good.ref}\n")
    err = fails("bundle", "pull", "-f", "images.yaml", "-o", "out.tar", "--cache", "c",
                "--base", "images.yaml", cwd=tmp_path)
    assert err.startswith("mirror: error: --base images.yaml: "), err
    assert "lock file" in err, err
    assert not (tmp_path / "c").exists() and not (tmp_path / "out.tar").exists()


@pytest.mark.parametrize("where", ["load", "pull", "inspect", "images.yaml"])
def test_port_out_of_range_or_host_missing(where: str, good: Good, tmp_path: Path) -> None:
    """`localhost:99999`, `:5000`, `localhost:0` are no registry: a usage error naming what was
    given (and images.yaml's line), not aiohttp's traceback with exit 1."""
    if where == "load":
        for to in ("localhost:99999", ":5000", "localhost:0/pre", "localhost:99999/pre/x"):
            err = fails("usage", "load", good.bundle, "--to", to)
            assert f"--to {to!r}" in err and "nothing was pushed" not in err, err
        return
    for ref in ("localhost:99999/foo:1", "localhost:0/foo", ":5000/foo:1"):
        if where == "pull":
            err = fails("usage", "pull", ref, "-o", tmp_path / "o.tar", "--cache", tmp_path / "c")
        elif where == "inspect":
            err = fails("usage", "inspect", ref)
        else:
            (tmp_path / "images.yaml").write_text(f"version: 1\nimages:\n  - ref: {ref}\n")
            err = fails("usage", "pull", "-f", "images.yaml", "-o", "o.tar", "--cache", "c",
                        cwd=tmp_path)
            assert "images.yaml:3" in err, err
        assert ref in err, err
        assert not (tmp_path / "c").exists()


def test_bad_load_target(good: Good, dst_registry: Registry) -> None:
    for to in ("https://127.0.0.1:5000", f"{dst_registry.host}/Upper", "",
               f"{dst_registry.host}/mirror:latest", f"{dst_registry.host}/a/b:1.0"):
        err = fails("usage", "load", good.bundle, "--to", to)
        assert "--to" in err, err


@pytest.mark.parametrize(("to", "said"), [
    ("/other", "no registry host before the '/' ('')"),
    (":5000/other", "no host before the port (':5000')"),
])
def test_a_target_without_a_host_says_which_part_is_missing(tmp_path, to, said):
    """`--to /other` said 'no host before the port' though no port was given."""
    (tmp_path / "images.yaml").write_text("images: [example.com/a:1]\n")
    for args in (("sync", "-f", "images.yaml", "--to", to), ("load", "b.tar", "--to", to)):
        err = fails("usage", *args, cwd=tmp_path)
        assert f"invalid --to '{to}': {said}; expected HOST[:PORT][/PREFIX]" in err, err
