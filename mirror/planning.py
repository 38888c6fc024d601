"""The planning phase shared by `mirror pull` and `mirror sync`: every image resolved
(manifests, platform selection, conversion, referrers), then checked together (one size per
blob digest, one image per target tag: mirror.crosscheck), before any layer moves. What each
image became, or why it failed, is its ImageResult (the report's entry: mirror.imageresult)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Protocol

from mirror.aio import bounded, cancel_all, gather_or_cancel
from mirror.config import ImageSpec
from mirror.convert import convert_plan
from mirror.crosscheck import check_sizes, check_targets, resolved
from mirror.errors import BudgetSpent, MirrorError, NotFound
from mirror.image import Image, report_fields
from mirror.imageresult import ImageResult
from mirror.manifest import Descriptor, RawManifest
from mirror.mapping import Target
from mirror.platform import Platform
from mirror.progress import Progress
from mirror.referrers import Finder
from mirror.registry.client import Client
from mirror.registry.policy import RETRY_COUNTER
from mirror.resolve import Foreseen, resolve
from mirror.there import There

# a registry's images under way at once in planning, per resolution slot of it (Planner._lane):
# more than the slots, since an image waiting for its repository's tag listing holds none
LANE = 4


class PlanOptions(Protocol):
    """What planning reads of a run's options (mirror.pull_options.PullOptions, and
    mirror.sync's)."""

    @property
    def jobs(self) -> int: ...
    @property
    def keep_going(self) -> bool: ...
    @property
    def referrer_types(self) -> tuple[str, ...]: ...
    @property
    def dry_run(self) -> bool: ...


class Planner:
    """The per-image results and plans of one run, and the phase that fills them.
    `config` fetches an image's config (for its platform); a pull's keeps it in the cache."""

    GONE = ""  # what a locked manifest the source no longer serves means to this command

    def __init__(self, client: Client, specs: list[ImageSpec], opts: PlanOptions,
                 progress: Progress, target: Target | None = None,
                 later: Callable[[], Awaitable[list[ImageSpec]]] | None = None) -> None:
        self.client, self.specs, self.opts = client, list(specs), opts
        # the run's images once its tag rules chose theirs (`specs` those planned meanwhile:
        # mirror.commands.planned_meanwhile), and where each stands in them (settle)
        self.later = later
        self.order: list[int] | None = None
        self.known = later is None  # the run's images known (the tag rules chose theirs)
        # where the images will land: a sync's first --to, with the run's rules (--map,
        # --max-depth); a pull's is any load's PREFIX, with images.yaml's destinations alone
        self.target = target
        self.progress = progress
        self.finder = Finder(client)
        # images resolving at once, per registry: one whose requests wait (a 429 storm, a
        # stall) holds its own registry's slots, never another's
        self.sems: dict[str, asyncio.Semaphore] = {}
        self.turns: dict[str, asyncio.Lock] = {}  # per registry with a budget (turn)
        self.results = [ImageResult(str(s.reference), s.where) for s in specs]
        self.retry_counts = [[0] for _ in specs]  # per image (a shared blob: its first image)
        self.plans: list[Image | None] = [None] * len(specs)
        self.first_error: MirrorError | None = None
        self.unfinished: dict[int, Image] = {}  # failed after planning, or still going
        # image -> when its resolution began: its `seconds` are its own (from there to its
        # last blob in hand), not the run's, which another registry's waits lengthen
        self.began: dict[int, float] = {}
        # the blob requests a registry's budget promised to the images admitted (`admit`)
        self.promised: set[Hashable] = set()
        self.t0 = time.monotonic()

    def config(self, i: int, registry: str, repo: str, desc: Descriptor) -> Awaitable[bytes]:
        return self.client.get_small_blob(registry, repo, desc.digest)

    async def plan(self) -> None:
        """Resolve every image and check them together; raise the first error unless
        `keep_going` (then only when no image is left). With `later`, the images given are
        resolved while the tag rules choose the rest (a registry's Retry-After on its
        listing holds its own images, not another's), then all are put in the run's order."""
        early = list(range(len(self.specs)))
        if self.later is None:
            await self._lanes(early)
        else:
            await gather_or_cancel([self._lanes(early), self.plan_later()])
            self.settle()
        await check_sizes(self.client, self.specs, self.plans, self.failed)
        check_targets(self.specs, self.plans, self.target, self.failed)
        if not self.resolved() and self.first_error:
            raise self.first_error

    async def plan_later(self) -> None:
        """The run's images, once the tag rules chose theirs (among them, as they are,
        those planned already: in no repository a rule lists, so no rule chose them too);
        the others are planned now, in the config's order."""
        assert self.later is not None
        final = await self.later()
        early = {id(s): i for i, s in enumerate(self.specs)}
        order, new = [], []
        for spec in final:
            i = early.get(id(spec))
            if i is None:
                i = len(self.specs)
                self.specs.append(spec)
                self.results.append(ImageResult(str(spec.reference), spec.where))
                self.retry_counts.append([0])
                self.plans.append(None)
                new.append(i)
            order.append(i)
        assert sorted(order) == list(range(len(self.specs))), "an image planned twice"
        self.order, self.known = order, True
        await self._lanes(new)

    def settle(self) -> None:
        """Put every image in the run's order (`order`, once known): the report's, the
        bundle's and the lock file's."""
        order, self.order = self.order, None
        if order is None or order == list(range(len(order))):
            return
        at = {i: n for n, i in enumerate(order)}
        self.specs = [self.specs[i] for i in order]
        self.results = [self.results[i] for i in order]
        self.retry_counts = [self.retry_counts[i] for i in order]
        self.plans = [self.plans[i] for i in order]
        self.unfinished = {at[i]: p for i, p in self.unfinished.items()}
        self.began = {at[i]: t for i, t in self.began.items()}
        self.renumbered(at)

    async def _lanes(self, ids: list[int]) -> None:
        """Images `ids`, a lane per registry (`_lane`); the first error stops them all."""
        lanes: dict[str, list[int]] = {}  # registry -> its images, in order
        for i in ids:
            lanes.setdefault(self.specs[i].reference.registry, []).append(i)
        await gather_or_cancel(self._lane(registry, ids) for registry, ids in lanes.items())

    async def _lane(self, registry: str, ids: list[int]) -> None:
        """`registry`'s images, in order, as many under way at once as it has resolution
        slots (`slots`) keep busy: a task per image started at once, nearly all waiting for a
        slot, held about 2 KB each (2,000 images: 4 MiB at the start of planning). LANE
        times the slots are under way, since an image waiting for its repository's tag
        listing holds no slot (resolve_one). The first error (`failed`: not --keep-going)
        stops the lane, and what it started."""
        running: set[asyncio.Future[None]] = set()

        def start(i: int) -> asyncio.Future[None]:
            task = asyncio.ensure_future(self.plan_one(i, self.specs[i]))
            running.add(task)
            return task

        def finished(i: int, task: asyncio.Future[None]) -> None:
            running.discard(task)
            task.result()  # its error stops the run

        try:
            lim = self.client.t.limits_for(registry)
            await bounded(((i, functools.partial(start, i)) for i in ids),
                          lambda: LANE * lim.small, finished)
        finally:
            if running:
                await cancel_all(running)

    def renumbered(self, at: dict[int, int]) -> None:
        """The images were put in the run's order: image `i` is now `at[i]` (what a pull
        keeps by image moves with it)."""

    def failed(self, i: int, e: MirrorError) -> None:
        res = self.results[i]
        res.error, res.error_code, res.hint = str(e), e.exit_code, e.hint
        plan = self.plans[i]
        if plan is not None:
            self.unfinished[i] = plan  # what it fetched still counts (result())
        self.plans[i] = None
        self.first_error = self.first_error or e
        # a registry's requests for this run are spent: the images that need none finish
        if not self.opts.keep_going and not isinstance(e, BudgetSpent):
            raise e
        ref, msg = str(self.specs[i].reference), str(e)
        rest = msg[len(ref):] if msg.startswith(ref) else ""
        if rest[:1] in (":", " "):  # the error names its image first: once, not twice
            self.progress.warn(f"{ref}: failed{rest}")
        else:
            self.progress.warn(f"{ref}: failed: {msg}")

    def took(self, i: int, until: float | None = None) -> float:
        """Image `i`'s seconds from the start of its resolution to `until` (now); 0 for
        one that never began (it failed waiting for its turn)."""
        began = self.began.get(i)
        return 0.0 if began is None else round((until or time.monotonic()) - began, 3)

    def resolved(self) -> list[tuple[int, Image]]:
        return resolved(self.plans)

    def source_of(self, digest: str) -> tuple[str, str] | None:
        """The registry and repository manifest `digest` of a planned image came from (a
        referrer's: its subject's); None when no planned image has it."""
        return next((s for _, p in self.resolved() if (s := p.source_of(digest))), None)

    def slots(self, registry: str) -> asyncio.Semaphore:
        """The resolution slots of `registry`'s images: as many as the small requests it
        may have in flight (resolving is small requests, one after another)."""
        if registry not in self.sems:  # the limiter's small requests grow: as many more
            self.sems[registry] = self.client.t.limits_for(registry).small_slots()
        return self.sems[registry]

    def turn(self, registry: str) -> contextlib.AbstractAsyncContextManager[object]:
        """A registry with a request budget (max_requests_per_run) resolves its images one
        at a time, in the config's order, each admitted (`admit`) before the next is asked
        about: the budget goes to whole images, first to last, not to every image's manifests
        and then to none's blobs. Other registries resolve theirs at once."""
        if self.client.t.limits_for(registry).budget is None:
            return contextlib.nullcontext()
        return self.turns.setdefault(registry, asyncio.Lock())

    async def admit(self, i: int, plan: Image) -> None:
        """Image `i` is resolved. A registry with a request budget: promise it a request per
        blob it still needs (`fetches`: not promised to an image before it), or refuse it and
        the images after it (BudgetSpent: they wait for the next run). A dry run (and so
        `mirror lock`) fetches no blob: it spends the budget on resolving alone."""
        lim = self.client.t.limits_for(self.specs[i].reference.registry)
        if lim.budget is None or self.opts.dry_run:
            return
        new = await self.fetches(i, plan) - self.promised
        lim.admit(len(new))
        self.promised |= new

    async def elsewhere(self, i: int, spec: ImageSpec, root: RawManifest | str | None,
                        foresee: Callable[[], Awaitable[Foreseen | None]]) -> There | None:
        """Where else image `i`, whose root manifest its registry named `root` (or, pinned,
        whose root has digest `root`; None, its tag before the root is read: There.root;
        `foresee`: the index it will carry, when filtered),
        is held:
        the registry and repository its manifests and configs below the root (those it
        holds) are read from by digest (mirror.resolve); None (a pull's): its registry
        alone."""
        return None

    async def fetches(self, i: int, plan: Image) -> set[Hashable]:
        """The blob requests image `i` needs of its registry, each named as the run fetches
        it once (a pull's: the digests not in the cache; a sync's: mirror.sync)."""
        return {d.digest for d in plan.blobs.values()}

    async def plan_one(self, i: int, spec: ImageSpec) -> None:
        async with self.turn(spec.reference.registry):
            await self.resolve_one(i, spec)

    async def resolve_one(self, i: int, spec: ImageSpec) -> None:
        res = self.results[i]
        if spec.failed is not None:  # a tag rule whose repository could not be listed
            self.failed(i, spec.failed)
            return
        RETRY_COUNTER.set(self.retry_counts[i])  # this task, and those it starts
        slots = self.slots(spec.reference.registry)
        held: list[There | None] = [None]  # where else it is held, for its referrers too

        async def elsewhere(root: RawManifest | str | None,
                            foresee: Callable[[], Awaitable[Foreseen | None]]) -> There | None:
            held[0] = await self.elsewhere(i, spec, root, foresee)
            return held[0]

        try:
            async with slots:
                self.began[i] = time.monotonic()
                plan = await resolve(self.client, spec,
                                     lambda r, p, d: self.config(i, r, p, d),
                                     self.opts.referrer_types, elsewhere)
            missing = missing_platforms(spec, plan)
            if missing:  # some asked for, not all: the bundle lacks them, so say it
                self.progress.warn(
                    f"{spec.reference}: has no {', '.join(missing)}: the bundle carries only "
                    f"{', '.join(plan.platforms) or 'none'} of the platforms asked for "
                    "(give this image the platforms it has with `platforms:` in its "
                    "images.yaml entry to say that is expected)")

            async def convert() -> None:  # it reads the manifests back from the store
                convert_plan(plan, spec.settings.format, self.progress,
                             rewrite_foreign=spec.settings.foreign_layers == "rewrite")

            await self.client.reading(convert, plan.source_of)
            if spec.settings.referrers:  # `referrers: false` or --no-referrers
                # its repository's tags (cosign's, the fallback's) are awaited without a
                # slot: the first image of a repository lists it while the others' HEADs
                # go on, instead of each listing waiting in the queue behind every HEAD
                await self.finder.listing(spec.reference.registry, spec.reference.repository)
                async with slots:
                    await attach_referrers(self.finder, spec, plan, self.opts.referrer_types,
                                           self.progress, held[0])
            await self.admit(i, plan)
        except NotFound as e:
            self.failed(i, _gone(spec, e, self.GONE) if spec.pin is not None and
                        spec.pin in str(e) else e)
            return
        except MirrorError as e:
            self.failed(i, e)
            return
        finally:
            res.seconds = self.took(i)
        for key, value in report_fields(plan).items():  # the lock file's entry too
            setattr(res, key, value)
        self.plans[i] = plan
        self.planned(i, plan)

    def planned(self, i: int, plan: Image) -> None:
        """Image `i` is resolved (a pull may start its downloads: mirror.prefetch)."""


def _gone(spec: ImageSpec, e: NotFound, more: str = "") -> NotFound:
    """--locked: the manifest the lock file pinned is no longer served; say which image,
    where it is listed, that the digest is the lock's, and what to do (`more`: the
    command's own word on it)."""
    return NotFound(
        f"{spec.reference} (locked at {spec.pin}, {spec.where}): {e}",
        registry=e.registry, repository=e.repository, status=e.status, codes=e.codes,
        hint="the registry no longer serves the manifest the lock file names (deleted, or "
             "the tag moved and the old manifest was removed): pull without --locked (or "
             f"run `mirror lock`) to lock what the tag names now{more}")


def missing_platforms(spec: ImageSpec, plan: Image) -> list[str]:
    """The platforms asked for by name that the image does not have (none for `all`, or for
    a single-platform image or artifact, which matched or was refused with exit 8)."""
    sel = spec.settings.platforms
    if sel.all or not plan.root.is_index:
        return []
    have = []
    for text in plan.platforms:
        try:
            have.append(Platform.parse(text))
        except MirrorError:  # not a platform we can name: it matched nothing asked for
            continue
    return [str(w) for w in sel.platforms if not any(w.matches(h) for h in have)]


async def attach_referrers(finder: Finder, spec: ImageSpec, plan: Image,
                           types: tuple[str, ...], progress: Progress,
                           there: There | None = None) -> None:
    """Find what refers to the image (its source index and each platform manifest) and add
    each referrer, an image of its own, to the image's referrers (its blobs to the image's).
    `there`: where the image is held already, whose referrers are read from there (what it
    lists: mirror.referrers.Finder)."""
    ref = spec.reference
    subjects = dict.fromkeys([plan.source_digest, *plan.source_platform_digests.values()])
    for subject in subjects:
        for r in await finder.discover(ref.registry, ref.repository, subject, types, there):
            if r.root.is_index:
                progress.warn(f"{plan.name}: skipping referrer {r.root.digest} of {subject}:"
                              " an index of referrers is not carried yet")
                continue
            plan.referrers.append(r)
            plan.blobs.update(r.blobs)
    if plan.root.digest != plan.source_digest and any(
            r.subject == plan.source_digest for r in plan.referrers):
        # `accept_unsigned_index: true`: known and accepted, so not a warning (-q is silent)
        say = progress.info if spec.settings.accept_unsigned_index else progress.warn
        say(
            f"{plan.name}: signatures or other referrers were made for the source index "
            f"{plan.source_digest}; the {_new_root(plan)} does not match them. They are "
            f"carried keyed to the source digest; {_keep_signed(spec, plan)} to keep a signed index "
            "valid")


def _new_root(plan: Image) -> str:
    """What became of the source index: filtered (a subset), converted (old -> new), both."""
    converted = plan.source_digest in plan.conversions  # the root's own old -> new pair
    if plan.mode == "filter":
        return f"{'filtered and converted' if converted else 'filtered'} index {plan.root.digest}"
    return f"converted index {plan.source_digest} -> {plan.root.digest}"


def _keep_signed(spec: ImageSpec, plan: Image) -> str:
    settings = spec.settings
    keep = "`format: keep`" if settings.format != "keep" else "`foreign_layers: include`"
    if plan.source_digest not in plan.conversions:  # filtered only
        if not plan.left_behind:
            return "use `index: sparse` (or all platforms)"
        if settings.platforms.all:  # filtered of its attestations alone
            return "carry its attestations too (`--referrer-type attestation`), or use " \
                "`index: sparse`"
        return "use `index: sparse` (or all platforms, and `--referrer-type attestation`)"
    if plan.mode == "filter":
        return f"use {keep} with all platforms"
    return f"use {keep}"
