"""manifest.json: Docker's save format beside index.json, so that `docker load` before Docker
25 (which reads nothing else) and `podman load` of a bundle of several images (its OCI path
takes one index.json entry; its docker-archive path reads this file) open the bundle.

The bytes are what `docker save` writes (Go's encoder: compact, a newline at the end): a list
of `{"Config": "blobs/sha256/<hex>", "RepoTags": [...] | null, "Layers": ["blobs/sha256/<hex>",
...]}`, one per image, paths inside the tar, RepoTags in Docker's short form. Both runtimes
decompress gzip layers themselves and check them against the config's diff_ids; the image ID
is the config digest, as from a registry.

Listed: every Linux image manifest whose config and layers the bundle carries (not a foreign
layer, not one left to a base bundle) and that has no zstd layer (docker load 20.10 fails on
one, and loads nothing after it), none of an artifact or an attestation. Docker keeps one
image per tag: a reference with several platforms tags linux/amd64 when it has it, else its
first platform; the other platforms load untagged (by image ID).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from mirror import mediatypes as mt
from mirror.bundle.layout import batched, blob_name
from mirror.image import Image, push_order
from mirror.manifest import RawManifest
from mirror.platform import Platform
from mirror.reference import DOCKER_HUB, Reference

TAGGED_FIRST = ("linux", "amd64")
# Docker 20.10's load reads tar and gzip layers, not zstd ("invalid tar header", and nothing
# after it loads): a zstd image stays out (ctr import and mirror load take it)
_ZSTD_LAYERS = frozenset({mt.DOCKER_LAYER_ZSTD, mt.OCI_LAYER_ZSTD})
_TAR_LAYERS = mt.LAYER_TYPES - mt.FOREIGN_TYPES - _ZSTD_LAYERS


def familiar(ref: Reference) -> str | None:
    """Docker's short name:tag (`alpine:3.20` for docker.io/library/alpine:3.20); None for
    a reference without a tag (a digest alone cannot be a RepoTag)."""
    if not ref.tag:
        return None
    name = ref.name
    if ref.registry == DOCKER_HUB:  # docker.io/library/x -> x, docker.io/org/x -> org/x
        repo = ref.repository
        name = repo.removeprefix("library/") if repo.count("/") == 1 else repo
    return f"{name}:{ref.tag}"


def _images(plan: Image) -> list[tuple[Platform | None, RawManifest]]:
    """The platform images under the plan's root, in index order (nested indexes walked),
    each with the platform of the entry that names it."""
    order = push_order([plan.root], plan.manifests)
    named = {d.digest: d.platform for raw in order if raw.is_index for d in raw.children}
    own = Platform.parse(plan.platforms[0]) if plan.platforms and not plan.root.is_index \
        else None
    return [(named.get(raw.digest, own), raw) for raw in order
            if raw.is_image and not raw.declared_artifact_type]


def _loadable(platform: Platform | None, raw: RawManifest, carried: set[str]) -> bool:
    if platform is not None and platform.os != "linux":
        return False  # Windows and the attestations' unknown/unknown: not on a Linux host
    layers = raw.layers
    return all(d.media_type in _TAR_LAYERS and not d.urls for d in layers) and all(
        d.digest in carried for d in raw.blobs())


def docker_manifest(plans: Iterable[Image], carried: set[str]) -> Iterator[bytes]:
    """manifest.json for the images of `plans` whose blobs are all in `carried`: the bytes
    of json.dumps of the whole list (compact, a newline after it), made entry by entry.
    What it holds while it sorts is what every image of the bundle costs at once (made for
    the head's size, then as it is written: the run's peak at 2,000 images), so an entry's
    tags are a list, made a set one entry at a time, and entries sort by config digest (the
    order of its `blobs/<alg>/<hex>` path: sha256 and sha512 alone, neither the other's
    prefix), not a path made for each."""
    entries: dict[tuple[str, tuple[str, ...]], list[str] | None] = {}
    for plan in plans:
        images = [(p, raw) for p, raw in _images(plan) if _loadable(p, raw, carried)]
        tagged = next((raw for p, raw in images if p is not None and
                       (p.os, p.architecture) == TAGGED_FIRST), None)
        if tagged is None and images:
            tagged = images[0][1]
        tag = familiar(plan.reference) if plan.reference else None
        for _, raw in images:
            assert raw.config is not None
            key = (raw.config.digest, tuple(d.digest for d in raw.layers))
            tags = entries.setdefault(key, None)
            if raw is tagged and tag:
                if tags is None:
                    tags = entries[key] = []
                tags.append(tag)
    # each entry's dict made as it is written, in the order of the whole list sorted by
    # (untagged, tags, config path); a stable sort: ties keep the images' order
    docs = sorted(((sorted(set(tags)) if tags else None, key) for key, tags in entries.items()),
                  key=lambda d: (d[0] is None, d[0] or [], d[1][0]))
    del entries
    compact = json.JSONEncoder(separators=(",", ":")).encode
    yield b"["
    yield from batched(("," if n else "") + compact(
        {"Config": blob_name(config), "RepoTags": names,
         "Layers": [blob_name(d) for d in layers]})
        for n, (names, (config, layers)) in enumerate(docs))
    yield b"]\n"


def lists_none(plans: Iterable[Image], carried: set[str]) -> bool:
    """Whether manifest.json lists no image at all: docker load and podman load of the
    bundle load nothing, and exit 0 all the same (docker 20.10, podman 4.3)."""
    return not any(_loadable(p, raw, carried) for plan in plans for p, raw in _images(plan))


def left_out(plans: Iterable[Image], carried: set[str]) -> list[tuple[str, str, bool]]:
    """The references with a Linux image that manifest.json leaves out (docker load and
    podman load do not get it), each with the reason in words, for pull to say, and whether
    that reason is only the blobs a base bundle carried."""
    out: list[tuple[str, str, bool]] = []
    for plan in plans:
        images = [raw for p, raw in _images(plan) if (p is None or p.os == "linux")
                  and not _loadable(p, raw, carried)]
        if not images:
            continue
        layers = [d for raw in images for d in raw.layers]
        base = False
        if any(d.urls or d.media_type in mt.FOREIGN_TYPES for d in layers if
               d.digest not in carried):
            why = ("a foreign layer the bundle does not carry (--foreign-layers skip): "
                   "ctr import cannot unpack it either; --foreign-layers include or "
                   "rewrite carries it")
        elif any(d.urls or d.media_type in mt.FOREIGN_TYPES for d in layers):
            why = "a foreign layer (urls, a non-distributable type): --foreign-layers rewrite"
        elif any(d.media_type in _ZSTD_LAYERS for d in layers):
            why = ("a zstd layer, which docker load (20.10) cannot read; ctr import and "
                   "mirror load take it")
        else:
            n = len({d.digest for raw in images for d in raw.blobs()} - carried)
            why, base = (f"{n} of its blob(s) are in the base bundle; ctr import unpacks it "
                         "once the base bundle was imported (as mirror load needs the base "
                         "loaded)"), True
        out.append((plan.name, why, base))
    return out
