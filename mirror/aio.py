"""Small asyncio helpers: run tasks together, and on the first failure cancel the rest;
step a blocking iterator in a thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator
from typing import Any


async def cancel_all(tasks: Iterable[asyncio.Future[Any]]) -> None:
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def gather_or_cancel(aws: Iterable[Awaitable[Any]]) -> list[Any]:
    """Like asyncio.gather, but the first exception cancels (and awaits) every sibling, so
    nothing keeps running behind an error; the exception is raised as it is (no group)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        await cancel_all(tasks)
        raise


async def aiter_thread(gen: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator (file reads, hashing) stepped in a thread, off the event loop."""
    while True:
        chunk = await asyncio.to_thread(next, gen, None)
        if chunk is None:
            return
        yield chunk
