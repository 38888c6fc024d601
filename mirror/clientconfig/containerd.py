"""containerd `certs.d/<source host>/hosts.toml`, one per source registry:
https://github.com/containerd/containerd/blob/main/docs/hosts.md. A `[host."URL"]` is tried
before `server`; `server` is the fallback (the upstream; Docker Hub's is
`https://registry-1.docker.io`), and a server set to the mirror itself means no fallback.
With `override_path = true` the URL's path is the API root (`http://T/v2/PREFIX`): the
image's repository path is appended as is, so containerd can put a prefix before the path
but never rewrite the path itself.
"""

from __future__ import annotations

import os

from mirror.clientconfig.model import Access, ClientConfig, LeftOut, Mapping
from mirror.clientconfig.shared import Row, per_registry, toml_str
from mirror.reference import api_host

CONTAINERD_DIR = "containerd/certs.d"


def _tls(access: Access) -> list[str]:
    """containerd's settings for reaching a host as mirror reached it."""
    out = ["skip_verify = true"] if access.skip_verify else []
    if access.ca_file:
        out.append(f"ca = {toml_str(os.path.abspath(access.ca_file))}")
    return out


def _taken_over(m: Mapping, registry: str, places: str) -> str:
    """What a mapping left out becomes under a file with no fallback: hosts.toml is one per
    registry host, so every repository of `registry` is asked at the mirror, where this one
    is not at its source path, and the upstream never."""
    return (f"; with --no-fallback the file for {registry} sends all its repositories to "
            f"{places}, so containerd finds nothing for {m.source.name} there and asks no "
            f"other: pull it as {m.pulled_as}, or load it at its own path under the prefix "
            "(no --map or to: moving it)")


def render(rows: list[Row], accs: list[Access], fallback: bool,
           cfg: ClientConfig, sources: dict[str, Access]) -> None:
    """One hosts.toml per source registry: a [host] per target, in order (containerd tries
    them so), then the source as `server`."""
    for registry, cols in per_registry(rows).items():
        hosts: list[tuple[str, list[str], str]] = []  # URL, settings, what it serves
        lost: list[tuple[Mapping, str]] = []  # mappings left out, and why
        served: set[str] = set()  # the source names the hosts serve
        for k, ms in cols.items():
            prefix = next((m.prefix for m in ms if m.prefix is not None), None)
            for m in ms:
                if m.prefix is None or m.prefix != prefix:
                    lost.append((m, "hosts.toml can put a prefix before the repository path, "
                                    f"not rewrite the path ({m.source.repository} -> "
                                    f"{m.repository})" if m.prefix is None else
                                    f"hosts.toml maps {registry} to one place per target, "
                                    f"{m.registry}/{prefix}"))
                else:
                    served.add(m.source.name)
            if prefix is None:
                continue
            url = f"{accs[k].scheme}://{ms[0].registry}" + (f"/v2/{prefix}" if prefix else "")
            settings = ['capabilities = ["pull", "resolve"]']
            if prefix:
                settings.append("override_path = true")
            hosts.append((url, settings + _tls(accs[k]),
                          f"{ms[0].registry}/" + (f"{prefix}/*" if prefix else "*")))
        places = ", then ".join(h[2] for h in hosts)
        unpullable: list[str] = []  # with no fallback: the names this file makes fail
        for m, why in lost:
            if hosts and not fallback and m.source.name not in served:
                why += _taken_over(m, registry, places)
                unpullable.append(m.source.name)
            cfg.left_out.append(LeftOut("containerd", m.source.name, m.target, why))
        if not hosts:
            continue
        head = [f"# written by mirror: {registry}/* is pulled from {places}"]
        tables = [line for url, settings, _ in hosts
                  for line in ("", f"[host.{toml_str(url)}]", *("  " + s for s in settings))]
        if fallback:  # the source as the run reached it (a load never does: https)
            src = sources.get(registry, Access())
            body = [*head, f"server = {toml_str(f'{src.scheme}://' + api_host(registry))}",
                    *_tls(src), *tables]
        else:  # containerd 1.6 wants a [host] table even then: the first mirror, twice
            url, settings, _ = hosts[0]
            note = [f"# not at their source path there, so not pullable through this file "
                    f"(README.txt): {', '.join(dict.fromkeys(unpullable))}"] if unpullable else []
            body = [*head, "# no fallback: the (first) mirror is the server too, the "
                    "upstream is never asked", *note, f"server = {toml_str(url)}", *settings,
                    *tables]
        cfg.files[f"{CONTAINERD_DIR}/{registry}/hosts.toml"] = "\n".join(body) + "\n"
