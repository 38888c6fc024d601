"""The settings and rules the transport follows: per-registry connection settings, the retry
policy (which statuses, how many tries, how long to wait), timeouts, Retry-After parsing, and
the per-registry gate that a Retry-After closes for every request at once."""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import random
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """Per-registry connection settings (images.yaml `registries:` and command-line flags)."""

    insecure: bool = False  # plain HTTP, or TLS without verification
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    max_concurrency: int | None = None  # requests in flight at most (None: the default)
    max_requests_per_run: int | None = None  # requests a run may make (None: no bound)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    tries: int = 5
    base_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 20.0
    max_retry_after: float = 300.0  # a registry asking for a longer pause is left for the next run
    max_elapsed: float = 900.0  # no retry starts later than this after a request's first try
    statuses: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
    # distribution error codes that mean "try again"; a 5xx naming only other codes (the
    # Debian registry's 500 MANIFEST_BLOB_UNKNOWN for a foreign layer, say) is an answer
    temporary_codes: frozenset[str] = frozenset(
        {"BLOB_UPLOAD_INVALID", "TOOMANYREQUESTS", "UNKNOWN", "UNAVAILABLE"})

    def delay(self, attempt: int) -> float:
        d = min(self.max_delay, self.base_delay * self.factor ** max(0, attempt - 1))
        return d * (0.5 + random.random() / 2)

    def retryable(self, status: int, codes: tuple[str, ...]) -> bool:
        """Worth another try: a status of the retry set, unless the body names error codes
        none of which is temporary (the registry said what is wrong; asking again changes
        nothing). A 429 is always retried."""
        if status not in self.statuses:
            return False
        return status == 429 or not codes or any(c in self.temporary_codes for c in codes)


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


# Where the retries of the current image are counted (set per image by the pull engine;
# tasks started for that image inherit it).
RETRY_COUNTER: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "mirror_retry_counter", default=None)


class HostGate:
    """Shared by every task talking to one registry: a Retry-After pauses all of them."""

    def __init__(self) -> None:
        self.paused_until = 0.0

    def pause(self, seconds: float) -> bool:
        """Pause; True when this lengthens the pause by more than a second (worth saying:
        many requests hitting the same 429 announce it once)."""
        until = time.monotonic() + seconds
        longer = until > self.paused_until + 1.0
        self.paused_until = max(self.paused_until, until)
        return longer

    async def wait(self) -> None:
        while (delay := self.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)
