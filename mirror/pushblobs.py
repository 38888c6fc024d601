"""A push's blobs at one target registry (step 1 of mirror.push): a HEAD of each blob each
repository needs, then, as mirror.pushplan decides from the answers, the mounts, then each
blob uploaded once, to the first repository that needs it, and mounted into the others. From
a BlobSource read at random, `jobs` at once (a failed upload is tried again by
mirror.registry.upload, from the offset the registry reports); from a StreamSource read in
one pass (a .tar.zst) in the stream's order, a blob whose upload failed waiting for the next
pass."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Protocol, runtime_checkable

from mirror.aio import confirmed, gather_or_cancel
from mirror.errors import BudgetSpent, BundleError, IncompleteBase, MirrorError, RegistryError
from mirror.manifest import Descriptor
from mirror.progress import Progress
from mirror.pushplan import (
    BlobPlan,
    PushImage,
    PushResult,
    blob_needs,
    blob_plan,
    fails_alone,
    held_only,
    holders,
    lost_base,
)
from mirror.registry.client import Client
from mirror.registry.ratelimit import BlobSlots
from mirror.registry.upload import aclose, restartable

Body = Callable[[Descriptor], AsyncIterator[bytes]]  # a member of a one-pass stream, verified


class BlobSource(Protocol):
    """Where the blobs come from, at random: `open` yields a blob's bytes from `offset`,
    checked against its digest and size (from byte 0: a mismatch raises before the last
    chunk, so no upload completes with it)."""

    name: str

    def carries(self, digest: str) -> bool: ...
    def open(self, desc: Descriptor, offset: int) -> AsyncIterator[bytes]: ...


@runtime_checkable
class StreamSource(Protocol):
    """Where the blobs come from in one pass (a .tar.zst): `stream` yields each blob it
    carries, in its order, once per pass; a blob whose upload failed waits for the next."""

    name: str

    def carries(self, digest: str) -> bool: ...
    def stream(self) -> Iterator[tuple[str, Body]]: ...


Source = BlobSource | StreamSource
Reader = Callable[[Descriptor, int], AsyncIterator[bytes]]  # a blob's bytes from an offset
# the blobs an incremental source left to its base, not in the repositories that need them:
# digest -> a target repository holding it, and how many repositories were looked in
Elsewhere = Callable[[dict[str, Descriptor], list[str]], Awaitable[tuple[dict[str, str], int]]]


class BlobPush:
    """The blobs of one push, asked about and transferred: counted in `result`, advanced on
    `progress`."""

    def __init__(self, client: Client, registry: str, source: Source, result: PushResult,
                 progress: Progress, sem: asyncio.Semaphore, *, small_apart: bool = False,
                 alone: bool = False, unreadable: dict[str, MirrorError] | None = None
                 ) -> None:
        self.client, self.reg, self.source = client, registry, source
        self.result, self.progress, self.sem = result, progress, sem
        # `small_apart` (a sync: each blob read from its registry as it is pushed): the
        # small ones beside the `jobs` transfers, as many as the target's small requests, as
        # a pull's fetcher reads them (BlobSlots). A load's (a bundle: nothing to wait on)
        # go `jobs` at once
        self.slots = BlobSlots(client.t.limits_for(registry), sem) if small_apart else None
        # digest -> why a blob could not be read: its source registry's requests for the run
        # are spent (a sync's max_requests_per_run); the images that need it wait
        self.unread: dict[str, BudgetSpent] = {}
        # `alone` (a sync's --keep-going): digest -> what fails the images that need the
        # blob, each alone (mirror.pushplan.fails_alone): the source could not give it, or
        # the target refused it (its upload, or its mount and the upload after it); the
        # other blobs go on
        self.alone = alone
        self.failed: dict[tuple[str, str], MirrorError] = {}  # (repository, digest) -> why
        # of those, the source's (kept across a sync's pushes: not read again), and the
        # errors the source raised as this push read it (id() -> the error)
        self.unreadable = unreadable if unreadable is not None else {}
        self._from_source: dict[int, BaseException] = {}
        # (repository, digest) -> the blob and whether it is uploaded (else mounted) there:
        # transfers asked for and not answered yet; one the push stops in (Ctrl-C, another
        # blob's error) may have reached the target all the same (`settle`)
        self.asked: dict[tuple[str, str], tuple[Descriptor, bool]] = {}

    async def check(self, images: list[PushImage], held: set[int], absent: Mapping[str, str],
                    elsewhere: Elsewhere | None, origins: Mapping[str, str]) -> BlobPlan:
        """A HEAD of each blob each repository needs asked about (mirror.pushplan decides
        which, and what each then needs: `held`, the id() of the images the target serves
        whole, need none); an incremental source's base blobs found in none of them are
        looked for elsewhere in the target (`elsewhere`), to be mounted, as are the blobs
        the source reads from a repository of the target's own registry (`origins`: digest
        -> that repository; a sync within one registry)."""
        need, there = blob_needs(images, held)
        self.result.blobs_present += held_only(need, there)

        async def present(repo: str, d: Descriptor) -> bool:
            async with self.sem:
                return await self.client.has_blob(self.reg, repo, d)

        checks = [(repo, d) for repo, ds in need.items() for d in ds.values()]
        flags = await gather_or_cancel(present(r, d) for r, d in checks)
        held_in = holders(checks, flags, there, origins)
        carries = self.source.carries
        lost = lost_base(checks, flags, held_in, carries, absent)
        searched = 0
        if lost and elsewhere is not None:  # the base may be in other repositories: mount
            found, searched = await elsewhere(lost, list(need))
            held_in.update(found)
        self.result.started = True
        plan = blob_plan(checks, flags, held_in, carries, absent)
        plan.searched = searched
        self.result.blobs_present += plan.present
        return plan

    def listed(self, plan: BlobPlan) -> None:
        """A dry run's lines for the blobs the push would mount and upload."""
        for repo, d, src in plan.mounts:
            self.result.dry_run.append(f"blob {d.digest} -> {repo} (mount from {src})")
        for digest, where in sorted(plan.todo.items()):
            self.result.dry_run.append(f"blob {digest} -> {', '.join(r for r, _ in where)}")

    async def run(self, plan: BlobPlan) -> None:
        """Mount what the plan mounts (a mount refused: uploaded instead), then upload the
        rest, each blob once, mounted into the other repositories that need it."""
        todo = plan.todo
        self.progress.total(sum(ws[0][1].size for ws in todo.values()))
        await self._mount_all(plan.mounts, todo)
        if isinstance(self.source, StreamSource):
            await self._push_passes(self.source, todo)
            return
        await self._upload_all(todo)
        if self.failed:  # the sessions their failed uploads left open
            await self.client.cancel_open_uploads()

    async def _mount_all(self, mounts: list[tuple[str, Descriptor, str]],
                         todo: dict[str, list[tuple[str, Descriptor]]]) -> None:
        """Each (repository, blob, from) mounted; one the registry would not mount is
        uploaded instead (added to `todo`)."""
        async def mounted(repo: str, d: Descriptor, src: str) -> str | None:
            async with self.sem:
                try:
                    return await self._mount(repo, d, src)
                except MirrorError as e:
                    if not self._fails_alone([(repo, d)], e):
                        raise
                    return None  # failed: its images with it (`failed`)

        locs = await gather_or_cancel(mounted(*m) for m in mounts)
        for (repo, d, src), loc in zip(mounts, locs, strict=True):
            if loc is None:
                continue
            await self.client.cancel_upload(self.reg, repo, loc)  # pushed in its own session
            if not self.source.carries(d.digest):
                raise IncompleteBase(f"{self.source.name}: {self.reg} would not mount "
                                     f"{d.digest} from {src} into {repo}, and "
                                     f"{self.source.name} does not carry it")
            todo.setdefault(d.digest, []).append((repo, d))

    async def _upload_all(self, todo: dict[str, list[tuple[str, Descriptor]]]) -> None:
        """From a BlobSource, `jobs` at once (the small ones beside them: `slots`): a blob
        whose source's registry has no request left for the run waits (`unread`); with
        `alone`, one that fails alone fails its images (`failed`); else the push stops."""
        assert not isinstance(self.source, StreamSource)
        read = self._marked(self.source.open) if self.alone else self.source.open

        async def guarded(where: list[tuple[str, Descriptor]]) -> None:
            digest = where[0][1].digest
            if digest in self.unreadable:  # the source failed it for a push before
                self.failed.update({(r, digest): self.unreadable[digest] for r, _ in where})
                return
            async with self.slots(where[0][1].size) if self.slots else self.sem:
                try:
                    await self._push_one(where, read, one_pass=False)
                except BudgetSpent as e:
                    if e.registry == self.reg:  # the target's own: the push stops
                        raise
                    self.unread[digest] = e
                except MirrorError as e:
                    if not self._fails_alone(where, e):
                        raise

        await gather_or_cancel(guarded(w) for w in todo.values())

    def _fails_alone(self, where: list[tuple[str, Descriptor]], e: MirrorError) -> bool:
        """A blob's transfer into the repositories `where` failed: with `alone`, an error
        that fails the images needing it there alone (mirror.pushplan.fails_alone: the
        source's, or the target's refusal) does (`failed`); else (False) the push stops."""
        source = id(e) in self._from_source
        if not self.alone or not fails_alone(e, source):
            return False
        self.failed.update({(repo, d.digest): e for repo, d in where})
        if source:
            self.unreadable[where[0][1].digest] = e
        return True

    def _marked(self, read: Reader) -> Reader:
        """`read`, what it raises kept as the source's (`_from_source`): a blob the source
        cannot give, not a target that refuses it."""
        async def marked(d: Descriptor, offset: int) -> AsyncIterator[bytes]:
            chunks = read(d, offset)
            try:
                async for chunk in chunks:
                    yield chunk
            except MirrorError as e:
                self._from_source[id(e)] = e
                raise
            finally:  # its registry's download slot, if it holds one, given back now
                await aclose(chunks)

        return marked

    async def _push_one(self, where: list[tuple[str, Descriptor]], read: Reader, *,
                        one_pass: bool) -> list[tuple[str, Descriptor]]:
        """Upload to the first repository, mount into the others; return those where the
        registry would not mount (a `one_pass` body cannot be read twice: the caller passes
        again)."""
        client, reg = self.client, self.reg
        first_repo, d = where[0]
        await self._upload(first_repo, d, read, seekable=not one_pass)
        self.progress.advanced(d.size)
        left = []
        for repo, desc in where[1:]:
            loc = await self._mount(repo, d, first_repo)
            if loc is None:
                continue
            if one_pass:
                await client.cancel_upload(reg, repo, loc)  # the next pass opens its own
                left.append((repo, desc))
            else:
                await self._upload(repo, d, read, seekable=True, location=loc)
        return left

    async def _upload(self, repo: str, d: Descriptor, read: Reader, *, seekable: bool,
                      location: str | None = None) -> None:
        """Upload `d` into `repo`, counted once the registry has answered (or, cut short,
        once `settle` finds it there)."""
        key = (repo, d.digest)
        self.asked[key] = (d, True)
        await self.client.upload_blob(self.reg, repo, d, lambda off: read(d, off),
                                      seekable=seekable, location=location)
        del self.asked[key]
        self._count(d, True)

    async def _mount(self, repo: str, d: Descriptor, src: str) -> str | None:
        """Mount `d` into `repo` from `src`, counted when mounted; else the Location of an
        upload session to push it into."""
        key = (repo, d.digest)
        self.asked[key] = (d, False)
        loc = await self.client.mount_blob(self.reg, repo, d, src)
        del self.asked[key]
        if loc is None:
            self._count(d, False)
        return loc

    def _count(self, d: Descriptor, uploaded: bool) -> None:
        if uploaded:
            self.result.blobs_pushed += 1
            self.result.bytes_pushed += d.size
        else:
            self.result.blobs_mounted += 1

    async def settle(self, within: float) -> None:
        """After the push stopped (Ctrl-C, SIGTERM, an error) and its open upload sessions
        were cancelled: each transfer it stopped in whose blob the target holds now (the
        registry did the work, its answer was still on its way) is counted as done, so the
        report says what the target received in this run. One HEAD each, at most `within`
        seconds in all; a transfer not known to have landed is not counted."""
        asked, self.asked = list(self.asked.items()), {}

        async def landed(transfer: tuple[tuple[str, str], tuple[Descriptor, bool]]) -> bool:
            (repo, _), (d, _) = transfer
            return await self.client.has_blob(self.reg, repo, d)

        for _, (d, uploaded) in await confirmed(asked, landed, within):
            self._count(d, uploaded)

    async def _push_passes(self, source: StreamSource,
                           todo: dict[str, list[tuple[str, Descriptor]]]) -> None:
        """One pass over the source's stream; again for blobs a mount did not take, and for
        uploads that failed with a cause worth another try (a stream can't be re-sent: the
        blob waits for the next pass, up to the retry policy's tries)."""
        failures: dict[str, int] = {}
        policy = self.client.t.policy
        while todo:
            again: dict[str, list[tuple[str, Descriptor]]] = {}
            stream = source.stream()
            try:  # a push that fails closes the source's file now, not when collected
                for digest, body in stream:
                    if digest not in todo:
                        continue
                    where = todo.pop(digest)
                    left = await self._try_pass(digest, where, body, failures)
                    if left:
                        again[digest] = left
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
            if todo:
                raise BundleError(f"{self.source.name}: blob(s) missing from the stream: "
                                  f"{', '.join(sorted(todo)[:5])}")
            todo = again
            if failures and todo:
                await asyncio.sleep(policy.delay(max(failures.values())))

    async def _try_pass(self, digest: str, where: list[tuple[str, Descriptor]], body: Body,
                        failures: dict[str, int]) -> list[tuple[str, Descriptor]]:
        try:
            return await self._push_one(where, lambda d, _off: body(d), one_pass=True)
        except RegistryError as e:
            tries = self.client.t.policy.tries
            failures[digest] = failures.get(digest, 0) + 1
            if not restartable(e) or failures[digest] >= tries:
                raise
            self.client.t.count_retry()
            self.client.t.debug(f"retry upload of blob {digest} on the next pass over "
                                f"{self.source.name}: {e}; try {failures[digest] + 1} of "
                                f"{tries}")
            return where
