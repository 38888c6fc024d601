"""The load engine: bundle -> registry, in the order that never leaves a tag on a half image.

1. Scan the bundle (layout files and every manifest, digests checked) and plan, for each
   index.json entry, the target repository `HOST/PREFIX/<source repository>` and its tag.
2. Check, before pushing anything, that every blob the manifests need is in the bundle at the
   right size, or absent on purpose (a foreign layer; an incremental bundle's blobs, which must
   then already be at the target, in some repository of it: mirror.elsewhere finds them).
3. Hand the images and the bundle as their blob source (streamed out of the tar, hashed on
   the way) to the registry sink, mirror.push: blobs, then manifests, tags last.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Iterator

from mirror.aio import aiter_thread
from mirror.bundle.images import bundle_images, entry_name
from mirror.bundle.layout import REF_NAME
from mirror.bundle.reader import Bundle, Contents
from mirror.digest import verified_sync
from mirror.elsewhere import find_elsewhere
from mirror.errors import BundleError, IncompleteBase, InvalidReference
from mirror.fileobj import Readable
from mirror.manifest import Descriptor
from mirror.mapping import Destination, Placement, Target, check, place, unmatched
from mirror.progress import NullProgress, Progress
from mirror.push import push
from mirror.pushblobs import Body
from mirror.pushplan import PushImage, PushResult
from mirror.reference import Reference, _is_registry, is_bare_tag
from mirror.registry.client import Client

CHUNK = 1 << 20


LoadResult = PushResult  # what a load did: the sink's counts


def _entry_target(entry: dict, target: Target, bundle: str, dest: Destination | None = None,
                  referrer: bool = False) -> Placement:
    """Where an index.json entry lands (mirror.mapping.place): by its ref name, its
    destination from images.yaml (the pull's annotations) and the run's rules."""
    name = entry_name(entry)
    if not name:
        if not target.prefix:
            raise BundleError(f"{bundle}: index.json entry {entry.get('digest')} has no ref "
                              f"name ({REF_NAME}) and --to has no repository to put it in",
                              hint="give the repository with --to HOST/REPO (it is pushed "
                              "by digest)")
        return Placement(target.prefix, ())
    if is_bare_tag(name):
        if not target.prefix:  # a bare tag, as skopeo writes for oci-archive:FILE:TAG
            raise BundleError(f"{bundle}: entry {name!r} names a tag but no repository",
                              hint="give the repository with --to HOST/REPO")
        return Placement(target.prefix, (name,))
    try:
        ref = Reference.parse(name)
    except InvalidReference as e:
        raise BundleError(f"{bundle}: index.json entry name {name!r}: {e}") from None
    first = name.split("/", 1)[0]
    if "/" in name and _is_registry(first):
        path = ref.repository
    else:  # no registry in the name: keep the path as written (no docker.io/library/)
        path = name.split("@")[0]
        if ":" in path.rsplit("/", 1)[-1]:
            path = path.rsplit(":", 1)[0]
    return place(target, ref.name, path, ref.tag, ref.digest, dest, referrer=referrer)


def plan_load(contents: Contents, target: Target, bundle: str) -> list[PushImage]:
    """The bundle's images (mirror.bundle.images), each placed at the target (mirror.mapping:
    its repository and tags), the whole checked before anything is pushed; referrers after
    every image, in the repository their image went to."""
    entries = contents.index["manifests"]
    found = bundle_images(contents, bundle).images
    dests: dict[str, Destination] = {}  # a signature or SBOM goes where its image went
    for img in found:
        if img.subject is None and img.reference and img.dest and img.dest.to:
            dests.setdefault(img.reference.name, Destination(img.dest.to))
    images, placed = [], []
    for e, img in zip(entries, found, strict=True):
        dest = img.dest if img.subject is None else \
            dests.get(img.reference.name) if img.reference else None
        where = _entry_target(e, target, bundle, dest, referrer=img.subject is not None)
        placed.append((img.name, where, img.root.digest))
        images += [PushImage(img, where.repository, tag, unnamed=not entry_name(e))
                   for tag in where.tags or (None,)]
    check(target, placed, bundle)
    # referrers go after every image, so their subjects are at the target first
    return sorted(images, key=lambda i: i.referrer_of is not None)


def check_complete(images: list[PushImage], contents: Contents, bundle: str) -> dict[str, str]:
    """Raise BundleError listing blobs that are neither in the bundle nor absent on purpose;
    return the absent-on-purpose ones (digest -> reason)."""
    absent = dict(contents.inventory.absent) if contents.inventory else {}
    missing: list[str] = []
    for img in images:
        for d in img.blobs:
            size = contents.members.get(d.digest)
            if size is None:
                if d.digest in absent or d.is_foreign:
                    absent.setdefault(d.digest, "foreign")
                    continue
                missing.append(f"{d.digest} ({img.name})")
            elif size != d.size:
                raise BundleError(f"{bundle}: blob {d.digest} has {size} bytes, its manifest "
                                  f"says {d.size} ({img.name})")
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise BundleError(f"{bundle}: {len(missing)} blob(s) missing: "
                          f"{', '.join(missing[:5])}{more}; nothing was pushed")
    return absent


def _base_repositories(contents: Contents, target: Target, bundle: str) -> list[str]:
    """Where the base's images went if it was loaded with the same --to."""
    names = contents.inventory.base_images if contents.inventory else []
    repos = []
    for name in names:
        try:
            repos.append(_entry_target({"annotations": {REF_NAME: name}}, target,
                                       bundle).repository)
        except BundleError:
            continue
    return repos


def _source_paths(images: list[PushImage], contents: Contents) -> list[str]:
    """Repository paths of this bundle's and its base's images, as the source names them
    (what a catalog's repository under any prefix ends with)."""
    names = [i.name for i in images if not i.unnamed]
    names += contents.inventory.base_images if contents.inventory else []
    paths = []
    for name in names:
        try:
            paths.append(Reference.parse(name).repository)
        except InvalidReference:
            continue
    return sorted(set(paths))


class _BundleBlobs:
    def __init__(self, bundle: Bundle, contents: Contents) -> None:
        self.bundle, self.contents = bundle, contents
        self.name = bundle.name

    def carries(self, digest: str) -> bool:
        return digest in self.contents.members


class BundleSource(_BundleBlobs):
    """A plain tar (or layout directory) as the sink's blob source (mirror.pushblobs.BlobSource):
    a blob read at its offset, hashed in the reading thread, not on the event loop."""

    def open(self, desc: Descriptor, offset: int) -> AsyncIterator[bytes]:
        # a resumed upload (offset > 0) is checked by the registry against the digest in
        # the final PUT
        chunks = self.bundle.open_blob(desc.digest, offset)
        return aiter_thread(verified_sync(chunks, desc.digest, desc.size,
                                           f"{self.name}: blob {desc.digest}")
                             if offset == 0 else chunks)


class BundleStream(_BundleBlobs):
    """A .tar.zst as the sink's blob source (mirror.pushblobs.StreamSource): its members in one
    pass, each hashed in the reading thread as it is uploaded."""

    def __init__(self, bundle: Bundle, contents: Contents) -> None:
        super().__init__(bundle, contents)
        # a failed upload may leave a read of its member running in a thread: the stream
        # moves on to the next member only once that read is over
        self._reading = threading.Lock()

    def _read(self, f: Readable) -> bytes:
        with self._reading:
            return f.read(CHUNK)

    def stream(self) -> Iterator[tuple[str, Body]]:
        members = self.bundle.members()
        try:
            while True:
                with self._reading:
                    item = next(members, None)
                if item is None:
                    return
                name, _size, f = item
                if f is None:
                    continue

                def body(d: Descriptor, f: Readable = f) -> AsyncIterator[bytes]:
                    return aiter_thread(verified_sync(
                        iter(functools.partial(self._read, f), b""), d.digest, d.size,
                        f"{self.name}: blob {d.digest}"))

                yield name.replace("blobs/", "", 1).replace("/", ":", 1), body
        finally:
            members.close()


async def load(client: Client, bundle: Bundle, target: Target, *, jobs: int = 4,
               dry_run: bool = False, progress: Progress | None = None,
               result: LoadResult | None = None, merge: bool = False) -> LoadResult:
    """`result`, when given, is filled in as the load goes: after a failure it holds what
    was done (a report's counts). `merge`: a tag holding another index keeps its other
    platforms (mirror.merge). A load that fails or is stopped (Ctrl-C, SIGTERM: a
    cancellation) first cancels the upload sessions it left open, within a few seconds."""
    progress = progress or NullProgress()
    result = result if result is not None else LoadResult()
    contents = await asyncio.to_thread(bundle.scan)
    for note in contents.notes:  # a docker-archive's new manifests (conversions)
        progress.info(note)
    images = plan_load(contents, target, bundle.name)
    for line in unmatched(target.layout.rules, (i.image.reference.name for i in images
                                                if i.image.reference is not None)):
        progress.warn(line)
    absent = check_complete(images, contents, bundle.name)
    result.images = images
    reg = target.registry

    async def elsewhere(lost: dict[str, Descriptor], repos: list[str]
                        ) -> tuple[dict[str, str], int]:
        return await find_elsewhere(client, reg, lost,
                                    _base_repositories(contents, target, bundle.name) + repos,
                                    _source_paths(images, contents), jobs)

    def incomplete(missing: list[str], searched: int) -> IncompleteBase:
        base = contents.inventory.base_named if contents.inventory else ""
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        return IncompleteBase(
            f"{bundle.name}: incremental bundle: {len(missing)} blob(s) it does not carry "
            f"are not in {reg} (looked in {searched} repositories): "
            f"{', '.join(missing[:5])}{more}; nothing was pushed",
            hint="load first the bundle(s) made before this one"
                 + (f" (it was made against {base})" if base else ""))

    source = BundleStream(bundle, contents) if bundle.compressed else \
        BundleSource(bundle, contents)
    return await push(client, reg, images, source, result, progress, absent=absent,
                      jobs=jobs, dry_run=dry_run, merge=merge, elsewhere=elsewhere,
                      incomplete=incomplete)
