"""A bundle compressed with zstd (.tar.zst), read as a stream: its members in tar order, each
checked as a plain tar's are (mirror.bundle.members), nothing but whole zstd frames to the
end of the file and nothing but zeros after the end of the tar (mirror.bundle.trailer).

A scan passes over it once, holding what a plan needs: the layout files, the manifests
index.json reaches (and, for inspect, the image configs they name). Our bundles put those
first; a small blob met before index.json is held in case it is one (up to a bound)."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

import zstandard

from mirror.bundle.layout import DOCKER_JSON, MIRROR_JSON
from mirror.bundle.members import CHUNK, JUNK_HINT, blob_digest, file_members, unreadable
from mirror.bundle.through import Tap, Tapped
from mirror.bundle.trailer import first_nonzero, zstd_frames_problem
from mirror.bundle.volumefile import open_read
from mirror.errors import BundleError
from mirror.fileobj import Readable
from mirror.manifest import MAX_MANIFEST_BYTES

if TYPE_CHECKING:
    from mirror.bundle.reader import Contents

_SMALL_CAP = 256 << 20  # bytes of small blobs a streaming scan may hold before index.json
_STREAM_ERRORS = (tarfile.TarError, zstandard.ZstdError, EOFError)
_LAYOUT_FILES = ("oci-layout", "index.json", MIRROR_JSON, DOCKER_JSON)


class StreamMember:
    """A member of a tar.zst being read: a read that fails (the stream breaks off, or its
    bytes are not zstd) raises the bundle's BundleError, not tarfile's or zstd's own."""

    def __init__(self, f: Readable, name: str, path: Path, bundle: str) -> None:
        self._f, self._name, self._path, self._bundle = f, name, path, bundle

    def read(self, n: int = -1) -> bytes:
        try:
            return self._f.read(n)
        except _STREAM_ERRORS as e:
            raise unreadable(self._path, self._bundle, True, e, self._name) from None


def iter_stream(path: Path, bundle: str, tap: Tap | None = None
                ) -> Iterator[tuple[str, int, StreamMember]]:
    """Yield (name, size, fileobj) for each file member of a compressed tar, in order;
    `tap` is given every byte of the file once the last member has been read."""
    current: str | None = None
    try:
        with open_read(path) as f:
            raw = Tapped(f, tap) if tap else f
            dctx = zstandard.ZstdDecompressor()
            # zstandard's stubs ask for an IO[bytes]; its reader needs only read()
            with dctx.stream_reader(cast(IO[bytes], raw), read_size=CHUNK,
                                    read_across_frames=True) as zr, \
                    tarfile.open(fileobj=zr, mode="r|") as tf:
                for name, ti in file_members(tf, bundle):
                    current = name  # tarfile skips what is left of it on the next step
                    member = tf.extractfile(ti)
                    assert member is not None
                    yield name, ti.size, StreamMember(member, name, path, bundle)
                current = None
                _check_end(path, bundle, tf)
                if isinstance(raw, Tapped):
                    raw.drain()  # the zstd reader may stop short of the file's end
    except _STREAM_ERRORS as e:
        inside = current if str(e) == "unexpected end of data" else None
        raise unreadable(path, bundle, True, e, inside) from None


def _check_end(path: Path, bundle: str, tf: tarfile.TarFile) -> None:
    """After the last member: the frames end where the file does, and the stream holds
    nothing but zeros after the tar's first end-of-archive block."""
    # unbuffered: only the frames' headers are read (a buffered file read 8 KiB at each of a
    # 50 GB bundle's blocks)
    with open_read(path, buffering=0) as frames:
        wrong = zstd_frames_problem(frames)
    if wrong is not None:
        raise BundleError(f"{bundle}: {wrong}", hint=JUNK_HINT)
    junk = first_nonzero(tf.fileobj, tf.offset + tarfile.BLOCKSIZE)
    if junk is not None:
        raise BundleError(f"{bundle}: trailing data after the end of the tar inside the zstd "
                          f"stream (at byte {junk} of the tar)", hint=JUNK_HINT)


Visit = Callable[[str, int, "bytes | StreamMember"], None]


class StreamScan:
    """One pass over a tar.zst's members (feed each, then finish): the layout files, every
    blob member's size, and the small blobs that are (or may be) manifests or, with
    `configs`, image configs; `visit` is given each blob member (its bytes when held, else
    its fileobj). `make` turns the layout files into Contents (oci-layout, index.json,
    mirror.json or None)."""

    def __init__(self, bundle: str, make: Callable[[bytes, bytes, bytes | None], Contents],
                 *, configs: bool = False, visit: Visit | None = None) -> None:
        self.bundle, self._make, self._configs, self._visit = bundle, make, configs, visit
        self.small: dict[str, bytes] = {}  # digest -> bytes held
        self._meta: dict[str, bytes] = {}
        self._members: dict[str, int] = {}
        self._held = 0
        self._contents: Contents | None = None

    def feed(self, name: str, size: int, f: StreamMember) -> None:
        d = blob_digest(name)
        if d:
            self._members[d] = size
        if name in _LAYOUT_FILES:
            self._meta[name] = f.read(MAX_MANIFEST_BYTES + 1)
        elif d and size <= MAX_MANIFEST_BYTES and self._may_need(d):
            if self._held + size > _SMALL_CAP:
                raise BundleError(f"{self.bundle}: index.json comes too late in this tar.zst",
                                  hint="decompress it to a .tar and load that")
            self.small[d] = f.read()
            self._held += size
            if self._visit:
                self._visit(name, size, self.small[d])
        elif d and self._visit:
            self._visit(name, size, f)
        meta = self._meta
        if self._contents is None and "index.json" in meta and "oci-layout" in meta and (
                MIRROR_JSON in meta or name not in ("oci-layout", "index.json")):
            self._contents = self._make(meta["oci-layout"], meta["index.json"],
                                        meta.get(MIRROR_JSON))

    def _may_need(self, d: str) -> bool:
        """Before index.json, every small blob; after it, the manifests it still reaches
        and (with `configs`) the configs the manifests held name."""
        c = self._contents
        return c is None or d in _wanted(c, self.small) or (
            self._configs and d in _configs(self.small))

    def finish(self) -> Contents:
        """The Contents (its manifests not yet walked: see `small`); raise BundleError for a
        stream without oci-layout or index.json."""
        meta = self._meta
        c = self._contents
        if c is None and "index.json" in meta and "oci-layout" in meta:
            # they were the last members (skopeo's order), no mirror.json after them
            c = self._make(meta["oci-layout"], meta["index.json"], None)
        if c is None:
            missing = "oci-layout" if "oci-layout" not in meta else "index.json"
            raise BundleError(f"{self.bundle}: no {missing} file: not an OCI image layout")
        c.members = self._members
        c.docker = meta.get(DOCKER_JSON)
        return c

    def configs(self) -> dict[str, bytes]:
        """The image configs held (scan with `configs`)."""
        return {d: self.small[d] for d in _configs(self.small) if d in self.small}


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
