"""The instance pool's bookkeeping: most recently used first, first come first served at
capacity, bounded waits, and slots that are never lost (the instances are stand-ins: the pool
only reads their id, concurrency, dead flag and last use)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from squall.agent.instance import Instance
from squall.agent.pool import Pool, PoolSpec
from squall.errors import TooManyRequests


class FakeInstance:
    def __init__(self, n: int, concurrency: int) -> None:
        self.id = f"i{n}"
        self.concurrency = concurrency
        self.dead = False
        self.last_used = 0.0


def make_pool(max_instances: int = 2, concurrency: int = 1,
              queue_wait_s: float = 5.0) -> tuple[Pool, list[FakeInstance]]:
    started: list[FakeInstance] = []

    async def start(_pool: Pool) -> Instance:
        inst = FakeInstance(len(started), concurrency)
        started.append(inst)
        return cast(Instance, inst)

    spec = PoolSpec(max_instances=max_instances, concurrency=concurrency,
                    queue_wait_s=queue_wait_s)
    return Pool("v", spec, start), started


async def test_reuses_the_most_recently_used_free_instance() -> None:
    pool, started = make_pool(max_instances=3)
    a, cold_a = await pool.acquire()
    b, cold_b = await pool.acquire()
    assert cold_a and cold_b and len(started) == 2
    pool.release(a)
    pool.release(b)
    again, cold = await pool.acquire()
    assert again is b and not cold  # b was released last
    assert pool.in_flight == 1 and pool.reserved == {"i1": 1}


async def test_waiters_are_served_in_arrival_order_and_latecomers_queue_behind() -> None:
    pool, _ = make_pool(max_instances=1)
    first, _ = await pool.acquire()
    order: list[str] = []

    async def take(name: str) -> None:
        inst, cold = await pool.acquire()
        assert not cold
        order.append(name)
        await asyncio.sleep(0)
        pool.release(inst)

    w1 = asyncio.create_task(take("w1"))
    await asyncio.sleep(0)
    w2 = asyncio.create_task(take("w2"))
    await asyncio.sleep(0)
    pool.release(first)  # handed to w1 directly
    late = asyncio.create_task(take("late"))  # arrives while w2 waits: goes behind it
    await asyncio.gather(w1, w2, late)
    assert order == ["w1", "w2", "late"]
    assert pool.in_flight == 0 and not pool.reserved


async def test_a_full_pool_answers_429_after_the_bounded_wait() -> None:
    pool, _ = make_pool(max_instances=1, queue_wait_s=0.05)
    await pool.acquire()
    with pytest.raises(TooManyRequests):
        await pool.acquire()
    assert pool.in_flight == 1


async def test_a_slot_handed_to_a_cancelled_waiter_is_not_lost() -> None:
    pool, _ = make_pool(max_instances=1)
    held, _ = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    pool.release(held)  # reserved for the waiter ...
    waiter.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.in_flight == 0 and not pool.reserved
    again, cold = await pool.acquire()
    assert again is held and not cold


async def test_dead_instances_are_skipped_and_replaced() -> None:
    pool, started = make_pool(max_instances=1)
    a, _ = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    started[0].dead = True
    pool.on_exit(a)  # the waiter looks again and starts a new one
    inst, cold = await waiter
    assert cold and inst is not a
    pool.release(a)  # the dead one's late release changes nothing
    assert pool.in_flight == 1 and pool.reserved == {inst.id: 1}


async def test_concurrency_fills_an_instance_before_starting_another() -> None:
    pool, started = make_pool(max_instances=2, concurrency=2)
    got: list[Any] = [await pool.acquire() for _ in range(3)]
    assert [cold for _, cold in got] == [True, False, True]
    assert len(started) == 2 and pool.in_flight == 3
    for inst, _ in got:
        pool.release(inst)
    assert pool.in_flight == 0 and not pool.reserved
    assert len(pool.idle()) == 2


async def test_a_prewarmed_instance_goes_to_a_waiter() -> None:
    pool, _ = make_pool(max_instances=2)
    pool.spec.max_instances = 1
    await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    pool.spec.max_instances = 2
    grown = await pool.grow()  # what the autoscaler's prewarm calls
    inst, cold = await waiter
    assert inst is grown and not cold
    assert pool.in_flight == 2
