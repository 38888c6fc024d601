"""The distribution API as we use it: manifests, blobs (resumable downloads, uploads, mounts),
tags. Raw manifest bytes in, raw manifest bytes out."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin

import aiohttp
import yarl

from mirror import mediatypes as mt
from mirror.digest import check_bytes
from mirror.errors import IntegrityError, NotFound, RateLimited, RegistryError, SizeMismatch
from mirror.manifest import MAX_MANIFEST_BYTES, Descriptor, RawManifest
from mirror.registry.body import read_body
from mirror.registry.transport import Transport, describe_exception
from mirror.store.blobs import PartialBlob

MONOLITHIC_MAX = 16 << 20  # blobs up to this size go in one PUT; larger ones in PATCH chunks
UPLOAD_CHUNK = 16 << 20  # raised to the registry's OCI-Chunk-Min-Length when it asks
PROGRESS_BYTES = 64 << 10  # a broken download that got this far starts a fresh retry count
REDIRECTS = (301, 302, 303, 307, 308)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True, slots=True)
class ManifestHead:
    digest: str | None
    media_type: str
    size: int | None


BodyFactory = Callable[[int], AsyncIterator[bytes]]  # offset -> chunks from that offset


class Client:
    """Operations on repositories of any registry, through one Transport."""

    def __init__(self, transport: Transport) -> None:
        self.t = transport
        self.bytes_downloaded = 0
        self.bytes_uploaded = 0
        self._min_chunk: dict[str, int] = {}  # registry -> its OCI-Chunk-Min-Length

    # -- manifests -------------------------------------------------------------------------

    async def get_manifest(self, registry: str, repo: str, ref: str,
                           expected: Descriptor | None = None) -> RawManifest:
        """GET by tag or digest; a by-digest answer is checked against the digest asked for."""
        where = f"{registry}/{repo}{'@' if ref.startswith('sha') and ':' in ref else ':'}{ref}"
        attempt = 0
        while True:
            resp = await self.t.request(
                registry, "GET", f"/v2/{repo}/manifests/{ref}", repository=repo,
                headers={"Accept": mt.MANIFEST_ACCEPT}, what=f"manifest {ref}")
            try:
                async with resp:
                    data = await read_body(resp, MAX_MANIFEST_BYTES)
                    ctype = resp.headers.get("Content-Type", "")
                break
            except (TimeoutError, aiohttp.ClientPayloadError,
                    aiohttp.ClientConnectionError) as e:  # the body broke off: ask again
                attempt += 1
                if attempt >= self.t.policy.tries:
                    raise RegistryError(f"{where}: manifest: {describe_exception(e)}",
                                        registry=registry, repository=repo) from None
                self.t.retries += 1
                await asyncio.sleep(self.t.policy.delay(attempt))
        # the bytes are checked before they are parsed: wrong bytes are an integrity error
        if ":" in ref:
            check_bytes(data, ref, expected.size if expected else None, where)
        elif expected is not None:
            check_bytes(data, expected.digest, expected.size, where)
        return RawManifest.from_bytes(data, ctype, where=where)

    async def head_manifest(self, registry: str, repo: str, ref: str) -> ManifestHead | None:
        """HEAD (not counted by Docker Hub's pull limit); None when absent."""
        try:
            resp = await self.t.request(
                registry, "HEAD", f"/v2/{repo}/manifests/{ref}", repository=repo,
                headers={"Accept": mt.MANIFEST_ACCEPT}, what=f"manifest {ref}")
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
        tags: list[str] = []
        url: str | None = f"/v2/{repo}/tags/list"
        while url:
            resp = await self.t.request(registry, "GET", url, repository=repo,
                                        what="list tags")
            async with resp:
                doc = await resp.json(content_type=None)
                link = resp.headers.get("Link")
            tags.extend(doc.get("tags") or [])
            url = None
            if link and 'rel="next"' in link:
                m = re.search(r"<([^>]+)>", link)
                url = m.group(1) if m else None
        return tags

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

    async def _open_blob(self, registry: str, repo: str, digest: str,
                         headers: dict[str, str], what: str) -> aiohttp.ClientResponse:
        """GET a blob: 200 or 206 from the registry, or from where it redirects us.

        Redirects are followed here, not by aiohttp: the registry's Authorization goes to the
        registry's own origin only, and a redirect target that fails (an expired presigned
        URL answers 403) raises _Retry, so the caller asks the registry for a fresh one.
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
            store = await self.t.session.get(
                target, headers=headers, ssl=self.t.ssl_for_url(str(target)),
                allow_redirects=True)
            if store.status in (200, 206):
                return store
            snippet = (await store.content.read(512)).decode("utf-8", "replace")
            store.release()
            code = re.search(r"<Code>([^<]+)</Code>", snippet)
            raise _Retry(f"{target.host} (redirected to by the registry) answered HTTP "
                         f"{store.status}{' ' + code.group(1) if code else ''}")
        raise RegistryError(f"{registry}/{repo}: {what}: too many redirects",
                            registry=registry, repository=repo)

    async def get_small_blob(self, registry: str, repo: str, digest: str,
                             limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """A config blob, in memory, checked against its digest."""
        attempt = 0
        while True:
            try:
                resp = await self._open_blob(registry, repo, digest,
                                             {"Accept-Encoding": "identity"}, f"blob {digest}")
                async with resp:
                    data = await read_body(resp, limit)
                break
            except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
                    _Retry) as e:
                attempt += 1
                if attempt >= self.t.policy.tries:
                    raise RegistryError(f"{registry}/{repo}: blob {digest}: "
                                        f"{describe_exception(e)}", registry=registry,
                                        repository=repo) from None
                self.t.retries += 1
                await asyncio.sleep(self.t.policy.delay(attempt))
        check_bytes(data, digest, None, f"{registry}/{repo}@{digest}")
        return data

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
                    _Retry) as e:
                await _settle(sink)
                if sink.offset - before >= PROGRESS_BYTES:
                    attempt = 0  # progress was made: a flaky link, not a dead one
                attempt += 1
                if attempt >= tries:
                    raise RegistryError(
                        f"{registry}/{repo}: {what}: {describe_exception(e)} after {attempt} "
                        f"tries ({sink.offset} of {desc.size} bytes kept for the next run)",
                        registry=registry, repository=repo) from None
                self.t.retries += 1
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
                self.t.retries += 1

    async def _fetch_into(self, registry: str, repo: str, desc: Descriptor, sink: PartialBlob,
                          progress: Callable[[int], None] | None, what: str) -> None:
        offset = sink.offset
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = await self._open_blob(registry, repo, desc.digest, headers, what)
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
            if length and length.isdigit() and int(length) != desc.size:
                raise SizeMismatch(desc.size, int(length), where, desc.digest)
        async for chunk in resp.content.iter_any():
            await sink.write(chunk)
            self.bytes_downloaded += len(chunk)
            if progress:
                progress(len(chunk))
        await sink.drain()
        if sink.offset < desc.size:
            raise _Retry(f"body ended at byte {sink.offset} of {desc.size}")

    async def mount_blob(self, registry: str, repo: str, desc: Descriptor,
                         from_repo: str) -> str | None:
        """Cross-repository mount: None when mounted, else the Location of an upload session
        to push the blob into (the registry's 202 answer, or a fresh session when the mount
        request failed: ggcr does the same)."""
        q = urlencode({"mount": desc.digest, "from": from_repo})
        try:
            resp = await self.t.request(
                registry, "POST", f"/v2/{repo}/blobs/uploads/?{q}", repository=repo,
                actions="pull,push", extra_scopes=(f"repository:{from_repo}:pull",),
                ok=(201, 202), what=f"mount blob {desc.digest} from {from_repo}",
                allow_redirects=False)
        except RateLimited:
            raise
        except RegistryError:
            # no mount (no read access to the source, an old registry): push it instead
            return await self._start_upload(registry, repo)
        async with resp:
            if resp.status == 201:
                return None
            return self._location(resp)

    async def upload_blob(self, registry: str, repo: str, desc: Descriptor,
                          body: BodyFactory, *, seekable: bool,
                          location: str | None = None) -> None:
        """Push a blob: one PUT up to MONOLITHIC_MAX, PATCH chunks above.

        A failed chunk of a seekable source is resumed from the offset the registry reports
        (GET on the session); anything else that fails with a retryable cause restarts the
        upload in a new session (the old one is cancelled), with back-off, bounded by the
        retry policy. A non-seekable source (a compressed bundle's stream) can't be replayed:
        its failure is final.
        """
        failures = 0
        while True:
            if location is None:
                location = await self._start_upload(registry, repo)
            try:
                if desc.size <= MONOLITHIC_MAX:
                    await self._put_final(registry, repo, location, desc, body(0), desc.size)
                else:
                    await self._chunked(registry, repo, location, desc, body, seekable)
                self.bytes_uploaded += desc.size
                return
            except RegistryError as e:
                failures += 1
                if not seekable or failures >= self.t.policy.tries or not _restartable(e):
                    raise
                self.t.retries += 1
                await self._cancel_upload(registry, repo, location)
                location = None
                await asyncio.sleep(self.t.policy.delay(failures))

    async def _start_upload(self, registry: str, repo: str) -> str:
        resp = await self.t.request(registry, "POST", f"/v2/{repo}/blobs/uploads/",
                                    repository=repo, actions="pull,push", ok=(202,),
                                    what="start blob upload", allow_redirects=False)
        async with resp:
            min_len = resp.headers.get("OCI-Chunk-Min-Length", "")
            if min_len.isdigit():
                self._min_chunk[registry] = int(min_len)
            return self._location(resp)

    async def _cancel_upload(self, registry: str, repo: str, location: str) -> None:
        """DELETE an abandoned session (best effort; registries expire them anyway)."""
        try:
            resp = await self.t.request(registry, "DELETE", location, repository=repo,
                                        actions="pull,push", ok=(202, 204), retry=False,
                                        what="cancel blob upload", allow_redirects=False)
            resp.release()
        except RegistryError:
            pass

    def _location(self, resp: aiohttp.ClientResponse) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"{resp.url.host}: upload answer without a Location header")
        return urljoin(str(resp.url), loc)

    async def _put_final(self, registry: str, repo: str, location: str, desc: Descriptor,
                         chunks: AsyncIterator[bytes] | None, length: int) -> None:
        sep = "&" if "?" in location else "?"
        url = f"{location}{sep}{urlencode({'digest': desc.digest})}"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        try:
            resp = await self.t.request(
                registry, "PUT", url, repository=repo, actions="pull,push", headers=headers,
                data=chunks if chunks is not None else b"", ok=(201, 204),
                what=f"upload blob {desc.digest}", allow_redirects=False, retry=False)
        except RegistryError as e:
            if e.status == 400 and "DIGEST_INVALID" in e.codes:
                # the bytes we sent do not hash to the digest: bad source bytes, not a
                # registry hiccup (a stream check may not have had its say yet)
                raise IntegrityError(f"{e} (the uploaded bytes do not match the digest)") \
                    from None
            raise
        async with resp:
            got = resp.headers.get("Docker-Content-Digest")
        if got and got != desc.digest:
            raise IntegrityError(f"{registry}/{repo}: registry stored blob {desc.digest} as "
                                 f"{got}")

    async def _chunked(self, registry: str, repo: str, location: str, desc: Descriptor,
                       body: BodyFactory, seekable: bool) -> None:
        offset = 0
        chunk_size = max(UPLOAD_CHUNK, self._min_chunk.get(registry, 0))
        stream = _Stream(body(0))
        failures = 0
        while offset < desc.size:
            n = min(chunk_size, desc.size - offset)
            headers = {"Content-Type": "application/octet-stream",
                       "Content-Range": f"{offset}-{offset + n - 1}",
                       "Content-Length": str(n)}
            try:
                resp = await self.t.request(
                    registry, "PATCH", location, repository=repo, actions="pull,push",
                    headers=headers, data=stream.take(n), ok=(202, 201),
                    what=f"upload blob {desc.digest} (bytes {offset}-{offset + n - 1})",
                    allow_redirects=False, retry=False)
            except RegistryError as e:
                failures += 1
                if not seekable or failures >= self.t.policy.tries or not _restartable(e):
                    raise
                self.t.retries += 1
                await asyncio.sleep(self.t.policy.delay(failures))
                # where did the registry get to? resume from there with a fresh stream
                location, offset = await self._upload_status(registry, repo, location)
                await stream.close()
                stream = _Stream(body(offset))
                continue
            async with resp:
                location = self._location(resp)
                min_len = resp.headers.get("OCI-Chunk-Min-Length", "")
            if min_len.isdigit():
                chunk_size = max(chunk_size, int(min_len))
            offset += n
        await stream.close()
        await self._put_final(registry, repo, location, desc, None, 0)

    async def _upload_status(self, registry: str, repo: str, location: str) -> tuple[str, int]:
        resp = await self.t.request(registry, "GET", location, repository=repo,
                                    actions="pull,push", ok=(204,), what="upload status",
                                    allow_redirects=False)
        async with resp:
            rng = resp.headers.get("Range", "0-0")
            loc = self._location(resp)
        end = int(rng.split("-")[-1]) if "-" in rng else 0
        # distribution answers 0-0 both for nothing and for one byte; re-send from 0 then
        return loc, (end + 1 if end > 0 else 0)


def _restartable(e: RegistryError) -> bool:
    """Worth another try: no status (connection), 401 (token expired mid-upload), an upload
    session the registry lost (404, 416), or a transient status."""
    if isinstance(e, NotFound) and e.codes and "BLOB_UPLOAD_UNKNOWN" not in e.codes:
        return False
    return e.status is None or e.status in (401, 404, 408, 416, 429) or e.status >= 500


class _Retry(Exception):
    pass


async def _settle(sink: PartialBlob) -> None:
    try:
        await sink.drain()
    except IntegrityError:
        raise
    except Exception:
        pass


class _Stream:
    """An async byte stream that can be cut into exact-length pieces (upload chunks)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._it = chunks
        self._carry = b""

    async def close(self) -> None:
        aclose = getattr(self._it, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:
                pass

    async def take(self, n: int) -> AsyncIterator[bytes]:
        left = n
        while left > 0:
            if self._carry:
                chunk, self._carry = self._carry, b""
            else:
                try:
                    chunk = await self._it.__anext__()
                except StopAsyncIteration:
                    return
            if len(chunk) > left:
                chunk, self._carry = chunk[:left], chunk[left:]
            left -= len(chunk)
            yield chunk


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
                t.retries += 1
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
