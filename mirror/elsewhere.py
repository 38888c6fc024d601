"""Where at the target are the blobs an incremental bundle left to its base?

The base may have been loaded into other repositories than this bundle's (another prefix,
another image sharing a base layer): a blob there can be mounted (cross-repository mount)
instead of refusing the load. Repositories are looked through in order, HEAD only (nothing is
pushed while looking): the base's images under this load's prefix, this bundle's repositories,
then, where the registry lists them, its `_catalog` (bounded: at most CATALOG_REPOS
repositories and CATALOG_HEADS requests; those named like one of the images first)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from mirror.aio import gather_or_cancel
from mirror.errors import AuthError
from mirror.manifest import Descriptor
from mirror.registry.client import Client

CATALOG_REPOS = 500
CATALOG_HEADS = 2000


async def find_elsewhere(client: Client, registry: str, wanted: dict[str, Descriptor],
                         first: Iterable[str], names: Iterable[str], jobs: int
                         ) -> tuple[dict[str, str], int]:
    """`wanted` (digest -> descriptor) looked for in the repositories `first`, then in the
    catalog (those ending with one of `names`, the images' source paths, first); return
    digest -> a repository that has it, and how many repositories were looked in."""
    found: dict[str, str] = {}
    tried: set[str] = set()
    sem = asyncio.Semaphore(jobs)

    async def has(repo: str, d: Descriptor) -> bool:
        async with sem:
            try:
                return await client.has_blob(registry, repo, d)
            except AuthError:  # not ours to read: nothing to mount from there either
                return False

    async def look(repos: Iterable[str], budget: float) -> None:
        for repo in repos:
            left = [d for digest, d in wanted.items() if digest not in found]
            if not left or budget < len(left):
                return
            if repo in tried:
                continue
            tried.add(repo)
            budget -= len(left)
            flags = await gather_or_cancel(has(repo, d) for d in left)
            for d, ok in zip(left, flags, strict=True):
                if ok:
                    found[d.digest] = repo

    await look(first, float("inf"))
    if len(found) < len(wanted):
        listed = await client.catalog(registry, CATALOG_REPOS)
        ends = tuple("/" + n for n in names)
        listed.sort(key=lambda r: not (r.endswith(ends) or r in names))
        await look(listed, CATALOG_HEADS)
    return found, len(tried)
