"""Descriptors and manifests: raw bytes are the truth, the parsed view is read-only.

A RawManifest keeps the exact bytes received; its digest is computed from them. Only
`mirror.convert` and the index filter make new bytes, and they report old -> new digests.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mirror import mediatypes as mt
from mirror.digest import Digest, sha256_of
from mirror.errors import IntegrityError, ManifestLost, UnsupportedContent
from mirror.platform import Platform

_UNSET: Any = object()  # a view not made yet
NO_ANNOTATIONS: Mapping[str, str] = MappingProxyType({})  # one for every descriptor with none
MAX_MANIFEST_BYTES = 8 * 1024 * 1024  # regclient's bound; distribution's own limit is 4 MiB
_SHA256_DIGEST = re.compile(r"sha256:[a-f0-9]{64}").fullmatch


# digest -> the plain descriptor made first for it (Descriptor.from_dict); bounded, as
# mirror.platform's table of platforms
_PLAIN: dict[str, Descriptor] = {}
_PLAIN_MAX = 1 << 17


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    artifact_type: str | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str = "descriptor") -> Descriptor:
        """Raise IntegrityError if the descriptor lacks a valid digest or size. A warm rerun
        of 400 images reads 4,800 descriptors: the usual one (a dict from JSON, a sha256
        digest, an int size) takes the checks in one line and the fields positionally; any
        other goes the long way, which says what is wrong. A plain one (a media type, digest
        and size: a config, a layer) is the one made first for its digest when that says the
        same: thousands of images name the same shared layers, and a descriptor each was
        2 MiB of a pull at 2,000 images."""
        if type(d) is dict:
            get = d.get
            digest, size = get("digest"), get("size")
            if type(digest) is str and type(size) is int and size >= 0:
                known = _PLAIN.get(digest)
                if known is not None or _SHA256_DIGEST(digest):
                    return cls._usual(d, digest, size, known)
        return cls._checked(d, where)

    @classmethod
    def _usual(cls, d: dict, digest: str, size: int, known: Descriptor | None) -> Descriptor:
        get = d.get
        media_type, platform = get("mediaType", ""), get("platform")
        urls, annotations, artifact_type = get("urls"), get("annotations"), get("artifactType")
        plain = platform is None and not urls and not annotations and artifact_type is None
        if known is not None:
            if plain and size == known.size and media_type == known.media_type:
                return known
            digest = known.digest  # one string for the digest, however described
        made = cls(
            sys.intern(media_type if type(media_type) is str else str(media_type)),
            digest, size,
            Platform.from_dict(platform) if platform is not None else None,
            tuple(str(u) for u in urls) if urls and isinstance(urls, list) else (),
            dict(annotations) if annotations else NO_ANNOTATIONS,
            artifact_type)
        if plain and known is None and len(_PLAIN) < _PLAIN_MAX:
            _PLAIN[digest] = made
        return made

    @classmethod
    def _checked(cls, d: Any, where: str) -> Descriptor:
        if not isinstance(d, dict):
            raise IntegrityError(f"{where}: descriptor is not an object")
        digest = d.get("digest")
        size = d.get("size")
        if not isinstance(digest, str):
            raise IntegrityError(f"{where}: descriptor has no digest")
        if not _SHA256_DIGEST(digest):  # nearly every digest; the rest are parsed
            try:
                Digest.parse(digest)
            except IntegrityError as e:
                raise IntegrityError(f"{where}: {e}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise IntegrityError(f"{where}: descriptor {digest} has no valid size")
        return cls._usual(d, digest, size, _PLAIN.get(digest))

    @property
    def is_foreign(self) -> bool:
        return self.media_type in mt.FOREIGN_TYPES or bool(self.urls)


def sniff_media_type(body: Mapping[str, Any], content_type: str = "") -> str:
    """Classify a manifest (REFERENCE.md 1.5): the body's mediaType, then Content-Type, then shape."""
    declared = body.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    ct = mt.strip_params(content_type)
    if body.get("schemaVersion") == 1:
        return mt.SCHEMA1_SIGNED if "signatures" in body else mt.SCHEMA1
    if ct in mt.MANIFEST_TYPES:
        return ct
    if "manifests" in body:
        return mt.OCI_INDEX
    cfg = body.get("config")
    if isinstance(cfg, dict) and cfg.get("mediaType") == mt.DOCKER_CONFIG:
        return mt.DOCKER_MANIFEST
    return mt.OCI_MANIFEST


class RawManifest:
    """The exact bytes of a manifest or index, with its media type. The parsed JSON is not
    kept (at 2,000 images its dicts were the largest part of a pull's memory): `parsed`
    parses the bytes again. The views read from it (children, config, layers, subject) are
    made once and kept: the bytes never change, and a run reads them again and again
    (planning, the bundle's layout, manifest.json). Once the bytes are kept elsewhere (the
    cache's store of manifests), `release` drops them: `data` reads them back, checked
    against the digest (6,000 manifests held all run were 5.7 MiB of a pull at 2,000
    images). Immutable, like the bytes: equal when their digests and media types are.
    Its views are slots, made when first read (a __dict__ for them was 136 bytes each)."""

    __slots__ = ("_data", "_read", "_size", "media_type", "_digest", "_declared",
                 "_children", "_config", "_layers", "_subject")
    _data: bytes | None
    _read: Callable[[str], bytes | None] | None
    _size: int
    media_type: str
    _digest: str | None
    _declared: Any
    _children: tuple[Descriptor, ...] | None
    _config: Any  # Descriptor | None, or _UNSET
    _layers: tuple[Descriptor, ...] | None
    _subject: Any  # Descriptor | None, or _UNSET

    def __init__(self, data: bytes, media_type: str) -> None:
        set_ = object.__setattr__
        set_(self, "_data", data)
        set_(self, "_read", None)
        set_(self, "_size", len(data))
        set_(self, "media_type", media_type)
        set_(self, "_digest", None)
        set_(self, "_declared", _UNSET)
        set_(self, "_children", None)
        set_(self, "_config", _UNSET)
        set_(self, "_layers", None)
        set_(self, "_subject", _UNSET)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"RawManifest is immutable: cannot set {name}")

    def __repr__(self) -> str:
        return f"RawManifest({self.digest}, {self.media_type!r}, {self._size} bytes)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RawManifest):
            return NotImplemented
        return self.digest == other.digest and self.media_type == other.media_type

    def __hash__(self) -> int:
        return hash((self.digest, self.media_type))

    @property
    def data(self) -> bytes:
        """The bytes: held, or read back (and checked) from where `release` left them."""
        data = self._data
        if data is not None:
            return data
        assert self._read is not None
        data = self._read(self.digest)
        if data is None or len(data) != self._size:
            raise ManifestLost(
                f"manifest {self.digest}: no longer in the cache's store of manifests, "
                "where this run left it (removed or damaged while the run went on)",
                self.digest, hint="run again: the manifest is fetched from the registry anew")
        return data

    def release(self, read: Callable[[str], bytes | None]) -> None:
        """Drop the bytes: `read(digest)` gives them back, checked against the digest (or
        None when it no longer can). The views and the digest are made first."""
        self.digest  # noqa: B018 (computed from the bytes while they are here)
        object.__setattr__(self, "_read", read)
        object.__setattr__(self, "_data", None)

    @classmethod
    def from_bytes(cls, data: bytes, content_type: str = "", where: str = "manifest",
                   digest: str | None = None) -> RawManifest:
        """Parse enough to classify; raise UnsupportedContent for schema 1 or non-JSON.
        `digest`: the bytes' digest, when the caller has just checked it (not hashed again).
        The views are read from this one parse (a descriptor that is not valid raises
        where its view is read, as before)."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise UnsupportedContent(f"{where}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise UnsupportedContent(f"{where}: the manifest is not JSON") from None
        if not isinstance(body, dict):
            raise UnsupportedContent(f"{where}: the manifest is not a JSON object")
        # interned: the parsed string of each of 6,000 manifests was 0.6 MiB at 2,000 images
        media_type = sys.intern(sniff_media_type(body, content_type))
        if media_type in mt.SCHEMA1_TYPES or body.get("schemaVersion") == 1:
            raise UnsupportedContent(
                f"{where}: Docker schema 1 manifest, which cannot be mirrored faithfully",
                hint="push the image again with a current client (docker/buildah/skopeo) to get "
                "schema 2, or pin a schema 2 digest",
            )
        raw = cls(data, media_type)
        if digest is not None and digest.startswith("sha256:"):  # what `digest` would say
            object.__setattr__(raw, "_digest", digest)
        raw._views_from(body)
        return raw

    def _views_from(self, body: dict[str, Any]) -> None:
        """Every view at once from a parse in hand: a manifest is read by all of them
        (planning, the layout, manifest.json), and each parsing the bytes again cost a
        warm rerun a JSON parse per view. On an error they are left to be read lazily."""
        set_ = object.__setattr__
        set_(self, "_declared", body.get("artifactType"))
        try:
            made = (_children_of(self, body), _config_of(self, body), _layers_of(self, body),
                    _subject_of(self, body))
        except IntegrityError:
            return
        for name, view in zip(("_children", "_config", "_layers", "_subject"), made,
                              strict=True):
            set_(self, name, view)

    @property
    def parsed(self) -> dict[str, Any]:
        """The body, parsed anew (a dict of the caller's own)."""
        body: dict[str, Any] = json.loads(self.data)
        return body

    @property
    def declared_artifact_type(self) -> Any:
        """The body's own artifactType (None when it has none)."""
        if self._declared is _UNSET:
            object.__setattr__(self, "_declared", self.parsed.get("artifactType"))
        return self._declared

    @property
    def digest(self) -> str:
        if self._digest is None:
            object.__setattr__(self, "_digest", sha256_of(self.data))
        assert self._digest is not None
        return self._digest

    @property
    def size(self) -> int:
        return self._size

    @property
    def is_index(self) -> bool:
        return mt.is_index(self.media_type)

    @property
    def is_image(self) -> bool:
        """A runnable image: an image manifest whose config is an image config."""
        return mt.is_image_manifest(self.media_type) and self.config is not None and (
            self.config.media_type in mt.IMAGE_CONFIG_TYPES)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                             "size": self.size}
        d.update({k: v for k, v in extra.items() if v})
        return d

    @property
    def children(self) -> list[Descriptor]:
        """Index entries (empty for an image manifest)."""
        if self._children is None:
            object.__setattr__(self, "_children", _children_of(self, None))
        assert self._children is not None
        return list(self._children)

    @property
    def config(self) -> Descriptor | None:
        if self._config is _UNSET:
            object.__setattr__(self, "_config", _config_of(self, None))
        config: Descriptor | None = self._config
        return config

    @property
    def layers(self) -> list[Descriptor]:
        if self._layers is None:
            object.__setattr__(self, "_layers", _layers_of(self, None))
        assert self._layers is not None
        return list(self._layers)

    @property
    def subject(self) -> Descriptor | None:
        if self._subject is _UNSET:
            object.__setattr__(self, "_subject", _subject_of(self, None))
        subject: Descriptor | None = self._subject
        return subject

    @property
    def artifact_type(self) -> str | None:
        at = self.declared_artifact_type
        if at:
            return str(at)
        cfg = self.config
        if cfg is not None and cfg.media_type not in mt.IMAGE_CONFIG_TYPES:
            return cfg.media_type
        return None

    def blobs(self) -> Iterator[Descriptor]:
        """Config then layers, each digest once (duplicate layers are legal: pitfall 9)."""
        seen: set[str] = set()
        cfg = self.config
        for d in ([cfg] if cfg else []) + self.layers:
            if d.digest not in seen:
                seen.add(d.digest)
                yield d


def _children_of(raw: RawManifest, body: dict[str, Any] | None) -> tuple[Descriptor, ...]:
    """Index entries (none for an image manifest); `body`: the parse in hand, else parsed."""
    if not raw.is_index:
        return ()
    items = (raw.parsed if body is None else body).get("manifests")
    if not isinstance(items, list):
        raise IntegrityError(f"index {raw.digest} has no manifests list")
    where = f"index {raw.digest}"
    return tuple(Descriptor.from_dict(d, where) for d in items)


def _config_of(raw: RawManifest, body: dict[str, Any] | None) -> Descriptor | None:
    if raw.is_index:
        return None
    cfg = (raw.parsed if body is None else body).get("config")
    return None if cfg is None else Descriptor.from_dict(cfg, f"manifest {raw.digest} config")


def _layers_of(raw: RawManifest, body: dict[str, Any] | None) -> tuple[Descriptor, ...]:
    if raw.is_index:
        return ()
    items = (raw.parsed if body is None else body).get("layers") or []
    where = f"manifest {raw.digest} layer"
    return tuple(Descriptor.from_dict(d, where) for d in items)


def _subject_of(raw: RawManifest, body: dict[str, Any] | None) -> Descriptor | None:
    s = (raw.parsed if body is None else body).get("subject")
    return Descriptor.from_dict(s, f"manifest {raw.digest} subject") if s else None


def dump_json(obj: Any) -> bytes:
    """Deterministic serialisation for documents we create (filtered indexes, conversions)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
