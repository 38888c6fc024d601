"""Network policy in one place: TLS and scheme per registry, retries, the per-host gate, auth.

The session and TLS per registry are set up by its base mirror.registry.session, the -v
lines and the counting of requests by mirror.registry.accounting. Every request goes
through `request()`:
  - the first request to a registry pings it once (mirror.registry.endpoint: its scheme, its
    auth challenge);
  - 401 with a challenge: authenticate (mirror.registry.auth, endpoint.reauth) and try once more;
  - 408, 429, 5xx, connection errors and timeouts: retried with exponential back-off and jitter,
    bounded in count; 429 and 503 honour Retry-After by pausing the whole registry (HostGate);
  - any other status outside `ok`: a typed error (mirror.registry.answers) naming registry,
    repository, what was asked, the HTTP status and the registry's own error code and message.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl

from mirror.errors import (
    MirrorError,
    RegistryError,
)
from mirror.registry.accounting import Accounting, loggable, quiet
from mirror.registry.answers import error_codes, error_for
from mirror.registry.answers import where as _where
from mirror.registry.body import read_body
from mirror.registry.credentials import CredentialStore
from mirror.registry.endpoint import Endpoint, find_endpoint, reauth, replayable
from mirror.registry.network import TransferError, describe_exception
from mirror.registry.policy import (
    HostGate,
    RegistrySettings,
    RetryPolicy,
    Timeouts,
    parse_retry_after,
)
from mirror.registry.ratelimit import (
    Label,
    RegistryLimits,
    request_kind,
)

MAX_ERROR_BODY = 64 * 1024


def _origin(url: str) -> tuple[str, str, int | None]:
    u = yarl.URL(url)
    return (u.scheme, (u.host or "").lower(), u.port)


def _mirror_cause(e: BaseException) -> MirrorError | None:
    """aiohttp wraps an exception raised by a streamed request body in a connection error."""
    seen = 0
    cur: BaseException | None = e.__cause__
    while cur is not None and seen < 5:
        if isinstance(cur, MirrorError):
            return cur
        cur, seen = cur.__cause__, seen + 1
    return None


@dataclass
class Reply:
    """An answer from `Transport.send`: the response, the tries it took, and for an answer
    of the retry set (429, 5xx) its first bytes, already read (the response is released)."""

    resp: aiohttp.ClientResponse
    tries: int
    body: bytes | None = None


class OnTheWire:
    """Whether a request is on its way: `now` is true while one of its tries may reach the
    registry and its answer is not in (`send` sets it around each try). For a caller that
    may be cancelled meanwhile (an upload session's POST, mirror.registry.upload): a request
    not on its way never left (it waits for a slot, a token, the host's pause, a back-off,
    or its first try), and dropping it sends nothing; one on its way may have been acted
    on."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = False


async def _on_the_wire(wire: OnTheWire, sending: Awaitable[aiohttp.ClientResponse]
                       ) -> aiohttp.ClientResponse:
    """One try of a request (`sending`), `wire` saying meanwhile that it is on its way."""
    wire.now = True
    try:
        return await sending
    finally:
        wire.now = False


async def _error_body(resp: aiohttp.ClientResponse) -> bytes:
    """The first bytes of an error answer (its codes and message), and the response
    released."""
    try:
        return await read_body(resp, MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError):
        return b""
    finally:
        resp.release()


class Transport(Accounting):
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
        # set once a request of the run waits to be tried again (a back-off, a Retry-After)
        # or for a slot of a limiter that 429s slowed: a pull then starts the downloads of
        # the images it has planned instead of waiting for the rest (mirror.prefetch)
        self.stalled = asyncio.Event()
        self.debug = debug or quiet
        self.notice = notice or quiet
        self.settings = settings or {}
        self.credentials = credentials or CredentialStore()
        self.policy = policy or RetryPolicy()
        self.timeouts = timeouts or Timeouts()
        self.jobs = jobs
        self._endpoints: dict[str, Endpoint] = {}
        self._gates: dict[tuple[str, str, int | None], HostGate] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._refused: dict[str, RegistryError] = {}  # a ping that failed: not tried again
        self._ssl_cache: dict[str, ssl.SSLContext | bool] = {}
        self._session: aiohttp.ClientSession | None = None
        self.retries = 0  # counted for the report
        self.limits: dict[str, RegistryLimits] = {}  # per registry: limiter and counts
        # per registry: whether it has the referrers API, once a run asked (every finder's
        # answer: a sync's planning and its push ask a target once between them)
        self.referrers_api: dict[str, bool] = {}

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
                    self._endpoints[registry] = await find_endpoint(self, registry)
                except RegistryError as e:
                    self._refused[registry] = e
                    raise
        return self._endpoints[registry]

    def refuses(self, registry: str, method: str, path: str) -> None:
        """Raise the BudgetSpent that `method path` at `registry` would meet now (its request
        budget spent or promised, the registry held: RegistryLimits.check), sending nothing:
        asked before a request elsewhere that is of use only with that one (a sync asks its
        target's tag before the source's: mirror.sync_there)."""
        ep = self._endpoints.get(registry)
        url = ep.base_url + path if ep is not None else path
        self.limits_for(registry).check(lambda: f"{method} {loggable(url)}")

    def gate(self, url: str) -> HostGate:
        """The pause shared by every request to one host (scheme, host, port): a registry,
        its token server, object storage it redirects to, a foreign layer's server."""
        return self._gates.setdefault(_origin(url), HostGate())

    async def backoff(self, method: str, url: str, why: str, attempt: int, *,
                      delay: float | None = None, status: int = 0,
                      retry_after: float | None = None) -> None:
        """Before another try of a request (`attempt` tries made): count it, say it on one
        -v line, and wait. A 429, or a 503 with Retry-After, pauses the whole host (every
        request to it waits: `gate`); anything else waits here, `delay` seconds or the
        policy's back-off."""
        if delay is None:
            delay = retry_after if retry_after is not None else self.policy.delay(attempt)
        self.count_retry()
        self.log_retry(method, url, why, attempt, delay)
        self.stalled.set()
        if status == 429 or (status == 503 and retry_after is not None):
            if self.gate(url).pause(delay) and retry_after is not None:
                self.announce_wait(url, delay, status)
        else:
            await asyncio.sleep(delay)

    def _may_retry(self, attempt: int, started: float, delay: float) -> bool:
        """Another try is in the budget: fewer than `tries` made, and it would start within
        `max_elapsed` of the first."""
        return attempt < self.policy.tries and \
            time.monotonic() + delay - started <= self.policy.max_elapsed

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        auth: Callable[[], Awaitable[dict[str, str]]] | None = None,
        data: Callable[[], Any] | bytes | Any | None = None,
        params: Any = None,
        ssl_ctx: ssl.SSLContext | bool | None = None,
        retry: bool = True,
        allow_redirects: bool = True,
        note: str | None = None,
        registry: str | None = None,
        kind: str = "",
        wire: OnTheWire | None = None,
    ) -> Reply:
        """The one retry loop: every request of a run goes through here, to a registry, its
        token server, a redirect target or a foreign URL alike (each just a host: its own
        gate, its TLS settings from `ssl_for_url` unless `ssl_ctx` is given).

        Connection errors, timeouts and the policy's statuses (408, 429, 5xx not naming a
        definite error code) are tried again within the policy's budget (`backoff`); a
        Retry-After pauses the host. Any other answer is returned, and the last one when
        the tries are used up (`Reply.body` then holds its first bytes, already read).
        Raises TransferError when no answer came at all, or the MirrorError a streamed
        request body raised. `auth` gives headers for each try (a token may be renewed);
        `note` names the request in its -v line instead of METHOD URL. A one-shot `data`
        (neither bytes nor a callable) is never sent twice: no retry.

        A request for `registry` (its API, or its token server: `kind` "token") is counted
        under `kind` for the report and its RateLimit headers read; one of its API waits for
        a slot of the registry's limiter (mirror.registry.ratelimit), whose cap a 429 halves:
        other registries never wait for it. A token is fetched before the slot is taken (the
        request that needs it holds none yet), and takes none. `wire`, when given, says
        when a try is on its way."""
        started = time.monotonic()
        gate = self.gate(url)
        ssl_ctx = self.ssl_for_url(url) if ssl_ctx is None else ssl_ctx
        retry = retry and replayable(data)
        lim = self.limits_for(registry) if registry is not None else None
        attempt = 0
        while True:
            await gate.wait()
            hdrs = {**(headers or {}), **(await auth() if auth is not None else {})}
            held = await self._take_slot(
                lim, kind, note or (lambda: f"{method} {loggable(url)}"))
            if lim is not None:
                lim.count(kind or request_kind(method, url))
            attempt += 1
            t0 = time.monotonic()
            try:
                sending = self.session.request(
                    method, url, headers=hdrs, data=data() if callable(data) else data,
                    params=params, ssl=ssl_ctx, allow_redirects=allow_redirects)
                resp = await (sending if wire is None else _on_the_wire(wire, sending))
            except (TimeoutError, aiohttp.ClientConnectionError,
                    aiohttp.ClientResponseError) as e:  # the latter: an answer not HTTP
                if held is not None:
                    held.release(None)
                why = self._no_answer(e, method, url, t0, note)
                delay = self.policy.delay(attempt)
                if not retry or not self._may_retry(attempt, started, delay):
                    raise TransferError(why, attempt) from None
                await self.backoff(method, url, why, attempt, delay=delay)
                continue
            except BaseException:  # cancelled: the slot goes back
                if held is not None:
                    held.give_back()
                raise
            if held is not None:
                held.release(resp.status)
            self.log_request(method, url, resp.status, t0, note)
            if registry is not None:
                self.observe(registry, resp.headers, resp.status)
            if resp.status not in self.policy.statuses:
                return Reply(resp, attempt)
            body = await _error_body(resp)
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            if retry and self.policy.retryable(resp.status, error_codes(body)[0]):
                delay = retry_after if retry_after is not None else self.policy.delay(attempt)
                if delay <= self.policy.max_retry_after and \
                        self._may_retry(attempt, started, delay):
                    await self.backoff(method, url, f"HTTP {resp.status}", attempt,
                                       delay=delay, status=resp.status,
                                       retry_after=retry_after)
                    continue
            elif not retry and retry_after is not None and resp.status in (429, 503) and \
                    retry_after <= self.policy.max_retry_after and gate.pause(retry_after):
                # a one-shot body (an upload chunk): the caller tries again, and the
                # Retry-After holds for that try and every other request to the host
                self.announce_wait(url, retry_after, resp.status)
            if lim is not None and kind != "token":
                self._hold(lim, resp.status, retry_after, attempt if retry else 0, body,
                           note or f"{method} {loggable(url)}")
            return Reply(resp, attempt, body)

    def _hold(self, lim: RegistryLimits, status: int, retry_after: float | None,
              tries: int, body: bytes, what: str) -> None:
        """A registry that will not answer this run is left for the next (its images wait,
        exit 14): a 429 or 503 asking for longer than --max-wait, or 429s through all of a
        request's tries (`tries`: 0 for a one-shot body, which its caller tries again), the
        request (`what`) named: every waiting image gives that reason, most of them for a
        request of their own never sent."""
        if status in (429, 503) and retry_after is not None and \
                retry_after > self.policy.max_retry_after:
            lim.hold_for(retry_after, status)
        elif status == 429 and tries:
            codes, message = error_codes(body)
            lim.hold(f"{what} answered HTTP 429" + (" " + ",".join(codes) if codes else "")
                     + (f": {message}" if message else "")
                     + (f" (after {tries} tries)" if tries > 1 else ""))

    @staticmethod
    async def _take_slot(lim: RegistryLimits | None, kind: str,
                         what: Label) -> RegistryLimits | None:
        """A slot of the registry's limiter for one try (the limiter, to release it), or
        None: no registry, or a token request (it goes to the token server, and the request
        waiting for the token may hold the registry's last slot)."""
        if lim is None or kind == "token":
            return None
        await lim.acquire(what)
        return lim

    def _no_answer(self, e: BaseException, method: str, url: str, t0: float,
                   note: str | None) -> str:
        """Why a try got no answer, logged; raises when trying again makes no sense: the
        run is ending (another request's error closed the pool: no try of ours failed, so
        none is logged or counted), or a streamed request body failed (bad bytes in a
        bundle: its own error)."""
        if self.session.closed:
            raise TransferError("stopped: the run is ending")
        why = describe_exception(e)
        self.log_request(method, url, why, t0, note)
        cause = _mirror_cause(e)
        if cause is not None:
            raise cause from None
        return why

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
        wire: OnTheWire | None = None,
    ) -> aiohttp.ClientResponse:
        """A request of the registry API: `send` with the registry's auth; return the
        response (caller releases it). `wire`: as send's.

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
        # credentials and the registry's TLS settings go only to the registry's own origin;
        # an upload Location or a Link on another host gets neither (REFERENCE.md 6.3, 6.4)
        own = _origin(full) == _origin(ep.base_url)
        reauthed = False
        while True:
            try:
                reply = await self.send(
                    method, full, headers=headers, data=data, retry=retry,
                    auth=functools.partial(ep.auth.header, scopes) if own else None,
                    ssl_ctx=ep.ssl if own else None, allow_redirects=allow_redirects,
                    registry=registry, wire=wire)
            except TransferError as e:
                raise RegistryError(
                    f"{_where(registry, repository)}: {what or method}: {e.why}"
                    + (f" (after {e.tries} tries)" if e.tries > 1 else ""),
                    registry=registry, repository=repository) from None
            resp = reply.resp
            if resp.status in ok:
                return resp
            if resp.status == 401 and not reauthed:
                reauthed = True
                scopes = await reauth(ep, resp, scopes, data, registry, repository, what, method)
                continue
            body = reply.body if reply.body is not None else await _error_body(resp)
            held = self.limits.get(registry)
            if held is not None and held.held is not None and resp.status in (429, 503):
                # longer than --max-wait: what needs this registry waits for the next run
                raise held.exhausted(f"{method} {loggable(full)}", held.held)
            raise self.error_for(resp, body, registry, repository, what, tries=reply.tries,
                                 actions=actions)

    def error_for(self, resp: aiohttp.ClientResponse, body: bytes, registry: str,
                  repository: str, what: str, tries: int = 0,
                  actions: str = "pull") -> RegistryError:
        return error_for(resp, body, registry, repository, what, tries=tries, actions=actions,
                         credential=self.credentials.get(registry),
                         login_hint=self.login_hint(registry),
                         max_retry_after=self.policy.max_retry_after)
