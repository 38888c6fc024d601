"""Signatures, SBOMs and attestations: find them at the source, put them back at the target.

Found, for each subject (the source index and each selected platform manifest):
  - OCI 1.1 referrers: `GET /v2/<name>/referrers/<digest>`; where the registry answers 404,
    the fallback tag `sha256-<hex>` (an index of referrers) (REFERENCE.md 6.7);
  - cosign's tags `sha256-<hex>.sig`, `.att`, `.sbom` in the same repository;
  - BuildKit attestation manifests inside an index are handled by mirror.resolve.
Each has a kind (mirror.artifacts: signature, sbom, attestation), which `--referrer-type`
filters on, with the artifactType.
Carried byte for byte. At the target, a manifest with `subject` is pushed by digest; when the
registry does not answer `OCI-Subject` (no referrers API), the fallback tag index is fetched,
merged (never clobbered, no duplicates) and pushed back. Cosign tags are pushed as tags.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

from mirror import mediatypes as mt
from mirror.aio import Once, gather_or_cancel
from mirror.artifacts import COSIGN_SUFFIXES, fallback_tag, kind_of, wanted
from mirror.errors import MirrorError, NotFound, RegistryError
from mirror.image import Image
from mirror.manifest import Descriptor, RawManifest, dump_json
from mirror.reference import Reference
from mirror.registry.client import Client
from mirror.there import There

# the referrers of a subject a target lists, and its fallback index that lists them (None:
# it has the referrers API, or no such index)
Theirs = tuple[list[Descriptor], "RawManifest | None"]


# the subjects whose referrers a Finder keeps, the last found (a few hundred images: each
# its index and its platform manifests), for the other tags of their image (`discover`)
FOUND_KEPT = 1024


class Finder:
    """Discovery with per-run memory: whether each registry has the referrers API, each
    repository's tag list (one listing answers every `sha256-<hex>[.sig|.att|.sbom]` question
    for all the images of that repository, instead of five requests per subject), and what
    refers to each subject (`discover`: asked once a run, however many tags name it)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.api = client.t.referrers_api  # the run's, shared by its finders
        self._probing: dict[str, asyncio.Lock] = {}  # the first probe of each registry
        self._tags: dict[tuple[str, str], asyncio.Task[set[str]]] = {}
        # (registry, repository, subject) -> what refers to it, found (`discover`)
        self._found: Once[tuple[str, str, str], tuple[Image, ...]] = Once(FOUND_KEPT)

    async def tags(self, registry: str, repo: str) -> set[str]:
        key = (registry, repo)
        if key not in self._tags:
            self._tags[key] = asyncio.ensure_future(self._list(registry, repo))
        return await self._tags[key]

    async def listing(self, registry: str, repo: str) -> None:
        """The repository listed, where `discover` will need its tags (every registry but
        one with `referrers: cached`, whose records may answer without a listing); once a
        run, however many images of the repository ask."""
        if registry not in self.client.cached_referrers:
            await self.tags(registry, repo)

    async def _list(self, registry: str, repo: str) -> set[str]:
        listed = self.client.listed.get((registry, repo))
        if listed is not None:  # the tag rules' listing of this run
            return set(listed)
        try:
            return set(await self.client.list_tags(registry, repo))
        except NotFound:
            return set()

    async def _api(self, registry: str, repo: str, digest: str) -> list[Descriptor] | None:
        """The referrers API's answer (every page), or None where the registry has none.
        Single-flight: while a registry's first answer is awaited, the other subjects (of
        every image resolved at once) wait for it instead of each probing the API too."""
        if registry not in self.api:
            async with self._probing.setdefault(registry, asyncio.Lock()):
                if registry not in self.api:  # the first (or the first failed): ask
                    return await self._ask(registry, repo, digest)
        if not self.api[registry]:
            return None
        return await self._ask(registry, repo, digest)

    async def _ask(self, registry: str, repo: str, digest: str) -> list[Descriptor] | None:
        """The referrers API asked about `digest`; what it answers (404: no API, None)
        decides for the registry (REFERENCE.md 6.7: a registry with the API never answers
        404 for a repository it has)."""
        out: list[Descriptor] = []
        url: str | None = f"/v2/{repo}/referrers/{digest}"
        while url:
            try:
                data, url = await self.client.get_page(registry, url, repo,
                                                       f"referrers of {digest}", 8 << 20,
                                                       accept=mt.OCI_INDEX)
            except NotFound:
                self.api[registry] = False
                return None
            except RegistryError as e:
                if e.status not in (400, 405, 501):
                    raise
                self.api[registry] = False
                return None
            page = RawManifest.from_bytes(data, mt.OCI_INDEX,
                                          where=f"{registry}/{repo} referrers")
            out.extend(page.children)
        self.api[registry] = True
        return out

    async def has_api(self, registry: str, repo: str, subject: str) -> bool:
        """Whether `registry` has the referrers API (asked once per registry and run)."""
        known = self.api.get(registry)
        return known if known is not None else await self._api(registry, repo, subject) \
            is not None

    async def discover(self, registry: str, repo: str, subject: str,
                       artifact_types: tuple[str, ...] = (), there: There | None = None
                       ) -> list[Image]:
        """Everything that refers to `subject` in `registry/repo`, each an image of its own
        (named by its cosign tag, else by digest), filtered by kind or artifactType
        (mirror.artifacts.wanted). For a registry with `referrers: cached`, what is found is
        kept in the cache's store of manifests, and what the store kept is taken instead of
        asking (no tag list, referrers API or fallback tag): a subject's digest does not
        change, but what refers to it can, so this is the user's choice. Other registries
        are asked every run, and nothing is kept for them (a record per manifest no run
        reads: 1,200 small files at 400 images, written by the first run and read back by
        every rerun to compare). `there`: where the image is held already (a sync's
        target: mirror.there.There), whose referrers of `subject` are read from there
        (`_find`), those of cosign's tags too, each asked at the registry with a HEAD
        (`_tagged`; a fallback index: `_fallback`). Asked once a run (the last FOUND_KEPT
        subjects kept), however many images name `subject` (two tags of one image, at once
        or one after the other): each has images of its own, made from the same manifests;
        what the first one's `there` read of them, they share."""
        found = await self._found.get((registry, repo, subject),
                                      lambda: self._discover(registry, repo, subject, there))
        where = Reference(registry, repo)
        return [Image.referrer(r.root, subject, r.kind or "artifact", where, r.tag)
                for r in found if wanted(artifact_types, r.kind, r.artifact_type)]

    async def _discover(self, registry: str, repo: str, subject: str, there: There | None
                        ) -> tuple[Image, ...]:
        """`discover`'s referrers of `subject`, from the store's record (`referrers: cached`)
        or asked (`_find`), before the kinds asked for are chosen."""
        store = self.client.manifests if registry in self.client.cached_referrers else None
        kept = store.referrers(registry, repo, subject) if store is not None else None
        found = await self._kept(registry, repo, subject, kept) if kept is not None else None
        if found is None:
            found = await self._find(registry, repo, subject, there)
            if store is not None:
                store.keep_referrers(registry, repo, subject, [
                    {"digest": r.root.digest, "kind": r.kind,
                     "tag": r.reference.tag if r.reference else None} for r in found])
        return tuple(found)

    async def _kept(self, registry: str, repo: str, subject: str,
                    kept: list[dict]) -> list[Image] | None:
        """The referrers the store kept for `subject`, their manifests from the store; None
        when one is missing there (then they are asked for)."""
        store = self.client.manifests
        assert store is not None
        where = Reference(registry, repo)
        out = []
        for e in kept:
            digest = str(e.get("digest"))
            data = store.get(digest)  # checked against `digest` as read: not hashed again
            if data is None:
                return None
            raw = RawManifest.from_bytes(data, where=f"{registry}/{repo}@{digest}",
                                         digest=digest)
            tag = e.get("tag") or None
            if not _refers(raw, subject, e.get("kind"), tag):
                return None  # a damaged record (another subject's, say): ask again
            raw.release(store.get)  # read back from the store when written, as fetched ones
            out.append(Image.referrer(raw, subject, str(e.get("kind")), where, tag))
        return out

    async def _find(self, registry: str, repo: str, subject: str,
                    there: There | None = None) -> list[Image]:
        """What refers to `subject`, asked of the registry; the manifests it lists by
        digest read from `there` where it lists them too (`_held`), checked against their
        digests as from the registry (from the registry when it cannot serve one); those it
        names by tag (its fallback index, cosign's tags) read as `_tagged` says."""
        client = self.client
        where = Reference(registry, repo)
        found: list[Image] = []
        descs = await self._api(registry, repo, subject)
        tags = await self.tags(registry, repo)
        fallback = fallback_tag(subject)
        theirs: Theirs | None = None
        if descs is None and fallback in tags:
            if there is not None and client.manifests is None:  # its index may be theirs
                theirs = await self._theirs(there, subject)
            index = await self._fallback(registry, repo, subject,
                                         theirs[1] if theirs is not None else None)
            descs = index.children if index.is_index else []
        if there is not None and descs and theirs is None:
            theirs = await self._theirs(there, subject)
        held = _held(there, theirs) if there is not None and descs else None
        for d in descs or []:
            def ask(reg: str, rep: str, d: Descriptor = d) -> Awaitable[RawManifest]:
                return client.get_manifest(reg, rep, d.digest, expected=d)
            raw = await held.read(client, ask, d.digest, where) if held is not None else \
                await ask(registry, repo)
            s = raw.subject
            if s is None or s.digest != subject:
                continue  # a stale fallback entry
            kind = kind_of(raw) or raw.artifact_type or "artifact"
            found.append(Image.referrer(raw, subject, kind, where))
        cosign = [(fallback + suffix, kind) for suffix, kind in COSIGN_SUFFIXES.items()
                  if fallback + suffix in tags]
        # at once: each is a HEAD here and a GET there, one after the other
        raws = await gather_or_cancel(self._tagged(registry, repo, tag, there)
                                      for tag, _ in cosign)
        found += [Image.referrer(raw, subject, kind, where, tag)
                  for (tag, kind), raw in zip(cosign, raws, strict=True)]
        return found

    async def _tagged(self, registry: str, repo: str, tag: str, there: There | None
                      ) -> RawManifest:
        """The manifest cosign's `tag` names at `registry/repo`. Of an image `there` holds
        already (a sync's target, which the run before pushed the tag to, byte for byte),
        without a cache's store: one HEAD of the tag and, at once, the manifest the same tag
        names there, read with one GET (There.beside: its bytes checked against the digest
        it names, `there.named` keeps what it is for the push's step 0, which need not ask
        again), taken when it is the one the HEAD said; from the registry by that digest
        when it is not (a tag moved upstream, a manifest deleted there: said with -v alone).
        Otherwise one GET of the tag (a cache's store answers it after a HEAD of the tag:
        mirror.registry.client)."""
        client = self.client
        if there is None or client.manifests is not None:
            return await client.get_manifest(registry, repo, tag)
        head, held = await there.beside(client, Reference(registry, repo, tag), tag)
        if head is None or not head.digest:  # the tag gone since the listing: its GET says so
            return await client.get_manifest(registry, repo, tag)
        if isinstance(held, RawManifest) and held.digest == head.digest:
            return held
        why = f"{there.registry}/{there.repository}:{tag} names {held.digest}" \
            if isinstance(held, RawManifest) else str(held)
        client.t.debug(f"{why}: {head.digest} read from the source, {registry}/{repo}")
        return await client.get_manifest(registry, repo, head.digest)

    async def _fallback(self, registry: str, repo: str, subject: str,
                        theirs: RawManifest | None) -> RawManifest:
        """The `sha256-<hex>` index of referrers of `subject` at `registry/repo`. Where the
        target holds a fallback index of the subject (`theirs`, read by `_theirs`; a sync
        without a cache's store): one HEAD of the tag, and `theirs` taken when it is the
        one the tag names (its bytes checked against that digest as read), else a GET of
        the tag (an index the push merged into is seldom the source's bytes: the target is
        not asked for it by digest). Otherwise one GET of the tag."""
        tag = fallback_tag(subject)
        if theirs is not None and \
                await self._named(registry, repo, tag, (theirs.digest, theirs.media_type)) \
                == theirs.digest:
            return theirs
        return await self.client.get_manifest(registry, repo, tag)

    async def _named(self, registry: str, repo: str, tag: str,
                     known: tuple[str, str] | None = None) -> str | None:
        """The digest `tag` names, by one HEAD (`known`: the one it may name, asked with
        If-None-Match); None when the HEAD says none (the tag gone since the listing: its
        GET says so, as before)."""
        head = await self.client.head_manifest(registry, repo, tag, known)
        return head.digest if head is not None and head.digest else None

    async def _theirs(self, there: There, subject: str) -> Theirs | None:
        """The referrers of `subject` that `there` lists (its referrers API's answer, else
        its `sha256-<hex>` fallback index: one request) and that index (None: none); None
        when it cannot say (said with -v alone)."""
        try:
            descs = await self._api(there.registry, there.repository, subject)
            if descs is not None:
                return descs, None
            index = await held_fallback(self.client, there.registry, there.repository,
                                        subject)
        except MirrorError as e:
            self.client.t.debug(f"{e}: the referrers of {subject} read from the source")
            return None
        return (index.children if index is not None and index.is_index else []), index


def _held(there: There, theirs: Theirs | None) -> There | None:
    """Where the referrers `theirs` lists are read from: `there`, for those; None when it
    lists none, or could not say."""
    listed = {d.digest for d in theirs[0]} if theirs is not None else set()
    return There(there.registry, there.repository, listed) if listed else None


def _refers(raw: RawManifest, subject: str, kind: object, tag: object) -> bool:
    """Whether a kept record's entry is what `_find` would have found for `subject`: a
    manifest whose `subject` is it, of the kind its bytes say, or the subject's own cosign
    tag (`sha256-<hex>.sig`, `.att`, `.sbom`) of that tag's kind."""
    if tag is None:
        s = raw.subject
        return s is not None and s.digest == subject and \
            kind == (kind_of(raw) or raw.artifact_type or "artifact")
    fallback = fallback_tag(subject)
    return any(tag == fallback + suffix and kind == k for suffix, k in COSIGN_SUFFIXES.items())


async def held_fallback(client: Client, registry: str, repo: str, subject: str
                        ) -> RawManifest | None:
    """The subject's `sha256-<hex>` index of referrers as the target holds it (None when
    there is none), checked against the digest the answer names."""
    try:
        return await client.get_manifest(registry, repo, fallback_tag(subject))
    except NotFound:
        return None


def with_referrer(held: RawManifest | None, referrer: RawManifest) -> RawManifest | None:
    """The fallback index `held` (None: none yet) with `referrer` added, never clobbered:
    what is pushed as its subject's `sha256-<hex>` tag; None when `held` lists it already."""
    body: dict[str, Any] = json.loads(held.data) if held is not None else \
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
    if any(e.get("digest") == referrer.digest for e in body.get("manifests") or []):
        return None
    desc = referrer.descriptor()
    if referrer.artifact_type:
        desc["artifactType"] = referrer.artifact_type
    ann = referrer.parsed.get("annotations")
    if ann:
        desc["annotations"] = ann
    body.setdefault("manifests", []).append(desc)
    return RawManifest(dump_json(body), mt.OCI_INDEX)
