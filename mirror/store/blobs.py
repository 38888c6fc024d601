"""A content-addressed blob store with atomic commits and resumable partial downloads.

Layout under the root (default `$XDG_CACHE_HOME/mirror`):
    blobs/sha256/<hex>      verified content, never written in place
    partial/sha256-<hex>    a download in progress; the next run resumes it
A blob appears under `blobs/` only after its size and digest were checked: bytes go to the
partial file, are hashed as they arrive, then `os.replace`d into place (the download being
written: mirror.store.partial; its workers: mirror.store.iowork). `mirror cache prune`
removes blobs: mirror.store.prune.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from mirror.digest import Digest, Verifier, check_bytes
from mirror.paths import write_atomic
from mirror.store.iowork import CHUNK
from mirror.store.partial import PartialBlob


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

    def touch_all(self, digests: list[str]) -> None:
        """touch() each of `digests` (those not in the store are passed over)."""
        for digest in digests:
            self.touch(digest)

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
        write_atomic(dest, data, f"{source} in the cache")  # none half-written, none left
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
