"""Digests: the value type, and the hashing wrapper every byte passes through."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from mirror.errors import DigestMismatch, IntegrityError, SizeMismatch

_SHA256 = re.compile(r"^sha256:[a-f0-9]{64}$")
_SHA512 = re.compile(r"^sha512:[a-f0-9]{128}$")
_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """`algorithm:encoded`, e.g. `sha256:<64 hex>`. Only sha256 and sha512 can be verified."""

    algorithm: str
    encoded: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Raise IntegrityError for anything that is not a well-formed digest we can check."""
        if _SHA256.match(text):  # nearly every digest: one match, not three
            return cls("sha256", text.partition(":")[2])
        if not _GRAMMAR.match(text):
            raise IntegrityError(f"invalid digest {text!r}")
        alg = text.partition(":")[0]
        if alg in ("sha256", "sha512") and not (_SHA256.match(text) or _SHA512.match(text)):
            n = 64 if alg == "sha256" else 128
            raise IntegrityError(f"invalid {alg} digest {text!r}: needs {n} lowercase hex "
                                 "characters")
        if not (_SHA256.match(text) or _SHA512.match(text)):
            raise IntegrityError(
                f"unsupported digest {text!r}: only sha256 and sha512 can be verified"
            )
        alg, _, enc = text.partition(":")
        return cls(alg, enc)

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls("sha256", hashlib.sha256(data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    @property
    def short(self) -> str:
        return f"{self.algorithm}:{self.encoded[:12]}"

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(4 << 20):
            h.update(data)
    return "sha256:" + h.hexdigest()


class Verifier:
    """Hashes a stream of chunks, enforcing the expected size as bytes arrive.

    `update()` raises SizeMismatch as soon as more than `size` bytes arrive; `finish()` raises
    SizeMismatch for a short stream and DigestMismatch for wrong content.
    """

    __slots__ = ("digest", "size", "source", "_h", "received")

    def __init__(self, digest: str, size: int | None, source: str, *, hasher=None,
                 received: int = 0) -> None:
        d = Digest.parse(digest)
        self.digest = digest
        self.size = size
        self.source = source
        self._h = hasher if hasher is not None else d.hasher()
        self.received = received

    def update(self, chunk: bytes | memoryview) -> None:
        self.received += len(chunk)
        if self.size is not None and self.received > self.size:
            raise SizeMismatch(self.size, self.received, self.source, self.digest)
        self._h.update(chunk)

    def copy_state(self):
        return self._h.copy()

    def finish(self) -> None:
        if self.size is not None and self.received != self.size:
            raise SizeMismatch(self.size, self.received, self.source, self.digest)
        actual = f"{self.digest.split(':', 1)[0]}:{self._h.hexdigest()}"
        if actual != self.digest:
            raise DigestMismatch(self.digest, actual, self.source)


async def verified(
    chunks: AsyncIterator[bytes], digest: str, size: int | None, source: str
) -> AsyncIterator[bytes]:
    """Pass chunks through, hashing them; raise at the first excess byte or at a bad end."""
    v = Verifier(digest, size, source)
    async for chunk in chunks:
        v.update(chunk)
        yield chunk
    v.finish()


def verified_sync(chunks: Iterator[bytes], digest: str, size: int | None,
                  source: str) -> Iterator[bytes]:
    """Pass chunks through, hashing them. With a known size the digest is checked before
    the last chunk is passed on, so a consumer (an upload) never sends all of a bad blob."""
    v = Verifier(digest, size, source)
    done = False
    for chunk in chunks:
        v.update(chunk)
        if size is not None and v.received == size:
            v.finish()
            done = True
        yield chunk
    if not done:
        v.finish()


async def verified_async(chunks: AsyncIterator[bytes], digest: str, size: int,
                         source: str) -> AsyncIterator[bytes]:
    """verified_sync for an async stream (a blob read from a registry as it arrives)."""
    v = Verifier(digest, size, source)
    async for chunk in chunks:
        v.update(chunk)
        if v.received == size:
            v.finish()
        yield chunk
    if v.received != size:
        v.finish()


def check_bytes(data: bytes, digest: str, size: int | None, source: str) -> None:
    """Verify an in-memory document (a manifest) against its descriptor."""
    v = Verifier(digest, size, source)
    v.update(data)
    v.finish()
