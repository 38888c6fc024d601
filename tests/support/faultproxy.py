"""A fault-injecting HTTP reverse proxy (aiohttp.web in a background thread) for tests.

    p = FaultProxy(registry.url).start()
    p.add(Fault("status", method="GET", path=r"/blobs/sha256:", status=429,
                headers={"Retry-After": "1"}))
    p.add(Fault("flip_byte", path=r"/blobs/", offset=100))
    ... point the client at p.url / p.host ...
    p.requests, p.bytes_served, p.bytes_by_path; p.stop()

Requests pass through unchanged (method, path, query, headers less hop-by-hop ones, streamed
bodies both ways, no decompression); `Location` headers naming the upstream are rewritten to
the proxy. Each request is handled by the first active fault that matches it, if any:

    status        answer `status` + `headers` + a JSON `errors` body; upstream never sees it
                  (after `delay` seconds when given, the request's body unread meanwhile: a
                  registry that answers an upload while the client is still sending)
    reset         abort the connection (TCP RST) without an answer; upstream never sees the
                  request (a HEAD, which has no body to cut, meeting a reset connection)
    reset_after   forward, abort the connection (TCP RST) after `offset` body bytes
    truncate      forward with the full Content-Length, send `offset` bytes, then close
    short         forward the first `offset` bytes as the whole answer, with a Content-Length
                  that says so (a proxy or CDN that cut the body and fixed up the length)
    flip_byte     forward with the byte at `offset` XOR 0xFF
    insert        forward with `body` inserted before the byte at `offset` (Content-Length
                  grown to match, every other header upstream's: a manifest altered on the
                  way, still JSON, its Docker-Content-Digest the registry's); `headers`, when
                  given, set over upstream's, those given as "" left out (a registry that
                  sends no Docker-Content-Digest)
    slow          forward, sleeping `delay` seconds between chunks of `chunk` bytes
    ignore_range  drop the request's Range header, so upstream answers 200 with everything
    ignore_conditional  drop the request's If-None-Match header (a registry that has no ETag,
                  or ignores it): upstream answers 200 where it would have said 304;
                  `headers` as insert's (a registry that sends no Docker-Content-Digest)
    stall         hold the request `delay` seconds before forwarding it (a registry that hangs
                  mid-upload: a test can signal the client while it waits)
    late          forward, and once upstream has answered (and done what was asked: a blob
                  upload committed) hold its answer `delay` seconds before sending it (an
                  answer lost on its way back: a test can signal the client while it waits)
    headers       forward, adding `headers` to the answer (a registry's RateLimit headers)
    paginate      a list (tags/list, _catalog) in pages of `offset` names (or the request's
                  `n`) after its `last`, with `Link: <...?n=&last=>; rel="next"` while more
                  remain, as distribution 3 and Docker Hub page it (distribution 2.8 ignores
                  `n` on tags/list); the names are upstream's, asked for whole

The proxy itself speaks plain HTTP; pass `cafile=` to reach a TLS upstream.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yarl
from aiohttp import web

KINDS = ("status", "reset", "reset_after", "truncate", "short", "flip_byte", "insert", "slow",
         "ignore_range",
         "ignore_conditional", "stall", "late", "headers", "paginate")
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
    )
)
ERROR_CODES = {401: "UNAUTHORIZED", 403: "DENIED", 404: "NAME_UNKNOWN", 429: "TOOMANYREQUESTS"}
CHUNK = 64 * 1024


@dataclass
class Fault:
    """One injected fault; see the module docstring for what each `kind` does.

    `path` is a regex searched in the request's path plus query; `method` None matches any.
    `skip` lets that many matching requests through untouched first; `times` is how many
    requests the fault then applies to (None: forever). `hits` counts applications.
    """

    kind: str
    method: str | None = None
    path: str = ""
    times: int | None = 1
    skip: int = 0
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    code: str | None = None
    offset: int = 0
    delay: float = 0.05
    chunk: int = 1024
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {KINDS}")
        self._regex = re.compile(self.path)

    @property
    def active(self) -> bool:
        return self.times is None or self.hits < self.times

    def matches(self, method: str, path_qs: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return bool(self._regex.search(path_qs))

    def error_body(self) -> bytes:
        if self.body is not None:
            return self.body
        code = self.code or ERROR_CODES.get(self.status, "UNKNOWN")
        msg = f"injected by faultproxy (HTTP {self.status})"
        return json.dumps({"errors": [{"code": code, "message": msg, "detail": None}]}).encode()


class FaultProxy:
    def __init__(self, upstream_url: str, cafile: str | None = None) -> None:
        self.upstream = upstream_url.rstrip("/")
        self.cafile = cafile
        self.host = ""
        self.url = ""
        self.requests: list[tuple[str, str, int]] = []
        self.bytes_served = 0
        self.bytes_by_path: dict[str, int] = {}
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- control, from the test thread -----------------------------------------------------
    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_counters(self) -> None:
        with self._lock:
            self.requests = []
            self.bytes_served = 0
            self.bytes_by_path = {}

    def paths(self, method: str | None = None) -> list[str]:
        """Paths requested so far (optionally only those with `method`)."""
        with self._lock:
            return [p for m, p, _ in self.requests if method is None or m == method]

    def start(self) -> FaultProxy:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._astart(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the proxy thread ------------------------------------------------------------------
    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for t in tasks:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    async def _astart(self) -> None:
        ctx = ssl.create_default_context(cafile=self.cafile) if self.cafile else None
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120),
            connector=aiohttp.TCPConnector(ssl=ctx) if ctx else None,
        )
        app = web.Application(client_max_size=1024**4)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, shutdown_timeout=1)
        await site.start()
        port = self._runner.addresses[0][1]
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"

    async def _astop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _pick(self, method: str, path_qs: str) -> Fault | None:
        with self._lock:
            for f in self._faults:
                if f.active and f.matches(method, path_qs):
                    if f.skip > 0:
                        f.skip -= 1
                        continue
                    f.hits += 1
                    return f
        return None

    def _record(self, method: str, path: str, status: int, nbytes: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))
            self._count(path, nbytes)

    def _count(self, path: str, nbytes: int) -> None:
        self.bytes_served += nbytes
        self.bytes_by_path[path] = self.bytes_by_path.get(path, 0) + nbytes

    def _add_bytes(self, path: str, nbytes: int) -> None:
        with self._lock:
            self._count(path, nbytes)

    def _rewrite_location(self, value: str) -> str:
        if value.startswith(self.upstream):
            return self.url + value[len(self.upstream) :]
        return value

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        fault = self._pick(method, request.raw_path)
        if fault is not None and fault.kind == "status":
            if fault.delay:
                await asyncio.sleep(fault.delay)
            body = fault.error_body()
            self._record(method, path, fault.status, 0 if method == "HEAD" else len(body))
            headers = {"Content-Type": "application/json", **fault.headers}
            return web.Response(status=fault.status, body=body, headers=headers)

        if fault is not None and fault.kind == "paginate":
            return await self._page(request, fault)
        if fault is not None and fault.kind == "reset":
            self._record(method, path, 0, 0)
            await self._cut(request, reset=True)
            return web.Response(status=500)  # never sent: the connection is gone
        if fault is not None and fault.kind == "stall":
            await asyncio.sleep(fault.delay)
        drop = HOP_BY_HOP | {"range"} if fault and fault.kind == "ignore_range" else \
            HOP_BY_HOP | {"if-none-match"} if fault and fault.kind == "ignore_conditional" \
            else HOP_BY_HOP
        fwd = [(k, v) for k, v in request.headers.items() if k.lower() not in drop]
        data: Any = request.content.iter_chunked(CHUNK) if request.body_exists else None
        url = yarl.URL(self.upstream + request.raw_path, encoded=True)
        assert self._session is not None
        async with self._session.request(
            method, url, headers=fwd, data=data, allow_redirects=False
        ) as up:
            resp = self._answer(up, fault)
            self._record(method, path, up.status, 0)
            if fault is not None and fault.kind == "late":
                await asyncio.sleep(fault.delay)
            await resp.prepare(request)
            try:
                await self._stream(request, resp, up, path, fault)
            except ConnectionError:
                pass  # the client went away; nothing left to do
        return resp

    def _answer(self, up: aiohttp.ClientResponse, fault: Fault | None) -> web.StreamResponse:
        """The answer to send for upstream's `up`: its status and headers, as `fault` has
        them."""
        resp = web.StreamResponse(status=up.status, reason=up.reason)
        for k, v in up.headers.items():
            if k.lower() in HOP_BY_HOP:
                continue
            resp.headers.add(k, self._rewrite_location(v) if k.lower() == "location" else v)
        if fault is not None and fault.kind == "headers":
            resp.headers.update(fault.headers)
        if fault is not None and fault.kind == "short" and up.content_length is not None:
            resp.content_length = min(fault.offset, up.content_length)
        if fault is not None and fault.kind == "insert" and up.content_length is not None:
            resp.content_length = up.content_length + len(fault.body or b"")
        if fault is not None and fault.kind in ("insert", "ignore_conditional"):
            for k, v in fault.headers.items():
                resp.headers.popall(k, None)
                if v:
                    resp.headers[k] = v
        return resp

    async def _stream(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        up: aiohttp.ClientResponse,
        path: str,
        fault: Fault | None,
    ) -> None:
        kind = fault.kind if fault is not None else None
        offset = fault.offset if fault is not None else 0
        cut = kind in ("reset_after", "truncate")
        size = fault.chunk if fault is not None and kind == "slow" else CHUNK
        sent = 0
        async for chunk in up.content.iter_chunked(size):
            if kind == "short" and sent + len(chunk) >= offset:
                await self._write(resp, chunk[: offset - sent], path)
                return  # the answer ends there, as its Content-Length says
            if cut and sent + len(chunk) >= offset:
                await self._write(resp, chunk[: offset - sent], path)
                await self._cut(request, reset=kind == "reset_after")
                return
            if kind == "flip_byte" and sent <= offset < sent + len(chunk):
                buf = bytearray(chunk)
                buf[offset - sent] ^= 0xFF
                chunk = bytes(buf)
            if kind == "insert" and sent <= offset < sent + len(chunk):
                at = offset - sent
                sent -= len(fault.body or b"")  # `offset` counts upstream's bytes
                chunk = chunk[:at] + (fault.body or b"") + chunk[at:]
            if fault is not None and kind == "slow" and sent > 0:
                await asyncio.sleep(fault.delay)
            await self._write(resp, chunk, path)
            sent += len(chunk)
        if cut and request.method != "HEAD":
            # body shorter than the offset: still cut, so the fault is observable
            await self._cut(request, reset=kind == "reset_after")

    async def _write(self, resp: web.StreamResponse, chunk: bytes, path: str) -> None:
        if chunk:
            # counted before the write: the client may have read the last byte (and a test
            # looked at the count) before this coroutine runs again
            self._add_bytes(path, len(chunk))
            await resp.write(chunk)

    async def _page(self, request: web.Request, fault: Fault) -> web.Response:
        """One page of upstream's whole list (the `paginate` fault)."""
        fwd = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        assert self._session is not None
        async with self._session.get(self.upstream + request.path, headers=fwd) as up:
            body = await up.read()
            if up.status != 200:
                self._record(request.method, request.path, up.status, len(body))
                return web.Response(status=up.status, body=body,
                                    content_type=up.content_type)
        doc = json.loads(body)
        key = "tags" if "tags" in doc else "repositories"
        names = sorted(doc.get(key) or [])
        n = int(request.query.get("n") or fault.offset)
        last = request.query.get("last")
        start = names.index(last) + 1 if last in names else 0
        page = names[start:start + n]
        headers = {}
        if start + n < len(names):
            q = yarl.URL(request.path).with_query(n=str(n), last=page[-1])
            headers["Link"] = f'<{q}>; rel="next"'
        out = json.dumps({**doc, key: page}).encode()
        self._record(request.method, request.path, 200, len(out))
        return web.Response(status=200, body=out, headers=headers,
                            content_type="application/json")

    @staticmethod
    async def _cut(request: web.Request, reset: bool) -> None:
        """Close the client connection once what was written has left the buffer."""
        transport = request.transport
        if transport is None:
            return
        for _ in range(1000):  # bounded wait for the kernel to take the bytes
            if transport.is_closing() or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.005)
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # linger 0 turns close() into an RST: the client sees a connection reset
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
