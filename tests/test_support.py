"""The test support code works against the real registry, skopeo and aiohttp."""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from tests.support import imagegen as ig
from tests.support.faultproxy import Fault
from tests.support.pusher import (
    PushError,
    blob_exists,
    get_blob,
    get_manifest,
    list_tags,
    push_image,
    push_raw_manifest,
)


def skopeo(*args: str) -> bytes:
    proc = subprocess.run(["skopeo", *args], capture_output=True, timeout=180)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


# -- imagegen ----------------------------------------------------------------------------


def test_images_are_deterministic_and_well_formed() -> None:
    def build() -> ig.Index:
        rng = random.Random(7)
        imgs = [ig.make_image(rng, p, "oci") for p in ig.PLATFORMS]
        return ig.make_index(imgs, "oci", attestation=True, rng=rng)

    a, b = build(), build()
    assert a.digest == b.digest
    assert [x.digest for x in a.all_blobs()] == [x.digest for x in b.all_blobs()]
    index = json.loads(a.manifest.data)
    assert index["mediaType"] == ig.OCI_INDEX
    assert [m["platform"] for m in index["manifests"][:5]] == list(ig.PLATFORMS)
    att = index["manifests"][5]
    assert att["platform"] == {"architecture": "unknown", "os": "unknown"}
    assert att["annotations"]["vnd.docker.reference.digest"] == a.images[0].digest
    assert a.all_manifests()[-1] is a.manifest and len(a.all_manifests()) == 7

    img = a.images[1]
    config = json.loads(img.config.data)
    assert (config["architecture"], config["variant"]) == ("arm64", "v8")
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in img.layers]
    layer = img.layers[0]
    import gzip

    assert "sha256:" + hashlib.sha256(gzip.decompress(layer.data)).hexdigest() == layer.diff_id


def test_shared_layers_are_deduplicated(rng: random.Random) -> None:
    base = ig.make_layer(rng, size=1000)
    imgs = [
        ig.make_image(rng, p, "docker", layers=[base, ig.make_layer(rng)])
        for p in (ig.AMD64, ig.ARM64)
    ]
    index = ig.make_index(imgs, "docker")
    digests = [b.digest for b in index.all_blobs()]
    assert len(digests) == len(set(digests)) == 5  # 2 configs + shared + 2 own layers
    manifest = json.loads(imgs[0].manifest.data)
    assert manifest["mediaType"] == ig.DOCKER_MANIFEST
    assert manifest["layers"][0]["mediaType"] == ig.DOCKER_LAYER_GZIP
    with pytest.raises(ValueError, match="only valid in OCI"):
        ig.make_index(imgs, "docker", attestation=True)


# -- pusher + registry + skopeo ------------------------------------------------------------


def test_push_docker_list_three_platforms(src_registry, repo_name, rng) -> None:
    imgs = [ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM64_V8, ig.ARM_V7)]
    index = ig.make_index(imgs, "docker")
    assert push_image(src_registry.url, repo_name, index, ["v1", "latest"]) == index.digest

    body, ctype, headers = get_manifest(src_registry.url, repo_name, "v1")
    assert (body, ctype) == (index.manifest.data, ig.DOCKER_LIST)
    assert headers["Docker-Content-Digest"] == index.digest
    for img in imgs:
        assert get_manifest(src_registry.url, repo_name, img.digest)[0] == img.manifest.data
    assert all(blob_exists(src_registry.url, repo_name, b.digest) for b in index.all_blobs())
    assert get_blob(src_registry.url, repo_name, imgs[0].layers[1].digest) == imgs[0].layers[1].data
    assert sorted(list_tags(src_registry.url, repo_name)) == ["latest", "v1"]
    assert not blob_exists(src_registry.url, repo_name, "sha256:" + "0" * 64)

    raw = skopeo(
        "inspect", "--raw", "--tls-verify=false", f"docker://{src_registry.host}/{repo_name}:v1"
    )
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == index.digest
    # pushing again is idempotent (every blob skipped by HEAD)
    push_image(src_registry.url, repo_name, index, ["v1"])


def test_push_oci_index_with_attestation(src_registry, repo_name, rng) -> None:
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64, ig.ARM_V6)]
    index = ig.make_index(imgs, "oci", attestation=True, rng=rng)
    push_image(src_registry.url, repo_name, index, ["v2"])
    raw = skopeo(
        "inspect", "--raw", "--tls-verify=false", f"docker://{src_registry.host}/{repo_name}:v2"
    )
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == index.digest
    att = index.extra[0]
    body, ctype, _ = get_manifest(src_registry.url, repo_name, att.digest)
    assert ctype == ig.OCI_MANIFEST and json.loads(body)["layers"][0]["mediaType"] == ig.IN_TOTO


def test_registry_rejects_index_before_children(src_registry, repo_name, rng) -> None:
    index = ig.make_index([ig.make_image(rng, ig.AMD64, "oci")], "oci")
    with pytest.raises(PushError, match="HTTP 400"):
        push_raw_manifest(src_registry.url, repo_name, "x", index.manifest.data, ig.OCI_INDEX)


def test_skopeo_copies_written_layout(tmp_path: Path, dst_registry, repo_name, rng) -> None:
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64_V8)]
    index = ig.make_index(imgs, "oci", attestation=True, rng=rng)
    single = ig.make_image(rng, ig.ARM_V7, "oci", n_layers=1)
    layout = ig.write_layout(tmp_path / "layout", {"multi": index, "single": single})
    for name, obj in (("multi", index), ("single", single)):
        skopeo(
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            f"oci:{layout}:{name}",
            f"docker://{dst_registry.host}/{repo_name}:{name}",
        )
        body, _, _ = get_manifest(dst_registry.url, repo_name, name)
        assert body == obj.manifest.data


def test_registry_urls_allow(registry_factory, repo_name, rng) -> None:
    reg = registry_factory(urls_allow=[r"^https://foreign\.example/"])
    img = ig.make_image(rng, ig.AMD64, "docker", n_layers=1)
    push_image(reg.url, repo_name, img, [])
    manifest = json.loads(img.manifest.data)
    manifest["layers"].append(
        {
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": "sha256:" + "1" * 64,
            "size": 10,
            "urls": ["https://foreign.example/x"],
        }
    )
    data = json.dumps(manifest).encode()
    push_raw_manifest(reg.url, repo_name, "foreign", data, ig.DOCKER_MANIFEST)
    assert get_manifest(reg.url, repo_name, "foreign")[0] == data


def test_htpasswd_registry(registry_factory, repo_name, rng) -> None:
    reg = registry_factory(htpasswd=("alice", "s3cret"))
    assert fetch(f"{reg.url}/v2/")[0] == 401
    img = ig.make_image(rng, ig.AMD64, "oci", n_layers=1)
    with pytest.raises(PushError, match="401"):
        push_image(reg.url, repo_name, img, ["v1"])
    with pytest.raises(PushError, match="401"):
        push_image(reg.url, repo_name, img, ["v1"], auth=("alice", "wrong"))
    push_image(reg.url, repo_name, img, ["v1"], auth=("alice", "s3cret"))
    assert get_manifest(reg.url, repo_name, "v1", auth=reg.auth)[0] == img.manifest.data


def test_tls_registry(registry_factory, repo_name, rng) -> None:
    reg = registry_factory(tls=True)
    assert reg.url.startswith("https://") and reg.ca_path is not None
    img = ig.make_image(rng, ig.AMD64, "oci", n_layers=1)
    push_image(reg.url, repo_name, img, ["v1"], cafile=str(reg.ca_path))
    assert get_manifest(reg.url, repo_name, "v1", cafile=str(reg.ca_path))[0] == img.manifest.data
    with pytest.raises(urllib.error.URLError) as info:
        get_manifest(reg.url, repo_name, "v1")
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)


# -- fault proxy -------------------------------------------------------------------------


@pytest.fixture
def pushed(src_registry, repo_name, rng) -> tuple[str, ig.Image]:
    img = ig.make_image(rng, ig.AMD64, "oci", n_layers=1, layer_size=300_000)
    push_image(src_registry.url, repo_name, img, ["v1"])
    return repo_name, img


def test_proxy_passes_through_and_rewrites_location(src_registry, faultproxy, repo_name, rng):
    proxy = faultproxy(src_registry.url)
    index = ig.make_index(
        [ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM_V7)], "docker"
    )
    push_image(proxy.url, repo_name, index, ["v1"])  # uploads stream through, Location rewritten
    assert get_manifest(src_registry.url, repo_name, "v1")[0] == index.manifest.data
    assert ("PUT", f"/v2/{repo_name}/manifests/v1", 201) in proxy.requests
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{proxy.host}/{repo_name}:v1")
    assert raw == index.manifest.data


def test_proxy_status_fault(src_registry, faultproxy, pushed) -> None:
    repo, img = pushed
    proxy = faultproxy(src_registry.url)
    fault = proxy.add(
        Fault(
            "status",
            method="GET",
            path=r"/blobs/sha256:",
            status=429,
            headers={"Retry-After": "1"},
            times=2,
        )
    )
    url = f"{proxy.url}/v2/{repo}/blobs/{img.layers[0].digest}"
    for _ in range(2):
        status, headers, body = fetch(url)
        assert (status, headers["Retry-After"]) == (429, "1")
        assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert fetch(url)[0] == 200  # times=2 used up
    assert fault.hits == 2
    assert [s for _, _, s in proxy.requests] == [429, 429, 200]
    assert proxy.bytes_by_path[f"/v2/{repo}/blobs/{img.layers[0].digest}"] >= img.layers[0].size


def test_proxy_flip_byte(src_registry, faultproxy, pushed) -> None:
    repo, img = pushed
    proxy = faultproxy(src_registry.url)
    proxy.add(Fault("flip_byte", path=r"/blobs/", offset=1234))
    data = img.layers[0].data
    status, _, body = fetch(f"{proxy.url}/v2/{repo}/blobs/{img.layers[0].digest}")
    assert status == 200 and len(body) == len(data) and body != data
    assert [i for i in range(len(data)) if body[i] != data[i]] == [1234]
    assert proxy.bytes_served == len(data)


def test_proxy_insert_keeps_the_answers_headers(src_registry, faultproxy, pushed) -> None:
    """`insert`: the body with bytes added (here one space inside a manifest, still JSON),
    Content-Length grown to match, the registry's Docker-Content-Digest kept; also across
    the body's chunks (a blob, at an offset past the first)."""
    repo, img = pushed
    proxy = faultproxy(src_registry.url)
    proxy.add(Fault("insert", method="GET", path=r"/manifests/v1$", offset=1, body=b" "))
    proxy.add(Fault("insert", method="GET", path=r"/blobs/", offset=200_000, body=b"xy"))
    accept = {"Accept": img.manifest.media_type}
    status, headers, body = fetch(f"{proxy.url}/v2/{repo}/manifests/v1", accept)
    assert status == 200 and body == img.manifest.data[:1] + b" " + img.manifest.data[1:]
    assert json.loads(body) == json.loads(img.manifest.data)
    assert headers["Docker-Content-Digest"] == img.digest
    assert int(headers["Content-Length"]) == len(body)
    data = img.layers[0].data
    status, headers, body = fetch(f"{proxy.url}/v2/{repo}/blobs/{img.layers[0].digest}")
    assert status == 200 and body == data[:200_000] + b"xy" + data[200_000:]
    assert int(headers["Content-Length"]) == len(body)
    assert fetch(f"{proxy.url}/v2/{repo}/manifests/v1", accept)[2] == img.manifest.data  # once
    proxy.add(Fault("insert", method="GET", path=r"/manifests/v1$", offset=1, body=b" ",
                    headers={"Docker-Content-Digest": ""}))
    status, headers, body = fetch(f"{proxy.url}/v2/{repo}/manifests/v1", accept)
    assert body == img.manifest.data[:1] + b" " + img.manifest.data[1:]
    assert "Docker-Content-Digest" not in headers and headers["Etag"] == f'"{img.digest}"'


def test_proxy_truncate_and_skip(src_registry, faultproxy, pushed) -> None:
    repo, img = pushed
    proxy = faultproxy(src_registry.url)
    proxy.add(Fault("truncate", method="GET", path=r"/blobs/", offset=5000, skip=1))
    url = f"{proxy.url}/v2/{repo}/blobs/{img.layers[0].digest}"
    assert fetch(url)[2] == img.layers[0].data  # skip=1 lets the first one through
    with pytest.raises(http.client.IncompleteRead) as info:
        fetch(url)
    assert len(info.value.partial) == 5000


def test_proxy_short_body_with_a_matching_length(src_registry, faultproxy, pushed) -> None:
    repo, img = pushed
    proxy = faultproxy(src_registry.url)
    proxy.add(Fault("short", method="GET", path=r"/blobs/", offset=5000))
    url = f"{proxy.url}/v2/{repo}/blobs/{img.layers[0].digest}"
    status, headers, body = fetch(url)  # a whole answer as far as HTTP can tell
    assert (status, headers["Content-Length"], body) == (200, "5000", img.layers[0].data[:5000])
    assert fetch(url)[2] == img.layers[0].data  # times=1


def test_proxy_reset_after(src_registry, faultproxy, pushed) -> None:
    repo, img = pushed
    proxy = faultproxy(src_registry.url)
    proxy.add(Fault("reset_after", method="GET", path=r"/blobs/", offset=100_000))
    url = f"{proxy.url}/v2/{repo}/blobs/{img.layers[0].digest}"
    with pytest.raises((ConnectionError, http.client.IncompleteRead)):
        fetch(url)
    assert fetch(url)[2] == img.layers[0].data
    # at most `offset` bytes before the reset (fewer if the client gave up first under load)
    served = proxy.bytes_by_path[f"/v2/{repo}/blobs/{img.layers[0].digest}"]
    assert len(img.layers[0].data) < served <= 100_000 + len(img.layers[0].data)


async def test_proxy_reset(src_registry, faultproxy, pushed) -> None:
    """`reset`: the connection aborted before any answer, a HEAD's too (aiohttp: a
    connection error, once it has sent an idempotent request again itself); upstream never
    sees it, and a request once the fault is used up goes through."""
    repo, img = pushed
    proxy = faultproxy(src_registry.url)
    reset = proxy.add(Fault("reset", method="HEAD", path=r"/blobs/", times=None))
    url = f"{proxy.url}/v2/{repo}/blobs/{img.layers[0].digest}"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.head(url) as resp:
                pass
        reset.times = reset.hits
        async with session.head(url) as resp:
            assert resp.status == 200
    assert [s for _, _, s in proxy.requests] == [0] * reset.hits + [200]


def test_proxy_ignore_range(src_registry, faultproxy, pushed) -> None:
    repo, img = pushed
    proxy = faultproxy(src_registry.url)
    url = f"{proxy.url}/v2/{repo}/blobs/{img.layers[0].digest}"
    status, headers, body = fetch(url, {"Range": "bytes=1000-"})
    assert (status, body) == (206, img.layers[0].data[1000:])
    assert headers["Content-Range"].startswith("bytes 1000-")
    proxy.add(Fault("ignore_range", path=r"/blobs/"))
    status, _, body = fetch(url, {"Range": "bytes=1000-"})
    assert (status, body) == (200, img.layers[0].data)
    proxy.reset_counters()
    assert proxy.requests == [] and proxy.bytes_served == 0


async def test_proxy_faults_seen_by_aiohttp(src_registry, faultproxy, pushed) -> None:
    repo, img = pushed
    proxy = faultproxy(src_registry.url)
    proxy.add(Fault("reset_after", method="GET", path=r"/blobs/", offset=50_000))
    proxy.add(Fault("slow", method="GET", path=r"/blobs/", delay=0.001, chunk=64 * 1024))
    url = f"{proxy.url}/v2/{repo}/blobs/{img.layers[0].digest}"
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(url) as resp:
                await resp.read()
        async with session.get(url) as resp:  # the slow fault: slow, but intact
            assert await resp.read() == img.layers[0].data
        proxy.add(Fault("status", path=r"/manifests/", status=503, times=None))
        async with session.get(f"{proxy.url}/v2/{repo}/manifests/v1") as resp:
            assert resp.status == 503
    proxy.clear_faults()
    assert fetch(f"{proxy.url}/v2/{repo}/manifests/v1", {"Accept": ig.ACCEPT})[0] == 200
