"""Media types (REFERENCE.md section 1) and the classification of fetched manifests."""

from __future__ import annotations

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_FOREIGN_TAR = "application/vnd.docker.image.rootfs.foreign.diff.tar"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_PLUGIN_CONFIG = "application/vnd.docker.plugin.v1+json"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"

INDEX_TYPES = frozenset({DOCKER_LIST, OCI_INDEX})
IMAGE_MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
MANIFEST_TYPES = INDEX_TYPES | IMAGE_MANIFEST_TYPES
SCHEMA1_TYPES = frozenset({SCHEMA1, SCHEMA1_SIGNED})
IMAGE_CONFIG_TYPES = frozenset({DOCKER_CONFIG, OCI_CONFIG})
FOREIGN_TYPES = frozenset({
    DOCKER_FOREIGN, DOCKER_FOREIGN_TAR, OCI_NONDIST, OCI_NONDIST_GZIP, OCI_NONDIST_ZSTD,
})
LAYER_TYPES = FOREIGN_TYPES | {
    DOCKER_LAYER, DOCKER_LAYER_TAR, DOCKER_LAYER_ZSTD, OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD,
}

# One Accept header on every manifest GET and HEAD (REFERENCE.md 6.2, pitfall 3 and 28): the
# schema 1 types are listed last so that a registry holding only schema 1 says so, and we can
# refuse it clearly instead of being served something else.
MANIFEST_ACCEPT = ", ".join([
    OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST, SCHEMA1_SIGNED, SCHEMA1,
])


def is_index(media_type: str) -> bool:
    return media_type in INDEX_TYPES


def is_image_manifest(media_type: str) -> bool:
    return media_type in IMAGE_MANIFEST_TYPES


def is_docker(media_type: str) -> bool:
    return media_type.startswith("application/vnd.docker.")


def strip_params(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def blob_kind(media_type: str) -> str:
    """What a blob is, for messages: "config" (an image's, or an artifact's `...config...`
    type), "layer" (the image layer types, foreign ones included) or "blob"."""
    mtype = strip_params(media_type)
    if mtype in IMAGE_CONFIG_TYPES or ".config." in mtype:
        return "config"
    if mtype in LAYER_TYPES:
        return "layer"
    return "blob"
