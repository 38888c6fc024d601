"""The distribution API as we use it: manifests, blobs (resumable downloads, uploads, mounts),
tags. Raw manifest bytes in, raw manifest bytes out."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin

import aiohttp

from mirror import mediatypes as mt
from mirror.digest import check_bytes
from mirror.errors import IntegrityError, NotFound, RegistryError
from mirror.manifest import MAX_MANIFEST_BYTES, Descriptor, RawManifest
from mirror.registry.transport import Transport, describe_exception
from mirror.store.blobs import PartialBlob

MONOLITHIC_MAX = 16 << 20  # blobs up to this size go in one PUT; larger ones in PATCH chunks
UPLOAD_CHUNK = 64 << 20
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

    # -- manifests -------------------------------------------------------------------------

    async def get_manifest(self, registry: str, repo: str, ref: str,
                           expected: Descriptor | None = None) -> RawManifest:
        """GET by tag or digest; a by-digest answer is checked against the digest asked for."""
        where = f"{registry}/{repo}{'@' if ref.startswith('sha') and ':' in ref else ':'}{ref}"
        resp = await self.t.request(
            registry, "GET", f"/v2/{repo}/manifests/{ref}", repository=repo,
            headers={"Accept": mt.MANIFEST_ACCEPT}, what=f"manifest {ref}")
        async with resp:
            data = await resp.content.read(MAX_MANIFEST_BYTES + 1)
            ctype = resp.headers.get("Content-Type", "")
        raw = RawManifest.from_bytes(data, ctype, where=where)
        if ":" in ref:
            check_bytes(data, ref, expected.size if expected else None, where)
        elif expected is not None:
            check_bytes(data, expected.digest, expected.size, where)
        return raw

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

    async def put_manifest(self, registry: str, repo: str, ref: str, raw: RawManifest) -> None:
        """PUT the exact bytes; the registry's Docker-Content-Digest must equal ours."""
        resp = await self.t.request(
            registry, "PUT", f"/v2/{repo}/manifests/{ref}", repository=repo,
            actions="pull,push", headers={"Content-Type": raw.media_type}, data=raw.data,
            ok=(200, 201), what=f"push manifest {raw.digest} as {ref}")
        async with resp:
            got = resp.headers.get("Docker-Content-Digest")
        if got and got != raw.digest:
            raise IntegrityError(
                f"{registry}/{repo}:{ref}: registry stored the manifest as {got}, "
                f"not {raw.digest}")

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
        try:
            resp = await self.t.request(registry, "HEAD", f"/v2/{repo}/blobs/{desc.digest}",
                                        repository=repo, actions=actions,
                                        what=f"blob {desc.digest}")
        except NotFound:
            return False
        async with resp:
            return True

    async def get_small_blob(self, registry: str, repo: str, digest: str,
                             limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """A config blob, in memory, checked against its digest."""
        resp = await self.t.request(registry, "GET", f"/v2/{repo}/blobs/{digest}",
                                    repository=repo, headers={"Accept-Encoding": "identity"},
                                    what=f"blob {digest}")
        async with resp:
            data = await resp.content.read(limit + 1)
        check_bytes(data, digest, None, f"{registry}/{repo}@{digest}")
        return data

    async def download_blob(self, registry: str, repo: str, desc: Descriptor,
                            sink: PartialBlob, progress: Callable[[int], None] | None = None
                            ) -> None:
        """Stream a blob into `sink`, resuming with Range after a broken connection.

        The sink verifies size as bytes arrive and the digest at commit; a digest mismatch
        is fetched again once from byte 0, then raised.
        """
        tries = self.t.policy.tries
        attempt = 0
        mismatches = 0
        what = f"blob {desc.digest}"
        while True:
            offset = sink.offset
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            resp = await self.t.request(registry, "GET", f"/v2/{repo}/blobs/{desc.digest}",
                                        repository=repo, headers=headers, ok=(200, 206),
                                        what=what)
            before = offset
            try:
                async with resp:
                    if resp.status == 206:
                        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                        if not m or int(m.group(1)) != offset:
                            await sink.restart()
                            raise _Retry("bad Content-Range")
                    elif offset:
                        await sink.restart()  # Range ignored: a clean restart
                    async for chunk in resp.content.iter_any():
                        await sink.write(chunk)
                        self.bytes_downloaded += len(chunk)
                        if progress:
                            progress(len(chunk))
                await sink.drain()
                if sink.offset < desc.size:
                    raise _Retry(f"body ended at {sink.offset} of {desc.size} bytes")
                try:
                    await sink.commit()
                    return
                except IntegrityError:
                    mismatches += 1
                    if mismatches > 1:
                        raise
                    sink.open()
                    self.t.retries += 1
                    continue
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
                    asyncio.TimeoutError, _Retry) as e:
                await _settle(sink)
                if sink.offset > before:
                    attempt = 0  # progress was made: a flaky link, not a dead one
                attempt += 1
                if attempt >= tries:
                    raise RegistryError(
                        f"{registry}/{repo}: {what}: {describe_exception(e)} after "
                        f"{attempt} tries ({sink.offset} of {desc.size} bytes kept for the "
                        "next run)", registry=registry, repository=repo) from e
                self.t.retries += 1
                await asyncio.sleep(self.t.policy.delay(attempt))

    async def mount_blob(self, registry: str, repo: str, desc: Descriptor,
                         from_repo: str) -> str | None:
        """Cross-repository mount; True when mounted, else the upload Location we were given."""
        q = urlencode({"mount": desc.digest, "from": from_repo})
        resp = await self.t.request(
            registry, "POST", f"/v2/{repo}/blobs/uploads/?{q}", repository=repo,
            actions="pull,push", extra_scopes=(f"repository:{from_repo}:pull",),
            ok=(201, 202), what=f"mount blob {desc.digest} from {from_repo}",
            allow_redirects=False)
        async with resp:
            if resp.status == 201:
                return None
            return self._location(resp)

    async def upload_blob(self, registry: str, repo: str, desc: Descriptor,
                          body: BodyFactory, *, seekable: bool,
                          location: str | None = None) -> None:
        """Push a blob: one PUT for small blobs, PATCH chunks for big ones.

        A failed chunked upload of a seekable source is resumed from the offset the registry
        reports; otherwise the upload is restarted from a new session.
        """
        restarts = 0
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
                if isinstance(e, IntegrityError) or not seekable or restarts >= 2 or (
                        e.status is not None and e.status < 500 and e.status not in (404, 416)):
                    raise
                restarts += 1
                location = None

    async def _start_upload(self, registry: str, repo: str) -> str:
        resp = await self.t.request(registry, "POST", f"/v2/{repo}/blobs/uploads/",
                                    repository=repo, actions="pull,push", ok=(202,),
                                    what="start blob upload", allow_redirects=False)
        async with resp:
            return self._location(resp)

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
        resp = await self.t.request(
            registry, "PUT", url, repository=repo, actions="pull,push", headers=headers,
            data=chunks if chunks is not None else b"", ok=(201, 204),
            what=f"upload blob {desc.digest}", allow_redirects=False, retry=False)
        resp.release()

    async def _chunked(self, registry: str, repo: str, location: str, desc: Descriptor,
                       body: BodyFactory, seekable: bool) -> None:
        offset = 0
        stream = _Stream(body(0))
        while offset < desc.size:
            n = min(UPLOAD_CHUNK, desc.size - offset)
            headers = {"Content-Type": "application/octet-stream",
                       "Content-Range": f"{offset}-{offset + n - 1}",
                       "Content-Length": str(n)}
            try:
                resp = await self.t.request(
                    registry, "PATCH", location, repository=repo, actions="pull,push",
                    headers=headers, data=stream.take(n), ok=(202, 201),
                    what=f"upload blob {desc.digest}", allow_redirects=False, retry=False)
            except RegistryError:
                if not seekable:
                    raise
                location, offset = await self._upload_status(registry, repo, location)
                stream = _Stream(body(offset))
                continue
            async with resp:
                location = self._location(resp)
            offset += n
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
