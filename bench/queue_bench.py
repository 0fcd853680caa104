"""The async queue's throughput with NATS JetStream as its carrier (``squall up --queue
nats://``), measured like the table's row of the events step (events_bench.async_throughput:
wrk POSTs no-op events for a few seconds, then the queue drains) on a platform of its own,
in the same run. Its stream and consumer get a prefix of their own and are deleted after."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
from platform_proc import Platform

NATS_URL = "nats://127.0.0.1:4222"


class JetStreamPlatform(Platform):
    """`squall up` whose async queue is a JetStream stream on the local NATS."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def env(self) -> dict[str, str]:
        return {**super().env(), "SQUALL_QUEUE": f"{NATS_URL}?prefix={self.prefix}"}


async def _drop(prefix: str) -> None:
    nc = await nats.connect(NATS_URL, allow_reconnect=False)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(f"{prefix.upper()}_EVENTS")
    finally:
        await nc.close()


def async_throughput(quick: bool, tmp: Path) -> dict[str, Any]:
    import events_bench

    why = events_bench.reachable("nats")
    if why is not None:
        return {"skipped": why}
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    try:
        with JetStreamPlatform(prefix) as p:
            return events_bench.async_throughput(p, quick, tmp)
    finally:
        asyncio.run(_drop(prefix))
