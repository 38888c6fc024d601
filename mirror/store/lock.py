"""The run lock: a second run on the same cache or output exits at once (LockHeld)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mirror.errors import LockHeld


class RunLock:
    """An flock on `path`; released when the process ends, however it ends."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise LockHeld(
                f"{self.what} is in use by another mirror run"
                f"{f' (pid {holder})' if holder else ''}: lock {self.path}",
                hint="wait for it to finish; the lock goes away with that process",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
