"""Network policy in one place: TLS and scheme per registry, retries, the per-host gate, auth.

One aiohttp session per run with connect and read-inactivity timeouts but no total timeout
(a multi-GB layer must not be cut), no transparent decompression (REFERENCE.md 9), no
`trust_env` (it would send ~/.netrc credentials). Every request goes through `request()`:
  - 401 with a challenge: authenticate (mirror.registry.auth) and try once more;
  - 408, 429, 5xx, connection errors and timeouts: retried with exponential back-off and jitter,
    bounded in count; 429 and 503 honour Retry-After by pausing the whole registry (HostGate);
  - any other status outside `ok`: a typed error naming registry, repository, what was asked,
    the HTTP status and the registry's own error code and message.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from mirror.errors import AuthError, NotFound, RateLimited, RegistryError
from mirror.reference import api_host, is_loopback
from mirror.registry.auth import Authenticator
from mirror.registry.credentials import CredentialStore

MAX_ERROR_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """Per-registry connection settings (images.yaml `registries:` and command-line flags)."""

    insecure: bool = False  # plain HTTP, or TLS without verification
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    tries: int = 5
    base_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 20.0
    max_retry_after: float = 300.0  # a registry asking for a longer pause fails as RateLimited
    statuses: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})

    def delay(self, attempt: int) -> float:
        d = min(self.max_delay, self.base_delay * self.factor ** max(0, attempt - 1))
        return d * (0.5 + random.random() / 2)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 30.0
    read: float = 120.0  # seconds without a byte before a transfer is considered dead


def parse_retry_after(value: str | None) -> float | None:
    """Seconds, or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HostGate:
    """Shared by every task talking to one registry: a Retry-After pauses all of them."""

    def __init__(self) -> None:
        self.paused_until = 0.0

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    async def wait(self) -> None:
        while (delay := self.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)


@dataclass
class Endpoint:
    registry: str
    base_url: str
    ssl: ssl.SSLContext | bool
    auth: Authenticator
    gate: HostGate = field(default_factory=HostGate)


def _error_codes(body: bytes) -> tuple[tuple[str, ...], str]:
    try:
        doc = json.loads(body)
        errs = doc.get("errors") or []
        codes = tuple(str(e.get("code", "")) for e in errs if isinstance(e, dict))
        msgs = "; ".join(str(e.get("message", "")) for e in errs if isinstance(e, dict))
        return codes, msgs
    except (ValueError, AttributeError):
        text = body.decode("utf-8", "replace").strip().splitlines()
        return (), (text[0][:200] if text else "")


def describe_exception(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect: {e.os_error.strerror or e.os_error}"
    return str(e) or type(e).__name__


class Transport:
    """Owns the session and one Endpoint per registry. Use as an async context manager."""

    def __init__(
        self,
        *,
        settings: dict[str, RegistrySettings] | None = None,
        credentials: CredentialStore | None = None,
        policy: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        jobs: int = 4,
    ) -> None:
        self.settings = settings or {}
        self.credentials = credentials or CredentialStore()
        self.policy = policy or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self.jobs = jobs
        self._endpoints: dict[str, Endpoint] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None
        self.retries = 0  # counted for the report

    async def __aenter__(self) -> Transport:
        connector = aiohttp.TCPConnector(limit=max(16, self.jobs * 4),
                                         limit_per_host=max(8, self.jobs * 2))
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.timeouts.connect, sock_read=self.timeouts.read),
            auto_decompress=False,
            trust_env=False,
            read_bufsize=1 << 20,
            max_field_size=65536,
            max_line_size=65536,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Transport used outside `async with`"
        return self._session

    def _settings(self, registry: str) -> RegistrySettings:
        return self.settings.get(registry) or RegistrySettings()

    def _ssl(self, registry: str) -> ssl.SSLContext | bool:
        s = self._settings(registry)
        if s.insecure and not s.ca_file:
            return False
        ctx = ssl.create_default_context(cafile=s.ca_file) if s.ca_file else \
            ssl.create_default_context()
        if s.client_cert:
            ctx.load_cert_chain(s.client_cert, s.client_key)
        return ctx

    async def endpoint(self, registry: str) -> Endpoint:
        """Find the scheme (and the auth challenge) with one ping of /v2/, once per registry."""
        if registry in self._endpoints:
            return self._endpoints[registry]
        lock = self._locks.setdefault(registry, asyncio.Lock())
        async with lock:
            if registry not in self._endpoints:
                self._endpoints[registry] = await self._ping(registry)
        return self._endpoints[registry]

    async def _ping(self, registry: str) -> Endpoint:
        host = api_host(registry)
        ssl_ctx = self._ssl(registry)
        plain_ok = self._settings(registry).insecure or is_loopback(registry)
        auth = Authenticator(registry, self.credentials.get(registry), self)
        last: BaseException | None = None
        for scheme in ("https", "http") if plain_ok else ("https",):
            base = f"{scheme}://{host}"
            for attempt in range(1, self.policy.tries + 1):
                try:
                    async with self.session.get(f"{base}/v2/", ssl=ssl_ctx,
                                                allow_redirects=False) as resp:
                        await resp.read()
                        if resp.status in self.policy.statuses and attempt < self.policy.tries:
                            await asyncio.sleep(self.policy.delay(attempt))
                            continue
                        auth.observe(resp.headers.getall("WWW-Authenticate", []))
                        return Endpoint(registry, base, ssl_ctx, auth)
                except aiohttp.ClientConnectorCertificateError as e:
                    raise RegistryError(
                        f"{registry}: TLS certificate verification failed: {e.certificate_error}",
                        registry=registry,
                        hint=f"give the registry's CA with --ca-file or `registries: {registry}: "
                        "ca_file:`; use `insecure: true` only on a trusted network",
                    ) from None
                except (aiohttp.ClientSSLError, aiohttp.ServerDisconnectedError) as e:
                    last = e
                    break  # not TLS on the other end: try plain HTTP if allowed
                except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                    last = e
                    if isinstance(e, aiohttp.ClientConnectorError) and scheme == "https" \
                            and plain_ok:
                        break
                    if attempt < self.policy.tries:
                        await asyncio.sleep(self.policy.delay(attempt))
        raise RegistryError(
            f"{registry}: registry unreachable: {describe_exception(last) if last else 'no answer'}",
            registry=registry,
            hint=None if plain_ok else "if it serves plain HTTP, set `insecure: true` for it",
        )

    async def request(
        self,
        registry: str,
        method: str,
        url: str,
        *,
        repository: str,
        actions: str = "pull",
        extra_scopes: Iterable[str] = (),
        headers: dict[str, str] | None = None,
        data: Callable[[], Any] | bytes | None = None,
        ok: Iterable[int] = (200,),
        what: str = "",
        allow_redirects: bool = True,
        retry: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send with auth, retries and the host gate; return the response (caller releases it).

        Raises AuthError, NotFound, RateLimited or RegistryError; `data` may be a callable that
        returns a fresh body for each try (bodies must be replayable to be retried).
        """
        ep = await self.endpoint(registry)
        ok = frozenset(ok)
        full = url if url.startswith(("http://", "https://")) else ep.base_url + url
        scopes = (f"repository:{repository}:{actions}", *extra_scopes) if repository else ()
        attempt = 0
        reauthed = False
        while True:
            await ep.gate.wait()
            hdrs = dict(headers or {})
            hdrs.update(await ep.auth.header(scopes))
            body = data() if callable(data) else data
            try:
                resp = await self.session.request(
                    method, full, headers=hdrs, data=body, ssl=ep.ssl,
                    allow_redirects=allow_redirects)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                attempt += 1
                if not retry or attempt >= self.policy.tries:
                    raise RegistryError(
                        f"{registry}/{repository}: {what}: {describe_exception(e)}",
                        registry=registry, repository=repository) from e
                self.retries += 1
                await asyncio.sleep(self.policy.delay(attempt))
                continue
            if resp.status in ok:
                return resp
            if resp.status == 401 and not reauthed:
                challenges = resp.headers.getall("WWW-Authenticate", [])
                await resp.read()
                resp.release()
                reauthed = True
                await ep.auth.challenge(challenges, scopes)
                continue
            err_body = await resp.content.read(MAX_ERROR_BODY)
            resp.release()
            if retry and resp.status in self.policy.statuses:
                attempt += 1
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                if attempt < self.policy.tries and (
                        retry_after is None or retry_after <= self.policy.max_retry_after):
                    self.retries += 1
                    if retry_after is not None and resp.status in (429, 503):
                        ep.gate.pause(retry_after)
                    else:
                        await asyncio.sleep(self.policy.delay(attempt))
                    continue
            raise self.error_for(resp, err_body, registry, repository, what)

    def error_for(self, resp: aiohttp.ClientResponse, body: bytes, registry: str,
                  repository: str, what: str) -> RegistryError:
        codes, message = _error_codes(body)
        status = resp.status
        detail = f"HTTP {status}"
        if codes:
            detail += " " + ",".join(codes)
        if message:
            detail += f": {message}"
        where = f"{registry}/{repository}" if repository else registry
        text = f"{where}: {what}: {detail}" if what else f"{where}: {detail}"
        kw = dict(registry=registry, repository=repository, status=status, codes=codes)
        if status == 401:
            cred = self.credentials.get(registry)
            hint = (f"the credentials from {cred.source} were rejected" if cred else
                    f"no credentials found for {registry}: run `docker login {registry}` or "
                    "add it under `registries:` in images.yaml")
            return AuthError(text, hint=hint, **kw)
        if status == 403:
            return AuthError(text, hint="the account has no access to this repository", **kw)
        if status == 404:
            return NotFound(text, **kw)
        if status == 429:
            ra = resp.headers.get("Retry-After")
            return RateLimited(text, hint=f"the registry asked to retry after {ra}" if ra else
                               "authenticate to get a higher quota, or run later", **kw)
        return RegistryError(text, **kw)
