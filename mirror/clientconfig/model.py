"""The client configuration's model: a loaded image's mapping (its source as the clients name
it, where it landed), how the clients reach a target, what a client cannot express and why,
and the files; `mappings` makes the mappings from what a load pushed."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from mirror.errors import InvalidReference
from mirror.reference import Reference, is_bare_tag


@dataclass(frozen=True)
class Mapping:
    """One loaded image: `source` as the clients name it, and where it landed."""

    source: Reference
    registry: str  # target host[:port]
    repository: str  # target repository
    tags: tuple[str, ...] = field(default=(), compare=False)  # the tags it got there
    mirror: int = field(default=0, compare=False)  # which target (--to, in order) it is in
    # the digest of its manifest there (the source's, unless the pull filtered, converted
    # or rewrote it)
    digest: str | None = field(default=None, compare=False)

    @property
    def tag(self) -> str | None:
        """The target tag to name for it: the source's when it got it (else the first it
        got: images.yaml `tag_as:`); None for an image pinned by digest."""
        if not self.source.tag or not self.tags or self.source.tag in self.tags:
            return self.source.tag
        return self.tags[0]

    @property
    def target(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def pulled_as(self) -> str:
        """The name to pull it by at the target: its tag there and the digest it has there
        (for a source pinned by digest)."""
        return self.target + (f":{self.tag}" if self.tag else "") + (
            f"@{self.digest or self.source.digest}" if self.source.digest else "")

    @property
    def prefix(self) -> str | None:
        """What the target puts before the source path (`` for none), or None when the target
        repository is not the source path under a prefix (a rewrite of the path itself)."""
        src = self.source.repository
        if self.repository == src:
            return ""
        if self.repository.endswith("/" + src):
            return self.repository[: -len(src) - 1]
        return None


@dataclass(frozen=True)
class Access:
    """How clients reach the target: its scheme (what the load found it speaks), whether
    its certificate is not to be verified, and the CA file mirror was given for it."""

    scheme: str = "https"
    skip_verify: bool = False
    ca_file: str | None = None
    auth: bool = False  # the target asked for credentials (mirror never writes them)

    @property
    def insecure(self) -> bool:
        return self.scheme == "http" or self.skip_verify


@dataclass(frozen=True)
class LeftOut:
    client: str  # containerd, k3s, containers, openshift, docker, or "all"
    source: str
    target: str
    reason: str

    def line(self) -> str:
        return f"{self.client}: {self.source} -> {self.target} not written: {self.reason}"


@dataclass
class ClientConfig:
    files: dict[str, str] = field(default_factory=dict)  # path under DIR -> text
    left_out: list[LeftOut] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what a client needs besides its file


def mappings(images: Iterable[tuple[str | None, str, str | None, str]], registry: str,
             mirror: int = 0) -> tuple[list[Mapping], list[LeftOut]]:
    """From what a load pushed, per image (its ref name or None, target repository, tag or
    None, the digest of its manifest there), the mappings (to the `mirror`th target);
    images with no source name cannot be mapped: left out, and so is a source digest the
    target does not have (`_converted`)."""
    out: list[Mapping] = []
    left: list[LeftOut] = []
    tags: dict[str, list[str]] = {}  # source name -> the tags it got at the target
    got: dict[Mapping, list[str]] = {}  # the same per mapping: README.txt names one
    for name, repository, tag, digest in images:
        where = f"{registry}/{repository}" + (f":{tag}" if tag else "")
        if not name or is_bare_tag(name):
            left.append(LeftOut("all", name or "(no ref name)", where,
                                "the bundle does not name its source; pull it as " + where))
            continue
        try:
            ref = Reference.parse(name)
        except InvalidReference:
            left.append(LeftOut("all", name, where, "not a reference a client could name"))
            continue
        m = Mapping(ref, registry, repository, mirror=mirror, digest=digest)
        if m not in out:
            out.append(m)
            left += _converted(m)
        if tag:
            tags.setdefault(name, []).append(f"{registry}/{repository}:{tag}")
            got.setdefault(m, []).append(tag)
    left += _renamed(tags)
    return [dataclasses.replace(m, tags=tuple(got.get(m, ()))) for m in out], left


def _converted(m: Mapping) -> list[LeftOut]:
    """A source pinned by a digest the target does not have (the pull filtered its platforms,
    converted it, `--format`, or rewrote it): a client asking the mirror for that digest
    finds nothing, and no client configuration renames a digest."""
    if not m.source.digest or m.digest in (None, m.source.digest):
        return []
    where = m.pulled_as
    return [LeftOut("all", str(m.source), where,
                    f"the bundle carries it as {m.digest} (the pull filtered, converted or "
                    "rewrote it); no client configuration renames a digest, so a client "
                    f"asking for {m.source} finds nothing: pull {where}")]


def _renamed(tags: dict[str, list[str]]) -> list[LeftOut]:
    """Sources whose own tag is not among those they got (images.yaml `tag_as:`): a client
    asking the mirror for it finds nothing, and no client configuration renames a tag."""
    left = []
    for name, where in tags.items():
        ref = Reference.parse(name)
        if ref.tag and not any(w.rsplit(":", 1)[1] == ref.tag for w in where):
            got = ", ".join(w.rsplit(":", 1)[1] for w in where)
            left.append(LeftOut(
                "all", name, where[0],
                f"its tag {ref.tag} was loaded as {got} (`tag_as:`); no client configuration "
                f"renames a tag, so a client asking for {name} finds nothing: pull "
                f"{where[0]}, or add the tag with `tags_also:`"))
    return left
