"""Blob sources for the registry sink (mirror.push.BlobSource) when the images come straight
from their registries (`mirror sync`): each blob read from its source repository, or from the
cache, which fetches it there once (mirror.fetch) for every target. Both check the bytes
against the digest and size as they go: a blob that does not match raises before its last
chunk, so no upload completes with it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

from mirror.aio import aiter_thread
from mirror.digest import Verifier, verified_sync
from mirror.errors import RegistryError
from mirror.fetch import Fetcher
from mirror.manifest import Descriptor
from mirror.push import Body
from mirror.registry.client import Client
from mirror.registry.network import TransferError

CHUNK = 1 << 20


class RegistrySource:
    """Each blob streamed from the source repository that lists it (`where`: digest ->
    (registry, repository)), at an offset with Range. A stream that breaks is a RegistryError
    without a status, which the upload tries again (mirror.registry.upload.restartable)."""

    one_pass = False

    def __init__(self, client: Client, where: dict[str, tuple[str, str]],
                 name: str = "the source registries") -> None:
        self.client, self.where, self.name = client, where, name
        self.fetched: set[str] = set()

    def carries(self, digest: str) -> bool:
        return digest in self.where

    def stream(self) -> Iterator[tuple[str, Body]]:
        raise NotImplementedError("a registry is read blob by blob")

    async def open(self, desc: Descriptor, offset: int) -> AsyncIterator[bytes]:
        reg, repo = self.where[desc.digest]
        where = f"{reg}/{repo}: blob {desc.digest}"
        # from byte 0 the blob is checked as it goes (from an offset, the target checks it)
        v = Verifier(desc.digest, desc.size, where) if offset == 0 else None
        try:
            async with contextlib.aclosing(
                    self.client.open_blob(reg, repo, desc, offset)) as chunks:
                async for chunk in _checked(chunks, v, desc.size):
                    yield chunk
        except TransferError as e:
            raise RegistryError(f"{where}: {e.why}", registry=reg, repository=repo) from None
        self.fetched.add(desc.digest)


async def _checked(chunks: AsyncIterator[bytes], v: Verifier | None, size: int
                   ) -> AsyncIterator[bytes]:
    """Pass chunks through `v`, which is finished (digest checked) before the last one goes
    on. (A body that ends early is the stream's TransferError, tried again by the upload.)"""
    async for chunk in chunks:
        if v is not None:
            v.update(chunk)
            if v.received == size:
                v.finish()
        yield chunk


class CacheSource:
    """Each blob from the cache, fetched into it first when it is not there (mirror.fetch:
    once per run, resumable, verified), then read from the file for every target."""

    one_pass = False
    name = "the cache"

    def __init__(self, fetcher: Fetcher, where: dict[str, tuple[str, str]]) -> None:
        self.fetcher, self.where = fetcher, where

    def carries(self, digest: str) -> bool:
        return digest in self.where

    def stream(self) -> Iterator[tuple[str, Body]]:
        raise NotImplementedError("the cache is read blob by blob")

    async def open(self, desc: Descriptor, offset: int) -> AsyncIterator[bytes]:
        reg, repo = self.where[desc.digest]
        await self.fetcher.fetch(reg, repo, desc, owner=-1)
        path = self.fetcher.store.path(desc.digest)
        chunks = _read(str(path), offset)
        async for chunk in aiter_thread(
                verified_sync(chunks, desc.digest, desc.size, f"cache {path}")
                if offset == 0 else chunks):
            yield chunk


def _read(path: str, offset: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(offset)
        while data := f.read(CHUNK):
            yield data
