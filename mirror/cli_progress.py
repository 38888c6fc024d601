"""How progress is shown: tqdm bars on a terminal, plain timestamped lines under cron."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from mirror import secrets

if TYPE_CHECKING:  # imported where a bar is made: a run without one never loads tqdm
    from tqdm import tqdm


class LineProgress:
    """One line per image and per warning; no bars (cron mail stays readable)."""

    def __init__(self, stream: TextIO = sys.stderr, *, quiet: bool = False,
                 verbose: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self.verbose = verbose

    def _line(self, text: str) -> None:
        text = secrets.redact(text)
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}", file=self.stream, flush=True)

    def total(self, nbytes: int) -> None:
        pass

    def advanced(self, nbytes: int) -> None:
        pass

    def info(self, text: str) -> None:
        if not self.quiet:
            self._line(text)

    def warn(self, text: str) -> None:
        self._line(f"warning: {text}")

    def debug(self, text: str) -> None:
        if self.verbose:
            self._line(text)


class TqdmProgress(LineProgress):
    """A byte counter bar; messages are printed above it."""

    def __init__(self, stream: TextIO = sys.stderr, *, quiet: bool = False,
                 verbose: bool = False, desc: str = "") -> None:
        super().__init__(stream, quiet=quiet, verbose=verbose)
        from tqdm import tqdm

        self.bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                        file=stream, dynamic_ncols=True, leave=False)
        # what a command prints on stdout (the bundle and its digest, say) goes above the
        # bar, a whole line at a time, not onto the bar's line when both are the terminal
        self._stdout = sys.stdout
        sys.stdout = _AboveTheBar(self.bar, sys.stdout)

    def total(self, nbytes: int) -> None:
        self.bar.total = (self.bar.total or 0) + nbytes
        self.bar.refresh()

    def advanced(self, nbytes: int) -> None:
        self.bar.update(nbytes)

    def _line(self, text: str) -> None:
        self.bar.write(secrets.redact(text), file=self.stream)

    def close(self) -> None:
        if isinstance(sys.stdout, _AboveTheBar):
            sys.stdout.flush()
            sys.stdout = self._stdout
        self.bar.refresh()  # where it got to (tqdm draws at most every 0.1 s), then cleared
        self.bar.close()


class _AboveTheBar:
    """sys.stdout while a bar is shown: whole lines, each written with the bar cleared."""

    def __init__(self, bar: tqdm[Any], real: TextIO) -> None:
        self.bar = bar
        self.real = real
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        if "\n" in self.pending:
            lines, _, self.pending = self.pending.rpartition("\n")
            self._above(lines + "\n")
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self._above(self.pending)
            self.pending = ""

    def _above(self, text: str) -> None:
        self.bar.clear()  # (on stderr, flushed) then the line, then the bar again below it
        self.real.write(text)
        self.real.flush()
        self.bar.refresh()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)  # fileno, isatty, encoding...


def make_progress(*, quiet: bool, verbose: bool, desc: str = "") -> LineProgress:
    if sys.stderr.isatty() and not quiet:
        return TqdmProgress(quiet=quiet, verbose=verbose, desc=desc)
    return LineProgress(quiet=quiet, verbose=verbose)
