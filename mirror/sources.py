"""Blob sources for the registry sink (mirror.push.BlobSource) when the images come straight
from their registries (`mirror sync`): each blob read from its source repository, or from the
cache, which fetches it there once (mirror.fetch) for every target. Both check the bytes
against the digest and size as they go: a blob that does not match raises before its last
chunk, so no upload completes with it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp

from mirror.aio import aiter_thread
from mirror.digest import Verifier, verified_sync
from mirror.errors import RegistryError
from mirror.fetch import Fetcher
from mirror.manifest import Descriptor
from mirror.push import Body
from mirror.registry.client import Client, _Retry
from mirror.registry.transport import describe_exception

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
        what = f"blob {desc.digest}"
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = await self.client._open_blob(reg, repo, desc.digest, headers, what)
            async with resp:
                # a 200 to a Range request starts at byte 0: skip to the offset (and check
                # the whole blob); from byte 0 the blob is checked too
                skip = offset if resp.status == 200 else 0
                v = Verifier(desc.digest, desc.size, f"{reg}/{repo}: {what}") \
                    if offset == 0 or skip else None
                async for chunk in _checked(resp.content.iter_chunked(CHUNK), v, desc.size):
                    self.client.bytes_downloaded += len(chunk)
                    if skip:
                        cut = min(skip, len(chunk))
                        chunk, skip = chunk[cut:], skip - cut
                    if chunk:
                        yield chunk
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
                _Retry) as e:
            raise RegistryError(f"{reg}/{repo}: {what}: {describe_exception(e)}",
                                registry=reg, repository=repo) from None
        self.fetched.add(desc.digest)


async def _checked(chunks: AsyncIterator[bytes], v: Verifier | None, size: int
                   ) -> AsyncIterator[bytes]:
    """Pass chunks through `v`, which is finished (digest checked) before the last one goes
    on; a body that ends early is a broken stream, tried again by the upload."""
    got = 0
    async for chunk in chunks:
        got += len(chunk)
        if v is not None:
            v.update(chunk)
            if v.received == size:
                v.finish()
        yield chunk
    if v is not None and v.received < size or v is None and got == 0 and size:
        raise _Retry(f"body ended at byte {v.received if v else got} of {size}")


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
