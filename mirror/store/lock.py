"""The run lock: a second run on the same cache or output exits at once (LockHeld).

The lock file exists only while a run holds it: the holder unlinks it, still holding the
flock, before it lets go. A process that opened the file before the unlink (or flocks it just
after) finds, once it holds the flock, that the path no longer names the inode it locked,
and starts again on a fresh file; so no two runs ever both believe they hold the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from mirror.errors import LockHeld, MirrorError, UsageError


class RunLock:
    """An flock on `path`, which exists only while it is held. Released (and the file
    removed) when the `with` block ends; the flock also goes when the process ends, however
    it ends (a run killed outright leaves the file behind: the next run takes it over)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # `--cache images.yaml`, a file
            raise UsageError(f"{self.what}: not a directory",
                             hint="give a directory (made if missing)") from None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not self._names(fd):  # held only by a run about to find it stale
                    os.close(fd)
                    continue
                try:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                finally:
                    os.close(fd)
                raise LockHeld(
                    f"{self.what} is in use by another mirror run"
                    f"{f' (pid {holder})' if holder else ''}: lock {self.path}",
                    hint="wait for it to finish; the lock goes away with that process",
                ) from None
            except BaseException:
                os.close(fd)
                raise
            if self._names(fd):
                break
            os.close(fd)  # the holder we waited on removed it: lock the new file
        self._fd = fd
        try:  # the holder's pid, for the message of a run that finds the lock held
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                self.__exit__()
                raise MirrorError(f"{self.what}: cannot write its lock {self.path}: "
                                  f"{e.strerror or e}") from None
            # a full disk: the flock is the lock; a run that needs no room goes on, and
            # one that does names the file it could not write
        return self

    def _names(self, fd: int) -> bool:
        """The path still names the file `fd` has open (it was not unlinked or replaced)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)  # still locked: nobody can be using this file
        except OSError:
            pass  # e.g. the directory turned read-only: the next run takes the file over
        finally:
            os.close(fd)
