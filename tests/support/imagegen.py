"""Deterministic in-memory test images: layers, configs, manifests, Docker lists, OCI indexes.

Everything derives from a `random.Random`, so the same seed gives the same digests. Layers are
real gzip'ed tars (gzip mtime 0) and configs real image configs, so skopeo, umoci and the
registry accept them. Pass one `Layer` to two `make_image` calls to share it.

    rng = random.Random(1)
    imgs = [make_image(rng, p, "oci") for p in (AMD64, ARM64_V8)]
    idx = make_index(imgs, "oci", attestation=True, rng=rng)
    write_layout(tmp_path / "layout", {"v1": idx})
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Fmt = Literal["docker", "oci"]

# media types (REFERENCE.md section 1)
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
IN_TOTO = "application/vnd.in-toto+json"
MANIFEST_TYPES = (OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join(MANIFEST_TYPES)

AMD64 = {"os": "linux", "architecture": "amd64"}
ARM64_V8 = {"os": "linux", "architecture": "arm64", "variant": "v8"}
ARM64 = {"os": "linux", "architecture": "arm64"}
ARM_V7 = {"os": "linux", "architecture": "arm", "variant": "v7"}
ARM_V6 = {"os": "linux", "architecture": "arm", "variant": "v6"}
PLATFORMS = (AMD64, ARM64_V8, ARM64, ARM_V7, ARM_V6)

_FIXED_TIME = "2024-01-01T00:00:00Z"
_FIXED_MTIME = 1704067200  # same instant, for tar headers


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dump_json(obj: Any) -> bytes:
    """Canonical-ish JSON bytes (what gets hashed; never re-serialise after this)."""
    return json.dumps(obj, indent=2, sort_keys=False).encode()


@dataclass(eq=False)
class Blob:
    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        """`{"mediaType", "digest", "size"}` plus any extra fields (platform, annotations...)."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(eq=False)
class Layer(Blob):
    diff_id: str = ""  # sha256 of the uncompressed tar


@dataclass(eq=False)
class Image:
    config: Blob
    layers: list[Layer]
    manifest: Blob
    platform: dict[str, str]

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def blobs(self) -> list[Blob]:
        return [self.config, *self.layers]

    def all_blobs(self) -> list[Blob]:
        return _dedupe(self.blobs())

    def all_manifests(self) -> list[Blob]:
        return [self.manifest]


@dataclass(eq=False)
class Index:
    manifest: Blob
    images: list[Image]
    extra: list[Image] = field(default_factory=list)  # attestation manifests (+ their blobs)

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def all_blobs(self) -> list[Blob]:
        """Configs and layers of every child, deduplicated by digest, in push order."""
        return _dedupe([b for img in [*self.images, *self.extra] for b in img.blobs()])

    def all_manifests(self) -> list[Blob]:
        """Child manifests first, the index last (the order a registry accepts them in)."""
        return [*(img.manifest for img in [*self.images, *self.extra]), self.manifest]


def _dedupe(blobs: list[Blob]) -> list[Blob]:
    seen: dict[str, Blob] = {}
    for b in blobs:
        seen.setdefault(b.digest, b)
    return list(seen.values())


def make_layer(
    rng: random.Random, size: int = 4096, compressed: bool = True, fmt: Fmt = "oci"
) -> Layer:
    """A tar holding one file of `size` random bytes; gzip'ed (mtime 0) unless not `compressed`.

    The media type follows `fmt`, but make_image rewrites it to match the manifest format.
    """
    payload = rng.randbytes(size)
    name = f"file-{rng.getrandbits(32):08x}.bin"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = _FIXED_MTIME
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(payload))
    raw = buf.getvalue()
    diff_id = sha256_digest(raw)
    if not compressed:
        return Layer(raw, OCI_LAYER_TAR if fmt == "oci" else DOCKER_LAYER_TAR, diff_id)
    gz = gzip.compress(raw, compresslevel=6, mtime=0)
    return Layer(gz, OCI_LAYER_GZIP if fmt == "oci" else DOCKER_LAYER_GZIP, diff_id)


def _layer_type(layer: Layer, fmt: Fmt) -> str:
    gzipped = layer.data[:2] == b"\x1f\x8b"
    if fmt == "oci":
        return OCI_LAYER_GZIP if gzipped else OCI_LAYER_TAR
    return DOCKER_LAYER_GZIP if gzipped else DOCKER_LAYER_TAR


def make_image(
    rng: random.Random,
    platform: dict[str, str],
    fmt: Fmt = "oci",
    layers: list[Layer] | None = None,
    n_layers: int = 2,
    layer_size: int = 4096,
    created: str | None = _FIXED_TIME,
    annotations: dict[str, str] | None = None,
) -> Image:
    """A runnable-looking single-platform image in Docker v2.2 or OCI form; its config's
    `created` (none when None) and the manifest's `annotations` as given."""
    if fmt not in ("docker", "oci"):
        raise ValueError(f"fmt must be 'docker' or 'oci', not {fmt!r}")
    if layers is None:
        layers = [make_layer(rng, layer_size, fmt=fmt) for _ in range(n_layers)]
    config_obj: dict[str, Any] = {
        "created": created,
        "architecture": platform["architecture"],
        "os": platform["os"],
    }
    if created is None:
        del config_obj["created"]
    if "variant" in platform:
        config_obj["variant"] = platform["variant"]
    config_obj["config"] = {
        "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            f"MIRROR_TEST_NONCE={rng.getrandbits(64):016x}",
        ],
        "Cmd": ["/bin/sh"],
    }
    config_obj["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
    config_obj["history"] = [
        {"created": _FIXED_TIME, "created_by": f"mirror-tests layer {i}"}
        for i in range(len(layers))
    ]
    config = Blob(dump_json(config_obj), OCI_CONFIG if fmt == "oci" else DOCKER_CONFIG)
    manifest_type = OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST
    manifest_obj = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": [
            {"mediaType": _layer_type(layer, fmt), "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }
    if annotations:
        manifest_obj["annotations"] = dict(annotations)
    return Image(config, list(layers), Blob(dump_json(manifest_obj), manifest_type), dict(platform))


def make_attestation(rng: random.Random, subject: Image) -> Image:
    """A BuildKit-style attestation manifest (in-toto layer) for `subject`."""
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "subject": [{"name": "_", "digest": {"sha256": subject.digest.split(":", 1)[1]}}],
        "predicate": {"nonce": f"{rng.getrandbits(64):016x}"},
    }
    layer = Layer(dump_json(statement), IN_TOTO, sha256_digest(dump_json(statement)))
    config = Blob(
        dump_json(
            {
                "architecture": "unknown",
                "os": "unknown",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            }
        ),
        OCI_CONFIG,
    )
    annotated = layer.descriptor(
        annotations={"in-toto.io/predicate-type": statement["predicateType"]}
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [annotated],
    }
    platform = {"architecture": "unknown", "os": "unknown"}
    return Image(config, [layer], Blob(dump_json(manifest), OCI_MANIFEST), platform)


def make_index(
    images: list[Image],
    fmt: Fmt = "oci",
    attestation: bool = False,
    rng: random.Random | None = None,
    annotations: dict[str, str] | None = None,
) -> Index:
    """A Docker manifest list or an OCI index over `images` (optionally with an attestation,
    and the index's own `annotations`)."""
    if fmt not in ("docker", "oci"):
        raise ValueError(f"fmt must be 'docker' or 'oci', not {fmt!r}")
    if attestation and fmt != "oci":
        raise ValueError("attestation manifests are only valid in OCI indexes")
    entries = [img.manifest.descriptor(platform=dict(img.platform)) for img in images]
    extra: list[Image] = []
    if attestation:
        att = make_attestation(rng or random.Random(0), images[0])
        extra.append(att)
        entries.append(
            att.manifest.descriptor(
                platform=dict(att.platform),
                annotations={
                    "vnd.docker.reference.digest": images[0].digest,
                    "vnd.docker.reference.type": "attestation-manifest",
                },
            )
        )
    media_type = OCI_INDEX if fmt == "oci" else DOCKER_LIST
    obj: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    if annotations:
        obj["annotations"] = dict(annotations)
    return Index(Blob(dump_json(obj), media_type), list(images), extra)


def write_layout(path: Path | str, items: dict[str, Image | Index]) -> Path:
    """Write an OCI image layout directory; index.json names each item by its key.

    Docker-typed items are listed too, but skopeo 1.9 only finds OCI-typed entries.
    """
    root = Path(path)
    blob_dir = root / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entries = []
    for name, obj in items.items():
        for blob in [*obj.all_blobs(), *obj.all_manifests()]:
            target = blob_dir / blob.digest.split(":", 1)[1]
            if not target.exists():
                target.write_bytes(blob.data)
        entries.append(
            obj.manifest.descriptor(annotations={"org.opencontainers.image.ref.name": name})
        )
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    (root / "index.json").write_bytes(dump_json(index))
    return root
