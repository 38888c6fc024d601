"""`mirror load` as a run: the bundle opened, the load engine (mirror.load) run, the
client configuration written after it (--write-client-config), the report, what is printed."""

from __future__ import annotations

import argparse

from mirror.commands import (
    failed_images,
    placement,
    print_pushed,
    push_report,
    push_summary,
    traffic,
)
from mirror.netargs import target_of, transport_for
from mirror.report import Report


async def run_load(args: argparse.Namespace, progress, report: Report) -> int:
    from mirror.bundle.reader import Bundle
    from mirror.clientconfig_run import access_of, check_flags, write_for
    from mirror.load import LoadResult, load
    from mirror.registry.client import Client

    # None: not known (the load stopped before it could say)
    report.add(bundle=str(args.bundle), target=args.to, **push_report(None),
               retries=0, dry_run=args.dry_run, would_push=[], client_config=None,
               placement=None, failed=[], **traffic(None))
    target = target_of(args, args.to)
    check_flags(args)
    bundle = Bundle(args.bundle)
    transport = transport_for(args, None, progress)
    result = LoadResult()
    try:
        async with transport as t:
            await load(Client(t), bundle, target, jobs=args.jobs, dry_run=args.dry_run,
                       progress=progress, result=result, merge=args.merge)
            access = await access_of(t, target.registry) \
                if args.write_client_config else None
    finally:
        report.add(retries=transport.retries, **traffic(transport))
        if result.started:  # what was done, also when the load failed or was stopped later
            report.add(**push_report(result), placement=placement(result, args.dry_run),
                       failed=failed_images(result))
    report.add(would_push=result.dry_run)
    if args.dry_run:
        for line in result.dry_run:
            print(line)
    elif not args.quiet:
        print_pushed(result)
    if result.failed:  # the others are pushed: each failed one said, the first the error
        for img, e in result.failed[1:]:
            progress.warn(f"{img.name}: failed: {e}")
        raise result.failed[0][1]
    if args.dry_run:
        return 0
    if access is not None:
        write_for(args.write_client_config, [(result.images, target, access)],
                  args.no_fallback, progress, report)
    progress.info(f"loaded {args.bundle}: {push_summary(result)}")
    return 0
