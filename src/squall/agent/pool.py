"""The instance pool of one function version.

Idle instances are reused most-recently-used first (warmest caches); new ones are forked while
the version has fewer than ``max_instances``; beyond that a caller waits a bounded time and then
gets TooManyRequests. Waiting callers are served first come, first served: a slot that frees up
is handed to the oldest waiter, never taken by a caller that arrived later. Instances idle past
the keep-alive are stopped, down to ``min_instances``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from squall.agent.instance import Instance
from squall.aio import wait_event
from squall.errors import TooManyRequests
from squall.tokens import Slots

TOKEN_POLL_FIRST_S = 0.001
TOKEN_POLL_MAX_S = 0.004


@dataclass
class PoolSpec:
    max_instances: int = 100
    min_instances: int = 0
    concurrency: int = 1
    keep_alive_s: float = 300.0
    queue_wait_s: float = 10.0


# What a waiter is woken with: a slot reserved for it on an instance, or None (look again: the
# wait is over, or an instance exited and one may be started in its place).
_Wake = asyncio.Future["Instance | None"]


def _look_again(fut: _Wake) -> None:
    if not fut.done():
        fut.set_result(None)


class Pool:
    """``acquire`` reserves one slot on an instance; every acquire is paired with ``release``."""

    def __init__(self, key: str, spec: PoolSpec,
                 start: Callable[[Pool], Awaitable[Instance]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.key = key
        self.spec = spec
        self.instances: dict[str, Instance] = {}
        self.reserved: dict[str, int] = {}
        # Instances with a free slot, in the order they last became free: the last one is the
        # most recently used (``_pick`` is O(1) instead of a scan of every instance).
        self._free: dict[str, Instance] = {}
        self._in_flight = 0
        self.starting = 0
        self.created_total = 0
        self._start = start
        self._clock = clock
        self._waiters: deque[_Wake] = deque()
        # called with the in-flight count on every change (the autoscaler's observations)
        self.observer: Callable[[int], None] | None = None
        self._drained = asyncio.Event()
        self._drained.set()
        # the version's cross-worker tokens (squall.tokens), with --workers > 1
        self.tokens: Slots | None = None
        self._token_back = asyncio.Event()
        # one waiter at a time looks for a token another worker gave back; the others queue
        # behind it here (64 waiting deliveries each trying the lock every few ms cost a sixth
        # of a worker's time under async load)
        self._token_turn = asyncio.Lock()

    @property
    def size(self) -> int:
        return len(self.instances) + self.starting

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def _pick(self) -> Instance | None:
        """The most recently used instance with a free slot (None when there is none)."""
        free = self._free
        while free:
            iid = next(reversed(free))
            inst = free[iid]
            if not inst.dead and self.instances.get(iid) is inst:
                return inst
            del free[iid]  # died or detached since it became free
        return None

    def _queued(self) -> bool:
        """Someone is waiting (waiters whose wait ended are dropped from the front)."""
        waiters = self._waiters
        while waiters and waiters[0].done():
            waiters.popleft()
        return bool(waiters)

    async def acquire(self) -> tuple[Instance, bool]:
        """Return (instance, cold). Raises TooManyRequests after ``queue_wait_s`` at capacity."""
        deadline = self._clock() + self.spec.queue_wait_s
        if self.tokens is not None:
            await self._token(deadline)
            try:
                return await self._acquire(deadline)
            except BaseException:
                self.tokens.give()
                self._token_back.set()
                raise
        return await self._acquire(deadline)

    async def _token(self, deadline: float) -> None:
        """Several workers (squall.tokens): one of the version's tokens before an instance, so
        the version's executions across them stay within max_instances x concurrency. A token
        another worker holds comes back without a word to this one: look again every few ms."""
        assert self.tokens is not None
        self.tokens.n = self.spec.max_instances * self.spec.concurrency
        if not self._token_turn.locked() and self.tokens.take():
            return  # nobody here waits for one
        busy = TooManyRequests(
            f"all {self.spec.max_instances} instances of {self.key} are busy (across "
            f"the platform's workers); retry later or raise max_instances", retry_after_s=1)
        try:
            async with asyncio.timeout(max(0.0, deadline - self._clock())):
                await self._token_turn.acquire()
        except TimeoutError:
            raise busy from None
        try:
            pause = TOKEN_POLL_FIRST_S
            while not self.tokens.take():
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise busy
                # a release here wakes us at once; one in another worker is seen at the next
                # look
                self._token_back.clear()
                await wait_event(self._token_back, min(pause, remaining))
                pause = min(TOKEN_POLL_MAX_S, pause * 2)
        finally:
            self._token_turn.release()

    async def _acquire(self, deadline: float) -> tuple[Instance, bool]:
        while True:
            if not self._queued():  # else the free slots go to those who came first
                inst = self._pick()
                if inst is not None:
                    self._reserve(inst)
                    return inst, False
            if self.size < self.spec.max_instances:
                inst = await self._grow()
                self._reserve(inst)
                if inst.concurrency > 1:
                    self._offer(inst)  # its other slots
                return inst, True
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise TooManyRequests(
                    f"all {self.spec.max_instances} instances of {self.key} are busy; "
                    f"retry later or raise max_instances",
                    retry_after_s=1,
                )
            loop = asyncio.get_running_loop()
            fut: _Wake = loop.create_future()
            self._waiters.append(fut)
            timer = loop.call_later(remaining, _look_again, fut)  # a plain timer, not a task
            try:
                given = await fut
            except asyncio.CancelledError:
                handed = fut.result() if fut.done() and not fut.cancelled() else None
                if handed is not None:  # reserved for us as we were cancelled: give it back
                    self._release(handed)  # (the token goes back in ``acquire``)
                raise
            finally:
                timer.cancel()
            if given is not None:
                return given, False  # reserved for us by release

    def _reserve(self, inst: Instance) -> None:
        n = self.reserved.get(inst.id, 0) + 1
        self.reserved[inst.id] = n
        if n >= inst.concurrency:
            self._free.pop(inst.id, None)
        self._in_flight += 1
        self._drained.clear()
        if self.observer is not None:
            self.observer(self._in_flight)

    def _offer(self, inst: Instance) -> None:
        """``inst`` has a free slot: reserve it for the oldest waiter, or keep it as free (the
        most recently used)."""
        while self._waiters and self.reserved.get(inst.id, 0) < inst.concurrency:
            fut = self._waiters.popleft()
            if not fut.done():
                self._reserve(inst)
                fut.set_result(inst)
        if self.reserved.get(inst.id, 0) < inst.concurrency:
            self._free.pop(inst.id, None)
            self._free[inst.id] = inst

    async def _grow(self) -> Instance:
        self.starting += 1
        try:
            inst = await self._start(self)
        finally:
            self.starting -= 1
        self.instances[inst.id] = inst
        self.created_total += 1
        return inst

    async def grow(self) -> Instance:
        """Start one more instance (not reserved: a waiter, if any, gets it)."""
        inst = await self._grow()
        self._offer(inst)
        return inst

    def release(self, inst: Instance) -> None:
        if self.tokens is not None and self.reserved.get(inst.id, 0) > 0:
            self.tokens.give()  # (a release of nothing reserved gives back nothing)
            self._token_back.set()
        self._release(inst)

    def _release(self, inst: Instance) -> None:
        iid = inst.id
        held = self.reserved.get(iid, 0)
        if held > 1:
            self.reserved[iid] = held - 1
        else:
            self.reserved.pop(iid, None)
        if held > 0:
            self._in_flight -= 1
        inst.last_used = self._clock()
        if self.observer is not None:
            self.observer(self._in_flight)
        if self.instances.get(iid) is inst and not inst.dead:
            self._offer(inst)
        if not self.reserved:
            self._drained.set()

    def on_exit(self, inst: Instance) -> None:
        """Called by the instance when its channel closes."""
        self.instances.pop(inst.id, None)
        self._free.pop(inst.id, None)
        self._wake()

    def _wake(self) -> None:
        """Let the oldest waiter look again (an instance may be started in a dead one's place)."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def drain(self, wait_s: float) -> bool:
        """Wait until nothing is in flight (True) or ``wait_s`` passed (False)."""
        return await wait_event(self._drained, wait_s)

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
            self._free.pop(inst.id, None)
