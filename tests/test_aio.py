"""``squall.aio.wait_event``: the platform's background loops wait on events with it."""

from __future__ import annotations

import asyncio

import pytest

from squall.aio import wait_event


async def test_a_cancellation_that_comes_with_the_event_is_kept() -> None:
    """The shutdown cancels a loop just as its event is set: the loop must stop. (With
    ``asyncio.wait_for`` on Python 3.11 the wait returned normally and the loop went on.)"""
    event = asyncio.Event()
    waiter = asyncio.create_task(wait_event(event, 5.0))
    await asyncio.sleep(0)  # waiting
    event.set()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_set_or_timed_out() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 5.0) is True
    assert await wait_event(event, None) is True
