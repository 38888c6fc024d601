"""Write a bundle tar from the blob store: deterministic, verified, atomic.

Member order: oci-layout, index.json, mirror.json, manifest.json (Docker's save format, for
`docker load` and `podman load`: mirror.bundle.dockersave), blobs/, blobs/sha256/, the
manifests (so a streaming reader can plan before the big blobs arrive), then every other blob
sorted by digest. Headers are fixed (PAX, mode 0644/0755, mtime 0, uid/gid 0, no user names), so the
same images give the same bytes. The tar is written to `<out>.partial` and renamed into
place only when complete; `<out>.sha256` is written beside it.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, cast

from mirror.bundle import volumefile, volumes
from mirror.bundle.layout import DOCKER_JSON, MIRROR_JSON, OCI_LAYOUT, Piecewise, blob_name
from mirror.bundle.trailer import is_zstd
from mirror.digest import Verifier, sha256_file
from mirror.errors import IntegrityError, MirrorError, SizeMismatch, naming
from mirror.fileobj import Writable
from mirror.manifest import RawManifest
from mirror.store.blobs import BlobStore

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


def _header_size(name: str, size: int) -> int:
    """len(_header(name, size)) of a file, without making it: one 512-byte block when the
    ustar fields hold the name (ASCII, at most 100 bytes) and the size (under 8 GiB), as
    for every blob; otherwise the header with its PAX extension, made and measured."""
    if size < 8 ** 11 and len(name) <= 100 and name.isascii():
        return tarfile.BLOCKSIZE
    return len(_header(name, size))


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


HeadFile = bytes | Piecewise  # a file of the head: its bytes, or made piece by piece


def head_files(index_json: HeadFile, inventory_json: HeadFile, docker_json: HeadFile | None
               ) -> list[tuple[str, Piecewise]]:
    """The files before blobs/, in their order (the one list the writer, the assembler and
    `tar_size` lay out). manifest.json comes after mirror.json: a streaming reader plans
    once it holds index.json and mirror.json."""
    files = [("oci-layout", OCI_LAYOUT), ("index.json", index_json),
             (MIRROR_JSON, inventory_json)]
    if docker_json is not None:
        files.append((DOCKER_JSON, docker_json))
    return [(name, Piecewise.of(data)) for name, data in files]


def head_member(name: str, data: Piecewise) -> Iterator[bytes]:
    """A file of the head as it goes into the tar: its header, its pieces, its padding.
    Raises MirrorError when the pieces are not the size the tar was laid out for (the
    images changed between the two passes): every member after it would be misplaced."""
    yield _header(name, data.size)
    n = 0
    for piece in data:
        n += len(piece)
        if n > data.size:
            break
        yield piece
    if n != data.size:
        raise MirrorError(f"{name}: made as {n} bytes where the bundle was laid out for "
                          f"{data.size}: the images changed while the bundle was written")
    yield _pad(data.size)


def write_bundle(
    out: Path,
    *,
    index_json: HeadFile,
    inventory_json: HeadFile,
    manifests: Iterable[RawManifest],
    blobs: Iterable[BlobItem],
    store: BlobStore,
    compress: bool,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    docker_json: HeadFile | None = None,
    volume_size: int | None = None,
) -> str:
    """Write the bundle (as parts of `volume_size`, when given: mirror.bundle.volumes);
    return the sha256 of the file. Raises IntegrityError if a cached blob no longer matches
    its digest (the entry is evicted; the next run fetches it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    try:
        with open(tmp, "wb") as raw:
            hw = _HashingWriter(raw)
            if compress:
                import zstandard

                cctx = zstandard.ZstdCompressor(level=3, threads=-1)
                # zstandard's stubs ask for an IO[bytes]; its writer needs only write()
                zw = cctx.stream_writer(cast(IO[bytes], hw), closefd=False, write_size=BUF)
                sink: Writable = zw
            else:
                sink = hw

            def member(name: str, data: bytes) -> None:
                sink.write(_header(name, len(data)) + data + _pad(len(data)))

            for name, doc in head_files(index_json, inventory_json, docker_json):
                for piece in head_member(name, doc):
                    sink.write(piece)
            sink.write(_header("blobs/", 0, is_dir=True))
            sink.write(_header("blobs/sha256/", 0, is_dir=True))
            for m in manifests:  # each read back from the cache's store, one at a time
                member(blob_name(m.digest), m.data)
            for item in blobs:
                _copy_blob(sink, store, item, progress, stop)
            sink.write(b"\0" * 1024)
            if compress:
                zw.flush(zstandard.FLUSH_FRAME)
                zw.close()
            raw.flush()
            os.fsync(raw.fileno())
        from mirror.bundle import publish

        if not publish.publish(tmp, out, hw.h.hexdigest(), volume_size, stop):
            raise MirrorError(f"{out}: interrupted while writing the bundle")
    except OSError as e:  # a full disk: the error line names the bundle being written
        tmp.unlink(missing_ok=True)
        raise naming(e, tmp) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return "sha256:" + hw.h.hexdigest()


def tar_size(index_json: HeadFile, inventory_json: HeadFile,
             manifests: list[RawManifest], blobs: list[BlobItem],
             docker_json: HeadFile | None = None) -> int:
    """The exact size of the uncompressed tar write_bundle would write."""

    def member(name: str, size: int) -> int:
        return _header_size(name, size) + size + len(_pad(size))

    total = sum(member(n, d.size) for n, d in head_files(index_json, inventory_json,
                                                         docker_json))
    total += len(_header("blobs/", 0, is_dir=True)) + len(_header("blobs/sha256/", 0,
                                                                    is_dir=True))
    total += sum(member(blob_name(m.digest), m.size) for m in manifests)
    total += sum(member(blob_name(b.digest), b.size) for b in blobs)
    return total + 1024


class Prehash:
    """The sha256 of the bundle already at the output, read in a thread while the run
    plans, for `unchanged`: a nightly run with nothing new finds it ready instead of reading
    the whole file once planning is done. `stop()` ends the read (the run writes a new
    bundle, or is stopping). The digest stands only for the file it read: same inode, size,
    mtime and ctime when asked as before and after the read."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._stop = threading.Event()
        from mirror.store.iowork import IO_POOL

        self._future = IO_POOL.submit(self._read)

    @classmethod
    def start(cls, out: Path) -> Prehash | None:
        """Reading only a plain bundle with its .sha256 beside it (what `unchanged` hashes)."""
        if not (out.is_file() and out.with_name(out.name + ".sha256").is_file()):
            return None
        return cls(out)

    def _read(self) -> tuple[tuple[int, ...], str] | None:
        try:
            before = _identity(self.out)
            h = hashlib.sha256()
            # into one buffer: a new 4 MiB bytes per read was a fresh mapping to fault in
            # each time (a 30 MiB bundle: 29.8 -> 25.9 ms of CPU)
            buf = bytearray(BUF)
            view = memoryview(buf)
            with open(self.out, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    if self._stop.is_set():
                        return None
                    h.update(view[:n])
            return (before, "sha256:" + h.hexdigest()) if _identity(self.out) == before \
                else None
        except OSError:
            return None

    def digest(self) -> str | None:
        """The file's sha256 (waits for the read), or None: stopped, unreadable, or the file
        changed since."""
        try:
            got = self._future.result()
            return got[1] if got is not None and _identity(self.out) == got[0] else None
        except OSError:
            return None

    def stop(self) -> None:
        self._stop.set()


def _identity(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def unchanged(out: Path, index_json: HeadFile, inventory_json: HeadFile, size: int | None,
              docker_json: HeadFile | None = None, volume_size: int | None = None,
              prehash: Prehash | None = None) -> str | None:
    """The digest of an existing bundle at `out` that already holds exactly this content
    (same index.json, inventory and manifest.json, which pin every blob by digest and size;
    same size for a plain tar; the same parts, for `volume_size`) and is undamaged (the file
    hashes to its `.sha256`; each part to its sha256 in the sidecar), else None. Lets a
    nightly run with nothing new skip rewriting gigabytes; reading them once is the price of
    never calling a damaged bundle unchanged (a byte changed in place keeps size and
    mtime). `prehash`: the file's sha256 read while the run planned."""

    side = out.with_name(out.name + ".sha256")
    try:
        digest, name = side.read_text().split()[:2]
        if name != out.name:
            return None
        same, vs = _same_shape(out, side, digest, size, volume_size)
        if not same:
            return None
        with volumefile.open_read(out) as raw:
            if not _same_head(raw, size, head_files(index_json, inventory_json, docker_json)):
                return None
        if vs is None:
            got = (prehash.digest() if prehash is not None else None) or sha256_file(out)
            return "sha256:" + digest if got == "sha256:" + digest else None
        from mirror.bundle import publish, volumecheck  # --volume-size's parts

        if volumecheck.problems(vs, hashes=True):
            return None
        publish.restore_sums(vs)  # the sidecar is right: the sha256sum file follows it
        return "sha256:" + digest
    except (OSError, ValueError, tarfile.TarError, MirrorError):
        return None


def _same_shape(out: Path, side: Path, digest: str, size: int | None,
                volume_size: int | None) -> tuple[bool, volumes.VolumeSet | None]:
    """Whether what is at `out` can be the bundle asked for, by its size (or its set's
    sidecar, for `volume_size`), before a byte of it is read; and the set."""
    if volume_size is None:
        if volumes.base_of(out) is not None:
            return False, None  # only parts there: a pull without volumes writes the file
        st = out.stat()
        # another file, or the bundle changed after its .sha256 was written
        return not ((size is not None and st.st_size != size) or
                    st.st_mtime > side.stat().st_mtime), None
    vs = volumes.find(volumes.sidecar_path(out))
    same = vs is not None and vs.volume_size == volume_size and vs.sha256 == digest and \
        (size is None or vs.size == size) and not out.exists()
    return same, vs


def _same_head(raw: BinaryIO, size: int | None, files: list[tuple[str, Piecewise]]) -> bool:
    """The bundle read from `raw` starts with these files (a .tar.zst when `size` is None):
    False too for a .tar.zst that does not decompress."""
    if is_zstd(raw.read(4)):
        if size is not None:
            return False
        raw.seek(0)
        import zstandard  # a .tar.zst only: a plain bundle's run does not import it

        try:
            return _starts_with(zstandard.ZstdDecompressor().stream_reader(raw), files)
        except zstandard.ZstdError:
            return False
    if size is None:
        return False
    raw.seek(0)
    return _starts_with(raw, files)


def _starts_with(stream: BinaryIO, files: list[tuple[str, Piecewise]]) -> bool:
    want = dict(files[1:])
    with tarfile.open(fileobj=stream, mode="r|") as tf:
        for ti in tf:
            if ti.name == "oci-layout":
                continue
            f = tf.extractfile(ti)
            doc = want.pop(ti.name, None)
            if doc is None or f is None or ti.size != doc.size:
                return False
            h = hashlib.sha256()
            while data := f.read(BUF):
                h.update(data)
            if h.digest() != doc.sha256:
                return False
            if not want:
                break
    return not want


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
