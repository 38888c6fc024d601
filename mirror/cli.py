"""The command line's entry point (mirror.cli:main): a command's run, its report, and the one
place that turns errors into exit codes; its flags are parsed by mirror.cli_args' parser.
Each command's run is a module of its own (COMMANDS), imported only when that command runs:
`mirror --version`, `--help` and a refused flag import no HTTP stack and no yaml
(tests/test_layers.py checks it)."""

from __future__ import annotations

import argparse
import errno
import gc
import importlib
import os
import sys
from pathlib import Path

from mirror import malloc, secrets
from mirror.cli_args import build_parser
from mirror.errors import EXIT_CODES, MirrorError
from mirror.netargs import check_net_flags
from mirror.report import Report
from mirror.report import check_path as check_report_path
from mirror.runfiles import check_run_files, lock_file_held

# commands that always talk to registries: see _run (`inspect` of a bundle imports no HTTP
# stack; of a registry's image, its transport starts the TLS context when it opens)
_TRANSPORT_COMMANDS = {"pull", "lock", "sync", "load", "client-config"}
# command -> (module, coroutine function(args, progress, report) -> exit code)
COMMANDS = {"pull": ("mirror.pull_run", "run_pull"), "lock": ("mirror.pull_run", "run_lock"),
            "sync": ("mirror.sync_run", "run_sync"), "load": ("mirror.load_run", "run_load"),
            "verify": ("mirror.verify_run", "run_verify"),
            "inspect": ("mirror.inspect_run", "run_inspect"),
            "cache": ("mirror.store.command", "run_cache"),
            "client-config": ("mirror.clientconfig_run", "client_config"),
            "serve": ("mirror.serve.command", "serve_bundle")}


_gc_was_on = True  # the cyclic collector when main began (a caller may have turned it off)


def main(argv: list[str] | None = None) -> int:
    global _gc_was_on
    _gc_was_on = gc.isenabled()
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    gc.disable()  # through the command's imports: see _settle_gc
    from mirror.signals import hold, ignore_held, put_back

    hold()  # a stop before the run's task exists waits for it (mirror.signals)
    try:
        code = _main(argv)
    finally:
        # a caller that goes on (argv given: the tests) gets its handlers back; the command
        # line's own run (argv None: the console script, -m) exits next, and a stop while
        # the interpreter exits (12 ms: threads joined, modules torn down) is ignored: it
        # killed a run that was over, its report written (exit -2 or -15, the report's 0)
        if argv is not None:
            put_back()
        else:
            ignore_held()
        # the collector as found, for a caller that goes on (the tests, argv given): its
        # threshold, and none of its objects left frozen by _settle_gc. The command line's
        # own run (argv None: the console script, -m) exits next: left frozen, the
        # interpreter's last collection does not walk them (30 ms of CPU)
        gc.set_threshold(*threshold)
        if not frozen and argv is not None:
            gc.unfreeze()
        if _gc_was_on:
            gc.enable()
    if argv is None:
        _leave(code)
    return code


def _leave(code: int) -> None:
    """The command line's run is over, its report written: exit now, without Python's
    finalization (its modules and their objects torn down one by one, which nothing of ours
    needs: 17-30 ms of a rerun with nothing new at 400 images). What the interpreter's exit
    would do that matters is done first: stdout and stderr flushed, every job queued on the
    I/O pools run and every thread that is not a daemon joined. Returns, for Python's own
    exit, only when stdout cannot be flushed (a full disk: exit 120, as before)."""
    import threading

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    iowork = sys.modules.get("mirror.store.iowork")
    if iowork is not None:
        iowork.finish_pools()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    os._exit(code)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_CODES["usage"]
    path = Path(args.report) if getattr(args, "report", None) else None
    if path is not None:
        try:  # before any work: a report that cannot be written fails the run now
            check_report_path(path)
        except MirrorError as e:
            print(f"mirror: error: {secrets.redact(str(e))}", file=sys.stderr)
            return e.exit_code
    try:  # before any work: flags out of range; a run writing one of its files over another
        check_net_flags(args)
        check_run_files(args)
    except MirrorError as e:
        print(f"mirror: error: {secrets.redact(str(e))}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {secrets.redact(e.hint)}", file=sys.stderr)
        return e.exit_code  # and no report: it could be the very file it would replace
    # a command with an action (`cache prune`) is named whole, as it was typed
    action = getattr(args, f"{args.command}_command", None)
    report = Report(path, f"{args.command} {action}" if action else args.command)
    code, error = _run(args, report)
    try:
        report.write(code, error)
    except MirrorError as e:
        print(f"mirror: error: {secrets.redact(str(e))}", file=sys.stderr)
        return code or e.exit_code
    return code


def _run(args: argparse.Namespace, report: Report) -> tuple[int, str | None]:
    """Run the command: its exit code, and the error line printed (None on success)."""
    import asyncio

    from mirror.cli_progress import make_progress
    from mirror.signals import Terminated, hold, release_sigint, run_stoppable

    progress = make_progress(quiet=args.quiet, verbose=args.verbose, desc=args.command)
    if args.command == "pull":  # its receive path; a load's reads are another story
        malloc.tune()
    if args.command in _TRANSPORT_COMMANDS:
        # the system's CAs load in a thread (OpenSSL lets go of the GIL) while the command's
        # modules import and it reads its inputs: the first request (an HTTPS try, even to
        # a registry that speaks plain HTTP) does not wait for them. aiohttp first (this
        # import), so that its import's SSL_CERT_FILE trick (tls.py) is over when they load
        from mirror.registry import tls

        tls.prepare()
    try:
        module, name = COMMANDS[args.command]
        run = getattr(importlib.import_module(module), name)
        _settle_gc()
        with lock_file_held(args):
            release_sigint()
            try:
                code = asyncio.run(run_stoppable(run(args, progress, report)))
            finally:  # the run is over: a stop from here on is held, unheeded, so that
                hold()  # its report is written and its exit code is its own
        return code, None
    except MirrorError as e:
        _close(progress)
        print(f"mirror: error: {secrets.redact(str(e))}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {secrets.redact(e.hint)}", file=sys.stderr)
        return e.exit_code, secrets.redact(str(e))
    except BrokenPipeError as e:
        if not _stdout_gone():
            return _os_error(progress, e, args)
        # `mirror inspect X | head`: the reader has what it wanted; say nothing, and keep
        # the interpreter from failing to flush stdout on the way out
        _close(progress)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CODES["stdout-closed"], "stdout closed"
    except OSError as e:  # a full disk, a read-only or missing directory: one line, no trace
        return _os_error(progress, e, args)
    except (KeyboardInterrupt, Terminated) as e:
        _close(progress)
        name = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        print(f"mirror: interrupted ({name}){_AFTER_INTERRUPT.get(args.command, '')}",
              file=sys.stderr)
        code = EXIT_CODES["terminated" if isinstance(e, Terminated) else "interrupted"]
        return code, f"interrupted ({name})"
    finally:
        _close(progress)


def _settle_gc() -> None:
    """The objects the imports made live as long as the process: the cyclic collector is
    off while they are made (main), as it found nothing to free there but walked them in
    60 collections (9 ms of a rerun's start); gc.freeze() then stops it walking them again
    at every collection, and a first generation of 10,000 (700 by default) lets a run's
    descriptors settle before it looks. The run itself makes few cycles (its objects are
    freed by reference counting). A warm rerun of 400 images spent 60-100 ms in 151
    collections; now 8-16 ms in 2 or 3."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    if _gc_was_on:
        gc.enable()


_AFTER_INTERRUPT = {  # what an interrupted run leaves, and what the next one does
    "pull": "; finished blobs are kept, partial ones resume next run",
    "load": "; blobs pushed so far stay, the next load skips them; tags are pushed last, "
            "so none names an incomplete image",
    "serve": "; stopped serving",
}


def _os_error(progress, e: OSError, args: argparse.Namespace) -> tuple[int, str]:
    _close(progress)
    where = f"{e.filename}: " if e.filename else ""
    line = secrets.redact(f"{where}{e.strerror or e}")
    print(f"mirror: error: {line}", file=sys.stderr)
    if e.errno == errno.EFBIG and getattr(args, "volume_size", None):  # FAT32's 4 GiB - 1
        print("  hint: the file system (or `ulimit -f`) limits a file's size; a pull writes "
              "the whole bundle before --volume-size cuts it into parts: write it (-o) to a "
              "file system without the limit, then copy the parts to the medium",
              file=sys.stderr)
    return EXIT_CODES["error"], line


def _stdout_gone() -> bool:
    """Our stdout is a pipe whose reader has closed it (poll says POLLERR)."""
    try:
        import select

        p = select.poll()
        p.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in p.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _close(progress) -> None:
    close = getattr(progress, "close", None)
    if close:
        close()
