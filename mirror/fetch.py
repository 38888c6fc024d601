"""Getting blobs: each digest once per run (a shared task), from the cache when it holds it
(verified: cache entries are checked whenever they are reused), and into the bundle being
assembled: teed while it downloads, else copied from the cache.

Downloading lives here, for registry blobs and foreign URLs alike: the registry package gives
byte streams from an offset (`Client.open_blob`, `foreign.open_url`); this module writes them
into the cache's partial file, opens the stream again from where it broke off, and commits
the file once its digest checks out (or fetches it once more from byte 0)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, MutableSet
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mirror import mediatypes as mt
from mirror.aio import to_the_end
from mirror.digest import check_bytes
from mirror.errors import IntegrityError, RegistryError
from mirror.manifest import Descriptor
from mirror.progress import Progress
from mirror.registry.client import Client
from mirror.registry.foreign import UrlRefused, open_url, unserved
from mirror.registry.network import TransferError
from mirror.registry.ratelimit import BlobSlots
from mirror.store.blobs import BlobStore
from mirror.store.iowork import IO_POOL
from mirror.store.partial import PartialBlob

if TYPE_CHECKING:  # made only where a bundle is written (mirror.pull)
    from mirror.bundle.assembler import Assembler

PROGRESS_BYTES = 64 << 10  # a broken download that got this far starts a fresh retry count

T = TypeVar("T")
Opener = Callable[[int], AsyncGenerator[bytes, None]]  # offset -> the blob's bytes from there


class Fetcher:
    """One per run; shared by every image of the run."""

    def __init__(self, client: Client, store: BlobStore, jobs: int, progress: Progress) -> None:
        self.client = client
        self.store = store
        # `jobs` transfers (blobs of SMALL_BLOB or more) at once from each registry, and its
        # small requests' share of smaller blobs: a registry that makes its requests wait (a
        # 429, its limiter) holds its own slots, never another registry's
        self.jobs = jobs
        self.slots: dict[str, BlobSlots] = {}
        self.progress = progress
        # the fetches and placements under way; one that succeeded leaves its digest in
        # `done` or `placed` instead (a finished task per blob of thousands held ~0.5 KB)
        self.tasks: dict[str, asyncio.Task[bool]] = {}
        self.placing: dict[str, asyncio.Task[None]] = {}
        marks: dict[str, int] = {}  # the five sets below are bits of one dict
        self.done = Marks(marks, 1)
        self.placed = Marks(marks, 2)
        self.fetched = Marks(marks, 4)
        self.reused = Marks(marks, 8)
        self.teed = Marks(marks, 16)
        self.owner: dict[str, int] = {}  # digest -> the image that first asked for it
        self.resumed: dict[str, int] = {}  # digest -> bytes an earlier run had downloaded
        # digest -> bytes this run downloaded into a partial file that it kept (the download
        # failed or was stopped): they crossed the network, and the next run resumes them
        self.kept: dict[str, int] = {}
        self.assembler: Assembler | None = None
        # cached blobs copied into the bundle at once: two keep both cores busy (one hashes,
        # one writes); more only add writers contending for the same file and memory
        self.copying = asyncio.Semaphore(2)

    def fetch(self, registry: str, repo: str, desc: Descriptor, owner: int
              ) -> asyncio.Future[bool]:
        if desc.digest in self.done:
            return _finished(False)
        task = self.tasks.get(desc.digest)
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            task = asyncio.ensure_future(self._fetch(registry, repo, desc))
            self.tasks[desc.digest] = task
            task.add_done_callback(functools.partial(_succeeded, self.tasks, self.done,
                                                     desc.digest))
            self.owner.setdefault(desc.digest, owner)
        return task

    def _slots(self, registry: str, size: int) -> asyncio.Semaphore:
        """The registry's slots for a blob of `size` (mirror.registry.ratelimit.BlobSlots):
        `jobs` transfers at once, or its `max_concurrency`."""
        slots = self.slots.get(registry)
        if slots is None:
            lim = self.client.t.limits_for(registry)
            slots = self.slots[registry] = BlobSlots(
                lim, asyncio.Semaphore(lim.bodies or self.jobs))
        return slots(size)

    async def _fetch(self, registry: str, repo: str, desc: Descriptor) -> bool:
        if self.store.has(desc.digest, desc.size):
            self.store.touch(desc.digest)
            if desc.digest in self.store.fetched_now:  # this run's (a config `order: created`
                self.fetched.add(desc.digest)          # read, checked then): crossed the
                self.progress.advanced(desc.size)      # network once, in this run
                return True
            self.reused.add(desc.digest)
            self.progress.advanced(desc.size)
            return False
        async with self._slots(registry, desc.size):
            sink = self.store.partial(desc.digest, desc.size,
                                      f"{registry}/{repo}: {mt.blob_kind(desc.media_type)} {desc.digest}")
            sink.tee = self.assembler.tee(desc.digest) if self.assembler else None
            opening = asyncio.get_running_loop().run_in_executor(IO_POOL, sink.open)
            try:
                offset = await to_the_end(opening)
            except asyncio.CancelledError:
                sink.close()  # the thread is done with it: nothing of it is left open
                raise
            earlier = self.kept.pop(desc.digest, 0)  # a failed try of this run's: its bytes
            if offset:
                self.resumed[desc.digest] = max(0, offset - earlier)
                self.progress.debug(f"resuming {desc.digest} at byte {offset}")
                self.progress.advanced(offset)
            done = False
            try:
                try:
                    await self._download(
                        sink, desc, lambda offset: self.client.open_blob(registry, repo, desc,
                                                                         offset),
                        f"{registry}/{repo}: blob {desc.digest}", registry=registry,
                        repository=repo)
                except RegistryError:
                    if not desc.urls:  # a foreign layer (issue 4): then try its urls
                        raise
                    await self._from_urls(sink, desc)
                done = True
            finally:
                try:
                    sink.close()  # may fail too (a full disk: the last bytes do not fit)
                finally:
                    if sink.committed:  # stopped after its commit: it crossed the network
                        self.fetched.add(desc.digest)
                    elif not done:
                        self._keep(desc.digest, sink.path, offset, earlier)
        self.fetched.add(desc.digest)
        if sink.teed:
            self.teed.add(desc.digest)
        return True

    async def _download(self, sink: PartialBlob, desc: Descriptor, open_at: Opener,
                        where: str, refetch: bool = True, registry: str = "",
                        repository: str = "") -> None:
        """Stream the blob into `sink` (opened, maybe at an offset a killed run left) and
        commit it. A stream that breaks off is opened again from the sink's offset (a
        retry: counted, on a -v line, after the policy's back-off); the count starts again
        after progress, so a flaky link that keeps moving does not run out of tries. A
        digest mismatch is fetched once more from byte 0 (`refetch`), then raised (the bad
        bytes are deleted, never stored); more bytes than the descriptor says keep nothing."""
        t = self.client.t
        attempt = mismatches = 0
        url = where  # the last URL asked, for -v
        while True:
            before = sink.offset
            try:
                if before < desc.size:
                    await self._receive(sink, open_at(before))
            except TransferError as e:
                url = e.url or url
                await _settle(sink)
                if sink.offset - before >= PROGRESS_BYTES:
                    attempt = 0  # progress was made: a flaky link, not a dead one
                attempt += 1
                if attempt >= t.policy.tries:
                    kept = sink.resumable_of(sink.offset)  # what closing the sink keeps
                    raise RegistryError(
                        f"{where}: {e.why} after {attempt} tries" + (
                            f" ({kept} of {desc.size} bytes kept for the next run)" if kept
                            else ""), registry=registry, repository=repository) from None
                await t.backoff("GET", url, e.why, attempt)
                continue
            except IntegrityError:
                sink.discard()  # more bytes than the descriptor says: nothing to keep
                raise
            try:
                await sink.commit()
                return
            except IntegrityError as e:
                mismatches += 1
                if not refetch or mismatches > 1:
                    raise
                sink.open()  # the bad file is gone: start over from byte 0
                await t.backoff("GET", url, f"digest mismatch: {e}", 1, delay=0.0)

    async def _receive(self, sink: PartialBlob, chunks: AsyncGenerator[bytes, None]) -> None:
        async with contextlib.aclosing(chunks) as stream:
            async for chunk in stream:
                await sink.write(chunk)
                self.progress.advanced(len(chunk))
        await sink.drain()

    async def _from_urls(self, sink: PartialBlob, desc: Descriptor) -> None:
        """A foreign layer from its descriptor's `urls` in turn (REFERENCE.md 3), resumed
        like a registry blob; a URL that serves other bytes is dropped for the next one."""
        problems: list[str] = []
        statuses: list[int | None] = []
        mismatches = 0
        for url in desc.urls:
            try:
                await self._download(sink, desc, functools.partial(open_url, self.client.t, url,
                                                                   desc), url, refetch=False)
                return
            except UrlRefused as e:
                problems.append(f"{url}: {e}")
                statuses.append(e.status)
            except IntegrityError as e:  # too long, or other bytes: try the next URL
                problems.append(f"{url}: {e}")
                mismatches += 1
                sink.discard()
                sink.open()
            except RegistryError as e:  # broke off, again and again
                problems.append(str(e))
        raise unserved(desc, problems, statuses, mismatches)

    def _keep(self, digest: str, path: Path, offset: int, earlier: int) -> None:
        """A failed or stopped download's partial file, kept for the next run: the bytes
        this run put in it (those on disk: a full disk took fewer than arrived)."""
        with contextlib.suppress(OSError):
            got = max(0, path.stat().st_size - offset) + earlier
            if got:
                self.kept[digest] = got

    async def config_bytes(self, registry: str, repo: str, desc: Descriptor,
                           owner: int = -1) -> bytes:
        """A config, from the cache (checked: cache entries are verified when reused)."""
        for attempt in (1, 2):
            await self.fetch(registry, repo, desc, owner)
            data = self.store.read(desc.digest)
            try:
                check_bytes(data, desc.digest, desc.size, f"cache {self.store.path(desc.digest)}")
                return data
            except IntegrityError:
                self.forget(desc.digest)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def forget(self, digest: str) -> None:
        """A damaged cache entry: drop it, so the next fetch downloads it again."""
        self.store.evict(digest)
        self.reused.discard(digest)
        self.done.discard(digest)
        self.tasks.pop(digest, None)

    def place(self, registry: str, repo: str, desc: Descriptor, owner: int,
              context: contextvars.Context | None = None) -> asyncio.Future[None]:
        """Fetch, then make sure the blob is in the bundle being assembled (once)."""
        if desc.digest in self.placed:
            return _finished(None)
        task = self.placing.get(desc.digest)
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            task = asyncio.get_running_loop().create_task(
                self._place(registry, repo, desc, owner), context=context)
            self.placing[desc.digest] = task
            task.add_done_callback(functools.partial(_succeeded, self.placing, self.placed,
                                                     desc.digest))
        return task

    async def _place(self, registry: str, repo: str, desc: Descriptor, owner: int) -> None:
        for attempt in (1, 2):
            await self.fetch(registry, repo, desc, owner)
            if self.assembler is None or desc.digest in self.teed:
                return
            path = self.store.path(desc.digest)
            verify = desc.digest not in self.fetched  # reused: verify; fetched: just checked
            try:
                async with self.copying:
                    await asyncio.get_running_loop().run_in_executor(
                        IO_POOL, self.assembler.copy_cached, desc.digest, path, verify)
                return
            except IntegrityError:
                self.assembler.invalidate()  # its damaged bytes were hashed: hash again
                self.forget(desc.digest)  # and fetch it again, once
                if attempt == 2:
                    raise


def _finished(result: T) -> asyncio.Future[T]:
    """An awaitable of what is done already."""
    fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    fut.set_result(result)
    return fut


class Marks(MutableSet[str]):
    """A set of digests kept as one bit of a dict that several such sets share: a set of
    8,500 digests is a table of 512 KiB, and the fetcher's five were 2.5 MiB through the
    downloads at 2,000 images (one dict: 0.3 MiB)."""

    def __init__(self, table: dict[str, int], bit: int) -> None:
        self._table, self._bit = table, bit

    def __contains__(self, digest: object) -> bool:
        return bool(self._table.get(digest, 0) & self._bit)  # type: ignore[call-overload]

    def __iter__(self) -> Iterator[str]:
        return (d for d, bits in self._table.items() if bits & self._bit)

    def __len__(self) -> int:
        return sum(1 for bits in self._table.values() if bits & self._bit)

    def add(self, digest: str) -> None:
        self._table[digest] = self._table.get(digest, 0) | self._bit

    def discard(self, digest: str) -> None:
        if digest in self._table:
            self._table[digest] &= ~self._bit

    @classmethod
    def _from_iterable(cls, it: Iterable[str]) -> set[str]:  # type: ignore[override]
        return set(it)  # what set operations (a set minus these) make


def _succeeded(tasks: dict[str, asyncio.Task[Any]], done: Marks, digest: str,
               task: asyncio.Task[Any]) -> None:
    """A task that succeeded leaves `tasks` for `done`; a failed one stays, to be seen."""
    if tasks.get(digest) is task and not task.cancelled() and task.exception() is None:
        del tasks[digest]
        done.add(digest)


async def _settle(sink: PartialBlob) -> None:
    """After a network error: let the batches in flight land, so `sink.offset` is exact.
    Bytes that don't match (IntegrityError) and a disk that fails (OSError) are not network
    errors and are raised."""
    try:
        await sink.drain()
    except (IntegrityError, OSError):
        raise
    except Exception:
        pass
