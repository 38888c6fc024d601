"""Loading an index into a tag that already holds another multi-arch index: the platforms the
load would take away from the tag, and (`mirror load --merge`) an index that keeps them.

The merged index is the bundle's index with the tag's entries for the other platforms (and
their attestations) appended: a new document, so a new digest, reported old -> new like any
conversion; the children it names are already in the repository (the registry checks).
"""

from __future__ import annotations

import json

from mirror.manifest import Descriptor, RawManifest, dump_json
from mirror.resolve import ATTESTATION_REF


def other_platforms(new: RawManifest, old: RawManifest) -> list[Descriptor]:
    """The entries of `old` for platforms `new` does not have, with their attestations."""
    mine = [d.platform for d in new.children if d.platform and not d.platform.is_unknown]
    keep = [d for d in old.children if d.platform is not None and not d.platform.is_unknown
            and not any(d.platform.matches(p) for p in mine)]
    kept = {d.digest for d in keep}
    keep += [d for d in old.children if d.platform is not None and d.platform.is_unknown
             and d.annotations.get(ATTESTATION_REF) in kept]
    return keep


def merged(new: RawManifest, old: RawManifest, keep: list[Descriptor]) -> RawManifest:
    body = json.loads(new.data)
    wanted = {d.digest for d in keep}
    body["manifests"] = [*body["manifests"],
                         *(e for e in json.loads(old.data)["manifests"]
                           if e.get("digest") in wanted)]
    return RawManifest(dump_json(body), new.media_type)


def platforms(entries: list[Descriptor]) -> str:
    return ", ".join(str(d.platform) for d in entries
                     if d.platform is not None and not d.platform.is_unknown)
