"""The pull engine: registry -> blob store -> bundle.

First every image is resolved (mirror.planning, shared with `mirror sync`: manifests,
platform selection, conversion, referrers), so the bundle's layout is known; then every blob
is fetched once into the content-addressed store (shared across images, platforms and runs),
verified on the way in, and teed into the bundle being assembled (mirror.pull_output: the
bundle at -o, left as it is when it holds these images already).
While resolving waits on a registry (a 429's Retry-After, a back-off), the blobs of the images
resolved so far are downloaded into the store meanwhile (mirror.prefetch) and copied into the
bundle once it is laid out. A registry with a request budget has its images admitted whole,
in order (`admit`): those its budget cannot fetch wait for the next run.
A .tar.zst is written from the store in one pass at the end. With `keep_going`, an image that
fails is reported and left out (the bundle is marked partial); otherwise the first failure
stops the run. What was downloaded stays in the store either way, so the next run does not
fetch it again.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable, Hashable

from mirror.aio import bounded, cancel_all, gather_or_cancel
from mirror.bundle.contents import unloadable
from mirror.bundle.writer import Prehash
from mirror.config import ImageSpec
from mirror.errors import BudgetSpent, MirrorError
from mirror.fetch import Fetcher
from mirror.image import Image, ImageSet
from mirror.manifest import Descriptor
from mirror.planning import Planner
from mirror.prefetch import Prefetch
from mirror.progress import NullProgress, Progress
from mirror.pull_account import PullResult, account_image, account_unfinished, summary_line
from mirror.pull_options import PullOptions
from mirror.pull_output import Output
from mirror.registry.client import Client
from mirror.registry.policy import RETRY_COUNTER
from mirror.registry.ratelimit import ADMITTED
from mirror.store.blobs import BlobStore
from mirror.store.iowork import IO_POOL

PLACING = 64  # blobs under way at once per registry (each waits for one of -j's slots)


async def pull(client: Client, store: BlobStore, specs: list[ImageSpec], opts: PullOptions,
               progress: Progress | None = None,
               later: Callable[[], Awaitable[list[ImageSpec]]] | None = None,
               prehash: Prehash | None = None) -> PullResult:
    """Resolve every image, then fetch and assemble the bundle. With `later` (the tag rules'
    choice: the run's images), `specs` are those planned meanwhile (mirror.planning).
    `prehash`: the bundle at -o, being hashed since the run began (mirror.pull_run).

    Raises the first MirrorError unless `keep_going` (then only when no image succeeded);
    whatever stops the run (that error, an OSError such as a full disk, the CancelledError
    of Ctrl-C or SIGTERM) carries what was done so far as `err.pull_result`, for the report:
    no bundle, so not a partial one; its `unfinished` lists the images it cut short (not
    those planned with every blob in hand: `in_hand`).
    """
    run = _Run(client, store, specs, opts, progress or NullProgress(), later, prehash)
    try:
        return await run.go()
    except BaseException as e:
        run.settle()
        run.in_hand()
        done = run.result()
        done.early = not run.known  # stopped at the tag rules: those planned meanwhile
        done.partial = False
        done.unfinished = [i for i, r in enumerate(done.images)
                           if r.error is None and i not in run.accounted]
        if run.output.named is not None:  # stopped once the bundle was named: this run's
            done.bundle, (done.bundle_digest, done.unchanged) = run.opts.output, run.output.named
        e.pull_result = done  # type: ignore[attr-defined]
        raise


class _Run(Planner):
    """One pull: the planning (mirror.planning), then the fetching and the bundle."""

    opts: PullOptions

    def __init__(self, client: Client, store: BlobStore, specs: list[ImageSpec],
                 opts: PullOptions, progress: Progress,
                 later: Callable[[], Awaitable[list[ImageSpec]]] | None = None,
                 prehash: Prehash | None = None) -> None:
        super().__init__(client, specs, opts, progress, later=later)
        self.store, self.opts = store, opts
        self.fetcher = Fetcher(client, store, opts.jobs, progress)
        self.prefetch = Prefetch(self.fetcher, PLACING)
        self.in_layout: set[int] = set()  # the images the assembling bundle was laid out for
        self.accounted: set[int] = set()  # images whose bytes are counted (_account)
        self.last: dict[int, float] = {}  # image -> when the last of its blobs came in so far
        # digest -> size of each blob found in the cache: the run's bytes_reused counts a
        # blob shared by several images once (each image's own figure counts all it needs)
        self.reused: dict[str, int] = {}
        self.output = Output(client, store, self.fetcher, opts, self.progress, self.source_of,
                             prehash)

    def config(self, i: int, registry: str, repo: str, desc: Descriptor) -> Awaitable[bytes]:
        return self.fetcher.config_bytes(registry, repo, desc, owner=i)

    def need(self, plan: Image) -> list[Descriptor]:
        base = self.opts.base_blobs or {}
        return [d for d in plan.blobs.values() if d.digest not in base]

    def image_set(self) -> ImageSet:
        """The images the bundle carries (partial when one failed), and its base's."""
        o = self.opts
        return ImageSet([p for _, p in self.resolved()], base=o.base_digest,
                        base_name=o.base_name, base_images=list(o.base_images),
                        partial=self.first_error is not None)

    def result(self) -> PullResult:
        for res, count in zip(self.results, self.retry_counts, strict=True):
            res.retries = count[0]
        for i, plan in [*self.resolved(), *self.unfinished.items()]:
            if i not in self.accounted:  # failed, or stopped (Ctrl-C): what it did so far
                account_unfinished(self.results[i], self.need(plan), self.fetcher, i,
                                    self.reused)
        r = PullResult(self.results, retries=self.client.t.retries)
        r.partial = any(x.error for x in self.results)
        r.blobs = {d.digest: d.size for _, p in self.resolved() for d in p.blobs.values()}
        # the blobs of the bundle fetched and found in the cache, as bytes_fetched and
        # bytes_reused count them (a config an incremental pull read for planning, which its
        # base carried, is neither: it was counted a blob fetched of 0 bytes)
        base = self.opts.base_blobs or {}
        r.blobs_fetched = sum(1 for d in self.fetcher.fetched if d not in base)
        r.blobs_reused = len(self.reused)
        r.bytes_fetched = sum(x.bytes_fetched for x in self.results)
        r.bytes_reused = sum(self.reused.values())
        r.bytes_kept = sum(x.bytes_kept for x in self.results)
        return r

    async def fetch_all(self, order: list[str] | None) -> None:
        """Every blob the images need, each once, in `order` (the bundle's, so its sha256
        can follow the downloads instead of waiting for a blob early in the tar that came
        last; else the images'). At most PLACING per registry are under way at once: a task
        per blob for thousands of images at once held 2-3 KB each (its coroutine, semaphore
        waiter, the image's gather) until the last download ended. An image is accounted
        (its summary line, `seconds`) when its last blob is in; a blob that fails fails
        every image that needs it (`failed`: the run stops, or with --keep-going the
        others go on and blobs no image still needs are not started)."""
        # digest -> the image that needs it, or the images, in order: it is fetched for the
        # first (most blobs are one image's own; a list, a tuple and two dicts' entries per
        # blob were 1.7 MiB through the downloads at 8,500 blobs)
        users: dict[str, int | list[int]] = {}
        left: dict[int, int] = {}
        for i, p in self.resolved():
            need = self.need(p)
            left[i] = len(need)
            for d in need:
                had = users.setdefault(d.digest, i)
                if isinstance(had, list):
                    had.append(i)
                elif had != i:
                    users[d.digest] = [had, i]
            if not need:
                self.fetched_all(i, p)
        lanes: dict[str, list[str]] = {}  # registry -> its blobs, in order
        for digest in order if order is not None else users:
            lanes.setdefault(self.specs[_first(users[digest])].reference.registry,
                             []).append(digest)

        def placed(digest: str, task: asyncio.Future[None]) -> None:
            e = task.exception()
            if e is not None and not isinstance(e, MirrorError):
                raise e
            now = time.monotonic()
            at = self.prefetch.in_hand_at(digest, now)
            for i in _all(users.pop(digest)):
                plan = self.plans[i]
                if plan is None:
                    continue
                if e is not None:
                    self.results[i].seconds = self.took(i, now)
                    self.failed(i, e)  # raises unless keep_going
                    continue
                self.came_in(i, at)
                left[i] -= 1
                if not left[i]:
                    self.fetched_all(i, plan)

        def start(digest: str) -> asyncio.Future[None] | None:
            if not any(self.plans[i] is not None for i in _all(users[digest])):
                users.pop(digest)  # only failed images wanted it (--keep-going)
                return None
            self.prefetch.placing(digest)
            i = _first(users[digest])
            d = (self.plans[i] or self.unfinished[i]).blobs[digest]  # failed: unfinished
            ref = self.specs[i].reference
            return self.fetcher.place(ref.registry, ref.repository, d, i,
                                      context=self.context(i))

        await gather_or_cancel(
            bounded(((d, functools.partial(start, d)) for d in digests), PLACING, placed)
            for digests in lanes.values())

    def context(self, i: int) -> contextvars.Context:
        """Where image `i`'s downloads run: their retries count for it, and their requests
        draw on what its registry's budget promised it (admit)."""
        ctx = contextvars.copy_context()
        ctx.run(RETRY_COUNTER.set, self.retry_counts[i])
        ctx.run(ADMITTED.set, True)
        return ctx

    async def fetches(self, i: int, plan: Image) -> set[Hashable]:
        """The blobs it needs that are not in the cache (nor fetched by this run)."""
        return {d.digest for d in self.need(plan) if d.digest not in self.fetcher.done
                and not self.store.has(d.digest, d.size)}

    async def plan_and_prefetch(self) -> None:
        """Planning; once a request of it waits (a 429's Retry-After, a back-off), the blobs
        of the images planned so far, and of each planned after, start downloading into the
        cache (mirror.prefetch): one registry's storm does not hold another's downloads."""
        watch = None if self.opts.dry_run else asyncio.ensure_future(self.prefetch_when_held())
        try:
            await self.plan()
        finally:
            self.prefetch.stop()
            if watch is not None:
                await cancel_all([watch])

    async def prefetch_when_held(self) -> None:
        await self.client.t.stalled.wait()
        self.prefetch.on = True
        for i, plan in self.resolved():
            self.planned(i, plan)

    def renumbered(self, at: dict[int, int]) -> None:
        self.fetcher.owner = {d: at.get(i, i) for d, i in self.fetcher.owner.items()}
        self.prefetch.renumbered(at)

    def planned(self, i: int, plan: Image) -> None:
        if self.prefetch.on:
            ref = self.specs[i].reference
            self.prefetch.add(ref.registry, ref.repository, self.need(plan), i,
                              self.context(i))

    def came_in(self, i: int, at: float) -> None:
        """One of image `i`'s blobs in hand at `at` (0: during a resolution, which its
        seconds cover already)."""
        if at:
            self.last[i] = max(self.last.get(i, at), at)

    def fetched_all(self, i: int, plan: Image) -> None:
        """Image `i`'s blobs are all in the bundle: its seconds end at the last one in hand
        (or, with none to fetch, where its resolution did)."""
        last = self.last.pop(i, None)
        if last is not None:
            self.results[i].seconds = self.took(i, last)
        self.account(i, plan)
        self.progress.info(summary_line(self.specs[i], plan, self.results[i]))

    def in_hand(self) -> None:
        """The run stopped: each image planned whose blobs are all in hand (fetched by this
        run or found in the cache, as a warm rerun's are) is accounted as finished, as one
        whose last blob came in is; only the others were cut short. A stop while a rerun
        with nothing new planned, or checked the bundle already there, had every image
        `interrupted`. One stat per blob of an image not accounted, at the stop only."""
        fetched, store = self.fetcher.fetched, self.store

        def held(d: Descriptor) -> bool:
            try:
                return d.digest in fetched or store.has(d.digest, d.size)
            except OSError:  # the cache unreadable: not known to be in hand (and the run's
                return False  # own error, not this one, is what the stop reports)

        for i, plan in self.resolved():
            if i not in self.accounted and all(held(d) for d in self.need(plan)):
                self.account(i, plan)

    def account(self, i: int, plan: Image) -> None:
        account_image(self.results[i], self.need(plan), self.fetcher, i, self.reused)
        self.accounted.add(i)

    async def go(self) -> PullResult:
        opts, f, out = self.opts, self.fetcher, self.output
        try:
            await self.plan_and_prefetch()
            if opts.dry_run:
                return self.dry_run()
            # the bar's total (and so its ETA): every blob the bundle needs, counted once
            needed = {d.digest: d.size for _, p in self.resolved() for d in self.need(p)}
            self.progress.total(sum(needed.values()))
            # each is in use (`cache prune --older-than`), in the bundle already or not:
            # marked on a pool thread once the layout is made (a rerun's 2,000 utimes were
            # 10-15 ms of its end on the event loop; beside the layout's documents, 1.4 MiB
            # more of peak RSS at 2,000 references)
            there, order = await out.lay_out(self.image_set())
            touched = asyncio.get_running_loop().run_in_executor(
                IO_POOL, self.store.touch_all, list(needed))
            del needed
            if there:
                await cancel_all([*f.tasks.values()])  # any started early: not needed
                done = self.unchanged(there)
                await touched
                return done
            await touched
            if f.assembler is not None:
                self.in_layout = {i for i, _ in self.resolved()}
            try:
                await self.fetch_all(order)
                running = [*f.tasks.values(), *f.placing.values()]
                if self.only_waiting():  # their requests are paid for: let them land in
                    # the cache (a new request of theirs finds the budget spent at once), so
                    # the next run does not download them again
                    await asyncio.gather(*running, return_exceptions=True)
                # downloads only a failed image still wanted (--keep-going): stop them before
                # the bundle is finished or rewritten, so none writes into it any more
                await cancel_all(running)
                if not self.resolved() and self.first_error:
                    raise self.first_error
                digest, same = await out.finish(
                    self.image_set, any(self.plans[i] is None for i in self.in_layout))
            except BaseException:
                await cancel_all([*f.tasks.values(), *f.placing.values()])
                out.abort()
                raise
        except BaseException:
            await cancel_all([*f.tasks.values(), *f.placing.values()])
            raise
        finally:
            out.stop_reading()
        result = self.result()
        if opts.output is not None:
            result.bundle, result.bundle_digest, result.unchanged = opts.output, digest, same
            for note in unloadable([p for _, p in self.resolved()], self.opts.base_blobs):
                self.progress.info(note)
        return result

    def only_waiting(self) -> bool:
        """Every image that failed waits for a registry's request budget (exit 14)."""
        codes = {r.error_code for r in self.results if r.error}
        return bool(codes) and codes == {BudgetSpent.exit_code}

    def dry_run(self) -> PullResult:
        needed: dict[str, int] = {}  # each blob once, however many images share it
        for i, p in self.resolved():
            cached = {d.digest: d.size for d in self.need(p) if self.store.has(d.digest, d.size)}
            self.results[i].bytes_reused = sum(cached.values())
            self.reused.update(cached)
            needed.update((d.digest, d.size) for d in self.need(p))
            self.accounted.add(i)
        result = self.result()
        result.dry_run_bytes = sum(needed.values())
        return result

    def unchanged(self, digest: str) -> PullResult:
        """The output already holds exactly this bundle: no byte to fetch or write."""
        for i, p in self.resolved():
            self.account(i, p)
            self.progress.info(summary_line(self.specs[i], p, self.results[i]))
        result = self.result()
        needed = {d.digest for _, p in self.resolved() for d in self.need(p)}  # touched (go)
        result.blobs_reused = sum(1 for d in needed if d not in self.fetcher.fetched)
        result.bundle, result.bundle_digest, result.unchanged = self.opts.output, digest, True
        return result


def _first(users: int | list[int]) -> int:
    return users[0] if isinstance(users, list) else users


def _all(users: int | list[int]) -> list[int]:
    return users if isinstance(users, list) else [users]
