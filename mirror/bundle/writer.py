"""Write a bundle tar from the blob store: deterministic, verified, atomic.

Member order: oci-layout, index.json, mirror.json, manifest.json (Docker's save format, for
`docker load` and `podman load`: mirror.bundle.dockersave), blobs/, blobs/sha256/, the
manifests (so a streaming reader can plan before the big blobs arrive), then every other blob
sorted by digest. Headers are fixed (PAX, mode 0644/0755, mtime 0, uid/gid 0, no user names), so the
same images give the same bytes. The tar is written to `<out>.partial` and renamed into
place only when complete; `<out>.sha256` is written beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, cast

import zstandard

from mirror.bundle.layout import DOCKER_JSON, MIRROR_JSON, OCI_LAYOUT, blob_name
from mirror.digest import Verifier
from mirror.errors import IntegrityError, MirrorError, SizeMismatch, naming
from mirror.fileobj import Writable
from mirror.store.blobs import BlobStore, sha256_file

BUF = 1 << 20


@dataclass(frozen=True, slots=True)
class BlobItem:
    digest: str
    size: int
    verify: bool  # re-hash while writing (a cache hit); fresh downloads were just verified


def _header(name: str, size: int, *, is_dir: bool = False) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size = 0 if is_dir else size
    ti.mode = 0o755 if is_dir else 0o644
    ti.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti.tobuf(format=tarfile.PAX_FORMAT)


class _HashingWriter:
    """Counts and hashes what goes to the file, for the .sha256 beside the bundle."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, data: bytes | memoryview) -> int:
        self.h.update(data)
        self.n += len(data)
        return self.f.write(data)


def _pad(n: int) -> bytes:
    return b"\0" * ((512 - n % 512) % 512)


def head_files(index_json: bytes, inventory_json: bytes, docker_json: bytes | None
               ) -> list[tuple[str, bytes]]:
    """The files before blobs/, in their order (the one list the writer, the assembler and
    `tar_size` lay out). manifest.json comes after mirror.json: a streaming reader plans
    once it holds index.json and mirror.json."""
    files = [("oci-layout", OCI_LAYOUT), ("index.json", index_json),
             (MIRROR_JSON, inventory_json)]
    if docker_json is not None:
        files.append((DOCKER_JSON, docker_json))
    return files


def write_bundle(
    out: Path,
    *,
    index_json: bytes,
    inventory_json: bytes,
    manifests: Iterable[tuple[str, bytes]],
    blobs: Iterable[BlobItem],
    store: BlobStore,
    compress: bool,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    docker_json: bytes | None = None,
) -> str:
    """Write the bundle; return the sha256 of the file. Raises IntegrityError if a cached
    blob no longer matches its digest (the entry is evicted; the next run fetches it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    try:
        with open(tmp, "wb") as raw:
            hw = _HashingWriter(raw)
            if compress:
                cctx = zstandard.ZstdCompressor(level=3, threads=-1)
                # zstandard's stubs ask for an IO[bytes]; its writer needs only write()
                zw = cctx.stream_writer(cast(IO[bytes], hw), closefd=False, write_size=BUF)
                sink: Writable = zw
            else:
                sink = hw

            def member(name: str, data: bytes) -> None:
                sink.write(_header(name, len(data)) + data + _pad(len(data)))

            for name, data in head_files(index_json, inventory_json, docker_json):
                member(name, data)
            sink.write(_header("blobs/", 0, is_dir=True))
            sink.write(_header("blobs/sha256/", 0, is_dir=True))
            for digest, data in manifests:
                member(blob_name(digest), data)
            for item in blobs:
                _copy_blob(sink, store, item, progress, stop)
            sink.write(b"\0" * 1024)
            if compress:
                zw.flush(zstandard.FLUSH_FRAME)
                zw.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    except OSError as e:  # a full disk: the error line names the bundle being written
        tmp.unlink(missing_ok=True)
        raise naming(e, tmp) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    digest = hw.h.hexdigest()
    write_sidecar(out, digest)
    return "sha256:" + digest


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


def tar_size(index_json: bytes, inventory_json: bytes, manifests: list[tuple[str, bytes]],
             blobs: list[BlobItem], docker_json: bytes | None = None) -> int:
    """The exact size of the uncompressed tar write_bundle would write."""

    def member(name: str, size: int) -> int:
        return len(_header(name, size)) + size + len(_pad(size))

    total = sum(member(n, len(d)) for n, d in head_files(index_json, inventory_json,
                                                         docker_json))
    total += len(_header("blobs/", 0, is_dir=True)) + len(_header("blobs/sha256/", 0,
                                                                    is_dir=True))
    total += sum(member(blob_name(d), len(data)) for d, data in manifests)
    total += sum(member(blob_name(b.digest), b.size) for b in blobs)
    return total + 1024


def unchanged(out: Path, index_json: bytes, inventory_json: bytes, size: int | None,
              docker_json: bytes | None = None) -> str | None:
    """The digest of an existing bundle at `out` that already holds exactly this content
    (same index.json, inventory and manifest.json, which pin every blob by digest and size;
    same size for a plain tar) and is undamaged (the file hashes to its `.sha256`), else
    None. Lets a nightly run with nothing new skip rewriting gigabytes; reading them once is
    the price of never calling a damaged bundle unchanged (a byte changed in place keeps
    size and mtime)."""

    side = out.with_name(out.name + ".sha256")
    try:
        digest, name = side.read_text().split()[:2]
        st = out.stat()
        if name != out.name or (size is not None and st.st_size != size) or \
                st.st_mtime > side.stat().st_mtime:
            return None  # another file, or the bundle changed after its .sha256 was written
        with open(out, "rb") as raw:
            if raw.read(4) == b"\x28\xb5\x2f\xfd":
                if size is not None:
                    return None
                raw.seek(0)
                stream: BinaryIO = zstandard.ZstdDecompressor().stream_reader(raw)
            elif size is None:
                return None
            else:
                raw.seek(0)
                stream = raw
            want = dict(head_files(index_json, inventory_json, docker_json)[1:])
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                for ti in tf:
                    if ti.name == "oci-layout":
                        continue
                    f = tf.extractfile(ti)
                    if ti.name not in want or f is None or f.read() != want.pop(ti.name):
                        return None
                    if not want:
                        break
            if want or sha256_file(out) != "sha256:" + digest:
                return None
            return "sha256:" + digest
    except (OSError, ValueError, tarfile.TarError, zstandard.ZstdError):
        return None
    return None


def _copy_blob(sink: Writable, store: BlobStore, item: BlobItem,
               progress: Callable[[int], None] | None,
               stop: threading.Event | None = None) -> None:
    path = store.path(item.digest)
    sink.write(_header(blob_name(item.digest), item.size))
    v = Verifier(item.digest, item.size, f"cache {path}") if item.verify else None
    copied = 0
    try:
        with open(path, "rb") as f:
            buf = bytearray(BUF)
            view = memoryview(buf)
            while n := f.readinto(buf):
                if stop is not None and stop.is_set():
                    raise MirrorError(f"{path}: interrupted while writing the bundle")
                chunk = view[:n]
                if v is not None:
                    v.update(chunk)
                sink.write(chunk)
                copied += n
                if progress:
                    progress(n)
        if v is not None:
            v.finish()
    except IntegrityError:
        store.evict(item.digest)  # a damaged cache entry; the next run fetches it again
        raise
    if copied != item.size:  # the header said item.size: the tar would be corrupt
        raise SizeMismatch(item.size, copied, f"cache {path}", item.digest)
    sink.write(_pad(item.size))
