"""Progress reporting: the library calls a Progress; the CLI picks how it is shown.

`NullProgress` is silent (library default). The CLI uses `mirror.cli_progress` to show tqdm
bars on a terminal and one plain line per image under cron.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def total(self, nbytes: int) -> None: ...
    def advanced(self, nbytes: int) -> None: ...
    def info(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def debug(self, text: str) -> None: ...


class NullProgress:
    def total(self, nbytes: int) -> None:
        pass

    def advanced(self, nbytes: int) -> None:
        pass

    def info(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        pass

    def debug(self, text: str) -> None:
        pass
