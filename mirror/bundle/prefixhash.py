"""The sha256 of a file written out of order (mirror.bundle.assembler's bundle, its blobs at
their offsets as they arrive), ready moments after its last byte: it follows the contiguous
written prefix of the file (the frontier). Bytes written right at that frontier are hashed
from memory by the writer; the others are read back by a thread of its own once the frontier
reaches them. A region written twice (a download restarted from byte 0) may already have
been hashed: `invalidate()`, and the file is hashed again at the end by its owner.
"""

from __future__ import annotations

import hashlib
import heapq
import threading
from array import array
from collections.abc import Callable

HASH_CHUNK = 1 << 20


class PrefixHash:
    """The sha256 of the file's first `size` bytes, fed by `written()` (or a download's
    `batch_offer()` and `batch_written()`); `read(view, offset)` reads the file back into
    `view` (0: nothing more to read). `gaps()` names what lies between the writes that is
    already written (a tar's padding and headers), so that it is read back, not waited for."""

    def __init__(self, size: int, read: Callable[[memoryview, int], int]) -> None:
        self.size = size
        self._read = read
        self._lock = threading.Condition()
        # written, not yet hashed: a heap, by start (sorting and merging them all on every
        # piece took 9 s of CPU at 8,500 blobs)
        self._ranges: list[tuple[int, int]] = []
        # what lies between the blobs' bytes (a blob's padding, the next one's header; the
        # end-of-archive zeros after the last), written with the head: start, end, start,
        # end, ... in order, readable from `_gap` on once `gaps()` has them all
        # (a range each in the heap held 2 MiB at 8,500 blobs)
        self._gaps = array("q")
        self._gap = 0
        self._frontier = 0
        self._hashing = False  # someone is hashing at the frontier (a writer or the hasher)
        self._batches: dict[int, str] = {}  # download batch offset -> "written" | "passed"
        self._hash = hashlib.sha256()
        self._invalid = False
        self._closed = False
        self._aborted = False
        self._thread = threading.Thread(target=self._follow, name="mirror-bundle-hash",
                                        daemon=True)
        self._thread.start()

    def gaps(self, gaps: array[int]) -> None:
        """Start, end, start, end, ... of what is written between the writes to come."""
        with self._lock:
            self._gaps = gaps
            self._lock.notify_all()

    def written(self, offset: int, length: int, data: bytes | memoryview | None = None) -> None:
        """Bytes [offset, offset+length) are in the file; `data`, when given, is them: hashed
        here if they sit right at the hash frontier, else read back later by the hasher."""
        with self._lock:
            mine = data is not None and self._claim(offset)
            if not mine:
                self._readable(offset, offset + length)
        if mine:
            self._hashed(offset, length, [data])

    def batch_written(self, offset: int, length: int) -> None:
        """A download's batch is in the file; its `batch_offer()` may have hashed it already,
        may still do so, or may have passed (then it is read back)."""
        with self._lock:
            state = self._batches.pop(offset, None)
            if state == "passed":
                self._readable(offset, offset + length)
            elif offset + length > self._frontier:
                self._batches[offset] = "written"

    def batch_offer(self, offset: int, chunks: list[bytes]) -> None:
        """A download's batch, in memory: hashed now if it sits at the frontier, else left to
        be read back from the file once `batch_written()` says it is there."""
        length = sum(len(c) for c in chunks)
        with self._lock:
            mine = self._claim(offset)
            if not mine:
                if self._batches.pop(offset, None) == "written":
                    self._readable(offset, offset + length)
                else:
                    self._batches[offset] = "passed"
        if mine:
            self._hashed(offset, length, chunks)

    def _claim(self, offset: int) -> bool:
        """(lock held) Take the frontier for hashing bytes at `offset` from memory."""
        if offset == self._frontier and not self._hashing:
            self._hashing = True
            return True
        return False

    def _hashed(self, offset: int, length: int, chunks: list) -> None:
        try:
            for c in chunks:
                self._hash.update(c)
        finally:
            with self._lock:
                self._frontier = offset + length
                self._hashing = False
                if self._batches.get(offset) == "written":
                    del self._batches[offset]
                self._lock.notify_all()

    def _readable(self, start: int, end: int) -> None:
        """(lock held) In the file, to be read back by the hasher."""
        heapq.heappush(self._ranges, (start, end))
        self._lock.notify_all()

    def invalidate(self) -> None:
        with self._lock:
            self._invalid = True

    def _take(self) -> tuple[int, int] | None:
        """Claim the next piece at the frontier to read back and hash (waits for one, and for
        a writer hashing at the frontier); None when closed. Called with the lock held."""
        while True:
            if not self._hashing:
                start, r, g = self._frontier, self._ranges, self._gaps
                while r and r[0][1] <= start:
                    heapq.heappop(r)  # hashed already (from memory)
                while self._gap < len(g) and g[self._gap + 1] <= start:
                    self._gap += 2
                end, limit, i = start, start + HASH_CHUNK, self._gap
                while end < limit:  # what is readable from the frontier on, up to a piece
                    if r and r[0][0] <= end:
                        end = max(end, heapq.heappop(r)[1])
                    elif i < len(g) and g[i] <= end:
                        end, i = max(end, g[i + 1]), i + 2
                    else:
                        break
                if end > start:
                    heapq.heappush(r, (start, end))  # popped once hashed
                    self._hashing = True
                    return start, min(end, limit)
                if self._closed or start >= self.size:
                    return None
            elif self._aborted:
                return None
            self._lock.wait()

    def _follow(self) -> None:
        buf = bytearray(HASH_CHUNK)  # one buffer, read into again and again
        view = memoryview(buf)
        while not self._aborted:
            with self._lock:
                piece = self._take()
            if piece is None:
                return
            start, end = piece
            n = 0
            try:
                n = self._read(view[:end - start], start)
                self._hash.update(view[:n])
            finally:
                with self._lock:
                    self._frontier = start + n
                    self._hashing = False
                    self._lock.notify_all()
            if not n:
                return

    def close(self) -> str | None:
        """Wait for the hasher to take what is contiguous; the hex digest, or None when the
        prefix stops short of the end or a region was invalidated (hash the file again)."""
        with self._lock:
            self._closed = True  # the hasher takes what is contiguous, then stops
            self._lock.notify_all()
        self._thread.join()
        if self._frontier < self.size or self._invalid:
            return None
        return self._hash.hexdigest()

    def abort(self) -> None:
        """Stop the hasher (its read under way ends first)."""
        self._aborted = True
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join()
