"""What each target of a sync holds, asked as the images resolve: one HEAD of each tag (the
push's step-0 question, its answer kept for the push), and where an image is read from by
digest instead of from the source (mirror.there.There). The planner (mirror.sync_plan) asks
`elsewhere` as an image resolves, `at_target` as it is admitted and `planned` once it is
resolved; the push takes `asked`, step 0's answers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mirror.config import ImageSpec
from mirror.errors import MirrorError
from mirror.image import Image
from mirror.manifest import RawManifest
from mirror.mapping import Placement, Target, place
from mirror.pushheld import Asked, held_there, step0
from mirror.pushplan import PushImage
from mirror.registry.client import Client, ManifestHead
from mirror.resolve import Foreseen, keeps_attestations
from mirror.there import There

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

# what a target's reference named as the images resolved: (repository, reference) -> its
# HEAD's answer (None: nothing there)
Named = dict[tuple[str, str], ManifestHead | None]


def placed(img: Image, target: Target) -> tuple[list[PushImage], list[PushImage], Placement]:
    """One image at `target`: a PushImage per tag (one by digest without), one per referrer,
    and where it lands."""
    assert img.reference is not None  # resolved from images.yaml
    ref = img.reference
    where = place(target, ref.name, ref.repository, ref.tag, ref.digest, img.dest)
    return ([PushImage(img, where.repository, tag) for tag in where.tags or (None,)],
            [PushImage(r, where.repository, r.tag) for r in img.referrers], where)


def _as_it_is(spec: ImageSpec) -> bool:
    """A tag whose root the sync carries as it is, but for the attestations an index may
    list (mirror.resolve.keeps_attestations): no platform filter, no conversion (--format),
    no foreign layer rewritten."""
    ref, s = spec.reference, spec.settings
    return bool(ref.tag) and not ref.digest and s.platforms.all and s.format == "keep" and \
        s.foreign_layers != "rewrite"


class Holdings:
    """What each of a sync's `targets` holds of the run's images. Per target: `asked`, the
    push's step-0 answers ((repository, reference, root digest) -> its reference names the
    root: True, another manifest: False, nothing: None); `blobs`, those of the images it
    serves whole, which the push mounts into another image's repository instead of reading
    them; `named`, what its references' HEADs answered as the images resolved, which
    `at_target` and the push need not ask again."""

    def __init__(self, client: Client, targets: list[Target],
                 referrer_types: tuple[str, ...]) -> None:
        self.client = client
        self.targets = targets
        self.referrer_types = referrer_types
        self.blobs: list[set[str]] = [set() for _ in targets]
        self.asked: list[Asked] = [{} for _ in targets]
        self.named: list[Named] = [{} for _ in targets]

    def said(self, n: int, img: PushImage) -> bool | None | str:
        """Step 0's answer at target `n` for `img` (`asked`); "unasked" where none was
        asked."""
        return self.asked[n].get(step0(img), "unasked")

    async def at_target(self, plan: Image, n: int) -> set[str]:
        """The blobs target `n` holds of the images asked about so far, this one (its
        referrers) too: those of each one it serves whole (its reference names its root:
        mirror.push's step 0), one HEAD each (none where resolving asked: `named`), the
        answer kept in `asked` for the push. An error holds nothing: its blobs are counted,
        and the push asks again and says what went wrong."""
        target, asked = self.targets[n], self.asked[n]
        own, refs, _ = placed(plan, target)
        held = self.blobs[n]
        for img in own + refs:
            key = step0(img)
            if not self.as_named(n, img):
                try:
                    asked[key] = await held_there(self.client, target.registry, img)
                except MirrorError:
                    continue
            if asked[key]:
                held.update(d.digest for d in img.blobs)
        return held

    def as_named(self, n: int, img: PushImage) -> bool:
        """Whether resolving asked target `n` about `img`'s reference (`elsewhere`'s HEAD,
        `named`); its answer, kept in `asked`, is step 0's: the reference names the root
        the image carries (True), another manifest (False), nothing (None)."""
        key = step0(img)
        if key[:2] not in self.named[n]:
            return False
        head = self.named[n][key[:2]]
        self.asked[n][key] = None if head is None else head.digest == img.root.digest
        return True

    async def elsewhere(self, spec: ImageSpec, root: RawManifest | str | None,
                        foresee: Callable[[], Awaitable[Foreseen | None]]) -> There | None:
        """The first target that holds the image already (one HEAD of its tag there, the
        question `at_target` and the push's step 0 would ask: its answer kept for them,
        `planned`), whose manifests and configs below the root the image is then read from
        by digest (checked against it as from the source; a cache's store first): all of
        them from a target whose tag names `root` (it serves the image whole); else, of an
        index, those the index a target's tag names lists too (`_listed`: a run before
        pushed the root filtered, --platform; not a converted one). So an image a run before pushed spends of
        the source's budget (Docker Hub's pulls) its root's GET and referrer probes alone,
        and the budget goes to what is new; and a source that no longer serves what the
        target holds (`mirror serve` of an incremental bundle, whose base the target holds)
        is not asked for it. A target whose tag names the index the image will carry,
        filtered (--platform: `foresee`, a function of the source's indexes and the
        filter, made once a target names another index of the root's type), holds it
        whole: what that index lists is read from there, and not the index. `root` a
        digest (--locked: the lock's, before the root is read): a target that serves it
        whole, whose root is read from there too; `root` None (a tag, before its root is
        read): `_by_tag`. None asks again once the root is read (the HEADs' answers kept:
        not sent twice)."""
        if root is None:
            return await self._by_tag(spec)
        ref = spec.reference
        digest = root if isinstance(root, str) else root.digest
        other: tuple[str, str, str] | None = None  # a target whose tag names another index
        other_named: Named = {}  # its answers
        foreseen: list[Foreseen | None] = []  # made once, for the first target that asks
        for n, target in enumerate(self.targets):
            try:
                where = place(target, ref.name, ref.repository, ref.tag, ref.digest, spec.dest)
                at = where.tags[0] if where.tags else digest
                named = self.named[n]
                head = named[where.repository, at] if (where.repository, at) in named else \
                    await self.client.head_manifest(target.registry, where.repository, at)
            except MirrorError:  # no answer: the push asks again and says what went wrong
                continue
            self.named[n][where.repository, at] = head
            if head is None or not head.digest:
                continue
            if head.digest == digest:
                return There(target.registry, where.repository, named=named)
            if isinstance(root, str):
                continue
            if root.is_index and head.media_type == root.media_type:
                if not foreseen:
                    foreseen.append(await foresee())
                if foreseen[0] is not None and head.digest == foreseen[0][0]:
                    return There(target.registry, where.repository, set(foreseen[0][1]),
                                 named)
            # an index of the root's type: a filtered one keeps it, a converted one
            # (--format) does not, and lists none of the root's children; one image
            # manifest: a converted one names the same config
            if other is None and (root.is_index and head.media_type == root.media_type
                                  or root.is_image and not root.declared_artifact_type):
                other, other_named = (target.registry, where.repository, head.digest), named
        return await self._listed(spec, root, *other, other_named) \
            if other is not None and not isinstance(root, str) else None

    async def _by_tag(self, spec: ImageSpec) -> There | None:
        """A target whose tag names the manifest the source's tag names, asked before the
        root is read: of each target in turn its tag's HEAD (kept in `named`: the question
        `elsewhere` and the push's step 0 would ask), and once one names a manifest, the
        source's tag's HEAD (If-None-Match: that digest; once) and, at once with it, that
        manifest's GET there by digest (checked), so that a rerun sends the source no
        manifest GET for an image a run before pushed (Docker Hub counts each as a pull,
        not a HEAD) and waits no longer than the source's GET: the root is that target's
        (There.root; the source's by digest when the target cannot serve it, -v says so).
        An image whose attestations are left behind (--no-referrers, `referrers: false`, a
        --referrer-type other than attestation) is asked so too, its root's check for them
        (mirror.resolve) made on the target's copy, the same bytes; but that copy is read
        once the source's HEAD names it, not at once: a target whose tag names the index
        pushed filtered of them (another digest, the source's tag then GET) is not asked
        for it for nothing (7c7354a).
        None, and the root is the source's tag's GET as before: an image the sync changes
        (a platform filter, --format, a foreign layer rewritten: its root's bytes are the
        source's to make it from), a cache (whose store answers a tag after its HEAD), a
        reference by digest, a source HEAD that names no digest or another one than every
        target's (the target's GET is then `_listed`'s: the client keeps what it read by
        digest), and a target on the
        source's own registry (the root's GET there is as much a request as at the
        source, and a HEAD more). A source whose HEAD would be refused now (its budget)
        has the target asked nothing."""
        ref = spec.reference
        if self.client.manifests is not None or not _as_it_is(spec):
            return None
        behind = not keeps_attestations(spec, self.referrer_types)
        source: list[ManifestHead | None] = []  # the source's tag's HEAD, once asked
        for n, target in enumerate(self.targets):
            at = await self._tag_at(n, spec, not source)
            if at is None:
                continue
            repo, digest, media_type = at
            there = There(target.registry, repo, named=self.named[n])
            read: RawManifest | MirrorError | None = None
            if not source and behind:  # the target's read waits: see above
                source.append(await self.client.head_manifest(
                    ref.registry, ref.repository, ref.ref, (digest, media_type)))
            elif not source:
                src, read = await there.beside(self.client, ref, digest, (digest, media_type))
                source.append(src)
            if source[0] is None or not source[0].digest:
                return None  # gone (the GET says so) or no digest: the GET, as before
            if source[0].digest != digest:
                continue
            if read is None:  # a target after the first that named a digest
                read = await there.manifest(self.client, digest)
            if isinstance(read, MirrorError):
                self.client.t.debug(f"{read}: {digest} read from the source, {ref.name}")
                read = await self.client.get_manifest(ref.registry, ref.repository, digest)
            there.root = read
            return there
        return None

    async def _tag_at(self, n: int, spec: ImageSpec, first: bool
                      ) -> tuple[str, str, str] | None:
        """Where target `n` holds the image's tag (its repository) and the digest and type
        it names there (its HEAD, kept in `named`); None: not there, nothing named, no answer (the
        push asks again and says what went wrong), or a target on the source's registry.
        `first`: the source not asked yet, whose HEAD, refused now (its budget: BudgetSpent),
        has this one not asked either."""
        ref, target = spec.reference, self.targets[n]
        if target.registry == ref.registry:
            return None
        try:
            where = place(target, ref.name, ref.repository, ref.tag, ref.digest, spec.dest)
        except MirrorError:  # no place there: the push's check says so
            return None
        if not where.tags:
            return None
        named, key = self.named[n], (where.repository, where.tags[0])
        if key not in named:
            if first:
                self.client.t.refuses(ref.registry, "HEAD",
                                      f"/v2/{ref.repository}/manifests/{ref.ref}")
            try:
                named[key] = await self.client.head_manifest(target.registry, *key)
            except MirrorError:
                return None
        head = named[key]
        return (where.repository, head.digest, head.media_type) \
            if head is not None and head.digest else None

    async def _listed(self, spec: ImageSpec, root: RawManifest, registry: str, repo: str,
                      digest: str, named: Named) -> There | None:
        """Index `root`'s children that index `digest`, which a target's tag names, lists
        too, to be read from there (of image manifest `root`, its config, when the one
        there names it: a conversion, --format, changes the manifest, not the config): one
        GET of that manifest, by digest (none when a cache's store holds it); None when it
        lists none of them (an image updated upstream may share none) or cannot be read
        (said with -v alone: the source is asked, as for an image not there)."""
        there = There(registry, repo, named=named)
        theirs = await there.manifest(self.client, digest)
        if isinstance(theirs, MirrorError):
            self.client.t.debug(f"{theirs}: {spec.reference} read from the source")
            return None
        if root.is_index:
            listed = {c.digest for c in theirs.children} if theirs.is_index else set()
            shared = listed & {c.digest for c in root.children}
        else:
            mine, held = root.config, theirs.config if theirs.is_image else None
            shared = {mine.digest} if mine and held and held.digest == mine.digest else set()
        there.lists = shared
        return there if shared else None

    def planned(self, plan: Image) -> None:
        """The push's step 0 answers for the image's references resolving asked about
        (`as_named`): whether each names the root the image carries, a filtered or
        converted one too, and its referrers' cosign tags read there (a run without a
        budget, or a dry run, admits nothing: the push asks no more)."""
        for n, target in enumerate(self.targets):
            try:
                own, refs, _ = placed(plan, target)
            except MirrorError:  # no place there: the push's check says so
                continue
            for img in own + refs:
                self.as_named(n, img)
