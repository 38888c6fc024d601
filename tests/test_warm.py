"""The warm rerun (issue 18): once a run has seen what a tag names, the next one asks the
registry with one HEAD of the tag and takes the manifests from the cache's store of manifests
(mirror/store/manifests.py), never a manifest GET; a tag moved in between is picked up.
Requests are counted at the fault proxy in front of the real registry."""

from __future__ import annotations

import json
import subprocess

import pytest

from mirror.registry.ratelimit import SMALL_REQUESTS
from tests.support import imagegen as ig
from tests.support.faultproxy import Fault
from tests.support.oracle import (
    damaging,
    error_line,
    lost_for_good,
    manifest_gone,
    mirror_ok,
    resolved,
)
from tests.support.pusher import get_manifest, push_image, two_images
from tests.support.referrers import push_sbom


def manifest_requests(proxy, method: str) -> list[str]:
    return [p for p in proxy.paths(method) if "/manifests/" in p]


def head_statuses(proxy) -> list[int]:
    return [st for m, p, st in proxy.requests if m == "HEAD" and "/manifests/" in p]


def stored_files(cache) -> dict[str, tuple[int, int]]:
    """Each file of the cache's store of manifests: (inode, mtime), which a rewrite changes."""
    return {str(p.relative_to(cache)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in (cache / "manifests").rglob("*") if p.is_file()}


def test_warm_rerun_makes_one_tag_head_per_image_and_no_manifest_get(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    proxy = faultproxy(src_registry.url)
    host = proxy.host
    refs = []
    for n in range(3):  # two-platform indexes: a root and two platform manifests each
        index = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)],
                              "oci")
        push_image(src_registry.url, repo_name, index, tags=[f"v{n}"])
        refs.append(f"{host}/{repo_name}:v{n}")
    cfg = tmp_path / "images.yaml"
    cfg.write_text("images:\n" + "".join(f"  - {r}\n" for r in refs))
    cache, out = tmp_path / "cache", tmp_path / "out.tar"
    mirror_ok("pull", "-f", cfg, "-o", out, "--cache", cache)
    assert len(manifest_requests(proxy, "GET")) == 9  # cold: every manifest once
    first = resolved(tmp_path / "images.lock")
    stored = stored_files(cache)

    proxy.reset_counters()
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "again.tar", "--cache", cache)
    # nothing new: no record of the store is written again (a rename over an existing file
    # costs ext4 a flush: 1,200 of them were most of a 400-image rerun's time)
    assert stored_files(cache) == stored
    assert manifest_requests(proxy, "GET") == []
    heads = manifest_requests(proxy, "HEAD")
    assert sorted(heads) == sorted(f"/v2/{repo_name}/manifests/v{n}" for n in range(3))
    # each named the digest its tag named last time (If-None-Match): the registry said 304
    assert head_statuses(proxy) == [304] * 3
    assert resolved(tmp_path / "images.lock") == first
    assert (tmp_path / "again.tar").read_bytes() == out.read_bytes()

    # `mirror lock` takes the same way
    proxy.reset_counters()
    mirror_ok("lock", "-f", cfg, "--cache", cache)
    assert manifest_requests(proxy, "GET") == []
    assert len(manifest_requests(proxy, "HEAD")) == 3

    # a tag moved between runs: its new manifests are fetched, the others stay local
    moved = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)],
                          "oci")
    push_image(src_registry.url, repo_name, moved, tags=["v1"])
    proxy.reset_counters()
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "moved.tar", "--cache", cache)
    gets = manifest_requests(proxy, "GET")
    assert f"/v2/{repo_name}/manifests/v1" in gets
    assert len(gets) == 3, gets  # the moved tag and its two platform manifests
    assert len(manifest_requests(proxy, "HEAD")) == 3
    assert sorted(head_statuses(proxy)) == [200, 304, 304]  # the moved one: 200, new digest
    lock = json.loads((tmp_path / "images.lock").read_text())["images"]
    assert lock[refs[1]]["sourceDigest"] == moved.digest
    assert lock[refs[0]]["sourceDigest"] == first["images"][refs[0]]["sourceDigest"]


def test_a_registry_that_ignores_if_none_match_reruns_as_well(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """The HEAD of a warm rerun names the digest the tag named (If-None-Match); a registry
    without ETags (the proxy drops the header) answers 200 with the digest, and the rerun is
    the same: no manifest GET, the same bundle. A tag record with no media type (seeded from
    the lock file, or written before records had one) is asked with a plain HEAD, and the
    run records the type, so the next HEAD is conditional again."""
    proxy = faultproxy(src_registry.url)
    index = ig.make_index([ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM64)],
                          "docker")
    push_image(src_registry.url, repo_name, index, tags=["1"])
    ref, cache = f"{proxy.host}/{repo_name}:1", tmp_path / "cache"
    mirror_ok("pull", ref, "-o", tmp_path / "a.tar", "--cache", cache)
    [record] = (cache / "manifests" / "tags").iterdir()
    assert record.read_text() == f"{index.digest} {index.manifest.media_type}\n"

    proxy.add(Fault("ignore_conditional", method="HEAD", times=None))
    proxy.reset_counters()
    mirror_ok("pull", ref, "-o", tmp_path / "b.tar", "--cache", cache)
    assert manifest_requests(proxy, "GET") == [] and head_statuses(proxy) == [200]
    assert (tmp_path / "b.tar").read_bytes() == (tmp_path / "a.tar").read_bytes()

    proxy.clear_faults()
    record.write_text(f"{index.digest}\n")  # as a lock file seeds it
    proxy.reset_counters()
    mirror_ok("pull", ref, "-o", tmp_path / "c.tar", "--cache", cache)
    assert manifest_requests(proxy, "GET") == [] and head_statuses(proxy) == [200]
    assert record.read_text() == f"{index.digest} {index.manifest.media_type}\n"
    assert (tmp_path / "c.tar").read_bytes() == (tmp_path / "a.tar").read_bytes()
    proxy.reset_counters()
    mirror_ok("pull", ref, "-o", tmp_path / "d.tar", "--cache", cache)
    assert manifest_requests(proxy, "GET") == [] and head_statuses(proxy) == [304]


def test_a_damaged_manifest_in_the_cache_is_fetched_again(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """Verified on read, as blobs are: a stored manifest whose bytes no longer match its
    digest is dropped and asked for again, and the run's result is the same."""
    proxy = faultproxy(src_registry.url)
    host = proxy.host
    img = ig.make_image(rng, ig.AMD64, "oci")
    push_image(src_registry.url, repo_name, img, tags=["1"])
    ref = f"{host}/{repo_name}:1"
    cache = tmp_path / "cache"
    mirror_ok("pull", ref, "-o", tmp_path / "a.tar", "--cache", cache)
    stored = cache / "manifests" / "sha256" / img.digest.split(":", 1)[1]
    stored.write_bytes(stored.read_bytes().replace(b"{", b" {", 1))
    proxy.reset_counters()
    mirror_ok("pull", ref, "-o", tmp_path / "b.tar", "--cache", cache)
    assert manifest_requests(proxy, "GET") == [f"/v2/{repo_name}/manifests/1"]
    assert (tmp_path / "b.tar").read_bytes() == (tmp_path / "a.tar").read_bytes()
    assert stored.read_bytes() == img.manifest.data  # stored again, as served


def test_referrers_cached_per_registry_skips_the_probes_on_a_warm_rerun(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """Referrers can change while their subject does not (a signature added later), so by
    default every run asks (tag list, referrers API or fallback tag), and keeps no record of
    what it found (none would be read: a record per manifest, read back by every rerun, was
    1,200 files at 400 images); `referrers: cached` on a registry keeps what a run found and
    takes it for an unchanged subject on the next, with no request."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.support.referrers import push_signature

    proxy = faultproxy(src_registry.url)
    index = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)], "oci")
    push_image(src_registry.url, repo_name, index, tags=["1"])
    key = ec.generate_private_key(ec.SECP256R1())
    push_signature(src_registry.url, repo_name, key, index.digest)
    ref = f"{proxy.host}/{repo_name}:1"
    cache = tmp_path / "cache"
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"images: [{ref}]\n")
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "a.tar", "--cache", cache)
    proxy.reset_counters()
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "b.tar", "--cache", cache)
    assert [p for p in proxy.paths("GET") if "/tags/list" in p]  # `always`: asked again
    assert manifest_requests(proxy, "GET") == []
    assert list((cache / "manifests" / "referrers").iterdir()) == []  # nothing kept

    cfg.write_text(f"registries:\n  {proxy.host}:\n    referrers: cached\nimages: [{ref}]\n")
    proxy.reset_counters()
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "c.tar", "--cache", cache)
    assert [p for p in proxy.paths("GET") if "/tags/list" in p]  # the first `cached` run asks
    assert len(list((cache / "manifests" / "referrers").iterdir())) == 3  # index, 2 platforms
    proxy.reset_counters()
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "c.tar", "--cache", cache)
    assert [p for p in proxy.paths("GET")
            if any(k in p for k in ("/tags/list", "/referrers/", "/manifests/"))] == []
    assert manifest_requests(proxy, "HEAD") == [f"/v2/{repo_name}/manifests/1"]
    assert (tmp_path / "c.tar").read_bytes() == (tmp_path / "a.tar").read_bytes()


def test_sync_with_a_cache_reruns_on_tag_heads(src_registry, dst_registry, faultproxy,
                                                repo_name, rng, tmp_path):
    proxy = faultproxy(src_registry.url)
    index = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)], "oci")
    push_image(src_registry.url, repo_name, index, tags=["1", "2"])
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"images: [{proxy.host}/{repo_name}:1, {proxy.host}/{repo_name}:2]\n")
    sync = ("sync", "-f", cfg, "--to", f"{dst_registry.host}/w", "--cache", tmp_path / "c", "-q")
    mirror_ok(*sync)
    # each tag and platform manifest at least once (the two tags, resolved at once, may
    # both ask for a platform manifest before either has stored it)
    assert 4 <= len(manifest_requests(proxy, "GET")) <= 6
    proxy.reset_counters()
    mirror_ok(*sync)
    assert manifest_requests(proxy, "GET") == []
    assert sorted(manifest_requests(proxy, "HEAD")) == [f"/v2/{repo_name}/manifests/{t}"
                                                        for t in ("1", "2")]


def test_the_lock_file_tells_a_cache_without_tag_records_what_each_tag_named(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """The cache's manifests without its tag records (a cache from another config, or its
    tags/ directory lost): the lock file beside images.yaml says what each tag named, so
    the rerun is still one HEAD per image."""
    import shutil

    proxy = faultproxy(src_registry.url)
    index = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)], "oci")
    push_image(src_registry.url, repo_name, index, tags=["1"])
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"images: [{proxy.host}/{repo_name}:1]\n")
    cache = tmp_path / "cache"
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "a.tar", "--cache", cache)
    shutil.rmtree(cache / "manifests" / "tags")
    proxy.reset_counters()
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "b.tar", "--cache", cache)
    assert manifest_requests(proxy, "GET") == []
    assert manifest_requests(proxy, "HEAD") == [f"/v2/{repo_name}/manifests/1"]


def test_a_warm_sync_asks_each_target_its_tags_and_the_manifests_below_them(
        src_registry, dst_registry, faultproxy, repo_name, rng, tmp_path):
    """A target whose tag already names the source's manifest digest, and that serves every
    manifest below it, holds the whole image (a registry accepts a manifest only once the
    blobs it names are there): one HEAD of the tag there and one of each platform manifest
    (a registry's clean-up may delete those, the tag left: o26 D1), no blob HEAD, no GET. A
    new referrer of an unchanged image is still pushed."""
    pa, pb = faultproxy(dst_registry.url), faultproxy(dst_registry.url)
    index = None
    below = []
    for tag in ("1", "2"):
        index = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)],
                              "oci")
        push_image(src_registry.url, repo_name, index, tags=[tag])
        below += [m.digest for m in index.images]
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"images: [{src_registry.host}/{repo_name}:1, "
                   f"{src_registry.host}/{repo_name}:2]\n")
    sync = ("sync", "-f", cfg, "--to", f"{pa.host}/a", "--to", f"{pb.host}/b",
            "--cache", tmp_path / "c", "-q")
    mirror_ok(*sync)
    for proxy in (pa, pb):
        assert [p for p in proxy.paths("HEAD") if "/blobs/" in p]  # cold: blobs checked
        proxy.reset_counters()
    mirror_ok(*sync)
    for proxy, top in ((pa, "a"), (pb, "b")):
        asked = [p for p in proxy.paths() if p != "/v2/"]  # the ping aside
        assert sorted(asked) == [f"/v2/{top}/{repo_name}/manifests/{t}"
                                 for t in ("1", "2", *sorted(below))], asked
        assert sorted(asked) == sorted(p for p in proxy.paths("HEAD") if p != "/v2/")
        assert not [p for p in proxy.paths("GET") if p != "/v2/"]
        assert not proxy.paths("PUT") and not proxy.paths("POST")

    assert index is not None
    sbom = push_sbom(src_registry.url, repo_name, index.manifest)
    for proxy in (pa, pb):
        proxy.reset_counters()
    mirror_ok(*sync)
    for top in ("a", "b"):
        got = get_manifest(dst_registry.url, f"{top}/{repo_name}", sbom.digest)
        assert got == sbom.data or got[0] == sbom.data


def test_a_load_rerun_asks_the_target_its_tags_and_the_manifests_below_them(
        src_registry, dst_registry, faultproxy, repo_name, rng, tmp_path):
    """`mirror load` of the same bundle again pushes through the same sink: one HEAD of each
    tag and of each platform manifest below its index, nothing more."""
    refs, below = [], []
    for tag in ("1", "2"):
        index = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)],
                              "oci")
        push_image(src_registry.url, repo_name, index, tags=[tag])
        refs.append(f"{src_registry.host}/{repo_name}:{tag}")
        below += [m.digest for m in index.images]
    out = tmp_path / "b.tar"
    mirror_ok("pull", *refs, "-o", out, "-q", "--platform", "all")
    proxy = faultproxy(dst_registry.url)
    mirror_ok("load", out, "--to", f"{proxy.host}/l", "-q")
    proxy.reset_counters()
    mirror_ok("load", out, "--to", f"{proxy.host}/l", "-q")
    asked = [p for p in proxy.paths() if p != "/v2/"]
    assert sorted(asked) == [f"/v2/l/{repo_name}/manifests/{t}"
                             for t in ("1", "2", *sorted(below))], asked
    assert proxy.paths("HEAD") == asked or sorted(proxy.paths("HEAD")) == sorted(["/v2/", *asked])


def test_a_damaged_referrers_record_is_asked_again_not_carried(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """`referrers: cached` takes what the last run found for a subject from the cache's
    manifests/referrers/ record. A record that does not hold what refers to that subject
    (another subject's record copied over it, an entry naming a manifest that is no
    referrer of it, a cosign tag of another subject) is not carried: the subject's
    referrers are asked again, the bundle is the one the first run wrote (verify passes) and
    the record is repaired."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.support.oracle import run_mirror
    from tests.support.referrers import push_signature

    proxy = faultproxy(src_registry.url)
    key = ec.generate_private_key(ec.SECP256R1())
    imgs = [ig.make_image(rng, ig.AMD64, "oci") for _ in range(3)]
    for n, img in enumerate(imgs):
        push_image(src_registry.url, f"{repo_name}/i{n}", img, tags=["1"])
        push_signature(src_registry.url, f"{repo_name}/i{n}", key, img.digest)
    refs = [f"{proxy.host}/{repo_name}/i{n}:1" for n in range(3)]
    cache, cfg = tmp_path / "cache", tmp_path / "images.yaml"
    cfg.write_text(f"registries:\n  {proxy.host}:\n    referrers: cached\n"
                   f"images: [{', '.join(refs)}]\n")
    mirror_ok("pull", "-f", cfg, "-o", tmp_path / "a.tar", "--cache", cache)

    def record(n: int):
        name = f"{proxy.host}/{repo_name}/i{n}@{imgs[n].digest}"
        return cache / "manifests" / "referrers" / hashlib.sha256(name.encode()).hexdigest()

    kept = [json.loads(record(n).read_text()) for n in range(3)]
    assert all(len(k) == 1 and k[0]["tag"] for k in kept), kept  # cosign .sig tags
    record(0).write_text(json.dumps(kept[1]))  # i1's signature, kept as i0's
    record(1).write_text(json.dumps([{**kept[1][0], "tag": None}]))  # no subject: no referrer
    record(2).write_text(json.dumps([{"digest": imgs[0].digest, "kind": "signature",
                                      "tag": None}]))  # an image, not a referrer of i2
    out = tmp_path / "b.tar"
    mirror_ok("pull", "-f", cfg, "-o", out, "--cache", cache)
    v = run_mirror("verify", out)
    assert v.returncode == 0, v.stdout + v.stderr
    assert out.read_bytes() == (tmp_path / "a.tar").read_bytes()
    assert [json.loads(record(n).read_text()) for n in range(3)] == kept


def test_a_reruns_tag_listing_goes_beside_its_heads_not_after_them(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """Each image's wait for its repository's tag listing (cosign's tags, the fallback tag)
    held one of the registry's SMALL_REQUESTS resolution slots, and the image took it again
    behind every image not yet started: a rerun's listings came after all of its HEADs had
    been sent (at 50 ms round trips, 1.2 s of 400 references' rerun). The listing now goes
    out as soon as the first image of the repository has its answer. 40 references, three
    rounds of 16 HEADs, each HEAD held 0.5 s at the proxy: the listing is answered before any
    HEAD of the second round."""
    proxy = faultproxy(src_registry.url)
    tags = [f"t{n:02d}" for n in range(40)]
    push_image(src_registry.url, repo_name, ig.make_image(rng, ig.AMD64, "oci"), tags=tags)
    refs = [f"{proxy.host}/{repo_name}:{t}" for t in tags]
    cache, out = tmp_path / "cache", tmp_path / "out.tar"
    mirror_ok("pull", *refs, "-o", out, "--cache", cache)
    proxy.add(Fault("stall", method="HEAD", path=r"/manifests/t\d+$", delay=0.5, times=None))
    proxy.reset_counters()
    mirror_ok("pull", *refs, "-o", out, "--cache", cache)
    order = [(m, p) for m, p, _ in proxy.requests]
    assert [p for m, p in order if m == "GET" and "/manifests/" in p] == []
    heads = [i for i, (m, _) in enumerate(order) if m == "HEAD"]
    assert len(heads) == 40
    listing = [i for i, (_, p) in enumerate(order) if p.endswith("/tags/list")]
    assert len(listing) == 1
    before = sum(1 for i in heads if i < listing[0])
    assert before <= SMALL_REQUESTS, (before, order)


def _pull_damaging(proxy, ref_a: str, ref_b: str, repo_b: str, stored, out, cache,
                   report) -> subprocess.CompletedProcess[str]:
    """`mirror pull A B` with A's manifest damaged in the cache's store after planning read
    it, before the bundle's head reads it back (tests.support.oracle.damaging)."""
    return damaging(proxy, repo_b, stored, "pull", ref_a, ref_b, "-o", out, "--cache", cache,
                    "--report", report)


@pytest.mark.parametrize("name", ["b.tar", "b.tar.zst"])
def test_a_manifest_damaged_in_the_cache_while_the_run_goes_on_is_fetched_again(
        src_registry, faultproxy, repo_name, rng, tmp_path, name):
    """A pull keeps a manifest's bytes in the cache's store, not in memory, from its GET to
    the bundle's head (RawManifest.release). Damaged there meanwhile, it failed the whole
    run (exit 7, `no longer in the cache's store of manifests ... run again`); it is fetched
    again by digest from its registry now (checked, and stored again), one more manifest
    GET in the report, and the bundle is the one an undamaged run writes, byte for byte:
    the .tar's head (written once planning is done) and the .tar.zst's (written last)."""
    proxy = faultproxy(src_registry.url)
    img, refs = two_images(src_registry.url, proxy, repo_name, rng)
    mirror_ok("pull", *refs, "-o", tmp_path / "clean" / name, "--cache", tmp_path / "c0",
              "--report", tmp_path / "clean.json")
    cache, out, report = tmp_path / "cache", tmp_path / name, tmp_path / "r.json"
    stored = cache / "manifests" / "sha256" / img.digest.split(":", 1)[1]
    proxy.reset_counters()
    done = _pull_damaging(proxy, *refs, f"{repo_name}/b", stored, out, cache, report)
    assert done.returncode == 0, done.stderr
    assert manifest_requests(proxy, "GET")[-1] == f"/v2/{repo_name}/a/manifests/{img.digest}"
    assert out.read_bytes() == (tmp_path / "clean" / name).read_bytes()
    assert stored.read_bytes() == img.manifest.data  # stored again, as served
    asked = json.loads(report.read_text())["requests"][proxy.host]
    clean = json.loads((tmp_path / "clean.json").read_text())["requests"][proxy.host]
    assert asked["manifest GET"] == clean["manifest GET"] + 1, (asked, clean)
    mirror_ok("verify", out)


def test_a_damaged_manifest_a_spent_budget_cannot_fetch_again_waits_for_the_next_run(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """The same damage on a registry whose max_requests_per_run the run spends to the last
    request (what an undamaged run sends): fetching the manifest again is refused, and that
    is the budget's, not damage that stays (exit 14, not 7): the one line names the
    manifest, the cache's damage and the budget; no bundle, no .partial; the next run, on
    the same budget, writes the bundle an undamaged run writes."""
    proxy = faultproxy(src_registry.url)
    img, refs = two_images(src_registry.url, proxy, repo_name, rng)
    clean, report = tmp_path / "clean.tar", tmp_path / "r.json"
    mirror_ok("pull", *refs, "-o", clean, "--cache", tmp_path / "c0", "--report", report)
    budget = sum(json.loads(report.read_text())["requests"][proxy.host].values())
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"version: 1\nregistries:\n  {proxy.host}:\n    max_requests_per_run: "
                   f"{budget}\nimages:\n" + "".join(f"  - {r}\n" for r in refs))
    cache, out = tmp_path / "cache", tmp_path / "b.tar"
    stored = cache / "manifests" / "sha256" / img.digest.split(":", 1)[1]
    done = damaging(proxy, f"{repo_name}/b", stored, "pull", "-f", cfg, "-o", out,
                    "--cache", cache, "--report", report)
    assert done.returncode == 14, done.stderr
    line = error_line(done)
    assert img.digest in line and "no longer in the cache's store" in line, line
    assert f"rate limited by {proxy.host}" in line and "max_requests_per_run" in line, line
    assert "Traceback" not in done.stderr, done.stderr
    assert not out.exists() and not list(tmp_path.glob("b.tar.*")), list(tmp_path.iterdir())
    mirror_ok("pull", "-f", cfg, "-o", out, "--cache", cache)
    assert out.read_bytes() == clean.read_bytes()


def test_a_damaged_manifest_the_registry_no_longer_serves_stops_the_run_cleanly(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """The same damage, and the registry cannot serve the manifest again (404): the run stops
    with one error line naming the manifest, the cache's damage and the registry's answer
    (integrity, exit 7), writes no bundle and no .partial, and drops the entry."""
    proxy = faultproxy(src_registry.url)
    img, refs = two_images(src_registry.url, proxy, repo_name, rng)
    gone = manifest_gone(proxy, img.digest)
    cache, out, report = tmp_path / "cache", tmp_path / "b.tar", tmp_path / "r.json"
    stored = cache / "manifests" / "sha256" / img.digest.split(":", 1)[1]
    done = _pull_damaging(proxy, *refs, f"{repo_name}/b", stored, out, cache, report)
    lost_for_good(done, img.digest, gone)
    assert not out.exists() and not list(tmp_path.glob("b.tar.*")), list(tmp_path.iterdir())
    assert not stored.exists()  # dropped: the next run asks for it again


def test_a_source_index_damaged_in_the_cache_before_it_is_filtered_is_fetched_again(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """A pull of one platform of an index makes the filtered index from the source index's
    bytes once the platform's manifest is in (mirror.resolve), read back from the cache's
    store, where the GET left them (RawManifest.release): damaged there meanwhile, the image
    failed (exit 7, `... run again`). The index is fetched again by digest (checked, stored
    again), one more manifest GET in the report, and the bundle is the one an undamaged run
    writes, byte for byte."""
    proxy = faultproxy(src_registry.url)
    index = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)], "oci")
    push_image(src_registry.url, f"{repo_name}/a", index, tags=["1"])
    push_image(src_registry.url, f"{repo_name}/b", ig.make_image(rng, ig.AMD64, "oci"),
               tags=["1"])
    refs = [f"{proxy.host}/{repo_name}/a:1", f"{proxy.host}/{repo_name}/b:1"]
    args = ("--platform", "linux/amd64")
    clean = tmp_path / "clean.tar"
    mirror_ok("pull", *refs, *args, "-o", clean, "--cache", tmp_path / "c0",
              "--report", tmp_path / "clean.json")
    cache, out, report = tmp_path / "cache", tmp_path / "b.tar", tmp_path / "r.json"
    stored = cache / "manifests" / "sha256" / index.digest.split(":", 1)[1]
    proxy.reset_counters()
    done = damaging(proxy, f"{repo_name}/b", stored, "pull", *refs, *args, "-o", out,
                    "--cache", cache, "--report", report,
                    at=f"/v2/{repo_name}/a/manifests/{index.images[0].digest}$")
    assert done.returncode == 0, done.stderr
    assert f"/v2/{repo_name}/a/manifests/{index.digest}" in manifest_requests(proxy, "GET")
    assert out.read_bytes() == clean.read_bytes()
    assert stored.read_bytes() == index.manifest.data  # stored again, as served
    asked = json.loads(report.read_text())["requests"][proxy.host]
    before = json.loads((tmp_path / "clean.json").read_text())["requests"][proxy.host]
    assert asked["manifest GET"] == before["manifest GET"] + 1, (asked, before)
