"""OpenShift `ImageDigestMirrorSet` and `ImageTagMirrorSet` (config.openshift.io/v1,
`spec.imageDigestMirrors` / `spec.imageTagMirrors`: `source`, `mirrors`,
`mirrorSourcePolicy: NeverContactSource` for no fallback):
https://docs.openshift.com/container-platform/4.16/rest_api/config_apis/imagedigestmirrorset-config-openshift-io-v1.html
and .../imagetagmirrorset-config-openshift-io-v1.html (the types: github.com/openshift/api
config/v1). A mirror is `host[:port]/namespace/.../repo`, no scheme; insecure registries and
CAs are set cluster-wide in `image.config.openshift.io/cluster`.
"""

from __future__ import annotations

import os
import re

import yaml

from mirror.clientconfig.model import Access, ClientConfig, Mapping
from mirror.clientconfig.shared import Row, plain_sources, targets_of

IDMS = "openshift/imagedigestmirrorset.yaml"
ITMS = "openshift/imagetagmirrorset.yaml"


def render(rows: list[Row], maps: list[Mapping], accs: list[Access], fallback: bool,
           cfg: ClientConfig, sources: dict[str, Access]) -> None:
    if not rows:
        return
    tagged = {m.source.name for m in maps if m.source.tag}
    targets = targets_of(rows, accs)
    name = "mirror-" + re.sub(r"[^a-z0-9.-]+", "-", next(iter(targets)).lower()).strip("-.")

    def entries(rs: list[Row]) -> list[dict]:
        out = []
        for row in rs:
            e: dict = {"source": row[0].source.name, "mirrors": [m.target for m in row]}
            if not fallback:
                e["mirrorSourcePolicy"] = "NeverContactSource"
            out.append(e)
        return out

    for path, kind, key, rs in ((IDMS, "ImageDigestMirrorSet", "imageDigestMirrors", rows),
                                (ITMS, "ImageTagMirrorSet", "imageTagMirrors",
                                 [r for r in rows if r[0].source.name in tagged])):
        if rs:
            doc = {"apiVersion": "config.openshift.io/v1", "kind": kind,
                   "metadata": {"name": name}, "spec": {key: entries(rs)}}
            cfg.files[path] = "# written by mirror: oc apply -f\n" + yaml.safe_dump(
                doc, sort_keys=False)
    insecure = [reg for reg, acc in targets.items() if acc.insecure]
    insecure += plain_sources(sources, fallback, rows)
    if insecure:
        cfg.notes.append(f"openshift: add {', '.join(insecure)} to "
                         "image.config.openshift.io/cluster spec.registrySources."
                         "insecureRegistries (the mirror sets cannot say it)")
    for acc in targets.values():
        if acc.ca_file and not acc.insecure:
            cfg.notes.append(f"openshift: give {os.path.abspath(acc.ca_file)} to "
                             "image.config.openshift.io/cluster spec.additionalTrustedCA")
