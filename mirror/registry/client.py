"""The distribution API as we use it: manifests, tags, blob downloads (resumable, redirects
followed without credentials); uploads and mounts are in mirror.registry.upload. Raw manifest
bytes in, raw manifest bytes out."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urljoin

import aiohttp
import yarl

from mirror import mediatypes as mt
from mirror.digest import check_bytes
from mirror.errors import AuthError, IntegrityError, NotFound, RegistryError, SizeMismatch
from mirror.manifest import MAX_MANIFEST_BYTES, Descriptor, RawManifest
from mirror.registry.body import read_body
from mirror.registry.network import TransferError, describe_exception
from mirror.registry.transport import Transport
from mirror.registry.upload import Uploads
from mirror.store.blobs import PartialBlob

MAX_LIST_PAGE_BYTES = 16 << 20  # one page of tags/list or _catalog (a bounded read)

PROGRESS_BYTES = 64 << 10  # a broken download that got this far starts a fresh retry count
REDIRECTS = (301, 302, 303, 307, 308)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True, slots=True)
class ManifestHead:
    digest: str | None
    media_type: str
    size: int | None




class Client(Uploads):
    """Operations on repositories of any registry, through one Transport."""

    def __init__(self, transport: Transport) -> None:
        self.t = transport
        self.bytes_downloaded = 0
        self.bytes_uploaded = 0
        self._min_chunk: dict[str, int] = {}  # registry -> its OCI-Chunk-Min-Length
        self._sessions: dict[str, tuple[str, str, str]] = {}  # open upload sessions

    # -- manifests -------------------------------------------------------------------------

    async def get_manifest(self, registry: str, repo: str, ref: str,
                           expected: Descriptor | None = None) -> RawManifest:
        """GET by tag or digest; a by-digest answer is checked against the digest asked for."""
        where = f"{registry}/{repo}{'@' if ref.startswith('sha') and ':' in ref else ':'}{ref}"

        async def ask() -> aiohttp.ClientResponse:
            return await self.t.request(
                registry, "GET", f"/v2/{repo}/manifests/{ref}", repository=repo,
                headers={"Accept": mt.MANIFEST_ACCEPT}, what=_asked(ref))

        data, ctype = await self._read_whole(ask, MAX_MANIFEST_BYTES, f"{where}: manifest",
                                             registry, repo)
        # the bytes are checked before they are parsed: wrong bytes are an integrity error
        try:
            if ":" in ref:
                check_bytes(data, ref, expected.size if expected else None, where)
            elif expected is not None:
                check_bytes(data, expected.digest, expected.size, where)
        except IntegrityError:
            # A signed schema 1 manifest's digest is not the sha256 of the bytes served (the
            # registry signs it anew on every GET, REFERENCE.md 1.2): say schema 1, exit 9,
            # not "digest mismatch"; anything else that does not match is what it is.
            RawManifest.from_bytes(data, ctype, where=where)
            raise
        return RawManifest.from_bytes(data, ctype, where=where)

    async def head_manifest(self, registry: str, repo: str, ref: str) -> ManifestHead | None:
        """HEAD (not counted by Docker Hub's pull limit); None when absent."""
        try:
            resp = await self.t.request(
                registry, "HEAD", f"/v2/{repo}/manifests/{ref}", repository=repo,
                headers={"Accept": mt.MANIFEST_ACCEPT}, what=_asked(ref))
        except NotFound:
            return None
        async with resp:
            size = resp.headers.get("Content-Length")
            return ManifestHead(resp.headers.get("Docker-Content-Digest"),
                                mt.strip_params(resp.headers.get("Content-Type")),
                                int(size) if size and size.isdigit() else None)

    async def put_manifest(self, registry: str, repo: str, ref: str,
                           raw: RawManifest) -> str | None:
        """PUT the exact bytes; the registry's Docker-Content-Digest must equal ours.
        Returns the `OCI-Subject` header (set by registries with the referrers API)."""
        resp = await self.t.request(
            registry, "PUT", f"/v2/{repo}/manifests/{ref}", repository=repo,
            actions="pull,push", headers={"Content-Type": raw.media_type}, data=raw.data,
            ok=(200, 201), what=f"push manifest {raw.digest} as {ref}")
        async with resp:
            got = resp.headers.get("Docker-Content-Digest")
            subject = resp.headers.get("OCI-Subject")
        if got and got != raw.digest:
            raise IntegrityError(
                f"{registry}/{repo}:{ref}: registry stored the manifest as {got}, "
                f"not {raw.digest}")
        return subject

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
            resp = await self.t.request(registry, "GET", next_url, repository=repo, what=what)
            async with resp:
                body = await read_body(resp, MAX_LIST_PAGE_BYTES)
                link = resp.headers.get("Link")
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
            next_url = None
            if link and 'rel="next"' in link:
                m = re.search(r"<([^>]+)>", link)
                next_url = m.group(1) if m else None
        return names if limit is None else names[:limit]

    # -- blobs -----------------------------------------------------------------------------

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
            reply = await self.t.send("GET", str(target), headers=headers)
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

    async def open_blob(self, registry: str, repo: str, desc: Descriptor,
                        offset: int = 0) -> AsyncIterator[bytes]:
        """The bytes of blob `desc` from byte `offset` on, as they arrive (close the iterator
        to stop early: `contextlib.aclosing`).

        Redirects are followed (no registry credentials to another host); Range asks for the
        rest. A registry that ignores Range (200) has its first `offset` bytes skipped; a 206
        whose Content-Range does not start at `offset` is asked again without Range. The
        request is retried by the transport before the first byte. A body that breaks off or
        ends early raises TransferError (ask again from where it got to); more bytes than the
        descriptor says, SizeMismatch. The digest is the caller's to check.
        """
        where = f"{registry}/{repo}"
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = await self._opened_blob(registry, repo, desc.digest, headers)
        skip = _skip(resp, desc, offset, where)
        if skip is None:  # a 206 that is not the rest: ask for the whole blob
            why = (f"unusable Content-Range {resp.headers.get('Content-Range', '')!r} for "
                   f"bytes={offset}-")
            resp.release()
            await self.t.backoff("GET", str(resp.url), why, 1, delay=0.0)
            resp = await self._opened_blob(registry, repo, desc.digest,
                                           {"Accept-Encoding": "identity"})
            skip = offset if _skip(resp, desc, 0, where) == 0 else None
            if skip is None:
                resp.release()
                raise TransferError(why)
        got = offset
        async with resp:
            try:
                async for chunk in resp.content.iter_any():
                    self.bytes_downloaded += len(chunk)
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk, skip = chunk[skip:], 0
                    got += len(chunk)
                    if got > desc.size:
                        raise SizeMismatch(desc.size, got, where, desc.digest)
                    yield chunk
            except (TimeoutError, aiohttp.ClientPayloadError,
                    aiohttp.ClientConnectionError) as e:
                raise TransferError(describe_exception(e)) from None
        if got < desc.size:
            raise TransferError(f"body ended at byte {got} of {desc.size}")

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
                    raise TransferError(e.why, attempt) from None
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

    async def _read_whole(self, ask: Callable[[], Awaitable[aiohttp.ClientResponse]],
                          limit: int, where: str, registry: str, repo: str
                          ) -> tuple[bytes, str]:
        """A small document (its first `limit`+1 bytes) and its Content-Type, asked for
        again when the body breaks off (the request itself is retried by the transport)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await ask()
            except TransferError as e:
                raise RegistryError(f"{where}: {e.why}", registry=registry,
                                    repository=repo) from None
            try:
                async with resp:
                    return await read_body(resp, limit), resp.headers.get("Content-Type", "")
            except (TimeoutError, aiohttp.ClientPayloadError,
                    aiohttp.ClientConnectionError) as e:
                why = describe_exception(e)
                if attempt >= self.t.policy.tries:
                    raise RegistryError(f"{where}: {why}", registry=registry,
                                        repository=repo) from None
                await self.t.backoff(resp.method, str(resp.url), why, attempt)

    async def download_blob(self, registry: str, repo: str, desc: Descriptor,
                            sink: PartialBlob, progress: Callable[[int], None] | None = None
                            ) -> None:
        """Stream a blob into `sink` (opened by the caller, maybe at an offset a killed run
        left), resuming with Range after a broken connection.

        Only a 206 whose Content-Range starts at our offset is appended; a 200 (Range
        ignored) restarts the sink from byte 0. The sink checks the size as bytes arrive and
        the digest at commit; a digest mismatch is fetched once more from byte 0, then
        raised (the bad bytes are deleted, never stored). Retries are counted per stretch
        without progress, so a flaky link that keeps moving does not run out of tries.
        """
        tries = self.t.policy.tries
        attempt = 0
        mismatches = 0
        what = f"blob {desc.digest}"
        while True:
            before = sink.offset
            try:
                if before < desc.size:
                    await self._fetch_into(registry, repo, desc, sink, progress, what)
            except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
                    _Retry, TransferError) as e:
                await _settle(sink)
                if sink.offset - before >= PROGRESS_BYTES:
                    attempt = 0  # progress was made: a flaky link, not a dead one
                attempt += 1
                if attempt >= tries:
                    raise RegistryError(
                        f"{registry}/{repo}: {what}: {describe_exception(e)} after {attempt} "
                        f"tries ({sink.offset} of {desc.size} bytes kept for the next run)",
                        registry=registry, repository=repo) from None
                self.t.count_retry()
                await asyncio.sleep(self.t.policy.delay(attempt))
                continue
            except IntegrityError:
                sink.discard()  # more bytes than the descriptor says: nothing to keep
                raise
            try:
                await sink.commit()
                return
            except IntegrityError:
                mismatches += 1
                if mismatches > 1:
                    raise
                sink.open()  # the bad file is gone: start over from byte 0
                self.t.count_retry()

    async def _fetch_into(self, registry: str, repo: str, desc: Descriptor, sink: PartialBlob,
                          progress: Callable[[int], None] | None, what: str) -> None:
        offset = sink.offset
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = await self._opened_blob(registry, repo, desc.digest, headers)
        async with resp:
            await self.receive(resp, desc, sink, offset, progress, f"{registry}/{repo}")

    async def receive(self, resp: aiohttp.ClientResponse, desc: Descriptor, sink: PartialBlob,
                      offset: int, progress: Callable[[int], None] | None, where: str) -> None:
        """Stream a 200 or 206 answer into `sink`, which is at `offset`: a 206 must start
        there; a 200 (Range ignored) restarts the blob from byte 0. Raises _Retry for a body
        that ends early or an unusable Content-Range."""
        if resp.status == 206:
            crange = resp.headers.get("Content-Range", "")
            m = _CONTENT_RANGE.match(crange)
            if not m or int(m.group(1)) != offset or (
                    m.group(3) != "*" and int(m.group(3)) != desc.size):
                await sink.restart()
                raise _Retry(f"unusable Content-Range {crange!r} for bytes={offset}-")
        else:
            if offset:
                await sink.restart()  # Range ignored: a clean restart from byte 0
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > desc.size:
                raise SizeMismatch(desc.size, int(length), where, desc.digest)
            # a shorter one is a body cut on the way (a proxy or CDN that fixed up the
            # length): an incomplete download, resumed below like any body that ends early
        async for chunk in resp.content.iter_any():
            await sink.write(chunk)
            self.bytes_downloaded += len(chunk)
            if progress:
                progress(len(chunk))
        await sink.drain()
        if sink.offset < desc.size:
            raise _Retry(f"body ended at byte {sink.offset} of {desc.size}")

class _Retry(Exception):
    pass


class _Refused(Exception):
    """Where the registry redirected us refused the blob: ask the registry again."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(why)
        self.url = url
        self.why = why


async def _settle(sink: PartialBlob) -> None:
    """After a network error: let the batches in flight land, so `sink.offset` is exact.
    Bytes that don't match (IntegrityError) and a disk that fails (OSError) are not network
    errors and are raised."""
    try:
        await sink.drain()
    except (IntegrityError, OSError):
        raise
    except Exception:
        pass


def _skip(resp: aiohttp.ClientResponse, desc: Descriptor, offset: int,
          where: str) -> int | None:
    """How many bytes of a 200 or 206 answer to a request from `offset` come before it: a 206
    must start there (None: its Content-Range is unusable); a 200 (Range ignored) holds the
    whole blob, no longer than the descriptor says."""
    if resp.status == 206:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != offset or (
                m.group(3) != "*" and int(m.group(3)) != desc.size):
            return None
        return 0
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > desc.size:
        resp.release()
        raise SizeMismatch(desc.size, int(length), where, desc.digest)
    # a shorter one is a body cut on the way (a proxy or CDN that fixed up the length): an
    # incomplete download, asked again from where it got to like any body that ends early
    return offset


def _asked(ref: str) -> str:
    """What a manifest request asked for, for errors: `tag v1` or `manifest sha256:...`."""
    return f"manifest {ref}" if ":" in ref else f"tag {ref}"
