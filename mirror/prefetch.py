"""Downloads started before a pull's bundle is laid out: while planning is held up (a
registry answers 429 with Retry-After, a back-off, a limiter that 429s slowed: the
transport's `stalled`), the blobs of the images already planned go into the cache
(Fetcher.fetch: each digest once per run, verified, resumable), so one registry's storm does
not hold another's downloads. Once the layout is fixed, placing a blob in the bundle finds
its download done or under way and copies it from the cache. A run in which nothing waits
starts none of these: its blobs are teed into the bundle as they arrive (one write each).

At most `limit` blobs per registry are under way at once from here; a download that fails
is left for the run's own fetching to ask again (and to fail the image that needs it)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections import deque

from mirror.fetch import Fetcher
from mirror.manifest import Descriptor

Job = tuple[str, Descriptor, int, contextvars.Context]  # repository, blob, owner, context


class Prefetch:
    def __init__(self, fetcher: Fetcher, limit: int) -> None:
        self.fetcher, self.limit = fetcher, limit
        self.queues: dict[str, deque[Job]] = {}  # registry -> blobs not started yet
        self.running: dict[str, int] = {}
        self.on = False
        # digest -> when its download ended, in the cache before the bundle is laid out:
        # its images' `seconds` end there, not when it is copied into the bundle
        self.in_hand: dict[str, float] = {}

    def add(self, registry: str, repo: str, blobs: list[Descriptor], owner: int,
            context: contextvars.Context) -> None:
        """The blobs of an image just planned (once `on`)."""
        queue = self.queues.setdefault(registry, deque())
        queue.extend((repo, d, owner, context) for d in blobs
                     if d.digest not in self.fetcher.done)
        self._pump(registry)

    def placing(self, digest: str) -> None:
        """The run's fetching places `digest` in the bundle: fetched already, it was in hand
        when its download started here ended, else (0) during a resolution (a config)."""
        if digest in self.fetcher.done:
            self.in_hand.setdefault(digest, 0.0)

    def in_hand_at(self, digest: str, now: float) -> float:
        """When `digest`, placed `now`, was in hand (0: during a resolution)."""
        return self.in_hand.pop(digest, now)

    def renumbered(self, at: dict[int, int]) -> None:
        """The run's images were put in their order (mirror.planning.Planner.settle)."""
        for queue in self.queues.values():
            jobs = [(repo, d, at.get(owner, owner), ctx) for repo, d, owner, ctx in queue]
            queue.clear()
            queue.extend(jobs)

    def stop(self) -> None:
        """Planning is over: the run's fetching takes the rest (those under way go on)."""
        self.on = False
        self.queues.clear()

    def _pump(self, registry: str) -> None:
        queue = self.queues.get(registry)
        while self.on and queue and self.running.get(registry, 0) < self.limit:
            repo, desc, owner, ctx = queue.popleft()
            fut = ctx.run(self.fetcher.fetch, registry, repo, desc, owner)
            if fut.done():
                continue
            self.running[registry] = self.running.get(registry, 0) + 1
            fut.add_done_callback(functools.partial(self._ended, registry, desc.digest))

    def _ended(self, registry: str, digest: str, fut: asyncio.Future[bool]) -> None:
        self.running[registry] -= 1
        if not fut.cancelled() and fut.exception() is None:  # else seen; the run's
            self.in_hand[digest] = time.monotonic()            # fetching asks again
        self._pump(registry)
