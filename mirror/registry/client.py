"""The distribution API as we use it: manifests here (GET, HEAD, PUT, and the cache's store of
them); tags, the catalog and pages of lists in mirror.registry.listing; blobs as byte streams
from an offset in mirror.registry.blobs (redirects followed without credentials; resuming and
verifying a download is mirror.fetch's); uploads and mounts in mirror.registry.upload. Raw
manifest bytes in, raw manifest bytes out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import aiohttp
from multidict import CIMultiDictProxy

from mirror import mediatypes as mt
from mirror.aio import Once
from mirror.digest import Digest, check_bytes
from mirror.errors import (
    BudgetSpent,
    DigestMismatch,
    IntegrityError,
    ManifestLost,
    MirrorError,
    NotFound,
)
from mirror.manifest import MAX_MANIFEST_BYTES, Descriptor, RawManifest
from mirror.registry.blobs import Blobs
from mirror.registry.listing import Listings
from mirror.registry.transport import Transport
from mirror.registry.upload import Uploads

T = TypeVar("T")
# manifests by digest a client without a store keeps once read (Client._once): a run's
# images that name one manifest are resolved at once or one after the other
READ_KEPT = 256
# the registry and repository a manifest's digest can be fetched again from (None: none)
SourceOf = Callable[[str], "tuple[str, str] | None"]


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


class Client(Blobs, Listings, Uploads):
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
        self._opening: set[asyncio.Task[str | None]] = set()  # their POSTs a stop cut short
        # (registry, repo, tag) -> the digest (and type) a GET or HEAD of this run said it names
        self._asked: dict[tuple[str, str, str], tuple[str, str]] = {}
        # (registry, repo) -> its tags as a source's listing this run gave them (tag rules):
        # the referrers' questions are answered from it (mirror.referrers.Finder)
        self.listed: dict[tuple[str, str], list[str]] = {}
        self._found_again: set[str] = set()  # manifests lost in the store, fetched again
        # without a store (a sync without --cache), the manifests by digest being read, and
        # the last READ_KEPT read, so that two images naming one (two tags of an image)
        # read it once a run: (registry, repo, digest) -> its read, or what it read
        self._reads: Once[tuple[str, str, str], RawManifest] = Once(READ_KEPT)
        # (registry, repo, digest) of each manifest a GET by digest read this run (`served`)
        self._served: set[tuple[str, str, str]] = set()

    # -- manifests -------------------------------------------------------------------------

    async def get_manifest(self, registry: str, repo: str, ref: str,
                           expected: Descriptor | None = None) -> RawManifest:
        """GET by tag or digest, its bytes checked before they are parsed (`_fetch`): a
        by-digest answer against the digest asked for, a by-tag one against the digest the
        registry names it by (its Docker-Content-Digest, else the one a HEAD of the tag just
        said). From the store of manifests instead, when it has the answer (`_stored`)."""
        where = f"{registry}/{repo}{'@' if ref.startswith('sha') and ':' in ref else ':'}{ref}"
        if self.manifests is None and ":" in ref:
            return await self._once(registry, repo, ref, expected, where)
        said: str | None = None  # the digest a HEAD of the tag said just now
        if self.manifests is not None:
            stored = await self._stored(self.manifests, registry, repo, ref, expected, where)
            if isinstance(stored, RawManifest):
                return stored
            said = stored
        data, ctype, checked = await self._fetch(registry, repo, ref, where, expected, said)
        raw = RawManifest.from_bytes(data, ctype, where=where, digest=checked)
        if self.manifests is not None:
            # held there, the bytes are read back from the store when needed
            if self._read_back is not None and self.manifests.put(raw.digest, data):
                raw.release(self._read_back)
            if ":" not in ref:
                self.manifests.remember(registry, repo, ref, raw.digest, raw.media_type)
                self._asked[(registry, repo, ref)] = (raw.digest, raw.media_type)
        return raw

    async def _once(self, registry: str, repo: str, digest: str,
                    expected: Descriptor | None, where: str) -> RawManifest:
        """A manifest by digest, without a store: read once however many images of the run
        ask for it at once or one after the other (the last READ_KEPT kept; one whose read
        failed is read again by the next asking). Its bytes are checked against the digest
        as they arrive (`_fetch`), and against `expected`'s size here."""
        raw = await self._reads.get((registry, repo, digest),
                                    lambda: self._raw(registry, repo, digest, expected, where))
        if expected is not None and expected.size != raw.size:  # as _fetch says it
            data, ctype, checked = await self._fetch(registry, repo, digest, where, expected)
            raw = RawManifest.from_bytes(data, ctype, where=where, digest=checked)
        return raw

    def served(self, registry: str, repo: str, digest: str) -> bool:
        """A GET by digest read manifest `digest` from `registry`'s `repo` this run, its bytes
        checked (not from the cache's store): a push's step 0 need not ask about it
        (mirror.push)."""
        return (registry, repo, digest) in self._served

    async def _raw(self, registry: str, repo: str, digest: str,
                   expected: Descriptor | None, where: str) -> RawManifest:
        data, ctype, checked = await self._fetch(registry, repo, digest, where, expected)
        return RawManifest.from_bytes(data, ctype, where=where, digest=checked)

    async def _fetch(self, registry: str, repo: str, ref: str, where: str,
                     expected: Descriptor | None = None, said: str | None = None
                     ) -> tuple[bytes, str, str | None]:
        """GET a manifest's bytes and check them before anything parses them: by digest
        against `ref` (and `expected`'s size), by tag against `expected` when given, else the
        digest the answer names (Docker-Content-Digest; without one, `said`, what a HEAD of
        the tag said just now; neither: nothing to check, the bytes are their own digest).
        Bytes that do not match are damaged: fetched once more, as a blob is
        (mirror.fetch), then the IntegrityError naming both digests. Returns the bytes, their
        Content-Type and the digest they were checked against (None: none)."""
        again = False  # the bytes came damaged once: fetched once more
        while True:
            data, headers = await self._get(registry, repo, ref, where)
            ctype = headers.get("Content-Type", "")
            checked, size, by = _against(ref, expected, headers, said)
            if checked is None:
                return data, ctype, None
            try:
                check_bytes(data, checked, size, where)
                if checked == ref:
                    self._served.add((registry, repo, ref))
                return data, ctype, checked
            except IntegrityError as e:
                # A signed schema 1 manifest's digest is not the sha256 of the bytes served
                # (the registry signs it anew on every GET, REFERENCE.md 1.2): say schema 1,
                # exit 9, not "digest mismatch"; anything else that does not match is what it
                # is (bytes damaged on the way: a digest mismatch, not "not JSON").
                if _schema1(data, ctype):
                    RawManifest.from_bytes(data, ctype, where=where)
                if again:
                    if by and isinstance(e, DigestMismatch):
                        raise IntegrityError(f"{where}: digest mismatch: expected {checked} "
                                             f"({by}), got {e.actual} (fetched twice)") from None
                    raise
                again = True
                await self.t.backoff("GET", f"{registry}/v2/{repo}/manifests/{ref}", str(e),
                                     1, delay=0.0)

    async def _get(self, registry: str, repo: str, ref: str, where: str
                   ) -> tuple[bytes, CIMultiDictProxy[str]]:
        async def ask() -> aiohttp.ClientResponse:
            return await self.t.request(
                registry, "GET", f"/v2/{repo}/manifests/{ref}", repository=repo,
                headers={"Accept": mt.MANIFEST_ACCEPT}, what=_asked(ref))

        return await self._read_whole(ask, MAX_MANIFEST_BYTES, f"{where}: manifest",
                                      registry, repo)

    async def store_again(self, registry: str, repo: str, digest: str) -> None:
        """A manifest this run released to the store (RawManifest.release), lost there
        (damaged, removed): GET it by digest, check it (`_fetch`), and keep it in the store
        again, where the manifests released with it read it back."""
        where = f"{registry}/{repo}@{digest}"
        data, _, _ = await self._fetch(registry, repo, digest, where)
        if self.manifests is None or not self.manifests.put(digest, data):
            raise IntegrityError(f"manifest {digest}: fetched again from {registry}/{repo}, "
                                 "but the cache's store of manifests cannot keep it")

    async def found_again(self, lost: ManifestLost, source: tuple[str, str] | None) -> None:
        """Manifest `lost`, which this run released to the store (RawManifest.release) and
        could not read back (damaged or removed there since), fetched again by digest from
        `source` (registry, repository) and stored again (store_again): its reader reads it
        anew. Once a manifest per run; `lost` stands when there is no registry to ask. A
        registry that cannot serve it: the one error naming the manifest, the damage and the
        answer (integrity); one whose budget is spent: BudgetSpent (the next run gets it)."""
        if source is None or lost.digest in self._found_again:
            raise lost
        self._found_again.add(lost.digest)
        try:
            await self.store_again(*source, lost.digest)
        except BudgetSpent as e:  # the registry may be asked again next run: it waits (14)
            raise BudgetSpent(f"{lost}; fetching it again: {e}", registry=e.registry,
                              status=e.status) from None
        except MirrorError as e:
            raise IntegrityError(f"{lost}; fetching it again: {e}",
                                 hint="run again: the tag is resolved anew") from None

    async def reading(self, act: Callable[[], Awaitable[T]], source: SourceOf) -> T:
        """`act`, which reads back manifests' bytes this run released to the store, again
        once one was lost there and `found_again` fetched it from `source(digest)`: the run
        goes on as if it had never been lost."""
        while True:
            try:
                return await act()
            except ManifestLost as lost:
                await self.found_again(lost, source(lost.digest))

    async def _stored(self, store: ManifestStore, registry: str, repo: str, ref: str,
                      expected: Descriptor | None, where: str) -> RawManifest | str | None:
        """The manifest `ref` names, from `store`: by digest when stored (immutable); by tag
        when the store knows what the tag named and one HEAD says what it names now, and
        that is stored too. Else ask with a GET: the digest the HEAD said (the tag moved to
        a manifest not stored yet), which the GET's bytes must match when its answer names
        none; None (the tag is new to the store, gone, or the HEAD gave no digest)."""
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
                return _named(digest)
        # the store checked the bytes against `digest` as it read them, and holds them
        raw = RawManifest.from_bytes(data, ctype, where=where, digest=digest)
        if known is not None:
            if (digest, raw.media_type) != known:
                store.remember(registry, repo, ref, digest, raw.media_type)
            self._asked[(registry, repo, ref)] = (digest, raw.media_type)
        if self._read_back is not None:
            raw.release(self._read_back)
        return raw

    def recorded(self, registry: str, repo: str, tag: str) -> RawManifest | None:
        """The manifest `tag` named when last asked, as the store recorded it, asking nothing
        (a tag rule's candidate on a registry with a request budget: mirror.created); None
        when the store has no record of the tag, or no longer that manifest."""
        store = self.manifests
        known = store.known(registry, repo, tag) if store is not None else None
        data = store.get(known[0]) if store is not None and known is not None else None
        if known is None or data is None:
            return None
        raw = RawManifest.from_bytes(data, known[1], where=f"{registry}/{repo}:{tag}",
                                     digest=known[0])
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


def _schema1(data: bytes, ctype: str) -> bool:
    """The bytes say they are a Docker schema 1 manifest (its type, or schemaVersion 1)."""
    if mt.strip_params(ctype) in mt.SCHEMA1_TYPES:
        return True
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(body, dict) and body.get("schemaVersion") == 1


def _against(ref: str, expected: Descriptor | None, headers: CIMultiDictProxy[str],
             said: str | None) -> tuple[str | None, int | None, str]:
    """What a manifest's answer to a GET of `ref` is checked against: the digest, the size
    (None: not known) and, for a tag, where the digest came from ("" for a digest asked
    for or listed)."""
    if ":" in ref:
        return ref, expected.size if expected is not None else None, ""
    if expected is not None:
        return expected.digest, expected.size, ""
    named = _named(headers.get("Docker-Content-Digest"))
    if named is not None:
        return named, None, "the registry's Docker-Content-Digest"
    return said, None, "the digest a HEAD of the tag named"


def _named(header: str | None) -> str | None:
    """The digest a manifest's answer names it by (Docker-Content-Digest), when it names one
    that can be checked (sha256, sha512); None: the answer names none (the header is
    optional, REFERENCE.md), or one of an algorithm that cannot be checked."""
    if not header:
        return None
    try:
        return str(Digest.parse(header.strip()))
    except IntegrityError:
        return None


def _asked(ref: str) -> str:
    """What a manifest request asked for, for errors: `tag v1` or `manifest sha256:...`."""
    return f"manifest {ref}" if ":" in ref else f"tag {ref}"
