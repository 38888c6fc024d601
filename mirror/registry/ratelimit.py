"""Each registry's share of a run: its requests counted by kind, the rate limit it announces
(`RateLimit-*` headers), and the limiter every request to it passes (concurrency that halves
on a 429, a 5xx, a try with no answer or a low `RateLimit-Remaining` and grows back after
successes, waits for a window
with no request left, and keeps to the run's request budget). One `RegistryLimits` per registry, held by the transport; other registries never wait
for it."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import yarl

from mirror.aio import more_slots
from mirror.errors import BudgetSpent

LOW_REMAINING = 0.1  # RateLimit-Remaining under this share of the limit slows the registry
# Small requests (tokens, tag HEADs and lists, manifests, referrers, blobs under SMALL_BLOB)
# wait on round trips, not bandwidth: this many of them per registry at once (beside -j
# transfers) to start with, made data set S as fast at 50 ms round trips as -j 16; then more,
# half as many again each time, while a window of that many answers comes in faster than
# the best before (GROWTH), up to SMALL_MOST (docs/BENCHMARKS.md)
SMALL_REQUESTS = 16
SMALL_MOST = 64
GROWTH = 1.1
SMALL_BLOB = 1 << 20  # a blob under this size is a small request, at or over it a transfer
# a request as a refusal names it: made only when one is refused (every request has one)
Label = str | Callable[[], str]

# set in the tasks that fetch the blobs of images a pull admitted to a registry's request
# budget (RegistryLimits.admit): their requests draw on what was promised to them
ADMITTED: contextvars.ContextVar[bool] = contextvars.ContextVar("ADMITTED", default=False)

_MANIFEST = re.compile(r"^/v2/.+/manifests/[^/]+$")
_BLOB = re.compile(r"^/v2/.+/blobs/[^/]+:[0-9a-fA-F]+$")
_UPLOAD = re.compile(r"^/v2/.+/blobs/uploads/")
_TAGS = re.compile(r"^/v2/.+/tags/list$")
_REFERRERS = re.compile(r"^/v2/.+/referrers/[^/]+$")



class BlobSlots:
    """Where a blob to or from one registry waits for its turn: one under SMALL_BLOB waits on
    round trips, beside the transfers, as many at once as the registry's small requests
    (growing with them: `RegistryLimits.small_slots`, made when first needed); one at or over
    it on bandwidth, `transfers` at once; a registry that sets `max_concurrency` has that
    many under way at once, whatever their size. A pull's fetcher and a sync's push share it
    (mirror.fetch, mirror.pushblobs): a source that stops answering (its requests spent, 429s
    through a request's tries) has given the images that need only small blobs already."""

    __slots__ = ("_lim", "_small", "transfers")

    def __init__(self, lim: RegistryLimits, transfers: asyncio.Semaphore) -> None:
        self._lim, self.transfers = lim, transfers
        self._small: asyncio.Semaphore | None = None

    def __call__(self, size: int) -> asyncio.Semaphore:
        if self._lim.bodies or size >= SMALL_BLOB:
            return self.transfers
        if self._small is None:
            self._small = self._lim.small_slots()
        return self._small

def request_kind(method: str, url: str) -> str:
    """What a request of the registry API asks for, by its path: `ping` (GET /v2/),
    `manifest GET` (HEAD, PUT, DELETE), `blob GET` (HEAD, DELETE), `upload` (every request of
    a blob upload: POST, PATCH, PUT, GET and DELETE of its session), `tags list`, `catalog`,
    `referrers`, else `other`. Tokens are counted by the token fetch itself (`token`)."""
    path = yarl.URL(url).path
    if path in ("/v2/", "/v2"):
        return "ping"
    if path == "/v2/_catalog":
        return "catalog"
    if _UPLOAD.search(path):
        return "upload"
    if _MANIFEST.search(path):
        return f"manifest {method}"
    if _BLOB.search(path):
        return f"blob {method}"
    if _TAGS.search(path):
        return "tags list"
    if _REFERRERS.search(path):
        return "referrers"
    return "other"


_NUMBER = re.compile(r"^\s*(\d+)\s*(?:;(.*))?$")
_PARAM = re.compile(r"(\w+)\s*=\s*\"?([^;,\"]*)\"?")


def _params(text: str) -> dict[str, str]:
    return {k.lower(): v.strip() for k, v in _PARAM.findall(text or "")}


def _number(value: str | None) -> tuple[int | None, dict[str, str]]:
    """`100;w=21600` (Docker Hub) or `100` (the IETF draft): the number and its parameters."""
    m = _NUMBER.match(value or "")
    if not m:
        return None, {}
    return int(m.group(1)), _params(m.group(2) or "")


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


@dataclass
class RateLimit:
    """What a registry last said of its rate limit: requests allowed per window, those left,
    the window (seconds) and when it resets (seconds from when it was said), each None when
    not said."""

    limit: int | None = None
    remaining: int | None = None
    window: int | None = None
    reset: int | None = None
    seen: float = 0.0  # time.monotonic() of the answer

    def report(self) -> dict[str, int | None]:
        return {"limit": self.limit, "remaining": self.remaining, "window": self.window,
                "reset": self.reset}

    def line(self) -> str:
        if self.limit is None:
            text = f"{self.remaining} requests left"
        else:
            text = f"{self.remaining} of {self.limit} requests left"
        if self.window is not None:
            text += f" per {self.window} s"
        if self.reset is not None:
            text += f", window resets in {self.reset} s"
        return text

    def resets_in(self) -> float | None:
        """Seconds until the window resets, from now (the window itself when no reset was
        said: the worst case)."""
        after = self.reset if self.reset is not None else self.window
        if after is None:
            return None
        return max(0.0, after - (time.monotonic() - self.seen))


def parse_ratelimit(headers: Mapping[str, str]) -> RateLimit | None:
    """The rate limit an answer announces: Docker Hub's `RateLimit-Limit: 100;w=21600` and
    `RateLimit-Remaining: 76;w=21600`, the IETF draft's `RateLimit-Limit`,
    `RateLimit-Remaining`, `RateLimit-Reset` (seconds) and `RateLimit-Policy: 100;w=3600`,
    and its later form `RateLimit: "default";r=76;t=30` with `RateLimit-Policy:
    "default";q=100;w=3600`. None when it announces none."""
    limit, lp = _number(headers.get("RateLimit-Limit"))
    remaining, rp = _number(headers.get("RateLimit-Remaining"))
    policy_text = headers.get("RateLimit-Policy") or ""
    policy = _params(policy_text)
    combined = _params(headers.get("RateLimit") or "")
    if limit is None:
        limit = _number(policy_text)[0] or _int(policy.get("q"))
    if remaining is None:
        remaining = _int(combined.get("r"))
    if limit is None and remaining is None:
        return None
    window = _int(lp.get("w") or rp.get("w") or policy.get("w"))
    reset = _int((headers.get("RateLimit-Reset") or "").strip()) or _int(combined.get("t"))
    return RateLimit(limit, remaining, window, reset, time.monotonic())


def mark(remaining: int | None, limit: int) -> int | None:
    """The low-water mark `remaining` of `limit` requests is at, in percent of the limit:
    each 10 above the reserve (LOW_REMAINING of it, where the registry is slowed), each 1
    below, -1 for none left; the -v line says the rate limit when it moves."""
    if remaining is None or not limit:
        return None if remaining is None else 0 if remaining else -1
    if remaining == 0:
        return -1
    share = remaining * 100 // limit
    return share if share < LOW_REMAINING * 100 else share - share % 10


@dataclass
class RegistryLimits:
    """One registry's limiter and counts. `ceiling`: requests in flight at most (its
    `max_concurrency`, else the run's default); `budget`: requests this run may make
    (`max_requests_per_run`, None: no bound); `max_wait`: the longest the run waits for a
    window that has no request left to reset; `small`: the small requests (images resolved,
    small blobs fetched) to have in flight at once, of the `ceiling`; `bodies`: when the
    registry sets `max_concurrency`, the blob downloads under way at once (a request holds
    its limiter slot until its answer starts; a download's body takes longer)."""

    registry: str
    ceiling: int
    budget: int | None = None
    max_wait: float = 300.0
    small: int = SMALL_REQUESTS
    bodies: int | None = None  # max_concurrency: blob downloads under way at once, at most
    cap: int = 0  # requests in flight allowed now
    in_flight: int = 0
    streak: int = 0  # answers without a 429 since the cap last changed
    counts: dict[str, int] = field(default_factory=dict)
    rate: RateLimit | None = None
    held: str | None = None  # why the run sends it nothing more (hold)
    stalled: Callable[[], None] | None = None  # called when a request waits for it
    # of the budget: requests promised to the blobs of admitted images (admit), not spent yet
    promised: int = 0
    closed: str | None = None  # why no more images are admitted (one's blobs did not fit)
    refused: int | None = None  # the blob requests of the first image admit refused
    # whether `small` may still grow (not with max_concurrency, nor after a slow-down), and
    # what is told of each growth: the slots that hold small requests (small_slots:
    # planning's, the fetcher's), and a -v line
    grows: bool = True
    grown: list[Callable[[int], None]] = field(default_factory=list)
    said: Callable[[str], None] | None = None
    _window: tuple[float, int] = (0.0, 0)  # since when, how many answers
    _said: int | None = None  # the low-water mark of the rate limit said last (`mark`)
    _most: int = 0  # the most requests left seen: the limit, for a registry that says none
    _best: float = 0.0  # answers per second, the best window's
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cap = self.ceiling
        self.grows = self.grows and self.bodies is None

    def small_slots(self) -> asyncio.Semaphore:
        """Slots for work that is small requests to this registry (planning's resolution of
        its images, the fetcher's small blobs): as many as its small requests at once, and as
        many more each time the limiter grows them (`grown`)."""
        sem = asyncio.Semaphore(self.small)
        self.grown.append(functools.partial(more_slots, sem))
        return sem

    def count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.promised and ADMITTED.get():
            self.promised -= 1

    def admit(self, requests: int) -> None:
        """An image resolved whose blobs need `requests` more: promise them from the budget,
        or refuse it (raise BudgetSpent) when what is left does not cover them; then no
        later image is admitted either (they wait, in order, for the next run)."""
        if self.budget is None:
            return
        left = self.budget - self.made - self.promised
        if self.closed is None and requests <= left:
            self.promised += requests
            return
        self.closed = self.closed or self.spoken_for()
        if self.refused is None:
            self.refused = requests
        raise self.exhausted(
            "fetching its blobs",
            f"its {requests} blob(s) need {requests} requests, {max(0, left)} of "
            f"max_requests_per_run: {self.budget} left for them")

    @property
    def made(self) -> int:
        return sum(self.counts.values())

    def check(self, what: Label) -> None:
        """Refuse a request the run may not make (raise BudgetSpent): the budget spent, or
        a window with no request left that resets later than the run waits. `what` names
        the request in the refusal (a callable: formatted only for a refusal)."""
        if self.held is not None:
            raise self.exhausted(what, self.held)
        if self.budget is not None and not ADMITTED.get() and (
                self.closed is not None or self.promised and
                self.made + self.promised >= self.budget):
            raise self.exhausted(what, self.closed or self.spoken_for())
        if self.budget is not None and self.made >= self.budget:
            left = f"resets with the next run (max_requests_per_run: {self.budget})"
            raise self.exhausted(what, f"0 requests left, {left}")
        if self.rate is not None and self.rate.remaining == 0:
            after = self.rate.resets_in()
            if after is None or after > self.max_wait:
                raise self.exhausted(what, self.rate.line())

    def spoken_for(self) -> str:
        return (f"max_requests_per_run: {self.budget} is spent or promised to the images "
                "listed before this one; resets with the next run")

    def hold(self, why: str) -> None:
        """The registry will not answer this run (a Retry-After longer than the run waits,
        429s through all of a request's tries): it is left for the next run, as a window with
        no request left that resets too late."""
        if self.held is None and self.said is not None and self.rate is not None:
            self.said(f"{self.registry} rate limit: {self.rate.line()}; held: {why}")
        self.held = why
        for fut in list(self._waiters):  # each request waiting for a slot is refused now
            if not fut.done():
                fut.set_result(None)

    def hold_for(self, seconds: float, status: int) -> None:
        self.hold(f"asked to wait {seconds:.0f} s (HTTP {status}), longer than "
                  f"--max-wait {self.max_wait:g} s")

    def exhausted(self, what: Label, why: str) -> BudgetSpent:
        return BudgetSpent(
            f"rate limited by {self.registry}: {why}; this image waits for the next run "
            f"(at {what() if callable(what) else what})",
            registry=self.registry, status=429)

    async def acquire(self, what: Label) -> None:
        """A slot for one request (waiting while the registry's cap is used), after the
        window resets when the registry said none is left (refused when it resets later
        than `max_wait`)."""
        self.check(what)
        if self.stalled is not None and self.in_flight >= self.cap < self.ceiling:
            self.stalled()  # waiting because 429s (or errors) slowed it
        while self.in_flight >= self.cap:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)
        try:
            self.check(what)
        except BudgetSpent:  # refused after a wake-up: the slot it was woken for is free
            self._wake()
            raise
        self.in_flight += 1
        if self.rate is not None and self.rate.remaining == 0:
            after = self.rate.resets_in() or 0.0
            if after > 0:
                if self.stalled is not None:
                    self.stalled()
                await asyncio.sleep(after)

    def release(self, status: int | None) -> None:
        """The answer came (`status`; None: no answer, a reset or a timeout): a 429, a 5xx
        or no answer halves the cap (floor 1), a run of `ceiling` answers without one raises
        it by one, up to the ceiling (so a registry that said 429 gets its full concurrency
        back only slowly)."""
        self.in_flight -= 1
        if status is None or status == 429 or status >= 500:
            self.slow()
        elif status is not None:
            self.streak += 1
            if self.streak >= self.ceiling and self.cap < self.ceiling:
                self.cap += 1
                self.streak = 0
            if self.grows:
                self._measure()
        self._wake()

    def _measure(self) -> None:
        """One more answer of the window; at its end (`small` answers), more small
        requests at once if the window came in faster than the best one by GROWTH (on a
        long round trip more in flight is more answers a second; where the registry or
        the client's CPU is the limit it is not, and growing stops there)."""
        now = time.monotonic()
        since, n = self._window
        if not since:
            self._window = (now, 0)
            return
        n += 1
        if n < self.small:
            self._window = (since, n)
            return
        rate = n / max(now - since, 1e-6)
        self._window = (now, 0)
        if rate < self._best * GROWTH or self.small >= SMALL_MOST:
            self.grows = False  # as many at once as pays, for the rest of the run
            return
        before, self._best = self.small, rate
        more = min(SMALL_MOST, self.small + self.small // 2) - self.small
        self.small += more
        self.ceiling += more
        self.cap += more
        for tell in self.grown:
            tell(more)
        if self.said is not None:
            self.said(f"{self.registry}: {self.small} small requests at once (were {before}; "
                      f"{rate:.0f} answers a second)")

    def give_back(self) -> None:
        """A try given up before its answer (cancelled): its slot, and nothing learnt."""
        self.in_flight -= 1
        self._wake()

    def slow(self) -> None:
        self.cap = max(1, self.cap // 2)
        self.streak = 0
        self.grows = False

    def observe(self, rate: RateLimit) -> bool:
        """An answer's RateLimit headers: kept; few requests left slow the registry. Whether
        they are news worth a -v line: the registry's first, or its requests left past
        another low-water mark (`mark`)."""
        self.rate = rate
        if rate.remaining is not None and rate.limit and \
                rate.remaining < rate.limit * LOW_REMAINING and self.cap > 1:
            self.slow()
        if rate.remaining is not None:
            self._most = max(self._most, rate.remaining)
        level = mark(rate.remaining, rate.limit or self._most)
        news = level != self._said
        self._said = level
        return news

    def _wake(self) -> None:
        free = self.cap - self.in_flight
        for fut in list(self._waiters):
            if free <= 0:
                break
            if not fut.done():
                fut.set_result(None)
                free -= 1
