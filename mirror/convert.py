"""Docker <-> OCI conversion of an image's manifests, and the rewrite of foreign layers (issue 4).

`keep` changes no byte. A conversion only rewrites manifests and indexes (REFERENCE.md 3): the
config and layer blobs are never touched, so their digests, sizes and the config's diff_ids
stay as they were. A manifest whose bytes change gets a new digest, so does every index above
it, and each old -> new pair is recorded in `plan.conversions`. Documents already in the
target format, and anything that is not an image (artifacts, plugins), keep their exact bytes.
New bytes come from `dump_json`: the same input always gives the same output.

OCI -> Docker refuses what Docker cannot carry (zstd layers, `artifactType`, `subject`,
non-image configs, nested indexes, attestations, entries without a platform) in the image's
own index and manifests, and warns about the annotations it drops. Its referrers (signatures,
SBOMs: mirror.planning attaches them after the conversion) are never converted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mirror import mediatypes as mt
from mirror.errors import UnsupportedContent, UsageError
from mirror.image import Image
from mirror.manifest import RawManifest, dump_json
from mirror.progress import Progress

# REFERENCE.md section 3. The zstd Docker type is containerd's, not Docker's; OCI has its own.
TO_OCI: dict[str, str] = {
    mt.DOCKER_MANIFEST: mt.OCI_MANIFEST,
    mt.DOCKER_LIST: mt.OCI_INDEX,
    mt.DOCKER_CONFIG: mt.OCI_CONFIG,
    mt.DOCKER_LAYER: mt.OCI_LAYER_GZIP,
    mt.DOCKER_LAYER_TAR: mt.OCI_LAYER,
    mt.DOCKER_LAYER_ZSTD: mt.OCI_LAYER_ZSTD,
    mt.DOCKER_FOREIGN: mt.OCI_NONDIST_GZIP,
    mt.DOCKER_FOREIGN_TAR: mt.OCI_NONDIST,
}
TO_DOCKER: dict[str, str] = {
    mt.OCI_MANIFEST: mt.DOCKER_MANIFEST,
    mt.OCI_INDEX: mt.DOCKER_LIST,
    mt.OCI_CONFIG: mt.DOCKER_CONFIG,
    mt.OCI_LAYER_GZIP: mt.DOCKER_LAYER,
    mt.OCI_LAYER: mt.DOCKER_LAYER_TAR,
    mt.OCI_NONDIST_GZIP: mt.DOCKER_FOREIGN,
    mt.OCI_NONDIST: mt.DOCKER_FOREIGN_TAR,
}
DOCKER_LAYER_TYPES = frozenset({mt.DOCKER_LAYER, mt.DOCKER_LAYER_TAR, mt.DOCKER_FOREIGN,
                                mt.DOCKER_FOREIGN_TAR})
ZSTD_TYPES = frozenset({mt.OCI_LAYER_ZSTD, mt.OCI_NONDIST_ZSTD, mt.DOCKER_LAYER_ZSTD})
# foreign_layers: rewrite -- the same bytes as an ordinary, pushable layer
DISTRIBUTABLE: dict[str, str] = {
    mt.DOCKER_FOREIGN: mt.DOCKER_LAYER,
    mt.DOCKER_FOREIGN_TAR: mt.DOCKER_LAYER_TAR,
    mt.OCI_NONDIST_GZIP: mt.OCI_LAYER_GZIP,
    mt.OCI_NONDIST: mt.OCI_LAYER,
    mt.OCI_NONDIST_ZSTD: mt.OCI_LAYER_ZSTD,
}
ATTESTATION_TYPE = "vnd.docker.reference.type"
ATTESTATION_REF = "vnd.docker.reference.digest"

Warnings = list[str]


def is_image(raw: RawManifest) -> bool:
    """A runnable image: an image manifest with an image config and no `artifactType`.
    Anything else is carried byte for byte and never converted."""
    return raw.is_image and not raw.declared_artifact_type


def _new(body: dict[str, Any], media_type: str) -> RawManifest:
    raw = RawManifest(dump_json(body), media_type)
    raw._views_from(body)
    return raw


def _with_type(body: dict[str, Any], media_type: str) -> dict[str, Any]:
    """`body` with `mediaType` set, placed after `schemaVersion` when it was missing."""
    if "mediaType" in body:
        return {**body, "mediaType": media_type}
    out: dict[str, Any] = {}
    for k, v in body.items():
        out[k] = v
        if k == "schemaVersion":
            out["mediaType"] = media_type
    out.setdefault("mediaType", media_type)
    return out


def _drop_annotations(d: dict[str, Any], what: str, warnings: Warnings) -> dict[str, Any]:
    ann = d.get("annotations")
    if ann:
        warnings.append(f"{what}: annotations dropped (Docker has none): "
                        f"{', '.join(sorted(ann))}")
    return {k: v for k, v in d.items() if k != "annotations"}


def convert_manifest(raw: RawManifest, fmt: str, *, rewrite_foreign: bool = False,
                     name: str = "") -> tuple[RawManifest, Warnings]:
    """Convert one image manifest to `fmt` (keep|oci|docker), optionally turning foreign
    layers into ordinary ones; return the new manifest (`raw` itself when no byte changes)
    and warnings. Raise UnsupportedContent for what `docker` cannot represent."""
    where = f"{name}: manifest {raw.digest}" if name else f"manifest {raw.digest}"
    warnings: Warnings = []
    if not is_image(raw):
        # a Docker plugin is already Docker; an OCI artifact has no Docker form
        if fmt == "docker" and (raw.media_type != mt.DOCKER_MANIFEST
                                or raw.declared_artifact_type):
            what = raw.artifact_type or raw.media_type
            raise UnsupportedContent(
                f"{where}: {what!r} is not an image; a Docker manifest cannot carry it",
                hint="use --format oci or keep for this image")
        return raw, warnings  # artifacts and plugins: byte for byte
    body = dict(raw.parsed)
    layers = [dict(layer) for layer in body.get("layers") or []]
    if rewrite_foreign:
        for layer in layers:
            if layer.get("mediaType") in DISTRIBUTABLE or layer.get("urls"):
                layer["mediaType"] = DISTRIBUTABLE.get(layer.get("mediaType", ""),
                                                       layer.get("mediaType"))
                layer.pop("urls", None)
    config = dict(body["config"])
    if fmt == "oci":
        body = _with_type(body, mt.OCI_MANIFEST)
        config["mediaType"] = TO_OCI.get(config["mediaType"], config["mediaType"])
        for layer in layers:
            layer["mediaType"] = TO_OCI.get(layer.get("mediaType", ""), layer.get("mediaType"))
    elif fmt == "docker":
        _refuse_oci_only(body, where, "a Docker manifest")
        body = _with_type(_drop_annotations(body, where, warnings), mt.DOCKER_MANIFEST)
        config["mediaType"] = TO_DOCKER.get(config["mediaType"], config["mediaType"])
        config = _drop_annotations(config, f"{where} config", warnings)
        if config.pop("urls", None):
            warnings.append(f"{where} config: urls dropped (Docker has none on configs)")
        config.pop("data", None)
        for i, layer in enumerate(layers):
            t = layer.get("mediaType", "")
            if t in ZSTD_TYPES:
                raise UnsupportedContent(
                    f"{where}: layer {layer.get('digest')} is zstd-compressed ({t}); Docker "
                    "manifests have no zstd layer type",
                    hint="use --format oci or keep for this image")
            t = TO_DOCKER.get(t, t)
            if t not in DOCKER_LAYER_TYPES:
                raise UnsupportedContent(
                    f"{where}: layer type {t!r} has no Docker equivalent",
                    hint="use --format oci or keep for this image")
            layer["mediaType"] = t
            layers[i] = _drop_annotations(layer, f"{where} layer {layer.get('digest')}",
                                          warnings)
            layers[i].pop("data", None)
    body["config"] = config
    body["layers"] = layers
    if body == raw.parsed:
        return raw, warnings
    return _new(body, body["mediaType"]), warnings


def convert_index(raw: RawManifest, fmt: str, children: Mapping[str, RawManifest], *,
                  name: str = "") -> tuple[RawManifest, Warnings]:
    """Convert an index to `fmt`, pointing its entries at the converted `children` (old
    digest -> new manifest; entries not in it are left as they are). Return the new index
    (`raw` itself when no byte changes) and warnings."""
    where = f"{name}: index {raw.digest}" if name else f"index {raw.digest}"
    warnings: Warnings = []
    body = dict(raw.parsed)
    renamed = {old: new.digest for old, new in children.items() if new.digest != old}
    entries: list[dict[str, Any]] = []
    for e in body.get("manifests") or []:
        e = dict(e)
        old = e.get("digest", "")
        child = children.get(old)
        if child is not None:
            e["mediaType"], e["digest"], e["size"] = child.media_type, child.digest, child.size
        ann = e.get("annotations")
        if ann and ann.get(ATTESTATION_REF) in renamed:
            # keep the attestation paired with the image it describes (its statement, a
            # blob, still names the old digest)
            e["annotations"] = {**ann, ATTESTATION_REF: renamed[ann[ATTESTATION_REF]]}
        if fmt == "docker":
            e = _docker_entry(e, child, where, warnings)
        entries.append(e)
    body["manifests"] = entries
    if fmt == "oci":
        body = _with_type(body, mt.OCI_INDEX)
    elif fmt == "docker":
        _refuse_oci_only(body, where, "a Docker manifest list")
        body = _with_type(_drop_annotations(body, where, warnings), mt.DOCKER_LIST)
    if body == raw.parsed:
        return raw, warnings
    return _new(body, body["mediaType"]), warnings


def _refuse_entry(e: dict[str, Any], where: str) -> None:
    """Raise UnsupportedContent for an index entry that no Docker list can hold, judged by
    the entry alone (so before its child is looked at)."""
    digest = e.get("digest")
    ann = e.get("annotations") or {}
    hint = "use --format oci or keep for this image"
    if ann.get(ATTESTATION_TYPE):
        raise UnsupportedContent(
            f"{where}: entry {digest} is an attestation ({ann[ATTESTATION_TYPE]}), which a "
            "Docker manifest list cannot carry",
            hint="set `referrers: false` for this image in images.yaml (or pass "
            "--no-referrers) to leave attestations out, or use --format oci or keep")
    if e.get("artifactType"):
        raise UnsupportedContent(
            f"{where}: entry {digest} is an artifact ({e['artifactType']}), which a Docker "
            "manifest list cannot carry", hint=hint)
    if mt.is_index(e.get("mediaType", "")):
        raise UnsupportedContent(
            f"{where}: entry {digest} is a nested index; a Docker manifest list holds only "
            "image manifests", hint=hint)


def _docker_entry(e: dict[str, Any], child: RawManifest | None, where: str,
                  warnings: Warnings) -> dict[str, Any]:
    _refuse_entry(e, where)
    digest = e.get("digest")
    hint = "use --format oci or keep for this image"
    if e.get("mediaType") != mt.DOCKER_MANIFEST:
        absent = "" if child is not None else " (and not in the bundle, so not convertible)"
        raise UnsupportedContent(
            f"{where}: entry {digest} is of type {e.get('mediaType')!r}{absent}; a Docker "
            "manifest list holds only Docker image manifests", hint=hint)
    if not isinstance(e.get("platform"), dict):
        raise UnsupportedContent(
            f"{where}: entry {digest} has no platform, which every Docker manifest list "
            "entry needs", hint=hint)
    e = _drop_annotations(e, f"{where} entry {digest}", warnings)
    if e.pop("urls", None):
        warnings.append(f"{where} entry {digest}: urls dropped (Docker has none on entries)")
    e.pop("data", None)
    return e


def convert_plan(plan: Image, fmt: str, progress: Progress, *,
                 rewrite_foreign: bool = False) -> None:
    """Rewrite the image's manifests to `fmt` (keep|oci|docker) and, with `rewrite_foreign`
    (`foreign_layers: rewrite`), its foreign layers to ordinary ones; update `plan.root`
    and `plan.manifests` and record old -> new digests in `plan.conversions` (children before parents);
    `plan.platform_digests` follow the converted manifests (the source ones stay in
    `plan.source_platform_digests`).

    Raise UnsupportedContent (naming the image) for what the target cannot carry, and
    UsageError for a sparse index that would have to change.
    """
    rewrite = rewrite_foreign
    if fmt == "keep" and not rewrite:
        return
    if fmt not in ("keep", "oci", "docker"):
        raise UsageError(f"unknown format {fmt!r}: expected keep, oci or docker")
    retyped = {"oci": TO_OCI, "docker": TO_DOCKER}.get(fmt, {}).get(plan.root.media_type)
    if plan.mode == "sparse" and retyped not in (None, plan.root.media_type):
        raise _sparse_unchangeable(plan, fmt)  # before what the new type could not carry
    done: dict[str, RawManifest] = {}  # old digest -> converted, children first
    warnings: Warnings = []

    def visit(raw: RawManifest) -> RawManifest:
        if raw.digest in done:
            return done[raw.digest]
        if raw.is_index:
            if fmt == "docker":
                for e in raw.parsed.get("manifests") or []:
                    _refuse_entry(e, f"{plan.name}: index {raw.digest}")
            kids = {c.digest: visit(plan.manifests[c.digest]) for c in raw.children
                    if c.digest in plan.manifests}
            new, w = convert_index(raw, fmt, kids, name=plan.name)
        else:
            new, w = convert_manifest(raw, fmt, rewrite_foreign=rewrite, name=plan.name)
        warnings.extend(w)
        done[raw.digest] = new
        return new

    root = visit(plan.root)
    for raw in list(plan.manifests.values()):
        visit(raw)
    if plan.mode == "sparse" and root.digest != plan.root.digest:
        raise _sparse_unchangeable(plan, fmt)
    upstream = {n: o for o, n in plan.conversions.items()}  # a nested index filtered earlier
    for old, new in done.items():
        if new.digest == old:
            continue
        plan.manifests.pop(old, None)
        plan.manifests[new.digest] = new
        # a filtered index exists nowhere upstream: report the source index it came from
        key = plan.source_digest if old == plan.root.digest and plan.mode == "filter" else \
            upstream.get(old, old)
        plan.conversions[key] = new.digest
    plan.root = root
    plan.platform_digests = {p: done[d].digest if d in done else d
                             for p, d in plan.platform_digests.items()}
    for w in dict.fromkeys(warnings):
        progress.warn(w)


def _sparse_unchangeable(plan: Image, fmt: str) -> UsageError:
    return UsageError(
        f"{plan.name}: --index sparse keeps the source index byte for byte, but "
        f"{'--format ' + fmt if fmt != 'keep' else 'foreign_layers: rewrite'} has to "
        "change it", hint="use --index filter to convert a subset of platforms")


def _refuse_oci_only(body: dict, where: str, what: str) -> None:
    """`artifactType` and `subject` exist only in OCI documents: refuse, never drop."""
    for key in ("artifactType", "subject"):
        if body.get(key):
            raise UnsupportedContent(f"{where}: has {key!r}, which {what} cannot carry",
                                     hint="use --format oci or keep for this image")
