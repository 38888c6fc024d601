"""Issue 3, resume: a download broken mid-body continues with a Range request (206 checked
against Content-Range) instead of starting over; a server ignoring Range restarts the blob
cleanly; corrupt bytes never reach the cache or a bundle; and a pull killed with SIGKILL in the
middle of a large blob is finished by the next run from the partial file it left.

Faults come from the FaultProxy in front of the real registry; its byte counters show what
was downloaded again and what was not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mirror import mediatypes as mt
from mirror.errors import EXIT_CODES as EXIT
from mirror.manifest import Descriptor
from mirror.registry.client import Client
from mirror.registry.network import TransferError
from mirror.registry.transport import RetryPolicy, Transport
from mirror.store.direct import ALIGN, align_down
from tests.support import imagegen as ig
from tests.support.faultproxy import Fault
from tests.support.oracle import (
    ROOT,
    mirror_cmd,
    mirror_env,
    mirror_ok,
    run,
    run_mirror,
    stop_as_it_leaves,
    stopped_mirror,
)
from tests.support.pusher import blob_exists, corrupt_list, get_manifest, push_image
from tests.support.registry import Registry
from tests.test_faults import (
    RecordingProxy,
    assert_exact,
    error_line,
    ok,
    pull,
    recproxy,
    report,
)

__all__ = ["recproxy"]  # the fixture, shared with test_faults

LAYER = 1 << 20  # random bytes: gzip can't shrink them


@pytest.fixture
def image(src_registry: Registry, repo_name: str, rng: random.Random) -> tuple[str, ig.Image]:
    """One ~1 MiB layer and a small one."""
    img = ig.make_image(rng, ig.AMD64, "oci",
                        layers=[ig.make_layer(rng, LAYER), ig.make_layer(rng, 500)])
    push_image(src_registry.url, repo_name, img, ["v1"])
    return repo_name, img


def blob_path(repo: str, digest: str) -> str:
    return f"/v2/{repo}/blobs/{digest}"


def cache_blob(cache: Path, digest: str) -> Path:
    return cache / "blobs" / "sha256" / digest.split(":", 1)[1]


def partial_file(cache: Path, digest: str) -> Path:
    return cache / "partial" / f"sha256-{digest.split(':', 1)[1]}"


async def read_blob(client: Client, registry: str, repo: str, blob: ig.Blob,
                    offset: int = 0) -> tuple[bytes, TransferError | None]:
    """What `open_blob` yields from `offset`, and the TransferError it ended with, if any."""
    desc = Descriptor(blob.media_type, blob.digest, blob.size)
    got = bytearray()
    try:
        async with contextlib.aclosing(client.open_blob(registry, repo, desc, offset)) as it:
            async for chunk in it:
                got += chunk
    except TransferError as e:
        return bytes(got), e
    return bytes(got), None


async def test_open_blob_streams_from_an_offset(src_registry, image, recproxy) -> None:
    """The registry client's byte stream of a blob: from byte 0, from an offset (Range,
    206), from an offset where the registry ignores Range (200: the first bytes skipped), and
    a body reset mid-way ends in TransferError after the bytes that came, from which a second
    open goes on."""
    repo, img = image
    big = img.layers[0]
    proxy: RecordingProxy = recproxy(src_registry.url)
    async with Transport(policy=RetryPolicy(tries=2)) as t:
        client = Client(t)
        assert await read_blob(client, proxy.host, repo, big) == (big.data, None)
        assert await read_blob(client, proxy.host, repo, big, 300_000) == (big.data[300_000:],
                                                                          None)
        assert proxy.seen("GET", big.digest)[-1].headers["Range"] == "bytes=300000-"
        assert proxy.statuses(big.digest)[-1] == ("GET", 206)
        proxy.add(Fault("ignore_range", method="GET", path=big.digest))
        assert await read_blob(client, proxy.host, repo, big, 300_000) == (big.data[300_000:],
                                                                          None)
        assert proxy.statuses(big.digest)[-1] == ("GET", 200)
        proxy.add(Fault("reset_after", method="GET", path=big.digest, offset=400_000))
        head, err = await read_blob(client, proxy.host, repo, big)
        assert err is not None and 0 < len(head) <= 400_000 and big.data.startswith(head), err
        assert await read_blob(client, proxy.host, repo, big, len(head)) == (
            big.data[len(head):], None)


def test_reset_mid_body_resumes_with_range(src_registry, image, recproxy,
                                           tmp_path: Path) -> None:
    repo, img = image
    big = img.layers[0]
    proxy: RecordingProxy = recproxy(src_registry.url)
    proxy.add(Fault("reset_after", method="GET", path=big.digest, offset=400_000))
    ok(pull(tmp_path, f"{proxy.host}/{repo}:v1"))
    assert_exact(tmp_path / "out.tar", img)
    first, second = proxy.seen("GET", big.digest)
    assert "Range" not in first.headers
    start = int(second.headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 400_000 and second.status == 206
    served = proxy.bytes_by_path[blob_path(repo, big.digest)]
    assert served < big.size + 400_000 and served < 1.5 * big.size  # not twice
    assert not partial_file(tmp_path / "cache", big.digest).exists()


def test_a_body_reset_is_retried_on_a_verbose_line(src_registry, image, recproxy,
                                                   tmp_path: Path) -> None:
    """A retry after a body broke off is one like any other: counted in the report and said
    on a -v line (method, URL, why, try k of n, delay)."""
    repo, img = image
    big = img.layers[0]
    proxy: RecordingProxy = recproxy(src_registry.url)
    proxy.add(Fault("reset_after", method="GET", path=big.digest, offset=400_000))
    proc = ok(pull(tmp_path, f"{proxy.host}/{repo}:v1", "-v"))
    assert_exact(tmp_path / "out.tar", img)
    assert re.search(rf"retry GET http://{re.escape(proxy.host)}{blob_path(repo, big.digest)}: "
                     r"[^;\n]+; try 2 of 5 in [\d.]+ s", proc.stderr), proc.stderr
    assert json.loads((tmp_path / "report.json").read_text())["retries"] == 1


def test_truncated_body_is_resumed(src_registry, image, recproxy, tmp_path: Path) -> None:
    repo, img = image
    big = img.layers[0]
    proxy = recproxy(src_registry.url)
    proxy.add(Fault("truncate", method="GET", path=big.digest, offset=300_000))
    ok(pull(tmp_path, f"{proxy.host}/{repo}:v1"))
    assert_exact(tmp_path / "out.tar", img)
    first, second = proxy.seen("GET", big.digest)
    assert second.headers.get("Range") == "bytes=300000-" and second.status == 206
    assert proxy.bytes_by_path[blob_path(repo, big.digest)] == big.size


def test_short_body_with_a_matching_length_is_resumed(src_registry, image, recproxy,
                                                      tmp_path: Path) -> None:
    """A proxy or CDN that cut the body and sent a Content-Length to match: the blob is
    incomplete (resumed with Range), not bytes that fail verification (exit 7)."""
    repo, img = image
    big = img.layers[0]
    proxy = recproxy(src_registry.url)
    proxy.add(Fault("short", method="GET", path=big.digest, offset=300_000))
    ok(pull(tmp_path, f"{proxy.host}/{repo}:v1", "--retries", "1"))
    assert_exact(tmp_path / "out.tar", img)
    first, second = proxy.seen("GET", big.digest)
    assert first.status == 200
    assert second.headers.get("Range") == "bytes=300000-" and second.status == 206
    assert proxy.bytes_by_path[blob_path(repo, big.digest)] == big.size


def test_server_ignoring_range_restarts_cleanly(src_registry, image, recproxy,
                                                tmp_path: Path) -> None:
    repo, img = image
    big = img.layers[0]
    proxy = recproxy(src_registry.url)
    proxy.add(Fault("reset_after", method="GET", path=big.digest, offset=400_000))
    proxy.add(Fault("ignore_range", method="GET", path=big.digest))
    ok(pull(tmp_path, f"{proxy.host}/{repo}:v1"))
    assert_exact(tmp_path / "out.tar", img)
    first, second = proxy.seen("GET", big.digest)
    assert "Range" in second.headers and second.status == 200  # answered with everything
    assert proxy.bytes_by_path[blob_path(repo, big.digest)] <= big.size + 400_000


def test_persistent_corruption_exit_7_and_nothing_stored(src_registry, image, recproxy,
                                                         tmp_path: Path) -> None:
    repo, img = image
    big = img.layers[0]
    proxy = recproxy(src_registry.url)
    proxy.add(Fault("flip_byte", method="GET", path=big.digest, offset=12345, times=None))
    proc = pull(tmp_path, f"{proxy.host}/{repo}:v1")
    assert proc.returncode == 7, proc.stderr
    line = error_line(proc)
    assert big.digest in line and "digest mismatch" in line, line
    cache = tmp_path / "cache"
    assert not cache_blob(cache, big.digest).exists()
    assert not partial_file(cache, big.digest).exists()
    assert not (tmp_path / "out.tar").exists()
    assert not (tmp_path / "out.tar.partial").exists()
    assert len(proxy.seen("GET", big.digest)) == 2  # fetched once more from byte 0, then no


def test_every_blob_corrupt_one_error_line_no_stray_traceback(src_registry, recproxy,
                                                            repo_name: str, rng: random.Random,
                                                            tmp_path: Path) -> None:
    """Every blob of a 3-platform image corrupted on the way: the first digest mismatch stops
    the run, the others' downloads are cancelled while their threads still check the digest.
    Their own mismatches must be awaited: asyncio printed `Future exception was never
    retrieved` and a traceback per blob on stderr after the one-line error."""
    _, ref = corrupt_list(src_registry.url, recproxy, repo_name, rng)
    for n in range(3):  # the race is the threads': each run has its chance
        proc = pull(tmp_path, ref, "--retries", "0", cache=f"cache{n}")
        assert proc.returncode == 7, proc.stderr
        assert "digest mismatch" in error_line(proc)
        assert "Traceback" not in proc.stderr and "never retrieved" not in proc.stderr, \
            proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_transient_corruption_is_refetched(src_registry, image, recproxy,
                                           tmp_path: Path) -> None:
    repo, img = image
    big = img.layers[0]
    proxy = recproxy(src_registry.url)
    proxy.add(Fault("flip_byte", method="GET", path=big.digest, offset=777_777))
    ok(pull(tmp_path, f"{proxy.host}/{repo}:v1"))
    assert_exact(tmp_path / "out.tar", img)
    first, second = proxy.seen("GET", big.digest)
    assert "Range" not in second.headers and second.status == 200  # from byte 0


# a manifest altered on its way, its answer's headers (Docker-Content-Digest) the registry's:
# one space more (still JSON), or a byte flipped (no longer JSON)
ALTERED = {"insert": {"offset": 1, "body": b" "}, "flip_byte": {"offset": 40}}


def altered(data: bytes, kind: str) -> bytes:
    """What the ALTERED fault `kind` makes of `data`."""
    if kind == "insert":
        return data[:1] + b" " + data[1:]
    buf = bytearray(data)
    buf[40] ^= 0xFF
    return bytes(buf)


def by_tag(command: str, tmp_path: Path, ref: str) -> subprocess.CompletedProcess[str]:
    """`mirror pull` (the bundle, its report) or `mirror lock` of `ref`, each writing the
    lock file tmp_path/images.lock."""
    lock = ("--lock-file", tmp_path / "images.lock")
    if command == "pull":
        return pull(tmp_path, ref, *lock)
    return run_mirror("lock", ref, *lock, "--cache", tmp_path / "cache", "-q")


@pytest.mark.parametrize("command", ["pull", "lock"])
@pytest.mark.parametrize("kind", list(ALTERED))
def test_a_manifest_altered_by_tag_once_is_fetched_again(src_registry, image, recproxy,
                                                         tmp_path: Path, kind: str,
                                                         command: str) -> None:
    """A tag's manifest whose bytes do not hash to the Docker-Content-Digest the registry
    sent with them (altered on the way) is damaged, as a blob that does not match its digest:
    fetched once more, and the run goes on with the registry's bytes. The bundle, the
    report and the lock file name the registry's digest (they named the altered bytes' one,
    which the registry never had; a flipped byte was exit 9, `not JSON`)."""
    repo, img = image
    proxy = recproxy(src_registry.url)
    proxy.add(Fault(kind, method="GET", path=rf"/{repo}/manifests/v1$", **ALTERED[kind]))
    ref = f"{proxy.host}/{repo}:v1"
    ok(by_tag(command, tmp_path, ref))
    assert [s.status for s in proxy.seen("GET", f"/{repo}/manifests/v1")] == [200, 200]
    entry = json.loads((tmp_path / "images.lock").read_text())["images"][ref]
    assert entry["sourceDigest"] == entry["digest"] == img.digest, entry
    if command == "pull":
        assert_exact(tmp_path / "out.tar", img)
        [doc] = report(tmp_path)["images"]
        assert doc["digest"] == doc["source_digest"] == img.digest, doc


@pytest.mark.parametrize("command", ["pull", "lock"])
@pytest.mark.parametrize("kind", list(ALTERED))
def test_a_manifest_altered_by_tag_every_time_stops_the_run_with_exit_7(
        src_registry, image, recproxy, tmp_path: Path, kind: str, command: str) -> None:
    """Altered on every GET: after the second, exit 7 (not 9: the bytes are damaged, whether
    they are JSON or not), one line naming the registry, repository and tag and both digests;
    no bundle, no lock file, no digest in the report."""
    repo, img = image
    proxy = recproxy(src_registry.url)
    proxy.add(Fault(kind, method="GET", path=rf"/{repo}/manifests/v1$", times=None,
                    **ALTERED[kind]))
    ref = f"{proxy.host}/{repo}:v1"
    proc = by_tag(command, tmp_path, ref)
    assert proc.returncode == 7, proc.stderr
    line = error_line(proc)
    bad = ig.sha256_digest(altered(img.manifest.data, kind))
    assert f"{ref}: digest mismatch: expected {img.digest}" in line and bad in line, line
    assert "Docker-Content-Digest" in line, line
    assert len(proxy.seen("GET", f"/{repo}/manifests/v1")) == 2
    assert not (tmp_path / "images.lock").exists()
    if command == "pull":
        assert not (tmp_path / "out.tar").exists()
        [doc] = report(tmp_path)["images"]
        assert doc["digest"] is None and doc["source_digest"] is None, doc
        assert doc["error_code"] == 7 and doc["manifests"] == [], doc


def went_on_or_stopped(proc: subprocess.CompletedProcess[str], tmp_path: Path, img: ig.Image,
                       times: int | None, out: str = "out.tar") -> str | None:
    """A pull whose manifest came damaged once (`times` 1) went on: exit 0, the bundle
    `img`'s (None); damaged every time, it stopped: exit 7, no bundle, its error line."""
    if times == 1:
        ok(proc)
        assert_exact(tmp_path / out, img)
        return None
    assert proc.returncode == 7, proc.stderr
    assert not (tmp_path / out).exists()
    return error_line(proc)


@pytest.mark.parametrize("times", [1, None], ids=["once", "always"])
def test_a_manifest_damaged_by_digest_is_fetched_once_more(src_registry, image, recproxy,
                                                          tmp_path: Path,
                                                          times: int | None) -> None:
    """A manifest asked for by digest (a pinned image; an index's entries alike) with a byte
    flipped on the way: fetched once more, as a blob is; damaged once, the pull goes on
    (exit 0, the bundle the registry's); damaged every time, exit 7 after the second GET
    (it stopped the run at the first)."""
    repo, img = image
    proxy = recproxy(src_registry.url)
    proxy.add(Fault("flip_byte", method="GET", path=f"/manifests/{img.digest}", offset=30,
                    times=times))
    proc = pull(tmp_path, f"{proxy.host}/{repo}@{img.digest}")
    assert len(proxy.seen("GET", f"/{repo}/manifests/{img.digest}")) == 2
    line = went_on_or_stopped(proc, tmp_path, img, times)
    assert line is None or \
        f"{repo}@{img.digest}: digest mismatch: expected {img.digest}" in line, line


@pytest.mark.parametrize("times", [1, None], ids=["once", "always"])
def test_a_moved_tag_answered_without_its_digest_is_checked_against_the_head(
        src_registry, recproxy, repo_name: str, rng: random.Random, tmp_path: Path,
        times: int | None) -> None:
    """A rerun asks a tag the cache's store knows with a HEAD; one that says the tag moved
    to a manifest not stored yet is read with a GET. That GET's answer naming no digest (the
    header is optional), its bytes are checked against the digest the HEAD named: altered on
    the way once, fetched again (exit 0, the new image); every time, exit 7 naming both."""
    old = ig.make_image(rng, ig.AMD64, "oci", n_layers=1, layer_size=2000)
    new = ig.make_image(rng, ig.AMD64, "oci", n_layers=1, layer_size=2000)
    push_image(src_registry.url, repo_name, old, ["v1"])
    proxy = recproxy(src_registry.url)
    ref = f"{proxy.host}/{repo_name}:v1"
    ok(pull(tmp_path, ref))
    push_image(src_registry.url, repo_name, new, ["v1"])
    proxy.add(Fault("insert", method="GET", path=rf"/{repo_name}/manifests/v1$", times=times,
                    offset=1, body=b" ", headers={"Docker-Content-Digest": ""}))
    n = len(proxy.seen(path=f"/{repo_name}/manifests/v1"))
    proc = pull(tmp_path, ref, out="new.tar")
    asked = [s.method for s in proxy.seen(path=f"/{repo_name}/manifests/v1")][n:]
    assert asked == ["HEAD", "GET", "GET"], asked
    line = went_on_or_stopped(proc, tmp_path, new, times, "new.tar")
    bad = ig.sha256_digest(altered(new.manifest.data, "insert"))
    assert line is None or f"{ref}: digest mismatch: expected {new.digest} (the digest a " \
        "HEAD of the tag named)" in line and bad in line, line


@pytest.mark.parametrize("header", [True, False], ids=["matching", "none"])
async def test_a_tag_whose_bytes_are_not_json_as_named_is_exit_9(tmp_path: Path,
                                                                 header: bool) -> None:
    """A registry stand-in whose tag names bytes that are not a manifest: with a
    Docker-Content-Digest that they match, or none (the header is optional), nothing is
    damaged: exit 9 (unsupported), `not JSON`, asked once."""
    body = b"<html>not a manifest</html>"
    seen: list[str] = []

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    async def manifest(request: web.Request) -> web.Response:
        seen.append(request.method)
        named = {"Docker-Content-Digest": ig.sha256_digest(body)} if header else {}
        return web.Response(body=body, headers={"Content-Type": mt.OCI_MANIFEST, **named})

    app = web.Application()
    app.router.add_get("/v2/", ping)
    app.router.add_route("*", "/v2/x/manifests/{ref}", manifest)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        proc = await asyncio.to_thread(pull, tmp_path, f"127.0.0.1:{port}/x:1")
    finally:
        await runner.cleanup()
    assert proc.returncode == 9, proc.stderr
    assert "the manifest is not JSON" in error_line(proc)
    assert seen == ["GET"]


def wait_for_bytes(proc: subprocess.Popen, partial: Path, at_least: int) -> None:
    """Until the running pull has `at_least` bytes of the blob in its partial file."""
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.stat().st_size >= at_least):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the download did not get going"
        time.sleep(0.05)


def report_of_stop(proc: subprocess.CompletedProcess[str], report: Path, sig: signal.Signals,
                   code: int) -> dict:
    """A run stopped by `sig`: exit `code`, one line that says so, and its report, which
    says so too."""
    assert proc.returncode == code, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and sig.name in lines[0], proc.stderr
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == code and sig.name in doc["error"], doc
    return doc


@pytest.mark.slow
def test_sigkill_mid_blob_then_resume(src_registry: Registry, recproxy, repo_name: str,
                                      rng: random.Random, tmp_path: Path) -> None:
    """Kill a pull in the middle of a 64 MiB layer; the next run resumes from the partial
    file (hash state rebuilt from its bytes) and downloads only the rest."""
    big = ig.make_layer(rng, 64 << 20, compressed=False)
    img = ig.make_image(rng, ig.AMD64, "oci", layers=[big])
    push_image(src_registry.url, repo_name, img, ["v1"])
    proxy = recproxy(src_registry.url)
    proxy.add(Fault("slow", method="GET", path=big.digest, chunk=256 << 10, delay=0.05,
                    times=None))
    cache = tmp_path / "cache"
    partial = partial_file(cache, big.digest)
    args = ["pull", f"{proxy.host}/{repo_name}:v1", "-o", tmp_path / "out.tar", "--cache",
            cache, "-q"]
    proc = subprocess.Popen(mirror_cmd(*args), cwd=ROOT, env=mirror_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_bytes(proc, partial, 8 << 20)  # well short of 64
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    kept = partial.stat().st_size
    assert 0 < kept < big.size
    assert not (tmp_path / "out.tar").exists()

    proxy.clear_faults()
    proxy.reset_counters()
    report = tmp_path / "report.json"
    ok(pull(tmp_path, f"{proxy.host}/{repo_name}:v1", "--report", report))
    assert_exact(tmp_path / "out.tar", img)
    [get] = proxy.seen("GET", big.digest)[-1:]
    start = int(get.headers["Range"].removeprefix("bytes=").rstrip("-"))
    # resumed from the last whole block kept (the cache copy is written with O_DIRECT)
    assert start == kept - kept % ALIGN and get.status == 206
    # the report counts what this run downloaded, not the bytes the killed one already had
    # (the config is in the cache since the killed run)
    assert json.loads(report.read_text())["bytes_fetched"] == big.size - start
    served = proxy.bytes_by_path[f"/v2/{repo_name}/blobs/{big.digest}"]
    # (a chunk the killed run's connection was still being sent may be counted here too)
    assert big.size - kept <= served < big.size
    assert not partial.exists() and cache_blob(cache, big.digest).exists()


def test_partial_file_with_bad_bytes_is_discarded(src_registry, image, recproxy,
                                                  tmp_path: Path) -> None:
    """A partial file whose bytes don't match (a disk error, another blob's bytes): the
    resumed download fails its digest, is thrown away and fetched once from byte 0."""
    repo, img = image
    big = img.layers[0]
    cache = tmp_path / "cache"
    partial = partial_file(cache, big.digest)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * 200_000)
    proxy = recproxy(src_registry.url)
    ok(pull(tmp_path, f"{proxy.host}/{repo}:v1"))
    assert_exact(tmp_path / "out.tar", img)
    first, second = proxy.seen("GET", big.digest)
    assert first.headers.get("Range") == f"bytes={200_000 - 200_000 % ALIGN}-" and "Range" not in second.headers


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["sigint-130", "sigterm-143"])
@pytest.mark.slow
def test_signal_mid_blob_exits_130_or_143_names_nothing_then_resumes(
        src_registry: Registry, recproxy, repo_name: str, rng: random.Random,
        tmp_path: Path, sig: signal.Signals, code: int) -> None:
    """SIGINT (Ctrl-C, or `kill -INT` from a supervisor) or SIGTERM (systemd stopping the
    unit, `timeout`) in the middle of a layer: exit 130 or 143 with one line, no bundle and
    no `.partial` bundle left, the old bundle untouched, the partial download kept, the
    report written (with the image's line); the next run resumes it and names the new
    bundle."""
    small = ig.make_image(rng, ig.AMD64, "oci", layer_size=4096)
    push_image(src_registry.url, repo_name, small, ["old"])
    big = ig.make_layer(rng, 32 << 20, compressed=False)
    img = ig.make_image(rng, ig.AMD64, "oci", layers=[big])
    push_image(src_registry.url, repo_name, img, ["v1"])
    cache, out = tmp_path / "cache", tmp_path / "out.tar"
    ok(pull(tmp_path, f"{src_registry.host}/{repo_name}:old"))  # an earlier night's bundle
    before = out.read_bytes()
    proxy = recproxy(src_registry.url)
    proxy.add(Fault("slow", method="GET", path=big.digest, chunk=256 << 10, delay=0.05,
                    times=1))
    partial = partial_file(cache, big.digest)
    report = tmp_path / "signal.json"
    ref, done = f"{proxy.host}/{repo_name}:v1", f"{src_registry.host}/{repo_name}:old"
    proc = stopped_mirror(lambda: partial.exists() and partial.stat().st_size >= 4 << 20,
                          "the download did not get going", "pull", done, ref, "-o", out,
                          "--cache", cache, "-q", "--report", report, sig=sig)  # 4 of 32 MiB
    doc = report_of_stop(proc, report, sig, code)
    assert doc["bundle"] is None and doc["partial"] is False, doc
    assert [i["reference"] for i in doc["images"]] == [done, ref], doc
    finished, stopped = doc["images"]
    assert stopped["digest"] == img.digest  # resolved before the signal
    # the image cut off says so; the one whose blobs were all in hand does not
    assert "interrupted" in stopped["error"] and sig.name in stopped["error"], stopped
    assert stopped["error_code"] == code and stopped["bytes_kept"] > 0, stopped
    assert finished["error"] is None and finished["error_code"] is None, finished
    assert out.read_bytes() == before  # the earlier bundle, untouched
    assert not out.with_name("out.tar.partial").exists()
    kept = partial.stat().st_size
    assert 0 < kept < big.size

    proxy.reset_counters()
    ok(pull(tmp_path, f"{proxy.host}/{repo_name}:v1"))
    assert_exact(out, img)
    [get] = proxy.seen("GET", big.digest)[-1:]
    assert get.headers["Range"] == f"bytes={kept - kept % ALIGN}-" and get.status == 206


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["sigint-130", "sigterm-143"])
def test_a_stop_keeps_what_arrived_of_a_small_blob(src_registry: Registry, recproxy,
                                                   repo_name: str, rng: random.Random,
                                                   tmp_path: Path, sig: signal.Signals,
                                                   code: int) -> None:
    """A 200 kB layer (writes are handed to the disk in batches of 1 MiB) stopped most of
    the way down: what arrived is kept to its last whole 4 KiB block (the report's
    bytes_kept), and the next run asks for the rest only. The batch was dropped on a stop,
    so no partial file was left and the next run fetched the blob again whole."""
    layer = ig.make_layer(rng, 200_000, compressed=False)
    img = ig.make_image(rng, ig.AMD64, "oci", layers=[layer])
    push_image(src_registry.url, repo_name, img, ["v1"])
    proxy: RecordingProxy = recproxy(src_registry.url)
    proxy.add(Fault("slow", method="GET", path=layer.digest, chunk=16 << 10, delay=0.1,
                    times=1))
    cache, report = tmp_path / "cache", tmp_path / "stop.json"
    path, ref = blob_path(repo_name, layer.digest), f"{proxy.host}/{repo_name}:v1"
    proc = stopped_mirror(lambda: proxy.bytes_by_path.get(path, 0) >= 150_000,
                          "the download did not get going", "pull", ref, "-o",
                          tmp_path / "out.tar", "--cache", cache, "-q", "--report", report,
                          sig=sig, after=0.05)
    doc = report_of_stop(proc, report, sig, code)
    partial = partial_file(cache, layer.digest)
    assert partial.exists(), "nothing of the 200 kB layer kept"
    kept = partial.stat().st_size
    assert kept % ALIGN == 0 and align_down(150_000) <= kept < layer.size, kept
    assert doc["bytes_kept"] == kept, doc

    proxy.reset_counters()
    ok(pull(tmp_path, ref))
    assert_exact(tmp_path / "out.tar", img)
    [get] = proxy.seen("GET", layer.digest)[-1:]
    assert get.headers.get("Range") == f"bytes={kept}-" and get.status == 206, get.headers


def _done_and_hung(src_registry: Registry, faultproxy, repo_name: str, rng: random.Random,
                   tmp_path: Path) -> tuple[list, list[str], Any, list[str], list]:
    """Two images (`repo/done`, `repo/hung`: the one a test's proxy will hold) pulled once
    through a fault proxy, to out.tar, cache and report.json in `tmp_path` (the earlier
    night's run): the images, repositories, proxy, references, and the pull's arguments."""
    imgs = [ig.make_image(rng, ig.AMD64, "oci", layer_size=2048 + n) for n in range(2)]
    repos = [f"{repo_name}/done", f"{repo_name}/hung"]
    for repo, img in zip(repos, imgs, strict=True):
        push_image(src_registry.url, repo, img, ["v1"])
    proxy = faultproxy(src_registry.url)
    refs = [f"{proxy.host}/{repo}:v1" for repo in repos]
    args = ["pull", *refs, "-o", tmp_path / "out.tar", "--cache", tmp_path / "cache", "-q",
            "--report", tmp_path / "report.json"]
    ok(subprocess.run(mirror_cmd(*args), cwd=ROOT, env=mirror_env(), capture_output=True,
                      text=True, timeout=120))
    return imgs, repos, proxy, refs, args


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["sigint-130", "sigterm-143"])
def test_a_warm_rerun_stopped_says_interrupted_only_of_the_images_not_finished(
        src_registry: Registry, faultproxy, repo_name: str, rng: random.Random,
        tmp_path: Path, sig: signal.Signals, code: int) -> None:
    """A warm rerun (nothing new: the cache holds every blob, the bundle these images)
    stopped while one image's tag HEAD hangs: the other image, its tag answered and its
    blobs all in hand, was reported `interrupted` too (every image was, whatever it had
    done). Only the image not finished says so; the run's exit code and error line are the
    signal's (130, 143), and the bundle is the earlier one, untouched."""
    imgs, repos, proxy, refs, args = _done_and_hung(src_registry, faultproxy, repo_name, rng,
                                                    tmp_path)
    out, report = tmp_path / "out.tar", tmp_path / "report.json"
    before = out.read_bytes()
    proxy.reset_counters()
    ok(subprocess.run(mirror_cmd(*args), cwd=ROOT, env=mirror_env(), capture_output=True,
                      text=True, timeout=120))  # a warm rerun: what the first image asks
    asks = {(m, p) for m, p, _ in proxy.requests if f"/{repos[0]}/" in p}
    assert json.loads(report.read_text())["bundle_unchanged"] is True
    assert ("HEAD", f"/v2/{repos[0]}/manifests/v1") in asks, asks
    proxy.reset_counters()
    proxy.add(Fault("stall", method="HEAD", path=f"/{repos[1]}/manifests/v1", delay=60))
    # once the first image's answers are in (and read: a second), the second one hangs
    proc = stopped_mirror(lambda: asks <= {(m, p) for m, p, _ in proxy.requests}, str(asks),
                          *args, sig=sig, after=1)
    doc = report_of_stop(proc, report, sig, code)
    assert doc["bundle"] is None and out.read_bytes() == before, doc
    finished, stopped = doc["images"]
    assert [finished["reference"], stopped["reference"]] == refs, doc
    assert (finished["error"], finished["error_code"]) == (None, None), finished
    assert finished["digest"] == imgs[0].digest, finished
    assert finished["bytes_reused"] == sum(b.size for b in imgs[0].blobs()), finished
    assert "interrupted" in stopped["error"] and sig.name in stopped["error"], stopped
    assert stopped["error_code"] == code, stopped


def test_a_stop_that_finds_the_cache_unreadable_still_reports_the_stop(
        src_registry: Registry, faultproxy, repo_name: str, rng: random.Random,
        tmp_path: Path) -> None:
    """A warm rerun stopped (SIGINT) once the cache's blob store can no longer be read (its
    directory replaced by a file: ENOTDIR, not ENOENT): the stop's check of which images
    have their blobs in hand (pull.in_hand) takes an unreadable blob as not in hand; its
    OSError did not replace the run's own stop, and the report and exit code say the stop
    (130), every image cut short."""
    _, repos, proxy, refs, args = _done_and_hung(src_registry, faultproxy, repo_name, rng,
                                                 tmp_path)
    report, cache = tmp_path / "report.json", tmp_path / "cache"
    proxy.reset_counters()
    stall = proxy.add(Fault("stall", method="HEAD", path=f"/{repos[1]}/manifests/v1",
                            delay=60))
    blobs = cache / "blobs" / "sha256"

    first = ("HEAD", f"/v2/{repos[0]}/manifests/v1")

    def hung_then_unreadable() -> bool:
        if not stall.hits or first not in {(m, p) for m, p, _ in proxy.requests}:
            return False
        # the first image's blobs looked at in the cache (its HEAD answered, and two seconds:
        # a broken cache met there is the run's own error, exit 1), then the store breaks
        time.sleep(2)
        blobs.rename(cache / "blobs" / "moved")
        blobs.write_bytes(b"")  # a file where the directory was
        return True

    proc = stopped_mirror(hung_then_unreadable, "the second tag's HEAD was never sent",
                          *args, sig=signal.SIGINT)
    doc = report_of_stop(proc, report, signal.SIGINT, 130)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert [i["reference"] for i in doc["images"]] == refs, doc
    assert all(i["error_code"] == 130 for i in doc["images"]), doc


@pytest.mark.parametrize("out", ["b.tar", "b.tar.zst"])  # blobs read at random, in one pass
def test_a_load_stopped_while_an_upload_is_answered_counts_what_the_target_got(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, out: str) -> None:
    """Ctrl-C while the answer to a blob's upload is on its way back (the registry has the
    blob): the report's blobs_pushed left that blob out, one short of what the target got.
    What the report says was pushed is what the target received in the run (HEAD of every
    blob), and the rerun skips exactly those and uploads the rest."""
    img = ig.make_image(rng, ig.AMD64, "oci",
                        layers=[ig.make_layer(rng, 4096 + i) for i in range(3)])
    push_image(src_registry.url, repo_name, img, ["v1"])
    bundle = tmp_path / out
    ok(pull(tmp_path, f"{src_registry.host}/{repo_name}:v1", out=out))
    proxy = faultproxy(dst_registry.url)
    # the second upload's answer held back (-j 1: one upload at a time)
    proxy.add(Fault("late", method="PUT", path=r"/blobs/uploads/", skip=1, delay=60))
    report, repo = tmp_path / "load.json", f"stop/{repo_name}"
    proc = stopped_mirror(lambda: sum(1 for m, p, s in proxy.requests if m == "PUT" and
                                      "/blobs/uploads/" in p and s == 201) == 2,
                          "no second upload", "load", bundle, "--to", f"{proxy.host}/stop",
                          "-j", "1", "-q", "--report", report)
    assert proc.returncode == EXIT["interrupted"], proc.stderr
    blobs = img.blobs()
    there = [b for b in blobs if blob_exists(dst_registry.url, repo, b.digest)]
    doc = json.loads(report.read_text())
    assert len(there) == 2, there
    assert (doc["blobs_pushed"], doc["bytes_pushed"]) == (2, sum(b.size for b in there)), doc

    proxy.clear_faults()
    proxy.reset_counters()
    again = tmp_path / "again.json"
    mirror_ok("load", bundle, "--to", f"{proxy.host}/stop", "-q", "--report", again)
    doc = json.loads(again.read_text())
    assert (doc["blobs_present"], doc["blobs_pushed"]) == (2, len(blobs) - 2), doc
    found = {p.rsplit("/", 1)[1] for m, p, s in proxy.requests
             if m == "HEAD" and "/blobs/sha256:" in p and s == 200}
    assert found == {b.digest for b in there}, found
    assert len([p for p in proxy.paths("PUT") if "/blobs/uploads/" in p]) == len(blobs) - 2


@pytest.mark.parametrize("cut", ["blob", "manifest"])
def test_a_settle_that_meets_a_reset_connection_counts_the_transfer_not_landed(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path, cut: str) -> None:
    """Ctrl-C while the answer to a blob's upload (BlobPush.settle) or to the tag's PUT
    (Pusher.settle) is on its way back, and from then on the target resets every HEAD:
    the HEAD that would say whether the transfer landed gets no answer, which the
    transport gives as a RegistryError, the one rule both settles follow (it was a
    MirrorError for the manifests, a RegistryError for the blobs). The transfer is counted
    not landed, though the target has it, and the run is a stop (exit 130, the report's
    error `interrupted`), not a registry error; the rerun finds it there."""
    img = ig.make_image(rng, ig.AMD64, "oci",
                        layers=[ig.make_layer(rng, 4096 + i) for i in range(3)])
    push_image(src_registry.url, repo_name, img, ["v1"])
    bundle = tmp_path / "b.tar"
    ok(pull(tmp_path, f"{src_registry.host}/{repo_name}:v1", out="b.tar"))
    proxy = faultproxy(dst_registry.url)
    repo = f"reset/{repo_name}"
    if cut == "blob":  # the second upload's answer held back (-j 1: one at a time)
        proxy.add(Fault("late", method="PUT", path=r"/blobs/uploads/", skip=1, delay=60))
        put = ("PUT", r"/blobs/uploads/", 201, 2)
    else:
        proxy.add(Fault("late", method="PUT", path=r"/manifests/v1$", delay=60))
        put = ("PUT", r"/manifests/v1$", 201, 1)
    resets: list[Fault] = []

    def answered() -> bool:  # the registry has it; its answer is held: HEADs reset now
        method, path, status, n = put
        if sum(1 for m, p, st in proxy.requests
               if m == method and re.search(path, p) and st == status) < n:
            return False
        resets.append(proxy.add(Fault("reset", method="HEAD", times=None)))
        return True

    report = tmp_path / "load.json"
    proc = stopped_mirror(answered, "the transfer was never answered", "load", bundle,
                          "--to", f"{proxy.host}/reset", "-j", "1", "-q",
                          "--report", report)
    assert proc.returncode == EXIT["interrupted"], proc.stderr
    assert resets[0].hits, proxy.requests  # the settle asked, and met a reset connection
    assert "Traceback" not in proc.stderr, proc.stderr
    doc = json.loads(report.read_text())
    assert (doc["error"], doc["exit_code"]) == ("interrupted (SIGINT)", EXIT["interrupted"])
    blobs = img.blobs()
    if cut == "blob":
        assert sum(blob_exists(dst_registry.url, repo, b.digest) for b in blobs) == 2
        assert doc["blobs_pushed"] == 1, doc  # the one whose answer came
    else:
        assert get_manifest(dst_registry.url, repo, "v1")[0] == img.manifest.data
        assert (doc["manifests_pushed"], doc["tags"]) == (0, []), doc

    proxy.clear_faults()
    again = tmp_path / "again.json"
    mirror_ok("load", bundle, "--to", f"{proxy.host}/reset", "-q", "--report", again)
    doc = json.loads(again.read_text())
    if cut == "blob":
        assert (doc["blobs_present"], doc["blobs_pushed"]) == (2, len(blobs) - 2), doc
    else:
        assert (doc["manifests_pushed"], doc["manifests_present"]) == (0, 1), doc


def test_a_load_stopped_on_a_target_that_hangs_exits_within_the_cancelling_time(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """Ctrl-C during an upload to a target that then answers nothing: the load gives up
    cancelling its upload session after CANCEL_WITHIN (5 s), and the HEADs that count what
    landed share that time. They had 5 s of their own after it: the stop took 10 s (5 s
    before they were added)."""
    img = ig.make_image(rng, ig.AMD64, "oci",
                        layers=[ig.make_layer(rng, 4096 + i) for i in range(2)])
    push_image(src_registry.url, repo_name, img, ["v1"])
    ok(pull(tmp_path, f"{src_registry.host}/{repo_name}:v1", out="b.tar"))
    proxy = faultproxy(dst_registry.url)
    hung = proxy.add(Fault("stall", method="PUT", path=r"/blobs/uploads/", delay=60))
    signalled: list[float] = []
    held: list[Fault] = []

    def hanging() -> bool:  # the upload held: from now on the target answers nothing
        if not hung.hits:
            return False
        held.extend(proxy.add(Fault("stall", method=method, path=r"/blobs/", delay=60,
                                    times=None)) for method in ("DELETE", "HEAD"))
        signalled.append(time.monotonic())
        return True

    proc = stopped_mirror(hanging, "no upload", "load", tmp_path / "b.tar", "--to",
                          f"{proxy.host}/hang", "-j", "1", "-q")
    took = time.monotonic() - signalled[0]
    assert proc.returncode == EXIT["interrupted"], proc.stderr
    assert held[0].hits == 1, held  # the session's DELETE, held as the HEADs would be
    assert took < 8.5, took


def test_a_load_stopped_while_its_tag_is_answered_reports_the_tag(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """Ctrl-C while the answer to the tag's PUT is on its way back (the registry serves the
    tag): the report said no manifest pushed and no tag, the target serving both. It says
    what the target got (HEAD), and the rerun finds it present."""
    img = ig.make_image(rng, ig.AMD64, "oci")
    push_image(src_registry.url, repo_name, img, ["v1"])
    bundle = tmp_path / "b.tar"
    ok(pull(tmp_path, f"{src_registry.host}/{repo_name}:v1", out="b.tar"))
    proxy = faultproxy(dst_registry.url)
    proxy.add(Fault("late", method="PUT", path=r"/manifests/v1$", delay=60))
    report, repo = tmp_path / "load.json", f"stop/{repo_name}"
    put = ("PUT", f"/v2/{repo}/manifests/v1", 201)
    proc = stopped_mirror(lambda: put in proxy.requests, "the tag was never put", "load",
                          bundle, "--to", f"{proxy.host}/stop", "-q", "--report", report)
    assert proc.returncode == EXIT["interrupted"], proc.stderr
    assert get_manifest(dst_registry.url, repo, "v1")[0] == img.manifest.data
    doc = json.loads(report.read_text())
    assert (doc["manifests_pushed"], doc["tags"]) == (1, [f"{proxy.host}/{repo}:v1"]), doc
    proxy.clear_faults()
    again = tmp_path / "again.json"
    mirror_ok("load", bundle, "--to", f"{proxy.host}/stop", "-q", "--report", again)
    doc = json.loads(again.read_text())
    assert (doc["manifests_pushed"], doc["manifests_present"]) == (0, 1), doc


def test_a_merge_load_stopped_while_its_own_index_is_answered_reports_no_tag(
        src_registry: Registry, dst_registry: Registry, faultproxy, repo_name: str,
        rng: random.Random, tmp_path: Path) -> None:
    """`load --merge` over a tag holding another index puts the bundle's own index by digest
    before the merged one as the tag. Ctrl-C while that digest PUT's answer is on its way
    back: the index is counted pushed (the target serves it), but the tag, which still holds
    the old index, is not among the report's tags (it was, as if the tag had been put)."""
    old = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)], "oci")
    new = ig.make_index([ig.make_image(rng, ig.AMD64, "oci")], "oci")
    push_image(src_registry.url, repo_name, new, ["1"])
    bundle = tmp_path / "b.tar"
    ok(pull(tmp_path, f"{src_registry.host}/{repo_name}:1", out="b.tar"))
    repo = f"merge/{repo_name}"
    push_image(dst_registry.url, repo, old, ["1"])
    proxy = faultproxy(dst_registry.url)
    proxy.add(Fault("late", method="PUT", path=rf"/manifests/{new.digest}$", delay=60))
    report = tmp_path / "load.json"
    put = ("PUT", f"/v2/{repo}/manifests/{new.digest}", 201)
    proc = stopped_mirror(lambda: put in proxy.requests, "the index was never put", "load",
                          bundle, "--to", f"{proxy.host}/merge", "--merge", "-q",
                          "--report", report)
    assert proc.returncode == EXIT["interrupted"], proc.stderr
    assert get_manifest(dst_registry.url, repo, "1")[0] == old.manifest.data  # the tag as it was
    assert get_manifest(dst_registry.url, repo, new.digest)[0] == new.manifest.data
    doc = json.loads(report.read_text())
    puts = [r for r in proxy.requests if r[0] == "PUT" and "/manifests/" in r[1]]
    assert all(status == 201 for _, _, status in puts), puts
    assert (doc["manifests_pushed"], doc["tags"]) == (len(puts), []), doc


def test_a_failed_download_reports_the_bytes_it_kept(src_registry, image, recproxy,
                                                     tmp_path: Path) -> None:
    """A blob broken off after 400,000 bytes whose retries then fail: the run fails, but the
    report counts what crossed the network (`bytes_fetched`), the part kept for the next run
    (`bytes_kept`, per image and in all), and the next run's report only what it added."""
    repo, img = image
    big = img.layers[0]
    proxy: RecordingProxy = recproxy(src_registry.url)
    proxy.add(Fault("reset_after", method="GET", path=big.digest, offset=400_000))
    proxy.add(Fault("status", method="GET", path=big.digest, status=503, times=None))
    proc = pull(tmp_path, f"{proxy.host}/{repo}:v1", "--retries", "1")
    assert proc.returncode == EXIT["registry"], proc.stderr
    kept = partial_file(tmp_path / "cache", big.digest).stat().st_size
    assert 0 < kept <= 400_000
    doc = json.loads((tmp_path / "report.json").read_text())
    [image_doc] = doc["images"]
    small = img.config.size + img.layers[1].size  # fetched whole before or beside the big one
    assert image_doc["error"] and image_doc["bytes_kept"] == kept == doc["bytes_kept"]
    assert image_doc["bytes_fetched"] == doc["bytes_fetched"] == small + kept, doc

    proxy.clear_faults()
    ok(pull(tmp_path, f"{proxy.host}/{repo}:v1"))
    doc = json.loads((tmp_path / "report.json").read_text())
    start = kept - kept % ALIGN
    assert (doc["bytes_fetched"], doc["bytes_kept"]) == (big.size - start, 0), doc
    assert_exact(tmp_path / "out.tar", img)


@pytest.mark.parametrize("size,cut", [(3000, 1000), (20_000, 5000)],
                         ids=["under-a-block", "blocks"])
def test_bytes_said_kept_for_the_next_run_are_kept(src_registry, recproxy, repo_name: str,
                                                   rng: random.Random, tmp_path: Path,
                                                   size: int, cut: int) -> None:
    """A download broken off after each try (`cut` bytes a try, two tries): its error line
    says how many bytes are kept for the next run, and they are the partial file, the
    report's bytes_kept and where the next run's Range starts (a resume starts at a block
    boundary). Under one 4 KiB block nothing is kept, and the line says nothing of it: it
    said '(2000 of 3193 bytes kept for the next run)' while the partial file was removed
    and bytes_kept was 0, and '(10000 of 20220 ...)' where the next run asked from 8192."""
    layer = ig.make_layer(rng, size)  # random bytes: gzip makes them ~200 bytes more
    img = ig.make_image(rng, ig.AMD64, "oci", layers=[layer])
    push_image(src_registry.url, repo_name, img, ["1"])
    proxy: RecordingProxy = recproxy(src_registry.url)
    proxy.add(Fault("reset_after", method="GET", path=layer.digest, offset=cut, times=None))
    proc = pull(tmp_path, f"{proxy.host}/{repo_name}:1", "--retries", "1")
    assert proc.returncode == EXIT["registry"], proc.stderr
    line = error_line(proc)
    said = re.search(r"\((\d+) of (\d+) bytes kept for the next run\)", line)
    partial = partial_file(tmp_path / "cache", layer.digest)
    kept = partial.stat().st_size if partial.exists() else 0
    assert (int(said[1]) if said else 0) == kept == align_down(2 * cut), (line, kept)
    assert said is None or int(said[2]) == layer.size, line
    assert json.loads((tmp_path / "report.json").read_text())["bytes_kept"] == kept

    proxy.clear_faults()
    proxy.reset_counters()
    ok(pull(tmp_path, f"{proxy.host}/{repo_name}:1"))
    assert_exact(tmp_path / "out.tar", img)
    [get] = proxy.seen("GET", layer.digest)[-1:]
    assert get.headers.get("Range") == (f"bytes={kept}-" if kept else None), get.headers


async def _stopped_in_commit(registry: Registry, repo: str, blob: ig.Layer, store,
                             held: threading.Event, go_on: threading.Event,
                             cancels: int = 1):
    """Download `blob` into `store`, cancel the task once `held` is set (the commit's thread
    waits on `go_on` there; `cancels` times, as a pull's gather and then its cancel_all
    do), let the thread go on; the fetcher, once the task has ended."""
    from mirror.fetch import Fetcher
    from mirror.progress import NullProgress

    async with Transport(policy=RetryPolicy(tries=2)) as t:
        fetcher = Fetcher(Client(t), store, 4, NullProgress())
        task = fetcher.fetch(registry.host, repo,
                             Descriptor(blob.media_type, blob.digest, blob.size), 0)
        while not held.is_set():
            await asyncio.sleep(0.01)
        for _ in range(cancels):
            task.cancel()
            await asyncio.sleep(0.05)
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)  # a thread left running would have renamed it by now
    return fetcher


async def test_a_download_stopped_after_its_commit_counts_as_fetched(
        src_registry, image, tmp_path: Path, monkeypatch) -> None:
    """A download stopped (another blob's error, Ctrl-C) while its verified file is being
    moved into the cache: the file is in the cache, so its bytes crossed the network and are
    counted as fetched, not lost from the report (CI once saw `bytes_fetched` short of a
    small layer that the full-disk test found in the cache)."""
    from mirror.store.blobs import BlobStore
    from mirror.store.partial import PartialBlob

    repo, img = image
    small = img.layers[1]
    moved, go_on = threading.Event(), threading.Event()
    commit = PartialBlob._commit

    def slow_commit(self: PartialBlob) -> Path:
        dest = commit(self)
        moved.set()
        go_on.wait(10)  # the task is cancelled here, its file already in the store
        return dest

    monkeypatch.setattr(PartialBlob, "_commit", slow_commit)
    store = BlobStore(tmp_path / "cache")
    fetcher = await _stopped_in_commit(src_registry, repo, small, store, moved, go_on)
    assert store.has(small.digest, small.size)
    assert small.digest in fetcher.fetched and small.digest not in fetcher.kept


@pytest.mark.parametrize("cancels", [1, 2])
async def test_a_download_stopped_before_its_rename_waits_for_it(
        src_registry, image, tmp_path: Path, monkeypatch, cancels: int) -> None:
    """The same stop landing a moment earlier, while the commit's thread has closed the
    verified file but not yet renamed it: the task must wait for that thread before it
    decides what became of the blob. It did not (the cancellation cancelled the awaited
    future too, so `asyncio.wait` on it returned at once): the blob was counted as a kept
    partial download while the thread went on to put it in the cache. Cancelled twice (a
    pull's gather cancels its downloads, then cancel_all cancels them again), it must still
    wait."""
    from mirror.store.blobs import BlobStore

    repo, img = image
    small = img.layers[1]
    closed, go_on = threading.Event(), threading.Event()
    store = BlobStore(tmp_path / "cache")
    path = store.path

    def held_path(digest: str) -> Path:
        if threading.current_thread() is not threading.main_thread():  # _commit's
            closed.set()
            go_on.wait(10)  # the task is cancelled here: the file closed, not yet renamed
        return path(digest)

    monkeypatch.setattr(store, "path", held_path)
    fetcher = await _stopped_in_commit(src_registry, repo, small, store, closed, go_on,
                                       cancels)
    assert store.has(small.digest, small.size)
    assert small.digest in fetcher.fetched and small.digest not in fetcher.kept


_NAMED_THEN_STOPPED = {  # a SIGTERM once the bundle is in place, while the run waits
    "rename": ("from mirror.bundle import publish as naming\n"  # the rename's thread, awaited
               "publish = naming.publish\n"
               "def stopped(*a, **k):\n"
               "    named = publish(*a, **k)\n"
               "    os.kill(os.getpid(), signal.SIGTERM)\n"
               "    time.sleep(0.5)\n"
               "    return named\n"
               "naming.publish = stopped\n"),
    "transport": ("from mirror.registry.transport import Transport\n"  # the pull returned
                  "close = Transport.__aexit__\n"
                  "async def stopped(self, *exc):\n"
                  "    os.kill(os.getpid(), signal.SIGTERM)\n"
                  "    await asyncio.sleep(0.5)\n"
                  "    await close(self, *exc)\n"
                  "Transport.__aexit__ = stopped\n"),
}


@pytest.mark.parametrize(("where", "volumes"), [("rename", None), ("rename", "300K"),
                                                ("transport", None)],
                         ids=["rename", "rename-volume-set", "transport-closing"])
def test_a_stop_once_the_bundle_is_named_still_writes_its_lock_file_and_report(
        src_registry, image, tmp_path: Path, where: str, volumes: str | None) -> None:
    """SIGTERM (or Ctrl-C) that lands once the new bundle is renamed into place (while the
    run waits for the thread that renamed it, or closes its connections after): the bundle
    at -o is the new one, so the lock file is written for it and the report names it (exit
    143 still). It said no bundle and left the lock file as it was, beside a new bundle:
    what the README's cron copies as the next night's --base."""
    repo, img = image
    out, lock, report = tmp_path / "out.tar", tmp_path / "images.lock", tmp_path / "r.json"
    args = ["pull", f"{src_registry.host}/{repo}:v1", "-o", out, "--cache", tmp_path / "c",
            "--lock-file", lock, "-q", "--report", report,
            *(["--volume-size", volumes] if volumes else [])]
    code = ("import asyncio, os, signal, sys, time\n" + _NAMED_THEN_STOPPED[where] +
            "from mirror.cli import main\n"
            f"sys.exit(main({[str(a) for a in args]!r}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=mirror_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    doc = json.loads(report.read_text())
    assert doc["bundle"] == str(out) and doc["bundle_digest"], doc
    assert out.with_name("out.tar.sha256").read_text().split()[0] == \
        doc["bundle_digest"].removeprefix("sha256:")
    assert [x["digest"] for x in doc["images"]] == [img.digest], doc
    images = json.loads(lock.read_text())["images"]
    assert [x["sourceDigest"] for x in images.values()] == [img.digest], images


def _pull_on_a_small_disk(limit: int, *args: object) -> subprocess.CompletedProcess[str]:
    """`mirror pull ARGS` in a child that may write no file past `limit` bytes
    (RLIMIT_FSIZE: "File too large", a full disk as the writer sees it, without root)."""
    import resource

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(mirror_cmd("pull", *args), cwd=ROOT, env=mirror_env(),
                          capture_output=True, text=True, timeout=120, preexec_fn=small_disk)


@pytest.mark.slow
def test_a_full_disk_reports_what_was_done_and_keeps_the_partial(src_registry, image,
                                                                 tmp_path: Path) -> None:
    """The disk fills up (the file size limit of the child, RLIMIT_FSIZE: the same OSError
    path as ENOSPC, without root) in the middle of the big layer: one error line naming the
    file, exit 1, and the report carries the image's entry with that error and the bytes
    that were fetched and kept, not `images: []`; the next run resumes the kept part."""
    repo, img = image
    big, small = img.layers
    cache, report, out = tmp_path / "cache", tmp_path / "full.json", tmp_path / "out.tar.zst"
    limit = 256 << 10  # the config and the small layer fit, the 1 MiB layer does not
    ref = f"{src_registry.host}/{repo}:v1"
    proc = _pull_on_a_small_disk(limit, ref, "-o", out, "--cache", cache, "-q",
                                 "--report", report)
    assert proc.returncode == EXIT["error"], proc.stderr
    line = error_line(proc)
    assert str(partial_file(cache, big.digest)) in line and "File too large" in line, line
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == EXIT["error"] and doc["error"] == line.split("error: ", 1)[1]
    [entry] = doc["images"]
    assert entry["reference"] == ref and entry["digest"] == img.digest, entry
    assert entry["error"] == doc["error"] and entry["error_code"] == EXIT["error"], entry
    kept = {b.digest: partial_file(cache, b.digest).stat().st_size for b in (big, small)
            if partial_file(cache, b.digest).exists()}
    assert 0 < kept[big.digest] <= limit, kept
    small_done = cache_blob(cache, small.digest).exists()  # it may have been cut short too
    whole = img.config.size + (small.size if small_done else 0)
    assert doc["bytes_kept"] == entry["bytes_kept"] == sum(kept.values()), (doc, kept)
    assert doc["bytes_fetched"] == entry["bytes_fetched"] == whole + sum(kept.values()), doc
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()

    ok(pull(tmp_path, ref))  # room again: the kept part is resumed, not fetched again
    doc = json.loads((tmp_path / "report.json").read_text())

    def resumed_at(b: ig.Blob) -> int:  # a whole partial (all its bytes, not yet named when
        n = kept[b.digest]               # the run stopped) is used whole; else a 4 KiB boundary
        return n if n == b.size else n - n % ALIGN

    rest = sum(b.size - resumed_at(b) if b.digest in kept
               else 0 if b is small and small_done else b.size for b in (big, small))
    assert doc["bytes_fetched"] == rest, doc


def test_a_full_disk_leaves_no_partial_file_a_run_cannot_resume(
        src_registry: Registry, repo_name: str, rng: random.Random, tmp_path: Path,
        small_disk) -> None:
    """The cache's disk (a tmpfs of its own: ENOSPC) fills while six layers download at
    once: exit 1, the file named with 'No space left on device'. Each download with less
    than a block on disk when the run failed (none: its first write did not fit, or it was
    cancelled before) left its partial file, empty, in <cache>/partial, where no run resumes
    it (a resume starts at a block boundary) and it stayed until a run fetched that blob
    again. The run removes them; those a run resumes are kept (the report's bytes_kept),
    and the next run with room fetches only the rest."""
    layers = [ig.make_layer(rng, 300_000, compressed=False) for _ in range(6)]
    img = ig.make_image(rng, ig.AMD64, "oci", layers=layers)
    push_image(src_registry.url, repo_name, img, ["v1"])
    disk = small_disk(1 << 20)  # the manifest and the config fit, the layers (1.8 MB) do not
    cache, ref = disk / "cache", f"{src_registry.host}/{repo_name}:v1"
    proc = pull(tmp_path, ref, cache=str(cache))
    assert proc.returncode == EXIT["error"], proc.stderr
    assert "No space left on device" in error_line(proc), proc.stderr
    left = {p.name: p.stat().st_size for p in (cache / "partial").iterdir()}
    assert all(n >= ALIGN for n in left.values()), left
    assert json.loads((tmp_path / "report.json").read_text())["bytes_kept"] == \
        sum(left.values()), left
    rest = {b.digest: 0 if cache_blob(cache, b.digest).exists() else
            b.size - align_down(left.get(partial_file(cache, b.digest).name, 0))
            for b in layers}  # what the next run fetches of each layer
    assert run(["mount", "-o", "remount,size=16m", str(disk)]).returncode == 0
    ok(pull(tmp_path, ref, cache=str(cache)))
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["bytes_fetched"] == sum(rest.values()), (doc, rest)


@pytest.mark.slow
def test_a_full_disk_while_writing_the_bundle_keeps_what_was_fetched(
        src_registry: Registry, repo_name: str, rng: random.Random, tmp_path: Path) -> None:
    """Every blob fits in the cache but the .tar.zst bundle written at the end does not (the
    child's RLIMIT_FSIZE): exit 1 naming the bundle's .partial, no bundle left, and the
    report has the image's entry with every byte fetched; the next run fetches nothing."""

    img = ig.make_image(rng, ig.AMD64, "oci",
                        layers=[ig.make_layer(rng, 200_000, compressed=False) for _ in range(2)])
    push_image(src_registry.url, repo_name, img, ["v1"])
    cache, report, out = tmp_path / "cache", tmp_path / "full.json", tmp_path / "out.tar.zst"
    limit = 256 << 10  # each blob fits; the two together (zstd cannot shrink them) do not
    ref = f"{src_registry.host}/{repo_name}:v1"
    proc = _pull_on_a_small_disk(limit, ref, "-o", out, "--cache", cache, "-q",
                                 "--report", report)
    assert proc.returncode == EXIT["error"], proc.stderr
    assert f"{out}.partial" in error_line(proc), proc.stderr
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    doc = json.loads(report.read_text())
    [entry] = doc["images"]
    every = sum(b.size for b in img.blobs())
    assert entry["digest"] == img.digest and doc["bytes_fetched"] == every, doc
    assert entry["bytes_fetched"] == every and doc["bytes_kept"] == 0, entry

    ok(pull(tmp_path, ref, out="out.tar.zst"))
    doc = json.loads((tmp_path / "report.json").read_text())
    assert (doc["bytes_fetched"], doc["bytes_reused"]) == (0, every), doc


@pytest.mark.slow
def test_a_lock_file_that_does_not_fit_names_itself(
        src_registry: Registry, repo_name: str, rng: random.Random, tmp_path: Path) -> None:
    """The disk fills (the child's RLIMIT_FSIZE) while the lock file is written after the
    bundle: the error line was `mirror: error: File too large` (ENOSPC alike), naming no
    file, and LOCK.partial stayed. Now the line names the lock file, and nothing half
    written is left beside it."""
    img = ig.make_image(rng, ig.AMD64, "oci", n_layers=1, layer_size=64)
    tags = [f"t{i}" for i in range(60)]
    push_image(src_registry.url, repo_name, img, tags)
    lock, out = tmp_path / "many.lock", tmp_path / "out.tar.zst"
    limit = 16 << 10  # blobs and the compressed bundle fit; the lock's 60 entries do not
    refs = [f"{src_registry.host}/{repo_name}:{t}" for t in tags]
    proc = _pull_on_a_small_disk(limit, *refs, "-o", out, "--cache", tmp_path / "cache",
                                 "-q", "--lock-file", lock)
    assert proc.returncode == EXIT["error"], proc.stderr
    assert out.exists(), proc.stderr  # the bundle fitted
    line = error_line(proc)
    assert str(lock) in line and "File too large" in line, line
    assert not lock.exists()
    assert [p.name for p in tmp_path.iterdir() if lock.name in p.name] == []  # nothing half-written


def test_a_checksum_file_that_cannot_be_written_names_itself(
        src_registry: Registry, repo_name: str, rng: random.Random, tmp_path: Path) -> None:
    """OUT.sha256 that cannot be written (here a directory in its place; a full disk alike)
    said `OUT.sha256.partial: Is a directory` about a file that is not one, and left that
    .partial behind. Now the line names OUT.sha256, and no .partial stays."""
    img = ig.make_image(rng, ig.AMD64, "oci", n_layers=1, layer_size=64)
    push_image(src_registry.url, repo_name, img, ["v1"])
    out = tmp_path / "out.tar"
    side = tmp_path / "out.tar.sha256"
    side.mkdir()
    proc = subprocess.run(mirror_cmd("pull", f"{src_registry.host}/{repo_name}:v1", "-o", out,
                                     "--cache", tmp_path / "cache", "-q"),
                          cwd=ROOT, env=mirror_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == EXIT["error"], proc.stderr
    line = error_line(proc)
    assert line.startswith(f"mirror: error: {side}: cannot write the checksum file: "), line
    assert not side.with_name(side.name + ".partial").exists()


def _pull_stopped(setup: str, sig: str, ref: str, tmp_path: Path
                  ) -> subprocess.CompletedProcess[str]:
    """`mirror pull REF` (-o out.tar, its report r.json) in a child whose `setup` code
    sends it `sig` (SIG) at the moment it chooses; main reads the flags from the command
    line, as the console script's does."""
    args = ["pull", ref, "-o", tmp_path / "out.tar", "--cache", tmp_path / "c", "-q",
            "--report", tmp_path / "r.json"]
    code = f"SIG = {sig!r}\n" + setup + "from mirror.cli import main\nsys.exit(main())\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT,
                          env=mirror_env(), capture_output=True, text=True, timeout=120)


_STOPPED_WHILE_IMPORTING = (  # the signal sent as the command's own module is imported
    "import importlib.abc, os, signal, sys\n"
    "class Stop(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path, target=None):\n"
    "        if name == 'mirror.pull_run':\n"
    "            sys.meta_path.remove(self)\n"
    "            os.kill(os.getpid(), getattr(signal, SIG))\n"
    "        return None\n"
    "sys.meta_path.insert(0, Stop())\n")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_while_the_command_imports_writes_a_whole_report(
        src_registry, image, tmp_path: Path, sig: str) -> None:
    """Ctrl-C or SIGTERM in the first half second, while the command's modules import
    (before its run had added its fields to the report): exit 130/143, one line, and a
    report with every field and every image, each cut short. SIGINT wrote a report of
    `command`, `error` and `exit_code` alone (no `images`, no `bundle`: the README says
    every field is there in every outcome); SIGTERM killed the process outright, with no
    report at all."""
    ref, report = f"{src_registry.host}/{image[0]}:v1", tmp_path / "r.json"
    proc = _pull_stopped(_STOPPED_WHILE_IMPORTING, sig, ref, tmp_path)
    want = EXIT["interrupted" if sig == "SIGINT" else "terminated"]
    assert proc.returncode == want, proc.stderr
    assert proc.stderr.splitlines() == [
        f"mirror: interrupted ({sig}); finished blobs are kept, partial ones resume next run"]
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == want and doc["error"] == f"interrupted ({sig})", doc
    assert {"bundle", "bundle_digest", "waiting", "requests", "tag_rules"} <= set(doc), doc
    assert doc["bundle"] is None and not (tmp_path / "out.tar").exists()
    [entry] = doc["images"]
    assert entry["reference"] == ref and entry["error_code"] == want, entry


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_while_the_cli_itself_imports_writes_a_whole_report(
        src_registry, image, tmp_path: Path, sig: str) -> None:
    """`python -m mirror` (the console script's entry too) stopped while mirror.cli itself
    imports, before main could hold the signals: SIGINT was a KeyboardInterrupt traceback,
    exit 1, SIGTERM killed the process, no report either way, the last run's left for a
    monitor to read (o24 N2). The entry holds them before the CLI imports: exit 130/143, one
    line, the report written."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"SIG = {sig!r}\n" + _STOPPED_WHILE_IMPORTING.replace("mirror.pull_run", "mirror.cli"))
    env = mirror_env()
    env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}"
    ref, report = f"{src_registry.host}/{image[0]}:v1", tmp_path / "r.json"
    proc = subprocess.run(mirror_cmd("pull", ref, "-o", tmp_path / "out.tar", "--cache",
                                     tmp_path / "c", "-q", "--report", report),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    want = EXIT["interrupted" if sig == "SIGINT" else "terminated"]
    assert proc.returncode == want, (proc.returncode, proc.stderr)
    assert proc.stderr.splitlines() == [
        f"mirror: interrupted ({sig}); finished blobs are kept, partial ones resume next run"]
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == want and doc["error"] == f"interrupted ({sig})", doc
    assert not (tmp_path / "out.tar").exists()


def _stopped_in(module: str, *path: str) -> str:
    """Setup code for _pull_stopped: `module.path` (a function, or a method of a class in
    it) sends the signal, waits 0.2 s, then does its work."""
    return ("import importlib, os, signal, sys, time\n"
            f"owner = importlib.import_module({module!r})\n"
            + "".join(f"owner = owner.{p}\n" for p in path[:-1])
            + f"orig = owner.{path[-1]}\n"
            "def stopped(*args):\n"
            "    os.kill(os.getpid(), getattr(signal, SIG))\n"
            "    time.sleep(0.2)\n"
            "    return orig(*args)\n"
            f"owner.{path[-1]} = stopped\n")


_STOPPED_ONCE_OVER = {  # the run's task over: as asyncio.run closes its loop, as the report
    "loop closing": _stopped_in("asyncio.runners", "Runner", "close"),  # is written, as the
    "reporting": _stopped_in("mirror.report", "to_text"),  # process leaves (main returned)
    "leaving": None,  # stop_as_it_leaves
}


@pytest.mark.parametrize("moment", list(_STOPPED_ONCE_OVER))
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_once_the_run_is_over_leaves_its_report_whole(
        src_registry, image, tmp_path: Path, sig: str, moment: str) -> None:
    """Ctrl-C or SIGTERM that lands once the run's task has ended, as asyncio.run closes its
    loop (async generators, the default executor's threads joined) or while the report is
    written (a warm rerun with nothing new is over in a second: a stop sent at about that
    time): the run is done, so the report is written as it ended and the exit code is its
    own. It was a KeyboardInterrupt traceback from inside the report's writing, or a SIGTERM
    that killed the process: no report either way, after a run that had written its bundle
    and lock file; and as the loop closed, asyncio.run's KeyboardInterrupt: exit 130,
    `interrupted (SIGINT)` and `finished blobs are kept` for that run. Once main has
    returned (the interpreter exiting: 12 ms, its threads joined, its modules torn down)
    SIGTERM killed the process (exit -15) and SIGINT was an `Exception ignored` traceback;
    as its modules were torn down both still killed it (-2, -15: Python gives the signals
    their default action back as it finalizes), the report saying `exit_code: 0`. The run
    now leaves without finalizing (mirror.cli._leave): the stop sent just before it does."""
    repo, img = image
    report, out = tmp_path / "r.json", tmp_path / "out.tar"
    setup = _STOPPED_ONCE_OVER[moment] or stop_as_it_leaves(sig, tmp_path / "left")
    proc = _pull_stopped(setup, sig, f"{src_registry.host}/{repo}:v1", tmp_path)
    assert moment != "leaving" or (tmp_path / "left").exists()  # the stop was sent
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == 0 and doc["error"] is None, doc
    assert doc["bundle"] == str(out) and [x["digest"] for x in doc["images"]] == [img.digest]


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_while_a_run_without_an_await_imports_is_a_stop(
        src_registry, image, tmp_path: Path, sig: str) -> None:
    """A stop held while the command imports, for a run that never awaits (`cache prune`
    does its work in one go): it was delivered as a cancel that no await took, so the task
    ended cancelled after the prune and SIGTERM was a CancelledError traceback, exit 1, no
    report (SIGINT: exit 130, as asyncio.run turns it into a KeyboardInterrupt). Both are a
    stop: exit 130/143, one line, the report whole."""
    cache = tmp_path / "c"
    _pull_stopped("import sys\n", sig, f"{src_registry.host}/{image[0]}:v1", tmp_path)
    assert (tmp_path / "out.tar").exists()
    report = tmp_path / "p.json"
    args = ["cache", "prune", "--cache", cache, "--max-size", "1G", "-q", "--report", report]
    code = (f"SIG = {sig!r}\n"
            + _STOPPED_WHILE_IMPORTING.replace("mirror.pull_run", "mirror.store.command")
            + f"from mirror.cli import main\nsys.exit(main({[str(a) for a in args]!r}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=mirror_env(),
                          capture_output=True, text=True, timeout=120)
    want = EXIT["interrupted" if sig == "SIGINT" else "terminated"]
    assert proc.returncode == want, proc.stderr
    assert proc.stderr.splitlines() == [f"mirror: interrupted ({sig})"]
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == want and doc["error"] == f"interrupted ({sig})", doc
    assert {"cache", "blobs_removed", "bytes_freed", "bytes_left"} <= set(doc), doc
