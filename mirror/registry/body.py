"""Reading a whole (bounded) HTTP body."""

from __future__ import annotations

import aiohttp


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
