"""A bundle carried as parts (volumes) for media with a size limit: `OUT.001`, `OUT.002`, ...
each at most SIZE bytes, whose concatenation is byte for byte the bundle a pull without
volumes writes; `OUT.volumes.json` lists each part's name, size and sha256 and the whole
file's size and sha256; `OUT.sha256` is the whole file's, as for a single file, and
`OUT.parts.sha256` the parts' in sha256sum's format (`sha256sum -c` names a damaged part).

This module says what a set is: its files' names, `--volume-size` (`parse_size`), the sidecar
(`VolumeSet.to_json`) and `find()`, which reads it back from the first part, the sidecar, or
the base name when only the parts exist. The writers (mirror.bundle.assembler,
mirror.bundle.writer) hand the finished file to mirror.bundle.publish, which cuts it into
parts and names them; the readers open a bundle through mirror.bundle.volumefile (one
readable, seekable file over the parts), so they need no knowledge of parts;
mirror.bundle.volumecheck says which parts are missing, cut short, damaged or extra.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from mirror.errors import BundleError, UsageError

SIDECAR = ".volumes.json"
PARTS_SUMS = ".parts.sha256"
CHUNK = 1 << 20
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
PRESETS = {
    "fat32": (4 << 30) - 1,  # FAT32's largest file: 4 GiB - 1 byte
    "dvd": 4_700_000_000,  # a single-layer DVD±R
    "bd25": 25_000_000_000,  # a single-layer BD-R
}
_MIN = 64 << 10  # a part smaller than this is a mistake (a unit left off), not a medium
_PART = re.compile(r"\.(\d{3,})$")


def parse_size(text: str) -> int:
    """`--volume-size`: bytes, with k, M, G or T (1024-based: 4G is 4 GiB; a B or iB after
    the unit is allowed), or a preset (fat32, dvd, bd25). Raises UsageError."""
    t = text.strip().lower()
    if t in PRESETS:
        return PRESETS[t]
    m = re.fullmatch(r"(\d+)\s*([kmgt]?)(?:i?b)?", t)
    if m is None:
        raise UsageError(f"--volume-size {text!r}: not a size (bytes, or a number with k, M, "
                         f"G or T, 1024-based; or one of {', '.join(PRESETS)})")
    size = int(m.group(1)) * _UNITS[m.group(2)]
    if size < _MIN:
        raise UsageError(f"--volume-size {text!r}: {size} bytes is below the least a part may "
                         f"be ({_MIN} bytes, 64k)")
    return size


def part_path(out: Path, i: int) -> Path:
    return out.with_name(f"{out.name}.{i:03d}")


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + SIDECAR)


@dataclass(frozen=True, slots=True)
class Part:
    path: Path
    size: int
    sha256: str  # hex


@dataclass(frozen=True, slots=True)
class VolumeSet:
    base: Path  # the bundle's own name (site.tar): what `cat site.tar.0* > site.tar` makes
    volume_size: int
    size: int
    sha256: str  # hex, of the whole
    parts: tuple[Part, ...]

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.base)

    def to_json(self) -> bytes:
        return (json.dumps({
            "name": self.base.name, "volumeSize": self.volume_size, "size": self.size,
            "sha256": self.sha256,
            "parts": [{"name": p.path.name, "size": p.size, "sha256": p.sha256}
                      for p in self.parts]}, indent=2) + "\n").encode()


def base_of(path: Path) -> Path | None:
    """The base name of a set that `path` names (the sidecar, a part, or the base itself when
    only the parts exist); None when `path` is a plain file or names no set."""
    path = Path(path)
    if path.name.endswith(SIDECAR):
        return path.with_name(path.name[: -len(SIDECAR)])
    m = _PART.search(path.name)
    if m is not None:
        base = path.with_name(path.name[: m.start()])
        if own_bundle(path):
            return None  # night.001 beside night.002, each with its .sha256
        if sidecar_path(base).exists() or not path.exists() or part_path(base, 2).exists():
            return base  # (without its sidecar: find() says to copy it)
        return None  # a file that only looks like a part (site.tar.001 alone, no .002)
    if not path.exists() and sidecar_path(path).exists():
        return path
    return None


def lone_part(path: Path) -> Path | None:
    """The sidecar a file named like a set's part (`NAME.NNN`) would need when it is all
    there is of the set: no other part, no sidecar and no .sha256 of its own beside it
    (base_of takes it for a plain file, which a bundle cut short would be too); None
    otherwise. Said when it reads as a bundle cut short: a part alone is one."""
    m = _PART.search(path.name)
    if m is None or own_bundle(path) or base_of(path) is not None:
        return None
    return sidecar_path(path.with_name(path.name[: m.start()]))


def own_bundle(path: Path) -> bool:
    """A file named like a part that is a bundle of its own: it has its own .sha256, which
    `mirror pull` writes beside every bundle file and never beside a part."""
    return path.exists() and path.with_name(path.name + ".sha256").exists()


def find(path: Path) -> VolumeSet | None:
    """The set `path` names, read from its sidecar; None for a plain file. Raises
    BundleError when the sidecar is missing or unreadable."""
    base = base_of(path)
    if base is None:
        return None
    side = sidecar_path(base)
    try:
        doc = json.loads(side.read_bytes())
        parts = tuple(Part(base.with_name(p["name"]), int(p["size"]), str(p["sha256"]))
                      for p in doc["parts"])
        if any("/" in p.path.name for p in parts):
            raise ValueError
        if any(not p.path.name.startswith(base.name) for p in parts):
            raise _Renamed(parts[0].path.name.rsplit(".", 1)[0])
        return VolumeSet(base, int(doc["volumeSize"]), int(doc["size"]), str(doc["sha256"]),
                         parts)
    except FileNotFoundError:
        raise BundleError(f"{path}: a part of a set without its {side.name}, which lists the "
                          "parts: copy it too", hint=f"the sidecar is written beside "
                          f"{base.name}.001 by `mirror pull --volume-size`") from None
    except OSError as e:
        raise BundleError(f"{side}: cannot read: {e.strerror}") from None
    except _Renamed as e:
        raise BundleError(f"{side}: lists the parts of {e.name} ({e.name}.001, ...), not of "
                          f"{base.name}: the set was renamed; rename its files back ({e.name}.001, ..., "
                          f"{e.name}{SIDECAR})", hint="the names are written inside the "
                          "sidecars") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BundleError(f"{side}: not a valid list of parts") from None


class _Renamed(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def numbered(base: Path, partial: bool = False) -> list[Path]:
    """The files named as parts of `base` (`base.NNN`, with `partial` `base.NNN.partial`
    too), sorted; matched by name, not by a glob (a base name may hold `[`, `*`, `?`)."""
    pattern = re.compile(re.escape(base.name) + r"\.\d{3,}" + (r"(?:\.partial)?" if partial
                                                              else ""))
    try:
        return sorted(p for p in base.parent.iterdir() if pattern.fullmatch(p.name))
    except OSError:
        return []
