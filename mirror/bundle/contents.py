"""What a bundle holds, from the resolved images: index.json entries, the mirror.json
inventory, the manifests and blobs in their fixed tar order; and the one-pass writer used for
.tar.zst output (and after a late failure) instead of the assembler."""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mirror.bundle.dockersave import docker_manifest, left_out, lists_none
from mirror.bundle.layout import (
    A_CONVERSIONS,
    A_INDEX_MODE,
    A_KIND,
    A_PLATFORMS,
    A_SOURCE_DIGEST,
    A_SUBJECT,
    Entry,
    Inventory,
    Piecewise,
    entry_list,
    index_json,
)
from mirror.bundle.writer import BlobItem, tar_size, unchanged, write_bundle
from mirror.image import Image, ImageSet
from mirror.manifest import RawManifest
from mirror.progress import Progress
from mirror.store.blobs import BlobStore


class Options(Protocol):
    """What the layout and its writer read of a pull's options
    (mirror.pull_options.PullOptions)."""

    @property
    def output(self) -> Path | None: ...
    @property
    def compress(self) -> bool: ...
    @property
    def base_blobs(self) -> dict[str, int] | None: ...  # incremental: what the base carries
    @property
    def volume_size(self) -> int | None: ...  # written as parts (mirror.bundle.volumes)


def entry_for(p: Image) -> Entry:
    """The index.json entry of an image (one per reference)."""
    ann = {A_INDEX_MODE: p.mode}
    if p.platforms:
        ann[A_PLATFORMS] = ",".join(dict.fromkeys(p.platforms))
    if p.root.digest != p.source_digest:
        ann[A_SOURCE_DIGEST] = p.source_digest
    if p.conversions:
        ann[A_CONVERSIONS] = ",".join(f"{o}>{n}" for o, n in p.conversions.items())
    if p.dest is not None:  # where images.yaml says it lands (mirror.mapping)
        ann.update(p.dest.annotations())
    return Entry(p.name, p.root.media_type, p.root.digest, p.root.size, ann)


def referrer_entries(plans: list[Image], named: Collection[str]) -> list[Entry]:
    """The referrers' entries (their own tag or `name@digest`), which mirror.json carries
    (mirror.bundle.layout), but for a name that is an image's (`named`)."""
    referrers: dict[str, Entry] = {}
    for p in plans:
        for r in p.referrers:
            m = r.root
            referrers[r.name] = Entry(r.name, m.media_type, m.digest, m.size,
                                      {A_SUBJECT: r.subject or "", A_KIND: r.kind or ""})
    return [r for n, r in referrers.items() if n not in named]


def unloadable(plans: list[Image], base_blobs: dict[str, int] | None) -> Iterator[str]:
    """A note per image the bundle's manifest.json leaves out (a base bundle's blobs, a
    foreign layer): docker load and podman load will not load it (one for the bundle when
    the base's blobs leave it out every image: those load nothing from it); and per sparse
    index, which ctr import takes only for a platform it carries, never --all-platforms."""
    base = base_blobs or {}
    carried = {d for p in plans for d in p.blobs if d not in base}
    left = left_out(plans, carried)
    if left and all(only_base for *_, only_base in left) and lists_none(plans, carried):
        # the usual incremental bundle (a shared base layer): one line, not one per image
        yield (f"incremental bundle: manifest.json lists none of its {len(left)} image(s) "
               "(each uses blobs the base bundle carried), so docker load and podman load "
               "load nothing from it, and exit 0 all the same: it is for mirror load, or for "
               "ctr import after the base bundle")
        left = []
    for name, why, _ in left:
        yield (f"{name}: not in manifest.json, so docker load and podman load leave it out: "
               f"{why}")
    for p in plans:
        if "sparse" in p.absent.values():
            lacks = [str(c.platform) for c in p.root.children
                     if p.absent.get(c.digest) == "sparse" and c.platform is not None]
            yield (f"{p.name}: --index sparse: the index names platform manifests the bundle "
                   f"does not carry ({', '.join(lacks) or 'in a nested index'}), so ctr import "
                   "--all-platforms, or ctr import on a host of such a platform, imports "
                   "nothing from this file, not even the other images; --index filter makes "
                   "one they import")


@dataclass
class BundleLayout:
    index: Piecewise
    inventory: Piecewise
    docker: Piecewise  # manifest.json
    manifests: list[RawManifest]  # in tar order (their bytes read as they are written)
    blobs: list[BlobItem]  # in tar order (verify flags set by the writer's caller)


def bundle_layout(images: ImageSet, opts: Options) -> BundleLayout:
    """What the bundle holds, in its fixed order: the same images give the same bytes."""
    plans = images.images
    manifests: dict[str, RawManifest] = {}
    blobs: dict[str, int] = {}
    inv = Inventory(partial=images.partial, base=images.base, base_name=images.base_name,
                    base_images=list(images.base_images))
    for img in images.in_push_order():  # referrers included
        for m in img.manifest_order():
            manifests[m.digest] = m
    for p in plans:
        for d in p.blobs.values():
            inv.blobs[d.digest] = d.size
            if opts.base_blobs and d.digest in opts.base_blobs:
                inv.absent[d.digest] = "base"
            else:
                blobs[d.digest] = d.size
        for digest, reason in p.absent.items():
            inv.absent.setdefault(digest, reason)
        inv.conversions.update(p.conversions)
    inv.manifests = sorted(manifests)
    named = {p.name: p for p in plans}  # one entry per reference: the last one's
    inv.referrers = entry_list(referrer_entries(plans, named))
    carried = set(blobs)
    # an image whose layers are not all here (a base bundle's, a skipped foreign layer)
    incomplete = {p.name for p in plans if "foreign" in p.absent.values()
                  or any(d not in carried for d in p.blobs)}
    # the three documents are made again each time they are read, never held whole
    return BundleLayout(Piecewise(lambda: index_json(named, lambda n: entry_for(named[n]),
                                                     incomplete)),
                        Piecewise(inv.pieces),
                        Piecewise(lambda: docker_manifest(plans, carried)),
                        [manifests[d] for d in inv.manifests],
                        [BlobItem(d, size, verify=True) for d, size in sorted(blobs.items())])


def write_plans(images: ImageSet, store: BlobStore, opts: Options,
                fresh: Collection[str], progress: Progress, *,
                stop: threading.Event | None = None) -> tuple[str, bool]:
    """Write the bundle from the store in one pass (a .tar.zst, or after a late failure);
    return its digest, and True when an identical one was already there."""
    assert opts.output is not None
    lay = bundle_layout(images, opts)
    items = [BlobItem(b.digest, b.size, verify=b.digest not in fresh) for b in lay.blobs]
    size = None if opts.compress else tar_size(lay.index, lay.inventory, lay.manifests, items,
                                               lay.docker)
    same = unchanged(opts.output, lay.index, lay.inventory, size, lay.docker, opts.volume_size)
    if same:
        return same, True
    progress.total(sum(b.size for b in items))
    return write_bundle(
        opts.output, index_json=lay.index, inventory_json=lay.inventory,
        manifests=lay.manifests, blobs=items, store=store, compress=opts.compress,
        stop=stop, docker_json=lay.docker, volume_size=opts.volume_size), False
