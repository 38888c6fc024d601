"""Issue 3, one retry policy: transient 5xx and 429 (Retry-After in seconds or as an HTTP date,
pausing the whole registry), other 4xx not retried, bounded retries with a final error that
names registry, repository, digest or tag, status and the registry's code; blob redirects to
object storage without the registry's Authorization (and an expired redirect asked again);
read-inactivity timeouts; uploads on load (monolithic, one PATCH, chunks after a 413, relative
and absolute Location, cross-repository mount, a failed PATCH resumed).

Faults come from the FaultProxy in front of the real registry; `RecordingProxy` adds each
request's arrival time and headers to what the proxy records.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from mirror.errors import RegistryError
from mirror.registry.client import Client
from mirror.registry.transport import RetryPolicy, Transport
from tests.support import imagegen as ig
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.oracle import (
    check_layout,
    error_line,
    ok,
    run_mirror,
)
from tests.support.pusher import blob_exists, get_manifest, push_image
from tests.support.registry import Registry
from tests.support.tokenserver import StorageServer

USER, PASSWORD = "mirror-user", "Faults-pw-77"


@dataclass
class Seen:
    when: float  # time.monotonic() at arrival
    method: str
    path: str  # path and query
    headers: dict[str, str]
    status: int = 0  # of the answer, once given
    wall: float = 0.0  # time.time() at arrival


class RecordingProxy(FaultProxy):
    """A FaultProxy that also logs every request on arrival (time, method, path, headers),
    and can leave requests matching `stall` unanswered (a registry that hangs)."""

    def __init__(self, upstream_url: str, cafile: str | None = None) -> None:
        super().__init__(upstream_url, cafile=cafile)
        self.log: list[Seen] = []
        self.stall: str | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(time.monotonic(), request.method, request.raw_path, dict(request.headers),
                    wall=time.time())
        with self._lock:
            self.log.append(seen)
        if self.stall and re.search(self.stall, request.raw_path):
            await asyncio.sleep(3600)
        resp = await super()._handle(request)
        seen.status = resp.status
        return resp

    def seen(self, method: str | None = None, path: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.log
                    if (method is None or s.method == method) and path in s.path]

    def statuses(self, path: str) -> list[tuple[str, int]]:
        with self._lock:
            return [(m, st) for m, p, st in self.requests if path in p]


@pytest.fixture
def recproxy() -> Iterator[Callable[..., RecordingProxy]]:
    started: list[RecordingProxy] = []

    def factory(upstream_url: str, cafile: str | None = None) -> RecordingProxy:
        proxy = RecordingProxy(upstream_url, cafile=cafile)
        started.append(proxy)
        return proxy.start()

    yield factory
    for proxy in reversed(started):
        proxy.stop()


def cli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_mirror(*args, timeout=timeout)


def pull(tmp_path: Path, ref: str, *args: object, out: str = "out.tar",
         cache: str = "cache") -> subprocess.CompletedProcess[str]:
    return cli("pull", ref, "-o", tmp_path / out, "--cache", tmp_path / cache, "--report",
               tmp_path / "report.json", "-q", *args)


def report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "report.json").read_text())


def assert_exact(bundle: Path, img: ig.Image) -> None:
    """The bundle holds exactly the image's manifest, config and layers, bytes verified."""
    lay = check_layout(bundle)  # every blob hashes to its name
    [entry] = lay.index["manifests"]
    assert entry["digest"] == img.digest
    assert {f"sha256:{n.rsplit('/', 1)[1]}" for n in lay.sizes if n.startswith("blobs/")} == \
        {img.digest, img.config.digest, *(x.digest for x in img.layers)}


@pytest.fixture
def image(src_registry: Registry, repo_name: str, rng: random.Random) -> tuple[str, ig.Image]:
    img = ig.make_image(rng, ig.AMD64, "oci", n_layers=3, layer_size=3000)
    push_image(src_registry.url, repo_name, img, ["v1"])
    return repo_name, img


def blob_path(repo: str, digest: str) -> str:
    return f"/v2/{repo}/blobs/{digest}"


# -- retries ------------------------------------------------------------------------------


def test_transient_5xx_complete_with_exact_digests(src_registry, image, recproxy,
                                                   tmp_path: Path) -> None:
    repo, img = image
    proxy = recproxy(src_registry.url)
    proxy.add(Fault("status", method="GET", path=r"/manifests/v1$", status=500))
    proxy.add(Fault("status", method="GET", path=img.layers[0].digest, status=502))
    proxy.add(Fault("status", method="GET", path=img.config.digest, status=503,
                    code="UNAVAILABLE"))
    proxy.add(Fault("status", method="GET", path=img.layers[1].digest, status=504, times=2))
    ok(pull(tmp_path, f"{proxy.host}/{repo}:v1", "--retries", "2"))
    assert_exact(tmp_path / "out.tar", img)
    assert report(tmp_path)["retries"] >= 5
    # the one image of the run carries them in its own line of the report
    assert report(tmp_path)["images"][0]["retries"] == report(tmp_path)["retries"]
    assert proxy.statuses(img.layers[1].digest) == [("GET", 504), ("GET", 504), ("GET", 200)]


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_429_retry_after_is_honoured(src_registry, image, recproxy, tmp_path: Path,
                                     form: str) -> None:
    repo, img = image
    proxy = recproxy(src_registry.url)
    layer = img.layers[2].digest
    until = int(time.time()) + 3  # for the HTTP date: a whole second, a little ahead
    value = "1" if form == "seconds" else email.utils.formatdate(until, usegmt=True)
    proxy.add(Fault("status", method="GET", path=layer, status=429,
                    headers={"Retry-After": value}))
    ok(pull(tmp_path, f"{proxy.host}/{repo}:v1", "--retries", "2"))
    assert_exact(tmp_path / "out.tar", img)
    first, second = proxy.seen("GET", layer)
    assert first.status == 429 and second.status == 200
    if form == "seconds":
        assert second.when - first.when >= 0.95
    else:  # not before the date (the proxy and the client share the machine's clock)
        assert second.wall >= until - 0.05


async def test_429_pauses_the_whole_registry(src_registry, image, recproxy) -> None:
    """A 429 with Retry-After on one blob holds back every other request to that registry,
    not just the retry of the one that got it."""
    repo, img = image
    proxy = recproxy(src_registry.url)
    a, b = img.layers[0].digest, img.layers[1].digest
    proxy.add(Fault("status", method="GET", path=a, status=429, headers={"Retry-After": "2"}))
    async with Transport(policy=RetryPolicy(tries=3)) as t:
        client = Client(t)
        await client.get_manifest(proxy.host, repo, "v1")
        task_a = asyncio.ensure_future(client.get_small_blob(proxy.host, repo, a))
        ep = await t.endpoint(proxy.host)
        while ep.gate.paused_until <= time.monotonic():  # until the client saw the 429
            assert not task_a.done(), task_a
            await asyncio.sleep(0.01)
        data_b = await client.get_small_blob(proxy.host, repo, b)
        data_a = await task_a
    assert ig.sha256_digest(data_a) == a and ig.sha256_digest(data_b) == b
    [got_429] = [s for s in proxy.seen("GET", a)][:1]
    [b_arrival] = proxy.seen("GET", b)
    assert b_arrival.when - got_429.when >= 1.9, "the other request did not wait"


@pytest.mark.parametrize("status,code", [(400, 3), (403, 4), (404, 5)])
def test_other_4xx_are_not_retried(src_registry, image, recproxy, tmp_path: Path,
                                   status: int, code: int) -> None:
    repo, img = image
    proxy = recproxy(src_registry.url)
    layer = img.layers[0].digest
    proxy.add(Fault("status", method="GET", path=layer, status=status, times=None))
    proc = pull(tmp_path, f"{proxy.host}/{repo}:v1", "--retries", "2")
    assert proc.returncode == code, proc.stderr
    assert len(proxy.seen("GET", layer)) == 1
    assert layer in error_line(proc) and f"HTTP {status}" in error_line(proc)
    assert not (tmp_path / "out.tar").exists()


@pytest.mark.slow
def test_an_endless_tag_list_is_read_bounded(src_registry, image, recproxy,
                                             tmp_path: Path) -> None:
    """A tags/list page (read to find cosign's .sig/.att/.sbom tags) of over 16 MiB was parsed
    whole (memory bounded by nothing the registry did not choose); it is read up to the
    bound and refused as the registry's error, exit 3, naming the list."""
    repo, _ = image
    proxy = recproxy(src_registry.url)
    tags = ",".join(f'"t{i:07d}"' for i in range(1_600_000))  # ~17 MB of valid JSON
    proxy.add(Fault("status", method="GET", path=r"/tags/list", status=200, times=None,
                    headers={"Content-Type": "application/json"},
                    body=f'{{"name": "{repo}", "tags": [{tags}]}}'.encode()))
    proc = pull(tmp_path, f"{proxy.host}/{repo}:v1")
    assert proc.returncode == 3, proc.stderr
    line = error_line(proc)
    assert "list tags" in line and f"over {16 << 20} bytes" in line, line


def test_a_list_page_cut_mid_body_is_asked_again(src_registry, image, recproxy,
                                                  tmp_path: Path) -> None:
    """A page of tags/list whose body breaks off (the referrers fallback lists the tags) is
    asked again like a manifest whose body breaks off, on a -v retry line, counted."""
    repo, img = image
    proxy = recproxy(src_registry.url)
    proxy.add(Fault("truncate", method="GET", path="/tags/list", offset=5))
    proc = ok(pull(tmp_path, f"{proxy.host}/{repo}:v1", "-v"))
    assert_exact(tmp_path / "out.tar", img)
    assert re.search(rf"retry GET http://{re.escape(proxy.host)}/v2/{re.escape(repo)}/tags/list: "
                     r"[^;\n]+; try 2 of 5 in [\d.]+ s", proc.stderr), proc.stderr
    assert [st for _, st in proxy.statuses("/tags/list")] == [200, 200]
    assert report(tmp_path)["retries"] == 1


@pytest.mark.parametrize("code,tries", [("MANIFEST_BLOB_UNKNOWN", 1), ("BLOB_UNKNOWN", 1),
                                        ("UNKNOWN", 3), ("UNAVAILABLE", 3)])
def test_a_5xx_naming_a_definite_error_is_not_retried(src_registry, image, recproxy,
                                                      tmp_path: Path, code: str,
                                                      tries: int) -> None:
    """A 500 whose body names what is wrong (the Debian registry answers a foreign layer's
    manifest with 500 MANIFEST_BLOB_UNKNOWN) is an answer: one request, the code in the
    error, no "after N tries". A 500 naming only a temporary code (UNKNOWN, UNAVAILABLE: what
    go-containerregistry retries too) is tried again."""
    repo, img = image
    proxy = recproxy(src_registry.url)
    layer = img.layers[0].digest
    proxy.add(Fault("status", method="GET", path=layer, status=500, code=code, times=None))
    proc = pull(tmp_path, f"{proxy.host}/{repo}:v1", "--retries", "2")
    assert proc.returncode == 3, proc.stderr
    assert len(proxy.seen("GET", layer)) == tries
    line = error_line(proc)
    assert layer in line and "HTTP 500" in line and code in line, line
    assert ("tries" in line) == (tries > 1), line
    assert report(tmp_path)["retries"] == tries - 1


@pytest.mark.parametrize("status,headers,code,exit_code", [
    (503, {}, "UNAVAILABLE", 3),
    (503, {"Retry-After": "1"}, "UNAVAILABLE", 6),
    (429, {}, "TOOMANYREQUESTS", 14),  # 429s through every try: the image waits
])
def test_persistent_failure_names_everything(src_registry, image, recproxy, tmp_path: Path,
                                             status: int, headers: dict, code: str,
                                             exit_code: int) -> None:
    repo, img = image
    proxy = recproxy(src_registry.url)
    layer = img.layers[1].digest
    proxy.add(Fault("status", method="GET", path=layer, status=status, headers=headers,
                    code=code, times=None))
    proc = pull(tmp_path, f"{proxy.host}/{repo}:v1", "--retries", "2")
    assert proc.returncode == exit_code, proc.stderr
    line = error_line(proc)
    # an image left for the next run names where it stopped as a URL (at GET URL)
    at = f"{proxy.host}/v2/{repo}" if exit_code == 14 else f"{proxy.host}/{repo}"
    for part in (at, layer, f"HTTP {status}", code, "injected by faultproxy"):
        assert part in line, (part, line)
    assert len(proxy.seen("GET", layer)) == 3  # --retries 3: three tries, no more
    assert not (tmp_path / "out.tar").exists()


def test_persistent_failure_on_a_tag(src_registry, image, recproxy, tmp_path: Path) -> None:
    repo, _ = image
    proxy = recproxy(src_registry.url)
    proxy.add(Fault("status", method="GET", path=r"/manifests/v1$", status=500,
                    code="UNKNOWN", times=None))
    proc = pull(tmp_path, f"{proxy.host}/{repo}:v1", "--retries", "1")
    assert proc.returncode == 3, proc.stderr
    line = error_line(proc)
    assert f"{proxy.host}/{repo}" in line and "tag v1" in line and "HTTP 500" in line


def test_connection_refused_is_retried_then_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = pull(tmp_path, f"127.0.0.1:{port}/some/repo:v1", "--retries", "2")
    assert proc.returncode == 3, proc.stderr
    assert f"127.0.0.1:{port}" in error_line(proc)
    # the report counts the connect retries (3 tries: 2 retries), and no bundle is not partial
    doc = report(tmp_path)
    assert doc["retries"] == 2 and doc["images"][0]["retries"] == 2, doc
    assert doc["exit_code"] == 3 and doc["bundle"] is None and doc["partial"] is False, doc


@pytest.mark.slow
def test_a_port_that_never_answers_costs_the_retry_budget_once(tmp_path: Path) -> None:
    """A port that accepts and never answers, on a loopback registry (HTTPS, then plain HTTP):
    `--retries 1` is two tries in all, one per scheme, not two of each; each line says which
    scheme it tried."""
    import socket

    with socket.socket() as s:  # the kernel accepts connections; nobody ever answers
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        host = f"127.0.0.1:{s.getsockname()[1]}"
        t0 = time.monotonic()
        proc = pull(tmp_path, f"{host}/some/repo:v1", "--retries", "1", "--read-timeout", "3",
                    "--connect-timeout", "3",
                    "-v")
        took = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr
    line = error_line(proc)
    assert f"https://{host}/v2/: timed out" in line and f"http://{host}/v2/: timed out" in line \
        and "after 2 tries" in line, line
    assert "--insecure-registry" not in proc.stderr, proc.stderr
    tries = re.findall(rf"GET (https?)://{re.escape(host)}/v2/ -> ", proc.stderr)
    assert tries == ["https", "http"], proc.stderr
    assert re.search(rf"retry GET https://{re.escape(host)}/v2/: timed out[^;]*; try 2 of 2 ",
                     proc.stderr), proc.stderr
    assert took < 2 * 3 + 4, took  # four tries took 4 x 3 s
    assert report(tmp_path)["retries"] == 1


# -- what -v and a long wait say -----------------------------------------------------------


@pytest.mark.slow
def test_verbose_lists_requests_retries_and_waits(src_registry, image, recproxy,
                                                  tmp_path: Path) -> None:
    """-v: one line per request (method, host, path, status, ms), per retry (why, try k of n,
    delay) and per Retry-After wait; without -v none of them."""
    repo, img = image
    proxy = recproxy(src_registry.url)
    proxy.add(Fault("status", method="GET", path=img.layers[0].digest, status=502))
    proxy.add(Fault("status", method="GET", path=img.layers[1].digest, status=429,
                    headers={"Retry-After": "1"}))
    proc = ok(pull(tmp_path, f"{proxy.host}/{repo}:v1", "--retries", "2", "-v"))
    err = proc.stderr
    assert re.search(rf"GET http://{re.escape(proxy.host)}/v2/{re.escape(repo)}/manifests/v1 -> 200 "
                     r"\(\d+ ms\)", err), err
    assert re.search(rf"GET http://{re.escape(proxy.host)}{blob_path(repo, img.layers[0].digest)} "
                     r"-> 502 \(\d+ ms\)", err), err
    assert re.search(rf"retry GET \S+{img.layers[0].digest}: HTTP 502; try 2 of 3 in "
                     r"[\d.]+ s", err), err
    assert f"{proxy.host} asks to wait 1 s (HTTP 429); waiting" in err, err
    proc = ok(pull(tmp_path, f"{proxy.host}/{repo}:v1", "--retries", "2", out="again.tar",
                   cache="cache2"))
    assert " -> 200 (" not in proc.stderr and "retry GET" not in proc.stderr


@pytest.mark.slow
def test_long_retry_after_is_announced_without_verbose(src_registry, image, recproxy,
                                                       tmp_path: Path) -> None:
    """A 10 s Retry-After is said on one line even without -v: a long silent pause looks
    like a hang."""
    repo, img = image
    proxy = recproxy(src_registry.url)
    proxy.add(Fault("status", method="GET", path=img.layers[2].digest, status=429,
                    headers={"Retry-After": "10"}))
    proc = ok(cli("pull", f"{proxy.host}/{repo}:v1", "-o", tmp_path / "out.tar",
                  "--cache", tmp_path / "cache", "--retries", "3"))
    lines = [ln for ln in proc.stderr.splitlines() if "asks to wait" in ln]
    assert len(lines) == 1 and f"{proxy.host} asks to wait 10 s (HTTP 429); waiting" in lines[0], \
        proc.stderr
    assert_exact(tmp_path / "out.tar", img)


def test_retry_after_beyond_the_cap_says_seconds(src_registry, image, recproxy,
                                                 tmp_path: Path) -> None:
    repo, img = image
    proxy = recproxy(src_registry.url)
    proxy.add(Fault("status", method="GET", path=img.layers[0].digest, status=429,
                    headers={"Retry-After": "3600"}, times=None))
    proc = pull(tmp_path, f"{proxy.host}/{repo}:v1", "--retries", "3")
    # the registry is left for the next run (the image waits: exit 14), asked nothing more
    assert proc.returncode == 14, proc.stderr
    assert f"rate limited by {proxy.host}: asked to wait 3600 s (HTTP 429), longer than " \
        "--max-wait 300 s; this image waits for the next run" in proc.stderr, proc.stderr


# -- redirects to object storage ---------------------------------------------------------


@pytest.fixture
def redirecting(registry_factory) -> Iterator[tuple[Registry, StorageServer]]:
    """A registry with Basic auth whose blob GETs answer 307 to a storage server on
    127.0.0.2 (distribution's `redirect` storage middleware), which serves its files."""
    storage = StorageServer().start()
    try:
        reg = registry_factory(htpasswd=(USER, PASSWORD), extra_config={
            "middleware": {"storage": [{"name": "redirect",
                                        "options": {"baseurl": storage.url}}]}})
        storage.root = reg.storage
        yield reg, storage
    finally:
        storage.stop()


def authfile(tmp_path: Path, host: str) -> Path:
    import base64

    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {host: {"auth": base64.b64encode(
        f"{USER}:{PASSWORD}".encode()).decode()}}}))
    return path


def test_redirect_followed_without_authorization(redirecting, repo_name: str,
                                                 rng: random.Random, tmp_path: Path) -> None:
    reg, storage = redirecting
    img = ig.make_image(rng, ig.AMD64, "oci", layer_size=3000)
    push_image(reg.url, repo_name, img, ["v1"], auth=(USER, PASSWORD))
    storage.requests.clear()
    ok(pull(tmp_path, f"{reg.host}/{repo_name}:v1", "--authfile", authfile(tmp_path, reg.host)))
    assert_exact(tmp_path / "out.tar", img)
    got = [r for r in storage.requests if r.method == "GET"]
    blobs = {img.config.digest, *(x.digest for x in img.layers)}
    assert {r.path.rsplit("/", 2)[1] for r in got} == {d.split(":")[1] for d in blobs}
    assert all(r.status == 200 for r in got)
    for r in storage.requests:
        assert not any(k.lower() == "authorization" for k in r.headers), r.headers
        assert PASSWORD not in json.dumps(r.headers)


def test_expired_redirect_is_asked_again(redirecting, repo_name: str, rng: random.Random,
                                         tmp_path: Path) -> None:
    reg, storage = redirecting
    img = ig.make_image(rng, ig.AMD64, "oci", n_layers=1, layer_size=3000)
    push_image(reg.url, repo_name, img, ["v1"], auth=(USER, PASSWORD))
    storage.requests.clear()
    storage.expire_next = 2  # the first two storage GETs: 403 "Request has expired"
    ok(pull(tmp_path, f"{reg.host}/{repo_name}:v1", "--authfile",
            authfile(tmp_path, reg.host), "-j", "1", "--retries", "2"))
    assert_exact(tmp_path / "out.tar", img)
    statuses = [r.status for r in storage.requests if r.method == "GET"]
    assert statuses.count(403) == 2 and statuses.count(200) == 2, statuses
    assert report(tmp_path)["retries"] >= 2


# -- timeouts -----------------------------------------------------------------------------


def test_slow_but_steady_body_is_not_cut(src_registry, image, recproxy,
                                         tmp_path: Path) -> None:
    """No total timeout: a body taking longer than --read-timeout overall, but never
    pausing that long, arrives in one go."""
    repo, img = image
    proxy = recproxy(src_registry.url)
    layer = img.layers[0].digest
    proxy.add(Fault("slow", method="GET", path=layer, chunk=512, delay=0.4))
    ok(pull(tmp_path, f"{proxy.host}/{repo}:v1", "--read-timeout", "2",
            "--connect-timeout", "5"))
    assert_exact(tmp_path / "out.tar", img)
    assert report(tmp_path)["retries"] == 0
    assert img.layers[0].size > 512 * 6  # so the transfer took > 2 s in all


def test_stalled_body_is_retried_with_range(src_registry, image, recproxy,
                                            tmp_path: Path) -> None:
    repo, img = image
    proxy = recproxy(src_registry.url)
    layer = img.layers[0].digest
    proxy.add(Fault("slow", method="GET", path=layer, chunk=1024, delay=30))
    ok(pull(tmp_path, f"{proxy.host}/{repo}:v1", "--read-timeout", "2"))
    assert_exact(tmp_path / "out.tar", img)
    first, second = proxy.seen("GET", layer)
    assert "Range" not in first.headers and second.headers.get("Range") == "bytes=1024-"
    assert ("GET", 206) in proxy.statuses(layer)


def test_hung_registry_fails_naming_the_blob(src_registry, image, recproxy,
                                             tmp_path: Path) -> None:
    repo, img = image
    proxy = recproxy(src_registry.url)
    layer = img.layers[2].digest
    proxy.stall = layer
    proc = pull(tmp_path, f"{proxy.host}/{repo}:v1", "--read-timeout", "1", "--retries", "1")
    assert proc.returncode == 3, proc.stderr
    line = error_line(proc)
    assert f"{proxy.host}/{repo}" in line and layer in line and "timed out" in line, line
    assert len(proxy.seen("GET", layer)) == 2


# -- uploads on load ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_bundle(src_registry: Registry, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[Path, ig.Image]:
    """A bundle with one ~20 MiB layer (chunked upload) and a small one (monolithic)."""
    rng = random.Random("test_faults.big_bundle")
    big = ig.make_layer(rng, 20 << 20, compressed=False)
    img = ig.make_image(rng, ig.AMD64, "oci", layers=[big, ig.make_layer(rng, 2000)])
    repo = f"test/big-{rng.getrandbits(32):08x}"
    push_image(src_registry.url, repo, img, ["v1"])
    d = tmp_path_factory.mktemp("big")
    ok(cli("pull", f"{src_registry.host}/{repo}:v1", "-o", d / "big.tar", "--cache", d / "c",
           "-q"))
    return d / "big.tar", img


def load(bundle: Path, to: str, *args: object) -> subprocess.CompletedProcess[str]:
    return cli("load", bundle, "--to", to, "-q", *args)


def check_loaded(reg: Registry, repo: str, img: ig.Image) -> None:
    body, _, _ = get_manifest(reg.url, repo, "v1")
    assert ig.sha256_digest(body) == img.digest
    for blob in img.blobs():
        assert blob_exists(reg.url, repo, blob.digest)


@pytest.mark.slow
def test_upload_monolithic_small_one_patch_big(big_bundle, dst_registry: Registry, recproxy,
                                               repo_name: str) -> None:
    """A blob over 16 MiB goes in one PATCH of all its bytes, then an empty PUT: no chunk
    waits for the registry's answer to the one before (16 MiB PATCHes made a 1 GiB sync take
    1.8x skopeo's time); a small one in one PUT."""
    bundle, img = big_bundle
    big, small = img.layers
    proxy = recproxy(dst_registry.url)
    ok(load(bundle, f"{proxy.host}/{repo_name}"))
    repo = f"{repo_name}/{_source_repo(bundle)}"
    check_loaded(dst_registry, repo, img)
    patches = [s for s in proxy.seen("PATCH")]
    assert [(s.headers.get("Content-Range"), s.headers.get("Content-Length"))
            for s in patches] == [(f"0-{big.size - 1}", str(big.size))]
    puts = proxy.seen("PUT", "digest=")
    by_digest = {re.search(r"digest=sha256(?::|%3A)([0-9a-f]+)", s.path).group(1): s
                 for s in puts}
    assert by_digest[big.digest.split(":")[1]].headers.get("Content-Length") == "0"
    assert by_digest[small.digest.split(":")[1]].headers.get("Content-Length") == \
        str(small.size)


def _source_repo(bundle: Path) -> str:
    [entry] = check_layout(bundle).index["manifests"]
    name = entry["annotations"]["org.opencontainers.image.ref.name"]
    return name.split("/", 1)[1].rsplit(":", 1)[0]


@pytest.mark.slow
def test_failed_patch_is_resumed_not_restarted(big_bundle, dst_registry: Registry, recproxy,
                                               repo_name: str) -> None:
    """The one PATCH fails (HTTP 500): the session's status (GET) says where the registry
    got to, and the rest goes in the same session, not a new one."""
    bundle, img = big_bundle
    big = img.layers[0]
    proxy = recproxy(dst_registry.url)
    proxy.add(Fault("status", method="PATCH", path=r"/blobs/uploads/", status=500))
    proc = ok(load(bundle, f"{proxy.host}/{repo_name}", "-v"))
    check_loaded(dst_registry, f"{repo_name}/{_source_repo(bundle)}", img)
    # the retry is one like any other: on its -v line
    assert re.search(rf"retry PATCH http://{re.escape(proxy.host)}/v2/\S+/blobs/uploads/\S+: "
                     r"[^;\n]*HTTP 500[^;\n]*; try 2 of 5 in [\d.]+ s", proc.stderr), proc.stderr
    ranges = [s.headers.get("Content-Range") for s in proxy.seen("PATCH")]
    assert ranges == [f"0-{big.size - 1}"] * 2, ranges
    assert ("GET", 204) in [(m, st) for m, p, st in proxy.requests if "/uploads/" in p]
    assert len(proxy.seen("POST", "/blobs/uploads/")) == len(img.blobs())  # no new session


@pytest.mark.slow
def test_a_registry_refusing_one_big_body_gets_chunks_resumed_mid_blob(
        big_bundle, dst_registry: Registry, recproxy, repo_name: str) -> None:
    """A proxy in front of the registry refuses so large a body (413, nginx's
    client_max_body_size): the blob goes in 16 MiB PATCHes in the same session, and a chunk
    that fails is sent again from the offset the registry reports (its GET's Range)."""
    bundle, img = big_bundle
    big = img.layers[0]
    proxy = recproxy(dst_registry.url)
    proxy.add(Fault("status", method="PATCH", path=r"/blobs/uploads/", status=413,
                    code="SIZE_INVALID"))
    proxy.add(Fault("status", method="PATCH", path=r"/blobs/uploads/", status=500, skip=1))
    ok(load(bundle, f"{proxy.host}/{repo_name}"))
    check_loaded(dst_registry, f"{repo_name}/{_source_repo(bundle)}", img)
    mib16 = 16 << 20
    ranges = [s.headers.get("Content-Range") for s in proxy.seen("PATCH")]
    assert ranges == [f"0-{big.size - 1}", f"0-{mib16 - 1}", f"{mib16}-{big.size - 1}",
                      f"{mib16}-{big.size - 1}"], ranges
    assert len(proxy.seen("POST", "/blobs/uploads/")) == len(img.blobs())


@pytest.mark.slow
def test_a_failed_closing_put_is_sent_again_not_the_blob(big_bundle, dst_registry: Registry,
                                                         recproxy, repo_name: str) -> None:
    """The empty PUT that closes the one-PATCH upload fails (HTTP 500 from a gateway): the
    session holds every byte (its GET says so), so the PUT goes again in it; the blob's
    bytes are not sent a second time in a new session."""
    bundle, img = big_bundle
    big = img.layers[0]
    proxy = recproxy(dst_registry.url)
    proxy.add(Fault("status", method="PUT", path=big.digest.split(":")[1], status=500))
    ok(load(bundle, f"{proxy.host}/{repo_name}"))
    check_loaded(dst_registry, f"{repo_name}/{_source_repo(bundle)}", img)
    assert len(proxy.seen("PATCH")) == 1
    assert [s.status for s in proxy.seen("PUT", big.digest.split(":")[1])] == [500, 201]
    assert len(proxy.seen("POST", "/blobs/uploads/")) == len(img.blobs())


def test_failed_upload_from_a_zstd_bundle_is_sent_again(
        big_bundle, dst_registry: Registry, recproxy, repo_name: str, tmp_path: Path) -> None:
    """A .tar.zst is a stream that can't be re-read from the middle of a blob; a 502 on a
    PATCH and a 503 on a monolithic PUT are still retried (the blob goes again on the next
    pass over the bundle), not the end of the load."""
    bundle, img = big_bundle
    big, small = img.layers
    zst = tmp_path / "big.tar.zst"
    subprocess.run(["zstd", "-q", "-1", str(bundle), "-o", str(zst)], check=True)
    proxy = recproxy(dst_registry.url)
    proxy.add(Fault("status", method="PATCH", path=r"/blobs/uploads/", status=502))
    proxy.add(Fault("status", method="PUT", path=small.digest.split(":")[1], status=503))
    ok(load(zst, f"{proxy.host}/{repo_name}", "--report", tmp_path / "r.json"))
    check_loaded(dst_registry, f"{repo_name}/{_source_repo(bundle)}", img)
    assert json.loads((tmp_path / "r.json").read_text())["retries"] >= 2


def test_a_zstd_bundle_refused_one_big_body_is_sent_in_chunks_next_pass(
        big_bundle, dst_registry: Registry, recproxy, repo_name: str, tmp_path: Path) -> None:
    """A 413 on a .tar.zst's PATCH: the stream can't go back, so the blob waits for the
    next pass over the bundle, which sends it in 16 MiB PATCHes."""
    bundle, img = big_bundle
    big = img.layers[0]
    zst = tmp_path / "big.tar.zst"
    subprocess.run(["zstd", "-q", "-1", str(bundle), "-o", str(zst)], check=True)
    proxy = recproxy(dst_registry.url)
    proxy.add(Fault("status", method="PATCH", path=r"/blobs/uploads/", status=413))
    ok(load(zst, f"{proxy.host}/{repo_name}"))
    check_loaded(dst_registry, f"{repo_name}/{_source_repo(bundle)}", img)
    mib16 = 16 << 20
    ranges = [s.headers.get("Content-Range") for s in proxy.seen("PATCH")]
    assert ranges == [f"0-{big.size - 1}", f"0-{mib16 - 1}", f"{mib16}-{big.size - 1}"], ranges


def test_report_of_a_failed_load_says_what_was_pushed(
        big_bundle, dst_registry: Registry, recproxy, repo_name: str, tmp_path: Path) -> None:
    """The blobs went, the tag did not: the report (for the monitor at 3 a.m.) counts what
    was pushed rather than saying null for all of it."""
    bundle, img = big_bundle
    proxy = recproxy(dst_registry.url)
    proxy.add(Fault("status", method="PUT", path=r"/manifests/v1", status=500, times=None))
    rep = tmp_path / "r.json"
    proc = load(bundle, f"{proxy.host}/{repo_name}", "--report", rep, "--retries", "0")
    assert proc.returncode == 3, proc.stderr
    r = json.loads(rep.read_text())
    assert r["exit_code"] == 3 and "v1" in r["error"]
    assert r["blobs_pushed"] == len(img.blobs())
    assert r["bytes_pushed"] == sum(b.size for b in img.blobs())
    assert r["manifests_pushed"] == 0 and r["tags"] == []


@pytest.mark.slow
def test_loading_the_same_bundle_again_pushes_nothing(
        src_registry: Registry, dst_registry: Registry, recproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """The second night's load of the same bundle: every blob and manifest is there, so no
    PUT, POST or PATCH at all (a registry with immutable tags is not asked to rewrite one);
    the tags are still listed, exit 0."""
    imgs = [ig.make_image(rng, p, "oci", layer_size=2000) for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, "oci")
    push_image(src_registry.url, repo_name, index, ["v1"])
    ok(pull(tmp_path, f"{src_registry.host}/{repo_name}:v1", "--platform", "all"))
    proxy = recproxy(dst_registry.url)
    ok(load(tmp_path / "out.tar", f"{proxy.host}/again"))
    assert proxy.seen("PUT", "/manifests/v1")
    proxy.log.clear()
    rep = tmp_path / "r.json"
    proc = ok(cli("load", tmp_path / "out.tar", "--to", f"{proxy.host}/again", "--report", rep))
    assert f"{proxy.host}/again/{repo_name}:v1" in proc.stdout
    assert [(s.method, s.path) for s in proxy.log if s.method not in ("GET", "HEAD")] == []
    r = json.loads(rep.read_text())
    assert (r["blobs_pushed"], r["manifests_pushed"], r["manifests_present"]) == (0, 0, 3), r
    assert get_manifest(dst_registry.url, f"again/{repo_name}", "v1")[0] == index.manifest.data


@pytest.mark.slow
def test_retry_after_on_an_upload_chunk_is_honoured(big_bundle, dst_registry: Registry,
                                                    recproxy, repo_name: str) -> None:
    """A 429 with Retry-After on a PATCH (a one-shot body, retried by the upload itself):
    the next request to the registry waits as long as it was asked, however many times."""
    bundle, img = big_bundle
    proxy = recproxy(dst_registry.url)
    proxy.add(Fault("status", method="PATCH", path=r"/blobs/uploads/", status=429, times=3,
                    headers={"Retry-After": "2"}))
    ok(load(bundle, f"{proxy.host}/{repo_name}"))
    check_loaded(dst_registry, f"{repo_name}/{_source_repo(bundle)}", img)
    # the big blob's chunks and status checks (the small blobs' PUTs may be in flight)
    log = [s for s in proxy.seen() if s.method in ("PATCH", "GET") and "/uploads/" in s.path]
    limited = [i for i, s in enumerate(log) if s.status == 429]
    assert len(limited) == 3
    for i in limited:
        assert log[i + 1].when - log[i].when >= 1.9, (log[i].path, log[i + 1].path)


@pytest.mark.slow
def test_upload_session_lost_mid_blob_starts_a_new_one(big_bundle, dst_registry: Registry,
                                                       recproxy, repo_name: str) -> None:
    """The registry restarts mid-blob: the PATCH breaks off and the session's status answers
    404 BLOB_UPLOAD_INVALID (what distribution said after a restart here). The session is
    gone, not the repository: the blob is sent again in a new session, exit 0 (was exit 5)."""
    bundle, img = big_bundle
    proxy = recproxy(dst_registry.url)
    proxy.add(Fault("status", method="PATCH", path=r"/blobs/uploads/", status=502))
    proxy.add(Fault("status", method="GET", path=r"/blobs/uploads/", status=404,
                    code="BLOB_UPLOAD_INVALID"))
    ok(load(bundle, f"{proxy.host}/{repo_name}"))
    check_loaded(dst_registry, f"{repo_name}/{_source_repo(bundle)}", img)
    assert len(proxy.seen("POST", "/blobs/uploads/")) == len(img.blobs()) + 1  # one again


def test_failed_monolithic_put_is_restarted(src_registry: Registry, dst_registry: Registry,
                                            recproxy, repo_name: str, rng: random.Random,
                                            tmp_path: Path) -> None:
    img = ig.make_image(rng, ig.AMD64, "docker", layer_size=3000)
    push_image(src_registry.url, repo_name, img, ["v1"])
    ok(pull(tmp_path, f"{src_registry.host}/{repo_name}:v1"))
    proxy = recproxy(dst_registry.url)
    proxy.add(Fault("status", method="PUT", path=img.layers[0].digest.split(":")[1],
                    status=500))
    proc = ok(load(tmp_path / "out.tar", f"{proxy.host}/x", "-v"))
    check_loaded(dst_registry, f"x/{repo_name}", img)
    puts = [s.status for s in proxy.seen("PUT", img.layers[0].digest.split(":")[1])]
    assert puts == [500, 201]
    assert re.search(r"retry PUT \S+/blobs/uploads/\S+: [^;\n]*HTTP 500[^;\n]*; a new upload "
                     r"session; try 2 of 5 in [\d.]+ s", proc.stderr), proc.stderr


def test_bad_bytes_in_bundle_fail_the_upload_with_exit_7(
        src_registry: Registry, dst_registry: Registry, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """Not a network error: no retries, the integrity exit code, nothing tagged."""
    import tarfile

    img = ig.make_image(rng, ig.AMD64, "oci", layer_size=3000)
    push_image(src_registry.url, repo_name, img, ["v1"])
    ok(pull(tmp_path, f"{src_registry.host}/{repo_name}:v1"))
    bundle = tmp_path / "out.tar"
    with tarfile.open(bundle) as tf:
        at = tf.getmember("blobs/sha256/" + img.layers[1].digest.split(":")[1]).offset_data
    with open(bundle, "r+b") as f:
        f.seek(at + 100)
        byte = f.read(1)
        f.seek(at + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = load(bundle, f"{dst_registry.host}/bad", "-j", "1")
    assert proc.returncode == 7, proc.stderr
    assert img.layers[1].digest in error_line(proc)
    status, _, _ = _get(f"{dst_registry.url}/v2/bad/{repo_name}/manifests/v1")
    assert status == 404


def _get(url: str) -> tuple[int, dict, bytes]:
    import urllib.error

    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


@pytest.mark.parametrize("relative", [False, True])
def test_upload_location_relative_and_absolute(registry_factory, src_registry: Registry,
                                               repo_name: str, rng: random.Random,
                                               tmp_path: Path, relative: bool) -> None:
    dst = registry_factory(extra_config={"http": {"relativeurls": relative}})
    req = urllib.request.Request(f"{dst.url}/v2/probe/blobs/uploads/", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=30) as resp:
        location = resp.headers["Location"]
    assert location.startswith("/v2/") if relative else location.startswith("http://")
    img = ig.make_image(rng, ig.AMD64, "oci", layer_size=3000)
    push_image(src_registry.url, repo_name, img, ["v1"])
    ok(pull(tmp_path, f"{src_registry.host}/{repo_name}:v1"))
    ok(load(tmp_path / "out.tar", f"{dst.host}/p"))
    check_loaded(dst, f"p/{repo_name}", img)


def test_cross_repository_mount(src_registry: Registry, dst_registry: Registry, recproxy,
                                repo_name: str, rng: random.Random, tmp_path: Path) -> None:
    shared = ig.make_layer(rng, 4000)
    a = ig.make_image(rng, ig.AMD64, layers=[shared, ig.make_layer(rng, 100)])
    b = ig.make_image(rng, ig.ARM64, layers=[shared, ig.make_layer(rng, 100)])
    push_image(src_registry.url, f"{repo_name}/a", a, ["v1"])
    push_image(src_registry.url, f"{repo_name}/b", b, ["v1"])
    ok(cli("pull", f"{src_registry.host}/{repo_name}/a:v1", f"{src_registry.host}/"
           f"{repo_name}/b:v1", "-o", tmp_path / "ab.tar", "--cache", tmp_path / "c", "-q"))
    proxy = recproxy(dst_registry.url)
    ok(cli("load", tmp_path / "ab.tar", "--to", f"{proxy.host}/m", "--report",
           tmp_path / "report.json", "-q"))
    assert report(tmp_path)["blobs_mounted"] == 1
    [mount] = proxy.seen("POST", "mount=")
    assert mount.status == 201 and shared.digest.split(":")[1] in mount.path
    # pushed once, mounted into the other repository
    assert len(proxy.seen("PUT", shared.digest.split(":")[1])) == 1
    check_loaded(dst_registry, f"m/{repo_name}/a", a)
    check_loaded(dst_registry, f"m/{repo_name}/b", b)



@pytest.mark.parametrize("size", [12 << 20, 17 << 20], ids=["put", "patch"])
async def test_a_failed_upload_closes_its_body(dst_registry, recproxy, repo_name, size) -> None:
    """The target answers a blob's upload (its one PUT up to 16 MiB, its PATCH above) with
    HTTP 500 while the body is still being sent: the body's stream (in a sync, a download
    from the source holding one of its `max_concurrency` slots) was left suspended, closed
    only when the garbage collector finalised it; upload_blob now closes every body it
    opened before it raises, whichever request failed."""
    from mirror.manifest import Descriptor

    data = random.Random(size).randbytes(size)
    desc = Descriptor("application/octet-stream", ig.sha256_digest(data), size)
    proxy = recproxy(dst_registry.url)
    proxy.add(Fault("status", method="PUT" if size < 16 << 20 else "PATCH",
                    path="/blobs/uploads/", status=500, times=None, delay=0.5))
    bodies = []  # held here: none can be finalised by the collector

    def body(offset: int):
        async def chunks():
            for i in range(offset, size, 1 << 20):
                yield data[i:i + (1 << 20)]
        bodies.append(chunks())
        return bodies[-1]

    async with Transport(policy=RetryPolicy(tries=2, base_delay=0.01)) as t:
        with pytest.raises(RegistryError) as e:
            await Client(t).upload_blob(proxy.host, repo_name, desc, body, seekable=True)
    assert e.value.status == 500
    assert len(bodies) >= 2  # one per try (and per resumed PATCH)
    assert all(b.ag_frame is None for b in bodies), "a body left open"
