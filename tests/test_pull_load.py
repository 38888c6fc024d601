"""Issue 2 acceptance: `mirror pull` and `mirror load` end to end, through the real CLI.

Every run is a subprocess (`python -m mirror ...`), so exit codes and output are the real
ones; registries are seeded with the raw-HTTP pusher, bundles are checked with the independent
tarfile oracle (tests/support/oracle.py) and with skopeo.
"""

from __future__ import annotations

import json
import random
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support import imagegen as ig
from tests.support.oracle import (
    ROOT,
    check_layout,
    error_line,
    file_sha256,
    mirror_cmd,
    mirror_env,
    mirror_ok,
    run,
    run_mirror,
    skopeo,
    skopeo_copy_ok,
    tag_unserved,
)
from tests.support.pusher import (
    _request,
    blob_exists,
    get_manifest,
    list_tags,
    merge_over_two,
    push_image,
)
from tests.support.registry import Registry

A_SOURCE_DIGEST = "dev.mirror.source.digest"
BASE_MEMBERS = {"oci-layout", "index.json", "mirror.json", "manifest.json", "blobs",
                "blobs/sha256"}


def sha(data: bytes) -> str:
    return ig.sha256_digest(data)


def blob_member(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def image_members(img: ig.Image) -> set[str]:
    return {blob_member(b.digest) for b in (img.manifest, img.config, *img.layers)}


def target_digest(reg: Registry, repo: str, ref: str) -> str:
    """sha256 of the bytes the target serves for repo:ref (tag or digest)."""
    body, _, _ = get_manifest(reg.url, repo, ref)
    return sha(body)


def pull(tmp_path: Path, *args: object, out: str = "bundle.tar",
         cache: str = "cache") -> Path:
    bundle = tmp_path / out
    mirror_ok("pull", *args, "-o", bundle, "--cache", tmp_path / cache, "-q")
    return bundle


def load(bundle: Path, to: str, *args: object) -> subprocess.CompletedProcess[str]:
    return mirror_ok("load", bundle, "--to", to, "-q", *args)


def children(lay, digest: str) -> list[dict]:
    return json.loads(lay.blob(digest))["manifests"]


# -- 1. one platform out of a Docker list and an OCI index --------------------------------


def test_pull_one_platform_filters_indexes_and_loads(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    dl_imgs = [ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM64_V8, ig.ARM_V7)]
    dlist = ig.make_index(dl_imgs, "docker")
    oci_imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)]
    oindex = ig.make_index(oci_imgs, "oci", attestation=True, rng=rng)  # attests amd64
    repo_d, repo_o = f"{repo_name}/dlist", f"{repo_name}/oci"
    push_image(src_registry.url, repo_d, dlist, ["v1"])
    push_image(src_registry.url, repo_o, oindex, ["v1"])
    ref_d, ref_o = f"{src_registry.host}/{repo_d}:v1", f"{src_registry.host}/{repo_o}:v1"

    bundle = pull(tmp_path, ref_d, ref_o, "--platform", "linux/arm64")
    lay = check_layout(bundle)

    # index.json: one entry per reference, each a filtered index with the source digest kept
    assert sorted(lay.entry_names()) == sorted([ref_d, ref_o])
    e_d, e_o = lay.entry(ref_d), lay.entry(ref_o)
    assert e_d["mediaType"] == ig.DOCKER_LIST and e_o["mediaType"] == ig.OCI_INDEX
    assert e_d["annotations"][A_SOURCE_DIGEST] == dlist.digest
    assert e_o["annotations"][A_SOURCE_DIGEST] == oindex.digest
    assert e_d["digest"] != dlist.digest and e_o["digest"] != oindex.digest
    src_d = json.loads(dlist.manifest.data)["manifests"]
    src_o = json.loads(oindex.manifest.data)["manifests"]
    assert children(lay, e_d["digest"]) == [src_d[1]]  # the arm64/v8 entry, unchanged
    assert children(lay, e_o["digest"]) == [src_o[1]]  # arm64 without variant; no attestation
    assert json.loads(lay.blob(e_d["digest"]))["mediaType"] == ig.DOCKER_LIST

    # exactly the arm64 manifests, configs and layers plus the two filtered indexes
    want = BASE_MEMBERS | image_members(dl_imgs[1]) | image_members(oci_imgs[1]) | {
        blob_member(e_d["digest"]), blob_member(e_o["digest"])}
    assert set(lay.members) == want
    assert len(lay.members) == len(want)

    # skopeo reads the OCI entry of our bundle
    raw = skopeo("inspect", "--raw", f"oci-archive:{bundle}:{ref_o}").stdout
    assert sha(raw.encode()) == e_o["digest"]
    skopeo_copy_ok(bundle, ref_o, tmp_path / "skopeo-oci")

    # mirror inspect --json names the same digests
    docs = json.loads(mirror_ok("inspect", bundle, "--json").stdout)
    by_ref = {d["reference"]: d for d in docs}
    assert by_ref[ref_o]["digest"] == e_o["digest"]
    assert by_ref[ref_o]["sourceDigest"] == oindex.digest
    assert by_ref[ref_d]["digest"] == e_d["digest"]

    load(bundle, dst_registry.host)
    for repo, img in ((repo_d, dl_imgs[1]), (repo_o, oci_imgs[1])):
        assert target_digest(dst_registry, repo, img.digest) == img.digest
        for blob in img.blobs():
            assert blob_exists(dst_registry.url, repo, blob.digest)
    assert not blob_exists(dst_registry.url, repo_d, dl_imgs[0].layers[0].digest)
    assert target_digest(dst_registry, repo_o, "v1") == by_ref[ref_o]["digest"]
    assert target_digest(dst_registry, repo_d, "v1") == by_ref[ref_d]["digest"]
    assert list_tags(dst_registry.url, repo_o) == ["v1"]


def test_attestation_travels_with_its_platform(
        src_registry: Registry, repo_name: str, rng: random.Random, tmp_path: Path) -> None:
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.ARM64, ig.AMD64)]
    index = ig.make_index(imgs, "oci", attestation=True, rng=rng)  # attests arm64
    push_image(src_registry.url, repo_name, index, ["v1"])
    ref = f"{src_registry.host}/{repo_name}:v1"
    lay = check_layout(pull(tmp_path, ref, "--platform", "linux/arm64"))
    att = index.extra[0]
    src = json.loads(index.manifest.data)["manifests"]
    assert children(lay, lay.entry(ref)["digest"]) == [src[0], src[2]]
    assert image_members(att) <= set(lay.members)
    assert not image_members(imgs[1]) & set(lay.members)


# -- 2. all platforms keep the source digest; a sparse index too ----------------------------


def test_all_platforms_are_byte_identical_at_the_target(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    dl = ig.make_index([ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM_V7)],
                       "docker")
    oi = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)], "oci",
                       attestation=True, rng=rng)
    repo_d, repo_o = f"{repo_name}/dlist", f"{repo_name}/oci"
    push_image(src_registry.url, repo_d, dl, ["v1"])
    push_image(src_registry.url, repo_o, oi, ["v1", "v1.0"])
    refs = [f"{src_registry.host}/{repo_d}:v1", f"{src_registry.host}/{repo_o}:v1",
            f"{src_registry.host}/{repo_o}:v1.0"]
    bundle = pull(tmp_path, *refs, "--platform", "all")
    lay = check_layout(bundle)
    assert lay.absent == {}
    for ref, idx in zip(refs, (dl, oi, oi), strict=True):
        e = lay.entry(ref)
        assert e["digest"] == idx.digest and A_SOURCE_DIGEST not in e["annotations"]
    for obj in (dl, oi):
        want = {blob_member(b.digest) for b in (*obj.all_blobs(), *obj.all_manifests())}
        assert want <= set(lay.members)

    load(bundle, dst_registry.host)
    for repo, tag, idx in ((repo_d, "v1", dl), (repo_o, "v1", oi), (repo_o, "v1.0", oi)):
        assert target_digest(dst_registry, repo, tag) == idx.digest
        raw = skopeo("inspect", "--raw", f"docker://{dst_registry.host}/{repo}:{tag}",
                     "--tls-verify=false").stdout
        assert sha(raw.encode()) == idx.digest
        for m in idx.all_manifests():
            assert target_digest(dst_registry, repo, m.digest) == m.digest
    assert sorted(list_tags(dst_registry.url, repo_o)) == ["v1", "v1.0"]


def test_sparse_index_keeps_the_source_digest(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random, tmp_path: Path) -> None:
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64_V8, ig.ARM_V7)]
    index = ig.make_index(imgs, "oci", attestation=True, rng=rng)  # attests amd64
    push_image(src_registry.url, repo_name, index, ["v1"])
    ref = f"{src_registry.host}/{repo_name}:v1"
    bundle = pull(tmp_path, ref, "--platform", "linux/arm64", "--index", "sparse")
    lay = check_layout(bundle)  # the left-out children are allowed only as "absent"
    e = lay.entry(ref)
    assert e["digest"] == index.digest and A_SOURCE_DIGEST not in e["annotations"]
    left_out = {imgs[0].digest, imgs[2].digest, index.extra[0].digest}
    assert lay.absent == {d: "sparse" for d in left_out}
    assert set(lay.members) == BASE_MEMBERS | image_members(imgs[1]) | {
        blob_member(index.digest)}
    assert lay.blob(index.digest) == index.manifest.data
    # distribution refuses an index with absent children: the error says why and what to do,
    # and no tag is left behind
    r = run_mirror("load", bundle, "--to", dst_registry.host, "--retries", "0")
    assert r.returncode == 3, r.stderr
    assert "sparse index" in r.stderr and "index: filter" in r.stderr
    assert list_tags(dst_registry.url, repo_name) == []


# -- 3 and 4. one copy of a shared layer; a warm cache fetches nothing ------------------------


def _shared_layer_images(rng: random.Random) -> tuple[ig.Layer, ig.Index, ig.Image]:
    shared = ig.make_layer(rng, 6000)
    amd = ig.make_image(rng, ig.AMD64, "oci", layers=[shared, ig.make_layer(rng)])
    arm = ig.make_image(rng, ig.ARM64, "oci", layers=[ig.make_layer(rng), shared])
    other = ig.make_image(rng, ig.AMD64, "oci", layers=[shared])
    return shared, ig.make_index([amd, arm], "oci"), other


def _seed_shared_layer_images(src_registry: Registry, faultproxy, repo_name: str,
                              rng: random.Random):
    """Push the two images into REPO/a and REPO/b; a proxy in front counts what is fetched."""
    shared, index, other = _shared_layer_images(rng)
    push_image(src_registry.url, f"{repo_name}/a", index, ["v1"])
    push_image(src_registry.url, f"{repo_name}/b", other, ["v1"])
    proxy = faultproxy(src_registry.url)
    refs = [f"{proxy.host}/{repo_name}/a:v1", f"{proxy.host}/{repo_name}/b:v1"]
    return shared, index, other, proxy, refs


def test_shared_layer_is_fetched_once_and_stored_once(
        src_registry: Registry, faultproxy, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    shared, index, other, proxy, refs = _seed_shared_layer_images(src_registry, faultproxy,
                                                                  repo_name, rng)
    lay = check_layout(pull(tmp_path, *refs, "--platform", "all"))
    gets = [p for p in proxy.paths("GET") if p.endswith(f"/blobs/{shared.digest}")]
    assert len(gets) == 1, gets
    assert lay.members.count(blob_member(shared.digest)) == 1
    assert lay.sizes[blob_member(shared.digest)] == shared.size
    # every other blob was fetched once too
    for blob in (*index.all_blobs(), *other.all_blobs()):
        n = sum(p.endswith(f"/blobs/{blob.digest}") for p in proxy.paths("GET"))
        assert n == 1, (blob.digest, n)


def test_second_pull_with_warm_cache_fetches_no_blob_and_is_identical(
        src_registry: Registry, faultproxy, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    shared, index, other, proxy, refs = _seed_shared_layer_images(src_registry, faultproxy,
                                                                  repo_name, rng)
    first = pull(tmp_path, *refs, out="first.tar")
    blob_bytes = sum(n for p, n in proxy.bytes_by_path.items() if "/blobs/" in p)
    unique = {b.digest: b.size for b in (*index.all_blobs(), *other.all_blobs())}
    assert blob_bytes == sum(unique.values())

    proxy.reset_counters()
    second = pull(tmp_path, *refs, out="second.tar")
    blob_bytes = sum(n for p, n in proxy.bytes_by_path.items() if "/blobs/" in p)
    assert blob_bytes == 0, proxy.bytes_by_path
    assert not [p for p in proxy.paths("GET") if "/blobs/" in p]

    digest = file_sha256(second)
    assert digest == file_sha256(first)
    for bundle in (first, second):
        side = bundle.with_name(bundle.name + ".sha256").read_text().split()
        assert side == [digest.split(":", 1)[1], bundle.name]
    check_layout(second)


# -- 5. platform matching ----------------------------------------------------------------


def _selected(lay, ref: str) -> list[dict]:
    """The platforms of the children the bundle's root for `ref` lists."""
    return [c["platform"] for c in children(lay, lay.entry(ref)["digest"])]


def test_platform_matching_rules(
        src_registry: Registry, repo_name: str, rng: random.Random, tmp_path: Path) -> None:
    oci = ig.make_index([ig.make_image(rng, p, "oci")
                         for p in (ig.AMD64, ig.ARM64, ig.ARM_V7, ig.ARM_V6)], "oci")
    dl = ig.make_index([ig.make_image(rng, p, "docker")
                        for p in (ig.AMD64, ig.ARM64_V8, ig.ARM_V7)], "docker")
    push_image(src_registry.url, f"{repo_name}/oci", oci, ["v1"])
    push_image(src_registry.url, f"{repo_name}/dl", dl, ["v1"])
    ref_o = f"{src_registry.host}/{repo_name}/oci:v1"
    ref_d = f"{src_registry.host}/{repo_name}/dl:v1"

    # linux/arm64/v8 takes an arm64 entry with no variant, linux/arm64 one with v8
    lay = check_layout(pull(tmp_path, ref_o, "--platform", "linux/arm64/v8", out="a.tar"))
    assert _selected(lay, ref_o) == [ig.ARM64]
    lay = check_layout(pull(tmp_path, ref_d, "--platform", "linux/arm64", out="b.tar"))
    assert _selected(lay, ref_d) == [ig.ARM64_V8]
    lay = check_layout(pull(tmp_path, ref_d, "--platform", "linux/arm64/v8", out="c.tar"))
    assert _selected(lay, ref_d) == [ig.ARM64_V8]

    # linux/arm is arm/v7, never arm/v6
    lay = check_layout(pull(tmp_path, ref_o, "--platform", "linux/arm", out="d.tar"))
    assert _selected(lay, ref_o) == [ig.ARM_V7]
    lay = check_layout(pull(tmp_path, ref_o, "--platform", "linux/arm/v6", out="e.tar"))
    assert _selected(lay, ref_o) == [ig.ARM_V6]

    # linux/arm/v6 over an index without it: exit 8, naming what the image has
    out = tmp_path / "f.tar"
    proc = run_mirror("pull", ref_d, "--platform", "linux/arm/v6", "-o", out,
                      "--cache", tmp_path / "cache")
    assert proc.returncode == 8, proc.stderr
    err = _error_line(proc)
    assert ref_d in err and "linux/arm/v6" in err
    for have in ("linux/amd64", "linux/arm64", "linux/arm/v7"):
        assert have in err, err
    assert not out.exists()


def test_single_platform_image_matches_by_its_config(
        src_registry: Registry, repo_name: str, rng: random.Random, tmp_path: Path) -> None:
    img = ig.make_image(rng, ig.ARM64_V8, "docker")
    push_image(src_registry.url, repo_name, img, ["v1"])
    ref = f"{src_registry.host}/{repo_name}:v1"
    for i, plat in enumerate(("linux/arm64", "linux/arm64/v8", "all")):
        lay = check_layout(pull(tmp_path, ref, "--platform", plat, out=f"{i}.tar"))
        e = lay.entry(ref)
        assert e["digest"] == img.digest and e["mediaType"] == ig.DOCKER_MANIFEST
        assert set(lay.members) == BASE_MEMBERS | image_members(img)
    out = tmp_path / "no.tar"
    proc = run_mirror("pull", ref, "--platform", "linux/amd64", "-o", out,
                      "--cache", tmp_path / "cache")
    assert proc.returncode == 8, proc.stderr
    err = _error_line(proc)
    assert ref in err and "linux/arm64" in err
    assert not out.exists()


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mirror: error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# -- 6. .tar.zst bundles -------------------------------------------------------------------


def test_zstd_bundle_verifies_and_loads(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64, ig.ARM_V7)]
    index = ig.make_index(imgs, "oci", attestation=True, rng=rng)
    push_image(src_registry.url, repo_name, index, ["v1"])
    ref = f"{src_registry.host}/{repo_name}:v1"
    bundle = pull(tmp_path, ref, out="x.tar.zst")
    assert bundle.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    lay = check_layout(bundle)
    assert lay.entry(ref)["digest"] == index.digest
    side = bundle.with_name("x.tar.zst.sha256").read_text().split()
    assert side == [file_sha256(bundle).split(":", 1)[1], "x.tar.zst"]
    proc = mirror_ok("verify", bundle)
    assert "OK" in proc.stdout
    load(bundle, dst_registry.host)
    assert target_digest(dst_registry, repo_name, "v1") == index.digest
    for m in index.all_manifests():
        assert target_digest(dst_registry, repo_name, m.digest) == m.digest
    for blob in index.all_blobs():
        assert blob_exists(dst_registry.url, repo_name, blob.digest)


# -- 7. skopeo's oci-archive as input --------------------------------------------------------


def test_load_skopeo_oci_archive(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, "oci")
    push_image(src_registry.url, repo_name, index, ["v1"])
    src = f"docker://{src_registry.host}/{repo_name}:v1"
    named = tmp_path / "named.tar"  # entry named "app/web:v2" (a repository and a tag)
    skopeo("copy", "--all", "--src-tls-verify=false", src, f"oci-archive:{named}:app/web:v2")
    bare = tmp_path / "bare.tar"  # entry named "v3" (a bare tag)
    skopeo("copy", "--all", "--src-tls-verify=false", src, f"oci-archive:{bare}:v3")
    for archive, name in ((named, "app/web:v2"), (bare, "v3")):
        lay = check_layout(archive)
        assert lay.entry_names() == [name]
        assert lay.entry(name)["digest"] == index.digest  # skopeo kept the OCI index

    prefix = f"{repo_name}/into"
    load(named, f"{dst_registry.host}/{prefix}")
    assert list_tags(dst_registry.url, f"{prefix}/app/web") == ["v2"]
    assert target_digest(dst_registry, f"{prefix}/app/web", "v2") == index.digest
    for img in imgs:
        assert target_digest(dst_registry, f"{prefix}/app/web", img.digest) == img.digest

    load(bare, f"{dst_registry.host}/{prefix}")
    assert list_tags(dst_registry.url, prefix) == ["v3"]
    assert target_digest(dst_registry, prefix, "v3") == index.digest

    # a bare tag with no repository to put it in: a clear error, nothing pushed
    proc = run_mirror("load", bare, "--to", dst_registry.host)
    assert proc.returncode == 10, proc.stderr
    err = _error_line(proc)
    assert str(bare) in err and "v3" in err


def _skopeo_archive(src_registry: Registry, repo_name: str, rng: random.Random,
                    dest: str) -> ig.Index:
    """A two-platform OCI index pushed to the source, then `skopeo copy --all` to `dest`
    (an oci-archive: destination); returns the index."""
    index = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)], "oci")
    push_image(src_registry.url, repo_name, index, ["v1"])
    skopeo("copy", "--all", "--src-tls-verify=false",
           f"docker://{src_registry.host}/{repo_name}:v1", dest)
    return index


def test_load_skopeo_oci_archive_without_a_ref_name(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """`skopeo copy ... oci-archive:FILE` (no :REF) writes an entry with no ref name. As
    `skopeo copy oci-archive:FILE docker://HOST/REPO` would, the load puts it in the --to
    prefix, by digest (no tag is made up), and says so: one line per such image naming its
    target reference. With no prefix to put it in, it is refused with a hint."""
    anon = tmp_path / "anon.tar"
    index = _skopeo_archive(src_registry, repo_name, rng, f"oci-archive:{anon}")
    assert check_layout(anon).entry_names() == [""]

    prefix = f"{repo_name}/anon"
    proc = mirror_ok("load", anon, "--to", f"{dst_registry.host}/{prefix}")
    where = f"{dst_registry.host}/{prefix}@{index.digest}"
    assert proc.stdout.splitlines() == [where], proc.stdout
    said = [ln for ln in proc.stderr.splitlines() if "no ref name" in ln]
    assert len(said) == 1 and where in said[0] and str(anon) in said[0], proc.stderr
    assert target_digest(dst_registry, prefix, index.digest) == index.digest
    assert list_tags(dst_registry.url, prefix) == []

    proc = run_mirror("load", anon, "--to", dst_registry.host)
    assert proc.returncode == 10, proc.stderr
    err = _error_line(proc)
    assert str(anon) in err and "no ref name" in err, err
    assert "--to HOST/REPO" in proc.stderr


def test_skopeo_oci_archive_compressed_with_zstd(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """skopeo writes index.json and oci-layout last, and no mirror.json. zstd-compressed
    (`zstd x.tar`), verify called it "no index.json file: not an OCI image layout" (the scan
    waited for a mirror.json after oci-layout, then never built the layout it held) and load
    refused it; both take it now, as they take the plain tar."""
    import zstandard

    archive = tmp_path / "skopeo.tar"
    index = _skopeo_archive(src_registry, repo_name, rng, f"oci-archive:{archive}:v4")
    with tarfile.open(archive) as tf:
        assert tf.getnames()[-2:] == ["index.json", "oci-layout"], tf.getnames()
    zst = tmp_path / "skopeo.tar.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(archive.read_bytes()))
    assert f"{zst}: OK" in mirror_ok("verify", zst).stdout
    prefix = f"{repo_name}/zst"
    load(zst, f"{dst_registry.host}/{prefix}")
    assert target_digest(dst_registry, prefix, "v4") == index.digest


# -- 8. load --dry-run ------------------------------------------------------------------------


@pytest.mark.slow
def test_load_dry_run_lists_and_pushes_nothing(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    imgs = [ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM64_V8)]
    dl = ig.make_index(imgs, "docker")
    push_image(src_registry.url, repo_name, dl, ["v1"])
    ref = f"{src_registry.host}/{repo_name}:v1"
    bundle = pull(tmp_path, ref)
    proc = mirror_ok("load", bundle, "--to", dst_registry.host, "--dry-run")
    out = proc.stdout
    for blob in dl.all_blobs():
        assert f"blob {blob.digest} -> {repo_name}" in out, out
    for m in dl.all_manifests():
        assert f"manifest {m.digest} -> " in out, out
    assert f"-> {dst_registry.host}/{repo_name}:v1" in out
    assert list_tags(dst_registry.url, repo_name) == []
    for blob in dl.all_blobs():
        assert not blob_exists(dst_registry.url, repo_name, blob.digest)
    # once loaded, nothing would be pushed: a dry run says so, as the load would do
    load(bundle, dst_registry.host)
    proc = mirror_ok("load", bundle, "--to", dst_registry.host, "--dry-run")
    assert proc.stdout == "", proc.stdout


# -- 10. memory does not grow with layer size ----------------------------------------------


def _peak_rss_kib(args: list[object], tmp_path: Path, name: str) -> int:
    """Run `mirror ARGS` under GNU time and return its peak RSS in KiB."""
    out = tmp_path / f"{name}.time"
    cmd = ["/usr/bin/time", "-f", "%M", "-o", str(out), *mirror_cmd(*args)]
    proc = run(cmd, env=mirror_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr}"
    return int(out.read_text().strip().splitlines()[-1])


@pytest.mark.slow
def test_memory_does_not_grow_with_layer_size(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    rss: dict[str, dict[str, int]] = {"pull": {}, "load": {}}
    for label, size in (("small", 8 << 20), ("large", 80 << 20)):
        layer = ig.make_layer(rng, size=size, compressed=False)
        img = ig.make_image(rng, ig.AMD64, "oci", layers=[layer])
        repo = f"{repo_name}/{label}"
        push_image(src_registry.url, repo, img, ["v1"])
        del layer
        bundle = tmp_path / f"{label}.tar"
        rss["pull"][label] = _peak_rss_kib(
            ["pull", f"{src_registry.host}/{repo}:v1", "-o", bundle,
             "--cache", tmp_path / f"cache-{label}", "-q"], tmp_path, f"pull-{label}")
        assert bundle.stat().st_size > size
        rss["load"][label] = _peak_rss_kib(
            ["load", bundle, "--to", dst_registry.host, "-q"], tmp_path, f"load-{label}")
        assert target_digest(dst_registry, repo, "v1") == img.digest
        bundle.unlink()
    for cmd, peaks in rss.items():
        assert peaks["large"] < peaks["small"] + 30 * 1024, (cmd, peaks)


@pytest.mark.slow
def test_load_report_fields_have_one_type_whatever_the_outcome(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """`dry_run` is a boolean (was this a dry run) and `would_push` the dry run's lines, in
    a successful load, a dry run and a load that failed; it used to be `[]` on success and
    `false` after an error."""
    img = ig.make_image(rng, ig.AMD64, "oci")
    push_image(src_registry.url, repo_name, img, ["v1"])
    bundle = pull(tmp_path, f"{src_registry.host}/{repo_name}:v1")
    report = tmp_path / "load.json"
    docs = {}
    for name, to, extra in (("dry", dst_registry.host, ["--dry-run"]),
                            ("load", dst_registry.host, []),
                            ("failed", "127.0.0.1:9", ["--retries", "0"]),
                            ("failed-dry", "127.0.0.1:9", ["--retries", "0", "--dry-run"])):
        proc = run_mirror("load", bundle, "--to", to, "--report", report, *extra)
        assert (proc.returncode == 0) == (not name.startswith("failed")), proc.stderr
        docs[name] = json.loads(report.read_text())
    for name, doc in docs.items():
        assert doc["dry_run"] is ("dry" in name), (name, doc)
        assert isinstance(doc["would_push"], list), (name, doc)
        for key in ("blobs_pushed", "bytes_pushed", "manifests_pushed", "tags"):
            assert (doc[key] is None) == name.startswith("failed"), (name, key, doc)
    assert f"blob {img.layers[0].digest} -> {repo_name}" in docs["dry"]["would_push"]
    assert docs["load"]["would_push"] == docs["failed"]["would_push"] == []
    assert docs["failed-dry"]["would_push"] == []


@pytest.mark.slow
def test_an_oci_layout_directory_is_verified_inspected_and_loaded(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """An OCI image layout as a directory (a bundle unpacked, `skopeo copy oci:DIR`, an
    extracted `ctr export`): verify, inspect (not a Docker Hub name) and load read it as they
    read the tar."""
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, "oci")
    push_image(src_registry.url, repo_name, index, ["1"])
    ref = f"{src_registry.host}/{repo_name}:1"
    bundle = pull(tmp_path, ref)
    layout = tmp_path / "layout"
    with tarfile.open(bundle) as tf:
        tf.extractall(layout, filter="data")
    mirror_ok("verify", layout)
    doc = json.loads(mirror_ok("inspect", layout, "--json").stdout)
    assert [d["digest"] for d in doc] == [index.digest]
    load(layout, f"{dst_registry.host}/dir")
    assert target_digest(dst_registry, f"dir/{repo_name}", "1") == index.digest
    cfg = layout / "blobs" / "sha256" / imgs[1].config.digest.split(":")[1]
    cfg.write_bytes(cfg.read_bytes().replace(b'"os"', b'"OS"'))  # same size, other bytes
    bad = run_mirror("verify", layout)
    assert bad.returncode == 7 and imgs[1].config.digest in bad.stdout + bad.stderr, bad


@pytest.mark.slow
def test_a_tag_holding_another_index_is_replaced_with_a_warning_or_merged(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """The target's tag holds an amd64+arm64 index; the bundle's index has amd64 only (a
    new build). Plain load: replaced, with a warning naming arm64 and --merge. --merge: the
    tag gets the bundle's amd64 entry and the old arm64 one (a new digest, reported)."""
    old_imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)]
    old = ig.make_index(old_imgs, "oci")
    new_img = ig.make_image(rng, ig.AMD64, "oci")
    new = ig.make_index([new_img], "oci")
    push_image(src_registry.url, repo_name, new, ["1"])
    bundle = pull(tmp_path, f"{src_registry.host}/{repo_name}:1")
    dst_repo = f"m/{repo_name}"
    push_image(dst_registry.url, dst_repo, old, ["1"])
    plain = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/m")
    assert "linux/arm64" in plain.stderr and "--merge" in plain.stderr, plain.stderr
    assert target_digest(dst_registry, dst_repo, "1") == new.digest

    push_image(dst_registry.url, dst_repo, old, ["1"])  # the tag as it was
    merged = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/m", "--merge")
    body, _, _ = get_manifest(dst_registry.url, dst_repo, "1")
    entries = json.loads(body)["manifests"]
    assert [e["digest"] for e in entries] == [new_img.digest, old_imgs[1].digest]
    assert f"{new.digest} -> {sha(body)}" in merged.stderr, merged.stderr
    again = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/m", "--merge")
    assert target_digest(dst_registry, dst_repo, "1") == sha(body)  # a re-run: the same
    assert "0 manifest(s) pushed" in again.stderr, again.stderr


def test_a_platform_manifest_deleted_at_the_target_is_loaded_again(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """o26 D1 at load: a platform manifest deleted at the target (a registry's clean-up of
    untagged manifests, a hand's DELETE) while the tag still names the index. A load of the
    bundle found the tag naming the index, took the image for there whole and pushed
    nothing: exit 0, the target's index naming a manifest it does not serve, every run
    after. Step 0 now asks the target about each manifest the index lists (a HEAD each): the
    lost one is pushed again, by digest, its blobs found there (HEAD), the tags left as
    they were, and a line says so, once for the two tags naming the index (o27 D2: once a
    tag), and a dry run before says it would be (o27 D2: it said "pushed again"); the load
    after pushes nothing."""
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, "oci", attestation=True, rng=rng)
    push_image(src_registry.url, repo_name, index, ["1", "latest"])
    bundle = pull(tmp_path, f"{src_registry.host}/{repo_name}:1",
                  f"{src_registry.host}/{repo_name}:latest", "--platform", "all")
    report = tmp_path / "r.json"
    to, repo = f"{dst_registry.host}/gone", f"gone/{repo_name}"

    said = []

    def run_load(*args: str) -> dict:
        said.append(mirror_ok("load", bundle, "--to", to, "--report", report, *args).stderr)
        return json.loads(report.read_text())

    first = run_load("-q")
    assert first["manifests_pushed"] == len(index.all_manifests()), first
    lost = imgs[1].digest
    status, _, body = _request("DELETE", f"{dst_registry.url}/v2/{repo}/manifests/{lost}")
    assert status == 202, body
    assert _request("HEAD", f"{dst_registry.url}/v2/{repo}/manifests/{lost}")[0] == 404
    line = f"{to}/{repo_name}: 1, latest name {index.digest}, but the target does not " \
        f"serve {lost} below it:"
    run_load("--dry-run")
    assert said[-1].count(line) == 1 and f"{line} would be pushed again" in said[-1], said[-1]
    assert _request("HEAD", f"{dst_registry.url}/v2/{repo}/manifests/{lost}")[0] == 404
    again = run_load()
    assert target_digest(dst_registry, repo, lost) == lost  # served again, the same bytes
    assert target_digest(dst_registry, repo, "1") == index.digest
    for m in index.all_manifests():
        assert target_digest(dst_registry, repo, m.digest) == m.digest
    # the lost manifest alone pushed: its blobs, the other manifests and the tag were there
    assert (again["manifests_pushed"], again["blobs_pushed"]) == (1, 0), again
    assert again["tags"] == first["tags"], again
    assert said[-1].count(line) == 1 and f"{line} pushed again" in said[-1], said[-1]
    third = run_load("-q")
    assert third["manifests_pushed"] == 0, third
    assert third["manifests_present"] == first["manifests_pushed"], third


def test_a_merge_rerun_is_silent_under_q(src_registry: Registry, dst_registry: Registry,
                                         repo_name: str, rng: random.Random,
                                         tmp_path: Path) -> None:
    """`load --merge -q` under cron: the first run warns that it merged; a re-run, whose tag
    already holds that merged index, pushes nothing and says nothing (it used to warn
    'merged' every night)."""
    old = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)], "oci")
    new = ig.make_index([ig.make_image(rng, ig.AMD64, "oci")], "oci")
    push_image(src_registry.url, repo_name, new, ["1"])
    bundle = pull(tmp_path, f"{src_registry.host}/{repo_name}:1")
    push_image(dst_registry.url, f"q/{repo_name}", old, ["1"])
    first = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/q", "--merge", "-q")
    assert "merged" in first.stderr, first.stderr
    again = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/q", "--merge", "-q")
    assert again.stderr == "" and again.stdout == "", again.stderr


@pytest.mark.parametrize("kind", ["404", "damaged"])
def test_a_merge_whose_tag_the_target_does_not_serve_fails_that_image_alone(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, kind: str) -> None:
    """`load --merge` of two images, the target's tag of one holding an amd64+arm64 index
    that the target does not serve (its HEAD names it; a GET answers 404, or damaged bytes):
    that image fails alone, its tag left as it was (pushed over, it would lose arm64), with
    one line naming the target registry, repository and digest; the other image is pushed
    and listed, on stdout and in the report's placement; exit 5 (404) or 7 (the bytes), the
    image's own. It stopped the load (damaged), or pushed over the tag (404), before."""
    proxy = faultproxy(dst_registry.url)
    old, other, refs = merge_over_two(src_registry.url, repo_name, rng)
    bundle = pull(tmp_path, *refs)
    repo = f"m{kind}/{repo_name}/a"
    push_image(dst_registry.url, repo, old, ["1"])
    tag_unserved(proxy, repo, "1", kind)
    report = tmp_path / "r.json"
    done = run_mirror("load", bundle, "--to", f"{proxy.host}/m{kind}", "--merge",
                      "--report", report)
    assert done.returncode == (5 if kind == "404" else 7), done.stderr
    line = error_line(done)
    assert f"{proxy.host}/{repo}:1" in line and old.digest in line, line
    assert "Traceback" not in done.stderr, done.stderr
    assert target_digest(dst_registry, repo, "1") == old.digest  # as it was
    b = f"m{kind}/{repo_name}/b"
    assert target_digest(dst_registry, b, "1") == other.digest
    assert done.stdout.splitlines() == [f"{proxy.host}/{b}:1"], done.stdout
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == done.returncode and doc["error"] == line[len("mirror: error: "):]
    assert [p["repository"] for p in doc["placement"]] == [b], doc["placement"]
    assert doc["failed"] == [{"source": refs[0], "repository": repo, "tag": "1",
                              "digest": ig.sha256_digest(get_manifest(
                                  src_registry.url, f"{repo_name}/a", "1")[0]),
                              "error": doc["error"], "error_code": done.returncode}], doc


@pytest.mark.slow
def test_a_dry_run_says_what_a_tag_holding_another_index_would_get(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """`load --dry-run` over a tag that holds another index: the warning the load would give
    (platforms no longer tagged); with --merge, the merged index as the manifest to push."""
    old = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)], "oci")
    new = ig.make_index([ig.make_image(rng, ig.AMD64, "oci")], "oci")
    push_image(src_registry.url, repo_name, new, ["1"])
    bundle = pull(tmp_path, f"{src_registry.host}/{repo_name}:1")
    dst_repo = f"dry/{repo_name}"
    push_image(dst_registry.url, dst_repo, old, ["1"])
    plain = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/dry", "--dry-run")
    assert "linux/arm64" in plain.stderr and "--merge" in plain.stderr, plain.stderr
    report = tmp_path / "r.json"
    mirror_ok("load", bundle, "--to", f"{dst_registry.host}/dry", "--dry-run", "--merge",
              "--report", report)
    assert target_digest(dst_registry, dst_repo, "1") == old.digest  # nothing pushed
    mirror_ok("load", bundle, "--to", f"{dst_registry.host}/dry", "--merge")
    merged = target_digest(dst_registry, dst_repo, "1")
    would = json.loads(report.read_text())["would_push"]
    assert f"manifest {merged} -> {dst_registry.host}/{dst_repo}:1" in would, would


@pytest.mark.slow
def test_a_digest_pinned_image_is_named_where_it_was_loaded(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """An image pulled by digest has no tag to push: the load used to list nothing for it
    (stdout, the per-image line); with --no-digest-tag it names it as a tagged one is,
    `target@digest`; by default it is pushed under the tag sha256-<hex> (mirror.mapping)."""
    img = ig.make_image(rng, ig.AMD64, "oci")
    push_image(src_registry.url, repo_name, img, ["x"])
    bundle = pull(tmp_path, f"{src_registry.host}/{repo_name}@{img.digest}")
    report = tmp_path / "pin.json"
    proc = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/pin", "--no-digest-tag",
                     "--report", report)
    at = f"{dst_registry.host}/pin/{repo_name}@{img.digest}"
    assert at in proc.stdout.splitlines(), proc.stdout
    assert f"-> {at}" in proc.stderr, proc.stderr
    # the report: `untagged` is for entries with no ref name; this one, named by its digest,
    # is in `placement` with no tag (README said `untagged` was "what went by digest only")
    doc = json.loads(report.read_text())
    assert doc["untagged"] == [] and doc["tags"] == [], doc
    assert doc["placement"] == [{"source": f"{src_registry.host}/{repo_name}@{img.digest}",
                                 "repository": f"pin/{repo_name}", "tags": [],
                                 "digest": img.digest}], doc
    readme = (ROOT / "README.md").read_text()
    assert "`untagged`: what went by digest only" not in readme
    assert "`untagged`: the images with no ref name" in readme
    again = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/pin",  # already there
                      "--no-digest-tag")
    assert at in again.stdout.splitlines(), again.stdout
    tagged = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/pin")
    tag = f"{dst_registry.host}/pin/{repo_name}:{img.digest.replace(':', '-')}"
    assert tagged.stdout.splitlines() == [tag], tagged.stdout


def test_one_image_over_a_multi_arch_tag_is_not_replaced_silently(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """The target's tag holds an amd64+arm64 index; the bundle holds one image manifest for
    that tag (a docker-archive, a single-platform image): the load replaces the index, and
    now says so, naming the platforms the tag no longer has (it was silent)."""
    old = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)], "oci")
    one = ig.make_image(rng, ig.AMD64, "oci")
    push_image(src_registry.url, repo_name, one, ["1"])
    bundle = pull(tmp_path, f"{src_registry.host}/{repo_name}:1")
    push_image(dst_registry.url, f"one/{repo_name}", old, ["1"])
    proc = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/one")
    assert target_digest(dst_registry, f"one/{repo_name}", "1") == one.digest
    assert "linux/arm64" in proc.stderr and old.digest in proc.stderr, proc.stderr
    again = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/one", "-q")
    assert again.stderr == "", again.stderr  # the tag holds it now: nothing to say


@pytest.mark.slow
def test_load_dry_run_says_what_the_load_does(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """`load --dry-run` listed a platform manifest once per tag naming its index (the load
    pushes it once), and its report counted no manifest already present (the load counts
    every one): against a fresh target and against one that holds the bundle, the dry run's
    lines and counts are now what the load then does."""
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, "oci")
    push_image(src_registry.url, repo_name, index, ["v1", "v2"])
    bundle = pull(tmp_path, f"{src_registry.host}/{repo_name}:v1",
                  f"{src_registry.host}/{repo_name}:v2")
    to = f"{dst_registry.host}/dry-{tmp_path.name[-12:].lower().strip('-_.')}"
    report = tmp_path / "r.json"

    def run_load(*extra: str) -> dict:
        mirror_ok("load", bundle, "--to", to, "-q", "--report", report, *extra)
        return json.loads(report.read_text())

    dry = run_load("--dry-run")
    lines = [ln for ln in dry["would_push"] if ln.startswith("manifest ")]
    assert len(lines) == len(set(lines)), lines
    by_digest = [ln for ln in lines if "@sha256:" in ln]
    assert len(by_digest) == len(imgs), lines  # each platform manifest once
    assert sum(ln.endswith((":v1", ":v2")) for ln in lines) == 2, lines
    first = run_load()
    # the index under two tags is one manifest pushed (and two tags)
    assert first["manifests_pushed"] == len({ln.split()[1] for ln in lines}) == 3, (first, lines)
    assert len(first["tags"]) == 2, first
    again = run_load("--dry-run")
    second = run_load()
    assert again["would_push"] == [], again
    for key in ("blobs_present", "manifests_present"):
        assert again[key] == second[key], (key, again, second)
    assert second["manifests_present"] == first["manifests_pushed"], (first, second)
