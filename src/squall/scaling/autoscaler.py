"""How many instances a function version should have: a pure decision, Knative KPA style.

The loop that applies it lives with the pool; this module only does arithmetic. Everything that
depends on time takes ``now`` (seconds, any monotonic origin) so tests drive it with a fake clock.

Worked example (target concurrency 1 per instance, utilisation 0.7, so 0.7 in flight per instance):

    stable window (60 s) average 4.2 in flight   -> ceil(4.2 / 0.7) = 6 instances
    panic window (6 s) average 14.0 in flight    -> ceil(14.0 / 0.7) = 20 instances
    ready instances 6: 20 / 6 = 3.3 >= panic threshold 2.0 -> panic, take 20 and never go below
    it until the panic condition has been false for a whole stable window (60 s).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import NamedTuple

# What a function gets when its squall.toml says nothing about keep-alive; the pool should pass the
# version's own keep_alive_s as scale_to_zero_grace_s.
DEFAULT_KEEP_ALIVE_S = 300.0


@dataclass(frozen=True)
class ScalingSpec:
    """Per-version knobs. ``max_instances=None`` means no upper bound."""

    target_concurrency_per_instance: int = 1
    utilisation: float = 0.7
    min_instances: int = 0
    max_instances: int | None = None
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    # panic when the panic-window desired count is at least this many times the ready count
    panic_threshold: float = 2.0
    # scale down only to the largest desired count seen over this period (0 = at once)
    scale_down_delay_s: float = 0.0
    # one decision may ask for at most ready * rate instances (ready counts as at least 1)
    max_scale_up_rate: float = 1000.0
    # new instances per second, whatever the load says
    max_burst_per_s: float = 100.0
    scale_to_zero_grace_s: float = DEFAULT_KEEP_ALIVE_S

    @property
    def per_instance_target(self) -> float:
        """In-flight requests one instance should carry on average, e.g. 1 x 0.7 = 0.7."""
        return self.target_concurrency_per_instance * self.utilisation


class WindowStats(NamedTuple):
    """What the platform observed, as handed to ``decide``."""

    stable_avg: float
    panic_avg: float
    # when the version last had a request in flight (``now`` while one is), None if never
    last_request_at: float | None = None


class ConcurrencyWindow:
    """Samples of in-flight requests as a step function: each value holds until the next sample.

    The platform records a sample on each change (and may add one every ~1 s). ``average`` is the
    time-weighted mean over the last ``window_s`` seconds; before the window has filled up it
    averages only over the time since the first sample, so a burst right after start-up is not
    diluted by time nobody observed (Knative does the same).
    """

    def __init__(self, max_age_s: float = 60.0) -> None:
        self._max_age_s = max_age_s
        self._times: list[float] = []
        self._values: list[float] = []
        self._last_busy: float | None = None

    def record(self, t: float, concurrency: float) -> None:
        """Add a sample. Samples come in time order; an older ``t`` counts as the latest one."""
        if self._times and t < self._times[-1]:
            t = self._times[-1]
        if self._values and self._values[-1] > 0:
            self._last_busy = t  # the previous value held until now
        if concurrency > 0:
            self._last_busy = t
        self._times.append(t)
        self._values.append(concurrency)
        self._prune(t)

    def _prune(self, now: float) -> None:
        # keep the last sample at or before the horizon: it is the value in force at the horizon
        horizon = now - self._max_age_s
        i = bisect_right(self._times, horizon) - 1
        if i > 0:
            del self._times[:i]
            del self._values[:i]

    def last_request_at(self, now: float) -> float | None:
        """``now`` while a request is in flight, else when the last one finished (None if never)."""
        if self._values and self._values[-1] > 0:
            return now
        return self._last_busy

    def average(self, now: float, window_s: float) -> float:
        """Time-weighted mean of the step function over [now - window_s, now].

        Example: samples (0 s, 0), (50 s, 4), (55 s, 0), now 60 s, window 60 s:
        4 in flight for 5 s out of 60 s -> 20 / 60 = 0.333.
        """
        if not self._times or now <= self._times[0]:
            return self._values[-1] if self._times and now == self._times[0] else 0.0
        start = max(now - window_s, self._times[0])
        if now - start <= 0:
            return self._values[-1]
        area = 0.0
        for i, t in enumerate(self._times):
            t_end = self._times[i + 1] if i + 1 < len(self._times) else now
            lo, hi = max(t, start), min(t_end, now)
            if hi > lo:
                area += self._values[i] * (hi - lo)
        return area / (now - start)

    def stats(self, now: float, spec: ScalingSpec) -> WindowStats:
        return WindowStats(
            stable_avg=self.average(now, spec.stable_window_s),
            panic_avg=self.average(now, spec.panic_window_s),
            last_request_at=self.last_request_at(now),
        )


@dataclass(frozen=True)
class ScalingState:
    """What the previous decision leaves for the next one. Start with ``ScalingState()``."""

    in_panic_since: float | None = None
    # last time the panic condition held; panic ends a stable window after it
    last_panic_at: float | None = None
    # the largest desired count during this panic: in panic we never go below it
    panic_desired: int = 0
    # time of the last decision that asked for more instances than were ready (for the burst cap)
    last_scale_up: float | None = None
    # (t, desired) over the scale-down delay, oldest first
    recent_desired: tuple[tuple[float, int], ...] = field(default_factory=tuple)
    last_request_at: float | None = None


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    panic: bool
    state: ScalingState


def _ceil_div(value: float, per: float) -> int:
    # 4.2 / 0.7 is 6.000000000000001 in floats; round first so that ceil does not make it 7
    return math.ceil(round(value / per, 9))


def decide(spec: ScalingSpec, window_stats: WindowStats, ready_instances: int,
           state: ScalingState, now: float) -> Decision:
    """The desired instance count for one version, the rule that set it, and the next state."""
    per = spec.per_instance_target
    stable_avg, panic_avg, seen = window_stats
    last_request_at = _latest(state.last_request_at, seen)
    steps: list[str] = []
    panic_state: tuple[float | None, float | None, int]

    # 1. Desired counts for each window: avg 4.2 with 0.7 per instance -> ceil(6.0) = 6.
    stable_desired = _ceil_div(stable_avg, per)
    panic_desired = _ceil_div(panic_avg, per)

    # 2. Rate limit: with 3 ready and rate 1000 one decision asks for at most 3000. Zero ready
    #    counts as one, so that scaling from zero is possible at all.
    ready_for_rate = max(1, ready_instances)
    max_up = math.ceil(spec.max_scale_up_rate * ready_for_rate)
    stable_desired = min(stable_desired, max_up)
    panic_desired = min(panic_desired, max_up)

    # 3. Panic: 20 wanted over the last 6 s with 6 ready -> 20 / 6 = 3.3 >= 2.0. The condition
    #    is checked against ready (at least 1): from zero, 2 in flight within 6 s panics.
    over_threshold = panic_desired / ready_for_rate >= spec.panic_threshold and panic_desired > 0
    last_panic_at = now if over_threshold else state.last_panic_at
    in_panic = last_panic_at is not None and now - last_panic_at < spec.stable_window_s
    if in_panic:
        # never scale down in panic: keep the largest count asked for since the panic began
        prev = state.panic_desired if state.in_panic_since is not None else 0
        held = max(panic_desired, prev, ready_instances)
        desired = held
        since = state.in_panic_since if state.in_panic_since is not None else now
        if over_threshold:
            steps.append(f"panic: panic avg {panic_avg:.1f} / ({_fmt_per(spec)}) -> "
                         f"{panic_desired} >= {spec.panic_threshold:g} x {ready_for_rate} ready")
        else:
            steps.append(f"panic hold at {held} (panic avg {panic_avg:.1f} -> {panic_desired}, "
                         f"ends {spec.stable_window_s:g}s after the last spike)")
        if held > panic_desired and over_threshold:
            steps.append(f"panic never scales down: hold {held}")
        panic_state = (since, last_panic_at, held)
    else:
        desired = stable_desired
        steps.append(f"stable avg {stable_avg:.1f} / ({_fmt_per(spec)}) -> {stable_desired}")
        panic_state = (None, None, 0)

    # 4. Scale-down delay: with a 30 s delay and desired 8, 5, 3 over the last 30 s, we stay at 8.
    recent = tuple((t, d) for t, d in state.recent_desired if now - t < spec.scale_down_delay_s)
    if spec.scale_down_delay_s > 0:
        recent = (*recent, (now, desired))
        held_max = max(d for _, d in recent)
        if held_max > desired:
            steps.append(f"scale-down delay {spec.scale_down_delay_s:g}s holds {held_max}")
            desired = held_max

    # 5. Bounds from the function's config.
    desired = _clamp(spec, desired, steps)

    # 6. Burst cap: at most 100 new instances per second. A decision 0.1 s after the previous
    #    scale-up may add ceil(100 x 0.1) = 10; the first one (or one >= 1 s later) may add 100.
    last_scale_up = state.last_scale_up
    if desired > ready_instances:
        elapsed = 1.0 if last_scale_up is None else min(1.0, max(0.0, now - last_scale_up))
        allowed = max(1, math.ceil(spec.max_burst_per_s * elapsed))
        if desired - ready_instances > allowed:
            steps.append(f"burst cap {spec.max_burst_per_s:g}/s allows +{allowed} "
                         f"-> {ready_instances + allowed}")
            desired = ready_instances + allowed
        last_scale_up = now

    # 7. Scale to zero only after no request for the grace period (and only when min is 0);
    #    before that, keep one warm instance if there is one.
    if desired == 0 and spec.min_instances == 0:
        idle = None if last_request_at is None else now - last_request_at
        if idle is not None and idle < spec.scale_to_zero_grace_s and ready_instances > 0:
            desired = 1
            steps.append(f"keep 1 warm: idle {idle:.0f}s < scale-to-zero grace "
                         f"{spec.scale_to_zero_grace_s:g}s")
        elif ready_instances > 0:
            idle_txt = "never invoked" if idle is None else f"idle {idle:.0f}s"
            steps.append(f"scale to zero: {idle_txt} >= grace {spec.scale_to_zero_grace_s:g}s")

    next_state = ScalingState(
        in_panic_since=panic_state[0],
        last_panic_at=panic_state[1],
        panic_desired=panic_state[2],
        last_scale_up=last_scale_up,
        recent_desired=recent,
        last_request_at=last_request_at,
    )
    return Decision(desired=desired, reason="; ".join(steps), panic=in_panic, state=next_state)


def _clamp(spec: ScalingSpec, desired: int, steps: list[str]) -> int:
    if desired < spec.min_instances:
        steps.append(f"min instances {spec.min_instances}")
        return spec.min_instances
    if spec.max_instances is not None and desired > spec.max_instances:
        steps.append(f"max instances {spec.max_instances}")
        return spec.max_instances
    return desired


def _fmt_per(spec: ScalingSpec) -> str:
    return f"{spec.target_concurrency_per_instance} x {spec.utilisation:g}"


def _latest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


__all__ = [
    "DEFAULT_KEEP_ALIVE_S",
    "ConcurrencyWindow",
    "Decision",
    "ScalingSpec",
    "ScalingState",
    "WindowStats",
    "decide",
]
