"""The files a run reads and writes, named from its flags before any work: the bundle's
default name, the lock file's path, and the check that no output is written over another
file of the run. Light on purpose: cli.py and cli_args.py import it for every command (no
aiohttp, no yaml)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

DEFAULT_OUTPUT = Path("bundles/mirror.tar")


def lock_path(args: argparse.Namespace) -> Path | None:
    """The lock file of the run: --lock-file, else images.yaml's (`images.lock` beside it);
    None for a run given neither (nothing here imports mirror.lockfile)."""
    return args.lock_file or default_lock_path(args.file)


def default_lock_path(config: str | None) -> Path | None:
    if not config:
        return None
    p = Path(config)
    return p.with_name(p.stem + ".lock")


def check_lock_path(args: argparse.Namespace) -> None:
    """The lock file a run will write, checked before any work as --report is."""
    from mirror.paths import check_writable

    path = lock_path(args)
    if path is not None and not getattr(args, "locked", False):
        check_writable(path, "--lock-file" if args.lock_file else "lock file")


def lock_file_held(args: argparse.Namespace) -> contextlib.AbstractContextManager[object]:
    """Hold the lock file a run will write (`LOCKFILE.lock` beside it, as `OUT.lock` beside
    a bundle) from its start to its end: a pull, lock or sync with another cache writing the
    same images.lock meanwhile exits at once (exit 12), instead of the last one to finish
    leaving its images beside the other's bundle. A dry run or --locked writes none."""
    path = lock_path(args) if args.command in ("pull", "sync", "lock") else None
    if path is None or getattr(args, "dry_run", False) or \
            (args.command != "lock" and getattr(args, "locked", False)):
        return contextlib.nullcontext()
    from mirror.store.lock import RunLock

    check_lock_path(args)  # its own error (exit 2) first, not the lock's
    return RunLock(path.with_name(path.name + ".lock"), f"lock file {path}")


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
    lock = lock_path(args) if args.command in ("pull", "sync", "lock") else None
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
