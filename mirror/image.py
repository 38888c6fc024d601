"""The model of what is carried: an image, and the set of images of a bundle or a run.

Sources produce it: a registry through mirror.resolve (then mirror.convert, and the referrers
mirror.referrers finds), a bundle through mirror.bundle.images. Sinks consume it: the bundle
writer (mirror.bundle.contents, mirror.bundle.dockersave) and the registry pusher
(mirror.push). The report's per-image fields are a view of it (`report_fields`), and the
lock file's entries a view of those (mirror.lockfile), so they cannot disagree.

Push order (`push_order`, the one walk): children before their parents, the root last, so a
registry never holds an index naming a manifest it does not have; the referrers of a set
after every image (`ImageSet.in_push_order`), so their subjects are there first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mirror.manifest import Descriptor, RawManifest
from mirror.mapping import Destination
from mirror.reference import Reference


def push_order(starts: Iterable[RawManifest], manifests: Mapping[str, RawManifest]
               ) -> list[RawManifest]:
    """Each of `starts` after the children it names that `manifests` holds (nested indexes
    walked), each manifest once: the order a registry accepts them in."""
    out: list[RawManifest] = []
    seen: set[str] = set()
    for raw in starts:
        _visit(raw, manifests, seen, out)
    return out


def _visit(raw: RawManifest, manifests: Mapping[str, RawManifest], seen: set[str],
           out: list[RawManifest]) -> None:
    """`raw` after its children (a function of its own: a closure naming itself made each
    walk a reference cycle, left for the cyclic collector; at 2,000 images 0.7 MiB of them
    waited through the downloads)."""
    if raw.digest in seen:
        return
    seen.add(raw.digest)
    for child in raw.children:
        sub = manifests.get(child.digest)
        if sub is not None:
            _visit(sub, manifests, seen, out)
    out.append(raw)


@dataclass(slots=True)  # no __dict__ each (296 bytes: 0.6 MiB at 2,000 images)
class Image:
    """One image reference and all it carries. Digests of `manifests`, `platform_digests`
    and `root` are what is carried (what a target serves after a load); `source_digest` and
    `source_platform_digests` what the source served (they differ after a filter or a
    conversion, each recorded old -> new in `conversions`)."""

    name: str  # the reference as given (images.yaml, an index.json entry's ref name)
    root: RawManifest  # what the reference names where it is carried
    source_digest: str = ""  # what the reference named upstream (default: the root's)
    mode: str = "single"  # full | filter | sparse | single
    reference: Reference | None = None  # the name parsed (None: an entry with no name)
    manifests: dict[str, RawManifest] = field(default_factory=dict)  # all, root included
    # configs and layers to carry (from a bundle: all its manifests name, so the absent too)
    blobs: dict[str, Descriptor] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)  # digest -> why it is left out
    platforms: list[str] = field(default_factory=list)
    platform_digests: dict[str, str] = field(default_factory=dict)  # platform -> carried
    source_platform_digests: dict[str, str] = field(default_factory=dict)  # -> upstream
    conversions: dict[str, str] = field(default_factory=dict)  # old -> new digest
    # nested indexes filtered in turn (their old digests, also in `conversions`): a
    # re-serialisation like any other, reported old -> new
    # (it and `left_behind` immutable: nearly every image's are empty, and an empty set each
    # was 0.45 MiB at 2,000 images, a list 0.15; the empty frozenset and tuple are shared)
    nested_filtered: frozenset[str] = frozenset()
    referrers: list[Image] = field(default_factory=list)  # signatures, SBOMs: child images
    left_behind: tuple[str, ...] = ()  # in-index attestations, not carried
    subject: str | None = None  # a referrer: the digest it refers to
    kind: str | None = None  # a referrer: signature | attestation | sbom | its artifactType
    dest: Destination | None = None  # where images.yaml says it lands (mirror.mapping)

    def __post_init__(self) -> None:
        self.source_digest = self.source_digest or self.root.digest

    @classmethod
    def referrer(cls, raw: RawManifest, subject: str, kind: str, of: Reference,
                 tag: str | None = None) -> Image:
        """A referrer of an image in repository `of`: named by its cosign `tag` when it came
        from one, else `name@digest`; its blobs are its own."""
        ref = of.with_tag(tag) if tag else of.with_digest(raw.digest)
        return cls(str(ref), raw, reference=ref, manifests={raw.digest: raw},
                   blobs={d.digest: d for d in raw.blobs()}, subject=subject, kind=kind)

    @property
    def repository(self) -> str | None:
        return self.reference.repository if self.reference else None

    @property
    def tag(self) -> str | None:
        """The tag it is carried under (a referrer: its cosign tag); None: by digest."""
        return self.reference.tag if self.reference else None

    @property
    def artifact_type(self) -> str | None:
        return self.root.artifact_type

    def source_of(self, digest: str) -> tuple[str, str] | None:
        """The registry and repository its manifest `digest` came from (a referrer's: its
        subject's); None when it has no such manifest (or no name)."""
        todo = [self]
        while todo:
            img = todo.pop()
            if digest in img.manifests and img.reference is not None:
                return img.reference.registry, img.reference.repository
            todo.extend(img.referrers)
        return None

    def add(self, raw: RawManifest, foreign_absent: bool) -> None:
        """One more manifest and its blobs; foreign layers (`urls`, a non-distributable type)
        are absent on purpose when `foreign_absent`."""
        self.manifests[raw.digest] = raw
        for d in raw.blobs():
            if d.is_foreign and foreign_absent:
                self.absent[d.digest] = "foreign"
            else:
                self.blobs[d.digest] = d

    def absorb(self, sub: Image) -> None:
        """Take in what a nested index (`sub`, resolved as an image of its own) carries; a
        nested index that was filtered is a conversion of its own, old -> new."""
        self.manifests.update(sub.manifests)
        self.blobs.update(sub.blobs)
        self.absent.update(sub.absent)
        self.platforms.extend(sub.platforms)
        self.platform_digests.update(sub.platform_digests)
        self.left_behind += sub.left_behind
        self.conversions.update(sub.conversions)
        self.nested_filtered |= sub.nested_filtered
        if sub.root.digest != sub.source_digest:
            self.conversions[sub.source_digest] = sub.root.digest
            self.nested_filtered |= {sub.source_digest}

    def manifest_order(self) -> list[RawManifest]:
        """Its own manifests in push order, root last (referrers not included)."""
        rest = [m for m in self.manifests.values() if m.digest != self.root.digest]
        return push_order([*rest, self.root], self.manifests)


@dataclass
class ImageSet:
    """The images of a bundle or a run: what an incremental bundle leaves to its base, and
    whether images were left out (`partial`)."""

    images: list[Image] = field(default_factory=list)
    base: str | None = None  # the base bundle's sha256
    base_name: str | None = None
    base_images: list[str] = field(default_factory=list)  # the references the base carried
    partial: bool = False

    def in_push_order(self) -> list[Image]:
        """The images, then the referrers (of the set, and each image's own): a referrer's
        subject is at the target before it."""
        own = [r for img in self.images for r in img.referrers]
        return [*(i for i in self.images if i.subject is None),
                *(i for i in self.images if i.subject is not None), *own]


def report_fields(img: Image) -> dict[str, Any]:
    """A pull's per-image report fields (mirror.imageresult.ImageResult)."""
    return {"digest": img.root.digest, "source_digest": img.source_digest,
            "media_type": img.root.media_type, "mode": img.mode,
            "platforms": img.platforms, "platform_digests": img.platform_digests,
            "source_platform_digests": img.source_platform_digests,
            "manifests": [m.digest for m in img.manifest_order()],
            "conversions": img.conversions}

