"""Semantic versions of image tags, and ranges over them: the `semver:` and `latest:` of a
tag rule (mirror.tagrules).

Our own, small, on purpose: `packaging` orders PEP 440 versions (`1.2.0rc1`, not semver's
`1.2.0-rc.1`, and it reads `1.2.0-rc1` as a post-release); python-semver parses only full
`X.Y.Z` (image tags are often `v1.2` or `3.20`) and has no range grammar beyond one comparison;
the node-semver ports are not kept up. What a tag rule needs is a few dozen lines: this.

Versions: `[v]MAJOR[.MINOR[.PATCH]][-PRERELEASE][+BUILD]` (missing parts are 0, so `3.20` is
3.20.0); ordered as semver 2.0.0 says: a pre-release below its release, its dot-separated
identifiers compared numerically when numeric, numeric below alphanumeric; build metadata is
not ordered (`1.0.0+a` and `1.0.0+b` are equal).

Ranges: comparators separated by spaces all hold (AND); `||` separates alternatives (OR).
A comparator is `OP VERSION`, OP one of `>=`, `>`, `<=`, `<`, `=`, `~`, `^`, or none:
    1.2.3    =1.2.3   exactly that version
    1.2      =1.2     any 1.2.x                (>=1.2.0 <1.3.0)
    1                 any 1.x.y                (>=1.0.0 <2.0.0)
    ~1.2.3            patch releases           (>=1.2.3 <1.3.0)
    ^1.2.3            no breaking change       (>=1.2.3 <2.0.0; ^0.2.3: <0.3.0)
    >=1.2 <2          1.2.0 and up, below 2.0.0
    *                 any version
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_VERSION = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?"
                      r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]+)?$")
_COMPARATOR = re.compile(r"^(>=|<=|>|<|=|~|\^)?\s*(.+)$")


@dataclass(frozen=True, order=False)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple[int | str, ...] = ()
    parts: int = 3  # how many of MAJOR.MINOR.PATCH were written (a range's `1.2` means 1.2.x)

    @classmethod
    def parse(cls, text: str) -> Version | None:
        """None when `text` is not a version."""
        m = _VERSION.match(text.strip())
        if not m:
            return None
        pre = tuple(int(p) if p.isdigit() else p for p in m.group(4).split(".")) \
            if m.group(4) else ()
        parts = 1 + (m.group(2) is not None) + (m.group(3) is not None)
        return cls(int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0), pre, parts)

    @property
    def prerelease(self) -> bool:
        return bool(self.pre)

    def key(self) -> tuple:
        """A sort key in semver order."""
        pre = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.pre)
        return (self.major, self.minor, self.patch, 0 if self.pre else 1, pre)


def _bump(v: Version, at: int) -> Version:
    """The lowest version above every version matching `v`'s first `at` parts."""
    if at <= 1:
        return Version(v.major + 1, 0, 0)
    if at == 2:
        return Version(v.major, v.minor + 1, 0)
    return Version(v.major, v.minor, v.patch + 1)


def _bounds(op: str, v: Version) -> list[tuple[str, Version]]:
    """A comparator as lower and upper bounds."""
    if op in (">=", ">", "<=", "<"):
        if op == ">" and v.parts < 3:  # >1.2 means above every 1.2.x
            return [(">=", _bump(v, v.parts))]
        if op == "<=" and v.parts < 3:
            return [("<", _bump(v, v.parts))]
        return [(op, v)]
    if op == "~":
        return [(">=", v), ("<", _bump(v, 2 if v.parts >= 2 else 1))]
    if op == "^":
        first = 1 if v.major else (2 if v.minor or v.parts < 3 else 3)
        return [(">=", v), ("<", _bump(v, first))]
    if v.parts == 3:  # `=` or none
        return [("=", v)]
    return [(">=", v), ("<", _bump(v, v.parts))]


@dataclass(frozen=True)
class Range:
    text: str
    alternatives: tuple[tuple[tuple[str, Version], ...], ...]

    @classmethod
    def parse(cls, text: str) -> Range:
        """Raise ValueError saying what part is not a comparator."""
        alts = []
        for alt in text.split("||"):
            bounds: list[tuple[str, Version]] = []
            # `>= 1.2` is one comparator: glue an operator to the version after it
            words = re.sub(r"(>=|<=|>|<|=|~|\^)\s+", r"\1", alt.strip()).split()
            if not words:
                raise ValueError(f"{text!r}: an empty range")
            for word in words:
                if word in ("*", "x", "X"):
                    continue
                m = _COMPARATOR.match(word)
                v = Version.parse(m.group(2)) if m else None
                if m is None or v is None:
                    raise ValueError(f"{text!r}: {word!r} is not a comparator (an operator "
                                     ">=, >, <=, <, =, ~ or ^ and a version such as 1.2.3)")
                bounds += _bounds(m.group(1) or "=", v)
            alts.append(tuple(bounds))
        return cls(text, tuple(alts))

    def __contains__(self, v: Version) -> bool:
        return any(all(_holds(v, op, b) for op, b in alt) for alt in self.alternatives)


def _holds(v: Version, op: str, bound: Version) -> bool:
    a, b = v.key(), bound.key()
    return {">=": a >= b, ">": a > b, "<=": a <= b, "<": a < b, "=": a == b}[op]
