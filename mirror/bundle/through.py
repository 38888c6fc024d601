"""Reading a bundle file through once, from start to end: every byte read is also given to a
tap (verify's sha256 of the whole file, for `BUNDLE.sha256`), and the members of a plain tar
are handed out in order as windows onto that one sequential read (`Bundle.members(tap=...)`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

CHUNK = 1 << 20

Tap = Callable[[bytes], object]  # given every byte of the file, in order (its own sha256)


class Tapped:
    """The bundle file, read through: every byte read is also given to `tap`."""

    def __init__(self, f: BinaryIO, tap: Tap) -> None:
        self._f, self._tap = f, tap

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if data:
            self._tap(data)
        return data

    def skip(self, n: int) -> None:
        """Read (and tap) the next `n` bytes, which nobody wants."""
        while n > 0 and (data := self.read(min(CHUNK, n))):
            n -= len(data)

    def drain(self) -> None:
        """Read (and tap) the rest of the file."""
        while self.read(CHUNK):
            pass

    def close(self) -> None:
        self._f.close()


class Window:
    """A member of a plain tar being read through in order (members(tap=...)): at most its
    `size` bytes, from a file positioned at its start."""

    def __init__(self, f: Tapped, size: int) -> None:
        self._f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self._f.read(n) if n else b""
        self.left -= len(data)
        return data
