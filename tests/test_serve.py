"""Issue 17: `mirror serve BUNDLE` answers as a read-only registry, straight from the tar.

A bundle of generated images (a signed two-platform OCI index with an SBOM, a Docker manifest
list), pulled from the real registry, is served by `mirror serve` as a subprocess on a free
127.0.0.1 port; real clients (skopeo, ctr, podman, docker, mirror pull) and plain HTTP
requests check what it answers against the bundle's own bytes (tests.support.oracle).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import signal
import socket
import struct
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from mirror.errors import EXIT_CODES
from tests.support import imagegen as ig
from tests.support.oracle import (
    Layout,
    check_layout,
    error_line,
    file_sha256,
    mirror_cmd,
    mirror_env,
    mirror_ok,
    run,
    run_mirror,
    skopeo,
)
from tests.support.pusher import push_image
from tests.support.registry import make_tls_files
from tests.support.runtimes import Containerd, Dockerd, Podman
from tests.test_referrers import seed

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Served:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    log: Path  # its stderr: the request lines
    bundle: Path
    layout: Layout
    signed: str  # repository of the signed OCI index (tag 1.0)
    listed: str  # repository of the Docker manifest list (tag 2)
    index: ig.Index
    docker_list: ig.Index
    sbom_type: str

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]


def start_serve(bundle: Path, log: Path, *args: object) -> tuple[subprocess.Popen, str]:
    """`mirror serve BUNDLE --listen 127.0.0.1:0 ARGS`: the process and the URL it prints."""
    err = open(log, "wb")  # noqa: SIM115 - the process writes it until stopped
    proc = subprocess.Popen(mirror_cmd("serve", bundle, "--listen", "127.0.0.1:0", *args),
                            stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=mirror_env(),
                            text=True)
    err.close()
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith(("http://127.0.0.1:", "https://127.0.0.1:")), \
        f"no URL from mirror serve (exit {proc.poll()}):\n{log.read_text()}"
    return proc, url


def stop_serve(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=15)
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def served(src_registry, tmp_path_factory) -> Iterator[Served]:
    import random

    rng = random.Random("test_serve")
    tmp = tmp_path_factory.mktemp("serve")
    signed = f"serve/signed-{uuid.uuid4().hex[:8]}"
    listed = f"serve/listed-{uuid.uuid4().hex[:8]}"
    index, _imgs, _sig, _tag, sbom = seed(src_registry.url, signed, rng,
                                          ec.generate_private_key(ec.SECP256R1()))
    big = ig.make_layer(rng, 12_000_000, fmt="docker")  # more than socket buffers hold
    docker_list = ig.make_index([
        ig.make_image(rng, ig.AMD64, fmt="docker", layers=[big, ig.make_layer(rng, 300_000)]),
        ig.make_image(rng, ig.ARM64, fmt="docker", layer_size=300_000)], fmt="docker")
    push_image(src_registry.url, listed, docker_list, tags=["2"])
    bundle = tmp / "site.tar"
    mirror_ok("pull", f"{src_registry.host}/{signed}:1.0", f"{src_registry.host}/{listed}:2",
              "-o", bundle, "--cache", tmp / "cache", "-q")
    layout = check_layout(bundle)
    proc, url = start_serve(bundle, tmp / "serve.log")
    sbom_type = json.loads(sbom.data).get("artifactType") or \
        json.loads(sbom.data)["config"]["mediaType"]
    yield Served(proc, url, tmp / "serve.log", bundle, layout, signed, listed, index,
                 docker_list, sbom_type)
    code = stop_serve(proc)
    assert code == 143, (code, (tmp / "serve.log").read_text()[-2000:])
    log = (tmp / "serve.log").read_text()
    assert "mirror: interrupted (SIGTERM); stopped serving" in log
    assert "Traceback" not in log  # whatever the clients did (skopeo tries TLS first)


def http(url: str, method: str = "GET", headers: dict[str, str] | None = None,
         data: bytes | None = None, context=None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def codes(body: bytes) -> list[str]:
    return [e["code"] for e in json.loads(body)["errors"]]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_ping_says_registry_2(served):
    status, headers, body = http(f"{served.url}/v2/")
    assert status == 200 and json.loads(body) == {}
    assert headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_skopeo_copies_the_bundles_digests(served, tmp_path):
    """skopeo copy --all docker://SERVE/... oci:DIR: the index, every manifest and blob have
    the bundle's digests; skopeo hashes each blob it reads."""
    dest = tmp_path / "oci"
    skopeo("copy", "--all", "--src-tls-verify=false",
           f"docker://{served.host}/{served.signed}:1.0", f"oci:{dest}:x")
    (entry,) = json.loads((dest / "index.json").read_text())["manifests"]
    assert entry["digest"] == served.index.digest
    for blob in (dest / "blobs" / "sha256").iterdir():
        digest = f"sha256:{blob.name}"
        assert digest in served.layout.blob_digests
        assert sha(blob.read_bytes()) == digest
    # the Docker list: dir: keeps manifests as they are (oci: would convert them)
    dest = tmp_path / "dir"
    skopeo("copy", "--all", "--src-tls-verify=false",
           f"docker://{served.host}/{served.listed}:2", f"dir:{dest}")
    assert sha((dest / "manifest.json").read_bytes()) == served.docker_list.digest


def test_inspect_raw_bytes_equal_the_bundles(served):
    for ref, digest in ((f"{served.signed}:1.0", served.index.digest),
                        (f"{served.listed}:2", served.docker_list.digest),
                        (f"{served.listed}@{served.docker_list.images[1].digest}",
                         served.docker_list.images[1].digest)):
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                              f"docker://{served.host}/{ref}"], capture_output=True,
                             timeout=60, check=True).stdout
        assert raw == served.layout.blob(digest), ref


def test_manifest_headers_head_and_accept(served):
    url = f"{served.url}/v2/{served.signed}/manifests/1.0"
    status, h, body = http(url, headers={"Accept": ig.ACCEPT})
    assert status == 200 and body == served.layout.blob(served.index.digest)
    assert h["Content-Type"] == ig.OCI_INDEX
    assert h["Docker-Content-Digest"] == served.index.digest
    status, h, body = http(url, "HEAD", headers={"Accept": ig.ACCEPT})
    assert (status, body) == (200, b"")
    assert int(h["Content-Length"]) == served.index.manifest.size
    assert h["Docker-Content-Digest"] == served.index.digest
    # as distribution: an OCI index asked for without its type in Accept is unknown
    status, _, body = http(url, headers={"Accept": ig.DOCKER_MANIFEST})
    assert status == 404 and codes(body) == ["MANIFEST_UNKNOWN"]
    # ... and a Docker list by tag, without the list type, is its linux/amd64 image
    amd64 = served.docker_list.images[0]
    status, h, body = http(f"{served.url}/v2/{served.listed}/manifests/2",
                           headers={"Accept": ig.DOCKER_MANIFEST})
    assert status == 200 and body == amd64.manifest.data
    assert h["Docker-Content-Digest"] == amd64.digest
    assert h["Content-Type"] == ig.DOCKER_MANIFEST
    # by digest it is the list itself, whatever Accept says
    status, h, body = http(f"{served.url}/v2/{served.listed}/manifests/"
                           f"{served.docker_list.digest}")
    assert status == 200 and body == served.docker_list.manifest.data
    assert h["Content-Type"] == ig.DOCKER_LIST


def test_blob_get_head_and_ranges(served):
    layer = served.docker_list.images[0].layers[0]
    data = layer.data
    url = f"{served.url}/v2/{served.listed}/blobs/{layer.digest}"
    status, h, body = http(url)
    assert status == 200 and body == data
    assert h["Docker-Content-Digest"] == layer.digest and h["Accept-Ranges"] == "bytes"
    status, h, body = http(url, "HEAD")
    assert (status, body, int(h["Content-Length"])) == (200, b"", len(data))
    size = len(data)
    for rng, first, last in (("bytes=10-19", 10, 19), ("bytes=1000-", 1000, size - 1),
                             ("bytes=-7", size - 7, size - 1),
                             (f"bytes=5-{size + 100}", 5, size - 1)):
        status, h, body = http(url, headers={"Range": rng})
        assert status == 206, rng
        assert h["Content-Range"] == f"bytes {first}-{last}/{size}", rng
        assert body == data[first:last + 1], rng
    for rng in (f"bytes={size}-", "bytes=20-10", "bytes=-0"):
        status, h, body = http(url, headers={"Range": rng})
        assert status == 416 and h["Content-Range"] == f"bytes */{size}", rng


def test_many_clients_at_once(served):
    """32 ranged reads of one blob at once, each its own connection: every byte right."""
    layer = served.docker_list.images[1].layers[0]
    url = f"{served.url}/v2/{served.listed}/blobs/{layer.digest}"
    step = len(layer.data) // 32

    def part(i: int) -> bytes:
        return http(url, headers={"Range": f"bytes={i * step}-{(i + 1) * step - 1}"})[2]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        parts = list(pool.map(part, range(32)))
    assert b"".join(parts) == layer.data[:32 * step]


def test_unknown_names_manifests_and_blobs(served):
    absent = sha(b"not in the bundle")
    cases = [
        (f"/v2/{served.signed}/blobs/{absent}", "BLOB_UNKNOWN"),
        # a blob of the bundle, but of another repository's image: as a registry answers
        (f"/v2/{served.signed}/blobs/{served.docker_list.images[0].layers[0].digest}",
         "BLOB_UNKNOWN"),
        (f"/v2/{served.signed}/manifests/no-such-tag", "MANIFEST_UNKNOWN"),
        (f"/v2/{served.signed}/manifests/{absent}", "MANIFEST_UNKNOWN"),
        ("/v2/serve/nothing-here/manifests/1.0", "NAME_UNKNOWN"),
        (f"/v2/serve/nothing-here/blobs/{absent}", "NAME_UNKNOWN"),
        ("/v2/serve/nothing-here/tags/list", "NAME_UNKNOWN"),
    ]
    for path, code in cases:
        for method in ("GET", "HEAD"):
            status, _, body = http(served.url + path, method, headers={"Accept": ig.ACCEPT})
            assert status == 404, (method, path)
            if method == "GET":
                assert codes(body) == [code], path


def test_writes_are_refused(served):
    cases = [("POST", f"/v2/{served.signed}/blobs/uploads/"),
             ("PUT", f"/v2/{served.signed}/manifests/2.0"),
             ("DELETE", f"/v2/{served.signed}/manifests/{served.index.digest}"),
             ("PATCH", f"/v2/{served.signed}/blobs/uploads/x"),
             ("DELETE", f"/v2/{served.signed}/blobs/{served.index.images[0].config.digest}")]
    for method, path in cases:
        status, _, body = http(served.url + path, method, data=b"{}",
                               headers={"Content-Type": ig.OCI_MANIFEST})
        assert status == 405 and codes(body) == ["UNSUPPORTED"], (method, path)
    # the image is still there, unchanged
    status, _, body = http(f"{served.url}/v2/{served.signed}/manifests/1.0",
                           headers={"Accept": ig.ACCEPT})
    assert body == served.index.manifest.data
    # and a real client is told no
    proc = run(["skopeo", "copy", "--dest-tls-verify=false",
                f"docker://{served.host}/{served.signed}:1.0",
                f"docker://{served.host}/{served.signed}:copy"])
    assert proc.returncode != 0


def test_tags_and_catalog_paginate(served):
    status, _, body = http(f"{served.url}/v2/{served.signed}/tags/list")
    tags = json.loads(body)["tags"]
    assert json.loads(body)["name"] == served.signed
    sig = f"sha256-{served.index.digest.split(':')[1]}.sig"
    assert tags == sorted(["1.0", sig])
    status, h, body = http(f"{served.url}/v2/{served.signed}/tags/list?n=1")
    assert json.loads(body)["tags"] == [tags[0]]
    assert h["Link"] == f'</v2/{served.signed}/tags/list?last={tags[0]}&n=1>; rel="next"'
    status, h, body = http(f"{served.url}/v2/{served.signed}/tags/list?n=1&last={tags[0]}")
    assert json.loads(body)["tags"] == [tags[1]] and "Link" not in h
    status, _, body = http(f"{served.url}/v2/{served.signed}/tags/list?n=x")
    assert status == 400 and codes(body) == ["PAGINATION_NUMBER_INVALID"]
    status, _, body = http(f"{served.url}/v2/_catalog")
    assert json.loads(body)["repositories"] == sorted([served.signed, served.listed])
    status, h, body = http(f"{served.url}/v2/_catalog?n=1")
    assert json.loads(body)["repositories"] == [min(served.signed, served.listed)]
    assert 'rel="next"' in h["Link"]


def test_referrers_api(served):
    amd64 = served.index.images[0]
    url = f"{served.url}/v2/{served.signed}/referrers/{amd64.digest}"
    status, h, body = http(url)
    assert status == 200 and h["Content-Type"] == ig.OCI_INDEX
    doc = json.loads(body)
    (sbom,) = doc["manifests"]
    assert sbom["artifactType"] == served.sbom_type
    assert served.layout.blob(sbom["digest"])  # the bundle's referrer, by its digest
    assert json.loads(served.layout.blob(sbom["digest"]))["subject"]["digest"] == amd64.digest
    status, h, body = http(url + "?artifactType=application/x-other")
    assert json.loads(body)["manifests"] == []
    assert h["OCI-Filters-Applied"] == "artifactType"
    status, h, body = http(url + "?artifactType=" + urllib.parse.quote(served.sbom_type))
    assert [m["digest"] for m in json.loads(body)["manifests"]] == [sbom["digest"]]
    # a digest nothing refers to: an empty list (a registry with the API never 404s it)
    status, _, body = http(f"{served.url}/v2/{served.signed}/referrers/{served.index.digest}")
    assert status == 200 and json.loads(body)["manifests"] == []


def test_one_log_line_per_request_without_credentials(served):
    path = f"/v2/{served.listed}/manifests/2"
    http(served.url + path + "?secret=query", "HEAD",
         headers={"Authorization": "Basic c2VjcmV0OnBhc3N3b3Jk", "Accept": ig.ACCEPT})
    time.sleep(0.3)
    lines = [ln for ln in served.log.read_text().splitlines() if f"HEAD {path} " in ln]
    assert len(lines) == 1, lines
    assert lines[0].endswith(" ms") and " 200 0 B " in lines[0], lines[0]
    text = served.log.read_text()
    assert "c2VjcmV0" not in text and "secret" not in text
    # a path with an encoded newline stays on its line, as sent
    http(f"{served.url}/v2/x%0a2026-01-01T00:00:00%20forged/tags/list")
    time.sleep(0.3)
    lines = [ln for ln in served.log.read_text().splitlines() if "forged" in ln]
    assert len(lines) == 1 and "/v2/x%0a2026" in lines[0] and " 404 19 B " in lines[0], lines


def test_quiet_still_prints_the_url_and_no_request_lines(served, tmp_path):
    """`-q` leaves out the request lines; the URL on stdout stays, since with
    `--listen 127.0.0.1:0` it is the only way to learn the port."""
    log = tmp_path / "log"
    proc, url = start_serve(served.bundle, log, "-q")
    try:
        status, _, _ = http(f"{url}/v2/")
        assert status == 200
        time.sleep(0.3)
    finally:
        assert stop_serve(proc) == 143
    assert "GET /v2/ " not in log.read_text()


def test_a_client_that_goes_away_is_one_line(served):
    """A client that resets the connection in the middle of a blob: one log line saying so
    (no traceback), and the server goes on answering."""
    layer = served.docker_list.images[0].layers[0]
    host, port = served.host.split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    path = f"/v2/{served.listed}/blobs/{layer.digest}"
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {served.host}\r\n\r\n".encode())
    assert s.recv(1024).startswith(b"HTTP/1.1 200")
    time.sleep(0.5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    s.close()
    deadline = time.monotonic() + 15
    while f"GET {path} 200 cut short (the client went away)" not in served.log.read_text():
        assert time.monotonic() < deadline, served.log.read_text()[-3000:]
        time.sleep(0.2)
    assert "Traceback" not in served.log.read_text()
    assert http(f"{served.url}/v2/")[0] == 200


def test_sigterm_stops_it_during_a_transfer(served, tmp_path):
    """A client stalled in the middle of a blob does not hold the stop up: the socket closes
    at once, the transfer gets two seconds, then the run exits 143."""
    proc, url = start_serve(served.bundle, tmp_path / "log")
    layer = served.docker_list.images[0].layers[0]
    host, port = url.split("://", 1)[1].split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    try:
        s.sendall(f"GET /v2/{served.listed}/blobs/{layer.digest} HTTP/1.1\r\n"
                  f"Host: {host}\r\n\r\n".encode())
        assert s.recv(1024).startswith(b"HTTP/1.1 200")  # then read nothing more
        started = time.monotonic()
        assert stop_serve(proc) == 143
        assert time.monotonic() - started < 10
    finally:
        s.close()
    with pytest.raises(OSError):  # nothing listens there any more
        socket.create_connection((host, int(port)), timeout=5).close()


def test_mirror_pull_from_serve_gives_the_same_digests(served, dst_registry, tmp_path):
    """The served bundle's images, pulled again (referrers through the API) and loaded into a
    real registry: the same digests as the bundle's."""
    again = tmp_path / "again.tar"
    mirror_ok("pull", f"{served.host}/{served.signed}:1.0", f"{served.host}/{served.listed}:2",
              "-o", again, "--cache", tmp_path / "cache", "--insecure-registry", served.host,
              "-q")
    lay = check_layout(again)
    assert {e["digest"] for e in lay.index["manifests"]} == {served.index.digest,
                                                            served.docker_list.digest}
    assert lay.blob_digests == served.layout.blob_digests
    mirror_ok("load", again, "--to", f"{dst_registry.host}/fromserve", "-q")
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{dst_registry.host}/fromserve/{served.signed}:1.0"],
                         capture_output=True, timeout=60, check=True).stdout
    assert raw == served.index.manifest.data


def test_mirror_sync_from_serve_into_a_registry(served, dst_registry, tmp_path):
    """The way from the bootstrap to a real registry without the file at hand: mirror sync
    from mirror serve; the images, their bytes and the SBOM (through the referrers API) land
    there as they are in the bundle."""
    mirror_ok("sync", f"{served.host}/{served.signed}:1.0", f"{served.host}/{served.listed}:2",
              "--to", f"{dst_registry.host}/viasync", "--insecure-registry", served.host,
              "--lock-file", tmp_path / "sync.lock", "-q", cwd=tmp_path)
    for ref, digest in ((f"{served.signed}:1.0", served.index.digest),
                        (f"{served.listed}:2", served.docker_list.digest)):
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                              f"docker://{dst_registry.host}/viasync/{ref}"],
                             capture_output=True, timeout=60, check=True).stdout
        assert raw == served.layout.blob(digest), ref
    amd64 = served.index.images[0].digest
    fallback = f"sha256-{amd64.split(':', 1)[1]}"  # docker-registry 2.8: no referrers API
    status, _, body = http(f"{dst_registry.url}/v2/viasync/{served.signed}/manifests/"
                           f"{fallback}", headers={"Accept": ig.OCI_INDEX})
    assert status == 200, body
    assert [m.get("artifactType") for m in json.loads(body)["manifests"]] == [served.sbom_type]


def test_prefix_names_images_as_load_does(served, tmp_path):
    report = tmp_path / "report.json"
    proc, url = start_serve(served.bundle, tmp_path / "log", "--prefix", "site/mirror",
                            "--report", report)
    try:
        status, _, body = http(f"{url}/v2/_catalog")
        assert json.loads(body)["repositories"] == sorted(
            [f"site/mirror/{served.signed}", f"site/mirror/{served.listed}"])
        status, _, body = http(f"{url}/v2/site/mirror/{served.listed}/manifests/2",
                               headers={"Accept": ig.ACCEPT})
        assert body == served.docker_list.manifest.data
    finally:
        assert stop_serve(proc, signal.SIGINT) == 130  # Ctrl-C
    doc = json.loads(report.read_text())  # written when it stops, whatever the outcome
    assert (doc["url"], doc["requests"], doc["exit_code"]) == (url, 2, 130)
    assert doc["error"] == "interrupted (SIGINT)"
    assert "mirror: interrupted (SIGINT); stopped serving" in (tmp_path / "log").read_text()
    proc2 = run_mirror("serve", served.bundle, "--prefix", "Bad:Prefix", "--listen",
                       "127.0.0.1:0")
    assert proc2.returncode == 2 and "--prefix" in error_line(proc2)


def test_map_and_max_depth_name_images_as_load_does(served, src_registry, tmp_path):
    """serve takes load's placement flags (--map, --map-file, --max-depth, --no-digest-tag)
    and answers under the names load would push: skopeo reads the mapped, flattened names,
    byte for byte, and the old names are unknown."""
    rule = f"{src_registry.host}/{served.signed}=mapped/app"
    proc, url = start_serve(served.bundle, tmp_path / "log", "--prefix", "site", "--map", rule,
                            "--max-depth", "2")
    try:
        host = url.split("://", 1)[1]
        flat = f"site/{served.listed.replace('/', '-')}"  # serve/listed-x under depth 2
        _, _, body = http(f"{url}/v2/_catalog")
        assert json.loads(body)["repositories"] == sorted(["site/mapped-app", flat])
        for repo, tag, digest in (("site/mapped-app", "1.0", served.index.digest),
                                  (flat, "2", served.docker_list.digest)):
            raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                  f"docker://{host}/{repo}:{tag}"],
                                 capture_output=True, timeout=60, check=True).stdout
            assert raw == served.layout.blob(digest), repo
        status, _, _ = http(f"{url}/v2/site/{served.signed}/manifests/1.0",
                            headers={"Accept": ig.ACCEPT})
        assert status == 404
    finally:
        stop_serve(proc)
    bad = run_mirror("serve", served.bundle, "--prefix", "a/b", "--max-depth", "2",
                     "--listen", "127.0.0.1:0")
    assert bad.returncode == 2 and "--max-depth 2" in error_line(bad), bad.stderr


def test_an_incremental_bundle_serves_what_it_holds(served, src_registry, tmp_path):
    """A bundle made --base the served one carries only the new image's blobs: it is served,
    a warning says how many blobs are left to the base, and those are BLOB_UNKNOWN."""
    listed_ref = f"{src_registry.host}/{served.listed}:2"
    signed_ref = f"{src_registry.host}/{served.signed}:1.0"
    base = tmp_path / "base.tar"
    mirror_ok("pull", signed_ref, "-o", base, "--cache", tmp_path / "cache", "-q")
    inc = tmp_path / "inc.tar"
    mirror_ok("pull", signed_ref, listed_ref, "-o", inc, "--base", base,
              "--cache", tmp_path / "cache", "-q")
    proc, url = start_serve(inc, tmp_path / "log")
    try:
        amd64 = served.index.images[0]
        status, _, body = http(f"{url}/v2/{served.signed}/manifests/1.0",
                               headers={"Accept": ig.ACCEPT})
        assert status == 200 and body == served.index.manifest.data  # manifests: all there
        status, _, body = http(f"{url}/v2/{served.signed}/blobs/{amd64.layers[0].digest}")
        assert status == 404 and codes(body) == ["BLOB_UNKNOWN"]  # in the base, said so
        message = json.loads(body)["errors"][0]["message"]
        assert f"leaves it to its base bundle (base.tar, {file_sha256(base)})" in message, body
        layer = served.docker_list.images[1].layers[0]
        status, _, body = http(f"{url}/v2/{served.listed}/blobs/{layer.digest}")
        assert status == 200 and body == layer.data
    finally:
        assert stop_serve(proc) == 143
    left = len(check_layout(base).blob_digests - check_layout(inc).blob_digests)
    assert f"{left} blob(s) the images name are not in it" in (tmp_path / "log").read_text()


def _served_incremental(src_registry, dst_registry, repo_name: str, rng, tmp_path: Path,
                        fmt: str, prefix: str) -> tuple[Path, tuple[subprocess.Popen, str]]:
    """One single-manifest image (`fmt`) at the source, tag 1; its bundle (base.tar) loaded
    at PREFIX of the target, and an incremental bundle of it against that base, served:
    the base's path, and the server's process and URL."""
    img = ig.make_image(rng, ig.AMD64, fmt=fmt)
    push_image(src_registry.url, repo_name, img, tags=["1"])
    ref = f"{src_registry.host}/{repo_name}:1"
    base, inc, cache = tmp_path / "base.tar", tmp_path / "inc.tar", tmp_path / "cache"
    mirror_ok("pull", ref, "-o", base, "--cache", cache, "-q")
    mirror_ok("pull", ref, "-o", inc, "--base", base, "--cache", cache, "-q")
    mirror_ok("load", base, "--to", f"{dst_registry.host}/{prefix}", "-q")
    return base, start_serve(inc, tmp_path / "log", "-q")


@pytest.mark.parametrize("sync_cache", [False, True], ids=["no-cache", "cache"])
def test_sync_from_a_served_incremental_bundle_of_an_image_the_target_holds(
        src_registry, dst_registry, repo_name, rng, tmp_path, sync_cache):
    """README's way from serve to a real registry, a nightly later: the base bundle loaded,
    the incremental one served, `mirror sync` of its image (a single manifest, no index)
    into the target that holds it whole. The target is asked one HEAD (README: an image it
    serves whole); the sync failed with exit 5 on the config, BLOB_UNKNOWN at the served
    incremental bundle (operator pass o19: an index's images sync), with a cache of its own
    or without: what the target holds is read from the target. Synced to another prefix,
    where the base was not loaded, the blob the base carried is BLOB_UNKNOWN at the server
    (exit 5): the error names the base bundle to load first (operator pass o20, D11: the
    server's bare 'blob unknown to registry')."""
    base, (proc, url) = _served_incremental(src_registry, dst_registry, repo_name, rng,
                                            tmp_path, "oci", "incsync")
    try:
        host = url.split("://", 1)[1]
        synced = [run_mirror("sync", f"{host}/{repo_name}:1", "--to",
                             f"{dst_registry.host}/{prefix}", "--insecure-registry", host,
                             "--lock-file", tmp_path / "sync.lock",
                             *(("--cache", tmp_path / "sc") if sync_cache else ()), "-q",
                             cwd=tmp_path) for prefix in ("incsync", "elsewhere")]
    finally:
        assert stop_serve(proc) == 143
    assert synced[0].returncode == 0, synced[0].stderr
    r = synced[1]
    assert r.returncode == EXIT_CODES["not-found"], r.stderr
    assert f"the bundle served leaves it to its base bundle (base.tar, {file_sha256(base)}): " \
        "load that bundle first" in r.stderr, r.stderr


def test_a_rerun_of_a_converting_sync_from_a_served_incremental_bundle_asks_it_nothing_it_lacks(
        src_registry, dst_registry, repo_name, rng, tmp_path):
    """As above, with `--format oci` of a Docker v2.2 image: the cold sync converts it (the
    config read from the target, whose tag then names the source's manifest); the rerun, with
    nothing new, found the tag naming the converted manifest, took the image for one the
    target does not serve whole and read its config from the served incremental bundle, which
    left it to its base: BLOB_UNKNOWN, exit 5 (operator pass o21, D2; from a registry the same
    rerun costs a blob GET of that config every run)."""
    _, (proc, url) = _served_incremental(src_registry, dst_registry, repo_name, rng, tmp_path,
                                         "docker", "incconv")
    try:
        host = url.split("://", 1)[1]
        runs = [run_mirror("sync", f"{host}/{repo_name}:1", "--format", "oci", "--to",
                           f"{dst_registry.host}/incconv", "--insecure-registry", host,
                           "--lock-file", tmp_path / "sync.lock", "--report",
                           tmp_path / f"r{i}.json", "-q", cwd=tmp_path) for i in range(2)]
    finally:
        assert stop_serve(proc) == 143
    assert runs[0].returncode == 0, runs[0].stderr  # cold: converted and pushed
    assert runs[1].returncode == 0, runs[1].stderr  # rerun: nothing new, nothing it lacks
    requests = json.loads((tmp_path / "r1.json").read_text())["requests"][host]
    assert "blob GET" not in requests, requests


def test_a_locked_sync_reads_what_the_target_holds_from_the_target(
        src_registry, dst_registry, repo_name, rng, tmp_path):
    """`mirror sync --locked` from `mirror serve` of the nightly bundle: the tag moved upstream
    and the next bundle is served in the last one's place; the target already serves the
    locked digest whole (its tag names it), so the rerun has nothing to push and nothing to ask
    the source but the tag. It asked the source for the locked manifest by digest: 404
    MANIFEST_UNKNOWN, exit 5 (operator pass o21, D6), where the same rerun without --locked
    reads the image from the target."""
    codes = _locked_sync_across_two_nights(
        src_registry, dst_registry, repo_name, tmp_path,
        lambda: ig.make_image(rng, ig.AMD64, fmt="oci"), ())
    assert codes[0][0] == 0, codes[0][1]
    assert codes[1][0] == 0, codes[1][1]  # the target holds the locked image whole


def _locked_sync_across_two_nights(src_registry, dst_registry, repo_name, tmp_path, make,
                                   sync_args) -> list[tuple[int, str]]:
    """Each night the tag moves upstream (make() pushed), the night's bundle is pulled and
    served at the last one's address, and `mirror sync --locked` (locked on the first night)
    run from it with sync_args: each night's (returncode, stderr)."""
    ref = f"{src_registry.host}/{repo_name}:1"
    lock, target = tmp_path / "locked.lock", f"{dst_registry.host}/locked"
    codes, listen = [], ()
    for night in (1, 2):
        push_image(src_registry.url, repo_name, make(), tags=["1"])
        bundle = tmp_path / f"night{night}.tar"
        mirror_ok("pull", ref, "-o", bundle, "--platform", "all", "--cache", tmp_path / "cache",
                  "-q")
        proc, url = start_serve(bundle, tmp_path / f"log{night}", "-q", *listen)
        try:
            host = url.split("://", 1)[1]
            listen = ("--listen", host)  # the next night's bundle at the same address
            served = f"{host}/{repo_name}:1"
            if night == 1:
                mirror_ok("lock", served, "--lock-file", lock, "--insecure-registry", host,
                          "--platform", "all", "-q")
            r = run_mirror("sync", served, "--locked", "--lock-file", lock, "--to", target,
                           *sync_args, "--insecure-registry", host, "-q", cwd=tmp_path)
        finally:
            assert stop_serve(proc) == 143
        codes.append((r.returncode, r.stderr))
    return codes


@pytest.mark.parametrize("changes", [("--platform", "linux/amd64"), ("--format", "docker")],
                         ids=["filtered", "converted"])
def test_a_locked_sync_of_a_changed_root_needs_the_locked_manifest_and_says_so(
        src_registry, dst_registry, repo_name, rng, tmp_path, changes):
    """As test_a_locked_sync_reads_what_the_target_holds_from_the_target, for an index the
    sync filters (--platform) or converts (--format): the target's tag names the filtered or
    converted index, not the locked one, and the sync makes what it pushes from the locked
    index, so the rerun after the served bundle moved on asks the source for it by digest:
    404 MANIFEST_UNKNOWN, exit 5. The hint said only to re-lock, though the target holds
    what that index gives (operator pass o22, D1); it says why the source must still serve
    it (README: Registry to registry)."""
    codes = _locked_sync_across_two_nights(
        src_registry, dst_registry, repo_name, tmp_path,
        lambda: ig.make_index([ig.make_image(rng, ig.AMD64, fmt="oci"),
                               ig.make_image(rng, ig.ARM64, fmt="oci")], "oci"), changes)
    assert codes[0][0] == 0, codes[0][1]
    assert codes[1][0] == EXIT_CODES["not-found"], codes[1][1]
    assert "is made from the locked manifest itself, so its source must still serve it" in \
        codes[1][1], codes[1][1]


def test_a_layout_directory_is_served(served, tmp_path):
    """The bundle unpacked (an OCI layout directory): the same answers, each blob read from
    its own file."""
    import tarfile

    layout = tmp_path / "layout"
    with tarfile.open(served.bundle) as tf:
        tf.extractall(layout, filter="data")
    proc, url = start_serve(layout, tmp_path / "log")
    try:
        status, _, body = http(f"{url}/v2/{served.signed}/manifests/1.0",
                               headers={"Accept": ig.ACCEPT})
        assert status == 200 and body == served.index.manifest.data
        layer = served.docker_list.images[0].layers[0]
        status, h, body = http(f"{url}/v2/{served.listed}/blobs/{layer.digest}",
                               headers={"Range": "bytes=100-"})
        assert status == 206 and body == layer.data[100:]
    finally:
        assert stop_serve(proc) == 143


def test_a_docker_archive_is_served_as_load_would_push_it(served, tmp_path):
    """`docker save`'s format holds no registry manifest: the image is served with the new
    Docker manifest load would push (said on start-up, as load says it), the config the
    source's, each layer the uncompressed tar named by its diff_id."""
    amd64 = served.index.images[0]
    ref = next(n for n in served.layout.entry_names() if n.endswith(f"/{served.signed}:1.0"))
    archive = tmp_path / "saved.tar"
    skopeo("copy", "--override-arch", "amd64", f"oci-archive:{served.bundle}:{ref}",
           f"docker-archive:{archive}:{served.signed}:1.0")
    proc, url = start_serve(archive, tmp_path / "log")
    try:
        status, _, body = http(f"{url}/v2/_catalog")
        (repo,) = json.loads(body)["repositories"]
        assert repo.endswith(served.signed)
        status, h, body = http(f"{url}/v2/{repo}/manifests/1.0",
                               headers={"Accept": ig.DOCKER_MANIFEST})
        manifest = json.loads(body)
        assert status == 200 and h["Content-Type"] == ig.DOCKER_MANIFEST
        assert manifest["config"]["digest"] == amd64.config.digest
        assert [la["digest"] for la in manifest["layers"]] == [la.diff_id for la in amd64.layers]
        layer = manifest["layers"][0]
        status, _, data = http(f"{url}/v2/{repo}/blobs/{layer['digest']}")
        assert status == 200 and sha(data) == layer["digest"] and len(data) == layer["size"]
    finally:
        assert stop_serve(proc) == 143
    assert f"docker-archive: new manifest {h['Docker-Content-Digest']}" in \
        (tmp_path / "log").read_text()


def test_tls(served, tmp_path):
    ca, cert, key = make_tls_files(tmp_path)
    proc, url = start_serve(served.bundle, tmp_path / "log", "--tls-cert", cert,
                            "--tls-key", key)
    try:
        assert url.startswith("https://")
        certs = tmp_path / "certs"
        certs.mkdir()
        (certs / "ca.crt").write_bytes(ca.read_bytes())
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--cert-dir", str(certs),
                              f"docker://{url.split('://')[1]}/{served.signed}:1.0"],
                             capture_output=True, timeout=60, check=True).stdout
        assert raw == served.index.manifest.data
        import ssl

        ctx = ssl.create_default_context(cafile=str(ca))
        layer = served.index.images[0].layers[0]
        status, _, body = http(f"{url}/v2/{served.signed}/blobs/{layer.digest}",
                               headers={"Range": "bytes=3-"}, context=ctx)
        assert status == 206 and body == layer.data[3:]
    finally:
        assert stop_serve(proc) == 143
    bad = run_mirror("serve", served.bundle, "--tls-cert", cert, "--listen", "127.0.0.1:0")
    assert bad.returncode == 2 and "--tls-key" in error_line(bad)
    bad = run_mirror("serve", served.bundle, "--tls-cert", key, "--tls-key", key,
                     "--listen", "127.0.0.1:0")
    assert bad.returncode == 2, bad.stderr


def test_a_tar_zst_is_refused_with_what_to_do(served, tmp_path):
    zst = tmp_path / "site.tar.zst"
    subprocess.run(["zstd", "-q", "-o", str(zst), str(served.bundle)], check=True)
    proc = run_mirror("serve", zst, "--listen", "127.0.0.1:0")
    assert proc.returncode == 10
    assert "cannot be read at random" in error_line(proc)
    assert f"zstd -d {zst}" in proc.stderr


def test_a_broken_bundle_is_refused_before_listening(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_text("hello\n")
    proc = run_mirror("serve", bad, "--listen", "127.0.0.1:0")
    assert proc.returncode == 10 and proc.stdout == ""
    assert "not a tar" in error_line(proc)
    proc = run_mirror("serve", bad, "--listen", "127.0.0.1:99999")
    assert proc.returncode == 2 and "--listen" in error_line(proc)


def test_a_manifest_that_does_not_match_its_digest_is_exit_7_as_for_load(served, tmp_path):
    """Serve makes load's checks with load's exit codes (README): a platform manifest with one
    byte changed (the same size) is an integrity error, exit 7, naming it; not 10 (operator
    pass o19, D8)."""
    manifest = served.index.images[0].manifest
    data = bytearray(served.bundle.read_bytes())
    with tarfile.open(served.bundle) as tf:
        member = tf.getmember("blobs/sha256/" + manifest.digest.split(":")[1])
    data[member.offset_data + member.size // 2] ^= 1
    bad = tmp_path / "tampered.tar"
    bad.write_bytes(bytes(data))
    for argv in (["serve", bad, "--listen", "127.0.0.1:0"],
                 ["load", bad, "--to", "127.0.0.1:9/never"]):
        proc = run_mirror(*argv)
        assert proc.returncode == 7 and proc.stdout == "", proc.stderr
        assert f"manifest {manifest.digest}: content does not match its digest" in \
            error_line(proc), proc.stderr


def test_ctr_pulls_from_serve(served, tmp_path):
    with Containerd(tmp_path / "ctrd") as c:
        ref = f"{served.host}/{served.signed}:1.0"
        c.ctr("images", "pull", "--plain-http", "--all-platforms", "--snapshotter", "native",
              ref)
        assert c.images()[ref]["digest"] == served.index.digest
        for img in served.index.images:
            assert c.blob(img.config.digest) == img.config.data


def test_podman_pulls_from_serve(served, tmp_path):
    p = Podman(tmp_path / "podman")
    try:
        ref = f"{served.host}/{served.listed}:2"
        p.cli("pull", "--tls-verify=false", ref)
        got = p.image(ref)
        assert "sha256:" + got["Id"] == served.docker_list.images[0].config.digest
        assert got["Digest"] == served.docker_list.digest
    finally:
        p.stop()


def test_docker_pulls_from_serve(served, tmp_path_factory):
    root = tmp_path_factory.mktemp("dockerd")  # short: its sockets' paths have a limit
    with Dockerd(root, config={"insecure-registries": [served.host]}) as d:
        ref = f"{served.host}/{served.signed}:1.0"
        d.cli("pull", ref)
        got = d.image(ref)
        assert got["Id"] == served.index.images[0].config.digest
        assert f"{served.host}/{served.signed}@{served.index.digest}" in got["RepoDigests"]
