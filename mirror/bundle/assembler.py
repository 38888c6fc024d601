"""Assemble a plain-tar bundle while the blobs arrive.

Every size is known once the images are resolved, so the whole tar can be laid out up front:
the headers, the manifests and the padding are written first, then each blob's bytes go
straight to their offset as they come off the network (a tee from the download sink) or out of
the cache. The bundle's sha256 follows the contiguous written prefix of the file
(mirror.bundle.prefixhash), so it is ready moments after the last byte. The file is
`<out>.partial` until `finish()` (every blob verified), then renamed; nothing is named before
it is whole.

A region written twice (a download restarted from byte 0) may already have been hashed: the
hash is then recomputed from the file at the end.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from array import array
from collections.abc import Iterable, Sequence
from concurrent.futures import wait
from pathlib import Path

from mirror.bundle.layout import Piecewise, blob_name
from mirror.bundle.prefixhash import HASH_CHUNK, PrefixHash
from mirror.bundle.writer import BUF, HeadFile, _header, _pad, head_files, head_member
from mirror.digest import Verifier
from mirror.errors import naming
from mirror.manifest import RawManifest
from mirror.store import iowork, writeback

# Writes of cached blobs into the bundle, each blob's in order. A pool of its own: its jobs
# wait only for the thread reading their blob, never for the shared I/O pool.
_WRITERS = iowork.pool(2, "mirror-bundle-write")
_DIRS = _header("blobs/", 0, is_dir=True) + _header("blobs/sha256/", 0, is_dir=True)
_FLUSH_EVERY = 256 << 20  # an fdatasync this often where writeback.start() is not possible


class Tee:
    """Where one blob's bytes go in the bundle; used from I/O worker threads."""

    __slots__ = ("assembler", "base", "size")

    def __init__(self, assembler: Assembler, base: int, size: int) -> None:
        self.assembler = assembler
        self.base = base
        self.size = size

    def write(self, pos: int, data: bytes | memoryview) -> None:
        """Put `data` at byte `pos` of this blob (hashed here when it sits at the frontier).
        Raises OSError when the bundle was aborted (never writes through a closed
        descriptor) or past the blob's end."""
        self._pwrite(pos, data)
        self.assembler.written(self.base + pos, len(data), data)

    def put(self, pos: int, chunks: list[bytes]) -> None:
        """Write a batch of a download; `offer()` of the same batch hashes it, on another
        thread, from memory when it can."""
        n = 0
        for data in chunks:
            self._pwrite(pos + n, data)
            n += len(data)
        self.assembler.batch_written(self.base + pos, n)

    def offer(self, pos: int, chunks: list[bytes]) -> None:
        self.assembler.batch_offer(self.base + pos, chunks)

    def _pwrite(self, pos: int, data: bytes | memoryview) -> None:
        a = self.assembler
        if pos < 0 or pos + len(data) > self.size:
            raise OSError(f"write of {len(data)} bytes at {pos} outside a blob of {self.size}")
        with a.io:
            if a.fd < 0:
                raise OSError("the bundle was aborted")
            try:
                n = os.pwrite(a.fd, data, self.base + pos)
                while n < len(data):  # short writes are legal
                    n += os.pwrite(a.fd, memoryview(data)[n:], self.base + pos + n)
            except OSError as e:
                raise naming(e, a.tmp) from None

    def copy_from(self, path: Path, start: int, end: int) -> None:
        """Copy bytes [start, end) of a file (a resumed partial download) into place."""
        with open(path, "rb") as f:
            f.seek(start)
            pos = start
            while pos < end and (data := f.read(min(BUF, end - pos))):
                self.write(pos, data)
                pos += len(data)

    def rewound(self) -> None:
        self.assembler.invalidate()


class Assembler:
    def __init__(self, out: Path, *, index_json: HeadFile, inventory_json: HeadFile,
                 manifests: Sequence[RawManifest], blobs: Iterable[tuple[str, int]],
                 docker_json: HeadFile | None = None, volume_size: int | None = None) -> None:
        self.out = out
        self.volume_size = volume_size  # named as parts of this size (mirror.bundle.volumes)
        self.tmp = out.with_name(out.name + ".partial")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        # held (shared) around every use of fd; abort() takes it to close the descriptor
        self.io = _SharedLock()
        try:
            self._lay_out(head_files(index_json, inventory_json, docker_json), manifests,
                          blobs)
        except OSError as e:
            self.abort()
            raise naming(e, self.tmp) from None
        except BaseException:
            self.abort()
            raise

    def _lay_out(self, files: list[tuple[str, Piecewise]], manifests: Sequence[RawManifest],
                 blobs: Iterable[tuple[str, int]]) -> None:
        """Write the head (files, manifests) and each blob's tar header at its offset, in
        pieces of about a MiB: the head of thousands of manifests as one bytearray, and a
        header kept per blob, were most of a pull's peak memory at 2,000 images."""
        pos = len(_DIRS) + sum(len(_header(name, size)) + size + len(_pad(size))
                               for name, size in [*((n, doc.size) for n, doc in files),
                                                  *((blob_name(m.digest), m.size)
                                                    for m in manifests)])
        head_end = pos
        # digest -> its place in the tar order; its data's offset and size at that place in
        # `_starts` and `_sizes` (a tuple of two ints per blob was 1 MiB at 8,500 blobs)
        self.order: dict[str, int] = {}
        self._starts, self._sizes = array("q"), array("q")
        for digest, size in blobs:
            n = len(_header(blob_name(digest), size))
            self.order[digest] = len(self._starts)
            self._starts.append(pos + n)
            self._sizes.append(size)
            pos += n + size + len(_pad(size))
        self.size = pos + 1024
        self._counting = threading.Lock()
        self._unflushed = 0
        self._streaming = writeback.available()
        self._flush_every = writeback.EVERY if self._streaming else _FLUSH_EVERY
        self._flushing = threading.Lock()
        self._write_error: OSError | None = None  # from a writeback, for finish()
        os.ftruncate(self.fd, self.size)  # padding and the end-of-archive zeros are holes
        self.hasher = PrefixHash(self.size, self._read)
        self._write_head(files, manifests)
        gaps, at = array("q"), head_end
        for digest, k in self.order.items():
            off, size = self._starts[k], self._sizes[k]
            h = _header(blob_name(digest), size)
            os.pwrite(self.fd, h, off - len(h))
            gaps.extend((at, off))  # the padding before it (zeros: part of the hole), its header
            at = off + size
        gaps.extend((at, self.size))
        self.hasher.gaps(gaps)
        self._wrote(len(gaps) // 2 * 512)  # the headers

    def _write_head(self, files: list[tuple[str, Piecewise]],
                    manifests: Sequence[RawManifest]) -> None:
        head, at = bytearray(), 0

        def put(piece: bytes) -> None:
            nonlocal head, at
            head += piece
            if len(head) >= HASH_CHUNK:
                os.pwrite(self.fd, head, at)
                self.written(at, len(head))
                at, head = at + len(head), bytearray()

        for name, doc in files:
            for piece in head_member(name, doc):
                put(piece)
        put(_DIRS)
        for m in manifests:  # each read back from the cache's store, one at a time
            put(_header(blob_name(m.digest), m.size) + m.data + _pad(m.size))
        os.pwrite(self.fd, head, at)
        self.written(at, len(head))

    def offset(self, digest: str) -> tuple[int, int] | None:
        """Where blob `digest`'s data goes in the file, and its size (None: not in it)."""
        k = self.order.get(digest)
        return None if k is None else (self._starts[k], self._sizes[k])

    def tee(self, digest: str) -> Tee | None:
        where = self.offset(digest)
        return Tee(self, *where) if where else None

    def written(self, offset: int, length: int, data: bytes | memoryview | None = None) -> None:
        """Bytes [offset, offset+length) are in the file; `data`, when given, is them: hashed
        here if they sit right at the hash frontier, else read back later by the hasher."""
        if length <= 0:
            return
        self.hasher.written(offset, length, data)
        self._wrote(length)

    def batch_written(self, offset: int, length: int) -> None:
        """A download's batch is in the file; its `batch_offer()` may have hashed it already,
        may still do so, or may have passed (then it is read back)."""
        self.hasher.batch_written(offset, length)
        self._wrote(length)

    def batch_offer(self, offset: int, chunks: list[bytes]) -> None:
        """A download's batch, in memory: hashed now if it sits at the frontier, else left to
        be read back from the file once `batch_written()` says it is there."""
        self.hasher.batch_offer(offset, chunks)

    def _read(self, view: memoryview, offset: int) -> int:
        """The hasher's read back of the file (0 once the bundle was aborted)."""
        with self.io:
            return os.preadv(self.fd, [view], offset) if self.fd >= 0 else 0

    def _wrote(self, length: int) -> None:
        """Keep the disk busy as we go, so the final fsync has little left: start the
        writeback every few MiB (store/writeback.py), else an fdatasync now and then; on a
        thread of its own, one at a time, never in a writer's way."""
        with self._counting:
            self._unflushed += length
            flush = self._unflushed >= self._flush_every
            if flush:
                self._unflushed = 0
        if flush and self._flushing.acquire(blocking=False):
            try:
                threading.Thread(target=self._writeback, daemon=True).start()
            except BaseException:  # no thread to be had: no writeback this time
                self._flushing.release()

    def _writeback(self) -> None:
        try:
            with self.io:
                if self.fd >= 0 and not (self._streaming and writeback.start(self.fd)):
                    self._streaming = False
                    self._flush_every = _FLUSH_EVERY
                    os.fdatasync(self.fd)
        except OSError as e:
            # The kernel reports a writeback error once per open file: this may be the only
            # time we hear of it (the final fsync would then succeed). finish() raises it.
            self._write_error = self._write_error or e
        finally:
            self._flushing.release()

    def invalidate(self) -> None:
        self.hasher.invalidate()

    def copy_cached(self, digest: str, path: Path, verify: bool) -> None:
        """Put a blob from the cache in place, re-hashing it when it was not fetched in this
        run (cache entries are verified when reused). Raises IntegrityError."""
        tee = self.tee(digest)
        if tee is None:
            return
        v = Verifier(digest, tee.size, f"cache {path}") if verify else None
        chunks: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=2)
        writer = _WRITERS.submit(_write_in_order, tee, chunks)
        pos = 0
        try:
            with open(path, "rb", buffering=0) as f:
                while chunk := f.read(HASH_CHUNK):
                    chunks.put((pos, chunk))  # written (and summed) on a writer thread
                    if v is not None:
                        v.update(chunk)  # while this thread hashes
                    pos += len(chunk)
        finally:
            chunks.put(None)
            wait([writer])  # nothing writes into the bundle after we return
        writer.result()
        if v is not None:
            v.finish()

    def finish(self, stop: threading.Event | None = None) -> str | None:
        """Wait for the hash, fsync, rename into place, write `<out>.sha256`; return digest.
        When `stop` is set (Ctrl-C) before the rename: None, nothing named (`abort()` then
        removes the partial file)."""
        digest = self.hasher.close()
        if digest is None:
            h = hashlib.sha256()
            pos = 0
            while data := os.pread(self.fd, HASH_CHUNK, pos):
                if stop is not None and stop.is_set():
                    return None
                h.update(data)
                pos += len(data)
            digest = h.hexdigest()
        with self._flushing:  # not while a writeback thread still uses the descriptor
            os.fsync(self.fd)
        if self._write_error is not None:  # the disk lost some of it: never name it
            raise naming(self._write_error, self.tmp)
        if stop is not None and stop.is_set():
            return None
        os.close(self.fd)
        self.fd = -1
        from mirror.bundle import publish

        if not publish.publish(self.tmp, self.out, digest, self.volume_size, stop):
            return None
        return "sha256:" + digest

    def abort(self) -> None:
        """Drop the unfinished bundle: stop the hasher, close, delete `<out>.partial`."""
        hasher = getattr(self, "hasher", None)
        if hasher is not None:
            hasher.abort()
        with getattr(self, "_flushing", threading.Lock()), self.io.exclusive():
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        self.tmp.unlink(missing_ok=True)


def _write_in_order(tee: Tee, chunks: queue.Queue[tuple[int, bytes] | None]) -> None:
    """Write a cached blob's chunks into the bundle as `copy_cached` reads them; after an
    error, go on taking them (so the reader never blocks) and raise it at the end."""
    error: BaseException | None = None
    while (item := chunks.get()) is not None:
        if error is None:
            try:
                tee.write(*item)
            except BaseException as e:
                error = e
    if error is not None:
        raise error


class _SharedLock:
    """Many holders at once (`with lock:`), or one exclusive holder (`lock.exclusive()`):
    writers share the descriptor; closing it waits until none is using it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._excl = False

    def __enter__(self) -> _SharedLock:
        with self._cond:
            while self._excl:
                self._cond.wait()
            self._shared += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._shared -= 1
            self._cond.notify_all()

    def exclusive(self) -> _Exclusive:
        return _Exclusive(self)


class _Exclusive:
    def __init__(self, lock: _SharedLock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        c = self.lock._cond
        with c:
            while self.lock._excl or self.lock._shared:
                c.wait()
            self.lock._excl = True

    def __exit__(self, *exc: object) -> None:
        c = self.lock._cond
        with c:
            self.lock._excl = False
            c.notify_all()
