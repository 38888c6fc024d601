"""The I/O workers: the run's one thread pool for file work (a download's hashing and writes,
the cache's checks, the bundle's reads and copies), ordered queues of jobs on it, and the
batches of one download waited for from the event loop.

hashlib and file writes release the GIL: work handed to these threads uses the second core
while the event loop goes on receiving. A download's queues (mirror.store.partial) keep its
bytes in order without a pool thread ever waiting for another job.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

CHUNK = 1 << 20
_POOLS: list[ThreadPoolExecutor] = []


def pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A thread pool of the run's, finished by `finish_pools` as the process leaves."""
    made = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    _POOLS.append(made)
    return made


def finish_pools() -> None:
    """Run every job queued on the pools (as the interpreter does at exit) and end their
    threads."""
    for made in _POOLS:
        made.shutdown(wait=True)


IO_POOL = pool(8, "mirror-io")


class Serial:
    """Jobs that run one after another, in order, on the shared pool (a stream must be hashed
    in order), without a pool thread ever waiting for another job."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._running = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self._queue.append((fn, args))
            if self._running:
                return
            self._running = True
        IO_POOL.submit(self._run)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                fn, args = self._queue.popleft()
            fn(*args)  # never raises: see Batches.job


class _Batch:
    __slots__ = ("error", "left")

    def __init__(self, jobs: int) -> None:
        self.left = jobs
        self.error: BaseException | None = None


class Batches:
    """The batches of one download in flight on the workers. A job's end wakes the event loop
    only when it waits (a cross-thread wake-up per job was a measurable share of the loop's
    time at 1 GB/s). Each queue runs its jobs in order, so batches end in order."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._batches: deque[_Batch] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.failed = False  # a job raised: what the queues wrote after it is not in order

    def start(self, jobs: int) -> _Batch:
        batch = _Batch(jobs)
        with self._cv:
            self._batches.append(batch)
        return batch

    def job(self, batch: _Batch, fn: Callable[..., Any], *args: Any) -> None:
        """Run one job of `batch` (on a worker) and count it done, whatever happens."""
        try:
            fn(*args)
        except BaseException as e:  # raised where the batch is waited for
            batch.error = batch.error or e
            self.failed = True
        finally:
            with self._cv:
                batch.left -= 1
                waiter, loop = self._waiter, self._loop
                if batch.left == 0:
                    self._cv.notify_all()
                    self._waiter = None
                else:
                    waiter = None
            if waiter is not None and loop is not None:
                loop.call_soon_threadsafe(_wake, waiter)

    def _pop_done(self, keep: int) -> bool:
        """(lock held) Drop finished batches from the front, raising the first error; True
        when at most `keep` batches are still in flight."""
        while self._batches and self._batches[0].left == 0:
            batch = self._batches.popleft()
            if batch.error is not None:
                raise batch.error
        return len(self._batches) <= keep

    async def wait(self, keep: int = 0) -> None:
        """Until at most `keep` batches are in flight (oldest first)."""
        while True:
            with self._cv:
                if self._pop_done(keep):
                    return
                self._loop = asyncio.get_running_loop()
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def join(self) -> None:
        """Block until every job has run (their errors are dropped: used when closing)."""
        with self._cv:
            self._cv.wait_for(lambda: all(b.left == 0 for b in self._batches))
            self._batches.clear()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
