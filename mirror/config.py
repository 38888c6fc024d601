"""images.yaml: a versioned, typed config; errors name file:line and the key.

    version: 1
    defaults: {platforms: [...], index: filter|sparse, format: keep|oci|docker,
               foreign_layers: skip|include|rewrite, referrers: true,
               accept_unsigned_index: false}
    registries: {HOST: {insecure, ca_file, client_cert, client_key,
                        username, password_env, password_file}}
    images:
      - docker.io/library/alpine:3.20                  # a full reference
      - ref: ghcr.io/org/app@sha256:...                # the same, with per-image settings
        platforms: [linux/arm64]
      - repository: docker.io/library/redis            # a repository with a list of tags
        tags: ["7.2", "7.4", {semver: ">=7.2 <8", latest: 2}]  # and tag rules (tagrules.py)
See config/README.md for the reference. The YAML's nodes, with their lines, are read by
mirror.config_yaml; what each key means is here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirror.choices import FOREIGN_POLICIES, FORMATS, INDEX_MODES
from mirror.config_yaml import Ctx, compose
from mirror.errors import ConfigError, MirrorError
from mirror.mapping import Destination, Rule, find_rule, path_problem
from mirror.platform import PlatformSelector
from mirror.reference import _TAG, Reference
from mirror.registry.credentials import RegistryLogin
from mirror.registry.policy import RegistrySettings

if TYPE_CHECKING:
    import yaml

    from mirror.tagrules import TagRule
else:
    from mirror.config_yaml import yaml

SUPPORTED_VERSION = 1

_TOP_KEYS = ("version", "defaults", "registries", "map", "images")
_SETTING_KEYS = ("platforms", "index", "format", "foreign_layers", "referrers",
                 "accept_unsigned_index")
_DEST_KEYS = ("to", "tag_as", "tags_also")  # where it lands (mirror.mapping)
_IMAGE_KEYS = ("ref", "repository", "tags", *_DEST_KEYS, *_SETTING_KEYS)
_REGISTRY_KEYS = ("insecure", "ca_file", "client_cert", "client_key", "username",
                  "password_env", "password_file", "max_concurrency", "max_requests_per_run",
                  "referrers")
_COUNT_KEYS = ("max_concurrency", "max_requests_per_run")
REFERRER_MODES = ("always", "cached")  # registries.HOST.referrers (mirror.referrers.Finder)
_PATH_KEYS = ("ca_file", "client_cert", "client_key", "password_file")


@dataclass(frozen=True)
class ImageSettings:
    platforms: PlatformSelector = field(default_factory=lambda: PlatformSelector(all_=True))
    index: str = "filter"
    format: str = "keep"
    foreign_layers: str = "skip"
    referrers: bool = True
    # the user knows a filtered index is not what the source's signatures name: the run says
    # so as information (hidden by -q), not as a warning every night
    accept_unsigned_index: bool = False


@dataclass(frozen=True)
class ImageSpec:
    reference: Reference
    settings: ImageSettings
    where: str = ""  # file:line, for messages
    pin: str | None = None  # --locked: the digest to fetch instead of resolving the tag
    dest: Destination | None = None  # `to:`, `tag_as:`, `tags_also:`, or a `map:` rule's
    rule: TagRule | None = None  # a tag rule (mirror.tagrules): unresolved while tag is None
    # a rule whose tags could not be listed: the error its images fail with (BudgetSpent:
    # they wait for the next run), as a fixed tag's would (--keep-going: the others go on)
    failed: MirrorError | None = None


@dataclass
class Config:
    images: list[ImageSpec]
    registries: dict[str, RegistrySettings]
    logins: dict[str, RegistryLogin]
    defaults: ImageSettings
    path: str = ""
    cached_referrers: set[str] = field(default_factory=set)  # `referrers: cached` hosts


def _settings(ctx: Ctx, items: dict[str, tuple[yaml.Node, yaml.Node]],
              base: ImageSettings) -> ImageSettings:
    s = base
    if "platforms" in items:
        node = items["platforms"][1]
        values = ctx.str_list(node, "platforms")
        try:
            s = replace(s, platforms=PlatformSelector.parse(values))
        except MirrorError as e:
            raise ctx.err(node, str(e), e.hint) from None
    if "index" in items:
        s = replace(s, index=ctx.choice(items["index"][1], "index", INDEX_MODES))
    if "format" in items:
        s = replace(s, format=ctx.choice(items["format"][1], "format", FORMATS))
    if "foreign_layers" in items:
        s = replace(s, foreign_layers=ctx.choice(items["foreign_layers"][1], "foreign_layers",
                                                 FOREIGN_POLICIES))
    if "referrers" in items:
        s = replace(s, referrers=ctx.boolean(items["referrers"][1], "referrers"))
    if "accept_unsigned_index" in items:
        s = replace(s, accept_unsigned_index=ctx.boolean(items["accept_unsigned_index"][1],
                                                         "accept_unsigned_index"))
    return s


def _ref(ctx: Ctx, node: yaml.Node, text: str) -> Reference:
    try:
        return Reference.parse(text)
    except MirrorError as e:
        raise ctx.err(node, str(e), e.hint) from None


def _file_value(ctx: Ctx, node: yaml.Node, key: str, value: str, check: bool) -> str:
    """A path from images.yaml: `~` expanded, a relative one taken from the YAML file's
    directory (as docker-compose does), so the run's working directory does not matter;
    with `check`, a file that cannot be read is a config error naming file:line."""
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = Path(ctx.path).absolute().parent / p
    resolved = os.path.normpath(p)
    if check:
        try:
            with open(resolved, "rb"):
                pass
        except OSError as e:
            raise ctx.err(node, f"{key} {resolved}: cannot read it: {e.strerror or e}",
                          hint="a relative path is taken from the directory of "
                          f"{Path(ctx.path).name}") from None
    return resolved


def parse_config(text: str, path: str = "images.yaml",
                 base: ImageSettings | None = None, *, check_files: bool = False) -> Config:
    """Raise ConfigError (with file:line) for anything malformed. Relative file paths in
    `registries:` are taken from the directory of `path`; `check_files`: each must be
    readable now."""
    ctx = Ctx(path)
    root = compose(text, path)
    top = ctx.mapping(root, "the top level", _TOP_KEYS)
    if "version" in top:
        _check_version(ctx, top["version"][1])
    defaults = base or ImageSettings()
    if "defaults" in top:
        defaults = _settings(ctx, ctx.mapping(top["defaults"][1], "defaults", _SETTING_KEYS),
                             defaults)
    registries: dict[str, RegistrySettings] = {}
    logins: dict[str, RegistryLogin] = {}
    cached: set[str] = set()
    if "registries" in top:
        for host, (knode, vnode) in ctx.mapping(top["registries"][1], "registries", ()).items():
            registries[host], login = _registry(ctx, host, knode, vnode, check_files)
            if login:
                logins[host] = login
            mode = ctx.mapping(vnode, f"registries.{host}", _REGISTRY_KEYS).get("referrers")
            if mode and ctx.choice(mode[1], "referrers", REFERRER_MODES) == "cached":
                cached.add(host)
    if "images" not in top:
        raise ctx.err(root, "no 'images' list", hint="add `images:` with one reference per item")
    images = _images(ctx, top["images"][1], defaults)
    if "map" in top:
        images = _mapped(images, _map_rules(ctx, top["map"][1]))
    return Config(images, registries, logins, defaults, path, cached)


def _map_rules(ctx: Ctx, node: yaml.Node) -> list[Rule]:
    """`map:` {SOURCE: DESTINATION}: `ghcr.io/org/*: org/*`, `docker.io/library/redis:
    base/redis` (mirror.mapping.Rule)."""
    rules = []
    for src, (knode, vnode) in ctx.mapping(node, "map", ()).items():
        try:
            rules.append(Rule.parse(src, ctx.scalar(vnode, src),
                                    f"{ctx.path}:{knode.start_mark.line + 1}"))
        except MirrorError as e:
            raise ConfigError(str(e), hint=e.hint) from None
    return rules


def _mapped(images: list[ImageSpec], rules: list[Rule]) -> list[ImageSpec]:
    """The images with the `map:` rule's destination where their own `to:` gives none."""
    out = []
    for spec in images:
        found = find_rule(rules, spec.reference.name)
        if found is not None and not (spec.dest and spec.dest.to):
            spec = replace(spec, dest=replace(spec.dest or Destination(), to=found[1]))
        out.append(spec)
    return out


def load_map_file(path: str | Path) -> list[Rule]:
    """--map-file FILE.yaml: `map:` as images.yaml's (and an optional `version:`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read the map file: "
                          f"{getattr(e, 'strerror', None) or e}") from None
    ctx = Ctx(str(p))
    top = ctx.mapping(compose(text, str(p)), "the top level", ("version", "map"))
    if "version" in top:
        _check_version(ctx, top["version"][1])
    if "map" not in top:
        raise ConfigError(f"{p}: no 'map:' (SOURCE: DESTINATION, one per line)")
    return _map_rules(ctx, top["map"][1])


def _destination(ctx: Ctx, entry: dict[str, tuple[yaml.Node, yaml.Node]]
                 ) -> Destination | None:
    """An image entry's `to:`, `tag_as:` and `tags_also:`."""
    if not any(k in entry for k in _DEST_KEYS):
        return None
    to = None
    if "to" in entry:
        node = entry["to"][1]
        to = ctx.scalar(node, "to").strip("/")
        why = path_problem(to)
        if why is not None:
            raise ctx.err(node, f"to {to!r}: {why}", hint="a repository path below load's "
                          "--to HOST/PREFIX, lowercase (base/redis); the host is --to's")
    tags = {k: ctx.str_list(entry[k][1], k) for k in ("tag_as", "tags_also") if k in entry}
    for key, values in tags.items():
        for t in values:
            if not _TAG.match(t):
                raise ctx.err(entry[key][1], f"{key}: {t!r} is not a valid tag")
    if len(tags.get("tag_as", [])) > 1:
        raise ctx.err(entry["tag_as"][1], "'tag_as' is one tag (add more with 'tags_also')")
    tag_as = tags["tag_as"][0] if "tag_as" in tags else None
    return Destination(to, tag_as, tuple(tags.get("tags_also", ())))


def _check_version(ctx: Ctx, node: yaml.Node) -> None:
    version = ctx.integer(node, "version")
    if version > SUPPORTED_VERSION or version < 1:
        raise ctx.err(node, f"config version {version} is not supported (this mirror "
                      f"reads version {SUPPORTED_VERSION})")


def _registry(ctx: Ctx, host: str, knode: yaml.Node, vnode: yaml.Node,
              check_files: bool) -> tuple[RegistrySettings, RegistryLogin | None]:
    """One entry of `registries:`: its settings, and its login when it names a username."""
    r = ctx.mapping(vnode, f"registries.{host}", _REGISTRY_KEYS)
    val = {k: ctx.scalar(v, k) for k, (_, v) in r.items()
           if k not in ("insecure", "referrers") and k not in _COUNT_KEYS}
    counts = {k: ctx.integer(r[k][1], k) for k in _COUNT_KEYS if k in r}
    for k, n in counts.items():
        if n < 1:
            raise ctx.err(r[k][1], f"registries.{host}.{k}: must be at least 1, not {n}")
    for k in _PATH_KEYS:
        if k in val:
            val[k] = _file_value(ctx, r[k][1], k, val[k], check_files)
    if "password_env" in val and "password_file" in val:
        raise ctx.err(knode, f"registries.{host}: give password_env or password_file, "
                      "not both")
    if ("password_env" in val or "password_file" in val) and "username" not in val:
        raise ctx.err(knode, f"registries.{host}: a password needs a 'username'")
    settings = RegistrySettings(
        insecure=ctx.boolean(r["insecure"][1], "insecure") if "insecure" in r else False,
        ca_file=val.get("ca_file"), client_cert=val.get("client_cert"),
        client_key=val.get("client_key"), **counts)
    if "username" not in val:
        return settings, None
    key = next((r[k][0] for k in ("password_env", "password_file") if k in r),
               r["username"][0])
    return settings, RegistryLogin(val["username"], val.get("password_env", ""),
                                   val.get("password_file", ""),
                                   f"{ctx.path}:{key.start_mark.line + 1}")


def _images(ctx: Ctx, inode: yaml.Node, defaults: ImageSettings) -> list[ImageSpec]:
    """The `images:` list, in order; each entry a reference, a `ref:` mapping or a
    `repository:` with its `tags:`."""
    if not isinstance(inode, yaml.SequenceNode):
        raise ctx.err(inode, "'images' must be a list")
    images: list[ImageSpec] = []
    for item in inode.value:
        where = f"{ctx.path}:{item.start_mark.line + 1}"
        if isinstance(item, yaml.ScalarNode):
            images.append(ImageSpec(_ref(ctx, item, ctx.scalar(item, "image")), defaults, where))
        else:
            images += _image_entry(ctx, item, defaults, where)
    if not images:
        raise ctx.err(inode, "the 'images' list is empty")
    return images


def _image_entry(ctx: Ctx, item: yaml.Node, defaults: ImageSettings,
                 where: str) -> list[ImageSpec]:
    """A mapping in `images:`: `ref:` (one image) or `repository:` with `tags:` (one per
    tag), with the settings it gives over the defaults."""
    entry = ctx.mapping(item, "an image entry", _IMAGE_KEYS)
    settings = _settings(ctx, entry, defaults)
    dest = _destination(ctx, entry)
    if "ref" in entry and "repository" in entry:
        later = max(entry["ref"][0], entry["repository"][0],
                    key=lambda k: k.start_mark.index)
        raise ctx.err(later, "give 'ref' or 'repository' (with 'tags'), not both",
                      hint="one entry per reference (ref:), or one per repository with "
                      "its tags (repository: and tags:)")
    if "ref" not in entry and "repository" not in entry:
        raise ctx.err(item, "an image entry needs either 'ref' or 'repository' (with 'tags')")
    if "ref" in entry:
        if "tags" in entry:
            raise ctx.err(entry["tags"][0], "'tags' goes with 'repository', not 'ref'")
        node = entry["ref"][1]
        return [ImageSpec(_ref(ctx, node, ctx.scalar(node, "ref")), settings, where,
                          dest=dest)]
    rnode = entry["repository"][1]
    repo = _ref(ctx, rnode, ctx.scalar(rnode, "repository"))
    if repo.digest or ":" in ctx.scalar(rnode, "repository").rsplit("/", 1)[-1]:
        raise ctx.err(rnode, "'repository' takes no tag or digest; list them under 'tags'")
    if "tags" not in entry:
        raise ctx.err(item, f"repository {repo.name} has no 'tags' list")
    tnode = entry["tags"][1]
    if not (isinstance(tnode, yaml.SequenceNode) and tnode.value):
        ctx.str_list(tnode, "tags")  # one tag as a string, or the error for what is neither
    nodes = tnode.value if isinstance(tnode, yaml.SequenceNode) else [tnode]
    if dest is not None and dest.tag_as and (
            len(nodes) > 1 or isinstance(nodes[0], yaml.MappingNode)):
        many = f"{len(nodes)} images" if len(nodes) > 1 else "a tag rule's images"
        raise ctx.err(entry["tag_as"][0], f"'tag_as' would give {many} one tag",
                      hint="rename one image: give it its own entry with ref:")
    return [_tag_item(ctx, n, repo, settings, where, dest) for n in nodes]


def _tag_item(ctx: Ctx, node: yaml.Node, repo: Reference, settings: ImageSettings,
              where: str, dest: Destination | None) -> ImageSpec:
    """One item of `tags:`: a tag (or `@digest`), or a tag rule (a mapping)."""
    if not isinstance(node, yaml.MappingNode):
        tag = ctx.scalar(node, "tags")
        return ImageSpec(_ref(ctx, node, f"{repo.name}{tag}" if tag.startswith("@")
                              else f"{repo.name}:{tag}"), settings, where, dest=dest)
    # a tag rule: mirror.tagrules (and mirror.semver), imported only for a config with one
    from mirror.semver import Range
    from mirror.tagrules import ORDERS, RULE_KEYS, TagRule, check_regex

    items = ctx.mapping(node, "a tag rule", RULE_KEYS)
    if not {"semver", "regex", "latest"} & items.keys():
        raise ctx.err(node, "a tag rule needs 'semver', 'regex' or 'latest'",
                      hint='e.g. `- semver: ">=1.2 <2"` (config/README.md, Tag rules)')
    rule = TagRule()
    try:
        if "semver" in items:
            rule = replace(rule, semver=Range.parse(ctx.scalar(items["semver"][1], "semver")))
        if "regex" in items:
            rule = replace(rule, regex=check_regex(ctx.scalar(items["regex"][1], "regex")))
        if "exclude" in items:
            rule = replace(rule, exclude=tuple(
                check_regex(x) for x in ctx.str_list(items["exclude"][1], "exclude")))
    except ValueError as e:
        raise ctx.err(node, f"tag rule: {e}") from None
    if "latest" in items:
        n = ctx.integer(items["latest"][1], "latest")
        if n < 1:
            raise ctx.err(items["latest"][1], f"'latest' must be 1 or more, not {n}")
        rule = replace(rule, latest=n)
    if "prerelease" in items:
        rule = replace(rule, prerelease=ctx.boolean(items["prerelease"][1], "prerelease"))
    if "order" in items:
        if rule.latest is None:
            raise ctx.err(items["order"][0], "'order' goes with 'latest': the order of the "
                          "tags it keeps the last N of", hint="add `latest: N`, or drop 'order'")
        rule = replace(rule, order=ctx.choice(items["order"][1], "order", ORDERS))
    ref = Reference(repo.registry, repo.repository, None, None)
    return ImageSpec(ref, settings, f"{ctx.path}:{node.start_mark.line + 1}", dest=dest,
                     rule=rule)


def load_config(path: str | Path, base: ImageSettings | None = None) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from None
    return parse_config(text, str(p), base, check_files=True)


def settings_as_dict(s: ImageSettings) -> dict[str, Any]:
    platforms = "all" if s.platforms.all else ",".join(sorted(map(str, s.platforms.platforms)))
    return {"platforms": platforms, "index": s.index, "format": s.format,
            "foreign_layers": s.foreign_layers, "referrers": s.referrers,
            "accept_unsigned_index": s.accept_unsigned_index}
