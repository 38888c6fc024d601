"""Foreign layers: a blob from one of its descriptor's `urls` (REFERENCE.md 3), with no
registry credentials, as a byte stream like `Client.open_blob`; and the error when none of
them serves it."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import aiohttp

from mirror.errors import IntegrityError, NotFound, RegistryError
from mirror.manifest import Descriptor
from mirror.registry.network import TransferError
from mirror.registry.stream import blob_stream
from mirror.registry.transport import Transport


class UrlRefused(Exception):
    """A URL that does not serve the blob: not an http(s) URL, or no answer or an HTTP status
    other than 200 and 206 after the transport's retries. `status`: that status, if any."""

    def __init__(self, why: str, status: int | None = None) -> None:
        super().__init__(why)
        self.status = status


def open_url(t: Transport, url: str, desc: Descriptor, offset: int = 0) -> AsyncGenerator[bytes, None]:
    """The bytes of `desc` from `offset` on, from `url`: a plain GET through the transport
    (its retries, Retry-After pauses and -v lines; no registry credentials: those live only
    in `Transport.request`). Raises UrlRefused, and what `blob_stream` raises."""
    async def ask(headers: dict[str, str]) -> aiohttp.ClientResponse:
        if not url.startswith(("http://", "https://")):
            raise UrlRefused("not an http(s) URL")
        try:
            reply = await t.send("GET", url, headers=headers)
        except aiohttp.InvalidURL:
            raise UrlRefused("not a valid URL") from None
        except TransferError as e:
            raise UrlRefused(f"{e.why} after {e.tries} tries") from None
        if reply.resp.status not in (200, 206):
            reply.resp.release()
            raise UrlRefused(f"HTTP {reply.resp.status}", reply.resp.status)
        return reply.resp

    return blob_stream(ask, t, desc, offset, url)


def unserved(desc: Descriptor, problems: list[str], statuses: list[int | None],
             mismatches: int) -> RegistryError | IntegrityError:
    """The error for a foreign layer none of whose urls served it (`problems`: what each
    did): IntegrityError if every URL served other bytes, NotFound if every URL answered
    404, else RegistryError."""
    text = (f"foreign layer {desc.digest}: the registry does not serve it and none of its "
            f"urls did: {'; '.join(problems) or 'no urls'}")
    hint = ("make one of the urls reachable from here, or set `foreign_layers: skip` to carry "
            "only the descriptor")
    if problems and mismatches == len(problems):
        return IntegrityError(text, hint=hint)
    if problems and statuses.count(404) == len(problems):
        return NotFound(text, hint=hint)
    return RegistryError(text, hint=hint)
