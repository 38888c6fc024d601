"""Client configuration from what a load put where: the files that make containerd, k3s/RKE2,
Podman/CRI-O, OpenShift and Docker pull `docker.io/library/redis:7` from the mirror.

A pure function (`render`) from the mappings (per image: the source reference as clients name
it, and the target registry and repository it landed in) and the target's access (scheme, TLS
verification, CA file) to file contents, plus what each client cannot express, with the reason;
`write` puts them under a directory. Each format as its project documents it:

- containerd `certs.d/<source host>/hosts.toml`, one per source registry:
  https://github.com/containerd/containerd/blob/main/docs/hosts.md. A `[host."URL"]` is tried
  before `server`; `server` is the fallback (the upstream; Docker Hub's is
  `https://registry-1.docker.io`), and a server set to the mirror itself means no fallback.
  With `override_path = true` the URL's path is the API root (`http://T/v2/PREFIX`): the
  image's repository path is appended as is, so containerd can put a prefix before the path
  but never rewrite the path itself.
- k3s/RKE2 `registries.yaml` (`mirrors: REGISTRY: endpoint, rewrite`, `configs: HOST: tls`):
  https://docs.k3s.io/installation/private-registry, https://docs.rke2.io/install/private_registry.
  Rewrites apply to mirror endpoints; the default endpoint (upstream) is tried last unless the
  node runs with `--disable-default-registry-endpoint` (k3s v1.26.13+k3s1 and later).
- Podman/CRI-O `registries.conf.d/*.conf`, version 2 (`[[registry]]` `prefix`, `location`,
  `insecure`, `[[registry.mirror]]`): containers-registries.conf(5),
  https://github.com/containers/image/blob/main/docs/containers-registries.conf.5.md. The
  prefix matched is replaced by the mirror's location; the primary `location` is tried after
  the mirrors, so a location set to the mirror means no fallback. No CA field: certificates are
  read from `/etc/containers/certs.d/HOST/`.
- OpenShift `ImageDigestMirrorSet` and `ImageTagMirrorSet` (config.openshift.io/v1,
  `spec.imageDigestMirrors` / `spec.imageTagMirrors`: `source`, `mirrors`,
  `mirrorSourcePolicy: NeverContactSource` for no fallback):
  https://docs.openshift.com/container-platform/4.16/rest_api/config_apis/imagedigestmirrorset-config-openshift-io-v1.html
  and .../imagetagmirrorset-config-openshift-io-v1.html (the types: github.com/openshift/api
  config/v1). A mirror is `host[:port]/namespace/.../repo`, no scheme; insecure registries and
  CAs are set cluster-wide in `image.config.openshift.io/cluster`.
- Docker `daemon.json` `registry-mirrors` (and `insecure-registries`):
  https://docs.docker.com/reference/cli/dockerd/#daemon-configuration-file and
  https://docs.docker.com/docker-hub/image-library/mirror/ ("Only the central Hub can be
  mirrored"). Docker consults its mirrors for Docker Hub images only, at the same repository
  paths (moby's ValidateMirror refuses a mirror URL with a path), and always falls back to
  Docker Hub.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mirror.errors import InvalidReference
from mirror.paths import write_atomic
from mirror.reference import DOCKER_HUB, Reference, api_host, is_bare_tag

README = "README.txt"
CONTAINERD_DIR = "containerd/certs.d"
K3S = "k3s/registries.yaml"
CONTAINERS = "containers/registries.conf.d/50-mirror.conf"
IDMS = "openshift/imagedigestmirrorset.yaml"
ITMS = "openshift/imagetagmirrorset.yaml"
DOCKER = "docker/daemon.json"


@dataclass(frozen=True)
class Mapping:
    """One loaded image: `source` as the clients name it, and where it landed."""

    source: Reference
    registry: str  # target host[:port]
    repository: str  # target repository
    tags: tuple[str, ...] = field(default=(), compare=False)  # the tags it got there

    @property
    def tag(self) -> str | None:
        """The target tag to name for it: the source's when it got it (else the first it
        got: images.yaml `tag_as:`); None for an image pinned by digest."""
        if not self.source.tag or not self.tags or self.source.tag in self.tags:
            return self.source.tag
        return self.tags[0]

    @property
    def target(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def prefix(self) -> str | None:
        """What the target puts before the source path (`` for none), or None when the target
        repository is not the source path under a prefix (a rewrite of the path itself)."""
        src = self.source.repository
        if self.repository == src:
            return ""
        if self.repository.endswith("/" + src):
            return self.repository[: -len(src) - 1]
        return None


@dataclass(frozen=True)
class Access:
    """How clients reach the target: its scheme (what the load found it speaks), whether
    its certificate is not to be verified, and the CA file mirror was given for it."""

    scheme: str = "https"
    skip_verify: bool = False
    ca_file: str | None = None
    auth: bool = False  # the target asked for credentials (mirror never writes them)

    @property
    def insecure(self) -> bool:
        return self.scheme == "http" or self.skip_verify


@dataclass(frozen=True)
class LeftOut:
    client: str  # containerd, k3s, containers, openshift, docker, or "all"
    source: str
    target: str
    reason: str

    def line(self) -> str:
        return f"{self.client}: {self.source} -> {self.target} not written: {self.reason}"


@dataclass
class ClientConfig:
    files: dict[str, str] = field(default_factory=dict)  # path under DIR -> text
    left_out: list[LeftOut] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what a client needs besides its file


def mappings(images: Iterable[tuple[str | None, str, str | None]], registry: str
             ) -> tuple[list[Mapping], list[LeftOut]]:
    """From what a load pushed, per image (its ref name or None, target repository, tag or
    None), the mappings; images with no source name cannot be mapped: left out."""
    out: list[Mapping] = []
    left: list[LeftOut] = []
    tags: dict[str, list[str]] = {}  # source name -> the tags it got at the target
    got: dict[Mapping, list[str]] = {}  # the same per mapping: README.txt names one
    for name, repository, tag in images:
        where = f"{registry}/{repository}" + (f":{tag}" if tag else "")
        if not name or is_bare_tag(name):
            left.append(LeftOut("all", name or "(no ref name)", where,
                                "the bundle does not name its source; pull it as " + where))
            continue
        try:
            ref = Reference.parse(name)
        except InvalidReference:
            left.append(LeftOut("all", name, where, "not a reference a client could name"))
            continue
        m = Mapping(ref, registry, repository)
        if m not in out:
            out.append(m)
        if tag:
            tags.setdefault(name, []).append(f"{registry}/{repository}:{tag}")
            got.setdefault(m, []).append(tag)
    left += _renamed(tags)
    return [dataclasses.replace(m, tags=tuple(got.get(m, ()))) for m in out], left


def _renamed(tags: dict[str, list[str]]) -> list[LeftOut]:
    """Sources whose own tag is not among those they got (images.yaml `tag_as:`): a client
    asking the mirror for it finds nothing, and no client configuration renames a tag."""
    left = []
    for name, where in tags.items():
        ref = Reference.parse(name)
        if ref.tag and not any(w.rsplit(":", 1)[1] == ref.tag for w in where):
            got = ", ".join(w.rsplit(":", 1)[1] for w in where)
            left.append(LeftOut(
                "all", name, where[0],
                f"its tag {ref.tag} was loaded as {got} (`tag_as:`); no client configuration "
                f"renames a tag, so a client asking for {name} finds nothing: pull "
                f"{where[0]}, or add the tag with `tags_also:`"))
    return left


def render(maps: list[Mapping], access: Access, *, fallback: bool = True,
           left_out: Iterable[LeftOut] = (),
           sources: dict[str, Access] | None = None) -> ClientConfig:
    """Every client's files for `maps`; what a client cannot express goes to `left_out`
    (after those given: images `mappings` could not map). `sources`: how the run reached
    each source registry (a sync; a load never does: https, as the clients' default), for
    the fallback to it."""
    cfg = ClientConfig(left_out=list(left_out))
    repos = _by_repository(maps, cfg)
    upstream = sources or {}
    _containerd(repos, access, fallback, cfg, upstream)
    _k3s(repos, access, fallback, cfg, upstream)
    if access.auth and repos:
        cfg.notes.append(f"{repos[0].registry} asks for credentials, which these files do not "
                         "carry: k3s/RKE2 configs.HOST.auth, Kubernetes image pull secrets "
                         "(containerd CRI, OpenShift's global pull secret), podman login, "
                         "docker login")
    if access.ca_file and repos:
        cfg.notes.append(f"containerd, k3s: the CA is named by its path here, "
                         f"{os.path.abspath(access.ca_file)}: put it at that path on every "
                         "node")
    _containers(repos, access, fallback, cfg, upstream)
    _openshift(repos, maps, access, fallback, cfg, upstream)
    _docker(repos, access, fallback, cfg)
    cfg.files[README] = _readme(maps, cfg, fallback)
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


def _by_repository(maps: list[Mapping], cfg: ClientConfig) -> list[Mapping]:
    """One mapping per source repository (a client maps a name to one place): the first."""
    seen: dict[str, Mapping] = {}
    for m in maps:
        first = seen.setdefault(m.source.name, m)
        if first.target != m.target:
            cfg.left_out.append(LeftOut("all", m.source.name, m.target,
                                        f"also loaded at {first.target}, which the clients "
                                        "are given"))
    return list(seen.values())


def _per_registry(repos: list[Mapping]) -> dict[str, list[Mapping]]:
    out: dict[str, list[Mapping]] = {}
    for m in repos:
        out.setdefault(m.source.registry, []).append(m)
    return out


def _q(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text)


def _tls(access: Access) -> list[str]:
    """containerd's settings for reaching a host as mirror reached it."""
    out = ["skip_verify = true"] if access.skip_verify else []
    if access.ca_file:
        out.append(f"ca = {_q(os.path.abspath(access.ca_file))}")
    return out


def _plain(sources: dict[str, Access], fallback: bool, repos: list[Mapping]) -> list[str]:
    """The source registries the fallback reaches without verified TLS (plain HTTP, or
    --insecure-registry), as the run reached them."""
    if not fallback:
        return []
    return sorted({m.source.registry for m in repos
                   if sources.get(m.source.registry, Access()).insecure})


def _containerd(repos: list[Mapping], access: Access, fallback: bool,
                cfg: ClientConfig, sources: dict[str, Access]) -> None:
    for registry, ms in _per_registry(repos).items():
        prefix = next((m.prefix for m in ms if m.prefix is not None), None)
        for m in ms:
            if m.prefix is None or m.prefix != prefix:
                why = ("hosts.toml can put a prefix before the repository path, not rewrite "
                       f"the path ({m.source.repository} -> {m.repository})"
                       if m.prefix is None else
                       f"hosts.toml maps {registry} to one place, {m.registry}/{prefix}")
                cfg.left_out.append(LeftOut("containerd", m.source.name, m.target, why))
        if prefix is None:
            continue
        url = f"{access.scheme}://{ms[0].registry}" + (f"/v2/{prefix}" if prefix else "")
        settings = ['capabilities = ["pull", "resolve"]']
        if prefix:
            settings.append("override_path = true")
        settings += _tls(access)
        head = [f"# written by mirror: {registry}/* is pulled from {ms[0].registry}/"
                + (f"{prefix}/*" if prefix else "*")]
        host = ["", f"[host.{_q(url)}]", *("  " + s for s in settings)]
        if fallback:  # the source as the run reached it (a load never does: https)
            src = sources.get(registry, Access())
            body = [*head, f"server = {_q(f'{src.scheme}://' + api_host(registry))}",
                    *_tls(src), *host]
        else:  # containerd 1.6 wants a [host] table even then: the mirror, twice
            body = [*head, "# no fallback: the mirror is the server too, the upstream is "
                    "never asked", f"server = {_q(url)}", *settings, *host]
        cfg.files[f"{CONTAINERD_DIR}/{registry}/hosts.toml"] = "\n".join(body) + "\n"


def _k3s(repos: list[Mapping], access: Access, fallback: bool, cfg: ClientConfig,
         sources: dict[str, Access]) -> None:
    mirrors: dict[str, dict] = {}
    for registry, ms in _per_registry(repos).items():
        entry: dict = {"endpoint": [f"{access.scheme}://{ms[0].registry}"]}
        prefixes = {m.prefix for m in ms}
        if len(prefixes) == 1 and None not in prefixes:
            (prefix,) = prefixes
            if prefix:
                entry["rewrite"] = {"^(.*)$": f"{prefix}/$1"}
        else:  # one anchored rule per repository
            entry["rewrite"] = {f"^{re.escape(m.source.repository)}$": m.repository
                                for m in ms if m.repository != m.source.repository}
        mirrors[registry] = entry
    if not mirrors:
        return
    doc: dict = {"mirrors": mirrors}
    tls: dict = {}
    if access.skip_verify:
        tls["insecure_skip_verify"] = True
    if access.ca_file:
        tls["ca_file"] = os.path.abspath(access.ca_file)
    if tls:
        doc["configs"] = {repos[0].registry: {"tls": tls}}
    for registry in _plain(sources, fallback, repos):
        cfg.notes.append(f"k3s: the fallback to {registry} (reached without verified TLS) "
                         f"is k3s's default endpoint, https://{registry}, which "
                         "registries.yaml cannot change: the mirror is used, the fallback "
                         "fails")
    head = "# written by mirror: /etc/rancher/k3s/registries.yaml (RKE2: /etc/rancher/rke2/)\n"
    if not fallback:
        head += ("# no fallback: start k3s/rke2 with --disable-default-registry-endpoint "
                 "(registries.yaml cannot say it)\n")
    cfg.files[K3S] = head + yaml.safe_dump(doc, sort_keys=False)


def _containers(repos: list[Mapping], access: Access, fallback: bool,
                cfg: ClientConfig, sources: dict[str, Access]) -> None:
    if not repos:
        return
    lines = ["# written by mirror: /etc/containers/registries.conf.d/ (registries.conf "
             "version 2)"]
    if not fallback:
        lines.append("# no fallback: each location is the mirror, the source is never asked")
    plain = set(_plain(sources, fallback, repos))
    for m in repos:
        lines += ["", "[[registry]]", f"prefix = {_q(m.source.name)}"]
        if fallback:  # `insecure` before the mirror's table is the source's own
            lines.append(f"location = {_q(m.source.name)}")
            if m.source.registry in plain:
                lines.append("insecure = true")
            lines += ["", "[[registry.mirror]]", f"location = {_q(m.target)}"]
        else:
            lines.append(f"location = {_q(m.target)}")
        if access.insecure:
            lines.append("insecure = true")
    cfg.files[CONTAINERS] = "\n".join(lines) + "\n"
    if access.ca_file and not access.skip_verify:
        cfg.notes.append(f"containers: copy {os.path.abspath(access.ca_file)} to "
                         f"/etc/containers/certs.d/{repos[0].registry}/ca.crt "
                         "(registries.conf has no CA setting)")


def _openshift(repos: list[Mapping], maps: list[Mapping], access: Access, fallback: bool,
               cfg: ClientConfig, sources: dict[str, Access]) -> None:
    if not repos:
        return
    tagged = {m.source.name for m in maps if m.source.tag}
    name = "mirror-" + re.sub(r"[^a-z0-9.-]+", "-", repos[0].registry.lower()).strip("-.")

    def entries(ms: list[Mapping]) -> list[dict]:
        out = []
        for m in ms:
            e: dict = {"source": m.source.name, "mirrors": [m.target]}
            if not fallback:
                e["mirrorSourcePolicy"] = "NeverContactSource"
            out.append(e)
        return out

    for path, kind, key, ms in ((IDMS, "ImageDigestMirrorSet", "imageDigestMirrors", repos),
                                (ITMS, "ImageTagMirrorSet", "imageTagMirrors",
                                 [m for m in repos if m.source.name in tagged])):
        if ms:
            doc = {"apiVersion": "config.openshift.io/v1", "kind": kind,
                   "metadata": {"name": name}, "spec": {key: entries(ms)}}
            cfg.files[path] = "# written by mirror: oc apply -f\n" + yaml.safe_dump(
                doc, sort_keys=False)
    insecure = [repos[0].registry] if access.insecure else []
    insecure += _plain(sources, fallback, repos)
    if insecure:
        cfg.notes.append(f"openshift: add {', '.join(insecure)} to "
                         "image.config.openshift.io/cluster spec.registrySources."
                         "insecureRegistries (the mirror sets cannot say it)")
    if access.ca_file and not access.insecure:
        cfg.notes.append(f"openshift: give {os.path.abspath(access.ca_file)} to "
                         "image.config.openshift.io/cluster spec.additionalTrustedCA")


def _docker(repos: list[Mapping], access: Access, fallback: bool, cfg: ClientConfig) -> None:
    usable = []
    for m in repos:
        if m.source.registry != DOCKER_HUB:
            why = "Docker's registry-mirrors serve Docker Hub images only"
        elif m.prefix != "":
            why = ("Docker's mirror cannot rewrite paths (a mirror URL takes no path): the "
                   "target must serve Docker Hub images at their own paths (load with --to "
                   "HOST, no prefix)")
        else:
            usable.append(m)
            continue
        cfg.left_out.append(LeftOut("docker", m.source.name, m.target, why))
    if not usable:
        return
    doc: dict = {"registry-mirrors": [f"{access.scheme}://{usable[0].registry}"]}
    if access.insecure:
        doc["insecure-registries"] = [usable[0].registry]
    cfg.files[DOCKER] = json.dumps(doc, indent=2) + "\n"
    if not fallback:
        cfg.notes.append("docker: Docker always falls back to Docker Hub after its mirrors; "
                         "that cannot be turned off")
    if access.ca_file and not access.skip_verify:
        cfg.notes.append(f"docker: copy {os.path.abspath(access.ca_file)} to "
                         f"/etc/docker/certs.d/{usable[0].registry}/ca.crt")


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


def _readme(maps: list[Mapping], cfg: ClientConfig, fallback: bool) -> str:
    lines = ["Client configuration written by `mirror`: the clients pull these names from "
             "the mirror.", ""]
    lines += [f"  {m.source} -> {m.target}"
              + (f":{m.tag}" if m.tag else "")
              + (f"@{m.source.digest}" if m.source.digest else "")
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
