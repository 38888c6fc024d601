"""Read a bundle (.tar or .tar.zst, ours or skopeo's oci-archive; an OCI layout directory; a
docker-archive) without unpacking it.

A plain tar is indexed once (member name -> data offset) and read at random
(mirror.bundle.members checks every member); a zstd tar is read as a stream
(mirror.bundle.zstdstream): `scan()` reads until it holds index.json and every manifest (our
bundles put them first, so that is quick), and `members()` passes over it again, yielding the
blobs in tar order. A directory's files (mirror.bundle.directory) are read as a plain tar's
members; a tar with Docker's manifest.json and no OCI layout is read as a docker-archive
(mirror.bundle.dockerarchive).

`scan()` also checks that the parts agree (mirror.bundle.consistency: the mirror.json
inventory, the manifests, the blobs in the tar), so load refuses what verify refuses before it
pushes anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from mirror.bundle import consistency, volumecheck, volumefile, volumes
from mirror.bundle.layout import DOCKER_JSON, MIRROR_JSON, Inventory, blob_name
from mirror.bundle.members import (
    CHUNK,
    Contents,
    Member,
    blob_digest,
    index_tar,
    resolve_links,
    truncated,
)
from mirror.bundle.through import Tap, Tapped, Window
from mirror.bundle.trailer import is_zstd
from mirror.digest import Digest, sha256_of
from mirror.errors import BundleError, IntegrityError, MirrorError
from mirror.fileobj import Readable
from mirror.manifest import MAX_MANIFEST_BYTES, Descriptor, RawManifest

if TYPE_CHECKING:  # a .tar.zst's (it imports zstandard): read only for one
    from mirror.bundle.zstdstream import Visit

__all__ = ["Bundle", "Contents", "Member"]


class Bundle:
    def __init__(self, path: Path, *, check_parts: bool = True) -> None:
        """`path`: the bundle file, an OCI layout directory, or a set of parts (the first
        part, the sidecar, or the base name when only the parts exist: mirror.bundle.volumes),
        whose parts are checked against the sidecar here (their sizes; with `check_parts`,
        their sha256 too), before anything is read from them."""
        self.path = Path(path)
        self.name = str(path)
        self._members: dict[str, Member] | None = None
        self._links: dict[str, str] = {}  # link member -> what it names (a docker-archive)
        self._linked_cache: dict[str, Member] | None = None
        self._aliases: dict[str, str] = {}  # digest -> member, where not blobs/<alg>/<hex>
        self.volumes: volumes.VolumeSet | None = None
        self._pinned: volumefile.Pinned | None = None
        self.directory = self.path.is_dir()  # an OCI layout directory (mirror.bundle.directory)
        self.compressed = False
        if self.directory:
            return
        self.volumes = volumes.find(self.path)
        if self.volumes is not None:
            # A read of every part before the load or serve reads them again (verify does
            # both in one read: it pushes nothing). Hashing the parts as the push reads them
            # would not keep "a damaged part pushes nothing": the blobs' digests cover only
            # their own bytes, not index.json (which tags name which roots) nor the tar's
            # headers, so the damage would be known only at the last part, after the blobs
            # of the parts before it went out; the push reads the blobs at random, -j at a
            # time, and skips those the target holds, where the hashes need every byte in
            # order; and serve sends blobs with sendfile, never hashed, for as long as it
            # runs. Holding every upload's closing PUT until the end would keep nothing
            # pushed, at two requests more per small blob and a session open per blob.
            volumecheck.check(self.volumes, self.name, hashes=check_parts)
        try:
            # every read of a plain tar's members (mirror serve's for as long as it runs)
            # is of these files, even once a rerun has replaced them
            self._pinned = volumefile.Pinned(self.path, self.volumes)
            with self._pinned.open() as f:
                magic = f.read(4)
        except OSError as e:
            raise BundleError(f"{self.name}: cannot open bundle: {e.strerror}") from None
        self.compressed = is_zstd(magic)

    # -- a plain tar or a directory: an index of members -----------------------------------

    def _index(self) -> dict[str, Member]:
        if self._members is None and self.directory:
            from mirror.bundle import directory

            self._members = directory.index(self.path, self.name)
        if self._members is None:
            self._members = index_tar(self.path, self.name, self._links, self._open)
        return self._members

    def read_member(self, name: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        m = self._index().get(name) or (self._linked().get(name) if self._links else None)
        if m is None:
            raise BundleError(f"{self.name}: no {name!r} in the bundle")
        if m.size > limit:
            raise BundleError(f"{self.name}: {name!r} is too large ({m.size} bytes)")
        with self.open_member(m) as f:
            return f.read(m.size)

    def open_member(self, m: Member) -> BinaryIO:
        """The file, positioned at the member's data (a plain tar's or a directory's)."""
        try:
            f = open(m.path, "rb") if m.path else self._open()  # noqa: SIM115
        except OSError as e:
            raise BundleError(f"{self.name}: cannot open {m.name!r}: {e.strerror}") from None
        f.seek(m.offset or 0)
        return f

    def __del__(self) -> None:
        if getattr(self, "_pinned", None) is not None:
            self._pinned.close()  # type: ignore[union-attr]

    def _open(self) -> BinaryIO:
        """The bundle's file (or parts) as it was when opened, from its start."""
        pinned = getattr(self, "_pinned", None)
        return pinned.open() if pinned is not None else volumefile.open_read(self.path)

    def _linked(self) -> dict[str, Member]:
        """The link members (a docker-archive's repeated layers), each as the file it names;
        worked out once (every read of a member asks)."""
        if self._linked_cache is None:
            self._linked_cache = resolve_links(self._links, self._index(), self.name)
        return self._linked_cache

    def blob_member(self, digest: str) -> str:
        """The member that holds a blob: `blobs/<alg>/<hex>`, or a docker-archive's path."""
        return self._aliases.get(digest) or blob_name(digest)

    def member_digests(self, name: str) -> list[str]:
        """The digests a docker-archive's member holds (config: its sha256; layer: its
        diff_id; a file that links make several layers: each of theirs), after scan(); empty
        for other members."""
        if not self._aliases:
            return []
        if not hasattr(self, "_by_member"):
            real = {**{n: n for n in self._index()}, **{
                n: m.name for n, m in self._linked().items()}}
            by: dict[str, list[str]] = {}
            for d, m in self._aliases.items():
                if m in real:
                    by.setdefault(real[m], []).append(d)
            self._by_member = by
        return self._by_member.get(name, [])

    def blob_at(self, digest: str) -> Member | None:
        """Where a blob's bytes are: its member (a plain tar's data offset, or a directory's
        file), for a reader at random (open_blob, mirror serve); None when not in the bundle."""
        name = self.blob_member(digest)
        return self._index().get(name) or (self._linked().get(name) if self._links else None)

    def open_blob(self, digest: str, offset: int = 0) -> Iterator[bytes]:
        """Chunks of a blob of a plain tar, from `offset` (sync; run it off the event loop)."""
        m = self.blob_at(digest)
        if m is None:
            raise BundleError(f"{self.name}: blob {digest} is missing")
        with self.open_member(m) as f:
            f.seek((m.offset or 0) + offset)
            left = m.size - offset
            while left > 0:
                data = f.read(min(CHUNK, left))
                if not data:
                    raise truncated(self.path, self.name,
                                    f"the tar ends in the middle of blob {digest}")
                left -= len(data)
                yield data

    def members(self, tap: Tap | None = None
                ) -> Generator[tuple[str, int, Readable | None], None, None]:
        """Every file member in tar order. The fileobj is None for a plain tar (use
        open_blob), unless `tap` is given: then the file is read once from start to end, its
        every byte (headers and padding too) given to `tap`, and each member comes with a
        fileobj (what it leaves unread is read past)."""
        if self.compressed:
            from mirror.bundle.zstdstream import iter_stream

            yield from iter_stream(self.path, self.name, tap)
            return
        if self.directory:  # no file of its own to hash: `tap` has nothing to follow
            for name, m in sorted(self._index().items()):
                with self.open_member(m) as f:
                    yield name, m.size, f
            return
        items = sorted(self._index().values(), key=lambda m: m.offset or 0)
        if tap is None:
            for m in items:
                yield m.name, m.size, None
            return
        with self._open() as f:
            raw = Tapped(f, tap)
            pos = 0
            for m in items:
                start = m.offset or 0
                if start < pos:  # _index refuses members that overlap; never misread one
                    raise BundleError(f"{self.name}: member {m.name!r} overlaps the one "
                                      "before it")
                raw.skip(start - pos)
                window = Window(raw, m.size)
                yield m.name, m.size, window
                raw.skip(window.left)
                pos = start + m.size
            raw.drain()

    # -- planning ------------------------------------------------------------------------

    def scan(self, *, configs: bool = False, check: bool = True,
             visit: Visit | None = None, tap: Tap | None = None) -> Contents:
        """Read the layout files and every manifest reachable from index.json; with
        `configs`, also keep image configs (for inspect) in `Contents.configs`; with `check`
        (verify lists the problems itself), raise for parts that disagree (`check`).

        A tar.zst is read from start to end here, so a caller that must read all of it
        (verify) does so in this one pass: `visit` is given each blob member (its bytes when
        the scan kept them, else its fileobj) and `tap` every byte of the file. Both are
        ignored for a plain tar (see `members(tap=...)`).

        Raises BundleError for a bundle that is not an OCI layout, and IntegrityError for a
        manifest whose bytes do not match its digest.
        """
        if self.compressed:
            c = self._scan_stream(configs, visit, tap)
        elif self._is_docker_archive():
            c = self._scan_docker_archive()
        else:
            c = self._scan_layout()
        if check:
            self.check(c)
        return c

    def _is_docker_archive(self) -> bool:
        files = self._index()
        return DOCKER_JSON in files and not {"oci-layout", "index.json"} & files.keys()

    def _scan_docker_archive(self) -> Contents:
        """A tar with Docker's manifest.json and no OCI layout (mirror.bundle.dockerarchive):
        its images as a layout's, its files named by digest (`blob_member`)."""
        from mirror.bundle import dockerarchive

        plain, self._aliases = dockerarchive.read(self, {**self._index(), **self._linked()})
        return plain

    def _scan_layout(self) -> Contents:
        """An OCI layout in a plain tar or a directory, read at random."""
        files = self._index()
        if self._links:
            name = next(iter(self._links))
            raise BundleError(f"{self.name}: member {name!r} is a link; a bundle holds "
                              "only files")
        if "oci-layout" not in files:
            raise BundleError(f"{self.name}: no oci-layout file: not an OCI image layout")
        layout = self.read_member("oci-layout")
        index = self.read_member("index.json")
        inv = self.read_member(MIRROR_JSON) if MIRROR_JSON in files else None
        c = self._contents(layout, index, inv)
        c.docker = self.read_member(DOCKER_JSON) if DOCKER_JSON in files else None
        c.members = {d: m.size for n, m in files.items() if (d := blob_digest(n))}
        self._walk(c, lambda d: self.read_member(blob_name(d))
                   if blob_name(d) in files else None)
        return c

    def _scan_stream(self, configs: bool, visit: Visit | None, tap: Tap | None) -> Contents:
        """A tar.zst, in one pass (mirror.bundle.zstdstream)."""
        from mirror.bundle.zstdstream import StreamScan, iter_stream

        scan = StreamScan(self.name, self._contents, configs=configs, visit=visit)
        for name, size, f in iter_stream(self.path, self.name, tap):
            scan.feed(name, size, f)
        c = scan.finish()
        self._walk(c, scan.small.get)
        if configs:
            c.configs = scan.configs()
        return c

    def check(self, c: Contents) -> None:
        """Raise BundleError naming the first place where the inventory, the manifests and
        the blobs in the tar disagree (mirror.bundle.consistency; verify lists them all)."""
        found = consistency.problems(c)
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise BundleError(f"{self.name}: {found[0]}{more}",
                              hint=f"`mirror verify {self.name}` lists them" if more else None)

    def _contents(self, layout: bytes, index: bytes, inv: bytes | None) -> Contents:
        try:
            lay = json.loads(layout)
            if lay.get("imageLayoutVersion") != "1.0.0":
                raise BundleError(f"{self.name}: oci-layout says imageLayoutVersion "
                                  f"{lay.get('imageLayoutVersion')!r}, expected '1.0.0'")
        except (ValueError, AttributeError):
            raise BundleError(f"{self.name}: oci-layout is not valid JSON") from None
        try:
            idx = json.loads(index)
            if not isinstance(idx, dict) or not isinstance(idx.get("manifests"), list):
                raise ValueError
        except ValueError:
            raise BundleError(f"{self.name}: index.json is not a valid OCI index") from None
        inventory = None
        if inv is not None:
            try:
                inventory = Inventory.from_bytes(inv)
                if not all(isinstance(r, dict) for r in inventory.referrers):
                    raise ValueError
            except (ValueError, AttributeError, TypeError):
                raise BundleError(f"{self.name}: mirror.json is not valid") from None
            # the referrers' entries (mirror.bundle.layout): entries like index.json's own
            idx["manifests"] = [*idx["manifests"], *inventory.referrers]
        return Contents(idx, inventory)

    def _walk(self, c: Contents, read: Callable[[str], bytes | None]) -> None:
        """Load every manifest reachable from index.json (checking each digest). A descriptor
        that is not well formed (a digest that is not a digest) is a broken bundle, named with
        the file it is in: index.json, or the manifest."""
        try:
            todo: list[tuple[Descriptor, RawManifest | None]] = [
                (Descriptor.from_dict(d, "index.json"), None) for d in c.index["manifests"]]
        except IntegrityError as e:
            raise BundleError(f"{self.name}: {e}") from None
        while todo:
            desc, parent = todo.pop()
            if desc.digest in c.manifests:
                continue
            data = read(desc.digest)
            if data is None:
                absent = c.inventory.absent if c.inventory else {}
                if desc.digest in absent:
                    continue
                if parent is not None and desc.platform is not None and c.inventory is None:
                    raise self._partial(parent, read)
                raise BundleError(f"{self.name}: manifest {desc.digest} is missing from the "
                                  "bundle")
            where = f"{self.name}: manifest {desc.digest}"
            try:
                Digest.parse(desc.digest)
            except IntegrityError as e:
                raise BundleError(f"{where}: {e}") from None
            got = sha256_of(data)  # bytes first: a tampered manifest is an integrity error
            if got != desc.digest or len(data) != desc.size:
                raise IntegrityError(f"{where}: content does not match its digest or size "
                                     f"(got {got}, {len(data)} bytes)")
            raw = RawManifest.from_bytes(data, desc.media_type, where=where)
            c.manifests[desc.digest] = raw
            try:  # every descriptor in it parsed once here: later readers find them sound
                todo.extend((child, raw) for child in raw.children)
                list(raw.blobs())
                raw.subject  # noqa: B018 - a referrer's subject is carried on its own entry
            except MirrorError as e:
                raise BundleError(f"{self.name}: {e}") from None


    def _partial(self, index: RawManifest, read: Callable[[str], bytes | None]
                 ) -> BundleError:
        """An index some of whose platforms are not in the archive: an export of one
        platform (`ctr images export` without --all-platforms) rather than a broken file."""
        have: list[str] = []
        lack: list[str] = []
        for d in index.children:
            if d.platform is not None and not d.platform.is_unknown:
                (have if read(d.digest) is not None else lack).append(str(d.platform))
        held = ", ".join(have) or "none of them"
        return BundleError(
            f"{self.name}: index {index.digest} lists {len(have) + len(lack)} platform(s); the "
            f"archive holds {held} only, not {', '.join(lack)} (an export of one platform)",
            hint="export all of them (`ctr images export --all-platforms`), or pull the image "
                 "with `mirror pull --platform` for the platforms wanted")
