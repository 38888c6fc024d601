"""A bundle as a source: its index.json entries and mirror.json's referrers as the images of
mirror.image, each with its manifests in push order and their blobs.

What our pull wrote in the annotations (mirror.bundle.layout) comes back: the source digest,
the index mode, the platforms, the conversions; a referrer's subject and kind. Another
writer's bundle (skopeo, docker save) has none of them: its images carry their own digests.
"""

from __future__ import annotations

from typing import Any

from mirror.bundle.layout import (
    A_CONVERSIONS,
    A_INDEX_MODE,
    A_KIND,
    A_PLATFORMS,
    A_SOURCE_DIGEST,
    A_SUBJECT,
    IMAGE_NAME,
    REF_NAME,
)
from mirror.bundle.reader import Contents
from mirror.errors import BundleError, InvalidReference
from mirror.image import Image, ImageSet, push_order
from mirror.manifest import Descriptor
from mirror.mapping import Destination
from mirror.reference import Reference


def entry_name(entry: dict[str, Any]) -> str | None:
    """The reference an index.json entry names (containerd's annotation, else the OCI one)."""
    ann = entry.get("annotations") or {}
    return ann.get(IMAGE_NAME) or ann.get(REF_NAME) or None


def conversions_of(entry: dict[str, Any]) -> dict[str, str]:
    """An entry's `dev.mirror.conversions`: "old>new,old>new" as {old: new}."""
    ann = entry.get("annotations") or {}
    pairs = (p.split(">", 1) for p in (ann.get(A_CONVERSIONS) or "").split(",") if ">" in p)
    return {old.strip(): new.strip() for old, new in pairs}


def bundle_images(contents: Contents, bundle: str) -> ImageSet:
    """One image per entry, in index.json's order (mirror.json's referrers after the images,
    as the reader lists them). Raise BundleError for an entry whose manifest is missing."""
    inv = contents.inventory
    out = ImageSet(base=inv.base if inv else None, base_name=inv.base_name if inv else None,
                   base_images=list(inv.base_images) if inv else [],
                   partial=inv.partial if inv else False)
    absent = inv.absent if inv else {}
    for entry in contents.index["manifests"]:
        out.images.append(_image(entry, contents, bundle, absent))
    return out


def _image(entry: dict[str, Any], contents: Contents, bundle: str,
           absent: dict[str, str]) -> Image:
    desc = Descriptor.from_dict(entry, f"{bundle} index.json")
    root = contents.manifests.get(desc.digest)
    if root is None:
        raise BundleError(f"{bundle}: manifest {desc.digest} is missing")
    ann = entry.get("annotations") or {}
    name = entry_name(entry)
    try:
        reference = Reference.parse(name) if name else None
    except InvalidReference:
        reference = None
    img = Image(str(name or f"{bundle}: index.json entry {desc.digest}"), root,
                ann.get(A_SOURCE_DIGEST) or "",
                ann.get(A_INDEX_MODE) or ("full" if root.is_index else "single"), reference,
                platforms=[p for p in (ann.get(A_PLATFORMS) or "").split(",") if p],
                conversions=conversions_of(entry),
                subject=ann.get(A_SUBJECT) or (root.subject.digest if root.subject else None),
                kind=(ann.get(A_KIND) or "artifact") if ann.get(A_SUBJECT) else None,
                dest=Destination.from_annotations(ann))
    for raw in push_order([root], contents.manifests):
        img.manifests[raw.digest] = raw
        for d in raw.blobs():
            img.blobs.setdefault(d.digest, d)
            if d.digest in absent:
                img.absent[d.digest] = absent[d.digest]
    return img
