"""SIGTERM (systemd stopping the unit, `timeout`, `kill`) handled like Ctrl-C.

asyncio.run already turns SIGINT into a cancellation of the main task, so every `finally`
and `except BaseException` on the way out runs: the bundle's `.partial` is removed, the cache
keeps its partial downloads for the next run, the locks are released. `run_stoppable` does
the same for SIGTERM and then raises `Terminated`, which `mirror.cli` turns into exit 143.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Terminated(BaseException):
    """The run was stopped by SIGTERM (after the same cleanup as Ctrl-C)."""


async def run_stoppable(aw: Awaitable[T]) -> T:
    """Await `aw` in the current (main) task; a SIGTERM cancels it, then raises Terminated.
    A second SIGTERM while cleaning up is ignored (the first one is being honoured)."""
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
    try:
        return await aw
    except asyncio.CancelledError:
        if got and task.uncancel() == 0:
            raise Terminated() from None
        raise
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGTERM)
