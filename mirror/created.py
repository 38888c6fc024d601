"""When a tag's image was created: the order of a tag rule's `latest: N` with
`order: created` (mirror.tagrules).

Where the time comes from, the first found (image-spec annotations.md and config.md; both
RFC 3339 date-times):
1. the tag's manifest's, or index's, `org.opencontainers.image.created` annotation;
2. for an index: the entry of the first platform the image's `platforms:` asks for (all by
   default; attestation entries are no platform): that entry's annotation, else the
   platform's manifest, read as in 1 and 3. One platform, not the newest of all: a build
   makes them together, and it keeps the cost at one manifest beyond the tag's (Docker Hub
   counts a pull as up to two manifest GETs);
3. for an image manifest: its config's `created`.
A tag with none (or a time that is not RFC 3339) has no time; the rule ranks it oldest. A tag
the listing named that is gone when asked about (404: deleted since, as registries that prune
old nightly builds do while the job runs) is no candidate: it is left out of the answer.

Costs: the manifests come through the client, so a manifest seen once is never fetched again
(a tag costs one HEAD on a warm rerun, and the pull that follows asks nothing more); the
config is read from the cache of blobs, where it is kept for the pull and the next run. A
digest several tags name is read once. On a registry with a request budget
(`max_requests_per_run`) a tag the store recorded, with its manifest, is not asked again (its
time is worked out from what the cache holds, the tag as a run last saw it): the budget goes
to the candidates not read yet, and what a run read is what the next need not ask, so runs
on a budget smaller than the candidates get through them (the tags chosen are asked again
by the pull, which carries what they name now).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mirror.aio import cancel_all
from mirror.digest import check_bytes
from mirror.errors import BudgetSpent, IntegrityError, NotFound
from mirror.manifest import Descriptor, RawManifest

if TYPE_CHECKING:
    from mirror.config import ImageSpec
    from mirror.registry.client import Client
    from mirror.store.blobs import BlobStore

ANNOTATION = "org.opencontainers.image.created"


class _Gone:
    """A candidate tag whose manifest the registry no longer has."""


GONE = _Gone()
AT_ONCE = 8  # candidate tags asked about at once (the transport bounds each registry too)


def parse_time(text: object) -> datetime | None:
    """An RFC 3339 date-time (nanoseconds cut to microseconds; no zone read as UTC); None
    for anything else."""
    if not isinstance(text, str) or not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


class Times:
    """The creation times of one run's candidate tags, each digest worked out once (an
    index once per platforms asked for: they choose the entry read)."""

    def __init__(self, client: Client, blobs: BlobStore | None) -> None:
        self.client, self.blobs = client, blobs
        self._by_digest: dict[tuple[str, object], asyncio.Task[datetime | None]] = {}
        self._sem = asyncio.Semaphore(AT_ONCE)
        # (registry, repository, tag) -> its manifest, asked once however many rules ask
        self._tags: dict[tuple[str, str, str], asyncio.Task[RawManifest]] = {}

    async def of_tags(self, spec: ImageSpec, tags: list[str]) -> dict[str, datetime | None]:
        """`tags` of `spec`'s repository, each with its image's creation time or None; a tag
        whose manifest is gone (404 for the tag itself) is left out."""
        async def one(tag: str) -> datetime | None | _Gone:
            ref = spec.reference
            key = (ref.registry, ref.repository, tag)
            if key not in self._tags:  # two rules on one repository, resolved at once
                self._tags[key] = asyncio.ensure_future(self._manifest(*key))
            try:
                raw = await asyncio.shield(self._tags[key])
            except NotFound:  # deleted since the listing: not a tag to choose
                return GONE
            return await self._of(spec, raw)

        # every question to its end, though one failed: an answer on its way is paid for
        # (a request of a max_requests_per_run, a Docker Hub pull), so it is kept for the
        # next run; once the budget is spent, the questions not yet sent fail at once
        tasks = [asyncio.ensure_future(one(t)) for t in tags]
        try:
            if tasks:
                await asyncio.wait(tasks)
        except BaseException:  # stopped (a signal): nothing left running
            await cancel_all(tasks)
            raise
        failed = [e for t in tasks if (e := t.exception()) is not None]
        if failed:  # the first, in the tags' order; with the budget spent, how many of
            if isinstance(failed[0], BudgetSpent):  # them a next run must ask again
                failed[0].unasked = sum(isinstance(e, BudgetSpent) for e in failed)
                failed[0].candidates = len(tags)
            raise failed[0]
        times = [t.result() for t in tasks]
        return {t: at for t, at in zip(tags, times, strict=True) if not isinstance(at, _Gone)}

    async def close(self) -> None:
        """Nothing left running (a rule failed, or the run was stopped), nor unseen."""
        await cancel_all([*self._tags.values(), *self._by_digest.values()])

    async def _manifest(self, registry: str, repo: str, tag: str) -> RawManifest:
        if self.client.t.limits_for(registry).budget is not None:
            raw = self.client.recorded(registry, repo, tag)
            if raw is not None:
                return raw
        async with self._sem:
            return await self.client.get_manifest(registry, repo, tag)

    def _of(self, spec: ImageSpec, raw: RawManifest) -> asyncio.Task[datetime | None]:
        sel = spec.settings.platforms
        key = (raw.digest, (sel.all, sel.platforms) if raw.is_index else None)
        task = self._by_digest.get(key)
        if task is None:
            task = asyncio.ensure_future(self._work_out(spec, raw))
            self._by_digest[key] = task
        return task

    async def _work_out(self, spec: ImageSpec, raw: RawManifest) -> datetime | None:
        ref = spec.reference

        async def parsed() -> dict:  # read back from the cache's store, where its GET left it
            return raw.parsed

        own = _annotated(await self.client.reading(
            parsed, lambda _: (ref.registry, ref.repository)))
        if own is not None:
            return own
        if raw.is_index:
            entry = _platform_entry(spec, raw.children)
            if entry is None:
                return None
            said = parse_time(entry.annotations.get(ANNOTATION))
            if said is not None:
                return said
            async with self._sem:
                child = await self.client.get_manifest(ref.registry, ref.repository,
                                                       entry.digest, expected=entry)
            return await self._of(spec, child)
        cfg = raw.config
        if not raw.is_image or cfg is None:
            return None
        async with self._sem:
            data = await self._config(ref.registry, ref.repository, cfg)
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        return parse_time(doc.get("created")) if isinstance(doc, dict) else None

    async def _config(self, registry: str, repo: str, desc: Descriptor) -> bytes:
        """The config's bytes, from the cache of blobs when it holds them (verified), else
        fetched and kept there."""
        if self.blobs is not None and self.blobs.has(desc.digest, desc.size):
            data = self.blobs.read(desc.digest)
            try:
                check_bytes(data, desc.digest, desc.size, f"cache {self.blobs.path(desc.digest)}")
                return data
            except IntegrityError:
                self.blobs.evict(desc.digest)
        data = await self.client.get_small_blob(registry, repo, desc.digest)
        if self.blobs is not None:
            self.blobs.put_bytes(desc.digest, data, f"{registry}/{repo}@{desc.digest}",
                                 fetched=True)
        return data


def _annotated(doc: dict) -> datetime | None:
    notes = doc.get("annotations")
    return parse_time(notes.get(ANNOTATION)) if isinstance(notes, dict) else None


def _platform_entry(spec: ImageSpec, children: list[Descriptor]) -> Descriptor | None:
    """The first entry of a platform `spec` asks for, else the first of any platform."""
    platforms = [c for c in children if c.platform is not None and not c.platform.is_unknown]
    wanted = [c for c in platforms if spec.settings.platforms.wants(c.platform)]
    return wanted[0] if wanted else (platforms[0] if platforms else None)
