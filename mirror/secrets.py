"""The secrets a run holds (passwords, tokens, base64 `auth` strings): whatever prints a line
(an error, a warning, the report) passes it through `redact()`, so a secret is never shown,
even when a registry or proxy echoes it back in an error message."""

from __future__ import annotations

import threading

_known: set[str] = set()
_lock = threading.Lock()
MIN_LENGTH = 4  # shorter strings would blank out ordinary words; nobody's secret is that short
SHOWN = "***"


def remember(*values: str) -> None:
    with _lock:
        _known.update(v for v in values if v and len(v) >= MIN_LENGTH)


def redact(text: str) -> str:
    if not _known or not text:
        return text
    for secret in held():
        if secret in text:
            text = text.replace(secret, SHOWN)
    return text


def held() -> list[str]:
    """The secrets the run holds, longest first."""
    with _lock:
        return sorted(_known, key=len, reverse=True)  # longest first: "user:pw" before "pw"


def redact_all(obj: object) -> object:
    """`redact()` over every string in a JSON-like structure (a report); `obj` itself when
    the run holds no secret (an anonymous pull's report of 400 images is 20,000 strings)."""
    if not _known:
        return obj
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_all(k): redact_all(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_all(v) for v in obj]
    return obj
