"""A docker-archive read as a layout: what `docker save` before Docker 25, `podman save
--format docker-archive` (also `--multi-image-archive`) and skopeo's `docker-archive:` write.

Such a tar has manifest.json (a list of `{Config, RepoTags, Layers}`, paths inside the tar)
and no index.json; its layers are uncompressed tars (`<id>/layer.tar`, repeated ones often as
links, which the reader resolves), and the registry manifests they came from are not kept. So
each image gets a new Docker v2.2 manifest: the config byte for byte (its digest, the image
ID, unchanged) and the layers as they are in the tar, `tar` media type, whose digests are the
config's diff_ids (checked as each is pushed: a layer that does not hash to its diff_id stops
the load before its manifest). The new manifest digests are reported as a conversion, one
line per image. Images without a tag are named by nothing the registry can take: they are
listed in a note and left out.
"""

from __future__ import annotations

import json
import posixpath
from typing import TYPE_CHECKING, Any

from mirror import mediatypes as mt
from mirror.bundle.layout import DOCKER_JSON, IMAGE_NAME, REF_NAME
from mirror.bundle.members import Contents, Member
from mirror.digest import Digest, sha256_of
from mirror.errors import BundleError, IntegrityError, InvalidReference
from mirror.manifest import RawManifest, dump_json
from mirror.reference import Reference

if TYPE_CHECKING:
    from mirror.bundle.reader import Bundle

_COMPRESSED = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"BZh", b"\xfd7zXZ")


def read(bundle: Bundle, files: dict[str, Member]) -> tuple[Contents, dict[str, str]]:
    """The layout view of a docker-archive: Contents (index entries named by RepoTags, the
    new manifests, notes) and the member each config and layer digest is read from."""
    where = f"{bundle.name}: {DOCKER_JSON}"
    try:
        items = json.loads(bundle.read_member(DOCKER_JSON))
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ValueError
    except ValueError:
        raise BundleError(f"{where} is not a list of images (docker-archive)") from None
    if not items:  # `docker save` of nothing: verify said OK and load pushed nothing, exit 0
        raise BundleError(f"{where} lists no image (an empty docker-archive)")
    c = Contents({"schemaVersion": 2, "manifests": []}, None)
    aliases: dict[str, str] = {}
    for n, item in enumerate(items):
        raw, blobs = _image(bundle, files, item, f"{where}: image {n + 1}")
        c.manifests[raw.digest] = raw
        c.members[raw.digest] = raw.size
        for digest, name in blobs.items():
            aliases[digest] = name
            c.members[digest] = files[name].size
        tags = item.get("RepoTags") or []
        cfg = raw.config
        assert cfg is not None
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise BundleError(f"{where}: image {n + 1}: RepoTags is not a list of names")
        if not tags:
            c.notes.append(f"{bundle.name}: docker-archive image {cfg.digest} has no tag: "
                           "left out (name it with `docker tag` before `docker save`)")
        for tag in tags:
            try:
                ref = Reference.parse(tag)
            except InvalidReference as e:
                raise BundleError(f"{where}: RepoTags {tag!r}: {e}") from None
            c.index["manifests"].append(raw.descriptor(
                annotations={IMAGE_NAME: str(ref), REF_NAME: str(ref)}))
            c.notes.append(f"{ref}: docker-archive: new manifest {raw.digest} (config "
                           f"{cfg.digest} unchanged; layers uncompressed as the archive holds "
                           "them, their digests the config's diff_ids)")
    return c, aliases


def _image(bundle: Bundle, files: dict[str, Member], item: dict[str, Any], where: str
           ) -> tuple[RawManifest, dict[str, str]]:
    cfg_name, layers = item.get("Config"), item.get("Layers")
    if not isinstance(cfg_name, str) or not isinstance(layers, list) or not all(
            isinstance(p, str) for p in layers):
        raise BundleError(f"{where}: no Config and Layers paths")
    blobs: dict[str, str] = {}
    name = _member(files, cfg_name, where)
    config = bundle.read_member(name)
    cfg_digest = sha256_of(config)
    blobs[cfg_digest] = name
    try:
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        if not isinstance(diff_ids, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"{where}: config {cfg_name} has no rootfs.diff_ids") from None
    if len(diff_ids) != len(layers):
        raise BundleError(f"{where}: {len(layers)} layer(s), but the config lists "
                          f"{len(diff_ids)} diff_id(s)")
    for n, diff_id in enumerate(diff_ids, 1):
        try:
            if not isinstance(diff_id, str):
                raise IntegrityError(f"{diff_id!r} is not a digest")
            Digest.parse(diff_id)
        except IntegrityError as e:
            raise BundleError(f"{where}: config {cfg_name}: diff_id {n}: {e}") from None
    descs = []
    for path, diff_id in zip(layers, diff_ids, strict=True):
        name = _member(files, path, where)
        with bundle.open_member(files[name]) as f:
            head = f.read(6)
        if head.startswith(_COMPRESSED):
            raise BundleError(f"{where}: layer {path} is compressed; a docker-archive's "
                              "layers are tars whose digests are the diff_ids",
                              hint="load the image into docker or podman and save it again")
        blobs[diff_id] = name
        descs.append({"mediaType": mt.DOCKER_LAYER_TAR, "size": files[name].size,
                      "digest": diff_id})
    body = {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
            "config": {"mediaType": mt.DOCKER_CONFIG, "size": len(config), "digest": cfg_digest},
            "layers": descs}
    return RawManifest(dump_json(body), mt.DOCKER_MANIFEST), blobs


def _member(files: dict[str, Member], path: str, where: str) -> str:
    name = posixpath.normpath(path)
    if name not in files:
        raise BundleError(f"{where}: {path!r} is not in the tar")
    return name
