"""Every client's files for the mappings (`render`, pure: each format's module in turn, then
README.txt), and their writing under a directory (`write`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from mirror.clientconfig import containerd, containers, docker, k3s, openshift, readme
from mirror.clientconfig.model import Access, ClientConfig, LeftOut, Mapping
from mirror.clientconfig.shared import by_repository, targets_of
from mirror.paths import write_atomic


def render(maps: list[Mapping], access: Access | Sequence[Access], *, fallback: bool = True,
           left_out: Iterable[LeftOut] = (),
           sources: dict[str, Access] | None = None) -> ClientConfig:
    """Every client's files for `maps`; what a client cannot express goes to `left_out`
    (after those given: images `mappings` could not map). `access`: how the clients reach
    each target, by `Mapping.mirror` (one Access for one target); the targets are mirrors
    in that order. `sources`: how the run reached each source registry (a sync; a load
    never does: https, as the clients' default), for the fallback to it."""
    accs = [access] if isinstance(access, Access) else list(access)
    cfg = ClientConfig(left_out=list(left_out))
    rows = by_repository(maps, cfg)
    upstream = sources or {}
    containerd.render(rows, accs, fallback, cfg, upstream)
    k3s.render(rows, accs, fallback, cfg, upstream)
    for registry, acc in targets_of(rows, accs).items():
        if acc.auth:
            cfg.notes.append(f"{registry} asks for credentials, which these files do not "
                             "carry: k3s/RKE2 configs.HOST.auth, Kubernetes image pull "
                             "secrets (containerd CRI, OpenShift's global pull secret), "
                             "podman login, docker login")
        if acc.ca_file:
            cfg.notes.append(f"containerd, k3s: the CA is named by its path here, "
                             f"{os.path.abspath(acc.ca_file)}: put it at that path on every "
                             "node")
    containers.render(rows, accs, fallback, cfg, upstream)
    openshift.render(rows, maps, accs, fallback, cfg, upstream)
    docker.render(rows, accs, fallback, cfg)
    cfg.files[readme.README] = readme.text(maps, cfg, fallback)
    return cfg


def write(directory: Path, cfg: ClientConfig) -> list[Path]:
    """Write each file (atomically) under `directory`; return their paths."""
    written = []
    for rel, text in sorted(cfg.files.items()):
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text.encode(), "client configuration")
        written.append(path)
    return written
