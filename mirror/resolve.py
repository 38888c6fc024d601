"""Resolve one configured image: fetch its manifests, select platforms, list its blobs.

The result, an Image (mirror.image), is what both the bundle writer and the report need: the root
manifest to name (the source's bytes, or a filtered index of the selected children), every
manifest below it, every blob, and what is absent on purpose (foreign layers, the children a
sparse index leaves out).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mirror import mediatypes as mt
from mirror.artifacts import wanted
from mirror.config import ImageSpec
from mirror.errors import MirrorError, NoMatchingPlatform, UnsupportedContent
from mirror.image import Image
from mirror.manifest import Descriptor, RawManifest, dump_json
from mirror.platform import Platform, no_matching_manifest
from mirror.registry.client import Client
from mirror.there import There

ATTESTATION_REF = "vnd.docker.reference.digest"

FetchConfig = Callable[[str, str, Descriptor], Awaitable[bytes]]
T = TypeVar("T")


# the index an image will carry, foreseen from the source's root (_Resolver.foresee): its
# digest and every digest it lists (its nested indexes' too); None when it cannot be
Foreseen = tuple[str, frozenset[str]]
# where else an image whose root manifest this is (or, pinned, whose root's digest; None:
# its tag, before the root is read, There.root) can be read by digest; the second, asked
# only when wanted, foresees the index it will carry
Elsewhere = Callable[["RawManifest | str | None", "Callable[[], Awaitable[Foreseen | None]]"],
                     Awaitable["There | None"]]


class _Unforeseen(Exception):
    """The index an image will carry depends on more than its indexes' bytes (a config)."""


def keeps_attestations(spec: ImageSpec, referrer_types: tuple[str, ...]) -> bool:
    """Whether the image carries the attestation manifests an index lists: not with
    `referrers: false`, --no-referrers, or a --referrer-type other than attestation (the
    index is then filtered of them: `left_behind`)."""
    return spec.settings.referrers and wanted(referrer_types, "attestation", None)


def no_match(spec: ImageSpec, available: list[str]) -> NoMatchingPlatform:
    return no_matching_manifest(
        str(spec.reference), spec.settings.platforms, available,
        hint="ask for one of those: --platform, when given, applies to every image and "
             "overrides `platforms:` in the config; --keep-going finishes the other images")


async def resolve(client: Client, spec: ImageSpec, fetch_config: FetchConfig,
                  referrer_types: tuple[str, ...] = (), elsewhere: Elsewhere | None = None
                  ) -> Image:
    """Raise NotFound, NoMatchingPlatform, UnsupportedContent or a RegistryError.
    `referrer_types` (--referrer-type) decides, with `referrers:`, whether the attestation
    manifests inside an index are kept (mirror.artifacts). `elsewhere`: asked once the root
    is read, where else the image is held (a sync's target: There), whose manifests and
    configs below the root (or those of them it lists) are then read from there by digest
    (checked against it, as from the source), and from the source only when that one
    cannot serve them (mirror.sync). Asked first, before the root is read: with the pinned
    digest (--locked: the root is read from there too), or None (a tag: a target whose
    tag names the digest the source's names, the root read from there, There.root)."""
    ref = spec.reference
    r = _Resolver(client, spec, fetch_config, keeps_attestations(spec, referrer_types))
    there, pin = None, spec.pin
    if elsewhere is not None:  # a target holding it is read first
        there = await elsewhere(pin, r.unforeseen)
    if there is not None and there.root is not None:
        root, there.root = there.root, None
    elif there is not None and pin:
        root = await there.read(client, lambda reg, repo: client.get_manifest(reg, repo, pin),
                                pin, ref)
    else:
        root = await client.get_manifest(ref.registry, ref.repository, spec.pin or ref.ref)
        there = await elsewhere(root, lambda: r.foresee(root)) if elsewhere is not None \
            else None
    r.there = there
    if root.is_index:
        image = await r.index(root)
    elif root.is_image and not root.declared_artifact_type:
        image = r.image(root)
        cfg = root.config
        assert cfg is not None
        p = _config_platform(await r.config(cfg))
        sel = spec.settings.platforms
        if not sel.all and (p is None or not sel.wants(p)):
            raise no_match(spec, [str(p)] if p else [])
        image.platforms = [str(p)] if p else []
        image.platform_digests = {str(p): root.digest} if p else {}
        r.add(image, root)
    elif mt.is_image_manifest(root.media_type):
        image = r.image(root)
        r.add(image, root)  # an artifact: copied byte for byte, never platform-filtered
    else:
        raise UnsupportedContent(f"{ref}: unsupported manifest type {root.media_type!r}")
    image.source_platform_digests = dict(image.platform_digests)  # convert may rename them
    return image


class _Resolver:
    """One configured image's resolution: its registry, settings and config reader.
    `attestations`: keep the attestation manifests of the chosen platforms; otherwise an
    index is filtered without them (`left_behind`). `there`: where else the image is
    held, read first for what it holds (`read`)."""

    def __init__(self, client: Client, spec: ImageSpec, fetch_config: FetchConfig,
                 attestations: bool, there: There | None = None) -> None:
        self.client, self.spec, self.fetch_config = client, spec, fetch_config
        self.attestations = attestations
        self.sel = spec.settings.platforms
        self.there = there
        self.ahead: dict[str, RawManifest] = {}  # nested indexes `foresee` read

    def image(self, root: RawManifest, mode: str = "single") -> Image:
        return Image(str(self.spec.reference), root, mode=mode, reference=self.spec.reference,
                     dest=self.spec.dest)

    def add(self, image: Image, raw: RawManifest) -> None:
        """Foreign layers (`urls`, or a foreign/non-distributable type) are absent on purpose
        under `skip`; `include` and `rewrite` fetch them (the descriptor keeps its `urls`, the
        places to fetch from when the registry does not serve the blob)."""
        image.add(raw, self.spec.settings.foreign_layers not in ("include", "rewrite"))

    async def get(self, d: Descriptor) -> RawManifest:
        raw = self.ahead.pop(d.digest, None)  # a nested index `foresee` read
        if raw is None:
            raw = await self.read(
                lambda reg, repo: self.client.get_manifest(reg, repo, d.digest, expected=d), d)
        there = self.there
        if there is not None and there.lists is not None and d.digest in there.lists:
            if raw.is_image and raw.config is not None:
                there.lists.add(raw.config.digest)  # held with the manifest that names it
            elif raw.is_index:  # a nested index: what it lists, held with it
                there.lists.update(c.digest for c in raw.children)
        return raw

    async def config(self, d: Descriptor) -> bytes:
        return await self.read(lambda reg, repo: self.fetch_config(reg, repo, d), d)

    async def read(self, ask: Callable[[str, str], Awaitable[T]], d: Descriptor) -> T:
        """`ask` (by digest) of `there` for what it holds (There.read), else of the
        image's registry."""
        ref = self.spec.reference
        if self.there is not None:
            return await self.there.read(self.client, ask, d.digest, ref)
        return await ask(ref.registry, ref.repository)

    async def index(self, root: RawManifest) -> Image:
        """The image of index `root`: the platforms chosen (nested indexes resolved in turn),
        the attestations that travel with them, and the root to carry (mode)."""
        image = self.image(root, "full")
        chosen, nested, available = await self._choose(root.children)
        chosen_digests = {c.digest for c in chosen}
        self._attestations(image, root.children, chosen, chosen_digests)
        if not chosen_digests:
            raise no_match(self.spec, available)
        chosen_set = {c.digest for c in chosen}
        replaced: dict[str, RawManifest] = {}  # nested indexes that were filtered in turn
        for c in root.children:
            if c.digest in chosen_set:
                sub = nested.get(c.digest) or await self._child(image, c)
                if sub is not None:
                    image.absorb(sub)
                    if sub.root.digest != sub.source_digest:
                        replaced[sub.source_digest] = sub.root

        async def made() -> None:  # the filtered index reads the source's back from the store
            self._root(image, root, chosen_set, replaced)

        ref = self.spec.reference
        await self.client.reading(made, lambda _: (ref.registry, ref.repository))
        return image

    async def _choose(self, children: list[Descriptor]
                      ) -> tuple[list[Descriptor], dict[str, Image], list[str]]:
        """The entries that match the platforms asked for, the nested indexes resolved while
        choosing, and every platform seen (for the error when none matches)."""
        sel = self.sel
        available = [str(c.platform) for c in children
                     if c.platform and not c.platform.is_unknown]
        chosen: list[Descriptor] = []
        nested: dict[str, Image] = {}
        for c in children:
            if c.platform is None and mt.is_index(c.media_type) and not sel.all:
                # a nested index without a platform: chosen if anything inside it matches
                try:
                    inner = await self.index(await self.get(c))
                except NoMatchingPlatform as e:
                    available.extend(e.available)
                    continue
                available.extend(inner.platforms)
                nested[c.digest] = inner
                chosen.append(c)
            elif c.platform is not None and not c.platform.is_unknown:
                if sel.wants(c.platform):
                    chosen.append(c)
            elif c.platform is None and sel.all:
                chosen.append(c)
            elif c.platform is None and mt.is_image_manifest(c.media_type):
                p = await self._entry_platform(c)
                if p is not None:
                    available.append(str(p))
                    if sel.wants(p):
                        chosen.append(c)
        return chosen, nested, available

    async def _entry_platform(self, c: Descriptor) -> Platform | None:
        """No platform on the entry: ask the image's config (Docker treats it as "any"); an
        artifact is never read as an image (its config may not be one)."""
        child = await self.get(c)
        cfg = child.config
        if not (child.is_image and cfg and not child.declared_artifact_type):
            return None
        return _config_platform(await self.config(cfg))

    def _attestations(self, image: Image, children: list[Descriptor],
                      chosen: list[Descriptor], chosen_digests: set[str]) -> None:
        """Attestations travel with the image they describe: added to `chosen`, or, with
        `referrers: false`, --no-referrers or a --referrer-type that is not `attestation`,
        left behind (the index is filtered without them)."""
        for c in children:
            if c.platform is not None and c.platform.is_unknown and \
                    c.annotations.get(ATTESTATION_REF) in chosen_digests:
                if self.attestations:
                    chosen.append(c)
                else:
                    image.left_behind += (c.digest,)

    async def _child(self, image: Image, c: Descriptor) -> Image | None:
        """A chosen entry: an image manifest added to `image`, or a nested index resolved
        as an image of its own (returned, for `image` to absorb)."""
        child = await self.get(c)
        if child.is_index:
            return await self.index(child)
        self.add(image, child)
        if c.platform is not None and not c.platform.is_unknown:
            image.platforms.append(str(c.platform))
            image.platform_digests[str(c.platform)] = c.digest
        return None

    @staticmethod
    async def unforeseen() -> Foreseen | None:
        """A pinned root's digest alone (--locked, before it is read): nothing foreseen."""
        return None

    async def foresee(self, root: RawManifest) -> Foreseen | None:
        """The index this image will carry, of index `root` filtered (--platform, or its
        attestations left behind: --no-referrers): a pure function of the source's indexes
        and the filter, made before any manifest below them is read (`_root`'s filtered
        index; the nested indexes chosen read from the source, kept for the resolution in
        `ahead`), so that a target whose tag names it is known to hold the image; None when
        the choice needs more (an entry without its platform, whose config says it) or
        nothing is filtered."""
        if not root.is_index or self.sel.all and self.attestations:
            return None
        ref = self.spec.reference
        try:
            made = await self.client.reading(lambda: self._foreseen(root),
                                             lambda _: (ref.registry, ref.repository))
        except (_Unforeseen, MirrorError):  # the resolution reads it and says what is wrong
            return None
        if made is None or made[0].digest == root.digest:
            return None
        return made[0].digest, frozenset(made[1])

    async def _foreseen(self, index: RawManifest) -> tuple[RawManifest, set[str]] | None:
        """`foresee` of one index: what it becomes and the digests it lists then (its nested
        indexes' too), as `index` and `_choose` would choose; None when nothing in it is
        chosen (NoMatchingPlatform)."""
        chosen: set[str] = set()
        nested: dict[str, tuple[RawManifest, set[str]]] = {}
        for c in index.children:
            if c.platform is None and mt.is_index(c.media_type) or \
                    c.platform is not None and not c.platform.is_unknown and \
                    mt.is_index(c.media_type) and self.sel.wants(c.platform):
                sub = self.ahead.get(c.digest)
                if sub is None:
                    sub = self.ahead[c.digest] = await self.get(c)
                inner = await self._foreseen(sub) if sub.is_index else None
                if inner is None and c.platform is not None:
                    raise _Unforeseen  # a chosen entry the resolution refuses: let it say
                if inner is not None:
                    nested[c.digest] = inner
                    chosen.add(c.digest)
            elif c.platform is not None and not c.platform.is_unknown:
                if self.sel.wants(c.platform):
                    chosen.add(c.digest)
            elif c.platform is None and self.sel.all:
                chosen.add(c.digest)  # every platform: its own is not asked (`_choose`)
            elif c.platform is None and mt.is_image_manifest(c.media_type):
                raise _Unforeseen  # its config says its platform
        if self.attestations:
            chosen |= {c.digest for c in index.children if c.platform is not None and
                       c.platform.is_unknown and c.annotations.get(ATTESTATION_REF) in chosen}
        if not chosen:
            return None
        replaced = {d: sub for d, (sub, _) in nested.items() if sub.digest != d}
        made, _ = self._made(index, chosen, replaced)
        listed = {replaced[d].digest if d in replaced else d for d in chosen}
        for _, below in nested.values():
            listed |= below
        return made, listed

    def _made(self, root: RawManifest, chosen: set[str], replaced: dict[str, RawManifest]
              ) -> tuple[RawManifest, str]:
        """Index `root` carried with `chosen` entries (`replaced`: nested indexes filtered in
        turn), and the mode: the source's bytes when all is chosen (`full`) or with `index:
        sparse`, else a new index of the chosen entries (`filter`)."""
        children = root.children
        if len(chosen) == len({c.digest for c in children}) and not replaced:
            return root, "full"
        if self.spec.settings.index == "sparse":
            return root, "sparse"
        body = json.loads(root.data)
        body["manifests"] = [m for m in body["manifests"] if m.get("digest") in chosen]
        for m in body["manifests"]:
            new = replaced.get(m.get("digest"))
            if new is not None:
                m["digest"], m["size"] = new.digest, new.size
        return RawManifest(dump_json(body), root.media_type), "filter"

    def _root(self, image: Image, root: RawManifest, chosen: set[str],
              replaced: dict[str, RawManifest]) -> None:
        """The index to carry (`_made`); the entries `index: sparse` leaves out are absent
        on purpose."""
        image.root, image.mode = self._made(root, chosen, replaced)
        if image.mode == "sparse":
            for c in root.children:
                if c.digest not in chosen:
                    image.absent[c.digest] = "sparse"
        image.manifests[image.root.digest] = image.root


def _config_platform(data: bytes) -> Platform | None:
    try:
        return Platform.from_dict(json.loads(data))
    except (ValueError, TypeError):
        return None
