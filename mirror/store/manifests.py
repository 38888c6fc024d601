"""The cache's store of manifests: what a warm rerun answers from instead of the network.

Layout under the cache root, beside `blobs/`:
    manifests/sha256/<hex>   a manifest's exact bytes, as the registry served them
    manifests/tags/<hex>     what a tag named when last asked: `<digest> <media type>\\n`,
                             under the sha256 of `registry/repository:tag` (`<digest>\\n`
                             alone where the type is not known: seeded from a lock file)
    manifests/referrers/<hex>  what referred to a subject when last asked (JSON: digest,
                             kind, cosign tag of each), under the sha256 of
                             `registry/repository@subject`; kept and read only for a
                             registry with `referrers: cached` (mirror.referrers)
A manifest by digest is immutable, so once seen it is never fetched again; it is verified on
every read (its sha256 against its name) and one that does not match is dropped and fetched
again, as a blob is. A tag is not immutable: its record only says which digest to expect, and
the registry is asked with one HEAD of the tag (not counted as a pull by Docker Hub) before
the stored manifest stands in for a GET (mirror.registry.client); the HEAD names the recorded
digest in `If-None-Match`, which a registry answers with 304 while the tag still names it.
Writes are atomic (beside, then renamed); entries are not fsync'ed, since every read re-hashes
them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

from mirror.mediatypes import MANIFEST_TYPES

_SHA256 = re.compile(r"sha256:[a-f0-9]{64}")


class ManifestStore:
    """Paths are joined as strings: a warm rerun reads three records per image, and
    pathlib's joins were a tenth of its time."""

    def __init__(self, cache_root: Path | str) -> None:
        self.root = Path(cache_root) / "manifests"
        self.by_digest = self.root / "sha256"
        self.tags = self.root / "tags"
        self.referrer_dir = self.root / "referrers"
        for d in (self.by_digest, self.tags, self.referrer_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._by_digest, self._tags = str(self.by_digest), str(self.tags)

    def _path(self, digest: str) -> str | None:
        if not _SHA256.fullmatch(digest):  # not a digest we name files by
            return None
        return f"{self._by_digest}/{digest[7:]}"

    def get(self, digest: str) -> bytes | None:
        """The bytes of manifest `digest`, verified; None when absent or damaged (dropped)."""
        path = self._path(digest)
        if path is None:
            return None
        data = _read(path)
        if data is None:
            return None
        if hashlib.sha256(data).hexdigest() != digest[7:]:
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        return data

    def put(self, digest: str, data: bytes) -> bool:
        """Keep manifest bytes already checked against `digest` (a no-op when there); True
        when the store holds them now (`get` reads them back), False when it cannot."""
        path = self._path(digest)
        if path is None:
            return False
        with contextlib.suppress(OSError), open(path, "rb") as f:
            if f.read(len(data) + 1) == data:  # there already (one damaged is replaced)
                return True
        return _write(Path(path), data)

    def _tag_path(self, registry: str, repo: str, tag: str) -> str:
        key = hashlib.sha256(f"{registry}/{repo}:{tag}".encode()).hexdigest()
        return f"{self._tags}/{key}"

    def known(self, registry: str, repo: str, tag: str) -> tuple[str, str] | None:
        """What `tag` named when last asked, if recorded: its digest, and that manifest's
        media type ("" where the record has none: one the lock file seeded, or older)."""
        data = _read(self._tag_path(registry, repo, tag))
        try:
            text = data.decode().strip() if data is not None else ""
        except UnicodeDecodeError:
            return None
        digest, _, media_type = text.partition(" ")
        return (digest, media_type if media_type in MANIFEST_TYPES else "") if digest else None

    def tag(self, registry: str, repo: str, tag: str) -> str | None:
        """The digest `tag` named when last asked, if recorded."""
        known = self.known(registry, repo, tag)
        return known[0] if known else None

    def remember(self, registry: str, repo: str, tag: str, digest: str,
                 media_type: str = "") -> None:
        media_type = media_type if media_type in MANIFEST_TYPES else ""
        if self.known(registry, repo, tag) != (digest, media_type):
            _write(Path(self._tag_path(registry, repo, tag)),
                   f"{digest} {media_type}\n".encode() if media_type else f"{digest}\n".encode())

    def _referrers_path(self, registry: str, repo: str, subject: str) -> str:
        key = hashlib.sha256(f"{registry}/{repo}@{subject}".encode()).hexdigest()
        return f"{self.referrer_dir}/{key}"

    def referrers(self, registry: str, repo: str, subject: str) -> list[dict] | None:
        """What referred to `subject` when last asked; None when never asked (or unreadable)."""
        data = _read(self._referrers_path(registry, repo, subject))
        try:
            doc = json.loads(data) if data is not None else None
        except ValueError:
            return None
        return doc if isinstance(doc, list) and all(isinstance(e, dict) for e in doc) \
            else None

    def keep_referrers(self, registry: str, repo: str, subject: str, found: list[dict]) -> None:
        """Record what refers to `subject`; a record that says so already is left alone (a
        rerun with nothing new writes nothing: on ext4 a rename over a file flushes it)."""
        data = json.dumps(found).encode()
        path = self._referrers_path(registry, repo, subject)
        if _read(path) != data:
            _write(Path(path), data)


def _read(path: str) -> bytes | None:
    """A record's bytes, None when it cannot be read. os.read on the descriptor: a warm rerun
    reads seven small records per image, and a buffered file object per read was about half
    of each read's cost."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _write(path: Path, data: bytes) -> bool:
    """Beside, then renamed into place; a cache that cannot be written is not an error (the
    next run asks the registry again): False."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False
    return True
