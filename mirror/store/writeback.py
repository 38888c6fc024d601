"""Starting the writeback of a file as it is written, without waiting for it.

A bundle is written through the page cache and fsync'ed before it is named. Left alone, the
kernel keeps the dirty pages until that fsync and then writes a whole GiB at once; an
`fdatasync` every few hundred MiB instead sends a few hundred MiB to the disk at once, and for
that tenth of a second every other write (the cache's direct writes, so the download) waits
in the disk's queue behind it (docs/BENCHMARKS.md). `sync_file_range(SYNC_FILE_RANGE_WRITE)`
every few MiB starts writing what is dirty and returns: the disk gets a steady stream and the
final fsync finds little left. It promises nothing about durability; the fsync still does.

Linux only (glibc and musl both have it); elsewhere `start()` says False and the caller falls
back to an occasional fdatasync.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

SYNC_FILE_RANGE_WRITE = 2  # from <fcntl.h>
EVERY = 8 << 20  # bytes written between two starts
# what says "not here" (no such call, a filesystem or file that can't) rather than "failed"
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ESPIPE, errno.EPERM, errno.EOPNOTSUPP}
_call: Callable[[int], int] | None = None
_tried = False


def _load() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (ImportError, OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def call(fd: int) -> int:
        if fn(fd, 0, 0, SYNC_FILE_RANGE_WRITE) == 0:  # 0, 0: the whole file
            return 0
        return ctypes.get_errno() or errno.EIO

    return call


def available() -> bool:
    global _call, _tried
    if not _tried:
        _call, _tried = _load(), True
    return _call is not None


def start(fd: int) -> bool:
    """Start writing the file's dirty pages to disk. False when that is not possible here
    (no sync_file_range, or the file or filesystem can't); OSError when the disk failed
    (EIO, ENOSPC): the caller must not name the file."""
    if not available():
        return False
    assert _call is not None
    err = _call(fd)
    if err == 0:
        return True
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err))
