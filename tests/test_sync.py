"""`mirror sync`: registry to registry, no bundle, against real registries.

The judge of what a sync leaves at a target is the registry's own storage (tags, manifest
revisions and blob links per repository, read from its filesystem), compared both ways with
what `mirror pull` then `mirror load` of the same images.yaml leaves at another prefix.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import imagegen as ig
from tests.support.faultproxy import Fault
from tests.support.oracle import (
    damaged_on_read,
    damaging,
    env_stopped_as_it_leaves,
    error_line,
    lost_for_good,
    manifest_gone,
    mirror_cmd,
    mirror_env,
    mirror_ok,
    run_mirror,
    stopped_mirror,
    tag_unserved,
)
from tests.support.pusher import (
    _request,
    blob_exists,
    corrupt_list,
    get_blob,
    get_manifest,
    head_manifest,
    merge_over_two,
    placed_served,
    push_blob,
    push_image,
    push_raw_manifest,
    two_images,
)
from tests.support.referrers import (
    fallback_index,
    fallback_tag,
    make_sbom,
    make_signature,
    push_sbom,
    push_signature,
)
from tests.support.registry import Registry


def state(reg: Registry, prefix: str) -> dict[str, dict[str, object]]:
    """What the registry holds under `prefix`, from its storage: per repository (named
    without the prefix) its tags and the digests they name, its manifest revisions and the
    blobs linked into it."""
    root = reg.storage / "docker/registry/v2/repositories" / prefix
    out: dict[str, dict[str, object]] = {}
    for manifests in sorted(root.rglob("_manifests")):
        repo = manifests.parent.relative_to(root).as_posix()
        tags_dir = manifests / "tags"
        tags = {t.name: (t / "current/link").read_text()
                for t in (tags_dir.iterdir() if tags_dir.exists() else [])}
        revs = manifests / "revisions/sha256"
        layers = manifests.parent / "_layers/sha256"
        out[repo] = {
            "tags": tags,
            "manifests": sorted(f"sha256:{p.name}" for p in revs.iterdir()) if revs.exists()
            else [],
            "blobs": sorted(f"sha256:{p.name}" for p in layers.iterdir()) if layers.exists()
            else []}
    return out


def images_yaml(tmp_path: Path, refs: list[str], extra: str = "") -> Path:
    cfg = tmp_path / "images.yaml"
    cfg.write_text("version: 1\n" + extra + "images:\n" + "".join(f"  - {r}\n" for r in refs))
    return cfg


def seed_several(reg: Registry, repo: str, rng: random.Random) -> list[str]:
    """A Docker list (three platforms, a signature and an SBOM), an OCI index, a single
    image pinned by digest: the references an images.yaml lists for them."""
    plats = (ig.AMD64, ig.ARM64_V8, ig.ARM_V7)
    dl = ig.make_index([ig.make_image(rng, p, "docker") for p in plats], "docker")
    push_image(reg.url, f"{repo}/docker", dl, ["1"])
    key = ec.generate_private_key(ec.SECP256R1())
    push_signature(reg.url, f"{repo}/docker", key, dl.digest)
    push_sbom(reg.url, f"{repo}/docker", dl.images[0].manifest)
    oi = ig.make_index([ig.make_image(rng, p, "oci") for p in plats[:2]], "oci")
    push_image(reg.url, f"{repo}/oci", oi, ["2", "latest"])
    one = ig.make_image(rng, ig.AMD64, "oci")
    push_image(reg.url, f"{repo}/one", one, ["x"])
    return [f"{reg.host}/{repo}/docker:1", f"{reg.host}/{repo}/oci:2",
            f"{reg.host}/{repo}/one@{one.digest}"]


def pull_load(tmp_path: Path, cfg: Path, to: str, *flags: str) -> None:
    """`mirror pull` then `mirror load` of `cfg` to `to` (the sync's yardstick)."""
    bundle = tmp_path / "pl.tar"
    mirror_ok("pull", "-f", cfg, "-o", bundle, "--cache", tmp_path / "pl-cache",
              "--lock-file", tmp_path / "pl.lock", "-q", *flags)
    mirror_ok("load", bundle, "--to", to, "-q")


def served(reg: Registry, report: dict, prefix: str) -> None:
    """Every digest the sync report names for an image is served by the target."""
    for entry in report["images"]:
        repo = entry["reference"].split("/", 1)[1].split("@")[0].rsplit(":", 1)[0]
        for digest in [entry["digest"], *entry["manifests"], *entry["platform_digests"].values(),
                       *entry["conversions"].values()]:
            get_manifest(reg.url, f"{prefix}/{repo}", digest)


@pytest.mark.slow
def test_sync_leaves_what_pull_then_load_leaves_at_two_targets(
        src_registry: Registry, dst_registry: Registry, registry_factory, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """Several images, a platform subset, referrers, two targets: each target holds, tag for
    tag, manifest for manifest and blob for blob, what pull then load leaves; the report and
    the lock file are pull's."""
    u = repo_name[-8:]  # prefixes of this test's own
    refs = seed_several(src_registry, repo_name, rng)
    cfg = images_yaml(tmp_path, refs, "defaults:\n  platforms: [linux/amd64, linux/arm64]\n")
    other = registry_factory()
    report = tmp_path / "sync.json"
    proc = mirror_ok("sync", "-f", cfg, "--to", f"{dst_registry.host}/s{u}",
                     "--to", f"{other.host}/s{u}", "--report", report)
    pull_load(tmp_path, cfg, f"{dst_registry.host}/pl{u}")
    want = state(dst_registry, f"pl{u}")
    assert want and state(dst_registry, f"s{u}") == want
    assert state(other, f"s{u}") == want
    docker = want[f"{repo_name}/docker"]
    assert any(t.endswith(".sig") for t in docker["tags"]), docker  # type: ignore[union-attr]
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == 0 and doc["error"] is None, doc
    assert [t["target"] for t in doc["targets"]] == [f"{dst_registry.host}/s{u}", f"{other.host}/s{u}"]
    assert doc["targets"][0]["blobs_pushed"] > 0 and doc["targets"][0]["tags"], doc
    for reg in (dst_registry, other):
        served(reg, doc, f"s{u}")
    for entry in doc["images"]:
        assert set(entry["platforms"]) <= {"linux/amd64", "linux/arm64/v8", "linux/arm64"}
    # stdout names what was pushed, as load's does
    assert f"{dst_registry.host}/s{u}/{repo_name}/oci:2" in proc.stdout.splitlines(), proc.stdout
    # the lock file is pull's (the same digests)
    mine, theirs = (json.loads(p.read_text())["images"]
                    for p in (tmp_path / "images.lock", tmp_path / "pl.lock"))
    assert mine == theirs
    # a second sync pushes nothing: everything is there
    again = tmp_path / "again.json"
    mirror_ok("sync", "-f", cfg, "--to", f"{dst_registry.host}/s{u}", "--report", again, "-q")
    t = json.loads(again.read_text())["targets"][0]
    assert t["blobs_pushed"] == t["manifests_pushed"] == 0, t


def test_sync_format_oci_converts_as_pull_does(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    u = repo_name[-8:]  # prefixes of this test's own
    dl = ig.make_index([ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM64_V8)],
                       "docker")
    push_image(src_registry.url, repo_name, dl, ["1"])
    cfg = images_yaml(tmp_path, [f"{src_registry.host}/{repo_name}:1"])
    report = tmp_path / "r.json"
    mirror_ok("sync", "-f", cfg, "--format", "oci", "--to", f"{dst_registry.host}/s{u}", "-q",
              "--report", report)
    pull_load(tmp_path, cfg, f"{dst_registry.host}/pl{u}", "--format", "oci")
    assert state(dst_registry, f"s{u}") == state(dst_registry, f"pl{u}")
    doc = json.loads(report.read_text())
    (entry,) = doc["images"]
    assert entry["conversions"] and entry["digest"] != dl.digest, entry
    body, ctype, _ = get_manifest(dst_registry.url, f"s{u}/{repo_name}", "1")
    assert ig.sha256_digest(body) == entry["digest"] and "oci.image.index" in ctype
    served(dst_registry, doc, f"s{u}")


def test_referrers_cached_without_a_cache_is_said_once(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """`referrers: cached` keeps what a run found in the cache; a sync without --cache has
    none, so it looked the referrers up every run as `always` does, and said nothing
    (operator pass o21, D3). It warns once, naming the registry; with --cache, not."""
    push_image(src_registry.url, repo_name, ig.make_image(rng, ig.AMD64, "oci"), ["1"])
    cfg = images_yaml(tmp_path, [f"{src_registry.host}/{repo_name}:1"],
                      f"registries:\n  {src_registry.host}:\n    referrers: cached\n")
    warning = f"referrers: cached ({src_registry.host}) keeps what a run found in the cache"
    u = repo_name[-8:]
    err = mirror_ok("sync", "-f", cfg, "--to", f"{dst_registry.host}/rc{u}", "-q").stderr
    assert err.count(warning) == 1 and "give it a --cache" in err, err
    err = mirror_ok("sync", "-f", cfg, "--to", f"{dst_registry.host}/rc{u}", "-q",
                    "--cache", tmp_path / "c").stderr
    assert warning not in err, err


def test_sync_through_a_cache_fetches_each_blob_once(
        src_registry: Registry, dst_registry: Registry, registry_factory, faultproxy,
        repo_name: str, rng: random.Random, tmp_path: Path) -> None:
    """With --cache, blobs are fetched once into it and pushed from it to both targets;
    without, each target's push reads them from the source."""
    u = repo_name[-8:]  # prefixes of this test's own
    layer = ig.make_layer(rng, size=3 << 20, compressed=False)
    img = ig.make_image(rng, ig.AMD64, "oci", layers=[layer])
    push_image(src_registry.url, repo_name, img, ["1"])
    proxy = faultproxy(src_registry.url)
    ref = f"{proxy.host}/{repo_name}:1"
    other = registry_factory()
    targets = ["--to", f"{dst_registry.host}/c{u}", "--to", f"{other.host}/c{u}"]
    mirror_ok("sync", ref, *targets, "--cache", tmp_path / "cache", "-q")
    assert len([p for p in proxy.paths("GET") if layer.digest in p]) == 1
    assert blob_exists(other.url, f"c{u}/{repo_name}", layer.digest)
    proxy.reset_counters()
    mirror_ok("sync", ref, "--to", f"{dst_registry.host}/d{u}", "--to", f"{other.host}/d{u}", "-q")
    assert len([p for p in proxy.paths("GET") if layer.digest in p]) == 2
    assert state(dst_registry, f"d{u}") == state(dst_registry, f"c{u}") == state(other, f"d{u}")


def test_sync_without_a_cache_fetches_a_config_planning_read_once(
        src_registry: Registry, dst_registry: Registry, registry_factory, faultproxy,
        repo_name: str, rng: random.Random, tmp_path: Path) -> None:
    """An image manifest without an index: planning reads its config (for its platform),
    and the pushes to both targets send those bytes (checked as they came) rather than
    GET it from the source again; the layer is read once per target. The report's
    `requests` agree with the source's proxy."""
    u = repo_name[-8:]
    img = ig.make_image(rng, ig.AMD64, "docker", layers=[ig.make_layer(rng, 5000)])
    push_image(src_registry.url, repo_name, img, ["1"])
    proxy = faultproxy(src_registry.url)
    other = registry_factory()
    report = tmp_path / "r.json"
    mirror_ok("sync", f"{proxy.host}/{repo_name}:1", "--to", f"{dst_registry.host}/g{u}",
              "--to", f"{other.host}/g{u}", "-q", "--report", report)
    gets = proxy.paths("GET")
    assert len([p for p in gets if img.config.digest in p]) == 1, gets
    assert len([p for p in gets if img.layers[0].digest in p]) == 2, gets
    assert json.loads(report.read_text())["requests"][proxy.host]["blob GET"] == 3
    for reg in (dst_registry, other):
        assert get_blob(reg.url, f"g{u}/{repo_name}", img.config.digest) == img.config.data
        assert ig.sha256_digest(get_blob(reg.url, f"g{u}/{repo_name}",
                                         img.layers[0].digest)) == img.layers[0].digest


def test_sync_through_a_damaged_cache_fetches_the_blob_again(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """A cache entry whose bytes no longer match its digest (a bad disk, a stray edit) is
    dropped and fetched again, as a pull does with the same cache; the sync used to stream
    it, fail at its last chunk (exit 7) and do so again on every run until the cache was
    removed by hand."""
    u = repo_name[-8:]
    img = ig.make_image(rng, ig.AMD64, "oci")
    push_image(src_registry.url, repo_name, img, ["1"])
    ref = f"{src_registry.host}/{repo_name}:1"
    cache = tmp_path / "cache"
    mirror_ok("sync", ref, "--to", f"{dst_registry.host}/a{u}", "--cache", cache, "-q")
    layer = img.layers[0].digest
    entry = cache / "blobs/sha256" / layer.split(":", 1)[1]
    entry.chmod(0o644)
    data = bytearray(entry.read_bytes())
    data[10] ^= 0xFF
    entry.write_bytes(bytes(data))
    report = tmp_path / "r.json"
    mirror_ok("sync", ref, "--to", f"{dst_registry.host}/b{u}", "--cache", cache, "-q",
              "--report", report)
    assert get_blob(dst_registry.url, f"b{u}/{repo_name}", layer)
    assert ig.sha256_digest(entry.read_bytes()) == layer  # the cache holds good bytes again
    served(dst_registry, json.loads(report.read_text()), f"b{u}")


def _manifest_gets(proxy) -> list[str]:
    return [p for p in proxy.paths("GET") if "/manifests/" in p]


def test_a_manifest_damaged_in_the_cache_while_a_sync_goes_on_is_fetched_again(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """A sync through a cache keeps a manifest's bytes in the cache's store, not in memory,
    from its GET to its PUT at the target (RawManifest.release). Damaged there meanwhile, it
    failed the whole run (exit 7, `no longer in the cache's store of manifests ... run
    again`); as a pull, the sync fetches it again by digest from the source (checked, stored
    again), one more manifest GET in the report however many targets, and each target holds
    what an undamaged sync puts there: the same tags, manifests and blobs."""
    u = repo_name[-8:]
    proxy = faultproxy(src_registry.url)
    img, refs = two_images(src_registry.url, proxy, repo_name, rng)
    clean = tmp_path / "clean.json"
    mirror_ok("sync", *refs, "--to", f"{dst_registry.host}/c{u}", "--cache", tmp_path / "c0",
              "--report", clean, "-q")
    cache, report = tmp_path / "cache", tmp_path / "r.json"
    stored = cache / "manifests" / "sha256" / img.digest.split(":", 1)[1]
    proxy.reset_counters()
    done = damaging(proxy, f"{repo_name}/b", stored, "sync", *refs, "--to",
                    f"{dst_registry.host}/d{u}", "--to", f"{dst_registry.host}/e{u}",
                    "--cache", cache, "--report", report, "-q")
    assert done.returncode == 0, done.stderr
    assert _manifest_gets(proxy)[-1] == f"/v2/{repo_name}/a/manifests/{img.digest}"
    for prefix in (f"d{u}", f"e{u}"):  # the second target reads what the first stored again
        assert state(dst_registry, prefix) == state(dst_registry, f"c{u}")
        assert state(dst_registry, prefix)[f"{repo_name}/a"]["tags"] == {"1": img.digest}
    assert stored.read_bytes() == img.manifest.data  # stored again, as served
    asked = json.loads(report.read_text())["requests"][proxy.host]
    before = json.loads(clean.read_text())["requests"][proxy.host]
    assert asked["manifest GET"] == before["manifest GET"] + 1, (asked, before)


def test_a_damaged_manifest_the_source_no_longer_serves_stops_the_sync_cleanly(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """The same damage, and the source cannot serve the manifest again (404): the sync stops
    with one error line naming the manifest, the cache's damage and the registry's answer
    (integrity, exit 7); the image's tag is not put at the target, and the cache's damaged
    entry is dropped (the next run asks for it again)."""
    u = repo_name[-8:]
    proxy = faultproxy(src_registry.url)
    img, refs = two_images(src_registry.url, proxy, repo_name, rng)
    gone = manifest_gone(proxy, img.digest)
    cache = tmp_path / "cache"
    stored = cache / "manifests" / "sha256" / img.digest.split(":", 1)[1]
    done = damaging(proxy, f"{repo_name}/b", stored, "sync", *refs, "--to",
                    f"{dst_registry.host}/g{u}", "--cache", cache, "-q")
    lost_for_good(done, img.digest, gone)
    assert not state(dst_registry, f"g{u}").get(f"{repo_name}/a", {}).get("tags"), \
        state(dst_registry, f"g{u}")
    assert not stored.exists()


def test_sync_with_a_cache_on_a_full_disk_says_so(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """The cache's disk fills up (RLIMIT_FSIZE in the child: the OSError path of ENOSPC)
    while a blob is fetched into it for the upload: one line naming the cache file and
    'File too large', exit 1 as a pull's; it was the upload's error instead, exit 3 (a
    registry failure), 'Can not write request body for http://TARGET/...?_state=...'."""
    import resource

    u = repo_name[-8:]
    big = ig.make_layer(rng, size=1 << 20, compressed=False)
    push_image(src_registry.url, repo_name, ig.make_image(rng, ig.AMD64, "oci", layers=[big]),
               ["1"])
    limit = 256 << 10

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cache = tmp_path / "cache"
    proc = subprocess.run(mirror_cmd("sync", f"{src_registry.host}/{repo_name}:1", "--to",
                                     f"{dst_registry.host}/f{u}", "--cache", cache, "-q",
                                     "--lock-file", tmp_path / "l.lock"),
                          cwd=tmp_path, env=mirror_env(), capture_output=True, text=True,
                          timeout=120, preexec_fn=small_disk)
    assert proc.returncode == 1, proc.stderr
    line = error_line(proc)
    assert "File too large" in line and str(cache) in line, line
    assert "_state=" not in line and "request body" not in line, line
    assert not blob_exists(dst_registry.url, f"f{u}/{repo_name}", big.digest)
    mirror_ok("sync", f"{src_registry.host}/{repo_name}:1", "--to", f"{dst_registry.host}/f{u}",
              "--cache", cache, "-q", "--lock-file", tmp_path / "l.lock")
    assert blob_exists(dst_registry.url, f"f{u}/{repo_name}", big.digest)


def test_sync_merge_serves_every_digest_its_report_names(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """--merge over a tag that holds another index with a platform the image lacks: the
    tag gets the merged index (a new digest) and the image's own index, the one the report,
    the lock file and its signatures name, is served by digest too (it was never pushed:
    the report named a digest the target did not have)."""
    u = repo_name[-8:]
    old = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)], "oci")
    new = ig.make_index([ig.make_image(rng, ig.AMD64, "oci")], "oci")
    push_image(src_registry.url, repo_name, new, ["1"])
    push_image(dst_registry.url, f"m{u}/{repo_name}", old, ["1"])
    report = tmp_path / "r.json"
    proc = mirror_ok("sync", f"{src_registry.host}/{repo_name}:1", "--to",
                     f"{dst_registry.host}/m{u}", "--merge", "--report", report,
                     "--lock-file", tmp_path / "m.lock")
    body, _, _ = get_manifest(dst_registry.url, f"m{u}/{repo_name}", "1")
    assert ig.sha256_digest(body) not in (new.digest, old.digest), body  # merged
    assert f"{new.digest} -> {ig.sha256_digest(body)}" in proc.stderr, proc.stderr
    doc = json.loads(report.read_text())
    assert doc["images"][0]["digest"] == new.digest
    served(dst_registry, doc, f"m{u}")
    lock = json.loads((tmp_path / "m.lock").read_text())["images"]
    assert [e["digest"] for e in lock.values()] == [new.digest]
    again = mirror_ok("sync", f"{src_registry.host}/{repo_name}:1", "--to",
                      f"{dst_registry.host}/m{u}", "--merge", "-q", "--report", report,
                      "--lock-file", tmp_path / "m.lock")
    assert again.stderr == "", again.stderr
    assert json.loads(report.read_text())["targets"][0]["manifests_pushed"] == 0


def test_sync_one_target_given_twice_is_refused(src_registry: Registry, dst_registry: Registry,
                                                repo_name: str, rng: random.Random,
                                                tmp_path: Path) -> None:
    """--to H/p --to H/p/ (a pasted line, a script's list): the same target twice was pushed
    to twice and listed twice in the report; refused before any work (exit 2)."""
    u = repo_name[-8:]
    push_image(src_registry.url, repo_name, ig.make_image(rng, ig.AMD64, "oci"), ["1"])
    r = run_mirror("sync", f"{src_registry.host}/{repo_name}:1", "--to",
                   f"{dst_registry.host}/t{u}", "--to", f"{dst_registry.host}/t{u}/",
                   "--lock-file", tmp_path / "l.lock")
    assert r.returncode == 2, r.stderr
    assert f"--to {dst_registry.host}/t{u} is given twice" in error_line(r), r.stderr
    assert not state(dst_registry, f"t{u}")


def test_sync_dry_run_pushes_nothing(src_registry: Registry, dst_registry: Registry,
                                     repo_name: str, rng: random.Random, tmp_path: Path) -> None:
    img = ig.make_image(rng, ig.AMD64, "oci")
    push_image(src_registry.url, repo_name, img, ["1"])
    cfg = images_yaml(tmp_path, [f"{src_registry.host}/{repo_name}:1"])
    proc = mirror_ok("sync", "-f", cfg, "--to", f"{dst_registry.host}/dry", "--dry-run")
    assert f"manifest {img.digest} -> {dst_registry.host}/dry/{repo_name}:1" in proc.stdout
    assert f"blob {img.layers[0].digest} -> dry/{repo_name}" in proc.stdout, proc.stdout
    assert repo_name not in state(dst_registry, "dry")
    assert not (tmp_path / "images.lock").exists()


def test_sync_through_429_and_5xx(src_registry: Registry, dst_registry: Registry, faultproxy,
                                  repo_name: str, rng: random.Random, tmp_path: Path) -> None:
    """A 429 with Retry-After on a source blob, a 5xx on another and on the target's tag:
    waited for, tried again, and the sync completes with the retries in its report."""
    img = ig.make_image(rng, ig.AMD64, "oci")
    push_image(src_registry.url, repo_name, img, ["1"])
    src = faultproxy(src_registry.url)
    dst = faultproxy(dst_registry.url)
    src.add(Fault("status", method="GET", path=img.layers[0].digest, status=429,
                  headers={"Retry-After": "1"}))
    src.add(Fault("status", method="GET", path=img.config.digest, status=503))
    dst.add(Fault("status", method="PUT", path=r"/manifests/1$", status=502))
    report = tmp_path / "r.json"
    t0 = time.monotonic()
    mirror_ok("sync", f"{src.host}/{repo_name}:1", "--to", f"{dst.host}/f", "-q",
              "--report", report)
    assert time.monotonic() - t0 >= 1.0  # Retry-After was honoured
    doc = json.loads(report.read_text())
    assert doc["retries"] >= 3, doc
    body, _, _ = get_manifest(dst_registry.url, f"f/{repo_name}", "1")
    assert ig.sha256_digest(body) == img.digest


def test_a_source_stream_that_breaks_off_is_sent_again(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """The source's connection is reset mid-blob while its bytes stream into the target's
    upload: the upload starts again (a retry in the report), and the target gets the blob."""
    layer = ig.make_layer(rng, size=2 << 20, compressed=False)
    img = ig.make_image(rng, ig.AMD64, "oci", layers=[layer])
    push_image(src_registry.url, repo_name, img, ["1"])
    src = faultproxy(src_registry.url)
    src.add(Fault("reset_after", method="GET", path=layer.digest, offset=300_000))
    report = tmp_path / "r.json"
    mirror_ok("sync", f"{src.host}/{repo_name}:1", "--to", f"{dst_registry.host}/reset", "-q",
              "--report", report)
    assert json.loads(report.read_text())["retries"] >= 1
    assert len([p for p in src.paths("GET") if layer.digest in p]) == 2
    assert ig.sha256_digest(get_blob(dst_registry.url, f"reset/{repo_name}", layer.digest)) \
        == layer.digest


@pytest.mark.parametrize("times", [None, 1], ids=["always", "once"])
@pytest.mark.parametrize("size", [1 << 20, 20 << 20], ids=["PUT", "PATCH"])
def test_a_blob_that_does_not_match_never_completes_an_upload(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, size: int, times: int | None) -> None:
    """Bad bytes from the source (a byte flipped on the way), in one PUT or in the one PATCH
    of a big blob: the check before the last chunk fails the upload. It is read once more
    from the source, into a new upload session, as a pull fetches a blob again (o24 N1: a
    sync without --cache stopped at once, exit 7): damaged once, the target gets the right
    bytes, exit 0; every time, exit 7, the blob never completed, nothing tagged."""
    layer = ig.make_layer(rng, size=size, compressed=False)
    img = ig.make_image(rng, ig.AMD64, "oci", layers=[layer])
    push_image(src_registry.url, repo_name, img, ["1"])
    src = faultproxy(src_registry.url)
    src.add(Fault("flip_byte", method="GET", path=layer.digest, offset=1000, times=times))
    report = tmp_path / "r.json"
    proc = run_mirror("sync", f"{src.host}/{repo_name}:1", "--to", f"{dst_registry.host}/bad",
                      "--report", report)
    assert len([p for p in src.paths("GET") if layer.digest in p]) == 2, src.paths()
    if times == 1:
        assert proc.returncode == 0, proc.stderr
        assert json.loads(report.read_text())["retries"] >= 1
        assert ig.sha256_digest(get_blob(dst_registry.url, f"bad/{repo_name}",
                                         layer.digest)) == layer.digest
        assert get_manifest(dst_registry.url, f"bad/{repo_name}", "1")[0] == img.manifest.data
        return
    assert proc.returncode == 7, proc.stderr
    assert layer.digest in error_line(proc), proc.stderr
    assert not blob_exists(dst_registry.url, f"bad/{repo_name}", layer.digest)
    assert state(dst_registry, "bad").get(repo_name, {}).get("tags", {}) == {}


@pytest.mark.parametrize("times", [1, None], ids=["once", "always"])
def test_a_source_tag_altered_on_the_way_never_tags_the_target_with_its_digest(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, times: int | None) -> None:
    """The source's tag answered with its manifest altered on the way (one space more,
    the registry's Docker-Content-Digest kept): the bytes do not match the digest the
    registry named, so they are damaged, fetched once more. Once: the target's tag names
    the registry's digest, and so does the lock file (they named the altered bytes'
    digest, which the source never had). Every time: exit 7 naming both, nothing tagged,
    no manifest pushed."""
    img = ig.make_image(rng, ig.AMD64, "oci", n_layers=1, layer_size=2000)
    push_image(src_registry.url, repo_name, img, ["1"])
    src = faultproxy(src_registry.url)
    src.add(Fault("insert", method="GET", path=rf"/{repo_name}/manifests/1$", offset=1,
                  body=b" ", times=times))
    ref, lock = f"{src.host}/{repo_name}:1", tmp_path / "images.lock"
    prefix = f"altered-{'once' if times else 'always'}"
    proc = run_mirror("sync", ref, "--to", f"{dst_registry.host}/{prefix}", "--lock-file",
                      lock)
    gets = [p for p in src.paths("GET") if p.endswith(f"/{repo_name}/manifests/1")]
    assert len(gets) == 2, src.paths()
    held = state(dst_registry, prefix).get(repo_name, {})
    if times == 1:
        assert proc.returncode == 0, proc.stderr
        assert held["tags"] == {"1": img.digest} and held["manifests"] == [img.digest], held
        assert json.loads(lock.read_text())["images"][ref]["sourceDigest"] == img.digest
        return
    assert proc.returncode == 7, proc.stderr
    line = error_line(proc)
    bad = ig.sha256_digest(img.manifest.data[:1] + b" " + img.manifest.data[1:])
    assert f"{ref}: digest mismatch: expected {img.digest}" in line and bad in line, line
    assert held.get("tags", {}) == {} and held.get("manifests", []) == [], held
    assert not lock.exists()


def test_a_sync_through_the_cache_with_every_blob_corrupt_says_one_line(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """sync --cache, every blob corrupted on the way: the first mismatch stops the run (exit
    7, one line). The other blobs' fetches into the cache (CacheSource.ready's tasks, shielded
    from their openers' cancellation) failed too, later, and nobody awaited them: asyncio
    printed `Task exception was never retrieved` and a traceback for each at exit."""
    _, ref = corrupt_list(src_registry.url, faultproxy, repo_name, rng)
    for n in range(3):  # the race is the tasks': each run has its chance
        proc = run_mirror("sync", ref, "--to",
                          f"{dst_registry.host}/corrupt{n}", "--cache", tmp_path / f"c{n}",
                          "--retries", "0")
        assert proc.returncode == 7, proc.stderr
        assert "digest mismatch" in error_line(proc), proc.stderr
        assert "Traceback" not in proc.stderr and "never retrieved" not in proc.stderr, \
            proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert state(dst_registry, f"corrupt{n}").get(repo_name, {}).get("tags", {}) == {}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.slow
def test_an_interrupted_sync_is_completed_by_the_next(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, sig: signal.Signals) -> None:
    """Stopped while a big blob streams from a slow source into the target: no tag and not
    that blob at the target; Ctrl-C exits 130 with the report saying so and cancels its
    upload sessions (a SIGKILL leaves them to the registry, as distribution does the one whose
    body was cut); the next sync completes it, with what pull and load would leave."""
    u = repo_name[-8:]  # prefixes of this test's own
    big = ig.make_layer(rng, size=4 << 20, compressed=False)
    img = ig.make_image(rng, ig.AMD64, "oci", layers=[big, ig.make_layer(rng, size=4096)])
    push_image(src_registry.url, repo_name, img, ["1"])
    src = faultproxy(src_registry.url)
    src.add(Fault("slow", method="GET", path=big.digest, chunk=64 << 10, delay=0.2))
    cfg = images_yaml(tmp_path, [f"{src.host}/{repo_name}:1"])
    report = tmp_path / "r.json"
    proc = subprocess.Popen(mirror_cmd("sync", "-f", cfg, "--to", f"{dst_registry.host}/i{u}",
                                       "--report", report, "-q"),
                            env=mirror_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(big.digest in p for p in src.paths("GET")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # mid-blob
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    # an open session holds files (startedat, data); a cancelled one empty directories at most
    repo_dir = dst_registry.storage / f"docker/registry/v2/repositories/i{u}/{repo_name}"
    sessions = [p for p in repo_dir.rglob("_uploads/*/*") if p.is_file()]
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        doc = json.loads(report.read_text())
        assert doc["error"] == "interrupted (SIGINT)" and doc["exit_code"] == 130, doc
        assert doc["images"][0]["error"] == "interrupted (SIGINT)", doc
        # cancelled (DELETE) but the one whose body was cut: distribution 2.8 refuses to
        # cancel it ("upload resumed at wrong offset", its state token says 0), so it is left
        # to the registry's upload purging
        assert len({p.parent for p in sessions}) <= 1, sessions
    else:
        assert proc.returncode == -signal.SIGKILL, err
        assert sessions  # the half-sent blob's session
    assert not blob_exists(dst_registry.url, f"i{u}/{repo_name}", big.digest)
    assert state(dst_registry, f"i{u}").get(repo_name, {}).get("tags", {}) == {}
    src.clear_faults()
    mirror_ok("sync", "-f", cfg, "--to", f"{dst_registry.host}/i{u}", "-q")
    pull_load(tmp_path, cfg, f"{dst_registry.host}/pl{u}")
    assert state(dst_registry, f"i{u}") == state(dst_registry, f"pl{u}")


def test_an_interrupted_sync_reports_every_target(
        src_registry: Registry, dst_registry: Registry, registry_factory, faultproxy,
        repo_name: str, rng: random.Random, tmp_path: Path) -> None:
    """Ctrl-C while the first of two targets is pushed: the report's `targets` has one entry
    per --to as documented, the one not reached with null counts (it used to be left out,
    as if it had not been asked for) and an empty placement: it holds nothing the run
    pushed (it used to list the image, which a monitor then did not find there)."""
    u = repo_name[-8:]
    img = ig.make_image(rng, ig.AMD64, "oci")
    push_image(src_registry.url, repo_name, img, ["1"])
    src = faultproxy(src_registry.url)
    src.add(Fault("stall", method="GET", path=img.layers[0].digest, delay=30, times=None))
    other = registry_factory()
    report = tmp_path / "r.json"
    proc = subprocess.Popen(mirror_cmd("sync", f"{src.host}/{repo_name}:1", "--to",
                                       f"{dst_registry.host}/i{u}", "--to", f"{other.host}/i{u}",
                                       "--report", report, "-q"),
                            env=mirror_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    # the config is read (planned), the layer's GET is held for 30 s: in the first push
    while not any(img.config.digest in p for p in src.paths()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    doc = json.loads(report.read_text())
    assert [t["target"] for t in doc["targets"]] == [f"{dst_registry.host}/i{u}",
                                                     f"{other.host}/i{u}"], doc
    second = doc["targets"][1]
    assert second["blobs_pushed"] is None and second["tags"] is None, second
    assert second["placement"] == [] == doc["targets"][0]["placement"], doc["targets"]


def _two_images(src_registry: Registry, repo_name: str, rng: random.Random, *names: str
                ) -> tuple[list[str], list[ig.Image]]:
    """Two small images at the source, tag 1, in `repo_name`/NAME for each of the two
    names: their repositories and the images."""
    repos = [f"{repo_name}/{name}" for name in names]
    imgs = [ig.make_image(rng, ig.AMD64, "oci", layer_size=2048 + n) for n in range(2)]
    for repo, img in zip(repos, imgs, strict=True):
        push_image(src_registry.url, repo, img, ["1"])
    return repos, imgs


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_as_a_finished_sync_exits_leaves_the_reports_exit_code(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path, sig: signal.Signals) -> None:
    """A stop that lands once the sync's report is written, as the process exits: the run
    is over, so its exit code is the report's. It killed the process by the signal (the
    shell's 130 or 143, cron's exit code against the report's `exit_code: 0`; an operator
    saw it once): Python gives the signals a run holds their default action back as it
    finalizes, before it tears its modules down (SIGINT 0-40 ms after a sync's report
    appeared: 18 of 30 killed, SIGTERM 9 of 20). The run now leaves without finalizing
    (mirror.cli._leave); here the signal is sent just before it does, widened by 0.2 s."""
    repos, imgs = _two_images(src_registry, repo_name, rng, "a", "b")
    report, u = tmp_path / "r.json", repo_name[-8:]
    proc = subprocess.run(mirror_cmd("sync", *(f"{src_registry.host}/{r}:1" for r in repos),
                                     "--to", f"{dst_registry.host}/x{u}", "--report", report,
                                     "-q"),
                          env=env_stopped_as_it_leaves(sig, tmp_path / "site"),
                          capture_output=True, text=True, timeout=120)
    assert (tmp_path / "site" / "left").exists()  # the stop was sent
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == 0 and doc["error"] is None, doc
    assert proc.returncode == 0 and proc.stderr == "", (proc.returncode, proc.stderr)
    for repo, img in zip(repos, imgs, strict=True):
        assert get_manifest(dst_registry.url, f"x{u}/{repo}", "1")[0] == img.manifest.data


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["sigint-130", "sigterm-143"])
def test_a_stopped_sync_says_interrupted_only_of_the_images_not_finished(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, sig: signal.Signals, code: int) -> None:
    """Stopped while the second image's tag is being put at the target, the first image
    tagged there already: every image was reported `interrupted`, the one the target serves
    whole under its tag too. Only the image not finished says so (the run's error and exit
    code are the signal's, as a pull's)."""
    repos, imgs = _two_images(src_registry, repo_name, rng, "done", "hung")
    dst = faultproxy(dst_registry.url)
    hung = dst.add(Fault("stall", method="PUT", path=f"/{repos[1]}/manifests/1", delay=60))
    report, u = tmp_path / "r.json", repo_name[-8:]
    proc = stopped_mirror(lambda: hung.hits > 0, "the second tag was never put", "sync",
                          *(f"{src_registry.host}/{r}:1" for r in repos), "--to",
                          f"{dst.host}/s{u}", "--report", report, "-q", sig=sig)
    assert proc.returncode == code, proc.stderr
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == code and sig.name in doc["error"], doc
    assert get_manifest(dst_registry.url, f"s{u}/{repos[0]}", "1")[0] == imgs[0].manifest.data
    finished, stopped = doc["images"]
    assert (finished["error"], finished["error_code"]) == (None, None), finished
    assert finished["digest"] == imgs[0].digest, finished
    assert sig.name in stopped["error"] and stopped["error_code"] == code, stopped
    assert doc["targets"][0]["tags"] == [f"{dst.host}/s{u}/{repos[0]}:1"], doc["targets"]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["sigint-130", "sigterm-143"])
def test_a_rerun_stopped_at_its_first_heads_says_interrupted_only_of_the_image_not_found(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, sig: signal.Signals, code: int) -> None:
    """A rerun (both images at the target already) stopped while it still asks the target
    whether each image is there (the second one's tag HEAD held by the fault proxy), the
    first one's HEAD answered 'present': both were reported `interrupted` (the answers were
    kept only once all had come). The first has no error; only the second says
    interrupted."""
    repos, imgs = _two_images(src_registry, repo_name, rng, "done", "hung")
    dst = faultproxy(dst_registry.url)
    report, u = tmp_path / "r.json", repo_name[-8:]
    args = ("sync", *(f"{src_registry.host}/{r}:1" for r in repos), "--to", f"{dst.host}/h{u}",
            "--report", report, "-q")
    mirror_ok(*args)
    dst.reset_counters()
    hung = dst.add(Fault("stall", method="HEAD", path=f"/{repos[1]}/manifests/1$", delay=60))
    first = ("HEAD", f"/v2/h{u}/{repos[0]}/manifests/1", 200)
    # once the first HEAD is answered (and read: a second), the second one hangs
    proc = stopped_mirror(lambda: hung.hits > 0 and first in dst.requests, str(first), *args,
                          sig=sig, after=1)
    assert proc.returncode == code, proc.stderr
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == code and sig.name in doc["error"], doc
    assert not [r for r in dst.requests if r[0] not in ("HEAD", "GET") and
                "/manifests/" in r[1]], \
        dst.requests  # nothing but the HEADs and reads: the stop came before any was put
    finished, stopped = doc["images"]
    assert (finished["error"], finished["error_code"]) == (None, None), finished
    assert finished["digest"] == imgs[0].digest, finished
    assert sig.name in stopped["error"] and stopped["error_code"] == code, stopped
    # stopped before the target said what it holds of the blobs: its counts are null
    assert doc["targets"][0]["tags"] is None, doc["targets"]


def test_a_rerun_stopped_while_resolving_places_the_image_it_reports_finished(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """A rerun (both images at the target already) stopped while it resolves: the first
    image resolved (its tag HEAD at the target answered 200, asked as it resolves since
    17da5b3), the second one's tag HEAD at the source (asked once the target's named the
    digest: the root read from there) held by the fault proxy. The report
    says the first finished (no error: the target serves it whole) and the second
    interrupted, as documented; but the target's `placement`, "only what that target
    holds", is [] (README: `[]` for a target the sync did not reach), so a monitor reading
    placement finds no image where the images say one finished. The finished image is in
    placement, where the target serves it."""
    repos, imgs = _two_images(src_registry, repo_name, rng, "done", "hung")
    src = faultproxy(src_registry.url)
    dst = faultproxy(dst_registry.url)
    report, u = tmp_path / "r.json", repo_name[-8:]
    refs = [f"{src.host}/{r}:1" for r in repos]
    mirror_ok("sync", *refs, "--to", f"{dst.host}/p{u}", "-q")
    hung = src.add(Fault("stall", method="HEAD", path=f"/{repos[1]}/manifests/1$", delay=60))
    first = ("HEAD", f"/v2/p{u}/{repos[0]}/manifests/1", 200)
    proc = stopped_mirror(lambda: hung.hits > 0 and first in dst.requests, str(first), "sync",
                          *refs, "--to", f"{dst.host}/p{u}", "--report", report, "-q",
                          after=1)
    assert proc.returncode == 130, proc.stderr
    doc = json.loads(report.read_text())
    finished, stopped = doc["images"]
    assert (finished["error"], finished["error_code"]) == (None, None), finished
    assert "SIGINT" in stopped["error"] and stopped["error_code"] == 130, stopped
    assert get_manifest(dst_registry.url, f"p{u}/{repos[0]}", "1")[0] == imgs[0].manifest.data
    assert doc["targets"][0]["placement"] == [
        {"source": refs[0], "repository": f"p{u}/{repos[0]}", "tags": ["1"],
         "digest": imgs[0].digest}], doc["targets"]


def test_a_rerun_stopped_in_its_uploads_reports_the_image_found_whole(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """A rerun that adds a second image, stopped while its layer uploads (the fault proxy
    holds it), the first image found whole at the target by its tag HEAD: the first was
    reported `interrupted` and its tag missing from the target's tags (an image found whole
    was said only once the manifests were decided). It has no error, its tag is reported
    (manifests_present counts its manifest), the second says interrupted."""
    repos, imgs = _two_images(src_registry, repo_name, rng, "done", "new")
    dst = faultproxy(dst_registry.url)
    report, u = tmp_path / "r.json", repo_name[-8:]
    refs = [f"{src_registry.host}/{r}:1" for r in repos]
    mirror_ok("sync", refs[0], "--to", f"{dst.host}/w{u}", "-q")
    hung = dst.add(Fault("stall", method="PUT", path=f"/{repos[1]}/blobs/uploads/", delay=60))
    proc = stopped_mirror(lambda: hung.hits > 0, "no upload was held", "sync", *refs, "--to",
                          f"{dst.host}/w{u}", "--report", report, "-q")
    assert proc.returncode == 130, proc.stderr
    doc = json.loads(report.read_text())
    finished, stopped = doc["images"]
    assert (finished["error"], finished["error_code"]) == (None, None), finished
    assert "SIGINT" in stopped["error"] and stopped["error_code"] == 130, stopped
    target = doc["targets"][0]
    assert target["tags"] == [f"{dst.host}/w{u}/{repos[0]}:1"], target
    assert (target["manifests_present"], target["manifests_pushed"]) == (1, 0), target


def test_a_stopped_sync_says_interrupted_of_an_image_whose_referrers_are_not_there(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """As above, the first image with an SBOM: the referrers are pushed after every image's
    tags, so at the stop the first image is tagged at the target but its SBOM is not. It was
    reported finished (no error) although the target lacks its referrer, as the same run
    stopped among the referrers reports it interrupted: it says interrupted."""
    repos, imgs = _two_images(src_registry, repo_name, rng, "signed", "hung")
    sbom = push_sbom(src_registry.url, repos[0], imgs[0].manifest)
    dst = faultproxy(dst_registry.url)
    hung = dst.add(Fault("stall", method="PUT", path=f"/{repos[1]}/manifests/1", delay=60))
    report, u = tmp_path / "r.json", repo_name[-8:]
    proc = stopped_mirror(lambda: hung.hits > 0, "the second tag was never put", "sync",
                          *(f"{src_registry.host}/{r}:1" for r in repos), "--to",
                          f"{dst.host}/s{u}", "--report", report, "-q")
    assert proc.returncode == 130, proc.stderr
    target = f"s{u}/{repos[0]}"
    assert get_manifest(dst_registry.url, target, "1")[0] == imgs[0].manifest.data
    with pytest.raises(Exception, match="404"):  # its SBOM not pushed yet
        get_manifest(dst_registry.url, target, sbom.digest)
    doc = json.loads(report.read_text())
    signed, stopped = doc["images"]
    for entry in (signed, stopped):
        assert entry["error"] and "SIGINT" in entry["error"], entry
        assert entry["error_code"] == 130, entry
    mirror_ok("sync", *(f"{src_registry.host}/{r}:1" for r in repos), "--to",
              f"{dst_registry.host}/s{u}", "-q")  # the SBOM is the sync's to push
    assert get_manifest(dst_registry.url, target, sbom.digest)[0] == sbom.data


def test_sync_refuses_a_bad_target_before_any_work(src_registry: Registry, tmp_path: Path
                                                   ) -> None:
    proc = run_mirror("sync", f"{src_registry.host}/x/y:1", "--to", "http://h:5000")
    assert proc.returncode == 2 and "--to" in error_line(proc), proc.stderr


def test_keep_going_syncs_the_images_that_resolve(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """An image that is not there: without --keep-going nothing is pushed (exit 5); with it
    the other is synced and the run ends with exit 13, the report naming the failed one."""
    img = ig.make_image(rng, ig.AMD64, "oci")
    push_image(src_registry.url, repo_name, img, ["1"])
    refs = [f"{src_registry.host}/{repo_name}:1", f"{src_registry.host}/{repo_name}:nope"]
    proc = run_mirror("sync", *refs, "--to", f"{dst_registry.host}/kg1")
    assert proc.returncode == 5 and "tag nope" in error_line(proc), proc.stderr
    assert repo_name not in state(dst_registry, "kg1")
    report = tmp_path / "r.json"
    proc = run_mirror("sync", *refs, "--to", f"{dst_registry.host}/kg2", "--keep-going",
                      "--report", report)
    assert proc.returncode == 13, proc.stderr
    assert state(dst_registry, "kg2")[repo_name]["tags"] == {"1": img.digest}
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == 13 and doc["error"].startswith("1 of 2 image(s) failed"), doc
    assert [e["error_code"] for e in doc["images"]] == [None, 5], doc


def _signed_pair(src_registry: Registry, repo_name: str, rng: random.Random,
                 shared: bool = False) -> tuple[list[ig.Image], str, ig.Blob]:
    """`repo_name`/a:1, signed (cosign), and `repo_name`/b:1 at the source (`shared`: b's
    one layer is a's first): the images, the signature's tag and manifest."""
    imgs = [ig.make_image(rng, ig.AMD64, "oci")]
    imgs.append(ig.make_image(rng, ig.AMD64, "oci", layers=imgs[0].layers[:1] if shared
                              else None))
    for name, img in zip("ab", imgs, strict=True):
        push_image(src_registry.url, f"{repo_name}/{name}", img, ["1"])
    key = ec.generate_private_key(ec.SECP256R1())
    sig_tag, sig = push_signature(src_registry.url, f"{repo_name}/a", key, imgs[0].digest)
    return imgs, sig_tag, sig


@pytest.mark.parametrize(("refusing", "what", "keep_going"), [
    ("first", "image", True), ("second", "image", True), ("first", "signature", True),
    ("first", "image", False)])
def test_keep_going_fails_an_image_a_target_refuses_there_alone_and_pushes_it_to_the_others(
        src_registry: Registry, dst_registry: Registry, registry_factory, faultproxy,
        repo_name: str, rng: random.Random, tmp_path: Path, refusing: str, what: str,
        keep_going: bool) -> None:
    """Two --to, one of them answering the PUT of a signed image's manifest (its tag, or its
    signature's) 500 through all its tries. `--keep-going` promises the other images when
    a target cannot take one: the sync stopped all the same (exit 3), the other target not
    reached, or reached, and the refusing one's other images untagged. With --keep-going
    the image fails at that target alone (exit 13, its entry and that target's `failed`
    naming the registry and the 500): the refusing target's other image is pushed, and the
    image, good for the others, is pushed whole to the other target; each target's
    placement (served there: digest and tags GET, sha256 of the bytes) and stdout name what
    it holds whole, an image tagged before its signature was refused not among them.
    Without --keep-going a push that fails stops the sync (exit 3), as README says."""
    (img, other), sig_tag, sig = _signed_pair(src_registry, repo_name, rng)
    u = repo_name[-8:]
    bad = faultproxy(registry_factory().url)
    path = f"/{repo_name}/a/manifests/" + ("1$" if what == "image" else r"sha256-.*\.sig$")
    refused = bad.add(Fault("status", method="PUT", path=path, status=500, times=None))
    hosts = [(bad, f"r{u}"), (dst_registry, f"k{u}")]
    if refusing == "second":
        hosts.reverse()
    refs = [f"{src_registry.host}/{repo_name}/{n}:1" for n in "ab"]
    proc, doc = _sync_to(refs, hosts, tmp_path, *(["--keep-going"] if keep_going else []))
    a, b = doc["images"]
    assert refused.hits == 2 and f"{bad.host}/" in a["error"] and "HTTP 500" in a["error"], a
    assert a["error_code"] == 3, a
    if not keep_going:
        assert proc.returncode == 3 and error_line(proc) == f"mirror: error: {a['error']}", \
            proc.stderr
        assert doc["targets"][1]["tags"] is None and doc["targets"][1]["placement"] == [], doc
        return
    went_on(proc, doc, refs, [(h.host, h.upstream if h is bad else h.url, p, h is bad)
                              for h, p in hosts])
    for host, prefix in hosts:
        reg = host.upstream if host is bad else host.url
        status, digest = head_manifest(reg, f"{prefix}/{repo_name}/a", sig_tag)
        assert (status, digest) == ((404, None) if host is bad else (200, sig.digest)), host
        tagged = head_manifest(reg, f"{prefix}/{repo_name}/a", "1")
        assert tagged == ((404, None) if host is bad and what == "image" else
                          (200, img.digest)), (host, tagged)


@pytest.mark.parametrize(("status", "method", "refusing"), [
    (500, "PUT", "first"), (400, "PUT", "first"), (500, "POST", "second"),
    (500, "mount", "first"), (403, "PUT", "first")],
    ids=["put-500", "put-400", "post-500-second", "mount-500", "put-403-stops"])
def test_keep_going_fails_an_image_whose_blob_a_target_refuses_there_alone(
        src_registry: Registry, dst_registry: Registry, registry_factory, faultproxy,
        repo_name: str, rng: random.Random, tmp_path: Path, status: int, method: str,
        refusing: str) -> None:
    """Two --to, one of them refusing the upload of a signed image a's blobs: the PUT of
    its layer answered 500 through all its tries, or 400 (a blob it will not take), or the
    POST that opens each of a's upload sessions 500, or that POST where a's first layer,
    which b at the target already holds, is mounted from b's repository (the mount, and
    the upload it falls back to). --keep-going stopped the sync (exit 3) at that blob, the
    other target not reached or the refusing one's b untagged. Now a fails alone at that
    target, its blobs' failure before any manifest: no tag of it, nor its signature, there;
    its entry and that target's `failed` naming the target's answer (exit 13); b pushed
    there, and both whole to the other target (each placement served: digest and tags GET,
    sha256 of the bytes; stdout what each holds). A 403 (the credentials: every image's)
    still stops the sync, exit 4, as README says."""
    (img, other), sig_tag, sig = _signed_pair(src_registry, repo_name, rng,
                                              shared=method == "mount")
    u = repo_name[-8:]
    bad = faultproxy(registry_factory().url)
    hosts = [(bad, f"r{u}"), (dst_registry, f"k{u}")]
    if refusing == "second":
        hosts.reverse()
    prefix = dict((h, p) for h, p in hosts)[bad]
    uploads = f"/{prefix}/{repo_name}/a/blobs/uploads/"
    if method == "mount":  # b there whole: a's first layer is mounted from b's repository
        push_image(bad.upstream, f"{prefix}/{repo_name}/b", other, ["1"])
    refused = bad.add(Fault("status", method="PUT" if method == "PUT" else "POST",
                            path=img.layers[0].digest if method == "PUT" else uploads,
                            status=status, code="BLOB_UPLOAD_INVALID" if status == 400 else
                            None, times=None))
    refs = [f"{src_registry.host}/{repo_name}/{n}:1" for n in "ab"]
    proc, doc = _sync_to(refs, hosts, tmp_path, "--keep-going")
    a = doc["images"][0]
    assert refused.hits and f"{bad.host}/" in a["error"] and f"HTTP {status}" in a["error"], a
    if status == 403:
        assert proc.returncode == 4 and a["error_code"] == 4, proc.stderr
        assert error_line(proc) == f"mirror: error: {a['error']}", proc.stderr
        return
    assert a["error_code"] == 3, a
    went_on(proc, doc, refs, [(h.host, h.upstream if h is bad else h.url, p, h is bad)
                              for h, p in hosts])
    for host, prefix in hosts:
        reg = host.upstream if host is bad else host.url
        for ref, digest in (("1", img.digest), (sig_tag, sig.digest)):
            held = head_manifest(reg, f"{prefix}/{repo_name}/a", ref)
            assert held == ((404, None) if host is bad else (200, digest)), (host, ref)


def _sync_to(refs: list[str], hosts: list, tmp_path: Path, *args: object
             ) -> tuple[subprocess.CompletedProcess[str], dict]:
    """`mirror sync` of `refs` to each (registry or proxy, prefix) of `hosts` in turn, one
    retry; its process and its report."""
    rep = tmp_path / "r.json"
    proc = run_mirror("sync", *refs, *(x for h, p in hosts for x in ("--to", f"{h.host}/{p}")),
                      "--report", rep, "--retries", "1", *args)
    return proc, json.loads(rep.read_text())


def went_on(proc: subprocess.CompletedProcess[str], doc: dict, refs: list[str],
            targets: list[tuple[str, str, str, bool]]) -> None:
    """A sync --keep-going of two images (`refs`) whose first failed alone at some of its
    `targets` (each: the host given to --to, the registry's URL, the prefix, whether it
    failed there) and the other went on: exit 13 and its line; each target's placement
    what it holds (served there: placed_served), `waiting` none, `failed` naming the first
    where it failed (its entry's line and exit code); stdout what each holds."""
    a, b = doc["images"]
    assert proc.returncode == 13, proc.stderr
    assert doc["error"] == "1 of 2 image(s) failed; the others are synced", doc["error"]
    assert b["error"] is None, b
    printed = []
    for (host, url, prefix, failed), target in zip(targets, doc["targets"], strict=True):
        here = refs[1:] if failed else refs
        assert [p["source"] for p in target["placement"]] == here, target
        placed_served(url, target)
        assert target["waiting"] == [], target
        assert [(f["source"], f["error"], f["error_code"]) for f in target["failed"]] == \
            ([(refs[0], a["error"], a["error_code"])] if failed else []), target
        printed += [f"{host}/{prefix}/{r.split('/', 1)[1]}" for r in here]
    assert proc.stdout.splitlines() == printed, proc.stdout


@pytest.mark.parametrize(("kind", "cache", "skip", "keep_going"), [
    ("404", False, 0, True), ("damaged", False, 0, True), ("500", False, 0, True),
    ("500", False, 1, True), ("damaged", True, 0, True), ("500", False, 0, False)],
    ids=["404", "damaged", "500", "500-at-second", "damaged-cache", "500-stops"])
def test_keep_going_fails_an_image_whose_source_blob_fails_alone_at_every_target(
        src_registry: Registry, dst_registry: Registry, registry_factory, faultproxy,
        repo_name: str, rng: random.Random, tmp_path: Path, kind: str, cache: bool,
        skip: int, keep_going: bool) -> None:
    """Two --to, a signed image a and b, the source failing a's layer as the push reads it:
    a 404, bytes that do not match (every read), a 500 through all its tries (from the
    first read, or from the second target's: the first got it). --keep-going stopped the
    whole sync (exit 3, 5 or 7): every night's run lost to one broken upstream image. With
    it, a fails alone at every target whose push the source failed (its blobs go before any
    manifest: no tag of it, nor its signature, there), its entry and those targets' `failed`
    naming it with the blob's line and exit code, b pushed to both (exit 13); each target's
    placement is served (digest and tags GET, sha256 of the bytes) and stdout prints what
    each holds. The source is asked for the blob by one push: the next target's fails a at
    once, as a pull fails every image of a blob once. Without --keep-going the sync stops
    there, as README says, nothing tagged at that target."""
    (img, other), sig_tag, _ = _signed_pair(src_registry, repo_name, rng)
    src = faultproxy(src_registry.url)
    layer = img.layers[0].digest
    broken = src.add({
        "404": Fault("status", method="GET", path=layer, status=404, code="BLOB_UNKNOWN",
                     times=None, skip=skip),
        "500": Fault("status", method="GET", path=layer, status=500, times=None, skip=skip),
        "damaged": Fault("flip_byte", method="GET", path=layer, offset=100, times=None,
                         skip=skip)}[kind])
    code = {"404": 5, "500": 3, "damaged": 7}[kind]
    u = repo_name[-8:]
    second = registry_factory()
    hosts = [(dst_registry, f"s{u}"), (second, f"t{u}")]
    refs = [f"{src.host}/{repo_name}/{n}:1" for n in "ab"]
    proc, doc = _sync_to(refs, hosts, tmp_path, *(["--keep-going"] if keep_going else []),
                         *(["--cache", tmp_path / "c"] if cache else []))
    a, b = doc["images"]
    assert layer in a["error"] and a["error_code"] == code, (a, proc.stderr)
    if not keep_going:
        assert proc.returncode == code and error_line(proc) == f"mirror: error: {a['error']}", \
            proc.stderr
        for host, prefix in hosts:
            for name in "ab":
                assert head_manifest(host.url, f"{prefix}/{repo_name}/{name}", "1") == \
                    (404, None)
        return
    whole = [bool(skip) and host is dst_registry for host, _ in hosts]  # read before
    went_on(proc, doc, refs, [(h.host, h.url, p, not w)
                              for (h, p), w in zip(hosts, whole, strict=True)])
    for (host, prefix), held_whole in zip(hosts, whole, strict=True):
        for ref, digest in (("1", img.digest), (sig_tag, None)):
            status, held = head_manifest(host.url, f"{prefix}/{repo_name}/a", ref)
            assert (status, held if digest else None) == \
                ((200, digest) if held_whole else (404, None)), (host.url, ref)
    # one push's reads: a 404 once (no retry), bytes that do not match twice (read once
    # more), a 500 twice a GET (--retries 1) and its upload once more; from the cache's
    # fetch, which reads the bytes once more itself, as many
    assert broken.hits == {"404": 1, "damaged": 2, "500": 4}[kind], broken.hits


@pytest.mark.parametrize("cache", [False, True], ids=["streamed", "cache"])
async def test_a_foreign_layer_comes_from_its_urls_as_in_a_pull(
        registry_factory, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path, cache: bool) -> None:
    """`--foreign-layers rewrite`: the layer the source registry does not hold comes from its
    descriptor's URLs in turn (no credentials; the first one answers 404), streamed into the
    target or through the cache, as a pull fetches it (the rewritten manifest lists no URL:
    the source's descriptor does); the target serves what pull then load leaves."""
    from tests.test_foreign import ALLOW_LOOPBACK, USER, authfile, cdn_serving, mirror, seed_foreign

    u = repo_name[-8:]
    src = registry_factory(htpasswd=USER, urls_allow=ALLOW_LOOPBACK)
    async with cdn_serving({}) as cdn:
        fi = seed_foreign(cdn, src, repo_name, rng, "missing", "good")
        cfg = images_yaml(tmp_path, [f"{src.host}/{repo_name}:v1"],
                          "defaults:\n  foreign_layers: rewrite\n")
        auth = authfile(tmp_path, src)
        proc = await mirror("sync", "-f", cfg, "--to", f"{dst_registry.host}/fl{u}",
                            "--authfile", auth, "-q",
                            *(["--cache", tmp_path / "sc"] if cache else []))
        assert proc.returncode == 0, proc.stderr
        assert all(a is None for _, _, a in cdn.requests)  # no registry credentials there
        proc = await mirror("pull", "-f", cfg, "-o", tmp_path / "b.tar", "--cache",
                            tmp_path / "c", "--authfile", auth, "--lock-file",
                            tmp_path / "pl.lock", "-q")
        assert proc.returncode == 0, proc.stderr
    mirror_ok("load", tmp_path / "b.tar", "--to", f"{dst_registry.host}/pl{u}", "-q")
    assert get_blob(dst_registry.url, f"fl{u}/{repo_name}", fi.foreign.digest) == fi.foreign.data
    assert state(dst_registry, f"fl{u}") == state(dst_registry, f"pl{u}")


def _sync_twice(clean: str, damaged: str, digest: str, tmp_path: Path, *args: object
                ) -> tuple[subprocess.CompletedProcess[str], dict, dict]:
    """`mirror sync ARGS --to CLEAN` and, through another cache, `--to DAMAGED` with manifest
    `digest` damaged in the cache's store as the run first reads it back
    (tests.support.damage); the second run, and each run's report's requests by host."""
    mirror_ok("sync", *args, "--to", clean, "--cache", tmp_path / "c0", "--report",
              tmp_path / "clean.json", "-q")
    done = damaged_on_read(digest, "sync", *args, "--to", damaged, "--cache",
                           tmp_path / "cache", "--report", tmp_path / "r.json", "-q")
    before = json.loads((tmp_path / "clean.json").read_text())["requests"]
    after = json.loads((tmp_path / "r.json").read_text())["requests"] \
        if done.returncode == 0 else {}
    return done, before, after


@pytest.mark.parametrize("served", [True, False], ids=["served", "gone"])
def test_an_index_a_merge_read_from_the_target_damaged_in_the_cache_is_fetched_again(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, served: bool) -> None:
    """sync --merge reads the index the target's tag holds (a GET, kept in the cache's store
    and read back as the merge is made): damaged there meanwhile, the run failed (exit 7,
    `... run again`), the source never having had it. It is fetched again by digest from the
    target (checked, stored again), one more manifest GET there, and the target holds what
    an undamaged merge leaves: the same tags, manifests and blobs. A target that no longer
    serves it (404) fails the image (here the run's only one: exit 7) with one line naming
    the manifest and the answer, the tag left as it was (asked for by digest twice: as the
    image resolved, for what it lists of the source's index, then fetching it again)."""
    u = repo_name[-8:]
    proxy = faultproxy(dst_registry.url)
    old = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)], "oci")
    new = ig.make_index([ig.make_image(rng, ig.AMD64, "oci")], "oci")
    push_image(src_registry.url, repo_name, new, ["1"])
    for prefix in (f"m{u}", f"n{u}"):
        push_image(dst_registry.url, f"{prefix}/{repo_name}", old, ["1"])
    if not served:
        gone = manifest_gone(proxy, old.digest)
    done, before, after = _sync_twice(
        f"{dst_registry.host}/m{u}", f"{proxy.host}/n{u}", old.digest, tmp_path,
        f"{src_registry.host}/{repo_name}:1", "--merge")
    body, _, _ = get_manifest(dst_registry.url, f"n{u}/{repo_name}", "1")
    if not served:
        lost_for_good(done, old.digest, gone, hits=2)
        assert body == old.manifest.data  # the tag left as it was
        return
    assert done.returncode == 0, done.stderr
    assert state(dst_registry, f"n{u}") == state(dst_registry, f"m{u}")
    assert ig.sha256_digest(body) not in (new.digest, old.digest), body  # merged
    target = dst_registry.host
    assert after[proxy.host]["manifest GET"] == before[target]["manifest GET"] + 1, \
        (after, before)
    assert after[src_registry.host] == before[src_registry.host]


@pytest.mark.parametrize("kind,keep_going", [("404", True), ("damaged", False),
                                               ("lost", True), ("lost", False)])
def test_a_merge_whose_tag_the_target_does_not_serve_fails_that_image_alone(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, kind: str, keep_going: bool) -> None:
    """sync --merge of two images, the target's tag of one holding an amd64+arm64 index the
    target does not serve as its HEAD says it holds it: a GET of the tag answers 404, or
    damaged bytes; or (`lost`, through a cache) it was read, lost in the cache's store, and
    its GET by digest again answers 404. That image fails alone, its tag left as it was,
    with one line naming the target registry, repository and digest, in its report entry;
    the other is synced and placed. With --keep-going exit 13 ('1 of 2 image(s) failed'),
    else the image's own exit code (5: the 404 of the tag; 7: bytes that do not match, or
    lost and not served again), as README's table says of a failed image. The sync stopped
    (exit 7 or 9) or pushed over the tag (404) before, leaving the other image unsynced."""
    u = f"{kind}{int(keep_going)}{repo_name[-8:]}"
    proxy = faultproxy(dst_registry.url)
    old, other, refs = merge_over_two(src_registry.url, repo_name, rng)
    repo = f"s{u}/{repo_name}/a"
    push_image(dst_registry.url, repo, old, ["1"])
    args: list[object] = [*refs, "--merge", "--to", f"{proxy.host}/s{u}", "--report",
                          tmp_path / "r.json", *(["--keep-going"] if keep_going else [])]
    if kind == "lost":
        gone = manifest_gone(proxy, old.digest)
        done = damaged_on_read(old.digest, "sync", *args, "--cache", tmp_path / "cache")
        assert gone.hits == 2  # as the image resolved (what it lists), and fetched again
    else:
        tag_unserved(proxy, repo, "1", kind)
        done = run_mirror("sync", *args)
    code = 5 if kind == "404" else 7
    assert done.returncode == (13 if keep_going else code), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    a, b = doc["images"]
    assert f"{proxy.host}/{repo}:1" in a["error"] and old.digest in a["error"], a
    assert a["error_code"] == code and b["error"] is None, doc["images"]
    if keep_going:
        assert doc["error"] == "1 of 2 image(s) failed; the others are synced", doc["error"]
    else:
        assert error_line(done) == f"mirror: error: {a['error']}", done.stderr
    assert get_manifest(dst_registry.url, repo, "1")[0] == old.manifest.data  # as it was
    b_repo = f"s{u}/{repo_name}/b"
    assert get_manifest(dst_registry.url, b_repo, "1")[2]["Docker-Content-Digest"] == \
        other.digest
    assert [p["repository"] for p in doc["targets"][0]["placement"]] == [b_repo], doc
    assert done.stdout.splitlines() == [f"{proxy.host}/{b_repo}:1"], done.stdout


def test_a_fallback_index_read_from_the_target_damaged_in_the_cache_is_fetched_again(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """A sync of a signed image to a registry without the referrers API reads the subject's
    fallback index (`sha256-<hex>`) the target holds, to add the image's SBOM to what it
    lists: damaged in the cache's store as it is read back, it is fetched again from the
    target, and the target holds what an undamaged sync leaves (the index listing both)."""
    u = repo_name[-8:]
    img = ig.make_image(rng, ig.AMD64, "oci")
    push_image(src_registry.url, repo_name, img, ["1"])
    push_sbom(src_registry.url, repo_name, img.manifest)
    theirs, blobs = make_sbom(img.manifest)  # another SBOM, the target's own
    doc = json.loads(theirs.data)
    doc["annotations"] = {"org.opencontainers.image.created": "2026-02-02T00:00:00Z"}
    theirs = ig.Blob(ig.dump_json(doc), theirs.media_type)
    index = fallback_index([theirs])
    for prefix in (f"f{u}", f"h{u}"):
        repo = f"{prefix}/{repo_name}"
        push_image(dst_registry.url, repo, img, ["1"])
        for b in blobs:
            push_blob(dst_registry.url, repo, b)
        push_raw_manifest(dst_registry.url, repo, theirs.digest, theirs.data, theirs.media_type)
        push_raw_manifest(dst_registry.url, repo, fallback_tag(img.digest), index,
                          ig.OCI_INDEX)
    done, before, after = _sync_twice(
        f"{dst_registry.host}/f{u}", f"{dst_registry.host}/h{u}", ig.sha256_digest(index),
        tmp_path, f"{src_registry.host}/{repo_name}:1")
    assert done.returncode == 0, done.stderr
    assert state(dst_registry, f"h{u}") == state(dst_registry, f"f{u}")
    body, _, _ = get_manifest(dst_registry.url, f"h{u}/{repo_name}", fallback_tag(img.digest))
    assert len(json.loads(body)["manifests"]) == 2, body
    target = dst_registry.host
    assert after[target]["manifest GET"] == before[target]["manifest GET"] + 1, (after, before)


def test_a_fallback_index_the_target_does_not_serve_fails_that_image_alone(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """A sync --keep-going of a signed image (an SBOM, pushed by digest) and another, to a
    registry without the referrers API whose `sha256-<hex>` fallback index for the first
    (listing an SBOM of its own) it serves damaged: the index is never clobbered, so it is
    left as it was and that image fails alone (exit 13, its entry naming the fallback tag
    and the digest), the other synced. The sync stopped (exit 7 or 9) before."""
    u = repo_name[-8:]
    proxy = faultproxy(dst_registry.url)
    img = ig.make_image(rng, ig.AMD64, "oci")
    other = ig.make_image(rng, ig.AMD64, "oci")
    push_image(src_registry.url, f"{repo_name}/a", img, ["1"])
    push_sbom(src_registry.url, f"{repo_name}/a", img.manifest)
    push_image(src_registry.url, f"{repo_name}/b", other, ["1"])
    repo = f"fb{u}/{repo_name}/a"
    theirs = push_sbom(dst_registry.url, repo, img.manifest, fallback=False)
    index = fallback_index([theirs])
    tag = fallback_tag(img.digest)
    push_raw_manifest(dst_registry.url, repo, tag, index, ig.OCI_INDEX)
    tag_unserved(proxy, repo, tag, "damaged")
    report = tmp_path / "r.json"
    done = run_mirror("sync", f"{src_registry.host}/{repo_name}/a:1",
                      f"{src_registry.host}/{repo_name}/b:1", "--to", f"{proxy.host}/fb{u}",
                      "--keep-going", "--report", report)
    assert done.returncode == 13, done.stderr
    a, b = json.loads(report.read_text())["images"]
    assert f"{proxy.host}/{repo}:{tag}" in a["error"] and ig.sha256_digest(index) in a["error"]
    assert a["error_code"] == 7 and b["error"] is None, (a, b)
    assert get_manifest(dst_registry.url, repo, tag)[0] == index  # as it was
    assert get_manifest(dst_registry.url, f"fb{u}/{repo_name}/b", "1")[2][
        "Docker-Content-Digest"] == other.digest


def held_as_reported(reg: Registry, target: dict) -> None:
    """Every image a sync report's target entry places is served there (placed_served); and
    every tag the entry lists is there."""
    host, _, prefix = target["target"].partition("/")
    placed_served(reg.url, target)
    for ref in target["tags"]:
        assert ref.startswith(f"{host}/{prefix}/"), ref
        repo, _, tag = ref.split("/", 1)[1].rpartition(":")
        get_manifest(reg.url, repo, tag)


def test_a_budgeted_sync_gets_an_image_through_where_a_pull_does(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """A source's max_requests_per_run enough to resolve six images, not to read their
    layers too: a pull carries some of them each run, in the config's order (each image
    admitted while the budget left covers a GET per blob it needs). A sync without --cache
    resolved every image first, spent the budget on it, and left all six waiting every run
    (opening upload sessions at the target for blobs it could not read); it admits them as
    a pull does, so each run pushes those that fit, and the next, finding them at the
    target, goes on from there: the config of an image the target holds is read from the
    target (it stalled at 4 waiting, resolving again from the source what the target held;
    a warning said so, and what a run needs). The images that wait are never asked about at
    the target but for the first one's resolution (one manifest HEAD), and the report places
    only what the target serves."""
    imgs = [ig.make_image(rng, ig.AMD64, fmt="oci") for _ in range(6)]
    tags = [str(n) for n in range(1, 7)]
    for tag, img in zip(tags, imgs, strict=True):
        push_image(src_registry.url, repo_name, img, tags=[tag])
    refs = [f"{src_registry.host}/{repo_name}:{t}" for t in tags]
    cfg = tmp_path / "images.yaml"
    images = "".join(f"  - {r}\n" for r in refs)
    cfg.write_text(f"images:\n{images}")
    mirror_ok("sync", "-f", cfg, "--to", f"{dst_registry.host}/{repo_name}-free",
              "--report", tmp_path / "free.json")
    spent = json.loads((tmp_path / "free.json").read_text())["requests"][src_registry.host]
    budget = sum(spent.values()) - spent.get("blob GET", 0)  # resolving alone, no blob left
    cfg.write_text(f"version: 1\nregistries:\n  {src_registry.host}:\n"
                   f"    max_requests_per_run: {budget}\nimages:\n{images}")
    pulled = run_mirror("pull", "-f", cfg, "--cache", tmp_path / "cache", "-o",
                        tmp_path / "b.tar", "--lock-file", tmp_path / "p.lock")
    assert pulled.returncode == 14 and "wrote" in pulled.stderr, pulled.stderr
    dst = faultproxy(dst_registry.url)
    target = f"{dst.host}/{repo_name}-budget"
    waiting: list[list[str]] = []
    for _ in range(3):
        dst.requests.clear()
        synced = run_mirror("sync", "-f", cfg, "--to", target, "--report", tmp_path / "s.json")
        assert synced.returncode == 14, synced.stderr
        report = json.loads((tmp_path / "s.json").read_text())
        waiting.append(report["waiting"])
        n = len(refs) - len(report["waiting"])
        assert report["waiting"] == refs[n:], report["waiting"]  # in the config's order
        placed = report["targets"][0]
        assert [p["source"] for p in placed["placement"]] == refs[:n], placed["placement"]
        held_as_reported(dst_registry, placed)
        asked = [(m, p) for m, p, _ in dst.requests]
        for img in imgs[n:]:  # the waiting ones: no blob asked about, no upload opened
            assert not [x for x in asked for d in img.all_blobs() if d.digest in x[1]], asked
        # of the waiting ones, at most the first is asked about, once, if it was resolved
        # before the budget refused it: whether the target holds it
        assert [x for x in asked if x[1].rpartition("/")[2] in tags[n:]] in (
            [], [("HEAD", f"/v2/{repo_name}-budget/{repo_name}/manifests/{tags[n]}")]), asked
        stuck = "or the same images wait every run"
        assert (stuck in synced.stderr) == (waiting[-2:] == [refs[n:]] * 2), synced.stderr
    # the third run reads the configs of the two images the first two pushed from the target
    # (no cache keeps them), not from the source: the third image's blobs fit
    assert [len(w) for w in waiting] == [5, 4, 3], waiting


def test_a_sync_that_fails_resolving_reports_one_target_entry_per_to(
        src_registry: Registry, dst_registry: Registry, registry_factory, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """README Reports: sync's `targets` is one entry per `--to`, in order (`placement` `[]`
    for a target the sync did not reach). An unreachable target gets its entry (counts null);
    an image the source does not have (exit 5, before any push) left `targets: []`, so a
    monitor reading `targets[0]` fails on the very report that says what went wrong."""
    u = repo_name[-8:]
    push_image(src_registry.url, repo_name, ig.make_image(rng, ig.AMD64, "oci"), ["1"])
    cfg = images_yaml(tmp_path, [f"{src_registry.host}/{repo_name}:1",
                                 f"{src_registry.host}/{repo_name}:no-such-tag"])
    other = registry_factory()
    tos = [f"{dst_registry.host}/t{u}", f"{other.host}/t{u}"]
    report = tmp_path / "r.json"
    synced = run_mirror("sync", "-f", cfg, "--to", tos[0], "--to", tos[1], "-q",
                        "--report", report)
    assert synced.returncode == 5, synced.stderr
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == 5, doc
    assert [t["target"] for t in doc["targets"]] == tos, doc["targets"]
    assert all(t["placement"] == [] for t in doc["targets"]), doc["targets"]


def indexes_synced(reg: Registry, faultproxy, repo: str, rng: random.Random, tmp_path: Path,
                   count: int, to: str) -> tuple[list[ig.Index], list[str], Any, int, int]:
    """`count` two-platform indexes at `reg` (`repo`, tags 1 to `count`), read through a
    fault proxy, synced without a budget to `to` (empty: PROXY/free): the images, their
    references, the proxy, and what that sync asked of the source, a run's own requests (the
    ping, the referrers API's question, tag lists) and an image's (3 manifests, 6 blobs;
    pushed to the source's own registry, the push's requests too)."""
    imgs = [ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64_V8)],
                          "oci") for _ in range(count)]
    tags = [str(n) for n in range(1, count + 1)]
    for tag, img in zip(tags, imgs, strict=True):
        push_image(reg.url, repo, img, [tag])
    src = faultproxy(reg.url)
    refs = [f"{src.host}/{repo}:{t}" for t in tags]
    mirror_ok("sync", "-f", images_yaml(tmp_path, refs), "--to", to or f"{src.host}/free",
              "-q", "--report", tmp_path / "free.json")
    spent = json.loads((tmp_path / "free.json").read_text())["requests"][src.host]
    once = sum(spent.get(k, 0) for k in ("ping", "referrers", "tags list"))
    return imgs, refs, src, once, (sum(spent.values()) - once) // count


def test_a_budgeted_sync_without_a_cache_goes_on_as_a_pull_does(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """Nine two-platform indexes at a source budget that fits four new ones a run. A sync
    without --cache resolved again, from the source, every image its target held (the index
    and both its platforms' manifests by digest, every run), so each run got fewer new images
    through than the last (5, 3, then 2 waiting). The manifests of an image the target serves
    (its tag there names the index the source's tag names) are read from the target, by
    digest: only what is new spends the source's budget, and three syncs in a row get through
    the nine, as three pulls through a cache do. The source is never asked for a held image's
    manifests by digest, nor for its blobs, and every digest the report names for an image
    is served by the target."""
    imgs, refs, src, once, each = indexes_synced(src_registry, faultproxy, repo_name, rng,
                                                 tmp_path, 9, f"{dst_registry.host}/{repo_name}-free")
    cfg = images_yaml(tmp_path, refs, f"registries:\n  {src.host}:\n"
                                      f"    max_requests_per_run: {once + 4 * each}\n")
    pulled: list[list[str]] = []
    for _ in range(3):
        run = run_mirror("pull", "-f", cfg, "--cache", tmp_path / "cache", "-o",
                         tmp_path / "b.tar", "--report", tmp_path / "p.json",
                         "--lock-file", tmp_path / "p.lock")
        assert run.returncode in (0, 14), run.stderr
        pulled.append(json.loads((tmp_path / "p.json").read_text())["waiting"])
    prefix = f"{repo_name}-t"
    synced: list[list[str]] = []
    for _ in range(3):
        held = [img for img, ref in zip(imgs, refs, strict=True)
                if ref not in (synced[-1] if synced else refs)]
        src.requests.clear()
        run = run_mirror("sync", "-f", cfg, "--to", f"{dst_registry.host}/{prefix}",
                         "--report", tmp_path / "s.json")
        assert run.returncode in (0, 14), run.stderr
        report = json.loads((tmp_path / "s.json").read_text())
        synced.append(report["waiting"])
        asked = [p for p in src.paths("GET") if "/manifests/" in p or "/blobs/" in p]
        for img in held:  # nothing of it by digest: its children and blobs from the target
            digests = [img.digest, *(m.digest for m in img.images),
                       *(b.digest for b in img.all_blobs())]
            assert not [p for p in asked for d in digests if d in p], asked
        served(dst_registry, {"images": [e for e in report["images"] if e["error"] is None]},
               prefix)
    counts = [[len(w) for w in waiting] for waiting in (synced, pulled)]
    assert counts[0][0] and counts[0][-1] == 0 and counts[0] == sorted(counts[0])[::-1] and \
        len(set(counts[0])) == 3, counts
    assert synced[-1] == pulled[-1] == [], counts


def test_a_manifest_the_target_cannot_serve_is_read_from_the_source(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """A budgeted sync without --cache reads the manifests of an image its target serves
    whole from the target, by digest; one the target answers 404 for, or with bytes that do
    not match the digest, is read from the source instead: the run is what it would have
    been (exit 0, no warning), and only -v says so. The push's step 0 asks the target
    about those two alone (a HEAD each: the others it read there this run), which says it
    serves them: nothing is pushed."""
    img = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64_V8)], "oci")
    push_image(src_registry.url, repo_name, img, ["1"])
    src, dst = faultproxy(src_registry.url), faultproxy(dst_registry.url)
    cfg = images_yaml(tmp_path, [f"{src.host}/{repo_name}:1"],
                      f"registries:\n  {src.host}:\n    max_requests_per_run: 100\n")
    to = f"{dst.host}/{repo_name}-t"
    mirror_ok("sync", "-f", cfg, "--to", to, "-q")
    gone, damaged = (m.digest for m in img.images)
    dst.add(Fault("status", method="GET", path=f"/manifests/{gone}", status=404, times=None))
    dst.add(Fault("flip_byte", method="GET", path=f"/manifests/{damaged}", offset=10,
                  times=None))
    quiet = mirror_ok("sync", "-f", cfg, "--to", to)
    assert gone not in quiet.stderr and damaged not in quiet.stderr, quiet.stderr
    assert "warning" not in quiet.stderr, quiet.stderr
    src.requests.clear()
    dst.requests.clear()
    synced = mirror_ok("sync", "-f", cfg, "--to", to, "-v", "--report", tmp_path / "r.json")
    fell = [line for line in synced.stderr.splitlines() if "read from the source" in line]
    assert [gone in fell[0] or gone in fell[1], damaged in fell[0] or damaged in fell[1]] == \
        [True, True] and len(fell) == 2, synced.stderr
    # the tag a HEAD (the index read from the target by digest), the two by digest
    assert sorted(p.rpartition("/")[2] for p in src.paths("GET") if "/manifests/" in p) == \
        sorted([gone, damaged]), src.requests
    assert sorted(_by_digest(dst, "HEAD")) == sorted([gone, damaged]), dst.requests
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["targets"][0]["manifests_pushed"] == 0, report["targets"]
    assert report["images"][0]["manifests"] and report["images"][0]["digest"] == img.digest
    served(dst_registry, report, f"{repo_name}-t")
    # a dry run asks the target its tag once, as it resolves (it asked again to plan the
    # push), and nothing below it: every manifest read there as the image resolved
    dst.clear_faults()
    dst.requests.clear()
    mirror_ok("sync", "-f", cfg, "--to", to, "--dry-run", "-q")
    assert [(m, p.rpartition("/")[2]) for m, p, _ in dst.requests if m == "HEAD"] == \
        [("HEAD", "1")], dst.requests


def _by_digest(proxy, method: str = "GET") -> list[str]:
    """What `proxy` was asked for by digest with `method` (manifests and blobs), in order."""
    return [p.rpartition("/")[2] for p in proxy.paths(method)
            if "/manifests/sha256:" in p or "/blobs/sha256:" in p]


def _synced_filtered(src_registry: Registry, dst_registry: Registry, faultproxy, repo: str,
                     index: ig.Index, *flags: str) -> tuple[Any, Any, list[str]]:
    """`index` at the source (`repo:1`), synced with `flags` (a platform filter) through a
    fault proxy at each end: the proxies (their counts cleared) and the sync's arguments."""
    push_image(src_registry.url, repo, index, ["1"])
    src, dst = faultproxy(src_registry.url), faultproxy(dst_registry.url)
    args = ["sync", f"{src.host}/{repo}:1", "--to", f"{dst.host}/{repo}-t", *flags]
    mirror_ok(*args, "-q")
    src.reset_counters()
    dst.reset_counters()
    return src, dst, args


@pytest.mark.parametrize("cache", [False, True], ids=["streamed", "cache"])
def test_a_filtered_rerun_reads_what_the_target_lists_from_the_target(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, cache: bool) -> None:
    """`--platform linux/amd64` of multi-arch indexes pushes filtered indexes (new digests),
    so the target's tag never named the source's root, and every rerun without --cache got
    the index and its amd64 manifest from the source again (Docker Hub counts each as a
    pull), and asked the target its tag twice (as it resolved, and at the push's step 0 for
    the filtered root). The filtered index is a function of the source's index and the
    filter, made before anything below it is read: the target's tag names it, so the
    target holds it, and the manifests it lists are read from there by digest, not the
    index (one GET for nothing): of the source one GET per tag, nothing by digest; of the
    target one HEAD per tag and the amd64 manifests. With --cache (the source's tag asked
    with a HEAD, its manifests in the cache's store) the target is asked one HEAD per tag
    and one per amd64 manifest (the push's step 0: whether it still serves what the index
    lists), its index not read on the first rerun either."""
    plats = (ig.AMD64, ig.ARM64_V8, ig.ARM_V7)
    imgs = [ig.make_index([ig.make_image(rng, p, fmt) for p in plats], fmt)
            for fmt in ("oci", "docker")]
    tags = ["1", "2"]
    for tag, img in zip(tags, imgs, strict=True):
        push_image(src_registry.url, repo_name, img, [tag])
    src, dst = faultproxy(src_registry.url), faultproxy(dst_registry.url)
    cfg = images_yaml(tmp_path, [f"{src.host}/{repo_name}:{t}" for t in tags])
    args = ["sync", "-f", cfg, "--to", f"{dst.host}/{repo_name}-t", "--platform",
            "linux/amd64", *(["--cache", tmp_path / "cache"] if cache else [])]
    mirror_ok(*args, "-q", "--report", tmp_path / "first.json")
    first = json.loads((tmp_path / "first.json").read_text())
    roots = [e["digest"] for e in first["images"]]
    assert not set(roots) & {i.digest for i in imgs}, roots  # filtered: new digests
    held = state(dst_registry, f"{repo_name}-t")
    for _ in range(2):  # the second: as the first
        src.reset_counters()
        dst.reset_counters()
        mirror_ok(*args, "-q", "--report", tmp_path / "r.json")
        assert sorted((m, p.rpartition("/")[2]) for m, p, _ in src.requests
                      if "/manifests/" in p or "/blobs/" in p) == \
            [("HEAD" if cache else "GET", t) for t in tags], src.requests
        assert sorted(_by_digest(dst)) == ([] if cache else
                                           sorted(i.images[0].digest for i in imgs)), \
            dst.requests
        below = sorted(i.images[0].digest for i in imgs) if cache else []
        heads = [p.rpartition("/")[2] for p in dst.paths("HEAD")]
        assert sorted(heads) == tags + below, dst.requests
        report = json.loads((tmp_path / "r.json").read_text())
        assert [e["digest"] for e in report["images"]] == roots, report["images"]
        assert report["targets"][0]["manifests_pushed"] == 0, report["targets"]
        assert report["requests"][src.host].get(
            "manifest HEAD" if cache else "manifest GET") == len(tags), report
        assert state(dst_registry, f"{repo_name}-t") == held
    dst.reset_counters()
    mirror_ok(*args, "--dry-run", "-q")  # step 0's answer kept: the filtered root's too
    assert sorted(p.rpartition("/")[2] for p in dst.paths("HEAD")) == tags + below, \
        dst.requests


@pytest.mark.parametrize("cache", [False, True], ids=["streamed", "cache"])
def test_a_rerun_that_leaves_the_attestations_behind_reads_no_index_from_the_target(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, cache: bool) -> None:
    """An OCI index with a BuildKit attestation, synced with --no-referrers and every
    platform: the index is pushed without the attestation (filtered, a new digest), and
    every rerun read it back from the target by digest (one GET per image and run, for
    nothing; through --cache too): the index a sync carries was foreseen for a platform
    filter alone. It is as much a function of the source's index (what is left behind),
    made before anything below it is read: the target's tag names it, so the target holds
    it whole, and the manifests it lists are read from there (without --cache), not the
    index (the sync matrix found it: tests/test_sync_matrix.py)."""
    img = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64_V8)],
                        "oci", attestation=True, rng=rng)
    push_image(src_registry.url, repo_name, img, ["1"])
    dst = faultproxy(dst_registry.url)
    args = ["sync", f"{src_registry.host}/{repo_name}:1", "--to", f"{dst.host}/{repo_name}-t",
            "--no-referrers", *(["--cache", tmp_path / "cache"] if cache else [])]
    mirror_ok(*args, "-q", "--report", tmp_path / "first.json")
    first = json.loads((tmp_path / "first.json").read_text())["images"][0]
    assert first["mode"] == "filter" and first["digest"] != img.digest, first
    for _ in range(2):
        dst.reset_counters()
        mirror_ok(*args, "-q", "--report", tmp_path / "r.json")
        assert sorted(_by_digest(dst)) == ([] if cache else
                                           sorted(i.digest for i in img.images)), \
            dst.requests
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["images"][0]["digest"] == first["digest"], report["images"]
        assert report["targets"][0]["manifests_pushed"] == 0, report["targets"]


def test_two_tags_of_one_image_read_each_manifest_once_a_run(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """Two tags naming one index (`latest` and a version, or the aliases a semver rule
    chooses), synced without --cache: each image read every manifest below its root, so
    each was asked of the source once per tag (a Docker Hub pull each), and on a rerun of
    the target once per tag (the sync matrix's two tags of one list: 17 manifest GETs at
    the source for 14 manifests, 13 at the target for 10). A manifest by digest is read
    once a run however many images name it, at once or one after the other."""
    img = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64_V8,
                                                                ig.ARM_V7)], "oci")
    push_image(src_registry.url, repo_name, img, ["1", "1.2", "latest"])
    src, dst = faultproxy(src_registry.url), faultproxy(dst_registry.url)
    args = ["sync", *(f"{src.host}/{repo_name}:{t}" for t in ("1", "1.2", "latest")),
            "--to", f"{dst.host}/{repo_name}-t", "-q"]
    mirror_ok(*args)
    children = sorted(i.digest for i in img.images)
    assert sorted(d for d in _by_digest(src) if d in children) == children, src.requests
    src.reset_counters()
    dst.reset_counters()
    mirror_ok(*args)  # the target holds it whole: what is below the root read from there
    assert not [d for d in _by_digest(src) if d in children], src.requests
    assert sorted(d for d in _by_digest(dst) if d in children) == children, dst.requests


def test_two_tags_of_one_image_ask_its_referrers_once_a_run(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """o26 D4: two tags of one signed image (`latest` and a version, the aliases a semver
    rule chooses), an SBOM of its index listed in the index's `sha256-<hex>` fallback
    index: each tag asked the source about the image's referrers, its cosign tag and its
    fallback index, so a sync without --cache asked each twice a run (the cold run two
    GETs of each, a rerun two HEADs of each and two GETs of the fallback index, whose bytes
    the target's merged one does not repeat). The referrers of one subject are asked once
    a run, both tags share them; the target holds what it held, each tag's referrers
    there."""
    img = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64_V8)],
                        "oci")
    push_image(src_registry.url, repo_name, img, ["1.2", "latest"])
    key = ec.generate_private_key(ec.SECP256R1())
    sig_tag, sig = push_signature(src_registry.url, repo_name, key, img.digest)
    sbom = push_sbom(src_registry.url, repo_name, img.manifest)
    index_tag = fallback_tag(img.digest)
    src, dst = faultproxy(src_registry.url), faultproxy(dst_registry.url)
    prefix = f"{repo_name}-t"
    args = ["sync", f"{src.host}/{repo_name}:1.2", f"{src.host}/{repo_name}:latest",
            "--to", f"{dst.host}/{prefix}", "-q"]

    def asked() -> list[tuple[str, str]]:  # the source's requests of the referrers' tags
        return [a for a in _manifest_asks(src) if a[1] in (sig_tag, index_tag)]

    mirror_ok(*args)
    assert asked() == [("GET", index_tag), ("GET", sig_tag)], src.requests
    held = state(dst_registry, prefix)
    assert {sig.digest, sbom.digest} <= set(held[repo_name]["manifests"]), held
    src.reset_counters()
    mirror_ok(*args, "--report", tmp_path / "r.json")
    assert asked() == [("GET", index_tag), ("HEAD", index_tag), ("HEAD", sig_tag)], \
        src.requests
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["requests"][src.host]["manifest GET"] == 1, report["requests"]
    assert report["targets"][0]["manifests_pushed"] == 0, report["targets"]
    assert state(dst_registry, prefix) == held


@pytest.mark.parametrize("cache", [False, True], ids=["streamed", "cache"])
def test_a_manifest_deleted_at_the_target_below_its_tag_is_pushed_again(
        src_registry: Registry, dst_registry: Registry, repo_name: str,
        rng: random.Random, tmp_path: Path, cache: bool) -> None:
    """o26 D1: a platform manifest deleted at the target (a registry's clean-up of untagged
    manifests, a hand's DELETE) while the tag still names the index: a rerun read it from
    the source (the target's 404 said with -v alone) and pushed nothing, every run after,
    and the target's index named a manifest it does not serve; with --cache the rerun did
    not ask the target about it at all. The push's step 0 asks the target about every
    manifest below the index it did not read there this run (a HEAD each): the lost one is
    pushed again, alone (its blobs, the other manifests and the tag are there)."""
    img = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64_V8)],
                        "oci")
    push_image(src_registry.url, repo_name, img, ["1"])
    args = ["sync", f"{src_registry.host}/{repo_name}:1", "--to",
            f"{dst_registry.host}/t", "-q", "--report", tmp_path / "r.json",
            *(["--cache", tmp_path / "cache"] if cache else [])]
    mirror_ok(*args)
    lost = img.images[0].digest
    at = f"{dst_registry.url}/v2/t/{repo_name}/manifests/{lost}"
    status, _, body = _request("DELETE", at)
    assert status == 202 and _request("HEAD", at)[0] == 404, body
    mirror_ok(*args)
    got = get_manifest(dst_registry.url, f"t/{repo_name}", lost)
    assert got[0] == img.images[0].manifest.data
    target = json.loads((tmp_path / "r.json").read_text())["targets"][0]
    assert (target["manifests_pushed"], target["blobs_pushed"]) == (1, 0), target
    mirror_ok(*args)  # whole again: the rerun after pushes nothing
    assert json.loads((tmp_path / "r.json").read_text())["targets"][0]["manifests_pushed"] == 0


@pytest.mark.parametrize("what", ["child 404", "child damaged", "index damaged"])
def test_a_filtered_rerun_reads_what_the_target_cannot_serve_from_the_source(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, what: str) -> None:
    """A filtered rerun reads the amd64 manifest from the target; one the target answers
    404 for, or damaged (a byte flipped, twice: fetched once more), is read from the
    source instead, as is every
    manifest when the index the target's tag names, read since it is not the one the
    rerun makes (the source's index gained an annotation upstream), comes damaged: the run
    is what it would have been (exit 0, the target as it was or as a first sync of the new
    index leaves it, no warning) and -v alone says so."""
    img = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64_V8)],
                        "oci")
    src, dst, args = _synced_filtered(src_registry, dst_registry, faultproxy, repo_name, img,
                                      "--platform", "linux/amd64")
    held = state(dst_registry, f"{repo_name}-t")
    root = held[repo_name]["tags"]["1"]
    child = img.images[0].digest
    damaged = root if what == "index damaged" else child
    if what == "child 404":
        dst.add(Fault("status", method="GET", path=f"/manifests/{child}", status=404,
                      times=None))
    else:
        dst.add(Fault("flip_byte", method="GET", path=f"/manifests/{damaged}", offset=10,
                      times=None))
    if what == "index damaged":
        moved = ig.make_index(img.images, "oci", annotations={"moved": "yes"})
        push_image(src_registry.url, repo_name, moved, ["1"])
        src.reset_counters()
    synced = mirror_ok(*args, "-v", "--report", tmp_path / "r.json")
    fell = [line for line in synced.stderr.splitlines() if "read from the source" in line]
    assert len(fell) == 1 and damaged in fell[0], synced.stderr
    assert "warning" not in synced.stderr, synced.stderr
    assert _by_digest(src) == [child], src.requests
    # damaged: fetched once more, as any manifest that does not match its digest
    assert _by_digest(dst) == [damaged] * (1 if what == "child 404" else 2), dst.requests
    report = json.loads((tmp_path / "r.json").read_text())
    assert child in report["images"][0]["manifests"], report["images"]
    if what == "index damaged":
        new = report["images"][0]["digest"]
        assert new != root and report["targets"][0]["manifests_pushed"] == 1, report
        assert state(dst_registry, f"{repo_name}-t")[repo_name]["tags"]["1"] == new
        served(dst_registry, report, f"{repo_name}-t")
        return
    assert report["images"][0]["digest"] == root, report["images"]
    # the push's step 0 asks the target about the one it could not read (a HEAD), which
    # it serves: nothing pushed
    assert _by_digest(dst, "HEAD") == [child], dst.requests
    assert report["targets"][0]["manifests_pushed"] == 0, report["targets"]
    assert state(dst_registry, f"{repo_name}-t") == held
    quiet = mirror_ok(*args)
    assert child not in quiet.stderr and "warning" not in quiet.stderr, quiet.stderr


def test_an_image_updated_upstream_reads_its_new_manifests_from_the_source(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """The tag moved upstream to an index whose amd64 manifest is new and whose arm64/v8
    one is the one the target holds (its filtered index lists it): the rerun reads the
    target's index, the arm64/v8 manifest from the target (the same digest: the same
    bytes), the new amd64 one from the source, never asks the target for it, and pushes
    the new image as a first sync would have (the new filtered index, the amd64 manifest
    and its blobs)."""
    a1, b, c, a2 = (ig.make_image(rng, p, "oci")
                    for p in (ig.AMD64, ig.ARM64_V8, ig.ARM_V7, ig.AMD64))
    platforms = ("--platform", "linux/amd64", "--platform", "linux/arm64/v8")
    src, dst, args = _synced_filtered(src_registry, dst_registry, faultproxy, repo_name,
                                      ig.make_index([a1, b, c], "oci"), *platforms)
    old = state(dst_registry, f"{repo_name}-t")[repo_name]["tags"]["1"]
    new = ig.make_index([a2, b, c], "oci")
    push_image(src_registry.url, repo_name, new, ["1"])
    mirror_ok(*args, "-q", "--report", tmp_path / "r.json")
    assert sorted(_by_digest(src)) == sorted([a2.digest, *(x.digest for x in a2.blobs())]), \
        src.requests
    assert _by_digest(dst) == [old, b.digest], dst.requests
    report = json.loads((tmp_path / "r.json").read_text())
    root = report["images"][0]["digest"]
    assert root not in (old, new.digest), report["images"]
    assert report["targets"][0]["manifests_pushed"] == 2, report["targets"]
    served(dst_registry, report, f"{repo_name}-t")
    assert state(dst_registry, f"{repo_name}-t")[repo_name]["tags"]["1"] == root


@pytest.mark.parametrize("how", ["filtered", "moved upstream"])
def test_the_manifests_below_a_nested_index_are_read_from_the_target(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, how: str) -> None:
    """An index whose first entry is an index (amd64, arm64; as Docker Hub's attestation
    layouts nest, or an image built so) and whose second an arm/v7 image. Filtered
    (--platform linux/amd64), the target holds both indexes filtered (new digests), and a
    rerun read the amd64 manifest below the nested index from the source every run (and
    the target's outer index: one GET for nothing): the nested index comes from the source
    (the target holds it filtered only), the amd64 manifest from the target. Moved
    upstream (all platforms; the arm/v7 image replaced), the target's index is read and
    the nested index it lists too, but the manifests below that one came from the source:
    they come from the target, by digest, as the first level's. Either way the target
    ends as a sync of the image leaves it."""
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)]
    inner = ig.make_index(imgs, "oci")
    push_image(src_registry.url, repo_name, inner, [])

    def tagged(last: ig.Image) -> None:
        push_image(src_registry.url, repo_name, last, [])
        push_raw_manifest(src_registry.url, repo_name, "1", ig.dump_json({
            "schemaVersion": 2, "mediaType": ig.OCI_INDEX,
            "manifests": [inner.manifest.descriptor(),
                          last.manifest.descriptor(platform=dict(ig.ARM_V7))]}), ig.OCI_INDEX)

    v7, moved = (ig.make_image(rng, ig.ARM_V7, "oci") for _ in range(2))
    tagged(v7)
    src, dst = faultproxy(src_registry.url), faultproxy(dst_registry.url)
    filtered = how == "filtered"
    args = ["sync", f"{src.host}/{repo_name}:1", "--to", f"{dst.host}/{repo_name}-t",
            *(["--platform", "linux/amd64"] if filtered else [])]
    mirror_ok(*args, "-q")
    held = state(dst_registry, f"{repo_name}-t")
    old = held[repo_name]["tags"]["1"]
    if not filtered:
        tagged(moved)
    src.reset_counters()
    dst.reset_counters()
    mirror_ok(*args, "-q", "--report", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    if filtered:
        assert _by_digest(src) == [inner.digest], src.requests
        assert _by_digest(dst) == [imgs[0].digest], dst.requests
        assert report["images"][0]["digest"] == old, report["images"]
        assert report["targets"][0]["manifests_pushed"] == 0, report["targets"]
        assert state(dst_registry, f"{repo_name}-t") == held
        return
    assert sorted(_by_digest(src)) == sorted([moved.digest, *(b.digest for b in moved.blobs())]), \
        src.requests
    assert sorted(_by_digest(dst)) == sorted([old, inner.digest, *(i.digest for i in imgs)]), \
        dst.requests
    assert report["targets"][0]["manifests_pushed"] == 2, report["targets"]
    served(dst_registry, report, f"{repo_name}-t")
    assert state(dst_registry, f"{repo_name}-t")[repo_name]["tags"]["1"] == \
        report["images"][0]["digest"] != old


def test_a_converted_rerun_reads_no_manifest_from_the_target(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """--format oci of a filtered Docker list: the index the target's tag names is an OCI
    index (the list's type changed: it lists the converted manifests, none the source's
    list names), so the rerun reads the amd64 manifest from the source as before, asks the
    target nothing more (not that index: one GET for nothing), and pushes nothing."""
    img = ig.make_index([ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM64_V8)],
                        "docker")
    src, dst, args = _synced_filtered(src_registry, dst_registry, faultproxy, repo_name, img,
                                      "--platform", "linux/amd64", "--format", "oci")
    root = state(dst_registry, f"{repo_name}-t")[repo_name]["tags"]["1"]
    mirror_ok(*args, "-q", "--report", tmp_path / "r.json")
    assert _by_digest(src) == [img.images[0].digest], src.requests
    assert not dst.paths("GET")[1:], dst.requests  # its ping alone
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["images"][0]["digest"] == root, report["images"]
    assert report["targets"][0]["manifests_pushed"] == 0, report["targets"]


def test_a_filtered_rerun_reads_the_referrers_the_target_lists_from_the_target(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """The amd64 manifest of a filtered index has an SBOM (by digest, listed in its
    `sha256-<hex>` fallback index: distribution has no referrers API): a rerun asked the
    source for the SBOM by digest every time. The target's fallback index for that subject
    lists it (the run before pushed it), so it is read from the target (one GET of the
    index there, one of the SBOM, checked against its digest); the source is asked its
    tag and fallback index, nothing by digest, and the target is left as it was."""
    img = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64_V8)],
                        "oci")
    push_image(src_registry.url, repo_name, img, ["1"])
    sbom = push_sbom(src_registry.url, repo_name, img.images[0].manifest)
    src, dst, args = _synced_filtered(src_registry, dst_registry, faultproxy, repo_name, img,
                                      "--platform", "linux/amd64")
    held = state(dst_registry, f"{repo_name}-t")
    assert sbom.digest in held[repo_name]["manifests"], held
    mirror_ok(*args, "-q", "--report", tmp_path / "r.json")
    assert not _by_digest(src), src.requests
    assert sbom.digest in _by_digest(dst), dst.requests
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["targets"][0]["manifests_pushed"] == 0, report["targets"]
    assert state(dst_registry, f"{repo_name}-t") == held
    dst.add(Fault("flip_byte", method="GET", path=f"/manifests/{sbom.digest}", offset=10,
                  times=None))
    src.reset_counters()
    synced = mirror_ok(*args, "-v")  # damaged there: from the source, -v alone says so
    assert [line for line in synced.stderr.splitlines()
            if "read from the source" in line and sbom.digest in line], synced.stderr
    assert _by_digest(src) == [sbom.digest], src.requests
    assert state(dst_registry, f"{repo_name}-t") == held


def test_a_rerun_reads_the_referrers_the_target_holds_from_the_target(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """An index the target serves whole, with an SBOM of the index and one of its amd64
    manifest (by digest, in their `sha256-<hex>` fallback indexes): a rerun asked the
    source for both SBOMs by digest every time (the manifests below the root it read from
    the target already). Now the source is asked its tag, its tag list and the fallback
    indexes, nothing by digest, and the target is left as it was. A new SBOM upstream
    (the amd64 manifest's fallback index lists two) is read from the source, it alone."""
    img = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64_V8)],
                        "oci")
    push_image(src_registry.url, repo_name, img, ["1"])
    sboms = [push_sbom(src_registry.url, repo_name, s)
             for s in (img.manifest, img.images[0].manifest)]
    src, dst, args = _synced_filtered(src_registry, dst_registry, faultproxy, repo_name, img)
    held = state(dst_registry, f"{repo_name}-t")
    assert {s.digest for s in sboms} <= set(held[repo_name]["manifests"]), held
    mirror_ok(*args, "-q", "--report", tmp_path / "r.json")
    assert not _by_digest(src), src.requests
    assert {s.digest for s in sboms} <= set(_by_digest(dst)), dst.requests
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["targets"][0]["manifests_pushed"] == 0, report["targets"]
    # the target's referrers API asked once a run, by planning and push together (o24 N3)
    assert report["requests"][dst.host]["referrers"] == 1, report["requests"]
    assert state(dst_registry, f"{repo_name}-t") == held
    subject = img.images[0].manifest  # a new SBOM of it upstream, beside the first
    body = json.loads(sboms[1].data)
    body["annotations"] = {"org.opencontainers.image.created": "2026-02-01T00:00:00Z"}
    new = ig.Blob(ig.dump_json(body), ig.OCI_MANIFEST)
    push_raw_manifest(src_registry.url, repo_name, new.digest, new.data, new.media_type)
    push_raw_manifest(src_registry.url, repo_name, fallback_tag(subject.digest),
                      fallback_index([sboms[1], new]), ig.OCI_INDEX)
    src.reset_counters()
    mirror_ok(*args, "-q")
    assert [d for d in _by_digest(src) if d in {new.digest, *(s.digest for s in sboms)}] \
        == [new.digest], src.requests
    assert new.digest in state(dst_registry, f"{repo_name}-t")[repo_name]["manifests"]


def _manifest_asks(proxy) -> list[tuple[str, str]]:
    """What `proxy` was asked of manifests: (method, tag or digest), sorted."""
    return sorted((m, p.rpartition("/")[2]) for m, p, _ in proxy.requests
                  if "/manifests/" in p)


def _deleted_at(reg: Registry, prefix: str, repo: str, digest: str
                ) -> dict[str, dict[str, object]]:
    """Manifest `digest` deleted from `repo` of `reg` (its tags with it); what `reg` held
    under `prefix` before."""
    held = state(reg, prefix)
    status, _, body = _request("DELETE", f"{reg.url}/v2/{repo}/manifests/{digest}")
    assert status == 202, body
    assert state(reg, prefix) != held
    return held


@pytest.mark.parametrize("how", ["streamed", "cache", "mapped"])
def test_a_rerun_heads_the_cosign_tags_and_fallback_indexes_the_target_holds(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, how: str) -> None:
    """Issue 18: a sync rerun without --cache GETs, from the source, every cosign tag of a
    signed image (`sha256-<hex>.sig`, `.att`) and every `sha256-<hex>` fallback index, by
    tag, every run (Docker Hub counts each as a pull), although the target holds the same
    manifests (the run before pushed them). Now each is one HEAD at the source: a cosign
    tag's manifest is the target's under the same tag (one GET there, which the push's
    HEAD of it was) when it is the digest the HEAD says, a fallback index is the target's
    own when the source's tag names the same bytes (a source laid out as mirror lays out
    its targets, as a mirror of a mirror is), else it alone is a GET. With --cache (the cache's store answers after a HEAD) and with --map into a
    prefix the source is asked as much. A re-signed image (its `.sig` moved upstream) has
    its new signature carried; a manifest deleted at the target is read from the source
    and pushed again; the target holds what it held, byte for byte."""
    img = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64_V8)],
                        "oci")
    push_image(src_registry.url, repo_name, img, ["1"])
    key = ec.generate_private_key(ec.SECP256R1())
    sig_tag, _ = push_signature(src_registry.url, repo_name, key, img.digest)
    att, blobs = make_signature(key, repo_name, img.digest)  # the shape of an attestation
    for b in blobs:
        push_blob(src_registry.url, repo_name, b)
    att_tag = fallback_tag(img.digest) + ".att"
    push_raw_manifest(src_registry.url, repo_name, att_tag, att.data, att.media_type)
    amd64 = img.images[0].manifest
    sboms = [push_sbom(src_registry.url, repo_name, s) for s in (img.manifest, amd64)]
    src, dst = faultproxy(src_registry.url), faultproxy(dst_registry.url)
    prefix = f"{repo_name}-t"
    args = ["sync", f"{src.host}/{repo_name}:1", "--to", f"{dst.host}/{prefix}"]
    if how == "cache":
        args += ["--cache", str(tmp_path / "cache")]
    at = repo_name
    if how == "mapped":
        at = f"mapped/{repo_name}"
        args += ["--map", f"{src.host}/{repo_name}={at}"]
    mirror_ok(*args, "-q")
    there = f"{prefix}/{at}"
    # the index's fallback index at the source as the target holds it (the same bytes)
    same, _, _ = get_manifest(dst_registry.url, there, fallback_tag(img.digest))
    push_raw_manifest(src_registry.url, repo_name, fallback_tag(img.digest), same,
                      ig.OCI_INDEX)
    mirror_ok(*args, "-q")  # (a cache's store keeps the tag's new manifest)
    held = state(dst_registry, prefix)
    src.reset_counters()
    dst.reset_counters()
    mirror_ok(*args, "-q", "--report", tmp_path / "r.json")
    cosign = [("HEAD", sig_tag), ("HEAD", att_tag)]
    fallbacks = [("HEAD", fallback_tag(d)) for d in (img.digest, amd64.digest)]
    if how == "cache":  # all of them in the store: a HEAD each, the tag's too
        assert _manifest_asks(src) == sorted([("HEAD", "1"), *cosign, *fallbacks]), \
            src.requests
    else:
        # the amd64 fallback index is the source's own bytes (no annotations): a GET; the
        # tag a HEAD (the root read from the target)
        assert _manifest_asks(src) == sorted([("HEAD", "1"), *cosign, *fallbacks,
                                              ("GET", fallback_tag(amd64.digest))]), \
            src.requests
        # of the target: the cosign tags by GET (no HEAD at the push), the SBOMs by digest
        theirs = _manifest_asks(dst)
        assert {("GET", sig_tag), ("GET", att_tag)} <= set(theirs), dst.requests
        assert not {("HEAD", sig_tag), ("HEAD", att_tag)} & set(theirs), dst.requests
        assert {s.digest for s in sboms} <= set(_by_digest(dst)), dst.requests
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["targets"][0]["manifests_pushed"] == 0, report["targets"]
    assert report["requests"][src.host].get("manifest GET", 0) == \
        (0 if how == "cache" else 1), report["requests"]
    assert state(dst_registry, prefix) == held
    # re-signed upstream: the new signature is carried, read from the source
    new_key = ec.generate_private_key(ec.SECP256R1())
    _, new_sig = push_signature(src_registry.url, repo_name, new_key, img.digest)
    src.reset_counters()
    mirror_ok(*args, "-q", "--report", tmp_path / "r.json")
    moved = sig_tag if how == "cache" else new_sig.digest  # a cache's store: by tag
    assert moved in [p.rpartition("/")[2] for p in src.paths("GET")], src.requests
    assert [d for d in _by_digest(src) if d != new_sig.digest] == [], src.requests
    got, _, _ = get_manifest(dst_registry.url, there, sig_tag)
    assert got == new_sig.data
    assert json.loads((tmp_path / "r.json").read_text())["targets"][0]["manifests_pushed"] \
        == 1
    # deleted at the target: read from the source (-v says so without a cache), pushed again
    held = _deleted_at(dst_registry, prefix, there, att.digest)
    src.reset_counters()
    synced = mirror_ok(*args, "-v")
    if how != "cache":
        assert [line for line in synced.stderr.splitlines()
                if "read from the source" in line and att.digest in line], synced.stderr
        assert _by_digest(src) == [att.digest], src.requests
    assert state(dst_registry, prefix) == held
    got, _, _ = get_manifest(dst_registry.url, there, att_tag)
    assert got == att.data


@pytest.mark.parametrize("how", ["streamed", "mapped"])
def test_a_rerun_heads_the_source_tag_whose_digest_the_target_names_and_gets_no_manifest(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, how: str) -> None:
    """Issue 18: a sync rerun without --cache GETs each image's root manifest by tag from
    the source (Docker Hub counts each as a pull), though the target's tag names the same
    digest, pushed there by the run before. Now the target's tag is asked first (its HEAD,
    the push's step-0 question), then the source's tag one HEAD (If-None-Match: that
    digest) and, at once, the target's manifest by that digest (checked): the root. The
    source is sent no manifest GET (a signed image's cosign tag: a HEAD too), and the
    target holds what it held. A tag moved upstream is carried (its HEAD says another
    digest: the GET as before; the target's root, read at once with that HEAD, read once);
    a manifest deleted at the target (its tag with it) is read from the source and pushed
    again; a root the target cannot serve is read from the source by digest (-v says so);
    a source whose HEAD names no digest is asked the GET, as before; a filtered image
    (--platform, the attestations --no-referrers leaves behind) GETs the source's root,
    which the index it carries is made from."""
    oci = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64_V8)],
                        "oci")
    docker = ig.make_index([ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM64_V8)],
                           "docker")
    push_image(src_registry.url, repo_name, oci, ["1"])
    push_image(src_registry.url, repo_name, docker, ["2"])
    key = ec.generate_private_key(ec.SECP256R1())
    sig_tag, _ = push_signature(src_registry.url, repo_name, key, oci.digest)
    src, dst = faultproxy(src_registry.url), faultproxy(dst_registry.url)
    prefix = f"{repo_name}-t"
    args = ["sync", f"{src.host}/{repo_name}:1", f"{src.host}/{repo_name}:2", "--to",
            f"{dst.host}/{prefix}"]
    at = repo_name
    if how == "mapped":
        at = f"mapped/{repo_name}"
        args += ["--map", f"{src.host}/{repo_name}={at}"]
    there = f"{prefix}/{at}"
    mirror_ok(*args, "-q")
    held = state(dst_registry, prefix)
    src.reset_counters()
    dst.reset_counters()
    mirror_ok(*args, "-q", "--report", tmp_path / "r.json")
    assert _manifest_asks(src) == sorted([("HEAD", "1"), ("HEAD", "2"), ("HEAD", sig_tag)]), \
        src.requests
    assert [s for m, p, s in src.requests if m == "HEAD" and p.endswith(("/1", "/2"))] \
        == [304, 304], src.requests  # If-None-Match: the target's digest
    assert {("GET", oci.digest), ("GET", docker.digest)} <= set(_manifest_asks(dst)), \
        dst.requests
    report = json.loads((tmp_path / "r.json").read_text())
    assert "manifest GET" not in report["requests"][src.host], report["requests"]
    assert report["targets"][0]["manifests_pushed"] == 0, report["targets"]
    assert state(dst_registry, prefix) == held
    # moved upstream: its HEAD names another digest, the tag's GET as before, carried
    moved = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64_V8)],
                          "oci")
    push_image(src_registry.url, repo_name, moved, ["1"])
    src.reset_counters()
    dst.reset_counters()
    mirror_ok(*args, "-q")
    assert ("GET", "1") in _manifest_asks(src) and ("GET", "2") not in _manifest_asks(src), \
        src.requests
    # the target's index, read at once with the source's HEAD, is the one read to see what
    # it lists of the new one: once
    assert _by_digest(dst).count(oci.digest) == 1, dst.requests
    assert get_manifest(dst_registry.url, there, "1")[0] == moved.manifest.data
    # deleted at the target (its tag goes with it): read from the source, pushed again
    held = _deleted_at(dst_registry, prefix, there, docker.digest)
    src.reset_counters()
    mirror_ok(*args, "-q")
    assert ("GET", "2") in _manifest_asks(src) and ("GET", "1") not in _manifest_asks(src), \
        src.requests
    assert state(dst_registry, prefix) == held
    # a root the target cannot serve: from the source by digest, -v says so
    dst.add(Fault("status", method="GET", path=f"/manifests/{docker.digest}", status=404,
                  times=None))
    src.reset_counters()
    synced = mirror_ok(*args, "-v")
    dst.clear_faults()
    assert [line for line in synced.stderr.splitlines()
            if "read from the source" in line and docker.digest in line], synced.stderr
    assert ("GET", docker.digest) in _manifest_asks(src), src.requests
    assert not [p for p in src.paths("GET") if p.endswith(("/manifests/1", "/manifests/2"))]
    assert state(dst_registry, prefix) == held
    # a source whose HEAD names no digest (nor answers If-None-Match): the GET, as before
    src.add(Fault("ignore_conditional", method="HEAD", path=r"/manifests/[12]$",
                  headers={"Docker-Content-Digest": ""}, times=None))
    src.reset_counters()
    mirror_ok(*args, "-q")
    src.clear_faults()
    assert {("GET", "1"), ("GET", "2")} <= set(_manifest_asks(src)), src.requests
    assert state(dst_registry, prefix) == held
    # filtered: the source's root is what the index carried is made from (--no-referrers:
    # test_a_rerun_with_no_referrers_heads_the_source_tags)
    mirror_ok(*args, "-q", "--platform=linux/amd64")
    src.reset_counters()
    mirror_ok(*args, "-q", "--platform=linux/amd64")
    assert sorted(a for a in _manifest_asks(src) if a[1] in ("1", "2")) == \
        [("GET", "1"), ("GET", "2")], src.requests


def test_a_rerun_with_no_referrers_heads_the_source_tags(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """o26 D6: with --no-referrers every rerun without --cache GET each image's root from
    the source by tag (Docker Hub counts each as a pull), where a rerun without the flag
    sends it a HEAD: the check for attestations an OCI index lists, which the flag leaves
    behind (pushed filtered of them: another digest), needed the root. The check is made
    on the target's copy when the target's tag names the digest the source's HEAD names
    (If-None-Match: 304), the same bytes: an index without attestations and a Docker list
    are asked a HEAD alone. An index with attestations, whose tag names the unfiltered index
    at the target (a run that carried them), is read from there too and pushed filtered;
    from then on the target names the filtered index, and the source's tag is GET after its
    HEAD, the target not asked for that index (7c7354a). The target holds what a sync that
    read the source would leave."""
    plats = (ig.AMD64, ig.ARM64_V8)
    plain = ig.make_index([ig.make_image(rng, p, "oci") for p in plats], "oci")
    docker = ig.make_index([ig.make_image(rng, p, "docker") for p in plats], "docker")
    attested = ig.make_index([ig.make_image(rng, p, "oci") for p in plats], "oci",
                             attestation=True, rng=rng)
    for tag, img in (("1", plain), ("2", docker), ("3", attested)):
        push_image(src_registry.url, repo_name, img, [tag])
    src, dst = faultproxy(src_registry.url), faultproxy(dst_registry.url)
    prefix = f"{repo_name}-t"
    args = ["sync", *(f"{src.host}/{repo_name}:{t}" for t in ("1", "2", "3")), "--to",
            f"{dst.host}/{prefix}", "-q", "--report", tmp_path / "r.json"]
    mirror_ok(*args)  # the attestation carried: the target's tag 3 names the source's index
    src.reset_counters()
    dst.reset_counters()
    mirror_ok(*args, "--no-referrers")
    heads = [("HEAD", "1"), ("HEAD", "2"), ("HEAD", "3")]
    assert [a for a in _manifest_asks(src) if a[1] in ("1", "2", "3")] == heads, src.requests
    assert [s for m, p, s in src.requests if m == "HEAD" and p.endswith(("/1", "/2", "/3"))] \
        == [304, 304, 304], src.requests
    assert {plain.digest, docker.digest, attested.digest} <= set(_by_digest(dst)), \
        dst.requests
    report = json.loads((tmp_path / "r.json").read_text())
    filtered = report["images"][2]["digest"]
    assert report["images"][2]["source_digest"] == attested.digest != filtered, report
    assert report["targets"][0]["manifests_pushed"] == 1, report["targets"]
    there = f"{prefix}/{repo_name}"
    assert get_manifest(dst_registry.url, there, "3")[0] != attested.manifest.data
    assert json.loads(get_manifest(dst_registry.url, there, "3")[0])["manifests"] == \
        json.loads(attested.manifest.data)["manifests"][:2]
    held = state(dst_registry, prefix)
    src.reset_counters()
    dst.reset_counters()
    mirror_ok(*args, "--no-referrers")
    assert [a for a in _manifest_asks(src) if a[1] in ("1", "2", "3")] == \
        [("GET", "3"), *heads], src.requests
    assert filtered not in _by_digest(dst), dst.requests
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["requests"][src.host]["manifest GET"] == 1, report["requests"]
    assert report["targets"][0]["manifests_pushed"] == 0, report["targets"]
    assert state(dst_registry, prefix) == held


def test_a_budgeted_sync_to_its_own_registry_goes_on_run_after_run(
        src_registry: Registry, faultproxy, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """Source and target on one registry (a budget for both): the push's requests (blob
    HEADs, uploads, manifest HEADs and PUTs) spend the budget admission promised to the
    blob GETs, so the uploads were refused, and every run left all six images waiting, the
    same run every night, with a warning that the budget went before any image could be
    fetched. Admission counts the push's requests there too, what it will send (a HEAD and
    a mount per blob; a HEAD and a PUT per child manifest, the PUT alone of the tag, whose
    HEAD resolving asked): a budget of three images' requests (as an unbudgeted sync sends
    them) pushes three, whole, and the next run goes on from there (it promised a GET and
    an upload per blob, and a HEAD and the tag's GET the push did not send: 4, 2, 0
    waiting, then with mounts 4, 2, 1, 0)."""
    imgs, refs, src, once, each = indexes_synced(src_registry, faultproxy, repo_name, rng,
                                                 tmp_path, 6, "")
    cfg = images_yaml(tmp_path, refs, f"registries:\n  {src.host}:\n"
                                      f"    max_requests_per_run: {once + 3 * each}\n")
    waiting: list[int] = []
    for _ in range(4):
        run = run_mirror("sync", "-f", cfg, "--to", f"{src.host}/t", "--report",
                         tmp_path / "s.json")
        assert run.returncode in (0, 14), run.stderr
        report = json.loads((tmp_path / "s.json").read_text())
        waiting.append(len(report["waiting"]))
        assert "before any image could be fetched" not in run.stderr, run.stderr
        assert report["waiting"] == refs[len(refs) - waiting[-1]:], report["waiting"]
        placed = [p["source"] for p in report["targets"][0]["placement"]]
        assert placed == refs[:len(refs) - waiting[-1]], placed
        served(src_registry, {"images": [e for e in report["images"] if e["error"] is None]},
               "t")
        if not waiting[-1]:
            break
    assert waiting[0] == 3 and waiting[-1] == 0 and waiting == sorted(set(waiting))[::-1], \
        waiting


def test_a_budgeted_cache_rerun_within_one_registry_promises_step_0s_heads(
        src_registry: Registry, faultproxy, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """A sync --cache within one registry (one budget for source and target): its rerun's
    push asks the target about each platform manifest below an index (step 0: the cache
    read none of them there), requests admission did not promise, so a budget of one
    request fewer than the rerun sends was spent past its end (every image carried, more
    requests made than allowed). Admission promises those HEADs: the last image waits, and
    the run keeps to its budget."""
    _, refs, src, _, _ = indexes_synced(src_registry, faultproxy, repo_name, rng, tmp_path,
                                        2, "")
    to, cache = f"{src.host}/t", tmp_path / "cache"
    mirror_ok("sync", "-f", images_yaml(tmp_path, refs), "--to", to, "--cache", cache, "-q")
    mirror_ok("sync", "-f", images_yaml(tmp_path, refs), "--to", to, "--cache", cache, "-q",
              "--report", tmp_path / "rerun.json")
    rerun = json.loads((tmp_path / "rerun.json").read_text())["requests"][src.host]
    assert rerun.get("manifest HEAD", 0) >= 2 * 2 + 2, rerun  # the tags, the platforms
    budget = sum(rerun.values()) - 1
    cfg = images_yaml(tmp_path, refs, f"registries:\n  {src.host}:\n"
                                      f"    max_requests_per_run: {budget}\n")
    run = run_mirror("sync", "-f", cfg, "--to", to, "--cache", cache, "--report",
                     tmp_path / "s.json")
    report = json.loads((tmp_path / "s.json").read_text())
    assert sum(report["requests"][src.host].values()) <= budget, report["requests"]
    assert run.returncode == 14 and report["waiting"] == refs[1:], run.stderr


def synced_within(reg: Registry, proxy, refs: list[str], prefix: str, tmp_path: Path,
                  *flags: str) -> tuple[dict, list[tuple[str, str, int]], str]:
    """`refs` (at `reg`) synced through `proxy` (in front of `reg`) to PROXY/`prefix`: the
    report's target entry, what the proxy was asked, and the sync's stderr."""
    proxy.requests.clear()
    cfg = images_yaml(tmp_path, [r.replace(reg.host, proxy.host) for r in refs])
    report = tmp_path / f"{prefix}.json"
    run = mirror_ok("sync", "-f", cfg, "--to", f"{proxy.host}/{prefix}", "--report", report,
                    *flags)
    return json.loads(report.read_text())["targets"][0], list(proxy.requests), run.stderr


def uploaded_state(dst: Registry, refs: list[str], prefix: str, tmp_path: Path
                   ) -> tuple[dict[str, dict[str, object]], int]:
    """What a sync of `refs` to another registry (every blob uploaded) leaves there under
    `prefix`, and how many (repository, blob) pairs it uploaded or mounted."""
    report = tmp_path / "upload.json"
    mirror_ok("sync", "-f", images_yaml(tmp_path, refs), "--to", f"{dst.host}/{prefix}", "-q",
              "--report", report)
    done = json.loads(report.read_text())["targets"][0]
    assert done["bytes_pushed"] > 0, done
    return state(dst, prefix), done["blobs_pushed"] + done["blobs_mounted"]


def test_a_sync_within_one_registry_mounts_every_blob(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """A sync from a registry to the same registry (another prefix) read every blob from
    the source repository and uploaded it again into the target's (GET, then POST and PUT:
    data set S's 20 references, 90 blobs, 2.2 MB each way) where one cross-repository
    mount (POST ?mount=&from=) does it: every blob is mounted from the repository the
    source reads it from, none read (no layer GET) nor uploaded (no PATCH, no PUT of a
    blob), nothing said of it without -v; and what the target holds (tags, manifest
    revisions, blob links per repository) is what a sync that uploads leaves."""
    refs = seed_several(src_registry, repo_name, rng)
    u = repo_name[-8:]
    want, pairs = uploaded_state(dst_registry, refs, f"u{u}", tmp_path)
    proxy = faultproxy(src_registry.url)
    done, asked, err = synced_within(src_registry, proxy, refs, f"m{u}", tmp_path)
    assert state(src_registry, f"m{u}") == want
    assert (done["blobs_mounted"], done["blobs_pushed"], done["bytes_pushed"]) == \
        (pairs, 0, 0), done
    posts = [s for m, _, s in asked if m == "POST"]  # 201: mounted (an upload's is 202)
    assert posts == [201] * pairs, asked
    assert not [x for x in asked if x[0] in ("PATCH", "PUT") and "/blobs/" in x[1]], asked
    assert not [x for x in asked if x[0] == "DELETE"], asked
    configs = {json.loads(get_manifest(src_registry.url, f"m{u}/{repo}", m)[0])
               .get("config", {}).get("digest") for repo, held in want.items()
               for m in held["manifests"]}  # type: ignore[attr-defined]
    read = [p for m, p, _ in asked if m == "GET" and "/blobs/sha256:" in p]
    assert all(p.rpartition("/")[2] in configs for p in read), read  # planning's alone
    assert "not mounted" not in err, err


@pytest.mark.parametrize("status", [202, 401, 403, 404])
def test_a_mount_refused_within_one_registry_is_uploaded(
        status: int, src_registry: Registry, dst_registry: Registry, faultproxy,
        repo_name: str, rng: random.Random, tmp_path: Path) -> None:
    """A registry that will not mount (HTTP 202: an upload session instead; 401, 403: no
    pull on the source repository for the token; 404) gets each blob uploaded, read from
    the source as before (a 202's session, not used, DELETEd), said with -v alone; the
    target holds what a sync that uploads leaves."""
    refs = seed_several(src_registry, repo_name, rng)
    u = repo_name[-8:]
    want, pairs = uploaded_state(dst_registry, refs, f"u{u}", tmp_path)
    proxy = faultproxy(src_registry.url)
    where = f"/v2/m{u}/refused/blobs/uploads/refused"
    refused = proxy.add(Fault("status", method="POST", path=r"mount=", status=status,
                              times=None, headers={"Location": where} if status == 202
                              else {}))
    done, asked, err = synced_within(src_registry, proxy, refs, f"m{u}", tmp_path, "-v")
    assert state(src_registry, f"m{u}") == want
    assert done["blobs_mounted"] == 0 and done["blobs_pushed"] == pairs, done
    assert refused.hits and err.count("not mounted from") == refused.hits, err
    dropped = [p for m, p, _ in asked if m == "DELETE" and p == where]
    assert len(dropped) == (refused.hits if status == 202 else 0), asked


def test_a_budget_of_what_a_sync_within_one_registry_sends_carries_every_image(
        src_registry: Registry, faultproxy, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """Admission on a registry that is both source and target promises what the push will
    send there: given exactly the requests an unbudgeted sync of the same images sent (a
    Docker list with a signature and an SBOM, an OCI index, a single image by digest), a
    budgeted one pushes all three (it promised an upload and a GET per blob where a mount
    goes, the root's HEAD that resolving asked, and the GET of a tag there was not: the
    last image waited); one request fewer, and the last image waits from the start, not
    asked about at the target but for its tag's HEAD, the others pushed whole (the SBOM's
    fallback index PUT was promised under the same name as the PUT of its subject by
    digest: the budget ran out at that PUT, mid-push)."""
    refs = seed_several(src_registry, repo_name, rng)
    src = faultproxy(src_registry.url)
    refs = [r.replace(src_registry.host, src.host) for r in refs]
    mirror_ok("sync", "-f", images_yaml(tmp_path, refs), "--to", f"{src.host}/free", "-q",
              "--report", tmp_path / "free.json")
    budget = sum(json.loads((tmp_path / "free.json").read_text())["requests"][src.host]
                 .values())
    for prefix, given, waits in (("all", budget, []), ("less", budget - 1, refs[2:])):
        src.requests.clear()
        cfg = images_yaml(tmp_path, refs, f"registries:\n  {src.host}:\n"
                                          f"    max_requests_per_run: {given}\n")
        run = run_mirror("sync", "-f", cfg, "--to", f"{src.host}/{prefix}", "--report",
                         tmp_path / "s.json")
        assert run.returncode == (14 if waits else 0), run.stderr
        report = json.loads((tmp_path / "s.json").read_text())
        assert report["waiting"] == waits, report["waiting"]
        placed = [p["source"] for p in report["targets"][0]["placement"]]
        assert placed == refs[:len(refs) - len(waits)], placed
        served(src_registry, {"images": [e for e in report["images"] if e["error"] is None]},
               prefix)
        if waits:  # the single image, by digest: its digest tag's HEAD alone
            tag = refs[2].rpartition("@")[2].replace(":", "-")
            asked = [(m, p) for m, p, _ in src.requests if f"/{prefix}/{repo_name}/one/" in p]
            assert asked == [("HEAD", f"/v2/{prefix}/{repo_name}/one/manifests/{tag}")], asked
