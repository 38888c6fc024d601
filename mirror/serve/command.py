"""`mirror serve` as a run: the flags checked, the bundle opened, the report's fields, what
is printed (the URL on stdout, the request lines and notes on the progress's lines)."""

from __future__ import annotations

import argparse
import asyncio

from mirror.netargs import layout_of
from mirror.progress import Progress
from mirror.report import Report
from mirror.serve.catalog import check_prefix, open_catalog
from mirror.serve.server import Listen, serve, tls_context


async def serve_bundle(args: argparse.Namespace, progress: Progress, report: Report) -> int:
    """Check the bundle, listen, serve until Ctrl-C or SIGTERM (which end the run with
    their exit codes, after the server has stopped)."""
    report.add(bundle=str(args.bundle), url=None, requests=0)
    listen = Listen.parse(args.listen)
    prefix = check_prefix(args.prefix)
    layout = layout_of(args)
    tls = tls_context(args.tls_cert, args.tls_key)
    catalog = await asyncio.to_thread(open_catalog, args.bundle, prefix, args.listen, layout)
    for note in catalog.notes:  # a docker-archive's new manifests, as load says them
        progress.info(note)
    for line in catalog.unmatched:
        progress.warn(line)
    if catalog.absent:
        progress.warn(f"{args.bundle}: {len(catalog.absent)} blob(s) the images name are not in "
                      "it (foreign layers, or what an incremental bundle's base carried): "
                      "requests for them get BLOB_UNKNOWN")
    served = [0]

    def log(line: str) -> None:
        served[0] += 1
        report.add(requests=served[0])
        progress.info(line)

    def ready(url: str) -> None:
        report.add(url=url)
        # printed with -q too: with --listen ADDR:0 it is the only way to learn the port
        print(url, flush=True)
        progress.info(f"serving {args.bundle} read-only at {url}/v2/: "
                      f"{len(catalog.repositories)} repositories, {catalog.tags} tag(s); "
                      "Ctrl-C stops")

    await serve(catalog, listen, tls, log, ready)
    return 0
