"""Platforms: parse, normalise and match as containerd does.

Both sides are normalised before comparing: arm64 == arm64/v8 == aarch64, x86_64 == amd64,
arm == arm/v7 == armhf, armel == arm/v6; arm/v6 is another platform than arm/v7.
Matching is exact on the normalised (os, architecture, variant), the policy REFERENCE.md 5.2
recommends for a mirror: the user gets what they asked for, not a compatible fallback.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mirror.errors import InvalidPlatform, NoMatchingPlatform

KNOWN_OS = {
    "linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos",
    "aix", "android", "ios", "js", "wasip1", "plan9", "dragonfly", "unknown",
}
KNOWN_ARCH = {
    "amd64", "386", "arm", "arm64", "ppc64le", "ppc64", "s390x", "riscv64", "mips", "mipsle",
    "mips64", "mips64le", "loong64", "wasm", "unknown",
}
_ARCH_ALIASES = {
    "x86_64": ("amd64", None), "x86-64": ("amd64", None), "i386": ("386", ""),
    "i686": ("386", ""), "aarch64": ("arm64", None), "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
}
_PART = re.compile(r"^[a-z0-9._-]+$")
_SEEN: dict[tuple[str, str, str, str], Platform] = {}  # Platform.from_dict's answers


def _norm(os_: str, arch: str, variant: str) -> tuple[str, str, str]:
    os_ = os_.lower()
    if os_ == "macos":
        os_ = "darwin"
    arch = arch.lower()
    variant = variant.lower()
    if arch in _ARCH_ALIASES:
        arch, forced = _ARCH_ALIASES[arch]
        if forced is not None:
            variant = forced
    if arch == "amd64" and variant == "v1" or arch == "arm64" and variant in ("8", "v8", "v8.0"):
        variant = ""
    elif arch == "arm64" and variant in ("9", "9.0", "v9.0"):
        variant = "v9"
    elif arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return os_, arch, variant


@functools.lru_cache(maxsize=256)
def _text(os_: str, arch: str, variant: str) -> str:
    """`os/arch[/variant]`, one string per platform (the keys of every image's platform
    digests)."""
    return f"{os_}/{arch}/{variant}" if variant else f"{os_}/{arch}"


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`os/arch[/variant]`, or a bare architecture (`aarch64`, `amd64`: Linux, as `uname -m`
        gives it); raise InvalidPlatform naming the text."""
        parts = text.strip().split("/")
        if len(parts) == 1 and parts[0] and _PART.match(parts[0].lower()):
            arch = parts[0].lower()
            if arch in KNOWN_ARCH - {"unknown"} or arch in _ARCH_ALIASES:
                parts = ["linux", parts[0]]
            elif arch in KNOWN_OS:
                raise InvalidPlatform(f"invalid platform {text!r}: an os without an architecture",
                                      hint=f"e.g. {arch}/amd64 or {arch}/arm64")
        if len(parts) not in (2, 3) or not all(p and _PART.match(p.lower()) for p in parts):
            raise InvalidPlatform(
                f"invalid platform {text!r}: expected os/arch[/variant] or an architecture, "
                "e.g. linux/arm64 or aarch64"
            )
        os_, arch, variant = _norm(parts[0], parts[1], parts[2] if len(parts) == 3 else "")
        if os_ not in KNOWN_OS:
            raise InvalidPlatform(f"unknown platform {text!r}: unknown os {parts[0]!r}",
                                  hint="e.g. linux/amd64, linux/arm64, linux/arm/v7, windows/amd64")
        if arch not in KNOWN_ARCH:
            raise InvalidPlatform(
                f"unknown platform {text!r}: unknown architecture {parts[1]!r}",
                hint="known: " + ", ".join(sorted(KNOWN_ARCH - {"unknown"})),
            )
        return cls(os_, arch, variant)

    @classmethod
    def from_dict(cls, d: Mapping[str, object] | None) -> Platform | None:
        if not isinstance(d, Mapping):
            return None
        key = (str(d.get("os", "") or ""), str(d.get("architecture", "") or ""),
               str(d.get("variant", "") or ""), str(d.get("os.version", "") or ""))
        known = _SEEN.get(key)
        if known is None:  # thousands of index entries name a handful of platforms: one each
            known = cls(*_norm(*key[:3]), key[3])
            if len(_SEEN) < 1024:
                _SEEN[key] = known
        return known

    @property
    def is_unknown(self) -> bool:
        """BuildKit attestation entries are unknown/unknown: never an image."""
        return self.os == "unknown" or self.architecture == "unknown"

    def matches(self, other: Platform) -> bool:
        """Exact match on the normalised triple (os.version is not part of the request)."""
        return (self.os, self.architecture, self.variant) == (
            other.os, other.architecture, other.variant)

    def __str__(self) -> str:
        return _text(self.os, self.architecture, self.variant)


class PlatformSelector:
    """What the user asked for: a list of platforms, or all of them."""

    def __init__(self, platforms: Iterable[Platform] = (), *, all_: bool = False) -> None:
        self.platforms = tuple(dict.fromkeys(platforms))
        self.all = all_ or not self.platforms

    @classmethod
    def parse(cls, values: Iterable[str]) -> PlatformSelector:
        """Accepts repeated and comma-separated values; `all` selects every platform."""
        values = list(values)
        items = [v.strip() for value in values for v in str(value).split(",") if v.strip()]
        if values and not items:  # `--platform "$PLATFORMS"` with the variable empty
            raise InvalidPlatform(
                f"no platform in {', '.join(repr(str(v)) for v in values)}: give "
                "os/arch[/variant] (e.g. linux/arm64), or 'all' for every platform")
        alls = [v for v in items if v.lower() == "all"]
        if alls and len(items) > len(alls):  # `all,linux/amd64`: which one was meant?
            others = ", ".join(v for v in items if v.lower() != "all")
            raise InvalidPlatform(
                f"'all' together with {others}: give 'all' for every platform, or the "
                "platforms alone")
        if not items or alls:
            return cls(all_=True)
        return cls(Platform.parse(v) for v in items)

    def wants(self, p: Platform | None) -> bool:
        if p is None:
            return self.all
        if p.is_unknown:
            return False
        return self.all or any(want.matches(p) for want in self.platforms)

    def __eq__(self, other: object) -> bool:
        """The same set of platforms, in any order (`linux/arm64,linux/amd64` is
        `[linux/amd64, aarch64]`): the order never changes what is selected."""
        if not isinstance(other, PlatformSelector):
            return NotImplemented
        return (self.all, frozenset(self.platforms)) == (other.all, frozenset(other.platforms))

    def __hash__(self) -> int:
        return hash((self.all, frozenset(self.platforms)))

    def __str__(self) -> str:
        return "all" if self.all else ",".join(str(p) for p in self.platforms)


def no_matching_manifest(name: str, wanted: PlatformSelector, available: Iterable[str], *,
                         hint: str, holder: str = "the image has") -> NoMatchingPlatform:
    """The exit-8 error of pull and inspect: one line naming the image (or bundle) and the
    platforms it does have; `.available` keeps that list for a caller that gathers several."""
    have = list(dict.fromkeys(available))
    return NoMatchingPlatform(
        f"{name}: no matching manifest for {wanted} ({holder}: {', '.join(have) or 'none'})",
        hint=hint, available=have)
