"""Edge cases found in review: each one a scenario a user can hit."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from tests.support import imagegen as ig
from tests.support.faultproxy import Fault
from tests.support.oracle import check_layout, mirror_ok, run_mirror
from tests.support.pusher import list_tags, push_blob, push_image, push_raw_manifest


def test_nested_index_is_filtered_by_platform(src_registry, dst_registry, repo_name, rng,
                                              tmp_path):
    imgs = [ig.make_image(rng, p, fmt="oci") for p in (ig.AMD64, ig.ARM64)]
    inner = ig.make_index(imgs, fmt="oci")
    push_image(src_registry.url, repo_name, inner, tags=[])
    outer = ig.dump_json({"schemaVersion": 2, "mediaType": ig.OCI_INDEX,
                          "manifests": [inner.manifest.descriptor()]})
    push_raw_manifest(src_registry.url, repo_name, "1", outer, ig.OCI_INDEX)
    ref = f"{src_registry.host}/{repo_name}:1"
    out = tmp_path / "b.tar"
    mirror_ok("pull", ref, "--platform", "linux/arm64", "-o", out, "--cache", tmp_path / "c")
    lay = check_layout(out)
    assert "blobs/sha256/" + imgs[1].digest.split(":")[1] in lay.members
    assert "blobs/sha256/" + imgs[0].digest.split(":")[1] not in lay.members
    mirror_ok("load", out, "--to", dst_registry.host)
    r = run_mirror("pull", ref, "--platform", "linux/s390x", "-o", tmp_path / "x.tar",
                   "--cache", tmp_path / "c")
    assert r.returncode == 8 and "linux/amd64, linux/arm64" in r.stderr


def test_failed_run_writes_a_report_and_no_success_is_an_error(src_registry, repo_name,
                                                               tmp_path):
    report = tmp_path / "r.json"
    report.write_text('{"stale": true}')
    missing = f"{src_registry.host}/{repo_name}:nope"
    r = run_mirror("pull", missing, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c",
                   "--report", report)
    assert r.returncode == 5
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == 5 and "nope" in doc["error"]
    assert doc["images"][0]["reference"] == missing and doc["images"][0]["error_code"] == 5
    # --keep-going with every image failed is a failure, not a partial bundle
    r = run_mirror("pull", missing, "--keep-going", "-o", tmp_path / "b.tar", "--cache",
                   tmp_path / "c", "--report", report)
    assert r.returncode == 5, r.stderr
    assert not (tmp_path / "b.tar").exists()


def test_one_digest_listed_with_two_sizes_is_refused(src_registry, repo_name, rng, tmp_path):
    layer = ig.make_layer(rng)
    good = ig.make_image(rng, ig.AMD64, fmt="oci", layers=[layer])
    push_image(src_registry.url, repo_name, good, tags=["good"])
    body = json.loads(good.manifest.data)
    body["layers"][0]["size"] += 10  # the registry accepts it: it does not check sizes
    liar = ig.dump_json(body)
    push_raw_manifest(src_registry.url, repo_name, "liar", liar, ig.OCI_MANIFEST)
    good_ref = f"{src_registry.host}/{repo_name}:good"
    liar_ref = f"{src_registry.host}/{repo_name}:liar"
    out = tmp_path / "b.tar"
    r = run_mirror("pull", good_ref, liar_ref, "--keep-going", "-o", out, "--cache",
                   tmp_path / "c")
    assert r.returncode == 13, r.stderr
    assert f"blob {layer.digest} is listed with {layer.size + 10} bytes" in r.stderr
    check_layout(out)
    assert mirror_ok("verify", out)


def _rewrite_member(src: Path, dst: Path, name: str, data: bytes) -> None:
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin:
            body = tin.extractfile(m).read() if m.isfile() else None
            if m.name == name:
                body = data
                m.size = len(data)
            tout.addfile(m, io.BytesIO(body) if body is not None else None)


def test_tampered_manifest_is_an_integrity_error(src_registry, dst_registry, repo_name, rng,
                                                 tmp_path):
    img = ig.make_image(rng, ig.AMD64, fmt="oci")
    push_image(src_registry.url, repo_name, img, tags=["t"])
    good = tmp_path / "good.tar"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:t", "-o", good, "--cache",
              tmp_path / "c")
    bad = tmp_path / "bad.tar"
    data = bytearray(img.manifest.data)
    data[5] ^= 0x01
    _rewrite_member(good, bad, "blobs/sha256/" + img.digest.split(":")[1], bytes(data))
    r = run_mirror("load", bad, "--to", dst_registry.host)
    assert r.returncode == 7 and img.digest in r.stderr, r.stderr
    assert list_tags(dst_registry.url, repo_name) == []
    r = run_mirror("verify", bad)
    assert r.returncode == 7 and img.digest in r.stdout


def test_two_registries_one_target_name_is_refused(src_registry, registry_factory,
                                                   dst_registry, rng, tmp_path):
    other = registry_factory()
    a = ig.make_image(rng, ig.AMD64, fmt="oci")
    b = ig.make_image(rng, ig.AMD64, fmt="oci")
    push_image(src_registry.url, "org/app", a, tags=["1"])
    push_image(other.url, "org/app", b, tags=["1"])
    out = tmp_path / "b.tar"
    mirror_ok("pull", f"{src_registry.host}/org/app:1", f"{other.host}/org/app:1", "-o", out,
              "--cache", tmp_path / "c")
    r = run_mirror("load", out, "--to", f"{dst_registry.host}/clash")
    assert r.returncode == 10 and "would both be pushed as" in r.stderr, r.stderr
    assert list_tags(dst_registry.url, "clash/org/app") == []


def test_zstd_load_when_the_registry_refuses_mounts(src_registry, dst_registry, faultproxy,
                                                    rng, repo_name, tmp_path):
    shared = ig.make_layer(rng)
    one = ig.make_image(rng, ig.AMD64, fmt="oci", layers=[shared])
    two = ig.make_image(rng, ig.AMD64, fmt="oci", layers=[shared, ig.make_layer(rng)])
    push_image(src_registry.url, f"{repo_name}/one", one, tags=["1"])
    push_image(src_registry.url, f"{repo_name}/two", two, tags=["1"])
    out = tmp_path / "b.tar.zst"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}/one:1",
              f"{src_registry.host}/{repo_name}/two:1", "-o", out, "--cache", tmp_path / "c")
    proxy = faultproxy(dst_registry.url)
    proxy.add(Fault("status", method="POST", path=r"mount=", status=400, times=None))
    mirror_ok("load", out, "--to", f"{proxy.host}/nomount")
    for name, img in (("one", one), ("two", two)):
        assert list_tags(dst_registry.url, f"nomount/{repo_name}/{name}") == ["1"]
        for blob in img.all_blobs():
            assert push_blob(dst_registry.url, f"nomount/{repo_name}/{name}", blob) is False
