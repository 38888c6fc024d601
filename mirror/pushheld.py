"""A push's step 0 (mirror.push): which images the target serves whole already, asked before
anything is pushed. An image whose reference (its tag, else its root's digest) names its
root's digest (one HEAD) and whose every manifest below that one the target serves (one
HEAD each, in its repository; none of one this run read from there: Client.served) is there
whole: a registry accepts a manifest only once the blobs it names are there. A manifest
below it the target does not serve (deleted there while the index is still tagged: by hand,
or by a registry's clean-up of untagged manifests) leaves the image to be pushed as one not
there: the manifests and the tag the target serves are found so, the lost ones put again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mirror.aio import cancel_all, gather_or_cancel
from mirror.errors import AuthError, RateLimited, RegistryError
from mirror.manifest import RawManifest
from mirror.pushplan import PushImage
from mirror.registry.client import Client

# step 0's answers: (repository, reference, root digest) -> the target serves that root as
# the reference (True), another manifest (False), nothing (None); of a manifest below a
# root, (repository, its digest, its digest)
Asked = dict[tuple[str, str, str], bool | None]


def step0(img: PushImage) -> tuple[str, str, str]:
    """The key of `img`'s step-0 answer in an `Asked`: its repository, its reference (the
    tag, else the root's digest) and the root's digest."""
    return img.repository, img.tag or img.root.digest, img.root.digest


async def find_held(client: Client, reg: str, images: list[PushImage], asked: Asked,
                    sem: asyncio.Semaphore, held: Callable[[PushImage], None]
                    ) -> list[bool | None]:
    """Step 0's answer for each image's reference (True: it names the root), `held` called
    for each image there whole as its last answer comes (a push stopped before the others
    is told: mirror.push's say_held). The references' HEADs `sem` at once (the push's -j),
    the HEADs of the manifests below as many at once as the target's small requests
    (mirror.registry.ratelimit), each (repository, manifest) once, however many images
    list it. Every answer is kept in `asked` (the caller's answers there not asked again)."""
    heads: dict[tuple[str, str, str], asyncio.Future[None]] = {}
    slots: list[asyncio.Semaphore] = []  # made once, if a manifest below is asked about

    async def head(key: tuple[str, str, str], m: RawManifest) -> None:
        if not slots:
            slots.append(client.t.limits_for(reg).small_slots())
        async with slots[0]:
            asked[key] = await there(client, reg, key[0], key[1], m, absent=None)

    async def serves(repo: str, m: RawManifest) -> bool | None:
        key = (repo, m.digest, m.digest)
        if key not in asked and client.served(reg, repo, m.digest):
            asked[key] = True
        if key not in asked:
            if key not in heads:
                heads[key] = asyncio.ensure_future(head(key, m))
            await asyncio.shield(heads[key])
        return asked[key]

    async def named(img: PushImage) -> bool | None:
        key = step0(img)
        if key not in asked:
            async with sem:
                asked[key] = await held_there(client, reg, img)
        if asked[key] and all(await gather_or_cancel(serves(img.repository, m)
                                                     for m in img.manifests[:-1])):
            held(img)
        return asked[key]

    try:
        return await gather_or_cancel(named(i) for i in images)
    finally:
        await cancel_all(heads.values())


def lost_below(img: PushImage, asked: Asked) -> list[str]:
    """The manifests below `img`'s root that step 0 found the target does not serve, where
    its reference names the root (none where it does not: the image is pushed anyway)."""
    if not asked.get(step0(img)):
        return []
    return [m.digest for m in img.manifests[:-1]
            if not asked.get((img.repository, m.digest, m.digest), True)]


async def held_there(client: Client, reg: str, img: PushImage) -> bool | None:
    """Step 0's question: the target serves `img`'s root as its reference (its tag, else
    the root's digest); None: nothing under that reference."""
    return await there(client, reg, img.repository, img.tag or img.root.digest, img.root,
                       absent=None)


async def there(client: Client, reg: str, repo: str, ref: str, m: RawManifest, *,
                absent: bool | None = False) -> bool | None:
    """The target already serves `m` as `ref` (a tag naming the same digest, or the digest):
    nothing to push (a re-run pushes nothing, and a registry with immutable tags is not
    asked to rewrite one). `absent`: what to answer when the target has no `ref` at all
    (a 404), where the caller tells that from another manifest under it."""
    try:
        head = await client.head_manifest(reg, repo, ref)
    except (AuthError, RateLimited):
        raise
    except RegistryError:
        return False  # no answer worth trusting: push, as before
    if head is None:
        return absent
    return head.digest == m.digest
