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

from mirror.errors import AuthError
from mirror.registry.credentials import Credential

if TYPE_CHECKING:
    from mirror.registry.transport import Transport

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

    async def challenge(self, challenges: list[str], scopes: tuple[str, ...]) -> None:
        """After a 401: adopt the challenge and drop the cached token, or say why we can't."""
        before = self.scheme
        self.observe(challenges)
        if self.scheme is None:
            raise AuthError(f"{self.registry}: 401 without a usable WWW-Authenticate challenge",
                            registry=self.registry, status=401)
        if self.scheme == "basic" and not (self.credential and self.credential.username):
            raise AuthError(
                f"{self.registry}: authentication required",
                registry=self.registry, status=401,
                hint=f"no credentials found for {self.registry}: run `docker login "
                f"{self.registry}`, pass --authfile, or add it under `registries:` in images.yaml",
            )
        if self.scheme == "bearer":
            extra = self.params.get("scope")
            key = frozenset(scopes)
            self._tokens.pop(key, None)
            if extra and before == "bearer":
                # the registry asked for a scope we did not have; merge it (ggcr does the same)
                self._tokens.pop(frozenset((*scopes, *extra.split(" "))), None)

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
            self._tokens[key] = (token, time.monotonic() + max(1.0, expires_in - 10.0))
            return token

    async def _fetch(self, scopes: list[str]) -> tuple[str, float]:
        cred = self.credential
        if cred and cred.registry_token:
            return cred.registry_token, 3600.0
        realm = self.params.get("realm")
        if not realm:
            raise AuthError(f"{self.registry}: Bearer challenge without a realm",
                            registry=self.registry)
        service = self.params.get("service", "")
        ep = await self.transport.endpoint(self.registry)
        session = self.transport.session
        if realm.startswith("http://") and ep.base_url.startswith("https://"):
            raise AuthError(f"{self.registry}: refusing a plain-HTTP token realm for an HTTPS "
                            "registry", registry=self.registry)
        try:
            if cred and cred.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": cred.identity_token,
                        "service": service, "client_id": "mirror", "scope": " ".join(scopes)}
                resp = await session.post(realm, data=form, ssl=ep.ssl)
            else:
                q = [("service", service)] if service else []
                q += [("scope", s) for s in scopes]
                headers = {}
                if cred and cred.username:
                    headers["Authorization"] = f"Basic {cred.basic}"
                resp = await session.get(realm, params=q, headers=headers, ssl=ep.ssl)
            async with resp:
                body = await resp.content.read(1 << 20)
                if resp.status in (401, 403):
                    who = f"the credentials from {cred.source}" if cred else "anonymous access"
                    raise AuthError(
                        f"{self.registry}: token server refused {who} (HTTP {resp.status})",
                        registry=self.registry, status=resp.status,
                        hint="check the username and password (or run `docker login` again)",
                    )
                if resp.status != 200:
                    raise AuthError(f"{self.registry}: token server answered HTTP {resp.status}",
                                    registry=self.registry, status=resp.status)
                doc = json.loads(body)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            raise AuthError(f"{self.registry}: token request failed: {type(e).__name__}",
                            registry=self.registry) from None
        token = doc.get("token") or doc.get("access_token")
        if not token:
            raise AuthError(f"{self.registry}: token server answered without a token",
                            registry=self.registry)
        try:
            expires_in = float(doc.get("expires_in") or 60)
        except (TypeError, ValueError):
            expires_in = 60.0
        return str(token), expires_in
