"""What the commands that read images from registries share (pull, lock, sync; load's and
sync's pushes): the images asked for, the source client, tag rules, the lock file written after
a run, and the report's common parts. Each command's run is in its own module beside its
engine (mirror.pull_run, mirror.sync_run, mirror.load_run, ...), imported by mirror.cli only
when that command runs."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirror.config import Config, ImageSettings, ImageSpec, load_config
from mirror.errors import EXIT_PARTIAL, EXIT_RATE_LIMITED_PARTIAL, MirrorError, UsageError
from mirror.platform import PlatformSelector
from mirror.reference import Reference
from mirror.report import Report
from mirror.runfiles import lock_path

if TYPE_CHECKING:
    from mirror.pull_options import PullOptions


def image_specs(args: argparse.Namespace) -> tuple[list[ImageSpec], Config | None]:
    cfg = load_config(args.file) if args.file else None
    base = cfg.defaults if cfg else ImageSettings()
    specs = list(cfg.images) if cfg else []
    specs += [ImageSpec(Reference.parse(t), base, "command line") for t in args.images]
    if not specs:
        raise UsageError("no images: give -f images.yaml or image references")
    over: dict = {}
    if args.platform:
        over["platforms"] = PlatformSelector.parse(args.platform)
    if args.index:
        over["index"] = args.index
    if args.format:
        over["format"] = args.format
    if args.foreign_layers:
        over["foreign_layers"] = args.foreign_layers
    if args.no_referrers:  # exactly `referrers: false` for every image
        over["referrers"] = False
    if over:
        specs = [replace(s, settings=replace(s.settings, **over)) for s in specs]
    refuse_conflicting_duplicates(specs)
    if getattr(args, "locked", False):
        from mirror.lockfile import pin

        specs = pin(specs, lock_path(args))
    return specs, cfg


def refuse_conflicting_duplicates(specs: list[ImageSpec]) -> None:
    """A bundle (and a lock file) holds one entry per reference: one listed twice with other
    settings would have its first listing silently replaced by the second. Listed twice
    with the same settings (or made the same by a flag) is harmless."""
    from mirror.config import settings_as_dict

    first: dict[str, ImageSpec] = {}
    for spec in specs:
        seen = first.setdefault(str(spec.reference), spec)
        if seen is spec or (seen.settings, seen.dest) == (spec.settings, spec.dest):
            continue
        a, b = settings_as_dict(seen.settings), settings_as_dict(spec.settings)
        # to:, tag_as:, tags_also: (as the bundle's annotations)
        a["destination"], b["destination"] = str(seen.dest or "none"), str(spec.dest or "none")
        diff = "; ".join(f"{k}: {b[k]} here, {a[k]} there" for k in a if a[k] != b[k])
        raise UsageError(
            f"{spec.where}: {spec.reference} is listed again (first at {seen.where}) with "
            f"other settings ({diff})",
            hint="a bundle holds one entry per reference: list it once, with the settings it "
                 "needs")


def pull_options(args: argparse.Namespace, **kw) -> PullOptions:
    """PullOptions for `pull` and `lock` alike: what the flags choose beyond each image's
    settings (those are in image_specs), so a lock records what a pull with the same flags
    does."""
    from mirror.artifacts import parse_types
    from mirror.pull_options import PullOptions

    return PullOptions(jobs=args.jobs, referrer_types=parse_types(args.referrer_type), **kw)


def source_client(t, cache, cfg: Config | None, args: argparse.Namespace):
    """The Client a pull, lock or sync reads its sources with: the cache's manifests (none
    without a cache), told what the lock file says each tag named where the cache does not
    know (so those tags too are asked about with a HEAD), and the registries whose referrers
    it may take from the cache."""
    from mirror.registry.client import Client
    from mirror.store.manifests import ManifestStore

    store = ManifestStore(cache) if cache else None
    lock = lock_path(args)
    if store is not None and lock is not None:
        from mirror.lockfile import source_digests

        for text, digest in source_digests(lock).items():
            try:
                ref = Reference.parse(text)
            except MirrorError:  # a hand-edited lock: only a hint, so nothing lost
                continue
            if ref.tag and not ref.digest and store.tag(ref.registry, ref.repository,
                                                         ref.tag) is None \
                    and store.get(digest) is not None:
                store.remember(ref.registry, ref.repository, ref.tag, digest)
    client = Client(t, store)
    client.cached_referrers = set(cfg.cached_referrers) if cfg else set()
    return client


async def tag_rules(client, specs: list[ImageSpec], report: Report, progress,
                    blobs=None, lock: Path | None = None) -> list[ImageSpec]:
    """The images the tag rules choose (mirror.tagrules; --locked: what the lock recorded),
    in the report's `tag_rules`; `blobs`, the cache, keeps the configs `order: created`
    reads; the tags the lock file at `lock` recorded stand in for a rule whose registry's
    requests are spent."""
    chosen: list[dict[str, Any]] = []
    if _with_rules(specs):
        from mirror.lockfile import recorded_rules
        from mirror.tagrules import resolve_rules, resolved

        specs = await resolve_rules(client, specs, blobs, progress.warn, recorded_rules(lock))
        chosen = resolved(specs)
    refuse_conflicting_duplicates(specs)
    report.add(tag_rules=chosen)
    return _once(specs)


def _with_rules(specs: list[ImageSpec]) -> bool:
    """Some image is a tag rule's, chosen or not; a run without one does not import
    mirror.tagrules (nor mirror.semver): its images are those given."""
    return any(s.rule is not None for s in specs)


async def images_now(client, specs: list[ImageSpec], report: Report, progress, blobs,
                     lock: Path | None, final: list[ImageSpec]):
    """The images to plan now, and the tag rules' choice of the run's images to plan them
    among (mirror.planning.Planner's `later`; None: there are no rules, or no image to plan
    meanwhile, and the images now are the run's, chosen before). `final` gets the run's."""
    async def rules() -> list[ImageSpec]:
        final[:] = await tag_rules(client, specs, report, progress, blobs, lock)
        return final

    early = planned_meanwhile(client, specs)
    if early is None:
        return await rules(), None
    return early, rules


def planned_meanwhile(client, specs: list[ImageSpec]) -> list[ImageSpec] | None:
    """The images a pull resolves while its tag rules choose theirs (None: no rule), so that
    a registry holding its listing (a Retry-After) holds only its own images: those that are
    no rule, on a registry without a request budget (its images go in the config's order),
    in a repository no rule lists (its listing, and the manifests `order: created` reads,
    asked once)."""
    if not _with_rules(specs):
        return None
    from mirror.tagrules import is_rule

    listed = {(s.reference.registry, s.reference.repository) for s in specs if is_rule(s)}
    if not listed:
        return None
    return _once([s for s in specs if not is_rule(s)
                  and (s.reference.registry, s.reference.repository) not in listed
                  and client.t.limits_for(s.reference.registry).budget is None]) or None


def _once(specs: list[ImageSpec]) -> list[ImageSpec]:
    """Each reference once, where first listed: a tag two rules choose (or one listed twice
    with the same settings, refuse_conflicting_duplicates) is one image of the run, as of
    the bundle; what each rule chose is in the report's tag_rules, which the lock records."""
    seen: set[str] = set()
    out = []
    for spec in specs:
        if str(spec.reference) not in seen:
            seen.add(str(spec.reference))
            out.append(spec)
    return out


def as_given(specs: list[ImageSpec], report: Report) -> None:
    """Each image of the run as given (a tag rule by its repository) in the report, with the
    run's error should it stop before planning them (at its tag rules: an error, a signal);
    the run's own entries replace them once it has them (so these are made only when the
    report is written before that)."""

    def entries() -> list[dict[str, Any]]:
        from mirror.imageresult import ImageResult

        return [ImageResult(str(s.reference), s.where).entry() for s in specs]

    report.add_later("images", entries)


def write_lock(args: argparse.Namespace, result, report: Report,
               carried: dict[str, int] | None = None) -> Path | None:
    """The lock file of the run: its images, and the tag rules' choices as reported;
    `carried`: the blobs an incremental pull's --base carried (mirror.lockfile.after_run)."""
    path = lock_path(args)
    if path is None or getattr(args, "locked", False):
        return None
    from mirror.lockfile import after_run

    lock = after_run(result, path, list(report.details.get("tag_rules") or []), carried)
    if lock is None:
        return None
    lock.write(path)
    return path


def traffic(transport) -> dict:
    """The report's `requests` (per registry, by kind) and `rate_limit` (per registry, the
    last RateLimit headers it sent): empty before any request."""
    if transport is None:
        return {"requests": {}, "rate_limit": {}}
    return {"requests": transport.requests_report(),
            "rate_limit": transport.rate_limit_report()}


def starved(transport, specs, progress, images=None, kept: bool = True,
            carried: bool | None = None) -> None:
    """A registry whose max_requests_per_run went before any blob could be fetched, or whose
    first image's blobs need more than a run with nothing new to resolve leaves them: its
    images would wait every night, never getting further. One warning naming it, what the
    budget went on, and a run's least need (what this one spent, and a blob GET per image,
    or the blobs of the image refused; on a rerun that carried some of them from the cache
    (`images`, the run's results, tell), what it spent scaled to all its images). A tag
    rule's candidates' times a run read are `kept` in the cache (none without one: a sync
    without --cache), and the next run asks only the rest (mirror.created): then, if this
    one read any, it gets further, which the warning says. `carried`: whether the run
    brought anything new (a sync without --cache, whose configs are blob GETs of every
    run: pushed anything); None: a blob GET of the registry says so."""
    waiting = set(waiting_images(images or []))
    for reg, lim in sorted(transport.limits.items()):
        if lim.budget is None or (lim.counts.get("blob GET") if carried is None else carried):
            continue
        n = sum(1 for s in specs if s.reference.registry == reg)
        if not n:
            continue
        went = ", ".join(f"{k} {v}" for k, v in sorted(lim.counts.items()))
        left = sum(1 for s in specs if s.reference.registry == reg and str(s.reference) in waiting)
        if images is not None and not left:
            continue  # every image of it carried (from the cache): nothing waits
        if lim.made >= lim.budget and 0 < left < n:
            need = -(-lim.made * n // (n - left))  # what the carried ones took, scaled up
            progress.warn(f"{reg}: max_requests_per_run: {lim.budget} was spent resolving "
                          f"({went}) before {left} of its {n} image(s) could be asked for, "
                          f"with nothing new to fetch: a run needs about {need} requests "
                          f"(what this one spent on {n - left} image(s), scaled to {n}); "
                          f"raise it{'' if kept else ', or give it a --cache'}, or the same "
                          "images wait every run")
        elif lim.made >= lim.budget:
            # a tag rule cut short in its candidates' times: a request each, at least
            unasked = sum(getattr(s.failed, "unasked", 0) for s in specs
                          if s.reference.registry == reg)
            also = f", a request per tag rule candidate it left unasked ({unasked})" \
                if unasked else ""
            # read some of them (a manifest GET: one seen is not asked again), the next run
            # goes further; none (the ping and listing took it all), it is this run again
            gets_on = unasked and kept and lim.counts.get("manifest GET")
            then = ("; what it read of the candidates is kept, and the next run goes on from "
                    "there: runs on this budget get through them" if gets_on
                    else "; raise it, or the same images wait every run")
            progress.warn(f"{reg}: max_requests_per_run: {lim.budget} was spent before any "
                          f"image could be fetched ({went}): a run of these {n} image(s) "
                          f"needs at least {lim.made + unasked + n} requests (what this "
                          f"one spent resolving them{also}, and a blob GET each){then}")
        elif lim.refused is not None and (not kept or not lim.counts.get("manifest GET")):
            # every manifest came from the cache, or (a sync without --cache: nothing kept,
            # no blob fetched) those its targets hold were resolved again: the next run
            # resolves at the same cost
            what = "with nothing new to resolve" if kept else \
                "the images its targets hold resolved again (no --cache keeps them)"
            also = "" if kept else ", or give it a --cache"
            progress.warn(f"{reg}: max_requests_per_run: {lim.budget} leaves the first image "
                          f"that waits too few requests for its {lim.refused} blob(s) after "
                          f"resolving ({went}), {what}: a run needs at least "
                          f"{lim.made + lim.refused} requests; raise it{also}, or the same "
                          "images wait every run")


def placement(result, dry_run: bool = False) -> list[dict] | None:
    """Per image the target holds (referrers left out): source -> target repository, the
    tags the push put or found there, and the digest of its manifest there; an image not
    there (it waits for a registry's rate limit, the push stopped before it), or not whole
    (`left`: it, or a referrer of it, failed there), is not listed. A dry run's: where
    each image would land, with every tag."""
    if result is None or not result.images:
        return None
    # what the target serves: REPO:TAG and REPO@DIGEST (the push's own word, as printed)
    there = {r.split("/", 1)[1] for r in [*result.tags, *result.pinned, *result.untagged]}
    out: dict[tuple[str, str], list[str]] = {}
    digests: dict[tuple[str, str], str] = {}
    for img in result.images:
        repo = img.repository
        if img.referrer_of is not None or img.name in result.left or not dry_run and \
                img.at not in there:
            continue
        tags = out.setdefault((img.name, repo), [])
        digests[img.name, repo] = img.root.digest
        if img.tag:
            tags.append(img.tag)
    return [{"source": name, "repository": repo, "tags": tags, "digest": digests[name, repo]}
            for (name, repo), tags in out.items()]


def failed_images(result) -> list[dict]:
    """The images a push's target could not take (mirror.pushplan.PushResult.failed), each
    with where it would have gone and why: load's report's `failed`."""
    return [{"source": img.name, "repository": img.repository, "tag": img.tag,
             "digest": img.root.digest, "error": str(e), "error_code": e.exit_code}
            for img, e in result.failed]


def partial(images, rest: str, progress, report: Report) -> int:
    """Some images failed (--keep-going) or wait for a registry's rate limit: one line
    saying how many, also the report's error (exit 13 or 14 is not success); exit 14 when
    every image that failed waits, else 13."""
    failed = [r for r in images if r.error]
    waiting = waiting_images(images)
    if waiting:
        others = len(failed) - len(waiting)
        line = (f"{len(waiting)} of {len(images)} image(s) wait for a registry's rate limit "
                f"(the next run takes them)" + (f", {others} failed" if others else "")
                + f"; {rest}")
    else:
        line = f"{len(failed)} of {len(images)} image(s) failed; {rest}"
    progress.warn(line)
    report.error = line
    return EXIT_RATE_LIMITED_PARTIAL if len(waiting) == len(failed) else EXIT_PARTIAL


def waiting_images(images) -> list[str]:
    """The report's `waiting`: the images a registry's rate limit left for the next run."""
    return [r.reference for r in images if r.error_code == EXIT_RATE_LIMITED_PARTIAL]


_PUSH_FIELDS = ("blobs_pushed", "blobs_mounted", "blobs_present", "bytes_pushed",
                "manifests_pushed", "manifests_present", "tags", "untagged")


def push_report(result) -> dict:
    """What a push did (mirror.pushplan.PushResult), for load's report and each of sync's
    targets; None for each when the push stopped before the target said what it holds."""
    return {k: getattr(result, k) if result is not None and result.started else None
            for k in _PUSH_FIELDS}


def push_summary(result) -> str:
    return (f"{result.blobs_pushed} blob(s) pushed ({result.bytes_pushed} bytes), "
            f"{result.blobs_mounted} mounted, {result.blobs_present} already present, "
            f"{result.manifests_pushed} manifest(s) pushed ({result.manifests_present} "
            f"already there), {len(result.tags)} tag(s)")


def print_pushed(result) -> None:
    """The images loaded (or synced), each by its tag or, with none, its digest; not the
    signatures, SBOMs and attestations pushed with them, whatever their kind, nor an image
    the target did not get whole (`left`): what `placement` lists."""
    referrers = set(result.referrer_tags)
    left = {img.at for img in result.images if img.name in result.left}
    for ref in [*result.tags, *result.untagged, *result.pinned]:  # tag or digest
        if ref not in referrers and ref.split("/", 1)[1] not in left:
            print(ref)
