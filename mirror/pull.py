"""The pull engine: registry -> blob store -> bundle.

Images are resolved concurrently; every blob is fetched once into the content-addressed store
(shared across images, platforms and runs), verified on the way in; then the bundle is written
from the store in one deterministic pass. With `keep_going`, an image that fails is reported
and left out (the bundle is marked partial); otherwise the first failure stops the run. What
was downloaded stays in the store either way, so the next run does not fetch it again.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mirror.aio import cancel_all, gather_or_cancel
from mirror.bundle.assembler import Assembler
from mirror.bundle.layout import (
    A_CONVERSIONS,
    A_INDEX_MODE,
    A_PLATFORMS,
    A_SOURCE_DIGEST,
    Entry,
    Inventory,
    index_json,
)
from mirror.bundle.writer import BlobItem, tar_size, unchanged, write_bundle
from mirror.config import ImageSpec
from mirror.convert import convert_plan
from mirror.digest import check_bytes
from mirror.errors import IntegrityError, MirrorError, RegistryError
from mirror.manifest import Descriptor
from mirror.progress import NullProgress, Progress
from mirror.referrers import A_KIND, A_SUBJECT, Finder
from mirror.registry.client import Client, download_url
from mirror.resolve import ImagePlan, resolve
from mirror.store.blobs import _IO_POOL, BlobStore


@dataclass
class ImageResult:
    reference: str
    where: str = ""
    digest: str | None = None  # root digest in the bundle
    source_digest: str | None = None
    media_type: str | None = None
    mode: str | None = None
    platforms: list[str] = field(default_factory=list)
    platform_digests: dict[str, str] = field(default_factory=dict)
    manifests: list[str] = field(default_factory=list)
    conversions: dict[str, str] = field(default_factory=dict)
    bytes_fetched: int = 0
    bytes_reused: int = 0
    seconds: float = 0.0
    error: str | None = None
    error_code: int | None = None
    hint: str | None = None


@dataclass
class PullResult:
    images: list[ImageResult]
    bundle: Path | None = None
    bundle_digest: str | None = None
    bytes_fetched: int = 0
    bytes_reused: int = 0
    blobs_fetched: int = 0
    blobs_reused: int = 0
    retries: int = 0
    partial: bool = False
    dry_run_bytes: int = 0
    blobs: dict[str, int] = field(default_factory=dict)  # every blob the images need
    unchanged: bool = False  # the output already held exactly this bundle


@dataclass
class PullOptions:
    output: Path | None
    compress: bool = False
    jobs: int = 4
    keep_going: bool = False
    dry_run: bool = False
    base_blobs: dict[str, int] | None = None  # incremental: blobs the base bundle carries
    base_digest: str | None = None
    base_name: str | None = None
    referrers: bool = True  # False: --no-referrers
    referrer_types: tuple[str, ...] = ()


class _Fetcher:
    """Gets each digest once per run (a shared task), skipping what the store holds, and puts
    it in the bundle being assembled: teed while it downloads, else copied from the cache."""

    def __init__(self, client: Client, store: BlobStore, jobs: int, progress: Progress) -> None:
        self.client = client
        self.store = store
        self.sem = asyncio.Semaphore(jobs)
        self.progress = progress
        self.tasks: dict[str, asyncio.Task[bool]] = {}
        self.placing: dict[str, asyncio.Task[None]] = {}
        self.fetched: set[str] = set()
        self.reused: set[str] = set()
        self.teed: set[str] = set()
        self.owner: dict[str, int] = {}  # digest -> the image that first asked for it
        self.assembler: Assembler | None = None

    def fetch(self, registry: str, repo: str, desc: Descriptor, owner: int) -> asyncio.Task[bool]:
        task = self.tasks.get(desc.digest)
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            task = asyncio.ensure_future(self._fetch(registry, repo, desc))
            self.tasks[desc.digest] = task
            self.owner.setdefault(desc.digest, owner)
        return task

    async def _fetch(self, registry: str, repo: str, desc: Descriptor) -> bool:
        if self.store.has(desc.digest, desc.size):
            self.store.touch(desc.digest)
            self.reused.add(desc.digest)
            self.progress.advanced(desc.size)
            return False
        async with self.sem:
            sink = self.store.partial(desc.digest, desc.size,
                                      f"{registry}/{repo}@{desc.digest}")
            sink.tee = self.assembler.tee(desc.digest) if self.assembler else None
            offset = await asyncio.get_running_loop().run_in_executor(_IO_POOL, sink.open)
            if offset:
                self.progress.debug(f"resuming {desc.digest} at byte {offset}")
                self.progress.advanced(offset)
            try:
                try:
                    await self.client.download_blob(registry, repo, desc, sink,
                                                    progress=self.progress.advanced)
                except RegistryError:
                    if not desc.urls:  # a foreign layer (issue 4): then try its urls
                        raise
                    await download_url(self.client, desc, sink, self.progress.advanced)
            finally:
                sink.close()
        self.fetched.add(desc.digest)
        if sink.tee is not None:
            self.teed.add(desc.digest)
        return True

    async def config_bytes(self, registry: str, repo: str, desc: Descriptor,
                           owner: int = -1) -> bytes:
        """A config, from the cache (checked: cache entries are verified when reused)."""
        for attempt in (1, 2):
            await self.fetch(registry, repo, desc, owner)
            data = self.store.read(desc.digest)
            try:
                check_bytes(data, desc.digest, desc.size, f"cache {self.store.path(desc.digest)}")
                return data
            except IntegrityError:
                self.forget(desc.digest)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def forget(self, digest: str) -> None:
        """A damaged cache entry: drop it, so the next fetch downloads it again."""
        self.store.evict(digest)
        self.reused.discard(digest)
        self.tasks.pop(digest, None)

    def place(self, registry: str, repo: str, desc: Descriptor, owner: int) -> asyncio.Task[None]:
        """Fetch, then make sure the blob is in the bundle being assembled (once)."""
        task = self.placing.get(desc.digest)
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            task = asyncio.ensure_future(self._place(registry, repo, desc, owner))
            self.placing[desc.digest] = task
        return task

    async def _place(self, registry: str, repo: str, desc: Descriptor, owner: int) -> None:
        for attempt in (1, 2):
            await self.fetch(registry, repo, desc, owner)
            if self.assembler is None or desc.digest in self.teed:
                return
            path = self.store.path(desc.digest)
            verify = desc.digest not in self.fetched  # reused: verify; fetched: just checked
            try:
                await asyncio.get_running_loop().run_in_executor(
                    _IO_POOL, self.assembler.copy_cached, desc.digest, path, verify)
                return
            except IntegrityError:
                self.forget(desc.digest)  # and fetch it again, once
                if attempt == 2:
                    raise


async def pull(client: Client, store: BlobStore, specs: list[ImageSpec], opts: PullOptions,
               progress: Progress | None = None) -> PullResult:
    """Resolve every image, then fetch and assemble the bundle.

    Raises the first MirrorError unless `keep_going` (then only when no image succeeded);
    the error carries what was done so far as `err.pull_result`, for the report.
    """
    run = _Run(client, store, specs, opts, progress or NullProgress())
    try:
        return await run.go()
    except MirrorError as e:
        e.pull_result = run.result()  # type: ignore[attr-defined]
        raise


class _Run:
    """One pull: the per-image results and plans, and the phases that fill them."""

    def __init__(self, client: Client, store: BlobStore, specs: list[ImageSpec],
                 opts: PullOptions, progress: Progress) -> None:
        self.client, self.store, self.specs, self.opts = client, store, specs, opts
        self.progress = progress
        self.fetcher = _Fetcher(client, store, opts.jobs, progress)
        self.finder = Finder(client)
        self.sem = asyncio.Semaphore(max(2, opts.jobs))
        self.results = [ImageResult(str(s.reference), s.where) for s in specs]
        self.plans: list[ImagePlan | None] = [None] * len(specs)
        self.first_error: MirrorError | None = None
        self.in_layout: set[int] = set()  # the images the assembling bundle was laid out for
        self.t0 = time.monotonic()

    def failed(self, i: int, e: MirrorError) -> None:
        res = self.results[i]
        res.error, res.error_code, res.hint = str(e), e.exit_code, e.hint
        self.plans[i] = None
        self.first_error = self.first_error or e
        if not self.opts.keep_going:
            raise e
        self.progress.warn(f"{self.specs[i].reference}: failed: {e}")

    def need(self, plan: ImagePlan) -> list[Descriptor]:
        base = self.opts.base_blobs or {}
        return [d for d in plan.blobs.values() if d.digest not in base]

    def resolved(self) -> list[tuple[int, ImagePlan]]:
        return [(i, p) for i, p in enumerate(self.plans) if p is not None]

    def result(self) -> PullResult:
        r = PullResult(self.results, retries=self.client.t.retries)
        r.partial = any(x.error for x in self.results)
        r.blobs = {d.digest: d.size for _, p in self.resolved() for d in p.blobs.values()}
        r.blobs_fetched, r.blobs_reused = len(self.fetcher.fetched), len(self.fetcher.reused)
        r.bytes_fetched = sum(x.bytes_fetched for x in self.results)
        r.bytes_reused = sum(x.bytes_reused for x in self.results)
        return r

    async def plan_one(self, i: int, spec: ImageSpec) -> None:
        res, f = self.results[i], self.fetcher
        try:
            async with self.sem:
                plan = await resolve(self.client, spec,
                                     lambda r, p, d: f.config_bytes(r, p, d, owner=i))
            convert_plan(plan, spec.settings.format, self.progress)
            if self.opts.referrers and spec.settings.referrers:
                async with self.sem:
                    await attach_referrers(self.finder, plan, self.opts.referrer_types,
                                           self.progress)
        except MirrorError as e:
            self.failed(i, e)
            return
        finally:
            res.seconds = round(time.monotonic() - self.t0, 3)
        res.digest, res.source_digest = plan.root.digest, plan.source_digest
        res.media_type, res.mode = plan.root.media_type, plan.mode
        res.platforms, res.conversions = plan.platforms, plan.conversions
        res.platform_digests = plan.platform_digests
        res.manifests = [m.digest for m in plan.manifest_order()]
        self.plans[i] = plan

    def check_sizes(self) -> None:
        """One digest, one size: an image that lists a blob with another size than an image
        before it is refused (a tar header cannot be both)."""
        seen: dict[str, tuple[int, str]] = {}
        for i, p in self.resolved():
            for d in p.blobs.values():
                size, who = seen.setdefault(d.digest, (d.size, p.name))
                if size != d.size:
                    self.failed(i, IntegrityError(
                        f"{p.name}: blob {d.digest} is listed with {d.size} bytes, but {who} "
                        f"lists it with {size}"))
                    break

    async def fetch_one(self, i: int, plan: ImagePlan) -> None:
        ref = plan.spec.reference
        try:
            await asyncio.gather(*(self.fetcher.place(ref.registry, ref.repository, d, i)
                                   for d in self.need(plan)))
        except MirrorError as e:
            self.failed(i, e)
            return
        finally:
            self.results[i].seconds = round(time.monotonic() - self.t0, 3)
        _account(self.results[i], plan, self.need(plan), self.fetcher, i)
        self.progress.info(_summary_line(plan, self.results[i]))

    async def go(self) -> PullResult:
        opts, f = self.opts, self.fetcher
        try:
            await gather_or_cancel(self.plan_one(i, s) for i, s in enumerate(self.specs))
            self.check_sizes()
            if not self.resolved() and self.first_error:
                raise self.first_error
            if opts.dry_run:
                return self.dry_run()
            if opts.output is not None and not opts.compress:
                lay = bundle_layout([p for _, p in self.resolved()], opts,
                                    partial=self.first_error is not None)
                same = unchanged(opts.output, lay.index, lay.inventory,
                                 tar_size(lay.index, lay.inventory, lay.manifests, lay.blobs))
                if same:
                    return self.unchanged(same)
                self.in_layout = {i for i, _ in self.resolved()}
                f.assembler = Assembler(opts.output, index_json=lay.index,
                                        inventory_json=lay.inventory, manifests=lay.manifests,
                                        blobs=[(b.digest, b.size) for b in lay.blobs])
            try:
                await gather_or_cancel(self.fetch_one(i, p) for i, p in self.resolved())
                if not self.resolved() and self.first_error:
                    raise self.first_error
                digest, same = await self.finish()
            except BaseException:
                if f.assembler is not None:
                    f.assembler.abort()
                raise
        except BaseException:
            await cancel_all([*f.tasks.values(), *f.placing.values()])
            raise
        result = self.result()
        if opts.output is not None:
            result.bundle, result.bundle_digest, result.unchanged = opts.output, digest, same
        return result

    async def finish(self) -> tuple[str | None, bool]:
        """Name the assembled bundle, or write it from the store (a .tar.zst, or when an
        image failed after the layout was fixed). Runs off the event loop; Ctrl-C stops a
        write cleanly (nothing is renamed into place)."""
        opts, f = self.opts, self.fetcher
        loop = asyncio.get_running_loop()
        partial = self.first_error is not None
        late = any(self.plans[i] is None for i in self.in_layout)
        if f.assembler is not None and not late:
            fut = loop.run_in_executor(_IO_POOL, f.assembler.finish)
            stop = None
        elif opts.output is not None:
            if f.assembler is not None:
                f.assembler.abort()
                f.assembler = None
            stop = threading.Event()
            plans = [p for _, p in self.resolved()]
            fut = loop.run_in_executor(_IO_POOL, functools.partial(
                write_plans, plans, self.store, opts, f.fetched, self.progress,
                partial=partial, stop=stop))
        else:
            return None, False
        try:
            out = await fut
        except asyncio.CancelledError:
            if stop is not None:
                stop.set()
            await asyncio.wait([fut])
            raise
        return (out, False) if isinstance(out, str) else out

    def dry_run(self) -> PullResult:
        for i, p in self.resolved():
            self.results[i].bytes_reused = sum(
                d.size for d in self.need(p) if self.store.has(d.digest, d.size))
        result = self.result()
        result.dry_run_bytes = sum(d.size for _, p in self.resolved() for d in self.need(p))
        return result

    def unchanged(self, digest: str) -> PullResult:
        """The output already holds exactly this bundle: no byte to fetch or write."""
        for i, p in self.resolved():
            self.results[i].bytes_reused = sum(d.size for d in self.need(p))
            self.progress.info(_summary_line(p, self.results[i]))
        result = self.result()
        result.bundle, result.bundle_digest, result.unchanged = self.opts.output, digest, True
        return result


def _account(res: ImageResult, plan: ImagePlan, need: list[Descriptor], fetcher: _Fetcher,
             i: int) -> None:
    """Bytes this image brought in: a blob fetched for several images counts for the first
    one that asked for it (so the totals are the bytes that really crossed the network)."""
    res.bytes_fetched = res.bytes_reused = 0
    for d in need:
        if d.digest in fetcher.fetched and fetcher.owner.get(d.digest) == i:
            res.bytes_fetched += d.size
        elif d.digest not in fetcher.fetched:
            res.bytes_reused += d.size


async def attach_referrers(finder: Finder, plan: ImagePlan, types: tuple[str, ...],
                           progress: Progress) -> None:
    """Find what refers to the image (its source index and each platform manifest) and add
    each referrer, with its blobs, to the plan as an entry of its own."""
    ref = plan.spec.reference
    subjects = dict.fromkeys([plan.source_digest, *plan.platform_digests.values()])
    for subject in subjects:
        for r in await finder.discover(ref.registry, ref.repository, subject, types):
            if r.manifest.is_index:
                progress.warn(f"{plan.name}: skipping referrer {r.manifest.digest} of {subject}:"
                              " an index of referrers is not carried yet")
                continue
            plan.referrers.append(r)
            for d in r.manifest.blobs():
                plan.blobs[d.digest] = d
    if plan.root.digest != plan.source_digest and any(
            r.subject == plan.source_digest for r in plan.referrers):
        progress.warn(
            f"{plan.name}: signatures or other referrers were made for the source index "
            f"{plan.source_digest}; the filtered index {plan.root.digest} does not match them. "
            "They are carried keyed to the source digest; use `index: sparse` (or all "
            "platforms) to keep a signed index valid")


def _summary_line(plan: ImagePlan, res: ImageResult) -> str:
    s = f"{plan.name}: {plan.root.digest} ({', '.join(plan.platforms) or 'no platform'})"
    if plan.mode == "filter":
        s += f" filtered from index {plan.source_digest}"
    elif plan.mode == "sparse":
        s += " sparse (source index kept)"
    for old, new in plan.conversions.items():
        s += f"; converted {old} -> {new}"
    if plan.referrers:
        kinds = sorted({r.kind for r in plan.referrers})
        s += f"; {len(plan.referrers)} referrer(s) ({', '.join(kinds)})"
    s += f"; {res.bytes_fetched} bytes fetched, {res.bytes_reused} reused"
    return s


def entries_for(plans: list[ImagePlan]) -> list[Entry]:
    entries: dict[str, Entry] = {}
    for p in plans:
        ann = {A_INDEX_MODE: p.mode}
        if p.platforms:
            ann[A_PLATFORMS] = ",".join(dict.fromkeys(p.platforms))
        if p.root.digest != p.source_digest:
            ann[A_SOURCE_DIGEST] = p.source_digest
        if p.conversions:
            ann[A_CONVERSIONS] = ",".join(f"{o}>{n}" for o, n in p.conversions.items())
        entries[p.name] = Entry(p.name, p.root.media_type, p.root.digest, p.root.size, ann)
        for r in p.referrers:
            ref = p.spec.reference
            name = f"{ref.name}:{r.tag}" if r.tag else f"{ref.name}@{r.manifest.digest}"
            m = r.manifest
            entries[name] = Entry(name, m.media_type, m.digest, m.size,
                                  {A_SUBJECT: r.subject, A_KIND: r.kind})
    return list(entries.values())


@dataclass
class BundleLayout:
    index: bytes
    inventory: bytes
    manifests: list[tuple[str, bytes]]  # in tar order
    blobs: list[BlobItem]  # in tar order (verify flags set by the writer's caller)


def bundle_layout(plans: list[ImagePlan], opts: PullOptions, *, partial: bool) -> BundleLayout:
    """What the bundle holds, in its fixed order: the same plans give the same bytes."""
    manifests: dict[str, bytes] = {}
    blobs: dict[str, int] = {}
    inv = Inventory(partial=partial, base=opts.base_digest, base_name=opts.base_name)
    for p in plans:
        for m in p.manifest_order():
            manifests[m.digest] = m.data
        for r in p.referrers:
            manifests[r.manifest.digest] = r.manifest.data
        for d in p.blobs.values():
            inv.blobs[d.digest] = d.size
            if opts.base_blobs and d.digest in opts.base_blobs:
                inv.absent[d.digest] = "base"
            else:
                blobs[d.digest] = d.size
        for digest, reason in p.absent.items():
            inv.absent.setdefault(digest, reason)
        inv.conversions.update(p.conversions)
    inv.manifests = sorted(manifests)
    return BundleLayout(index_json(entries_for(plans)), inv.to_bytes(),
                        [(d, manifests[d]) for d in inv.manifests],
                        [BlobItem(d, size, verify=True) for d, size in sorted(blobs.items())])


def write_plans(plans: list[ImagePlan], store: BlobStore, opts: PullOptions,
                fresh: set[str], progress: Progress, *, partial: bool,
                stop: threading.Event | None = None) -> tuple[str, bool]:
    """Write the bundle from the store in one pass (a .tar.zst, or after a late failure);
    return its digest, and True when an identical one was already there."""
    assert opts.output is not None
    lay = bundle_layout(plans, opts, partial=partial)
    items = [BlobItem(b.digest, b.size, verify=b.digest not in fresh) for b in lay.blobs]
    size = None if opts.compress else tar_size(lay.index, lay.inventory, lay.manifests, items)
    same = unchanged(opts.output, lay.index, lay.inventory, size)
    if same:
        return same, True
    progress.total(sum(b.size for b in items))
    return write_bundle(
        opts.output, index_json=lay.index, inventory_json=lay.inventory,
        manifests=lay.manifests, blobs=items, store=store, compress=opts.compress,
        stop=stop), False
