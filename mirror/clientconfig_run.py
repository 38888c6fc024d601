"""The client configuration as a run writes it: `mirror load --write-client-config DIR`
after a successful load, and `mirror client-config BUNDLE --to HOST[/PREFIX] -o DIR` for a
bundle loaded earlier (the load's own plan of where each image goes, and its choice of the
tags that give way to referrers: mirror.pushfallback.give_way). How the clients reach the
target is what the run found (mirror.clientconfig.model.Access); the files come from the pure
mirror.clientconfig.render.render; what a client cannot express goes to stderr, one line
each, and to the report's `client_config`.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable
from pathlib import Path

from mirror.bundle.reader import Bundle
from mirror.clientconfig.model import Access, LeftOut, Mapping, mappings
from mirror.clientconfig.readme import README
from mirror.clientconfig.render import render, write
from mirror.errors import UsageError
from mirror.load import Target, plan_load
from mirror.mapping import unmatched
from mirror.netargs import target_of, transport_for
from mirror.paths import check_writable
from mirror.pushfallback import give_way
from mirror.pushplan import PushImage
from mirror.referrers import Finder
from mirror.registry.client import Client
from mirror.registry.transport import Transport
from mirror.report import Report


def check_dir(directory: Path, flag: str) -> None:
    """The configuration's directory, made and checked before any work (exit 2)."""
    check_writable(directory / README, flag)


async def access_of(t: Transport, registry: str) -> Access:
    """How the clients reach the target: the scheme the run found it speaks, unverified TLS
    where --insecure-registry says so, the CA file the run verified it with (--ca-file, or
    for a sync images.yaml's `registries:`), and whether it asked for credentials."""
    ep = await t.endpoint(registry)
    scheme = ep.base_url.split("://", 1)[0]
    cas = {h.lower(): s.ca_file for h, s in t.settings.items() if s.ca_file}
    return Access(scheme, skip_verify=scheme == "https" and ep.ssl is False,
                  ca_file=cas.get(registry), auth=ep.auth.scheme is not None)


def check_flags(args: argparse.Namespace) -> None:
    """load's and sync's --write-client-config and --no-fallback, refused (exit 2) before
    any work where they would write nothing true; the directory made and checked."""
    if args.no_fallback and not args.write_client_config:
        raise UsageError("--no-fallback says how to write the client configuration; give "
                         "--write-client-config DIR")
    if not args.write_client_config:
        return
    if args.dry_run:
        raise UsageError("--write-client-config writes what a run pushed; --dry-run "
                         "pushes nothing", hint="run `mirror client-config` for the "
                         "configuration a bundle would give")
    check_dir(args.write_client_config, "--write-client-config")


async def sources_of(t: Transport, registries: Iterable[str]) -> dict[str, Access]:
    """How a sync reached each of its source registries: the clients' fallback."""
    return {r: await access_of(t, r) for r in sorted(set(registries))}


Pushed = tuple[list[PushImage], Target, Access]  # one target's, as reached


def write_for(directory: Path, pushed: list[Pushed], no_fallback: bool, progress,
              report: Report, sources: dict[str, Access] | None = None) -> None:
    """The clients' configuration for the images pushed to each target (load's naming),
    the targets mirrors in the order given: files written, and each mapping a client cannot
    express on a line of its own. `sources`: how a sync reached the source registries (a
    load never does: the fallback says https)."""
    maps: list[Mapping] = []
    left: list[LeftOut] = []
    for k, (images, target, _) in enumerate(pushed):
        got, lost = mappings([(None if i.unnamed else i.name, i.repository, i.tag,
                               i.root.digest) for i in images if i.referrer_of is None],
                             target.registry, k)
        maps += got
        left += lost
    cfg = render(maps, [access for _, _, access in pushed],
                 fallback=not no_fallback, left_out=left, sources=sources)
    paths = write(directory, cfg)
    for x in cfg.left_out:
        progress.info(f"client config: {x.line()}")
    report.add(client_config={
        "dir": str(directory), "files": [str(p) for p in paths],
        "left_out": [{"client": x.client, "source": x.source, "target": x.target,
                      "reason": x.reason} for x in cfg.left_out]})
    progress.info(f"wrote the client configuration for {len(maps)} image(s) in {directory} "
                  f"({len(paths)} file(s); see {directory / README})")


async def client_config(args: argparse.Namespace, progress, report: Report) -> int:
    report.add(bundle=str(args.bundle), target=args.to, client_config=None)
    target = target_of(args, args.to)
    check_dir(args.output, "-o")
    bundle = Bundle(args.bundle)
    contents = await asyncio.to_thread(bundle.scan)
    images = plan_load(contents, target, bundle.name)
    for line in unmatched(target.layout.rules, (i.image.reference.name for i in images
                                                if i.image.reference is not None)):
        progress.warn(line)
    async with transport_for(args, None, progress) as t:  # one ping: the scheme it speaks
        access = await access_of(t, target.registry)
        # the tags the load gave: a pinned image's digest tag gives way to its referrers'
        # index where the target has no referrers API (asked only when one could)
        await give_way(images, target.registry, Finder(Client(t)), progress.warn)
    write_for(args.output, [(images, target, access)], args.no_fallback, progress, report)
    if not args.quiet:
        print(args.output / README)
    return 0
