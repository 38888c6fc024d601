"""`mirror sync`: registry -> registry, no bundle. A composition of the two halves the other
commands use: pull's planning (mirror.planning: resolve, platforms, conversion, referrers,
the checks across images) as the source, and load's registry sink (mirror.push) once per
target, with the blobs read from the source registries (mirror.sources.RegistrySource) or,
with a cache, fetched into it once and read from it for every target (CacheSource). Its
planning is mirror.sync_plan's, what it asks its targets as the images resolve
mirror.sync_there's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mirror.config import ImageSpec
from mirror.errors import EXIT_RATE_LIMITED_PARTIAL, BudgetSpent, MirrorError
from mirror.fetch import Fetcher
from mirror.image import Image
from mirror.imageresult import ImageResult
from mirror.mapping import Target, unmatched
from mirror.planning import Planner
from mirror.progress import Progress
from mirror.push import push
from mirror.pushblobs import BlobSource
from mirror.pushplan import PushResult
from mirror.registry.client import Client
from mirror.registry.ratelimit import ADMITTED
from mirror.sources import CacheSource, RegistrySource
from mirror.store.blobs import BlobStore
from mirror.sync_plan import SyncPlanner, origins, push_images


@dataclass
class SyncOptions:
    jobs: int = 4
    keep_going: bool = False
    dry_run: bool = False
    merge: bool = False
    referrer_types: tuple[str, ...] = ()


@dataclass
class SyncResult:
    """Filled in as the sync goes: after a failure it holds what was done."""
    images: list[ImageResult] = field(default_factory=list)
    blobs: dict[str, int] = field(default_factory=dict)  # every blob the images need
    targets: list[tuple[Target, PushResult]] = field(default_factory=list)
    partial: bool = False
    planned: bool = False  # every image resolved (or failed): the images' entries are known
    # a sync that stopped: the images (indexes into `images`) pushed whole to every target
    # (their tags put or found there); the others, not failed, take the run's error
    finished: set[int] = field(default_factory=set)
    # stopped (no --keep-going) by an image a target could not take, once that target's
    # other images were pushed: what the targets got is printed, as a sync that finished
    failed_alone: bool = False


async def sync(client: Client, specs: list[ImageSpec], targets: list[Target],
               opts: SyncOptions, progress: Progress, result: SyncResult,
               store: BlobStore | None = None,
               later: Callable[[], Awaitable[list[ImageSpec]]] | None = None) -> SyncResult:
    """Plan every image, then push them to each target in turn. With `keep_going`, an
    image that fails to resolve, that a target cannot take (failed_at), or a blob of which
    the source cannot give (there and at the next targets: `unreadable`), is left out
    (`partial`); a push that fails otherwise stops the run.
    With `later` (the tag rules' choice: the run's images), `specs` are those planned
    meanwhile (mirror.planning)."""
    fetcher = Fetcher(client, store, opts.jobs, progress) if store is not None else None
    planner = SyncPlanner(client, specs, opts, progress, fetcher, targets, later)
    try:
        await planner.plan()
    except BaseException:  # stopped: the images every target said it serves whole already
        planner.settle()
        result.finished, result.targets = planner.stopped(progress)
        raise
    finally:
        planner.settle()
        result.images = planner.results
        for res, count in zip(planner.results, planner.retry_counts, strict=True):
            res.retries = count[0]
        result.planned = planner.known
    specs = planner.specs
    plans = [p for _, p in planner.resolved()]
    result.partial = planner.first_error is not None
    result.blobs = {d.digest: d.size for p in plans for d in p.blobs.values()}
    # each blob's source repository, and its descriptor there (a foreign layer's `urls`,
    # which a rewritten manifest no longer lists)
    where = {d.digest: (ref.registry, ref.repository, d) for p in plans
             if (ref := p.reference) is not None for d in p.blobs.values()}
    source: BlobSource = CacheSource(fetcher, where) if fetcher is not None else \
        RegistrySource(client, where, held=planner.configs)
    absent = {dg: why for p in plans for dg, why in p.absent.items()}
    # every target's names checked before anything is pushed to any of them
    pushes = [(target, push_images(plans, target)) for target in targets]
    for line in unmatched(targets[0].layout.rules if targets else (),
                          (s.reference.name for s in specs)):  # failed ones too
        progress.warn(line)
    # every target in the report from here on: one not reached has null counts
    result.targets = [(target, PushResult(images=images)) for target, images in pushes]
    over = 0  # the targets whose push is over
    # every target is pushed the images that resolved, one that failed or waits at a target
    # before too: what one target refused or could not get is still good for the next
    pushed = planner.resolved()
    # with --keep-going, the blobs the source could not give: their images fail at every
    # target (each push fails them at once), as a pull fails every image of a blob
    unreadable: dict[str, MirrorError] = {}
    # the source's blob GETs draw on what a registry's budget promised the images (admit)
    admitted = ADMITTED.set(True)
    try:
        for target, done in result.targets:
            try:
                await push(client, target.registry, done.images, source, done,
                           progress, absent=absent, jobs=opts.jobs, dry_run=opts.dry_run,
                           merge=opts.merge, source_of=planner.source_of,
                           asked=planner.holdings.asked[over],
                           origins=origins(plans, target.registry), small_apart=True,
                           alone=opts.keep_going, unreadable=unreadable)
                failed_at(planner, pushed, done, result)
            except BudgetSpent as e:  # the target's rate limit: its images wait, as a source's
                failed_at(planner, pushed, done, result)
                plans_of = dict(pushed)  # each for a blob of its own it could not read
                for i in unfinished(pushed, target.registry, done):
                    missed(planner, i, done, next((e.unread[d] for d in plans_of[i].blobs
                                                   if e.unread and d in e.unread), e))
            result.partial = result.partial or bool(done.left)
            over += 1
    except BaseException:  # stopped: which images every target has whole, for the report
        left = {i for t, done in result.targets[over:]
                for i in unfinished(planner.resolved(), t.registry, done)}
        result.finished = {i for i, _ in planner.resolved() if i not in left}
        raise
    finally:
        ADMITTED.reset(admitted)
    return result


def failed_at(planner: Planner, pushed: list[tuple[int, Image]], done: PushResult,
              result: SyncResult) -> None:
    """The images the target did not get whole for what failed there (PushResult.left, as
    the push filled it from its `failed`: an image's, or one of its referrers', manifest
    the target does not serve as it said it holds it, or, with --keep-going, refuses, or a
    blob of it the source cannot give or the target refuses) fail there, each with its
    error: with --keep-going the others go on (exit 13), without it the first stops the
    sync once this target's other images are pushed (its exit code)."""
    for i, _ in pushed:
        err = done.left.get(planner.results[i].reference)
        if err is not None:
            result.failed_alone = not planner.opts.keep_going
            missed(planner, i, done, err)


def missed(planner: Planner, i: int, done: PushResult, err: MirrorError) -> None:
    """Image `i` not got whole by the target of `done`: it waits there (a BudgetSpent) or
    failed there (`err`), one of the two, said in that target's entry (the first said: the
    push's own failure before a wait). Its own entry takes the first error of the run, or,
    over a wait at a target before, a failure (exit 13 outranks 14): each said once on its
    line."""
    err = done.left.setdefault(planner.results[i].reference, err)
    res = planner.results[i]
    if res.error is None or (res.error_code == EXIT_RATE_LIMITED_PARTIAL and
                             err.exit_code != EXIT_RATE_LIMITED_PARTIAL):
        planner.failed(i, err)


def unfinished(resolved: list[tuple[int, Image]], reg: str, done: PushResult) -> list[int]:
    """The images (their index among the run's) a push that stopped left unfinished: a tag
    (or, without one, the digest) not yet pushed, or, unless the push placed every manifest
    (it then stopped for the images it left out), referrers: those go after every image's
    tags (mirror.pushplan.manifest_groups), so an image with referrers is unfinished until
    then, its tags there or not."""
    there = set(done.tags) | set(done.pinned) | set(done.untagged)
    left = {id(p.image) for p in done.images if p.referrer_of is None and
            f"{reg}/{p.at}" not in there}
    return [i for i, plan in resolved
            if id(plan) in left or (plan.referrers and not done.placed)]
