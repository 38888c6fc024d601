"""The finished bundle named: the writers (mirror.bundle.assembler, mirror.bundle.writer)
write the whole file as ever and hand it to `publish()`, which names it as one file with its
`.sha256`, or, with `--volume-size`, cuts it into parts (mirror.bundle.volumes) from its end
(each part copied out, then the file truncated: the disk holds one part more than the bundle,
never two bundles) and names them all at once: nothing of the new set is named before every
part is written, and the old set's parts are removed only after the new set's sidecar is in
place."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from pathlib import Path
from typing import BinaryIO

from mirror.bundle.volumes import (
    CHUNK,
    PARTS_SUMS,
    Part,
    VolumeSet,
    find,
    numbered,
    own_bundle,
    part_path,
    sidecar_path,
)
from mirror.errors import BundleError, MirrorError, naming


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


def _remove_strays(out: Path, keep: set[str]) -> None:
    """Remove `out.NNN` (and `out.NNN.partial`) files the new set does not have: parts of a
    set whose sidecar is gone (a pull killed while it named its parts, a sidecar deleted),
    which no sidecar lists, so `_remove` misses them, and which every reader would refuse
    as extra parts of the new set (and no rerun would ever call it unchanged). A file with
    its own .sha256 is a bundle of its own (night.001), never removed."""
    for p in numbered(out, partial=True):
        if p.name not in keep and not own_bundle(p):
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
    """Bytes [start, end) of the bundle into the part `dest` (`OUT.NNN.partial`). An error
    writing it names the part (a full disk: it is the file that did not fit, not the
    bundle); one reading the bundle is left to name the bundle."""
    h = hashlib.sha256()
    src.seek(start)
    try:
        f = open(dest, "wb", buffering=0)  # unbuffered: no write left for close() to fail
    except OSError as e:
        raise _unwritten(e, dest) from None
    with f:
        left = end - start
        while left > 0:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                raise OSError(f"{dest}: the bundle ended early")
            h.update(chunk)
            try:
                view, n = memoryview(chunk), 0
                while n < len(chunk):  # short writes are legal (a disk filling up)
                    n += f.write(view[n:]) or 0
                left -= len(chunk)
            except OSError as e:
                raise _unwritten(e, dest) from None
        try:
            os.fsync(f.fileno())
        except OSError as e:
            raise _unwritten(e, dest) from None
    return h.hexdigest()


def _unwritten(e: OSError, dest: Path) -> OSError:
    """`e` naming the part `dest` by its name (the `.partial` it is written as is removed),
    and, for a full disk, the room cutting needs."""
    part = dest.with_name(dest.name.removesuffix(".partial"))
    why = e.strerror or str(e)
    if e.errno == errno.ENOSPC:
        why += (" (cutting the bundle into parts needs room for the bundle and one part "
                "more; the previous set is kept)")
    return OSError(e.errno, why, str(part))


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
