"""The console's charts: a function's invocation records -> one value per time bucket (pure).

Per bucket: invocations, errors (any status but succeeded), cold starts, p50 and p99 run time
(nearest rank, as ``squall.metering.billing`` computes the usage page's percentiles; None for an
empty bucket, so a chart shows a gap rather than a fake 0 ms), and concurrency: the most
invocations running at the same moment inside the bucket.

Worked example of the concurrency, with 10 s buckets: A runs from 2 s to 14 s and B from 5 s to
7 s. In [0, 10) both run between 5 and 7 -> 2; in [10, 20) nothing starts, but A is still
running when the bucket opens -> 1. An invocation that ends exactly when another starts does not
overlap it (ends are counted before starts at the same instant).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from squall.errors import BadRequest
from squall.metering.billing import percentile

# Bucket widths people read easily; the default is the finest that keeps a chart at most
# TARGET_BUCKETS wide. Worked example: the last hour (3600 s) / 30 s = 120 buckets -> 30 s.
STEPS = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 10800, 21600, 86400)
TARGET_BUCKETS = 120
MAX_BUCKETS = 1500


@dataclass(frozen=True)
class Window:
    """Buckets of ``step`` seconds from ``start`` (aligned to the step) to ``end``."""

    start: float
    end: float
    step: int

    @property
    def buckets(self) -> int:
        return round((self.end - self.start) / self.step)

    def index(self, t: float) -> int:
        """The bucket holding time ``t``, clamped to the window."""
        return min(self.buckets - 1, max(0, int((t - self.start) // self.step)))


def choose_window(since: float, now: float, step: int | None = None) -> Window:
    """The window from ``since`` to ``now``. ``step``: a width asked for (seconds), or None for
    the default. Too many buckets is a 400 ``invalid_query`` rather than a huge answer."""
    span = max(1.0, now - since)
    if step is None:
        # "1h" is parsed a moment before ``now`` is read: a span a hair over the hour still
        # gets the hour's step, hence the one bucket of slack.
        # Past the largest step (a window of months), whole days, as many as keep the target.
        step = next((s for s in STEPS if span / s <= TARGET_BUCKETS + 1),
                    math.ceil(span / TARGET_BUCKETS / 86400) * 86400)
    elif span / step > MAX_BUCKETS:
        raise BadRequest(f"step={step} over {span:.0f} s makes more than {MAX_BUCKETS} buckets: "
                         f"use a larger step or a shorter since", code="invalid_query",
                         details={"parameter": "step"})
    start = math.floor(since / step) * step
    end = (math.floor(now / step) + 1) * step
    return Window(float(start), float(end), step)


def series(rows: Sequence[dict[str, Any]], window: Window) -> dict[str, Any]:
    """Rows (``start_ts``, ``duration_ms``, ``status``, ``cold``; any order) -> the series,
    each a list with one value per bucket, and ``t`` the start of each bucket (unix seconds)."""
    n = window.buckets
    invocations, errors, cold = [0] * n, [0] * n, [0] * n
    durations: list[list[float]] = [[] for _ in range(n)]
    for r in rows:
        i = window.index(float(r["start_ts"]))
        invocations[i] += 1
        errors[i] += r["status"] != "succeeded"
        cold[i] += bool(r["cold"])
        durations[i].append(float(r["duration_ms"]))
    p50: list[float | None] = []
    p99: list[float | None] = []
    for d in durations:
        d.sort()
        p50.append(round(percentile(d, 50), 3) if d else None)
        p99.append(round(percentile(d, 99), 3) if d else None)
    return {
        "t": [window.start + k * window.step for k in range(n)],
        "invocations": invocations, "errors": errors, "cold_starts": cold,
        "p50_ms": p50, "p99_ms": p99, "concurrency": peak_concurrency(rows, window),
    }


def peak_concurrency(rows: Sequence[dict[str, Any]], window: Window) -> list[int]:
    """The most invocations running at once in each bucket (a sweep over starts and ends)."""
    edges: list[tuple[float, int]] = []
    for r in rows:
        start = float(r["start_ts"])
        edges.append((start, 1))
        edges.append((start + float(r["duration_ms"]) / 1000.0, -1))
    edges.sort()  # at the same instant -1 sorts before +1: back-to-back is not concurrent
    peak = [0] * window.buckets
    running, filled = 0, -1
    for t, delta in edges:
        i = window.index(t)
        # Buckets the sweep crossed without an edge held the level of their opening.
        for k in range(filled + 1, i + 1):
            peak[k] = running
        filled = max(filled, i)
        running += delta
        peak[i] = max(peak[i], running)
    for k in range(filled + 1, window.buckets):
        peak[k] = running
    return peak
