"""Issue 4: foreign layers (Docker "never push" layers with `urls`) under each policy.

A generated image whose first layer is foreign: its descriptor has the foreign media type and
`urls` pointing at a small aiohttp server run by the test, which serves the layer and records
every request. The source registry (real Debian distribution 2.8, basic auth) is configured to
accept manifests with such `urls` (REFERENCE.md 12); it only holds the layer blob when a test
pushes it. Bundles are checked with the tarfile oracle, loaded into real registries with and
without `validation.manifests.urls.allow`, and read back with skopeo and raw HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mirror import mediatypes as mt
from tests.support import imagegen as ig
from tests.support.faultproxy import Fault
from tests.support.oracle import check_layout, file_sha256, resolved, run_mirror, skopeo
from tests.support.pusher import (
    blob_exists,
    get_blob,
    get_manifest,
    list_tags,
    push_blob,
    push_raw_manifest,
)
from tests.support.registry import Registry
from tests.test_bad_input import edit_json, flipped, inventory, rewrite
from tests.test_faults import RecordingProxy

ALLOW_LOOPBACK = [r"^http://127\.0\.0\.1"]
USER = ("alice", "s3cret-foreign")


@dataclass
class Cdn:
    """The vendor's download server: `/good/<name>` serves the layer, `/bad/<name>` other bytes
    of the same length, anything else 404. Records method, path and Authorization of each
    request."""

    blobs: dict[str, bytes]
    port: int = 0
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)

    def url(self, kind: str, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}/{name}"

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            self.requests.append((request.method, request.path,
                                  request.headers.get("Authorization")))
            kind, _, name = request.path.strip("/").partition("/")
            data = self.blobs.get(name)
            if data is None or kind not in ("good", "bad"):
                return web.Response(status=404, text="not here")
            if kind == "bad":
                data = bytes(b ^ 0xFF for b in data)
            return web.Response(body=data, content_type="application/octet-stream")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    def hits(self, kind: str) -> int:
        return sum(1 for _, path, _ in self.requests if path.startswith(f"/{kind}/"))


@contextlib.asynccontextmanager
async def cdn_serving(blobs: dict[str, bytes]) -> AsyncIterator[Cdn]:
    cdn = Cdn(blobs)
    runner = web.AppRunner(cdn.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    cdn.port = runner.addresses[0][1]
    try:
        yield cdn
    finally:
        await runner.cleanup()


@dataclass
class ForeignImage:
    image: ig.Image  # config and layers (the foreign one first)
    manifest: ig.Blob  # with the foreign descriptor

    @property
    def foreign(self) -> ig.Layer:
        return self.image.layers[0]

    @property
    def digest(self) -> str:
        return self.manifest.digest


def make_foreign(rng: random.Random, urls: list[str], fmt: ig.Fmt = "docker") -> ForeignImage:
    foreign = ig.make_layer(rng, 3000, fmt=fmt)
    img = ig.make_image(rng, ig.AMD64, fmt, layers=[foreign, ig.make_layer(rng, 1500, fmt=fmt)])
    body = json.loads(img.manifest.data)
    body["layers"][0]["mediaType"] = mt.DOCKER_FOREIGN if fmt == "docker" else \
        mt.OCI_NONDIST_GZIP
    body["layers"][0]["urls"] = urls
    return ForeignImage(img, ig.Blob(ig.dump_json(body), img.manifest.media_type))


def push_foreign(reg: Registry, repo: str, fi: ForeignImage, *, with_blob: bool,
                 tag: str = "v1") -> None:
    """Config and the ordinary layer always; the foreign blob only `with_blob` (the registry
    takes the manifest without it)."""
    blobs = [fi.image.config, fi.image.layers[1]] + ([fi.foreign] if with_blob else [])
    for b in blobs:
        push_blob(reg.url, repo, b, auth=reg.auth)
    push_raw_manifest(reg.url, repo, tag, fi.manifest.data, fi.manifest.media_type,
                      auth=reg.auth)


def seed_foreign(cdn: Cdn, src: Registry, repo: str, rng: random.Random, *kinds: str,
                 with_blob: bool = False) -> ForeignImage:
    """An image whose foreign layer lists the CDN's URLs of these `kinds` (good, bad,
    missing), pushed to `src` (push_foreign); the CDN serves the layer's bytes."""
    fi = make_foreign(rng, [cdn.url(kind, "layer") for kind in kinds])
    cdn.blobs["layer"] = fi.foreign.data
    push_foreign(src, repo, fi, with_blob=with_blob)
    return fi


def authfile(tmp_path: Path, reg: Registry) -> Path:
    path = tmp_path / "auth.json"
    token = base64.b64encode(":".join(USER).encode()).decode()
    path.write_text(json.dumps({"auths": {reg.host: {"auth": token}}}))
    return path


async def mirror(*args: object) -> Any:
    """The CLI as a subprocess, off the event loop (the CDN is served from it meanwhile)."""
    return await asyncio.to_thread(run_mirror, *args)


async def pull(tmp_path: Path, src: Registry, ref: str, *args: object,
               out: str = "b.tar") -> tuple[Any, Path]:
    bundle = tmp_path / out
    proc = await mirror("pull", ref, "-o", bundle, "--cache", tmp_path / "cache",
                        "--authfile", authfile(tmp_path, src), "--report",
                        tmp_path / f"{out}.json", *args)
    return proc, bundle


def ok(proc: Any) -> Any:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def report(path: Path) -> dict[str, Any]:
    (image,) = json.loads(path.read_text())["images"]
    return image


def inspect_raw(reg: Registry, repo: str, ref: str) -> bytes:
    sep = "@" if ref.startswith("sha256:") else ":"
    return skopeo("inspect", "--raw", "--tls-verify=false",
                  f"docker://{reg.host}/{repo}{sep}{ref}").stdout.encode()


def refused_for_urls(proc: Any, fi_digest: str) -> None:
    """Debian's distribution 2.8 answers a manifest with `urls` it does not allow with a 500
    (REFERENCE.md 12): load fails (exit 3), naming the manifest and the registry's answer."""
    assert proc.returncode == 3, proc.stderr
    assert f"push manifest {fi_digest}" in proc.stderr
    assert "HTTP 500" in proc.stderr


# -- skip (the default) ---------------------------------------------------------------------


async def test_skip_keeps_the_descriptor_and_fetches_nothing(
        registry_factory, dst_registry, repo_name, rng, tmp_path: Path) -> None:
    src = registry_factory(htpasswd=USER, urls_allow=ALLOW_LOOPBACK)
    allow = registry_factory(urls_allow=ALLOW_LOOPBACK)
    async with cdn_serving({}) as cdn:
        fi = seed_foreign(cdn, src, repo_name, rng, "good")
        ref = f"{src.host}/{repo_name}:v1"
        proc, bundle = await pull(tmp_path, src, ref)
        ok(proc)
        assert cdn.requests == []
        lay = check_layout(bundle)
        assert lay.entry(ref)["digest"] == fi.digest
        assert lay.blob(fi.digest) == fi.manifest.data
        assert fi.foreign.digest not in lay.blob_digests
        assert lay.absent == {fi.foreign.digest: "foreign"}
        assert report(tmp_path / "b.tar.json")["conversions"] == {}
        ok(await mirror("verify", bundle))

        # a registry allowing the urls takes the manifest as is, without the blob
        ok(await mirror("load", bundle, "--to", allow.host, "-q"))
        assert inspect_raw(allow, repo_name, "v1") == fi.manifest.data
        assert not blob_exists(allow.url, repo_name, fi.foreign.digest)
        assert blob_exists(allow.url, repo_name, fi.image.layers[1].digest)
        # one with the default configuration refuses it
        refused_for_urls(await mirror("load", bundle, "--to", dst_registry.host, "-q",
                                      "--retries", "0"), fi.digest)
        assert cdn.requests == []


async def test_skip_absent_entry_tampered_verify_and_load_agree(
        registry_factory, repo_name, rng, tmp_path: Path) -> None:
    """One hex digit of mirror.json's `absent` entry changed: verify and load both refuse the
    bundle (exit 10) naming it and the entry; load pushes nothing (it used to push it all,
    taking the foreign layer for absent because its descriptor has `urls`)."""
    src = registry_factory(htpasswd=USER, urls_allow=ALLOW_LOOPBACK)
    allow = registry_factory(urls_allow=ALLOW_LOOPBACK)
    async with cdn_serving({}) as cdn:
        fi = make_foreign(rng, [cdn.url("good", "layer")])
        push_foreign(src, repo_name, fi, with_blob=False)
        proc, good = await pull(tmp_path, src, f"{src.host}/{repo_name}:v1")
        ok(proc)
    real = fi.foreign.digest
    other = flipped(real)
    bundle = rewrite(good, tmp_path / "absent.tar",
                     edit_json("mirror.json", lambda t: t.replace(real, other)))
    assert inventory(bundle)["absent"] == {other: "foreign"}
    with pytest.raises(AssertionError, match=f"{real}.* is missing"):
        check_layout(bundle)  # the oracle sees it too
    proc = await mirror("verify", bundle)
    assert proc.returncode == 10, proc.stdout + proc.stderr
    assert f"{bundle}: mirror.json: absent {other} (foreign) is not referenced" in proc.stdout
    assert f"{bundle}: blob {real} is missing (needed by {fi.digest})" in proc.stdout
    proc = await mirror("load", bundle, "--to", allow.host, "-q")
    assert proc.returncode == 10, proc.stderr
    assert str(bundle) in proc.stderr and (real in proc.stderr or other in proc.stderr)
    assert list_tags(allow.url, repo_name) == []
    assert not blob_exists(allow.url, repo_name, fi.image.layers[1].digest)


# -- include ---------------------------------------------------------------------------------


async def test_include_fetches_from_the_urls_without_credentials(
        registry_factory, dst_registry, repo_name, rng, tmp_path: Path) -> None:
    """The registry does not have the blob: it comes from the urls, in order, checked; the
    request to the url host carries no registry credentials."""
    src = registry_factory(htpasswd=USER, urls_allow=ALLOW_LOOPBACK)
    allow = registry_factory(urls_allow=ALLOW_LOOPBACK)
    async with cdn_serving({}) as cdn:
        fi = seed_foreign(cdn, src, repo_name, rng, "missing", "bad", "good")
        ref = f"{src.host}/{repo_name}:v1"
        proc, bundle = await pull(tmp_path, src, ref, "--foreign-layers", "include")
        ok(proc)
        assert [p for _, p, _ in cdn.requests] == ["/missing/layer", "/bad/layer",
                                                   "/good/layer"]
        assert all(auth is None for _, _, auth in cdn.requests)
        lay = check_layout(bundle)
        assert lay.entry(ref)["digest"] == fi.digest  # the manifest is unchanged
        assert lay.blob(fi.foreign.digest) == fi.foreign.data
        assert lay.absent == {}
        assert report(tmp_path / "b.tar.json")["conversions"] == {}

    # the CDN is gone: what follows needs only the bundle and the target registry
    ok(await mirror("load", bundle, "--to", allow.host, "-q"))
    assert inspect_raw(allow, repo_name, "v1") == fi.manifest.data
    assert get_blob(allow.url, repo_name, fi.foreign.digest) == fi.foreign.data
    out = tmp_path / "copy"
    skopeo("copy", "--src-tls-verify=false", f"docker://{allow.host}/{repo_name}:v1",
           f"dir:{out}")
    assert (out / fi.foreign.digest.split(":", 1)[1]).read_bytes() == fi.foreign.data
    refused_for_urls(await mirror("load", bundle, "--to", dst_registry.host, "-q",
                                  "--retries", "0"), fi.digest)


async def test_a_url_host_asking_to_wait_is_waited_for(registry_factory, repo_name, rng,
                                                       tmp_path: Path) -> None:
    """A foreign URL's host is one more host to the transport: its 429 with Retry-After is
    tried again after the pause it asks for (not the back-off's fraction of a second), on a
    -v retry line, counted in the report."""
    src = registry_factory(htpasswd=USER, urls_allow=ALLOW_LOOPBACK)
    async with cdn_serving({}) as cdn:
        proxy = RecordingProxy(f"http://127.0.0.1:{cdn.port}").start()
        try:
            fi = make_foreign(rng, [f"{proxy.url}/good/layer"])
            cdn.blobs["layer"] = fi.foreign.data
            push_foreign(src, repo_name, fi, with_blob=False)
            proxy.add(Fault("status", method="GET", path="/good/layer", status=429,
                            headers={"Retry-After": "2"}))
            proc, bundle = await pull(tmp_path, src, f"{src.host}/{repo_name}:v1",
                                      "--foreign-layers", "include", "-v")
            ok(proc)
            first, second = proxy.seen("GET", "/good/layer")
        finally:
            proxy.stop()
    assert (first.status, second.status) == (429, 200)
    assert second.when - first.when >= 1.9
    assert f"retry GET {proxy.url}/good/layer: HTTP 429; try 2 of " in proc.stderr, proc.stderr
    assert check_layout(bundle).blob(fi.foreign.digest) == fi.foreign.data
    assert json.loads((tmp_path / "b.tar.json").read_text())["retries"] == 1


async def test_include_prefers_the_registry(registry_factory, repo_name, rng,
                                            tmp_path: Path) -> None:
    src = registry_factory(htpasswd=USER, urls_allow=ALLOW_LOOPBACK)
    async with cdn_serving({}) as cdn:
        fi = seed_foreign(cdn, src, repo_name, rng, "good", with_blob=True)
        proc, bundle = await pull(tmp_path, src, f"{src.host}/{repo_name}:v1",
                                  "--foreign-layers", "include")
        ok(proc)
        assert cdn.requests == []
        assert check_layout(bundle).blob(fi.foreign.digest) == fi.foreign.data


async def test_include_fails_when_no_url_serves_the_layer(registry_factory, repo_name, rng,
                                                          tmp_path: Path) -> None:
    src = registry_factory(htpasswd=USER, urls_allow=ALLOW_LOOPBACK)
    async with cdn_serving({}) as cdn:
        fi = seed_foreign(cdn, src, repo_name, rng, "bad", "missing")
        proc, bundle = await pull(tmp_path, src, f"{src.host}/{repo_name}:v1",
                                  "--foreign-layers", "include", "--retries", "0")
    assert proc.returncode == 3, proc.stderr
    assert f"foreign layer {fi.foreign.digest}" in proc.stderr
    assert "digest mismatch" in proc.stderr and "HTTP 404" in proc.stderr
    assert "hint: make one of the urls reachable" in proc.stderr
    assert not bundle.exists()
    assert not list((tmp_path / "cache" / "blobs" / "sha256").glob(
        fi.foreign.digest.split(":", 1)[1]))


async def test_include_refuses_other_bytes(registry_factory, repo_name, rng,
                                           tmp_path: Path) -> None:
    src = registry_factory(htpasswd=USER, urls_allow=ALLOW_LOOPBACK)
    async with cdn_serving({}) as cdn:
        fi = seed_foreign(cdn, src, repo_name, rng, "bad")
        proc, bundle = await pull(tmp_path, src, f"{src.host}/{repo_name}:v1",
                                  "--foreign-layers", "include")
        assert cdn.hits("bad") == 1
    assert proc.returncode == 7, proc.stderr  # an integrity error: never stored
    assert f"expected {fi.foreign.digest}" in proc.stderr
    assert not bundle.exists()


# -- rewrite ---------------------------------------------------------------------------------


async def test_rewrite_makes_ordinary_layers_any_registry_takes(
        registry_factory, dst_registry, repo_name, rng, tmp_path: Path) -> None:
    src = registry_factory(htpasswd=USER, urls_allow=ALLOW_LOOPBACK)
    async with cdn_serving({}) as cdn:
        fi = seed_foreign(cdn, src, repo_name, rng, "good")
        ref = f"{src.host}/{repo_name}:v1"
        cfg = tmp_path / "images.yaml"
        cfg.write_text(f"version: 1\ndefaults:\n  foreign_layers: rewrite\nimages:\n  - {ref}\n")
        proc = ok(await mirror("pull", "-f", cfg, "-o", tmp_path / "b.tar", "--cache",
                               tmp_path / "cache", "--authfile", authfile(tmp_path, src),
                               "--report", tmp_path / "r.json"))
        bundle = tmp_path / "b.tar"
        assert [p for _, p, _ in cdn.requests] == ["/good/layer"]
    rep = report(tmp_path / "r.json")
    new = rep["digest"]
    assert rep["conversions"] == {fi.digest: new} and new != fi.digest
    # the report names the manifest the target will serve, and the source's as such
    assert rep["platform_digests"] == {"linux/amd64": new}
    assert rep["source_platform_digests"] == {"linux/amd64": fi.digest}
    assert f"converted {fi.digest} -> {new}" in proc.stderr
    lay = check_layout(bundle)
    entry = lay.entry(ref)
    assert entry["digest"] == new
    assert entry["annotations"]["dev.mirror.conversions"] == f"{fi.digest}>{new}"
    body = lay.manifests[new]
    assert body["layers"][0] == {"mediaType": mt.DOCKER_LAYER, "digest": fi.foreign.digest,
                                 "size": fi.foreign.size}
    assert body["config"] == fi.image.config.descriptor()
    assert lay.blob(fi.foreign.digest) == fi.foreign.data

    ok(await mirror("load", bundle, "--to", dst_registry.host, "-q"))  # no urls: accepted
    data = inspect_raw(dst_registry, repo_name, "v1")
    assert ig.sha256_digest(data) == new
    assert get_blob(dst_registry.url, repo_name, fi.foreign.digest) == fi.foreign.data
    out = tmp_path / "copy"
    skopeo("copy", "--src-tls-verify=false", f"docker://{dst_registry.host}/{repo_name}:v1",
           f"dir:{out}")
    assert (out / fi.foreign.digest.split(":", 1)[1]).read_bytes() == fi.foreign.data


async def test_rewrite_in_a_list_with_format_oci(registry_factory, dst_registry, repo_name,
                                                 rng, tmp_path: Path) -> None:
    """A Docker list with a foreign-layer child: the child is rewritten and converted, the
    list follows it; the registry's copy of the layer is used (the CDN is never asked)."""
    src = registry_factory(htpasswd=USER, urls_allow=ALLOW_LOOPBACK)
    async with cdn_serving({}) as cdn:
        fi = make_foreign(rng, [cdn.url("good", "layer")])
        plain = ig.make_image(rng, ig.ARM64, "docker")
        for b in plain.blobs():
            push_blob(src.url, repo_name, b, auth=src.auth)
        push_raw_manifest(src.url, repo_name, plain.digest, plain.manifest.data,
                          plain.manifest.media_type, auth=src.auth)
        push_foreign(src, repo_name, fi, with_blob=True, tag=fi.digest)
        dlist = ig.Blob(ig.dump_json({"schemaVersion": 2, "mediaType": mt.DOCKER_LIST,
                                      "manifests": [
                                          fi.manifest.descriptor(platform=ig.AMD64),
                                          plain.manifest.descriptor(platform=ig.ARM64)]}),
                        mt.DOCKER_LIST)
        push_raw_manifest(src.url, repo_name, "v1", dlist.data, dlist.media_type,
                          auth=src.auth)
        proc, bundle = await pull(tmp_path, src, f"{src.host}/{repo_name}:v1",
                                  "--foreign-layers", "rewrite", "--format", "oci")
        ok(proc)
        assert cdn.requests == []
    conv = report(tmp_path / "b.tar.json")["conversions"]
    assert list(conv) == [fi.digest, plain.digest, dlist.digest]
    lay = check_layout(bundle)
    layer = lay.manifests[conv[fi.digest]]["layers"][0]
    assert layer == {"mediaType": mt.OCI_LAYER_GZIP, "digest": fi.foreign.digest,
                     "size": fi.foreign.size}
    ok(await mirror("load", bundle, "--to", dst_registry.host, "-q"))
    body, ctype, _ = get_manifest(dst_registry.url, repo_name, "v1")
    assert ig.sha256_digest(body) == conv[dlist.digest] and ctype == mt.OCI_INDEX
    assert blob_exists(dst_registry.url, repo_name, fi.foreign.digest)


# -- mirror lock -----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["include", "rewrite"])
@pytest.mark.slow
async def test_lock_takes_foreign_layers_like_pull(registry_factory, repo_name, rng,
                                                   tmp_path: Path, policy: str) -> None:
    """`mirror lock --foreign-layers P` records what `pull --foreign-layers P` does (the foreign
    blob among the blobs; rewrite: the new manifest digest and its conversion) without
    fetching a layer, as `foreign_layers: P` in images.yaml does; `pull --locked` with the flag
    writes the very bundle the unlocked pull wrote."""
    src = registry_factory(htpasswd=USER, urls_allow=ALLOW_LOOPBACK)
    async with cdn_serving({}) as cdn:
        fi = seed_foreign(cdn, src, repo_name, rng, "good")
        ref = f"{src.host}/{repo_name}:v1"
        cfg = tmp_path / "images.yaml"
        cfg.write_text(f"version: 1\nimages:\n  - {ref}\n")
        common = ("--cache", tmp_path / "cache", "--authfile", authfile(tmp_path, src), "-q")

        ok(await mirror("lock", "-f", cfg, "--foreign-layers", policy, *common))
        assert cdn.requests == []  # a lock downloads no layer
        lock = json.loads((tmp_path / "images.lock").read_text())
        entry = lock["images"][ref]
        assert entry["sourceDigest"] == fi.digest and fi.foreign.digest in lock["blobs"]
        if policy == "rewrite":
            assert entry["digest"] != fi.digest
            assert entry["conversions"] == {fi.digest: entry["digest"]}
        else:
            assert entry["digest"] == fi.digest and entry["conversions"] == {}

        ok(await mirror("pull", "-f", cfg, "--foreign-layers", policy, "-o",
                        tmp_path / "a.tar", "--lock-file", tmp_path / "pulled.lock", *common))
        assert lock == resolved(tmp_path / "pulled.lock")
        assert check_layout(tmp_path / "a.tar").entry(ref)["digest"] == entry["digest"]
        ok(await mirror("pull", "-f", cfg, "--locked", "--foreign-layers", policy, "-o",
                        tmp_path / "l.tar", *common))
        assert file_sha256(tmp_path / "l.tar") == file_sha256(tmp_path / "a.tar")

        # the images.yaml setting is the same lock; the flag overrides it
        yaml_cfg = tmp_path / "setting.yaml"
        yaml_cfg.write_text(f"version: 1\ndefaults:\n  foreign_layers: {policy}\n"
                            f"images:\n  - {ref}\n")
        ok(await mirror("lock", "-f", yaml_cfg, *common))
        assert json.loads((tmp_path / "setting.lock").read_text()) == lock
        ok(await mirror("lock", "-f", yaml_cfg, "--foreign-layers", "skip", *common))
        skipped = json.loads((tmp_path / "setting.lock").read_text())
        assert skipped["images"][ref]["digest"] == fi.digest
        assert fi.foreign.digest not in skipped["blobs"]
