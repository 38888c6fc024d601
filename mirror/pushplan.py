"""What a push to one target registry decides, with no request of its own (mirror.push asks
the target and acts): which blobs each repository needs asked about and how each then gets
there (present, mounted, uploaded, or missing from an incremental bundle's base), the order
of the manifests, and what a tag gets over the index it already holds. The dry run and the
push act on the same decisions. Also the push's input and record: PushImage, PushResult."""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field

from mirror.errors import AuthError, IntegrityError, MirrorError, RateLimited, RegistryError
from mirror.image import Image, push_order
from mirror.manifest import Descriptor, RawManifest
from mirror.merge import merged, other_platforms, platforms
from mirror.registry.upload import MONOLITHIC_MAX


@dataclass
class PushImage:
    """An image (mirror.image) and where it goes at the target."""

    image: Image
    repository: str  # target repository
    tag: str | None
    unnamed: bool = False  # an entry with no ref name (skopeo's oci-archive:FILE): by digest

    @property
    def name(self) -> str:  # the source's name for it
        return self.image.name

    @property
    def root(self) -> RawManifest:
        return self.image.root

    @property
    def referrer_of(self) -> str | None:  # a signature, SBOM or attestation: its subject
        return self.image.subject

    @property
    def at(self) -> str:
        """Where it is at the target: REPOSITORY:TAG, or REPOSITORY@DIGEST without a tag."""
        return f"{self.repository}:{self.tag}" if self.tag else \
            f"{self.repository}@{self.root.digest}"

    @functools.cached_property
    def manifests(self) -> list[RawManifest]:
        """Those under the root, children before their parents, root last."""
        return push_order([self.image.root], self.image.manifests)

    @functools.cached_property
    def blobs(self) -> list[Descriptor]:
        """Every blob the manifests name (absent on purpose or not), each once."""
        return list({d.digest: d for m in self.manifests for d in m.blobs()}.values())


@dataclass
class PushResult:
    """What a push did (and, in a dry run, would do): filled in as it goes, so after a
    failure it holds what was done."""

    images: list[PushImage] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)  # target@digest of images without a tag
    blobs_pushed: int = 0
    blobs_mounted: int = 0
    blobs_present: int = 0
    bytes_pushed: int = 0
    manifests_pushed: int = 0
    manifests_present: int = 0
    tags: list[str] = field(default_factory=list)
    # of `tags`, the referrers' (cosign's `.sig`, `.att`, `.sbom`): not images loaded, so
    # not printed, as the referrers with a subject (by digest, their fallback index) are not
    referrer_tags: list[str] = field(default_factory=list)
    untagged: list[str] = field(default_factory=list)  # HOST/REPO@DIGEST of unnamed entries
    dry_run: list[str] = field(default_factory=list)
    # the images the target could not take, each alone (ImageFailed), with why: their
    # tags (and their referrers) were left out, the others pushed
    failed: list[tuple[PushImage, MirrorError]] = field(default_factory=list)
    # the images (by name; a sync's: the run's references) this target did not get whole,
    # each with why: what failed here, it or a referrer of it (the push fills it from
    # `failed`: not_whole), or a sync's BudgetSpent (a registry's rate limit: it waits for
    # the next run); placement and stdout leave them out
    left: dict[str, MirrorError] = field(default_factory=dict)
    started: bool = False  # the target answered what it holds: the counts mean something
    placed: bool = False  # every manifest decided, the referrers' last: the push got through


class ImageFailed(Exception):
    """An image the target cannot take, raised where the push finds out: a manifest of the
    target's it reads (the index a tag holds, a referrers' fallback index) that the target
    does not serve as it said it holds it. The push leaves that image out (its tags, its
    referrers) and goes on with the others (PushResult.failed)."""

    def __init__(self, error: MirrorError) -> None:
        super().__init__(str(error))
        self.error = error


def fails_alone(e: BaseException, source: bool = False) -> bool:
    """Whether error `e` of one image's push is that image's alone (a sync's --keep-going
    fails it where it happened and goes on): the target's answer with an error status (a
    manifest or blob it refuses, a 5xx through all the tries), but 401/403 (the credentials
    serve every image) and 429 (a rate limit: the images wait), or bytes that do not match;
    of the `source` (a blob it cannot give), also a request no answer came for through all
    its tries. Not a local error (a full cache disk), nor a target that does not answer:
    every image's."""
    if isinstance(e, (AuthError, RateLimited)):
        return False
    if isinstance(e, IntegrityError):
        return True
    return isinstance(e, RegistryError) and (source or e.status is not None)


def tied(images: list[PushImage], why: Mapping[int, MirrorError]) -> dict[int, MirrorError]:
    """`why` (the id() of an Image left out of a push -> the error that left it out) with
    what is tied to those images: what refers to them (their signatures, SBOMs and
    attestations) and what they refer to (a signature's image: not tagged without it, o26
    D3), in turn, each with the error of the one that tied it. Every PushImage of an Image
    (each tag) goes with it."""
    out = dict(why)
    while True:
        gone = [p for p in images if id(p.image) in out]
        manifests = {m.digest: out[id(p.image)] for p in gone for m in p.manifests}
        subjects = {p.referrer_of: out[id(p.image)] for p in gone if p.referrer_of}
        more: dict[int, MirrorError] = {}
        for p in images:
            if id(p.image) in out:
                continue
            err = manifests.get(p.referrer_of) if p.referrer_of else None
            if err is None:
                err = next((subjects[m.digest] for m in p.manifests if m.digest in subjects),
                           None)
            if err is not None:
                more.setdefault(id(p.image), err)
        if not more:
            return out
        out.update(more)


def not_whole(images: list[PushImage], failed: list[tuple[PushImage, MirrorError]]
              ) -> dict[str, MirrorError]:
    """The images of a push its target does not hold whole for what failed there
    (PushResult.failed): each that failed, or is tied to one that did (`tied`: a signature,
    SBOM or attestation of it failed, whose image's tag may be there, put before its
    referrers), by name, with the first error; the referrers are not named."""
    why = tied(images, {id(p.image): e for p, e in reversed(failed)})
    return {p.name: why[id(p.image)] for p in images
            if p.referrer_of is None and id(p.image) in why}


def unserved(e: MirrorError, where: str, digest: str | None) -> MirrorError:
    """The one line of an image that fails because the target does not serve (again) what
    its tag `where` (REGISTRY/REPOSITORY:TAG) holds (`digest`, when known), with `e`'s exit
    code: `e`'s own line without the reference it starts with."""
    msg = str(e)
    repo, _, tag = where.rpartition(":")
    for named in (where, f"{repo}: tag {tag}"):
        if msg.startswith(named):
            msg = msg[len(named):].lstrip(":").strip()
            break
    held = f" ({digest})" if digest else ""
    err = MirrorError(f"{where}: the target does not serve what the tag holds{held}: {msg}",
                      hint=e.hint or "the tag was left as it was, the other images pushed: "
                      "check that manifest in the target's storage, then run again")
    err.exit_code = e.exit_code
    return err


# -- blobs ---------------------------------------------------------------------------------

Check = tuple[str, Descriptor]  # (target repository, blob) asked about with a HEAD


@dataclass
class BlobPlan:
    """What the target holds and what each blob needs: the one set of decisions the push
    and the dry run act on."""
    mounts: list[tuple[str, Descriptor, str]] = field(default_factory=list)  # repo, blob, from
    todo: dict[str, list[tuple[str, Descriptor]]] = field(default_factory=dict)  # to upload
    missing_base: list[str] = field(default_factory=list)
    searched: int = 0
    present: int = 0  # (repository, blob) pairs the target has: the report's blobs_present


def push_requests(img: PushImage, there: set[str], target: Hashable, merge: bool,
                  mounted: Callable[[Descriptor], bool], step0: bool | None | str = "unasked"
                  ) -> set[Hashable]:
    """The requests a push of `img` may make at its target, at most, each named as the push
    makes it once (`target` tells targets apart): of each blob not `there` a HEAD in its
    repository and, where the push mounts it from a repository of the target's registry
    (`mounted`: a sync within one registry mounts from the source's), the mount's POST
    alone, else an upload (its session's POST and the PUT, a PATCH more above
    MONOLITHIC_MAX); of each manifest a HEAD and the PUT, but of the root's reference the
    PUT alone where step 0 asked about it (`step0`: its answer, False: the reference names
    another manifest, None: nothing; "unasked"); for a tag that may name something, the GET
    of what it holds and, with `merge`, a HEAD of the index merged with it and the root by
    digest; of a referrer, the GET and the PUT of its subject's fallback index (a registry
    without the referrers API). A sync's admission promises them where the target is the
    source's own registry, whose budget they spend (mirror.sync_plan)."""
    repo = img.repository
    out: set[Hashable] = set()
    for d in img.blobs:
        if d.digest in there:
            continue
        kinds: tuple[str, ...] = ("HEAD", "POST")
        if not mounted(d):
            kinds += ("PUT", *(("PATCH",) if d.size > MONOLITHIC_MAX else ()))
        out |= {(target, repo, d.digest, kind) for kind in kinds}
    at = img.tag or img.root.digest
    refs = [m.digest for m in img.manifests[:-1]]
    if img.tag and merge and step0 is not None:
        refs.append(img.root.digest)
    out |= {(target, repo, ref, kind) for ref in refs for kind in ("manifest HEAD", "PUT")}
    out |= {(target, repo, at, kind) for kind in
            ("PUT", *(("manifest HEAD",) if step0 == "unasked" else ()))}
    if img.tag and step0 is not None:
        out |= {(target, repo, img.tag, kind) for kind in
                ("GET", *(("merged HEAD",) if merge else ()))}
    if img.tag is None and img.root.subject is not None:  # as Pusher._place adds it
        out |= {(target, repo, img.root.subject.digest, kind)
                for kind in ("fallback GET", "fallback PUT")}
    return out


def blob_needs(images: list[PushImage], held: set[int]
               ) -> tuple[dict[str, dict[str, Descriptor]], set[tuple[str, str]]]:
    """Which blobs each repository needs asked about, and the (repository, blob) pairs of
    the images the target serves whole already (`held`: their id()), never asked about."""
    need: dict[str, dict[str, Descriptor]] = {}
    there: set[tuple[str, str]] = set()
    for img in images:
        for d in img.blobs:
            if id(img) in held:
                there.add((img.repository, d.digest))
            else:
                need.setdefault(img.repository, {})[d.digest] = d
    return need, there


def held_only(need: dict[str, dict[str, Descriptor]], there: set[tuple[str, str]]) -> int:
    """The pairs of images there whole that no other image needs asked about: counted
    present, as when each was asked about."""
    return len({(r, dg) for r, dg in there if dg not in need.get(r, {})})


def holders(checks: list[Check], flags: list[bool], there: set[tuple[str, str]],
            origins: Mapping[str, str]) -> dict[str, str]:
    """digest -> a target repository that has it (a HEAD said so, or an image there
    whole), else the repository of the target's registry the source reads it from
    (`origins`: a sync within one registry): where a mount takes it from."""
    out: dict[str, str] = {}
    for (repo, d), ok in zip(checks, flags, strict=True):
        if ok:
            out.setdefault(d.digest, repo)
    for repo, digest in sorted(there):
        out.setdefault(digest, repo)
    for _, d in checks:
        if d.digest in origins:
            out.setdefault(d.digest, origins[d.digest])
    return out


def lost_base(checks: list[Check], flags: list[bool], held_in: dict[str, str],
              carries: Callable[[str], bool], absent: Mapping[str, str]
              ) -> dict[str, Descriptor]:
    """An incremental source's base blobs that are in no repository asked about: the
    caller looks for them in the target's other repositories."""
    return {d.digest: d for (_, d), ok in zip(checks, flags, strict=True)
            if not ok and d.digest not in held_in and not carries(d.digest)
            and absent.get(d.digest) == "base"}


def blob_plan(checks: list[Check], flags: list[bool], held_in: dict[str, str],
              carries: Callable[[str], bool], absent: Mapping[str, str]) -> BlobPlan:
    """Per blob a repository lacks: a mount where the target has it elsewhere, an upload
    where the source carries it, missing where it is a base blob found nowhere; a foreign
    one (`absent` "foreign", or not carried) is never needed."""
    plan = BlobPlan()
    for (repo, d), ok in zip(checks, flags, strict=True):
        if ok:
            plan.present += 1
            continue
        reason = None if carries(d.digest) else absent.get(d.digest, "foreign")
        # foreign: never needed; a source repository the blob is not in (HEAD): no mount
        if held_in.get(d.digest, repo) != repo and reason in (None, "base"):
            plan.mounts.append((repo, d, held_in[d.digest]))
        elif reason == "base":
            plan.missing_base.append(f"{d.digest} ({repo})")
        elif reason is None:
            plan.todo.setdefault(d.digest, []).append((repo, d))
    return plan


# -- manifests -----------------------------------------------------------------------------

Step = tuple[PushImage, str, RawManifest]  # an image, the reference to push, the manifest


def manifest_groups(images: list[PushImage], merge: bool
                    ) -> list[tuple[list[PushImage], bool]]:
    """The images, then the referrers (after every image: their subjects are there first;
    never merged), each with whether a tag over another index is merged."""
    return [([i for i in images if i.referrer_of is None], merge),
            ([i for i in images if i.referrer_of is not None], False)]


def by_digest(group: list[PushImage]) -> Iterator[Step]:
    """Children by digest for every image, then the roots of those without a tag."""
    for img in group:
        for m in img.manifests:
            if m is not img.root:
                yield img, m.digest, m
    for img in group:
        if img.tag is None:
            yield img, img.root.digest, img.root


def by_tag(group: list[PushImage]) -> Iterator[Step]:
    """The tags, last: no tag names a half-pushed image."""
    for img in group:
        if img.tag is not None:
            yield img, img.tag, img.root


def over(img: PushImage, old: RawManifest | None, merge: bool, where: str
         ) -> tuple[RawManifest, str | None]:
    """What to push as the tag `where` holding `old` (None: nothing, or no answer worth
    trusting): the root, or, when `old` is another index with platforms the root lacks and
    `merge` is asked, the two merged (mirror.merge); and the warning to give, if any: a tag
    never loses platforms silently."""
    if old is None:
        return img.root, None
    if not img.root.is_index:
        # one image manifest (a docker-archive's, a single-platform image) over a
        # multi-arch tag: the tag becomes that one image; merge merges indexes only
        held = [d for d in old.children if d.platform is not None and
                not d.platform.is_unknown] if old.is_index else []
        if len(held) > 1:
            return img.root, (
                f"{where} held index {old.digest} with {platforms(held)}; {img.name} is "
                f"one image manifest ({img.root.digest}), not an index: replaced, the tag "
                "is no longer multi-arch")
        return img.root, None
    keep = other_platforms(img.root, old) if old.is_index else []
    if not keep:
        return img.root, None
    if not merge:
        return img.root, (
            f"{where} held index {old.digest} with {platforms(keep)}, which {img.name} "
            f"({img.root.digest}) does not have: replaced, those platforms are no longer "
            "tagged (`--merge` keeps them)")
    new = merged(img.root, old, keep)
    if new.digest == old.digest:
        return new, None  # merged so before (a re-run): nothing changes, nothing to say
    return new, (f"{where}: merged {img.root.digest} with {platforms(keep)} from the index "
                 f"it held ({old.digest}): {img.root.digest} -> {new.digest}")


def refusal_hint(img: PushImage, m: RawManifest) -> str | None:
    """What in manifest `m` (of `img`) registries refuse, for the error of a PUT refused:
    layers with `urls` (foreign layers), a sparse index; None when neither."""
    if any(d.urls for d in m.layers):
        return ("this registry refuses manifests whose layers carry `urls` (foreign "
                "layers): pull with `--foreign-layers rewrite`, or allow them on the "
                "registry (distribution: validation.manifests.urls.allow)")
    if m.is_index and any(c.digest not in {x.digest for x in img.manifests}
                          for c in m.children):
        return ("this is a sparse index (`index: sparse`): the registry refuses an index "
                "whose platforms are not all present; pull with `index: filter`, or turn "
                "that validation off on the registry")
    return None
