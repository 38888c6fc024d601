"""A bundle's tar members, checked as they are read: regular files (not sparse: a sparse
member's size is not the bytes the tar holds for it) and directories only, relative paths
inside the layout, no name twice; a docker-archive's links recorded and resolved to the files
they name. A plain tar is indexed once (name -> data offset): each member's data ends before
the next header and before the file does, and nothing but zeros follows the end of the tar.
Also the one-line error for a tar or tar.zst that cannot be read."""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mirror.bundle import sniff
from mirror.bundle.layout import Inventory
from mirror.bundle.trailer import first_nonzero, zstd_frames_problem
from mirror.bundle.volumefile import open_read
from mirror.bundle.volumes import find, lone_part
from mirror.errors import BundleError
from mirror.manifest import RawManifest

CHUNK = 1 << 20
JUNK_HINT = "the file changed after it was written (bytes appended?): copy the bundle again"
_OTHER_MAGIC = {"gzip": b"\x1f\x8b", "xz": b"\xfd7zXZ\x00", "bzip2": b"BZh"}
_UNPACK = {"gzip": "gunzip", "xz": "unxz", "bzip2": "bunzip2"}
# what tarfile says when the data ends before the archive does ("empty file": no data at all)
_TRUNCATED = ("empty file", "unexpected end of data", "truncated header")


@dataclass
class Member:
    name: str
    size: int
    offset: int | None  # data offset in a plain tar; None in a stream
    path: Path | None = None  # the file, in a layout directory (offset 0)


@dataclass
class Contents:
    """What a plan needs: the layout files, every manifest reachable from index.json, and the
    blob members present (complete for a plain tar; for a stream, from the whole scan)."""

    index: dict
    inventory: Inventory | None
    manifests: dict[str, RawManifest] = field(default_factory=dict)
    members: dict[str, int] = field(default_factory=dict)  # digest -> size
    complete_members: bool = True
    configs: dict[str, bytes] = field(default_factory=dict)  # scan(configs=True) of a stream
    notes: list[str] = field(default_factory=list)  # what a reader of another format changed
    docker: bytes | None = None  # manifest.json beside index.json (Docker's save format)


def check_member(ti: tarfile.TarInfo, bundle: str, links: dict[str, str] | None = None
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


def file_members(tf: tarfile.TarFile, bundle: str, links: dict[str, str] | None = None
                 ) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """The file members of a tar, each checked (check_member) and seen once."""
    seen: set[str] = set()
    for ti in tf:
        link = _norm(ti.name) if links is not None and (ti.issym() or ti.islnk()) else None
        if link is not None and (link in seen or link in (links or {})):
            raise BundleError(f"{bundle}: member {link!r} appears twice")
        name = check_member(ti, bundle, links)
        if link is not None:
            seen.add(link)  # a file of that name after it is twice too
        if name is None:
            continue
        if name in seen:
            raise BundleError(f"{bundle}: member {name!r} appears twice")
        seen.add(name)
        yield name, ti


def blob_digest(name: str) -> str | None:
    """The digest a member `blobs/<alg>/<hex>` holds; None for another name."""
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "blobs":
        return f"{parts[1]}:{parts[2]}"
    return None


def index_tar(path: Path, bundle: str, links: dict[str, str],
              opener: Callable[[], BinaryIO] | None = None) -> dict[str, Member]:
    """A plain tar's file members (name -> Member at its data offset), its links recorded in
    `links` (read through `opener` when given, else from `path`); raise BundleError for a member whose data runs past the next header or the end
    of the file, and for anything but zeros after the end of the tar."""
    members: dict[str, Member] = {}
    opener = opener or (lambda: open_read(path))
    try:
        with opener() as raw, tarfile.open(fileobj=raw, mode="r:") as tf:
            for name, ti in file_members(tf, bundle, links):
                members[name] = Member(name, ti.size, ti.offset_data)
            end = tf.offset  # where the end-of-archive blocks start
            entries = tf.getmembers()
            for ti, nxt in zip(entries, [*entries[1:], None], strict=True):
                # a member's data ends before the next header (members(tap=...) reads them
                # in one pass, load and open_blob at their offsets)
                if ti.isreg() and ti.offset_data + ti.size > (
                        nxt.offset if nxt is not None else end):
                    raise BundleError(f"{bundle}: member {ti.name!r} says it holds "
                                      f"{ti.size} bytes, more than the tar has for it")
    except tarfile.TarError as e:
        raise unreadable(path, bundle, False, e) from None
    with opener() as f:
        for m in members.values():
            if m.offset is not None and m.offset + m.size > f.seek(0, 2):
                raise truncated(path, bundle, f"the tar ends in the middle of {m.name!r}")
        f.seek(end)
        junk = first_nonzero(f, end)
        if junk is not None:
            raise BundleError(f"{bundle}: trailing data after the end of the tar "
                              f"(at byte {junk})", hint=JUNK_HINT)
    return members


def resolve_links(links: dict[str, str], files: dict[str, Member], bundle: str
                  ) -> dict[str, Member]:
    """The link members (a docker-archive's repeated layers), each as the file it names
    (through other links too)."""
    out: dict[str, Member] = {}
    for name in links:
        target, hops = name, 0
        while target in links and hops < 40:
            target, hops = links[target], hops + 1
        if target not in files:
            raise BundleError(f"{bundle}: member {name!r} is a link to "
                              f"{links[name]!r}, which is not a file in the tar")
        out[name] = files[target]
    return out


def _checksum_hint(path: Path, bundle: str) -> str | None:
    """What to give instead when `path` is a bundle's OUT.sha256 or OUT.parts.sha256 (the
    file `sha256sum -c` takes) and the bundle is beside it."""
    for suffix in (".parts.sha256", ".sha256"):
        if bundle.endswith(suffix):
            base = bundle[: -len(suffix)]
            first = f"{base}.001" if suffix == ".parts.sha256" else base
            if Path(first).exists():
                return f"{bundle} is the bundle's checksum: `mirror verify {first}`"
    return None


def truncated(path: Path, bundle: str, what: str) -> BundleError:
    """A bundle whose data ends too soon: cut short (copy it again), or, named as a part
    (`site.tar.001`) with nothing of its set beside it, one part of a set."""
    side = lone_part(path)
    if side is None:
        return BundleError(f"{bundle}: truncated: {what}", hint="copy the bundle again")
    return BundleError(
        f"{bundle}: {what}: named as one part of a set (`mirror pull --volume-size`), with "
        f"no other part and no {side.name} beside it",
        hint="give the set's first part with every part and its sidecar beside it, named "
        "as the pull wrote them (the sidecar lists the names)")


def _zstd_error(e: BaseException) -> bool:
    import zstandard  # only a .tar.zst's errors: a plain bundle's read does not import it

    return isinstance(e, zstandard.ZstdError)


def unreadable(path: Path, bundle: str, compressed: bool, e: BaseException,
               member: str | None = None) -> BundleError:
    """The one-line error for a tar or tar.zst that cannot be read: truncated (the data ends
    before the archive does), not zstd, or not a tar."""
    if compressed and _zstd_error(e):
        with open_read(path, buffering=0) as f:  # bytes after the last frame?
            wrong = zstd_frames_problem(f)
        if wrong is not None and wrong.startswith("trailing data"):
            return BundleError(f"{bundle}: {wrong}", hint=JUNK_HINT)
        return BundleError(f"{bundle}: not a valid zstd stream: {e}")
    kind = "tar.zst" if compressed else "tar"
    if not compressed and _size(path) == 0:  # not one byte
        return BundleError(f"{bundle}: empty file: not a bundle")
    other = None if compressed else _other_compression(path)
    if other:  # gzip'ed (or xz'ed) for the trip: not truncated, not junk; say what to do
        return BundleError(f"{bundle}: {other}-compressed: mirror reads a bundle as "
                           "written, .tar or .tar.zst",
                           hint=f"decompress it first ({_UNPACK[other]}), or carry "
                           "the .tar.zst that `mirror pull -o NAME.tar.zst` writes")
    start = sniff.head(path, compressed)  # empty: a zstd block cut short
    if start and not sniff.starts_as_tar(start):
        return BundleError(f"{bundle}: not a bundle: the zstd stream does not hold a tar"
                           if compressed else
                           f"{bundle}: not a tar (nor a .tar.zst) bundle",
                           hint=None if compressed else _checksum_hint(path, bundle))
    if isinstance(e, EOFError) or str(e) in _TRUNCATED:
        where = f"of {member!r}" if member else "of the archive"
        return truncated(path, bundle, f"the {kind} ends in the middle {where}")
    inner = "not a tar inside the zstd stream" if compressed else "not a valid tar"
    return BundleError(f"{bundle}: {inner}: {e}")


def _size(path: Path) -> int:
    vs = find(path)
    return vs.size if vs is not None else path.stat().st_size


def _other_compression(path: Path) -> str | None:
    """gzip, xz or bzip2 by the file's first bytes (a bundle compressed for the trip)."""
    try:
        with open_read(path, buffering=0) as f:
            head = f.read(6)
    except OSError:
        return None
    for name, magic in _OTHER_MAGIC.items():
        if head.startswith(magic):
            return name
    return None
