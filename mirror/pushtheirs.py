"""What a push reads of the target's own manifests: the index a tag holds, which the image's
root is pushed over or, with --merge, merged with (mirror.pushplan.over, mirror.merge), and a
referrers' `sha256-<hex>` fallback index (mirror.pushfallback).

Each is read once and kept in the cache's store as a source's manifest is; one lost there
while the push reads it back is fetched again from where it came from (Client.reading: its
source for the images' own, else the target repository it was read from). The target's
answer is held to the digest it names: one the target does not serve as it says it holds it
(bytes that do not match, a 404 while the tag is still there) fails that image alone
(pushplan.ImageFailed), never pushed over: the tag would lose what --merge keeps. The
target's credentials or rate limit stop the push, as any request's do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from mirror.errors import AuthError, BudgetSpent, MirrorError, NotFound, RateLimited, RegistryError
from mirror.manifest import RawManifest
from mirror.progress import Progress
from mirror.pushplan import ImageFailed, PushImage, over, unserved
from mirror.registry.client import Client, SourceOf

T = TypeVar("T")


class Theirs:
    """The target's manifests one push to one registry reads."""

    def __init__(self, client: Client, registry: str, progress: Progress,
                 source_of: SourceOf | None = None) -> None:
        self.client, self.reg, self.progress, self.source_of = client, registry, progress, \
            source_of
        # digest -> the repository of the target a manifest the push read came from (what a
        # tag held, a fallback index): kept in the cache's store as the source's are
        self.repo_of: dict[str, str] = {}

    async def reading(self, act: Callable[[], Awaitable[T]]) -> T:
        """`act`, which reads manifests' bytes, again once one it read back from the cache's
        store (a sync's: planning released it there; what the target held, read by this
        push) was lost there and fetched again from where it came from (Client.reading):
        the push goes on as if it had never been lost. A manifest from nowhere known
        (nothing released: a load) stays lost."""
        return await self.client.reading(act, self._source)

    def _source(self, digest: str) -> tuple[str, str] | None:
        """Where manifest `digest` the push reads can be fetched again: its source, else
        the target it was read from; None: nowhere known."""
        found = self.source_of(digest) if self.source_of is not None else None
        repo = self.repo_of.get(digest)
        return found or (None if repo is None else (self.reg, repo))

    def read_from(self, digest: str, repo: str) -> None:
        """Manifest `digest` was read from the target's repository `repo`."""
        self.repo_of[digest] = repo

    async def read_back(self, act: Callable[[], Awaitable[T]], where: str, digest: str) -> T:
        """`act`, which reads back manifest `digest` the push read from the target at
        `where`: lost in the cache's store and not served again by the target (a 404, bytes
        that do not match), the image fails alone (ImageFailed); a registry whose requests
        for this run are spent stops the push (its images wait)."""
        try:
            return await self.reading(act)
        except BudgetSpent:
            raise
        except MirrorError as e:
            raise ImageFailed(unserved(e, where, digest)) from None

    async def tag_gets(self, img: PushImage, merge: bool, absent: bool) -> RawManifest:
        """What to push as the image's tag: what the tag holds, read (one GET; none when
        step 0's HEAD found it `absent`), and the root pushed over it or merged with it
        (mirror.pushplan.over), said either way."""
        if img.tag is None or not (img.root.is_index or img.root.is_image) or absent:
            return img.root
        where = f"{self.reg}/{img.repository}:{img.tag}"
        old = await self._held(img.repository, img.tag, merge, where)
        if old is None:
            return img.root
        self.read_from(old.digest, img.repository)

        async def put_over() -> tuple[RawManifest, str | None]:
            return over(img, old, merge, where)

        new, warning = await self.read_back(put_over, where, old.digest)
        if warning:
            self.progress.warn(warning)
        return new

    async def _held(self, repo: str, tag: str, merge: bool, where: str) -> RawManifest | None:
        """The index tag `tag` holds, read (one GET, checked against the digest the answer
        names); None: nothing to keep or to say (the tag gone meanwhile: a 404, and another
        HEAD finds nothing; without --merge, which replaces the tag, any registry error: no
        answer worth trusting, pushed over as before). Bytes that are not what the target
        names, and with --merge a 404 while the tag is still there or a registry's error,
        fail the image (ImageFailed)."""
        try:
            return await self.client.get_manifest(self.reg, repo, tag)
        except RegistryError as e:
            if not merge:
                return None
            if isinstance(e, (AuthError, RateLimited)):
                raise
            named = await self._still_named(repo, tag) if isinstance(e, NotFound) else ""
            if named is None:
                return None
            raise ImageFailed(unserved(e, where, named or None)) from None
        except MirrorError as e:
            raise ImageFailed(unserved(e, where, None)) from None

    async def _still_named(self, repo: str, tag: str) -> str | None:
        """After a GET of `tag` answered 404: the digest a HEAD says it names now (None:
        none, the tag is gone; "": no answer worth trusting)."""
        try:
            head = await self.client.head_manifest(self.reg, repo, tag)
        except (AuthError, RateLimited):
            raise
        except RegistryError:
            return ""
        return None if head is None else head.digest or ""
