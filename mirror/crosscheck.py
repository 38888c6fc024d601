"""The checks across a run's images, once planning (mirror.planning) resolved them all: one
size per blob digest (check_sizes), one image per tag it will land on (check_targets). Each
takes the run's images (`specs`) and what each became (`plans`, None for those that failed),
and hands an image that fails a check to `failed` (the Planner's: the image's result says why,
its plan is dropped, and without --keep-going the error ends the run)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mirror.config import ImageSpec
from mirror.errors import IntegrityError, MirrorError, UsageError
from mirror.image import Image
from mirror.mapping import Target, place
from mirror.registry.client import Client

Failed = Callable[[int, MirrorError], None]


def resolved(plans: Sequence[Image | None]) -> list[tuple[int, Image]]:
    """The images resolved (and not failed since), with where each stands in the run."""
    return [(i, p) for i, p in enumerate(plans) if p is not None]


def check_targets(specs: Sequence[ImageSpec], plans: Sequence[Image | None],
                  target: Target | None, failed: Failed) -> None:
    """`mirror load` pushes an image to PREFIX/<repository>:<tag> (mirror.mapping.place,
    with images.yaml's destinations), whatever its registry: ghcr.io/org/app:1 and
    docker.io/org/app:1 land on one tag. Two such images that are not the same bytes
    make a bundle load refuses whole (exit 10 on the far side); the later one fails here
    instead (with --keep-going the others go on). A sync's `target` is its first --to,
    with the run's rules (--map, --max-depth); a pull's is None (any load's PREFIX)."""
    first: dict[tuple[str, str], tuple[int, Image]] = {}
    to = target or Target("", "")
    for i, plan in resolved(plans):
        spec = specs[i]
        ref = spec.reference
        if not ref.tag and not (spec.dest and (spec.dest.tag_as or spec.dest.tags_also)):
            continue
        where = place(to, ref.name, ref.repository, ref.tag, ref.digest, spec.dest)
        for tag in where.tags:
            j, other = first.setdefault((where.repository, tag), (i, plan))
            if j != i and other.root.digest != plan.root.digest:
                failed(i, _collision(specs, target, specs[j], spec, tag,
                                     f"{where.repository}:{tag}",
                                     (other.root.digest, plan.root.digest)))
                break


def _collision(specs: Sequence[ImageSpec], target: Target | None, a: ImageSpec,
               b: ImageSpec, tag: str, name: str, digests: tuple[str, str]) -> UsageError:
    first, ref = a.reference, b.reference
    hint = _one_rule(specs, a, b, tag)
    if target is not None:  # a sync: the run's own target and rules
        return UsageError(
            f"{first} and {ref} would both be pushed as {target.registry}/{name}, "
            f"and they differ ({digests[0]}, {digests[1]})",
            hint=hint or "give one of them another destination (images.yaml to:, --map), "
            "or sync them with different --to prefixes")
    return UsageError(
        f"{first} and {ref} would both be loaded as PREFIX/{name}, and they differ "
        f"({digests[0]}, {digests[1]}): mirror load refuses such a bundle",
        hint=hint or "give one of them another destination (to: in images.yaml), or pull "
        "them into bundles of their own (an images.yaml per source registry) and load "
        "each with its own --to prefix")


def _one_rule(specs: Sequence[ImageSpec], a: ImageSpec, b: ImageSpec, tag: str) -> str | None:
    """The hint when one tag rule's images collide on a tag its entry's `tags_also:` or
    `tag_as:` gives them all."""
    dest = b.dest
    if a.rule is None or a.rule is not b.rule or a.where != b.where or dest is None or \
            (tag not in dest.tags_also and tag != dest.tag_as):
        return None
    tags = [s.reference.tag or "" for s in specs
            if s.rule is a.rule and s.where == a.where]
    key = "tag_as" if tag == dest.tag_as else "tags_also"
    return (f"the tag rule at {a.where} chooses {len(tags)} tags ({', '.join(tags)}) and "
            f"{key} puts each on {tag}: give the rule `latest: 1`, or give {key} an "
            "entry of its own")


async def check_sizes(client: Client, specs: Sequence[ImageSpec],
                      plans: Sequence[Image | None], failed: Failed) -> None:
    """One digest, one size (a tar header cannot be both). When images list one blob with
    different sizes, the registry is asked (HEAD) which is right and the images that got
    it wrong are refused; if it does not say, the image listed first is taken as right."""
    listed: dict[str, dict[int, list[tuple[int, str]]]] = {}
    for i, p in resolved(plans):
        for d in p.blobs.values():  # each digest once per image (keyed by digest)
            listed.setdefault(d.digest, {}).setdefault(d.size, []).append((i, p.name))
    for digest, sizes in listed.items():
        if len(sizes) < 2:
            continue
        first = min(sizes, key=lambda size: sizes[size][0][0])
        ref = specs[sizes[first][0][0]].reference
        try:
            true = await client.blob_size(ref.registry, ref.repository, digest)
        except MirrorError:
            true = None
        if true is None:
            right: int | None = first
            why = f"{sizes[first][0][1]} lists it with {first} (the registry does not say)"
        else:
            right = true if true in sizes else None
            why = f"the registry says {true}"
        for size, users in sizes.items():
            if size == right:
                continue
            for i, name in users:
                if plans[i] is not None:  # not refused already (another blob)
                    failed(i, IntegrityError(
                        f"{name}: blob {digest} is listed with {size} bytes, but {why}"))
