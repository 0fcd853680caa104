"""Retry policy for async invocations and event-source deliveries: pure arithmetic, time passed in.

Backoff is exponential with *full jitter* (AWS Architecture Blog, "Exponential Backoff And
Jitter"): the wait before retry ``n`` is uniform in [0, min(cap, base * 2**(n-1))). Full jitter
spreads a burst of failures over the whole window instead of retrying them in lock-step.

Worked example with base 1 s, cap 300 s: after attempt 1 fails the wait is rand * 1 s; after
attempt 2, rand * 2 s; after attempt 5, rand * 16 s; from attempt 10 on, rand * 300 s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_RETRIES = 2
DEFAULT_MAX_EVENT_AGE_S = 6 * 3600


def backoff_s(attempt: int, *, base_s: float = 1.0, cap_s: float = 300.0, rand: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based); ``rand`` in [0, 1)."""
    if attempt < 1:
        attempt = 1
    # 2**63 overflows nothing in Python, but keep the exponent small so the float stays finite.
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt - 1, 62))
    return ceiling * min(max(rand, 0.0), 1.0)


@dataclass(frozen=True)
class RetryPolicy:
    """From the function's ``[async]`` table. ``max_retries`` = retries after the first attempt."""

    max_retries: int = DEFAULT_MAX_RETRIES
    max_event_age_s: float = DEFAULT_MAX_EVENT_AGE_S
    on_success: str | None = None
    on_failure: str | None = None

    @classmethod
    def from_config(cls, async_: Mapping[str, Any] | None) -> RetryPolicy:
        a = async_ or {}
        return cls(max_retries=int(a.get("max_retries", DEFAULT_MAX_RETRIES)),
                   max_event_age_s=float(a.get("max_event_age_s", DEFAULT_MAX_EVENT_AGE_S)),
                   on_success=a.get("on_success") or None,
                   on_failure=a.get("on_failure") or None)

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1


@dataclass(frozen=True)
class Decision:
    """What to do after a failed attempt: retry at ``retry_at`` or give up (dead-letter)."""

    retry_at: float | None
    reason: str  # "retry" | "retries_exhausted" | "event_expired"


def after_failure(policy: RetryPolicy, *, attempt: int, created_at: float, now: float,
                  rand: float, base_s: float = 1.0, cap_s: float = 300.0) -> Decision:
    """Decide after failed attempt ``attempt`` of an event created at ``created_at``.

    A retry that would start after the event's maximum age is not scheduled: with
    max_event_age_s = 60, an event created at t=0 whose attempt 2 fails at t=59.5 with a drawn wait
    of 1.2 s would retry at 60.7 > 60, so it is dead-lettered now instead of later.
    """
    if attempt >= policy.max_attempts:
        return Decision(None, "retries_exhausted")
    at = now + backoff_s(attempt, base_s=base_s, cap_s=cap_s, rand=rand)
    if at - created_at > policy.max_event_age_s:
        return Decision(None, "event_expired")
    return Decision(at, "retry")


def expired(policy: RetryPolicy, *, created_at: float, now: float) -> bool:
    return now - created_at > policy.max_event_age_s
