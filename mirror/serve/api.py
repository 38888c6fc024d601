"""The read-only OCI distribution API over a Catalog, as an aiohttp application.

Answers as distribution (the CNCF registry) does where the spec leaves room: the
`Docker-Distribution-API-Version` header on every answer; manifests in their stored bytes and
media type, chosen by Accept as distribution chooses (an OCI manifest or index asked for
without its type in Accept is MANIFEST_UNKNOWN; a Docker manifest list asked for by tag
without the list type gives its linux/amd64 image); blobs with one byte range (206, or 416
with `Content-Range: bytes */SIZE`), sent with sendfile from the bundle file; `tags/list` and
`_catalog` in lexical order with `n`/`last` and a `Link` to the next page; the referrers API
(`artifactType` filter); every write is 405 UNSUPPORTED (a read-only registry's answer).
"""

from __future__ import annotations

import asyncio
import json
import re

from aiohttp import web

from mirror import mediatypes as mt
from mirror.serve.catalog import Catalog, Repository

# distribution's grammar (REFERENCE.md 6): repository path components, tag, digest
_NAME = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+"
_ROUTES = [
    ("manifest", re.compile(rf"^/v2/(?P<name>{_NAME})/manifests/(?P<ref>{_TAG}|{_DIGEST})$")),
    ("upload", re.compile(rf"^/v2/(?P<name>{_NAME})/blobs/uploads(?:/.*)?$")),
    ("blob", re.compile(rf"^/v2/(?P<name>{_NAME})/blobs/(?P<ref>{_DIGEST})$")),
    ("tags", re.compile(rf"^/v2/(?P<name>{_NAME})/tags/list$")),
    ("referrers", re.compile(rf"^/v2/(?P<name>{_NAME})/referrers/(?P<ref>{_DIGEST})$")),
]
READ = ("GET", "HEAD")
API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
SENT = web.RequestKey("sent", int)  # a blob's bytes sent, for the request log
CUT = web.RequestKey("cut", bool)  # the client went away before the body was sent
CATALOG = web.AppKey("catalog", Catalog)
_OCI_TYPES = frozenset({mt.OCI_MANIFEST, mt.OCI_INDEX})  # served only to who accepts them


def error(status: int, code: str, message: str, detail: object = None) -> web.Response:
    body = {"errors": [{"code": code, "message": message, "detail": detail}]}
    return web.json_response(body, status=status)


def _not_found() -> web.Response:
    return web.Response(status=404, text="404 page not found\n")  # distribution's words


def _paged(request: web.Request, items: list[str], path: str
           ) -> tuple[list[str], dict[str, str]] | web.Response:
    """`n` and `last` as distribution reads them: items after `last`, at most `n`, and a Link
    to the next page when there are more."""
    last = request.query.get("last")
    if last is not None:
        items = [i for i in items if i > last]
    n_text = request.query.get("n")
    if n_text is None:
        return items, {}
    try:
        n = int(n_text)
        if n < 0:
            raise ValueError
    except ValueError:
        return error(400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested",
                     {"n": n_text})
    if len(items) <= n:
        return items, {}
    page = items[:n]
    if not page:
        return page, {}
    return page, {"Link": f'<{path}?last={page[-1]}&n={n}>; rel="next"'}


def _accepts(request: web.Request) -> set[str]:
    out = set()
    for value in request.headers.getall("Accept", []):
        for part in value.split(","):
            out.add(part.split(";", 1)[0].strip().lower())
    return out


async def ping(request: web.Request) -> web.StreamResponse:
    return web.json_response({})


async def catalog_list(request: web.Request) -> web.StreamResponse:
    names = sorted(request.app[CATALOG].repositories)
    paged = _paged(request, names, "/v2/_catalog")
    if isinstance(paged, web.Response):
        return paged
    page, headers = paged
    return web.json_response({"repositories": page}, headers=headers)


def _manifest(request: web.Request, repo: Repository, ref: str) -> web.StreamResponse:
    by_tag = ":" not in ref
    digest = repo.tags.get(ref) if by_tag else ref
    m = repo.manifests.get(digest) if digest else None
    if m is None:
        return error(404, "MANIFEST_UNKNOWN", "manifest unknown", {"Tag" if by_tag else
                     "Digest": ref})
    accept = _accepts(request)
    if m.media_type in _OCI_TYPES and m.media_type not in accept:
        kind = "index" if m.is_index else "manifest"
        return error(404, "MANIFEST_UNKNOWN", f"OCI {kind} found, but accept header does not "
                     f"support OCI {kind}s")
    if by_tag and m.media_type == mt.DOCKER_LIST and mt.DOCKER_LIST not in accept:
        # an old client: distribution answers with the linux/amd64 image of the list
        child = next((c for c in m.children if c.platform is not None and
                      (c.platform.os, c.platform.architecture) == ("linux", "amd64")), None)
        image = repo.manifests.get(child.digest) if child else None
        if image is None:
            return error(404, "MANIFEST_UNKNOWN", "manifest unknown", {"Tag": ref})
        m = image
        if m.media_type == mt.DOCKER_MANIFEST and mt.DOCKER_MANIFEST not in accept:
            return error(400, "MANIFEST_INVALID", "Schema 2 manifest not supported by client")
    headers = {"Docker-Content-Digest": m.digest, "Etag": f'"{m.digest}"'}
    return _body(request, m.data, m.media_type, headers)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(first, last) of one `bytes=` range; None: serve it whole (no Range, another unit,
    several ranges); "unsatisfiable": 416."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    if not dash:
        return "unsatisfiable"
    try:
        if not first_s:  # the last N bytes
            n = int(last_s)
            if n <= 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - n), size - 1
        first = int(first_s)
        last = int(last_s) if last_s else size - 1
    except ValueError:
        return "unsatisfiable"
    if first < 0 or first >= size or last < first:
        return "unsatisfiable"
    return first, min(last, size - 1)


async def _blob(request: web.Request, repo: Repository, digest: str) -> web.StreamResponse:
    member = request.app[CATALOG].blob(digest) if digest in repo.blobs else None
    if member is None:
        why = request.app[CATALOG].left_out(digest)
        return error(404, "BLOB_UNKNOWN", "blob unknown to registry" + (f": {why}" if why else ""),
                     {"Digest": digest})
    size = member.size
    headers = {"Docker-Content-Digest": digest, "Etag": f'"{digest}"',
               "Accept-Ranges": "bytes", "Cache-Control": "max-age=31536000"}
    wanted = _byte_range(request.headers.get("Range"), size)
    if wanted == "unsatisfiable":
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    status, first, count = 200, 0, size
    if isinstance(wanted, tuple):
        first, last = wanted
        status, count = 206, last - first + 1
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_type = "application/octet-stream"
    resp.content_length = count
    if request.method == "HEAD" or count == 0:
        await resp.prepare(request)
        await resp.write_eof()
        return resp
    with request.app[CATALOG].bundle.open_member(member) as f:
        await resp.prepare(request)  # the headers go out now; then the bytes, from the file
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("the client went away")
        try:  # sendfile(2) for plain TCP; asyncio reads and writes in chunks under TLS
            await asyncio.get_running_loop().sendfile(transport, f, f.tell() + first, count)
        except ConnectionError:  # the client went away: no one to answer; the log says so
            request[CUT] = True
            return resp
        request[SENT] = count
    await resp.write_eof()
    return resp


def _referrers(request: web.Request, repo: Repository, digest: str) -> web.StreamResponse:
    wanted = request.query.get("artifactType")
    manifests = []
    for m in repo.referrers.get(digest, []):
        cfg = m.config
        artifact = m.declared_artifact_type or (cfg.media_type if cfg else None)
        if wanted is not None and artifact != wanted:
            continue
        d: dict[str, object] = {"mediaType": m.media_type, "digest": m.digest, "size": m.size}
        if artifact:
            d["artifactType"] = artifact
        if m.parsed.get("annotations"):
            d["annotations"] = m.parsed["annotations"]
        manifests.append(d)
    body = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                       "manifests": manifests}).encode()
    headers = {"OCI-Filters-Applied": "artifactType"} if wanted is not None else {}
    return _body(request, body, mt.OCI_INDEX, headers)


def _body(request: web.Request, body: bytes, content_type: str, headers: dict[str, str]
          ) -> web.Response:
    """A small answer; a HEAD gets its headers (Content-Length too) and no body (aiohttp)."""
    return web.Response(body=body, content_type=content_type, headers=headers)


async def dispatch(request: web.Request) -> web.StreamResponse:
    path = request.path
    if path in ("/v2", "/v2/"):
        return await ping(request) if request.method in READ else _unsupported()
    if path == "/v2/_catalog":
        return await catalog_list(request) if request.method in READ else _unsupported()
    for kind, rx in _ROUTES:
        match = rx.match(path)
        if match is None:
            continue
        if kind == "upload" or request.method not in READ:
            return _unsupported()
        name, ref = match["name"], match.groupdict().get("ref")
        repo = request.app[CATALOG].repositories.get(name)
        if repo is None:
            return error(404, "NAME_UNKNOWN", "repository name not known to registry",
                         {"name": name})
        if kind == "manifest":
            return _manifest(request, repo, ref or "")
        if kind == "blob":
            return await _blob(request, repo, ref or "")
        if kind == "referrers":
            return _referrers(request, repo, ref or "")
        names = sorted(repo.tags)
        paged = _paged(request, names, f"/v2/{name}/tags/list")
        if isinstance(paged, web.Response):
            return paged
        page, headers = paged
        return web.json_response({"name": name, "tags": page}, headers=headers)
    return _not_found()


def _unsupported() -> web.Response:
    return error(405, "UNSUPPORTED", "The operation is unsupported: mirror serve is read-only",
                 None)


async def _api_version(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[API_VERSION[0]] = API_VERSION[1]


def make_app(catalog: Catalog) -> web.Application:
    app = web.Application()
    app[CATALOG] = catalog
    app.on_response_prepare.append(_api_version)
    app.router.add_route("*", r"/{tail:[\s\S]*}", dispatch)  # any path, newlines too
    return app
