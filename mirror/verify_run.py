"""`mirror verify` as a run: the check (mirror.verify) in a thread, its progress, the
problems printed and the report's fields."""

from __future__ import annotations

import argparse
import asyncio
import os
import threading

from mirror.report import Report


async def run_verify(args: argparse.Namespace, progress, report: Report) -> int:
    from mirror.verify import verify_bundle

    report.add(bundle=str(args.bundle), problems=None, ok=False)  # None: not checked
    stop = threading.Event()
    try:
        progress.total(os.stat(args.bundle).st_size)  # the bar: bytes of the file read
    except OSError:
        pass  # verify says what is wrong with it
    try:
        problems, structural = await asyncio.to_thread(verify_bundle, args.bundle,
                                                        progress.debug, stop,
                                                        progress.advanced)
    except asyncio.CancelledError:  # Ctrl-C, SIGTERM: the thread stops at its next read
        stop.set()
        raise
    report.add(problems=problems, ok=not problems)
    if problems:
        for p in problems:
            print(f"{args.bundle}: {p}")
        from mirror.errors import BundleError, IntegrityError

        err = BundleError if structural else IntegrityError
        raise err(f"{args.bundle}: {len(problems)} problem(s) found",
                  hint=getattr(problems, "hint", None))
    if not args.quiet:
        print(f"{args.bundle}: OK")
    return 0
