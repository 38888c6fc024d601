"""A push's referrers' fallback indexes, on a target registry without the OCI referrers API.

Such a registry finds a manifest's referrers (signatures, SBOMs, attestations with a
`subject`) through a tag: `sha256-<hex>` of the subject's digest, an image index listing
them, which whoever pushes a referrer keeps up to date (the OCI distribution spec's
"Referrers tag schema":
<https://github.com/opencontainers/distribution-spec/blob/main/spec.md#referrers-tag-schema>).
For each referrer mirror.push places by digest (or finds there), the subject's index as the
target holds it (one GET, once a push) with the referrer added, never clobbered
(mirror.referrers.with_referrer); each index a group of images changed is put once, after
the group's manifests, with all its referrers of the group.

The same tag is the one an image pinned by digest gets at the target (mirror.mapping's digest
tag): where this push carries a referrer of that digest, the spec's meaning wins and the
image goes by digest (`give_way`). The Pusher owns a `Fallbacks` and keeps the count of
what it puts, as of every manifest (`Placed`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from mirror.artifacts import fallback_tag
from mirror.errors import AuthError, MirrorError, RateLimited
from mirror.manifest import RawManifest
from mirror.progress import Progress
from mirror.pushplan import ImageFailed, PushImage, unserved
from mirror.pushtheirs import Theirs
from mirror.referrers import Finder, held_fallback, with_referrer
from mirror.registry.client import Client

# (repository, reference) -> the image (None: a fallback index) and manifest of a PUT asked
# for and not answered yet: one the push stops in may have landed (mirror.push's settle)
Putting = dict[tuple[str, str], tuple[PushImage | None, RawManifest]]


class Placed(Protocol):
    """What the push keeps of the manifests it places (mirror.push.Pusher)."""

    putting: Putting

    def count(self, repo: str, digest: str, *, pushed: bool) -> None:
        """The report's manifests_pushed or manifests_present, once per manifest."""

    def listed(self, repo: str, ref: str, m: RawManifest) -> None:
        """A dry run's line for a manifest the push would PUT as `ref`."""


class Fallbacks:
    """The fallback indexes of one push to one registry."""

    def __init__(self, client: Client, registry: str, finder: Finder, progress: Progress,
                 placed: Placed, theirs: Theirs) -> None:
        self.client, self.reg, self.finder = client, registry, finder
        self.progress, self.placed, self.theirs = progress, placed, theirs
        # (repository, fallback tag) -> the index it holds, as this push left it (or, in a
        # dry run, would leave it): read from the target once, then kept up to date here
        self.index: dict[tuple[str, str], RawManifest | None] = {}
        # the fallback indexes a group's referrers need, not yet put or counted: whether it
        # changed (then it is put once, with every referrer of its subject in the group)
        self.unput: dict[tuple[str, str], bool] = {}
        # (repository, subject) -> the image whose digest tag gave way to the subject's
        # fallback index (give_way): found under that tag, it is not a referrers' index
        self.gave_way: dict[tuple[str, str], str] = {}
        self._gave_way_said: list[str] = []  # give_way's warnings, for `say_gave_way`

    async def give_way(self, images: list[PushImage]) -> None:
        """`give_way` for this push: what gave way is remembered (`add`); its warnings wait
        for `say_gave_way`."""
        self.gave_way.update(await give_way(images, self.reg, self.finder,
                                            self._gave_way_said.append))

    def say_gave_way(self) -> None:
        """give_way's warnings, once the push is to go ahead: one that fails before it
        pushes anything (an incremental bundle's base not at the target, exit 11) says its
        error alone, not first the tags of a push that never came."""
        for line in self._gave_way_said:
            self.progress.warn(line)
        self._gave_way_said.clear()

    async def add(self, repo: str, m: RawManifest) -> None:
        """After referrer `m` is pushed by digest (or found there): where the target has no
        referrers API, its subject's `sha256-<hex>` index with `m` added (mirror.referrers)
        is what `put` pushes, or lists in a dry run, once the group's manifests are in,
        unless it lists `m` already (then it is counted present, as every manifest the push
        finds in place). One decision for both: the dry run lists the very index the push
        would PUT, a second referrer of the same subject added to the first's."""
        assert m.subject is not None
        subject = m.subject.digest
        if await self.finder.has_api(self.reg, repo, subject):
            return
        key = (repo, fallback_tag(subject))
        where = f"{self.reg}/{repo}:{key[1]}"
        if key not in self.index:
            try:
                held = await held_fallback(self.client, self.reg, repo, subject)
            except (AuthError, RateLimited):  # the target's: every request's, not the image's
                raise
            except MirrorError as e:  # never clobbered: not read, not added to
                raise ImageFailed(unserved(e, where, None)) from None
            if held is not None:  # what a lost copy is fetched again from (Theirs.reading)
                self.theirs.read_from(held.digest, repo)
            mistaken = held is not None and held.digest == self.gave_way.get((repo, subject))
            self.index[key] = None if mistaken else held
        held = self.index[key]

        async def added() -> RawManifest | None:
            return with_referrer(held, m)

        new = await self.theirs.read_back(added, where, held.digest) if held is not None \
            else with_referrer(None, m)
        if new is None:  # the index lists `m` already
            self.unput.setdefault(key, False)
            return
        self.index[key], self.unput[key] = new, True

    async def put(self, dry_run: bool) -> None:
        """The fallback indexes the group's referrers need: each one changed put (or listed)
        once, with all its referrers of the group, and counted pushed; one that lists them
        all already counted present. Put after each referrer, a subject's second one made the
        index with the first alone a manifest of its own at the target, pushed and replaced
        at once (counted pushed, and present on no rerun)."""
        placed = self.placed
        while self.unput:
            key, changed = next(iter(self.unput.items()))
            index = self.index[key]
            assert index is not None
            if not changed:
                placed.count(key[0], index.digest, pushed=False)
            elif dry_run:
                placed.listed(key[0], key[1], index)
            else:
                placed.putting[key] = (None, index)
                await self.client.put_manifest(self.reg, key[0], key[1], index)
                del placed.putting[key]
                placed.count(key[0], index.digest, pushed=True)
            del self.unput[key]


async def give_way(images: list[PushImage], registry: str, finder: Finder,
                   warn: Callable[[str], object]) -> dict[tuple[str, str], str]:
    """An image pinned by digest is tagged `sha256-<hex>` after its source digest
    (mirror.mapping: digest_tag), which on a registry with no referrers API is the tag of the
    index of that digest's referrers (the OCI fallback tag, mirror.artifacts.fallback_tag).
    Where `images` carry such a referrer, the spec's meaning wins: the image goes by digest
    (its other tags stay), said once (`warn`), and the tag holds the referrers' index (replacing the
    image where a load left it there). `images` is changed in place: the push's plan, and
    `mirror client-config`'s, which so names the tags the load gave. Returns, per
    (repository, subject), the digest of the image that gave way."""
    fallbacks = {(p.repository, fallback_tag(p.referrer_of)): p.referrer_of
                 for p in images if p.referrer_of}
    gave_way: dict[tuple[str, str], str] = {}
    keep: list[PushImage] = []
    for p in images:
        subject = fallbacks.get((p.repository, p.tag or ""))
        if p.referrer_of is None and subject is not None and \
                not await finder.has_api(registry, p.repository, subject):
            warn(
                f"{p.name} is not tagged {p.tag} at {registry}/{p.repository}: there that "
                "tag is the index of its referrers (no referrers API: the OCI fallback "
                "tag); it goes by digest (tag_as: in images.yaml gives it a tag)")
            gave_way[(p.repository, subject)] = p.root.digest
            if any(q.image is p.image and q.repository == p.repository and
                   q.tag not in (None, p.tag) for q in images):
                continue  # tagged otherwise too
            p.tag = None
        keep.append(p)
    images[:] = keep
    return gave_way
