"""Blobs of the distribution API as byte streams from an offset: HEAD (present, size), GET
with redirects followed here (no registry credentials to another host; an expired presigned
URL asked for afresh), and small blobs read whole. Resuming and verifying a download is
mirror.fetch's. The download half of mirror.registry.client.Client (a mixin)."""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncGenerator
from urllib.parse import urljoin

import aiohttp
import yarl

from mirror.digest import check_bytes
from mirror.errors import NotFound, RegistryError
from mirror.manifest import MAX_MANIFEST_BYTES, Descriptor
from mirror.registry.body import WholeReads
from mirror.registry.network import TransferError
from mirror.registry.stream import blob_stream

REDIRECTS = (301, 302, 303, 307, 308)


class Blobs(WholeReads):
    """Blob HEADs and downloads, through the client's transport `t`."""

    async def has_blob(self, registry: str, repo: str, desc: Descriptor,
                       actions: str = "pull") -> bool:
        """HEAD; a redirect to object storage counts as present (it is not followed)."""
        try:
            resp = await self.t.request(registry, "HEAD", f"/v2/{repo}/blobs/{desc.digest}",
                                        repository=repo, actions=actions, ok=(200, *REDIRECTS),
                                        what=f"blob {desc.digest}", allow_redirects=False)
        except NotFound:
            return False
        async with resp:
            return True

    async def blob_size(self, registry: str, repo: str, digest: str) -> int | None:
        """The size the registry gives for a blob (HEAD, Content-Length); None when it does
        not say (a redirect, no length) or has no such blob."""
        try:
            resp = await self.t.request(registry, "HEAD", f"/v2/{repo}/blobs/{digest}",
                                        repository=repo, ok=(200, *REDIRECTS),
                                        what=f"blob {digest}", allow_redirects=False)
        except NotFound:
            return None
        async with resp:
            length = resp.headers.get("Content-Length", "")
            return int(length) if resp.status == 200 and length.isdigit() else None

    async def _open_blob(self, registry: str, repo: str, digest: str,
                         headers: dict[str, str], what: str) -> aiohttp.ClientResponse:
        """GET a blob: 200 or 206 from the registry, or from where it redirects us.

        Redirects are followed here, not by aiohttp: the registry's Authorization goes to the
        registry's own origin only, and a redirect target that fails (an expired presigned
        URL answers 403) raises _Refused, so the caller asks the registry for a fresh one.
        """
        url = f"/v2/{repo}/blobs/{digest}"
        for _hop in range(5):
            resp = await self.t.request(registry, "GET", url, repository=repo, headers=headers,
                                        ok=(200, 206, *REDIRECTS), what=what,
                                        allow_redirects=False)
            if resp.status not in REDIRECTS:
                return resp
            origin = resp.url.origin()
            loc = resp.headers.get("Location")
            resp.release()
            if not loc:
                raise RegistryError(f"{registry}/{repo}: {what}: HTTP {resp.status} without a "
                                    "Location header", registry=registry, repository=repo)
            target = yarl.URL(urljoin(str(resp.url), loc), encoded=True)
            if target.origin() == origin:
                url = str(target)  # same registry: keep authenticating
                continue
            # another host (object storage, a CDN): no registry credentials go there
            try:
                reply = await self.t.send("GET", str(target), headers=headers)
            except TransferError as e:
                raise RegistryError(
                    f"{registry}/{repo}: {what}: {target.host} (redirected to by the registry): "
                    f"{e.why}" + (f" (after {e.tries} tries)" if e.tries > 1 else ""),
                    registry=registry, repository=repo) from None
            store = reply.resp
            if store.status in (200, 206):
                return store
            said = reply.body if reply.body is not None else await store.content.read(512)
            store.release()
            code = re.search(r"<Code>([^<]+)</Code>", said[:512].decode("utf-8", "replace"))
            raise _Refused(str(target), f"{target.host} (redirected to by the registry) "
                           f"answered HTTP {store.status}{' ' + code.group(1) if code else ''}")
        raise RegistryError(f"{registry}/{repo}: {what}: too many redirects",
                            registry=registry, repository=repo)

    def open_blob(self, registry: str, repo: str, desc: Descriptor,
                  offset: int = 0) -> AsyncGenerator[bytes, None]:
        """The bytes of blob `desc` from byte `offset` on, as they arrive (close the iterator
        to stop early: `contextlib.aclosing`).

        Redirects are followed (no registry credentials to another host); Range asks for the
        rest. A registry that ignores Range (200) has its first `offset` bytes skipped; a 206
        whose Content-Range does not start at `offset` is asked again without Range. The
        request is retried by the transport before the first byte (RegistryError when that
        fails). A body that breaks off or ends early raises TransferError (ask again from
        where it got to); more bytes than the descriptor says, SizeMismatch. The digest is
        the caller's to check (mirror.fetch).
        """
        return blob_stream(functools.partial(self._opened_blob, registry, repo, desc.digest),
                           self.t, desc, offset, f"{registry}/{repo}")

    async def _opened_blob(self, registry: str, repo: str, digest: str,
                           headers: dict[str, str]) -> aiohttp.ClientResponse:
        """`_open_blob`, asking the registry again (for a fresh redirect) while the place it
        sends us to refuses (an expired presigned URL), within the retry budget."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._open_blob(registry, repo, digest, headers,
                                             f"blob {digest}")
            except _Refused as e:
                if attempt >= self.t.policy.tries:
                    raise RegistryError(
                        f"{registry}/{repo}: blob {digest}: {e.why}"
                        + (f" (after {attempt} tries)" if attempt > 1 else ""),
                        registry=registry, repository=repo) from None
                await self.t.backoff("GET", e.url, e.why, attempt)

    async def get_small_blob(self, registry: str, repo: str, digest: str,
                             limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """A config blob, in memory, checked against its digest."""
        async def ask() -> aiohttp.ClientResponse:
            return await self._opened_blob(registry, repo, digest,
                                           {"Accept-Encoding": "identity"})

        data, _ = await self._read_whole(ask, limit, f"{registry}/{repo}: blob {digest}",
                                         registry, repo)
        check_bytes(data, digest, None, f"{registry}/{repo}@{digest}")
        return data


class _Refused(Exception):
    """Where the registry redirected us refused the blob: ask the registry again."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(why)
        self.url = url
        self.why = why
