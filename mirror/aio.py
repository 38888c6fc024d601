"""Small asyncio helpers: run tasks together, and on the first failure cancel the rest; run
many, a bounded number at a time; ask many yes-or-no questions at once within a time limit;
do the work asked for by key once however many ask; step a blocking iterator in a thread;
wait for a thread's work to end even when cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from mirror.errors import RegistryError

K = TypeVar("K")
T = TypeVar("T")


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


async def bounded(starts: Iterable[tuple[K, Callable[[], asyncio.Future[Any] | None]]],
                  limit: int | Callable[[], int],
                  finished: Callable[[K, asyncio.Future[Any]], None]) -> None:
    """Start each future in turn (a start that gives None is skipped), at most `limit`
    (or what it says now, when a callable) under way at once, and call
    `finished(key, future)` as each ends; what `finished`
    raises stops the run (the futures still under way are the caller's to cancel). For
    thousands of jobs: only `limit` coroutines are alive at once, not one per job."""
    running: dict[asyncio.Future[Any], K] = {}

    async def settle(down_to: int) -> None:
        while len(running) > down_to:
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                finished(running.pop(fut), fut)

    for key, start in starts:
        await settle((limit() if callable(limit) else limit) - 1)
        fut = start()
        if fut is not None:
            running[fut] = key
    await settle(0)


async def confirmed(items: Sequence[K], check: Callable[[K], Awaitable[bool]], within: float
                    ) -> list[K]:
    """The `items` whose `check` said True, all checked at once (a push's transfers cut
    short, blobs and manifests alike: one HEAD each, which landed); a check that raised a
    RegistryError said no (the transport gives every request that got no answer, a reset
    connection, a timeout, as one: the item is not known to have landed; anything else is
    a fault of the caller's, raised). None of them when the checks have not all answered
    within `within` seconds in all (those still asking are cancelled)."""
    if not items:
        return []

    async def said(item: K) -> bool:
        try:
            return await check(item)
        except RegistryError:
            return False

    try:
        answers = await asyncio.wait_for(asyncio.gather(*(said(i) for i in items)), within)
    except TimeoutError:
        return []
    return [i for i, ok in zip(items, answers, strict=True) if ok]


class Once(Generic[K, T]):
    """The work asked for by a key done once however many ask for it: at once (one task,
    shielded from any one asker's cancellation, that the others wait on; one that fails is
    forgotten, and the next asks again) or one after the other (the last `keep` results
    kept, the oldest going first)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._doing: dict[K, asyncio.Task[T]] = {}
        self._done: dict[K, T] = {}

    async def get(self, key: K, work: Callable[[], Awaitable[T]]) -> T:
        if key in self._done:
            return self._done[key]
        task = self._doing.get(key)
        if task is None:
            task = self._doing[key] = asyncio.ensure_future(work())
            task.add_done_callback(functools.partial(self._finished, key))
        return await asyncio.shield(task)

    def _finished(self, key: K, task: asyncio.Task[T]) -> None:
        del self._doing[key]
        if task.cancelled() or task.exception() is not None:
            return
        self._done[key] = task.result()
        if len(self._done) > self.keep:
            del self._done[next(iter(self._done))]


def more_slots(sem: asyncio.Semaphore, n: int) -> None:
    """`n` more slots in `sem`, for good (what it bounds may now have more at once)."""
    for _ in range(n):
        sem.release()


async def aiter_thread(gen: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator (file reads, hashing) stepped in a thread, off the event loop.
    Cancelled while a step runs, it waits for that step (to_the_end) before it raises: the
    caller then closes `gen` (and its file) with no thread still inside it ("generator
    already executing", or a read of a file closed under it)."""
    loop = asyncio.get_running_loop()
    while True:
        step = functools.partial(contextvars.copy_context().run, next, gen, None)  # to_thread's
        chunk = await to_the_end(loop.run_in_executor(None, step))
        if chunk is None:
            return
        yield chunk


async def to_the_end(fut: asyncio.Future[T], stopping: Callable[[], None] | None = None) -> T:
    """Await `fut`, a thread's work (`run_in_executor`); cancelled meanwhile (Ctrl-C, another
    blob's error), call `stopping` (to tell the work to stop early), wait until the thread
    is done with it, then raise. `await asyncio.wait([fut])` after the cancellation does not
    wait: the cancellation cancels `fut` too, while its thread goes on (a blob renamed into
    the cache, a bundle renamed into place, after the caller went on as if it were not)."""
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError as stopped:
        if stopping is not None:
            stopping()
        while not fut.done():  # cancelled again (a gather's cancel, then cancel_all): wait on
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([fut])
        retrieved(fut)  # the cancellation is the answer, not a stray traceback at exit
        raise stopped


def retrieved(fut: asyncio.Future[Any]) -> None:
    """A finished future's exception marked as seen (as a done callback too: for a task
    shielded from a caller that was cancelled, which nobody awaits after it fails), so
    asyncio prints no `exception was never retrieved` and traceback at exit."""
    if not fut.cancelled():
        fut.exception()
