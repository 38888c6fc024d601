"""The commands behind the CLI: each turns parsed arguments into a run and prints its
outcome. The parser and the mapping of errors to exit codes stay in mirror.cli."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mirror.bundle.volumes import parse_size
from mirror.config import Config, ImageSettings, ImageSpec, load_config
from mirror.errors import EXIT_PARTIAL, EXIT_RATE_LIMITED_PARTIAL, MirrorError, UsageError
from mirror.netargs import target_of, transport_for
from mirror.paths import check_writable
from mirror.platform import PlatformSelector
from mirror.reference import Reference
from mirror.report import Report

if TYPE_CHECKING:
    from mirror.pull import PullOptions

DEFAULT_OUTPUT = Path("bundles/mirror.tar")


def _specs(args: argparse.Namespace) -> tuple[list[ImageSpec], Config | None]:
    cfg = load_config(args.file) if args.file else None
    base = cfg.defaults if cfg else ImageSettings()
    specs = list(cfg.images) if cfg else []
    specs += [ImageSpec(Reference.parse(t), base, "command line") for t in args.images]
    if not specs:
        raise UsageError("no images: give -f images.yaml or image references")
    over: dict = {}
    if args.platform:
        over["platforms"] = PlatformSelector.parse(args.platform)
    if args.index:
        over["index"] = args.index
    if args.format:
        over["format"] = args.format
    if args.foreign_layers:
        over["foreign_layers"] = args.foreign_layers
    if args.no_referrers:  # exactly `referrers: false` for every image
        over["referrers"] = False
    if over:
        specs = [replace(s, settings=replace(s.settings, **over)) for s in specs]
    _refuse_conflicting_duplicates(specs)
    if getattr(args, "locked", False):
        from mirror.lockfile import pin

        specs = pin(specs, _lock_path(args))
    return specs, cfg


def _refuse_conflicting_duplicates(specs: list[ImageSpec]) -> None:
    """A bundle (and a lock file) holds one entry per reference: one listed twice with other
    settings would have its first listing silently replaced by the second. Listed twice
    with the same settings (or made the same by a flag) is harmless."""
    from mirror.config import settings_as_dict

    first: dict[str, ImageSpec] = {}
    for spec in specs:
        seen = first.setdefault(str(spec.reference), spec)
        if seen is spec or (seen.settings, seen.dest) == (spec.settings, spec.dest):
            continue
        a, b = settings_as_dict(seen.settings), settings_as_dict(spec.settings)
        # to:, tag_as:, tags_also: (as the bundle's annotations)
        a["destination"], b["destination"] = str(seen.dest or "none"), str(spec.dest or "none")
        diff = "; ".join(f"{k}: {b[k]} here, {a[k]} there" for k in a if a[k] != b[k])
        raise UsageError(
            f"{spec.where}: {spec.reference} is listed again (first at {seen.where}) with "
            f"other settings ({diff})",
            hint="a bundle holds one entry per reference: list it once, with the settings it "
                 "needs")


def _pull_options(args: argparse.Namespace, **kw) -> PullOptions:
    """PullOptions for `pull` and `lock` alike: what the flags choose beyond each image's
    settings (those are in _specs), so a lock records what a pull with the same flags does."""
    from mirror.artifacts import parse_types
    from mirror.pull import PullOptions

    return PullOptions(jobs=args.jobs, referrer_types=parse_types(args.referrer_type), **kw)


def _lock_path(args: argparse.Namespace) -> Path | None:
    from mirror.lockfile import default_lock_path

    return args.lock_file or default_lock_path(args.file)


def _source_client(t, cache, cfg: Config | None, args: argparse.Namespace):
    """The Client a pull, lock or sync reads its sources with: the cache's manifests (none
    without a cache), told what the lock file says each tag named where the cache does not
    know (so those tags too are asked about with a HEAD), and the registries whose referrers
    it may take from the cache."""
    from mirror.lockfile import source_digests
    from mirror.registry.client import Client
    from mirror.store.manifests import ManifestStore

    store = ManifestStore(cache) if cache else None
    if store is not None:
        for text, digest in source_digests(_lock_path(args)).items():
            try:
                ref = Reference.parse(text)
            except MirrorError:  # a hand-edited lock: only a hint, so nothing lost
                continue
            if ref.tag and not ref.digest and store.tag(ref.registry, ref.repository,
                                                         ref.tag) is None \
                    and store.get(digest) is not None:
                store.remember(ref.registry, ref.repository, ref.tag, digest)
    client = Client(t, store)
    client.cached_referrers = set(cfg.cached_referrers) if cfg else set()
    return client


async def _tag_rules(client, specs: list[ImageSpec], report: Report, progress,
                     blobs=None) -> list[ImageSpec]:
    """The images the tag rules choose (mirror.tagrules; --locked: what the lock recorded),
    in the report's `tag_rules`; `blobs`, the cache, keeps the configs `order: created`
    reads."""
    from mirror.tagrules import resolve_rules, resolved

    specs = await resolve_rules(client, specs, blobs, progress.warn)
    _refuse_conflicting_duplicates(specs)
    report.add(tag_rules=resolved(specs))
    return specs


def _rule_text(rule: dict) -> str:
    """A tag rule on one line, for --dry-run: `semver=">=1.2 <2" exclude=["-rc"]`."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in rule.items())


def _write_lock(args: argparse.Namespace, result, specs: list[ImageSpec]) -> Path | None:
    from mirror.lockfile import after_run
    from mirror.tagrules import resolved

    path = _lock_path(args)
    if path is None or getattr(args, "locked", False):
        return None
    lock = after_run(result, path, resolved(specs))
    if lock is None:
        return None
    lock.write(path)
    return path


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
            "retries": result.retries, "images": [asdict(r) for r in result.images],
            "waiting": _waiting(result.images)}


def _traffic(transport) -> dict:
    """The report's `requests` (per registry, by kind) and `rate_limit` (per registry, the
    last RateLimit headers it sent): empty before any request."""
    if transport is None:
        return {"requests": {}, "rate_limit": {}}
    return {"requests": transport.requests_report(),
            "rate_limit": transport.rate_limit_report()}


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


def check_run_files(args: argparse.Namespace) -> None:
    """Refuse (exit 2, before any work) a run whose outputs are one file, or one of them its
    input: the bundle written over images.yaml, a report over the lock file or the bundle."""
    from mirror.paths import check_distinct

    writes: list[tuple[str, Path]] = []
    reads: list[tuple[str, Path]] = []
    lock_flag = "--lock-file" if getattr(args, "lock_file", None) else "lock file"
    if args.command == "pull" and not args.dry_run:
        out = Path(args.output or str(DEFAULT_OUTPUT))
        writes += [("-o", out), ("the checksum file", out.with_name(out.name + ".sha256"))]
    lock = _lock_path(args) if args.command in ("pull", "sync", "lock") else None
    if lock is not None:
        if getattr(args, "locked", False):
            reads.append((lock_flag, lock))
        elif not getattr(args, "dry_run", False):
            writes.append((lock_flag, lock))
    if getattr(args, "report", None):
        writes.append(("--report", Path(args.report)))
    if getattr(args, "file", None):
        reads.append(("-f", Path(args.file)))
    if getattr(args, "base", None):
        reads.append(("--base", args.base))
    if getattr(args, "bundle", None):
        reads.append(("the bundle", args.bundle))
    if args.command == "inspect" and Path(args.target).exists():
        reads.append(("the bundle", Path(args.target)))
    for flag in ("keep", "unused_by"):
        reads += [(f"--{flag.replace('_', '-')}", p) for p in getattr(args, flag, None) or []]
    # -o against --base has its own message (mirror.incremental); a new lock over its base is fine: the
    # base is read before the lock is written
    check_distinct(writes, reads, allow=frozenset({("-o", "--base"), (lock_flag, "--base")}))


def _check_lock_path(args: argparse.Namespace) -> None:
    """The lock file a run will write, checked before any work as --report is."""
    path = _lock_path(args)
    if path is not None and not getattr(args, "locked", False):
        check_writable(path, "--lock-file" if args.lock_file else "lock file")


async def _pull(args: argparse.Namespace, progress, report: Report) -> int:
    from mirror.incremental import read_base
    from mirror.pull import pull
    from mirror.store.blobs import BlobStore, default_cache_dir
    from mirror.store.lock import RunLock

    report.add(**_pull_report(None), **_traffic(None), tag_rules=[])
    out = _output(args)
    specs, cfg = _specs(args)
    if not args.dry_run:
        _check_lock_path(args)
    compress = args.compress == "zstd" or (args.compress is None and
                                           out.name.lower().endswith(ZSTD_NAMES))
    cache = args.cache or default_cache_dir()
    opts = _pull_options(args, output=None if args.dry_run else out, compress=compress,
                         keep_going=args.keep_going, dry_run=args.dry_run,
                         volume_size=parse_size(args.volume_size) if args.volume_size else None,
                         **read_base(args.base, out, dry_run=args.dry_run))
    transport = transport_for(args, cfg, progress)
    try:
        with RunLock(Path(cache) / "lock", f"cache {cache}"), \
                _output_lock(out, dry_run=args.dry_run):
            store = BlobStore(cache)
            async with transport as t:
                client = _source_client(t, cache, cfg, args)
                specs = await _tag_rules(client, specs, report, progress, store)
                result = await pull(client, store, specs, opts, progress)
    except BaseException as e:  # the report says what was done before the error or signal
        done = getattr(e, "pull_result", None)
        if done is not None:
            fields = _pull_report(done)
            report.add(**fields)
            report.cut_short([fields["images"][i] for i in done.unfinished])
        raise
    finally:
        report.add(**_traffic(transport))
    report.add(**_pull_report(result))
    if not args.dry_run and result.bundle:
        lock = _write_lock(args, result, specs)
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
        return _partial(result.images, "the bundle is partial", progress, report)
    return 0


def _placement(result) -> list[dict] | None:
    """Per image, source -> target repository and tags (referrers left out)."""
    if result is None or not result.images:
        return None
    out: dict[tuple[str, str], list[str]] = {}
    for img in result.images:
        if img.referrer_of is None:
            tags = out.setdefault((img.name, img.repository), [])
            if img.tag:
                tags.append(img.tag)
    return [{"source": name, "repository": repo, "tags": tags}
            for (name, repo), tags in out.items()]


def _partial(images, rest: str, progress, report: Report) -> int:
    """Some images failed (--keep-going) or wait for a registry's rate limit: one line
    saying how many, also the report's error (exit 13 or 14 is not success); exit 14 when
    every image that failed waits, else 13."""
    failed = [r for r in images if r.error]
    waiting = _waiting(images)
    if waiting:
        others = len(failed) - len(waiting)
        line = (f"{len(waiting)} of {len(images)} image(s) wait for a registry's rate limit "
                f"(the next run takes them)" + (f", {others} failed" if others else "")
                + f"; {rest}")
    else:
        line = f"{len(failed)} of {len(images)} image(s) failed; {rest}"
    progress.warn(line)
    report.error = line
    return EXIT_RATE_LIMITED_PARTIAL if len(waiting) == len(failed) else EXIT_PARTIAL


def _waiting(images) -> list[str]:
    """The report's `waiting`: the images a registry's rate limit left for the next run."""
    return [r.reference for r in images if r.error_code == EXIT_RATE_LIMITED_PARTIAL]


async def _load(args: argparse.Namespace, progress, report: Report) -> int:
    from mirror.bundle.reader import Bundle
    from mirror.clientconfig_run import access_of, check_flags, write_for
    from mirror.load import LoadResult, load
    from mirror.registry.client import Client

    # None: not known (the load stopped before it could say)
    report.add(bundle=str(args.bundle), target=args.to, **_push_report(None),
               retries=0, dry_run=args.dry_run, would_push=[], client_config=None,
               placement=None, **_traffic(None))
    target = target_of(args, args.to)
    check_flags(args, 1)
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
        report.add(retries=transport.retries, **_traffic(transport))
        if result.started:  # what was done, also when the load failed or was stopped later
            report.add(**_push_report(result))
    report.add(would_push=result.dry_run, placement=_placement(result))
    if args.dry_run:
        for line in result.dry_run:
            print(line)
        return 0
    if not args.quiet:
        _print_pushed(result)
    if access is not None:
        write_for(args.write_client_config, result.images, target, access, args.no_fallback,
                  progress, report)
    progress.info(f"loaded {args.bundle}: {_push_summary(result)}")
    return 0


_PUSH_FIELDS = ("blobs_pushed", "blobs_mounted", "blobs_present", "bytes_pushed",
                "manifests_pushed", "manifests_present", "tags", "untagged")


def _push_report(result) -> dict:
    """What a push did (mirror.push.PushResult), for load's report and each of sync's
    targets; None for each when the push stopped before the target said what it holds."""
    return {k: getattr(result, k) if result is not None and result.started else None
            for k in _PUSH_FIELDS}


def _push_summary(result) -> str:
    return (f"{result.blobs_pushed} blob(s) pushed ({result.bytes_pushed} bytes), "
            f"{result.blobs_mounted} mounted, {result.blobs_present} already present, "
            f"{result.manifests_pushed} manifest(s) pushed ({result.manifests_present} "
            f"already there), {len(result.tags)} tag(s)")


def _print_pushed(result) -> None:
    for ref in [*result.tags, *result.untagged, *result.pinned]:  # tag or digest
        print(ref)


def _sync_report(result) -> dict:
    """The sync's part of the report: the images as a pull's, and per target what a load
    says; the same keys whether or not the sync got going."""
    if result is None or not result.planned:
        return {"partial": False, "images": [], "waiting": [], "targets": []}
    return {"partial": result.partial, "images": [asdict(r) for r in result.images],
            "waiting": _waiting(result.images),
            "targets": [{"target": f"{t.registry}/{t.prefix}".rstrip("/"),
                         **_push_report(done), "would_push": done.dry_run,
                         "placement": _placement(done)}
                        for t, done in result.targets]}


async def _sync(args: argparse.Namespace, progress, report: Report) -> int:
    from mirror.artifacts import parse_types
    from mirror.clientconfig_run import access_of, check_flags, write_for
    from mirror.store.blobs import BlobStore
    from mirror.store.lock import RunLock
    from mirror.sync import SyncOptions, SyncResult, sync

    report.add(**_sync_report(None), retries=0, dry_run=args.dry_run, **_traffic(None),
               tag_rules=[], client_config=None)
    targets = [target_of(args, t) for t in args.to]
    seen: set[tuple[str, str]] = set()
    for t in targets:
        if (t.registry, t.prefix) in seen:
            raise UsageError(f"--to {t.registry}/{t.prefix}".rstrip("/") + " is given twice: "
                             "each target is pushed to once")
        seen.add((t.registry, t.prefix))
    check_flags(args, len(targets))
    specs, cfg = _specs(args)
    if not args.dry_run:
        _check_lock_path(args)
    opts = SyncOptions(jobs=args.jobs, keep_going=args.keep_going, dry_run=args.dry_run,
                       merge=args.merge, referrer_types=parse_types(args.referrer_type))
    result = SyncResult()
    transport = transport_for(args, cfg, progress)
    try:
        with RunLock(Path(args.cache) / "lock", f"cache {args.cache}") if args.cache \
                else contextlib.nullcontext():
            async with transport as t:
                client = _source_client(t, args.cache, cfg, args)
                blobs = BlobStore(args.cache) if args.cache else None
                specs = await _tag_rules(client, specs, report, progress, blobs)
                await sync(client, specs, targets, opts, progress, result, blobs)
                access = await access_of(t, targets[0].registry) \
                    if args.write_client_config else None
    except BaseException:  # the images the sync did not finish carry its error
        fields = _sync_report(result)
        report.add(**fields)
        report.cut_short([e for e in fields["images"] if e["error"] is None])
        raise
    finally:
        report.add(retries=transport.retries, **_traffic(transport))
    report.add(**_sync_report(result))
    for target, done in result.targets:
        if args.dry_run:
            for line in done.dry_run:
                print(f"{target.registry}/{target.prefix}".rstrip("/") + f"\t{line}")
            continue
        if not args.quiet:
            _print_pushed(done)
        progress.info(f"synced to {target.registry}/{target.prefix}".rstrip("/") +
                      f": {_push_summary(done)}")
    if access is not None:  # for the images synced (--keep-going: those that resolved)
        target, done = result.targets[0]
        write_for(args.write_client_config, done.images, target, access, args.no_fallback,
                  progress, report)
    if not args.dry_run:
        lock = _write_lock(args, result, specs)
        if lock:
            progress.info(f"wrote {lock}")
    if result.partial:
        return _partial(result.images, "the others are synced", progress, report)
    return 0


async def _verify(args: argparse.Namespace, progress, report: Report) -> int:
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


async def _inspect(args: argparse.Namespace, progress, report: Report) -> int:
    from mirror.inspect import inspect_target

    text = await inspect_target(args, lambda: transport_for(args, None, progress),
                                note=progress.info)
    print(text)
    return 0


async def _lock(args: argparse.Namespace, progress, report: Report) -> int:
    from mirror.pull import pull
    from mirror.store.blobs import BlobStore, default_cache_dir

    args.locked = False
    report.add(tag_rules=[])
    specs, cfg = _specs(args)
    if _lock_path(args) is None:
        raise UsageError("mirror lock needs -f images.yaml or --lock-file")
    _check_lock_path(args)
    from mirror.store.lock import RunLock

    cache = args.cache or default_cache_dir()
    with RunLock(Path(cache) / "lock", f"cache {cache}"):
        store = BlobStore(cache)
        async with transport_for(args, cfg, progress) as t:
            client = _source_client(t, cache, cfg, args)
            specs = await _tag_rules(client, specs, report, progress, store)
            result = await pull(client, store, specs,
                                _pull_options(args, output=None, dry_run=True), progress)
    result.bundle = Path("-")  # resolved: write the lock
    args.dry_run = False
    path = _write_lock(args, result, specs)
    if not args.quiet:  # -q: nothing at all on success
        print(path)
    if result.partial:  # a registry's rate limit left images waiting: not success
        return _partial(result.images, f"{path} keeps their last entries", progress, report)
    return 0


def _parse_age(text: str) -> float:
    """`30d`, `12h`, `90m`, `2w`, `3600s`: finite and not negative (a negative age would call
    every blob too old), with a unit (`30` meant as days would remove what 30 seconds left
    unused)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        age = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        age = math.nan
    else:
        if text[-1] not in units and math.isfinite(age) and age >= 0:
            raise UsageError(f"--older-than {text}: no unit",
                             hint=f"give one of s, m, h, d, w: e.g. {text}d for {text} days")
    if not math.isfinite(age) or age < 0:
        raise UsageError(f"invalid age {text!r}: e.g. 30d, 12h")
    return age


def _parse_size(text: str) -> int:
    """`50G`, `500M`, `1T`, bytes: finite and not negative (a negative size would remove every
    blob)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        size = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(int(t))
    except (ValueError, IndexError):
        size = math.nan
    if not math.isfinite(size) or size < 0:
        raise UsageError(f"invalid size {text!r}: e.g. 50G, 500M")
    return int(size)


async def _cache(args: argparse.Namespace, progress, report: Report) -> int:
    from mirror.lockfile import Lock
    from mirror.store.blobs import BlobStore, default_cache_dir
    from mirror.store.lock import RunLock

    if not args.older_than and not args.max_size and not args.unused_by:
        raise UsageError("cache prune needs --older-than, --max-size or --unused-by")
    older_than = _parse_age(args.older_than) if args.older_than else None
    max_bytes = _parse_size(args.max_size) if args.max_size else None
    cache = args.cache or default_cache_dir()
    report.add(cache=str(cache), blobs_removed=None, bytes_freed=None, bytes_left=None)
    why = BlobStore.not_a_cache(cache)  # a typo must not make a cache there (nor prune one)
    if why == "no such directory" and not args.cache:
        # the default cache before the first pull (a prune job on a new machine): nothing to do
        report.add(blobs_removed=0, bytes_freed=0, bytes_left=0)
        if not args.quiet:
            print(f"removed 0 blob(s), 0 bytes: no cache at {cache} yet")
        return 0
    if why:
        raise UsageError(f"{'--cache' if args.cache else 'cache'} {cache}: {why}",
                         hint="give the directory `mirror pull --cache` used")
    keep: set[str] = set()
    for lock in args.keep:
        keep |= set(Lock.read(lock).blobs)
    used: set[str] | None = None
    for lock in args.unused_by:
        used = (used or set()) | set(Lock.read(lock).blobs)
    with RunLock(Path(cache) / "lock", f"cache {cache}"):
        done = BlobStore(cache).prune(
            older_than=older_than, max_bytes=max_bytes, keep=keep, unused_by=used)
    report.add(blobs_removed=done.removed, bytes_freed=done.freed, bytes_left=done.left)
    if not args.quiet:
        print(f"removed {done.removed} blob(s), {done.freed} bytes from {cache}")
    if max_bytes is not None and done.left > max_bytes:
        progress.warn(f"{cache} still holds {done.left} bytes, over --max-size {max_bytes}: "
                      f"{done.kept} bytes are blobs --keep protects")
    return 0


async def _client_config(args: argparse.Namespace, progress, report: Report) -> int:
    from mirror.clientconfig_run import client_config

    return await client_config(args, progress, report)


async def _serve(args: argparse.Namespace, progress, report: Report) -> int:
    from mirror.serve.command import serve_bundle

    return await serve_bundle(args, progress, report)


COMMANDS = {"pull": _pull, "sync": _sync, "load": _load, "verify": _verify, "inspect": _inspect,
            "lock": _lock, "cache": _cache, "client-config": _client_config, "serve": _serve}
