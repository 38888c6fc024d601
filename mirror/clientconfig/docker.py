"""Docker `daemon.json` `registry-mirrors` (and `insecure-registries`):
https://docs.docker.com/reference/cli/dockerd/#daemon-configuration-file and
https://docs.docker.com/docker-hub/image-library/mirror/ ("Only the central Hub can be
mirrored"). Docker consults its mirrors for Docker Hub images only, at the same repository
paths (moby's ValidateMirror refuses a mirror URL with a path), and always falls back to
Docker Hub.
"""

from __future__ import annotations

import json
import os

from mirror.clientconfig.model import Access, ClientConfig, LeftOut
from mirror.clientconfig.shared import Row
from mirror.reference import DOCKER_HUB

DOCKER = "docker/daemon.json"


def render(rows: list[Row], accs: list[Access], fallback: bool, cfg: ClientConfig) -> None:
    usable: dict[str, Access] = {}  # target registry -> its access, in --to order
    for m in sorted((m for row in rows for m in row), key=lambda m: m.mirror):
        if m.source.registry != DOCKER_HUB:
            why = "Docker's registry-mirrors serve Docker Hub images only"
        elif m.prefix != "":
            why = ("Docker's mirror cannot rewrite paths (a mirror URL takes no path): the "
                   "target must serve Docker Hub images at their own paths (load with --to "
                   "HOST, no prefix)")
        else:
            usable[m.registry] = accs[m.mirror]
            continue
        cfg.left_out.append(LeftOut("docker", m.source.name, m.target, why))
    if not usable:
        return
    doc: dict = {"registry-mirrors": [f"{acc.scheme}://{reg}" for reg, acc in usable.items()]}
    insecure = [reg for reg, acc in usable.items() if acc.insecure]
    if insecure:
        doc["insecure-registries"] = insecure
    cfg.files[DOCKER] = json.dumps(doc, indent=2) + "\n"
    if not fallback:
        cfg.notes.append("docker: Docker always falls back to Docker Hub after its mirrors; "
                         "that cannot be turned off")
    for reg, acc in usable.items():
        if acc.ca_file and not acc.skip_verify:
            cfg.notes.append(f"docker: copy {os.path.abspath(acc.ca_file)} to "
                             f"/etc/docker/certs.d/{reg}/ca.crt")
