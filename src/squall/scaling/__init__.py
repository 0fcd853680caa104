"""Autoscaling: the pure decision (autoscaler.py); the pool's loop applies it."""

from squall.scaling.autoscaler import (
    DEFAULT_KEEP_ALIVE_S,
    ConcurrencyWindow,
    Decision,
    ScalingSpec,
    ScalingState,
    WindowStats,
    decide,
)

__all__ = [
    "DEFAULT_KEEP_ALIVE_S",
    "ConcurrencyWindow",
    "Decision",
    "ScalingSpec",
    "ScalingState",
    "WindowStats",
    "decide",
]
