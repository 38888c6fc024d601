"""Blob sources for the registry sink (mirror.pushblobs.BlobSource) when the images come straight
from their registries (`mirror sync`): each blob read from its source repository, or from the
cache, which fetches it there once (mirror.fetch) for every target. Both check the bytes
against the digest and size as they go: a blob that does not match raises before its last
chunk, so no upload completes with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any, cast

from mirror.aio import aiter_thread, retrieved
from mirror.digest import verified_async, verified_sync
from mirror.errors import DamagedInTransit, IntegrityError, MirrorError, RegistryError
from mirror.fetch import Fetcher
from mirror.manifest import Descriptor
from mirror.registry.client import Client
from mirror.registry.foreign import UrlRefused, open_url, unserved
from mirror.registry.network import TransferError
from mirror.store.iowork import IO_POOL

CHUNK = 1 << 20  # bytes per read of a cached blob
# digest -> the source registry and repository that list the blob, and its descriptor there
# (a foreign layer's `urls`, which a rewritten manifest no longer lists)
Where = dict[str, tuple[str, str, Descriptor]]


class RegistrySource:
    """Each blob streamed from the source repository that lists it (`where`: digest ->
    (registry, repository)) from an offset (Client.open_blob), but those `held`: bytes
    already read and checked against their digest (the configs planning read), sent as
    they are. A stream that breaks is a RegistryError without a status, which the upload
    tries again (from where the target got to: mirror.registry.upload.restartable)."""

    def __init__(self, client: Client, where: Where, name: str = "the source registries",
                 held: dict[str, bytes] | None = None) -> None:
        self.client, self.where, self.name = client, where, name
        self.held = held if held is not None else {}
        self._sems: dict[str, asyncio.Semaphore] = {}

    def carries(self, digest: str) -> bool:
        return digest in self.where

    def _bodies(self, registry: str) -> contextlib.AbstractAsyncContextManager[Any]:
        """A registry that sets `max_concurrency` has at most that many of its blobs
        streaming at once (the limiter holds a request's slot only until its answer starts).
        A stream holds its place until it ends or is closed: an upload closes its body
        whatever fails (mirror.registry.upload.aclose), not leaving it to the collector."""
        n = self.client.t.limits_for(registry).bodies
        if not n:
            return contextlib.nullcontext()
        return self._sems.setdefault(registry, asyncio.Semaphore(n))

    async def open(self, desc: Descriptor, offset: int) -> AsyncIterator[bytes]:
        """A foreign layer the registry does not serve comes from its `urls` in turn (no
        registry credentials: mirror.registry.foreign), as a pull fetches it."""
        data = self.held.get(desc.digest)
        if data is not None and len(data) == desc.size:
            yield data[offset:]
            return
        reg, repo, there = self.where[desc.digest]
        sent = 0
        try:
            async with self._bodies(reg):
                async for chunk in _checked(self.client.open_blob(reg, repo, desc, offset),
                                            desc, offset, f"{reg}/{repo}: blob {desc.digest}"):
                    sent += len(chunk)
                    yield chunk
            return
        except RegistryError:
            if sent or not there.urls:
                raise
        problems: list[str] = []
        statuses: list[int | None] = []
        mismatches = 0
        for url in there.urls:
            try:
                async for chunk in _checked(open_url(self.client.t, url, desc, offset), desc,
                                            offset, url):
                    sent += len(chunk)
                    yield chunk
                return
            except (UrlRefused, IntegrityError, RegistryError) as e:
                if sent:  # bytes of it went into the upload: that one cannot go on
                    raise
                problems.append(f"{url}: {e}")
                statuses.append(getattr(e, "status", None))
                mismatches += isinstance(e, IntegrityError)
        raise unserved(desc, problems, statuses, mismatches)


async def _checked(chunks: AsyncIterator[bytes], desc: Descriptor, offset: int, where: str
                   ) -> AsyncIterator[bytes]:
    """A blob stream, checked from byte 0 (a resumed upload, from `offset`, is checked by
    the registry against the digest in the final PUT, as a bundle's is); one that breaks off
    is a RegistryError without a status, which the upload tries again; bytes that do not
    match, DamagedInTransit, which it reads once more."""
    gen = cast(AsyncGenerator[bytes, None], chunks)
    try:
        async with contextlib.aclosing(gen):
            async for chunk in (gen if offset else
                                verified_async(gen, desc.digest, desc.size, where)):
                yield chunk
    except TransferError as e:
        raise RegistryError(f"{where}: {e.why}") from None
    except IntegrityError as e:  # damaged on the way: read once more (upload_blob)
        raise DamagedInTransit(str(e)) from None


class CacheSource:
    """Each blob from the cache, fetched into it first when it is not there (mirror.fetch:
    once per run, resumable, verified), then read from the file for every target. An entry
    an earlier run left is re-hashed before its first use in this run (as a pull verifies
    what it reuses): a damaged one is dropped and fetched again, once."""

    name = "the cache"

    def __init__(self, fetcher: Fetcher, where: Where) -> None:
        self.fetcher, self.where = fetcher, where
        self.ready: dict[str, asyncio.Task[None]] = {}

    def carries(self, digest: str) -> bool:
        return digest in self.where

    async def open(self, desc: Descriptor, offset: int) -> AsyncIterator[bytes]:
        """A full cache disk (or any local I/O error) is said as such, exit 1 as a pull's:
        raised inside the upload's body, an OSError became the upload's 'Can not write
        request body' (a registry error, exit 3)."""
        try:
            task = self.ready.get(desc.digest)
            if task is None or (task.done() and (task.cancelled() or task.exception())):
                task = asyncio.ensure_future(self._ready(desc.digest))
                task.add_done_callback(retrieved)  # its opener may be cancelled meanwhile
                self.ready[desc.digest] = task
            await asyncio.shield(task)
            path = self.fetcher.store.path(desc.digest)
            chunks = _read(str(path), offset)
            async for chunk in aiter_thread(
                    verified_sync(chunks, desc.digest, desc.size, f"cache {path}")
                    if offset == 0 else chunks):
                yield chunk
        except OSError as e:
            where = e.filename or f"cache {self.fetcher.store.root}"
            raise MirrorError(f"{where}: {e.strerror or e}") from None


    async def _ready(self, digest: str) -> None:
        """The blob in the cache, fetched in this run or an earlier entry re-hashed."""
        reg, repo, there = self.where[digest]
        store = self.fetcher.store
        for attempt in (1, 2):
            await self.fetcher.fetch(reg, repo, there, owner=-1)
            if digest in self.fetcher.fetched:  # checked as it arrived
                return
            try:
                await asyncio.get_running_loop().run_in_executor(
                    IO_POOL, store.verify, digest, there.size)
                return
            except IntegrityError:
                self.fetcher.forget(digest)  # store.verify evicted it: fetch it again
                if attempt == 2:
                    raise


def _read(path: str, offset: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(offset)
        while data := f.read(CHUNK):
            yield data
