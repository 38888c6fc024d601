"""Read a bundle (.tar or .tar.zst, ours or skopeo's oci-archive) without unpacking it.

A plain tar is indexed once (member name -> data offset) and read at random. A zstd tar is
read as a stream: `scan()` reads until it holds index.json and every manifest (our bundles
put them first, so that is quick), and `stream()` passes over it again, yielding the blobs in
tar order. Every member is checked: regular files (not sparse: a sparse member's size is not
the bytes the tar holds for it) and directories only, relative paths inside the layout, no
duplicates; a member's data ends before the next header. Nothing but zeros may follow the end
of the tar, and nothing but whole zstd frames the end of a .tar.zst's stream
(mirror.bundle.trailer).

`scan()` also checks that the parts agree (mirror.bundle.consistency: the mirror.json
inventory, the manifests, the blobs in the tar), so load refuses what verify refuses before it
pushes anything.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import IO, BinaryIO, cast

import zstandard

from mirror.bundle import consistency, sniff
from mirror.bundle.layout import DOCKER_JSON, MIRROR_JSON, Inventory
from mirror.bundle.members import Contents, Member
from mirror.bundle.through import Tap, Tapped, Window
from mirror.bundle.trailer import first_nonzero, zstd_frames_problem
from mirror.digest import Digest, sha256_of
from mirror.errors import BundleError, IntegrityError, MirrorError
from mirror.fileobj import Readable
from mirror.manifest import MAX_MANIFEST_BYTES, Descriptor, RawManifest

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_OTHER_MAGIC = {"gzip": b"\x1f\x8b", "xz": b"\xfd7zXZ\x00", "bzip2": b"BZh"}
_UNPACK = {"gzip": "gunzip", "xz": "unxz", "bzip2": "bunzip2"}
CHUNK = 1 << 20
_SMALL_CAP = 256 << 20  # bytes of small blobs a streaming scan may hold before index.json


def _check_member(ti: tarfile.TarInfo, bundle: str, links: dict[str, str] | None = None
                  ) -> str | None:
    """Return the normalised name of a file member, None for a directory; raise otherwise.
    With `links`, a link is recorded there (name -> the member it names) instead."""
    name = ti.name
    norm = _norm(name)
    if name.startswith("/") or norm.startswith("..") or "/../" in f"/{norm}/":
        raise BundleError(f"{bundle}: unsafe path {name!r} in the tar")
    if ti.isdir():
        return None
    if links is not None and (ti.issym() or ti.islnk()):
        target = posixpath.join(posixpath.dirname(norm), ti.linkname) if ti.issym() \
            else ti.linkname
        links[norm] = _norm(target)
        return None
    if not ti.isreg():
        kind = "link" if (ti.issym() or ti.islnk()) else "device or special file"
        raise BundleError(f"{bundle}: member {name!r} is a {kind}; a bundle holds only files")
    if ti.issparse() or any(k.startswith("GNU.sparse.") for k in ti.pax_headers):
        # its size is not the bytes the tar holds for it: a reader at its offset would read
        # on into the members after it
        raise BundleError(f"{bundle}: member {name!r} is a sparse file; a bundle holds only "
                          "plain files")
    return norm


def _norm(name: str) -> str:
    return posixpath.normpath(name.lstrip("./") if name.startswith("./") else name)


def _file_members(tf: tarfile.TarFile, bundle: str, links: dict[str, str] | None = None
                  ) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """The file members of a tar, each checked (_check_member) and seen once."""
    seen: set[str] = set()
    for ti in tf:
        link = _norm(ti.name) if links is not None and (ti.issym() or ti.islnk()) else None
        if link is not None and (link in seen or link in (links or {})):
            raise BundleError(f"{bundle}: member {link!r} appears twice")
        name = _check_member(ti, bundle, links)
        if link is not None:
            seen.add(link)  # a file of that name after it is twice too
        if name is None:
            continue
        if name in seen:
            raise BundleError(f"{bundle}: member {name!r} appears twice")
        seen.add(name)
        yield name, ti


def _blob_digest(name: str) -> str | None:
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "blobs":
        return f"{parts[1]}:{parts[2]}"
    return None


# what tarfile says when the data ends before the archive does ("empty file": no data at all)
_TRUNCATED = ("empty file", "unexpected end of data", "truncated header")
_STREAM_ERRORS = (tarfile.TarError, zstandard.ZstdError, EOFError)


class _StreamMember:
    """A member of a tar.zst being read: a read that fails (the stream breaks off, or its
    bytes are not zstd) raises the bundle's BundleError, not tarfile's or zstd's own."""

    def __init__(self, f: Readable, name: str, bundle: Bundle) -> None:
        self._f, self._name, self._bundle = f, name, bundle

    def read(self, n: int = -1) -> bytes:
        try:
            return self._f.read(n)
        except _STREAM_ERRORS as e:
            raise self._bundle._unreadable(e, self._name) from None


class Bundle:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.name = str(path)
        self._members: dict[str, Member] | None = None
        self._links: dict[str, str] = {}  # link member -> what it names (a docker-archive)
        self._linked_cache: dict[str, Member] | None = None
        self._aliases: dict[str, str] = {}  # digest -> member, where not blobs/<alg>/<hex>
        self.directory = self.path.is_dir()  # an OCI layout directory (mirror.bundle.directory)
        self.compressed = False
        if self.directory:
            return
        try:
            with open(self.path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise BundleError(f"{self.name}: cannot open bundle: {e.strerror}") from None
        # a zstd frame, or a skippable one (zstd allows them anywhere, the first place too)
        self.compressed = magic == ZSTD_MAGIC or (
            len(magic) == 4 and int.from_bytes(magic, "little") & 0xFFFFFFF0 == 0x184D2A50)

    # -- plain tar: an index of members --------------------------------------------------

    def _index(self) -> dict[str, Member]:
        if self._members is None and self.directory:
            from mirror.bundle import directory

            self._members = directory.index(self.path, self.name)
        if self._members is None:
            members: dict[str, Member] = {}
            try:
                with tarfile.open(self.path, "r:") as tf:
                    for name, ti in _file_members(tf, self.name, self._links):
                        members[name] = Member(name, ti.size, ti.offset_data)
                    end = tf.offset  # where the end-of-archive blocks start
                    entries = tf.getmembers()
                    for ti, nxt in zip(entries, [*entries[1:], None], strict=True):
                        # a member's data ends before the next header (members(tap=...) reads
                        # them in one pass, load and open_blob at their offsets)
                        if ti.isreg() and ti.offset_data + ti.size > (
                                nxt.offset if nxt is not None else end):
                            raise BundleError(f"{self.name}: member {ti.name!r} says it holds "
                                              f"{ti.size} bytes, more than the tar has for it")
            except tarfile.TarError as e:
                raise self._unreadable(e) from None
            with open(self.path, "rb") as f:
                for m in members.values():
                    if m.offset is not None and m.offset + m.size > f.seek(0, 2):
                        raise BundleError(f"{self.name}: truncated: the tar ends in the middle "
                                          f"of {m.name!r}")
                f.seek(end)
                junk = first_nonzero(f, end)
                if junk is not None:
                    raise BundleError(f"{self.name}: trailing data after the end of the tar "
                                      f"(at byte {junk})", hint=_JUNK_HINT)
            self._members = members
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
            f = open(m.path or self.path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError as e:
            raise BundleError(f"{self.name}: cannot open {m.name!r}: {e.strerror}") from None
        f.seek(m.offset or 0)
        return f

    def _linked(self) -> dict[str, Member]:
        """The link members (a docker-archive's repeated layers), each as the file it names
        (through other links too); worked out once (every read of a member asks)."""
        if self._linked_cache is not None:
            return self._linked_cache
        files = self._index()
        out: dict[str, Member] = {}
        for name in self._links:
            target, hops = name, 0
            while target in self._links and hops < 40:
                target, hops = self._links[target], hops + 1
            if target not in files:
                raise BundleError(f"{self.name}: member {name!r} is a link to "
                                  f"{self._links[name]!r}, which is not a file in the tar")
            out[name] = files[target]
        self._linked_cache = out
        return out

    def blob_member(self, digest: str) -> str:
        """The member that holds a blob: `blobs/<alg>/<hex>`, or a docker-archive's path."""
        return self._aliases.get(digest) or "blobs/" + digest.replace(":", "/", 1)

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

    def open_blob(self, digest: str, offset: int = 0) -> Iterator[bytes]:
        """Chunks of a blob of a plain tar, from `offset` (sync; run it off the event loop)."""
        name = self.blob_member(digest)
        m = self._index().get(name) or (self._linked().get(name) if self._links else None)
        if m is None:
            raise BundleError(f"{self.name}: blob {digest} is missing")
        with self.open_member(m) as f:
            f.seek((m.offset or 0) + offset)
            left = m.size - offset
            while left > 0:
                data = f.read(min(CHUNK, left))
                if not data:
                    raise BundleError(f"{self.name}: truncated: the tar ends in the middle "
                                      f"of blob {digest}")
                left -= len(data)
                yield data

    # -- zstd: a stream ------------------------------------------------------------------

    def _iter_stream(self, tap: Tap | None = None
                     ) -> Iterator[tuple[str, int, _StreamMember]]:
        """Yield (name, size, fileobj) for each file member of a compressed tar, in order;
        `tap` is given every byte of the file once the last member has been read."""
        current: str | None = None
        try:
            with open(self.path, "rb") as f:
                raw = Tapped(f, tap) if tap else f
                dctx = zstandard.ZstdDecompressor()
                # zstandard's stubs ask for an IO[bytes]; its reader needs only read()
                with dctx.stream_reader(cast(IO[bytes], raw), read_size=CHUNK,
                                        read_across_frames=True) as zr, \
                        tarfile.open(fileobj=zr, mode="r|") as tf:
                    for name, ti in _file_members(tf, self.name):
                        current = name  # tarfile skips what is left of it on the next step
                        member = tf.extractfile(ti)
                        assert member is not None
                        yield name, ti.size, _StreamMember(member, name, self)
                    current = None
                    # the frames end where the file does; unbuffered: only their headers are
                    # read (a buffered file read 8 KiB at each of a 50 GB bundle's blocks)
                    with open(self.path, "rb", buffering=0) as frames:
                        wrong = zstd_frames_problem(frames)
                    if wrong is not None:
                        raise BundleError(f"{self.name}: {wrong}", hint=_JUNK_HINT)
                    # what the stream holds after the tar's first end-of-archive block
                    junk = first_nonzero(tf.fileobj, tf.offset + tarfile.BLOCKSIZE)
                    if junk is not None:
                        raise BundleError(f"{self.name}: trailing data after the end of the tar "
                                          f"inside the zstd stream (at byte {junk} of the tar)",
                                          hint=_JUNK_HINT)
                    if isinstance(raw, Tapped):
                        raw.drain()  # the zstd reader may stop short of the file's end
        except _STREAM_ERRORS as e:
            inside = current if str(e) == "unexpected end of data" else None
            raise self._unreadable(e, inside) from None

    def _other_compression(self) -> str | None:
        """gzip, xz or bzip2 by the file's first bytes (a bundle compressed for the trip)."""
        try:
            with open(self.path, "rb", buffering=0) as f:
                head = f.read(6)
        except OSError:
            return None
        for name, magic in _OTHER_MAGIC.items():
            if head.startswith(magic):
                return name
        return None

    def _unreadable(self, e: BaseException, member: str | None = None) -> BundleError:
        """The one-line error for a tar or tar.zst that cannot be read: truncated (the data
        ends before the archive does), not zstd, or not a tar."""
        if isinstance(e, zstandard.ZstdError):
            with open(self.path, "rb", buffering=0) as f:  # bytes after the last frame?
                wrong = zstd_frames_problem(f)
            if wrong is not None and wrong.startswith("trailing data"):
                return BundleError(f"{self.name}: {wrong}", hint=_JUNK_HINT)
            return BundleError(f"{self.name}: not a valid zstd stream: {e}")
        kind = "tar.zst" if self.compressed else "tar"
        if not self.compressed and self.path.stat().st_size == 0:  # not one byte
            return BundleError(f"{self.name}: empty file: not a bundle")
        other = None if self.compressed else self._other_compression()
        if other:  # gzip'ed (or xz'ed) for the trip: not truncated, not junk; say what to do
            return BundleError(f"{self.name}: {other}-compressed: mirror reads a bundle as "
                               "written, .tar or .tar.zst",
                               hint=f"decompress it first ({_UNPACK[other]}), or carry "
                               "the .tar.zst that `mirror pull -o NAME.tar.zst` writes")
        start = sniff.head(self.path, self.compressed)  # empty: a zstd block cut short
        if start and not sniff.starts_as_tar(start):
            return BundleError(f"{self.name}: not a bundle: the zstd stream does not hold a tar"
                               if self.compressed else
                               f"{self.name}: not a tar (nor a .tar.zst) bundle")
        if isinstance(e, EOFError) or str(e) in _TRUNCATED:
            where = f"of {member!r}" if member else "of the archive"
            return BundleError(f"{self.name}: truncated: the {kind} ends in the middle {where}",
                               hint="copy the bundle again")
        inner = "not a tar inside the zstd stream" if self.compressed else "not a valid tar"
        return BundleError(f"{self.name}: {inner}: {e}")

    def members(self, tap: Tap | None = None
                ) -> Generator[tuple[str, int, Readable | None], None, None]:
        """Every file member in tar order. The fileobj is None for a plain tar (use
        open_blob), unless `tap` is given: then the file is read once from start to end, its
        every byte (headers and padding too) given to `tap`, and each member comes with a
        fileobj (what it leaves unread is read past)."""
        if self.compressed:
            yield from self._iter_stream(tap)
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
        with open(self.path, "rb") as f:
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
             visit: Callable[[str, int, bytes | _StreamMember], None] | None = None,
             tap: Tap | None = None) -> Contents:
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
        if not self.compressed:
            files = self._index()
            if DOCKER_JSON in files and not {"oci-layout", "index.json"} & files.keys():
                from mirror.bundle import dockerarchive  # no layout: a docker-archive

                plain, self._aliases = dockerarchive.read(self, {**files, **self._linked()})
                if check:
                    self.check(plain)
                return plain
            if self._links:
                name = next(iter(self._links))
                raise BundleError(f"{self.name}: member {name!r} is a link; a bundle holds "
                                  "only files")
            if "oci-layout" not in files:
                raise BundleError(f"{self.name}: no oci-layout file: not an OCI image layout")
            layout = self.read_member("oci-layout")
            index = self.read_member("index.json")
            inv = self.read_member(MIRROR_JSON) if MIRROR_JSON in files else None
            plain = self._contents(layout, index, inv)
            plain.docker = self.read_member(DOCKER_JSON) if DOCKER_JSON in files else None
            plain.members = {d: m.size for n, m in files.items() if (d := _blob_digest(n))}
            self._walk(plain, lambda d: self.read_member(_name(d)) if _name(d) in files else None)
            if check:
                self.check(plain)
            return plain
        small: dict[str, bytes] = {}
        meta: dict[str, bytes] = {}
        members: dict[str, int] = {}
        held = 0
        c: Contents | None = None
        for name, size, f in self._iter_stream(tap):
            d = _blob_digest(name)
            if d:
                members[d] = size
            if name in ("oci-layout", "index.json", MIRROR_JSON, DOCKER_JSON):
                meta[name] = f.read(MAX_MANIFEST_BYTES + 1)
            elif d and size <= MAX_MANIFEST_BYTES and (
                    c is None or d in _wanted(c, small) or (configs and d in _configs(small))):
                if held + size > _SMALL_CAP:
                    raise BundleError(f"{self.name}: index.json comes too late in this tar.zst",
                                      hint="decompress it to a .tar and load that")
                small[d] = f.read()
                held += size
                if visit:
                    visit(name, size, small[d])
            elif d and visit:
                visit(name, size, f)
            if c is None and "index.json" in meta and "oci-layout" in meta and (
                    MIRROR_JSON in meta or name not in ("oci-layout", "index.json")):
                c = self._contents(meta["oci-layout"], meta["index.json"], meta.get(MIRROR_JSON))
        if c is None and "index.json" in meta and "oci-layout" in meta:
            # they were the last members (skopeo's order), no mirror.json after them
            c = self._contents(meta["oci-layout"], meta["index.json"], None)
        if c is None:
            missing = "oci-layout" if "oci-layout" not in meta else "index.json"
            raise BundleError(f"{self.name}: no {missing} file: not an OCI image layout")
        c.members = members
        c.docker = meta.get(DOCKER_JSON)
        self._walk(c, small.get)
        if check:
            self.check(c)
        if configs:
            c.configs = {d: small[d] for d in _configs(small) if d in small}
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


_JUNK_HINT = "the file changed after it was written (bytes appended?): copy the bundle again"


def _name(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def _wanted(c: Contents, have: dict[str, bytes]) -> set[str]:
    """Digests of manifests still needed, as far as the held ones tell (streaming scan)."""
    want: set[str] = set()
    todo = [d.get("digest") for d in c.index.get("manifests", [])]
    if c.inventory:
        want.update(c.inventory.manifests)
    while todo:
        d = todo.pop()
        if not isinstance(d, str) or d in want:
            continue
        want.add(d)
        if d in have:
            try:
                body = json.loads(have[d])
                todo.extend(m.get("digest") for m in body.get("manifests") or [])
            except (ValueError, AttributeError):
                pass
    return want


def _configs(held: dict[str, bytes]) -> set[str]:
    """Digests of the image configs named by the manifests held so far."""
    out: set[str] = set()
    for data in list(held.values()):
        try:
            cfg = json.loads(data).get("config") or {}
        except (ValueError, AttributeError):
            continue
        if isinstance(cfg, dict) and isinstance(cfg.get("digest"), str):
            out.add(cfg["digest"])
    return out
