"""What may follow the end of a bundle's tar: zeros (the end-of-archive blocks, and padding to
a record), and, in a .tar.zst, nothing but whole zstd frames. Bytes appended in transit make
`sha256sum -c` and `zstd -t` fail; the reader refuses them too (exit 10), for load and verify.
"""

from __future__ import annotations

from typing import BinaryIO

from mirror.fileobj import Readable

CHUNK = 1 << 20
_ZSTD_MAGIC = 0xFD2FB528
ZSTD_MAGIC = _ZSTD_MAGIC.to_bytes(4, "little")  # a zstd frame's first 4 bytes
_SKIPPABLE = 0x184D2A50  # 0x184D2A50..0x184D2A5F: a skippable frame (zstd allows them)
_SKIPPABLE_MASK = 0xFFFFFFF0


def is_zstd(magic: bytes) -> bool:
    """A file's first 4 bytes: a zstd frame, or a skippable one (zstd allows them anywhere,
    the first place too). Here, not in mirror.bundle.zstdstream: a plain bundle's reader and
    writer ask it without importing zstandard."""
    return magic == ZSTD_MAGIC or (
        len(magic) == 4 and int.from_bytes(magic, "little") & _SKIPPABLE_MASK == _SKIPPABLE)


def first_nonzero(f: Readable, start: int) -> int | None:
    """Read `f` to its end; the position of the first byte that is not zero, counting the
    first byte read as `start`; None when there is none."""
    pos = start
    while chunk := f.read(CHUNK):
        if chunk.count(0) != len(chunk):
            return pos + len(chunk) - len(chunk.lstrip(b"\0"))
        pos += len(chunk)
    return None


def zstd_frames_problem(f: BinaryIO) -> str | None:
    """Walk the zstd frames of a file by their headers (nothing is decompressed; give an
    unbuffered file, or each header costs a buffer's worth of reading): None when
    the file is whole frames end to end, else what is wrong (trailing bytes, or a frame cut
    short). The frames' content is checked by decompressing them (the reader does)."""
    size = f.seek(0, 2)
    pos = 0
    frames = 0
    while pos < size:
        f.seek(pos)
        head = f.read(4)
        magic = int.from_bytes(head, "little") if len(head) == 4 else None
        if magic is not None and magic & _SKIPPABLE_MASK == _SKIPPABLE:
            n = f.read(4)
            if len(n) < 4:
                return f"truncated: a skippable zstd frame is cut short at byte {pos}"
            pos += 8 + int.from_bytes(n, "little")
        elif magic == _ZSTD_MAGIC:
            end = _frame_end(f, pos, size)
            if end is None:
                return f"truncated: the zstd frame at byte {pos} is cut short"
            if end < 0:
                return f"not a valid zstd stream: a bad frame header or block at byte {-end}"
            pos = end
        else:
            what = "after the zstd stream" if frames else "where a zstd frame should start"
            return f"trailing data: {size - pos} byte(s) at byte {pos}, {what}"
        frames += 1
    if pos > size:
        return "truncated: the last zstd frame is cut short"
    return None


def _frame_end(f: BinaryIO, start: int, size: int) -> int | None:
    """The offset just past the zstd frame at `start`; None when the file ends inside it,
    minus the offset of a header or block that cannot be."""
    f.seek(start + 4)
    fhd = f.read(1)
    if not fhd:
        return None
    d = fhd[0]
    if d & 0x08:  # the reserved bit
        return -(start + 4)
    single = (d >> 5) & 1
    fcs = (1 if single else 0, 2, 4, 8)[d >> 6]
    pos = start + 5 + (0 if single else 1) + (0, 1, 2, 4)[d & 3] + fcs
    while True:
        f.seek(pos)
        bh = f.read(3)
        if len(bh) < 3:
            return None
        v = int.from_bytes(bh, "little")
        kind, bsize = (v >> 1) & 3, v >> 3
        if kind == 3:  # reserved block type
            return -pos
        pos += 3 + (1 if kind == 1 else bsize)  # an RLE block holds one byte
        if pos > size:
            return None
        if v & 1:  # the last block
            break
    pos += 4 if d & 0x04 else 0  # the content checksum
    return None if pos > size else pos
