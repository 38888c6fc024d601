"""The distribution API as we use it: manifests, tags, blobs as byte streams from an offset
(redirects followed without credentials; resuming and verifying a download is mirror.fetch's);
uploads and mounts are in mirror.registry.upload. Raw manifest bytes in, raw manifest bytes
out."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urljoin

import aiohttp
import yarl
from multidict import CIMultiDictProxy

from mirror import mediatypes as mt
from mirror.digest import check_bytes
from mirror.errors import AuthError, IntegrityError, NotFound, RegistryError
from mirror.manifest import MAX_MANIFEST_BYTES, Descriptor, RawManifest
from mirror.registry.body import read_body
from mirror.registry.network import TransferError, describe_exception
from mirror.registry.stream import blob_stream
from mirror.registry.transport import Transport
from mirror.registry.upload import Uploads

MAX_LIST_PAGE_BYTES = 16 << 20  # one page of tags/list or _catalog (a bounded read)

REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True, slots=True)
class ManifestHead:
    digest: str | None
    media_type: str
    size: int | None




class ManifestStore(Protocol):
    """Where manifests seen once are kept (mirror.store.manifests, the cache's): by digest,
    verified on read, and what each tag named when last asked."""

    def get(self, digest: str) -> bytes | None: ...
    def put(self, digest: str, data: bytes) -> bool: ...
    def known(self, registry: str, repo: str, tag: str) -> tuple[str, str] | None: ...
    def remember(self, registry: str, repo: str, tag: str, digest: str,
                 media_type: str = "") -> None: ...
    def referrers(self, registry: str, repo: str, subject: str) -> list[dict] | None: ...
    def keep_referrers(self, registry: str, repo: str, subject: str,
                       found: list[dict]) -> None: ...


class Client(Uploads):
    """Operations on repositories of any registry, through one Transport. With `manifests`
    (the cache's store), a manifest seen once is read from there: by digest always, by tag
    after one HEAD of the tag says it still names that digest (mirror.store.manifests), and
    once a run has asked (a tag rule's candidate, then the image it chose), without asking
    again."""

    def __init__(self, transport: Transport, manifests: ManifestStore | None = None) -> None:
        self.t = transport
        self.manifests = manifests
        # what a manifest whose bytes the store holds reads them back with (one bound
        # method for all: one each was 64 bytes a manifest)
        self._read_back = manifests.get if manifests is not None else None
        # registries whose referrers are taken from `manifests` when it has them (images.yaml
        # `referrers: cached`; mirror.referrers.Finder)
        self.cached_referrers: set[str] = set()
        self.bytes_uploaded = 0
        self._min_chunk: dict[str, int] = {}  # registry -> its OCI-Chunk-Min-Length
        self._chunked_at: set[str] = set()  # registries that refused one whole-blob PATCH
        self._sessions: dict[str, tuple[str, str, str]] = {}  # open upload sessions
        # (registry, repo, tag) -> the digest (and type) a GET or HEAD of this run said it names
        self._asked: dict[tuple[str, str, str], tuple[str, str]] = {}
        # (registry, repo) -> its tags as a source's listing this run gave them (tag rules):
        # the referrers' questions are answered from it (mirror.referrers.Finder)
        self.listed: dict[tuple[str, str], list[str]] = {}

    # -- manifests -------------------------------------------------------------------------

    async def get_manifest(self, registry: str, repo: str, ref: str,
                           expected: Descriptor | None = None) -> RawManifest:
        """GET by tag or digest; a by-digest answer is checked against the digest asked for.
        From the store of manifests instead, when it has the answer (`_stored`)."""
        where = f"{registry}/{repo}{'@' if ref.startswith('sha') and ':' in ref else ':'}{ref}"
        if self.manifests is not None:
            stored = await self._stored(self.manifests, registry, repo, ref, expected, where)
            if stored is not None:
                return stored

        async def ask() -> aiohttp.ClientResponse:
            return await self.t.request(
                registry, "GET", f"/v2/{repo}/manifests/{ref}", repository=repo,
                headers={"Accept": mt.MANIFEST_ACCEPT}, what=_asked(ref))

        data, headers = await self._read_whole(ask, MAX_MANIFEST_BYTES, f"{where}: manifest",
                                               registry, repo)
        ctype = headers.get("Content-Type", "")
        # the bytes are checked before they are parsed: wrong bytes are an integrity error
        checked: str | None = None  # the digest the bytes were checked against
        try:
            if ":" in ref:
                check_bytes(data, ref, expected.size if expected else None, where)
                checked = ref
            elif expected is not None:
                check_bytes(data, expected.digest, expected.size, where)
                checked = expected.digest
        except IntegrityError:
            # A signed schema 1 manifest's digest is not the sha256 of the bytes served (the
            # registry signs it anew on every GET, REFERENCE.md 1.2): say schema 1, exit 9,
            # not "digest mismatch"; anything else that does not match is what it is.
            RawManifest.from_bytes(data, ctype, where=where)
            raise
        raw = RawManifest.from_bytes(data, ctype, where=where, digest=checked)
        if self.manifests is not None:
            # held there, the bytes are read back from the store when needed
            if self._read_back is not None and self.manifests.put(raw.digest, data):
                raw.release(self._read_back)
            if ":" not in ref:
                self.manifests.remember(registry, repo, ref, raw.digest, raw.media_type)
                self._asked[(registry, repo, ref)] = (raw.digest, raw.media_type)
        return raw

    async def _stored(self, store: ManifestStore, registry: str, repo: str, ref: str,
                      expected: Descriptor | None, where: str) -> RawManifest | None:
        """The manifest `ref` names, from `store`: by digest when stored (immutable); by tag
        when the store knows what the tag named and one HEAD says what it names now, and
        that is stored too. None: ask with a GET (the tag is new to the store, moved to a
        manifest not seen yet, gone, or the HEAD gave no digest)."""
        known: tuple[str, str] | None = None  # set when a HEAD was asked just now
        if ":" in ref:
            digest = ref
            data = store.get(ref)
            if data is None or (expected is not None and expected.size != len(data)):
                return None
            ctype = expected.media_type if expected is not None else ""
        elif (registry, repo, ref) in self._asked:  # asked earlier in this run
            digest, ctype = self._asked[(registry, repo, ref)]
            data = store.get(digest)
            if data is None:
                return None
        else:
            known = store.known(registry, repo, ref)
            if known is None:
                return None
            head = await self.head_manifest(registry, repo, ref, known)
            if head is None or not head.digest:
                return None
            digest, ctype = head.digest, head.media_type
            data = store.get(digest)
            if data is None:
                return None
        # the store checked the bytes against `digest` as it read them, and holds them
        raw = RawManifest.from_bytes(data, ctype, where=where, digest=digest)
        if known is not None:
            if (digest, raw.media_type) != known:
                store.remember(registry, repo, ref, digest, raw.media_type)
            self._asked[(registry, repo, ref)] = (digest, raw.media_type)
        if self._read_back is not None:
            raw.release(self._read_back)
        return raw

    async def head_manifest(self, registry: str, repo: str, ref: str,
                            known: tuple[str, str] | None = None) -> ManifestHead | None:
        """HEAD (not counted by Docker Hub's pull limit); None when absent. `known`: the
        digest and media type the tag named when last asked; the digest goes in
        `If-None-Match`, so a registry whose ETag is the manifest's digest (distribution's)
        answers 304 while the tag still names it, without reading the manifest (a seventh of
        the CPU of each HEAD, measured on distribution 2.8); one that ignores it answers 200
        with the digest, as to any HEAD."""
        headers = {"Accept": mt.MANIFEST_ACCEPT}
        asked = known if known is not None and known[1] else None  # a type to answer 304 with
        if asked is not None:
            headers["If-None-Match"] = f'"{asked[0]}"'
        try:
            resp = await self.t.request(
                registry, "HEAD", f"/v2/{repo}/manifests/{ref}", repository=repo,
                headers=headers, ok=(200, 304), what=_asked(ref))
        except NotFound:
            return None
        async with resp:
            if resp.status == 304:  # only a conditional HEAD is answered so
                return ManifestHead(asked[0], asked[1], None) if asked is not None else None
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
        self._asked.pop((registry, repo, ref), None)
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

    async def _read_whole(self, ask: Callable[[], Awaitable[aiohttp.ClientResponse]],
                          limit: int, where: str, registry: str, repo: str
                          ) -> tuple[bytes, CIMultiDictProxy[str]]:
        """A small document (its first `limit`+1 bytes) and its answer's headers, asked for
        again when the body breaks off (the request itself is retried by the transport)."""
        attempt = 0
        while True:
            attempt += 1
            resp = await ask()
            try:
                async with resp:
                    return await read_body(resp, limit), resp.headers
            except (TimeoutError, aiohttp.ClientPayloadError,
                    aiohttp.ClientConnectionError) as e:
                why = describe_exception(e)
                if attempt >= self.t.policy.tries:
                    raise RegistryError(f"{where}: {why}", registry=registry,
                                        repository=repo) from None
                await self.t.backoff(resp.method, str(resp.url), why, attempt)


class _Refused(Exception):
    """Where the registry redirected us refused the blob: ask the registry again."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(why)
        self.url = url
        self.why = why


def _asked(ref: str) -> str:
    """What a manifest request asked for, for errors: `tag v1` or `manifest sha256:...`."""
    return f"manifest {ref}" if ":" in ref else f"tag {ref}"
