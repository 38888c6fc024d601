"""Issue 5: cron-grade runs: incremental bundles, lock files, verify, inspect, report, run lock,
--keep-going, --dry-run, cache prune. Everything against the real registry."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from mirror.errors import EXIT_CODES
from tests.support import imagegen as ig
from tests.support.faultproxy import Fault
from tests.support.oracle import (
    ROOT,
    check_layout,
    downloading,
    file_sha256,
    mirror_cmd,
    mirror_env,
    mirror_ok,
    run,
    run_mirror,
)
from tests.support.pusher import _request, blob_exists, list_tags, push_image, slow_image

EXIT = {"integrity": 7, "bundle": 10, "incomplete-base": 11, "lock-held": 12, "partial": 13,
        "not-found": 5}
EXIT_WAITING = EXIT_CODES["rate-limited-partial"]


def _multi(rng, fmt="oci", base=None):
    base = base or ig.make_layer(rng)
    imgs = [ig.make_image(rng, p, fmt=fmt, layers=[base, ig.make_layer(rng)])
            for p in (ig.AMD64, ig.ARM64)]
    return ig.make_index(imgs, fmt=fmt), base


def _read(bundle: Path, name: str) -> dict:
    with tarfile.open(bundle) as tf:
        return json.loads(tf.extractfile(name).read())


def _members(bundle: Path) -> set[str]:
    with tarfile.open(bundle) as tf:
        return {m.name for m in tf if m.isfile()}


def test_incremental_bundle_carries_only_new_blobs(src_registry, dst_registry, registry_factory,
                                                   repo_name, rng, tmp_path):
    one, base = _multi(rng)
    push_image(src_registry.url, repo_name, one, tags=["1"])
    cache = tmp_path / "cache"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:1", "-o", tmp_path / "base.tar",
              "--cache", cache)
    two, _ = _multi(rng, base=base)
    push_image(src_registry.url, repo_name, two, tags=["2"])
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:1", f"{src_registry.host}/{repo_name}:2",
              "--base", tmp_path / "base.tar", "-o", tmp_path / "inc.tar", "--cache", cache)
    inc = tmp_path / "inc.tar"
    members = _members(inc)
    # every manifest, only the blobs the base did not carry
    new_blobs = {b.digest for b in two.all_blobs()} - {b.digest for b in one.all_blobs()}
    carried = {m.split("/")[-1] for m in members if m.startswith("blobs/")}
    manifests = {m.digest for m in [*one.all_manifests(), *two.all_manifests()]}
    assert carried == {d.split(":")[1] for d in new_blobs | manifests}
    inv = _read(inc, "mirror.json")
    assert inv["base"]["digest"] == file_sha256(tmp_path / "base.tar")
    assert base.digest in inv["absent"] and inv["absent"][base.digest] == "base"
    assert set(inv["blobs"]) >= {b.digest for b in two.all_blobs()}
    assert run_mirror("verify", inc).returncode == 0

    # an empty registry refuses it, names what is missing and which base has it, pushes nothing
    empty = registry_factory()
    r = run_mirror("load", inc, "--to", empty.host)
    assert r.returncode == EXIT["incomplete-base"], r.stderr
    assert base.digest in r.stderr and "base.tar" in r.stderr
    assert list_tags(empty.url, repo_name) == []

    # with the base loaded first, it loads
    mirror_ok("load", tmp_path / "base.tar", "--to", dst_registry.host)
    mirror_ok("load", inc, "--to", dst_registry.host)
    assert sorted(list_tags(dst_registry.url, repo_name)) == ["1", "2"]


def test_an_incremental_pull_counts_blobs_as_it_counts_bytes(src_registry, repo_name, rng,
                                                             tmp_path):
    """A single-platform image's config is read to plan it (its platform); with --base
    carrying it and a fresh cache, the read crossed the network but the bundle leaves the
    config to its base. The report said `1 blob(s) fetched (0 bytes)`: the blob counted, its
    bytes not (pull.result's rule: a config an incremental pull read for planning, which its
    base carried, is neither fetched nor reused). Now blobs_fetched counts as bytes_fetched
    does: the blobs of the bundle."""
    img = ig.make_image(rng, ig.AMD64, fmt="oci")
    push_image(src_registry.url, repo_name, img, tags=["1"])
    ref = f"{src_registry.host}/{repo_name}:1"
    base = tmp_path / "base.tar"
    mirror_ok("pull", ref, "-o", base, "--cache", tmp_path / "c0", "-q")
    report = tmp_path / "r.json"
    mirror_ok("pull", ref, "--base", base, "-o", tmp_path / "inc.tar", "--cache",
              tmp_path / "c1", "--report", report, "-q")
    got = json.loads(report.read_text())
    assert (got["blobs_fetched"], got["bytes_fetched"]) == (0, 0), got
    assert (got["blobs_reused"], got["bytes_reused"]) == (0, 0), got
    # a full pull on that cache: the config it read counts with its bytes, as always
    mirror_ok("pull", ref, "-o", tmp_path / "full.tar", "--cache", tmp_path / "c1", "--report",
              report, "-q")
    got = json.loads(report.read_text())
    assert got["blobs_fetched"] + got["blobs_reused"] == 1 + len(img.layers), got
    assert got["bytes_fetched"] + got["bytes_reused"] == \
        img.config.size + sum(x.size for x in img.layers), got


@pytest.mark.parametrize("kind", ["bundle", "lock"])
def test_incremental_load_mounts_base_blobs_from_other_repositories(
        src_registry, dst_registry, faultproxy, repo_name, rng, kind, tmp_path):
    """The base put the shared layer in another repository of the target (its own image's,
    under this prefix or another): the incremental load finds it there (the base's images
    under this prefix, this bundle's repositories, then the catalog) and mounts it (POST
    ?mount=&from=) instead of refusing with exit 11. With nowhere to find it (no catalog) it
    refuses, naming the blob, pushing nothing."""
    shared = ig.make_layer(rng)
    one = ig.make_image(rng, ig.AMD64, fmt="oci", layers=[shared, ig.make_layer(rng)])
    two = ig.make_image(rng, ig.AMD64, fmt="oci", layers=[shared, ig.make_layer(rng)])
    push_image(src_registry.url, f"{repo_name}/base", one, tags=["1"])
    push_image(src_registry.url, f"{repo_name}/app", two, tags=["1"])
    cache, full, inc = tmp_path / "cache", tmp_path / "base.tar", tmp_path / "inc.tar"
    ref_one = f"{src_registry.host}/{repo_name}/base:1"
    mirror_ok("pull", ref_one, "-o", full, "--cache", cache, "-q", "--lock-file",
              tmp_path / "base.lock")  # the lock file written with the bundle
    base = full if kind == "bundle" else tmp_path / "base.lock"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}/app:1", "--base", base, "-o", inc,
              "--cache", cache, "-q")
    assert _read(inc, "mirror.json")["absent"] == {shared.digest: "base"}
    mirror_ok("load", full, "--to", f"{dst_registry.host}/{kind}-p")  # the base, first

    nocat = faultproxy(dst_registry.url)  # a registry without a catalog
    nocat.add(Fault("status", path=r"/v2/_catalog", status=404, times=None))
    app = f"{repo_name}/app"
    for prefix, host in ((f"{kind}-p", nocat.host),  # the base image's repository, same prefix
                         (f"{kind}-q", dst_registry.host)):  # another prefix: the catalog
        report = tmp_path / f"{prefix}.json"
        mirror_ok("load", inc, "--to", f"{host}/{prefix}", "--report", report, "-q")
        assert list_tags(dst_registry.url, f"{prefix}/{app}") == ["1"]
        assert blob_exists(dst_registry.url, f"{prefix}/{app}", shared.digest)
        assert json.loads(report.read_text())["blobs_mounted"] == 1

    r = run_mirror("load", inc, "--to", f"{nocat.host}/{kind}-r")  # nowhere to mount from
    assert r.returncode == EXIT["incomplete-base"], r.stderr
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("mirror: error:"))
    assert "1 blob(s) it does not carry" in line and shared.digest in line, line
    assert "nothing was pushed" in line, line
    assert list_tags(dst_registry.url, f"{kind}-r/{app}") == []
    assert not blob_exists(dst_registry.url, f"{kind}-r/{app}", two.layers[1].digest)


def test_incremental_load_lists_five_missing_base_blobs_and_counts_the_rest(
        src_registry, registry_factory, repo_name, rng, tmp_path):
    shared = [ig.make_layer(rng) for _ in range(8)]
    one = ig.make_image(rng, ig.AMD64, fmt="oci", layers=shared)
    two = ig.make_image(rng, ig.AMD64, fmt="oci", layers=[*shared, ig.make_layer(rng)])
    push_image(src_registry.url, repo_name, one, tags=["1"])
    push_image(src_registry.url, repo_name, two, tags=["2"])
    cache, base, inc = tmp_path / "cache", tmp_path / "base.tar", tmp_path / "inc.tar"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:1", "-o", base, "--cache", cache)
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:2", "--base", base, "-o", inc,
              "--cache", cache)
    r = run_mirror("load", inc, "--to", registry_factory().host)
    assert r.returncode == EXIT["incomplete-base"], r.stderr
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("mirror: error:"))
    assert "8 blob(s) it does not carry" in line, line
    assert sum(layer.digest in line for layer in shared) == 5, line
    assert "and 3 more; nothing was pushed" in line, line


def test_the_missing_base_hint_names_the_base_bundle_not_its_lock_file(
        src_registry, registry_factory, repo_name, rng, tmp_path):
    """README's nightly script gives the base as `--base bundles/carried.lock`. The load of
    the next bundle on a target without the base (exit 11) said `load first the bundle(s)
    made before this one (it was made against carried.lock)`: a file that stays on the
    connected side; the lock file names the bundle written with it (site-1.tar, its digest),
    which is the one to load first (operator pass o19). mirror.json names that bundle, as
    with the bundle itself as --base (the same bytes), and so do inspect (its --json per
    image, `baseBundle`) and the hint; a lock
    whose bundle digest was edited into no sha256 is refused (exit 2), nothing written."""
    one = ig.make_image(rng, ig.AMD64, fmt="oci")
    two = ig.make_image(rng, ig.AMD64, fmt="oci", layers=[*one.layers, ig.make_layer(rng)])
    push_image(src_registry.url, repo_name, one, tags=["1"])
    push_image(src_registry.url, repo_name, two, tags=["2"])
    cfg, cache = tmp_path / "images.yaml", tmp_path / "cache"
    cfg.write_text(f"version: 1\nimages:\n  - {src_registry.host}/{repo_name}:1\n")
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "site-1.tar", "--cache", cache, "-q")
    shutil.copy(tmp_path / "images.lock", tmp_path / "carried.lock")
    cfg.write_text(f"version: 1\nimages:\n  - {src_registry.host}/{repo_name}:2\n")
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "site-2.tar", "--base",
              tmp_path / "carried.lock", "--cache", cache, "-q")
    digest = file_sha256(tmp_path / "site-1.tar")
    base = _read(tmp_path / "site-2.tar", "mirror.json")["base"]
    assert (base["name"], base["digest"]) == ("site-1.tar", digest), base
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "by-bundle.tar", "--base",
              tmp_path / "site-1.tar", "--cache", cache, "-q", "--lock-file", tmp_path / "x")
    assert _read(tmp_path / "by-bundle.tar", "mirror.json")["base"] == base
    note = mirror_ok("inspect", tmp_path / "site-2.tar").stderr
    assert f"incremental bundle, made against site-1.tar, {digest}:" in note, note
    docs = json.loads(mirror_ok("inspect", tmp_path / "site-2.tar", "--json", "-q").stdout)
    assert [d["baseBundle"] for d in docs] == [{"name": "site-1.tar", "digest": digest}], docs
    docs = json.loads(mirror_ok("inspect", tmp_path / "site-1.tar", "--json", "-q").stdout)
    assert all("baseBundle" not in d for d in docs), docs  # a full bundle names none
    r = run_mirror("load", tmp_path / "site-2.tar", "--to", registry_factory().host)
    assert r.returncode == EXIT["incomplete-base"], r.stderr
    hint = next(ln for ln in r.stderr.splitlines() if ln.lstrip().startswith("hint:"))
    assert hint.endswith(f"(it was made against site-1.tar, {digest})"), hint
    lock = json.loads((tmp_path / "carried.lock").read_text())
    lock["bundle"]["digest"] = digest[:-1]
    (tmp_path / "carried.lock").write_text(json.dumps(lock))
    r = run_mirror("pull", "-f", cfg, "-o", tmp_path / "site-3.tar", "--base",
                   tmp_path / "carried.lock", "--cache", cache, "-q", "--lock-file", tmp_path / "y")
    assert r.returncode == EXIT_CODES["usage"], r.stderr
    assert r.stderr.startswith(f"mirror: error: --base {tmp_path / 'carried.lock'}: the bundle "
                               "it names (site-1.tar) has no sha256 digest"), r.stderr
    assert not (tmp_path / "site-3.tar").exists() and not (tmp_path / "y").exists()


def test_incremental_inventory_is_checked_against_the_bundle(src_registry, dst_registry,
                                                             repo_name, rng, tmp_path):
    """An incremental bundle's blob left to its base is listed absent ("base"); with that
    reason changed (to "foreign": load would leave it behind as if no registry could have it),
    or the base's name removed, verify and load refuse it (exit 10) naming the entry, even
    with the base already at the target; load pushes nothing."""
    one, base = _multi(rng)
    push_image(src_registry.url, repo_name, one, tags=["1"])
    cache, full, inc = tmp_path / "cache", tmp_path / "base.tar", tmp_path / "inc.tar"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:1", "-o", full, "--cache", cache)
    two, _ = _multi(rng, base=base)
    push_image(src_registry.url, repo_name, two, tags=["2"])
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:2", "--base", full, "-o", inc,
              "--cache", cache)
    assert _read(inc, "mirror.json")["absent"] == {base.digest: "base"}
    assert f"{inc}: OK" in mirror_ok("verify", inc).stdout
    mirror_ok("load", full, "--to", dst_registry.host)

    def edit_inventory(change):
        def edit(name, data):
            if name != "mirror.json":
                return data
            doc = json.loads(data)
            change(doc)
            return json.dumps(doc).encode()
        return edit

    cases = {
        "reason": (lambda doc: doc["absent"].update({base.digest: "foreign"}),
                   f"mirror.json: blob {base.digest} is listed but not in the bundle"),
        "no-base": (lambda doc: doc.pop("base"),
                    f"mirror.json: absent {base.digest} (base): no base bundle is named"),
    }
    for what, (change, expect) in cases.items():
        bad = tmp_path / f"{what}.tar"
        _rewrite(inc, bad, edit_inventory(change))
        r = run_mirror("verify", bad)
        assert r.returncode == EXIT["bundle"], (what, r.stdout, r.stderr)
        assert f"{bad}: {expect}" in r.stdout, (what, r.stdout)
        r = run_mirror("load", bad, "--to", f"{dst_registry.host}/{what}")
        assert r.returncode == EXIT["bundle"], (what, r.stderr)
        assert f"{bad}: {expect}" in r.stderr, (what, r.stderr)
        assert list_tags(dst_registry.url, f"{what}/{repo_name}") == []


def test_locked_pull_is_reproducible_even_after_the_tag_moves(src_registry, repo_name, rng,
                                                               tmp_path):
    first, _ = _multi(rng)
    push_image(src_registry.url, repo_name, first, tags=["v"])
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"version: 1\nimages:\n  - {src_registry.host}/{repo_name}:v\n")
    mirror_ok("lock", "-f", cfg, "--cache", tmp_path / "c0")
    lock = json.loads((tmp_path / "images.lock").read_text())
    entry = lock["images"][f"{src_registry.host}/{repo_name}:v"]
    assert entry["sourceDigest"] == first.digest
    assert set(entry["platforms"]) == {"linux/amd64", "linux/arm64"}
    assert set(lock["blobs"]) == {b.digest for b in first.all_blobs()}
    # the tag moves upstream; --locked still pulls what the lock says
    moved, _ = _multi(rng)
    push_image(src_registry.url, repo_name, moved, tags=["v"])
    mirror_ok("pull", "-f", cfg, "--locked", "-o", tmp_path / "a.tar", "--cache", tmp_path / "c1")
    mirror_ok("pull", "-f", cfg, "--locked", "-o", tmp_path / "b.tar", "--cache", tmp_path / "c2")
    assert file_sha256(tmp_path / "a.tar") == file_sha256(tmp_path / "b.tar")
    assert (tmp_path / "a.tar.sha256").read_text().split()[0] == \
        file_sha256(tmp_path / "a.tar").split(":")[1]
    idx = _read(tmp_path / "a.tar", "index.json")
    assert idx["manifests"][0]["digest"] == first.digest
    # unlocked, the moved tag is seen
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "c.tar", "--cache", tmp_path / "c1")
    idx = _read(tmp_path / "c.tar", "index.json")
    assert idx["manifests"][0]["digest"] == moved.digest


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Copy a tar member by member, letting `edit(name, data)` change or drop (None) each."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin:
            data = tin.extractfile(m).read() if m.isfile() else None
            if m.isfile():
                data = edit(m.name, data)
                if data is None:
                    continue
                m.size = len(data)
            import io

            tout.addfile(m, io.BytesIO(data) if data is not None else None)


def test_verify_catches_tampering(src_registry, repo_name, rng, tmp_path):
    img, _ = _multi(rng)
    push_image(src_registry.url, repo_name, img, tags=["t"])
    good = tmp_path / "good.tar"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:t", "-o", good, "--cache", tmp_path / "c")
    assert "OK" in mirror_ok("verify", good).stdout
    layer = img.images[0].layers[1]
    name = "blobs/sha256/" + layer.digest.split(":")[1]

    def flip(n, d):
        return bytes([d[0] ^ 0xFF]) + d[1:] if n == name else d

    cases = {
        "flipped": (lambda p: _rewrite(good, p, flip), layer.digest, "integrity"),
        "missing": (lambda p: _rewrite(good, p, lambda n, d: None if n == name else d),
                    f"{layer.digest} is missing", "bundle"),
        "index": (lambda p: _rewrite(good, p, lambda n, d: b"{not json" if n == "index.json"
                                     else d), "index.json", "bundle"),
        "truncated": (lambda p: p.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
                      "truncated", "bundle"),
    }
    for what, (make, expect, code) in cases.items():
        bad = tmp_path / f"{what}.tar"
        make(bad)
        r = run_mirror("verify", bad, "--report", tmp_path / f"{what}.json")
        assert r.returncode == EXIT[code], (what, r.stdout, r.stderr)
        assert expect in r.stdout, (what, r.stdout)
        report = json.loads((tmp_path / f"{what}.json").read_text())
        assert report["ok"] is False and report["problems"]
    # an annotation changed in index.json, the JSON whole: only good.tar.sha256 covers it,
    # and verify says where the change must be (it said the file changed, no more)
    (tmp_path / "tag").mkdir()
    tag = tmp_path / "tag" / good.name
    data = bytearray(good.read_bytes())
    with tarfile.open(good) as tf:
        member = tf.getmember("index.json")
    at = member.offset_data + bytes(data[member.offset_data:]).index(b'"full"')
    data[at + 4] = ord("m")  # "dev.mirror.index": "fulm"
    tag.write_bytes(bytes(data))
    tag.with_name(good.name + ".sha256").write_bytes(good.with_name(good.name + ".sha256")
                                                     .read_bytes())
    r = run_mirror("verify", tag)
    assert r.returncode == EXIT["integrity"], (r.stdout, r.stderr)
    (line,) = r.stdout.splitlines()
    assert f"does not match {tag}.sha256" in line and "every blob matches its digest" in line \
        and "index.json (the images' names and tags)" in line, line


def test_second_run_waits_for_no_one_it_exits_with_lock_held(src_registry, faultproxy,
                                                             repo_name, rng, tmp_path):
    proxy, ref = slow_image(src_registry.url, faultproxy, repo_name, rng)
    cache = tmp_path / "cache"
    with downloading(proxy, "pull", ref, "-o", tmp_path / "a.tar", "--cache", cache,
                     finish=False):
        r = run_mirror("pull", ref, "-o", tmp_path / "b.tar", "--cache", cache)
        assert r.returncode == EXIT["lock-held"], r.stderr
        assert "in use by another mirror run" in r.stderr and str(cache) in r.stderr


def test_keep_going_report_and_inspect(src_registry, repo_name, rng, tmp_path):
    img, _ = _multi(rng, fmt="docker")
    push_image(src_registry.url, repo_name, img, tags=["ok"])
    good, bad = f"{src_registry.host}/{repo_name}:ok", f"{src_registry.host}/{repo_name}:nope"
    out, report = tmp_path / "b.tar", tmp_path / "r.json"
    r = run_mirror("pull", good, bad, "--platform", "linux/arm64", "--keep-going", "-o", out,
                   "--cache", tmp_path / "c", "--report", report)
    assert r.returncode == EXIT["partial"], r.stderr
    check_layout(out)
    doc = json.loads(report.read_text())
    assert doc["partial"] is True and doc["bundle"] == str(out)
    # exit 13 is not success: the report's error says why (it was null, as on success)
    assert (doc["exit_code"], doc["error"]) == (
        13, "1 of 2 image(s) failed; the bundle is partial"), doc
    by_ref = {i["reference"]: i for i in doc["images"]}
    ok, failed = by_ref[good], by_ref[bad]
    assert failed["error"] and "nope" in failed["error"] and failed["error_code"] == 5
    assert ok["error"] is None and ok["platforms"] == ["linux/arm64"]
    assert ok["source_digest"] == img.digest and ok["digest"] != img.digest  # filtered
    arm = img.images[1]
    assert ok["platform_digests"] == {"linux/arm64": arm.digest}
    assert ok["bytes_fetched"] == sum(b.size for b in arm.all_blobs())
    assert ok["bytes_reused"] == 0 and ok["seconds"] >= 0
    inv = _read(out, "mirror.json")
    assert inv["partial"] is True

    # inspect labels each digest for what it is
    text = mirror_ok("inspect", out).stdout
    shown = {label.strip(): value.split()[0] for label, _, value in
             (line.partition(": ") for line in text.splitlines()) if value}
    assert shown["manifest digest (pin this)"] == ok["digest"]
    assert shown["source digest (upstream)"] == img.digest
    assert shown["platform manifest digest"] == arm.digest
    assert shown["config digest (image ID)"] == arm.config.digest
    for i, layer in enumerate(arm.layers):
        assert shown[f"layer {i} digest (compressed)"] == layer.digest
        assert shown[f"layer {i} diff_id (uncompressed)"] == layer.diff_id
    js = json.loads(mirror_ok("inspect", out, "--json").stdout)
    assert js[0]["manifests"][0]["config"]["digest"] == arm.config.digest
    assert js[0]["manifests"][0]["diffIds"] == [la.diff_id for la in arm.layers]
    # and a remote reference, by the same labels
    remote = json.loads(mirror_ok("inspect", good, "--json").stdout)
    assert remote[0]["digest"] == img.digest
    assert [m["digest"] for m in remote[0]["manifests"]] == [i.digest for i in img.images]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


def test_report_is_written_whatever_the_outcome(src_registry, repo_name, rng, tmp_path):
    """A monitor never reads last night's report: early usage errors, an OSError and a failed
    load write theirs too, and the file is replaced whole (no temporary file left beside)."""
    img = ig.make_image(rng, ig.AMD64, fmt="oci")
    push_image(src_registry.url, repo_name, img, tags=["v1"])
    ref = f"{src_registry.host}/{repo_name}:v1"
    reports = tmp_path / "reports"
    reports.mkdir()
    report = reports / "r.json"

    def run(code: int, *args: object) -> dict:
        report.write_text('{"stale": true}')
        r = run_mirror(*args, "--report", report)
        assert r.returncode == code, r.stderr
        assert os.listdir(reports) == ["r.json"]
        doc = json.loads(report.read_text())
        assert doc["exit_code"] == code and "stale" not in doc, doc
        return doc

    doc = run(2, "pull", ref, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c", "--base",
              tmp_path / "nope.tar")
    assert "--base" in doc["error"] and doc["images"] == [] and doc["retries"] == 0, doc
    assert doc["bundle"] is None and doc["partial"] is False, doc
    not_a_dir = tmp_path / "cache-with-a-file" / "blobs"  # the cache's blobs/ is a file
    not_a_dir.parent.mkdir()
    not_a_dir.write_text("")
    doc = run(1, "pull", ref, "-o", tmp_path / "b.tar", "--cache", not_a_dir.parent)
    assert str(not_a_dir) in doc["error"], doc
    doc = run(0, "pull", ref, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c")
    assert doc["error"] is None and doc["bundle"] == str(tmp_path / "b.tar"), doc
    # an image's entry is one line of its own: grep finds it whole
    [line] = [x for x in report.read_text().splitlines() if f'"reference": "{ref}"' in x]
    assert json.loads(line.strip().rstrip(",")) == doc["images"][0], line
    host = f"127.0.0.1:{_closed_port()}"
    doc = run(3, "load", tmp_path / "b.tar", "--to", host, "--retries", "1")
    assert doc["command"] == "load" and host in doc["error"] and doc["retries"] == 1, doc
    assert doc["tags"] is None, doc  # not known, rather than "none pushed"
    doc = run(10, "verify", tmp_path / "nope.tar")
    assert doc["ok"] is False, doc


def _one_image_and_a_file(src_registry, repo_name, rng, tmp_path):
    """An image to pull (its reference), the bundle and cache paths of a run, and a plain
    file (a path under it can be neither made nor written)."""
    img = ig.make_image(rng, ig.AMD64, fmt="oci")
    push_image(src_registry.url, repo_name, img, tags=["v1"])
    plain = tmp_path / "file"
    plain.write_text("")
    return f"{src_registry.host}/{repo_name}:v1", tmp_path / "b.tar", tmp_path / "c", plain


def test_mirror_lock_of_images_alone_needs_lock_file_as_the_readme_says(src_registry, repo_name,
                                                                          rng, tmp_path):
    """README's table said `mirror lock [-f images.yaml] [IMAGE...]` resolves "into
    images.lock": `mirror lock REF` (no -f) names no lock file and is refused (exit 2), asking
    for --lock-file, writing nothing; with --lock-file it writes that file. The row says so."""
    ref, _, cache, _ = _one_image_and_a_file(src_registry, repo_name, rng, tmp_path)
    r = run_mirror("lock", ref, "--cache", cache, cwd=tmp_path)
    assert r.returncode == EXIT_CODES["usage"], r.stderr
    assert "--lock-file" in r.stderr and not list(tmp_path.glob("*.lock")), r.stderr
    mirror_ok("lock", ref, "--cache", cache, "--lock-file", tmp_path / "x.lock", cwd=tmp_path)
    assert ref in json.loads((tmp_path / "x.lock").read_text())["images"]
    row = next(ln for ln in (ROOT / "README.md").read_text().splitlines()
               if ln.startswith("| `mirror lock"))
    assert "without `-f`" in row and "`--lock-file`" in row and "exit 2" in row, row


def test_report_path_is_checked_before_any_work(src_registry, repo_name, rng, tmp_path):
    """A report that cannot be written (a directory; a directory that cannot be made): exit
    2 at once, naming it, instead of a whole pull that then exits 1 with "cannot write the
    report". A missing directory is made, as -o makes the bundle's."""
    ref, out, cache, plain = _one_image_and_a_file(src_registry, repo_name, rng, tmp_path)
    for bad in (plain / "r.json", plain / "sub" / "r.json", tmp_path):
        r = run_mirror("pull", ref, "-o", out, "--cache", cache, "--report", bad)
        assert r.returncode == 2, r.stderr
        [line] = r.stderr.splitlines()
        assert line.startswith(f"mirror: error: --report {bad}: "), line
        assert not out.exists() and not cache.exists()  # nothing fetched, nothing written
    report = tmp_path / "nodir" / "sub" / "r.json"
    mirror_ok("pull", ref, "-o", out, "--cache", cache, "--report", report)
    assert json.loads(report.read_text())["exit_code"] == 0


def _readme_cron_line() -> str:
    """The command of the README's crontab line (what follows the five time fields)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(ln for ln in readme.splitlines()
                if ln.strip().startswith("15 2 * * *") and "mirror pull" in ln)
    return line.split(None, 5)[5]


def test_the_readmes_cron_line_works_the_first_night_in_a_fresh_directory(
        src_registry, repo_name, rng, tmp_path):
    """The crontab line as written, in a directory holding only images.yaml: -o makes
    bundles/, and --report bundles/report.json must not refuse it (exit 2) for being missing."""
    img = ig.make_image(rng, ig.AMD64, fmt="oci")
    push_image(src_registry.url, repo_name, img, tags=["c"])
    site, bin_ = tmp_path / "site", tmp_path / "bin"
    site.mkdir()
    bin_.mkdir()
    (site / "images.yaml").write_text(f"images:\n  - {src_registry.host}/{repo_name}:c\n")
    (bin_ / "mirror").write_text(f'#!/bin/sh\nexec {sys.executable} -m mirror "$@"\n')
    (bin_ / "logger").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "logged"}\n')
    for f in bin_.iterdir():
        f.chmod(0o755)
    env = {**mirror_env(), "PATH": f"{bin_}:{os.environ['PATH']}",
           "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    cmd = _readme_cron_line().replace("/srv/mirror", str(site))
    r = subprocess.run(["sh", "-c", cmd], env=env, capture_output=True, text=True, timeout=180)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
    assert not (tmp_path / "logged").exists(), (tmp_path / "logged").read_text()
    assert json.loads((site / "bundles" / "report.json").read_text())["exit_code"] == 0
    check_layout(site / "bundles" / "site.tar.zst")


def test_dry_run_writes_nothing_and_prune_trims_the_cache(src_registry, repo_name, rng,
                                                          tmp_path):
    img, _ = _multi(rng)
    push_image(src_registry.url, repo_name, img, tags=["d"])
    ref, cache = f"{src_registry.host}/{repo_name}:d", tmp_path / "cache"
    r = mirror_ok("pull", ref, "--dry-run", "-o", tmp_path / "x.tar", "--cache", cache)
    assert not (tmp_path / "x.tar").exists()
    layers = sum(b.size for b in {la.digest: la for i in img.images for la in i.layers}.values())
    assert "would fetch up to" in r.stdout and img.digest in r.stdout
    assert int(r.stdout.split("would fetch up to ")[1].split()[0]) >= layers
    mirror_ok("pull", ref, "-o", tmp_path / "y.tar", "--cache", cache)
    again = mirror_ok("pull", ref, "--dry-run", "--cache", cache).stdout
    assert "would fetch up to 0 bytes" in again  # everything is in the cache now
    blobs = list((cache / "blobs" / "sha256").iterdir())
    assert len(blobs) == len(img.all_blobs())
    lock_file = tmp_path / "keep.lock"
    lock_file.write_text(json.dumps({"lockVersion": 1, "images": {},
                                     "blobs": {img.images[0].config.digest: 1}}))
    r = mirror_ok("cache", "prune", "--cache", cache, "--max-size", "0", "--keep", lock_file)
    left = [p.name for p in (cache / "blobs" / "sha256").iterdir()]
    assert left == [img.images[0].config.digest.split(":")[1]], r.stdout
    # --unused-by: everything the lock file does not name goes
    mirror_ok("pull", ref, "-o", tmp_path / "z.tar", "--cache", cache)
    report = tmp_path / "prune.json"
    r = mirror_ok("cache", "prune", "--cache", cache, "--unused-by", lock_file,
                  "--report", report, "-q")
    left = [p.name for p in (cache / "blobs" / "sha256").iterdir()]
    assert left == [img.images[0].config.digest.split(":")[1]], r.stdout
    doc = json.loads(report.read_text())  # (options after the action, as for the others)
    assert doc["exit_code"] == 0 and doc["blobs_removed"] >= 1 and r.stdout == ""
    assert doc["command"] == "cache prune", doc["command"]


@pytest.mark.parametrize("flag,value", [("--max-size", "-1"), ("--max-size", "-5G"),
                                        ("--max-size", "infG"), ("--older-than", "-1d"),
                                        ("--older-than", "nan"), ("--older-than", "infd")])
def test_prune_refuses_a_negative_or_endless_limit(flag, value, tmp_path):
    """`--max-size -1` (a typo, or an unset variable in `-${SIZE}G`) used to mean "over any
    size": every blob was removed; `--older-than -1d` the same by age; `infG` was a
    traceback. Each is a usage error (exit 2) that removes nothing."""
    cache = tmp_path / "cache"
    blob = cache / "blobs" / "sha256" / ("ab" * 32)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"kept")
    r = run_mirror("cache", "prune", "--cache", cache, f"{flag}={value}")
    assert r.returncode == EXIT_CODES["usage"], r.stderr
    assert f"invalid {'size' if flag == '--max-size' else 'age'} {value!r}" in r.stderr
    assert "Traceback" not in r.stderr and blob.read_bytes() == b"kept"


def test_prune_age_without_a_unit_is_refused(tmp_path):
    """`--older-than 30` was read as 30 seconds (meant: 30 days): every blob unused for half
    a minute was removed. An age needs its unit; the hint lists them."""
    cache = tmp_path / "cache"
    blob = cache / "blobs" / "sha256" / ("ab" * 32)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"kept")
    old = time.time() - 3600
    os.utime(blob, (old, old))
    r = run_mirror("cache", "prune", "--cache", cache, "--older-than", "30")
    assert r.returncode == EXIT_CODES["usage"], r.stderr
    assert "mirror: error: --older-than 30: no unit" in r.stderr, r.stderr
    assert "hint:" in r.stderr and "30d" in r.stderr and "s, m, h, d, w" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and blob.read_bytes() == b"kept"
    os.utime(blob, (old, old))  # (reading it counted as a use)
    r = run_mirror("cache", "prune", "--cache", cache, "--older-than", "30m")
    assert r.returncode == 0 and not blob.exists(), r.stderr


def test_base_lock_file_listing_no_blobs_is_refused(tmp_path):
    """A lock file with no `blobs` as --base would make a full bundle while the operator
    thinks it incremental: exit 2 naming it, before any request."""
    lock = tmp_path / "old.lock"
    lock.write_text(json.dumps({"lockVersion": 1, "images": {}}))
    r = run_mirror("pull", "127.0.0.1:9/x/y:1", "--base", lock, "-o", tmp_path / "b.tar",
                   "--cache", tmp_path / "cache")
    assert r.returncode == EXIT_CODES["usage"], r.stderr
    assert f"--base {lock}: the lock file lists no blobs" in r.stderr
    assert not (tmp_path / "b.tar").exists()


def test_rerun_with_nothing_new_leaves_the_bundle_alone(src_registry, repo_name, rng, tmp_path):
    img, _ = _multi(rng)
    push_image(src_registry.url, repo_name, img, tags=["n"])
    ref, cache = f"{src_registry.host}/{repo_name}:n", tmp_path / "cache"
    for out in (tmp_path / "a.tar", tmp_path / "a.tar.zst"):
        mirror_ok("pull", ref, "-o", out, "--cache", cache)
        before = (out.stat().st_mtime_ns, file_sha256(out))
        r = mirror_ok("pull", ref, "-o", out, "--cache", cache, "--report", tmp_path / "r.json")
        assert "unchanged" in r.stderr
        doc = json.loads((tmp_path / "r.json").read_text())
        assert doc["bundle_unchanged"] is True
        # the totals agree with each image's line: nothing fetched, every blob reused
        blobs = {b.digest: b.size for b in img.all_blobs()}
        assert (doc["blobs_fetched"], doc["bytes_fetched"]) == (0, 0)
        assert (doc["blobs_reused"], doc["bytes_reused"]) == (len(blobs), sum(blobs.values()))
        assert f"0 blob(s) fetched (0 bytes), {len(blobs)} reused" in r.stderr
        assert (out.stat().st_mtime_ns, file_sha256(out)) == before
        # the digest printed and reported is the file's (it was a blob's inside the bundle)
        side = out.with_name(out.name + ".sha256").read_text().split()[0]
        assert f"{out}\t{before[1]}" in r.stdout.splitlines(), r.stdout
        assert doc["bundle_digest"] == before[1] == f"sha256:{side}", doc
        # a bundle changed after its .sha256 was written is rewritten, not trusted
        data = bytearray(out.read_bytes())
        data[-600] ^= 0xFF
        out.write_bytes(bytes(data))
        r = mirror_ok("pull", ref, "-o", out, "--cache", cache)
        assert "unchanged" not in r.stderr and file_sha256(out) == before[1]
        # so is one damaged in place: same size, its mtime put back (verify says exit 7)
        st = out.stat()
        data = bytearray(out.read_bytes())
        data[len(data) // 2] ^= 0xFF
        out.write_bytes(bytes(data))
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert run_mirror("verify", out).returncode == EXIT["integrity"]
        r = mirror_ok("pull", ref, "-o", out, "--cache", cache)
        assert "unchanged" not in r.stderr and file_sha256(out) == before[1], r.stderr
        assert run_mirror("verify", out).returncode == 0
    # a moved tag is a new bundle
    moved, _ = _multi(rng)
    push_image(src_registry.url, repo_name, moved, tags=["n"])
    r = mirror_ok("pull", ref, "-o", tmp_path / "a.tar", "--cache", cache)
    assert "unchanged" not in r.stderr


def test_an_unchanged_run_counts_as_a_use_of_its_blobs_for_prune(src_registry, repo_name, rng,
                                                                  tmp_path):
    """Nightly: the bundle is unchanged for weeks, `cache prune --older-than 30d` runs weekly.
    The blobs every night's run needs are in use: prune must not empty the cache (the next
    change would then fetch every blob again)."""
    img, _ = _multi(rng)
    push_image(src_registry.url, repo_name, img, tags=["u"])
    ref, cache, out = f"{src_registry.host}/{repo_name}:u", tmp_path / "cache", tmp_path / "u.tar"
    mirror_ok("pull", ref, "-o", out, "--cache", cache)
    blobs = list((cache / "blobs" / "sha256").iterdir())
    assert len(blobs) == len(img.all_blobs())
    old = time.time() - 40 * 86400
    for p in blobs:
        os.utime(p, (old, old))
    r = mirror_ok("pull", ref, "-o", out, "--cache", cache)
    assert "unchanged" in r.stderr
    r = mirror_ok("cache", "prune", "--cache", cache, "--older-than", "30d")
    assert "removed 0 blob(s)" in r.stdout, r.stdout
    assert len(list((cache / "blobs" / "sha256").iterdir())) == len(blobs)


def _state(*paths: Path) -> list[tuple[int, str]]:
    return [(p.stat().st_mtime_ns, file_sha256(p)) for p in paths]


def test_an_output_that_is_its_own_base_is_refused(src_registry, repo_name, rng, tmp_path):
    """`pull -o s.tar --base s.tar` replaced the full bundle with an incremental one whose
    base was the file it had just overwritten. The same file under another name (a symlink,
    a hard link) too: exit 2 naming both, before any request, nothing touched."""
    img, _ = _multi(rng)
    push_image(src_registry.url, repo_name, img, tags=["s"])
    ref, out = f"{src_registry.host}/{repo_name}:s", tmp_path / "s.tar"
    mirror_ok("pull", ref, "-o", out, "--cache", tmp_path / "cache")
    link, hard = tmp_path / "link.tar", tmp_path / "hard.tar"
    link.symlink_to(out)
    os.link(out, hard)
    kept = (out, out.with_name("s.tar.sha256"))
    before = _state(*kept)
    for o, base in ((out, out), (out, link), (out, hard), (link, out)):
        r = run_mirror("pull", ref, "-o", o, "--base", base, "--cache", tmp_path / "c2")
        assert r.returncode == EXIT_CODES["usage"], r.stderr
        [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("mirror: error:")]
        assert f"-o {o}" in line and f"--base {base}" in line, line
        assert _state(*kept) == before
        assert not (tmp_path / "c2").exists()  # refused before any work
    assert link.is_symlink()


def test_a_lock_file_names_its_bundle_which_is_not_overwritten_from_it(src_registry, repo_name,
                                                                       rng, tmp_path):
    """A lock file records the bundle it was written with (name and digest); a pull that
    takes it as --base refuses to write over that bundle (exit 2, nothing touched): it is the
    one the far side still needs. Any other output is an incremental bundle on top of it."""
    img, _ = _multi(rng)
    push_image(src_registry.url, repo_name, img, tags=["l"])
    cfg, cache, out = tmp_path / "images.yaml", tmp_path / "cache", tmp_path / "s.tar"
    cfg.write_text(f"images:\n  - {src_registry.host}/{repo_name}:l\n")
    mirror_ok("pull", "-f", cfg, "-o", out, "--cache", cache)
    lock = json.loads((tmp_path / "images.lock").read_text())
    assert lock["bundle"] == {"name": "s.tar", "digest": file_sha256(out)}, lock
    carried = tmp_path / "carried.lock"
    shutil.copy(tmp_path / "images.lock", carried)
    kept = (out, out.with_name("s.tar.sha256"), carried)
    before = _state(*kept)
    r = run_mirror("pull", "-f", cfg, "-o", out, "--base", carried, "--cache", tmp_path / "c2")
    assert r.returncode == EXIT_CODES["usage"], r.stderr
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("mirror: error:")]
    assert f"-o {out}" in line and f"--base {carried}" in line, line
    assert _state(*kept) == before and not (tmp_path / "c2").exists()
    nxt = tmp_path / "next.tar"
    mirror_ok("pull", "-f", cfg, "-o", nxt, "--base", carried, "--cache", cache)
    assert _members(nxt) and _state(*kept) == before
    lock = json.loads((tmp_path / "images.lock").read_text())
    assert lock["bundle"] == {"name": "next.tar", "digest": file_sha256(nxt)}, lock


def _a_and_b(src_registry, faultproxy, repo_name, rng, cfg: Path):
    """Images a and b (`repo_name`/a:1, /b:1) behind a fault proxy, and `cfg` listing both
    through it: (a, b, the proxy)."""
    a, b = (ig.make_image(rng, ig.AMD64, fmt="oci") for _ in range(2))
    push_image(src_registry.url, f"{repo_name}/a", a, tags=["1"])
    push_image(src_registry.url, f"{repo_name}/b", b, tags=["1"])
    proxy = faultproxy(src_registry.url)
    cfg.write_text(f"images:\n  - {proxy.host}/{repo_name}/a:1\n"
                   f"  - {proxy.host}/{repo_name}/b:1\n")
    return a, b, proxy


def test_keep_going_keeps_the_failed_images_blobs_in_the_lock(src_registry, faultproxy,
                                                              repo_name, rng, tmp_path):
    """A --keep-going night where one image fails: the lock keeps that image's last good
    entry and its blobs (they were carried), so the next incremental bundle against it does
    not carry them again."""
    cfg, cache = tmp_path / "images.yaml", tmp_path / "cache"
    a, b, proxy = _a_and_b(src_registry, faultproxy, repo_name, rng, cfg)
    ref_b = f"{proxy.host}/{repo_name}/b:1"
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "n1.tar", "--cache", cache)
    first = json.loads((tmp_path / "images.lock").read_text())
    b_blobs = {d.digest for d in b.all_blobs()}
    assert set(first["blobs"]) == {d.digest for d in a.all_blobs()} | b_blobs
    proxy.add(Fault("status", path=rf"/{repo_name}/b/manifests/", status=404, times=None))
    r = run_mirror("pull", "-f", cfg, "-o", tmp_path / "n2.tar", "--keep-going", "--cache",
                   cache)
    assert r.returncode == EXIT["partial"], r.stderr
    second = json.loads((tmp_path / "images.lock").read_text())
    assert second["images"][ref_b] == first["images"][ref_b]
    assert set(second["blobs"]) >= b_blobs, second["blobs"]
    proxy.clear_faults()
    inc = tmp_path / "n3.tar"
    mirror_ok("pull", "-f", cfg, "-o", inc, "--base", tmp_path / "images.lock", "--cache",
              cache)
    carried = {m.split("/")[-1] for m in _members(inc) if m.startswith("blobs/")}
    assert not carried & {d.split(":")[1] for d in b_blobs}, carried


def test_an_unwritable_lock_file_is_refused_before_any_work(src_registry, repo_name, rng,
                                                            tmp_path):
    """--lock-file that cannot be written was found only after the bundle was written (exit
    1); like --report it is checked first: exit 2 naming it, nothing fetched or written."""
    ref, out, cache, plain = _one_image_and_a_file(src_registry, repo_name, rng, tmp_path)
    for bad in (plain / "x.lock", tmp_path):
        for args in (("pull", ref, "-o", out), ("lock", ref)):
            r = run_mirror(*args, "--cache", cache, "--lock-file", bad)
            assert r.returncode == EXIT_CODES["usage"], (args, r.stderr)
            [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("mirror: error:")]
            assert line.startswith(f"mirror: error: --lock-file {bad}: "), line
            assert not out.exists() and not cache.exists()
    # a directory that says it is writable but is not (access(2) says yes to root; /proc
    # takes no new file): found first too, not after the bundle was written (exit 1)
    for flag in ("--lock-file", "--report", "-o"):
        bad = Path("/proc") / f"mirror-{flag.strip('-')}.x"
        args = {"-o": ("-o", bad), "--report": ("-o", out, "--report", bad),
                "--lock-file": ("-o", out, "--lock-file", bad)}[flag]
        r = run_mirror("pull", ref, *args, "--cache", cache)
        assert r.returncode == EXIT_CODES["usage"], (flag, r.stderr)
        assert f"{flag} {bad}: " in r.stderr and "not writable" in r.stderr, r.stderr
        assert not out.exists() and not cache.exists(), flag
    # a missing directory is made, as for -o
    mirror_ok("pull", ref, "-o", out, "--cache", cache, "--lock-file", tmp_path / "l" / "x.lock")
    assert json.loads((tmp_path / "l" / "x.lock").read_text())["images"]


def test_quiet_runs_print_nothing_on_success_and_one_line_on_error(src_registry, dst_registry,
                                                                    repo_name, rng, tmp_path):
    """cron mails whatever a job prints: with -q a good night is silent (the report has the
    details), a bad one is the one error line."""
    idx, _ = _multi(rng)
    push_image(src_registry.url, repo_name, idx, tags=["1"])
    out = tmp_path / "q.tar"
    report = tmp_path / "r.json"
    for args in (("pull", f"{src_registry.host}/{repo_name}:1", "-o", out, "--cache",
                  tmp_path / "c", "--report", report),
                 ("verify", out),
                 ("load", out, "--to", f"{dst_registry.host}/q"),
                 # `mirror lock -q` printed the lock file's name on success
                 ("lock", f"{src_registry.host}/{repo_name}:1", "--lock-file",
                  tmp_path / "q.lock", "--cache", tmp_path / "c")):
        r = mirror_ok(*args, "-q")
        assert (r.stdout, r.stderr) == ("", ""), (args[0], r.stdout, r.stderr)
    assert json.loads(report.read_text())["bundle_digest"] == file_sha256(out)
    assert list_tags(dst_registry.url, f"q/{repo_name}") == ["1"]
    r = run_mirror("pull", f"{src_registry.host}/{repo_name}:nope", "-o", tmp_path / "x.tar",
                   "--cache", tmp_path / "c", "-q")
    assert r.returncode == EXIT["not-found"] and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) <= 2, r.stderr  # the error and its hint
    assert "mirror: error:" in r.stderr and f"{repo_name}: tag nope: HTTP 404" in r.stderr


def test_an_acknowledged_unsigned_filtered_index_keeps_quiet_runs_silent(src_registry,
                                                                         repo_name, rng,
                                                                         tmp_path):
    """A filtered index whose signatures name the source digest is said every night; once the
    user acknowledged it (`accept_unsigned_index: true`, in defaults or on the image), a -q
    night is silent again, and a run without -q still says it (as information)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.test_referrers import seed

    index, *_ = seed(src_registry.url, repo_name, rng, ec.generate_private_key(ec.SECP256R1()))
    ref = f"{src_registry.host}/{repo_name}:1.0"
    cfg = tmp_path / "images.yaml"
    said = f"made for the source index {index.digest}"

    def pull(defaults: str, entry: str = "", *flags: str):
        cfg.write_text(f"version: 1\ndefaults:\n  platforms: [linux/amd64]\n{defaults}"
                       f"images:\n  - ref: {ref}\n{entry}")
        return run_mirror("pull", "-f", cfg, "-o", tmp_path / "b.tar", "--cache",
                          tmp_path / "c", *flags)

    r = pull("", "", "-q")  # not acknowledged: the warning, every night
    assert r.returncode == 0 and said in r.stderr and "warning:" in r.stderr, r.stderr
    for defaults, entry in (("  accept_unsigned_index: true\n", ""),
                            ("", "    accept_unsigned_index: true\n")):
        r = pull(defaults, entry, "-q")
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r.stderr
        r = pull(defaults, entry)
        assert r.returncode == 0 and said in r.stderr and "warning:" not in r.stderr, r.stderr
    # the image's own setting wins over the defaults
    r = pull("  accept_unsigned_index: true\n", "    accept_unsigned_index: false\n", "-q")
    assert r.returncode == 0 and said in r.stderr, r.stderr
    # typed like the other keys: a bool, refused otherwise with file:line
    r = pull("  accept_unsigned_index: sometimes\n", "", "-q")
    assert r.returncode == 2, r.stderr
    assert f"mirror: error: {cfg}:4: 'accept_unsigned_index' must be true or false" in r.stderr


def _readme_nightly_script() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("    #!/bin/sh\n", 1)[1].split("\n\n", 1)[0]
    return "#!/bin/sh\n" + "\n".join(line[4:] for line in block.splitlines()) + "\n"


def _readme_locked_script() -> str:
    """The nightly script with the README's --locked lines in place of its `base=`, `mirror
    pull` and `cp` lines."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("`mirror pull` and `cp` lines\nbecome:\n\n", 1)[1].split("\n\n")[0]
    lines = _readme_nightly_script().splitlines()
    for new in (line[4:] for line in block.splitlines()):
        key = new.split()[0] if not new.startswith("if [") else "if [ -f"
        [at] = [i for i, line in enumerate(lines) if line.startswith(key)]
        lines[at] = new
    return "\n".join(lines) + "\n"


def _nightly_site(tmp_path: Path, script: str) -> tuple[Path, dict]:
    """A site directory with `script` as its nightly.sh (its directory changed), and the
    environment to run it in: `mirror` on the PATH, `date` saying $NIGHT."""
    site = tmp_path / "site"
    (site / "bundles").mkdir(parents=True)
    (site / "nightly.sh").write_text(script.replace("/srv/mirror", str(site)))
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "mirror").write_text(f'#!/bin/sh\nexec {sys.executable} -m mirror "$@"\n')
    (bin_ / "date").write_text('#!/bin/sh\necho "${NIGHT:-20261201}"\n')
    for f in bin_.iterdir():
        f.chmod(0o755)
    return site, {**mirror_env(), "PATH": f"{bin_}:{os.environ['PATH']}",
                  "XDG_CACHE_HOME": str(tmp_path / "xdg")}


def _zst_blobs(bundle: Path) -> set[str]:
    """The hex digests of the blobs a .tar.zst bundle carries."""
    with open(bundle, "rb") as f, tarfile.open(
            fileobj=zstandard.ZstdDecompressor().stream_reader(f), mode="r|") as tf:
        return {m.name.split("/")[-1] for m in tf if m.name.startswith("blobs/")}


def test_the_readmes_nightly_script_full_then_incremental(src_registry, dst_registry,
                                                          repo_name, rng, tmp_path):
    """The README's nightly script as written (only its directory changed, and `date` made to
    say which night it is): the first night a full bundle, the next an incremental one against
    the carried lock file; run a second time that day (new images meanwhile), it must not
    overwrite that day's bundle, which was not carried yet, but write another one; loaded in
    order, the target has every tag."""
    site, env = _nightly_site(tmp_path, _readme_nightly_script())
    bundles = site / "bundles"
    one, base = _multi(rng)
    push_image(src_registry.url, repo_name, one, tags=["1"])
    ref = f"{src_registry.host}/{repo_name}"
    (site / "images.yaml").write_text(f"images:\n  - {ref}:1\n")

    def night(n: str) -> Path:
        """Run the script as night `n`; the one bundle it wrote (no other file changed)."""
        before = {p: (p.stat().st_mtime_ns, file_sha256(p)) for p in bundles.glob("site-*")}
        r = subprocess.run(["sh", str(site / "nightly.sh")], env={**env, "NIGHT": n},
                           capture_output=True, text=True, timeout=180)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), (n, r)
        report = json.loads((bundles / "report.json").read_text())
        assert report["exit_code"] == 0
        after = {p: (p.stat().st_mtime_ns, file_sha256(p)) for p in bundles.glob("site-*")}
        assert {p: after[p] for p in before} == before  # nothing written over
        [new] = [p for p in after if p not in before and p.name.endswith(".zst")]
        assert new.name.startswith(f"site-{n}")
        return new

    first = night("20261127")
    assert (bundles / "carried.lock").exists()
    two, _ = _multi(rng, base=base)
    push_image(src_registry.url, repo_name, two, tags=["2"])
    (site / "images.yaml").write_text(f"images:\n  - {ref}:1\n  - {ref}:2\n")
    second = night("20261128")
    shipped = _zst_blobs(second)
    assert shipped
    assert base.digest.split(":")[1] not in shipped  # carried the night before
    three, _ = _multi(rng)
    push_image(src_registry.url, repo_name, three, tags=["3"])
    (site / "images.yaml").write_text(f"images:\n  - {ref}:1\n  - {ref}:2\n  - {ref}:3\n")
    third = night("20261128")  # the same day again
    r = run_mirror("load", second, "--to", f"{dst_registry.host}/n", "-q")
    assert r.returncode == EXIT["incomplete-base"]  # out of order: nothing pushed
    for b in (first, second, third):
        mirror_ok("load", b, "--to", f"{dst_registry.host}/n", "-q")
    assert sorted(list_tags(dst_registry.url, f"n/{repo_name}")) == ["1", "2", "3"]


def test_the_readmes_nightly_script_carries_the_others_when_an_image_fails(
        src_registry, dst_registry, repo_name, rng, tmp_path):
    """README's nightly.sh says a night on which some images fail exits 13 and its bundle
    holds the others (o25 D2): without --keep-going the first failure stopped the night
    (exit 5, no bundle) and every night after, until images.yaml was edited. A tag deleted
    upstream: exit 13, the night's bundle carries the new image, carried.lock is its lock
    (keeping the gone image's last good entry), and the bundles loaded in order give every
    tag."""
    site, env = _nightly_site(tmp_path, _readme_nightly_script())
    bundles = site / "bundles"
    ref = f"{src_registry.host}/{repo_name}"
    one, two, three = (ig.make_image(rng, ig.AMD64, fmt="oci") for _ in range(3))
    push_image(src_registry.url, repo_name, one, tags=["1"])
    push_image(src_registry.url, repo_name, two, tags=["2"])
    (site / "images.yaml").write_text(f"images:\n  - {ref}:1\n  - {ref}:2\n")

    def night(n: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(site / "nightly.sh")], env={**env, "NIGHT": n},
                              capture_output=True, text=True, timeout=180)

    r = night("20261127")
    assert (r.returncode, r.stderr) == (0, ""), r
    push_image(src_registry.url, repo_name, three, tags=["3"])
    status, _, body = _request("DELETE",
                               f"{src_registry.url}/v2/{repo_name}/manifests/{two.digest}")
    assert status == 202, body
    (site / "images.yaml").write_text(f"images:\n  - {ref}:1\n  - {ref}:2\n  - {ref}:3\n")
    r = night("20261128")
    assert r.returncode == EXIT["partial"], r.stderr
    report = json.loads((bundles / "report.json").read_text())
    assert report["exit_code"] == EXIT["partial"] and report["partial"], report
    assert [i["reference"] for i in report["images"] if i.get("error")] == [f"{ref}:2"]
    second = bundles / "site-20261128.tar.zst"
    assert second.exists()
    lock = json.loads((bundles / "carried.lock").read_text())
    assert lock["bundle"]["name"] == second.name, lock
    assert lock["images"][f"{ref}:2"]["digest"] == two.digest  # its last good entry
    for b in (bundles / "site-20261127.tar.zst", second):
        mirror_ok("load", b, "--to", f"{dst_registry.host}/n", "-q")
    assert sorted(list_tags(dst_registry.url, f"n/{repo_name}")) == ["1", "2", "3"]


def test_the_readmes_nightly_script_on_a_first_night_that_waits_whole(src_registry, repo_name,
                                                                      rng, tmp_path):
    """README's nightly.sh, a first night on which every image waits for the registry's
    max_requests_per_run (exit 14): no bundle, no images.lock, and nothing copied (the script
    copied images.lock on 14: 'cp: cannot stat' in cron's mail); the next night, with the
    budget raised, makes the full bundle."""
    site, env = _nightly_site(tmp_path, _readme_nightly_script())
    push_image(src_registry.url, repo_name, ig.make_image(rng, ig.AMD64, fmt="oci"), tags=["1"])
    ref = f"{src_registry.host}/{repo_name}:1"
    cfg = "version: 1\nregistries:\n  {}:\n    max_requests_per_run: {}\nimages:\n  - {}\n"
    (site / "images.yaml").write_text(cfg.format(src_registry.host, 2, ref))
    r = subprocess.run(["sh", str(site / "nightly.sh")], env=env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == EXIT_WAITING, r.stderr
    report = json.loads((site / "bundles" / "report.json").read_text())
    assert report["waiting"] == [ref], report
    assert "cannot stat" not in r.stderr, r.stderr
    assert not (site / "bundles" / "carried.lock").exists()
    (site / "images.yaml").write_text(cfg.format(src_registry.host, 100, ref))
    r = subprocess.run(["sh", str(site / "nightly.sh")], env={**env, "NIGHT": "20261202"},
                       capture_output=True, text=True, timeout=180)
    assert (r.returncode, r.stderr) == (0, ""), r
    lock = json.loads((site / "bundles" / "carried.lock").read_text())
    assert lock["bundle"]["name"] == "site-20261202.tar.zst", lock


def test_a_lock_file_that_names_no_bundle_is_refused_as_base(src_registry, repo_name, rng,
                                                             tmp_path):
    """`mirror lock`'s file lists the blobs the tags name, none of which a bundle carried:
    as --base it would leave them out of every bundle after it (operator pass o17 D1, the
    far side's load failing with exit 11 for good). Refused: exit 2, one line naming the
    file, a hint; no request, nothing written. A pull's lock file (it names its bundle) is
    taken."""
    push_image(src_registry.url, repo_name, ig.make_image(rng, ig.AMD64, fmt="oci"), tags=["1"])
    cfg, cache = tmp_path / "images.yaml", tmp_path / "cache"
    cfg.write_text(f"images:\n  - {src_registry.host}/{repo_name}:1\n")
    mirror_ok("lock", "-f", cfg, "--cache", cache, "-q")
    lock = tmp_path / "images.lock"
    doc = json.loads(lock.read_text())
    assert doc["blobs"] and "bundle" not in doc, doc
    r = run_mirror("pull", "-f", cfg, "--base", lock, "-o", tmp_path / "b.tar", "--cache",
                   tmp_path / "c2", "--lock-file", tmp_path / "other.lock")
    assert r.returncode == EXIT_CODES["usage"], r.stderr
    [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("mirror: error:")]
    assert line.startswith(f"mirror: error: --base {lock}: the lock file names no bundle"), line
    assert "hint:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "b.tar").exists() and not (tmp_path / "c2").exists()
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "full.tar", "--cache", cache)
    mirror_ok("pull", "-f", cfg, "--base", lock, "-o", tmp_path / "inc.tar", "--cache", cache)


def test_a_waiting_images_entry_kept_from_mirror_locks_file_lists_none_of_its_blobs(
        src_registry, dst_registry, faultproxy, repo_name, rng, tmp_path):
    """A night whose image b waits (exit 14) keeps b's last entry in images.lock; when that
    entry is `mirror lock`'s, b's blobs were never carried, so the lock (the next night's
    --base) must not list them: it did, and the next night left them out of its bundle (the
    load failed with exit 11). Both nights loaded in order: b complete at the target."""
    cfg, cache = tmp_path / "images.yaml", tmp_path / "cache"
    a, b, proxy = _a_and_b(src_registry, faultproxy, repo_name, rng, cfg)
    ref_b = f"{proxy.host}/{repo_name}/b:1"
    mirror_ok("lock", "-f", cfg, "--cache", cache, "-q")
    proxy.add(Fault("status", method="GET", path=rf"/{repo_name}/b/blobs/", status=429,
                    headers={"Retry-After": "400"}, times=None))
    r = run_mirror("pull", "-f", cfg, "-o", tmp_path / "n1.tar", "--cache", cache)
    assert r.returncode == EXIT_WAITING, r.stderr
    lock = json.loads((tmp_path / "images.lock").read_text())
    b_blobs = {d.digest for d in b.all_blobs()}
    assert ref_b in lock["images"] and not b_blobs & set(lock["blobs"]), lock
    proxy.clear_faults()
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "n2.tar", "--cache", cache, "--base",
              tmp_path / "images.lock")
    for n in ("n1.tar", "n2.tar"):
        mirror_ok("load", tmp_path / n, "--to", f"{dst_registry.host}/{repo_name}", "-q")
    assert all(blob_exists(dst_registry.url, f"{repo_name}/{repo_name}/b", d) for d in b_blobs)


def test_a_waiting_images_blobs_kept_from_another_bundles_lock_are_only_those_carried(
        src_registry, dst_registry, faultproxy, repo_name, rng, tmp_path):
    """images.lock written by a pull by hand to another -o (b moved on meanwhile), then the
    night's incremental pull on carried.lock, b waiting: b keeps that lock's entry, but of
    that lock's blobs only those the base carried (b's new ones went nowhere): they were all
    kept, the next night left them out and its load failed with exit 11. Loaded in order:
    b's new image complete at the target."""
    cfg, cache, lock = tmp_path / "images.yaml", tmp_path / "cache", tmp_path / "images.lock"
    _, b1, proxy = _a_and_b(src_registry, faultproxy, repo_name, rng, cfg)
    b2 = ig.make_image(rng, ig.AMD64, fmt="oci")
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "n1.tar", "--cache", cache, "-q")
    shutil.copy(lock, tmp_path / "carried.lock")
    push_image(src_registry.url, f"{repo_name}/b", b2, tags=["1"])
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "by-hand.tar", "--cache", cache, "-q")
    proxy.add(Fault("status", method="GET", path=rf"/{repo_name}/b/", status=429,
                    headers={"Retry-After": "400"}, times=None))
    r = run_mirror("pull", "-f", cfg, "-o", tmp_path / "n2.tar", "--cache", cache, "--base",
                   tmp_path / "carried.lock")
    assert r.returncode == EXIT_WAITING, r.stderr
    new = {d.digest for d in b2.all_blobs()} - {d.digest for d in b1.all_blobs()}
    assert new and not new & set(json.loads(lock.read_text())["blobs"])
    proxy.clear_faults()
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "n3.tar", "--cache", cache, "--base", lock)
    for n in ("n1.tar", "n2.tar", "n3.tar"):
        mirror_ok("load", tmp_path / n, "--to", f"{dst_registry.host}/{repo_name}", "-q")
    assert all(blob_exists(dst_registry.url, f"{repo_name}/{repo_name}/b", d) for d in new)


def test_a_locked_night_that_left_an_image_waiting_carries_it_the_next_night(
        src_registry, dst_registry, faultproxy, repo_name, rng, tmp_path):
    """README's nightly.sh with its --locked lines (images.lock made by `mirror lock` and left
    as it is; the base is the last bundle): night 1 b waits (its registry asks for a longer
    wait than --max-wait: exit 14), night 2 carries b and not a again, night 3 (nothing new)
    carries neither a's nor b's blobs (what night 2 left to its base counts as carried);
    the three load in order. The script copied images.lock, `mirror lock`'s file, as
    carried.lock, and night 2 left b's blobs out: its load failed with exit 11 for good
    (operator pass o17 D1)."""
    site, env = _nightly_site(tmp_path, _readme_locked_script())
    a, b, proxy = _a_and_b(src_registry, faultproxy, repo_name, rng, site / "images.yaml")
    r = subprocess.run([sys.executable, "-m", "mirror", "lock", "-q", "-f", "images.yaml"],
                       cwd=site, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    reviewed = (site / "images.lock").read_bytes()
    proxy.add(Fault("status", method="GET", path=rf"/{repo_name}/b/blobs/", status=429,
                    headers={"Retry-After": "400"}, times=None))

    def night(n: str, rc: int = 0) -> Path:
        r = subprocess.run(["sh", str(site / "nightly.sh")], env={**env, "NIGHT": n},
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == rc, (n, r.stderr)
        assert (site / "images.lock").read_bytes() == reviewed  # left as it is
        return site / "bundles" / f"site-{n}.tar.zst"

    n1 = night("20261201", EXIT_WAITING)
    proxy.clear_faults()
    n2 = night("20261202")
    hexes = {x: {d.digest.split(":")[1] for d in img.all_blobs()} for x, img in
             (("a", a), ("b", b))}
    assert hexes["b"] <= _zst_blobs(n2) and not hexes["a"] & _zst_blobs(n2)
    n3 = night("20261203")
    assert not (hexes["a"] | hexes["b"]) & _zst_blobs(n3)
    for n in (n1, n2, n3):
        mirror_ok("load", n, "--to", f"{dst_registry.host}/{repo_name}", "-q")


def _on_a_terminal(args: list, cols: int = 100) -> tuple[int, str]:
    """Run mirror with stdout and stderr on a pseudo-terminal `cols` wide; (exit, output)."""
    import fcntl
    import pty
    import struct
    import termios

    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
    proc = subprocess.Popen(mirror_cmd(*args), env={**mirror_env(), "COLUMNS": str(cols)},
                            stdin=subprocess.DEVNULL, stdout=sub, stderr=sub)
    os.close(sub)
    out = bytearray()
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the other end is closed
            break
        if not data:
            break
        out += data
    os.close(main)
    return proc.wait(timeout=120), out.decode(errors="replace")


def test_on_a_terminal_the_bar_has_a_total_and_the_result_its_own_line(src_registry, repo_name,
                                                                       rng, tmp_path):
    img = ig.make_image(rng, ig.AMD64, "oci", layers=[ig.make_layer(rng, 3 << 20)])
    push_image(src_registry.url, repo_name, img, tags=["t"])
    out = tmp_path / "t.tar"
    code, text = _on_a_terminal(["pull", f"{src_registry.host}/{repo_name}:t", "-o", out,
                                 "--cache", tmp_path / "c"])
    assert code == 0, text
    assert "%|" in text, text  # a bar with a total: percent and ETA, not a bare counter
    # what the terminal shows: on each line, what comes after the last carriage return
    # (the bar cleared with \r, spaces, \r, then the result written over it)
    shown = [x.split("\r")[-1] for x in text.replace("\r\n", "\n").split("\n")]
    assert f"{out}\t{file_sha256(out)}" in shown, text


@pytest.mark.parametrize("fmt", ["tar", "tar.zst"])
def test_verify_on_a_terminal_moves_the_bar_to_the_total(fmt, src_registry, repo_name, rng,
                                                         tmp_path):
    """verify's bar counts the bytes of the bundle it has read, up to the file's size (it
    stood at 0 B, with no total, until the end)."""
    img = ig.make_image(rng, ig.AMD64, "oci", layers=[ig.make_layer(rng, 3 << 20)])
    push_image(src_registry.url, repo_name, img, tags=["t"])
    out = tmp_path / f"t.{fmt}"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:t", "-o", out, "--cache",
              tmp_path / "c", "-q")
    code, text = _on_a_terminal(["verify", out])
    assert code == 0, text
    size = out.stat().st_size
    shown = f"{size / 1024 / 1024:.2f}M"  # tqdm's unit_scale with 1024 as the divisor
    assert re.search(rf"100%\|[^|]*\| {re.escape(shown)}/{re.escape(shown)} ", text), \
        (shown, text)
    assert f"{out}: OK" in text, text


def test_output_read_by_head_is_no_error(src_registry, repo_name, rng, tmp_path):
    """`mirror inspect X | head`: when what reads stdout goes away, nothing is printed about
    it (no 'Broken pipe' line) and the exit code says so (141)."""
    idx, _ = _multi(rng)
    push_image(src_registry.url, repo_name, idx, tags=["h"])
    out = tmp_path / "h.tar"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:h", "-o", out, "--cache",
              tmp_path / "c")
    proc = subprocess.Popen(mirror_cmd("inspect", out), env=mirror_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before mirror writes a byte
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (141, ""), err


def test_dry_run_and_totals_count_a_shared_layer_once(src_registry, repo_name, rng, tmp_path):
    """Two tags sharing a big layer (app:1.0 and app:1.1): the dry run's "would fetch" and
    the run totals count the shared blob once, and the pull then fetches exactly what the
    dry run announced; a run that finds the shared blob in the cache reuses it once."""
    shared = ig.make_layer(rng, 200_000, compressed=False)
    imgs = [ig.make_image(rng, ig.AMD64, "oci", layers=[shared, ig.make_layer(rng)])
            for _ in range(2)]
    for tag, img in zip(("1.0", "1.1"), imgs, strict=True):
        push_image(src_registry.url, repo_name, img, tags=[tag])
    refs = [f"{src_registry.host}/{repo_name}:{t}" for t in ("1.0", "1.1")]
    cache, report = tmp_path / "cache", tmp_path / "r.json"
    unique = {b.digest: b.size for img in imgs for b in img.layers}

    dry = mirror_ok("pull", *refs, "--dry-run", "--cache", cache)
    would = int(dry.stdout.split("would fetch up to ")[1].split()[0])
    assert would == sum(unique.values()), dry.stdout  # configs came with the resolving
    mirror_ok("pull", *refs, "-o", tmp_path / "a.tar", "--cache", cache, "--report", report)
    doc = json.loads(report.read_text())
    assert doc["bytes_fetched"] == would == sum(i["bytes_fetched"] for i in doc["images"])

    # a new cache holding only 1.0's blobs: 1.1 reuses the shared layer, counted once in all
    cache2 = tmp_path / "cache2"
    mirror_ok("pull", refs[0], "-o", tmp_path / "b.tar", "--cache", cache2)
    mine = {b.digest: b.size for b in imgs[0].all_blobs()}
    dry = mirror_ok("pull", *refs, "--dry-run", "--cache", cache2, "--report", report)
    doc = json.loads(report.read_text())
    new = imgs[1].layers[1].size
    assert f"would fetch up to {new} bytes" in dry.stdout, dry.stdout
    assert doc["bytes_reused"] == sum(mine.values()) + imgs[1].config.size, doc
    r = mirror_ok("pull", *refs, "-o", tmp_path / "c.tar", "--cache", cache2,
                  "--report", report)
    doc = json.loads(report.read_text())
    assert doc["bytes_fetched"] == new, doc
    every = {b.digest: b.size for img in imgs for b in img.all_blobs()}
    assert doc["bytes_reused"] == sum(every.values()) - new, doc
    assert f"({new} bytes), {doc['blobs_reused']} reused" in r.stderr


def _cache_with(root, *contents: bytes) -> dict[str, int]:
    """A cache holding blobs of these bytes (named by their sha256); digest -> size."""
    import hashlib

    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "partial").mkdir()
    out = {}
    for data in contents:
        hexd = hashlib.sha256(data).hexdigest()
        (root / "blobs" / "sha256" / hexd).write_bytes(data)
        out[f"sha256:{hexd}"] = len(data)
    return out


def test_prune_refuses_a_directory_that_is_not_a_cache(tmp_path):
    """`cache prune --cache WRONG` (a typo, or the bundles directory) used to make a cache
    there and say it removed 0 blobs: it is refused (exit 2, naming it), creating nothing."""
    missing, other = tmp_path / "no-such-cache", tmp_path / "bundles"
    other.mkdir()
    (other / "site.tar").write_bytes(b"not a cache")
    report = tmp_path / "r.json"
    for wrong in (missing, other, other / "site.tar"):
        r = run_mirror("cache", "prune", "--cache", wrong, "--older-than", "1d",
                       "--report", report)
        assert r.returncode == EXIT_CODES["usage"], r.stderr
        [line] = [ln for ln in r.stderr.splitlines() if ln.startswith("mirror: error:")]
        assert f"--cache {wrong}: " in line and "cache" in line.split(": ", 2)[2], line
        doc = json.loads(report.read_text())
        assert doc["exit_code"] == 2 and doc["blobs_removed"] is None, doc
    assert not missing.exists()
    assert sorted(p.name for p in other.iterdir()) == ["site.tar"]
    assert (other / "site.tar").read_bytes() == b"not a cache"


def test_prune_before_the_first_pull_has_nothing_to_do(tmp_path):
    """The default cache (no --cache) that no pull has made yet: a prune job on a new machine
    removes nothing and exits 0, creating nothing (an explicit --cache stays strict, above)."""
    env = {**mirror_env(), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    report = tmp_path / "r.json"
    r = run(mirror_cmd("cache", "prune", "--older-than", "30d", "--report", report), env=env)
    assert r.returncode == 0 and "no cache at" in r.stdout, (r.stdout, r.stderr)
    assert not (tmp_path / "xdg").exists()
    doc = json.loads(report.read_text())
    assert (doc["exit_code"], doc["blobs_removed"], doc["bytes_left"]) == (0, 0, 0), doc
    r = run(mirror_cmd("cache", "prune", "-q", "--older-than", "30d"), env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r


def test_prune_says_when_keep_holds_the_cache_over_max_size(tmp_path):
    """--max-size that --keep does not let prune reach: it removes what it may, then says on
    one warning line how far over the size the kept blobs leave the cache; the report has
    the bytes left. Within reach: no warning."""
    cache = tmp_path / "cache"
    blobs = _cache_with(cache, b"k" * 5000, b"x" * 3000, b"y" * 2000)
    kept = next(d for d, s in blobs.items() if s == 5000)
    lock = tmp_path / "keep.lock"
    lock.write_text(json.dumps({"lockVersion": 1, "images": {}, "blobs": {kept: 5000}}))
    report = tmp_path / "r.json"
    r = mirror_ok("cache", "prune", "--cache", cache, "--max-size", "4000", "--keep", lock,
                  "--report", report)
    warn = [ln for ln in r.stderr.splitlines() if "warning:" in ln]
    assert len(warn) == 1 and "--max-size 4000" in warn[0] and "--keep" in warn[0] \
        and "5000 bytes" in warn[0], r.stderr
    doc = json.loads(report.read_text())
    assert (doc["blobs_removed"], doc["bytes_freed"], doc["bytes_left"]) == (2, 5000, 5000)
    r = mirror_ok("cache", "prune", "--cache", cache, "--max-size", "5000", "--keep", lock)
    assert "warning" not in r.stderr, r.stderr


def test_a_platform_asked_for_that_an_image_lacks_is_said(src_registry, repo_name, rng,
                                                          tmp_path):
    """`--platform linux/amd64,linux/arm/v7` over an index with amd64 and arm64 carried amd64
    alone, exit 0, and said nothing (-q: not a line), though the far side's arm/v7 nodes
    will find no image. A warning (shown with -q) names what is missing; the image's own
    `platforms:` in images.yaml says that is expected, and quiet runs are silent again."""
    idx, _ = _multi(rng)
    push_image(src_registry.url, repo_name, idx, tags=["1"])
    ref = f"{src_registry.host}/{repo_name}:1"
    common = ("-o", tmp_path / "b.tar", "--cache", tmp_path / "c", "-q")
    r = mirror_ok("pull", ref, "--platform", "linux/amd64,linux/arm/v7", *common)
    [line] = r.stderr.splitlines()
    assert "warning:" in line and f"{ref}: has no linux/arm/v7" in line, r.stderr
    assert "carries only linux/amd64" in line, line
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"version: 1\ndefaults:\n  platforms: [linux/amd64, linux/arm/v7]\n"
                   f"images:\n  - ref: {ref}\n    platforms: [linux/amd64]\n")
    r = mirror_ok("pull", "-f", cfg, *common)
    assert (r.stdout, r.stderr) == ("", ""), r.stderr
    r = mirror_ok("pull", ref, "--platform", "linux/amd64,linux/arm64", *common)
    assert (r.stdout, r.stderr) == ("", ""), r.stderr


def test_prune_counts_and_bounds_unfinished_downloads(src_registry, repo_name, rng, tmp_path):
    """Unfinished downloads (<cache>/partial/, what an interrupted pull leaves to resume)
    were outside the prune's sums: --older-than removed them but bytes_freed did not count
    them, and --max-size neither counted nor removed them, so a cache with gigabytes of
    partial layers was reported under its limit (bytes_left) while over it. They now count
    as the cache's bytes, oldest first like blobs, and --unused-by and --keep judge them."""

    img, _ = _multi(rng)
    push_image(src_registry.url, repo_name, img, tags=["p"])
    cache = tmp_path / "cache"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:p", "-o", tmp_path / "b.tar",
              "--cache", cache, "-q")
    blobs = sum(p.stat().st_size for p in (cache / "blobs" / "sha256").iterdir())
    partial = cache / "partial"

    def leftover(name: str, size: int, age: float) -> None:
        p = partial / f"sha256-{name * 64}"
        p.write_bytes(b"\0" * size)
        when = time.time() - age
        os.utime(p, (when, when))

    report = tmp_path / "r.json"

    def prune(*args: object) -> dict:
        mirror_ok("cache", "prune", "--cache", cache, *args, "--report", report, "-q")
        return json.loads(report.read_text())

    leftover("a", 300_000, 10 * 86400)  # older than every blob: the first to go
    doc = prune("--max-size", str(blobs))
    assert not list(partial.iterdir()), doc
    assert (doc["bytes_freed"], doc["bytes_left"]) == (300_000, blobs), doc
    leftover("b", 200_000, 10 * 86400)
    doc = prune("--older-than", "1d")
    assert not list(partial.iterdir()) and doc["bytes_freed"] == 200_000, doc
    leftover("c", 100_000, 0)
    doc = prune("--older-than", "1d")
    assert doc["bytes_left"] == blobs + 100_000 and doc["bytes_freed"] == 0, doc
    lock = tmp_path / "keep.lock"
    lock.write_text(json.dumps({"lockVersion": 1, "images": {}, "blobs": {
        d.digest: d.size for d in img.all_blobs()}}))
    doc = prune("--unused-by", lock)  # not a blob the lock uses: an old download, gone
    assert not list(partial.iterdir()) and doc["bytes_freed"] == 100_000, doc


def test_an_incremental_pulls_reused_blobs_agree_with_its_bytes(src_registry, repo_name, rng,
                                                                tmp_path):
    """An incremental pull against last night's lock file: the blobs the base carried are
    not the bundle's, so they are neither fetched nor reused by it, though planning read the
    single images' configs (their platform) from the cache: the report's blobs_reused and
    bytes_reused count the same blobs (none here), as its summary line does."""
    one = ig.make_image(rng, ig.AMD64, "oci")
    push_image(src_registry.url, f"{repo_name}/one", one, tags=["1"])
    two = ig.make_image(rng, ig.AMD64, "oci")
    push_image(src_registry.url, f"{repo_name}/two", two, tags=["1"])
    refs = [f"{src_registry.host}/{repo_name}/{x}:1" for x in ("one", "two")]
    cache, report, lock = tmp_path / "cache", tmp_path / "r.json", tmp_path / "night1.lock"
    mirror_ok("pull", refs[0], "-o", tmp_path / "a.tar", "--cache", cache, "--lock-file", lock)
    r = mirror_ok("pull", *refs, "-o", tmp_path / "b.tar", "--cache", cache, "--base", lock,
                  "--report", report, "--lock-file", tmp_path / "night2.lock")
    doc = json.loads(report.read_text())
    new = {b.digest: b.size for b in two.all_blobs()}
    assert (doc["blobs_fetched"], doc["bytes_fetched"]) == (len(new), sum(new.values())), doc
    assert (doc["blobs_reused"], doc["bytes_reused"]) == (0, 0), doc
    assert f"({sum(new.values())} bytes), 0 reused" in r.stderr, r.stderr
