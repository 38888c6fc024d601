"""Files a run will write (-o, --report, the lock file): checked before any work, and the
small ones written atomically (`write_atomic`).

A missing directory is made, for each of them alike; a path that names a directory, or whose
directory cannot be made or written, is a usage error (exit 2) naming the option, found
before any network work instead of after a night's pull.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from mirror.errors import MirrorError, UsageError


def check_writable(path: Path, flag: str) -> None:
    """Make `path`'s directory if missing; UsageError `FLAG PATH: ...` if it cannot be written."""
    if str(path) == "-":  # every output is written atomically (a rename), so never stdout
        raise UsageError(f"{flag} -: writes a file (replaced atomically at the end), not "
                         "stdout; give a file path")
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give a file name")
    parent = path.parent
    for up in (parent, *parent.parents):  # the nearest one that exists must be a directory
        if up.exists():
            if not up.is_dir():
                raise UsageError(f"{flag} {path}: {up} is not a directory")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot make directory {parent}: "
                         f"{e.strerror or e}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: directory {parent} is not writable")
    # access(2) says yes to root whatever the filesystem will do (/proc, /sys, a FUSE or
    # root-squashed mount): make and drop a file there, as the run will
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"{flag} {path}: directory {parent} is not writable "
                         f"({e.strerror or e})") from None


def same_file(a: Path, b: Path) -> bool:
    """`a` and `b` name one file: the same inode when both exist (a symlink, a hard link),
    else the same absolute path with symlinks resolved."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):
        return False


def check_distinct(writes: list[tuple[str, Path]], reads: list[tuple[str, Path]],
                   allow: frozenset[tuple[str, str]] = frozenset()) -> None:
    """UsageError (exit 2, before any work) when a file the run writes is another file it
    writes or one it reads (`-o images.yaml`, `--report images.lock`): one would silently
    replace the other. `allow` names (written, read) flag pairs that may be one file."""
    for i, (flag, path) in enumerate(writes):
        for other_flag, other in [*writes[i + 1:], *reads]:
            if (flag, other_flag) in allow or not same_file(path, other):
                continue
            raise UsageError(f"{flag} {path} is {other_flag} {other} (the same file): the run "
                             "would write over it",
                             hint="give each file a name of its own")


def write_atomic(path: Path, data: bytes | Iterable[bytes], what: str) -> None:
    """Write `data` (or its pieces, in turn) beside `path`, flush to disk, rename over it:
    a reader sees the old file or the new one. A write that fails (a full disk) leaves the
    old file as it was and no temporary file, and is a MirrorError naming `path` and `what`
    it is (the report, the lock file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as f:
            for piece in [data] if isinstance(data, bytes) else data:
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise MirrorError(f"{path}: cannot write {what}: {e.strerror or e}") from None
