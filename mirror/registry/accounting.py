"""What a run's requests are counted and said as: the -v lines (every try, retry and wait),
the long Retry-After waits said without -v, the retries counted for the report, and per
registry its limiter, its requests by kind and its RateLimit headers (mirror.registry.ratelimit).
The base of mirror.registry.transport's Transport, whose `send` calls these.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import yarl

from mirror.registry.policy import RETRY_COUNTER, RetryPolicy
from mirror.registry.ratelimit import SMALL_REQUESTS, RegistryLimits, parse_ratelimit
from mirror.registry.session import SessionSetup, url_host

LONG_WAIT = 10.0  # a Retry-After pause this long is announced even without -v


def quiet(text: str) -> None:
    """What a Transport says a line with when nobody listens (no -v, no notices): nothing.
    `debug` being it is how the -v lines know they need not be made."""


def loggable(url: str) -> str:
    """SCHEME://HOST/PATH of a URL for -v and errors: the scheme (https, or plain http for a
    local or insecure registry) but never the query (presigned URLs carry signatures there)."""
    u = yarl.URL(url)
    host = url_host(u)
    port = f":{u.explicit_port}" if u.explicit_port else ""
    return f"{u.scheme}://{host}{port}{u.raw_path}" + ("?..." if u.raw_query_string else "")


class Accounting(SessionSetup):
    """Request accounting and -v logging of a Transport."""

    stalled: asyncio.Event
    debug: Callable[[str], None]
    notice: Callable[[str], None]
    policy: RetryPolicy
    retries: int
    limits: dict[str, RegistryLimits]

    def log_request(self, method: str, url: str, status: int | str, t0: float,
                    note: str | None = None) -> None:
        """One -v line per try: METHOD URL (or `note`) -> status or why it failed, time."""
        if self.debug is not quiet:
            ms = (time.monotonic() - t0) * 1000
            self.debug(f"{note or f'{method} {loggable(url)}'} -> {status} ({ms:.0f} ms)")

    def log_retry(self, method: str, url: str, why: str, attempt: int, delay: float) -> None:
        """`attempt` tries have been made; the next one starts after `delay` seconds."""
        shown = loggable(url) if "://" in url else url  # a URL, or what was asked
        self.debug(f"retry {method} {shown}: {why}; try {attempt + 1} of "
                   f"{self.policy.tries} in {delay:.1f} s")

    def announce_wait(self, url: str, seconds: float, status: int) -> None:
        """A registry's Retry-After: said without -v too when it is long."""
        u = yarl.URL(url)
        host = f"{u.host}:{u.explicit_port}" if u.explicit_port else str(u.host)
        line = f"{host} asks to wait {seconds:.0f} s (HTTP {status}); waiting"
        (self.notice if seconds >= LONG_WAIT else self.debug)(line)

    def limits_for(self, registry: str) -> RegistryLimits:
        """The registry's limiter and counts: `max_concurrency` requests in flight (default:
        SMALL_REQUESTS small ones beside `jobs` transfers, the connection pool's per-host
        bound), `max_requests_per_run` requests (its token server's among them)."""
        if registry not in self.limits:
            s = self._settings(registry)
            self.limits[registry] = RegistryLimits(
                registry, s.max_concurrency or self.per_host, s.max_requests_per_run,
                self.policy.max_retry_after, small=s.max_concurrency or SMALL_REQUESTS,
                bodies=s.max_concurrency, stalled=self.stalled.set, said=self.debug)
        return self.limits[registry]

    @property
    def per_host(self) -> int:
        """Requests in flight to one registry by default: small ones and transfers."""
        return SMALL_REQUESTS + self.jobs

    def requests_report(self) -> dict[str, dict[str, int]]:
        """The report's `requests`: per registry, the requests sent by kind."""
        return {r: dict(sorted(lim.counts.items())) for r, lim in sorted(self.limits.items())
                if lim.counts}

    def rate_limit_report(self) -> dict[str, dict[str, int | None]]:
        """The report's `rate_limit`: per registry that sent RateLimit headers, the last."""
        return {r: lim.rate.report() for r, lim in sorted(self.limits.items())
                if lim.rate is not None}

    def observe(self, registry: str, headers: Any, status: int) -> None:
        """An answer of `registry`: its RateLimit headers kept for the report, and said on a
        -v line the first time, when the requests left pass a low-water mark (each tenth of
        the limit, each hundredth below the reserve: ratelimit.mark) and with a 429 (the
        last said, when the 429 says none): a nightly over Docker Hub said every answer."""
        rate = parse_ratelimit(headers)
        news = rate is not None and self.limits_for(registry).observe(rate)
        if rate is None and status == 429 and registry in self.limits:
            rate = self.limits[registry].rate
        if rate is not None and (news or status == 429):
            self.debug(f"{registry} rate limit: {rate.line()}"
                       + ("; HTTP 429" if status == 429 else ""))

    def count_retry(self) -> None:
        """One more retry: for the run, and for the image being worked on."""
        self.retries += 1
        counter = RETRY_COUNTER.get()
        if counter is not None:
            counter[0] += 1
