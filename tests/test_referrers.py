"""Issue 7: signatures, SBOMs and attestations travel with their images, byte for byte.

A cosign-style signature (simple-signing payload, ECDSA P-256 key made by the test) lives under
`sha256-<index hex>.sig`; an SPDX SBOM with `subject` is listed in the fallback tag index
`sha256-<manifest hex>` (Debian's registry 2.8 has no referrers API). A small server in front
of the real registry implements the referrers API for the API path.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import imagegen as ig
from tests.support.oracle import (
    check_layout,
    error_line,
    file_sha256,
    mirror_ok,
    resolved,
    run_mirror,
    skopeo_copy_ok,
    tag_unserved,
)
from tests.support.pusher import (
    get_blob,
    get_manifest,
    placed_served,
    push_blob,
    push_image,
    push_raw_manifest,
)
from tests.support.referrers import (
    EMPTY,
    fallback_index,
    fallback_tag,
    make_sbom,
    make_signature,
    push_sbom,
    push_signature,
)

OCI_MANIFEST = ig.OCI_MANIFEST
OCI_INDEX = ig.OCI_INDEX


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def seed(url: str, repo: str, rng, key, *, fallback: bool = True):
    imgs = [ig.make_image(rng, p, fmt="oci") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, fmt="oci")
    push_image(url, repo, index, tags=["1.0"])
    tag, sig = push_signature(url, repo, key, index.digest)
    sbom = push_sbom(url, repo, imgs[0].manifest, fallback=fallback)
    return index, imgs, sig, tag, sbom


def verify_signature(key, sig_manifest: bytes, url: str, repo: str) -> None:
    doc = json.loads(sig_manifest)
    layer = doc["layers"][0]
    payload = get_blob(url, repo, layer["digest"])
    signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
    key.public_key().verify(signature, payload, ec.ECDSA(hashes.SHA256()))  # raises if bad


@pytest.mark.slow
def test_signature_and_sbom_travel_and_verify(src_registry, dst_registry, repo_name, rng,
                                              tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    index, imgs, sig, tag, sbom = seed(src_registry.url, repo_name, rng, key)
    bundle = tmp_path / "b.tar"
    pull = mirror_ok("pull", f"{src_registry.host}/{repo_name}:1.0", "-o", bundle,
                     "--cache", tmp_path / "c")
    assert "2 referrer(s) (sbom, signature)" in pull.stderr
    inspect = json.loads(mirror_ok("inspect", bundle, "--json").stdout)
    names = {d["reference"] for d in inspect}
    kinds = {d["reference"]: (d.get("kind"), d.get("referrerOf"), d.get("artifactType"))
             for d in inspect}
    assert kinds[f"{src_registry.host}/{repo_name}@{sbom.digest}"] == (
        "sbom", imgs[0].digest, "application/spdx+json")
    assert kinds[f"{src_registry.host}/{repo_name}:{tag}"][:2] == ("signature", index.digest)
    assert "signature of:" in mirror_ok("inspect", bundle).stdout
    assert f"{src_registry.host}/{repo_name}:{tag}" in names
    assert f"{src_registry.host}/{repo_name}@{sbom.digest}" in names

    for _ in range(2):  # a second load must not duplicate the fallback entry
        mirror_ok("load", bundle, "--to", dst_registry.host)
    got, _, _ = get_manifest(dst_registry.url, repo_name, tag)
    assert got == sig.data  # byte for byte
    verify_signature(key, got, dst_registry.url, repo_name)
    fb, _, _ = get_manifest(dst_registry.url, repo_name,
                            "sha256-" + imgs[0].digest.split(":")[1])
    entries = json.loads(fb)["manifests"]
    assert [e["digest"] for e in entries] == [sbom.digest]
    assert entries[0]["artifactType"] == "application/spdx+json"
    assert entries[0]["annotations"] == {"org.opencontainers.image.created":
                                         "2026-01-01T00:00:00Z"}
    got_sbom, _, _ = get_manifest(dst_registry.url, repo_name, sbom.digest)
    assert got_sbom == sbom.data


@pytest.mark.slow
def test_filtered_index_warns_and_no_referrers_leaves_them(src_registry, repo_name, rng,
                                                           tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    index, imgs, sig, tag, sbom = seed(src_registry.url, repo_name, rng, key)
    ref = f"{src_registry.host}/{repo_name}:1.0"
    r = mirror_ok("pull", ref, "--platform", "linux/amd64", "-o", tmp_path / "f.tar",
                  "--cache", tmp_path / "c")
    assert f"made for the source index {index.digest}" in r.stderr
    assert "index: sparse" in r.stderr
    # the signed index is not in the bundle (nor, after a load, at the target): inspect names
    # it as the source's, the SBOM's subject (carried) as the bundle's
    docs = {d["reference"]: d for d in json.loads(mirror_ok("inspect", tmp_path / "f.tar",
                                                           "--json").stdout)}
    signed = docs[f"{src_registry.host}/{repo_name}:{tag}"]
    assert signed["referrerOfSource"] == index.digest and "referrerOf" not in signed
    assert docs[f"{src_registry.host}/{repo_name}@{sbom.digest}"]["referrerOf"] == imgs[0].digest
    shown = mirror_ok("inspect", tmp_path / "f.tar").stdout
    assert re.search(rf"signature of source digest \(upstream\): +{index.digest}", shown)
    r = mirror_ok("pull", ref, "--no-referrers", "-o", tmp_path / "n.tar", "--cache",
                  tmp_path / "c")
    names = {d["reference"] for d in json.loads(mirror_ok("inspect", tmp_path / "n.tar",
                                                          "--json").stdout)}
    assert names == {ref}
    r = mirror_ok("pull", ref, "--referrer-type", "signature", "-o", tmp_path / "s.tar",
                  "--cache", tmp_path / "c")
    names = {d["reference"] for d in json.loads(mirror_ok("inspect", tmp_path / "s.tar",
                                                          "--json").stdout)}
    assert names == {ref, f"{src_registry.host}/{repo_name}:{tag}"}



@pytest.mark.parametrize("platforms", [[], ["--platform", "linux/amd64"]],
                         ids=["all", "subset"])
def test_an_index_filtered_of_its_attestations_says_to_carry_them(
        src_registry, repo_name, rng, tmp_path, platforms) -> None:
    """A signed OCI index with a BuildKit attestation, pulled with `--referrer-type
    signature` and every platform, is filtered of its attestation alone (a new digest): the
    warning said "use `index: sparse` (or all platforms)", where every platform was kept
    already. It says to carry the attestations too; with a subset of platforms, all
    platforms with them (the sync matrix showed the warning)."""
    key = ec.generate_private_key(ec.SECP256R1())
    imgs = [ig.make_image(rng, p, fmt="oci") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, fmt="oci", attestation=True, rng=rng)
    push_image(src_registry.url, repo_name, index, tags=["1.0"])
    push_signature(src_registry.url, repo_name, key, index.digest)
    r = mirror_ok("pull", f"{src_registry.host}/{repo_name}:1.0", "--referrer-type",
                  "signature", *platforms, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c")
    [warning] = [ln for ln in r.stderr.splitlines() if "made for the source index" in ln]
    assert "the filtered index " in warning and "--referrer-type attestation" in warning, \
        warning
    assert ("(or all platforms" in warning) == bool(platforms), warning


def _blob_digests(manifest: ig.Blob) -> set[str]:
    body = json.loads(manifest.data)
    return {body["config"]["digest"], *(d["digest"] for d in body["layers"])}


@pytest.mark.parametrize("kept", ["signature", "application/spdx+json"])
@pytest.mark.slow
def test_lock_takes_referrer_type_like_pull(src_registry, repo_name, rng, tmp_path, kept):
    """`mirror lock --referrer-type T` records what `pull --referrer-type T` does (the blobs of
    the referrers kept, none of those left behind), and `pull --locked` with the same flag
    writes the very bundle the unlocked pull wrote. T by kind (a cosign signature tag) and by
    artifactType (an OCI 1.1 SBOM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    index, imgs, sig, tag, sbom = seed(src_registry.url, repo_name, rng, key)
    ref = f"{src_registry.host}/{repo_name}:1.0"
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"version: 1\nimages:\n  - {ref}\n")
    own = {"signature": _blob_digests(sig), "application/spdx+json": _blob_digests(sbom)}
    other = own["signature" if kept != "signature" else "application/spdx+json"]

    mirror_ok("pull", "-f", cfg, "--referrer-type", kept, "-o", tmp_path / "a.tar", "--cache",
              tmp_path / "c", "--lock-file", tmp_path / "pulled.lock", "-q")
    mirror_ok("lock", "-f", cfg, "--referrer-type", kept, "--cache", tmp_path / "c", "-q")
    lock = json.loads((tmp_path / "images.lock").read_text())
    assert lock == resolved(tmp_path / "pulled.lock")
    assert own[kept] <= set(lock["blobs"]) and not other & set(lock["blobs"])
    assert lock["images"][ref]["sourceDigest"] == index.digest

    mirror_ok("pull", "-f", cfg, "--locked", "--referrer-type", kept, "-o", tmp_path / "l.tar",
              "--cache", tmp_path / "c", "-q")
    assert file_sha256(tmp_path / "l.tar") == file_sha256(tmp_path / "a.tar")
    # without the flag the lock keeps every referrer's blobs, as before
    mirror_ok("lock", "-f", cfg, "--cache", tmp_path / "c", "-q")
    assert own[kept] | other <= set(json.loads((tmp_path / "images.lock").read_text())["blobs"])

# -- --no-referrers and BuildKit attestations inside an index --------------------------------

IN_INDEX = "vnd.docker.reference.type"


def _attested_index(reg, repo: str, rng) -> tuple[ig.Index, str]:
    """An OCI index of two platforms plus an in-index attestation of the first (BuildKit)."""
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, "oci", attestation=True, rng=rng)
    push_image(reg.url, repo, index, ["2.0"])
    return index, f"{reg.host}/{repo}:2.0"


def _without_attestations(lay, index: ig.Index, ref: str) -> dict:
    """The bundle carries the two platforms, no attestation: neither an index entry nor a
    blob; the image's root is a filtered index. Return that root, parsed."""
    att = index.extra[0]
    assert not {att.digest, *(b.digest for b in att.blobs())} & lay.blob_digests
    assert lay.entry_names() == [ref] and lay.absent == {}
    root = lay.entry(ref)["digest"]
    assert root != index.digest
    body = json.loads(lay.blob(root))
    assert len(body["manifests"]) == 2
    assert not any(IN_INDEX in (e.get("annotations") or {}) for e in body["manifests"])
    return body


@pytest.mark.parametrize("fmt", ["keep", "docker"])
@pytest.mark.slow
def test_no_referrers_leaves_in_index_attestations_behind(src_registry, dst_registry,
                                                          repo_name, rng, tmp_path, fmt):
    """--no-referrers is `referrers: false` for every image: the attestation entry of a BuildKit
    index is left out (so --format docker converts it) and the filtered index is reported like
    a platform subset, source digest -> new digest."""
    index, ref = _attested_index(src_registry, repo_name, rng)
    bundle, report = tmp_path / "b.tar", tmp_path / "r.json"
    r = mirror_ok("pull", ref, "--platform", "all", "--format", fmt, "--no-referrers", "-o",
                  bundle, "--cache", tmp_path / "c", "--report", report)
    lay = check_layout(bundle)
    body = _without_attestations(lay, index, ref)
    root = lay.entry(ref)["digest"]
    (img,) = json.loads(report.read_text())["images"]
    assert img["mode"] == "filter" and img["source_digest"] == index.digest
    assert img["digest"] == root
    assert f"filtered from index {index.digest}; 1 attestation(s) left behind" in r.stderr
    if fmt == "docker":
        assert img["conversions"][index.digest] == root  # old -> new, like any conversion
        assert body["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    shown = mirror_ok("inspect", bundle).stdout
    assert "attestation" not in shown and re.search(rf"source digest \(upstream\): +{index.digest}", shown)

    # the same image with `referrers: false` in images.yaml gives the very same bundle root;
    # and the flag overrides a config that asks for referrers
    cfg = tmp_path / "images.yaml"
    for setting in ("false", "true"):
        cfg.write_text(f"version: 1\ndefaults:\n  referrers: {setting}\nimages:\n"
                       f"  - ref: {ref}\n    format: {fmt}\n")
        flag = ["--no-referrers"] if setting == "true" else []
        mirror_ok("pull", "-f", cfg, *flag, "-o", tmp_path / f"{setting}.tar", "--cache",
                  tmp_path / "c", "-q")
        assert check_layout(tmp_path / f"{setting}.tar").entry(ref)["digest"] == root

    # the filtered index loads, and reads back the same
    mirror_ok("load", bundle, "--to", f"{dst_registry.host}/{fmt}", "-q")
    got, _, _ = get_manifest(dst_registry.url, f"{fmt}/{repo_name}", "2.0")
    assert sha(got) == root
    if fmt == "keep":
        skopeo_copy_ok(bundle, ref, tmp_path / "copy")


@pytest.mark.slow
def test_no_referrers_in_dry_run_lock_and_locked_pulls(src_registry, repo_name, rng, tmp_path):
    """`--dry-run`, `mirror lock` and `--locked` see the same filtered index as a pull."""
    index, ref = _attested_index(src_registry, repo_name, rng)
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"version: 1\nimages:\n  - {ref}\n")
    mirror_ok("pull", "-f", cfg, "--no-referrers", "-o", tmp_path / "a.tar", "--cache",
              tmp_path / "c", "--lock-file", tmp_path / "pulled.lock", "-q")
    root = check_layout(tmp_path / "a.tar").entry(ref)["digest"]
    assert root != index.digest

    dry = mirror_ok("pull", "-f", cfg, "--no-referrers", "--dry-run", "--cache", tmp_path / "c")
    assert dry.stdout.splitlines()[0] == f"{ref}\t{root}\tlinux/amd64,linux/arm64"

    mirror_ok("lock", "-f", cfg, "--no-referrers", "--cache", tmp_path / "c", "-q")
    lock = json.loads((tmp_path / "images.lock").read_text())
    entry = lock["images"][ref]
    assert entry["sourceDigest"] == index.digest and entry["digest"] == root
    assert index.extra[0].digest not in entry["manifests"]
    assert not {b.digest for b in index.extra[0].blobs()} & set(lock["blobs"])
    assert lock == resolved(tmp_path / "pulled.lock")

    mirror_ok("pull", "-f", cfg, "--locked", "--no-referrers", "-o", tmp_path / "l.tar",
              "--cache", tmp_path / "c", "-q")
    assert check_layout(tmp_path / "l.tar").entry(ref)["digest"] == root
    # without the flag the lock keeps the attestation, as before
    mirror_ok("lock", "-f", cfg, "--cache", tmp_path / "c", "-q")
    entry = json.loads((tmp_path / "images.lock").read_text())["images"][ref]
    assert entry["digest"] == index.digest and index.extra[0].digest in entry["manifests"]


class _ReferrersAPI(http.server.ThreadingHTTPServer):
    """Answers GET /v2/<name>/referrers/<digest> from `index_for`; forwards the rest."""

    def __init__(self, upstream: str, index_for: dict[str, bytes]) -> None:
        self.upstream = upstream
        self.index_for = index_for
        self.referrer_calls: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _ReferrersAPI

    def log_message(self, *args: object) -> None:
        pass

    def _relay(self) -> None:
        m = re.match(r"^/v2/(.+)/referrers/(sha256:[0-9a-f]{64})", self.path)
        if self.command == "GET" and m:
            self.server.referrer_calls.append(m.group(2))
            body = self.server.index_for.get(m.group(2)) or ig.dump_json(
                {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
            self.send_response(200)
            self.send_header("Content-Type", OCI_INDEX)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        n = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(n) if n else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host",)}
        req = urllib.request.Request(self.server.upstream + self.path, data=data,
                                     method=self.command, headers=headers)
        try:
            resp = urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as e:
            resp = e
        body = resp.read()
        self.send_response(resp.status if hasattr(resp, "status") else resp.code)
        for k, v in resp.headers.items():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = _relay


@pytest.fixture
def referrers_api(src_registry) -> Iterator[_ReferrersAPI]:
    server = _ReferrersAPI(src_registry.url, {})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_referrers_api_is_used_where_the_registry_has_it(src_registry, dst_registry,
                                                         referrers_api, repo_name, rng,
                                                         tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    # no fallback tag at the source: only the API can tell about the SBOM
    index, imgs, sig, tag, sbom = seed(src_registry.url, repo_name, rng, key, fallback=False)
    referrers_api.index_for[imgs[0].digest] = fallback_index([sbom])
    host = f"127.0.0.1:{referrers_api.server_address[1]}"
    bundle = tmp_path / "b.tar"
    mirror_ok("pull", f"{host}/{repo_name}:1.0", "-o", bundle, "--cache", tmp_path / "c")
    assert imgs[0].digest in referrers_api.referrer_calls
    names = {d["reference"] for d in json.loads(mirror_ok("inspect", bundle,
                                                          "--json").stdout)}
    assert f"{host}/{repo_name}@{sbom.digest}" in names
    r = run_mirror("load", bundle, "--to", f"{dst_registry.host}/api")
    assert r.returncode == 0, r.stderr
    fb, _, _ = get_manifest(dst_registry.url, f"api/{repo_name}",
                            "sha256-" + imgs[0].digest.split(":")[1])
    assert [e["digest"] for e in json.loads(fb)["manifests"]] == [sbom.digest]
    assert sha(get_manifest(dst_registry.url, f"api/{repo_name}", sbom.digest)[0]) == \
        sbom.digest


@pytest.mark.slow
def test_a_second_load_pushes_no_referrer(src_registry, dst_registry, faultproxy, repo_name, rng,
                                          tmp_path):
    """The README's promise holds for referrers too: a second load of the same bundle HEADs
    the OCI 1.1 referrer (and reads its fallback tag index) and PUTs nothing."""
    key = ec.generate_private_key(ec.SECP256R1())
    index, imgs, sig, tag, sbom = seed(src_registry.url, repo_name, rng, key)
    bundle = tmp_path / "b.tar"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:1.0", "-o", bundle, "--cache",
              tmp_path / "c", "-q")
    proxy = faultproxy(dst_registry.url)
    mirror_ok("load", bundle, "--to", proxy.host, "-q")
    assert any(p.endswith(f"/manifests/{sbom.digest}") for p in proxy.paths("PUT"))
    proxy.reset_counters()
    report = tmp_path / "second.json"
    mirror_ok("load", bundle, "--to", proxy.host, "-q", "--report", report)
    assert proxy.paths("PUT") == [] and proxy.paths("POST") == []
    assert json.loads(report.read_text())["manifests_pushed"] == 0
    dry = mirror_ok("load", bundle, "--to", proxy.host, "--dry-run")
    assert "manifest" not in dry.stdout, dry.stdout  # nothing would be pushed either
    fb, _, _ = get_manifest(dst_registry.url, repo_name, "sha256-" + imgs[0].digest.split(":")[1])
    assert [e["digest"] for e in json.loads(fb)["manifests"]] == [sbom.digest]


def test_load_and_sync_print_the_images_not_their_referrers(src_registry, dst_registry,
                                                           repo_name, rng, tmp_path):
    """stdout, which a script reads, lists the images loaded (or synced), one reference a
    line; their signatures, SBOMs and attestations are pushed with them and are not images
    loaded, whatever their kind. The cosign signature's `.sig` tag was printed as an image,
    where the SBOM (a referrer with a subject, and its `sha256-<hex>` fallback index) was
    not."""
    key = ec.generate_private_key(ec.SECP256R1())
    index, imgs, sig, tag, sbom = seed(src_registry.url, repo_name, rng, key)
    ref = f"{src_registry.host}/{repo_name}:1.0"
    bundle = tmp_path / "b.tar"
    mirror_ok("pull", ref, "-o", bundle, "--cache", tmp_path / "c", "-q")
    report = tmp_path / "load.json"
    load = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/l", "--report", report)
    assert load.stdout.splitlines() == [f"{dst_registry.host}/l/{repo_name}:1.0"], load.stdout
    assert get_manifest(dst_registry.url, f"l/{repo_name}", tag)[0] == sig.data  # pushed all
    assert get_manifest(dst_registry.url, f"l/{repo_name}", sbom.digest)[0] == sbom.data
    assert f"{dst_registry.host}/l/{repo_name}:{tag}" in json.loads(report.read_text())["tags"]
    sync = mirror_ok("sync", ref, "--to", f"{dst_registry.host}/s")
    assert sync.stdout.splitlines() == [f"{dst_registry.host}/s/{repo_name}:1.0"], sync.stdout
    assert get_manifest(dst_registry.url, f"s/{repo_name}", tag)[0] == sig.data


# -- --referrer-type: kinds --------------------------------------------------------------------

NOTATION_CONFIG = "application/vnd.cncf.notary.signature"
CYCLONEDX = "application/vnd.cyclonedx+json"


def _served(url: str, repo: str, ref: str) -> str | None:
    """The digest the registry serves as `ref` (one HEAD), None when it serves none."""
    req = urllib.request.Request(f"{url}/v2/{repo}/manifests/{ref}", method="HEAD",
                                 headers={"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


@pytest.mark.parametrize("sboms", [1, 2])
@pytest.mark.slow
def test_a_load_counts_each_manifest_it_places_once_the_fallback_index_too(
        src_registry, dst_registry, faultproxy, repo_name, rng, tmp_path, sboms):
    """A load places six manifests for a signed index whose first platform has an SBOM (the
    index, its two platforms, the signature, the SBOM and, the target having no referrers
    API, the SBOM's `sha256-<hex>` fallback index). The first load counts the six pushed (one
    PUT each), the rerun the six present; the rerun counted the fallback index neither
    pushed nor present (5 of 6). Each digest counted is one the target serves (HEAD). With
    two SBOMs of that platform, seven: their fallback index is one manifest, put once with
    both; it was put with the first, then again with both (8 pushed, 8 PUTs; 7 present)."""
    key = ec.generate_private_key(ec.SECP256R1())
    index, imgs, sig, tag, sbom = seed(src_registry.url, repo_name, rng, key)
    fallback = "sha256-" + imgs[0].digest.split(":")[1]
    referrers = [sbom]
    if sboms == 2:
        doc = json.loads(sbom.data)
        doc["annotations"]["org.opencontainers.image.created"] = "2026-02-01T00:00:00Z"
        referrers.append(ig.Blob(ig.dump_json(doc), OCI_MANIFEST))
        push_raw_manifest(src_registry.url, repo_name, referrers[1].digest, referrers[1].data,
                          OCI_MANIFEST)
        push_raw_manifest(src_registry.url, repo_name, fallback, fallback_index(referrers),
                          OCI_INDEX)
    bundle = tmp_path / "b.tar"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:1.0", "-o", bundle, "--cache",
              tmp_path / "c", "-q")
    proxy = faultproxy(dst_registry.url)
    runs = []
    for _ in range(2):
        proxy.reset_counters()
        report = tmp_path / f"load{len(runs)}.json"
        mirror_ok("load", bundle, "--to", proxy.host, "-q", "--report", report)
        doc = json.loads(report.read_text())
        puts = [p for p in proxy.paths("PUT") if "/manifests/" in p]
        runs.append((doc["manifests_pushed"], doc["manifests_present"], len(puts)))
    placed = [index.digest, *(i.digest for i in imgs), sig.digest, *(r.digest for r in referrers),
              _served(dst_registry.url, repo_name, fallback)]
    assert all(_served(dst_registry.url, repo_name, d) == d for d in placed if d), placed
    n = 5 + sboms
    assert len(set(placed) - {None}) == n, placed
    assert _served(dst_registry.url, repo_name, tag) == sig.digest
    listed = json.loads(get_manifest(dst_registry.url, repo_name, fallback)[0])["manifests"]
    assert sorted(e["digest"] for e in listed) == sorted(r.digest for r in referrers)
    assert runs == [(n, 0, n), (0, n, 0)], runs


def make_referrer(subject: ig.Blob, layer: ig.Blob, *, artifact_type: str | None = None,
                  config: ig.Blob = EMPTY) -> tuple[ig.Blob, list[ig.Blob]]:
    """An OCI 1.1 referrer of `subject`: artifactType (or a typed config) and one layer."""
    body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type:
        body["artifactType"] = artifact_type
    body |= {"config": config.descriptor(), "layers": [layer.descriptor()],
             "subject": subject.descriptor()}
    return ig.Blob(ig.dump_json(body), OCI_MANIFEST), [config, layer]


def seed_kinds(reg, repo: str, rng, key):
    """An index of two platforms with a BuildKit attestation of the first; a cosign `.sig` of
    the index; an SPDX SBOM (OCI 1.1) of the first platform; a Notation signature (its kind in
    the config's media type, no artifactType) and a CycloneDX SBOM of the second. Returns the
    index, its reference, and the reference of each referrer by name."""
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, "oci", attestation=True, rng=rng)
    push_image(reg.url, repo, index, ["3.0"])
    sig, sig_blobs = make_signature(key, repo, index.digest)
    spdx, spdx_blobs = make_sbom(imgs[0].manifest)
    notation, notation_blobs = make_referrer(
        imgs[1].manifest, ig.Blob(b'{"payload": "x"}', "application/jose+json"),
        config=ig.Blob(b"{}", NOTATION_CONFIG))
    cdx, cdx_blobs = make_referrer(
        imgs[1].manifest, ig.Blob(b'{"bomFormat": "CycloneDX"}', CYCLONEDX),
        artifact_type=CYCLONEDX)
    for b in [*sig_blobs, *spdx_blobs, *notation_blobs, *cdx_blobs]:
        push_blob(reg.url, repo, b)
    sig_tag = "sha256-" + index.digest.split(":")[1] + ".sig"
    push_raw_manifest(reg.url, repo, sig_tag, sig.data, sig.media_type)
    for m in (spdx, notation, cdx):
        push_raw_manifest(reg.url, repo, m.digest, m.data, m.media_type)
    push_raw_manifest(reg.url, repo, "sha256-" + imgs[0].digest.split(":")[1],
                      fallback_index([spdx]), OCI_INDEX)
    push_raw_manifest(reg.url, repo, "sha256-" + imgs[1].digest.split(":")[1], ig.dump_json({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            notation.descriptor(artifactType=NOTATION_CONFIG),
            cdx.descriptor(artifactType=CYCLONEDX)]}), OCI_INDEX)
    at = f"{reg.host}/{repo}"
    return index, f"{at}:3.0", {"cosign": f"{at}:{sig_tag}", "spdx": f"{at}@{spdx.digest}",
                                "notation": f"{at}@{notation.digest}",
                                "cyclonedx": f"{at}@{cdx.digest}"}


@pytest.mark.parametrize(("types", "kept"), [
    (["sbom"], {"spdx", "cyclonedx"}),
    (["signature"], {"cosign", "notation"}),
    (["attestation"], set()),
    ([CYCLONEDX], {"cyclonedx"}),
    (["signature", "SBOM"], {"cosign", "notation", "spdx", "cyclonedx"}),
])
def test_referrer_type_kinds(src_registry, repo_name, rng, tmp_path, types, kept):
    """A kind means the artifact types users mean by it (Notation and cosign signatures; SPDX
    and CycloneDX SBOMs), an artifactType matches verbatim, and the BuildKit attestation
    inside the index is kept only when `attestation` is asked: otherwise the index is
    filtered without it, as with --no-referrers, and reported old -> new."""
    key = ec.generate_private_key(ec.SECP256R1())
    index, ref, refs = seed_kinds(src_registry, repo_name, rng, key)
    bundle, report = tmp_path / "b.tar", tmp_path / "r.json"
    flags = [x for t in types for x in ("--referrer-type", t)]
    r = mirror_ok("pull", ref, *flags, "-o", bundle, "--cache", tmp_path / "c",
                  "--report", report)
    lay = check_layout(bundle)
    assert set(lay.entry_names()) == {ref, *(refs[k] for k in kept)}
    (img,) = json.loads(report.read_text())["images"]
    att = index.extra[0].digest
    if "attestation" in types:
        assert lay.entry(ref)["digest"] == index.digest and att in lay.blob_digests
        assert img["mode"] == "full"
    else:
        root = lay.entry(ref)["digest"]
        assert root != index.digest and att not in lay.blob_digests
        assert len(json.loads(lay.blob(root))["manifests"]) == 2
        assert img["mode"] == "filter" and img["source_digest"] == index.digest
        assert f"filtered from index {index.digest}; 1 attestation(s) left behind" in r.stderr
    kinds = {d["reference"]: d.get("kind") for d in json.loads(
        mirror_ok("inspect", bundle, "--json").stdout)}
    assert {refs[k]: kinds[refs[k]] for k in kept} == {
        refs[k]: "signature" if k in ("cosign", "notation") else "sbom" for k in kept}


@pytest.mark.parametrize("bad", ["signatures", "sbom,signature", "spdx"])
def test_an_unknown_referrer_type_is_refused(src_registry, repo_name, rng, tmp_path, bad):
    """A value that is neither a kind nor a media type would drop every referrer: refused,
    exit 2, before any network work, and with the kinds named."""
    ref = f"{src_registry.host}/{repo_name}:none"
    for cmd in (["pull", "-o", tmp_path / "b.tar"], ["lock", "--lock-file", tmp_path / "l"]):
        r = run_mirror(*cmd, ref, "--referrer-type", bad, "--cache", tmp_path / "c")
        assert r.returncode == 2, r.stderr
        first = r.stderr.splitlines()[0]
        assert first.startswith(f"mirror: error: --referrer-type '{bad}' is neither a kind "
                                "(signature, sbom, attestation) nor a media type"), r.stderr
        if bad == "signatures":
            assert "(did you mean 'signature'?)" in first, first
        assert not (tmp_path / "b.tar").exists()


def test_a_converted_index_is_called_converted_not_filtered(src_registry, repo_name, rng,
                                                            tmp_path):
    """A signed Docker list pulled with `--format oci` and every platform is converted, not
    filtered: the warning about its signatures says converted, old -> new; only a subset of
    its platforms is called filtered."""
    key = ec.generate_private_key(ec.SECP256R1())
    imgs = [ig.make_image(rng, p, fmt="docker") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, fmt="docker")
    push_image(src_registry.url, repo_name, index, tags=["1.0"])
    sig, sig_blobs = make_signature(key, repo_name, index.digest)
    for b in sig_blobs:
        push_blob(src_registry.url, repo_name, b)
    push_raw_manifest(src_registry.url, repo_name, "sha256-" + index.digest.split(":")[1] +
                      ".sig", sig.data, sig.media_type)
    ref = f"{src_registry.host}/{repo_name}:1.0"
    r = mirror_ok("pull", ref, "--format", "oci", "-o", tmp_path / "all.tar", "--cache",
                  tmp_path / "c", "--report", tmp_path / "r.json")
    [new] = [v for k, v in json.loads((tmp_path / "r.json").read_text())["images"][0]
             ["conversions"].items() if k == index.digest]
    warning = [ln for ln in r.stderr.splitlines() if "made for the source index" in ln]
    assert len(warning) == 1 and f"converted index {index.digest} -> {new}" in warning[0], \
        r.stderr
    assert "filtered" not in r.stderr, r.stderr
    r = mirror_ok("pull", ref, "--format", "oci", "--platform", "linux/amd64", "-o",
                  tmp_path / "one.tar", "--cache", tmp_path / "c", "--report", tmp_path / "r.json")
    [new] = [v for k, v in json.loads((tmp_path / "r.json").read_text())["images"][0]
             ["conversions"].items() if k == index.digest]
    warning = [ln for ln in r.stderr.splitlines() if "made for the source index" in ln]
    assert len(warning) == 1 and f"filtered and converted index {new}" in warning[0], r.stderr


def test_the_referrers_api_is_probed_once_per_registry(src_registry, faultproxy, repo_name,
                                                       rng, tmp_path):
    """Eight images of one registry (four repositories) resolved at once: the first referrers
    request finds the registry has no referrers API (404, Debian's registry 2.8), and the
    other images wait for that answer instead of each asking too: one referrers request in
    the run (counted at the proxy); the fallback tags and cosign tags are still looked for
    (a tag list per repository), so each image's signature travels."""
    key = ec.generate_private_key(ec.SECP256R1())
    refs, sigs = [], []
    proxy = faultproxy(src_registry.url)
    for r in range(4):
        for t in ("1.0", "2.0"):
            repo = f"{repo_name}/r{r}"
            imgs = [ig.make_image(rng, p, fmt="oci") for p in (ig.AMD64, ig.ARM64)]
            index = ig.make_index(imgs, fmt="oci")
            push_image(src_registry.url, repo, index, tags=[t])
            sigs.append(push_signature(src_registry.url, repo, key, index.digest)[1])
            refs.append(f"{proxy.host}/{repo}:{t}")
    out = tmp_path / "b.tar"
    mirror_ok("pull", *refs, "-o", out, "--cache", tmp_path / "cache", "-j", "8", "-q")
    probes = [p for m, p, st in proxy.requests if "/referrers/" in p]
    assert len(probes) == 1, probes
    lists = [p for m, p, st in proxy.requests if p.endswith("/tags/list")]
    assert len(lists) == 4, lists
    lay = check_layout(out)
    assert all(lay.sha256.get(f"blobs/sha256/{sig.digest.split(':')[1]}") == sig.digest
               for sig in sigs), "a signature was left behind"


def _dry_manifests(lines: list[str]) -> list[tuple[str, str, str]]:
    """(repository, reference, digest) of a dry run's `manifest D -> HOST/REPO:REF` lines."""
    out = []
    for ln in lines:
        if not ln.startswith("manifest "):
            continue
        _, digest, _, name = ln.split()
        rest = name.split("/", 1)[1]
        repo, ref = rest.split("@", 1) if "@" in rest else rest.rsplit(":", 1)
        out.append((repo, ref, digest))
    return out


@pytest.mark.slow
def test_dry_run_lists_the_fallback_tag_index_as_the_run_pushes_it(
        src_registry, dst_registry, faultproxy, repo_name, rng, tmp_path):
    """A target without the referrers API (docker-registry 2.8) gets, after each OCI 1.1
    referrer, its subject's `sha256-<hex>` index with the referrer added; the dry runs of
    load and sync listed the referrer (even one the target held already, which is not
    pushed) and never that index. Two SBOMs of one manifest, the target holding the second
    by digest already: the dry run's manifest lines are, in order, the manifest PUTs of the
    run that follows (seen by a proxy), and the digests the target then holds."""
    key = ec.generate_private_key(ec.SECP256R1())
    index, imgs, sig, tag, sbom = seed(src_registry.url, repo_name, rng, key)
    doc = json.loads(sbom.data)
    doc["annotations"]["org.opencontainers.image.created"] = "2026-02-01T00:00:00Z"
    sbom2 = ig.Blob(ig.dump_json(doc), OCI_MANIFEST)
    fallback = "sha256-" + imgs[0].digest.split(":")[1]
    push_raw_manifest(src_registry.url, repo_name, sbom2.digest, sbom2.data, OCI_MANIFEST)
    push_raw_manifest(src_registry.url, repo_name, fallback, fallback_index([sbom, sbom2]),
                      OCI_INDEX)
    bundle = tmp_path / "b.tar"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:1.0", "-o", bundle, "--cache",
              tmp_path / "c", "-q")
    proxy = faultproxy(dst_registry.url)
    for command in ("load", "sync"):
        prefix = f"{command}-{tmp_path.name[-8:].lower().strip('-_.')}"
        repo = f"{prefix}/{repo_name}"
        # the target holds the second SBOM by digest, not its fallback tag index entry
        for b in (EMPTY, ig.Blob(get_blob(src_registry.url, repo_name,
                                          doc["layers"][0]["digest"]), "application/spdx+json")):
            push_blob(dst_registry.url, repo, b)
        push_raw_manifest(dst_registry.url, repo, sbom2.digest, sbom2.data, OCI_MANIFEST)
        args = [bundle] if command == "load" else [
            f"{src_registry.host}/{repo_name}:1.0", "--lock-file", tmp_path / "s.lock"]
        report = tmp_path / f"{command}.json"
        mirror_ok(command, *args, "--to", f"{proxy.host}/{prefix}", "-q", "--dry-run",
                  "--report", report)
        got = json.loads(report.read_text())
        dry = _dry_manifests(got["would_push"] if command == "load" else
                             got["targets"][0]["would_push"])
        assert (repo, fallback) in [(r, ref) for r, ref, _ in dry], "\n".join(map(str, dry))
        assert sbom2.digest not in [d for _, _, d in dry], dry  # the target has it
        proxy.reset_counters()
        mirror_ok(command, *args, "--to", f"{proxy.host}/{prefix}", "-q")
        puts = [tuple(p.removeprefix("/v2/").split("/manifests/"))
                for p in proxy.paths("PUT") if "/manifests/" in p]
        assert [(r, ref) for r, ref, _ in dry] == puts, (dry, puts)
        final = {(r, ref): d for r, ref, d in dry}
        for (r, ref), digest in final.items():
            assert get_manifest(dst_registry.url, r, ref)[2]["Docker-Content-Digest"] == \
                digest, (r, ref)
        fb = json.loads(get_manifest(dst_registry.url, repo, fallback)[0])
        assert sorted(e["digest"] for e in fb["manifests"]) == sorted([sbom.digest, sbom2.digest])


def test_a_load_that_fails_for_its_base_says_so_first(src_registry, dst_registry, repo_name,
                                                      rng, tmp_path):
    """An incremental bundle whose base is not loaded, its image pinned by digest with an
    SBOM, into a registry with no referrers API: the load printed first that the image `is
    not tagged sha256-<hex>` (it goes by digest), then the error that decides the run (exit
    11, nothing pushed): the operator read first a line about a push that never came. The
    error is the load's only line; the warning comes with the load that pushes (its base
    loaded first)."""
    img = ig.make_image(rng, ig.AMD64, fmt="oci")
    push_image(src_registry.url, repo_name, img, tags=["1.0"])
    push_sbom(src_registry.url, repo_name, img.manifest)
    pinned = f"{src_registry.host}/{repo_name}@{img.digest}"
    base, inc, to = tmp_path / "base.tar", tmp_path / "inc.tar", f"{dst_registry.host}/inc"
    mirror_ok("pull", pinned, "-o", base, "--cache", tmp_path / "c", "-q")
    mirror_ok("pull", pinned, "--base", base, "-o", inc, "--cache", tmp_path / "c", "-q")
    proc = run_mirror("load", inc, "--to", to, "-q")
    assert proc.returncode == 11, proc.stderr
    first, *rest = proc.stderr.splitlines()
    assert first.startswith(f"mirror: error: {inc}: incremental bundle: "), proc.stderr
    assert [line.split(", sha256:")[0] for line in rest] == [
        f"  hint: load first the bundle(s) made before this one (it was made against "
        f"{base.name}"], proc.stderr
    tag = "sha256-" + img.digest.split(":")[1]
    for bundle in (base, inc):  # base first: each load pushes, and says the tag gave way
        proc = mirror_ok("load", bundle, "--to", to, "-q")
        [line] = proc.stderr.splitlines()
        assert line.split(" ", 1)[1] == (
            f"warning: {pinned} is not tagged {tag} at {to}/{repo_name}: there that tag is "
            "the index of its referrers (no referrers API: the OCI fallback tag); it goes by "
            "digest (tag_as: in images.yaml gives it a tag)"), proc.stderr


@pytest.mark.parametrize("platform", ["all", "linux/arm64"])  # the index as it is, filtered
def test_a_digest_tag_gives_way_to_the_fallback_index_of_the_same_digest(
        src_registry, dst_registry, repo_name, rng, tmp_path, platform):
    """An image pinned by digest is tagged `sha256-<hex>` (its source digest) at the target;
    on a registry with no referrers API that is also where the OCI spec keeps the index of
    that digest's referrers. It was pushed as the image's tag and then "merged" with its
    SBOM into a third index (or, filtered, the two took turns on every load): the tag served
    neither the image the report named nor a referrers index. The spec's tag wins: the
    image goes by digest, the report says so, and the tag lists the SBOM."""
    imgs = [ig.make_image(rng, p, fmt="oci") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, fmt="oci")
    push_image(src_registry.url, repo_name, index, tags=["1.0"])
    sbom = push_sbom(src_registry.url, repo_name, index.manifest)
    bundle, pulled = tmp_path / "pinned.tar", tmp_path / "pull.json"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}@{index.digest}", "--platform",
              platform, "-o", bundle, "--cache", tmp_path / "c", "-q", "--report", pulled)
    root = json.loads(pulled.read_text())["images"][0]["digest"]  # filtered: another index
    assert (root == index.digest) == (platform == "all")
    report = tmp_path / "load.json"
    dry = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/pin", "--dry-run")
    tag = "sha256-" + index.digest.split(":")[1]
    assert len([ln for ln in dry.stdout.splitlines() if ln.endswith(f":{tag}")]) == 1, \
        dry.stdout  # the fallback index alone goes there
    for n in range(2):  # a rerun as cron would: the same answer, nothing pushed again
        proc = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/pin", "--report", report)
        assert f"is not tagged {tag}" in proc.stderr, proc.stderr
        doc = json.loads(report.read_text())
        assert not any(t.endswith(f":{tag}") for t in doc["tags"]), doc["tags"]
        assert [p["tags"] for p in doc["placement"]] == [[]], doc["placement"]  # by digest
        assert n == 0 or doc["manifests_pushed"] == 0, doc
        data, _, _ = get_manifest(dst_registry.url, f"pin/{repo_name}", root)
        assert sha(data) == root  # the image, by digest
        fb, _, _ = get_manifest(dst_registry.url, f"pin/{repo_name}", tag)
        assert [e["digest"] for e in json.loads(fb)["manifests"]] == [sbom.digest]


@pytest.mark.parametrize("what", ["sbom", "signature"])
def test_a_load_whose_referrer_fails_at_the_target_places_and_prints_its_image_nowhere(
        src_registry, dst_registry, faultproxy, repo_name, rng, tmp_path, what):
    """A load of two images, `a` with an SBOM (by digest) or a cosign signature, to a
    registry without the referrers API whose `sha256-<hex>` fallback index for `a` (listing
    an SBOM of its own), or whose `.sig` tag (another signature), it serves damaged: never
    clobbered, so that referrer fails (its line naming the tag, exit 7: the load's). `a`'s
    tag went in before its referrers, yet the report's placement and stdout listed `a` as
    if whole; they list what the target holds whole (b: served, placed_served), `failed`
    the referrer; the tag it could not read is left as it was."""
    u = repo_name[-8:]
    proxy = faultproxy(dst_registry.url)
    img, other = (ig.make_image(rng, ig.AMD64, "oci") for _ in range(2))
    src, dst = src_registry.url, dst_registry.url
    push_image(src, f"{repo_name}/a", img, ["1"])
    push_image(src, f"{repo_name}/b", other, ["1"])
    repo = f"lr{u}/{repo_name}/a"
    if what == "sbom":
        ours = push_sbom(src, f"{repo_name}/a", img.manifest)
        theirs = push_sbom(dst, repo, img.manifest, fallback=False)
        tag, held = fallback_tag(img.digest), fallback_index([theirs])
        push_raw_manifest(dst, repo, tag, held, OCI_INDEX)
    else:
        _, ours = push_signature(src, f"{repo_name}/a", ec.generate_private_key(
            ec.SECP256R1()), img.digest)
        tag, theirs = push_signature(dst, repo, ec.generate_private_key(ec.SECP256R1()),
                                     img.digest)
        held = theirs.data
    tag_unserved(proxy, repo, tag, "damaged")
    bundle, report = tmp_path / "b.tar", tmp_path / "r.json"
    mirror_ok("pull", *(f"{src_registry.host}/{repo_name}/{n}:1" for n in "ab"), "-o",
              bundle, "--cache", tmp_path / "c", "-q")
    done = run_mirror("load", bundle, "--to", f"{proxy.host}/lr{u}", "--report", report)
    assert done.returncode == 7, done.stderr
    line = error_line(done)
    assert f"{proxy.host}/{repo}:{tag}" in line, line
    doc = json.loads(report.read_text())
    b = f"lr{u}/{repo_name}/b"
    assert [p["repository"] for p in doc["placement"]] == [b], doc["placement"]
    placed_served(dst, doc)
    assert done.stdout.splitlines() == [f"{proxy.host}/{b}:1"], done.stdout
    assert [(f["repository"], f["digest"], f["error_code"]) for f in doc["failed"]] == \
        [(repo, ours.digest, 7)], doc["failed"]
    assert get_manifest(dst, repo, tag)[0] == held  # as it was
