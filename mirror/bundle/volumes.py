"""A bundle carried as parts (volumes) for media with a size limit: `OUT.001`, `OUT.002`, ...
each at most SIZE bytes, whose concatenation is byte for byte the bundle a pull without
volumes writes; `OUT.volumes.json` lists each part's name, size and sha256 and the whole
file's size and sha256; `OUT.sha256` is the whole file's, as for a single file, and
`OUT.parts.sha256` the parts' in sha256sum's format (`sha256sum -c` names a damaged part).

The writers (mirror.bundle.assembler, mirror.bundle.writer) write the whole file as ever and
hand it to `publish()`, which cuts it into parts from its end (each part copied out, then the
file truncated: the disk holds one part more than the bundle, never two bundles) and names
them all at once: nothing of the new set is named before every part is written, and the old
set's parts are removed only after the new set's sidecar is in place.

The readers open a bundle through `open_read()`: a plain file, or one readable, seekable file
over the parts (`PartsFile`: random access for a plain tar, a stream for a .tar.zst), so they
need no knowledge of parts. `find()` takes the first part, the sidecar, or the base name when
only the parts exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mirror.errors import BundleError, MirrorError, UsageError, naming

SIDECAR = ".volumes.json"
PARTS_SUMS = ".parts.sha256"
CHUNK = 1 << 20
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
PRESETS = {
    "fat32": (4 << 30) - 1,  # FAT32's largest file: 4 GiB - 1 byte
    "dvd": 4_700_000_000,  # a single-layer DVD±R
    "bd25": 25_000_000_000,  # a single-layer BD-R
}
_MIN = 64 << 10  # a part smaller than this is a mistake (a unit left off), not a medium
_PART = re.compile(r"\.(\d{3,})$")


def parse_size(text: str) -> int:
    """`--volume-size`: bytes, with k, M, G or T (1024-based: 4G is 4 GiB; a B or iB after
    the unit is allowed), or a preset (fat32, dvd, bd25). Raises UsageError."""
    t = text.strip().lower()
    if t in PRESETS:
        return PRESETS[t]
    m = re.fullmatch(r"(\d+)\s*([kmgt]?)(?:i?b)?", t)
    if m is None:
        raise UsageError(f"--volume-size {text!r}: not a size (bytes, or a number with k, M, "
                         f"G or T, 1024-based; or one of {', '.join(PRESETS)})")
    size = int(m.group(1)) * _UNITS[m.group(2)]
    if size < _MIN:
        raise UsageError(f"--volume-size {text!r}: {size} bytes is below the least a part may "
                         f"be ({_MIN} bytes, 64k)")
    return size


def part_path(out: Path, i: int) -> Path:
    return out.with_name(f"{out.name}.{i:03d}")


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + SIDECAR)


@dataclass(frozen=True, slots=True)
class Part:
    path: Path
    size: int
    sha256: str  # hex


@dataclass(frozen=True, slots=True)
class VolumeSet:
    base: Path  # the bundle's own name (site.tar): what `cat site.tar.0* > site.tar` makes
    volume_size: int
    size: int
    sha256: str  # hex, of the whole
    parts: tuple[Part, ...]

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.base)

    def to_json(self) -> bytes:
        return (json.dumps({
            "name": self.base.name, "volumeSize": self.volume_size, "size": self.size,
            "sha256": self.sha256,
            "parts": [{"name": p.path.name, "size": p.size, "sha256": p.sha256}
                      for p in self.parts]}, indent=2) + "\n").encode()


def base_of(path: Path) -> Path | None:
    """The base name of a set that `path` names (the sidecar, a part, or the base itself when
    only the parts exist); None when `path` is a plain file or names no set."""
    path = Path(path)
    if path.name.endswith(SIDECAR):
        return path.with_name(path.name[: -len(SIDECAR)])
    m = _PART.search(path.name)
    if m is not None:
        base = path.with_name(path.name[: m.start()])
        if _own_bundle(path):
            return None  # night.001 beside night.002, each with its .sha256
        if sidecar_path(base).exists() or not path.exists() or part_path(base, 2).exists():
            return base  # (without its sidecar: find() says to copy it)
        return None  # a file that only looks like a part (site.tar.001 alone, no .002)
    if not path.exists() and sidecar_path(path).exists():
        return path
    return None


def lone_part(path: Path) -> Path | None:
    """The sidecar a file named like a set's part (`NAME.NNN`) would need when it is all
    there is of the set: no other part, no sidecar and no .sha256 of its own beside it
    (base_of takes it for a plain file, which a bundle cut short would be too); None
    otherwise. Said when it reads as a bundle cut short: a part alone is one."""
    m = _PART.search(path.name)
    if m is None or _own_bundle(path) or base_of(path) is not None:
        return None
    return sidecar_path(path.with_name(path.name[: m.start()]))


def _own_bundle(path: Path) -> bool:
    """A file named like a part that is a bundle of its own: it has its own .sha256, which
    `mirror pull` writes beside every bundle file and never beside a part."""
    return path.exists() and path.with_name(path.name + ".sha256").exists()


def find(path: Path) -> VolumeSet | None:
    """The set `path` names, read from its sidecar; None for a plain file. Raises
    BundleError when the sidecar is missing or unreadable."""
    base = base_of(path)
    if base is None:
        return None
    side = sidecar_path(base)
    try:
        doc = json.loads(side.read_bytes())
        parts = tuple(Part(base.with_name(p["name"]), int(p["size"]), str(p["sha256"]))
                      for p in doc["parts"])
        if any("/" in p.path.name for p in parts):
            raise ValueError
        if any(not p.path.name.startswith(base.name) for p in parts):
            raise _Renamed(parts[0].path.name.rsplit(".", 1)[0])
        return VolumeSet(base, int(doc["volumeSize"]), int(doc["size"]), str(doc["sha256"]),
                         parts)
    except FileNotFoundError:
        raise BundleError(f"{path}: a part of a set without its {side.name}, which lists the "
                          "parts: copy it too", hint=f"the sidecar is written beside "
                          f"{base.name}.001 by `mirror pull --volume-size`") from None
    except OSError as e:
        raise BundleError(f"{side}: cannot read: {e.strerror}") from None
    except _Renamed as e:
        raise BundleError(f"{side}: lists the parts of {e.name} ({e.name}.001, ...), not of "
                          f"{base.name}: the set was renamed; rename its files back ({e.name}.001, ..., "
                          f"{e.name}{SIDECAR})", hint="the names are written inside the "
                          "sidecars") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BundleError(f"{side}: not a valid list of parts") from None


class _Renamed(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def problems(vs: VolumeSet, *, hashes: bool, stop: threading.Event | None = None
             ) -> list[str]:
    """One line per part that is missing, too short or too long, damaged (its sha256), or
    there but not in the set (an extra part: `site.tar.004` of a larger, older set). With
    `hashes`, every part is read once (the whole file's sha256 too, from the same reads)."""
    found: list[str] = []
    whole = hashlib.sha256()
    whole_ok = True
    listed = {p.path.name for p in vs.parts}
    for p in vs.parts:
        try:
            size = p.path.stat().st_size
        except FileNotFoundError:
            found.append(f"part {p.path.name}: missing (expected {p.size} bytes, sha256 {p.sha256}): "
                         "copy it again")
            whole_ok = False
            continue
        except OSError as e:
            found.append(f"part {p.path.name}: cannot read: {e.strerror}: copy it again")
            whole_ok = False
            continue
        if size != p.size:
            cut = "truncated" if size < p.size else "too long"
            found.append(f"part {p.path.name}: {cut}: {size} bytes, expected {p.size}: copy it again")
            whole_ok = False
            continue
        if not hashes:
            continue
        h = hashlib.sha256()
        with open(p.path, "rb") as f:
            while chunk := f.read(CHUNK):
                if stop is not None and stop.is_set():
                    raise MirrorError("interrupted while checking the parts")
                h.update(chunk)
                whole.update(chunk)
        if h.hexdigest() != p.sha256:
            found.append(_damaged(vs, p, h.hexdigest()))
            whole_ok = False
    for extra in _numbered(vs.base):
        if extra.name not in listed and not _own_bundle(extra):
            found.append(f"part {extra.name}: not a part of this set ({vs.sidecar.name} lists "
                         f"{len(vs.parts)}): an extra part, from another set; remove it")
    if hashes and whole_ok and whole.hexdigest() != vs.sha256:
        found.append(f"{vs.sidecar.name}: the parts' concatenation has sha256 "
                     f"{whole.hexdigest()}, the sidecar says {vs.sha256}")
    return found


def _damaged(vs: VolumeSet, p: Part, got: str) -> str:
    return (f"part {p.path.name}: damaged: sha256 {got}, expected {p.sha256} (from "
            f"{vs.sidecar.name}; a part renamed, or bytes changed): copy it again")


class PartHasher:
    """Each part's sha256 from reads of the whole file in order (verify's one pass over the
    bundle), so the parts need not be read again to say which one is damaged."""

    def __init__(self, vs: VolumeSet) -> None:
        self.vs = vs
        self._i = 0
        self._left = vs.parts[0].size if vs.parts else 0
        self._h = hashlib.sha256()
        self._got: list[str] = []

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while len(view) and self._i < len(self.vs.parts):
            n = min(self._left, len(view))
            self._h.update(view[:n])
            view = view[n:]
            self._left -= n
            if self._left == 0:
                self._got.append(self._h.hexdigest())
                self._h = hashlib.sha256()
                self._i += 1
                self._left = self.vs.parts[self._i].size if self._i < len(self.vs.parts) else 0

    def problems(self, stop: threading.Event | None = None) -> list[str]:
        """One line per damaged part; when the reads stopped short of the end (a bundle that
        cannot be read to its end), the parts are read again for their sha256."""
        if len(self._got) < len(self.vs.parts):
            return problems(self.vs, hashes=True, stop=stop)
        return [_damaged(self.vs, p, got) for p, got in zip(self.vs.parts, self._got,
                                                              strict=True) if got != p.sha256]


def check(vs: VolumeSet, name: str, *, hashes: bool) -> None:
    """Raise BundleError (exit 10) naming the first part wrong, before anything is read."""
    found = problems(vs, hashes=hashes)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise BundleError(f"{name}: {found[0]}{more}", hint=f"`mirror verify {vs.sidecar}` says which "
                          "parts to copy again" if more else None)


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


# -- writing ------------------------------------------------------------------------------

def publish(tmp: Path, out: Path, hexdigest: str, volume_size: int | None,
            stop: threading.Event | None = None) -> bool:
    """Name the finished, fsynced bundle `tmp` as `out` (and its `.sha256`), or, with
    `volume_size`, as the parts of `out` and their sidecars. False when `stop` was set before
    anything was named (then `tmp` may be gone; the caller removes what is left of it)."""
    old = _old_set(out)
    if volume_size is None:
        if stop is not None and stop.is_set():
            return False
        os.replace(tmp, out)
        write_sidecar(out, hexdigest)
        if old is not None:  # a set this output was before: gone once the file is named
            _remove(old, keep=set())
        return True
    parts = _split(tmp, out, volume_size, stop)
    if parts is None:
        return False
    vs = VolumeSet(out, volume_size, sum(p.size for p in parts), hexdigest, tuple(parts))
    # the old set stops being one (its sidecar goes first), then the new parts are named,
    # then the new sidecars; a run stopped in between leaves parts without a sidecar, which
    # no reader takes for a set
    side = sidecar_path(out)
    with contextlib.suppress(FileNotFoundError):
        side.unlink()
    for p in parts:
        os.replace(p.path.with_name(p.path.name + ".partial"), p.path)
    _write_atomic(out.with_name(out.name + PARTS_SUMS), _sums(parts))
    write_sidecar(out, hexdigest)
    _write_atomic(side, vs.to_json())
    if old is not None:
        _remove(old, keep={p.path.name for p in parts})
    _remove_strays(out, keep={p.path.name for p in parts})
    with contextlib.suppress(FileNotFoundError):
        out.unlink()  # a single-file bundle this output was before
    return True


def _sums(parts: tuple[Part, ...] | list[Part]) -> bytes:
    return "".join(f"{p.sha256}  {p.path.name}\n" for p in parts).encode()


def restore_sums(vs: VolumeSet) -> None:
    """`OUT.parts.sha256` as the (checked) sidecar says, when it is missing or not that: a
    rerun that finds the set unchanged leaves no set without its sha256sum file."""
    path = vs.base.with_name(vs.base.name + PARTS_SUMS)
    want = _sums(vs.parts)
    try:
        if path.read_bytes() == want:
            return
    except OSError:
        pass
    _write_atomic(path, want)


def write_sidecar(out: Path, hexdigest: str) -> None:
    """`<out>.sha256` in sha256sum's format, so `sha256sum -c` checks the carried file."""
    side = out.with_name(out.name + ".sha256")
    side_tmp = side.with_name(side.name + ".partial")
    try:
        side_tmp.write_text(f"{hexdigest}  {out.name}\n")
        os.replace(side_tmp, side)
    except OSError as e:  # a full disk, a directory in its place: name the file, leave no tmp
        with contextlib.suppress(OSError):
            side_tmp.unlink(missing_ok=True)
        raise MirrorError(f"{side}: cannot write the checksum file: {e.strerror or e}") from None


def _old_set(out: Path) -> VolumeSet | None:
    try:
        return find(sidecar_path(out)) if sidecar_path(out).exists() else None
    except BundleError:
        return None


def _remove(old: VolumeSet, keep: set[str]) -> None:
    for p in old.parts:
        if p.path.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                p.path.unlink()
    if not keep:
        for extra in (old.sidecar, old.base.with_name(old.base.name + PARTS_SUMS)):
            with contextlib.suppress(FileNotFoundError):
                extra.unlink()


def _numbered(base: Path, partial: bool = False) -> list[Path]:
    """The files named as parts of `base` (`base.NNN`, with `partial` `base.NNN.partial`
    too), sorted; matched by name, not by a glob (a base name may hold `[`, `*`, `?`)."""
    pattern = re.compile(re.escape(base.name) + r"\.\d{3,}" + (r"(?:\.partial)?" if partial
                                                              else ""))
    try:
        return sorted(p for p in base.parent.iterdir() if pattern.fullmatch(p.name))
    except OSError:
        return []


def _remove_strays(out: Path, keep: set[str]) -> None:
    """Remove `out.NNN` (and `out.NNN.partial`) files the new set does not have: parts of a
    set whose sidecar is gone (a pull killed while it named its parts, a sidecar deleted),
    which no sidecar lists, so `_remove` misses them, and which every reader would refuse
    as extra parts of the new set (and no rerun would ever call it unchanged). A file with
    its own .sha256 is a bundle of its own (night.001), never removed."""
    for p in _numbered(out, partial=True):
        if p.name not in keep and not _own_bundle(p):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _split(tmp: Path, out: Path, size: int, stop: threading.Event | None) -> list[Part] | None:
    """Cut `tmp` into `out.NNN.partial` parts from its end, truncating it as each is copied
    (the first part is `tmp` itself, renamed); each part fsynced and hashed."""
    total = tmp.stat().st_size
    n = max(1, -(-total // size))
    parts: list[Part] = [Part(part_path(out, 1), 0, "")] * n
    made: list[Path] = []
    try:
        with open(tmp, "r+b", buffering=0) as src:
            for i in range(n, 1, -1):
                if stop is not None and stop.is_set():
                    raise _Stopped()
                start = (i - 1) * size
                dest = part_path(out, i)
                part_tmp = dest.with_name(dest.name + ".partial")
                made.append(part_tmp)
                parts[i - 1] = Part(dest, total - start, _copy(src, start, total, part_tmp))
                src.truncate(start)
                os.fsync(src.fileno())
                total = start
            src.seek(0)
            h = hashlib.sha256()
            while chunk := src.read(CHUNK):
                h.update(chunk)
            parts[0] = Part(part_path(out, 1), total, h.hexdigest())
        first = part_path(out, 1)
        os.replace(tmp, first.with_name(first.name + ".partial"))
        return parts
    except _Stopped:
        _unlink(made)
        return None
    except OSError as e:
        _unlink(made)
        raise naming(e, tmp) from None
    except BaseException:
        _unlink(made)
        raise


class _Stopped(Exception):
    pass


def _copy(src: BinaryIO, start: int, end: int, dest: Path) -> str:
    h = hashlib.sha256()
    src.seek(start)
    with open(dest, "wb") as f:
        left = end - start
        while left > 0:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                raise OSError(f"{dest}: the bundle ended early")
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


def _unlink(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise MirrorError(f"{path}: cannot write: {e.strerror or e}") from None
