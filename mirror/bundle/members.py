"""What the bundle reader finds, as records of their own: a member of the tar or layout
directory (Member), and what a plan needs of a bundle (Contents). A leaf module: the reader and
the readers of other formats it calls (a layout directory, a docker-archive) all use them
without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mirror.bundle.layout import Inventory
from mirror.manifest import RawManifest


@dataclass
class Member:
    name: str
    size: int
    offset: int | None  # data offset in a plain tar; None in a stream
    path: Path | None = None  # the file, in a layout directory (offset 0)


@dataclass
class Contents:
    """What a plan needs: the layout files, every manifest reachable from index.json, and the
    blob members present (complete for a plain tar; for a stream, from the whole scan)."""

    index: dict
    inventory: Inventory | None
    manifests: dict[str, RawManifest] = field(default_factory=dict)
    members: dict[str, int] = field(default_factory=dict)  # digest -> size
    complete_members: bool = True
    configs: dict[str, bytes] = field(default_factory=dict)  # scan(configs=True) of a stream
    notes: list[str] = field(default_factory=list)  # what a reader of another format changed
    docker: bytes | None = None  # manifest.json beside index.json (Docker's save format)
