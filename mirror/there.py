"""Where else an image can be read by digest (a sync's target), and what it holds of it:
`There`, which the resolution (mirror.resolve), the referrers' look-up (mirror.referrers)
and the sync's target reads (mirror.sync_there) share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from mirror.aio import gather_or_cancel
from mirror.errors import MirrorError, NotFound
from mirror.manifest import RawManifest
from mirror.reference import Reference
from mirror.registry.client import Client, ManifestHead

T = TypeVar("T")


@dataclass
class There:
    """Where else an image can be read by digest: a registry and repository that holds it
    (a sync's target), and what of it: `lists` None, everything below the root (its
    reference there names the root); else the manifests named (the root's children that
    the index there lists too: the image it holds is the root filtered), and the config
    of each of those read, the entries of each nested index (`_Resolver.get` adds them).
    `named`: what it answered about references as the image resolved (mirror.sync_there's
    `named`, keyed by repository and tag), which a read of a tag there adds to (`manifest`),
    so that the push does not ask again (mirror.referrers: cosign's tags). `root`: the root, read
    from here by the digest the source's tag names (as the tag here does) before the
    source was asked for it (from the source by that digest when here could not serve it),
    until the resolution takes it."""
    registry: str
    repository: str
    lists: set[str] | None = None
    named: dict[tuple[str, str], ManifestHead | None] | None = None
    root: RawManifest | None = None

    def serves(self, digest: str) -> bool:
        return self.lists is None or digest in self.lists

    async def read(self, client: Client, ask: Callable[[str, str], Awaitable[T]], digest: str,
                   source: Reference) -> T:
        """`ask` (by digest) of here, when here holds `digest`; of `source`'s registry
        and repository when not, or when here cannot answer (a 404, bytes that do not
        match the digest, an error: said with -v alone, the result is the same)."""
        if self.serves(digest):
            try:
                return await ask(self.registry, self.repository)
            except MirrorError as e:
                client.t.debug(f"{e}: {digest} read from the source, {source.name}")
        return await ask(source.registry, source.repository)

    async def beside(self, client: Client, source: Reference, at: str,
                     known: tuple[str, str] | None = None
                     ) -> tuple[ManifestHead | None, RawManifest | MirrorError]:
        """Whether here holds what `source`'s tag names, in the time of one request: that
        tag's HEAD (If-None-Match: `known`, the digest and type here names, when known)
        and, at once, manifest `at` read here (`manifest`: the same tag, or that digest).
        A HEAD the source's budget refuses now (BudgetSpent) has here asked nothing."""
        client.t.refuses(source.registry, "HEAD",
                         f"/v2/{source.repository}/manifests/{source.ref}")
        head, read = await gather_or_cancel([
            client.head_manifest(source.registry, source.repository, source.ref, known),
            self.manifest(client, at)])
        return head, read

    async def manifest(self, client: Client, at: str) -> RawManifest | MirrorError:
        """Manifest `at` (a tag, or a digest) read from here, checked, or why it could not
        be; of a tag, what it names kept in `named` (the push's step 0 asks no more)."""
        try:
            raw = await client.get_manifest(self.registry, self.repository, at)
        except MirrorError as e:
            if isinstance(e, NotFound):
                self._said(at, None)
            return e
        self._said(at, ManifestHead(raw.digest, raw.media_type, None))
        return raw

    def _said(self, at: str, head: ManifestHead | None) -> None:
        """What tag `at` names here (None: nothing), kept in `named`."""
        if self.named is not None and ":" not in at:
            self.named[self.repository, at] = head
