"""The write path of a pull, below the network: the cache's direct-I/O file and the bundle
assembler's sha256, whatever order the writer and hasher threads run in. (End to end, every
pull test checks the same through skopeo, umoci and `sha256sum`.)"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from mirror.bundle.assembler import Assembler
from mirror.store.direct import ALIGN, STAGE, AppendFile


def pieces(rng: random.Random, data: bytes) -> list[bytes]:
    """`data` cut the way a socket cuts it: uneven pieces, some tiny, some large."""
    out, pos = [], 0
    while pos < len(data):
        n = rng.choice([1, 7, 511, 4096, 65_536, 200_003, STAGE + 3])
        out.append(data[pos:pos + n])
        pos += n
    return out


@pytest.mark.parametrize("size", [0, 1, ALIGN - 1, ALIGN, STAGE, STAGE + 1, 3 * STAGE + 12_345])
def test_append_file_holds_exactly_what_was_written(tmp_path: Path, size: int) -> None:
    rng = random.Random(size)
    data = rng.randbytes(size)
    f = AppendFile(tmp_path / "blob")
    for p in pieces(rng, data):
        f.write(p)
    f.close()
    assert (tmp_path / "blob").read_bytes() == data


def test_append_file_resumes_at_a_block_and_can_start_over(tmp_path: Path) -> None:
    rng = random.Random(1)
    data = rng.randbytes(2 * STAGE + 100)
    path = tmp_path / "blob"
    f = AppendFile(path)
    f.write(data[:STAGE + 5000])
    f.close()  # interrupted: the next run resumes from the last whole block
    start = (STAGE + 5000) // ALIGN * ALIGN
    assert path.stat().st_size == STAGE + 5000
    f = AppendFile(path, start)
    assert path.stat().st_size == start
    f.write(data[start:])
    f.close()
    assert path.read_bytes() == data

    f = AppendFile(path, 0)
    f.write(b"abc")
    f.reset()  # the server ignored our Range: from byte 0 again
    f.write(data[:ALIGN + 1])
    f.close()
    assert path.read_bytes() == data[:ALIGN + 1]


def test_append_file_at_an_unaligned_offset_writes_through_the_page_cache(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 1000)
    f = AppendFile(path, 1000)
    assert not f.direct  # O_DIRECT needs aligned offsets: the ordinary way instead
    f.write(b"y" * 5000)
    f.close()
    assert path.read_bytes() == b"x" * 1000 + b"y" * 5000


def _assemble(tmp_path: Path, blobs: dict[str, bytes], order: str, seed: int) -> Path:
    out = tmp_path / f"{order}-{seed}.tar"
    a = Assembler(out, index_json=b'{"schemaVersion":2}', inventory_json=b"{}",
                  manifests=[], blobs=[(d, len(b)) for d, b in blobs.items()])
    rng = random.Random(seed)
    jobs = []
    for digest, data in blobs.items():
        tee = a.tee(digest)
        assert tee is not None
        pos = 0
        for batch in _batches(rng, data):
            n = sum(len(c) for c in batch)
            jobs.append((tee, pos, batch))
            pos += n
    if order == "write-first":
        for tee, pos, batch in jobs:
            tee.put(pos, batch)
        for tee, pos, batch in jobs:
            tee.offer(pos, batch)
    elif order == "offer-first":
        for tee, pos, batch in jobs:
            tee.offer(pos, batch)
        for tee, pos, batch in jobs:
            tee.put(pos, batch)
    else:  # each blob in order on two threads (as a download's queues do), blobs at once
        def stream(fn: str, mine: list) -> None:
            for tee, pos, batch in mine:
                getattr(tee, fn)(pos, batch)

        threads = []
        for digest in blobs:
            mine = [j for j in jobs if j[0].base == a.offset(digest)[0]]
            threads += [threading.Thread(target=stream, args=("put", mine)),
                        threading.Thread(target=stream, args=("offer", mine))]
        rng.shuffle(threads)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    digest = a.finish()
    assert digest == "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest()
    return out


def _batches(rng: random.Random, data: bytes) -> list[list[bytes]]:
    chunks = pieces(rng, data)
    out: list[list[bytes]] = []
    while chunks:
        k = rng.randint(1, 4)
        out.append(chunks[:k])
        chunks = chunks[k:]
    return out


@pytest.mark.parametrize("order", ["write-first", "offer-first", "threads"])
def test_bundle_sha256_is_right_whichever_thread_gets_there_first(tmp_path: Path,
                                                                  order: str) -> None:
    rng = random.Random(7)
    blobs = {f"sha256:{i:064x}": rng.randbytes(n)
             for i, n in enumerate([3 * STAGE + 17, 0, 1, 700_000, 2 * STAGE])}
    for seed in range(3):
        out = _assemble(tmp_path, blobs, order, seed)
        with tarfile.open(out) as tar:
            for digest, data in blobs.items():
                member = tar.extractfile(f"blobs/sha256/{digest.split(':')[1]}")
                assert member is not None and member.read() == data


def test_a_full_disk_is_an_os_error_not_a_buffer_error(tmp_path: Path) -> None:
    """A write that fails (here EFBIG from a file size limit, as ENOSPC would on a full
    disk) must reach the user as the OSError it is: the CLI turns that into one line. The
    failed write's traceback still holds a view of the staging buffer; closing must cope."""
    script = f"""
import os, resource, signal, sys
from pathlib import Path
from mirror.store.direct import AppendFile
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
f = AppendFile(Path({str(tmp_path / "blob")!r}))
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
kept = []
try:
    f.write(os.urandom(3 << 20))
except OSError as e:
    kept.append(e)  # as a download's batch keeps its error until it is waited for
try:
    f.close()
except OSError as e:
    print("close:", type(e).__name__, e.errno)
print("write:", type(kept[0]).__name__, kept[0].errno, "fd:", f.fd)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"write: OSError {errno.EFBIG} fd: -1" in out.stdout
    assert "BufferError" not in out.stdout + out.stderr


@pytest.mark.parametrize("mode", ["streaming", "unavailable", "refused"])
def test_writeback_as_we_go_or_fdatasync_else(tmp_path: Path, mode: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundle's writeback is started every few MiB (sync_file_range) where the system
    can; where it cannot, or the filesystem refuses it, an fdatasync now and then instead.
    Either way the bundle is whole and its sha256 right."""
    from mirror.bundle import assembler
    from mirror.store import writeback

    calls = {"start": 0, "fdatasync": 0}
    real_start, real_fdatasync = writeback.start, os.fdatasync

    def start(fd: int) -> bool:
        calls["start"] += 1
        return real_start(fd) if mode == "streaming" else False

    def fdatasync(fd: int) -> None:
        calls["fdatasync"] += 1
        real_fdatasync(fd)

    monkeypatch.setattr(writeback, "EVERY", 64 << 10)
    monkeypatch.setattr(assembler, "_FLUSH_EVERY", 256 << 10)
    monkeypatch.setattr(writeback, "start", start)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    if mode == "unavailable":
        monkeypatch.setattr(writeback, "available", lambda: False)
    elif mode == "streaming":  # Linux always has it (the suite runs on Linux: conftest)
        assert writeback.available(), "sync_file_range not found on Linux"
    rng = random.Random(3)
    blobs = {f"sha256:{i:064x}": rng.randbytes(n) for i, n in enumerate([3 << 20, 700_000])}
    out = _assemble(tmp_path, blobs, "threads", 0)
    with tarfile.open(out) as tar:
        for digest, data in blobs.items():
            member = tar.extractfile(f"blobs/sha256/{digest.split(':')[1]}")
            assert member is not None and member.read() == data
    # (how many depends on the threads: one writeback at a time, a busy one is not queued)
    if mode == "streaming":
        assert calls["start"] >= 1 and calls["fdatasync"] == 0
    elif mode == "unavailable":
        assert calls["start"] == 0 and calls["fdatasync"] >= 1
    else:  # refused once, then an fdatasync in its place and from there on
        assert calls["start"] == 1 and calls["fdatasync"] >= 1


def test_writeback_start_works_on_a_real_file(tmp_path: Path) -> None:
    from mirror.store import writeback

    with open(tmp_path / "f", "wb") as f:
        f.write(os.urandom(1 << 20))
        assert writeback.start(f.fileno())


def _one_blob_assembler(tmp_path: Path) -> tuple[Assembler, Path, bytes]:
    data = random.Random(5).randbytes(3 << 20)
    out = tmp_path / "b.tar"
    a = Assembler(out, index_json=b'{"schemaVersion":2}', inventory_json=b"{}", manifests=[],
                  blobs=[("sha256:" + hashlib.sha256(data).hexdigest(), len(data))])
    return a, out, data


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
def test_a_writeback_error_is_never_lost_the_bundle_is_not_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    """The kernel reports a failed writeback once per open file: when the background
    writeback hears of it, the final fsync may succeed. The bundle must still not be named."""
    from mirror.store import writeback

    monkeypatch.setattr(writeback, "EVERY", 64 << 10)
    monkeypatch.setattr(writeback, "available", lambda: True)
    monkeypatch.setattr(writeback, "_call", lambda fd: err)
    a, out, data = _one_blob_assembler(tmp_path)
    tee = a.tee(next(iter(a.order)))
    assert tee is not None
    for pos in range(0, len(data), 1 << 20):
        tee.write(pos, data[pos:pos + (1 << 20)])
    with pytest.raises(OSError) as exc:
        a.finish()
    assert exc.value.errno == err and exc.value.filename == str(a.tmp)
    a.abort()
    assert not out.exists() and not a.tmp.exists()


def test_no_thread_for_a_writeback_is_no_hang(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from mirror.bundle import assembler
    from mirror.store import writeback

    class NoThreads(threading.Thread):
        def start(self) -> None:
            if getattr(self._target, "__name__", "") == "_writeback":  # type: ignore[attr-defined]
                raise RuntimeError("can't start new thread")
            super().start()

    monkeypatch.setattr(writeback, "EVERY", 64 << 10)
    monkeypatch.setattr(assembler.threading, "Thread", NoThreads)
    a, out, data = _one_blob_assembler(tmp_path)
    tee = a.tee(next(iter(a.order)))
    assert tee is not None
    for pos in range(0, len(data), 1 << 20):
        tee.write(pos, data[pos:pos + (1 << 20)])
    done = threading.Event()
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: (result.append(a.finish()), done.set()))
    worker.start()
    assert done.wait(30), "finish() hung"
    assert result[0] == "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest()


def test_a_head_document_that_changes_between_its_passes_is_an_error_not_a_bad_tar(
        tmp_path: Path) -> None:
    """index.json, mirror.json and manifest.json are made once for their size (the tar's
    layout) and again as they are written (mirror.bundle.layout.Piecewise): bytes of another
    length the second time would shift every member after them, so the write stops, and
    nothing is named."""
    from mirror.bundle.layout import Piecewise
    from mirror.bundle.writer import write_bundle
    from mirror.errors import MirrorError
    from mirror.store.blobs import BlobStore

    made: list[int] = []

    def index() -> list[bytes]:
        made.append(1)
        return [b'{"schemaVersion":2', b"}" * len(made)]

    out = tmp_path / "a.tar"
    with pytest.raises(MirrorError, match="index.json"):
        Assembler(out, index_json=Piecewise(index), inventory_json=b"{}", manifests=[],
                  blobs=[])
    assert not out.exists() and not out.with_name("a.tar.partial").exists()
    made.clear()
    out = tmp_path / "b.tar"
    with pytest.raises(MirrorError, match="index.json"):
        write_bundle(out, index_json=Piecewise(index), inventory_json=b"{}", manifests=[],
                     blobs=[], store=BlobStore(tmp_path / "cache"), compress=False)
    assert not out.exists() and not out.with_name("b.tar.partial").exists()
