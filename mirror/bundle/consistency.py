"""Do a bundle's parts agree? The mirror.json inventory (mirror.bundle.layout.Inventory), the
manifests reachable from index.json, and the blobs the tar holds.

- every digest in mirror.json is a well-formed digest, every size a size;
- every blob the inventory lists is in the tar at that size, or (an incremental bundle's)
  absent because its base carried it; every manifest it lists is in the tar;
- every `absent` entry has a known reason, is referenced by a manifest, and is not in the tar
  (unless the inventory also lists it as carried: a foreign layer one image of the bundle
  skips and another includes);
- every blob or child manifest a manifest references is in the tar or listed absent; with an
  inventory, every one is listed in it.

- manifest.json (Docker's save format, which docker load and podman load read) names, for
  each image, the config and layers of an image manifest of the bundle, in its order.

Without mirror.json (skopeo's oci-archive) only the references are checked, and a foreign
layer may be missing (no registry gives it out). The reader runs this for load (a bundle
verify refuses is never half loaded); verify lists every problem. Each problem is one line,
without the bundle's name; all are structural (exit 10). Sizes of blobs against their
manifests' descriptors are left to the callers (for verify, bytes that do not match, exit 7).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from mirror.digest import Digest
from mirror.errors import IntegrityError

if TYPE_CHECKING:
    from mirror.bundle.layout import Inventory
    from mirror.bundle.reader import Contents

REASONS = ("foreign", "sparse", "base")


def problems(c: Contents) -> list[str]:
    inv = c.inventory
    if inv is None:
        return _references(c, {})[0]
    bad = _malformed(inv)
    if bad:  # the other checks would only repeat it
        return bad
    out, needed, children = _references(c, inv.absent)
    return (out + _listed(c, inv) + _absent(c, inv, needed, children)
            + _unlisted(c, inv, needed) + _referrer_problems(c, inv) + _docker_problems(c))


def _references(c: Contents, absent: dict[str, str]
                ) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Each blob and child manifest a manifest references is in the tar or listed `absent`
    (without an inventory, a foreign layer may be missing). Also returns each blob -> the first
    manifest that references it, and each child manifest -> the index that lists it."""
    out: list[str] = []
    needed: dict[str, str] = {}
    children: dict[str, str] = {}
    for raw in c.manifests.values():
        for d in raw.blobs():
            needed.setdefault(d.digest, raw.digest)
            if d.digest not in c.members and d.digest not in absent and not (
                    c.inventory is None and d.is_foreign):
                out.append(f"blob {d.digest} is missing (needed by {raw.digest})")
        for d in raw.children:
            children.setdefault(d.digest, raw.digest)
            if d.digest not in c.members and d.digest not in absent:
                out.append(f"manifest {d.digest} is missing (listed in index {raw.digest})")
    return out, needed, children


def _listed(c: Contents, inv: Inventory) -> list[str]:
    """What mirror.json lists is in the tar (a blob at its size), or its base carried it."""
    out: list[str] = []
    for digest, size in inv.blobs.items():
        have = c.members.get(digest)
        if have is not None:
            if have != size:
                out.append(f"mirror.json: blob {digest} is listed with {size} bytes, the "
                           f"bundle holds {have}")
        elif inv.absent.get(digest) != "base":
            out.append(f"mirror.json: blob {digest} is listed but not in the bundle")
    for digest in inv.manifests:
        if digest not in c.members:
            out.append(f"mirror.json: manifest {digest} is listed but not in the bundle")
    return out


def _absent(c: Contents, inv: Inventory, needed: dict[str, str],
            children: dict[str, str]) -> list[str]:
    """Each `absent` entry has a known reason (`base` only with a base named), is referenced
    by a manifest, and is not in the tar unless also listed as carried."""
    out: list[str] = []
    for digest, why in inv.absent.items():
        if why not in REASONS:
            out.append(f"mirror.json: absent {digest}: unknown reason {why!r} (expected one "
                       f"of {', '.join(REASONS)})")
        elif why == "base" and not inv.base:
            out.append(f"mirror.json: absent {digest} (base): no base bundle is named")
        if digest not in needed and digest not in children:
            out.append(f"mirror.json: absent {digest} ({why}) is not referenced by any "
                       "manifest")
        elif digest in c.members and (why == "base" or (
                digest not in inv.blobs and digest not in inv.manifests)):
            out.append(f"mirror.json: {digest} is listed absent ({why}) but is in the bundle")
    return out


def _unlisted(c: Contents, inv: Inventory, needed: dict[str, str]) -> list[str]:
    """Every blob and manifest the manifests need is listed in mirror.json."""
    out = [f"mirror.json does not list blob {digest} (needed by {by})"
           for digest, by in needed.items()
           if digest not in inv.blobs and digest not in inv.absent]
    return out + [f"mirror.json does not list manifest {digest}"
                  for digest in c.manifests if digest not in inv.manifests]


def _referrer_problems(c: Contents, inv: Inventory) -> list[str]:
    """mirror.json's referrers: each refers to what its manifest does, under the name pull
    gives a referrer (`name@digest`, or a cosign tag `sha256-<subject hex>.sig|.att|.sbom`),
    not a tag of its own that a load would push (and no runtime would see)."""
    from mirror.artifacts import COSIGN_SUFFIXES, fallback_tag
    from mirror.bundle.layout import A_SUBJECT, IMAGE_NAME, REF_NAME
    from mirror.errors import InvalidReference
    from mirror.reference import Reference

    out: list[str] = []
    for entry in inv.referrers:
        digest = entry.get("digest")
        ann = entry.get("annotations") or {}
        subject = ann.get(A_SUBJECT) if isinstance(ann, dict) else None
        name = (ann.get(IMAGE_NAME) or ann.get(REF_NAME)) if isinstance(ann, dict) else None
        where = f"mirror.json: referrer {digest}"
        if not isinstance(subject, str) or not isinstance(name, str):
            out.append(f"{where} names no subject or no name")
            continue
        raw = c.manifests.get(digest) if isinstance(digest, str) else None
        own = raw.subject.digest if raw is not None and raw.subject is not None else None
        if own is not None and own != subject:
            out.append(f"{where} is said to refer to {subject}; its manifest's subject is {own}")
            continue
        try:
            tag = Reference.parse(name).tag
        except InvalidReference:
            tag = None
        if tag is not None and tag not in {fallback_tag(subject) + s for s in COSIGN_SUFFIXES}:
            out.append(f"{where} is named {name}, a tag that is not its subject's cosign tag "
                       f"({fallback_tag(subject)}.sig, .att or .sbom)")
        elif tag is None and own is None:
            out.append(f"{where} ({name}) has no subject of its own and no cosign tag: not a "
                       "referrer")
    return out


def _docker_problems(c: Contents) -> list[str]:
    """manifest.json against the image manifests: each entry one of them, blob for blob."""
    if c.docker is None:
        return []
    try:
        items = json.loads(c.docker)
        images = {(m.config.digest, tuple(d.digest for d in m.layers))
                  for m in c.manifests.values() if m.config is not None}
        tagged = _tagged(c)
        out = []
        for n, item in enumerate(items, 1):
            paths = [item["Config"], *item["Layers"]]
            if not all(isinstance(p, str) for p in paths):
                raise TypeError
            digests = [p.replace("blobs/", "", 1).replace("/", ":", 1) for p in paths]
            missing = [p for p, d in zip(paths, digests, strict=True) if d not in c.members]
            if missing:
                out.append(f"manifest.json: image {n} names {missing[0]}, which is not in "
                           "the bundle")
            elif (digests[0], tuple(digests[1:])) not in images:
                out.append(f"manifest.json: image {n} (config {digests[0]}) does not match "
                           "the layers of any image manifest in the bundle")
            else:
                key = (digests[0], tuple(digests[1:]))
                tags = item.get("RepoTags") or []
                if not isinstance(tags, list):
                    raise TypeError
                for tag in tags:
                    if key not in tagged.get(tag, ()):
                        out.append(f"manifest.json: image {n} (config {digests[0]}) is tagged "
                                   f"{tag!r}, a name index.json gives none of its images")
        return out
    except (ValueError, TypeError, KeyError, AttributeError):
        return ["manifest.json is not a list of {Config, RepoTags, Layers} (Docker's save "
                "format)"]


def _tagged(c: Contents) -> dict[str, set[tuple[str, tuple[str, ...]]]]:
    """Docker's short name:tag of each index.json entry (mirror.bundle.dockersave.familiar)
    -> the images (config, layers) under its root: what manifest.json may tag so."""
    from mirror.bundle.dockersave import familiar  # the writer's side: imported when needed
    from mirror.bundle.layout import IMAGE_NAME, REF_NAME
    from mirror.errors import InvalidReference
    from mirror.image import push_order
    from mirror.reference import Reference

    out: dict[str, set[tuple[str, tuple[str, ...]]]] = {}
    for entry in c.index.get("manifests") or []:
        ann = entry.get("annotations") or {} if isinstance(entry, dict) else {}
        name = ann.get(IMAGE_NAME) or ann.get(REF_NAME)
        try:
            tag = familiar(Reference.parse(name)) if isinstance(name, str) else None
        except InvalidReference:
            tag = None
        if tag is None:
            continue
        found = out.setdefault(tag, set())
        root = c.manifests.get(d) if isinstance(d := entry.get("digest"), str) else None
        for raw in push_order([root] if root is not None else [], c.manifests):
            if raw.config is not None:
                found.add((raw.config.digest, tuple(x.digest for x in raw.layers)))
    return out


def _malformed(inv: Inventory) -> list[str]:
    """Digests that are not digests, sizes that are not sizes, in mirror.json."""
    out: list[str] = []

    def digest(text: object, where: str) -> None:
        try:
            if not isinstance(text, str):
                raise IntegrityError(f"{text!r} is not a digest")
            Digest.parse(text)
        except IntegrityError as e:
            out.append(f"mirror.json: {where}: {e}")

    for d, size in inv.blobs.items():
        digest(d, "blobs")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            out.append(f"mirror.json: blobs: {d}: {size!r} is not a size")
    for d in inv.manifests:
        digest(d, "manifests")
    for d, why in inv.absent.items():
        digest(d, "absent")
        if not isinstance(why, str):
            out.append(f"mirror.json: absent: {d}: {why!r} is not a reason")
    for old, new in inv.conversions.items():
        digest(old, "conversions")
        digest(new, "conversions")
    if inv.base is not None:
        digest(inv.base, "base")
    return out
