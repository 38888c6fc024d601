"""Pushing blobs (REFERENCE.md 6.4): one PUT for small blobs, one streamed PATCH of the
whole blob for big ones (16 MiB chunks where the registry refuses so large a body),
relative or absolute Location, cross-repository mounts, and an upload that fails is resumed
from the offset the registry reports (seekable sources; a failed closing PUT is sent again
while the session holds every byte) or restarted cleanly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from mirror.aio import cancel_all, retrieved
from mirror.errors import (
    BudgetSpent,
    DamagedInTransit,
    IntegrityError,
    NotFound,
    RateLimited,
    RegistryError,
)
from mirror.manifest import Descriptor
from mirror.registry.transport import OnTheWire

if TYPE_CHECKING:
    from mirror.registry.transport import Transport

CANCEL_WITHIN = 5.0  # seconds an interrupted load spends cancelling its open upload sessions
MONOLITHIC_MAX = 16 << 20  # blobs up to this size go in one PUT; larger ones in one PATCH
# the PATCH size for a registry that refused a whole blob in one (413: a proxy's body limit),
# raised to the registry's OCI-Chunk-Min-Length when it asks
UPLOAD_CHUNK = 16 << 20

BodyFactory = Callable[[int], AsyncIterator[bytes]]  # offset -> chunks from that offset


class Uploads:
    """The upload half of mirror.registry.client.Client (a mixin: it uses the client's
    transport `t`, `bytes_uploaded`, `_min_chunk` and `_chunked_at`).

    Every upload session the registry opens for us is kept in `_sessions` (by its URL path,
    with the latest Location, whose state token changes with each PATCH) until it is
    finished or cancelled, so a load that stops can cancel what it left open
    (`cancel_open_uploads`); a POST that opens one, cut short by the stop, in `_opening`
    until its answer says which, or dropped if it had not left (`_post`)."""

    t: Transport
    bytes_uploaded: int
    _min_chunk: dict[str, int]
    _chunked_at: set[str]  # registries that refused a whole blob in one PATCH (413)
    _sessions: dict[str, tuple[str, str, str]]  # URL path -> (registry, repo, location)
    _opening: set[asyncio.Task[str | None]]  # session POSTs whose caller was cancelled

    def _opened(self, registry: str, repo: str, location: str,
                previous: str | None = None) -> str:
        """Record a session's Location (`previous`: the one it replaces, whatever its path)."""
        if previous is not None:
            self._closed(previous)
        self._sessions[urlsplit(location).path] = (registry, repo, location)
        return location

    def _closed(self, location: str) -> None:
        self._sessions.pop(urlsplit(location).path, None)

    async def cancel_open_uploads(self, within: float = CANCEL_WITHIN) -> int:
        """DELETE every upload session still open (a load that failed or was interrupted),
        those whose opening POST a stop cut short once their answer is in, giving up after
        `within` seconds in all (the registry expires them in the end); return how many
        there were."""
        end = time.monotonic() + within
        opening = list(self._opening)
        if opening:  # their answers record the sessions they opened (`_post`)
            try:
                await asyncio.wait(opening, timeout=within)
            finally:  # not answered in time, or a second stop: no task left behind
                late = [task for task in opening if not task.done()]
                if late:
                    self.t.debug(f"gave up waiting for {len(late)} upload session(s) to "
                                 f"open after {within:g} s")
                    await cancel_all(late)
        open_now = list(self._sessions.values())
        left = end - time.monotonic()
        if open_now:
            try:
                if left <= 0:
                    raise TimeoutError
                await asyncio.wait_for(asyncio.gather(
                    *(self.cancel_upload(reg, repo, loc) for reg, repo, loc in open_now)),
                    left)
            except TimeoutError:
                self.t.debug(f"gave up cancelling {len(self._sessions)} upload session(s) "
                             f"after {within:g} s")
        return len(open_now)

    async def mount_blob(self, registry: str, repo: str, desc: Descriptor,
                         from_repo: str) -> str | None:
        """Cross-repository mount: None when mounted, else the Location of an upload session
        to push the blob into (the registry's 202 answer, or a fresh session when the mount
        request failed: ggcr does the same)."""
        q = urlencode({"mount": desc.digest, "from": from_repo})
        said = f"{registry}: {desc.digest} not mounted from {from_repo} into {repo}"
        try:
            loc = await self._post(
                registry, repo, f"/v2/{repo}/blobs/uploads/?{q}",
                f"mount blob {desc.digest} from {from_repo}", from_repo)
        except RateLimited:
            raise
        except RegistryError as e:
            # no mount (no read access to the source, an old registry): push it instead
            self.t.debug(f"{said} ({e}): uploaded instead")
            return await self._start_upload(registry, repo)
        if loc is not None:  # not there, or not ours to read: the registry says no more
            self.t.debug(f"{said} (HTTP 202: an upload session): uploaded instead")
        return loc

    async def upload_blob(self, registry: str, repo: str, desc: Descriptor,
                          body: BodyFactory, *, seekable: bool,
                          location: str | None = None) -> None:
        """Push a blob: one PUT up to MONOLITHIC_MAX, one PATCH above (`_patched`).

        A failed PATCH of a seekable source is resumed from the offset the registry reports
        (GET on the session); anything else that fails with a retryable cause restarts the
        upload in a new session (the old one is cancelled), with back-off, bounded by the
        retry policy. A non-seekable source (a compressed bundle's stream) can't be replayed:
        its failure is final.
        """
        failures = damaged = 0
        while True:
            if location is None:
                location = await self._start_upload(registry, repo)
            try:
                if desc.size <= MONOLITHIC_MAX:
                    chunks = body(0)
                    try:
                        await self._put_final(registry, repo, location, desc, chunks,
                                              desc.size)
                    finally:  # a PUT that failed mid-body left it suspended: close it now
                        await aclose(chunks)
                else:
                    await self._patched(registry, repo, location, desc, body, seekable)
                self.bytes_uploaded += desc.size
                return
            except RegistryError as e:
                failures += 1
                if not seekable or failures >= self.t.policy.tries or not restartable(e):
                    raise
                await self.cancel_upload(registry, repo, location)
                await self.t.backoff("PUT" if desc.size <= MONOLITHIC_MAX else "PATCH",
                                     location, f"{e}; a new upload session", failures)
                location = None
            except DamagedInTransit as e:  # the source's bytes, damaged on the way: read
                damaged += 1               # once more, as a pull fetches a blob again
                if not seekable or damaged > 1:
                    raise
                await self.cancel_upload(registry, repo, location)
                await self.t.backoff("GET", desc.digest, f"{e}; read once more, into a new "
                                     "upload session", 1, delay=0.0)
                location = None

    async def _start_upload(self, registry: str, repo: str) -> str:
        location = await self._post(registry, repo, f"/v2/{repo}/blobs/uploads/",
                                    "start blob upload")
        assert location is not None  # a 201 (mounted) answers a mount only
        return location

    async def _post(self, registry: str, repo: str, url: str, what: str,
                    mount_from: str | None = None) -> str | None:
        """The POST that opens an upload session (202: its Location, recorded) or mounts a
        blob (201, a mount from repository `mount_from` only: None), awaited to its end
        even when the caller is cancelled meanwhile (a stop): the registry opens the session
        whether or not the run hears its answer, and one whose Location the run never
        learned stayed open, empty, for the registry's upload purging. The cancellation
        goes on at once; a POST on its way is left to `cancel_open_uploads`, which waits for
        its answer (within its time) and cancels the session it opened; one that had not
        left (waiting for a slot, a token, the host's pause, a back-off) is dropped: it was
        sent after the stop, then its session DELETEd."""
        wire = OnTheWire()
        task = asyncio.ensure_future(self._posted(registry, repo, url, what, mount_from, wire))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(retrieved)  # its error, if any, is nobody's now
            if not task.done():
                if not wire.now:  # never left (its answer, were it in, opened nothing)
                    task.cancel()
                self._opening.add(task)  # cancel_open_uploads waits for it to end
                task.add_done_callback(self._opening.discard)
            raise

    async def _posted(self, registry: str, repo: str, url: str, what: str,
                      mount_from: str | None, wire: OnTheWire) -> str | None:
        resp = await self.t.request(
            registry, "POST", url, repository=repo, actions="pull,push",
            extra_scopes=() if mount_from is None else (f"repository:{mount_from}:pull",),
            ok=(202,) if mount_from is None else (201, 202), what=what, allow_redirects=False,
            wire=wire)
        async with resp:
            if resp.status == 201:
                return None
            min_len = resp.headers.get("OCI-Chunk-Min-Length", "")
            if min_len.isdigit():
                self._min_chunk[registry] = int(min_len)
            return self._opened(registry, repo, self._location(resp))

    async def cancel_upload(self, registry: str, repo: str, location: str) -> None:
        """DELETE an abandoned session (best effort; registries expire them anyway)."""
        location = self._sessions.get(urlsplit(location).path, (registry, repo, location))[2]
        self._closed(location)
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
        self._closed(location)
        async with resp:
            got = resp.headers.get("Docker-Content-Digest")
        if got and got != desc.digest:
            raise IntegrityError(f"{registry}/{repo}: registry stored blob {desc.digest} as "
                                 f"{got}")

    async def _patched(self, registry: str, repo: str, location: str, desc: Descriptor,
                       body: BodyFactory, seekable: bool) -> None:
        """The blob's bytes in one streamed PATCH (`Content-Range: 0-END`, the spec's chunked
        upload with one chunk: no chunk waits for the answer to the one before, as in docker's
        and skopeo's streamed PATCH), then the closing PUT. The source's bytes pass straight
        to the socket: memory does not grow with the blob.

        A failed PATCH of a seekable source resumes from the offset the registry reports
        (GET on the session; distribution 2.8 has nothing to resume after a body cut midway:
        its session is then invalid, and upload_blob opens a new one). A registry that
        refuses so large a body (413, seekable or not) gets UPLOAD_CHUNK PATCHes from then
        on, in order, each waiting for its answer."""
        stream = _Stream(body(0))
        try:
            await self._patch(registry, repo, location, desc, body, seekable, stream)
        finally:  # whatever failed, the body (the last one opened) is closed now
            await stream.close()

    async def _patch(self, registry: str, repo: str, location: str, desc: Descriptor,
                     body: BodyFactory, seekable: bool, stream: _Stream) -> None:
        offset = 0
        chunk_size = self._chunk_size(registry, desc.size)
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
                if e.status == 413 and registry not in self._chunked_at:
                    self._chunked_at.add(registry)  # not a failure: the body was too big
                    self.t.debug(f"{registry}: PATCH of {n} bytes refused (HTTP 413): "
                                 f"{UPLOAD_CHUNK >> 20} MiB chunks from now on")
                    chunk_size = self._chunk_size(registry, desc.size)
                    if not seekable:  # the next pass over the stream goes in chunks
                        raise TooLarge(str(e), registry=e.registry, repository=e.repository,
                                       status=413, codes=e.codes) from None
                else:
                    failures += 1
                    if not seekable or failures >= self.t.policy.tries or not restartable(e):
                        raise
                    await self.t.backoff("PATCH", location, str(e), failures)
                # where did the registry get to? resume from there with a fresh stream
                location, offset = await self._upload_status(registry, repo, location)
                await stream.reopen(body(offset))
                continue
            async with resp:
                location = self._opened(registry, repo, self._location(resp), location)
                min_len = resp.headers.get("OCI-Chunk-Min-Length", "")
            if min_len.isdigit():
                self._min_chunk[registry] = int(min_len)
                chunk_size = self._chunk_size(registry, desc.size)
            offset += n
        await stream.close()  # before the closing PUT: a source's slot is not held over it
        await self._close(registry, repo, location, desc)

    async def _close(self, registry: str, repo: str, location: str, desc: Descriptor
                     ) -> None:
        """The empty PUT that closes a PATCHed upload. One that fails with a cause worth
        another try (a gateway's 5xx) is asked again in the same session while the session
        holds every byte (GET on it): the blob is not sent again; else the error goes to
        upload_blob, which opens a new session."""
        failures = 0
        while True:
            try:
                await self._put_final(registry, repo, location, desc, None, 0)
                return
            except RegistryError as e:
                failures += 1
                if failures >= self.t.policy.tries or not restartable(e):
                    raise
                await self.t.backoff("PUT", location, str(e), failures)
                location, offset = await self._upload_status(registry, repo, location)
                if offset != desc.size:
                    raise

    def _chunk_size(self, registry: str, size: int) -> int:
        """The whole blob, or UPLOAD_CHUNK (at least the registry's OCI-Chunk-Min-Length)
        where the registry refused a whole blob."""
        if registry not in self._chunked_at:
            return size
        return max(UPLOAD_CHUNK, self._min_chunk.get(registry, 0))

    async def _upload_status(self, registry: str, repo: str, location: str) -> tuple[str, int]:
        resp = await self.t.request(registry, "GET", location, repository=repo,
                                    actions="pull,push", ok=(204,), what="upload status",
                                    allow_redirects=False)
        async with resp:
            rng = resp.headers.get("Range", "0-0")
            loc = self._opened(registry, repo, self._location(resp), location)
        end = int(rng.split("-")[-1]) if "-" in rng else 0
        # distribution answers 0-0 both for nothing and for one byte; re-send from 0 then
        return loc, (end + 1 if end > 0 else 0)


class TooLarge(RegistryError):
    """A one-pass source's PATCH refused for its size (413): its next try goes in chunks."""


def restartable(e: RegistryError) -> bool:
    """Worth another try: no status (connection), 401 (token expired mid-upload), an upload
    session the registry lost (404, 416; distribution says BLOB_UPLOAD_INVALID for a session
    it no longer has after a restart), a transient status, or TooLarge. Not a registry
    with no request left this run (BudgetSpent: the target's, or a sync's source that was to
    give the body), which another try only asks again."""
    if isinstance(e, TooLarge):
        return True
    if isinstance(e, BudgetSpent):
        return False
    if isinstance(e, NotFound) and e.codes and \
            not {"BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"} & set(e.codes):
        return False
    return e.status is None or e.status in (401, 404, 408, 416, 429) or e.status >= 500


async def aclose(chunks: AsyncIterator[bytes]) -> None:
    """Close a body now (a generator left suspended is otherwise closed only when the
    garbage collector finalises it): a sync's source stream holds one of its registry's
    `max_concurrency` download slots (mirror.sources) until it is closed. Closing twice,
    or a body that is no generator, is harmless; its own error on closing is not ours."""
    close = getattr(chunks, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:
            pass


class _Stream:
    """An async byte stream that can be cut into exact-length pieces (upload chunks)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._it = chunks
        self._carry = b""

    async def close(self) -> None:
        await aclose(self._it)

    async def reopen(self, chunks: AsyncIterator[bytes]) -> None:
        """The stream from another body (a resumed upload's, from its offset)."""
        await self.close()
        self._it, self._carry = chunks, b""

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

