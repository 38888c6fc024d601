"""Tag rules: `tags:` items in images.yaml that choose tags from the repository's listing.

    - repository: registry.example.com/team/app
      tags:
        - "1.0"                                   # a tag, as before
        - semver: ">=1.2 <2"                      # mirror.semver's ranges
          exclude: ["-rc"]                        # regexes; a tag any of them finds is out
        - regex: '^v?\\d+\\.\\d+\\.\\d+$'
        - latest: 3                               # the 3 highest versions (semver order)
          prerelease: true                        # pre-releases are out unless this
        - latest: 2                               # the 2 created last (mirror.created)
          order: created
          regex: '^nightly-'

A rule keeps a tag when every key it gives agrees: `semver` (the tag is a version in the
range), `regex` (found in the tag), none of `exclude`; a version with a pre-release part
(`1.3.0-rc.1`, and so a date `2024-05-01` or a variant `3.19-alpine`) only with
`prerelease: true` (those a `regex` finds are named in a warning unless `prerelease: false`
is written); then `latest: N` keeps the N highest versions
(tags that are not versions have no order and are left out), or with `order: created` the N
created last, versions or not (the candidates' times asked for: mirror.created; a tag with
none ranks oldest and is named on stderr; equal times go by tag name). The listing's tags of
signatures, SBOMs and attestations (the fallback `sha256-<hex>` and cosign's `.sig`, `.att`,
`.sbom` beside it: mirror.artifacts) are never a rule's: they travel with the images they
refer to. A rule that keeps no tag is an error naming the image and the rule's file:line. The listing follows `Link` pages
(mirror.registry.listing `list_tags`). What each rule chose is recorded in the lock file
(`tagRules`), so `--locked` pulls exactly those tags without listing; the report's
`tag_rules` says the same.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from mirror.aio import cancel_all, gather_or_cancel
from mirror.artifacts import is_referrer_tag
from mirror.errors import BudgetSpent, ConfigError, MirrorError
from mirror.semver import Range, Version

if TYPE_CHECKING:
    from mirror.config import ImageSpec
    from mirror.registry.client import Client
    from mirror.store.blobs import BlobStore

RULE_KEYS = ("semver", "regex", "exclude", "latest", "prerelease", "order")
ORDERS = ("semver", "created")


@dataclass(frozen=True)
class TagRule:
    semver: Range | None = None
    regex: str | None = None
    exclude: tuple[str, ...] = ()
    latest: int | None = None
    prerelease: bool | None = None  # None: not given (pre-releases out, as False)
    order: str = "semver"  # of `latest`: semver, or created (its times asked for)

    def as_dict(self) -> dict[str, Any]:
        """The rule as images.yaml gives it, in one form (the lock file's and the report's
        `rule`, which a lock's entry is matched by): `exclude` always a list, the defaults
        (`order: semver`, no pre-releases) left out."""
        d: dict[str, Any] = {}
        if self.semver is not None:
            d["semver"] = self.semver.text
        if self.regex is not None:
            d["regex"] = self.regex
        if self.exclude:
            d["exclude"] = list(self.exclude)
        if self.latest is not None:
            d["latest"] = self.latest
        if self.prerelease:
            d["prerelease"] = True
        if self.order != "semver":  # the default unwritten: rules recorded before match
            d["order"] = self.order
        return d

    def describe(self) -> str:
        return ", ".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}"
                         for k, v in self.as_dict().items())

    def candidates(self, tags: list[str]) -> list[str]:
        """The tags every key but `latest` keeps: those `order: created` asks the times of."""
        return [t for t, _ in self._kept(tags)]

    def select(self, tags: list[str],
               created: dict[str, datetime | None] | None = None) -> list[str]:
        """The tags this rule keeps, lowest version first (tags that are not versions after,
        by name); with `order: created`, oldest first by `created` (the candidates' times:
        none ranks oldest; equal times by name)."""
        kept = self._kept(tags)
        if self.order == "created":
            assert created is not None
            ranked = sorted((t for t, _ in kept),
                            key=lambda t: (created[t] is not None, created[t] or 0, t))
            return ranked[-self.latest:] if self.latest else ranked
        versions = sorted(((t, v) for t, v in kept if v is not None),
                          key=lambda tv: (tv[1].key(), tv[0]))
        if self.latest is not None:
            return [t for t, _ in versions[-self.latest:]] if self.latest > 0 else []
        return [t for t, _ in versions] + sorted(t for t, v in kept if v is None)

    def held_back(self, tags: list[str]) -> list[str]:
        """The tags the rule's `regex` finds, and its other keys but `latest` keep, that are
        left out as pre-release versions only because `prerelease` is not given: a date
        (`2024-05-01` reads as 2024 with pre-release `05-01`) or a variant (`3.19-alpine`)
        reads as one. Said as a warning (`_choose`), not left for the user to find missing;
        `prerelease: false` says they stay out, and is silent."""
        if self.regex is None or self.prerelease is not None:
            return []
        return [t for t, v in replace(self, prerelease=True)._kept(tags)
                if v is not None and v.prerelease]

    def _kept(self, tags: list[str]) -> list[tuple[str, Version | None]]:
        kept: list[tuple[str, Version | None]] = []
        for tag in tags:
            v = Version.parse(tag)
            if v is not None and v.prerelease and not self.prerelease:
                continue
            if self.semver is not None and (v is None or v not in self.semver):
                continue
            if self.regex is not None and not re.search(self.regex, tag):
                continue
            if any(re.search(x, tag) for x in self.exclude):
                continue
            kept.append((tag, v))
        return kept


def check_regex(text: str) -> str:
    """Raise ValueError when `text` is not a regular expression."""
    try:
        re.compile(text)
    except re.error as e:
        raise ValueError(f"{text!r} is not a regular expression: {e}") from None
    return text


def is_rule(spec: ImageSpec) -> bool:
    """A rule not yet resolved to tags (its reference names the repository alone)."""
    return spec.rule is not None and spec.reference.tag is None


def _nothing(spec: ImageSpec, listed: list[str], held: list[str]) -> ConfigError:
    assert spec.rule is not None
    if held:
        return ConfigError(
            f"{spec.where}: {spec.reference.name}: the tag rule ({spec.rule.describe()}) "
            f"keeps none of the repository's {len(listed)} tag(s): its regex finds "
            f"{_some(sorted(held))}, read as pre-release versions",
            hint="a tag such as 1.3.0-rc.1, 2024-05-01 or 3.19-alpine reads as VERSION-"
                 "PRERELEASE: add `prerelease: true` to the rule to keep them")
    return ConfigError(
        f"{spec.where}: {spec.reference.name}: the tag rule ({spec.rule.describe()}) matches "
        f"none of the repository's {len(listed)} tag(s)",
        hint=f"its tags: {_some(listed)}" if listed else "the repository has no tags")


def _held_back(spec: ImageSpec, held: list[str]) -> str:
    assert spec.rule is not None
    return (f"{spec.where}: {spec.reference.name}: the tag rule ({spec.rule.describe()}) "
            f"leaves out {_some(sorted(held))}, which its regex finds, as pre-release "
            "versions; "
            f"{_PRERELEASE_HINT}")


_PRERELEASE_HINT = ("a tag such as 1.3.0-rc.1, 2024-05-01 or 3.19-alpine reads as VERSION-"
                    "PRERELEASE: add `prerelease: true` to the rule to keep them, or "
                    "`prerelease: false` to leave them out without this warning")


def _some(tags: list[str]) -> str:
    return ", ".join(tags[:10]) + (f" ... ({len(tags)} in all)" if len(tags) > 10 else "")


def expand(spec: ImageSpec, tags: list[str]) -> list[ImageSpec]:
    """One image per tag `spec`'s rule chose (the rule and its file:line kept on each)."""
    return [replace(spec, reference=replace(spec.reference, tag=t)) for t in tags]


async def resolve_rules(client: Client, specs: list[ImageSpec], blobs: BlobStore | None = None,
                        warn: Callable[[str], None] = lambda _: None,
                        recorded: list[dict[str, Any]] | None = None) -> list[ImageSpec]:
    """Every rule in `specs` replaced, in place in the list, by the images of the tags it
    chooses from the repository's listing (one listing per repository); raise ConfigError
    for a rule that chooses none. `order: created` asks the times of its candidates
    (mirror.created: configs through `blobs`, the cache); `warn` names the tags without.
    A rule whose registry's requests for the run are spent (BudgetSpent) waits for the next
    run: the tags the last lock file `recorded` for it stand in (they wait too, each named,
    and the lock keeps them), else the rule itself, unresolved, marked `failed`. A rule whose
    listing failed otherwise (the repository gone, 5xx through the retries, access denied)
    fails as a fixed tag would, its images (those tags, else the rule) marked `failed` with
    the error: the run stops on it, or with --keep-going finishes the others (exit 13)."""
    listings: dict[str, asyncio.Future[list[str]]] = {}
    times: list = []

    async def one(spec: ImageSpec) -> list[ImageSpec]:
        if not is_rule(spec):
            return [spec]
        try:
            chosen = await _choose(client, spec, listings, times, blobs, warn)
        except BudgetSpent as e:
            return from_lock(spec, recorded or []) or [
                replace(spec, failed=_waits(spec, e, kept=client.manifests is not None))]
        except ConfigError:  # a rule that matches nothing (exit 2)
            raise
        except MirrorError as e:
            return [replace(s, failed=e) for s in from_lock(spec, recorded or []) or [spec]]
        return expand(spec, chosen)

    # every rule at once: one registry's listing that waits (a 429's Retry-After) does not
    # hold another's rules (each registry's limiter bounds its own requests)
    try:
        chosen = await gather_or_cancel(one(spec) for spec in specs)
    finally:  # a rule that failed (or a signal) leaves no listing running, nor unseen
        await cancel_all(listings.values())
        if times:
            await times[0].close()
    return [s for part in chosen for s in part]


def _waits(spec: ImageSpec, e: BudgetSpent, *, kept: bool) -> BudgetSpent:
    """`e` saying that `spec`'s rule waits (its tags unknown: no lock file records them), and,
    for `order: created`, how far its candidates' times got: those read are `kept` (the
    cache; a sync without --cache keeps none), and a run on a budget asks only those not
    read yet (mirror.created)."""
    assert spec.rule is not None
    got = ""
    if e.unasked:
        got = (f": the creation times of {e.unasked} of its {e.candidates} candidate tags "
               "still to read" + (" (what this run read is kept: the next run goes on from "
                                  "there)" if kept else ""))
    waits = BudgetSpent(f"tag rule at {spec.where} ({spec.rule.describe()}){got}: {e}",
                        registry=e.registry, repository=e.repository, status=e.status,
                        codes=e.codes, hint=e.hint)
    waits.unasked, waits.candidates = e.unasked, e.candidates
    return waits


async def _choose(client: Client, spec: ImageSpec,
                  listings: dict[str, asyncio.Future[list[str]]], times: list,
                  blobs: BlobStore | None, warn: Callable[[str], None]) -> list[str]:
    """The tags `spec`'s rule chooses (the repository listed once per run, in `listings`,
    for every rule on it; `times` holds the run's mirror.created.Times once made)."""
    ref = spec.reference
    if ref.name not in listings:
        listings[ref.name] = asyncio.ensure_future(_listing(client, ref.registry,
                                                            ref.repository))
    listed = await asyncio.shield(listings[ref.name])  # another rule may await it too
    assert spec.rule is not None
    created = None
    if spec.rule.order == "created":
        from mirror.created import Times

        if not times:
            times.append(Times(client, blobs))
        candidates = spec.rule.candidates(listed)
        created = await times[0].of_tags(spec, candidates)
        gone = [t for t in candidates if t not in created]
        if gone:  # listed, then deleted before its time was read: no tag to choose now
            listed = [t for t in listed if t not in gone]
            warn(f"{spec.where}: {ref.name}: {', '.join(gone)} listed but gone when asked "
                 "about (deleted since the listing): not chosen by the tag rule")
        unknown = sorted(t for t, at in created.items() if at is None)
        if unknown:
            warn(f"{spec.where}: {ref.name}: no creation time for {', '.join(unknown)} "
                 "(no org.opencontainers.image.created annotation, no `created` in the "
                 "config): ranked oldest by the tag rule")
    chosen = spec.rule.select(listed, created)
    held = spec.rule.held_back(listed)
    if not chosen:
        raise _nothing(spec, listed, held)
    if held:
        warn(_held_back(spec, held))
    return chosen


async def _listing(client: Client, registry: str, repository: str) -> list[str]:
    """The repository's tags a rule may choose from, once for all its rules; the whole
    listing is kept in `client.listed` for the referrers' discovery. The tags of signatures,
    SBOMs and attestations are no images: they travel with theirs."""
    listed = await client.list_tags(registry, repository)
    client.listed[(registry, repository)] = listed
    return [t for t in listed if not is_referrer_tag(t)]


def resolved(specs: list[ImageSpec]) -> list[dict[str, Any]]:
    """What each rule chose: `repository`, `rule`, `where` and `tags` (in the order chosen);
    the lock file's `tagRules` and the report's `tag_rules`."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for spec in specs:
        if spec.rule is None or spec.reference.tag is None:
            continue
        key = (spec.reference.name, repr(spec.rule.as_dict()))
        entry = out.setdefault(key, {"repository": spec.reference.name,
                                     "rule": spec.rule.as_dict(), "where": spec.where,
                                     "tags": []})
        entry["tags"].append(spec.reference.tag)
    return list(out.values())


def from_lock(spec: ImageSpec, recorded: list[dict[str, Any]]) -> list[ImageSpec] | None:
    """--locked: the images of the tags the lock file recorded for `spec`'s rule; None when
    it recorded nothing for it."""
    assert spec.rule is not None
    for entry in recorded:
        if isinstance(entry, dict) and entry.get("repository") == spec.reference.name and \
                entry.get("rule") == spec.rule.as_dict() and isinstance(entry.get("tags"), list):
            return expand(spec, [str(t) for t in entry["tags"]])
    return None
