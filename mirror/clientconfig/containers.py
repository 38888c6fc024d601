"""Podman/CRI-O `registries.conf.d/*.conf`, version 2 (`[[registry]]` `prefix`, `location`,
`insecure`, `[[registry.mirror]]`): containers-registries.conf(5),
https://github.com/containers/image/blob/main/docs/containers-registries.conf.5.md. The
prefix matched is replaced by the mirror's location; the primary `location` is tried after
the mirrors, so a location set to the mirror means no fallback. No CA field: certificates are
read from `/etc/containers/certs.d/HOST/`.
"""

from __future__ import annotations

import os

from mirror.clientconfig.model import Access, ClientConfig
from mirror.clientconfig.shared import Row, plain_sources, targets_of, toml_str

CONTAINERS = "containers/registries.conf.d/50-mirror.conf"


def render(rows: list[Row], accs: list[Access], fallback: bool,
           cfg: ClientConfig, sources: dict[str, Access]) -> None:
    """Per source repository a [[registry]]: its targets as [[registry.mirror]] in order,
    tried before `location`, the source (without fallback: the last target)."""
    if not rows:
        return
    lines = ["# written by mirror: /etc/containers/registries.conf.d/ (registries.conf "
             "version 2)"]
    if not fallback:
        lines.append("# no fallback: each location is the (last) mirror, the source is never "
                     "asked")
    plain = set(plain_sources(sources, fallback, rows))
    for row in rows:
        source = row[0].source
        if fallback:
            mirrors, location, insecure = row, source.name, source.registry in plain
        else:
            mirrors, location, insecure = row[:-1], row[-1].target, accs[row[-1].mirror].insecure
        lines += ["", "[[registry]]", f"prefix = {toml_str(source.name)}",
                  f"location = {toml_str(location)}"]
        if insecure:  # before the mirrors' tables: the location's own
            lines.append("insecure = true")
        for m in mirrors:
            lines += ["", "[[registry.mirror]]", f"location = {toml_str(m.target)}"]
            if accs[m.mirror].insecure:
                lines.append("insecure = true")
    cfg.files[CONTAINERS] = "\n".join(lines) + "\n"
    for registry, acc in targets_of(rows, accs).items():
        if acc.ca_file and not acc.skip_verify:
            cfg.notes.append(f"containers: copy {os.path.abspath(acc.ca_file)} to "
                             f"/etc/containers/certs.d/{registry}/ca.crt "
                             "(registries.conf has no CA setting)")
