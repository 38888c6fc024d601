"""Keep glibc's malloc from handing memory back to the kernel after every network chunk.

A download arrives as a stream of 64-256 KiB `bytes` objects that live for a moment each.
glibc raises its mmap threshold as such blocks are freed and then trims the top of the heap
after almost every free, so the same pages go back to the kernel and are faulted in, zeroed,
again: about 60,000 page faults and 0.1-0.2 s of CPU per GiB pulled on a 2-core VM
(docs/BENCHMARKS.md). Fixed thresholds stop that; peak memory does not change (freed blocks
are reused, not added to).

Used by `mirror pull` only: `mirror load` reads 1 MiB pieces of the bundle on four threads,
and there the fixed trim threshold kept up to 8 MiB per thread's arena (load A's peak RSS went
from 54 to 64 MiB) for no gain in time.

glibc only; a no-op elsewhere, and when the user tunes malloc through the environment.
"""

from __future__ import annotations

import os
import sys

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 8 << 20  # free heap kept at the top before giving it back
MMAP_THRESHOLD = 4 << 20  # blocks this large or larger get an mmap of their own


def tune() -> bool:
    """Fix the thresholds; True when they were set."""
    if not sys.platform.startswith("linux"):
        return False
    if any(k.startswith("MALLOC_") for k in os.environ) or \
            "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:  # musl has a mallopt that does nothing
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (ValueError, OSError):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
