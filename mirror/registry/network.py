"""What a failed transfer is: one line for a network failure (never headers: they may hold
credentials), and the exception of a transfer worth asking again. Below the transport, so
the transport, the authenticator and the client all use it without importing each other."""

from __future__ import annotations

import asyncio
import re

import aiohttp


class TransferError(Exception):
    """A transfer that broke off (a connection error or timeout, a body that ended early, an
    answer that cannot be used): worth asking again from where it got to. `why` is one line
    for -v and errors; `tries` how many were made."""

    def __init__(self, why: str, tries: int = 1, url: str = "") -> None:
        super().__init__(why)
        self.why = why
        self.tries = tries
        self.url = url  # what was asked, when known (for the retry's -v line)


_QUERY = re.compile(r"(\bhttps?://[^\s?#]+)\?[^\s#]*")


def describe_exception(e: BaseException) -> str:
    """One line for a network failure; never includes headers (they may hold credentials)."""
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        if isinstance(e, getattr(aiohttp, "SocketTimeoutError", ())):
            return "timed out (no data within the read timeout)"
        if isinstance(e, getattr(aiohttp, "ConnectionTimeoutError", ())):
            return "timed out (not connected within the connect timeout)"
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect: {e.os_error.strerror or e.os_error}"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    if isinstance(e, aiohttp.ClientPayloadError):
        return f"connection broken mid-body: {str(e).splitlines()[0] if str(e) else 'payload'}"
    if isinstance(e, aiohttp.ClientResponseError):
        # what the parser choked on: its reason and the bytes it quotes (the other end's
        # words, never our headers)
        lines = [ln.strip() for ln in str(e.message).splitlines() if ln.strip()]
        quoted = next((ln for ln in lines[1:] if ln.startswith(("b'", 'b"'))), "")
        why = " ".join(x for x in (lines[0].rstrip(":") if lines else "", quoted[:80]) if x)
        return f"not a valid HTTP answer ({why or 'unparsable'})"
    line = (str(e).splitlines() or [""])[0] or type(e).__name__
    # some errors name the URL ("Can not write request body for URL"): never its query (an
    # upload's state token, a presigned URL's signature)
    return _QUERY.sub(r"\1?...", line)
