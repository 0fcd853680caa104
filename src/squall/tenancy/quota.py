"""Per-tenant quotas on the invocation path: a token bucket for the rate and a counter for
concurrent executions. Decisions are pure functions of (state, limit, now); ``Quotas`` holds the
state and is called by the invoker before and after every invocation.

The bucket holds up to ``burst`` tokens (one second's worth, at least 1) and refills at ``rate``
tokens per second. Worked example, rate 10/s: a full bucket holds 10; 10 requests at t=0 empty
it; an 11th at t=0.05 finds 0.5 tokens and is refused with Retry-After ceil(0.5 / 10) = 1 s; at
t=0.1 one token is back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from squall.errors import TooManyRequests
from squall.tenancy.model import TenantLimits

if TYPE_CHECKING:
    from squall.tokens import SharedLimits, Slots


@dataclass
class Bucket:
    tokens: float
    at: float


def take(bucket: Bucket | None, rate: float, now: float) -> tuple[bool, Bucket, float]:
    """Try to take one token. Returns (allowed, new state, seconds until a token is back)."""
    burst = max(1.0, rate)
    if bucket is None:
        bucket = Bucket(burst, now)
    tokens = min(burst, bucket.tokens + max(0.0, now - bucket.at) * rate)
    if tokens >= 1.0:
        return True, Bucket(tokens - 1.0, now), 0.0
    return False, Bucket(tokens, now), (1.0 - tokens) / rate


class Refusals:
    """Paces one tenant's quota refusals: up to ``rate`` a second are answered at once, the
    rest wait their turn (at most ``max_wait_s``). A refusal costs the gateway nearly what a
    warm invocation does (the request read, parsed and answered), so a tenant whose clients
    retry at once, far past its quota, kept one core busy answering 429s, and every other
    tenant's requests waited behind them (``make bench``: a quiet tenant's p50 went from 0.5 to
    13 ms). Its clients wait for their answers, so they send no faster than the refusals go
    out; a client that waits for Retry-After (1 s) sees no difference. Per process: what is
    protected is the event loop that answers them."""

    def __init__(self, rate: float, max_wait_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._next: dict[str, float] = {}  # when each tenant's next refusal may be answered

    def wait_s(self, tenant: str) -> float:
        """How long to hold the refusal being answered now (0 when pacing is off)."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        at = min(max(now, self._next.get(tenant, now)), now + self.max_wait_s)
        self._next[tenant] = at + 1.0 / self.rate
        if len(self._next) > 1024:  # forget the tenants with nothing pending
            self._next = {t: x for t, x in self._next.items() if x > now}
        return at - now


class Quotas:
    """``enter(tenant)`` before an invocation runs (raises TooManyRequests with the limit's code),
    ``leave(tenant)`` after it, always paired."""

    def __init__(self, limits: Callable[[str], TenantLimits],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}
        self.in_flight: dict[str, int] = {}
        # --workers > 1: concurrency and rate across the workers (squall.tokens)
        self.shared: SharedLimits | None = None
        self._held: dict[str, Slots] = {}  # the tenants whose tokens this process takes
        self.refusals = Refusals(0.0)  # the server's paces them (settings.refusals_per_s)

    def enter(self, tenant: str) -> None:
        lim = self._limits(tenant)
        running = self.in_flight.get(tenant, 0)
        token = None
        if lim.max_concurrency is not None:
            if self.shared is None:
                full = running >= lim.max_concurrency
            else:  # every worker's executions count: a token each (squall.tokens)
                token = self._held[tenant] = self.shared.slots("tenant", tenant,
                                                               lim.max_concurrency)
                full = not token.take()
            if full:
                raise TooManyRequests(
                    f"tenant {tenant!r} is at its limit of {lim.max_concurrency} concurrent "
                    f"executions; retry later or raise it with `squall tenant update "
                    f"--max-concurrency`", retry_after_s=1, code="tenant_concurrency_exceeded")
        if lim.rate is not None:
            ok, wait = self._take(tenant, lim.rate)
            if not ok:
                if token is not None:
                    token.give()
                raise TooManyRequests(
                    f"tenant {tenant!r} is over its rate of {lim.rate:g} invocations per "
                    f"second", retry_after_s=max(1, math.ceil(wait)), code="rate_limited")
        self.in_flight[tenant] = running + 1

    def _take(self, tenant: str, rate: float) -> tuple[bool, float]:
        """One token of the tenant's bucket: this process's, or the one every worker shares."""
        if self.shared is None:
            ok, self._buckets[tenant], wait = take(self._buckets.get(tenant), rate,
                                                   self._clock())
            return ok, wait
        bucket = self.shared.bucket(tenant)
        bucket.lock()
        try:
            ok, state, wait = take(bucket.read(), rate, self._clock())
            bucket.write(state)
        finally:
            bucket.unlock()
        return ok, wait

    def leave(self, tenant: str) -> None:
        token = self._held.get(tenant)
        if token is not None and token.mine:
            token.give()
        left = self.in_flight.get(tenant, 1) - 1
        if left > 0:
            self.in_flight[tenant] = left
        else:
            self.in_flight.pop(tenant, None)
