"""Foreign layers: fetching a blob from its descriptor's `urls` (REFERENCE.md 3), with no
registry credentials."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from mirror.errors import IntegrityError, NotFound, RegistryError
from mirror.manifest import Descriptor
from mirror.registry.client import Client, _Retry, _settle
from mirror.registry.network import describe_exception
from mirror.store.blobs import PartialBlob


async def download_url(client: Client, desc: Descriptor, sink: PartialBlob,
                       progress: Callable[[int], None] | None = None) -> None:
    """Fetch a foreign layer from its descriptor's `urls` (REFERENCE.md 3) into `sink`.

    Each URL in turn, with retries and Range resumption like `Client.download_blob`; the
    request carries no registry credentials (a plain GET on the run's session, whose auth
    lives only in `Transport.request`). The sink checks the size as bytes arrive and the
    digest at commit; a URL that serves other bytes is dropped for the next one. When none
    serves it, raise IntegrityError if every URL served other bytes, NotFound if every URL
    answered 404, else RegistryError; the message lists what each URL did.
    """
    t = client.t
    problems: list[str] = []
    statuses: list[int] = []
    mismatches = 0
    for url in desc.urls:
        if not url.startswith(("http://", "https://")):
            problems.append(f"{url}: not an http(s) URL")
            continue
        attempt = 0
        while True:
            offset = before = sink.offset
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            try:
                async with t.session.get(url, headers=headers, allow_redirects=True) as resp:
                    if resp.status not in (200, 206):
                        if resp.status in t.policy.statuses and attempt + 1 < t.policy.tries:
                            raise _Retry(f"HTTP {resp.status}")
                        statuses.append(resp.status)
                        problems.append(f"{url}: HTTP {resp.status}")
                        break
                    await client.receive(resp, desc, sink, offset, progress, url)
                await sink.commit()
                return
            except aiohttp.InvalidURL:
                problems.append(f"{url}: not a valid URL")
                break
            except IntegrityError as e:  # too long, or other bytes: try the next URL
                problems.append(f"{url}: {e}")
                mismatches += 1
                sink.discard()
                sink.open()
                break
            except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
                    _Retry) as e:
                await _settle(sink)
                if sink.offset > before:
                    attempt = 0
                attempt += 1
                if attempt >= t.policy.tries:
                    problems.append(f"{url}: {describe_exception(e)} after {attempt} tries")
                    break
                t.count_retry()
                await asyncio.sleep(t.policy.delay(attempt))
    text = (f"foreign layer {desc.digest}: the registry does not serve it and none of its "
            f"urls did: {'; '.join(problems) or 'no urls'}")
    hint = ("make one of the urls reachable from here, or set `foreign_layers: skip` to carry "
            "only the descriptor")
    if problems and mismatches == len(problems):
        raise IntegrityError(text, hint=hint)
    if problems and statuses.count(404) == len(problems):
        raise NotFound(text, hint=hint)
    raise RegistryError(text, hint=hint)
