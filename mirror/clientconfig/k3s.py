"""k3s/RKE2 `registries.yaml` (`mirrors: REGISTRY: endpoint, rewrite`, `configs: HOST: tls`):
https://docs.k3s.io/installation/private-registry, https://docs.rke2.io/install/private_registry.
Rewrites apply to mirror endpoints; the default endpoint (upstream) is tried last unless the
node runs with `--disable-default-registry-endpoint` (k3s v1.26.13+k3s1 and later).
"""

from __future__ import annotations

import os
import re

import yaml

from mirror.clientconfig.model import Access, ClientConfig, LeftOut, Mapping
from mirror.clientconfig.shared import Row, per_registry, plain_sources

K3S = "k3s/registries.yaml"


def _rewrite(ms: list[Mapping]) -> dict[str, str]:
    """k3s's rewrite from a source registry's paths to one target's ({} for none)."""
    prefixes = {m.prefix for m in ms}
    if len(prefixes) == 1 and None not in prefixes:
        (prefix,) = prefixes
        return {"^(.*)$": f"{prefix}/$1"} if prefix else {}
    return {f"^{re.escape(m.source.repository)}$": m.repository  # one anchored rule each
            for m in ms if m.repository != m.source.repository}


def render(rows: list[Row], accs: list[Access], fallback: bool, cfg: ClientConfig,
           sources: dict[str, Access]) -> None:
    """Per source registry its targets as endpoints, in order; registries.yaml has one
    rewrite per registry for all its endpoints: a target whose paths need another is left
    out for k3s."""
    mirrors: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    for registry, cols in per_registry(rows).items():
        endpoints: list[str] = []
        rewrite: dict[str, str] = {}
        first = ""
        for k, ms in cols.items():
            rw = _rewrite(ms)
            if endpoints and rw != rewrite:
                for m in ms:
                    cfg.left_out.append(LeftOut(
                        "k3s", m.source.name, m.target,
                        f"registries.yaml has one rewrite for all of {registry}'s endpoints, "
                        f"and {m.registry}'s paths are not {first}'s"))
                continue
            rewrite, first, acc = rw, ms[0].registry, accs[k]
            endpoints.append(f"{acc.scheme}://{ms[0].registry}")
            tls: dict = {}
            if acc.skip_verify:
                tls["insecure_skip_verify"] = True
            if acc.ca_file:
                tls["ca_file"] = os.path.abspath(acc.ca_file)
            if tls:
                configs[ms[0].registry] = {"tls": tls}
        entry: dict = {"endpoint": list(dict.fromkeys(endpoints))}
        if rewrite:
            entry["rewrite"] = rewrite
        mirrors[registry] = entry
    if not mirrors:
        return
    doc: dict = {"mirrors": mirrors}
    if configs:
        doc["configs"] = configs
    for registry in plain_sources(sources, fallback, rows):
        cfg.notes.append(f"k3s: the fallback to {registry} (reached without verified TLS) "
                         f"is k3s's default endpoint, https://{registry}, which "
                         "registries.yaml cannot change: the mirror is used, the fallback "
                         "fails")
    head = "# written by mirror: /etc/rancher/k3s/registries.yaml (RKE2: /etc/rancher/rke2/)\n"
    if not fallback:
        head += ("# no fallback: start k3s/rke2 with --disable-default-registry-endpoint "
                 "(registries.yaml cannot say it)\n")
    cfg.files[K3S] = head + yaml.safe_dump(doc, sort_keys=False)
