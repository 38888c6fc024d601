"""README.txt, for people: every mapping, whether the clients fall back to the sources, how
to install each file written, what else a client needs, and what was left out and why."""

from __future__ import annotations

from mirror.clientconfig.containerd import CONTAINERD_DIR
from mirror.clientconfig.containers import CONTAINERS
from mirror.clientconfig.docker import DOCKER
from mirror.clientconfig.k3s import K3S
from mirror.clientconfig.model import ClientConfig, Mapping
from mirror.clientconfig.openshift import IDMS

README = "README.txt"

_HOWTO = {
    CONTAINERD_DIR: "containerd: copy containerd/certs.d/* to /etc/containerd/certs.d/ and "
                    "set the CRI registry config_path to it (no restart needed); "
                    "ctr images pull --hosts-dir DIR/containerd/certs.d NAME",
    K3S: "k3s/RKE2: copy k3s/registries.yaml to /etc/rancher/k3s/registries.yaml "
         "(/etc/rancher/rke2/registries.yaml) on every node, then restart k3s (rke2)",
    CONTAINERS: "Podman/CRI-O: copy containers/registries.conf.d/50-mirror.conf to "
                "/etc/containers/registries.conf.d/ (CRI-O: then restart crio)",
    IDMS: "OpenShift: oc apply -f openshift/",
    DOCKER: "Docker: merge docker/daemon.json into /etc/docker/daemon.json, restart dockerd",
}


def text(maps: list[Mapping], cfg: ClientConfig, fallback: bool) -> str:
    lines = ["Client configuration written by `mirror`: the clients pull these names from "
             "the mirror.", ""]
    lines += [f"  {m.source} -> {m.pulled_as}"
              + (f" (also tagged {', '.join(also)})" if also else "")
              for m in maps for also in [[t for t in m.tags if t != m.tag]]]
    lines += ["", "Fallback to the source registries: "
              + ("yes (tried after the mirror)" if fallback else "no"), "", "Install:"]
    for key, how in _HOWTO.items():
        if any(p == key or p.startswith(key + "/") for p in cfg.files):
            lines.append(f"  {how}")
    if cfg.notes:
        lines += ["", "Also:"] + [f"  {n}" for n in cfg.notes]
    if cfg.left_out:
        lines += ["", "Not written (the client cannot express it):"]
        lines += [f"  {x.line()}" for x in cfg.left_out]
    return "\n".join(lines) + "\n"
