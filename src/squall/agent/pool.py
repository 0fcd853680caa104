"""The instance pool of one function version.

Idle instances are reused most-recently-used first (warmest caches); new ones are forked while
the version has fewer than ``max_instances``; beyond that a caller waits a bounded time and then
gets TooManyRequests. Instances idle past the keep-alive are stopped, down to ``min_instances``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from squall.agent.instance import Instance
from squall.errors import TooManyRequests


@dataclass
class PoolSpec:
    max_instances: int = 100
    min_instances: int = 0
    concurrency: int = 1
    keep_alive_s: float = 300.0
    queue_wait_s: float = 10.0


class Pool:
    """``acquire`` reserves one slot on an instance; every acquire is paired with ``release``."""

    def __init__(self, key: str, spec: PoolSpec,
                 start: Callable[[Pool], Awaitable[Instance]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.key = key
        self.spec = spec
        self.instances: dict[str, Instance] = {}
        self.reserved: dict[str, int] = {}
        self.starting = 0
        self.created_total = 0
        self._start = start
        self._clock = clock
        self._waiters: deque[asyncio.Future[None]] = deque()
        # called with the in-flight count on every change (the autoscaler's observations)
        self.observer: Callable[[int], None] | None = None
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def size(self) -> int:
        return len(self.instances) + self.starting

    @property
    def in_flight(self) -> int:
        return sum(self.reserved.values())

    def _pick(self) -> Instance | None:
        best: Instance | None = None
        for inst in self.instances.values():
            if inst.dead or self.reserved.get(inst.id, 0) >= inst.concurrency:
                continue
            if best is None or inst.last_used > best.last_used:
                best = inst
        return best

    async def acquire(self) -> tuple[Instance, bool]:
        """Return (instance, cold). Raises TooManyRequests after ``queue_wait_s`` at capacity."""
        deadline = self._clock() + self.spec.queue_wait_s
        while True:
            inst = self._pick()
            if inst is not None:
                self._reserve(inst)
                return inst, False
            if self.size < self.spec.max_instances:
                inst = await self.grow()
                self._reserve(inst)
                return inst, True
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise TooManyRequests(
                    f"all {self.spec.max_instances} instances of {self.key} are busy; "
                    f"retry later or raise max_instances",
                    retry_after_s=1,
                )
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)

    def _reserve(self, inst: Instance) -> None:
        self.reserved[inst.id] = self.reserved.get(inst.id, 0) + 1
        self._drained.clear()
        if self.observer is not None:
            self.observer(self.in_flight)

    async def grow(self) -> Instance:
        """Start one more instance (not reserved)."""
        self.starting += 1
        try:
            inst = await self._start(self)
        finally:
            self.starting -= 1
        self.instances[inst.id] = inst
        self.created_total += 1
        return inst

    def release(self, inst: Instance) -> None:
        left = self.reserved.get(inst.id, 0) - 1
        if left > 0:
            self.reserved[inst.id] = left
        else:
            self.reserved.pop(inst.id, None)
        inst.last_used = self._clock()
        if not self.reserved:
            self._drained.set()
        if self.observer is not None:
            self.observer(self.in_flight)
        self._wake()

    def on_exit(self, inst: Instance) -> None:
        """Called by the instance when its channel closes."""
        self.instances.pop(inst.id, None)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def drain(self, wait_s: float) -> bool:
        """Wait until nothing is in flight (True) or ``wait_s`` passed (False)."""
        try:
            await asyncio.wait_for(self._drained.wait(), wait_s)
            return True
        except TimeoutError:
            return False

    def idle(self) -> list[Instance]:
        return [i for i in self.instances.values() if not self.reserved.get(i.id)]

    def expired(self, now: float) -> list[Instance]:
        """Idle instances past the keep-alive, oldest first, never below min_instances."""
        idle = sorted(self.idle(), key=lambda i: i.last_used)
        spare = len(self.instances) - self.spec.min_instances
        out = [i for i in idle if now - i.last_used >= self.spec.keep_alive_s]
        return out[: max(0, spare)]

    def detach(self, insts: list[Instance]) -> None:
        for inst in insts:
            self.instances.pop(inst.id, None)
