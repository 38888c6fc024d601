"""images.lock: what a pull resolved, so that `--locked` pulls exactly the same digests.

    {"lockVersion": 1,
     "images": {"docker.io/library/alpine:3.20": {
         "sourceDigest": "sha256:..",   # what the reference named upstream
         "digest": "sha256:..",         # the root in the bundle (differs when filtered/converted)
         "platforms": {"linux/arm64": "sha256:.."},  # selected platform manifests, in the bundle
         "sourcePlatforms": {"linux/arm64": "sha256:.."},  # the same, upstream
         "manifests": ["sha256:..", ...], "conversions": {"old": "new"}}},
     "blobs": {"sha256:..": size, ...},         # every blob the images need
     "tagRules": [{"repository": "registry.example.com/app",  # what each tag rule chose
                   "rule": {"semver": ">=1.2 <2"}, "where": "images.yaml:7",
                   "tags": ["1.2.0", "1.4.1"]}],  # (present when images.yaml has rules)
     "bundle": {"name": "site.tar", "digest": "sha256:.."}}  # the bundle a pull wrote

After a run in which an image failed (--keep-going) or waits (exit 14) it keeps its last
entry, and `blobs` keeps what the last lock listed besides when a pull wrote that one (with
--base, those of them the base carried: `after_run`). A lock file can also serve as the
`--base` of an incremental pull: its `blobs` are taken as already carried across, and its
`bundle` is the one file such a pull must not write over: the far side may still need it.
Only a pull that wrote a bundle records one; a lock file without it (`mirror lock`'s, a
sync's) says what the tags named, not what was carried, and `--base` refuses it.

It records digests, not the settings that chose them (platforms, index, format,
foreign_layers, referrers, --referrer-type): `mirror lock` takes the same flags as `mirror
pull` and resolves with the same engine, so a lock made with a pull's flags records what that
pull does; `--locked` pins each image's `sourceDigest` and applies the flags it is given.

`digest`, `platforms` and `manifests` name what the bundle carries, so what the loaded
registry serves; `sourceDigest` and `sourcePlatforms` what the source registry served (they
differ after `--format oci|docker`, `foreign_layers: rewrite` or a filtered index). Lock files
written before `sourcePlatforms` existed have source digests under `platforms`; `--locked`
reads only `sourceDigest`, so they still pin the same images.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirror.digest import Digest
from mirror.errors import ConfigError, IntegrityError, MirrorError, UsageError
from mirror.paths import write_atomic

if TYPE_CHECKING:
    from mirror.config import ImageSpec
    from mirror.imageresult import ImageResult
    from mirror.pull_account import PullResult

LOCK_VERSION = 1


@dataclass
class Lock:
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    blobs: dict[str, int] = field(default_factory=dict)
    bundle: dict[str, str] | None = None  # {"name", "digest"} of the bundle written with it
    tag_rules: list[dict[str, Any]] = field(default_factory=list)  # mirror.tagrules.resolved

    def pieces(self) -> Iterator[bytes]:
        """json.dumps(doc, indent=2) and a newline, as the encoder gives it: whole, its
        indent the pure-Python encoder's (a string per token, in a list, then the text and
        its bytes), 2,000 images' lock file was 10 MiB of heap at the end of a run."""
        doc: dict[str, Any] = {"lockVersion": LOCK_VERSION,
                               "images": dict(sorted(self.images.items())),
                               "blobs": dict(sorted(self.blobs.items()))}
        if self.bundle:
            doc["bundle"] = self.bundle
        if self.tag_rules:
            doc["tagRules"] = self.tag_rules
        batch: list[str] = []
        size = 0
        for piece in json.JSONEncoder(indent=2).iterencode(doc):
            batch.append(piece)
            size += len(piece)
            if size >= 64 << 10:  # tokens, joined: a write per token cost as much again
                yield "".join(batch).encode()
                batch.clear()
                size = 0
        yield ("".join(batch) + "\n").encode()

    def write(self, path: Path) -> None:
        """Atomically (mirror.paths.write_atomic): a write that fails (a full disk) leaves
        the old lock file as it was, nothing half-written, and an error naming the file."""
        write_atomic(path, self.pieces(), "the lock file")

    @classmethod
    def read(cls, path: Path) -> Lock:
        try:
            doc = json.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"{path}: cannot read lock file: {e.strerror}") from None
        except ValueError as e:
            raise ConfigError(f"{path}: not a valid lock file: {e}") from None
        if not isinstance(doc, dict) or doc.get("lockVersion") != LOCK_VERSION:
            raise ConfigError(f"{path}: not a lock file of version {LOCK_VERSION}")
        bundle = doc.get("bundle")
        if bundle is not None and not (
                isinstance(bundle, dict) and all(isinstance(bundle.get(k), str)
                                                 for k in ("name", "digest"))):
            raise ConfigError(f"{path}: not a valid lock file: 'bundle' is not "
                              '{"name": ..., "digest": ...}')
        rules = doc.get("tagRules") or []
        return cls(dict(doc.get("images") or {}), dict(doc.get("blobs") or {}), bundle,
                   list(rules) if isinstance(rules, list) else [])


def is_lock_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    return head.lstrip().startswith(b"{") and b"lockVersion" in head


def pin(specs: list[ImageSpec], path: Path | None) -> list[ImageSpec]:
    """--locked: each image pinned to the `sourceDigest` the lock file at `path` recorded
    for its reference; no lock file, or one that does not list an image, is a usage error."""
    if path is None:
        raise UsageError("--locked needs -f images.yaml or --lock-file")
    lock = Lock.read(path)
    pinned = []
    for spec in _recorded_tags(specs, lock, path):
        entry = lock.images.get(str(spec.reference))
        if not isinstance(entry, dict) or not isinstance(entry.get("sourceDigest"), str):
            raise UsageError(f"{spec.reference} is not in {path}",
                             hint="run `mirror lock` (or pull without --locked) to update it")
        _check_digests(path, str(spec.reference), entry)
        pinned.append(replace(spec, pin=entry["sourceDigest"]))
    return pinned


def _check_digests(path: Path, reference: str, entry: dict[str, Any]) -> None:
    """An entry's `sourceDigest` (the pin, sent to the registry) and `digest` are digests: a
    lock file edited or damaged is bad input, refused before any request (not a registry's
    500 for a digest it cannot parse)."""
    for key in ("sourceDigest", "digest"):
        value = entry.get(key)
        if key == "digest" and value is None:
            continue
        try:
            Digest.parse(value if isinstance(value, str) else repr(value))
        except IntegrityError as e:
            raise ConfigError(f"{path}: not a valid lock file: {reference}: {key}: {e}",
                              hint="run `mirror lock` (or pull without --locked) to write "
                              "it again") from None


def source_digests(path: Path) -> dict[str, str]:
    """What each tag named when the lock file at `path` was written (reference ->
    `sourceDigest`); nothing when there is no readable lock file there. A warm rerun's hint
    (mirror.commands, which asks only with a lock file's path), never a pin: the tag is
    still asked about."""
    if not path.exists():
        return {}
    try:
        images = Lock.read(path).images
    except MirrorError:
        return {}
    return {ref: e["sourceDigest"] for ref, e in images.items()
            if isinstance(e, dict) and isinstance(e.get("sourceDigest"), str)}


def recorded_rules(path: Path | None) -> list[dict[str, Any]]:
    """What the tag rules chose when the lock file at `path` was written (its `tagRules`);
    nothing when there is no readable lock file there."""
    if path is None or not path.exists():
        return []
    try:
        return Lock.read(path).tag_rules
    except MirrorError:
        return []


def _recorded_tags(specs: list[ImageSpec], lock: Lock, path: Path) -> list[ImageSpec]:
    """Each tag rule replaced by the tags the lock file recorded for it (no listing)."""
    from mirror.tagrules import from_lock, is_rule

    out: list[ImageSpec] = []
    for spec in specs:
        if not is_rule(spec):
            out.append(spec)
            continue
        chosen = from_lock(spec, lock.tag_rules)
        if chosen is None:
            assert spec.rule is not None
            raise UsageError(f"{spec.where}: the tag rule of {spec.reference.name} "
                             f"({spec.rule.describe()}) is not in {path}",
                             hint="run `mirror lock` (or pull without --locked) to update it")
        out += chosen
    return out


def _entry(r: ImageResult) -> dict[str, Any]:
    return {"sourceDigest": r.source_digest, "digest": r.digest,
            "platforms": r.platform_digests, "sourcePlatforms": r.source_platform_digests,
            "manifests": r.manifests, "conversions": r.conversions}


def after_run(result: PullResult, path: Path, tag_rules: list[dict[str, Any]] | None = None,
              carried: dict[str, int] | None = None) -> Lock | None:
    """The lock file a pull (or `mirror lock`) leaves at `path`: the images it resolved, and
    the blobs they need; an image that failed or waits this time keeps its entry in the lock
    already at `path`, and when a pull wrote that lock (it names a bundle) the blobs it listed
    stay listed (they went across with its bundle: an incremental bundle on this lock must
    not carry them again); those of a lock `mirror lock` or a sync wrote were never carried,
    and are not. With `carried` (an incremental pull: what its --base carried) only those of
    them the base carried: the lock at `path` may be another bundle's (a pull by hand to
    another -o), not this chain's. None when no image has an entry: the lock at `path` stays
    as it is."""
    lock = Lock(blobs=result.blobs, tag_rules=tag_rules or [])
    bundle, digest = getattr(result, "bundle", None), getattr(result, "bundle_digest", None)
    if bundle and digest:  # a pull's bundle (--base refuses it as -o); a sync writes none
        lock.bundle = {"name": bundle.name, "digest": digest}
    failed = [r.reference for r in result.images if r.error]
    old = Lock()
    if failed and path.exists():
        try:
            old = Lock.read(path)
        except MirrorError:
            pass
    kept = {ref: old.images[ref] for ref in failed if ref in old.images}
    lock.images.update((r.reference, _entry(r)) for r in result.images if not r.error)
    rules = [_as_locked(rule, lock.images, old, kept) for rule in lock.tag_rules]
    lock.tag_rules = [rule for rule in rules if rule is not None]
    lock.images = {**kept, **lock.images}
    if kept and old.bundle:  # a pull's: its blobs went across (`mirror lock`'s did not)
        went = old.blobs if carried is None else \
            {d: n for d, n in old.blobs.items() if d in carried}
        lock.blobs = {**went, **lock.blobs}
    return lock if lock.images else None


def _as_locked(rule: dict[str, Any], images: dict[str, Any], old: Lock,
               kept: dict[str, Any]) -> dict[str, Any] | None:
    """A rule's entry in the lock file. The tags it chose this run when each has an entry
    (`images`: this run's; `kept`: those that failed or wait, from the lock before). When
    one it chose has none (new this run, and it failed or waits), the rule's choice is not
    whole: the tags the lock before gave it stand, their entries kept (added to `kept`), so
    `--locked` pulls what it pulled before (the site's images, not fewer: o25 D1, o26 D2);
    with no lock before for it, the rule is left out (`--locked` says so and what to run).
    The report's `tag_rules` says what the rule chose this run."""
    tags = rule.get("tags")
    if not isinstance(tags, list):
        return rule
    repo = rule.get("repository")
    if all(f"{repo}:{t}" in images or f"{repo}:{t}" in kept for t in tags):
        return rule
    for before in old.tag_rules:
        if isinstance(before, dict) and before.get("repository") == repo and \
                before.get("rule") == rule.get("rule") and \
                isinstance(before.get("tags"), list) and \
                all(f"{repo}:{t}" in old.images for t in before["tags"]):
            kept.update((f"{repo}:{t}", old.images[f"{repo}:{t}"]) for t in before["tags"]
                        if f"{repo}:{t}" not in images)
            return {**rule, "tags": list(before["tags"])}
    return None
