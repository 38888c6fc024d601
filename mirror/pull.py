"""The pull engine: registry -> blob store -> bundle.

Images are resolved concurrently; every blob is fetched once into the content-addressed store
(shared across images, platforms and runs), verified on the way in; then the bundle is written
from the store in one deterministic pass. With `keep_going`, an image that fails is reported
and left out (the bundle is marked partial); otherwise the first failure stops the run. What
was downloaded stays in the store either way, so the next run does not fetch it again.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from mirror.aio import cancel_all, gather_or_cancel
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
from mirror.errors import MirrorError, RegistryError
from mirror.manifest import Descriptor
from mirror.progress import NullProgress, Progress
from mirror.referrers import A_KIND, A_SUBJECT, discover
from mirror.registry.client import Client, download_url
from mirror.resolve import ImagePlan, resolve
from mirror.store.blobs import BlobStore


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
    """Downloads each digest once per run (a shared task), skipping what the store holds."""

    def __init__(self, client: Client, store: BlobStore, jobs: int, progress: Progress) -> None:
        self.client = client
        self.store = store
        self.sem = asyncio.Semaphore(jobs)
        self.progress = progress
        self.tasks: dict[str, asyncio.Task[bool]] = {}
        self.fetched: set[str] = set()
        self.reused: set[str] = set()

    def fetch(self, registry: str, repo: str, desc: Descriptor) -> asyncio.Task[bool]:
        task = self.tasks.get(desc.digest)
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            task = asyncio.ensure_future(self._fetch(registry, repo, desc))
            self.tasks[desc.digest] = task
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
            offset = sink.open()
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
        return True

    async def config_bytes(self, registry: str, repo: str, desc: Descriptor) -> bytes:
        await self.fetch(registry, repo, desc)
        return self.store.read(desc.digest)


async def pull(client: Client, store: BlobStore, specs: list[ImageSpec], opts: PullOptions,
               progress: Progress | None = None) -> PullResult:
    """Raise the first MirrorError unless `keep_going`; return what was done."""
    progress = progress or NullProgress()
    fetcher = _Fetcher(client, store, opts.jobs, progress)
    sem = asyncio.Semaphore(max(2, opts.jobs))
    results = [ImageResult(str(s.reference), s.where) for s in specs]
    plans: list[ImagePlan | None] = [None] * len(specs)

    async def one(i: int, spec: ImageSpec) -> None:
        res = results[i]
        t0 = time.monotonic()
        try:
            async with sem:
                plan = await resolve(client, spec, fetcher.config_bytes)
            from mirror.convert import convert_plan

            convert_plan(plan, spec.settings.format, progress)
            if opts.referrers and spec.settings.referrers:
                async with sem:
                    await attach_referrers(client, plan, opts.referrer_types, progress)
            res.digest, res.source_digest = plan.root.digest, plan.source_digest
            res.media_type, res.mode = plan.root.media_type, plan.mode
            res.platforms, res.conversions = plan.platforms, plan.conversions
            res.platform_digests = plan.platform_digests
            res.manifests = [m.digest for m in plan.manifest_order()]
            need = [d for d in plan.blobs.values()
                    if not (opts.base_blobs and d.digest in opts.base_blobs)]
            if not opts.dry_run:
                ref = spec.reference
                await asyncio.gather(*(fetcher.fetch(ref.registry, ref.repository, d)
                                       for d in need))
            for d in need:
                if d.digest in fetcher.fetched:
                    res.bytes_fetched += d.size
                elif not opts.dry_run or store.has(d.digest, d.size):
                    res.bytes_reused += d.size
            plans[i] = plan
            progress.info(_summary_line(plan, res))
        except MirrorError as e:
            res.error, res.error_code, res.hint = str(e), e.exit_code, e.hint
            if not opts.keep_going:
                raise
            progress.warn(f"{spec.reference}: failed: {e}")
        finally:
            res.seconds = round(time.monotonic() - t0, 3)

    try:
        await gather_or_cancel(one(i, s) for i, s in enumerate(specs))
    except BaseException:
        await cancel_all(fetcher.tasks.values())
        raise
    result = PullResult(results, retries=client.t.retries)
    result.partial = any(r.error for r in results)
    done = [p for p in plans if p is not None]
    result.blobs_fetched, result.blobs_reused = len(fetcher.fetched), len(fetcher.reused)
    result.blobs = {d.digest: d.size for p in done for d in p.blobs.values()}
    result.bytes_fetched = sum(r.bytes_fetched for r in results)
    result.bytes_reused = sum(r.bytes_reused for r in results)
    if opts.dry_run:
        result.dry_run_bytes = sum(d.size for p in done for d in p.blobs.values())
        return result
    if opts.output is not None and done:
        result.bundle = opts.output
        result.bundle_digest, result.unchanged = write_plans(
            done, store, opts, fetcher.fetched, progress, partial=result.partial)
    return result


async def attach_referrers(client: Client, plan: ImagePlan, types: tuple[str, ...],
                           progress: Progress) -> None:
    """Find what refers to the image (its source index and each platform manifest) and add
    each referrer, with its blobs, to the plan as an entry of its own."""
    ref = plan.spec.reference
    subjects = dict.fromkeys([plan.source_digest, *plan.platform_digests.values()])
    for subject in subjects:
        for r in await discover(client, ref.registry, ref.repository, subject, types):
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


def write_plans(plans: list[ImagePlan], store: BlobStore, opts: PullOptions,
                fresh: set[str], progress: Progress, *, partial: bool) -> tuple[str, bool]:
    """Write the bundle; return its digest, and True when an identical one was already there."""
    assert opts.output is not None
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
    items = [BlobItem(d, size, verify=d not in fresh) for d, size in sorted(blobs.items())]
    idx, inv_json = index_json(entries_for(plans)), inv.to_bytes()
    members = [(d, manifests[d]) for d in inv.manifests]
    size = None if opts.compress else tar_size(idx, inv_json, members, items)
    same = unchanged(opts.output, idx, inv_json, size)
    if same:
        return same, True
    progress.total(sum(blobs.values()))
    return write_bundle(
        opts.output, index_json=idx, inventory_json=inv_json, manifests=members, blobs=items,
        store=store, compress=opts.compress), False
