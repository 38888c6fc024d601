"""A sync's planning: where each image lands at each target, and the planner pull's planning
(mirror.planning) becomes for a sync: configs from the cache or held for the push, and images
admitted on a budgeted registry for what their pushes need. What each target holds already,
asked as the images resolve and read from there instead of from the source, is
mirror.sync_there's (Holdings)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING

from mirror.config import ImageSpec
from mirror.errors import MirrorError
from mirror.fetch import Fetcher
from mirror.image import Image
from mirror.manifest import RawManifest
from mirror.mapping import Target, check
from mirror.planning import Planner
from mirror.progress import Progress
from mirror.push import Pusher
from mirror.pushplan import PushImage, PushResult, push_requests
from mirror.registry.client import Client
from mirror.resolve import Foreseen
from mirror.sync_there import Holdings, placed
from mirror.there import There

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from mirror.sync import SyncOptions

CONFIGS_HELD_MAX = 8 << 20  # bytes of configs a sync without a cache keeps from planning


def push_images(plans: list[Image], target: Target) -> list[PushImage]:
    """The images as `mirror load` of their bundle would push them to `target`
    (mirror.mapping.place: the run's rules, images.yaml's destinations, the depth limit,
    digest tags), its referrers after every image, in their image's repository, by digest
    or under their cosign tag."""
    out: list[PushImage] = []
    landing = []
    referrers: list[PushImage] = []
    for img in plans:
        own, refs, where = placed(img, target)
        landing.append((img.name, where, img.root.digest))
        out += own
        referrers += refs
    check(target, landing)
    return out + referrers


def origins(plans: Iterable[Image], registry: str) -> dict[str, str]:
    """digest -> the repository of `registry` the sync reads that blob from, which a push to
    `registry` mounts it from (POST ?mount=&from=: one request, no byte read or sent); not a
    foreign layer, which the registry may not hold (its urls serve it: uploaded)."""
    out: dict[str, str] = {}
    for p in plans:
        if (ref := p.reference) is not None and ref.registry == registry:
            for d in p.blobs.values():
                if not d.is_foreign:
                    out.setdefault(d.digest, ref.repository)
    return out


class SyncPlanner(Planner):
    """Configs from the cache when there is one (a pull's way), else from the registry,
    kept (up to CONFIGS_HELD_MAX bytes in all) for the push: read and checked here, they
    are not asked for again. A registry with a request budget has its images admitted whole
    (mirror.planning's `admit`), each for the blob GETs its push needs of it."""

    GONE = ("; a target that serves the locked image whole is read from instead, but one "
            "the sync filters or converts (--platform, platforms:, --format) is made from "
            "the locked manifest itself, so its source must still serve it")

    def __init__(self, client: Client, specs: list[ImageSpec], opts: SyncOptions,
                 progress: Progress, fetcher: Fetcher | None, targets: list[Target],
                 later: Callable[[], Awaitable[list[ImageSpec]]] | None = None) -> None:
        super().__init__(client, specs, opts, progress, targets[0] if targets else None, later)
        self.fetcher = fetcher
        self.targets = targets
        self.merge = opts.merge
        # what each target holds, asked as the images resolve (`elsewhere`, `planned`);
        # its step-0 answers (`asked`) are the push's
        self.holdings = Holdings(client, targets, opts.referrer_types)
        self.configs: dict[str, bytes] = {}  # digest -> config bytes (no cache)
        self.held = 0

    def renumbered(self, at: dict[int, int]) -> None:
        if self.fetcher is not None:
            self.fetcher.owner = {d: at.get(i, i) for d, i in self.fetcher.owner.items()}

    async def config(self, i: int, registry: str, repo: str, desc) -> bytes:
        if self.fetcher is not None:
            return await self.fetcher.config_bytes(registry, repo, desc, owner=i)
        data = await self.client.get_small_blob(registry, repo, desc.digest)
        if desc.digest not in self.configs and self.held + len(data) <= CONFIGS_HELD_MAX:
            self.configs[desc.digest] = data
            self.held += len(data)
        return data

    async def fetches(self, i: int, plan: Image) -> set[Hashable]:
        """The source's blob GETs the image's pushes need: of each blob a target does not
        hold (of an image, or a referrer, it serves whole already: a run before pushed it)
        and does not mount (a target on the image's own registry mounts what the source
        reads there: `origins`) one from the cache's fetch, when not in the cache; without
        a cache one per target that needs it, but for the configs planning read
        (RegistrySource's `held`). And a target on the image's own registry spends its
        budget too: the requests its push may make there, at most
        (mirror.pushplan.push_requests: a mount for what it mounts), of what it lacks; of
        an image it serves whole, step 0's HEAD of each manifest below the root that this
        run did not read there (mirror.pushheld; a lost one, pushed again, spends more)."""
        out: set[Hashable] = set()
        own_reg = self.specs[i].reference.registry
        mounts = origins([plan], own_reg)
        for n, target in enumerate(self.targets):
            there = await self.holdings.at_target(plan, n)
            here = target.registry == own_reg  # one budget for both
            for d in plan.blobs.values():
                if d.digest in there or here and d.digest in mounts:
                    continue
                if self.fetcher is None:
                    if d.digest not in self.configs:
                        out.add((n, d.digest))
                elif d.digest not in self.fetcher.done and \
                        not self.fetcher.store.has(d.digest, d.size):
                    out.add(d.digest)
            if here:
                own, refs, _ = placed(plan, target)
                for img in own + refs:
                    said = self.holdings.said(n, img)
                    if said is not True:  # not there whole
                        out |= push_requests(img, there, n, self.merge,
                                             lambda d: d.digest in mounts, said)
                    else:  # step 0 asks whether it serves each manifest below (pushheld)
                        out |= {(n, img.repository, m.digest, "manifest HEAD")
                                for m in img.manifests[:-1] if not self.client.served(
                                    target.registry, img.repository, m.digest)}
        return out

    def stopped(self, progress: Progress) -> tuple[set[int], list[tuple[Target, PushResult]]]:
        """A sync stopped while resolving: per target, what it said it serves whole of the
        images resolved (`asked`, as they resolved: `elsewhere`), counted present and
        placed as a push that stopped counts what it found there (mirror.push's
        say_held), the push never started (its counts null); and the images every target
        serves so with every reference (tags, referrers), which the report has finished
        (the others interrupted): the placement names them."""
        resolved = self.resolved()
        owner = {id(x): i for i, plan in resolved for x in (plan, *plan.referrers)}
        finished = {i for i, _ in resolved}
        out = []
        for n, target in enumerate(self.targets):
            try:
                images = push_images([p for _, p in resolved], target)
            except MirrorError:  # its names clash: nothing placed there
                images = []
            done = PushResult(images=images)
            pusher = Pusher(self.client, target.registry, images, done, progress,
                            self.opts.jobs, self.merge)
            pusher.held = {id(p) for p in images if self.holdings.said(n, p) is True}
            finished -= {owner[id(p.image)] for p in images if id(p) not in pusher.held}
            if not images:
                finished.clear()
            pusher.say_held()
            out.append((target, done))
        return finished, out

    async def elsewhere(self, i: int, spec: ImageSpec, root: RawManifest | str | None,
                        foresee: Callable[[], Awaitable[Foreseen | None]]) -> There | None:
        return await self.holdings.elsewhere(spec, root, foresee)

    def planned(self, i: int, plan: Image) -> None:
        self.holdings.planned(plan)
