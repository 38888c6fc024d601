"""Referrers as registries hold them, made and pushed independently of mirror/: a cosign-style
signature (simple-signing payload signed with an ECDSA P-256 key, under the
`sha256-<hex>.sig` tag), an OCI 1.1 SBOM with `subject` (listed in the `sha256-<hex>` fallback
tag index, since Debian's registry 2.8 has no referrers API). BuildKit attestations inside an
index come from imagegen.make_index(attestation=True).

    key = ec.generate_private_key(ec.SECP256R1())
    tag, sig = push_signature(url, repo, key, index.digest)
    sbom = push_sbom(url, repo, imgs[0].manifest)
"""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from . import imagegen as ig
from .pusher import push_blob, push_raw_manifest

EMPTY = ig.Blob(b"{}", "application/vnd.oci.empty.v1+json")


def make_signature(key: ec.EllipticCurvePrivateKey, repo: str, digest: str
                   ) -> tuple[ig.Blob, list[ig.Blob]]:
    """A cosign signature manifest of `digest` and its blobs (config, payload)."""
    payload = json.dumps({
        "critical": {"identity": {"docker-reference": repo},
                     "image": {"docker-manifest-digest": digest},
                     "type": "cosign container image signature"},
        "optional": None}).encode()
    sig = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    layer = ig.Blob(payload, "application/vnd.dev.cosign.simplesigning.v1+json")
    config = ig.Blob(json.dumps({"architecture": "", "os": "", "rootfs": {
        "type": "layers", "diff_ids": [layer.digest]}}).encode(), ig.OCI_CONFIG)
    manifest = ig.dump_json({
        "schemaVersion": 2, "mediaType": ig.OCI_MANIFEST, "config": config.descriptor(),
        "layers": [layer.descriptor(annotations={"dev.cosignproject.cosign/signature": sig})]})
    return ig.Blob(manifest, ig.OCI_MANIFEST), [config, layer]


def make_sbom(subject: ig.Blob) -> tuple[ig.Blob, list[ig.Blob]]:
    """An OCI 1.1 SPDX SBOM artifact whose `subject` is `subject`, and its blobs."""
    doc = ig.Blob(json.dumps({"spdxVersion": "SPDX-2.3", "name": subject.digest}).encode(),
                  "application/spdx+json")
    manifest = ig.dump_json({
        "schemaVersion": 2, "mediaType": ig.OCI_MANIFEST, "artifactType": "application/spdx+json",
        "config": EMPTY.descriptor(), "layers": [doc.descriptor()],
        "subject": subject.descriptor(),
        "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}})
    return ig.Blob(manifest, ig.OCI_MANIFEST), [EMPTY, doc]


def fallback_index(entries: list[ig.Blob]) -> bytes:
    """The referrers tag schema's index listing `entries` (REFERENCE.md 6.7)."""
    return ig.dump_json({"schemaVersion": 2, "mediaType": ig.OCI_INDEX, "manifests": [
        e.descriptor(artifactType=json.loads(e.data)["artifactType"]) for e in entries]})


def fallback_tag(digest: str) -> str:
    return "sha256-" + digest.split(":", 1)[1]


def push_signature(url: str, repo: str, key: ec.EllipticCurvePrivateKey, digest: str
                   ) -> tuple[str, ig.Blob]:
    """Sign `digest` and push the signature under its cosign tag; return (tag, manifest)."""
    sig, blobs = make_signature(key, repo, digest)
    for b in blobs:
        push_blob(url, repo, b)
    tag = fallback_tag(digest) + ".sig"
    push_raw_manifest(url, repo, tag, sig.data, sig.media_type)
    return tag, sig


def push_sbom(url: str, repo: str, subject: ig.Blob, *, fallback: bool = True) -> ig.Blob:
    """Push an SBOM of `subject` by digest and (`fallback`) list it in the fallback tag."""
    sbom, blobs = make_sbom(subject)
    for b in blobs:
        push_blob(url, repo, b)
    push_raw_manifest(url, repo, sbom.digest, sbom.data, sbom.media_type)
    if fallback:
        push_raw_manifest(url, repo, fallback_tag(subject.digest), fallback_index([sbom]),
                          ig.OCI_INDEX)
    return sbom
