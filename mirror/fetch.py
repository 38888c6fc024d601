"""Getting blobs: each digest once per run (a shared task), from the cache when it holds it
(verified: cache entries are checked whenever they are reused), and into the bundle being
assembled: teed while it downloads, else copied from the cache."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from pathlib import Path

from mirror import mediatypes as mt
from mirror.bundle.assembler import Assembler
from mirror.digest import check_bytes
from mirror.errors import IntegrityError, RegistryError
from mirror.manifest import Descriptor
from mirror.progress import Progress
from mirror.registry.client import Client
from mirror.registry.foreign import download_url
from mirror.store.blobs import _IO_POOL, BlobStore


class Fetcher:
    """One per run; shared by every image of the run."""

    def __init__(self, client: Client, store: BlobStore, jobs: int, progress: Progress) -> None:
        self.client = client
        self.store = store
        self.sem = asyncio.Semaphore(jobs)
        self.progress = progress
        self.tasks: dict[str, asyncio.Task[bool]] = {}
        self.placing: dict[str, asyncio.Task[None]] = {}
        self.fetched: set[str] = set()
        self.reused: set[str] = set()
        self.teed: set[str] = set()
        self.owner: dict[str, int] = {}  # digest -> the image that first asked for it
        self.resumed: dict[str, int] = {}  # digest -> bytes an earlier run had downloaded
        # digest -> bytes this run downloaded into a partial file that it kept (the download
        # failed or was stopped): they crossed the network, and the next run resumes them
        self.kept: dict[str, int] = {}
        self.assembler: Assembler | None = None
        # cached blobs copied into the bundle at once: two keep both cores busy (one hashes,
        # one writes); more only add writers contending for the same file and memory
        self.copying = asyncio.Semaphore(2)

    def fetch(self, registry: str, repo: str, desc: Descriptor, owner: int) -> asyncio.Task[bool]:
        task = self.tasks.get(desc.digest)
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            task = asyncio.ensure_future(self._fetch(registry, repo, desc))
            self.tasks[desc.digest] = task
            self.owner.setdefault(desc.digest, owner)
        return task

    async def _fetch(self, registry: str, repo: str, desc: Descriptor) -> bool:
        if self.store.has(desc.digest, desc.size):
            self.store.touch(desc.digest)
            self.reused.add(desc.digest)
            self.progress.advanced(desc.size)
            return False
        async with self.sem:
            sink = self.store.partial(desc.digest, desc.size,
                                      f"{registry}/{repo}: {mt.blob_kind(desc.media_type)} {desc.digest}")
            sink.tee = self.assembler.tee(desc.digest) if self.assembler else None
            opening = asyncio.get_running_loop().run_in_executor(_IO_POOL, sink.open)
            try:
                offset = await opening
            except asyncio.CancelledError:
                await asyncio.wait([opening])  # then nothing of it is left open
                sink.close()
                raise
            earlier = self.kept.pop(desc.digest, 0)  # a failed try of this run's: its bytes
            if offset:
                self.resumed[desc.digest] = max(0, offset - earlier)
                self.progress.debug(f"resuming {desc.digest} at byte {offset}")
                self.progress.advanced(offset)
            done = False
            try:
                try:
                    await self.client.download_blob(registry, repo, desc, sink,
                                                    progress=self.progress.advanced)
                except RegistryError:
                    if not desc.urls:  # a foreign layer (issue 4): then try its urls
                        raise
                    await download_url(self.client, desc, sink, self.progress.advanced)
                done = True
            finally:
                try:
                    sink.close()  # may fail too (a full disk: the last bytes do not fit)
                finally:
                    if not done:
                        self._keep(desc.digest, sink.path, offset, earlier)
        self.fetched.add(desc.digest)
        if sink.teed:
            self.teed.add(desc.digest)
        return True

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
        self.tasks.pop(digest, None)

    def place(self, registry: str, repo: str, desc: Descriptor, owner: int,
              context: contextvars.Context | None = None) -> asyncio.Task[None]:
        """Fetch, then make sure the blob is in the bundle being assembled (once)."""
        task = self.placing.get(desc.digest)
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            task = asyncio.get_running_loop().create_task(
                self._place(registry, repo, desc, owner), context=context)
            self.placing[desc.digest] = task
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
                        _IO_POOL, self.assembler.copy_cached, desc.digest, path, verify)
                return
            except IntegrityError:
                self.assembler.invalidate()  # its damaged bytes were hashed: hash again
                self.forget(desc.digest)  # and fetch it again, once
                if attempt == 2:
                    raise
