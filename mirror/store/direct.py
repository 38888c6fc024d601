"""Appending to a file without going through the page cache (O_DIRECT), for the cache's copy
of a download.

A pull writes every downloaded byte twice: into the cache (so no later run downloads it
again) and into the bundle. Two buffered writers at once cost 2-3 s of system time per GiB on
the 2-core VMs this was measured on (page-cache and ext4 contention), where a direct write of
the same GiB costs under 0.1 s of CPU (docs/BENCHMARKS.md). The cache copy is read only by a
later run, so keeping it out of the page cache is also kinder to a machine under cron: a
nightly pull of tens of GB does not push everything else out of memory.

O_DIRECT wants aligned memory, offsets and lengths: bytes are staged in a page-aligned buffer
and written in whole buffers; what is left at `close()` is written the ordinary way. Where the filesystem refuses O_DIRECT (tmpfs, some FUSE
filesystems, systems without the flag) the file is written the ordinary way.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from pathlib import Path

from mirror.errors import naming

ALIGN = 4096  # a multiple of every logical block size O_DIRECT may ask for
STAGE = 512 << 10
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def align_down(n: int) -> int:
    return n - n % ALIGN


class AppendFile:
    """A file written front to back from `offset` (a multiple of ALIGN when direct)."""

    def __init__(self, path: Path, offset: int = 0, *, direct: bool = True) -> None:
        self.path = path
        self.direct = bool(direct and _O_DIRECT) and offset % ALIGN == 0
        flags = os.O_WRONLY | os.O_CREAT
        fd = -1
        if self.direct:
            try:
                fd = os.open(path, flags | _O_DIRECT, 0o644)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.direct = False
        if fd < 0:
            fd = os.open(path, flags, 0o644)
        self.fd = fd
        self._closing = threading.Lock()
        os.ftruncate(fd, offset)
        self.pos = offset  # where the next write lands (staged bytes not counted)
        self._stage = mmap.mmap(-1, STAGE) if self.direct else None
        self._staged = 0

    def write(self, data: bytes | memoryview) -> None:
        if self._stage is None:
            self._pwrite_all(memoryview(data), self.pos)
            self.pos += len(data)
            return
        view = memoryview(data)
        while view:
            take = min(len(view), STAGE - self._staged)
            self._stage[self._staged:self._staged + take] = view[:take]
            self._staged += take
            view = view[take:]
            if self._staged == STAGE:
                self._pwrite_all(memoryview(self._stage), self.pos)
                self.pos += STAGE
                self._staged = 0

    def _pwrite_all(self, data: memoryview, pos: int) -> None:
        try:
            try:
                n = os.pwrite(self.fd, data, pos)
            except OSError as e:
                if e.errno != errno.EINVAL or not self.direct:
                    raise
                self._buffered()  # accepted at open, refused at write: some filesystems do
                n = os.pwrite(self.fd, data, pos)
            while n < len(data):  # short writes are legal
                n += os.pwrite(self.fd, data[n:], pos + n)
        except OSError as e:
            raise naming(e, self.path) from None

    def _buffered(self) -> None:
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
        self.direct = False

    def _flush_tail(self) -> None:
        """Write what is staged. Its length is rarely a whole block, so the descriptor is
        switched to ordinary writes first: no padding that a kill could leave behind."""
        n = self._staged
        if not n or self._stage is None:
            return
        if self.direct:
            self._buffered()
        self._pwrite_all(memoryview(self._stage)[:n], self.pos)
        self.pos += n
        self._staged = 0

    def reset(self) -> None:
        """Start the file over, empty."""
        self._staged = 0
        self.pos = 0
        os.ftruncate(self.fd, 0)

    def close(self) -> None:
        """Flush and close; the file then holds every byte written (kept for a resume).
        Safe to call twice, from two threads (a commit on a worker, a cancelled download's
        cleanup on the event loop): only the first does anything."""
        with self._closing:
            if self.fd < 0:
                return
            try:
                self._flush_tail()
            finally:
                fd, self.fd = self.fd, -1
                stage, self._stage = self._stage, None
                os.close(fd)
                if stage is not None:
                    try:
                        stage.close()
                    except BufferError:
                        pass  # a failed write's traceback still holds a view: freed with it

