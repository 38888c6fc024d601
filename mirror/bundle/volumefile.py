"""A bundle opened for reading whether it is one file or a set of parts
(mirror.bundle.volumes): `open_read()` gives the plain file, or one readable, seekable file
over the parts (`PartsFile`: random access for a plain tar, a stream for a .tar.zst);
`Pinned` holds the file or its parts open, so that later readers see these bytes even when
a rerun replaces the files under the same names."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any, BinaryIO

from mirror.bundle.volumes import CHUNK, VolumeSet, find


class PartsFile(io.RawIOBase):
    """The parts read as one file: read, readinto, seek and tell over their concatenation;
    one part open at a time."""

    def __init__(self, vs: VolumeSet, paths: list[Path] | None = None,
                 ids: dict[int, tuple[int, int, int, int]] | None = None) -> None:
        self.vs = vs
        self._paths = paths or [p.path for p in vs.parts]  # what is opened (Pinned's)
        self._ids = ids or {}  # part -> the file it must still be (Pinned's, past _HOLD)
        self.name = str(vs.base)
        self.mode = "rb"
        self._starts: list[int] = []
        pos = 0
        for p in vs.parts:
            self._starts.append(pos)
            pos += p.size
        self._size = pos
        self._pos = 0
        self._open: tuple[int, BinaryIO] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._pos, self._size)[whence]
        if base + offset < 0:
            raise OSError(22, "negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        if self._pos >= self._size or not len(view):
            return 0
        i = _part_at(self._starts, self._pos)
        f = self._part(i)
        f.seek(self._pos - self._starts[i])
        want = min(len(view), self.vs.parts[i].size - (self._pos - self._starts[i]))
        n = f.readinto(view[:want]) or 0  # type: ignore[attr-defined]
        if n == 0:  # a part shorter than the sidecar says (check() was not called)
            raise OSError(f"{self.vs.parts[i].path}: truncated: ends before its "
                          f"{self.vs.parts[i].size} bytes")
        self._pos += n
        return n

    def _part(self, i: int) -> BinaryIO:
        if self._open is not None and self._open[0] == i:
            return self._open[1]
        if self._open is not None:
            self._open[1].close()
            self._open = None
        f = open(self._paths[i], "rb", buffering=0)  # noqa: SIM115 - closed here
        if i in self._ids and _identity(os.fstat(f.fileno())) != self._ids[i]:
            f.close()
            raise OSError(f"{self.vs.parts[i].path}: replaced since the bundle was opened "
                          "(another set written under its name)")
        self._open = (i, f)
        return f

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None
        super().close()


def _part_at(starts: list[int], pos: int) -> int:
    lo, hi = 0, len(starts) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if starts[mid] <= pos:
            lo = mid
        else:
            hi = mid - 1
    return lo


def open_read(path: Path, buffering: int = -1) -> BinaryIO:
    """The bundle at `path` for reading: the file, or its parts as one file."""
    vs = find(path)
    if vs is None:
        return open(path, "rb", buffering=buffering)  # noqa: SIM115 - the caller closes it
    raw = PartsFile(vs)
    return raw if buffering == 0 else io.BufferedReader(raw, CHUNK)  # type: ignore[return-value]


_HOLD = 64  # parts held open at most (a 64k part size can make thousands: file limits)


class Pinned:
    """The bundle at `path` as it is now: its file, or each of its parts, held open, so that
    every later read sees these bytes even when a rerun replaces the files under the same
    names (a reader that reopened by name would read the new bundle at the old one's
    offsets: `mirror serve` would send other bytes under a blob's digest). Past _HOLD parts
    the others are opened by name and must still be the files they were (else OSError)."""

    def __init__(self, path: Path, vs: VolumeSet | None) -> None:
        self.path = path
        self.vs = vs
        self.fds: list[int] = []
        names = [p.path for p in vs.parts] if vs is not None else [path]
        self.ids = [_identity(os.stat(n)) for n in names[_HOLD:]]
        try:
            for name in names[:_HOLD]:
                self.fds.append(os.open(name, os.O_RDONLY | os.O_CLOEXEC))
        except BaseException:
            self.close()
            raise
        self.proc = Path("/proc/self/fd").is_dir()

    def _paths(self) -> list[Path]:
        # Linux: /proc/self/fd/N opens the file N is, whatever its name is now, with an
        # offset of its own (a dup would share one between concurrent readers)
        names = [p.path for p in self.vs.parts] if self.vs is not None else [self.path]
        if not self.proc:
            return names
        return [Path(f"/proc/self/fd/{fd}") for fd in self.fds] + names[len(self.fds):]

    def open(self, buffering: int = -1) -> BinaryIO:
        """A new reader (its own position) over the held file or parts."""
        paths = self._paths()
        if self.vs is None:
            return open(paths[0], "rb", buffering=buffering)  # noqa: SIM115 - the caller closes it
        raw = PartsFile(self.vs, paths, dict(enumerate(self.ids, start=len(self.fds))))
        return raw if buffering == 0 else io.BufferedReader(raw, CHUNK)  # type: ignore[return-value]

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
