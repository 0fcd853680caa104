"""``squall top``'s arithmetic: two scrapes of /metrics -> one row per function (pure).

Rates and the p99 come from the difference between two scrapes, so they describe the last
interval, not the platform's lifetime. Worked example: 120 invocations at t=10 and 150 at t=12
-> 15/s; the p99 is the histogram quantile of the bucket counts that grew in between (as
PromQL's ``histogram_quantile(0.99, rate(...))`` computes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, str]  # tenant, function


@dataclass
class Scrape:
    at: float
    invocations: dict[Key, float] = field(default_factory=dict)
    errors: dict[Key, float] = field(default_factory=dict)
    cold: dict[Key, float] = field(default_factory=dict)
    buckets: dict[Key, dict[float, float]] = field(default_factory=dict)
    instances: dict[Key, dict[str, float]] = field(default_factory=dict)
    queued: dict[Key, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    tenant: str
    function: str
    rate: float
    errors: float
    cold_starts: float
    p99_ms: float | None
    idle: int
    busy: int
    starting: int
    queued: int


def parse(text: str, at: float) -> Scrape:
    s = Scrape(at)
    for family in text_string_to_metric_families(text):
        for smp in family.samples:
            labels = smp.labels
            key = (labels.get("tenant", ""), labels.get("function", ""))
            if smp.name == "squall_invocations_total":
                s.invocations[key] = s.invocations.get(key, 0.0) + smp.value
                if labels.get("outcome") != "succeeded":
                    s.errors[key] = s.errors.get(key, 0.0) + smp.value
            elif smp.name == "squall_cold_starts_total":
                s.cold[key] = s.cold.get(key, 0.0) + smp.value
            elif smp.name == "squall_invocation_duration_seconds_bucket":
                le = float(labels["le"])
                b = s.buckets.setdefault(key, {})
                b[le] = b.get(le, 0.0) + smp.value
            elif smp.name == "squall_instances":
                st = s.instances.setdefault(key, {})
                st[labels["state"]] = st.get(labels["state"], 0.0) + smp.value
            elif smp.name == "squall_async_queue_depth" and labels.get("state") != "running":
                s.queued[key] = s.queued.get(key, 0.0) + smp.value
    return s


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Linear interpolation inside the bucket holding rank q (cumulative counts by ``le``).

    Example: le 0.001 -> 0, 0.0025 -> 90, 0.005 -> 100: rank 99 falls in (0.0025, 0.005], 9/10
    of the way from 90 to 100 -> 0.0025 + 0.9 * 0.0025 = 0.00475."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    rank = q * items[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # beyond the last finite bucket: its bound is all we know
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def rows(before: Scrape | None, now: Scrape) -> list[Row]:
    """One row per function seen now, busiest first. Without ``before``, totals since start
    (rate 0)."""
    span = (now.at - before.at) if before is not None else 0.0
    keys = set(now.invocations) | set(now.instances) | set(now.queued)
    out = []
    for key in keys:
        if not key[1]:
            continue

        def delta(d_now: dict[Key, float], d_before: dict[Key, float] | None,
                  _key: Key = key) -> float:
            return d_now.get(_key, 0.0) - (d_before.get(_key, 0.0) if d_before else 0.0)

        inv = delta(now.invocations, before.invocations if before else None)
        b_now = now.buckets.get(key, {})
        b_before = before.buckets.get(key, {}) if before else {}
        grown = {le: c - b_before.get(le, 0.0) for le, c in b_now.items()}
        p99 = quantile(0.99, grown)
        inst = now.instances.get(key, {})
        out.append(Row(key[0], key[1], inv / span if span > 0 else 0.0,
                       delta(now.errors, before.errors if before else None),
                       delta(now.cold, before.cold if before else None),
                       None if p99 is None else p99 * 1000.0, int(inst.get("idle", 0)),
                       int(inst.get("busy", 0)), int(inst.get("starting", 0)),
                       int(now.queued.get(key, 0))))
    return sorted(out, key=lambda r: (-r.rate, -(r.busy + r.idle), r.tenant, r.function))
