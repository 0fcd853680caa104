"""Small asyncio helpers the platform's loops share."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, within_s: float | None) -> bool:
    """Wait until ``event`` is set (True) or ``within_s`` seconds pass (False).

    Not ``asyncio.wait_for(event.wait(), timeout)``: on Python 3.11 that returns normally when
    a cancellation arrives just as the event is set, swallowing it, and a background loop that
    waits this way (a batch writer, the dispatcher) then outlives the shutdown that cancelled
    it, which waits for it forever. ``asyncio.timeout`` tells the two apart."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            await event.wait()
            return True
    return False
