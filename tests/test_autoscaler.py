"""The autoscaler decision, driven by a fake clock through tables of scenarios."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from squall.scaling import (
    ConcurrencyWindow,
    ScalingSpec,
    ScalingState,
    WindowStats,
    decide,
)

BASE = ScalingSpec(target_concurrency_per_instance=1, utilisation=0.7, min_instances=0,
                   max_instances=None, scale_to_zero_grace_s=300.0)


@dataclass(frozen=True)
class Step:
    """One decision: at time t the platform saw these averages and this many ready instances."""

    t: float
    stable: float
    panic: float
    ready: int
    desired: int
    rule: str                      # a word or phrase the reason must contain
    panic_mode: bool = False
    last_request_at: float | None = None  # None: "a request is in flight now" (t)


SCENARIOS: dict[str, tuple[ScalingSpec, list[Step]]] = {
    # 4.2 / 0.7 = 6
    "steady load": (BASE, [
        Step(0, 4.2, 4.2, 6, 6, "stable avg 4.2 / (1 x 0.7) -> 6"),
        Step(2, 4.2, 4.0, 6, 6, "stable"),
    ]),
    # concurrency 10 per instance at 0.7 -> 7 per instance; 70 in flight -> 10
    "per-instance concurrency": (replace(BASE, target_concurrency_per_instance=10), [
        Step(0, 70.0, 70.0, 10, 10, "stable avg 70.0 / (10 x 0.7) -> 10"),
    ]),
    # panic window 14 -> 20 wanted, 20 / 6 = 3.3 >= 2 -> panic
    "spike -> panic": (BASE, [
        Step(0, 4.2, 4.2, 6, 6, "stable"),
        Step(2, 5.0, 14.0, 6, 20, "panic", panic_mode=True),
    ]),
    # once in panic, a lower panic-window count does not scale down for a stable window
    "panic hold": (BASE, [
        Step(0, 5.0, 14.0, 6, 20, "panic", panic_mode=True),
        Step(10, 6.0, 7.0, 20, 20, "panic hold", panic_mode=True),
        Step(59, 6.0, 7.0, 20, 20, "panic hold", panic_mode=True),
        # 60 s after the last spike the stable window decides again: 6 / 0.7 -> 9
        Step(60, 6.0, 7.0, 20, 9, "stable avg 6.0", panic_mode=False),
    ]),
    # a second spike inside the panic raises the held count, a lower one never lowers it
    "panic only goes up": (BASE, [
        Step(0, 5.0, 14.0, 6, 20, "panic", panic_mode=True),
        Step(5, 5.0, 28.0, 10, 40, "panic", panic_mode=True),
        Step(8, 5.0, 21.0, 10, 40, "never scales down", panic_mode=True),
    ]),
    # from zero, 2 in flight in the panic window -> 3 wanted / 1 = 3 >= 2 -> panic
    "from zero panics": (BASE, [
        Step(0, 0.2, 2.0, 0, 3, "panic", panic_mode=True),
    ]),
    # desired 8 then 3: with a 30 s delay we stay at 8 until it has left the window
    "scale-down delay": (replace(BASE, scale_down_delay_s=30.0), [
        Step(0, 5.6, 5.6, 8, 8, "stable avg 5.6"),
        Step(10, 2.1, 2.1, 8, 8, "scale-down delay 30s holds 8"),
        Step(29, 2.1, 2.1, 8, 8, "scale-down delay"),
        Step(30, 2.1, 2.1, 8, 3, "stable avg 2.1 / (1 x 0.7) -> 3"),
    ]),
    "no scale-down delay": (BASE, [
        Step(0, 5.6, 5.6, 8, 8, "stable"),
        Step(1, 2.1, 2.1, 8, 3, "stable avg 2.1"),
    ]),
    "max clamp": (replace(BASE, max_instances=5), [
        Step(0, 5.6, 5.6, 5, 5, "max instances 5"),
    ]),
    "min clamp": (replace(BASE, min_instances=3), [
        Step(0, 0.7, 0.7, 3, 3, "min instances 3"),
    ]),
    # 700 in flight -> 1000 wanted (also a panic from 0), the burst cap allows +100 at once,
    # and 0.1 s later only ceil(100 x 0.1) = 10 more
    "burst cap": (BASE, [
        Step(0, 700.0, 700.0, 0, 100, "burst cap 100/s allows +100", panic_mode=True),
        Step(0.1, 700.0, 700.0, 100, 110, "burst cap 100/s allows +10", panic_mode=True),
        Step(1.1, 700.0, 700.0, 110, 210, "allows +100", panic_mode=True),
    ]),
    # scale-up rate 2: with 4 ready one decision asks for at most 8
    "scale-up rate": (replace(BASE, max_scale_up_rate=2.0), [
        Step(0, 14.0, 4.2, 4, 8, "stable avg 14.0 / (1 x 0.7) -> 8"),
    ]),
    # idle: keep one warm during the grace, zero after it
    "scale to zero after grace": (BASE, [
        Step(0, 0.7, 0.7, 1, 1, "stable", last_request_at=0.0),
        Step(100, 0.0, 0.0, 1, 1, "keep 1 warm: idle 100s", last_request_at=0.0),
        Step(299, 0.0, 0.0, 1, 1, "keep 1 warm", last_request_at=0.0),
        Step(300, 0.0, 0.0, 1, 0, "scale to zero: idle 300s >= grace 300s", last_request_at=0.0),
    ]),
    "scale to zero with shorter grace": (replace(BASE, scale_to_zero_grace_s=5.0), [
        Step(10, 0.0, 0.0, 2, 1, "keep 1 warm", last_request_at=8.0),
        Step(13, 0.0, 0.0, 1, 0, "scale to zero", last_request_at=8.0),
    ]),
    "min instances keeps warm": (replace(BASE, min_instances=2), [
        Step(0, 0.0, 0.0, 2, 2, "min instances 2", last_request_at=-1000.0),
        Step(10_000, 0.0, 0.0, 2, 2, "min instances 2", last_request_at=-1000.0),
    ]),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str) -> None:
    spec, steps = SCENARIOS[name]
    state = ScalingState()
    for step in steps:
        seen = step.t if step.last_request_at is None else step.last_request_at
        d = decide(spec, WindowStats(step.stable, step.panic, seen), step.ready, state, step.t)
        where = f"{name} at t={step.t}: {d.reason}"
        assert d.desired == step.desired, where
        assert step.rule in d.reason, where
        assert d.panic == step.panic_mode, where
        state = d.state


def test_decide_is_pure() -> None:
    state = ScalingState()
    stats = WindowStats(5.0, 14.0, 0.0)
    first = decide(BASE, stats, 6, state, 0.0)
    again = decide(BASE, stats, 6, state, 0.0)
    assert first == again
    assert state == ScalingState()


def test_never_invoked_instance_goes_to_zero() -> None:
    d = decide(BASE, WindowStats(0.0, 0.0, None), 1, ScalingState(), 5.0)
    assert d.desired == 0
    assert "never invoked" in d.reason


# ---- the concurrency window -----------------------------------------------------------------

@pytest.mark.parametrize(
    ("samples", "now", "window", "expected"),
    [
        # no samples: nothing observed
        ([], 10.0, 60.0, 0.0),
        # 4 in flight for 5 s of 60 s -> 20 / 60
        ([(0.0, 0.0), (50.0, 4.0), (55.0, 0.0)], 60.0, 60.0, 20.0 / 60.0),
        # the 6 s panic window sees 4 for 5 of 6 s... from 54 to 55 only: (1 x 4) / 6
        ([(0.0, 0.0), (50.0, 4.0), (55.0, 0.0)], 60.0, 6.0, 4.0 / 6.0),
        # a window that has not filled up averages over what it saw: 3 for 2 s of 2 s
        ([(100.0, 3.0)], 102.0, 60.0, 3.0),
        # step function: 2 for 10 s, then 6 for 10 s -> 4
        ([(0.0, 2.0), (10.0, 6.0)], 20.0, 20.0, 4.0),
        # old samples fall out: only the last 10 s (value 6) count
        ([(0.0, 2.0), (10.0, 6.0)], 30.0, 10.0, 6.0),
    ],
)
def test_window_average(samples: list[tuple[float, float]], now: float, window: float,
                        expected: float) -> None:
    w = ConcurrencyWindow(max_age_s=60.0)
    for t, c in samples:
        w.record(t, c)
    assert w.average(now, window) == pytest.approx(expected)


def test_window_prunes_but_keeps_value_in_force() -> None:
    w = ConcurrencyWindow(max_age_s=60.0)
    w.record(0.0, 5.0)
    for t in range(1, 200):
        w.record(float(t), 5.0)
    # the value 5 has held for the whole window even though early samples were dropped
    assert w.average(199.0, 60.0) == pytest.approx(5.0)
    assert len(w._times) <= 62


def test_window_last_request_at() -> None:
    w = ConcurrencyWindow()
    assert w.last_request_at(1.0) is None
    w.record(1.0, 1.0)
    assert w.last_request_at(3.0) == 3.0  # in flight now
    w.record(4.0, 0.0)
    assert w.last_request_at(9.0) == 4.0  # finished at 4
    spec = replace(BASE, stable_window_s=10.0, panic_window_s=2.0)
    stats = w.stats(9.0, spec)
    assert stats.last_request_at == 4.0
    assert stats.panic_avg == 0.0
    assert stats.stable_avg == pytest.approx(3.0 / 8.0)
