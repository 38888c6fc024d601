"""`--report FILE.json`: what a monitor reads after a run, whatever its outcome.

The path is checked before any work (a report that cannot be written must not be found out
after a night's pull; a missing directory is made, as -o makes the bundle's); the commands add what they did to `Report.details` as they go, and
`mirror.cli` writes the file once, with the run's exit code and error line, on success, on
any error and on SIGINT/SIGTERM. The file is replaced atomically (a temporary file beside it,
then a rename): a monitor reads the old report or the new one, never half of one.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mirror import secrets
from mirror.paths import check_writable, write_atomic


def check_path(path: Path) -> None:
    """Make the report's directory if missing (as -o does the bundle's); refuse (UsageError,
    exit 2) a report path that is a directory or whose directory cannot be written."""
    check_writable(path, "--report")


class Report:
    """One run's report; `path` None: no --report given, nothing is written."""

    def __init__(self, path: Path | None, command: str) -> None:
        self.path = path
        self.command = command
        self.details: dict[str, Any] = {}
        self.unfinished: list[dict[str, Any]] = []
        self.error: str | None = None  # a run that ends without an error line (exit 13): why
        self._later: dict[str, Callable[[], list[dict[str, Any]]]] = {}

    def add(self, **fields: Any) -> None:
        self.details.update(fields)
        for key in fields:
            self._later.pop(key, None)

    def add_later(self, key: str, make: Callable[[], list[dict[str, Any]]]) -> None:
        """`key`'s entries (a run's images as given), made only should the report be written
        before `add` gives the run's own, and then all cut short: 2,000 images' entries held
        through a pull were 1.5 MiB that only a run stopped early writes."""
        self.details.pop(key, None)
        self._later[key] = make

    def entries(self, key: str) -> list[dict[str, Any]]:
        """`key`'s entries as they stand: those given with `add_later` made now (a pull
        stopped at its tag rules puts the images it planned meanwhile among them)."""
        make = self._later.pop(key, None)
        if make is not None:
            self.details[key] = make()
        entries: list[dict[str, Any]] = self.details[key]
        return entries

    def cut_short(self, entries: list[dict[str, Any]]) -> None:
        """Entries of `details` (a pull's images) that the run stopped before finishing:
        written with the run's error line and exit code (an interrupted image says so)."""
        self.unfinished = entries

    def write(self, exit_code: int, error: str | None) -> None:
        if self.path is None:
            return
        error = error or (self.error if exit_code else None)
        for key, make in self._later.items():
            self.details[key] = self.unfinished = make()
        self._later.clear()
        for entry in self.unfinished if error else []:
            if entry.get("error") is None:
                entry["error"], entry["error_code"] = error, exit_code
        doc: dict[str, Any] = {"command": self.command, "error": error,
                               "exit_code": exit_code, **self.details}
        write_atomic(self.path, to_text(doc), "the report")


_ENCODE = json.JSONEncoder(default=str).encode  # json's C encoder (indent= is Python's)


def _redacted(value: Any, escaped: list[str]) -> str:
    """`value`'s JSON with every secret the run holds blanked out: each string looked at, as
    JSON first (a Path, a tuple). A piece at a time, as the report is written: the whole
    document redacted at once was the same 7.5 MiB at 2,000 images as made whole, for every
    run with credentials. JSON escapes a string a character at a time, so a string holding a
    secret holds its escaped form (`escaped`: each secret's, made once per report): a piece
    without one is written as it was encoded."""
    text = _ENCODE(value)
    if not any(s in text for s in escaped):
        return text
    return _ENCODE(secrets.redact_all(json.loads(text)))


def to_text(doc: dict[str, Any]) -> Iterator[bytes]:
    """The report's JSON, in pieces written one after another: a key of the document per
    line, and an entry of a list of objects (the images, their conversions) per line, so
    `grep` finds an image's whole entry; the same data as json.dumps(doc, indent=2), at the
    C encoder's speed (a 400-image report was 8 ms of the run's end with indent=2, 2 ms so).
    A piece per entry: 2,000 images' report made whole (their texts, the join, the document
    and its bytes) was 7.5 MiB of heap at the end of a run, the file is 1.9 MiB."""
    escaped = [_ENCODE(s)[1:-1] for s in secrets.held()]
    encode = functools.partial(_redacted, escaped=escaped) if escaped else _ENCODE
    yield b"{\n"
    for n, (key, value) in enumerate(doc.items()):
        head = ("" if n == 0 else ",\n") + f"  {encode(key)}: "
        if isinstance(value, list | tuple) and value and all(isinstance(v, dict) for v in value):
            yield (head + "[\n    ").encode()
            for i, v in enumerate(value):
                yield (("" if i == 0 else ",\n    ") + encode(v)).encode()
            yield b"\n  ]"
        else:
            yield (head + encode(value)).encode()
    yield b"\n}\n"
