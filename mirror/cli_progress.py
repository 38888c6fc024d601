"""How progress is shown: tqdm bars on a terminal, plain timestamped lines under cron."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class LineProgress:
    """One line per image and per warning; no bars (cron mail stays readable)."""

    def __init__(self, stream: TextIO = sys.stderr, *, quiet: bool = False,
                 verbose: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self.verbose = verbose

    def _line(self, text: str) -> None:
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

    def total(self, nbytes: int) -> None:
        self.bar.total = (self.bar.total or 0) + nbytes
        self.bar.refresh()

    def advanced(self, nbytes: int) -> None:
        self.bar.update(nbytes)

    def _line(self, text: str) -> None:
        self.bar.write(text, file=self.stream)

    def close(self) -> None:
        self.bar.close()


def make_progress(*, quiet: bool, verbose: bool, desc: str = "") -> LineProgress:
    if sys.stderr.isatty() and not quiet:
        return TqdmProgress(quiet=quiet, verbose=verbose, desc=desc)
    return LineProgress(quiet=quiet, verbose=verbose)
