"""The cache's pruning (`mirror cache prune`, run by mirror.store.command): which directory is
a cache at all, and the blobs and unfinished downloads removed by age, by the cache's size or
as unused by the lock files given, never those kept."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mirror.store.blobs import BlobStore


def iter_digests(store: BlobStore) -> Iterator[tuple[str, Path]]:
    for alg_dir in store.blob_dir.iterdir():
        if alg_dir.is_dir():
            for p in alg_dir.iterdir():
                if not p.name.startswith("."):
                    yield f"{alg_dir.name}:{p.name}", p


def not_a_cache(root: Path | str) -> str | None:
    """Why `root` is not a blob cache (what BlobStore made there); None when it is one."""
    root = Path(root)
    if (root / "blobs" / "sha256").is_dir():
        return None
    if not root.exists():
        return "no such directory"
    return "not a directory" if not root.is_dir() else "not a mirror cache (no blobs/sha256)"


def prune(store: BlobStore, *, older_than: float | None = None, max_bytes: int | None = None,
          keep: set[str] | None = None, unused_by: set[str] | None = None) -> Pruned:
    """Remove blobs not in `unused_by` (when given), those not used for `older_than`
    seconds, then the oldest until under `max_bytes`; never those in `keep`."""
    entries = []
    for digest, p in iter_digests(store):
        st = p.stat()
        entries.append((max(st.st_mtime, st.st_atime), st.st_size, digest, p))
    # unfinished downloads (partial/sha256-<hex>) hold disk too: judged as blobs are,
    # or a cache of interrupted layers stays over --max-size while said to be under it
    for p in store.partial_dir.iterdir() if store.partial_dir.is_dir() else ():
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
    """What `prune` did: blobs removed, bytes freed, the bytes of blobs left, and
    of those the bytes `keep` protected."""

    removed: int
    freed: int
    left: int
    kept: int
