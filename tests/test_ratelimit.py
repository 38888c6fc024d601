"""Issue 18, rate limits per registry: requests counted by kind and registry in the report (as
the proxy in front of the registry counted them), `RateLimit-*` headers read and reported, a
429 storm on one registry slowing that registry only, and `max_requests_per_run` ending a run
with the images that wait named (exit 14) and the next run completing them.

Two registries are the same CNCF registry behind two fault proxies: two hosts, so two
registries to mirror, each proxy counting what reaches it."""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import imagegen as ig
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.oracle import (
    ROOT,
    check_layout,
    damaging,
    mirror_env,
    run,
    run_mirror,
    skopeo_copy_ok,
)
from tests.support.pusher import (
    blob_exists,
    get_blob,
    get_manifest,
    head_manifest,
    placed_served,
    push_image,
    two_images,
)
from tests.support.referrers import push_signature
from tests.support.registry import Registry


class TimingProxy(FaultProxy):
    """A FaultProxy that also keeps, per request, when it arrived and when its answer was
    sent, and the most requests it had in flight at once."""

    def __init__(self, upstream_url: str) -> None:
        super().__init__(upstream_url)
        self.spans: list[tuple[float, float, str, str, int]] = []
        self.in_flight = 0
        self.peak = 0
        self._spans_lock = threading.Lock()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        with self._spans_lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        status = 0
        try:
            resp = await super()._handle(request)
            status = resp.status
            return resp
        finally:
            with self._spans_lock:
                self.in_flight -= 1
                self.spans.append((t0, time.monotonic(), request.method, request.path,
                                   status))


@pytest.fixture
def proxies(src_registry: Registry) -> Iterator[Callable[[], TimingProxy]]:
    started: list[TimingProxy] = []

    def factory(upstream: Registry = src_registry) -> TimingProxy:
        p = TimingProxy(upstream.url)
        started.append(p)
        return p.start()

    yield factory
    for p in reversed(started):
        p.stop()


def kind(method: str, path: str) -> str:
    """The test's own reading of what a request asked for."""
    if path == "/v2/":
        return "ping"
    if path == "/v2/_catalog":
        return "catalog"
    if "/blobs/uploads/" in path:
        return "upload"
    if "/manifests/" in path:
        return f"manifest {method}"
    if "/blobs/" in path:
        return f"blob {method}"
    if path.endswith("/tags/list"):
        return "tags list"
    if "/referrers/" in path:
        return "referrers"
    return "other"


def counted(proxy: FaultProxy) -> dict[str, int]:
    return dict(Counter(kind(m, p) for m, p, _ in proxy.requests))


def seed(registry: Registry, repo: str, rng: random.Random, n: int = 1,
         layers: int = 3) -> list[ig.Image]:
    images = []
    for i in range(n):
        img = ig.make_image(rng, ig.AMD64, "oci", n_layers=layers, layer_size=4000)
        push_image(registry.url, f"{repo}{i}", img, ["v1"])
        images.append(img)
    return images


def report_of(path: Path) -> dict:
    return json.loads(path.read_text())


def test_requests_counted_by_kind_and_registry(src_registry: Registry, dst_registry: Registry,
                                               proxies, repo_name: str, rng: random.Random,
                                               tmp_path: Path) -> None:
    """pull and load report, per registry, the requests of each kind: what each proxy saw."""
    seed(src_registry, f"{repo_name}/a", rng)
    seed(src_registry, f"{repo_name}/b", rng)
    a, b, dst = proxies(), proxies(), proxies(dst_registry)
    bundle = tmp_path / "b.tar"
    proc = run_mirror("pull", f"{a.host}/{repo_name}/a0:v1", f"{b.host}/{repo_name}/b0:v1",
                      "-o", bundle, "--cache", tmp_path / "cache", "-q",
                      "--report", tmp_path / "pull.json")
    assert proc.returncode == 0, proc.stderr
    got = report_of(tmp_path / "pull.json")["requests"]
    assert got == {a.host: counted(a), b.host: counted(b)}
    assert got[a.host]["manifest GET"] >= 1 and got[a.host]["blob GET"] == 4, got

    proc = run_mirror("load", bundle, "--to", f"{dst.host}/{repo_name}", "-q",
                      "--report", tmp_path / "load.json")
    assert proc.returncode == 0, proc.stderr
    got = report_of(tmp_path / "load.json")["requests"]
    assert got == {dst.host: counted(dst)}
    assert got[dst.host]["upload"] >= 8 and got[dst.host]["manifest PUT"] == 2, got


def test_a_load_into_a_new_repository_reads_no_tag_it_found_absent(
        src_registry: Registry, dst_registry: Registry, proxies, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """A first load of three images: each tag's HEAD (is the image there whole?) answered
    404, and the load then asked for the same tag again with a GET, to see what it held
    before pushing over it: 2,000 GETs answered 404 in a first load of 2,000 references.
    A tag found absent is pushed with no GET; a second load still finds them all there."""
    seed(src_registry, f"{repo_name}/a", rng, n=3, layers=1)
    refs = [f"{src_registry.host}/{repo_name}/a{i}:v1" for i in range(3)]
    bundle = tmp_path / "b.tar"
    assert run_mirror("pull", *refs, "-o", bundle, "--cache", tmp_path / "cache",
                      "-q").returncode == 0
    dst = proxies(dst_registry)
    proc = run_mirror("load", bundle, "--to", f"{dst.host}/fresh", "-q",
                      "--report", tmp_path / "load.json")
    assert proc.returncode == 0, proc.stderr
    tags = [(m, st) for m, p, st in dst.requests if p.endswith("/manifests/v1")]
    assert sorted(tags) == [("HEAD", 404)] * 3 + [("PUT", 201)] * 3, dst.requests
    doc = report_of(tmp_path / "load.json")
    assert "manifest GET" not in doc["requests"][dst.host], doc["requests"]
    assert doc["manifests_pushed"] == 3 and len(doc["tags"]) == 3, doc
    dst.reset_counters()
    proc = run_mirror("load", bundle, "--to", f"{dst.host}/fresh", "-q")
    assert proc.returncode == 0, proc.stderr
    assert counted(dst) == {"ping": 1, "manifest HEAD": 3}, counted(dst)


def test_sync_counts_the_source_and_the_target(src_registry: Registry,
                                               dst_registry: Registry, proxies,
                                               repo_name: str, rng: random.Random,
                                               tmp_path: Path) -> None:
    """sync's report: the source's requests and the target's, each as its proxy saw them."""
    seed(src_registry, f"{repo_name}/s", rng)
    src, dst = proxies(), proxies(dst_registry)
    proc = run_mirror("sync", f"{src.host}/{repo_name}/s0:v1", "--to",
                      f"{dst.host}/{repo_name}", "-q", "--report", tmp_path / "sync.json")
    assert proc.returncode == 0, proc.stderr
    got = report_of(tmp_path / "sync.json")["requests"]
    assert got == {src.host: counted(src), dst.host: counted(dst)}
    assert got[src.host]["blob GET"] >= 4 and got[dst.host]["manifest PUT"] == 1, got


def test_ratelimit_headers_are_read_and_reported(src_registry: Registry, proxies,
                                                 repo_name: str, rng: random.Random,
                                                 tmp_path: Path) -> None:
    """Docker Hub's `RateLimit-Limit: 100;w=21600` form and the IETF draft's (with
    `RateLimit-Reset`): the last seen per registry in the report and on a -v line."""
    seed(src_registry, f"{repo_name}/a", rng, layers=1)
    seed(src_registry, f"{repo_name}/b", rng, layers=1)
    a, b = proxies(), proxies()
    a.add(Fault("headers", path=r"/manifests/", times=None,
                headers={"RateLimit-Limit": "100;w=21600",
                         "RateLimit-Remaining": "76;w=21600"}))
    b.add(Fault("headers", path=r"/manifests/", times=None,
                headers={"RateLimit-Limit": "50", "RateLimit-Remaining": "40",
                         "RateLimit-Reset": "30"}))
    proc = run_mirror("pull", f"{a.host}/{repo_name}/a0:v1", f"{b.host}/{repo_name}/b0:v1",
                      "-o", tmp_path / "b.tar", "--cache", tmp_path / "cache", "-v",
                      "--report", tmp_path / "pull.json")
    assert proc.returncode == 0, proc.stderr
    assert report_of(tmp_path / "pull.json")["rate_limit"] == {
        a.host: {"limit": 100, "remaining": 76, "window": 21600, "reset": None},
        b.host: {"limit": 50, "remaining": 40, "window": None, "reset": 30}}
    assert f"{a.host} rate limit: 76 of 100 requests left per 21600 s" in proc.stderr
    assert f"{b.host} rate limit: 40 of 50 requests left, window resets in 30 s" in proc.stderr


def test_verbose_says_the_rate_limit_at_its_low_water_marks_not_every_answer(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """-v said the rate limit with every answer whose RateLimit-Remaining moved: hundreds of
    lines in a nightly over Docker Hub. It says it when the registry first sends one, when
    the requests left pass another tenth of the limit (A: 400, then 399 of 1000), each
    hundredth below the reserve (B: 12 of 100 down: each under 10) and with a 429 (A's
    first layer's, with its own figures), and not otherwise; the report keeps the last
    figures. Each registry takes one request at once (max_concurrency: 1), so the answers
    are read in the order the proxy numbered them."""
    on_a = seed(src_registry, f"{repo_name}/a", rng, n=2, layers=4)
    seed(src_registry, f"{repo_name}/b", rng, n=2, layers=4)
    a, b = proxies(), proxies()

    def limited(proxy: TimingProxy, limit: int, left: list[int]) -> list[Fault]:
        return [proxy.add(Fault("headers", times=1, headers={
            "RateLimit-Limit": f"{limit};w=21600", "RateLimit-Remaining": f"{n};w=21600"}))
            for n in left]

    storm = a.add(Fault("status", method="GET", path=f"/blobs/{on_a[0].layers[0].digest}",
                        status=429, headers={"Retry-After": "0", "RateLimit-Limit": "1000",
                                             "RateLimit-Remaining": "350"}))
    on_a_left = limited(a, 1000, list(range(400, 300, -1)))
    on_b_left = limited(b, 100, list(range(12, 0, -1)))
    refs = [f"{p.host}/{repo_name}/{x}{i}:v1" for p, x in ((a, "a"), (b, "b")) for i in range(2)]
    cfg = tmp_path / "images.yaml"
    cfg.write_text("version: 1\nregistries:\n" + "".join(
        f"  {p.host}:\n    max_concurrency: 1\n" for p in (a, b)) + "images:\n" +
        "".join(f"  - {r}\n" for r in refs))
    proc = run_mirror("pull", "-f", cfg, "-o", tmp_path / "b.tar", "--cache",
                      tmp_path / "cache", "-v", "--report", tmp_path / "pull.json")
    assert proc.returncode == 0, proc.stderr
    said = [ln.split(" rate limit: ")[1] for ln in proc.stderr.splitlines()
            if f"{a.host} rate limit: " in ln]
    per = " per 21600 s"
    assert storm.hits == 1 and said == [f"400 of 1000 requests left{per}",
                                        f"399 of 1000 requests left{per}",
                                        "350 of 1000 requests left; HTTP 429"], said
    on_b = [12 - i for i, f in enumerate(on_b_left) if f.hits]
    assert len(on_b) >= 11, on_b  # ping, 2 manifests, 2 configs, 8 layers: 13 requests
    said = [ln.split(" rate limit: ")[1] for ln in proc.stderr.splitlines()
            if f"{b.host} rate limit: " in ln]
    assert said == [f"{n} of 100 requests left{per}" for n in on_b if n == 12 or n < 10], said
    last_a = 400 - sum(f.hits for f in on_a_left) + 1
    assert report_of(tmp_path / "pull.json")["rate_limit"] == {
        a.host: {"limit": 1000, "remaining": last_a, "window": 21600, "reset": None},
        b.host: {"limit": 100, "remaining": on_b[-1], "window": 21600, "reset": None}}


def test_a_registry_held_says_its_rate_limit_once() -> None:
    """A hold (a Retry-After beyond --max-wait, 429s through every try) says the registry's
    rate limit on a -v line, with why, once however many requests meet it; a registry that
    sent no RateLimit headers has none to say."""
    from mirror.registry.ratelimit import RegistryLimits, parse_ratelimit

    said: list[str] = []
    lim = RegistryLimits("r.example", ceiling=8, said=said.append)
    lim.hold("asked to wait 60 s")
    assert said == []
    lim = RegistryLimits("r.example", ceiling=8, said=said.append)
    rate = parse_ratelimit({"RateLimit-Limit": "100;w=21600", "RateLimit-Remaining": "7"})
    assert rate is not None and lim.observe(rate) and not lim.observe(rate)
    lim.hold("asked to wait 60 s")
    lim.hold("asked to wait 90 s")
    assert said == ["r.example rate limit: 7 of 100 requests left per 21600 s; held: asked "
                    "to wait 60 s"], said


def test_a_429_storm_on_one_registry_does_not_slow_another(src_registry: Registry, proxies,
                                                           repo_name: str,
                                                           rng: random.Random,
                                                           tmp_path: Path) -> None:
    """Registry A answers its first layer GETs with 429 (Retry-After: 2): A's requests wait;
    B's layers are all fetched meanwhile, none of them waiting for A
    (the -j slots A's waiting downloads hold are A's own)."""
    on_a = seed(src_registry, f"{repo_name}/a", rng, n=3, layers=4)
    seed(src_registry, f"{repo_name}/b", rng, n=3, layers=4)
    a, b = proxies(), proxies()
    layers = "|".join(x.digest for img in on_a for x in img.layers)
    a.add(Fault("status", method="GET", path=f"/blobs/({layers})", status=429, times=4,
                headers={"Retry-After": "2"}))
    refs = [f"{p.host}/{repo_name}/{x}{i}:v1" for p, x in ((a, "a"), (b, "b"))
            for i in range(3)]
    proc = run_mirror("pull", *refs, "-o", tmp_path / "b.tar", "--cache",
                      tmp_path / "cache", "-q", "-j", "4", "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    check_layout(tmp_path / "b.tar")
    storm = min(t0 for t0, _, m, p, st in a.spans if st == 429)
    limited = {p: t0 for t0, _, m, p, st in a.spans if st == 429}
    b_layers = [t1 for _, t1, m, p, st in b.spans if m == "GET" and "/blobs/" in p]
    assert len(limited) == 4 and len(b_layers) == 15, (limited, b_layers)
    # every blob of B was served within a second of A's first 429; A's waited its 2 s
    assert max(b_layers) - storm < 1.0, (max(b_layers) - storm)
    for path, t in limited.items():
        [again] = [t0 for t0, _, m, p, st in a.spans if p == path and st == 200]
        assert again - t >= 1.9, (path, again - t)
    assert report_of(tmp_path / "r.json")["requests"][a.host]["blob GET"] == 19


def test_max_concurrency_must_be_a_positive_integer(tmp_path: Path) -> None:
    """images.yaml `registries: HOST: max_concurrency:` 0 or a word: exit 2, file:line."""
    for value, why in (("0", "must be at least 1, not 0"), ("many", "an integer")):
        cfg = tmp_path / "images.yaml"
        cfg.write_text("version: 1\nregistries:\n  127.0.0.1:9:\n"
                       f"    max_concurrency: {value}\nimages:\n  - 127.0.0.1:9/x/y:1\n")
        proc = run_mirror("pull", "-f", cfg, "-o", tmp_path / "b.tar", "--cache",
                          tmp_path / "cache")
        assert proc.returncode == 2, proc.stderr
        assert f"mirror: error: {cfg}:4:" in proc.stderr and why in proc.stderr, proc.stderr


def budget_config(path: Path, host: str, budget: int, refs: list[str]) -> Path:
    items = "".join(f"  - {r}\n" for r in refs)
    path.write_text(f"version: 1\nregistries:\n  {host}:\n    max_requests_per_run: {budget}\n"
                    f"images:\n{items}")
    return path


def bundle_refs(bundle: Path) -> set[str]:
    lay = check_layout(bundle)
    return {m["annotations"]["org.opencontainers.image.ref.name"]
            for m in lay.index["manifests"]}


def test_max_requests_per_run_leaves_images_for_the_next_run(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """A budget of 15 requests for registry A (3 images, each resolved and then admitted
    while the budget covers its layers): the images it could not finish wait (exit 14, each
    named, the report's `waiting`), B's image is in the bundle; A got no request past its
    budget; the next run (with the budget renewed) completes them from where this one
    stopped, fetching no layer twice (A's blobs answer after 0.3 s)."""
    seed(src_registry, f"{repo_name}/a", rng, n=3, layers=2)
    seed(src_registry, f"{repo_name}/b", rng, n=1, layers=2)
    a, b = proxies(), proxies()
    a.add(Fault("stall", method="GET", path="/blobs/sha256:", times=None, delay=0.3))
    refs = [*(f"{a.host}/{repo_name}/a{i}:v1" for i in range(3)), f"{b.host}/{repo_name}/b0:v1"]
    cfg = budget_config(tmp_path / "images.yaml", a.host, 15, refs)
    out, rep = tmp_path / "b.tar", tmp_path / "r.json"
    args = ["-f", cfg, "-o", out, "--cache", tmp_path / "cache", "-j", "1", "--report", rep]
    proc = run_mirror("pull", *args)
    assert proc.returncode == 14, proc.stderr
    doc = report_of(rep)
    waiting = doc["waiting"]
    assert waiting and set(waiting) <= set(refs[:3]), doc["waiting"]
    assert doc["requests"][a.host] == counted(a) and sum(counted(a).values()) == 15
    for ref in waiting:
        [line] = [x for x in proc.stderr.splitlines()
                  if f"{ref}: failed: rate limited by {a.host}: " in x]
        assert "max_requests_per_run: 15" in line and "this image waits for the next run" \
            in line, line
    assert f"{len(waiting)} of 4 image(s) wait for a registry's rate limit" in proc.stderr
    assert doc["error"].startswith(f"{len(waiting)} of 4 image(s) wait") and \
        doc["exit_code"] == 14
    assert bundle_refs(out) == set(refs) - set(waiting)
    fetched = {p for m, p, st in a.requests if "/blobs/" in p and st == 200}

    a.reset_counters()
    budget_config(cfg, a.host, 100, refs)  # the next run: the budget is renewed
    proc = run_mirror("pull", *args)
    assert proc.returncode == 0, proc.stderr
    assert bundle_refs(out) == set(refs) and report_of(rep)["waiting"] == []
    again = {p for m, p, st in a.requests if "/blobs/" in p and m == "GET" and st == 200}
    assert again and again.isdisjoint(fetched), again & fetched


def test_a_tight_budget_finishes_whole_images_in_order_and_the_rest_wait(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """max_requests_per_run covering about half of registry A's four images: the run spends
    it on whole images in the config's order (resolve one, then the next only while the
    budget still covers the blobs of those admitted): the first two are in the bundle
    complete (skopeo copies them out of it), the third is resolved but its blobs would not
    fit, so it and the fourth wait (named on stderr and in the report's `waiting`, exit 14),
    none of their blobs asked for; it used to resolve all four and finish none. The next
    night, incremental against the lock and with the budget renewed, carries the other two
    without fetching a blob of the first two again, and the lock then names all four."""
    seed(src_registry, f"{repo_name}/cal", rng, n=2, layers=2)
    on_a = seed(src_registry, f"{repo_name}/a", rng, n=4, layers=2)
    a = proxies()
    cost = []  # of the first such image from a cold cache, then of the first two
    for n in (1, 2):
        a.reset_counters()
        run_mirror("pull", *(f"{a.host}/{repo_name}/cal{i}:v1" for i in range(n)), "-o",
                   tmp_path / "cal.tar", "--cache", tmp_path / f"cal{n}",
                   "--lock-file", tmp_path / "cal.lock")
        cost.append(sum(counted(a).values()))
    per_image = cost[1] - cost[0]  # one more image: its resolution and its 3 blobs
    assert per_image >= 4, cost
    a.reset_counters()
    budget = cost[1] + per_image - 1  # two images, and all but one request of a third
    refs = [f"{a.host}/{repo_name}/a{i}:v1" for i in range(4)]
    cfg = budget_config(tmp_path / "images.yaml", a.host, budget, refs)
    out, rep, lock = tmp_path / "b.tar", tmp_path / "r.json", tmp_path / "images.lock"
    args = ["-f", cfg, "--cache", tmp_path / "cache", "--report", rep]
    proc = run_mirror("pull", *args, "-o", out)
    assert proc.returncode == 14, proc.stderr
    doc = report_of(rep)
    assert doc["waiting"] == refs[2:], doc["waiting"]
    for ref in refs[2:]:
        assert f"{ref}: failed: rate limited by {a.host}: " in proc.stderr, proc.stderr
    # its config was fetched resolving it: its layers are the requests it still needs
    assert f"{refs[2]}: failed: rate limited by {a.host}: its 2 blob(s) need 2 requests, 1 " \
        f"of max_requests_per_run: {budget} left for them; this image waits" in proc.stderr, \
        proc.stderr
    assert "spent before any image could be fetched" not in proc.stderr, proc.stderr
    assert sum(counted(a).values()) <= budget and doc["requests"][a.host] == counted(a)
    assert bundle_refs(out) == set(refs[:2])
    for n, ref in enumerate(refs[:2]):
        skopeo_copy_ok(out, ref, tmp_path / f"copy{n}")
    later = {x.digest for img in on_a[2:] for x in img.layers}
    asked = {p.rsplit("/", 1)[1] for m, p, _ in a.requests if "/blobs/" in p}
    assert asked and asked.isdisjoint(later), asked & later
    # the blobs of the first two, and the config the third was resolved with
    assert (doc["blobs_fetched"], doc["blobs_reused"]) == (7, 0), doc
    assert set(json.loads(lock.read_text())["images"]) == set(refs[:2])
    carried = tmp_path / "carried.lock"
    carried.write_bytes(lock.read_bytes())

    a.reset_counters()
    budget_config(cfg, a.host, 100, refs)  # the next night: the budget is renewed
    out2 = tmp_path / "b2.tar"
    proc = run_mirror("pull", *args, "-o", out2, "--base", carried)
    assert proc.returncode == 0, proc.stderr
    assert report_of(rep)["waiting"] == []
    assert set(json.loads(lock.read_text())["images"]) == set(refs)
    again = {p.rsplit("/", 1)[1] for m, p, _ in a.requests if "/blobs/" in p and m == "GET"}
    first = {x.digest for img in on_a[:2] for x in img.layers}
    assert later <= again and again.isdisjoint(first), again
    lay = check_layout(out2)
    assert later <= lay.blob_digests and lay.blob_digests.isdisjoint(first)
    assert {m["annotations"]["org.opencontainers.image.ref.name"]
            for m in lay.index["manifests"]} >= set(refs[2:])


def test_a_lock_spends_its_budget_on_resolving_alone(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """`mirror lock` downloads no layer: a budget that covers resolving its images (as many
    requests as locking them without a budget made) locks them all, none left waiting for
    layers a pull would fetch."""
    seed(src_registry, f"{repo_name}/a", rng, n=3, layers=2)
    a = proxies()
    refs = [f"{a.host}/{repo_name}/a{i}:v1" for i in range(3)]
    cfg = budget_config(tmp_path / "images.yaml", a.host, 1000, refs)
    args = ["-f", cfg, "--lock-file", tmp_path / "images.lock", "-q"]
    assert run_mirror("lock", *args, "--cache", tmp_path / "c1").returncode == 0
    need = sum(counted(a).values())
    a.reset_counters()
    budget_config(cfg, a.host, need, refs)
    proc = run_mirror("lock", *args, "--cache", tmp_path / "c2")
    assert proc.returncode == 0, proc.stderr
    assert sum(counted(a).values()) == need, counted(a)
    assert set(json.loads((tmp_path / "images.lock").read_text())["images"]) == set(refs)


def test_a_lock_left_waiting_says_which_waiting_images_it_keeps(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """`mirror lock` of three images with a budget for the first alone: a1 and a2 wait, the
    lock file kept a1's entry from the last run and has none for a2. The run ended
    'images.lock keeps their last entries' of both; it says how many it kept."""
    seed(src_registry, f"{repo_name}/a", rng, n=3, layers=1)
    a = proxies()
    refs = [f"{a.host}/{repo_name}/a{i}:v1" for i in range(3)]
    cfg, lock = tmp_path / "images.yaml", tmp_path / "images.lock"
    args = ["-f", cfg, "--lock-file", lock, "--no-referrers"]
    budget_config(cfg, a.host, 1000, refs[:1])
    assert run_mirror("lock", *args, "-q", "--cache", tmp_path / "c0").returncode == 0
    need = sum(counted(a).values())
    budget_config(cfg, a.host, 1000, refs[:2])
    assert run_mirror("lock", *args, "-q", "--cache", tmp_path / "c1").returncode == 0
    budget_config(cfg, a.host, need, refs)
    proc = run_mirror("lock", *args, "--cache", tmp_path / "c2")
    assert proc.returncode == 14, proc.stderr
    assert set(json.loads(lock.read_text())["images"]) == set(refs[:2])
    assert "keeps their last entries" not in proc.stderr, proc.stderr
    assert "2 of 3 image(s) wait for a registry's rate limit (the next run takes them); " \
        f"{lock} keeps the last entry of 1 of them (none for the other 1)" in proc.stderr, \
        proc.stderr


def test_no_request_left_for_longer_than_the_run_waits(src_registry: Registry, proxies,
                                                       repo_name: str, rng: random.Random,
                                                       tmp_path: Path) -> None:
    """Registry A says `RateLimit-Remaining: 0;w=21600` with its first manifest: its images
    wait for the next run (exit 14), B's image is carried."""
    seed(src_registry, f"{repo_name}/a", rng, n=2, layers=1)
    seed(src_registry, f"{repo_name}/b", rng, n=1, layers=1)
    a, b = proxies(), proxies()
    a.add(Fault("headers", path=r"/manifests/", times=None,
                headers={"RateLimit-Limit": "100;w=21600",
                         "RateLimit-Remaining": "0;w=21600"}))
    refs = [f"{a.host}/{repo_name}/a0:v1", f"{a.host}/{repo_name}/a1:v1",
            f"{b.host}/{repo_name}/b0:v1"]
    out, rep = tmp_path / "b.tar", tmp_path / "r.json"
    proc = run_mirror("pull", *refs, "-o", out, "--cache", tmp_path / "cache", "--report",
                      rep)
    assert proc.returncode == 14, proc.stderr
    assert f"rate limited by {a.host}: 0 of 100 requests left per 21600 s" in proc.stderr
    doc = report_of(rep)
    assert set(doc["waiting"]) == set(refs[:2]) and bundle_refs(out) == {refs[2]}
    assert doc["rate_limit"][a.host]["remaining"] == 0


def test_a_retry_after_longer_than_max_wait_leaves_that_registry_for_the_next_run(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """A 429 storm on registry A asking for 30 s, --max-wait 2: A's images wait for the next
    run (exit 14, each named, the report's `waiting`, the lock keeping no entry for them), B's
    are carried; A gets no request once its first 429 is in (the run does not ask again what
    it was told to wait for). It was exit 6 with nothing in the bundle: B's images lost to A's
    storm. The next run, the storm over, carries A's images too."""
    seed(src_registry, f"{repo_name}/a", rng, n=2, layers=1)
    seed(src_registry, f"{repo_name}/b", rng, n=2, layers=1)
    a, b = proxies(), proxies()
    storm = a.add(Fault("status", path=r"/manifests/", status=429, times=None,
                        headers={"Retry-After": "30"}))
    refs = [f"{a.host}/{repo_name}/a0:v1", f"{a.host}/{repo_name}/a1:v1",
            f"{b.host}/{repo_name}/b0:v1", f"{b.host}/{repo_name}/b1:v1"]
    items = "".join(f"  - {r}\n" for r in refs)
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"version: 1\nimages:\n{items}")
    out, rep, lock = tmp_path / "b.tar", tmp_path / "r.json", tmp_path / "images.lock"
    args = ["-f", cfg, "-o", out, "--cache", tmp_path / "cache", "--report", rep,
            "--lock-file", lock, "--max-wait", "2"]
    proc = run_mirror("pull", *args)
    assert proc.returncode == 14, proc.stderr
    for ref in refs[:2]:
        assert f"{ref}: failed: rate limited by {a.host}: asked to wait 30 s (HTTP 429), " \
            "longer than --max-wait 2 s; this image waits for the next run" in proc.stderr, \
            proc.stderr
    doc = report_of(rep)
    assert sorted(doc["waiting"]) == refs[:2] and doc["exit_code"] == 14, doc
    assert bundle_refs(out) == set(refs[2:])
    # one try per image resolved at once, none after the first answer came
    asked = [(m, st) for m, p, st in a.requests if p != "/v2/"]
    assert 1 <= storm.hits <= 2 and asked == [("GET", 429)] * storm.hits, a.requests
    assert doc["requests"][a.host] == counted(a)
    assert set(json.loads(lock.read_text())["images"]) == set(refs[2:])

    a.clear_faults()
    proc = run_mirror("pull", *args)
    assert proc.returncode == 0, proc.stderr
    assert bundle_refs(out) == set(refs) and report_of(rep)["waiting"] == []
    assert set(json.loads(lock.read_text())["images"]) == set(refs)


def test_a_429_storm_without_retry_after_leaves_that_registry_for_the_next_run(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """Registry A answers every manifest request 429 with no Retry-After (nor RateLimit
    headers): once a request's tries are spent, A's images wait for the next run (exit 14,
    named, `waiting`), B's are carried; it was exit 6 and no bundle."""
    seed(src_registry, f"{repo_name}/a", rng, n=2, layers=1)
    seed(src_registry, f"{repo_name}/b", rng, n=1, layers=1)
    a, b = proxies(), proxies()
    a.add(Fault("status", path=r"/manifests/", status=429, times=None))
    refs = [f"{a.host}/{repo_name}/a0:v1", f"{a.host}/{repo_name}/a1:v1",
            f"{b.host}/{repo_name}/b0:v1"]
    out, rep = tmp_path / "b.tar", tmp_path / "r.json"
    proc = run_mirror("pull", *refs, "-o", out, "--cache", tmp_path / "cache", "--report", rep,
                      "--retries", "1")
    assert proc.returncode == 14, proc.stderr
    assert f"{refs[0]}: failed: rate limited by {a.host}: GET http://{a.host}/v2/" \
        in proc.stderr and " answered HTTP 429 TOOMANYREQUESTS: injected by faultproxy " \
        "(HTTP 429) (after 2 tries); this image waits for the next run" in proc.stderr, \
        proc.stderr
    doc = report_of(rep)
    assert sorted(doc["waiting"]) == refs[:2] and bundle_refs(out) == {refs[2]}, doc["waiting"]


def test_images_left_by_a_429_storm_name_the_request_answered_429_not_their_own(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """A's images resolved one at a time (a max_requests_per_run): a0's manifest is
    answered 429 through its tries, so a1 is never asked for. a1's line said `answered
    HTTP 429 ... (after 2 tries) ... (at GET .../a1/manifests/v1)`, a request never sent;
    the reason now names the request that was answered 429."""
    seed(src_registry, f"{repo_name}/a", rng, n=2, layers=1)
    a = proxies()
    a.add(Fault("status", path=r"/a0/manifests/", status=429, times=None))
    refs = [f"{a.host}/{repo_name}/a0:v1", f"{a.host}/{repo_name}/a1:v1"]
    cfg = budget_config(tmp_path / "images.yaml", a.host, 100, refs)
    proc = run_mirror("pull", "-f", cfg, "-o", tmp_path / "b.tar", "--cache",
                      tmp_path / "cache", "--retries", "1")
    assert proc.returncode == 14, proc.stderr
    asked = {p for m, p, st in a.requests}
    assert f"/v2/{repo_name}/a1/manifests/v1" not in asked, a.requests
    why = (f"rate limited by {a.host}: GET http://{a.host}/v2/{repo_name}/a0/manifests/v1 "
           "answered HTTP 429 TOOMANYREQUESTS: injected by faultproxy (HTTP 429) "
           "(after 2 tries); this image waits for the next run")
    for ref in refs:
        assert f"{ref}: failed: {why}" in proc.stderr, proc.stderr


def test_requests_waiting_for_a_slot_when_the_registry_is_left_are_refused_not_stuck(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """Ten of A's images, every manifest answered 429: the 429s halve A's limiter, so most
    requests wait for a slot when A is left for the next run.
    A request woken for a slot and then refused kept the slot's wake-up to itself, and the
    requests behind it waited for ever (the run hung); each is now refused in turn: exit
    14 at once, all ten named."""
    seed(src_registry, f"{repo_name}/a", rng, n=10, layers=1)
    a = proxies()
    a.add(Fault("status", path=r"/manifests/", status=429, times=None))
    refs = [f"{a.host}/{repo_name}/a{i}:v1" for i in range(10)]
    items = "".join(f"  - {r}\n" for r in refs)
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"version: 1\nimages:\n{items}")
    rep = tmp_path / "r.json"
    proc = run_mirror("pull", "-f", cfg, "-o", tmp_path / "b.tar", "--cache",
                      tmp_path / "cache", "--report", rep, "--retries", "1", timeout=60)
    assert proc.returncode == 14, proc.stderr
    assert sorted(report_of(rep)["waiting"]) == refs


def test_a_tag_rule_whose_listing_the_budget_refuses_waits(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """Registry A's requests are spent before its repository's tag listing (a budget of 1:
    the ping): the tag rule's images wait for the next run, B's image is carried (exit 14).
    It stopped the whole run at the listing: exit 14, 'the others are in the bundle', and no
    bundle, no report entry, nothing in `waiting`. With no lock yet the rule's repository is
    what waits; with the lock of an earlier run, the tags it recorded for the rule wait, each
    named, and the lock keeps their entries and the rule's tags."""
    seed(src_registry, f"{repo_name}/a", rng, n=1, layers=1)
    seed(src_registry, f"{repo_name}/b", rng, n=1, layers=1)
    a, b = proxies(), proxies()
    rule_repo, b_ref = f"{a.host}/{repo_name}/a0", f"{b.host}/{repo_name}/b0:v1"
    cfg = tmp_path / "images.yaml"

    def config(budget: int) -> None:
        cfg.write_text(f"version: 1\nregistries:\n  {a.host}:\n    max_requests_per_run: "
                       f"{budget}\nimages:\n  - repository: {rule_repo}\n    tags:\n"
                       f"      - semver: '*'\n        regex: '^v'\n  - {b_ref}\n")

    out, rep, lock = tmp_path / "b.tar", tmp_path / "r.json", tmp_path / "images.lock"
    args = ["-f", cfg, "-o", out, "--cache", tmp_path / "cache", "--report", rep,
            "--lock-file", lock]
    config(1)
    proc = run_mirror("pull", *args)
    assert proc.returncode == 14, proc.stderr
    assert f"{rule_repo}: failed: tag rule at {cfg}:8 (semver: '*', regex: '^v'): rate " \
        f"limited by {a.host}: 0 requests left" in proc.stderr, proc.stderr
    doc = report_of(rep)
    assert doc["waiting"] == [rule_repo] and bundle_refs(out) == {b_ref}, doc["waiting"]
    assert set(json.loads(lock.read_text())["images"]) == {b_ref}

    config(100)  # the next night: all of it
    proc = run_mirror("pull", *args)
    assert proc.returncode == 0, proc.stderr
    assert bundle_refs(out) == {f"{rule_repo}:v1", b_ref}
    recorded = json.loads(lock.read_text())

    config(1)  # spent again: the tags the lock recorded wait, the lock keeps them
    proc = run_mirror("pull", *args)
    assert proc.returncode == 14, proc.stderr
    assert report_of(rep)["waiting"] == [f"{rule_repo}:v1"]
    assert bundle_refs(out) == {b_ref}
    kept = json.loads(lock.read_text())
    assert kept["images"] == recorded["images"] and kept["tagRules"] == recorded["tagRules"]


async def test_the_limiter_halves_on_429_and_grows_back_slowly() -> None:
    """A registry's limiter: 8 in flight at most; each 429 halves what it lets through (floor
    1), the 9th request waits for a slot, and a run of 8 answers without a 429 gives one
    back; a low RateLimit-Remaining halves it too."""
    import asyncio

    from mirror.registry.ratelimit import RegistryLimits, parse_ratelimit

    lim = RegistryLimits("r.example", ceiling=8)
    for _ in range(8):
        await lim.acquire("GET x")
    ninth = asyncio.ensure_future(lim.acquire("GET x"))
    await asyncio.sleep(0.01)
    assert not ninth.done()
    for _ in range(4):
        lim.release(429)
    assert lim.cap == 1 and lim.in_flight == 4 and not ninth.done()
    for _ in range(4):
        lim.release(200)
    await asyncio.sleep(0.01)
    assert ninth.done() and lim.in_flight == 1
    lim.release(200)
    assert lim.cap == 1  # 5 answers without a 429: not yet a run of 8
    for _ in range(3):
        await lim.acquire("GET x")
        lim.release(200)
    assert lim.cap == 2
    rate = parse_ratelimit({"RateLimit-Limit": "100;w=21600", "RateLimit-Remaining": "5"})
    assert rate is not None and (rate.limit, rate.remaining, rate.window) == (100, 5, 21600)
    lim.observe(rate)
    assert lim.cap == 1


@pytest.mark.parametrize("max_wait", [None, "1"])
def test_a_window_with_no_request_left_is_waited_for_up_to_max_wait(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random, tmp_path: Path,
        max_wait: str | None) -> None:
    """`RateLimit-Remaining: 0` and `RateLimit-Reset: 2` with the first manifest: the next
    request waits the 2 s (the default --max-wait is 300); with --max-wait 1 the image
    waits for the next run instead (exit 14), and no request follows the manifest."""
    seed(src_registry, f"{repo_name}/a", rng, layers=1)
    a = proxies()
    a.add(Fault("headers", path=r"/manifests/", times=1,
                headers={"RateLimit-Limit": "10", "RateLimit-Remaining": "0",
                         "RateLimit-Reset": "2"}))
    flags = ["--max-wait", max_wait] if max_wait else []
    proc = run_mirror("pull", f"{a.host}/{repo_name}/a0:v1", "-o", tmp_path / "b.tar",
                      "--cache", tmp_path / "cache", "-q", *flags)
    manifest = next(t1 for _, t1, m, p, st in a.spans if "/manifests/" in p)
    later = [t0 for t0, _, m, p, st in a.spans if t0 > manifest]
    if max_wait is None:
        assert proc.returncode == 0, proc.stderr
        assert later and min(later) - manifest >= 1.9, later
    else:
        assert proc.returncode == 14, proc.stderr
        assert f"mirror: error: rate limited by {a.host}: 0 of 10 requests left, window " \
            "resets in 2 s; this image waits for the next run" in proc.stderr, proc.stderr
        # and the request it stopped at, as a URL (not the callable that formats it)
        assert re.search(rf"\(at (HEAD|GET) http://{re.escape(a.host)}/v2/\S+\)$",
                         proc.stderr.strip().splitlines()[-1]), proc.stderr
        assert later == []


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_max_wait_must_be_a_number_of_seconds(tmp_path: Path, value: str) -> None:
    proc = run_mirror("pull", "127.0.0.1:9/x/y:1", "--max-wait", value, "-o",
                      tmp_path / "b.tar", "--cache", tmp_path / "cache")
    assert proc.returncode == 2, proc.stderr
    assert f"mirror: error: --max-wait {value}: must be 0 (never wait) or more seconds" \
        in proc.stderr, proc.stderr


def test_lock_says_which_images_wait(src_registry: Registry, proxies, repo_name: str,
                                     rng: random.Random, tmp_path: Path) -> None:
    """mirror lock with registry A's budget spent after its ping: A's image waits (exit 14,
    named, and in the report's `waiting`, beside the requests each registry was sent, as
    its proxy counted them), B's is locked."""
    seed(src_registry, f"{repo_name}/a", rng, layers=1)
    seed(src_registry, f"{repo_name}/b", rng, layers=1)
    a, b = proxies(), proxies()
    refs = [f"{a.host}/{repo_name}/a0:v1", f"{b.host}/{repo_name}/b0:v1"]
    cfg = budget_config(tmp_path / "images.yaml", a.host, 1, refs)
    report = tmp_path / "lock.json"
    proc = run_mirror("lock", "-f", cfg, "--cache", tmp_path / "cache", "--report", report)
    assert proc.returncode == 14, proc.stderr
    assert f"{refs[0]}: failed: rate limited by {a.host}" in proc.stderr, proc.stderr
    assert "1 of 2 image(s) wait for a registry's rate limit" in proc.stderr
    lock = (tmp_path / "images.lock").read_text()
    assert refs[1] in lock and refs[0] not in lock
    doc = report_of(report)
    assert doc["exit_code"] == 14 and doc["waiting"] == [refs[0]], doc
    assert doc["requests"] == {a.host: counted(a), b.host: counted(b)}, doc["requests"]
    assert sum(doc["requests"][a.host].values()) == 1, doc["requests"]
    assert doc["rate_limit"] == {}, doc


def test_a_lock_run_whose_every_image_waits_names_them_in_the_report(
        src_registry: Registry, repo_name: str, rng: random.Random, tmp_path: Path) -> None:
    """`mirror lock` whose every image waits for max_requests_per_run (exit 14): the report's
    `waiting` names them all, as a pull's of the same images.yaml does. It said `waiting: []`
    (the run stopped on the first image's error before the report took them)."""
    for tag in ("1", "2"):
        push_image(src_registry.url, repo_name, ig.make_image(rng, ig.AMD64, fmt="oci"),
                   tags=[tag])
    refs = [f"{src_registry.host}/{repo_name}:{t}" for t in ("1", "2")]
    cfg = budget_config(tmp_path / "images.yaml", src_registry.host, 2, refs)
    pulled = run_mirror("pull", "-f", cfg, "--cache", tmp_path / "c1", "-o", tmp_path / "b.tar",
                        "--report", tmp_path / "pull.json", "--lock-file", tmp_path / "p.lock")
    assert pulled.returncode == 14, pulled.stderr
    assert report_of(tmp_path / "pull.json")["waiting"] == refs
    locked = run_mirror("lock", "-f", cfg, "--cache", tmp_path / "c2", "--report",
                        tmp_path / "lock.json")
    assert locked.returncode == 14, locked.stderr
    assert report_of(tmp_path / "lock.json")["waiting"] == refs


def test_a_429_storm_on_one_registrys_manifests_does_not_hold_anothers_resolution(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """Registry A answers its images' first manifest requests with 429 (Retry-After: 2):
    while A's images wait to be resolved, B's are resolved (manifests and configs) within a
    second of the storm, none waiting behind A's images for a resolution slot (each registry
    has its own); A's requests honour the 2 s."""
    seed(src_registry, f"{repo_name}/a", rng, n=4, layers=1)
    seed(src_registry, f"{repo_name}/b", rng, n=4, layers=1)
    a, b = proxies(), proxies()
    a.add(Fault("status", path="/manifests/", status=429, times=4,
                headers={"Retry-After": "2"}))
    refs = [f"{p.host}/{repo_name}/{x}{i}:v1" for p, x in ((a, "a"), (b, "b"))
            for i in range(4)]
    proc = run_mirror("pull", *refs, "-o", tmp_path / "b.tar", "--cache",
                      tmp_path / "cache", "-q", "-j", "2")
    assert proc.returncode == 0, proc.stderr
    assert bundle_refs(tmp_path / "b.tar") == set(refs)
    storm = min(t0 for t0, _, m, p, st in a.spans if st == 429)
    resolving = [t1 for _, t1, m, p, st in b.spans if "/manifests/" in p]
    assert len(resolving) >= 4, b.spans
    assert max(resolving) - storm < 1.0, (max(resolving) - storm)
    retried = [t0 for t0, _, m, p, st in a.spans if "/manifests/" in p and st == 200]
    assert retried and min(retried) - storm >= 1.9, (min(retried) - storm)


def downloaded_during_storm(a: TimingProxy, b: TimingProxy, asked: str, repo_name: str,
                            on_b: list[ig.Image]) -> None:
    """A answered a request for `asked` with 429 (Retry-After: 3): every blob of B's images
    `on_b` (repositories b0, b1, ...) was downloaded, once, before A's storm ended."""
    storm = min(t0 for t0, _, m, p, st in a.spans if st == 429)
    over = min(t0 for t0, _, m, p, st in a.spans if asked in p and st == 200)
    assert over - storm >= 2.9, (over - storm)
    b_blobs = [(p, t1) for _, t1, m, p, st in b.spans if m == "GET" and "/blobs/" in p]
    wanted = {f"/v2/{repo_name}/b{i}/blobs/{d}" for i, img in enumerate(on_b)
              for d in [img.config.digest, *(x.digest for x in img.layers)]}
    assert sorted(p for p, _ in b_blobs) == sorted(wanted), b_blobs
    assert max(t for _, t in b_blobs) < over, [t - over for _, t in b_blobs]


def test_a_429_storm_on_one_registrys_manifests_does_not_hold_anothers_downloads(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """Registry A answers its images' first manifest requests with 429 (Retry-After: 3):
    while A's images wait to be resolved, the blobs of B's images, resolved already, are
    downloaded (into the cache), each once, all before A's storm ends, instead of waiting for
    every image to be planned; the bundle is still exactly right (skopeo copies an image of
    each registry out of it) and the report counts every blob as fetched, none reused. Each
    image's `seconds` are its own, from its resolution to its last blob in hand: B's within
    the span of B's requests (they were the storm's length, B's images being accounted once
    the bundle was laid out after it), A's the 3 s its resolution waited and more."""
    seed(src_registry, f"{repo_name}/a", rng, n=3, layers=2)
    on_b = seed(src_registry, f"{repo_name}/b", rng, n=3, layers=2)
    a, b = proxies(), proxies()
    a.add(Fault("status", path="/manifests/", status=429, times=3,
                headers={"Retry-After": "3"}))
    refs = [f"{p.host}/{repo_name}/{x}{i}:v1" for p, x in ((a, "a"), (b, "b"))
            for i in range(3)]
    out, rep = tmp_path / "b.tar", tmp_path / "r.json"
    proc = run_mirror("pull", *refs, "-o", out, "--cache", tmp_path / "cache", "-q",
                      "--report", rep)
    assert proc.returncode == 0, proc.stderr
    downloaded_during_storm(a, b, "/manifests/", repo_name, on_b)
    check_layout(out)
    assert bundle_refs(out) == set(refs)
    for n, ref in enumerate((refs[0], refs[3])):
        skopeo_copy_ok(out, ref, tmp_path / f"copy{n}")
    doc = report_of(rep)
    assert (doc["blobs_fetched"], doc["blobs_reused"], doc["bytes_reused"]) == (18, 0, 0), doc
    assert doc["bytes_fetched"] == sum(x["bytes_fetched"] for x in doc["images"]) > 0
    on_b_at = [t for span in b.spans for t in span[:2]]
    b_took = max(on_b_at) - min(on_b_at)  # B's requests, from the first to the last
    assert all(x["seconds"] <= b_took + 0.5 for x in doc["images"][3:]), \
        ([x["seconds"] for x in doc["images"]], b_took)
    assert all(x["seconds"] >= 2.5 for x in doc["images"][:3]), doc["images"]


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of `spans` (start, end) that overlap at one moment."""
    edges = sorted([(t0, 1) for t0, _ in spans] + [(t1, -1) for _, t1 in spans])
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def test_small_requests_run_many_at_once_and_large_transfers_at_jobs(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """Through a link holding each request 0.3 s, with -j 1: the twelve images' manifests
    and small blobs (configs, 4 KB layers) are asked for many at once, as a link with long
    round trips needs (16 small requests per registry), while the layers of 1 MiB or more
    (the transfers) still come one at a time, as -j 1 says."""
    small = seed(src_registry, f"{repo_name}/s", rng, n=12, layers=1)
    big = ig.make_image(rng, ig.AMD64, "oci", n_layers=3, layer_size=(1 << 20) + 4096)
    push_image(src_registry.url, f"{repo_name}/big", big, ["v1"])
    a = proxies()
    a.add(Fault("stall", delay=0.3, times=None))
    refs = [f"{a.host}/{repo_name}/s{i}:v1" for i in range(12)] + \
        [f"{a.host}/{repo_name}/big:v1"]
    proc = run_mirror("pull", *refs, "-o", tmp_path / "b.tar", "--cache",
                      tmp_path / "cache", "-q", "-j", "1")
    assert proc.returncode == 0, proc.stderr
    assert bundle_refs(tmp_path / "b.tar") == set(refs)
    manifests = [(t0, t1) for t0, t1, m, p, st in a.spans if "/manifests/" in p]
    assert len(manifests) == 13 and most_at_once(manifests) >= 8, manifests
    layers = {x.digest for img in small for x in img.layers}
    smalls = [(t0, t1) for t0, t1, m, p, st in a.spans
              if m == "GET" and p.rsplit("/", 1)[-1] in layers]
    assert len(smalls) == 12 and most_at_once(smalls) >= 8, smalls
    large = {x.digest for x in big.layers}
    transfers = [(t0, t1) for t0, t1, m, p, st in a.spans
                 if m == "GET" and p.rsplit("/", 1)[-1] in large]
    assert len(transfers) == 3 and most_at_once(transfers) == 1, transfers


async def test_the_limiter_grows_its_small_requests_while_answers_come_faster(
        monkeypatch) -> None:
    """A registry's small requests at once: 16, then half as many again after each window
    of that many answers that came in faster than the best before by 10% (a long round
    trip), until one does not (the registry, or the client, is the limit then), up to 64;
    what holds small requests is told of each growth (the slots `small_slots` makes gain as
    many); a slow-down ends the growing, and a registry with max_concurrency never grows."""
    import types

    from mirror.registry import ratelimit
    from mirror.registry.ratelimit import SMALL_MOST, RegistryLimits

    clock = [100.0]  # the limiter's clock alone (the event loop keeps the real one)
    monkeypatch.setattr(ratelimit, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    told: list[int] = []
    lim = RegistryLimits("r.example", ceiling=20, grown=[told.append])
    slots = lim.small_slots()

    async def window(answers: int, seconds: float) -> None:
        for _ in range(answers):
            clock[0] += seconds / answers
            await lim.acquire("HEAD x")
            lim.release(200)

    async def free(sem: asyncio.Semaphore) -> int:
        n = 0
        while not sem.locked():
            await sem.acquire()
            n += 1
        for _ in range(n):
            sem.release()
        return n

    assert await free(slots) == 16
    await window(1, 0.1)  # the first answer starts the first window
    await window(16, 1.0)  # 16 a second: the best so far
    assert (lim.small, lim.ceiling, told, await free(slots)) == (24, 28, [8], 24)
    await window(24, 1.0)  # 24 a second: faster by more than 10%
    assert (lim.small, lim.ceiling, told, await free(slots)) == (36, 40, [8, 12], 36)
    await window(36, 1.4)  # 25.7 a second: not 10% faster than 24; it stays at 36
    assert (lim.small, lim.grows, told) == (36, False, [8, 12])
    await window(36, 0.1)
    assert lim.small == 36

    lim = RegistryLimits("r.example", ceiling=20)  # faster each window: 64 at most
    for n, seconds in ((1, 0.1), (16, 1.0), (24, 0.5), (36, 0.25), (54, 0.12), (64, 0.06)):
        await window(n, seconds)
    assert lim.small == SMALL_MOST and not lim.grows

    lim = RegistryLimits("r.example", ceiling=20)
    await lim.acquire("HEAD x")
    lim.release(429)  # halved: no growing for the rest of the run
    await window(1, 0.1)
    await window(16, 0.1)
    assert lim.small == 16 and not lim.grows
    assert not RegistryLimits("r.example", ceiling=8, small=8, bodies=8).grows


def test_a_long_round_trip_gets_more_small_requests_at_once(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """A rerun of 96 tags through a link holding each request 0.1 s: its tag HEADs start 16
    at once and, each window of answers coming in faster, more (a -v line says so), so the
    proxy sees more than 16 at once; the bundle is the same."""
    img = ig.make_image(rng, ig.AMD64, "oci", layer_size=256)
    tags = [f"t{i}" for i in range(96)]
    push_image(src_registry.url, repo_name, img, tags)
    a = proxies()
    a.add(Fault("stall", delay=0.1, times=None))
    refs = [f"{a.host}/{repo_name}:{t}" for t in tags]
    args = ("-o", tmp_path / "b.tar", "--cache", tmp_path / "cache")
    assert run_mirror("pull", *refs, *args, "-q").returncode == 0
    first = (tmp_path / "b.tar").read_bytes()
    a.spans.clear()
    proc = run_mirror("pull", *refs, *args, "-v")
    assert proc.returncode == 0, proc.stderr
    assert f"{a.host}: 24 small requests at once (were 16; " in proc.stderr, proc.stderr
    heads = [(t0, t1) for t0, t1, m, p, st in a.spans if m == "HEAD"]
    assert len(heads) == 96 and most_at_once(heads) > 16, most_at_once(heads)
    assert (tmp_path / "b.tar").read_bytes() == first


async def test_the_limiter_halves_on_5xx_and_on_no_answer() -> None:
    """A 5xx answer, and a try that got no answer (a reset, a timeout), halve what the
    registry's limiter lets through, as a 429 does; a try given up (cancelled) does not."""
    from mirror.registry.ratelimit import RegistryLimits

    lim = RegistryLimits("r.example", ceiling=8)
    for _ in range(4):
        await lim.acquire("GET x")
    lim.release(503)
    assert lim.cap == 4
    lim.release(None)
    assert lim.cap == 2
    lim.give_back()
    assert lim.cap == 2 and lim.in_flight == 1
    lim.release(404)
    assert lim.cap == 2 and lim.in_flight == 0


@pytest.mark.parametrize("command", ["pull", "sync"])
def test_max_concurrency_bounds_the_downloads_under_way(
        src_registry: Registry, dst_registry: Registry, proxies, repo_name: str,
        rng: random.Random, tmp_path: Path, command: str) -> None:
    """`max_concurrency: 2` is two requests to the registry at once, downloads included: a
    blob's body still arriving holds its place. Four 1 MiB layers and four small ones,
    each body sent slowly, with -j 4: at most two blob GETs under way at the proxy at any
    moment (four of them were, since the limiter counts a request until its answer starts)."""
    img = ig.make_image(rng, ig.AMD64, "oci", n_layers=4, layer_size=(1 << 20) + 4096)
    push_image(src_registry.url, f"{repo_name}/big", img, ["v1"])
    seed(src_registry, f"{repo_name}/s", rng, n=1, layers=4)
    a = proxies()
    a.add(Fault("slow", method="GET", path="/blobs/sha256:", times=None, delay=0.02,
                chunk=128 << 10))
    refs = [f"{a.host}/{repo_name}/big:v1", f"{a.host}/{repo_name}/s0:v1"]
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"version: 1\nregistries:\n  {a.host}:\n    max_concurrency: 2\nimages:\n" +
                   "".join(f"  - {r}\n" for r in refs))
    out = ["-o", tmp_path / "b.tar", "--cache", tmp_path / "cache"] if command == "pull" else \
        ["--to", f"{dst_registry.host}/{tmp_path.name[-8:].lower().strip('-_.')}"]
    proc = run_mirror(command, "-f", cfg, *out, "-j", "4", "-q")
    assert proc.returncode == 0, proc.stderr
    blobs = [(t0, t1) for t0, t1, m, p, st in a.spans if m == "GET" and "/blobs/" in p]
    assert len(blobs) >= 9, blobs  # 4 + 4 layers and the configs
    assert most_at_once(blobs) <= 2, most_at_once(blobs)


def test_a_target_asking_for_too_long_a_wait_names_the_images_that_wait(
        src_registry: Registry, dst_registry: Registry, proxies, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """A sync whose target A answers 429 with a Retry-After beyond --max-wait: exit 14 saying
    'this image waits for the next run', but the report's `waiting` was empty and no image was
    named; each image A did not get now waits as for a source (named on stderr, `waiting`),
    and target B, after A, still gets them all."""
    seed(src_registry, f"{repo_name}/s", rng, n=2, layers=1)
    refs = [f"{src_registry.host}/{repo_name}/s{n}:v1" for n in range(2)]
    a = proxies(dst_registry)
    a.add(Fault("status", path=r"/manifests/", status=429, times=None,
                headers={"Retry-After": "30"}))
    cfg = tmp_path / "images.yaml"
    cfg.write_text("version: 1\nimages:\n" + "".join(f"  - {r}\n" for r in refs))
    rep = tmp_path / "r.json"
    proc = run_mirror("sync", "-f", cfg, "--to", f"{a.host}/a", "--to", f"{dst_registry.host}/b",
                      "--report", rep, "--max-wait", "2", "--lock-file", tmp_path / "l.lock")
    assert proc.returncode == 14, proc.stderr
    for ref in refs:
        assert f"{ref}: failed: rate limited by {a.host}: asked to wait 30 s (HTTP 429), " \
            "longer than --max-wait 2 s; this image waits for the next run" in proc.stderr, \
            proc.stderr
    doc = report_of(rep)
    assert sorted(doc["waiting"]) == refs and doc["exit_code"] == 14, doc
    b = [t for t in doc["targets"] if t["target"].endswith("/b")][0]
    assert sorted(b["tags"]) == sorted(f"{dst_registry.host}/b/{repo_name}/s{n}:v1"
                                       for n in range(2)), doc["targets"]


def test_a_budget_spent_before_any_image_could_be_fetched_says_so(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """max_requests_per_run: 2 on a registry of three images: the ping and the first
    image's manifest spend it, no blob is fetched, and the same images wait every night.
    One warning names the registry, says the budget went before any image could be fetched,
    what it went on, and how many requests a run of these images needs at least."""
    seed(src_registry, f"{repo_name}/a", rng, n=3, layers=1)
    a = proxies()
    refs = [f"{a.host}/{repo_name}/a{i}:v1" for i in range(3)]
    cfg = budget_config(tmp_path / "images.yaml", a.host, 2, refs)
    proc = run_mirror("pull", "-f", cfg, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c",
                      "--no-referrers")
    assert proc.returncode == 14, proc.stderr
    assert not [p for m, p, _ in a.requests if "/blobs/" in p]
    lines = [ln for ln in proc.stderr.splitlines()
             if "spent before any image could be fetched" in ln]
    assert len(lines) == 1, proc.stderr
    assert f"{a.host}: max_requests_per_run: 2 was spent before any image could be " \
        "fetched (manifest GET 1, ping 1)" in lines[0], lines
    assert "a run of these 3 image(s) needs at least 5 requests" in lines[0], lines


def test_a_budget_spent_on_a_rerun_after_some_images_were_carried_says_so_truly(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """A rerun with nothing new (every manifest and blob in the cache) and a budget of 3 for
    three images: the ping and two tag HEADs spend it, a0 and a1 are carried from the cache,
    a2 waits, every night. The warning said the budget 'was spent before any image could be
    fetched' and that a run 'needs at least 6 requests' (a blob GET per image, none of which
    a rerun sends); it now says how many images were left unasked and about what a run
    needs: what it spent on two images, scaled to three: 5, which carries all three."""
    seed(src_registry, f"{repo_name}/a", rng, n=3, layers=1)
    a = proxies()
    refs = [f"{a.host}/{repo_name}/a{i}:v1" for i in range(3)]
    cfg = budget_config(tmp_path / "images.yaml", a.host, 1000, refs)
    args = ["pull", "-f", cfg, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c",
            "--no-referrers"]
    assert run_mirror(*args).returncode == 0
    budget_config(cfg, a.host, 3, refs)
    proc = run_mirror(*args)
    assert proc.returncode == 14, proc.stderr
    assert bundle_refs(tmp_path / "b.tar") == set(refs[:2])
    lines = [ln for ln in proc.stderr.splitlines() if "every run" in ln]
    assert len(lines) == 1, proc.stderr
    assert "before any image could be fetched" not in lines[0], lines
    assert f"{a.host}: max_requests_per_run: 3 was spent resolving (manifest HEAD 2, ping 1) " \
        "before 1 of its 3 image(s) could be asked for, with nothing new to fetch: a run " \
        "needs about 5 requests (what this one spent on 2 image(s), scaled to 3)" in lines[0], \
        lines
    budget_config(cfg, a.host, 5, refs)
    proc = run_mirror(*args)
    assert proc.returncode == 0 and "every run" not in proc.stderr, proc.stderr
    assert bundle_refs(tmp_path / "b.tar") == set(refs)


def test_a_dry_run_left_waiting_by_a_budget_writes_no_bundle_and_says_none(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """--dry-run with max_requests_per_run: 3 on three images: the ping and the first
    image (its manifest and config) spend it, the others wait (exit 14, named). Its last
    line said 'the bundle is partial' of a bundle a dry run never writes; it says what a
    pull would write."""
    seed(src_registry, f"{repo_name}/a", rng, n=3, layers=1)
    a = proxies()
    refs = [f"{a.host}/{repo_name}/a{i}:v1" for i in range(3)]
    cfg = budget_config(tmp_path / "images.yaml", a.host, 3, refs)
    out = tmp_path / "b.tar"
    proc = run_mirror("pull", "-f", cfg, "-o", out, "--cache", tmp_path / "c",
                      "--no-referrers", "--dry-run")
    assert proc.returncode == 14, proc.stderr
    assert not out.exists()
    assert "the bundle is partial" not in proc.stderr, proc.stderr
    assert "wait for a registry's rate limit (the next run takes them); a pull would " \
        "write a partial bundle" in proc.stderr, proc.stderr


def test_a_budget_too_small_for_the_first_images_blobs_says_so(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """The budget covers resolving but not the first image's blobs, with every manifest in
    the cache already: the image is refused, fetches nothing, and the next night is the same
    run, for ever. It waited silently, night after night (the budget not spent, so no
    warning); one warning now names the registry and the least a run needs (what this one
    spent and the image's blobs), and a budget of that much fetches it."""
    img = seed(src_registry, f"{repo_name}/a", rng, layers=3)[0]
    a = proxies()
    refs = [f"{a.host}/{repo_name}/a0:v1"]
    cache, blobs = tmp_path / "c", len(img.all_blobs()) - 1  # its layers: the lock reads
    cfg = budget_config(tmp_path / "images.yaml", a.host, 1000, refs)  # the config
    locked = run_mirror("lock", "-f", cfg, "--cache", cache, "--no-referrers", "-q")
    assert locked.returncode == 0, locked.stderr  # its manifest and config in the cache
    budget_config(cfg, a.host, 2 + blobs - 1, refs)  # the ping, the tag's HEAD, blobs less 1
    args = ["pull", "-f", cfg, "-o", tmp_path / "b.tar", "--cache", cache, "--no-referrers"]
    for _night in (1, 2):
        a.reset_counters()
        proc = run_mirror(*args)
        assert proc.returncode == 14, proc.stderr
        assert counted(a) == {"ping": 1, "manifest HEAD": 1}, counted(a)
        lines = [ln for ln in proc.stderr.splitlines() if "every run" in ln]
        assert len(lines) == 1, proc.stderr
        assert f"{a.host}: max_requests_per_run: {1 + blobs} leaves the first image that " \
            f"waits too few requests for its {blobs} blob(s)" in lines[0], lines
        assert f"a run needs at least {2 + blobs} requests" in lines[0], lines
    budget_config(cfg, a.host, 2 + blobs, refs)
    proc = run_mirror(*args)
    assert proc.returncode == 0 and "every run" not in proc.stderr, proc.stderr


def test_a_manifest_fetched_again_past_the_budget_waits_for_the_next_run(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """Planning converts (to Docker) image A's manifest as it reads it back from the cache's
    store, where it released it; damaged there meanwhile, it is fetched again from A's
    registry (Client.found_again). That registry's max_requests_per_run spent, or promised
    to image B's blobs (B first in images.yaml, admitted while A's config is held), by
    then: A waits for the next run (named on stderr, the report's `waiting`, exit 14), B is
    in the bundle, the registry got no request past its budget; the next run, its budget
    renewed, carries both, and the bundle is the one an undamaged run writes, byte for
    byte, and verifies."""
    a = proxies()
    img, (ref_a, ref_b) = two_images(src_registry.url, a, repo_name, rng)
    refs = [ref_b, ref_a]
    cfg = budget_config(tmp_path / "images.yaml", a.host, 1000, refs)
    common = ["-f", cfg, "--format", "docker", "--no-referrers"]
    clean = tmp_path / "clean.tar"
    proc = run_mirror("pull", *common, "-o", clean, "--cache", tmp_path / "c0",
                      "--report", tmp_path / "clean.json")
    assert proc.returncode == 0, proc.stderr
    needs = sum(report_of(tmp_path / "clean.json")["requests"][a.host].values())
    # the ping, both manifests and configs, B's 2 layers: A's manifest again is one more
    budget = needs - 1
    budget_config(cfg, a.host, budget, refs)
    cache, out, rep = tmp_path / "cache", tmp_path / "b.tar", tmp_path / "r.json"
    stored = cache / "manifests" / "sha256" / img.digest.split(":", 1)[1]
    a.reset_counters()
    done = damaging(a, f"{repo_name}/b", stored, "pull", *common, "-o", out, "--cache", cache,
                    "--report", rep, at=f"/v2/{repo_name}/a/blobs/{img.config.digest}$")
    assert done.returncode == 14, done.stderr
    doc = report_of(rep)
    assert doc["waiting"] == [ref_a] and doc["exit_code"] == 14, doc
    [line] = [x for x in done.stderr.splitlines() if f"{ref_a}: failed: " in x]
    assert f"manifest {img.digest}: no longer in the cache's store of manifests" in line, line
    assert f"fetching it again: rate limited by {a.host}: " in line, line
    assert f"max_requests_per_run: {budget}" in line and "waits for the next run" in line, line
    assert doc["requests"][a.host] == counted(a) and sum(counted(a).values()) <= budget
    assert f"/v2/{repo_name}/a/manifests/{img.digest}" not in a.paths("GET")
    assert bundle_refs(out) == {ref_b}

    a.clear_faults()
    budget_config(cfg, a.host, needs + 1, refs)  # the next run: the budget is renewed
    proc = run_mirror("pull", *common, "-o", out, "--cache", cache, "--report", rep)
    assert proc.returncode == 0, proc.stderr
    assert report_of(rep)["waiting"] == []
    assert out.read_bytes() == clean.read_bytes()
    assert stored.read_bytes() == img.manifest.data  # stored again, as served
    verified = run_mirror("verify", out)
    assert verified.returncode == 0, verified.stderr


def test_a_failed_upload_gives_back_its_source_slot_without_the_gc(
        src_registry: Registry, dst_registry: Registry, proxies, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """`max_concurrency: 1` on the source of a sync: a blob's stream holds the source's one
    download slot. Target A refuses the upload of a 17 MiB layer (one PATCH) with a 429 and
    a Retry-After beyond --max-wait: its images wait and target B is pushed to; B's upload
    of that layer waited for the slot A's abandoned stream held, which came back only when
    the garbage collector finalised the stream: under `gc.disable()` the sync hung. An
    upload closes its body itself: B gets the image, exit 14 (A's images wait)."""
    img = ig.make_image(rng, ig.AMD64, "oci", n_layers=1, layer_size=17 << 20)
    push_image(src_registry.url, f"{repo_name}/s0", img, ["v1"])
    src = proxies()
    a = proxies(dst_registry)
    patch = a.add(Fault("status", method="PATCH", path=r"/blobs/uploads/", status=429,
                        times=None, headers={"Retry-After": "30"}, delay=0.5))
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"version: 1\nregistries:\n  {src.host}:\n    max_concurrency: 1\n"
                   f"images:\n  - {src.host}/{repo_name}/s0:v1\n")
    cmd = [sys.executable, "-c", "import gc, runpy; gc.disable(); "
           "runpy.run_module('mirror', run_name='__main__', alter_sys=True)",
           "sync", "-f", cfg, "--to", f"{a.host}/a", "--to", f"{dst_registry.host}/b",
           "--max-wait", "2", "--lock-file", tmp_path / "l.lock", "-q"]
    try:
        proc = run(cmd, timeout=60, cwd=ROOT, env=mirror_env())
    except subprocess.TimeoutExpired:
        pytest.fail("the sync hung: A's failed upload kept the source's one slot")
    print(proc.stderr)
    assert proc.returncode == 14, proc.stderr
    assert patch.hits >= 1
    assert get_manifest(dst_registry.url, f"b/{repo_name}/s0", "v1")[2][
        "Docker-Content-Digest"] == img.digest


def test_a_sources_budget_spent_during_a_sync_holds_only_its_own_images(
        src_registry: Registry, dst_registry: Registry, proxies, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """A sync from two registries, B's max_requests_per_run enough to resolve its images
    but not to read all their layers: the blob GET that found B's budget spent stopped the
    push to the target, and every image not pushed yet, A's too, was said to wait 'rate
    limited by B' (exit 14, all named in `waiting`; night after night, as resolving from a
    warm cache left more of B's budget for blobs only slowly). B's images wait; A's are
    pushed, every digest the report names for them served; the next run finishes B's. B's
    image that does not fit is not admitted (as a pull's): the target is not asked about
    its blobs, nor sent upload sessions for them (two more, whose bodies B could not give,
    before), and the next run, with B's first image at the target, admits it."""
    seed(src_registry, f"{repo_name}/a", rng, n=2, layers=2)
    seed(src_registry, f"{repo_name}/b", rng, n=2, layers=1)
    a, b = proxies(), proxies()
    a_refs = [f"{a.host}/{repo_name}/a{i}:v1" for i in range(2)]
    b_refs = [f"{b.host}/{repo_name}/b{i}:v1" for i in range(2)]
    # B: the ping, two manifests and two configs resolve its images; one layer GET is left
    # (for one of its two layers: the other image waits, and the next run reads its layer)
    cfg = budget_config(tmp_path / "images.yaml", b.host, 6, a_refs + b_refs)
    target = proxies(dst_registry)
    rep, prefix = tmp_path / "r.json", f"{target.host}/m"
    sync = ("sync", "-f", cfg, "--to", prefix, "--report", rep, "--no-referrers",
            "--lock-file", tmp_path / "l.lock")
    proc = run_mirror(*sync)
    assert proc.returncode == 14, proc.stderr
    # one upload session per blob of the images admitted (A's 6, b0's 2); of b1, waiting,
    # the target is asked only whether it holds it already (its admission: one HEAD)
    sessions = [p for m, p, _ in target.requests if m == "POST" and "/blobs/uploads/" in p]
    assert len(sessions) == 8, sessions
    assert [(m, p) for m, p, _ in target.requests if f"/{repo_name}/b1/" in p] == [
        ("HEAD", f"/v2/m/{repo_name}/b1/manifests/v1")], target.requests
    doc = report_of(rep)
    assert doc["waiting"] == b_refs[1:], doc["waiting"]
    placed = {p["source"] for p in doc["targets"][0]["placement"]}
    assert placed == {*a_refs, b_refs[0]}, doc["targets"][0]["placement"]
    for ref in a_refs:
        assert f"{ref}: failed" not in proc.stderr, proc.stderr
    entries = {e["reference"]: e for e in doc["images"]}
    for ref in a_refs:
        assert entries[ref]["error"] is None, entries[ref]
        repo = ref.split("/", 1)[1].rsplit(":", 1)[0]
        get_manifest(dst_registry.url, f"m/{repo}", "v1")
        for digest in [entries[ref]["digest"], *entries[ref]["manifests"]]:
            get_manifest(dst_registry.url, f"m/{repo}", digest)
    proc = run_mirror(*sync)
    assert proc.returncode == 0, proc.stderr
    assert report_of(rep)["waiting"] == []
    for ref in b_refs:
        get_manifest(dst_registry.url, f"m/{ref.split('/', 1)[1].rsplit(':', 1)[0]}", "v1")


def test_images_a_sync_leaves_waiting_each_name_a_blob_of_their_own(
        src_registry: Registry, dst_registry: Registry, proxies, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """A sync of three images of B, its max_requests_per_run enough to resolve two and read
    their layers: the third waits at its config; one layer's GET fails once (a 500), and
    its retry leaves the last layer GET none: that image waits too, at the push. Each was
    said to wait '(at GET .../b0/blobs/...)', the first blob left unread, of another image
    and another repository; each names a blob of its own. The report's placement names
    only the image pushed (it listed the one left out of the push as well)."""
    imgs = seed(src_registry, f"{repo_name}/b", rng, n=3, layers=1)
    b = proxies()
    b.add(Fault("status", method="GET", path=imgs[0].layers[0].digest, status=500))
    refs = [f"{b.host}/{repo_name}/b{i}:v1" for i in range(3)]
    # ping, b0's and b1's manifest, config and layer, b2's manifest: b2's config is refused
    cfg = budget_config(tmp_path / "images.yaml", b.host, 8, refs)
    rep = tmp_path / "r.json"
    proc = run_mirror("sync", "-f", cfg, "--to", f"{dst_registry.host}/w", "--report", rep,
                      "--no-referrers", "--lock-file", tmp_path / "l.lock")
    assert proc.returncode == 14, proc.stderr
    doc = report_of(rep)
    waiting = doc["waiting"]
    assert len(waiting) == 2, waiting
    # the report places only what the target holds: not the image left out of the push
    placed = doc["targets"][0]["placement"]
    assert {p["source"] for p in placed} == set(refs) - set(waiting), placed
    placed_served(dst_registry.url, doc["targets"][0])
    for ref in waiting:
        line = next(ln for ln in proc.stderr.splitlines() if f"{ref}: failed" in ln)
        own = ref.rsplit(":", 1)[0].split("/", 1)[1]
        assert f"(at GET http://{b.host}/v2/{own}/blobs/sha256:" in line, line


def test_a_429_storm_on_one_registrys_tag_listing_does_not_hold_anothers_tag_rules(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """Tag rules on two registries: A answers its tag listing with 429 (Retry-After: 3).
    The rules were resolved one after another, so B's listing (and the manifests its
    `order: created` rule reads) waited out A's storm; they are asked at once, while A
    waits, and the run chooses the same tags."""
    for repo in ("a", "b"):
        for n, tag in enumerate(("1.0.0", "1.1.0")):
            img = ig.make_image(rng, ig.AMD64, "oci", n_layers=1, layer_size=2000,
                                created=f"2024-0{n + 1}-01T00:00:00Z")
            push_image(src_registry.url, f"{repo_name}/{repo}", img, [tag])
    a, b = proxies(), proxies()
    a.add(Fault("status", path="/tags/list", status=429, times=1,
                headers={"Retry-After": "3"}))
    cfg = tmp_path / "images.yaml"
    cfg.write_text("version: 1\nimages:\n"
                   f"  - repository: {a.host}/{repo_name}/a\n    tags: [{{semver: '>=1'}}]\n"
                   f"  - repository: {b.host}/{repo_name}/b\n"
                   "    tags: [{latest: 1, order: created}]\n")
    proc = run_mirror("pull", "-f", cfg, "-o", tmp_path / "b.tar", "--cache",
                      tmp_path / "cache", "-q", "--no-referrers")
    assert proc.returncode == 0, proc.stderr
    assert bundle_refs(tmp_path / "b.tar") == {
        f"{a.host}/{repo_name}/a:1.0.0", f"{a.host}/{repo_name}/a:1.1.0",
        f"{b.host}/{repo_name}/b:1.1.0"}
    storm = min(t0 for t0, _, m, p, st in a.spans if st == 429)
    over = min(t0 for t0, _, m, p, st in a.spans if "/tags/list" in p and st == 200)
    assert over - storm >= 2.9, (over - storm)
    ranked = [t1 for _, t1, m, p, st in b.spans if "/tags/list" in p or "/manifests/" in p]
    assert len(ranked) >= 3 and max(ranked[:3]) < over, ([t - over for t in ranked], b.spans)


def rule_beside_tags(src_registry: Registry, proxies, repo_name: str, rng: random.Random,
                     tmp_path: Path):
    """images.yaml: B's b0:v1, a semver rule on A's repository `a` (tags 1.0.0 and 1.1.0),
    A's c0:v1 (another repository: resolved beside the rule), B's b1:v1; each registry
    behind a TimingProxy. Gives B's two images, the proxies A and B, the run's references
    in the config's order, and the config file."""
    on_b = seed(src_registry, f"{repo_name}/b", rng, n=2, layers=2)
    seed(src_registry, f"{repo_name}/c", rng, n=1, layers=1)
    for tag in ("1.0.0", "1.1.0"):
        push_image(src_registry.url, f"{repo_name}/a",
                   ig.make_image(rng, ig.AMD64, "oci", n_layers=1, layer_size=2000), [tag])
    a, b = proxies(), proxies()
    refs = [f"{b.host}/{repo_name}/b0:v1", f"{a.host}/{repo_name}/a:1.0.0",
            f"{a.host}/{repo_name}/a:1.1.0", f"{a.host}/{repo_name}/c0:v1",
            f"{b.host}/{repo_name}/b1:v1"]
    cfg = tmp_path / "images.yaml"
    cfg.write_text("version: 1\nimages:\n"
                   f"  - {refs[0]}\n"
                   f"  - repository: {a.host}/{repo_name}/a\n    tags: [{{semver: '>=1'}}]\n"
                   f"  - {refs[3]}\n  - {refs[4]}\n")
    return on_b, a, b, refs, cfg


def test_a_429_storm_on_one_registrys_tag_listing_does_not_hold_anothers_images(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """A tag rule on registry A, whose listing answers 429 (Retry-After: 3), beside images
    of registry B given by tag (and one of A in another repository). Planning started once
    every rule was resolved, so B's images, resolved and downloaded in a moment otherwise,
    waited out A's storm; they are now resolved while A's rule waits, their blobs downloaded
    (each once) before it ends; the bundle is byte for byte a calm run's, and the report
    lists the images in the config's order."""
    on_b, a, b, refs, cfg = rule_beside_tags(src_registry, proxies, repo_name, rng, tmp_path)
    args = ["-f", cfg, "-q", "--no-referrers"]
    calm = run_mirror("pull", *args, "-o", tmp_path / "calm.tar", "--cache", tmp_path / "c0")
    assert calm.returncode == 0, calm.stderr
    a.reset_counters()
    b.reset_counters()
    a.spans.clear()
    b.spans.clear()
    a.add(Fault("status", path="/tags/list", status=429, times=1,
                headers={"Retry-After": "3"}))
    out, rep = tmp_path / "b.tar", tmp_path / "r.json"
    proc = run_mirror("pull", *args, "-o", out, "--cache", tmp_path / "c1", "--report", rep)
    assert proc.returncode == 0, proc.stderr
    downloaded_during_storm(a, b, "/tags/list", repo_name, on_b)
    assert out.read_bytes() == (tmp_path / "calm.tar").read_bytes()
    assert bundle_refs(out) == set(refs)
    assert [e["reference"] for e in report_of(rep)["images"]] == refs
    assert set(json.loads((tmp_path / "images.lock").read_text())["images"]) == set(refs)


def test_a_sync_resolves_anothers_images_while_one_registrys_tag_listing_waits(
        src_registry: Registry, dst_registry: Registry, proxies, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """sync as pull: a tag rule on A whose listing answers 429 (Retry-After: 3) beside an
    image of B given by tag; B's image is resolved while A's rule waits (it waited for every
    rule before), and both are pushed, the report listing them in the config's order."""
    seed(src_registry, f"{repo_name}/b", rng, n=1, layers=1)
    push_image(src_registry.url, f"{repo_name}/a",
               ig.make_image(rng, ig.AMD64, "oci", n_layers=1, layer_size=2000), ["1.0.0"])
    a, b = proxies(), proxies()
    a.add(Fault("status", path="/tags/list", status=429, times=1,
                headers={"Retry-After": "3"}))
    refs = [f"{a.host}/{repo_name}/a:1.0.0", f"{b.host}/{repo_name}/b0:v1"]
    cfg = tmp_path / "images.yaml"
    cfg.write_text("version: 1\nimages:\n"
                   f"  - repository: {a.host}/{repo_name}/a\n    tags: [{{latest: 1}}]\n"
                   f"  - {refs[1]}\n")
    rep = tmp_path / "r.json"
    proc = run_mirror("sync", "-f", cfg, "--to", f"{dst_registry.host}/m", "-q",
                      "--no-referrers", "--report", rep)
    assert proc.returncode == 0, proc.stderr
    over = min(t0 for t0, _, m, p, st in a.spans if "/tags/list" in p and st == 200)
    resolved = [t1 for _, t1, m, p, st in b.spans if "/manifests/" in p]
    assert resolved and max(resolved) < over, [t - over for t in resolved]
    assert [e["reference"] for e in report_of(rep)["images"]] == refs
    for ref in refs:
        get_manifest(dst_registry.url, f"m/{repo_name}/{ref.split('/')[-1].split(':')[0]}",
                     ref.rsplit(":", 1)[1])


def test_a_429_storm_on_one_registrys_tag_listing_does_not_hold_anothers_lock(
        src_registry: Registry, proxies, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """`mirror lock` as a pull (the test above): a tag rule on registry A whose listing
    answers 429 (Retry-After: 3) beside images of registry B given by tag. The lock resolved
    nothing until every rule was; B's manifests are now asked for, and answered, while A's
    rule waits, and the lock file is a calm run's."""
    _, a, b, refs, cfg = rule_beside_tags(src_registry, proxies, repo_name, rng, tmp_path)
    lock = tmp_path / "images.lock"
    args = ["-f", cfg, "-q", "--no-referrers"]
    calm = run_mirror("lock", *args, "--cache", tmp_path / "c0")
    assert calm.returncode == 0, calm.stderr
    calm_images = json.loads(lock.read_text())["images"]
    assert set(calm_images) == set(refs)
    a.spans.clear()
    b.spans.clear()
    a.add(Fault("status", path="/tags/list", status=429, times=1,
                headers={"Retry-After": "3"}))
    proc = run_mirror("lock", *args, "--cache", tmp_path / "c1", "--report",
                      tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    storm = min(t0 for t0, _, m, p, st in a.spans if st == 429)
    over = min(t0 for t0, _, m, p, st in a.spans if "/tags/list" in p and st == 200)
    assert over - storm >= 2.9, (over - storm)
    b_manifests = [t1 for _, t1, m, p, st in b.spans if "/manifests/" in p]
    assert len(b_manifests) >= 2 and max(b_manifests) < over, \
        ([t - over for t in b_manifests], b.spans)
    assert json.loads(lock.read_text())["images"] == calm_images
    assert report_of(tmp_path / "r.json")["waiting"] == []



def throttled_layer(src_registry: Registry, proxies, repo_name: str, rng: random.Random
                    ) -> tuple[TimingProxy, dict[str, ig.Image | ig.Index], ig.Layer]:
    """o23's D6 at registry A: an OCI index (amd64, arm64: a base layer each and a small
    one), a Docker list (two layers a platform), a one-layer image and a two-layer one, by
    reference; the amd64 base layer, which the index alone needs, is answered 429
    (Retry-After: 1, after a second) always."""
    base = ig.make_layer(rng, 256 * 1024)
    web = ig.make_index([ig.make_image(rng, p, "oci", layers=[
        base if p is ig.AMD64 else ig.make_layer(rng, 256 * 1024), ig.make_layer(rng, 8192)])
        for p in (ig.AMD64, ig.ARM64)], "oci")
    api = ig.make_index([ig.make_image(rng, p, "docker", n_layers=2, layer_size=64 * 1024)
                         for p in (ig.AMD64, ig.ARM64)], "docker")
    tool = ig.make_image(rng, ig.AMD64, "oci", n_layers=1, layer_size=128 * 1024)
    s0 = ig.make_image(rng, ig.AMD64, "oci")
    a = proxies()
    images: dict[str, ig.Image | ig.Index] = {}
    for name, tag, img in (("web", "1.0.0", web), ("api", "1.0", api),
                           ("tool", "latest", tool), ("s0", "1", s0)):
        push_image(src_registry.url, f"{repo_name}/{name}", img, [tag])
        images[f"{a.host}/{repo_name}/{name}:{tag}"] = img
    a.add(Fault("status", method="GET", path=base.digest, status=429, times=None,
                headers={"Retry-After": "1"}, delay=1))
    return a, images, base


def served_whole(reg: Registry, repo: str, tag: str, img: ig.Image | ig.Index) -> None:
    """The target serves the image whole: its tag and every manifest by digest (HEAD and
    GET, the bytes' sha256 the digest), every blob (HEAD, and GET: its sha256)."""
    for ref, m in ((tag, img.manifest), *((x.digest, x) for x in img.all_manifests())):
        assert head_manifest(reg.url, repo, ref) == (200, m.digest), ref
        body, _, headers = get_manifest(reg.url, repo, ref)
        assert ig.sha256_digest(body) == m.digest == headers["Docker-Content-Digest"], ref
    for blob in img.all_blobs():
        assert blob_exists(reg.url, repo, blob.digest), blob.digest
        assert ig.sha256_digest(get_blob(reg.url, repo, blob.digest)) == blob.digest


@pytest.mark.parametrize("cache", [False, True], ids=["one-target", "two-targets-cache"])
def test_a_sync_whose_source_throttles_one_layer_pushes_the_images_without_it(
        src_registry: Registry, dst_registry: Registry, proxies, repo_name: str,
        rng: random.Random, tmp_path: Path, cache: bool) -> None:
    """o23 D6: a sync whose source answers one layer 429 through all its tries (the
    registry held: asked nothing more this run) ended with every image waiting, 0
    manifests and 0 tags pushed, where a pull carried the other images: the push read the
    source -j blobs at once, so the hold refused the blobs of every image not read yet.
    Its small blobs now go beside -j, as a pull's fetcher reads them: the index alone
    waits, named with the request answered 429 (the report's `waiting`), the three others
    are served whole at the target (with a cache, at a second target too: read from the
    cache), the line counts them; the next run, the storm over, pushes the index (exit 0).
    -j 1: one transfer at a time, as the push's were."""
    a, images, base = throttled_layer(src_registry, proxies, repo_name, rng)
    refs = list(images)
    cfg = tmp_path / "images.yaml"
    cfg.write_text("version: 1\nimages:\n" + "".join(f"  - {r}\n" for r in refs))
    rep = tmp_path / "r.json"
    prefixes = ["d6", "d6b"] if cache else ["d6"]
    sync = ("sync", "-f", cfg, *(x for p in prefixes for x in ("--to", f"{dst_registry.host}/{p}")),
            "--report", rep, "--retries", "1", "-j", "1", "--lock-file", tmp_path / "l.lock",
            *(("--cache", tmp_path / "cache") if cache else ()))
    proc = run_mirror(*sync)
    assert proc.returncode == 14, proc.stderr
    at = f"GET http://{a.host}/v2/{repo_name}/web/blobs/{base.digest}"
    assert f"{refs[0]}: failed: rate limited by {a.host}: {at} answered HTTP 429 " \
        "TOOMANYREQUESTS: injected by faultproxy (HTTP 429) (after 2 tries); this image " \
        f"waits for the next run (at {at})\n" in proc.stderr, proc.stderr
    line = ("1 of 4 image(s) wait for a registry's rate limit (the next run takes them); "
            "the others are synced")
    assert proc.stderr.splitlines()[-1].endswith(f" warning: {line}"), proc.stderr
    doc = report_of(rep)
    assert doc["waiting"] == refs[:1] and doc["error"] == line, doc
    assert len(doc["targets"]) == len(prefixes), doc["targets"]
    for prefix, target in zip(prefixes, doc["targets"], strict=True):
        assert [p["source"] for p in target["placement"]] == refs[1:], target["placement"]
        for ref in refs[1:]:
            name, tag = ref.split("/", 1)[1].rsplit(":", 1)
            served_whole(dst_registry, f"{prefix}/{name}", tag, images[ref])
        web = f"{prefix}/{repo_name}/web"
        assert head_manifest(dst_registry.url, web, "1.0.0") == (404, None)

    a.clear_faults()
    proc = run_mirror(*sync)
    assert proc.returncode == 0, proc.stderr
    doc = report_of(rep)
    assert doc["waiting"] == [] and [t["manifests_pushed"] for t in doc["targets"]] == \
        [3] * len(prefixes), doc
    for prefix in prefixes:
        for ref, img in images.items():
            name, tag = ref.split("/", 1)[1].rsplit(":", 1)
            served_whole(dst_registry, f"{prefix}/{name}", tag, img)


def test_a_sync_whose_every_image_waits_says_none_is_synced(
        src_registry: Registry, dst_registry: Registry, proxies, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """Both images need the layer the source answers 429 through all its tries: both wait,
    and the line said "the others are synced" of none; it says none is."""
    base = ig.make_layer(rng, 8192)
    a = proxies()
    refs = []
    for n in range(2):
        push_image(src_registry.url, f"{repo_name}/s{n}", ig.make_image(
            rng, ig.AMD64, "oci", layers=[base, ig.make_layer(rng, 4096)]), ["v1"])
        refs.append(f"{a.host}/{repo_name}/s{n}:v1")
    a.add(Fault("status", method="GET", path=base.digest, status=429, times=None))
    rep = tmp_path / "r.json"
    proc = run_mirror("sync", *refs, "--to", f"{dst_registry.host}/none", "--report", rep,
                      "--retries", "1", "--no-referrers")
    assert proc.returncode == 14, proc.stderr
    line = ("2 of 2 image(s) wait for a registry's rate limit (the next run takes them); "
            "none is synced")
    doc = report_of(rep)
    assert doc["error"] == line and doc["waiting"] == refs, doc
    assert proc.stderr.splitlines()[-1].endswith(f" warning: {line}"), proc.stderr
    assert doc["targets"][0]["tags"] == [] and doc["targets"][0]["placement"] == [], doc


@pytest.mark.parametrize(("at", "keep_going"), [("first", False), ("second", False),
                                               ("second", True)],
                         ids=["first", "second", "second-keep-going"])
def test_an_image_whose_signature_the_source_rate_limits_waits_at_that_target_alone(
        src_registry: Registry, dst_registry: Registry, registry_factory, proxies,
        repo_name: str, rng: random.Random, tmp_path: Path, at: str, keep_going: bool
        ) -> None:
    """o26 D3: a sync of a signed image `a` and an unsigned `b` to two registries, the
    source answering the signature's payload blob 429 through all its tries as the first
    target's push reads it (the source then held: asked nothing more this run), or as the
    second's does (the first got it). The push left the signature out but tagged `a`, so
    the report had `a` waiting and placed at that target, its tag printed: at the first,
    `b` too, waiting (the second target could read nothing) and placed; at the second,
    nothing waited, '0 of 2 image(s) failed', exit 14. Now an image whose referrer cannot
    be read is left out with it (no target tags an image without its signature), and each
    target's entry says of every image one thing: placed there (served: its digest and tags
    GET, the sha256 of the bytes), waiting there, or failed there; stdout prints what is
    placed; the next run, the storm over, completes both targets. With --keep-going the
    same: a source's 429s leave images waiting, never failed (a blob the source cannot
    give fails its image alone there)."""
    img, other = (ig.make_image(rng, ig.AMD64, "oci") for _ in range(2))
    push_image(src_registry.url, f"{repo_name}/a", img, ["1"])
    push_image(src_registry.url, f"{repo_name}/b", other, ["1"])
    key = ec.generate_private_key(ec.SECP256R1())
    sig_tag, sig = push_signature(src_registry.url, f"{repo_name}/a", key, img.digest)
    payload = json.loads(sig.data)["layers"][0]["digest"]
    src = proxies()
    src.add(Fault("status", method="GET", path=payload, status=429, times=None,
                  skip=0 if at == "first" else 1))
    regs = [dst_registry, registry_factory()]
    prefixes = [f"one{repo_name[-8:]}", f"two{repo_name[-8:]}"]
    refs = [f"{src.host}/{repo_name}/{n}:1" for n in ("a", "b")]
    rep = tmp_path / "r.json"
    sync = ("sync", *refs, *(x for reg, p in zip(regs, prefixes, strict=True)
                             for x in ("--to", f"{reg.host}/{p}")),
            "--report", rep, "--retries", "1", *(["--keep-going"] if keep_going else []))
    proc = run_mirror(*sync)
    assert proc.returncode == 14, proc.stderr
    doc = report_of(rep)
    # what each target holds, and what waits there for the next run
    placed, waits = ({"first": (refs[1:], []), "second": (refs, refs[1:])}[at],
                     {"first": (refs[:1], refs), "second": ([], refs[:1])}[at])
    assert doc["waiting"] == {"first": refs, "second": refs[:1]}[at], doc["waiting"]
    line = {"first": "2 of 2 image(s) wait for a registry's rate limit (the next run takes "
                     "them); none is synced to every target",
            "second": "1 of 2 image(s) wait for a registry's rate limit (the next run "
                      "takes them); the others are synced"}[at]
    assert doc["error"] == line and doc["exit_code"] == 14, doc
    printed = []
    for reg, prefix, target, here, wait in zip(regs, prefixes, doc["targets"], placed, waits,
                                               strict=True):
        assert [p["source"] for p in target["placement"]] == here, target
        placed_served(reg.url, target)
        for ref in refs:
            name = ref.split("/", 1)[1].rsplit(":", 1)[0]
            tagged = head_manifest(reg.url, f"{prefix}/{name}", "1")
            assert tagged == ((200, img.digest if name.endswith("/a") else other.digest)
                              if ref in here else (404, None)), (ref, tagged)
        if refs[0] in here:  # its signature with it
            body, _, _ = get_manifest(reg.url, f"{prefix}/{repo_name}/a", sig_tag)
            assert ig.sha256_digest(body) == sig.digest
        assert (target["waiting"], target["failed"]) == (wait, []), target
        assert not set(wait) & set(here), target
        printed += [f"{reg.host}/{prefix}/{r.split('/', 1)[1]}" for r in here]
    assert proc.stdout.splitlines() == printed, proc.stdout

    src.clear_faults()
    proc = run_mirror(*sync)
    assert proc.returncode == 0, proc.stderr
    doc = report_of(rep)
    assert doc["waiting"] == [] and doc["error"] is None, doc
    for reg, prefix, target in zip(regs, prefixes, doc["targets"], strict=True):
        assert [p["source"] for p in target["placement"]] == refs, target
        assert (target["waiting"], target["failed"]) == ([], []), target
        placed_served(reg.url, target)
        body, _, _ = get_manifest(reg.url, f"{prefix}/{repo_name}/a", sig_tag)
        assert ig.sha256_digest(body) == sig.digest
