"""What the formats share: the mappings per source repository (a `Row`: one place per target)
and per source registry, the targets with their access, the source registries the fallback
reaches without verified TLS, and TOML's strings (hosts.toml, registries.conf)."""

from __future__ import annotations

import json

from mirror.clientconfig.model import Access, ClientConfig, LeftOut, Mapping

Row = list[Mapping]  # one source repository's places: one per target, in --to order


def by_repository(maps: list[Mapping], cfg: ClientConfig) -> list[Row]:
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


def per_registry(rows: list[Row]) -> dict[str, dict[int, list[Mapping]]]:
    """Per source registry, the mappings each target (by `mirror`, in order) got of it."""
    out: dict[str, dict[int, list[Mapping]]] = {}
    for row in rows:
        for m in row:
            out.setdefault(m.source.registry, {}).setdefault(m.mirror, []).append(m)
    return {reg: dict(sorted(cols.items())) for reg, cols in out.items()}


def targets_of(rows: list[Row], accs: list[Access]) -> dict[str, Access]:
    """The target registries in --to order, each with how the clients reach it."""
    return {m.registry: accs[m.mirror]
            for m in sorted((m for row in rows for m in row), key=lambda m: m.mirror)}


def toml_str(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text)


def plain_sources(sources: dict[str, Access], fallback: bool, rows: list[Row]) -> list[str]:
    """The source registries the fallback reaches without verified TLS (plain HTTP, or
    --insecure-registry), as the run reached them."""
    if not fallback:
        return []
    return sorted({row[0].source.registry for row in rows
                   if sources.get(row[0].source.registry, Access()).insecure})
