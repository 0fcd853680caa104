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
