"""`mirror inspect`: the digests of a bundle or a remote image, each labelled for what it is.

Users mix up the manifest digest (what you pin: `image@sha256:...`), the config digest (the
image ID `docker images` shows), layer digests (of the compressed blobs in the registry) and
diff_ids (of the uncompressed layers, in the config). This prints all four, named.
A nested index is shown with the images inside it; in a bundle, each converted manifest with
the digest it replaced, and each blob left out on purpose (mirror.json's `absent`) as such.
A referrer (signature, SBOM) shows what it refers to: `referrerOf` when the bundle carries
that manifest, `referrerOfSource` when it is a source digest the bundle replaced (a filtered
index, a converted manifest), which no registry loaded from the bundle serves.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirror import mediatypes as mt
from mirror.errors import NoMatchingPlatform
from mirror.image import Image
from mirror.manifest import RawManifest
from mirror.platform import Platform, PlatformSelector, no_matching_manifest

GetBlob = Callable[[str], Awaitable[bytes | None]]
GetManifest = Callable[[str], Awaitable[RawManifest | None]]

BUNDLE_SUFFIXES = (".tar", ".tar.zst", ".tzst", ".zst", ".tar.gz")
PATH_PREFIXES = ("/", "./", "../", "~")
HINT = "pick one of those with --platform"


def bundle_path(target: str) -> Path | None:
    """The bundle file `target` names, or None when it is an image reference.

    An existing file is a bundle, and so is a directory with an `oci-layout` file (an OCI
    layout directory; any other directory is a name); so is a missing one that looks like a
    path (a bundle suffix, or a leading /, ./, ../ or ~), so that a mistyped bundle name fails
    at once as a bundle that cannot be opened instead of being looked up as
    docker.io/<dir>/<name>:tar."""
    path = Path(target)
    if target.startswith("~"):
        try:
            path = path.expanduser()
        except RuntimeError:  # ~nosuchuser: opened as named, and reported missing
            pass
    try:
        if path.is_file() or (path / "oci-layout").is_file():  # a bundle, or a layout dir
            return path
    except OSError:  # a reference too long to be a file name
        pass
    if target.startswith(PATH_PREFIXES) or target.lower().endswith(BUNDLE_SUFFIXES):
        return path
    return None


async def describe(image: Image, get_manifest: GetManifest, get_blob: GetBlob,
                   platforms: PlatformSelector | None = None, *, name: str | None = None,
                   conversions: dict[str, str] | None = None,
                   absent: dict[str, str] | None = None) -> dict[str, Any]:
    """The labelled digests of the image (mirror.image), nested indexes recursed. With
    `platforms` (other than all): only the platform manifests that match (and the
    attestations describing them), as pull selects them; NoMatchingPlatform naming `name`
    (default: the image's) when none does. An artifact is never platform-filtered.
    `conversions` (old: new digest, a bundle's) names the manifest each converted one
    replaced; `absent` (digest: reason, a bundle's mirror.json) marks the blobs the bundle
    leaves out on purpose."""
    sel = platforms or PlatformSelector()
    name = name or image.name
    root = image.root
    doc: dict[str, Any] = {"reference": name, "digest": root.digest,
                           "mediaType": root.media_type, "size": root.size}
    if image.source_digest != root.digest:
        doc["sourceDigest"] = image.source_digest
    if image.kind is not None:  # a referrer the bundle names as one
        doc["referrerOf"] = image.subject
        doc["kind"] = image.kind
    ctx = _Context(get_manifest, get_blob, sel, {n: o for o, n in (conversions or {}).items()},
                   absent or {})
    if root.is_index:
        available: list[str] = []
        doc["manifests"] = await _children(root, ctx, available, {root.digest})
        if not sel.all and not doc["manifests"]:
            raise no_matching_manifest(name, sel, available, hint=HINT)
    else:
        info, plat = await _image(root, ctx)
        if not sel.all and has_platform(root) and (plat is None or not sel.wants(plat)):
            raise no_matching_manifest(name, sel, [str(plat)] if plat else [], hint=HINT)
        doc.update(info)
    return doc


def has_platform(root: RawManifest) -> bool:
    """What --platform selects from: an index, or an image (not an artifact)."""
    return root.is_index or (root.is_image and not root.declared_artifact_type)


@dataclass
class _Context:
    get_manifest: GetManifest
    get_blob: GetBlob
    sel: PlatformSelector
    replaced: dict[str, str]  # new digest: the old one it replaced
    absent: dict[str, str]  # blob digest: why the bundle leaves it out


async def _children(raw: RawManifest, ctx: _Context, available: list[str],
                    path: set[str]) -> list[dict[str, Any]]:
    """The entries of index `raw`, a nested index with its own entries under `manifests`;
    with a platform selection only the images that match (a nested index kept when any of its
    images is), the platforms seen added to `available`."""
    sel = ctx.sel
    items: list[dict[str, Any]] = []
    for c in raw.children:
        tagged = c.platform is not None and not c.platform.is_unknown
        if tagged:
            assert c.platform is not None
            available.append(str(c.platform))
            if not sel.wants(c.platform) and not mt.is_index(c.media_type):
                continue  # left out: not even fetched
        child = await ctx.get_manifest(c.digest)
        item: dict[str, Any] = {"platform": str(c.platform) if c.platform else None,
                                "digest": c.digest, "mediaType": c.media_type,
                                "size": c.size}
        if c.digest in ctx.replaced:
            item["convertedFrom"] = ctx.replaced[c.digest]
        if c.annotations.get("vnd.docker.reference.type"):
            item["attestationFor"] = c.annotations.get("vnd.docker.reference.digest")
        wanted = sel.all or tagged
        if child is None:
            item["absent"] = True
        elif child.is_index:
            if c.digest not in path:  # a digest cannot name itself; guard all the same
                item["manifests"] = await _children(child, ctx, available,
                                                    path | {c.digest})
            wanted = sel.all or bool(item.get("manifests"))
        else:
            info, plat = await _image(child, ctx)
            item.update(info)
            if c.platform is None and plat is not None:  # the entry says nothing: its config
                available.append(str(plat))
                wanted = sel.all or sel.wants(plat)
        if wanted or (c.platform is not None and item.get("attestationFor")):
            items.append(item)  # an attestation: kept below if what it describes is shown
    if sel.all:
        return items
    shown = {i["digest"] for i in items if "attestationFor" not in i}
    return [i for i in items if "attestationFor" not in i or i["attestationFor"] in shown] \
        if shown else []


async def _image(raw: RawManifest, ctx: _Context) -> tuple[dict[str, Any], Platform | None]:
    """The labelled digests of one manifest, and the platform its image config names."""
    out: dict[str, Any] = {}
    if raw.artifact_type:
        out["artifactType"] = raw.artifact_type
    cfg = raw.config
    if cfg is None:
        return out, None
    out["config"] = {"digest": cfg.digest, "mediaType": cfg.media_type, "size": cfg.size}
    if cfg.digest in ctx.absent:
        out["config"]["absent"] = ctx.absent[cfg.digest]
    out["layers"] = [{"digest": d.digest, "size": d.size, "mediaType": d.media_type,
                      **({"urls": list(d.urls)} if d.urls else {}),
                      **({"absent": ctx.absent[d.digest]} if d.digest in ctx.absent else {})}
                     for d in raw.layers]
    data = await ctx.get_blob(cfg.digest) if raw.is_image else None
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


# why a blob is not in the bundle; a skipped foreign layer was not carried by mirror at all:
# the runtime that pulls the image (at the target) fetches it from the urls in its descriptor
ABSENT = {"foreign": "foreign layer, not carried; the runtime that pulls the image fetches "
                     "it from its urls", "base": "in the base bundle",
          "sparse": "left out of a sparse index"}


def render(docs: list[dict[str, Any]]) -> str:
    """Text for people: per image, each digest labelled, the values in one column; a nested
    index with its entries indented under it."""
    out: list[str] = []
    for d in docs:
        rows: list[tuple[str, str, str] | str] = [d["reference"]]  # (indent, label, value)
        row = _adder(rows)
        row("  ", "manifest digest (pin this)", f"{d['digest']}  {d['mediaType']}")
        if d.get("sourceDigest"):
            row("  ", "source digest (upstream)", d["sourceDigest"])
        if d.get("referrerOf"):
            row("  ", f"{d['kind']} of", d["referrerOf"])
        if d.get("referrerOfSource"):
            row("  ", f"{d['kind']} of source digest (upstream)", d["referrerOfSource"])
        if "manifests" in d:
            _entries(row, rows, d["manifests"], "  ")
        else:
            _digests(row, d, "  ")
        width = max(len(r[0]) + len(r[1]) + 1 for r in rows if isinstance(r, tuple))
        for r in rows:
            if isinstance(r, str):
                out.append(r)
            else:
                indent, label, value = r
                out.append(f"{indent}{label + ':':<{width - len(indent)}} {value}")
    return "\n".join(out)


def _entries(row, rows: list, items: list[dict[str, Any]], pad: str) -> None:
    for m in items:
        absent = "  (absent from the bundle)" if m.get("absent") else ""
        nested = mt.is_index(m.get("mediaType", ""))
        if nested:
            where = f", {m['platform']}" if m.get("platform") else ""
            rows.append(f"{pad}[nested index{where}]")
            row(pad + "  ", "index digest", f"{m['digest']}  {m['mediaType']}{absent}")
        else:
            what = f"attestation for {m['attestationFor']}" if m.get("attestationFor") \
                else (m.get("platform") or "no platform")
            rows.append(f"{pad}[{what}]")
            row(pad + "  ", "platform manifest digest", m["digest"] + absent)
        if m.get("convertedFrom"):
            row(pad + "  ", "converted from", m["convertedFrom"])
        if nested:
            _entries(row, rows, m.get("manifests") or [], pad + "  ")
        else:
            _digests(row, m, pad + "  ")


def _digests(row, m: dict[str, Any], pad: str) -> None:
    """An image's (or an artifact's) config, layer digests and diff_ids."""
    if m.get("artifactType"):
        row(pad, "artifact type", m["artifactType"])
    if "config" not in m:
        return
    cfg = m["config"]
    if cfg.get("mediaType", mt.OCI_CONFIG) in mt.IMAGE_CONFIG_TYPES:
        row(pad, "config digest (image ID)", cfg["digest"] + _left_out(cfg))
    else:
        row(pad, "config digest", f"{cfg['digest']}  {cfg['mediaType']}{_left_out(cfg)}")
    for i, layer in enumerate(m.get("layers", [])):
        row(pad, f"layer {i} digest (compressed)",
            f"{layer['digest']} {layer['size']} bytes {layer['mediaType']}{_left_out(layer)}")
        if layer.get("urls"):
            row(pad + "  ", "foreign layer, served from", layer["urls"][0])
    for i, diff in enumerate(m.get("diffIds", [])):
        row(pad, f"layer {i} diff_id (uncompressed)", diff)


def _left_out(blob: dict[str, Any]) -> str:
    why = blob.get("absent")
    return f"  (not in the bundle: {ABSENT.get(why, why)})" if why else ""


def _adder(rows: list) -> Any:
    def row(indent: str, label: str, value: str) -> None:
        rows.append((indent, label, value))
    return row


async def inspect_target(args, make_transport,
                         note: Callable[[str], None] | None = None) -> str:
    """The text (or --json) of args.target; `note` gets what a reader of another format
    says about it (a docker-archive's new manifests and untagged images), as load says it."""
    sel = PlatformSelector.parse(args.platform)
    path = await asyncio.to_thread(bundle_path, args.target)
    if path is not None:
        docs = await _inspect_bundle(path, sel, note)
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

            docs = [await describe(Image(str(ref), root, reference=ref), get_manifest,
                                   get_blob, platforms=sel)]
    return json.dumps(docs, indent=2) if args.json else render(docs)


async def _inspect_bundle(path: Path, sel: PlatformSelector,
                          note: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every index.json entry; with --platform, the images that have one of those platforms
    (the others left out; NoMatchingPlatform when none has) and what refers to them."""
    from mirror.bundle.images import bundle_images, entry_name
    from mirror.bundle.reader import Bundle

    bundle = Bundle(path, check_parts=False)  # a missing file: BundleError, as verify and load say it
    contents = await asyncio.to_thread(bundle.scan, configs=True)
    if note is not None:
        for line in contents.notes:
            note(line)

    async def get_manifest(d: str) -> RawManifest | None:
        return contents.manifests.get(d)

    async def get_blob(d: str) -> bytes | None:
        if bundle.compressed:
            return contents.configs.get(d)
        if d not in contents.members or contents.members[d] > (1 << 22):
            return None
        return bundle.read_member(bundle.blob_member(d))

    inv = contents.inventory
    absent = dict(inv.absent) if inv else {}
    if note is not None and inv and inv.base:  # which bundle "in the base bundle" means
        note(f"{path}: incremental bundle, made against {inv.base_named}: the blobs it "
             "leaves to that base are marked \"in the base bundle\"")
    docs: list[dict[str, Any]] = []
    matched, missed = 0, []
    images = bundle_images(contents, bundle.name).images
    for e, img in zip(contents.index["manifests"], images, strict=True):
        filtered = img.kind is None and has_platform(img.root)
        conversions = {**(inv.conversions if inv else {}), **img.conversions}
        try:
            doc = await describe(img, get_manifest, get_blob, sel if filtered else None,
                                 name=entry_name(e) or e["digest"], conversions=conversions,
                                 absent=absent)
            if inv and inv.base:  # which bundle its blobs "in the base bundle" are in
                doc["baseBundle"] = {"name": inv.base_name, "digest": inv.base}
            if doc.get("referrerOf") not in (None, *contents.manifests):
                # made for a manifest the bundle replaced (a filtered index, a converted
                # manifest): named as the source's, which no target of this bundle serves
                doc["referrerOfSource"] = doc.pop("referrerOf")
            docs.append(doc)
            matched += filtered
        except NoMatchingPlatform as err:
            missed.append(err)
    if sel.all:
        return docs
    if missed and not matched:
        if len(missed) == 1:
            raise missed[0]
        raise no_matching_manifest(
            str(path), sel, [p for err in missed for p in err.available],
            hint=HINT, holder="its images have")
    return _with_their_subjects(docs)


def _with_their_subjects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Referrer entries (signatures, SBOMs...) whose subject is shown, the others left out."""
    def digests(d: dict[str, Any]) -> set[str]:
        return {d["digest"], d.get("sourceDigest") or d["digest"], d.get("convertedFrom")
                or d["digest"], *(x for m in d.get("manifests") or [] for x in digests(m))}

    def subject(d: dict[str, Any]) -> str | None:
        return d.get("referrerOf") or d.get("referrerOfSource")

    shown: set[str] = set()
    for d in docs:
        if not subject(d):
            shown |= digests(d)
    kept: set[int] = set()
    grew = True
    while grew:  # a signature of an SBOM follows the SBOM
        grew = False
        for i, d in enumerate(docs):
            if subject(d) in shown and i not in kept:
                kept.add(i)
                shown |= digests(d)
                grew = True
    return [d for i, d in enumerate(docs) if not subject(d) or i in kept]
