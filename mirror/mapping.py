"""Where images land: a source reference -> its target repository and tags. Every command
that pushes (load, sync) or names what was pushed (client-config, serve) asks `place`, so
they cannot disagree; `check` refuses a plan before anything is pushed.

For one image, in order:
1. its repository path: the first load-time rule (`--map SRC=DST`, `--map-file`) matching
   its source name, an exact repository before a `REG/PATH/*` prefix (the longest first);
   else the destination it carries from images.yaml (`to:`, or a `map:` rule, recorded by
   the pull as index.json annotations); else its source path without the registry;
2. under --to's prefix;
3. with --max-depth N, a path deeper than N components has the leading components of the
   part below the prefix joined with '-' (`org/team/app` under N=2 -> `org-team/app`); the
   prefix stays as it is;
4. its tags: its own (or `tag_as`), plus `tags_also`; an image pinned by digest only gets
   `sha256-<hex>` so that the target's garbage collection keeps it (as oc-mirror does),
   unless turned off (--no-digest-tag).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mirror.errors import BundleError, InvalidReference, MirrorError, UsageError
from mirror.reference import (
    _PATH,
    _TAG,
    Reference,
    _is_registry,
    normalize_registry,
    registry_problem,
)

SEPARATOR = "-"
A_TO = "dev.mirror.target.repository"  # images.yaml `to:` (or a `map:` rule's result)
A_TAG_AS = "dev.mirror.target.tag"  # images.yaml `tag_as:`
A_TAGS_ALSO = "dev.mirror.target.tags"  # images.yaml `tags_also:`, comma-separated


@dataclass(frozen=True)
class Rule:
    """`SRC=DST`: a repository (`docker.io/library/redis=base/redis`) or every repository
    under a prefix (`ghcr.io/org/*=org/*`, `docker.io/library/*=*`)."""
    source: str  # REG/PATH, or REG/PATH/* (REG/* for a whole registry)
    dest: str  # PATH, or PATH/* or * for a prefix rule
    where: str = ""  # --map '...' or file:line, for messages

    @property
    def prefix(self) -> bool:
        return self.source.endswith("/*")

    def apply(self, name: str) -> str | None:
        """The target path of source repository `name` (REG/PATH), or None if no match."""
        if not self.prefix:
            return self.dest if name == self.source else None
        head = self.source[:-1]
        if not name.startswith(head):
            return None
        rest = name[len(head):]
        return rest if self.dest == "*" else f"{self.dest[:-1]}{rest}"

    @classmethod
    def parse(cls, source: str, dest: str, where: str) -> Rule:
        """Raise UsageError naming `where` for a rule that cannot be applied."""
        source, dest = source.strip(), dest.strip().strip("/")
        wild = source.endswith("/*")
        if wild:
            host, _, path = source[:-2].partition("/")
            if not _is_registry(host) or registry_problem(host) is not None:
                raise UsageError(f"{where}: {source!r}: a prefix rule starts with the source "
                                 "registry (docker.io/library/*, ghcr.io/org/*)")
            host = normalize_registry(host)
            if path and not _PATH.match(path):
                raise UsageError(f"{where}: {source!r}: bad repository path {path!r}")
            source = f"{host}/{path}/*" if path else f"{host}/*"
            if dest != "*" and not dest.endswith("/*"):
                raise UsageError(f"{where}: {dest!r}: a prefix rule's destination ends with "
                                 "/* (or is *), where the rest of the source path goes")
            check = dest[:-2] if dest != "*" else ""
        else:
            try:
                ref = Reference.parse(source)
            except InvalidReference as e:
                raise UsageError(f"{where}: {e}") from None
            if ref.digest or ref.tag != "latest" or ":" in source.rsplit("/", 1)[-1]:
                raise UsageError(f"{where}: {source!r}: a rule names a repository, not a tag "
                                 "or digest (tags go with the image in images.yaml)")
            source, check = ref.name, dest
            if "*" in dest:
                raise UsageError(f"{where}: {dest!r}: only a prefix rule (SRC/*) has a *")
        problem = path_problem(check) if check else None
        if problem or (not check and not wild):
            raise UsageError(f"{where}: destination {dest!r}: {problem or 'empty'}",
                             hint="a repository path below --to's prefix, lowercase "
                             "(base/redis), with no registry: that is --to's")
        return cls(source, dest, where)

    @classmethod
    def parse_arg(cls, text: str) -> Rule:
        """--map 'SRC=DST'."""
        src, eq, dst = text.partition("=")
        if not eq:
            raise UsageError(f"invalid --map {text!r}: expected SOURCE=DESTINATION "
                             "(docker.io/library/*=base/*)")
        return cls.parse(src, dst, f"--map {text!r}")


def unmatched(rules: Iterable[Rule], names: Iterable[str | None]) -> list[str]:
    """A warning line for each of the run's rules (--map, --map-file) that matches none of
    the images' source repositories (a typo, a source written without its registry): it
    moved nothing, and the images land where they would without it."""
    known = sorted({n for n in names if n})
    some = ", ".join(known[:5]) + (f" and {len(known) - 5} more" if len(known) > 5 else "")
    return [f"{r.where or r.source}: {r.source} matches no image of this run "
            f"({some or 'none named'}); it moved nothing"
            for r in rules if not any(r.apply(n) is not None for n in known)]


def path_problem(path: str) -> str | None:
    """Why `path` is not a repository path a registry takes (the distribution spec's
    grammar: lowercase components), or names a registry (that is --to's part), or None."""
    first = path.split("/", 1)[0]
    if "/" in path and _is_registry(first) and first == first.lower():
        return f"{first!r} is a registry; the destination is a path below --to"
    if not _PATH.match(path):
        return "repository names must be lowercase" if path != path.lower() else \
            "not a repository path (lowercase letters, digits, separators . _ __ -)"
    return None


def find_rule(rules: Iterable[Rule], name: str) -> tuple[Rule, str] | None:
    """The rule for source repository `name`: an exact one, else the longest prefix."""
    best: tuple[Rule, str] | None = None
    for r in rules:
        dest = r.apply(name)
        if dest is None:
            continue
        if not r.prefix:
            return r, dest
        if best is None or len(r.source) > len(best[0].source):
            best = (r, dest)
    return best


@dataclass(frozen=True)
class Destination:
    """What images.yaml says of where one image lands; carried in the bundle (annotations)."""
    to: str | None = None
    tag_as: str | None = None
    tags_also: tuple[str, ...] = ()

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.annotations().items())

    def annotations(self) -> dict[str, str]:
        out = {}
        if self.to:
            out[A_TO] = self.to
        if self.tag_as:
            out[A_TAG_AS] = self.tag_as
        if self.tags_also:
            out[A_TAGS_ALSO] = ",".join(self.tags_also)
        return out

    @classmethod
    def from_annotations(cls, ann: Mapping[str, str]) -> Destination | None:
        if not any(k in ann for k in (A_TO, A_TAG_AS, A_TAGS_ALSO)):
            return None
        also = tuple(t for t in ann.get(A_TAGS_ALSO, "").split(",") if t)
        return cls(ann.get(A_TO) or None, ann.get(A_TAG_AS) or None, also)


@dataclass(frozen=True)
class Layout:
    """The load-time (or sync-time) settings: rules over the images' own, depth limit,
    digest tags."""
    rules: tuple[Rule, ...] = ()
    max_depth: int | None = None
    digest_tags: bool = True


@dataclass
class Target:
    """--to HOST[:PORT][/PREFIX], with the layout rules of the run."""
    registry: str
    prefix: str
    layout: Layout = field(default_factory=Layout)

    @classmethod
    def parse(cls, text: str, layout: Layout | None = None) -> Target:
        text = text.strip().rstrip("/")
        if not text or "://" in text or "@" in text:
            raise UsageError(f"invalid --to {text!r}: expected HOST[:PORT][/PREFIX]")
        host, _, prefix = text.partition("/")
        why = registry_problem(host)
        if why is not None:
            raise UsageError(f"invalid --to {text!r}: {why} ({host!r}); expected "
                             "HOST[:PORT][/PREFIX]")
        try:
            if prefix:
                Reference.parse(f"{host}/{prefix}")
        except InvalidReference as e:
            raise UsageError(f"invalid --to {text!r}: {e}") from None
        if ":" in prefix:  # parsed as a tag: each image keeps its own
            raise UsageError(f"invalid --to {text!r}: the prefix is a repository path, "
                             "not a tag (each image is pushed with its own tag)")
        target = cls(normalize_registry(host), prefix, layout or Layout())
        target.check_room(f"--to {text!r}")
        return target

    def check_room(self, flag: str) -> None:
        """--max-depth leaves room below the prefix for the image's name (else exit 2)."""
        depth, parts = self.layout.max_depth, len(self.prefix.split("/"))
        if depth is not None and self.prefix and parts >= depth:
            raise UsageError(f"{flag}: the prefix has {parts} path component(s), --max-depth "
                             f"{depth} leaves no room for the image's name")


@dataclass(frozen=True)
class Placement:
    repository: str
    tags: tuple[str, ...]  # empty: pushed by digest only
    moved: bool = False  # a rule, a destination or the depth limit chose the repository


def flatten(path: str, depth: int | None) -> str:
    """`path` (below the prefix) in at most `depth` components: the leading ones joined."""
    parts = path.split("/")
    if depth is None or len(parts) <= depth or depth < 1:
        return path
    keep = depth - 1
    return "/".join([SEPARATOR.join(parts[:len(parts) - keep]), *parts[len(parts) - keep:]])


def place(target: Target, name: str | None, path: str, tag: str | None, digest: str | None,
          dest: Destination | None = None, *, referrer: bool = False) -> Placement:
    """Where the image whose source repository is `name` (REG/PATH; None when the source
    is not known: a path as a bundle wrote it) and whose path as written is `path` lands
    at `target`, and its tags. A referrer keeps its own tag (or none)."""
    found = find_rule(target.layout.rules, name) if name else None
    moved = True
    if found is not None:
        path = found[1]
    elif dest is not None and dest.to:
        path = dest.to
    else:
        moved = False
    depth = target.layout.max_depth
    if depth is not None:
        room = depth - (len(target.prefix.split("/")) if target.prefix else 0)
        flat = flatten(path, room)
        moved, path = moved or flat != path, flat
    repo = f"{target.prefix}/{path}" if target.prefix else path
    if referrer:
        return Placement(repo, (tag,) if tag else (), moved)
    tags: list[str] = []
    if dest is not None and dest.tag_as:
        tags.append(dest.tag_as)
    elif tag:
        tags.append(tag)
    elif digest and target.layout.digest_tags:
        tags.append(digest_tag(digest))
    tags += [t for t in (dest.tags_also if dest else ()) if t not in tags]
    return Placement(repo, tuple(tags), moved)


def digest_tag(digest: str) -> str:
    """`sha256:abc...` -> `sha256-abc...` (a tag is at most 128 characters)."""
    return digest.replace(":", "-", 1)[:128]


def check(target: Target, placed: Iterable[tuple[str, Placement, str]], bundle: str = ""
          ) -> None:
    """Refuse, before any push, a plan with a target name the registry would refuse (bad,
    uppercase, deeper than --max-depth, too long) or two images (source name, placement,
    root digest) on one target tag. Exit 2 (UsageError) when the run's mapping put them
    there; a bundle whose own names collide is the bundle's problem (exit 10)."""
    seen: dict[tuple[str, str], tuple[str, Placement, str]] = {}
    depth = target.layout.max_depth
    where = f"{bundle}: " if bundle else ""
    for name, p, digest in placed:
        problem = path_problem(p.repository) if p.repository != target.prefix else None
        if problem is None and depth is not None and len(p.repository.split("/")) > depth:
            problem = f"deeper than --max-depth {depth}"
        if problem is None and len(f"{target.registry}/{p.repository}") > 255:
            problem = "name longer than 255"
        if problem is not None:
            raise UsageError(f"{where}{name} would be pushed as {target.registry}/"
                             f"{p.repository}: {problem}; nothing was pushed")
        for tag in p.tags:
            if not _TAG.match(tag):
                raise UsageError(f"{where}{name}: tag {tag!r} is not a valid tag; nothing "
                                 "was pushed")
            other = seen.setdefault((p.repository, tag), (name, p, digest))
            if other[2] == digest:
                continue
            err: type[MirrorError] = UsageError if p.moved or other[1].moved else BundleError
            raise err(f"{where}{other[0]} and {name} would both be pushed as "
                      f"{target.registry}/{p.repository}:{tag}; nothing was pushed",
                      hint="give one of them another destination (images.yaml to:, "
                      "--map), or load them with different --to prefixes")


def parse_max_depth(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise UsageError(f"--max-depth {value}: must be 1 or more")
    return value
