"""Push and read generated images over raw HTTP (urllib, synchronous), independent of mirror/.

Blobs go up as POST-then-PUT (skipping ones HEAD finds), child manifests by digest, then the
top manifest by each tag (REFERENCE.md 6.4, 6.5). Every call takes `auth=(user, password)` for
basic auth and `cafile=` for a TLS registry with a private CA.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from email.message import Message

from .imagegen import ACCEPT, Blob, Image, Index, sha256_digest

Auth = tuple[str, str] | None


class PushError(AssertionError):
    """The registry answered something a conforming registry should not have."""


def _request(
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    auth: Auth = None,
    cafile: str | None = None,
    timeout: float = 60,
) -> tuple[int, Message, bytes]:
    """One HTTP exchange; returns (status, headers, body) for 2xx/3xx/4xx/5xx alike."""
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers, err.read()


def _expect(status: int, want: int, what: str, body: bytes) -> None:
    if status != want:
        raise PushError(f"{what}: HTTP {status}, wanted {want}: {body[:500]!r}")


def blob_exists(
    base_url: str, repo: str, digest: str, auth: Auth = None, cafile: str | None = None
) -> bool:
    status, _, body = _request(
        "HEAD", f"{base_url}/v2/{repo}/blobs/{digest}", auth=auth, cafile=cafile
    )
    if status not in (200, 404):
        raise PushError(f"HEAD blob {digest}: HTTP {status}: {body[:200]!r}")
    return status == 200


def push_blob(
    base_url: str, repo: str, blob: Blob, auth: Auth = None, cafile: str | None = None
) -> bool:
    """Upload one blob monolithically unless present; True if it was uploaded."""
    if blob_exists(base_url, repo, blob.digest, auth, cafile):
        return False
    start_url = f"{base_url}/v2/{repo}/blobs/uploads/"
    status, headers, body = _request("POST", start_url, data=b"", auth=auth, cafile=cafile)
    _expect(status, 202, f"POST upload for {blob.digest}", body)
    location = urllib.parse.urljoin(start_url, headers["Location"])  # may be relative
    sep = "&" if urllib.parse.urlsplit(location).query else "?"
    put_url = f"{location}{sep}digest={urllib.parse.quote(blob.digest)}"
    status, headers, body = _request(
        "PUT",
        put_url,
        data=blob.data,
        headers={"Content-Type": "application/octet-stream"},
        auth=auth,
        cafile=cafile,
    )
    _expect(status, 201, f"PUT blob {blob.digest}", body)
    got = headers.get("Docker-Content-Digest")
    if got is not None and got != blob.digest:
        raise PushError(f"PUT blob {blob.digest}: registry says {got}")
    return True


def push_raw_manifest(
    base_url: str,
    repo: str,
    ref: str,
    data: bytes,
    media_type: str,
    auth: Auth = None,
    cafile: str | None = None,
) -> str:
    """PUT manifest bytes at a tag or digest; returns the registry's Docker-Content-Digest."""
    status, headers, body = _request(
        "PUT",
        f"{base_url}/v2/{repo}/manifests/{ref}",
        data=data,
        headers={"Content-Type": media_type},
        auth=auth,
        cafile=cafile,
    )
    _expect(status, 201, f"PUT manifest {repo}:{ref}", body)
    digest = headers.get("Docker-Content-Digest", "")
    expected = Blob(data, media_type).digest
    if digest != expected:
        raise PushError(
            f"PUT manifest {repo}:{ref}: Docker-Content-Digest {digest!r} != {expected}"
        )
    return digest


def push_image(
    base_url: str,
    repo: str,
    obj: Image | Index,
    tags: list[str] | tuple[str, ...] = ("latest",),
    auth: Auth = None,
    cafile: str | None = None,
) -> str:
    """Push an Image or Index with all its blobs and children; returns the top digest.

    With no tags the top manifest is pushed by digest only.
    """
    for blob in obj.all_blobs():
        push_blob(base_url, repo, blob, auth, cafile)
    *children, top = obj.all_manifests()
    for m in children:
        push_raw_manifest(base_url, repo, m.digest, m.data, m.media_type, auth, cafile)
    for ref in list(tags) or [top.digest]:
        push_raw_manifest(base_url, repo, ref, top.data, top.media_type, auth, cafile)
    return top.digest


def get_manifest(
    base_url: str,
    repo: str,
    ref: str,
    accept: str = ACCEPT,
    auth: Auth = None,
    cafile: str | None = None,
) -> tuple[bytes, str, Message]:
    """GET a manifest; returns (body, content type, headers). Raises PushError if not 200."""
    status, headers, body = _request(
        "GET",
        f"{base_url}/v2/{repo}/manifests/{ref}",
        headers={"Accept": accept},
        auth=auth,
        cafile=cafile,
    )
    _expect(status, 200, f"GET manifest {repo}:{ref}", body)
    return body, headers.get("Content-Type", ""), headers


def placed_served(base_url: str, target: Mapping[str, object]) -> None:
    """Every image a sync report's target entry (or a load report) places is served by that
    registry at `base_url`: its digest in its repository (the body's sha256, and the
    Docker-Content-Digest, that digest) and each tag naming it (the same bytes)."""
    for p in target["placement"]:  # type: ignore[attr-defined]
        for ref in (p["digest"], *p["tags"]):
            body, _, headers = get_manifest(base_url, p["repository"], ref)
            assert sha256_digest(body) == headers["Docker-Content-Digest"] == p["digest"], \
                (p, ref)


def head_manifest(base_url: str, repo: str, ref: str, accept: str = ACCEPT
                  ) -> tuple[int, str | None]:
    """HEAD a manifest: (status, its Docker-Content-Digest)."""
    status, headers, _ = _request("HEAD", f"{base_url}/v2/{repo}/manifests/{ref}",
                                  headers={"Accept": accept})
    return status, headers.get("Docker-Content-Digest")


def get_blob(
    base_url: str, repo: str, digest: str, auth: Auth = None, cafile: str | None = None
) -> bytes:
    status, _, body = _request(
        "GET", f"{base_url}/v2/{repo}/blobs/{digest}", auth=auth, cafile=cafile
    )
    _expect(status, 200, f"GET blob {repo}@{digest}", body)
    return body


def list_tags(base_url: str, repo: str, auth: Auth = None, cafile: str | None = None) -> list[str]:
    status, _, body = _request("GET", f"{base_url}/v2/{repo}/tags/list", auth=auth, cafile=cafile)
    if status == 404:
        return []
    _expect(status, 200, f"GET tags {repo}", body)
    return list(json.loads(body).get("tags") or [])


def push_nested_index(base_url: str, repo: str, rng, tag: str = "1") -> tuple[list[Image], Index]:
    """An OCI index whose one entry is another index (amd64 + arm64), tagged `tag`: the
    images and the inner index."""
    from . import imagegen as ig

    imgs = [ig.make_image(rng, p, fmt="oci") for p in (ig.AMD64, ig.ARM64)]
    inner = ig.make_index(imgs, fmt="oci")
    push_image(base_url, repo, inner, tags=[])
    outer = ig.dump_json({"schemaVersion": 2, "mediaType": ig.OCI_INDEX,
                          "manifests": [inner.manifest.descriptor()]})
    push_raw_manifest(base_url, repo, tag, outer, ig.OCI_INDEX)
    return imgs, inner


def slow_image(registry_url: str, faultproxy, repo: str, rng) -> tuple[object, str]:
    """An image with a 256 KiB layer pushed as `repo:slow`, behind a fault proxy (the tests'
    `faultproxy` fixture) whose blob bodies come 4 KiB per 50 ms: a run pulling it stays
    in its downloads (holding its locks) for about 3 s. Gives the proxy and the reference."""
    from .faultproxy import Fault
    from .imagegen import AMD64, make_image, make_layer

    img = make_image(rng, AMD64, layers=[make_layer(rng, size=256 << 10, compressed=False)])
    push_image(registry_url, repo, img, tags=["slow"])
    proxy = faultproxy(registry_url)
    proxy.add(Fault("slow", method="GET", path=r"/blobs/", delay=0.05, chunk=4096, times=None))
    return proxy, f"{proxy.host}/{repo}:slow"


def corrupt_list(registry_url: str, faultproxy, repo: str, rng) -> tuple[object, str]:
    """A Docker list of 3 platforms (3 layers of 20000 bytes each) pushed as `repo:1`, behind
    a fault proxy (a `faultproxy`-like fixture) that flips a byte of every blob it serves: a
    run fails its first digest while the other downloads are still under way. Gives the
    proxy and the reference."""
    from .faultproxy import Fault
    from .imagegen import AMD64, ARM64_V8, ARM_V7, make_image, make_index

    imgs = [make_image(rng, p, "docker", n_layers=3, layer_size=20000)
            for p in (AMD64, ARM64_V8, ARM_V7)]
    push_image(registry_url, repo, make_index(imgs, "docker"), tags=["1"])
    proxy = faultproxy(registry_url)
    proxy.add(Fault("flip_byte", method="GET", path="/blobs/", offset=10, times=None))
    return proxy, f"{proxy.host}/{repo}:1"


def two_images(registry_url: str, proxy, repo: str, rng) -> tuple[Image, list[str]]:
    """A (`repo/a:1`, with a 400 KB layer) and B (`repo/b:1`), pushed, for a run whose
    manifest of A is damaged in the cache's store while B's manifest GET is held
    (tests.support.oracle.damaging): A's image and both references through `proxy`."""
    from .imagegen import AMD64, make_image, make_layer

    img = make_image(rng, AMD64, "oci", layers=[make_layer(rng, 400_000)])
    other = make_image(rng, AMD64, "oci")
    push_image(registry_url, f"{repo}/a", img, tags=["1"])
    push_image(registry_url, f"{repo}/b", other, tags=["1"])
    return img, [f"{proxy.host}/{repo}/a:1", f"{proxy.host}/{repo}/b:1"]


def merge_over_two(registry_url: str, repo: str, rng) -> tuple[Image, Image, list[str]]:
    """For a --merge of two images over a target's tag: A (`repo/a:1`, an amd64 index) and B
    (`repo/b:1`, one image), pushed; the index the target's tag of A holds (amd64 and
    arm64, not pushed), B, and the two references (registry_url's host)."""
    from .imagegen import AMD64, ARM64, make_image, make_index

    old = make_index([make_image(rng, p, "oci") for p in (AMD64, ARM64)], "oci")
    other = make_image(rng, AMD64, "oci")
    push_image(registry_url, f"{repo}/a", make_index([make_image(rng, AMD64, "oci")], "oci"),
               tags=["1"])
    push_image(registry_url, f"{repo}/b", other, tags=["1"])
    host = registry_url.split("://", 1)[1]
    return old, other, [f"{host}/{repo}/a:1", f"{host}/{repo}/b:1"]
