"""A content-addressed blob store with atomic commits and resumable partial downloads.

Layout under the root (default `$XDG_CACHE_HOME/mirror`):
    blobs/sha256/<hex>      verified content, never written in place
    partial/sha256-<hex>    a download in progress; the next run resumes it
A blob appears under `blobs/` only after its size and digest were checked: bytes go to the
partial file, are hashed as they arrive, then `os.replace`d into place. Downloads of 1 MiB
and more are written with O_DIRECT (store/direct.py): the cache copy stays out of the page
cache, which the bundle being written needs. Entries are not fsync'ed: every reuse re-hashes
them, so one damaged by a crash is caught and fetched again.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mirror.aio import to_the_end
from mirror.digest import Digest, Verifier, check_bytes
from mirror.store.direct import AppendFile, align_down


class Tee(Protocol):
    """Where a download's bytes also go as they arrive (the bundle being assembled: its
    `mirror.bundle.assembler.Tee`); the store knows it by these four calls alone."""

    def put(self, pos: int, chunks: list[bytes]) -> None:
        """Write a batch at `pos` of the blob (on an I/O thread)."""

    def offer(self, pos: int, chunks: list[bytes]) -> None:
        """The same batch again, to hash from memory."""

    def copy_from(self, path: Path, start: int, end: int) -> None:
        """Copy bytes [start, end) of a resumed partial download into place."""

    def rewound(self) -> None:
        """What was put may be stale: the reader must hash the blob's region again."""

CHUNK = 1 << 20
DIRECT_MIN = 1 << 20  # smaller blobs (configs, small layers) go through the page cache
DEPTH = 2  # batches of CHUNK bytes a download may have in flight to the workers
_IO_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mirror-io")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mirror"


class BlobStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self._blob_dir = str(self.blob_dir)
        self.partial_dir = self.root / "partial"
        for d in (self.blob_dir / "sha256", self.partial_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.fetched_now: set[str] = set()  # blobs put_bytes took from the network this run

    def path(self, digest: str) -> Path:
        d = Digest.parse(digest)
        return self.blob_dir / d.algorithm / d.encoded

    def _name(self, digest: str) -> str:
        """path(), as a string: a warm rerun asks has() and touch() of thousands of blobs."""
        d = Digest.parse(digest)
        return f"{self._blob_dir}/{d.algorithm}/{d.encoded}"

    def has(self, digest: str, size: int | None = None) -> bool:
        try:
            st = os.stat(self._name(digest))
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def touch(self, digest: str) -> None:
        """Record a use (for `cache prune --older-than`)."""
        try:
            os.utime(self._name(digest))
        except OSError:
            pass

    def put_bytes(self, digest: str, data: bytes, source: str = "manifest",
                  fetched: bool = False) -> Path:
        """Verify and store a small document (a manifest); a no-op when already present.
        `fetched`: the bytes came from the network in this run (a config `order: created`
        read), so the run's fetching counts the blob as fetched, not found in the cache."""
        check_bytes(data, digest, len(data), source)
        if fetched:
            self.fetched_now.add(digest)
        dest = self.path(digest)
        if dest.exists() and dest.stat().st_size == len(data):
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        return dest

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def iter_chunks(self, digest: str, chunk: int = CHUNK) -> Iterator[bytes]:
        with open(self.path(digest), "rb") as f:
            while data := f.read(chunk):
                yield data

    def verify(self, digest: str, size: int | None = None) -> None:
        """Re-hash a stored blob; raise IntegrityError and evict it when it is bad."""
        v = Verifier(digest, size, f"cache {self.path(digest)}")
        try:
            for data in self.iter_chunks(digest):
                v.update(data)
            v.finish()
        except Exception:
            self.evict(digest)
            raise

    def evict(self, digest: str) -> None:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            pass

    def partial(self, digest: str, size: int, source: str) -> PartialBlob:
        d = Digest.parse(digest)
        return PartialBlob(self, digest, size, source,
                           self.partial_dir / f"{d.algorithm}-{d.encoded}")

    def iter_digests(self) -> Iterator[tuple[str, Path]]:
        for alg_dir in self.blob_dir.iterdir():
            if alg_dir.is_dir():
                for p in alg_dir.iterdir():
                    if not p.name.startswith("."):
                        yield f"{alg_dir.name}:{p.name}", p

    @staticmethod
    def not_a_cache(root: Path | str) -> str | None:
        """Why `root` is not a blob cache (what BlobStore made there); None when it is one."""
        root = Path(root)
        if (root / "blobs" / "sha256").is_dir():
            return None
        if not root.exists():
            return "no such directory"
        return "not a directory" if not root.is_dir() else "not a mirror cache (no blobs/sha256)"

    def prune(self, *, older_than: float | None = None, max_bytes: int | None = None,
              keep: set[str] | None = None, unused_by: set[str] | None = None) -> Pruned:
        """Remove blobs not in `unused_by` (when given), those not used for `older_than`
        seconds, then the oldest until under `max_bytes`; never those in `keep`."""
        entries = []
        for digest, p in self.iter_digests():
            st = p.stat()
            entries.append((max(st.st_mtime, st.st_atime), st.st_size, digest, p))
        # unfinished downloads (partial/sha256-<hex>) hold disk too: judged as blobs are,
        # or a cache of interrupted layers stays over --max-size while said to be under it
        for p in self.partial_dir.iterdir() if self.partial_dir.is_dir() else ():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if p.is_file():
                digest = p.name.replace("-", ":", 1)
                entries.append((max(st.st_mtime, st.st_atime), st.st_size, digest, p))
        entries.sort()
        now = time.time()
        total = sum(e[1] for e in entries)
        removed = freed = kept = 0
        for used, size, digest, p in entries:
            if keep and digest in keep:
                kept += size
                continue
            too_old = older_than is not None and now - used > older_than
            too_big = max_bytes is not None and total > max_bytes
            unused = unused_by is not None and digest not in unused_by
            if too_old or too_big or unused:
                p.unlink(missing_ok=True)
                total -= size
                removed += 1
                freed += size
        return Pruned(removed, freed, total, kept)


@dataclass(frozen=True)
class Pruned:
    """What `BlobStore.prune` did: blobs removed, bytes freed, the bytes of blobs left, and
    of those the bytes `keep` protected."""

    removed: int
    freed: int
    left: int
    kept: int


class _Serial:
    """Jobs that run one after another, in order, on the shared pool (a stream must be hashed
    in order), without a pool thread ever waiting for another job."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._running = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self._queue.append((fn, args))
            if self._running:
                return
            self._running = True
        _IO_POOL.submit(self._run)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                fn, args = self._queue.popleft()
            fn(*args)  # never raises: see _Batches.job


class _Batch:
    __slots__ = ("error", "left")

    def __init__(self, jobs: int) -> None:
        self.left = jobs
        self.error: BaseException | None = None


class _Batches:
    """The batches of one download in flight on the workers. A job's end wakes the event loop
    only when it waits (a cross-thread wake-up per job was a measurable share of the loop's
    time at 1 GB/s). Each queue runs its jobs in order, so batches end in order."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._batches: deque[_Batch] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, jobs: int) -> _Batch:
        batch = _Batch(jobs)
        with self._cv:
            self._batches.append(batch)
        return batch

    def job(self, batch: _Batch, fn: Callable[..., Any], *args: Any) -> None:
        """Run one job of `batch` (on a worker) and count it done, whatever happens."""
        try:
            fn(*args)
        except BaseException as e:  # raised where the batch is waited for
            batch.error = batch.error or e
        finally:
            with self._cv:
                batch.left -= 1
                waiter, loop = self._waiter, self._loop
                if batch.left == 0:
                    self._cv.notify_all()
                    self._waiter = None
                else:
                    waiter = None
            if waiter is not None and loop is not None:
                loop.call_soon_threadsafe(_wake, waiter)

    def _pop_done(self, keep: int) -> bool:
        """(lock held) Drop finished batches from the front, raising the first error; True
        when at most `keep` batches are still in flight."""
        while self._batches and self._batches[0].left == 0:
            batch = self._batches.popleft()
            if batch.error is not None:
                raise batch.error
        return len(self._batches) <= keep

    async def wait(self, keep: int = 0) -> None:
        """Until at most `keep` batches are in flight (oldest first)."""
        while True:
            with self._cv:
                if self._pop_done(keep):
                    return
                self._loop = asyncio.get_running_loop()
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def join(self) -> None:
        """Block until every job has run (their errors are dropped: used when closing)."""
        with self._cv:
            self._cv.wait_for(lambda: all(b.left == 0 for b in self._batches))
            self._batches.clear()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class PartialBlob:
    """The sink of one download: resumable, hashed as written, committed atomically.

    Writes and hashing run on worker threads (hashlib and file writes release the GIL), up to
    DEPTH batches behind the network reads, so receiving, hashing and writing overlap.
    """

    def __init__(self, store: BlobStore, digest: str, size: int, source: str, path: Path) -> None:
        self.store = store
        self.digest = digest
        self.size = size
        self.source = source
        self.path = path
        self._file: AppendFile | None = None
        self._verifier: Verifier | None = None
        self._pending = _Batches()
        # ordered queues on the shared pool: the digest, the cache file, the bundle's bytes and
        # the bundle's sha256
        self._hashq = _Serial()
        self._fileq = _Serial()
        self._teeq = _Serial()
        self._sumq = _Serial()
        self._queued = 0  # bytes handed to the workers (where the next batch starts)
        self._buf: list[bytes] = []
        self._buffered = 0
        self.resumed_from = 0
        self.tee: Tee | None = None  # also put the bytes in the bundle
        self.tee_failed = False
        self.committed = False  # in the store: verified, whatever befell the task after

    def open(self) -> int:
        """Open, rebuilding the hash state from bytes a killed run left; return the offset.
        An unfinished file is resumed from a block boundary (the cache copy is written with
        O_DIRECT, see store/direct.py): at most a few KiB are asked for again."""
        h = Digest.parse(self.digest).hasher()
        try:
            have = min(self.path.stat().st_size, self.size)
        except FileNotFoundError:
            have = 0
        if have < self.size:
            have = align_down(have)
        offset = 0
        if have:
            with open(self.path, "rb") as f:
                while offset < have and (data := f.read(min(CHUNK * 4, have - offset))):
                    h.update(data)
                    offset += len(data)
        self._file = AppendFile(self.path, offset, direct=self.size >= DIRECT_MIN)
        self._verifier = Verifier(self.digest, self.size, self.source, hasher=h, received=offset)
        self.resumed_from = offset
        self._queued = offset
        if self.tee is not None and offset:
            try:
                self.tee.copy_from(self.path, 0, offset)
            except Exception:
                self.tee_failed = True  # the bundle gets the blob from the cache instead
                self.tee.rewound()
        return offset

    @property
    def offset(self) -> int:
        """Bytes received so far (exact once `drain()` returned)."""
        assert self._verifier is not None
        return self._verifier.received + self._buffered

    @property
    def teed(self) -> bool:
        """Every byte also went into the bundle (no bundle write failed)."""
        return self.tee is not None and not self.tee_failed

    def _hash(self, chunks: list[bytes]) -> None:
        v = self._verifier
        assert v is not None
        for data in chunks:
            v.update(data)

    def _store(self, chunks: list[bytes]) -> None:
        f = self._file
        assert f is not None
        for data in chunks:
            f.write(data)

    def _tee(self, pos: int, chunks: list[bytes]) -> None:
        """The bundle's copy. A failure here must not fail the download (the cache copy is
        fine): the blob is then copied into the bundle from the verified cache entry."""
        tee = self.tee
        if tee is None or self.tee_failed:
            return
        try:
            tee.put(pos, chunks)
        except Exception:
            self.tee_failed = True
            tee.rewound()  # part of its region may be stale: the bundle hash is redone

    def _tee_sum(self, pos: int, chunks: list[bytes]) -> None:
        """The bundle's sha256 over the same bytes, from memory when they are in order."""
        if self.tee is not None and not self.tee_failed:
            self.tee.offer(pos, chunks)

    async def write(self, chunk: bytes) -> None:
        ahead = self._queued + self._buffered + len(chunk)  # in flight counts too
        if ahead > self.size:
            from mirror.errors import SizeMismatch

            raise SizeMismatch(self.size, ahead, self.source, self.digest)
        self._buf.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= CHUNK:
            await self._flush()

    async def _flush(self) -> None:
        """Hand the received chunks to the workers: the digest, the cache file (a direct write
        that waits for the disk, not the CPU), the bundle's copy and the bundle's sha256 (from
        memory when these bytes are next in the bundle) each in an ordered queue of their own,
        so the hashes use both cores while the event loop goes on receiving (up to DEPTH
        batches in flight). The queues may be apart by up to DEPTH batches; `drain()` brings
        them together."""
        await self._pending.wait(keep=DEPTH - 1)
        if self._buf:
            chunks, self._buf = self._buf, []
            pos, teed, pending = self._queued, self.teed, self._pending
            batch = pending.start(4 if teed else 2)
            self._hashq.submit(pending.job, batch, self._hash, chunks)
            self._fileq.submit(pending.job, batch, self._store, chunks)
            if teed:
                self._teeq.submit(pending.job, batch, self._tee, pos, chunks)
                self._sumq.submit(pending.job, batch, self._tee_sum, pos, chunks)
            self._queued += self._buffered
            self._buffered = 0

    async def drain(self) -> None:
        """Wait until every byte given to write() is on disk and hashed."""
        await self._flush()
        await self._pending.wait()

    async def restart(self) -> None:
        """The server ignored our Range: start over from byte 0."""
        await self.drain()
        assert self._file is not None
        self._file.reset()
        self._verifier = Verifier(self.digest, self.size, self.source)
        self._queued = 0
        if self.tee is not None:
            self.tee.rewound()

    async def commit(self) -> Path:
        """Check size and digest, fsync, and move into the store. On a bad digest the partial
        file is deleted (it can't be resumed) and IntegrityError raised."""
        await self.drain()
        # cancelled, the file is closed and moved (or not) before we go on
        return await to_the_end(asyncio.get_running_loop().run_in_executor(_IO_POOL,
                                                                            self._commit))

    def _commit(self) -> Path:
        assert self._file is not None and self._verifier is not None
        try:
            self._verifier.finish()
        except Exception:
            self.discard()
            raise
        # No fsync: a cache entry is re-hashed whenever it is reused, so one damaged by a
        # crash is caught and fetched again; the rename alone keeps a half-written file from
        # ever being named by its digest. (Each fsync here stalled a whole 1 GiB download.)
        self._file.close()
        self._file = None
        dest = self.store.path(self.digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, dest)
        self.committed = True
        return dest

    def close(self) -> None:
        """Keep what we have for the next run (interrupted or failed download)."""
        self._pending.join()
        if self._file is not None:
            if self._buf:
                # bytes received but not yet written: drop them, the file stays consistent
                self._buf.clear()
                self._buffered = 0
            self._file.close()
            self._file = None

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
        if self.tee is not None:
            self.tee.rewound()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(CHUNK * 4):
            h.update(data)
    return "sha256:" + h.hexdigest()
