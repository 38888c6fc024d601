"""`mirror inspect` as a run: a bundle's or a remote image's digests (mirror.inspect)."""

from __future__ import annotations

import argparse

from mirror.netargs import transport_for
from mirror.report import Report


async def run_inspect(args: argparse.Namespace, progress, report: Report) -> int:
    from mirror.inspect import inspect_target

    text = await inspect_target(args, lambda: transport_for(args, None, progress),
                                note=progress.info)
    print(text)
    return 0
