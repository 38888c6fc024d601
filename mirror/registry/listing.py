"""Listings of the distribution API: tags (tags/list), repositories (_catalog) and one page
of any paginated answer (the referrers' pages too, mirror.referrers), following
`Link: <...>; rel="next"`. The listing half of mirror.registry.client.Client (a mixin)."""

from __future__ import annotations

import json
import re

import aiohttp

from mirror.errors import AuthError, NotFound, RegistryError
from mirror.registry.body import WholeReads

MAX_LIST_PAGE_BYTES = 16 << 20  # one page of tags/list or _catalog (a bounded read)


class Listings(WholeReads):
    """Tags, the catalog and pages of lists, through the client's transport `t`."""

    async def list_tags(self, registry: str, repo: str) -> list[str]:
        return await self._pages(registry, f"/v2/{repo}/tags/list", "tags", repo, "list tags")

    async def catalog(self, registry: str, limit: int) -> list[str]:
        """Up to `limit` repository names from the registry's `_catalog`; [] where it has
        none, or will not list it for us (an optional endpoint: 404, 401, 403)."""
        try:
            return await self._pages(registry, f"/v2/_catalog?n={limit}", "repositories", "",
                                     "list repositories (_catalog)", limit)
        except (AuthError, NotFound):
            return []
        except RegistryError as e:
            if e.status is not None and 400 <= e.status < 500 and e.status != 429:
                return []
            raise

    async def _pages(self, registry: str, url: str, key: str, repo: str, what: str,
                     limit: int | None = None) -> list[str]:
        """A paginated list (`key` of each page's JSON), following `Link: <...>; rel="next"`
        until the end or `limit` names."""
        names: list[str] = []
        next_url: str | None = url
        while next_url and (limit is None or len(names) < limit):
            body, next_url = await self.get_page(registry, next_url, repo, what,
                                                 MAX_LIST_PAGE_BYTES)
            if len(body) > MAX_LIST_PAGE_BYTES:
                raise RegistryError(f"{registry}/{repo}: {what}: a page of the list is over "
                                    f"{MAX_LIST_PAGE_BYTES} bytes", registry=registry,
                                    repository=repo)
            try:
                doc = json.loads(body)
            except ValueError:
                raise RegistryError(f"{registry}/{repo}: {what}: the list is not JSON",
                                    registry=registry, repository=repo) from None
            page = doc.get(key) if isinstance(doc, dict) else None
            names.extend(str(n) for n in page or [])
        return names if limit is None else names[:limit]

    async def get_page(self, registry: str, url: str, repo: str, what: str, limit: int,
                       accept: str | None = None) -> tuple[bytes, str | None]:
        """One page of a paginated answer (tags/list, _catalog, referrers): its first
        `limit`+1 bytes (asked again when the body breaks off) and the URL of the next page
        (`Link: <...>; rel="next"`), if any."""
        async def ask() -> aiohttp.ClientResponse:
            return await self.t.request(registry, "GET", url, repository=repo, what=what,
                                        headers={"Accept": accept} if accept else None)

        body, headers = await self._read_whole(ask, limit, f"{registry}/{repo}: {what}",
                                               registry, repo)
        link = headers.get("Link")
        m = re.search(r"<([^>]+)>", link) if link and 'rel="next"' in link else None
        return body, m.group(1) if m else None
