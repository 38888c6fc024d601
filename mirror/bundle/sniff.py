"""Does a file start as a tar does? Tells a bundle cut short (truncated: copy it again) from a
file that never was one (a text file, a checksum file given by mistake)."""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from mirror.bundle.volumefile import open_read

_NUMERIC = re.compile(rb"^[0-7 \0]*$")  # mode, uid, gid, size, mtime, chksum: octal text
# (offset, end) of the numeric fields of a tar header
_FIELDS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (148, 156))


def head(path: Path, compressed: bool) -> bytes:
    """Up to the first 512 bytes of the tar (inside the zstd stream when `compressed`)."""
    with open_read(path) as f:
        if not compressed:
            return f.read(tarfile.BLOCKSIZE)
        import zstandard  # a .tar.zst's head only

        out = b""
        try:
            with zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as zr:
                while len(out) < tarfile.BLOCKSIZE:
                    data = zr.read(tarfile.BLOCKSIZE - len(out))
                    if not data:
                        break
                    out += data
        except zstandard.ZstdError:
            pass  # what was decoded before the stream broke off
        return out


def starts_as_tar(data: bytes) -> bool:
    """`data` (a file's first bytes, maybe fewer than a header) can be the start of a tar: a
    whole first header with a good checksum, or as much of one as there is: a NUL-padded name,
    octal numeric fields and, as far as it goes, the `ustar` magic (or a v7 header's NULs)."""
    if not data:
        return False
    if len(data) >= tarfile.BLOCKSIZE:
        if not data[: tarfile.BLOCKSIZE].strip(b"\0"):
            return True  # an end-of-archive block: an empty tar
        try:
            tarfile.TarInfo.frombuf(data[: tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            return False
        return True
    name, nul, pad = data[:100].partition(b"\0")
    if not name or (nul and pad.strip(b"\0")) or (not nul and len(data) < 100):
        return False
    if not all(_NUMERIC.match(data[a:b]) for a, b in _FIELDS):
        return False
    magic = data[257:263]
    return b"ustar\0"[: len(magic)] == magic or b"ustar "[: len(magic)] == magic or \
        not magic.strip(b"\0")
