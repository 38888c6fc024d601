"""A registry's endpoint: the one ping of `/v2/` that finds its scheme (HTTPS, or plain HTTP
where allowed), checks that a registry answers there (not a web server, not another service,
a certificate it can verify) and reads its auth challenge; and the re-authentication a 401
later in the run asks for. Used by mirror.registry.transport, whose retry policy, gates,
limiter and -v lines the ping goes through as every other request does."""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
import yarl

from mirror.errors import AuthError, RegistryError
from mirror.reference import DOCKER_HUB, api_host, is_loopback
from mirror.registry.answers import where as _where
from mirror.registry.auth import Authenticator
from mirror.registry.network import describe_exception
from mirror.registry.policy import HostGate, parse_retry_after

if TYPE_CHECKING:
    import ssl

    from mirror.registry.transport import Transport

# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH
NAME_MISMATCH = (62, 64)


@dataclass
class Endpoint:
    registry: str
    base_url: str
    ssl: ssl.SSLContext | bool
    auth: Authenticator
    gate: HostGate = field(default_factory=HostGate)


@dataclass
class Ping:
    """Where a registry's ping has got to: the scheme it tries, the tries made, how each
    scheme's last try failed (for the error), how HTTPS failed before plain HTTP."""

    registry: str
    host: str
    plain_ok: bool  # plain HTTP allowed (`insecure`, loopback)
    scheme: str = "https"
    attempt: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    last: BaseException | None = None
    tls_failure: BaseException | None = None


async def find_endpoint(t: Transport, registry: str) -> Endpoint:
    """GET /v2/ over HTTPS, or plain HTTP where allowed (`insecure`, loopback). Every try
    counts against the one retry budget, whichever scheme it used (`--retries 1`: two
    tries in all); a try that fails on HTTPS in a way plain HTTP may not (a timeout, a
    refused connection) is followed by one over HTTP. An answer that shows the other end
    does not speak TLS moves to HTTP at once, as no try of its own."""
    host = api_host(registry)
    ssl_ctx = t._ssl(registry)
    # a credential helper is a subprocess: not on the event loop
    auth = Authenticator(registry, await asyncio.to_thread(t.credentials.get, registry),
                         t)
    ping = Ping(registry, host, t._settings(registry).insecure or is_loopback(registry))
    try:
        return await _ping(t, registry, host, ssl_ctx, auth, ping)
    finally:
        if ping.tls_failure is not None:
            _let_go(ping)


def _let_go(ping: Ping) -> None:
    """The HTTPS try that failed before plain HTTP answered leaves its connection in
    reference cycles (asyncio's SSLProtocol, its 256 KiB buffer among them, in the frames
    its exceptions' tracebacks hold, `ping` holding them too), which the cyclic collector
    alone frees; its first collection comes after 10,000 new objects (mirror.cli:
    _settle_gc), so whether the run's peak heap held them was chance (a plain-HTTP
    registry: 280 KB, test_memory_scale's 15-23 KB "per reference" at ea6c5bd, whose
    three more objects per image brought that collection before the ping). Freed now:
    a young collection (2.5-4.4 ms of a 40-image pull on this loaded machine), once
    per registry whose HTTPS try failed."""
    ping.last = ping.tls_failure = None
    gc.collect(1)


async def _ping(t: Transport, registry: str, host: str, ssl_ctx: ssl.SSLContext | bool,
                auth: Authenticator, ping: Ping) -> Endpoint:
    """find_endpoint's tries, until one answers as a registry or none is left."""
    while True:
        url = f"{ping.scheme}://{host}/v2/"
        await t.gate(url).wait()
        t0 = time.monotonic()
        try:
            async with t.session.get(url, ssl=ssl_ctx, allow_redirects=False) as resp:
                # counted once answered: an HTTPS try that a plain-HTTP port could not
                # read reached no registry
                t.limits_for(registry).count("ping")
                await resp.read()
                t.log_request("GET", url, resp.status, t0)
                t.observe(registry, resp.headers, resp.status)
                ping.attempt += 1
                if await _ping_again(t, resp, url, ping.attempt):
                    continue
                _check_registry(t, resp, url, ping)
                auth.observe(resp.headers.getall("WWW-Authenticate", []))
                return Endpoint(registry, f"{ping.scheme}://{host}", ssl_ctx, auth,
                                t.gate(url))
        except aiohttp.ClientResponseError as e:
            # an answer, but not HTTP (another service on the port: SSH, SMTP, ...)
            t.log_request("GET", url, describe_exception(e), t0)
            raise RegistryError(
                f"{registry} does not answer as a registry (GET {url}: "
                f"{describe_exception(e)})", registry=registry,
                hint="give the host[:port] where the registry's /v2/ API is served: "
                "another service answers there") from None
        except aiohttp.ClientConnectorCertificateError as e:
            raise _certificate_error(t, registry, url, e) from None
        except (TimeoutError, aiohttp.ClientConnectionError) as e:
            t.log_request("GET", url, describe_exception(e), t0)
            if not await _ping_failed(t, e, url, ping):
                break
    raise _ping_error(t, ping)

async def _ping_again(t: Transport, resp: aiohttp.ClientResponse, url: str, attempt: int) -> bool:
    """An answer of the retry set with tries left: back off (a Retry-After pauses the
    host) and say so."""
    if resp.status not in t.policy.statuses or attempt >= t.policy.tries:
        return False
    ra = parse_retry_after(resp.headers.get("Retry-After"))
    delay = min(ra, t.policy.max_retry_after) if ra is not None else \
        t.policy.delay(attempt)
    await t.backoff("GET", url, f"HTTP {resp.status}", attempt, delay=delay,
                       status=resp.status, retry_after=ra)
    return True

def _check_registry(t: Transport, resp: aiohttp.ClientResponse, url: str, ping: Ping) -> None:
    """Raise unless the answer to GET /v2/ comes from a registry's API: a TLS server's
    400 to plain HTTP (the HTTPS failure before it is the story), a web server's 404,
    405 or 410, a web page (registries answer /v2/ with JSON)."""
    registry = ping.registry
    if ping.scheme == "http" and ping.tls_failure is not None and resp.status == 400:
        raise RegistryError(
            f"{registry}: TLS connection failed: https://{ping.host}/v2/: "
            f"{describe_exception(ping.tls_failure)}", registry=registry,
            hint="if the registry requires a client certificate, give it "
            f"with --client-cert {registry}=CERT,KEY" + t.in_yaml(
                " (or client_cert and client_key in images.yaml)"))
    served = "give the host[:port] where the registry's /v2/ API is served"
    if resp.status in (404, 405, 410):
        raise RegistryError(
            f"{registry} does not answer as a registry (GET {url}: HTTP {resp.status})",
            registry=registry, status=resp.status, hint=served)
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
    if (resp.status == 200 and ctype == "text/html"
            and "Docker-Distribution-API-Version" not in resp.headers):
        raise RegistryError(
            f"{registry} does not answer as a registry (GET {url}: HTTP 200 with a "
            "text/html page)", registry=registry, status=200, hint=served)

def _certificate_error(t: Transport, registry: str, url: str,
                       e: aiohttp.ClientConnectorCertificateError) -> RegistryError:
    cert_err = e.certificate_error
    why = getattr(cert_err, "verify_message", None) or cert_err
    if getattr(cert_err, "verify_code", None) in NAME_MISMATCH:
        # the chain is trusted (a CA would not help): the name is wrong
        name = yarl.URL(url).host
        hint = (f"the certificate is not valid for {name}: reach the registry by a name "
                f"the certificate was issued for, or reissue it with {name} in "
                "subjectAltName")
    else:
        hint = (f"give the registry's CA with --ca-file {registry}=CA.pem"
                + t.in_yaml(f" (or `registries: {registry}: ca_file:` in images.yaml)")
                + f"; --insecure-registry {registry} skips verification (trusted "
                "networks only)")
    return RegistryError(f"{registry}: TLS certificate verification failed: {why}",
                         registry=registry, hint=hint)

async def _ping_failed(t: Transport, e: BaseException, url: str, ping: Ping) -> bool:
    """A try that got no answer: True to try again (over plain HTTP where allowed, or
    after a back-off), False when that is all. An answer that is not TLS (a TLS error,
    a server that hangs up) moves to plain HTTP at once or ends the ping."""
    ping.last = e
    ping.failed[ping.scheme] = describe_exception(e)
    not_tls = isinstance(e, aiohttp.ClientSSLError | aiohttp.ServerDisconnectedError)
    if ping.scheme == "https" and ping.plain_ok:
        ping.tls_failure, ping.scheme = e, "http"
        if not_tls:
            t.debug(f"{ping.registry}: not TLS; plain HTTP")
            return True
        if isinstance(e, aiohttp.ClientConnectorError) and \
                yarl.URL(url).explicit_port is None:
            return True  # port 443 refused: port 80 is another question
    elif not_tls:
        return False
    ping.attempt += 1
    if ping.attempt >= t.policy.tries:
        return False
    if ping.scheme == "http" and url.startswith("https:"):
        t.debug(f"{ping.registry}: next try over plain HTTP")
    await t.backoff("GET", url, describe_exception(e), ping.attempt)
    return True

def _ping_error(t: Transport, ping: Ping) -> RegistryError:
    registry, host = ping.registry, ping.host
    if isinstance(ping.last, aiohttp.ClientSSLError) and not ping.plain_ok:
        return RegistryError(
            f"{registry}: TLS connection failed: https://{host}/v2/: "
            f"{describe_exception(ping.last)}",
            registry=registry,
            hint="if the registry requires a client certificate, give it with --client-cert "
            f"{registry}=CERT,KEY; if it serves plain HTTP, pass --insecure-registry "
            f"{registry}")
    tries = f" (after {ping.attempt} tries)" if ping.attempt > 1 else ""
    return RegistryError(
        f"{registry}: registry unreachable: "
        + "; ".join(f"{s}://{host}/v2/: {why}" for s, why in ping.failed.items()) + tries,
        registry=registry, hint=_unreachable_hint(t, registry, ping.last, ping.plain_ok))

def _unreachable_hint(t: Transport, registry: str, last: BaseException | None,
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
            + t.in_yaml(" (or set `insecure: true` for it in images.yaml)"))


def replayable(data: object) -> bool:
    """A request body that may be sent again: none, bytes, or a callable making it anew."""
    return data is None or callable(data) or isinstance(data, bytes | bytearray | str)


async def reauth(ep: Endpoint, resp: aiohttp.ClientResponse,
                 scopes: tuple[str, ...], data: object, registry: str, repository: str,
                 what: str, method: str) -> tuple[str, ...]:
    """A 401: adopt its challenge (a fresh token, maybe for more scopes) and return the
    scopes to ask with; a one-shot body cannot be sent again: its token expired."""
    challenges = resp.headers.getall("WWW-Authenticate", [])
    await resp.read()
    resp.release()
    scopes = await ep.auth.challenge(challenges, scopes)
    if not replayable(data):
        raise AuthError(
            f"{_where(registry, repository)}: {what or method}: HTTP 401 (token "
            "expired mid-transfer)", registry=registry, repository=repository,
            status=401)
    return scopes
