"""Reconnect backoff for connectors: exponential with full jitter, reset after a healthy session.

The delay for attempt n (0-based) is ``uniform(0, min(cap, base * 2**n))`` ("full jitter", AWS
architecture blog): with base 0.5 s and cap 30 s the ceilings run 0.5, 1, 2, 4, 8, 16, 30, 30 ...
so a broker that is down costs one connection attempt per ~15 s on average per trigger, and a
fleet of triggers that lost the same broker does not reconnect in lock-step.
"""

from __future__ import annotations

import random


def full_jitter_s(attempt: int, *, base_s: float, cap_s: float, rand: float) -> float:
    """Pure: the delay before retry ``attempt`` (0-based) given ``rand`` in [0, 1)."""
    ceiling = min(cap_s, base_s * float(2 ** min(attempt, 30)))
    return ceiling * rand


class Backoff:
    """Stateful wrapper: ``next_s()`` grows the delay, ``reset()`` after something worked."""

    def __init__(self, *, base_s: float = 0.5, cap_s: float = 30.0,
                 rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_s(self) -> float:
        delay = full_jitter_s(self.attempt, base_s=self.base_s, cap_s=self.cap_s,
                              rand=self._rng.random())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
