"""Billing arithmetic as pure functions: tables of known durations."""

from __future__ import annotations

import pytest

from squall.config import Prices
from squall.metering.billing import billed_ms, cost, gb_seconds, percentile, summarise


@pytest.mark.parametrize("duration, billed", [
    (0.01, 1), (1.0, 1), (1.0001, 2), (12.3, 13), (100.0, 100), (999.5, 1000)])
def test_billed_ms_rounds_up_to_the_millisecond(duration: float, billed: int) -> None:
    assert billed_ms(duration) == billed


@pytest.mark.parametrize("billed, memory, expected", [
    (13, 128, 0.001625), (1000, 1024, 1.0), (100, 512, 0.05), (1, 10240, 0.01)])
def test_gb_seconds(billed: int, memory: int, expected: float) -> None:
    assert gb_seconds(billed, memory) == pytest.approx(expected)


def test_cost_of_a_million_small_invocations() -> None:
    gbs = 1_000_000 * gb_seconds(13, 128)
    # 1,625 GB-s x $0.0000166667 = $0.02708, plus $0.20 per million requests
    assert gbs == pytest.approx(1625.0)
    assert cost(1_000_000, gbs, Prices()) == pytest.approx(0.02708 + 0.20, abs=1e-5)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    assert percentile([], 50) == 0.0 and percentile([7.0], 99) == 7.0


def test_summarise_groups_per_function() -> None:
    rows = [
        {"namespace": "default", "function": "a", "duration_ms": 10.0, "billed_ms": 10,
         "gb_seconds": 0.00125, "status": "succeeded", "cold": 1},
        {"namespace": "default", "function": "a", "duration_ms": 30.0, "billed_ms": 30,
         "gb_seconds": 0.00375, "status": "failed", "cold": 0},
        {"namespace": "default", "function": "b", "duration_ms": 5.0, "billed_ms": 5,
         "gb_seconds": 0.000625, "status": "timeout", "cold": 1},
    ]
    out = {r["name"]: r for r in summarise(rows, Prices())}
    assert out["a"]["invocations"] == 2 and out["a"]["errors"] == 1
    assert out["a"]["cold_starts"] == 1 and out["a"]["billed_ms"] == 40
    assert out["a"]["gb_seconds"] == pytest.approx(0.005)
    assert out["a"]["p99_ms"] == 30.0 and out["a"]["p50_ms"] == 10.0
    assert out["b"]["errors"] == 1
