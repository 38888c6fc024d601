"""`mirror verify`: check a bundle offline and list every problem found."""

from __future__ import annotations

import functools
import hashlib
import queue
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from mirror.bundle import consistency, volumecheck, volumefile, volumes
from mirror.bundle.members import blob_digest
from mirror.bundle.reader import Bundle, Contents
from mirror.digest import Digest, Verifier
from mirror.errors import BundleError, IntegrityError, MirrorError
from mirror.fileobj import Readable

# what verify reads of a blob at a time: 1 MiB from a plain tar (each read also goes to the
# file's sha256 on its own thread, two reads behind at most); 256 KiB from a .tar.zst's stream
# (tarfile joins a read out of 10 KiB pieces: larger reads cost time and copies). Peak RSS on
# a 1 GiB layer: 43 MiB (.tar), 47 MiB (.tar.zst); it was 56 and 66 MiB with 4 MiB reads.
CHUNK = 1 << 20
STREAM_CHUNK = 256 << 10
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
# a file whose sha256 does not match BUNDLE.sha256 while every blob matches its own digest:
# the change is where no digest of the bundle reaches
OUTSIDE_BLOBS = ("; every blob matches its digest, so the change is in what this sha256 alone "
                 "covers: index.json (the images' names and tags), mirror.json, manifest.json "
                 "or the tar's own headers; copy the bundle again")


class Stopped(Exception):
    """verify_bundle was told to stop (`stop` set: Ctrl-C or SIGTERM); not a problem found."""


class Problems(list):
    """The problems found, and the hint of the error that stopped the reading, if it had one
    (what to do about it, as load and inspect say it)."""

    hint: str | None = None

    @classmethod
    def of(cls, lines: list[str], hint: str | None) -> Problems:
        found = cls(lines)
        found.hint = hint
        return found


def verify_bundle(path: Path, note: Callable[[str], None] | None = None,
                  stop: threading.Event | None = None,
                  advanced: Callable[[int], None] | None = None) -> tuple[list[str], bool]:
    """Return the problems (empty when the bundle is sound) and whether any is structural (an
    unreadable tar or layout, trailing data, a missing blob, an inventory that does not match
    the bundle) rather than bytes that do not match their digest.
    Checks: the file against `BUNDLE.sha256` when there is one; a readable tar (nothing but
    zeros after its end; in a .tar.zst, nothing after the last zstd frame) with an OCI layout;
    index.json and every digest in it well formed; every blob's size and sha256; the mirror.json
    inventory against the bundle (mirror.bundle.consistency); every manifest's config, layers
    and children present, or absent on purpose.
    The bundle is read once: the file's own sha256 is taken from the same reads that hash the
    blobs (a 50 GB bundle is not read twice). Only a bundle that cannot be read to its end is
    read again, for the sha256 alone.
    Raises Stopped at the next read of the bundle once `stop` is set (verify runs on a worker
    thread, which the end of the run waits for: it must not read 50 GB first). `advanced` is
    given the size of every read of the bundle (a progress bar: the file's size in all)."""
    path = Path(path)
    stop = stop or threading.Event()
    early, hasher = _parts(path, stop)
    if early is not None:  # parts missing, cut short or extra: one line each, nothing read
        return early
    problems, structural = _verify_file(path, note or (lambda _: None), stop, advanced,
                                        hasher.update if hasher is not None else None)
    try:
        damaged = hasher.problems(stop) if hasher is not None else []
    except MirrorError:  # the parts read again (the bundle was not read to its end), stopped
        if stop.is_set():
            raise Stopped() from None
        raise
    if damaged:  # which parts to copy again, before what their bytes broke
        return Problems.of([*damaged, *problems], getattr(problems, "hint", None)), False
    return problems, structural


def _verify_file(path: Path, note: Callable[[str], None], stop: threading.Event,
                 advanced: Callable[[int], None] | None,
                 seen: Callable[[bytes], None] | None) -> tuple[list[str], bool]:
    """verify_bundle's checks of the file (or of the parts read as one: `seen` is given every
    read of it)."""
    want, side_problem = _sidecar(volumes.base_of(path) or path, note)
    whole = _Sha256Behind()

    def tap(data: bytes) -> None:  # given every read of the bundle
        if stop.is_set():
            raise Stopped()
        if want is not None:
            whole.update(data)
        if advanced is not None:
            advanced(len(data))
        if seen is not None:
            seen(data)

    blob_problems: list[str] = []
    failure: MirrorError | None = None
    contents = None

    def check(name: str, size: int, data: bytes | Readable | None) -> None:
        assert data is not None  # members(tap=...) gives every member a fileobj
        _check_blob(name, size, data, path, blob_problems,
                    STREAM_CHUNK if bundle.compressed else CHUNK, bundle.member_digests(name))

    try:
        bundle = Bundle(path, check_parts=False)  # _parts() checked them
        if bundle.compressed:
            contents = bundle.scan(check=False, visit=check, tap=tap)
        else:
            contents = bundle.scan(check=False)
            for name, size, f in bundle.members(tap=tap):
                check(name, size, f)
    except MirrorError as e:  # unreadable (structural), or a manifest with wrong bytes
        failure = e
    finally:
        whole.close()
    if want is not None:
        got = whole.hexdigest() if failure is None else _sha256_file(path, stop)
        side_problem = _sidecar_match(volumes.base_of(path) or path, want, got, note) \
            if got else None
    problems = [side_problem] if side_problem else []
    if failure is not None or contents is None:
        assert failure is not None
        stopped = Problems.of([*problems, *blob_problems, _own(failure, path)], failure.hint)
        return stopped, not isinstance(failure, IntegrityError)
    problems += blob_problems + _sizes(contents)
    found = consistency.problems(contents)
    if side_problem and problems == [side_problem] and not found and want is not None:
        problems = [side_problem + OUTSIDE_BLOBS]  # what changed, as near as it can be said
    return problems + found, bool(found)


def _sizes(contents: Contents) -> list[str]:
    """Every blob of the bundle at the size each manifest naming it says."""
    out = []
    for raw in contents.manifests.values():
        for d in raw.blobs():
            have = contents.members.get(d.digest)
            if have is not None and have != d.size:
                out.append(f"blob {d.digest}: {have} bytes, manifest {raw.digest} says {d.size}")
    return out


class _Sha256Behind:
    """The file's sha256 on a thread of its own, a few chunks behind the reads (hashlib
    releases the GIL), so the blobs' hashes and this one use two cores. Should the thread
    fail, it goes on taking reads (the reader never waits on a dead thread) and its error is
    raised at the next update, or by hexdigest."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=2)  # two reads behind, at most
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def update(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mirror-sha256", daemon=True)
            self._thread.start()
        self._q.put(data)

    def _run(self) -> None:
        while (data := self._q.get()) is not None:
            if self._error is None:
                try:
                    self._h.update(data)
                except BaseException as e:  # noqa: BLE001 - raised on the reading thread
                    self._error = e

    def close(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None

    def hexdigest(self) -> str:
        self.close()
        if self._error is not None:
            raise self._error
        return self._h.hexdigest()


def _own(e: MirrorError, path: Path) -> str:
    return str(e).removeprefix(f"{path}: ")


def _parts(path: Path, stop: threading.Event
           ) -> tuple[tuple[Problems, bool] | None, volumecheck.PartHasher | None]:
    """For a set of parts (mirror.bundle.volumes): one line per part to copy again that its
    size tells (missing, cut short, too long, or an extra one), and the hasher that tells the
    damaged ones from the one read of the bundle; (None, None) for a single file."""
    try:
        vs = volumes.find(path)
    except BundleError as e:  # a part given without its sidecar
        return (Problems.of([_own(e, path)], e.hint), True), None
    if vs is None:
        return None, None
    found = volumecheck.problems(vs, hashes=False)
    return ((Problems(found), False) if found else None), volumecheck.PartHasher(vs)


def _sidecar(path: Path, note: Callable[[str], None]) -> tuple[str | None, str | None]:
    """The sha256 `BUNDLE.sha256` (sha256sum's format, written by pull) says the file has,
    and the problem with the sidecar itself when there is one."""
    side = path.with_name(path.name + ".sha256")
    try:
        text = side.read_text(errors="replace")
    except FileNotFoundError:
        note(f"{path}: no {side.name} beside it; the file's own sha256 is not checked")
        return None, None
    except OSError as e:
        return None, f"cannot read {side}: {e.strerror}"
    want = text.split()[0] if text.split() else ""
    if not _HEX.match(want):
        return None, f"{side} is not a sha256sum line (expected '<64 hex>  {path.name}')"
    return want.lower(), None


def _sidecar_match(path: Path, want: str, got: str, note: Callable[[str], None]) -> str | None:
    """What `sha256sum -c` says, without leaving the directory: None when it matches."""
    side = path.with_name(path.name + ".sha256")
    if got != want:
        return (f"sha256 {got} does not match {side} (which says {want}): "
                "the file changed after it was written")
    note(f"{path}: matches {side.name}")
    return None


def _sha256_file(path: Path, stop: threading.Event) -> str | None:
    h = hashlib.sha256()
    try:
        with volumefile.open_read(path) as f:
            while chunk := f.read(CHUNK):
                if stop.is_set():
                    raise Stopped()
                h.update(chunk)
    except OSError:
        return None  # the bundle itself cannot be read: the reader says so
    return h.hexdigest()


def _check_blob(name: str, size: int, data: bytes | Readable, path: Path,
                problems: list[str], chunk: int, digests: list[str] | None = None) -> None:
    """Hash a blob member (its bytes, or a file to read them from) against its name (or the
    `digests` it holds: a docker-archive's layer, its diff_id; a layer file that links make
    several layers of, each of their diff_ids). A read that fails (a .tar.zst's stream
    breaking off: BundleError) is the bundle's problem, not this blob's, and is raised."""
    named = blob_digest(name)
    wanted = digests or ([named] if named is not None else [])
    if not wanted:
        return
    verifiers: list[Verifier] = []
    for digest in dict.fromkeys(wanted):
        try:
            Digest.parse(digest)
        except MirrorError:
            problems.append(f"{name}: not a valid blob name")
            continue
        verifiers.append(Verifier(digest, size, name))
    if not verifiers:
        return
    live = list(verifiers)
    if isinstance(data, bytes):
        pieces: Iterator[bytes] = iter((data,))
    else:
        pieces = iter(functools.partial(data.read, chunk), b"")
    for piece in pieces:
        for v in list(live):
            try:
                v.update(piece)
            except IntegrityError as e:  # too many bytes for its size
                problems.append(f"blob {v.digest}: {_own(e, path)}")
                live.remove(v)
        if not live:
            break
    for v in live:
        try:
            v.finish()
        except IntegrityError as e:  # its size or sha256 (Verifier)
            problems.append(f"blob {v.digest}: {_own(e, path)}")
