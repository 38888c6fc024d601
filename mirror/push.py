"""The registry sink: images -> one target registry, in the order that never leaves a tag on
a half image. Its sources (a bundle for `mirror load`, the source registries or the cache for
`mirror sync`) hand it the images and a BlobSource (or, read in one pass, a StreamSource).

0. An image whose root the target already serves as its reference (the tag names the root's
   digest: one HEAD) is there whole: a registry accepts a manifest only once the blobs it
   names are there, an index (by default) only once its children are, and this push puts
   children before parents. Its blobs and children are not asked about again.
1. Blobs: HEAD each (repository, blob) at the target, so those present are skipped; a blob
   present in another repository of the target is mounted (POST ?mount=&from=), as are an
   incremental bundle's base blobs found elsewhere (the caller's `elsewhere`, which the
   load builds on mirror.elsewhere); the rest are uploaded once and mounted into the other
   repositories that need them. A source read in one pass (a .tar.zst) is pushed in its own
   order, a blob whose upload failed waiting for the next pass.
2. Manifests, byte for byte: children by digest, then digest-only roots, then tags; the
   referrers after every image, so their subjects are there first. What the target already
   serves as that reference is not pushed again (HEAD). A tag over another index keeps its
   other platforms with `merge` (mirror.merge), and is replaced with a warning without.
The dry run takes the same decisions (one function) and lists them instead of acting.
A push that fails or is stopped cancels the upload sessions it left open at the target.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from mirror.aio import gather_or_cancel
from mirror.artifacts import fallback_tag
from mirror.errors import (
    AuthError,
    BundleError,
    IncompleteBase,
    MirrorError,
    NotFound,
    RateLimited,
    RegistryError,
)
from mirror.image import Image, push_order
from mirror.manifest import Descriptor, RawManifest
from mirror.merge import merged, other_platforms, platforms
from mirror.progress import Progress
from mirror.referrers import Finder, held_fallback, with_referrer
from mirror.registry.client import Client
from mirror.registry.upload import restartable


@dataclass
class PushImage:
    """An image (mirror.image) and where it goes at the target."""

    image: Image
    repository: str  # target repository
    tag: str | None
    unnamed: bool = False  # an entry with no ref name (skopeo's oci-archive:FILE): by digest

    @property
    def name(self) -> str:  # the source's name for it
        return self.image.name

    @property
    def root(self) -> RawManifest:
        return self.image.root

    @property
    def referrer_of(self) -> str | None:  # a signature, SBOM or attestation: its subject
        return self.image.subject

    @functools.cached_property
    def manifests(self) -> list[RawManifest]:
        """Those under the root, children before their parents, root last."""
        return push_order([self.image.root], self.image.manifests)

    @functools.cached_property
    def blobs(self) -> list[Descriptor]:
        """Every blob the manifests name (absent on purpose or not), each once."""
        return list({d.digest: d for m in self.manifests for d in m.blobs()}.values())


@dataclass
class PushResult:
    images: list[PushImage] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)  # target@digest of images without a tag
    blobs_pushed: int = 0
    blobs_mounted: int = 0
    blobs_present: int = 0
    bytes_pushed: int = 0
    manifests_pushed: int = 0
    manifests_present: int = 0
    tags: list[str] = field(default_factory=list)
    untagged: list[str] = field(default_factory=list)  # HOST/REPO@DIGEST of unnamed entries
    dry_run: list[str] = field(default_factory=list)
    started: bool = False  # the target answered what it holds: the counts mean something


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
# the error for base blobs found nowhere: (their "digest (repository)", repositories looked in)
Incomplete = Callable[[list[str], int], MirrorError]


@dataclass
class BlobPlan:
    """What the target holds and what each blob needs: the one set of decisions the push
    and the dry run act on."""
    mounts: list[tuple[str, Descriptor, str]] = field(default_factory=list)  # repo, blob, from
    todo: dict[str, list[tuple[str, Descriptor]]] = field(default_factory=dict)  # to upload
    missing_base: list[str] = field(default_factory=list)
    searched: int = 0


async def push(client: Client, registry: str, images: list[PushImage], source: Source,
               result: PushResult, progress: Progress, *, absent: Mapping[str, str] | None = None,
               jobs: int = 4, dry_run: bool = False, merge: bool = False,
               elsewhere: Elsewhere | None = None, incomplete: Incomplete | None = None
               ) -> PushResult:
    """Push `images` (referrers after the others) to `registry`. `absent`: digest -> why a
    blob the source does not carry is not needed from it ("foreign": never pushed; "base":
    must be at the target already). `result` is filled in as the push goes: after a failure it
    holds what was done. A push that fails or is stopped (Ctrl-C, SIGTERM: a cancellation)
    first cancels the upload sessions it left open, within a few seconds."""
    pusher = Pusher(client, registry, images, source, result, progress, jobs, merge)
    try:
        await pusher.find_held()
        plan = await pusher.check_blobs(absent or {}, elsewhere)
        if plan.missing_base:
            missing = plan.missing_base
            raise (incomplete or _incomplete)(missing, plan.searched)
        if dry_run:
            pusher.list_blobs(plan)
        else:
            await pusher.push_blobs(plan)
        await pusher.push_manifests(dry_run)
        return result
    except BaseException:
        await client.cancel_open_uploads()
        raise


def _incomplete(missing: list[str], searched: int) -> MirrorError:
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return IncompleteBase(f"{len(missing)} blob(s) are in no repository of the target "
                          f"(looked in {searched}): {', '.join(missing[:5])}{more}")


class Pusher:
    """One push to one registry."""

    def __init__(self, client: Client, registry: str, images: list[PushImage],
                 source: Source, result: PushResult, progress: Progress, jobs: int,
                 merge: bool) -> None:
        self.client, self.reg, self.images, self.source = client, registry, images, source
        self.result, self.progress, self.merge = result, progress, merge
        self.jobs = jobs
        self.sem = asyncio.Semaphore(jobs)
        self.finder = Finder(client)
        self.done: set[tuple[str, str]] = set()  # (repository, reference) decided
        # (repository, digest) counted, pushed or present: a manifest is counted once in its
        # repository however many tags name it (another tag of it is a tag, not a manifest)
        self.counted: set[tuple[str, str]] = set()
        # (repository, fallback tag) -> the index it holds, as this push left it (or, in a
        # dry run, would leave it): read from the target once, then kept up to date here
        self.fallbacks: dict[tuple[str, str], RawManifest | None] = {}
        self.held: set[int] = set()  # id() of the images the target serves whole already
        self.not_there: set[tuple[str, str]] = set()  # (repository, root reference) asked

    async def find_held(self) -> None:
        """One HEAD of each image's reference (its tag, else its root's digest): where it
        names the root's digest, the image is there with everything it references (step 0)."""
        async def there(img: PushImage) -> bool:
            async with self.sem:
                return await _there(self.client, self.reg, img.repository,
                                    img.tag or img.root.digest, img.root)

        flags = await gather_or_cancel(there(i) for i in self.images)
        self.held = {id(i) for i, ok in zip(self.images, flags, strict=True) if ok}
        self.not_there = {(i.repository, i.tag or i.root.digest)
                          for i, ok in zip(self.images, flags, strict=True) if not ok}

    # -- blobs -----------------------------------------------------------------------------

    async def check_blobs(self, absent: Mapping[str, str],
                          elsewhere: Elsewhere | None) -> BlobPlan:
        need: dict[str, dict[str, Descriptor]] = {}  # which blobs each repository needs
        held: set[tuple[str, str]] = set()  # (repository, blob) of images there already
        for img in self.images:
            for d in img.blobs:
                if id(img) in self.held:
                    held.add((img.repository, d.digest))
                else:
                    need.setdefault(img.repository, {})[d.digest] = d
        # the report counts them present, as when each was asked about
        self.result.blobs_present += len({(r, dg) for r, dg in held
                                          if dg not in need.get(r, {})})

        async def present(repo: str, d: Descriptor) -> bool:
            async with self.sem:
                return await self.client.has_blob(self.reg, repo, d)

        checks = [(repo, d) for repo, ds in need.items() for d in ds.values()]
        flags = await gather_or_cancel(present(r, d) for r, d in checks)
        present_in: dict[str, str] = {}  # digest -> a target repository that already has it
        for (repo, d), ok in zip(checks, flags, strict=True):
            if ok:
                present_in.setdefault(d.digest, repo)
        for repo, digest in sorted(held):  # an image there whole: its blobs can be mounted
            present_in.setdefault(digest, repo)
        plan = BlobPlan()
        lost = {d.digest: d for (repo, d), ok in zip(checks, flags, strict=True)
                if not ok and d.digest not in present_in and not self.source.carries(d.digest)
                and absent.get(d.digest) == "base"}
        if lost and elsewhere is not None:  # the base may be in other repositories: mount
            found, plan.searched = await elsewhere(lost, list(need))
            present_in.update(found)
        self.result.started = True
        for (repo, d), ok in zip(checks, flags, strict=True):
            if ok:
                self.result.blobs_present += 1
                continue
            reason = None if self.source.carries(d.digest) else absent.get(d.digest, "foreign")
            if d.digest in present_in and reason in (None, "base"):  # foreign: never needed
                plan.mounts.append((repo, d, present_in[d.digest]))
            elif reason == "base":
                plan.missing_base.append(f"{d.digest} ({repo})")
            elif reason is None:
                plan.todo.setdefault(d.digest, []).append((repo, d))
        return plan

    def list_blobs(self, plan: BlobPlan) -> None:
        for repo, d, src in plan.mounts:
            self.result.dry_run.append(f"blob {d.digest} -> {repo} (mount from {src})")
        for digest, where in sorted(plan.todo.items()):
            self.result.dry_run.append(f"blob {digest} -> {', '.join(r for r, _ in where)}")

    async def push_blobs(self, plan: BlobPlan) -> None:
        todo = plan.todo
        self.progress.total(sum(ws[0][1].size for ws in todo.values()))
        for repo, d, src in plan.mounts:
            loc = await self.client.mount_blob(self.reg, repo, d, src)
            if loc is None:
                self.result.blobs_mounted += 1
                continue
            await self.client.cancel_upload(self.reg, repo, loc)  # pushed in its own session
            if not self.source.carries(d.digest):
                raise IncompleteBase(f"{self.source.name}: {self.reg} would not mount "
                                     f"{d.digest} from {src} into {repo}, and "
                                     f"{self.source.name} does not carry it")
            todo.setdefault(d.digest, []).append((repo, d))
        if isinstance(self.source, StreamSource):
            await self._push_passes(self.source, todo)
            return
        source = self.source

        async def guarded(where: list[tuple[str, Descriptor]]) -> None:
            async with self.sem:
                await self._push_one(where, source.open, one_pass=False)

        await gather_or_cancel(guarded(w) for w in todo.values())

    async def _push_one(self, where: list[tuple[str, Descriptor]], read: Reader, *,
                        one_pass: bool) -> list[tuple[str, Descriptor]]:
        """Upload to the first repository, mount into the others; return those where the
        registry would not mount (a `one_pass` body cannot be read twice: the caller passes
        again)."""
        client, reg = self.client, self.reg
        first_repo, d = where[0]
        await client.upload_blob(reg, first_repo, d, lambda off: read(d, off),
                                 seekable=not one_pass)
        self._pushed(d)
        left = []
        for repo, desc in where[1:]:
            loc = await client.mount_blob(reg, repo, d, first_repo)
            if loc is None:
                self.result.blobs_mounted += 1
            elif one_pass:
                await client.cancel_upload(reg, repo, loc)  # the next pass opens its own
                left.append((repo, desc))
            else:
                await client.upload_blob(reg, repo, d, lambda off: read(d, off),
                                         seekable=True, location=loc)
                self.result.blobs_pushed += 1
                self.result.bytes_pushed += d.size
        return left

    def _pushed(self, d: Descriptor) -> None:
        self.result.blobs_pushed += 1
        self.result.bytes_pushed += d.size
        self.progress.advanced(d.size)

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

    # -- manifests -------------------------------------------------------------------------

    async def push_manifests(self, dry_run: bool) -> None:
        """Children by digest for every image, then digest-only roots, then tags; the
        referrers after the images, never merged. Each (repository, reference) once."""
        plain = [i for i in self.images if i.referrer_of is None]
        refs = [i for i in self.images if i.referrer_of is not None]
        for group, merge in ((plain, self.merge), (refs, False)):
            for img in group:
                for m in img.manifests:
                    if m is not img.root:
                        await self._manifest(img, m.digest, m, merge, dry_run)
            for img in group:
                if img.tag is None:
                    await self._manifest(img, img.root.digest, img.root, merge, dry_run)
            if not dry_run:
                self._say_untagged(group)
            for img in group:
                if img.tag is not None:
                    await self._manifest(img, img.tag, img.root, merge, dry_run)

    async def _manifest(self, img: PushImage, ref: str, m: RawManifest, merge: bool,
                        dry_run: bool) -> None:
        """Decide (once per repository and reference) and act: push, or in a dry run list."""
        if (img.repository, ref) in self.done:
            return
        self.done.add((img.repository, ref))
        if id(img) in self.held:  # there whole: its tag and children asked about once
            action = "present"
        else:
            action, m = await self.decide(img, ref, m, merge)
        if m is not img.root and ref == img.tag:  # merged: the tag gets another index
            await self._root_by_digest(img, dry_run)
        if action != "push":
            self._count(img.repository, m.digest, pushed=False)
        if action != "present":
            if dry_run:
                self._list(img.repository, ref, m)
            else:
                await self._put(img, ref, m)
        if m is img.root and img.tag is None and m.subject is not None:
            await self._fallback(img.repository, m, dry_run)
        if not dry_run:
            self._say_where(img, ref, m)

    async def _root_by_digest(self, img: PushImage, dry_run: bool) -> None:
        """With --merge the tag holds a merged index; the image's own root is pushed by
        digest as well, so the digest the report, the lock file and its signatures name is
        one the target serves."""
        key = (img.repository, img.root.digest)
        if key in self.done:
            return
        self.done.add(key)
        if await _there(self.client, self.reg, img.repository, img.root.digest, img.root):
            self._count(img.repository, img.root.digest, pushed=False)
        elif dry_run:
            self._list(img.repository, img.root.digest, img.root)
        else:
            await self._put(img, img.root.digest, img.root)

    async def decide(self, img: PushImage, ref: str, m: RawManifest, merge: bool
                     ) -> tuple[str, RawManifest]:
        """What `ref` gets: ("present", m) when the target already serves those bytes as
        `ref`; else ("push", what): for a tag, the root or the root merged with the index the
        tag holds (`_over` warns as it decides)."""
        client, reg, repo = self.client, self.reg, img.repository
        root = m is img.root
        asked = root and (repo, ref) in self.not_there  # by find_held: not there
        if not asked and await _there(client, reg, repo, ref, m):
            return "present", m
        if root and img.tag is not None:
            m = await self._over(img, merge)
            if m is not img.root and await _there(client, reg, repo, ref, m):
                return "present", m  # merged before, the same way
        return "push", m

    async def _put(self, img: PushImage, ref: str, m: RawManifest) -> None:
        subject = await _put(self.client, self.reg, img, ref, m)
        self._count(img.repository, m.digest, pushed=True)
        if m.subject is not None:  # the registry's own word on its referrers API
            self.finder.api[self.reg] = subject is not None

    def _list(self, repo: str, ref: str, m: RawManifest) -> None:
        """A dry run's line for a manifest the push would PUT as `ref`."""
        at = "@" if ref == m.digest else ":"
        self.result.dry_run.append(f"manifest {m.digest} -> {self.reg}/{repo}{at}{ref}")

    async def _fallback(self, repo: str, m: RawManifest, dry_run: bool) -> None:
        """After referrer `m` is pushed by digest (or found there): where the target has no
        referrers API, its subject's `sha256-<hex>` index with `m` added (mirror.referrers)
        is pushed, or listed in a dry run, unless it lists `m` already. One decision for
        both: the dry run lists the very index the push would PUT, a second referrer of the
        same subject added to the first's."""
        assert m.subject is not None
        subject = m.subject.digest
        if await self.finder.has_api(self.reg, repo, subject):
            return
        key = (repo, fallback_tag(subject))
        if key not in self.fallbacks:
            self.fallbacks[key] = await held_fallback(self.client, self.reg, repo, subject)
        new = with_referrer(self.fallbacks[key], m)
        if new is None:
            return
        if dry_run:
            self._list(repo, key[1], new)
        else:
            await self.client.put_manifest(self.reg, repo, key[1], new)
            self._count(repo, new.digest, pushed=True)
        self.fallbacks[key] = new

    def _count(self, repo: str, digest: str, *, pushed: bool) -> None:
        """The report's manifests_pushed or manifests_present: once per manifest and
        repository, at the first reference decided (the other tags are `tags`)."""
        if (repo, digest) in self.counted:
            return
        self.counted.add((repo, digest))
        if pushed:
            self.result.manifests_pushed += 1
        else:
            self.result.manifests_present += 1

    def _say_where(self, img: PushImage, ref: str, m: RawManifest) -> None:
        if m is not img.root and ref != img.tag:
            return
        if img.tag is not None:
            self.result.tags.append(f"{self.reg}/{img.repository}:{img.tag}")
            self.progress.info(f"{img.name} -> {self.reg}/{img.repository}:{img.tag} "
                               f"{m.digest}")
        elif img.referrer_of is None and not img.unnamed:  # pinned by digest: named
            at = f"{self.reg}/{img.repository}@{img.root.digest}"
            self.result.pinned.append(at)
            self.progress.info(f"{img.name} -> {at}")

    def _say_untagged(self, images: list[PushImage]) -> None:
        for img in images:
            if img.unnamed:  # put where the user did not name: say where
                where = f"{self.reg}/{img.repository}@{img.root.digest}"
                self.result.untagged.append(where)
                self.progress.info(f"{img.name} has no ref name: pushed as {where} (no tag)")

    async def _over(self, img: PushImage, merge: bool) -> RawManifest:
        """What to push as the tag: the root, or, when the tag holds another index with
        platforms the root lacks and `merge` is asked, the two merged (mirror.merge). Says
        so either way: a tag never loses platforms silently."""
        if img.tag is None or not (img.root.is_index or img.root.is_image):
            return img.root
        try:
            old = await self.client.get_manifest(self.reg, img.repository, img.tag)
        except NotFound:
            return img.root
        except RegistryError:
            return img.root  # no answer worth trusting: push, as before
        where = f"{self.reg}/{img.repository}:{img.tag}"
        if not img.root.is_index:
            # one image manifest (a docker-archive's, a single-platform image) over a
            # multi-arch tag: the tag becomes that one image; merge merges indexes only
            held = [d for d in old.children if d.platform is not None and
                    not d.platform.is_unknown] if old.is_index else []
            if len(held) > 1:
                self.progress.warn(
                    f"{where} held index {old.digest} with {platforms(held)}; {img.name} is "
                    f"one image manifest ({img.root.digest}), not an index: replaced, the tag "
                    "is no longer multi-arch")
            return img.root
        keep = other_platforms(img.root, old) if old.is_index else []
        if not keep:
            return img.root
        if not merge:
            self.progress.warn(
                f"{where} held index {old.digest} with {platforms(keep)}, which {img.name} "
                f"({img.root.digest}) does not have: replaced, those platforms are no longer "
                "tagged (`--merge` keeps them)")
            return img.root
        new = merged(img.root, old, keep)
        if new.digest == old.digest:
            return new  # merged so before (a re-run): nothing changes, nothing to say
        self.progress.warn(f"{where}: merged {img.root.digest} with {platforms(keep)} from the "
                           f"index it held ({old.digest}): {img.root.digest} -> {new.digest}")
        return new


async def _there(client: Client, reg: str, repo: str, ref: str, m: RawManifest) -> bool:
    """The target already serves `m` as `ref` (a tag naming the same digest, or the digest):
    nothing to push (a re-run pushes nothing, and a registry with immutable tags is not
    asked to rewrite one)."""
    try:
        head = await client.head_manifest(reg, repo, ref)
    except (AuthError, RateLimited):
        raise
    except RegistryError:
        return False  # no answer worth trusting: push, as before
    return head is not None and head.digest == m.digest


async def _put(client: Client, reg: str, img: PushImage, ref: str, m: RawManifest
               ) -> str | None:
    """Push one manifest; when the registry refuses it, say what in it registries refuse."""
    try:
        return await client.put_manifest(reg, img.repository, ref, m)
    except RegistryError as e:
        hint = None
        if any(d.urls for d in m.layers):
            hint = ("this registry refuses manifests whose layers carry `urls` (foreign "
                    "layers): pull with `--foreign-layers rewrite`, or allow them on the "
                    "registry (distribution: validation.manifests.urls.allow)")
        elif m.is_index and any(c.digest not in {x.digest for x in img.manifests}
                                for c in m.children):
            hint = ("this is a sparse index (`index: sparse`): the registry refuses an index "
                    "whose platforms are not all present; pull with `index: filter`, or turn "
                    "that validation off on the registry")
        if hint is None or e.hint:
            raise
        raise type(e)(str(e), registry=e.registry, repository=e.repository, status=e.status,
                      codes=e.codes, hint=hint) from e
