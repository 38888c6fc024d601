"""What a bundle holds besides blobs: oci-layout, index.json entries, and mirror.json.

index.json has one entry per image reference with `org.opencontainers.image.ref.name` and
`io.containerd.image.name` both set to the full source reference (REFERENCE.md 4), plus our
own `dev.mirror.*` annotations. mirror.json (an extra file, allowed by the layout spec) is the
inventory: every blob the images need, which are absent on purpose and why, the base bundle
of an incremental bundle (and the images it carried: where a load finds the blobs it left
out), the digest conversions, and the referrers (signatures, SBOMs,
attestations with their own tag or subject), each an entry in index.json's form.

Referrers are not index.json entries: runtimes read index.json as "the images to import"
(`ctr images import` names and unpacks every entry and fails on a signature; `podman load`
takes an OCI archive of exactly one entry), as Docker 25's `docker save` and `ctr export`
list only images there. The reader gives load, verify and inspect the entries of both files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mirror import mediatypes as mt
from mirror.manifest import dump_json

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"
A_SOURCE_DIGEST = "dev.mirror.source.digest"  # the upstream digest when ours differs
A_INDEX_MODE = "dev.mirror.index"  # full | filter | sparse
A_PLATFORMS = "dev.mirror.platforms"
A_CONVERSIONS = "dev.mirror.conversions"  # "old>new,old>new" for converted manifests
A_SUBJECT = "dev.mirror.referrer.subject"  # a referrer's entry (mirror.json): what it refers to
A_KIND = "dev.mirror.referrer.kind"  # signature | attestation | sbom | its artifactType
MIRROR_JSON = "mirror.json"
DOCKER_JSON = "manifest.json"  # Docker's save format (mirror.bundle.dockersave)
FORMAT_VERSION = 1


@dataclass
class Entry:
    """One index.json entry: a reference and the root manifest it names."""

    name: str  # full reference, e.g. docker.io/library/alpine:3.20
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        ann = {REF_NAME: self.name, IMAGE_NAME: self.name, **self.annotations}
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size,
                "annotations": dict(sorted(ann.items()))}


class Piecewise:
    """A file of the bundle's head (index.json, mirror.json, manifest.json) as the pieces
    `make` yields, made once for its size and sha256 (what the unchanged check compares)
    and again as it is written: at 2,000 images each document whole, and the Python
    structures it was serialised from, were a tenth of a pull's peak memory."""

    __slots__ = ("_make", "sha256", "size")

    def __init__(self, make: Callable[[], Iterable[bytes]]) -> None:
        self._make = make
        h, self.size = hashlib.sha256(), 0
        for piece in make():
            h.update(piece)
            self.size += len(piece)
        self.sha256 = h.digest()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._make())

    def __bytes__(self) -> bytes:
        return b"".join(self)

    @classmethod
    def of(cls, data: bytes | Piecewise) -> Piecewise:
        return data if isinstance(data, Piecewise) else cls(lambda: (data,))


PIECE = 64 << 10  # what the serialisers below gather before they yield


def batched(parts: Iterable[str]) -> Iterator[bytes]:
    """`parts` joined and encoded in pieces of about PIECE bytes."""
    held: list[str] = []
    n = 0
    for part in parts:
        held.append(part)
        n += len(part)
        if n >= PIECE:
            yield "".join(held).encode()
            held, n = [], 0
    if held:
        yield "".join(held).encode()


def index_json(names: Iterable[str], entry: Callable[[str], Entry],
               last: Collection[str] = ()) -> Iterator[bytes]:
    """index.json: an entry per name (`entry` makes it), by name, those named in `last`
    (images whose blobs are not all in the bundle) after the others: `ctr images import`
    stops unpacking at the first image it cannot unpack, so the images it can come first.
    The bytes of dump_json of the whole document, made entry by entry."""
    yield b'{"schemaVersion":2,"mediaType":' + dump_json(mt.OCI_INDEX) + b',"manifests":['
    # dump_json's bytes as str: ensure_ascii=False, compact
    compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    yield from batched(("," if n else "") + compact(entry(name).to_json())
                       for n, name in enumerate(sorted(names, key=lambda n: (n in last, n))))
    yield b"]}"


def entry_list(entries: list[Entry], last: Collection[str] = ()) -> list[dict[str, Any]]:
    return [e.to_json() for e in sorted(entries, key=lambda e: (e.name in last, e.name))]


def indented_json(obj: Any, level: int = 0) -> Iterator[str]:
    """json.dumps(obj, indent=1) in pieces (at nesting `level`): a dict or list item by
    item, so no encoder holds the pieces of a document of thousands of entries. A dict
    value may be a callable: the items it returns are serialised as a dict's, one by one
    (a sorted view made as it is read)."""
    pad, end = "\n" + " " * (level + 1), "\n" + " " * level
    items = obj() if callable(obj) else obj.items() if isinstance(obj, dict) else None
    if items is not None:
        n = 0
        for n, (k, v) in enumerate(items, 1):
            head = ("{" if n == 1 else ",") + pad + _scalar(k) + ": "
            if _nested(v):
                yield head
                yield from indented_json(v, level + 1)
            else:
                yield head + _scalar(v)
        yield end + "}" if n else "{}"
    elif isinstance(obj, list) and obj:
        for n, v in enumerate(obj):
            head = ("[" if n == 0 else ",") + pad
            if _nested(v):
                yield head
                yield from indented_json(v, level + 1)
            else:
                yield head + _scalar(v)
        yield end + "]"
    else:
        yield json.dumps(obj)


def _scalar(v: Any) -> str:
    """json.dumps(v) of a value that is not a container (or an empty one)."""
    if type(v) is str:
        return _quoted(v)
    if type(v) is int:
        return int.__repr__(v)
    return json.dumps(v)


_quoted = json.encoder.encode_basestring_ascii  # what json.dumps makes of a str


def _nested(v: Any) -> bool:
    """Whether json.dumps(v, indent=1) spans lines (what indented_json takes apart)."""
    return callable(v) or (isinstance(v, (dict, list)) and bool(v))


@dataclass
class Inventory:
    """mirror.json: the contents of the bundle and what is absent on purpose."""

    blobs: dict[str, int] = field(default_factory=dict)  # every blob the images need: size
    manifests: list[str] = field(default_factory=list)  # digests of manifest blobs, tar order
    absent: dict[str, str] = field(default_factory=dict)  # digest: reason (foreign|sparse|base)
    base: str | None = None  # sha256 of the base bundle file, for incremental bundles
    base_name: str | None = None
    base_images: list[str] = field(default_factory=list)  # what the base carried: its refs
    partial: bool = False  # --keep-going left images out
    conversions: dict[str, str] = field(default_factory=dict)  # old digest: new digest
    referrers: list[dict[str, Any]] = field(default_factory=list)  # index.json-style entries

    @property
    def base_named(self) -> str:
        """The base bundle as its `name, sha256:...` (what the far side must load first);
        "" for a bundle that is not incremental."""
        return ", ".join(x for x in (self.base_name, self.base) if x) if self.base else ""

    def to_bytes(self) -> bytes:
        return b"".join(self.pieces())

    def pieces(self) -> Iterator[bytes]:
        """The bytes of json.dumps(the document, indent=1) and a newline, in pieces."""
        blobs = self.blobs
        doc: dict[str, Any] = {
            "mirrorBundleVersion": FORMAT_VERSION,
            "blobs": lambda: ((d, blobs[d]) for d in sorted(blobs)),
            "manifests": self.manifests,
            "absent": dict(sorted(self.absent.items())),
            "partial": self.partial,
        }
        if self.base:
            doc["base"] = {"digest": self.base, "name": self.base_name}
            if self.base_images:
                doc["base"]["images"] = sorted(self.base_images)
        if self.conversions:
            doc["conversions"] = dict(sorted(self.conversions.items()))
        if self.referrers:
            doc["referrers"] = self.referrers
        yield from batched(indented_json(doc))
        yield b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Inventory:
        doc = json.loads(data)
        base = doc.get("base") or {}
        return cls(blobs=dict(doc.get("blobs") or {}), manifests=list(doc.get("manifests") or []),
                   absent=dict(doc.get("absent") or {}), base=base.get("digest"),
                   base_name=base.get("name"),
                   base_images=[str(n) for n in base.get("images") or [] if isinstance(n, str)],
                   partial=bool(doc.get("partial")),
                   conversions=dict(doc.get("conversions") or {}),
                   referrers=list(doc.get("referrers") or []))


def blob_name(digest: str) -> str:
    """The member (or file) `blobs/<alg>/<encoded>` of a layout that holds `digest`."""
    alg, _, enc = digest.partition(":")
    return f"blobs/{alg}/{enc}"
