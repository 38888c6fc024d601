"""`mirror pull` and `mirror lock` as runs: the flags read, the pull engine (mirror.pull)
run under the cache's and the output's locks, the report's fields, the lock file written,
what is printed."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mirror.bundle.volumes import parse_size
from mirror.commands import (
    as_given,
    image_specs,
    images_now,
    partial,
    pull_options,
    source_client,
    starved,
    traffic,
    waiting_images,
    write_lock,
)
from mirror.errors import UsageError
from mirror.netargs import transport_for
from mirror.paths import check_writable
from mirror.report import Report
from mirror.runfiles import DEFAULT_OUTPUT, check_lock_path, lock_path

if TYPE_CHECKING:
    from mirror.bundle.writer import Prehash


def _rule_text(rule: dict) -> str:
    """A tag rule on one line, for --dry-run: `semver=">=1.2 <2" exclude=["-rc"]`."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in rule.items())


@contextlib.contextmanager
def _output_lock(out: Path, *, dry_run: bool) -> Iterator[None]:
    """Hold the output for the run (a --dry-run writes none, so it takes none), and drop what
    a killed run left there: no run but the holder of this lock writes `OUT.partial`."""
    if dry_run:
        yield
        return
    from mirror.store.lock import RunLock

    with RunLock(out.with_name(out.name + ".lock"), f"output {out}"):
        for stale in (out.name + ".partial", out.name + ".sha256.partial"):
            out.with_name(stale).unlink(missing_ok=True)
        yield


def _pull_report(result) -> dict:
    """The pull's part of the report; the same keys whether or not the pull got going."""
    if result is None:
        return {"bundle": None, "bundle_digest": None, "partial": False,
                "bundle_unchanged": False, "bytes_fetched": 0, "bytes_reused": 0,
                "bytes_kept": 0, "blobs_fetched": 0, "blobs_reused": 0, "retries": 0,
                "images": [], "waiting": []}
    return {"bundle": str(result.bundle) if result.bundle else None,
            "bundle_digest": result.bundle_digest, "partial": result.partial,
            "bundle_unchanged": result.unchanged,
            "bytes_fetched": result.bytes_fetched, "bytes_reused": result.bytes_reused,
            "bytes_kept": result.bytes_kept, "blobs_fetched": result.blobs_fetched,
            "blobs_reused": result.blobs_reused,
            "retries": result.retries, "images": [r.entry() for r in result.images],
            "waiting": waiting_images(result.images)}


def _report_stopped(report: Report, done) -> None:
    """What a pull stopped by an error or a signal did: every image given, those it cut short
    with the run's error; stopped at the tag rules, the images planned meanwhile as they
    stand among those given (mirror.commands.as_given)."""
    fields = _pull_report(done)
    cut = [fields["images"][i] for i in done.unfinished]
    if done.early:
        mine = {x["reference"]: x for x in fields["images"]}
        given = report.entries("images")
        fields["images"] = [mine.get(x["reference"], x) for x in given]
        cut += [x for x in given if x["reference"] not in mine]
    report.add(**fields)
    report.cut_short(cut)


def _output(args: argparse.Namespace) -> Path:
    """-o, refused (exit 2, before any network work) when it names a directory or cannot be
    written; its directory is made (not for --dry-run, which writes nothing)."""
    text: str = args.output or str(DEFAULT_OUTPUT)
    out = Path(text)
    if text.endswith(("/", os.sep)) or out.is_dir():
        what = "is" if out.is_dir() else "names"
        raise UsageError(f"-o {text}: {what} a directory; give the bundle's file name, "
                         f"e.g. {out / 'site.tar'}")
    lower = out.name.lower()
    if lower.endswith(FOREIGN_COMPRESSION):
        raise UsageError(f"-o {text}: mirror writes .tar (plain) or .tar.zst (zstd); this name "
                         "says another compression, which the file would not have",
                         hint=f"name it {out.name.split('.')[0] or 'site'}.tar or "
                         f"{out.name.split('.')[0] or 'site'}.tar.zst")
    if not args.dry_run:
        check_writable(out, "-o")
    return out


FOREIGN_COMPRESSION = (".gz", ".tgz", ".xz", ".txz", ".bz2", ".tbz", ".tbz2", ".lz4", ".lzma",
                       ".z", ".zip")


ZSTD_NAMES = (".zst", ".tzst", ".zstd")  # the names that mean a zstd-compressed bundle


def _base(args: argparse.Namespace, out: Path) -> dict:
    """PullOptions' base_* fields: what --base carried across (mirror.incremental, imported
    only then); none without it."""
    if not args.base:
        return {}
    from mirror.incremental import read_base

    return read_base(args.base, out, dry_run=args.dry_run)


async def run_pull(args: argparse.Namespace, progress, report: Report) -> int:
    report.add(**_pull_report(None), **traffic(None), tag_rules=[])
    out = _output(args)
    compress = args.compress == "zstd" or (args.compress is None and
                                           out.name.lower().endswith(ZSTD_NAMES))
    volume_size = parse_size(args.volume_size) if args.volume_size else None
    from mirror.bundle.writer import Prehash

    # the plain bundle already at -o is hashed from here on, on a pool thread, beside the
    # run's imports and set-up, while the second core has nothing else to do: a rerun with
    # nothing new then finds its digest ready (mirror.pull_output). Begun with the first
    # requests, its 30 ms of CPU (400 images) met the registry and the event loop, which
    # keep both cores busy then. A .tar.zst, parts and a dry run are checked otherwise
    prehash = None if args.dry_run or compress or volume_size else Prehash.start(out)
    try:
        return await _run_pull(args, progress, report, out, compress, volume_size, prehash)
    finally:  # read to the end when the run did not need it (an error before the layout)
        if prehash is not None:
            prehash.stop()


async def _run_pull(args: argparse.Namespace, progress, report: Report, out: Path,
                    compress: bool, volume_size: int | None, prehash: Prehash | None) -> int:
    from mirror.pull import pull
    from mirror.store.blobs import BlobStore, default_cache_dir
    from mirror.store.lock import RunLock

    specs, cfg = image_specs(args)  # the lock file was checked first (lock_file_held)
    cache = args.cache or default_cache_dir()
    opts = pull_options(args, output=None if args.dry_run else out, compress=compress,
                         keep_going=args.keep_going, dry_run=args.dry_run,
                         volume_size=volume_size, **_base(args, out))
    transport = transport_for(args, cfg, progress)
    as_given(specs, report)
    final: list = []  # the run's images, once the tag rules chose theirs
    result = None
    try:
        with RunLock(Path(cache) / "lock", f"cache {cache}"), \
                _output_lock(out, dry_run=args.dry_run):
            store = BlobStore(cache)
            async with transport as t:
                client = source_client(t, cache, cfg, args)
                # the images no rule waits for resolved while the rules choose the others
                now, later = await images_now(client, specs, report, progress, store,
                                              lock_path(args), final)
                result = await pull(client, store, now, opts, progress, later=later,
                                    prehash=prehash)
    except BaseException as e:  # the report says what was done before the error or signal
        done = getattr(e, "pull_result", None) or result  # stopped after the pull: its own
        if done is not None:
            _report_stopped(report, done)
            if done.bundle and not args.dry_run:  # named before the stop: the lock file is
                write_lock(args, done, report, opts.base_blobs)  # the bundle's, after all
        raise
    finally:
        report.add(**traffic(transport))
        starved(transport, final or specs, progress, result and result.images)
    report.add(**_pull_report(result))
    if not args.dry_run and result.bundle:
        lock = write_lock(args, result, report, opts.base_blobs)
        if lock:
            progress.info(f"wrote {lock}")
    if args.dry_run:
        for rule in report.details.get("tag_rules") or []:
            print(f"{rule['repository']}\t{_rule_text(rule['rule'])}\t{','.join(rule['tags'])}")
        for r in result.images:
            if not r.error:
                print(f"{r.reference}\t{r.digest}\t{','.join(r.platforms)}")
        print(f"would fetch up to {result.dry_run_bytes - result.bytes_reused} bytes "
              f"(of {result.dry_run_bytes} needed; the rest is in the cache)")
    elif result.bundle:
        if not args.quiet:  # -q: nothing on success (cron mails what a job prints)
            print(f"{result.bundle}\t{result.bundle_digest}")
        verb = "unchanged (already holds exactly these images)" if result.unchanged else "wrote"
        progress.info(f"{verb} {result.bundle}: "
                      f"{len([r for r in result.images if not r.error])}"
                      f" image(s), {result.blobs_fetched} blob(s) fetched "
                      f"({result.bytes_fetched} bytes), {result.blobs_reused} reused, "
                      f"{result.retries} retries")
    if result.partial:
        return partial(result.images, "a pull would write a partial bundle" if args.dry_run
                       else "the bundle is partial", progress, report)
    return 0


async def run_lock(args: argparse.Namespace, progress, report: Report) -> int:
    from mirror.pull import pull
    from mirror.store.blobs import BlobStore, default_cache_dir

    args.locked = False
    report.add(tag_rules=[], waiting=[], **traffic(None))
    specs, cfg = image_specs(args)
    if lock_path(args) is None:
        raise UsageError("mirror lock needs -f images.yaml or --lock-file")
    check_lock_path(args)
    from mirror.store.lock import RunLock

    cache = args.cache or default_cache_dir()
    transport = transport_for(args, cfg, progress)
    final: list = []  # the run's images, once the tag rules chose theirs
    try:
        with RunLock(Path(cache) / "lock", f"cache {cache}"):
            store = BlobStore(cache)
            async with transport as t:
                client = source_client(t, cache, cfg, args)
                # the images no rule waits for resolved while the rules choose the others
                # (as a pull's): one registry's Retry-After on a listing holds only its own
                now, later = await images_now(client, specs, report, progress, store,
                                              lock_path(args), final)
                result = await pull(client, store, now,
                                    pull_options(args, output=None, dry_run=True), progress,
                                    later=later)
    except BaseException as e:  # every image waits: each named, as a pull's report does
        done = getattr(e, "pull_result", None)
        if done is not None:
            report.add(waiting=waiting_images(done.images))
        raise
    finally:  # what the run asked of each registry, its budget's too, whatever the outcome
        report.add(**traffic(transport))
    report.add(waiting=waiting_images(result.images))
    result.bundle = Path("-")  # resolved: write the lock
    args.dry_run = False
    path = write_lock(args, result, report)
    if not args.quiet:  # -q: nothing at all on success
        print(path)
    if result.partial:  # a registry's rate limit left images waiting: not success
        return partial(result.images, _kept(path or lock_path(args),
                                            waiting_images(result.images)), progress, report)
    return 0


def _kept(path: Path | None, waiting: list[str]) -> str:
    """What the lock file keeps of the images left waiting: their entries from the last
    run, where it had them."""
    from mirror.lockfile import Lock

    have = Lock.read(path).images if path is not None and path.exists() else {}
    kept = sum(1 for ref in waiting if ref in have)
    if kept == len(waiting):
        return f"{path} keeps their last entries"
    if not kept:
        return f"{path} has no entry for them yet"
    return (f"{path} keeps the last entry of {kept} of them (none for the other "
            f"{len(waiting) - kept})")
