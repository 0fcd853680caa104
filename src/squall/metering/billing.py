"""Billing arithmetic, as pure functions.

Worked example: a 128 MB function that ran 12.3 ms is billed 13 ms (rounded up to the whole
millisecond, as Lambda bills since 2020); GB-seconds = 13 / 1000 x 128 / 1024 = 0.001625.
At $0.0000166667 per GB-second and $0.20 per million requests, one million such invocations cost
1e6 x 0.001625 x 0.0000166667 + 0.20 = $0.0271 + $0.20 = $0.2271.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from squall.config import Prices


def billed_ms(duration_ms: float) -> int:
    """Rounded up to the whole millisecond; at least 1 ms for any invocation that ran."""
    return max(1, math.ceil(duration_ms - 1e-9))


def gb_seconds(billed: int, memory_mb: int) -> float:
    return billed / 1000.0 * memory_mb / 1024.0


def cost(invocations: int, gb_s: float, prices: Prices) -> float:
    return invocations / 1_000_000 * prices.per_million_requests + gb_s * prices.per_gb_second


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100); 0.0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarise(records: Iterable[dict[str, Any]], prices: Prices) -> list[dict[str, Any]]:
    """Per-function usage from invocation records (see store.invocations.for_usage)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["namespace"], r["function"]), []).append(r)
    out = []
    for (namespace, function), rows in sorted(groups.items()):
        durations = sorted(float(r["duration_ms"]) for r in rows)
        gbs = sum(float(r["gb_seconds"]) for r in rows)
        out.append({
            "name": function,
            "namespace": namespace,
            "invocations": len(rows),
            "errors": sum(1 for r in rows if r["status"] != "succeeded"),
            "cold_starts": sum(1 for r in rows if r["cold"]),
            "p50_ms": round(percentile(durations, 50), 3),
            "p99_ms": round(percentile(durations, 99), 3),
            "billed_ms": sum(int(r["billed_ms"]) for r in rows),
            "gb_seconds": round(gbs, 12),
            "cost": round(cost(len(rows), gbs, prices), 12),
        })
    return out


def by_tenant(functions: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-tenant totals of ``summarise``'s rows (cost is linear, so the sum of the functions'
    costs is the tenant's cost)."""
    totals: dict[str, dict[str, Any]] = {}
    for f in functions:
        t = totals.setdefault(f["namespace"], {"tenant": f["namespace"], "functions": 0,
                                               "invocations": 0, "errors": 0, "billed_ms": 0,
                                               "gb_seconds": 0.0, "cost": 0.0})
        t["functions"] += 1
        for k in ("invocations", "errors", "billed_ms", "gb_seconds", "cost"):
            t[k] += f[k]
    for t in totals.values():
        t["gb_seconds"] = round(t["gb_seconds"], 12)
        t["cost"] = round(t["cost"], 12)
    return [totals[k] for k in sorted(totals)]


def month_bounds(month: str) -> tuple[float, float]:
    """``2026-11`` -> (start, end) as UNIX times in UTC. Raises ValueError on anything else."""
    import datetime as dt

    year, _, mon = month.partition("-")
    if len(year) != 4 or len(mon) != 2 or not (year + mon).isdigit():
        raise ValueError(month)
    start = dt.datetime(int(year), int(mon), 1, tzinfo=dt.UTC)
    nxt = dt.datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=dt.UTC)
    return start.timestamp(), nxt.timestamp()
