"""`mirror inspect`: the digests of a bundle or a remote image, each labelled for what it is.

Users mix up the manifest digest (what you pin: `image@sha256:...`), the config digest (the
image ID `docker images` shows), layer digests (of the compressed blobs in the registry) and
diff_ids (of the uncompressed layers, in the config). This prints all four, named.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mirror import mediatypes as mt
from mirror.bundle.layout import A_SOURCE_DIGEST, IMAGE_NAME, REF_NAME
from mirror.errors import NoMatchingPlatform
from mirror.manifest import RawManifest
from mirror.platform import Platform, PlatformSelector, no_matching_manifest
from mirror.referrers import A_KIND, A_SUBJECT

GetBlob = Callable[[str], Awaitable[bytes | None]]
GetManifest = Callable[[str], Awaitable[RawManifest | None]]

BUNDLE_SUFFIXES = (".tar", ".tar.zst", ".tzst", ".zst", ".tar.gz")
PATH_PREFIXES = ("/", "./", "../", "~")
HINT = "pick one of those with --platform"


def bundle_path(target: str) -> Path | None:
    """The bundle file `target` names, or None when it is an image reference.

    An existing file is a bundle; so is a missing one that looks like a path (a bundle suffix,
    or a leading /, ./, ../ or ~), so that a mistyped bundle name fails at once as a bundle
    that cannot be opened instead of being looked up as docker.io/<dir>/<name>:tar."""
    path = Path(target)
    if target.startswith("~"):
        try:
            path = path.expanduser()
        except RuntimeError:  # ~nosuchuser: opened as named, and reported missing
            pass
    try:
        if path.is_file():
            return path
    except OSError:  # a reference too long to be a file name
        pass
    if target.startswith(PATH_PREFIXES) or target.lower().endswith(BUNDLE_SUFFIXES):
        return path
    return None


async def describe(name: str, root: RawManifest, get_manifest: GetManifest, get_blob: GetBlob,
                   annotations: dict[str, str] | None = None,
                   platforms: PlatformSelector | None = None) -> dict[str, Any]:
    """The labelled digests of `root`. With `platforms` (other than all): only the platform
    manifests that match (and the attestations describing them), as pull selects them;
    NoMatchingPlatform naming `name` when none does. An artifact is never platform-filtered."""
    sel = platforms or PlatformSelector()
    doc: dict[str, Any] = {"reference": name, "digest": root.digest,
                           "mediaType": root.media_type, "size": root.size}
    ann = annotations or {}
    if ann.get(A_SOURCE_DIGEST):
        doc["sourceDigest"] = ann[A_SOURCE_DIGEST]
    if ann.get(A_SUBJECT):
        doc["referrerOf"] = ann[A_SUBJECT]
        doc["kind"] = ann.get(A_KIND, "artifact")
    if root.is_index:
        doc["manifests"] = await _children(name, root, get_manifest, get_blob, sel)
    else:
        info, plat = await _image(root, get_blob)
        if not sel.all and has_platform(root) and (plat is None or not sel.wants(plat)):
            raise no_matching_manifest(name, sel, [str(plat)] if plat else [], hint=HINT)
        doc.update(info)
    return doc


def has_platform(root: RawManifest) -> bool:
    """What --platform selects from: an index, or an image (not an artifact)."""
    return root.is_index or (root.is_image and not root.parsed.get("artifactType"))


async def _children(name: str, root: RawManifest, get_manifest: GetManifest,
                    get_blob: GetBlob, sel: PlatformSelector) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    available: list[str] = []
    for c in root.children:
        tagged = c.platform is not None and not c.platform.is_unknown
        if tagged:
            assert c.platform is not None
            available.append(str(c.platform))
            if not sel.wants(c.platform):
                continue  # left out: not even fetched
        child = await get_manifest(c.digest)
        item: dict[str, Any] = {"platform": str(c.platform) if c.platform else None,
                                "digest": c.digest, "mediaType": c.media_type,
                                "size": c.size}
        if c.annotations.get("vnd.docker.reference.type"):
            item["attestationFor"] = c.annotations.get("vnd.docker.reference.digest")
        found: list[Platform] = []
        if child is None:
            item["absent"] = True
        else:
            info, plat = await _image(child, get_blob)
            item.update(info)
            if c.platform is None and not sel.all:  # the entry says nothing: look inside
                found = [plat] if plat else await _nested_platforms(child, get_manifest)
                available.extend(str(p) for p in found)
        if sel.all or tagged or any(sel.wants(p) for p in found):
            items.append(item)
        elif c.platform is not None and item.get("attestationFor"):
            items.append(item)  # kept below if what it describes is shown
    if sel.all:
        return items
    shown = {i["digest"] for i in items if "attestationFor" not in i}
    if not shown:
        raise no_matching_manifest(name, sel, available, hint=HINT)
    return [i for i in items if "attestationFor" not in i or i["attestationFor"] in shown]


async def _nested_platforms(raw: RawManifest, get_manifest: GetManifest) -> list[Platform]:
    """The platforms a nested index (an entry without a platform) holds."""
    out: list[Platform] = []
    for c in raw.children:
        if c.platform is not None:
            if not c.platform.is_unknown:
                out.append(c.platform)
        elif mt.is_index(c.media_type):
            sub = await get_manifest(c.digest)
            if sub is not None and sub.is_index:
                out.extend(await _nested_platforms(sub, get_manifest))
    return out


async def _image(raw: RawManifest, get_blob: GetBlob) -> tuple[dict[str, Any], Platform | None]:
    """The labelled digests of one manifest, and the platform its image config names."""
    out: dict[str, Any] = {}
    if raw.artifact_type:
        out["artifactType"] = raw.artifact_type
    cfg = raw.config
    if cfg is None:
        return out, None
    out["config"] = {"digest": cfg.digest, "mediaType": cfg.media_type, "size": cfg.size}
    out["layers"] = [{"digest": d.digest, "size": d.size, "mediaType": d.media_type,
                      **({"urls": list(d.urls)} if d.urls else {})} for d in raw.layers]
    data = await get_blob(cfg.digest) if raw.is_image else None
    plat = None
    if data:
        try:
            c = json.loads(data)
            out["diffIds"] = list((c.get("rootfs") or {}).get("diff_ids") or [])
            out["platform"] = "/".join(x for x in (c.get("os"), c.get("architecture"),
                                                   c.get("variant")) if x)
            p = Platform.from_dict(c)
            plat = p if p and p.os and p.architecture else None
        except (ValueError, AttributeError, TypeError):
            pass
    return out, plat


def render(docs: list[dict[str, Any]]) -> str:
    """Text for people: per image, each digest labelled, the values in one column."""
    out: list[str] = []
    for d in docs:
        rows: list[tuple[str, str, str] | str] = [d["reference"]]  # (indent, label, value)
        row = _adder(rows)
        row("  ", "manifest digest (pin this)", f"{d['digest']}  {d['mediaType']}")
        if d.get("sourceDigest"):
            row("  ", "source digest (upstream)", d["sourceDigest"])
        if d.get("referrerOf"):
            row("  ", f"{d['kind']} of", d["referrerOf"])
        items = d.get("manifests") or [d]
        for m in items:
            if m is not d:
                what = f"attestation for {m['attestationFor']}" if m.get("attestationFor") \
                    else (m.get("platform") or "no platform")
                rows.append(f"  [{what}]")
                row("    ", "platform manifest digest", m["digest"]
                    + ("  (absent from the bundle)" if m.get("absent") else ""))
            pad = "    " if m is not d else "  "
            if m.get("artifactType"):
                row(pad, "artifact type", m["artifactType"])
            if "config" in m:
                row(pad, "config digest (image ID)", m["config"]["digest"])
                for i, layer in enumerate(m.get("layers", [])):
                    row(pad, f"layer {i} digest (compressed)",
                        f"{layer['digest']} {layer['size']} bytes {layer['mediaType']}")
                    if layer.get("urls"):
                        row(pad + "  ", "foreign layer, served from", layer["urls"][0])
                for i, diff in enumerate(m.get("diffIds", [])):
                    row(pad, f"layer {i} diff_id (uncompressed)", diff)
        width = max(len(r[0]) + len(r[1]) + 1 for r in rows if isinstance(r, tuple))
        for r in rows:
            if isinstance(r, str):
                out.append(r)
            else:
                indent, label, value = r
                out.append(f"{indent}{label + ':':<{width - len(indent)}} {value}")
    return "\n".join(out)


def _adder(rows: list) -> Any:
    def row(indent: str, label: str, value: str) -> None:
        rows.append((indent, label, value))
    return row


async def inspect_target(args, make_transport) -> str:
    sel = PlatformSelector.parse(args.platform)
    path = await asyncio.to_thread(bundle_path, args.target)
    if path is not None:
        docs = await _inspect_bundle(path, sel)
    else:
        from mirror.reference import Reference
        from mirror.registry.client import Client

        ref = Reference.parse(args.target)
        async with make_transport() as t:
            client = Client(t)
            root = await client.get_manifest(ref.registry, ref.repository, ref.ref)

            async def get_manifest(d: str) -> RawManifest | None:
                return await client.get_manifest(ref.registry, ref.repository, d)

            async def get_blob(d: str) -> bytes | None:
                return await client.get_small_blob(ref.registry, ref.repository, d)

            docs = [await describe(str(ref), root, get_manifest, get_blob, platforms=sel)]
    return json.dumps(docs, indent=2) if args.json else render(docs)


async def _inspect_bundle(path: Path, sel: PlatformSelector) -> list[dict[str, Any]]:
    """Every index.json entry; with --platform, the images that have one of those platforms
    (the others left out; NoMatchingPlatform when none has) and what refers to them."""
    from mirror.bundle.reader import Bundle

    bundle = Bundle(path)  # a missing file: BundleError, as verify and load say it
    contents = await asyncio.to_thread(bundle.scan, configs=True)

    async def get_manifest(d: str) -> RawManifest | None:
        return contents.manifests.get(d)

    async def get_blob(d: str) -> bytes | None:
        if bundle.compressed:
            return contents.configs.get(d)
        if d not in contents.members or contents.members[d] > (1 << 22):
            return None
        return bundle.read_member("blobs/" + d.replace(":", "/", 1))

    docs: list[dict[str, Any]] = []
    matched, missed = 0, []
    for e in contents.index["manifests"]:
        ann = e.get("annotations") or {}
        name = ann.get(IMAGE_NAME) or ann.get(REF_NAME) or e["digest"]
        root = contents.manifests[e["digest"]]
        filtered = not ann.get(A_SUBJECT) and has_platform(root)
        try:
            docs.append(await describe(name, root, get_manifest, get_blob, ann,
                                       sel if filtered else None))
            matched += filtered
        except NoMatchingPlatform as err:
            missed.append(err)
    if sel.all:
        return docs
    if missed and not matched:
        if len(missed) == 1:
            raise missed[0]
        raise no_matching_manifest(
            str(path), sel, [p for err in missed for p in getattr(err, "available", [])],
            hint=HINT, holder="its images have")
    return _with_their_subjects(docs)


def _with_their_subjects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Referrer entries (signatures, SBOMs...) whose subject is shown, the others left out."""
    def digests(d: dict[str, Any]) -> set[str]:
        return {d["digest"], d.get("sourceDigest") or d["digest"],
                *(m["digest"] for m in d.get("manifests") or [])}

    shown: set[str] = set()
    for d in docs:
        if not d.get("referrerOf"):
            shown |= digests(d)
    kept: set[int] = set()
    grew = True
    while grew:  # a signature of an SBOM follows the SBOM
        grew = False
        for i, d in enumerate(docs):
            if d.get("referrerOf") in shown and i not in kept:
                kept.add(i)
                shown |= digests(d)
                grew = True
    return [d for i, d in enumerate(docs) if not d.get("referrerOf") or i in kept]
