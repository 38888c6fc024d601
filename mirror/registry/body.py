"""Reading a whole (bounded) HTTP body; `WholeReads`, a small document asked for again when
its body breaks off."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
from multidict import CIMultiDictProxy

from mirror.errors import RegistryError
from mirror.registry.network import describe_exception

if TYPE_CHECKING:
    from mirror.registry.transport import Transport


async def read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or its first limit+1 bytes. (`StreamReader.read(n)` returns what is
    buffered so far, not n bytes: a manifest split over network packets would be cut.)"""
    parts: list[bytes] = []
    got = 0
    while got <= limit:
        chunk = await resp.content.read(limit + 1 - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


class WholeReads:
    """Small documents read whole (a manifest, a page of a list, a config blob): the base of
    mirror.registry.client.Client's halves (a mixin: it uses the client's transport `t`)."""

    t: Transport

    async def _read_whole(self, ask: Callable[[], Awaitable[aiohttp.ClientResponse]],
                          limit: int, where: str, registry: str, repo: str
                          ) -> tuple[bytes, CIMultiDictProxy[str]]:
        """A small document (its first `limit`+1 bytes) and its answer's headers, asked for
        again when the body breaks off (the request itself is retried by the transport)."""
        attempt = 0
        while True:
            attempt += 1
            resp = await ask()
            try:
                async with resp:
                    return await read_body(resp, limit), resp.headers
            except (TimeoutError, aiohttp.ClientPayloadError,
                    aiohttp.ClientConnectionError) as e:
                why = describe_exception(e)
                if attempt >= self.t.policy.tries:
                    raise RegistryError(f"{where}: {why}", registry=registry,
                                        repository=repo) from None
                await self.t.backoff(resp.method, str(resp.url), why, attempt)
