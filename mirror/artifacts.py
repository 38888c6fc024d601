"""Kinds of referrers (signature, sbom, attestation) and the `--referrer-type` filter.

A kind is read from the media types that tools write (checked against their specifications):
  - signature: cosign's simple signing payload (`application/vnd.dev.cosign.simplesigning.v1+json`,
    the `.sig` tag), cosign's OCI 1.1 signature artifact, a Sigstore bundle
    (`application/vnd.dev.sigstore.bundle.v0.3+json`, `...bundle+json;version=0.1`), Notation
    (`application/vnd.cncf.notary.signature`);
  - sbom: SPDX (`application/spdx+json`, `text/spdx`, ...) and CycloneDX
    (`application/vnd.cyclonedx+json`, `+xml`, ...) in any of their media types, cosign's `.sbom`
    tag and its OCI 1.1 SBOM artifact;
  - attestation: in-toto statements (`application/vnd.in-toto+json`), DSSE envelopes (cosign's
    `.att` tag), BuildKit attestation manifests inside an index.
The manifest's artifactType (else its config's media type) decides; when that says nothing
(an image config, the empty descriptor), its layers' media types do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mirror import mediatypes as mt
from mirror.errors import UsageError
from mirror.manifest import RawManifest

KINDS = ("signature", "sbom", "attestation")
# cosign's tags beside a subject: `sha256-<hex>.sig` (mirror.referrers)
COSIGN_SUFFIXES = {".sig": "signature", ".att": "attestation", ".sbom": "sbom"}


# the tags of referrers in a listing: the fallback index's and cosign's (mirror.tagrules)
_COSIGN = "|".join(map(re.escape, COSIGN_SUFFIXES))
_REFERRER_TAG = re.compile(rf"sha(256|512)-[0-9a-f]{{64}}({_COSIGN})?")


def is_referrer_tag(tag: str) -> bool:
    """Whether `tag` is a subject's fallback index (`sha256-<hex>`) or one of cosign's tags
    beside it (`.sig`, `.att`, `.sbom`): what refers to an image, not an image."""
    return _REFERRER_TAG.fullmatch(tag) is not None


def fallback_tag(digest: str) -> str:
    """The tag of a subject's referrers where a registry has no referrers API (the OCI
    fallback index), and the stem of cosign's tags: `sha256-<hex>`."""
    alg, _, enc = digest.partition(":")
    return f"{alg[:32]}-{enc[:64]}"

_EXACT = {
    "application/vnd.dev.cosign.simplesigning.v1+json": "signature",
    "application/vnd.dev.cosign.artifact.sig.v1+json": "signature",
    "application/vnd.cncf.notary.signature": "signature",
    "application/vnd.dev.cosign.artifact.sbom.v1+json": "sbom",
    "application/vnd.dsse.envelope.v1+json": "attestation",
    "application/vnd.dev.cosign.artifact.att.v1+json": "attestation",
}
# by the subtype's name, less `vnd.` and any `+suffix` or parameters
_FAMILIES = {"dev.sigstore.bundle": "signature", "spdx": "sbom", "cyclonedx": "sbom",
             "in-toto": "attestation"}
_FAMILY_PREFIXES = ("dev.sigstore.bundle",)  # versioned names: ...bundle.v0.3+json

_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=\S+)*")


def kind_of_type(media_type: str | None) -> str | None:
    """The kind a media type (or artifactType) stands for, or None."""
    full = mt.strip_params(media_type)
    if full in _EXACT:
        return _EXACT[full]
    sub = full.partition("/")[2].removeprefix("vnd.").split("+", 1)[0]
    for prefix in _FAMILY_PREFIXES:
        if sub.startswith(prefix):
            sub = prefix
    return _FAMILIES.get(sub)


def kind_of(manifest: RawManifest) -> str | None:
    """The kind of a referrer manifest, from its artifactType, else its layers; None if
    neither names one (an artifact of another sort)."""
    kind = kind_of_type(manifest.artifact_type)
    if kind is None:
        kinds = {kind_of_type(d.media_type) for d in manifest.layers} - {None}
        kind = kinds.pop() if len(kinds) == 1 else None
    return kind


def parse_types(values: Iterable[str]) -> tuple[str, ...]:
    """`--referrer-type` values: a kind, or a media type (type/subtype) to match an
    artifactType verbatim. Anything else is a usage error (a typo would otherwise drop
    every referrer without a word)."""
    out: list[str] = []
    for value in values:
        v = value.strip().lower()
        if v in KINDS or _MEDIA_TYPE.fullmatch(v):
            out.append(mt.strip_params(v))
            continue
        import difflib  # for the error only

        close = difflib.get_close_matches(v, KINDS, n=1)
        raise UsageError(
            f"--referrer-type {value!r} is neither a kind ({', '.join(KINDS)}) nor a media "
            "type (type/subtype, as an artifactType)"
            + (f" (did you mean {close[0]!r}?)" if close else ""),
            hint="e.g. --referrer-type sbom, or --referrer-type application/spdx+json")
    return tuple(dict.fromkeys(out))


def wanted(types: tuple[str, ...], kind: str | None, artifact_type: str | None) -> bool:
    """Whether a referrer of this kind and artifactType passes the filter (none: all do)."""
    if not types:
        return True
    return (kind or "") in types or mt.strip_params(artifact_type) in types
