"""Run the API: listen (plain HTTP or TLS), one log line per request, stop on Ctrl-C/SIGTERM.

Stopping closes the listening socket at once and gives requests in flight two seconds to
finish; mirror.signals turns the signal into the exit code (130, 143) after that cleanup.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from mirror.errors import MirrorError, UsageError
from mirror.serve import DEFAULT_LISTEN
from mirror.serve.api import CUT, SENT, make_app
from mirror.serve.catalog import Catalog


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        """ADDR:PORT, [IPV6]:PORT or :PORT (every address); port 0 takes a free one."""
        host, sep, port = text.strip().rpartition(":")
        host = host.strip("[]") if host.startswith("[") else host
        try:
            number = int(port)
            if not sep or not 0 <= number <= 65535 or (host and ":" in host and
                                                       not text.startswith("[")):
                raise ValueError
        except ValueError:
            raise UsageError(f"invalid --listen {text!r}: expected ADDR:PORT (e.g. "
                             f"{DEFAULT_LISTEN}, 127.0.0.1:5000, [::]:5000, :5000)") from None
        return cls(host or "0.0.0.0", number)


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UsageError("--tls-cert and --tls-key go together: give both (or neither for "
                         "plain HTTP)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except OSError as e:
        raise UsageError(f"{e.filename or cert}: cannot read: {e.strerror}") from None
    except ssl.SSLError as e:
        raise UsageError(f"--tls-cert {cert} / --tls-key {key}: not a certificate and its "
                         f"key (PEM): {e.reason or e}") from None
    return ctx


class _Lines(logging.Handler):
    """The request log's lines, to the run's progress (a timestamped line each)."""

    def __init__(self, line: Callable[[str], None]) -> None:
        super().__init__()
        self.line = line

    def emit(self, record: logging.LogRecord) -> None:
        self.line(record.getMessage())


class _RequestLog(AbstractAccessLogger):
    """One line per request: client, method, path (no query: it may carry what a client
    thought was private), status, body bytes sent, milliseconds. No header is logged."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # a request aiohttp answered itself (400: not HTTP, as a TLS hello to a plain port,
        # which skopeo tries first) never reached the application: no request.app here
        peer = request.remote or "-"
        sent = request.get(SENT)
        if sent is None:  # an answer with a body of its own (not a blob's): its bytes
            body = getattr(response, "body", None)
            sent = len(body) if isinstance(body, bytes) and request.method != "HEAD" else 0
        shown = "cut short (the client went away)" if request.get(CUT) else f"{sent} B"
        # the path as sent, %-encoded: a %0a in it cannot start a line of its own
        self.logger.info(f"{peer} {request.method} {request.rel_url.raw_path} "
                         f"{response.status} {shown} {time * 1000:.1f} ms")

    @property
    def enabled(self) -> bool:
        return True


async def serve(catalog: Catalog, listen: Listen, tls: ssl.SSLContext | None,
                log: Callable[[str], None], ready: Callable[[str], None]) -> None:
    """Serve until cancelled; `ready` is given the URL once the socket listens."""
    requests = logging.getLogger("mirror.serve.requests")
    requests.setLevel(logging.INFO)
    requests.propagate = False
    requests.handlers[:] = [_Lines(log)]
    runner = web.AppRunner(make_app(catalog), access_log_class=_RequestLog,
                           access_log=requests, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, listen.host, listen.port, ssl_context=tls)
        try:
            await site.start()
        except OSError as e:
            raise MirrorError(f"cannot listen on {listen.host}:{listen.port}: "
                              f"{e.strerror or e}") from None
        host, port = (runner.addresses or [(listen.host, listen.port)])[0][:2]
        shown = f"[{host}]" if ":" in host else host
        ready(f"{'https' if tls else 'http'}://{shown}:{port}")
        await asyncio.Event().wait()  # until Ctrl-C or SIGTERM cancels the run
    finally:
        await runner.cleanup()
