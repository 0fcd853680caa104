"""Observability: Prometheus metrics, OpenTelemetry traces, invocation history, log formats.

``Observability`` is the one object the server builds and hands to the invoker, the events
service and the API: ``metrics`` is always there (a registry owned by the platform, not the
process-global one); ``tracing`` is None unless an OTLP endpoint is configured, so the hot path
pays a single ``is None`` check when tracing is off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from squall.observability.metrics import Metrics

if TYPE_CHECKING:
    from squall.observability.tracing import Tracing


@dataclass
class Observability:
    metrics: Metrics = field(default_factory=Metrics)
    tracing: Tracing | None = None


__all__ = ["Metrics", "Observability"]
