"""SIGTERM (systemd stopping the unit, `timeout`, `kill`) handled like Ctrl-C.

asyncio.run already turns SIGINT into a cancellation of the main task, so every `finally`
and `except BaseException` on the way out runs: the bundle's `.partial` is removed, the cache
keeps its partial downloads for the next run, the locks are released. `run_stoppable` does
the same for SIGTERM and then raises `Terminated`, which `mirror.cli` turns into exit 143.

Before the run's task exists (the flags read, the command's modules imported: half a second
of a start on a loaded machine) `hold` keeps both signals waiting instead: a Ctrl-C there was
a KeyboardInterrupt before the command had put its fields in the report (a report of
`command`, `error` and `exit_code` alone), and a SIGTERM killed the process with no report
at all. `run_stoppable` delivers what was held once its task can be cancelled, so the run
stops as one stopped later does. Once the task is over (asyncio.run closing its loop, the
report written) they are held again, and never delivered: the run is done, so its report is
written whole and the exit code is its own; a stop then was a traceback from inside the
report's writing, or a SIGTERM that killed the process before its report. Once main returns
to exit, `ignore_held` ignores them: Python's finalization would give them their default,
fatal action back.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Terminated(BaseException):
    """The run was stopped by SIGTERM (after the same cleanup as Ctrl-C)."""


_held: list[int] = []  # the signals `hold` kept waiting, for run_stoppable to deliver
_found: dict[int, Any] = {}  # the handlers `hold` replaced (SIGINT's: asyncio.run's meanwhile)
_DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


def _keep(signum: int, frame: Any) -> None:
    if signum not in _held:
        _held.append(signum)


def hold() -> None:
    """Keep SIGINT and SIGTERM waiting (recorded, not acted on) until `release_sigint` and
    `run_stoppable` take them over (`put_back` gives back the handlers found). Only a signal
    with its default handler (one ignored, as a shell leaves SIGINT to a background job,
    stays ignored), and only in the main thread, where signals are handled."""
    for sig, default in _DEFAULTS.items():
        try:
            if signal.getsignal(sig) is default:
                _found[sig] = signal.signal(sig, _keep)
        except ValueError:  # not the main thread
            break


def ignore_held() -> None:
    """The command line's run is over (its report written) and the interpreter exits next:
    the signals `hold` keeps waiting are ignored (SIG_IGN) from here on. As it finalizes,
    Python gives a signal with a Python handler (`_keep`) back its default action (SIG_DFL)
    before it tears the modules down, so a stop in those last milliseconds killed a finished
    run by its signal: the shell saw 130 (143) where the report said `exit_code: 0` (8 of 30
    SIGINTs sent 0-40 ms after a sync's report appeared). An ignored signal stays ignored
    to the end."""
    _swap({sig: signal.SIG_IGN for sig in _found})


def put_back() -> None:
    """The handlers `hold` found, back; what was held is dropped."""
    _swap(dict(_found))
    _found.clear()
    _held.clear()


def release_sigint() -> None:
    """SIGINT's own handler back, just before asyncio.run, which turns it into a
    cancellation of its main task only where it finds Python's default handler."""
    handler = _found.get(signal.SIGINT)
    if handler is not None:
        _held.extend(s for s in _swap({signal.SIGINT: handler}) if s not in _held)


def _swap(handlers: dict[int, Any], first: Callable[[], object] | None = None,
          blocked: frozenset[int] = frozenset()) -> list[int]:
    """Put `handlers` in place of `hold`'s (after `first`, when given), with the signals
    blocked meanwhile (theirs and `blocked`): a signal caught (in C) just before, whose
    Python handler had not run yet, would otherwise run the new one (a KeyboardInterrupt as
    the run ends, or before the run's task has begun); pthread_sigmask runs those first, in
    `hold`'s handler. Gives those that came while blocked, taken from the pending set
    (unheeded, unless the caller keeps them)."""
    sigs = set(handlers) | blocked
    if not sigs:
        return []
    came = []
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        if first is not None:
            first()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        while (info := signal.sigtimedwait(sigs - mask, 0)) is not None:  # not the
            came.append(info.si_signo)  # caller's: those it blocks stay pending for it
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return came


async def run_stoppable(aw: Awaitable[T]) -> T:
    """Await `aw` in the current (main) task; a SIGTERM cancels it, then raises Terminated.
    A second SIGTERM while cleaning up is ignored (the first one is being honoured)."""
    import asyncio  # here: `hold` runs as every command starts, before asyncio is needed

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    got: list[int] = []

    def on_term() -> None:
        if not got:
            got.append(signal.SIGTERM)
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_term)
        installed = True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, Windows
        installed = False
    if installed:  # what `hold` kept waiting: the run stops at its first await
        for sig in _held:
            if sig == signal.SIGTERM:
                on_term()
            else:
                signal.raise_signal(sig)  # asyncio.run's handler: it cancels this task
        _held.clear()
    try:
        result = await aw
        if got:  # a held SIGTERM's cancel that no await took (a run that never awaits, as
            task.uncancel()  # `cache prune`): still pending, it ended the task cancelled
            raise Terminated()
        return result
    except asyncio.CancelledError:
        if got and task.uncancel() == 0:
            raise Terminated() from None
        raise
    finally:
        if installed:
            _hold_again(loop)


def _hold_again(loop: Any) -> None:
    """The run's task is over: the signals main held are held again, unheeded, as the run
    ends (asyncio.run closing its loop, joining its executor's threads; the report). SIGINT
    was asyncio.run's until it returned: a KeyboardInterrupt for a run that had ended (exit
    130 after its bundle and lock file were written); asyncio.run leaves `_keep` in place
    (it puts its default back only over its own). Both blocked while the loop's SIGTERM
    handler goes and `_keep` comes back: no SIGTERM meets its default (fatal) between."""
    both = frozenset({signal.SIGTERM, signal.SIGINT})
    # held before the task (main); SIGINT then asyncio.run's
    _swap({sig: _keep for sig in both & _found.keys()},
          lambda: loop.remove_signal_handler(signal.SIGTERM), both)
