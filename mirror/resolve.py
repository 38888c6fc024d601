"""Resolve one configured image: fetch its manifests, select platforms, list its blobs.

The result, an ImagePlan, is what both the bundle writer and the report need: the root
manifest to name (the source's bytes, or a filtered index of the selected children), every
manifest below it, every blob, and what is absent on purpose (foreign layers, the children a
sparse index leaves out).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mirror import mediatypes as mt
from mirror.artifacts import wanted
from mirror.config import ImageSpec
from mirror.errors import NoMatchingPlatform, UnsupportedContent
from mirror.manifest import Descriptor, RawManifest, dump_json
from mirror.platform import Platform, no_matching_manifest
from mirror.registry.client import Client

ATTESTATION_REF = "vnd.docker.reference.digest"

FetchConfig = Callable[[str, str, Descriptor], Awaitable[bytes]]


@dataclass
class ImagePlan:
    spec: ImageSpec
    root: RawManifest  # what the reference names in the bundle
    source_digest: str  # what the reference named upstream
    mode: str  # full | filter | sparse | single
    manifests: dict[str, RawManifest] = field(default_factory=dict)  # all, root included
    blobs: dict[str, Descriptor] = field(default_factory=dict)  # configs and layers
    absent: dict[str, str] = field(default_factory=dict)  # digest -> reason
    platforms: list[str] = field(default_factory=list)
    # platform -> manifest in the bundle (what the target serves after a load), and the
    # source's (upstream, where referrers are looked up): they differ after a conversion
    platform_digests: dict[str, str] = field(default_factory=dict)
    source_platform_digests: dict[str, str] = field(default_factory=dict)
    conversions: dict[str, str] = field(default_factory=dict)  # old -> new digest
    # nested indexes filtered in turn (their old digests, also in `conversions`): a
    # re-serialisation like any other, reported old -> new
    nested_filtered: set[str] = field(default_factory=set)
    referrers: list = field(default_factory=list)  # mirror.referrers.Referrer, own entries
    left_behind: list[str] = field(default_factory=list)  # in-index attestations, not carried

    @property
    def name(self) -> str:
        return str(self.spec.reference)

    def manifest_order(self) -> list[RawManifest]:
        """Children before their parents (push order), root last."""
        out: list[RawManifest] = []
        seen: set[str] = set()

        def visit(raw: RawManifest) -> None:
            if raw.digest in seen:
                return
            seen.add(raw.digest)
            for child in raw.children:
                if child.digest in self.manifests:
                    visit(self.manifests[child.digest])
            out.append(raw)

        for raw in self.manifests.values():
            if raw.digest != self.root.digest:
                visit(raw)
        visit(self.root)
        return out


def no_match(spec: ImageSpec, available: list[str]) -> NoMatchingPlatform:
    return no_matching_manifest(
        str(spec.reference), spec.settings.platforms, available,
        hint="ask for one of those: --platform, when given, applies to every image and "
             "overrides `platforms:` in the config; --keep-going finishes the other images")


async def resolve(client: Client, spec: ImageSpec, fetch_config: FetchConfig,
                  referrer_types: tuple[str, ...] = ()) -> ImagePlan:
    """Raise NotFound, NoMatchingPlatform, UnsupportedContent or a RegistryError.
    `referrer_types` (--referrer-type) decides, with `referrers:`, whether the attestation
    manifests inside an index are kept (mirror.artifacts)."""
    ref = spec.reference
    reg, repo = ref.registry, ref.repository
    root = await client.get_manifest(reg, repo, spec.pin or ref.ref)
    sel = spec.settings.platforms
    plan = ImagePlan(spec, root, root.digest, "single")
    if root.is_index:
        attestations = spec.settings.referrers and wanted(referrer_types, "attestation", None)
        await _resolve_index(client, spec, plan, root, fetch_config, attestations)
    elif root.is_image and not root.parsed.get("artifactType"):
        cfg = root.config
        assert cfg is not None
        p = _config_platform(await fetch_config(reg, repo, cfg))
        if not sel.all and (p is None or not sel.wants(p)):
            raise no_match(spec, [str(p)] if p else [])
        plan.platforms = [str(p)] if p else []
        plan.platform_digests = {str(p): root.digest} if p else {}
        _add_manifest(plan, root)
    elif mt.is_image_manifest(root.media_type):
        _add_manifest(plan, root)  # an artifact: copied byte for byte, never platform-filtered
    else:
        raise UnsupportedContent(f"{ref}: unsupported manifest type {root.media_type!r}")
    plan.source_platform_digests = dict(plan.platform_digests)  # convert_plan may rename them
    return plan


async def _resolve_index(client: Client, spec: ImageSpec, plan: ImagePlan, root: RawManifest,
                         fetch_config: FetchConfig, attestations: bool) -> None:
    """`attestations`: keep the attestation manifests of the chosen platforms; otherwise
    the index is filtered without them (`left_behind`)."""
    ref = spec.reference
    reg, repo = ref.registry, ref.repository
    sel = spec.settings.platforms
    children = root.children
    available = [str(c.platform) for c in children if c.platform and not c.platform.is_unknown]
    chosen: list[Descriptor] = []
    nested: dict[str, ImagePlan] = {}  # nested indexes resolved while choosing
    for c in children:
        if c.platform is None and mt.is_index(c.media_type) and not sel.all:
            # a nested index without a platform: chosen if anything inside it matches
            child = await client.get_manifest(reg, repo, c.digest, expected=c)
            inner = ImagePlan(spec, child, child.digest, "full")
            try:
                await _resolve_index(client, spec, inner, child, fetch_config, attestations)
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
            # no platform on the entry: ask the image's config (Docker treats it as "any")
            child = await client.get_manifest(reg, repo, c.digest, expected=c)
            cfg = child.config
            # an artifact is never read as an image (its config may not be one)
            p = _config_platform(await fetch_config(reg, repo, cfg)) if child.is_image and \
                cfg and not child.parsed.get("artifactType") else None
            if p is not None:
                available.append(str(p))
                if sel.wants(p):
                    chosen.append(c)
    chosen_digests = {c.digest for c in chosen}
    for c in children:  # attestations travel with the image they describe
        if c.platform is not None and c.platform.is_unknown and \
                c.annotations.get(ATTESTATION_REF) in chosen_digests:
            if attestations:
                chosen.append(c)
            else:  # `referrers: false`, --no-referrers or a --referrer-type that is not
                # `attestation`: the index is filtered without them
                plan.left_behind.append(c.digest)
    if not any(c.digest in chosen_digests for c in chosen):
        raise no_match(spec, available)
    chosen_set = {c.digest for c in chosen}
    replaced: dict[str, RawManifest] = {}  # nested indexes that were filtered in turn
    for c in children:
        if c.digest not in chosen_set:
            continue
        sub = nested.get(c.digest)
        if sub is None:
            child = await client.get_manifest(reg, repo, c.digest, expected=c)
            if not child.is_index:
                _add_manifest(plan, child)
                if c.platform is not None and not c.platform.is_unknown:
                    plan.platforms.append(str(c.platform))
                    plan.platform_digests[str(c.platform)] = c.digest
                continue
            sub = ImagePlan(spec, child, child.digest, "full")
            await _resolve_index(client, spec, sub, child, fetch_config, attestations)
        plan.manifests.update(sub.manifests)
        plan.blobs.update(sub.blobs)
        plan.absent.update(sub.absent)
        plan.platforms.extend(sub.platforms)
        plan.platform_digests.update(sub.platform_digests)
        plan.left_behind.extend(sub.left_behind)
        plan.conversions.update(sub.conversions)
        plan.nested_filtered |= sub.nested_filtered
        if sub.root.digest != sub.source_digest:
            replaced[sub.source_digest] = sub.root
            plan.conversions[sub.source_digest] = sub.root.digest
            plan.nested_filtered.add(sub.source_digest)
    if len(chosen_set) == len({c.digest for c in children}) and not replaced:
        plan.mode = "full"
        plan.root = root
    elif spec.settings.index == "sparse":
        plan.mode = "sparse"
        plan.root = root
        for c in children:
            if c.digest not in chosen_set:
                plan.absent[c.digest] = "sparse"
    else:
        plan.mode = "filter"
        body = json.loads(root.data)
        body["manifests"] = [m for m in body["manifests"] if m.get("digest") in chosen_set]
        for m in body["manifests"]:
            new = replaced.get(m.get("digest"))
            if new is not None:
                m["digest"], m["size"] = new.digest, new.size
        plan.root = RawManifest(dump_json(body), root.media_type)
    plan.manifests[plan.root.digest] = plan.root


def _add_manifest(plan: ImagePlan, raw: RawManifest) -> None:
    """Foreign layers (`urls`, or a foreign/non-distributable type) are absent on purpose
    under `skip`; `include` and `rewrite` fetch them (the descriptor keeps its `urls`, the
    places to fetch from when the registry does not serve the blob)."""
    plan.manifests[raw.digest] = raw
    for d in raw.blobs():
        if d.is_foreign and plan.spec.settings.foreign_layers not in ("include", "rewrite"):
            plan.absent[d.digest] = "foreign"
        else:
            plan.blobs[d.digest] = d


def _config_platform(data: bytes) -> Platform | None:
    try:
        return Platform.from_dict(json.loads(data))
    except (ValueError, TypeError):
        return None
