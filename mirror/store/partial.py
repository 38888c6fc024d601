"""A download being written into the cache: resumed from what a killed run left, hashed as
its bytes arrive, teed into the bundle being assembled, committed atomically or discarded.

The bytes go to `partial/<alg>-<hex>` under the cache's root (mirror.store.blobs) and are
`os.replace`d into `blobs/` only after their size and digest were checked. Downloads of 1 MiB
and more are written with O_DIRECT (store/direct.py): the cache copy stays out of the page
cache, which the bundle being written needs. Entries are not fsync'ed: every reuse re-hashes
them, so one damaged by a crash is caught and fetched again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mirror.aio import to_the_end
from mirror.digest import Digest, Verifier
from mirror.store.direct import AppendFile, align_down
from mirror.store.iowork import CHUNK, IO_POOL, Batches, Serial

if TYPE_CHECKING:
    from mirror.store.blobs import BlobStore

DIRECT_MIN = 1 << 20  # smaller blobs (configs, small layers) go through the page cache
DEPTH = 2  # batches of CHUNK bytes a download may have in flight to the workers


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
        self._pending = Batches()
        # ordered queues on the shared pool: the digest, the cache file, the bundle's bytes and
        # the bundle's sha256
        self._hashq = Serial()
        self._fileq = Serial()
        self._teeq = Serial()
        self._sumq = Serial()
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
        have = self._resumable()
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
        return await to_the_end(asyncio.get_running_loop().run_in_executor(IO_POOL,
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

    def _resumable(self) -> int:
        """The bytes of the partial file a run resumes from (`open`)."""
        try:
            return self.resumable_of(self.path.stat().st_size)
        except FileNotFoundError:
            return 0

    def resumable_of(self, have: int) -> int:
        """Of `have` bytes of the blob, those a run resumes from: all of them when they are
        the whole blob, else up to a block boundary (what `close` keeps)."""
        have = min(have, self.size)
        return have if have == self.size else align_down(have)

    def close(self, keep: bool = True) -> None:
        """Keep what we have for the next run (interrupted or failed download), as much of
        it as a run resumes from: the bytes received and not handed to the workers yet (a
        download stopped: Ctrl-C, SIGTERM, another blob's error) written after the others,
        the file cut to its last whole block, and a file with less than a block (empty: the
        disk was full at its first write, or the download stopped before it) removed. The
        run holds the cache's lock (mirror.store.lock), so no other run is writing it."""
        self._pending.join()
        if self._file is not None:
            if self._buf:
                chunks, self._buf, self._buffered = self._buf, [], 0
                if keep and not self._pending.failed:  # else the file has a gap: drop them
                    with contextlib.suppress(OSError):  # a full disk: those are not kept
                        self._store(chunks)
            try:
                self._file.close()  # may fail: a full disk, the last bytes do not fit
            finally:
                self._file = None
                if not self.committed:
                    self._cut_to_resumable()

    def _cut_to_resumable(self) -> None:
        """The file as a run resumes it, so that what the report and the error line say
        is kept is the file's size."""
        try:
            have = self.path.stat().st_size
        except FileNotFoundError:
            return
        keep = self.resumable_of(have)
        if not keep:
            self.path.unlink(missing_ok=True)
        elif keep < have:
            os.truncate(self.path, keep)

    def discard(self) -> None:
        self.close(keep=False)
        self.path.unlink(missing_ok=True)
        if self.tee is not None:
            self.tee.rewound()
