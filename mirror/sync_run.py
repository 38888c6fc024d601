"""`mirror sync` as a run: the targets checked, the sync engine (mirror.sync) run, the
report's fields per target, the lock file written, what is printed."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence
from pathlib import Path

from mirror.commands import (
    as_given,
    image_specs,
    images_now,
    partial,
    placement,
    print_pushed,
    push_report,
    push_summary,
    source_client,
    starved,
    traffic,
    waiting_images,
    write_lock,
)
from mirror.errors import EXIT_RATE_LIMITED_PARTIAL, UsageError
from mirror.netargs import target_of, transport_for
from mirror.report import Report
from mirror.runfiles import lock_path


def _sync_report(result, targets: Sequence = (), dry_run: bool = False) -> dict:
    """The sync's part of the report: the images as a pull's, and per target what a load
    says; the same keys whether or not the sync got going, and an entry per `--to` (of
    `targets`) however early it stopped (planning failed: before any target): one it did
    not reach says nothing (null counts, no placement)."""
    if result is None or not result.planned:
        return {"partial": False, "images": [], "waiting": [],
                "targets": [_target_entry(t, None, dry_run) for t in targets]}
    return {"partial": result.partial, "images": [r.entry() for r in result.images],
            "waiting": waiting_images(result.images),
            "targets": [_target_entry(t, done, dry_run) for t, done in result.targets]
            if result.targets else [_target_entry(t, None, dry_run) for t in targets]}


def _target_entry(target, done, dry_run: bool) -> dict:
    """A target's entry: what its push did, and of each image one outcome, `placement`
    (held there whole), `waiting` (there for the next run) or `failed` (there, and why)."""
    left = done.left if done is not None else {}
    return {"target": f"{target.registry}/{target.prefix}".rstrip("/"), **push_report(done),
            "would_push": done.dry_run if done is not None else [],
            "placement": (placement(done, dry_run) if done is not None else None) or [],
            "waiting": [ref for ref, e in left.items() if e.exit_code == EXIT_RATE_LIMITED_PARTIAL],
            "failed": [{"source": ref, "error": str(e), "error_code": e.exit_code}
                       for ref, e in left.items() if e.exit_code != EXIT_RATE_LIMITED_PARTIAL]}


def _stopped(args: argparse.Namespace, result, targets: Sequence, report: Report) -> None:
    """A sync that failed or was stopped: the report says what was done, and the images it
    did not finish carry its error; one stopped by an image a target could not take prints
    what the targets got (its other images), as a sync that got through."""
    fields = _sync_report(result, targets, args.dry_run)
    if not result.planned:  # stopped before (its tag rules): the images as given
        del fields["images"]
    report.add(**fields)
    if result.planned:  # those not pushed whole to every target
        report.cut_short([e for i, e in enumerate(fields["images"])
                          if e["error"] is None and i not in result.finished])
    if result.failed_alone and not args.quiet:
        for _, done in result.targets:
            print_pushed(done)


async def run_sync(args: argparse.Namespace, progress, report: Report) -> int:
    from mirror.artifacts import parse_types
    from mirror.clientconfig_run import access_of, check_flags, sources_of, write_for
    from mirror.store.blobs import BlobStore
    from mirror.store.lock import RunLock
    from mirror.sync import SyncOptions, SyncResult, sync

    report.add(**_sync_report(None), retries=0, dry_run=args.dry_run, **traffic(None),
               tag_rules=[], client_config=None)
    targets = [target_of(args, t) for t in args.to]
    report.add(**_sync_report(None, targets))
    seen: set[tuple[str, str]] = set()
    for t in targets:
        if (t.registry, t.prefix) in seen:
            raise UsageError(f"--to {t.registry}/{t.prefix}".rstrip("/") + " is given twice: "
                             "each target is pushed to once")
        seen.add((t.registry, t.prefix))
    check_flags(args)
    specs, cfg = image_specs(args)  # the lock file was checked first (lock_file_held)
    if cfg is not None and cfg.cached_referrers and not args.cache:
        progress.warn(f"referrers: cached ({', '.join(sorted(cfg.cached_referrers))}) keeps "
                      "what a run found in the cache, and this sync has no --cache: each run "
                      "looks the referrers up again, as `always` does (give it a --cache)")
    opts = SyncOptions(jobs=args.jobs, keep_going=args.keep_going, dry_run=args.dry_run,
                       merge=args.merge, referrer_types=parse_types(args.referrer_type))
    result = SyncResult()
    transport = transport_for(args, cfg, progress)
    as_given(specs, report)
    final: list = []  # the run's images, once the tag rules chose theirs
    try:
        with RunLock(Path(args.cache) / "lock", f"cache {args.cache}") if args.cache \
                else contextlib.nullcontext():
            async with transport as t:
                client = source_client(t, args.cache, cfg, args)
                blobs = BlobStore(args.cache) if args.cache else None
                # the images no rule waits for resolved while the rules choose the others
                now, later = await images_now(client, specs, report, progress, blobs,
                                              lock_path(args), final)
                await sync(client, now, targets, opts, progress, result, blobs, later=later)
                specs = final or specs
                access = [await access_of(t, target.registry) for target in targets] \
                    if args.write_client_config else None
                sources = await sources_of(t, (s.reference.registry for s in specs)) \
                    if args.write_client_config else None
    except BaseException:  # the images the sync did not finish carry its error
        _stopped(args, result, targets, report)
        raise
    finally:
        report.add(retries=transport.retries, **traffic(transport))
        starved(transport, final or specs, progress,
                result.images if result.planned else None, kept=bool(args.cache),
                carried=None if args.cache or args.dry_run else any(
                    done.blobs_pushed or done.manifests_pushed for _, done in result.targets))
    report.add(**_sync_report(result, targets, args.dry_run))
    for target, done in result.targets:
        if args.dry_run:
            for line in done.dry_run:
                print(f"{target.registry}/{target.prefix}".rstrip("/") + f"\t{line}")
            continue
        if not args.quiet:
            print_pushed(done)
        progress.info(f"synced to {target.registry}/{target.prefix}".rstrip("/") +
                      f": {push_summary(done)}")
    if access is not None:  # for the images synced (--keep-going: those that resolved)
        write_for(args.write_client_config,
                  [(done.images, target, acc) for (target, done), acc
                   in zip(result.targets, access, strict=True)],
                  args.no_fallback, progress, report, sources)
    if not args.dry_run:
        lock = write_lock(args, result, report)
        if lock:
            progress.info(f"wrote {lock}")
    if result.partial:
        return partial(result.images, _synced(result, args.dry_run), progress, report)
    return 0


def _synced(result, dry_run: bool) -> str:
    """What the line of a partial sync says of the images that neither failed nor wait:
    pushed whole to every target (a dry run's: would be), or none is (to every target,
    when one holds some: each target's entry says which)."""
    some = any(not r.error for r in result.images)
    if dry_run:
        return "the others would be synced" if some else "none would be synced"
    if some:
        return "the others are synced"
    if len(result.targets) > 1 and any(placement(done) for _, done in result.targets):
        return "none is synced to every target"
    return "none is synced"
