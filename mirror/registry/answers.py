"""What a registry's error answer means: the typed error (and so the exit code), named by
registry, repository and what was asked, with the registry's own error code and message, and
the hint that fits (credentials rejected, or access denied to an account whose credentials
were accepted; not found; rate-limited, and for how long)."""

from __future__ import annotations

import json
from typing import TypedDict

import aiohttp

from mirror.errors import AuthError, NotFound, RateLimited, RegistryError
from mirror.registry.auth import action_word, parse_challenges
from mirror.registry.credentials import Credential
from mirror.registry.policy import parse_retry_after


class _Answer(TypedDict):
    """What every error made from an answer carries (RegistryError's keyword arguments)."""

    registry: str
    repository: str
    status: int
    codes: tuple[str, ...]


def where(registry: str, repository: str) -> str:
    return f"{registry}/{repository}" if repository else registry


def error_codes(body: bytes) -> tuple[tuple[str, ...], str]:
    """The distribution spec's `errors` (codes, and their messages joined), or the body's
    first line when it is not that JSON."""
    try:
        doc = json.loads(body)
        errs = doc.get("errors") or []
        codes = tuple(str(e.get("code", "")) for e in errs if isinstance(e, dict))
        msgs = "; ".join(str(e.get("message", "")) for e in errs if isinstance(e, dict))
        return codes, msgs
    except (ValueError, AttributeError):
        text = body.decode("utf-8", "replace").strip().splitlines()
        return (), (text[0][:200] if text else "")


def error_for(resp: aiohttp.ClientResponse, body: bytes, registry: str, repository: str,
              what: str, *, tries: int, actions: str, credential: Credential | None,
              login_hint: str, max_retry_after: float) -> RegistryError:
    codes, message = error_codes(body)
    status = resp.status
    detail = f"HTTP {status}"
    if codes:
        detail += " " + ",".join(codes)
    if message:
        detail += f": {message}"
    if tries > 1:
        detail += f" (after {tries} tries)"
    at = where(registry, repository)
    text = f"{at}: {what}: {detail}" if what else f"{at}: {detail}"
    kw: _Answer = {"registry": registry, "repository": repository, "status": status,
                   "codes": codes}
    if status in (401, 403):
        cred = credential
        challenges = parse_challenges(resp.headers.getall("WWW-Authenticate", []))
        scope_refused = any(p.get("error") == "insufficient_scope" for _, p in challenges)
        if cred and (status == 403 or "DENIED" in codes or scope_refused):
            # the credentials were accepted; this account may not do this here
            action = action_word(actions)
            return AuthError(
                f"{at}: {what or 'request'}: access denied: {registry} does not let "
                f"the account from {cred.source} {action} {repository or registry} "
                f"({detail})",
                hint=f"ask the administrators of {registry} for {action} rights on "
                f"{repository or registry} for that account (its username and password "
                "were accepted)", **kw)
        if status == 401 and cred:
            return AuthError(
                f"{at}: {what or 'request'}: the credentials from {cred.source} were "
                f"rejected ({detail})",
                hint=f"check the username and password for {registry} in {cred.source}",
                **kw)
        if status == 401:
            return AuthError(text, hint=f"no credentials found for {registry}: {login_hint}",
                             **kw)
        return AuthError(text, hint=f"anonymous access is refused: {login_hint}", **kw)
    if status == 404:
        return NotFound(text, **kw)
    if status == 429:
        ra = resp.headers.get("Retry-After")
        return RateLimited(text, hint=retry_after_hint(ra, max_retry_after) if ra else
                           "authenticate to get a higher quota, or run later", **kw)
    if status == 503 and resp.headers.get("Retry-After"):
        return RateLimited(text, hint="the registry is overloaded; run later", **kw)
    return RegistryError(text, **kw)


def retry_after_hint(value: str, cap: float) -> str:
    seconds = parse_retry_after(value)
    if seconds is None:
        return f"the registry asked to retry after {value!r}; run later"
    longer = (f", longer than the {cap:.0f} seconds mirror waits at most"
              if seconds > cap else "")
    return f"the registry asked to retry after {seconds:.0f} seconds{longer}; run later"
