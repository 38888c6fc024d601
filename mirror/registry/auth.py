"""Registry authentication: RFC 7235 challenges, Basic, and the Bearer token flow.

Token flow (distribution token.md, REFERENCE.md 7): GET <realm>?service=..&scope=.. with Basic
credentials (or anonymously); an identity token is exchanged with the OAuth2 POST form. The
answer's `token` or `access_token` is cached per scope set until ~10 s before `expires_in`
(default 60 s). Tokens go only to the registry's own origin (aiohttp drops Authorization on
cross-origin redirects).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import aiohttp
import yarl

from mirror import secrets
from mirror.errors import AuthError, RateLimited, RegistryError
from mirror.registry.body import read_body
from mirror.registry.credentials import Credential
from mirror.registry.network import TransferError, describe_exception

if TYPE_CHECKING:
    from mirror.registry.transport import Reply, Transport

_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenges(values: Iterable[str]) -> list[tuple[str, dict[str, str]]]:
    """Parse WWW-Authenticate values; quoted values may contain commas (`pull,push`)."""
    out: list[tuple[str, dict[str, str]]] = []
    for value in values:
        rest = value.strip()
        while rest:
            m = re.match(r"([A-Za-z][A-Za-z0-9-]*)\s*", rest)
            if not m:
                break
            scheme = m.group(1).lower()
            rest = rest[m.end():]
            params: dict[str, str] = {}
            while True:
                pm = _PARAM.match(rest)
                if not pm:
                    break
                params[pm.group(1).lower()] = (
                    re.sub(r"\\(.)", r"\1", pm.group(2)) if pm.group(2) is not None
                    else pm.group(3))
                rest = rest[pm.end():]
            out.append((scheme, params))
            rest = rest.lstrip(", ")
    return out


def action_word(actions: str) -> str:
    """`pull` or `push` for messages: pushing is what needs more than pull."""
    return "push" if "push" in actions.split(",") else "pull"


def _scope_words(scopes: Iterable[str]) -> tuple[str, str]:
    """(repositories, action) named by token scopes, for messages."""
    names, action = [], "pull"
    for scope in scopes:
        rtype, _, rest = scope.partition(":")
        name, _, acts = rest.rpartition(":")
        if rtype == "repository" and name:
            names.append(name)
            if action_word(acts) == "push":
                action = "push"
    return ", ".join(dict.fromkeys(names)) or "the registry", action


def _after(tries: int) -> str:
    return f" (after {tries} tries)" if tries > 1 else ""


def _server_message(body: bytes) -> str:
    """What a token server said, in one short line: `errors[].message`, OAuth2's
    `error_description`, Docker Hub's `details`, or the first line of text."""
    try:
        doc = json.loads(body)
    except ValueError:
        lines = body.decode("utf-8", "replace").strip().splitlines()
        return lines[0][:200] if lines else ""
    if not isinstance(doc, dict):
        return ""
    errs = doc.get("errors")
    if isinstance(errs, list):
        msgs = [str(e.get("message") or e.get("code") or "") for e in errs if isinstance(e, dict)]
        if any(msgs):
            return "; ".join(m for m in msgs if m)[:200]
    for key in ("error_description", "details", "message", "error"):
        if isinstance(doc.get(key), str) and doc[key]:
            return doc[key][:200]
    return ""


class Authenticator:
    """Auth state of one registry: which scheme it asked for and the tokens we hold."""

    def __init__(self, registry: str, credential: Credential | None, transport: Transport) -> None:
        self.registry = registry
        self.credential = credential
        self.transport = transport
        self.scheme: str | None = None
        self.params: dict[str, str] = {}
        self._tokens: dict[frozenset[str], tuple[str, float]] = {}
        self._lock = asyncio.Lock()

    def observe(self, challenges: list[str]) -> None:
        """Record the challenge of the /v2/ ping, so later requests authenticate up front."""
        parsed = parse_challenges(challenges)
        for scheme, params in parsed:
            if scheme == "bearer":
                self.scheme, self.params = "bearer", params
                return
        for scheme, params in parsed:
            if scheme == "basic":
                self.scheme, self.params = "basic", params
                return

    async def header(self, scopes: tuple[str, ...]) -> dict[str, str]:
        if self.scheme == "basic" and self.credential and self.credential.username:
            return {"Authorization": f"Basic {self.credential.basic}"}
        if self.scheme == "bearer":
            return {"Authorization": f"Bearer {await self._token(scopes)}"}
        return {}

    async def challenge(self, challenges: list[str], scopes: tuple[str, ...]
                        ) -> tuple[str, ...]:
        """After a 401: adopt the challenge, drop the cached token and return the scopes to
        ask for next (ours plus any the registry named), or say why we can't go on."""
        self.observe(challenges)
        if self.scheme is None:
            raise AuthError(f"{self.registry}: 401 without a usable WWW-Authenticate challenge",
                            registry=self.registry, status=401)
        if self.scheme == "basic" and not (self.credential and self.credential.username):
            raise AuthError(
                f"{self.registry}: authentication required and no credentials found",
                registry=self.registry, status=401,
                hint=self.transport.login_hint(self.registry),
            )
        if self.scheme == "bearer":
            self._tokens.pop(frozenset(scopes), None)
            extra = self.params.get("scope", "").split()
            if extra:
                # the registry named the scopes it wants (a mount's source repository, say):
                # ask for ours and those in one token, as ggcr does
                merged = tuple(dict.fromkeys((*scopes, *extra)))
                self._tokens.pop(frozenset(merged), None)
                return merged
        return scopes

    async def _token(self, scopes: tuple[str, ...]) -> str:
        key = frozenset(scopes)
        now = time.monotonic()
        held = self._tokens.get(key)
        if held and held[1] > now:
            return held[0]
        async with self._lock:
            held = self._tokens.get(key)
            if held and held[1] > time.monotonic():
                return held[0]
            token, expires_in = await self._fetch(sorted(key))
            # refresh ~10 s before expiry; a short-lived token is used for half its life
            life = expires_in - 10.0 if expires_in > 30.0 else expires_in / 2
            self._tokens[key] = (token, time.monotonic() + max(0.5, life))
            return token

    async def _fetch(self, scopes: list[str]) -> tuple[str, float]:
        """A token for `scopes` and its lifetime: the credential's own registry token, or
        the realm's answer."""
        cred = self.credential
        if cred and cred.registry_token:
            return cred.registry_token, 3600.0
        realm = await self._realm()
        realm_host = str(yarl.URL(realm).origin()) if yarl.URL(realm).host else realm
        try:
            # the token server is one more host to the transport: the same retries, pauses
            # and -v lines as the registry
            status, body, tries = await self._ask(realm, realm_host, scopes)
        except TransferError as e:
            # no answer (refused, reset, timed out): the token server is unavailable, as a
            # registry that does not answer is (exit 3), not a question of credentials
            raise RegistryError(f"{self.registry}: the token server {realm_host} could not be "
                                f"reached: {e.why}{_after(e.tries)}",
                                registry=self.registry) from None
        if status != 200:
            raise self._refusal(status, body, realm_host, scopes, tries)
        try:
            doc = json.loads(body)
        except ValueError:
            raise AuthError(f"{self.registry}: token request to {realm_host} failed: not JSON",
                            registry=self.registry) from None
        return self._token_in(doc, realm_host)

    async def _realm(self) -> str:
        """The challenge's token realm, which may not be plain HTTP for an HTTPS registry."""
        realm = self.params.get("realm")
        if not realm:
            raise AuthError(f"{self.registry}: Bearer challenge without a realm",
                            registry=self.registry)
        ep = await self.transport.endpoint(self.registry)
        if realm.startswith("http://") and ep.base_url.startswith("https://"):
            raise AuthError(f"{self.registry}: refusing a plain-HTTP token realm for an HTTPS "
                            "registry", registry=self.registry)
        return realm

    def _refusal(self, status: int, body: bytes, realm_host: str, scopes: list[str],
                 tries: int) -> RegistryError:
        """What a token server's answer other than 200 means, in its own words: the scope
        refused (403), the credentials rejected, anonymous access refused, the token server
        unavailable after its tries (a 5xx: exit 3, as a registry's; a 429: exit 6), or just
        a status."""
        cred = self.credential
        said = _server_message(body)
        said_part = f": {said}" if said else ""
        if status == 429 or status >= 500:
            text = (f"{self.registry}: the token server {realm_host} answered HTTP {status}"
                    f"{said_part}{_after(tries)}")
            if status == 429:
                return RateLimited(text, registry=self.registry, status=status,
                                   hint=f"the token server {realm_host} limits its requests: "
                                   "run later")
            return RegistryError(text, registry=self.registry, status=status)
        if status == 403:
            # the credentials (or anonymous access) are fine; the scope is refused
            repos, action = _scope_words(scopes)
            who = f"the account from {cred.source}" if cred else "anonymous access"
            return AuthError(
                f"{self.registry}: access denied: the token server {realm_host} does not let "
                f"{who} {action} {repos} (HTTP 403{said_part})", registry=self.registry,
                status=status, codes=("DENIED",),
                hint=(f"ask the administrators of {self.registry} for {action} rights on "
                      f"{repos} for that account" if cred else
                      f"no credentials found for {self.registry}: "
                      f"{self.transport.login_hint(self.registry)}"))
        if status in (400, 401) and cred:
            return AuthError(
                f"{self.registry}: the token server {realm_host} rejected the credentials from "
                f"{cred.source} (HTTP {status}{said_part})", registry=self.registry,
                status=status,
                hint=f"check the username and password for {self.registry} in {cred.source} "
                f"(or run `docker login {self.registry}` again)")
        if status == 401:
            return AuthError(
                f"{self.registry}: the token server {realm_host} refused anonymous access "
                f"(HTTP {status}{said_part})", registry=self.registry, status=status,
                hint=f"no credentials found for {self.registry}: "
                f"{self.transport.login_hint(self.registry)}")
        return AuthError(f"{self.registry}: the token server {realm_host} answered HTTP "
                         f"{status}", registry=self.registry, status=status)

    def _token_in(self, doc: object, realm_host: str) -> tuple[str, float]:
        """The token (`token` or `access_token`) of a 200 answer and its `expires_in`
        (default 60 s); the token and any refresh token are remembered as secrets."""
        fields = doc if isinstance(doc, dict) else {}  # JSON, but maybe not an object
        token = fields.get("token") or fields.get("access_token")
        if isinstance(token, str):
            secrets.remember(token)
        refresh = fields.get("refresh_token")
        if isinstance(refresh, str):
            secrets.remember(refresh)
        if not token:
            raise AuthError(f"{self.registry}: the token server {realm_host} answered without "
                            "a token", registry=self.registry)
        try:
            expires_in = float(fields.get("expires_in") or 60)
        except (TypeError, ValueError):
            expires_in = 60.0
        return str(token), expires_in

    async def _ask(self, realm: str, realm_host: str, scopes: list[str]
                   ) -> tuple[int, bytes, int]:
        """One token request: the OAuth2 POST form for an identity token (falling back to
        GET when the realm has no POST endpoint), else GET with Basic or anonymously."""
        cred = self.credential
        service = self.params.get("service", "")
        note = f"token from {realm_host} for {' '.join(scopes) or '(no scope)'}"
        if cred and cred.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": cred.identity_token,
                    "service": service, "client_id": "mirror", "scope": " ".join(scopes)}
            status, body, tries = await self._answer(
                await self.transport.send("POST", realm, data=form, note=note,
                                          registry=self.registry, kind="token"))
            if status not in (404, 405) or not cred.username:
                return status, body, tries
        q = [("service", service)] if service else []
        q += [("scope", s) for s in scopes]
        headers = {}
        if cred and cred.username:
            headers["Authorization"] = f"Basic {cred.basic}"
        return await self._answer(
            await self.transport.send("GET", realm, params=q, headers=headers, note=note,
                                      registry=self.registry, kind="token"))

    @staticmethod
    async def _answer(reply: Reply) -> tuple[int, bytes, int]:
        """The status, body and tries of a token server's answer (a body that breaks off: a
        TransferError, as a request that got no answer)."""
        if reply.body is not None:
            return reply.resp.status, reply.body, reply.tries
        async with reply.resp as resp:
            try:
                return resp.status, await read_body(resp, 1 << 20), reply.tries
            except (TimeoutError, aiohttp.ClientError) as e:
                raise TransferError(describe_exception(e), reply.tries) from None
