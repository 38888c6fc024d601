"""What the code asks of a file object: read(n), or write(data), and nothing else. tarfile's
members, zstandard's readers and writers and the bundle's own wrappers (through.Tapped and
Window, reader's stream member, writer's hashing writer) all have that much; most are not
IO[bytes], so a function that only reads or only writes takes one of these."""

from __future__ import annotations

from typing import Protocol


class Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...
