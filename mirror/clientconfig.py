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
from collections.abc import Iterable, Sequence
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
    mirror: int = field(default=0, compare=False)  # which target (--to, in order) it is in

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


def mappings(images: Iterable[tuple[str | None, str, str | None]], registry: str,
             mirror: int = 0) -> tuple[list[Mapping], list[LeftOut]]:
    """From what a load pushed, per image (its ref name or None, target repository, tag or
    None), the mappings (to the `mirror`th target); images with no source name cannot be
    mapped: left out."""
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
        m = Mapping(ref, registry, repository, mirror=mirror)
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
    rows = _by_repository(maps, cfg)
    upstream = sources or {}
    _containerd(rows, accs, fallback, cfg, upstream)
    _k3s(rows, accs, fallback, cfg, upstream)
    for registry, acc in _targets(rows, accs).items():
        if acc.auth:
            cfg.notes.append(f"{registry} asks for credentials, which these files do not "
                             "carry: k3s/RKE2 configs.HOST.auth, Kubernetes image pull "
                             "secrets (containerd CRI, OpenShift's global pull secret), "
                             "podman login, docker login")
        if acc.ca_file:
            cfg.notes.append(f"containerd, k3s: the CA is named by its path here, "
                             f"{os.path.abspath(acc.ca_file)}: put it at that path on every "
                             "node")
    _containers(rows, accs, fallback, cfg, upstream)
    _openshift(rows, maps, accs, fallback, cfg, upstream)
    _docker(rows, accs, fallback, cfg)
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


Row = list[Mapping]  # one source repository's places: one per target, in --to order


def _by_repository(maps: list[Mapping], cfg: ClientConfig) -> list[Row]:
    """Per source repository its place in each target (a client maps a name to one place
    per mirror): the first the target got."""
    seen: dict[str, dict[int, Mapping]] = {}
    for m in maps:
        first = seen.setdefault(m.source.name, {}).setdefault(m.mirror, m)
        if first.target != m.target:
            cfg.left_out.append(LeftOut("all", m.source.name, m.target,
                                        f"also loaded at {first.target}, which the clients "
                                        "are given"))
    return [[places[k] for k in sorted(places)] for places in seen.values()]


def _per_registry(rows: list[Row]) -> dict[str, dict[int, list[Mapping]]]:
    """Per source registry, the mappings each target (by `mirror`, in order) got of it."""
    out: dict[str, dict[int, list[Mapping]]] = {}
    for row in rows:
        for m in row:
            out.setdefault(m.source.registry, {}).setdefault(m.mirror, []).append(m)
    return {reg: dict(sorted(cols.items())) for reg, cols in out.items()}


def _targets(rows: list[Row], accs: list[Access]) -> dict[str, Access]:
    """The target registries in --to order, each with how the clients reach it."""
    return {m.registry: accs[m.mirror]
            for m in sorted((m for row in rows for m in row), key=lambda m: m.mirror)}


def _q(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text)


def _tls(access: Access) -> list[str]:
    """containerd's settings for reaching a host as mirror reached it."""
    out = ["skip_verify = true"] if access.skip_verify else []
    if access.ca_file:
        out.append(f"ca = {_q(os.path.abspath(access.ca_file))}")
    return out


def _plain(sources: dict[str, Access], fallback: bool, rows: list[Row]) -> list[str]:
    """The source registries the fallback reaches without verified TLS (plain HTTP, or
    --insecure-registry), as the run reached them."""
    if not fallback:
        return []
    return sorted({row[0].source.registry for row in rows
                   if sources.get(row[0].source.registry, Access()).insecure})


def _containerd(rows: list[Row], accs: list[Access], fallback: bool,
                cfg: ClientConfig, sources: dict[str, Access]) -> None:
    """One hosts.toml per source registry: a [host] per target, in order (containerd tries
    them so), then the source as `server`."""
    for registry, cols in _per_registry(rows).items():
        hosts: list[tuple[str, list[str], str]] = []  # URL, settings, what it serves
        for k, ms in cols.items():
            prefix = next((m.prefix for m in ms if m.prefix is not None), None)
            for m in ms:
                if m.prefix is None or m.prefix != prefix:
                    why = ("hosts.toml can put a prefix before the repository path, not "
                           f"rewrite the path ({m.source.repository} -> {m.repository})"
                           if m.prefix is None else
                           f"hosts.toml maps {registry} to one place per target, "
                           f"{m.registry}/{prefix}")
                    cfg.left_out.append(LeftOut("containerd", m.source.name, m.target, why))
            if prefix is None:
                continue
            url = f"{accs[k].scheme}://{ms[0].registry}" + (f"/v2/{prefix}" if prefix else "")
            settings = ['capabilities = ["pull", "resolve"]']
            if prefix:
                settings.append("override_path = true")
            hosts.append((url, settings + _tls(accs[k]),
                          f"{ms[0].registry}/" + (f"{prefix}/*" if prefix else "*")))
        if not hosts:
            continue
        head = [f"# written by mirror: {registry}/* is pulled from "
                + ", then ".join(h[2] for h in hosts)]
        tables = [line for url, settings, _ in hosts
                  for line in ("", f"[host.{_q(url)}]", *("  " + s for s in settings))]
        if fallback:  # the source as the run reached it (a load never does: https)
            src = sources.get(registry, Access())
            body = [*head, f"server = {_q(f'{src.scheme}://' + api_host(registry))}",
                    *_tls(src), *tables]
        else:  # containerd 1.6 wants a [host] table even then: the first mirror, twice
            url, settings, _ = hosts[0]
            body = [*head, "# no fallback: the (first) mirror is the server too, the "
                    "upstream is never asked", f"server = {_q(url)}", *settings, *tables]
        cfg.files[f"{CONTAINERD_DIR}/{registry}/hosts.toml"] = "\n".join(body) + "\n"


def _rewrite(ms: list[Mapping]) -> dict[str, str]:
    """k3s's rewrite from a source registry's paths to one target's ({} for none)."""
    prefixes = {m.prefix for m in ms}
    if len(prefixes) == 1 and None not in prefixes:
        (prefix,) = prefixes
        return {"^(.*)$": f"{prefix}/$1"} if prefix else {}
    return {f"^{re.escape(m.source.repository)}$": m.repository  # one anchored rule each
            for m in ms if m.repository != m.source.repository}


def _k3s(rows: list[Row], accs: list[Access], fallback: bool, cfg: ClientConfig,
         sources: dict[str, Access]) -> None:
    """Per source registry its targets as endpoints, in order; registries.yaml has one
    rewrite per registry for all its endpoints: a target whose paths need another is left
    out for k3s."""
    mirrors: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    for registry, cols in _per_registry(rows).items():
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
    for registry in _plain(sources, fallback, rows):
        cfg.notes.append(f"k3s: the fallback to {registry} (reached without verified TLS) "
                         f"is k3s's default endpoint, https://{registry}, which "
                         "registries.yaml cannot change: the mirror is used, the fallback "
                         "fails")
    head = "# written by mirror: /etc/rancher/k3s/registries.yaml (RKE2: /etc/rancher/rke2/)\n"
    if not fallback:
        head += ("# no fallback: start k3s/rke2 with --disable-default-registry-endpoint "
                 "(registries.yaml cannot say it)\n")
    cfg.files[K3S] = head + yaml.safe_dump(doc, sort_keys=False)


def _containers(rows: list[Row], accs: list[Access], fallback: bool,
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
    plain = set(_plain(sources, fallback, rows))
    for row in rows:
        source = row[0].source
        if fallback:
            mirrors, location, insecure = row, source.name, source.registry in plain
        else:
            mirrors, location, insecure = row[:-1], row[-1].target, accs[row[-1].mirror].insecure
        lines += ["", "[[registry]]", f"prefix = {_q(source.name)}",
                  f"location = {_q(location)}"]
        if insecure:  # before the mirrors' tables: the location's own
            lines.append("insecure = true")
        for m in mirrors:
            lines += ["", "[[registry.mirror]]", f"location = {_q(m.target)}"]
            if accs[m.mirror].insecure:
                lines.append("insecure = true")
    cfg.files[CONTAINERS] = "\n".join(lines) + "\n"
    for registry, acc in _targets(rows, accs).items():
        if acc.ca_file and not acc.skip_verify:
            cfg.notes.append(f"containers: copy {os.path.abspath(acc.ca_file)} to "
                             f"/etc/containers/certs.d/{registry}/ca.crt "
                             "(registries.conf has no CA setting)")


def _openshift(rows: list[Row], maps: list[Mapping], accs: list[Access], fallback: bool,
               cfg: ClientConfig, sources: dict[str, Access]) -> None:
    if not rows:
        return
    tagged = {m.source.name for m in maps if m.source.tag}
    targets = _targets(rows, accs)
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
    insecure += _plain(sources, fallback, rows)
    if insecure:
        cfg.notes.append(f"openshift: add {', '.join(insecure)} to "
                         "image.config.openshift.io/cluster spec.registrySources."
                         "insecureRegistries (the mirror sets cannot say it)")
    for acc in targets.values():
        if acc.ca_file and not acc.insecure:
            cfg.notes.append(f"openshift: give {os.path.abspath(acc.ca_file)} to "
                             "image.config.openshift.io/cluster spec.additionalTrustedCA")


def _docker(rows: list[Row], accs: list[Access], fallback: bool, cfg: ClientConfig) -> None:
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
