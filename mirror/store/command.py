"""`mirror cache prune` as a run: --older-than and --max-size read, the locks' blobs kept
or judged unused, the cache pruned (mirror.store.prune) under its lock."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from mirror.errors import UsageError
from mirror.report import Report


def _parse_age(text: str) -> float:
    """`30d`, `12h`, `90m`, `2w`, `3600s`: finite and not negative (a negative age would call
    every blob too old), with a unit (`30` meant as days would remove what 30 seconds left
    unused)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        age = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        age = math.nan
    else:
        if text[-1] not in units and math.isfinite(age) and age >= 0:
            raise UsageError(f"--older-than {text}: no unit",
                             hint=f"give one of s, m, h, d, w: e.g. {text}d for {text} days")
    if not math.isfinite(age) or age < 0:
        raise UsageError(f"invalid age {text!r}: e.g. 30d, 12h")
    return age


def _parse_size(text: str) -> int:
    """`50G`, `500M`, `1T`, bytes: finite and not negative (a negative size would remove every
    blob)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        size = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(int(t))
    except (ValueError, IndexError):
        size = math.nan
    if not math.isfinite(size) or size < 0:
        raise UsageError(f"invalid size {text!r}: e.g. 50G, 500M")
    return int(size)


async def run_cache(args: argparse.Namespace, progress, report: Report) -> int:
    from mirror.lockfile import Lock
    from mirror.store.blobs import BlobStore, default_cache_dir
    from mirror.store.lock import RunLock
    from mirror.store.prune import not_a_cache, prune

    if not args.older_than and not args.max_size and not args.unused_by:
        raise UsageError("cache prune needs --older-than, --max-size or --unused-by")
    older_than = _parse_age(args.older_than) if args.older_than else None
    max_bytes = _parse_size(args.max_size) if args.max_size else None
    cache = args.cache or default_cache_dir()
    report.add(cache=str(cache), blobs_removed=None, bytes_freed=None, bytes_left=None)
    why = not_a_cache(cache)  # a typo must not make a cache there (nor prune one)
    if why == "no such directory" and not args.cache:
        # the default cache before the first pull (a prune job on a new machine): nothing to do
        report.add(blobs_removed=0, bytes_freed=0, bytes_left=0)
        if not args.quiet:
            print(f"removed 0 blob(s), 0 bytes: no cache at {cache} yet")
        return 0
    if why:
        raise UsageError(f"{'--cache' if args.cache else 'cache'} {cache}: {why}",
                         hint="give the directory `mirror pull --cache` used")
    keep: set[str] = set()
    for lock in args.keep:
        keep |= set(Lock.read(lock).blobs)
    used: set[str] | None = None
    for lock in args.unused_by:
        used = (used or set()) | set(Lock.read(lock).blobs)
    with RunLock(Path(cache) / "lock", f"cache {cache}"):
        done = prune(BlobStore(cache), older_than=older_than, max_bytes=max_bytes, keep=keep,
                     unused_by=used)
    report.add(blobs_removed=done.removed, bytes_freed=done.freed, bytes_left=done.left)
    if not args.quiet:
        print(f"removed {done.removed} blob(s), {done.freed} bytes from {cache}")
    if max_bytes is not None and done.left > max_bytes:
        progress.warn(f"{cache} still holds {done.left} bytes, over --max-size {max_bytes}: "
                      f"{done.kept} bytes are blobs --keep protects")
    return 0
