"""A blob as a byte stream from an offset: what `Client.open_blob` and a foreign URL's
`open_url` both yield. Range asks for the rest; a server that ignores Range (200) has the first
bytes skipped; a 206 of another range is asked again whole; the stream stops at the size the
descriptor gives. Verifying the digest, and resuming a stream that broke off, are the
caller's (mirror.fetch)."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Awaitable, Callable

import aiohttp

from mirror.errors import SizeMismatch
from mirror.manifest import Descriptor
from mirror.registry.network import TransferError, describe_exception
from mirror.registry.transport import Transport

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

# headers -> a 200 or 206 answer (redirects followed, the request's retries made)
Ask = Callable[[dict[str, str]], Awaitable[aiohttp.ClientResponse]]


async def blob_stream(ask: Ask, t: Transport, desc: Descriptor, offset: int,
                      where: str) -> AsyncGenerator[bytes, None]:
    """The bytes of `desc` from `offset` on, as they arrive. A body that breaks off or ends
    early raises TransferError (ask again from where it got to); more bytes than the
    descriptor says, SizeMismatch."""
    headers = {"Accept-Encoding": "identity"}
    resp = await ask({**headers, "Range": f"bytes={offset}-"} if offset else headers)
    skip = _skip(resp, desc, offset, where)
    if skip is None:  # a 206 that is not the rest: ask for the whole blob
        why = (f"unusable Content-Range {resp.headers.get('Content-Range', '')!r} for "
               f"bytes={offset}-")
        resp.release()
        await t.backoff(resp.method, str(resp.url), why, 1, delay=0.0)
        resp = await ask(headers)
        skip = offset if _skip(resp, desc, 0, where) == 0 else None
        if skip is None:
            resp.release()
            raise TransferError(why, url=str(resp.url))
    got = offset
    async with resp:
        try:
            async for chunk in resp.content.iter_any():
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk, skip = chunk[skip:], 0
                got += len(chunk)
                if got > desc.size:
                    raise SizeMismatch(desc.size, got, where, desc.digest)
                yield chunk
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as e:
            raise TransferError(describe_exception(e), url=str(resp.url)) from None
    if got < desc.size:
        raise TransferError(f"body ended at byte {got} of {desc.size}", url=str(resp.url))


def _skip(resp: aiohttp.ClientResponse, desc: Descriptor, offset: int,
          where: str) -> int | None:
    """How many bytes of a 200 or 206 answer to a request from `offset` come before it: a 206
    must start there (None: its Content-Range is unusable); a 200 (Range ignored) holds the
    whole blob, no longer than the descriptor says."""
    if resp.status == 206:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != offset or (
                m.group(3) != "*" and int(m.group(3)) != desc.size):
            return None
        return 0
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > desc.size:
        resp.release()
        raise SizeMismatch(desc.size, int(length), where, desc.digest)
    # a shorter one is a body cut on the way (a proxy or CDN that fixed up the length): an
    # incomplete download, asked again from where it got to like any body that ends early
    return offset
