"""Network policy in one place: TLS and scheme per registry, retries, the per-host gate, auth.

One aiohttp session per run with connect and read-inactivity timeouts but no total timeout
(a multi-GB layer must not be cut), no transparent decompression (REFERENCE.md 9), no
`trust_env` (it would send ~/.netrc credentials). Every request goes through `request()`:
  - 401 with a challenge: authenticate (mirror.registry.auth) and try once more;
  - 408, 429, 5xx, connection errors and timeouts: retried with exponential back-off and jitter,
    bounded in count; 429 and 503 honour Retry-After by pausing the whole registry (HostGate);
  - any other status outside `ok`: a typed error (mirror.registry.answers) naming registry,
    repository, what was asked, the HTTP status and the registry's own error code and message.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yarl

from mirror.errors import (
    AuthError,
    ConfigError,
    MirrorError,
    RegistryError,
)
from mirror.reference import DOCKER_HUB, api_host, is_loopback
from mirror.registry.answers import error_codes, error_for
from mirror.registry.answers import where as _where
from mirror.registry.auth import Authenticator
from mirror.registry.body import read_body
from mirror.registry.credentials import CredentialStore
from mirror.registry.policy import (
    RETRY_COUNTER,
    HostGate,
    RegistrySettings,
    RetryPolicy,
    Timeouts,
    parse_retry_after,
)

MAX_ERROR_BODY = 64 * 1024
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH
NAME_MISMATCH = (62, 64)
LONG_WAIT = 10.0  # a Retry-After pause this long is announced even without -v


def _quiet(text: str) -> None:
    pass


def loggable(url: str) -> str:
    """SCHEME://HOST/PATH of a URL for -v and errors: the scheme (https, or plain http for a
    local or insecure registry) but never the query (presigned URLs carry signatures there)."""
    u = yarl.URL(url)
    host = u.host or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{u.explicit_port}" if u.explicit_port else ""
    return f"{u.scheme}://{host}{port}{u.raw_path}" + ("?..." if u.raw_query_string else "")


@dataclass
class Endpoint:
    registry: str
    base_url: str
    ssl: ssl.SSLContext | bool
    auth: Authenticator
    gate: HostGate = field(default_factory=HostGate)


def _origin(url: str) -> tuple[str, str, int | None]:
    u = yarl.URL(url)
    return (u.scheme, (u.host or "").lower(), u.port)


def describe_exception(e: BaseException) -> str:
    """One line for a network failure; never includes headers (they may hold credentials)."""
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        if isinstance(e, getattr(aiohttp, "SocketTimeoutError", ())):
            return "timed out (no data within the read timeout)"
        if isinstance(e, getattr(aiohttp, "ConnectionTimeoutError", ())):
            return "timed out (not connected within the connect timeout)"
        return "timed out"
    if isinstance(e, aiohttp.ClientConnectorError):
        return f"cannot connect: {e.os_error.strerror or e.os_error}"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    if isinstance(e, aiohttp.ClientPayloadError):
        return f"connection broken mid-body: {str(e).splitlines()[0] if str(e) else 'payload'}"
    if isinstance(e, aiohttp.ClientResponseError):
        # what the parser choked on: its reason and the bytes it quotes (the other end's
        # words, never our headers)
        lines = [ln.strip() for ln in str(e.message).splitlines() if ln.strip()]
        quoted = next((ln for ln in lines[1:] if ln.startswith(("b'", 'b"'))), "")
        why = " ".join(x for x in (lines[0].rstrip(":") if lines else "", quoted[:80]) if x)
        return f"not a valid HTTP answer ({why or 'unparsable'})"
    return (str(e).splitlines() or [""])[0] or type(e).__name__


def _mirror_cause(e: BaseException) -> MirrorError | None:
    """aiohttp wraps an exception raised by a streamed request body in a connection error."""
    seen = 0
    cur: BaseException | None = e.__cause__
    while cur is not None and seen < 5:
        if isinstance(cur, MirrorError):
            return cur
        cur, seen = cur.__cause__, seen + 1
    return None


class TransferError(Exception):
    """A transfer that broke off (a connection error or timeout, a body that ended early, an
    answer that cannot be used): worth asking again from where it got to. `why` is one line
    for -v and errors; `tries` how many were made."""

    def __init__(self, why: str, tries: int = 1) -> None:
        super().__init__(why)
        self.why = why
        self.tries = tries


def _replayable(data: object) -> bool:
    return data is None or callable(data) or isinstance(data, bytes | bytearray | str)


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
        debug: Callable[[str], None] | None = None,
        notice: Callable[[str], None] | None = None,
        config_file: str | None = "images.yaml",
    ) -> None:
        """`debug` gets one line per request, retry, wait and token fetch (-v); `notice` gets
        the long Retry-After waits (LONG_WAIT or more), so a pause never looks like a hang.
        `config_file`: the YAML file the command reads (`-f env.yaml`), so hints may point
        into it by its name (None: `mirror load` and `inspect` read none)."""
        self.config_file = config_file
        self.debug = debug or _quiet
        self.notice = notice or _quiet
        self.settings = settings or {}
        self.credentials = credentials or CredentialStore()
        self.policy = policy or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self.jobs = jobs
        self._endpoints: dict[str, Endpoint] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._refused: dict[str, RegistryError] = {}  # a ping that failed: not tried again
        self._ssl_cache: dict[str, ssl.SSLContext | bool] = {}
        self._session: aiohttp.ClientSession | None = None
        self.retries = 0  # counted for the report

    def login_hint(self, registry: str) -> str:
        """How to give credentials for `registry` (images.yaml only where the command reads
        one)."""
        if not self.config_file:
            return f"run `docker login {registry}` or pass --authfile"
        return (f"run `docker login {registry}`, pass --authfile, or add it under "
                f"`registries:` in {self.config_file}")

    def in_yaml(self, text: str) -> str:
        """`text` (an images.yaml alternative, with its separator) where there is one, naming
        the file the command reads."""
        return text.replace("images.yaml", self.config_file) if self.config_file else ""

    def log_request(self, method: str, url: str, status: int | str, t0: float) -> None:
        if self.debug is not _quiet:
            ms = (time.monotonic() - t0) * 1000
            self.debug(f"{method} {loggable(url)} -> {status} ({ms:.0f} ms)")

    def log_retry(self, method: str, url: str, why: str, attempt: int, delay: float) -> None:
        """`attempt` tries have been made; the next one starts after `delay` seconds."""
        self.debug(f"retry {method} {loggable(url)}: {why}; try {attempt + 1} of "
                   f"{self.policy.tries} in {delay:.1f} s")

    def announce_wait(self, url: str, seconds: float, status: int) -> None:
        """A registry's Retry-After: said without -v too when it is long."""
        u = yarl.URL(url)
        host = f"{u.host}:{u.explicit_port}" if u.explicit_port else str(u.host)
        line = f"{host} asks to wait {seconds:.0f} s (HTTP {status}); waiting"
        (self.notice if seconds >= LONG_WAIT else self.debug)(line)

    def count_retry(self) -> None:
        """One more retry: for the run, and for the image being worked on."""
        self.retries += 1
        counter = RETRY_COUNTER.get()
        if counter is not None:
            counter[0] += 1

    async def __aenter__(self) -> Transport:
        connector = aiohttp.TCPConnector(limit=max(16, self.jobs * 4),
                                         limit_per_host=max(8, self.jobs * 2))
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.timeouts.connect, sock_read=self.timeouts.read),
            auto_decompress=False,
            trust_env=False,
            read_bufsize=256 << 10,  # per connection; memory must not grow with jobs
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
        """Verified TLS by default; the system CAs plus `ca_file`; False only when insecure.
        True is aiohttp's own verified context (`ssl.create_default_context()`, made once
        when aiohttp is imported): a context of our own only when there is more to load."""
        if registry in self._ssl_cache:
            return self._ssl_cache[registry]
        s = self._settings(registry)
        ctx: ssl.SSLContext | bool
        if s.insecure and not s.ca_file:
            ctx = False
        elif not s.ca_file and not s.client_cert:
            ctx = True
        else:
            ctx = ssl.create_default_context()
            what = "ca_file"
            try:
                if s.ca_file:
                    ctx.load_verify_locations(cafile=s.ca_file)
                if s.client_cert:
                    what = "client certificate"
                    ctx.load_cert_chain(s.client_cert, s.client_key)
            except (OSError, ssl.SSLError) as e:
                path = s.ca_file if what == "ca_file" else s.client_cert
                raise ConfigError(
                    f"{registry}: cannot use the {what} {path}: "
                    f"{getattr(e, 'strerror', None) or e}",
                    hint="check the path given with --ca-file/--client-cert"
                    + self.in_yaml(f" or in `registries: {registry}:` of images.yaml")
                    ) from None
        self._ssl_cache[registry] = ctx
        return ctx

    def ssl_for_url(self, url: str) -> ssl.SSLContext | bool:
        """TLS settings for a host we are sent to (a token realm, object storage): that
        host's own settings when it has some, else verified TLS with the system CAs."""
        u = yarl.URL(url)
        host = u.host or ""
        if ":" in host:
            host = f"[{host}]"
        for key in (f"{host}:{u.port}", host):
            if key in self.settings or key in self._endpoints:
                return self._ssl(key)
        return self._ssl("")

    async def endpoint(self, registry: str) -> Endpoint:
        """Find the scheme (and the auth challenge) with one ping of /v2/, once per registry;
        a ping that failed fails the requests waiting for it too, without another ping."""
        if registry in self._endpoints:
            return self._endpoints[registry]
        lock = self._locks.setdefault(registry, asyncio.Lock())
        async with lock:
            if registry in self._refused:
                e = self._refused[registry]
                raise type(e)(str(e), registry=e.registry, repository=e.repository,
                              status=e.status, codes=e.codes, hint=e.hint)
            if registry not in self._endpoints:
                try:
                    self._endpoints[registry] = await self._ping(registry)
                except RegistryError as e:
                    self._refused[registry] = e
                    raise
        return self._endpoints[registry]

    async def _ping(self, registry: str) -> Endpoint:
        """GET /v2/ over HTTPS, or plain HTTP where allowed (`insecure`, loopback). Every try
        counts against the one retry budget, whichever scheme it used (`--retries 1`: two
        tries in all); a try that fails on HTTPS in a way plain HTTP may not (a timeout, a
        refused connection) is followed by one over HTTP. An answer that shows the other end
        does not speak TLS moves to HTTP at once, as no try of its own."""
        host = api_host(registry)
        ssl_ctx = self._ssl(registry)
        plain_ok = self._settings(registry).insecure or is_loopback(registry)
        # a credential helper is a subprocess: not on the event loop
        auth = Authenticator(registry, await asyncio.to_thread(self.credentials.get, registry),
                             self)
        scheme = "https"
        failed: dict[str, str] = {}  # scheme -> how its last try failed, for the error
        last: BaseException | None = None  # how the last try failed
        tls_failure: BaseException | None = None  # how HTTPS failed, before plain HTTP
        attempt = 0
        while True:
            url = f"{scheme}://{host}/v2/"
            t0 = time.monotonic()
            try:
                async with self.session.get(url, ssl=ssl_ctx, allow_redirects=False) as resp:
                    await resp.read()
                    self.log_request("GET", url, resp.status, t0)
                    attempt += 1
                    if resp.status in self.policy.statuses and attempt < self.policy.tries:
                        self.count_retry()
                        ra = parse_retry_after(resp.headers.get("Retry-After"))
                        delay = (min(ra, self.policy.max_retry_after) if ra is not None
                                 else self.policy.delay(attempt))
                        if ra is not None:
                            self.announce_wait(url, delay, resp.status)
                        self.log_retry("GET", url, f"HTTP {resp.status}", attempt, delay)
                        await asyncio.sleep(delay)
                        continue
                    if scheme == "http" and tls_failure is not None and resp.status == 400:
                        # a TLS server saying "HTTP request to an HTTPS server": the
                        # HTTPS failure above is the real story
                        raise RegistryError(
                            f"{registry}: TLS connection failed: https://{host}/v2/: "
                            f"{describe_exception(tls_failure)}", registry=registry,
                            hint="if the registry requires a client certificate, give it "
                            f"with --client-cert {registry}=CERT,KEY" + self.in_yaml(
                                " (or client_cert and client_key in images.yaml)"))
                    if resp.status in (404, 405, 410):  # a web server, not the API
                        raise RegistryError(
                            f"{registry} does not answer as a registry (GET {url}: "
                            f"HTTP {resp.status})", registry=registry, status=resp.status,
                            hint="give the host[:port] where the registry's /v2/ API is "
                            "served")
                    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
                    if (resp.status == 200 and ctype == "text/html"
                            and "Docker-Distribution-API-Version" not in resp.headers):
                        # a web page (a catch-all site): registries answer /v2/ with JSON
                        raise RegistryError(
                            f"{registry} does not answer as a registry (GET {url}: "
                            "HTTP 200 with a text/html page)", registry=registry, status=200,
                            hint="give the host[:port] where the registry's /v2/ API is "
                            "served")
                    auth.observe(resp.headers.getall("WWW-Authenticate", []))
                    return Endpoint(registry, f"{scheme}://{host}", ssl_ctx, auth)
            except aiohttp.ClientResponseError as e:
                # an answer, but not HTTP (another service on the port: SSH, SMTP, ...)
                self.log_request("GET", url, describe_exception(e), t0)
                raise RegistryError(
                    f"{registry} does not answer as a registry (GET {url}: "
                    f"{describe_exception(e)})", registry=registry,
                    hint="give the host[:port] where the registry's /v2/ API is served: "
                    "another service answers there") from None
            except aiohttp.ClientConnectorCertificateError as e:
                cert_err = e.certificate_error
                why = getattr(cert_err, "verify_message", None) or cert_err
                if getattr(cert_err, "verify_code", None) in NAME_MISMATCH:
                    # the chain is trusted (a CA would not help): the name is wrong
                    name = yarl.URL(url).host
                    hint = (f"the certificate is not valid for {name}: reach the registry "
                            "by a name the certificate was issued for, or reissue it with "
                            f"{name} in subjectAltName")
                else:
                    hint = (f"give the registry's CA with --ca-file {registry}=CA.pem"
                            + self.in_yaml(f" (or `registries: {registry}: ca_file:` in "
                                           "images.yaml)")
                            + f"; --insecure-registry {registry} skips verification "
                            "(trusted networks only)")
                raise RegistryError(
                    f"{registry}: TLS certificate verification failed: {why}",
                    registry=registry, hint=hint) from None
            except (aiohttp.ClientSSLError, aiohttp.ServerDisconnectedError) as e:
                # the other end answered, but not with TLS: plain HTTP if allowed
                last = e
                self.log_request("GET", url, describe_exception(e), t0)
                failed[scheme] = describe_exception(e)
                if scheme == "https" and plain_ok:
                    tls_failure, scheme = e, "http"
                    self.debug(f"{registry}: not TLS; plain HTTP")
                    continue
                break
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
                last = e
                self.log_request("GET", url, describe_exception(e), t0)
                failed[scheme] = describe_exception(e)
                if scheme == "https" and plain_ok:
                    tls_failure, scheme = e, "http"
                    if isinstance(e, aiohttp.ClientConnectorError) and \
                            yarl.URL(url).explicit_port is None:
                        continue  # port 443 refused: port 80 is another question
                attempt += 1
                if attempt >= self.policy.tries:
                    break
                self.count_retry()
                delay = self.policy.delay(attempt)
                self.log_retry("GET", url, describe_exception(e), attempt, delay)
                if scheme == "http" and url.startswith("https:"):
                    self.debug(f"{registry}: next try over plain HTTP")
                await asyncio.sleep(delay)
        if isinstance(last, aiohttp.ClientSSLError) and not plain_ok:
            raise RegistryError(
                f"{registry}: TLS connection failed: https://{host}/v2/: "
                f"{describe_exception(last)}",
                registry=registry,
                hint="if the registry requires a client certificate, give it with --client-cert "
                f"{registry}=CERT,KEY; if it serves plain HTTP, pass --insecure-registry "
                f"{registry}")
        tries = f" (after {attempt} tries)" if attempt > 1 else ""
        raise RegistryError(
            f"{registry}: registry unreachable: "
            + "; ".join(f"{s}://{host}/v2/: {why}" for s, why in failed.items()) + tries,
            registry=registry, hint=self._unreachable_hint(registry, last, plain_ok))

    def _unreachable_hint(self, registry: str, last: BaseException | None,
                          plain_ok: bool) -> str | None:
        if isinstance(last, aiohttp.ClientConnectorDNSError):
            if registry == DOCKER_HUB:
                return ("a name without a registry host (`myapp:1`, `library/alpine`) means "
                        f"Docker Hub ({DOCKER_HUB}), whose name did not resolve here; to pull "
                        "from another registry, start the name with its host: "
                        "`registry.example.com/myapp:1` or `localhost:5000/myapp:1`")
            return f"check the registry's name: {api_host(registry)} did not resolve"
        if plain_ok or registry == DOCKER_HUB:
            return None
        return (f"if it serves plain HTTP, pass --insecure-registry {registry}"
                + self.in_yaml(" (or set `insecure: true` for it in images.yaml)"))

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
        data: Callable[[], Any] | bytes | Any | None = None,
        ok: Iterable[int] = (200,),
        what: str = "",
        allow_redirects: bool = True,
        retry: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send with auth, retries and the host gate; return the response (caller releases it).

        Raises AuthError, NotFound, RateLimited or RegistryError. `data` may be bytes, a
        callable that returns a fresh body for each try, or a one-shot stream; a one-shot
        body is never sent twice (no retry, no re-auth: the error goes to the caller, which
        knows how to resume).
        """
        ep = await self.endpoint(registry)
        ok = frozenset(ok)
        full = url if url.startswith(("http://", "https://")) else ep.base_url + url
        scopes: tuple[str, ...] = (
            (f"repository:{repository}:{actions}", *extra_scopes) if repository else ())
        replayable = _replayable(data)
        retry = retry and replayable
        started = time.monotonic()
        attempt = 0
        reauthed = False
        # credentials and the registry's TLS settings go only to the registry's own origin;
        # an upload Location or a Link on another host gets neither (REFERENCE.md 6.3, 6.4)
        own = _origin(full) == _origin(ep.base_url)
        ssl_ctx = ep.ssl if own else self.ssl_for_url(full)
        while True:
            await ep.gate.wait()
            hdrs = dict(headers or {})
            if own:
                hdrs.update(await ep.auth.header(scopes))
            body = data() if callable(data) else data
            t0 = time.monotonic()
            try:
                resp = await self.session.request(
                    method, full, headers=hdrs, data=body, ssl=ssl_ctx,
                    allow_redirects=allow_redirects)
            except (TimeoutError, aiohttp.ClientConnectionError,
                    aiohttp.ClientResponseError) as e:  # the latter: an answer not HTTP
                if self.session.closed:
                    # the run is ending (another request's error closed the pool): no try
                    # of ours failed, so none is logged, counted or made again
                    raise RegistryError(f"{_where(registry, repository)}: {what or method}: "
                                        "stopped: the run is ending", registry=registry,
                                        repository=repository) from None
                self.log_request(method, full, describe_exception(e), t0)
                cause = _mirror_cause(e)
                if cause is not None:
                    raise cause from None  # the body stream failed (bad bytes in a bundle)
                attempt += 1
                delay = self.policy.delay(attempt)
                if not retry or attempt >= self.policy.tries or \
                        time.monotonic() + delay - started > self.policy.max_elapsed:
                    raise RegistryError(
                        f"{_where(registry, repository)}: {what or method}: "
                        f"{describe_exception(e)}"
                        + (f" (after {attempt} tries)" if attempt > 1 else ""),
                        registry=registry, repository=repository) from None
                self.count_retry()
                self.log_retry(method, full, describe_exception(e), attempt, delay)
                await asyncio.sleep(delay)
                continue
            self.log_request(method, full, resp.status, t0)
            if resp.status in ok:
                return resp
            if resp.status == 401 and not reauthed:
                challenges = resp.headers.getall("WWW-Authenticate", [])
                await resp.read()
                resp.release()
                reauthed = True
                scopes = await ep.auth.challenge(challenges, scopes)
                if replayable:
                    continue
                raise AuthError(
                    f"{_where(registry, repository)}: {what or method}: HTTP 401 (token "
                    "expired mid-transfer)", registry=registry, repository=repository,
                    status=401)
            try:
                err_body = await read_body(resp, MAX_ERROR_BODY)
            except (TimeoutError, aiohttp.ClientError):
                err_body = b""
            resp.release()
            retryable = retry and self.policy.retryable(resp.status, error_codes(err_body)[0])
            if retryable:
                attempt += 1
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                delay = retry_after if retry_after is not None else self.policy.delay(attempt)
                if attempt < self.policy.tries and delay <= self.policy.max_retry_after and \
                        time.monotonic() + delay - started <= self.policy.max_elapsed:
                    self.count_retry()
                    self.log_retry(method, full, f"HTTP {resp.status}", attempt, delay)
                    if resp.status == 429 or (resp.status == 503 and retry_after is not None):
                        if ep.gate.pause(delay) and retry_after is not None:
                            self.announce_wait(full, delay, resp.status)
                        # the whole registry waits, not just this request
                    else:
                        await asyncio.sleep(delay)
                    continue
            if not retry and resp.status in (429, 503):
                # a one-shot body (an upload chunk): the caller tries again, and the registry's
                # Retry-After holds for that try and every other request to it
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                if retry_after is not None and retry_after <= self.policy.max_retry_after \
                        and ep.gate.pause(retry_after):
                    self.announce_wait(full, retry_after, resp.status)
            raise self.error_for(resp, err_body, registry, repository, what,
                                 tries=attempt if retryable else attempt + 1 if attempt else 0,
                                 actions=actions)

    def error_for(self, resp: aiohttp.ClientResponse, body: bytes, registry: str,
                  repository: str, what: str, tries: int = 0,
                  actions: str = "pull") -> RegistryError:
        return error_for(resp, body, registry, repository, what, tries=tries, actions=actions,
                         credential=self.credentials.get(registry),
                         login_hint=self.login_hint(registry),
                         max_retry_after=self.policy.max_retry_after)
