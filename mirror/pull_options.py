"""What a pull is asked to do beyond its images: the output and its form (compressed, in
parts), the base of an incremental bundle, concurrency and failure policy, the referrers'
kinds. Made from the command line by mirror.commands.pull_options; read by the pull engine
(mirror.pull), its planning (mirror.planning) and the bundle's layout (mirror.bundle.contents).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class PullOptions:
    output: Path | None
    compress: bool = False
    jobs: int = 4
    keep_going: bool = False
    dry_run: bool = False
    base_blobs: dict[str, int] | None = None  # incremental: blobs the base bundle carries
    base_digest: str | None = None
    base_name: str | None = None
    base_images: tuple[str, ...] = ()  # the references the base carried
    referrer_types: tuple[str, ...] = ()
    volume_size: int | None = None  # --volume-size: the bundle as parts (mirror.bundle.volumes)
