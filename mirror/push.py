"""The registry sink: images -> one target registry, in the order that never leaves a tag on
a half image. Its sources (a bundle for `mirror load`, the source registries or the cache for
`mirror sync`) hand it the images and a BlobSource (or, read in one pass, a StreamSource).

0. An image whose root the target already serves as its reference (its tag names the root's
   digest) and, of an index, every manifest below it is there whole (mirror.pushheld: a HEAD
   each, the manifests below none that this run read from there); its blobs are not asked
   about again. One that lost a manifest below (the index still tagged) is pushed as one
   not there: the manifests and the tag the target serves are found so.
1. Blobs: HEAD each (repository, blob) at the target, so those present are skipped; a blob
   present in another repository of the target is mounted (POST ?mount=&from=), as are an
   incremental bundle's base blobs found elsewhere (the caller's `elsewhere`, which the
   load builds on mirror.elsewhere) and the blobs a sync within one registry reads from
   the source's repositories there (`origins`); the rest are uploaded once and mounted
   into the other repositories that need them. A source read in one pass (a .tar.zst) is
   pushed in its own order, a blob whose upload failed waiting for the next pass.
2. Manifests, byte for byte: children by digest, then digest-only roots, then tags; the
   referrers after every image, so their subjects are there first. What the target already
   serves as that reference is not pushed again (HEAD). A tag over another index keeps its
   other platforms with `merge` (mirror.merge), and is replaced with a warning without.
The decisions are mirror.pushplan's (no request there), step 0's requests
mirror.pushheld's, step 1's mirror.pushblobs', the referrers' `sha256-<hex>` indexes on a
target without the referrers API mirror.pushfallback's, the reading of what the target's
tags hold mirror.pushtheirs'; here the order of the steps and the requests that inform the
decisions.
The dry run takes the same decisions and lists them instead of acting.
A push that fails or is stopped cancels the upload sessions it left open at the target, then
counts, of the blob transfers and manifest PUTs it stopped in, those the target holds (one
HEAD each): the report's counts and tags are what the target received in the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from mirror.aio import confirmed
from mirror.errors import (
    BudgetSpent,
    IncompleteBase,
    MirrorError,
    RegistryError,
)
from mirror.manifest import Descriptor, RawManifest
from mirror.progress import Progress
from mirror.pushblobs import BlobPush, Elsewhere, Source
from mirror.pushfallback import Fallbacks, Putting
from mirror.pushheld import Asked, find_held, lost_below, there
from mirror.pushplan import (
    ImageFailed,
    PushImage,
    PushResult,
    by_digest,
    by_tag,
    fails_alone,
    manifest_groups,
    not_whole,
    refusal_hint,
    tied,
)
from mirror.pushtheirs import Theirs
from mirror.referrers import Finder
from mirror.registry.client import Client, SourceOf
from mirror.registry.upload import CANCEL_WITHIN

# the error for base blobs found nowhere: (their "digest (repository)", repositories looked in)
Incomplete = Callable[[list[str], int], MirrorError]


async def push(client: Client, registry: str, images: list[PushImage], source: Source,
               result: PushResult, progress: Progress, *, absent: Mapping[str, str] | None = None,
               jobs: int = 4, dry_run: bool = False, merge: bool = False,
               elsewhere: Elsewhere | None = None, incomplete: Incomplete | None = None,
               source_of: SourceOf | None = None, asked: Asked | None = None,
               origins: Mapping[str, str] | None = None, small_apart: bool = False,
               alone: bool = False, unreadable: dict[str, MirrorError] | None = None
               ) -> PushResult:
    """Push `images` (referrers after the others) to `registry`. `absent`: digest -> why a
    blob the source does not carry is not needed from it ("foreign": never pushed; "base":
    must be at the target already). `result` is filled in as the push goes: after a failure it
    holds what was done. A push that fails or is stopped (Ctrl-C, SIGTERM: a cancellation)
    first cancels the upload sessions it left open, within a few seconds. `source_of`: the
    source registry and repository of a manifest of `images` (a sync's: planning released
    them to the cache's store), where one lost there is fetched again as the push reads it.
    `asked`: step 0's answers the caller had already (a sync's admission: mirror.sync).
    `origins`: digest -> the repository of `registry` the source reads that blob from (a
    sync within one registry), which a repository that lacks it mounts it from.
    `small_apart`: the blobs under 1 MiB uploaded beside the `jobs` transfers (a sync's:
    mirror.pushblobs.BlobPush). `alone` (a sync's --keep-going): a manifest the target
    refuses (its PUT answered with an error status through all its tries, but 401/403 and
    429) fails that image alone (ImageFailed), as one whose tag the target does not serve,
    and so does a blob the source cannot give or the target refuses (mirror.pushplan's
    fails_alone): the images that need it are left out, with what is tied to them, before
    any manifest (PushResult.failed); without it the push stops there. `unreadable`: digest
    -> why the source could not give that blob, kept across a sync's pushes (not read
    again: its images fail at the next target too)."""
    pusher = Pusher(client, registry, images, result, progress, jobs, merge, source_of,
                    alone=alone)
    pusher.asked = dict(asked or {})
    blobs = BlobPush(client, registry, source, result, progress, pusher.sem,
                     small_apart=small_apart, alone=alone, unreadable=unreadable)
    try:
        await pusher.fallbacks.give_way(pusher.images)
        await pusher.find_held(dry_run)
        plan = await blobs.check(pusher.images, pusher.held, absent or {}, elsewhere,
                                 origins or {})
        if plan.missing_base:
            missing = plan.missing_base
            raise (incomplete or _incomplete)(missing, plan.searched)
        pusher.fallbacks.say_gave_way()
        unread: dict[str, BudgetSpent] = {}
        if dry_run:
            blobs.listed(plan)
        else:
            await blobs.run(plan)
            failed, unread = blobs.failed, blobs.unread
            if failed:  # `alone`: each image that needs one fails there
                for img, err in pusher.leave_out(
                        lambda p, d: failed.get((p.repository, d.digest))):
                    pusher.fail(img, err)
            if unread:
                pusher.leave_out(lambda _, d: unread.get(d.digest))
        await pusher.push_manifests(dry_run)
        if unread:  # the images left out wait for their registry's next run
            err = next(iter(unread.values()))
            err.unread = unread
            raise err
        return result
    except BaseException:
        # CANCEL_WITHIN in all, the sessions cancelled first: a target that hangs holds the
        # stop that long, not once for the DELETEs and again for the HEADs
        end = time.monotonic() + CANCEL_WITHIN
        if not dry_run:
            pusher.say_held()
        await client.cancel_open_uploads(CANCEL_WITHIN)
        # what the target got of the transfers cut short, counted (blobs and manifests are
        # never under way at once: one of the two has any to ask about)
        await blobs.settle(end - time.monotonic())
        await pusher.settle(end - time.monotonic())
        raise
    finally:  # what is not whole for what failed: not placed, not printed (load and sync)
        for name, err in not_whole(images, result.failed).items():
            result.left.setdefault(name, err)


def _incomplete(missing: list[str], searched: int) -> MirrorError:
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return IncompleteBase(f"{len(missing)} blob(s) are in no repository of the target "
                          f"(looked in {searched}): {', '.join(missing[:5])}{more}")


class Pusher:
    """One push to one registry: its images' manifests and tags (their blobs are a
    BlobPush's, the referrers' fallback indexes its Fallbacks', what the target's tags hold
    its Theirs')."""

    def __init__(self, client: Client, registry: str, images: list[PushImage],
                 result: PushResult, progress: Progress, jobs: int,
                 merge: bool, source_of: SourceOf | None = None, *, alone: bool = False
                 ) -> None:
        self.client, self.reg, self.images = client, registry, images
        self.result, self.progress, self.merge = result, progress, merge
        self.alone = alone  # a manifest the target refuses fails its image alone (`push`)
        # the target's own manifests it reads: what a tag holds, a fallback index
        self.theirs = Theirs(client, registry, progress, source_of)
        self.jobs = jobs
        self.sem = asyncio.Semaphore(jobs)
        self.finder = Finder(client)
        self.done: set[tuple[str, str]] = set()  # (repository, reference) decided
        # (repository, digest) counted, pushed or present: a manifest is counted once in its
        # repository however many tags name it (another tag of it is a tag, not a manifest)
        self.counted: set[tuple[str, str]] = set()
        self.putting: Putting = {}  # the manifest PUTs under way, for `settle`
        self.held: set[int] = set()  # id() of the images the target serves whole already
        self.absent: set[tuple[str, str]] = set()  # (repository, tag) that HEAD found absent
        # step 0's answers (find_held's, the caller's): what `decide` need not ask again
        self.asked: Asked = {}
        # the images that failed at the target (id() of their Image: every tag of it), and
        # the digests of their manifests, whose referrers are left out with them
        self.failed_images: set[int] = set()
        self.failed_subjects: set[str] = set()
        # the referrers' `sha256-<hex>` indexes, where the target has no referrers API
        self.fallbacks = Fallbacks(client, registry, self.finder, progress, self,
                                   self.theirs)

    def leave_out(self, lacks: Callable[[PushImage, Descriptor], MirrorError | None]
                  ) -> list[tuple[PushImage, MirrorError]]:
        """The images that need a blob the target did not get (`lacks`: why, for an image
        and a blob of it: a source registry whose requests ran out, a sync's, and they wait
        for the next run: push() raises once the others are pushed; or, `alone`, what fails
        them there) are left out of the push, with what is tied to them
        (mirror.pushplan.tied: what refers to them, what they refer to), every tag of each;
        the others go on. Returns each Image left out (its first PushImage) with its
        error."""
        needs: dict[int, MirrorError] = {}
        for p in self.images:
            err = next((e for d in p.blobs if (e := lacks(p, d)) is not None), None)
            if err is not None:
                needs.setdefault(id(p.image), err)
        if not needs:
            return []
        why = tied(self.images, needs)
        out: dict[int, tuple[PushImage, MirrorError]] = {}
        for p in self.images:
            if id(p.image) in why:
                out.setdefault(id(p.image), (p, why[id(p.image)]))
        self.images = [p for p in self.images if id(p.image) not in why]
        return list(out.values())

    def fail(self, img: PushImage, err: MirrorError) -> None:
        """`img` failed at the target, alone: its other references and its referrers are
        left out (left_out), the other images go on (PushResult.failed)."""
        self.failed_images.add(id(img.image))
        self.failed_subjects.update(x.digest for x in img.manifests)
        self.result.failed.append((img, err))

    async def find_held(self, dry_run: bool = False) -> None:
        """Step 0 (mirror.pushheld): the images the target serves whole, in `held` as each
        is found so; its answers kept in `asked`, which `decide` asks no more. A manifest
        lost below a root is said once per repository and root, however many tags name it
        (a dry run says it would be pushed)."""
        flags = await find_held(self.client, self.reg, self.images, self.asked, self.sem,
                                lambda img: self.held.add(id(img)))
        self.absent = {(i.repository, i.tag) for i, ok in zip(self.images, flags, strict=True)
                       if ok is None and i.tag}
        said: set[tuple[str, str]] = set()
        for img in self.images:
            if (img.repository, img.root.digest) in said:
                continue
            if lost := lost_below(img, self.asked):
                said.add((img.repository, img.root.digest))
                tags = sorted({i.tag or i.root.digest for i in self.images
                               if (i.repository, i.root.digest) == (img.repository,
                                                                    img.root.digest)})
                self.progress.info(
                    f"{self.reg}/{img.repository}: {', '.join(tags)} "
                    f"{'names' if len(tags) == 1 else 'name'} "
                    f"{img.root.digest}, but the target does not serve {', '.join(lost)} "
                    f"below it: {'would be pushed' if dry_run else 'pushed'} again")

    # -- manifests -------------------------------------------------------------------------

    async def push_manifests(self, dry_run: bool) -> None:
        """Children by digest for every image, then digest-only roots, then tags; the
        referrers after the images, never merged. Each (repository, reference) once."""
        for group, merge in manifest_groups(self.images, self.merge):
            for img, ref, m in by_digest(group):
                await self._manifest(img, ref, m, merge, dry_run)
            if not dry_run:
                self._say_untagged(group)
            for img, ref, m in by_tag(group):
                await self._manifest(img, ref, m, merge, dry_run)
            await self.fallbacks.put(dry_run)
        self.result.placed = True

    async def _manifest(self, img: PushImage, ref: str, m: RawManifest, merge: bool,
                        dry_run: bool) -> None:
        """Decide (once per repository and reference) and act: push, or in a dry run list.
        An image the target cannot take (ImageFailed) fails alone: its other references and
        its referrers are left out, the other images go on."""
        if (img.repository, ref) in self.done or self.left_out(img):
            return
        self.done.add((img.repository, ref))
        try:
            await self._place(img, ref, m, merge, dry_run)
        except ImageFailed as f:
            self.fail(img, f.error)

    def left_out(self, img: PushImage) -> bool:
        """An image that failed at the target (ImageFailed), or a referrer of one."""
        return id(img.image) in self.failed_images or img.referrer_of in self.failed_subjects

    async def _place(self, img: PushImage, ref: str, m: RawManifest, merge: bool,
                     dry_run: bool) -> None:
        if id(img) in self.held:  # there whole: its tag and children asked about once
            action = "present"
        else:
            action, m = await self.decide(img, ref, m, merge)
        if m is not img.root and ref == img.tag:  # merged: the tag gets another index
            await self._root_by_digest(img, dry_run)
        if action != "push":
            self.count(img.repository, m.digest, pushed=False)
        if action != "present":
            if dry_run:
                self.listed(img.repository, ref, m)
            else:
                await self._put(img, ref, m)
        if not dry_run:
            self._say_where(img, ref, m)
        if m is img.root and img.tag is None and m.subject is not None:
            await self.fallbacks.add(img.repository, m)

    async def _root_by_digest(self, img: PushImage, dry_run: bool) -> None:
        """With --merge the tag holds a merged index; the image's own root is pushed by
        digest as well, so the digest the report, the lock file and its signatures name is
        one the target serves."""
        key = (img.repository, img.root.digest)
        if key in self.done:
            return
        self.done.add(key)
        if await there(self.client, self.reg, img.repository, img.root.digest, img.root):
            self.count(img.repository, img.root.digest, pushed=False)
        elif dry_run:
            self.listed(img.repository, img.root.digest, img.root)
        else:
            await self._put(img, img.root.digest, img.root)

    async def decide(self, img: PushImage, ref: str, m: RawManifest, merge: bool
                     ) -> tuple[str, RawManifest]:
        """What `ref` gets: ("present", m) when the target already serves those bytes as
        `ref`; else ("push", what): for a tag, the root or the root merged with the index the
        tag holds (Theirs.tag_gets warns as it decides)."""
        client, reg, repo = self.client, self.reg, img.repository
        root = m is img.root
        said = self.asked.get((repo, ref, m.digest), "unasked")  # by find_held
        if said is True or said == "unasked" and await there(client, reg, repo, ref, m):
            return "present", m
        if root and img.tag is not None:
            m = await self.theirs.tag_gets(img, merge, (repo, img.tag) in self.absent)
            if m is not img.root and await there(client, reg, repo, ref, m):
                return "present", m  # merged before, the same way
        return "push", m

    async def _put(self, img: PushImage, ref: str, m: RawManifest) -> None:
        key = (img.repository, ref)
        self.putting[key] = (img, m)
        try:
            subject = await self.theirs.reading(
                lambda: _put(self.client, self.reg, img, ref, m, self.alone))
        except ImageFailed:  # refused: not there, nothing for `settle` to ask
            del self.putting[key]
            raise
        del self.putting[key]
        self.count(img.repository, m.digest, pushed=True)
        if m.subject is not None:  # the registry's own word on its referrers API
            self.finder.api[self.reg] = subject is not None

    def listed(self, repo: str, ref: str, m: RawManifest) -> None:
        """A dry run's line for a manifest the push would PUT as `ref`."""
        at = "@" if ref == m.digest else ":"
        self.result.dry_run.append(f"manifest {m.digest} -> {self.reg}/{repo}{at}{ref}")

    async def settle(self, within: float) -> None:
        """After the push stopped (as BlobPush.settle): each manifest PUT it stopped in
        whose reference the target serves as that manifest now is counted pushed, and its
        tag (or pinned digest) reported. One HEAD each, at most `within` seconds in all."""
        putting, self.putting = list(self.putting.items()), {}

        async def landed(put: tuple[tuple[str, str], tuple[PushImage | None, RawManifest]]
                         ) -> bool:
            (repo, ref), (_, m) = put
            return await there(self.client, self.reg, repo, ref, m) is True

        for (repo, ref), (img, m) in await confirmed(putting, landed, within):
            self.count(repo, m.digest, pushed=True)
            # the image's own reference only: with --merge its root goes by digest
            # first, and the tag, not put yet, still holds what it held
            if img is not None and ref == (img.tag or img.root.digest):
                self._say_where(img, ref, m)

    def say_held(self) -> None:
        """The push stopped (or failed) before its manifests were all decided: the images
        find_held found whole at the target and not decided yet are counted present and
        their tag (or digest) reported, as a push that got through reports them: the target
        has them, whatever stopped the push (a sync's stop reports them finished)."""
        for img in self.images:
            ref = img.tag or img.root.digest
            if id(img) not in self.held or (img.repository, ref) in self.done:
                continue
            self.done.add((img.repository, ref))
            for m in img.manifests:
                self.count(img.repository, m.digest, pushed=False)
            if img.unnamed:
                if f"{self.reg}/{img.repository}@{img.root.digest}" not in self.result.untagged:
                    self._say_untagged([img])
            else:
                self._say_where(img, ref, img.root)

    def count(self, repo: str, digest: str, *, pushed: bool) -> None:
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
            if img.referrer_of is not None:
                self.result.referrer_tags.append(self.result.tags[-1])
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


async def _put(client: Client, reg: str, img: PushImage, ref: str, m: RawManifest,
               alone: bool = False) -> str | None:
    """Push one manifest; when the registry refuses it, say what in it registries refuse.
    `alone`: a refusal (an error status, but the credentials' and a rate limit's) is the
    image's alone (ImageFailed)."""
    try:
        return await client.put_manifest(reg, img.repository, ref, m)
    except RegistryError as e:
        hint = refusal_hint(img, m)
        err = e if hint is None or e.hint else type(e)(
            str(e), registry=e.registry, repository=e.repository, status=e.status,
            codes=e.codes, hint=hint)
        if alone and fails_alone(e):
            raise ImageFailed(err) from e
        if err is e:
            raise
        raise err from e
