"""How the server plugs observability into the platform: one call in ``build``, one task in
``serve``, one call at shutdown (squall.server)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from squall.observability import Observability
from squall.observability.history import prune_forever
from squall.observability.metrics import watch_loop_lag

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from squall.platform import Platform


def attach(platform: Platform) -> Observability:
    """Create the metrics (always) and the tracer (when OTEL_EXPORTER_OTLP_ENDPOINT is set) and
    hand them to the parts that report: invoker, events service, store writers."""
    from squall.observability.tracing import Tracing

    obs = Observability(tracing=Tracing.from_env())
    obs.metrics.watch(platform.agent)
    platform.invoker.obs = obs
    platform.recorder.observe_flush(obs.metrics.flush_observer("invocations"))
    platform.logs.observe_flush(obs.metrics.flush_observer("logs"))
    if platform.events is not None:
        platform.events.obs = obs
    platform.obs = obs
    return obs


def edge(platform: Platform, app: ASGIApp) -> ASGIApp:
    """The outermost ASGI app: the tracing middleware when tracing is on, else ``app`` as is."""
    tracing = platform.obs.tracing if platform.obs is not None else None
    return app if tracing is None else tracing.middleware(app)


async def run(platform: Platform) -> None:
    """Background work until cancelled: event-loop lag, invocation-record retention."""
    assert platform.obs is not None
    async with asyncio.TaskGroup() as tg:
        tg.create_task(watch_loop_lag(platform.obs.metrics), name="loop-lag")
        tg.create_task(prune_forever(platform.db, platform.settings.invocation_retention_days),
                       name="history-prune")
        if platform.obs.metrics.share is not None:
            tg.create_task(platform.obs.metrics.share.run(), name="metrics-share")


def close(platform: Platform) -> None:
    """Export the spans still buffered (shutdown)."""
    if platform.obs is not None and platform.obs.tracing is not None:
        platform.obs.tracing.shutdown()
