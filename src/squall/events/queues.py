"""The queue seam: what carries a committed event row to a delivery, and back.

On every backend the store's ``events`` row is the record of an event: its status, attempts,
result, errors, dead letters, the invocations API and the queue-depth quotas all read it. A
carrier (``EventQueue``) only decides *when* which gateway looks at which row:

- ``TableQueue`` (default, ``settings.queue = ""``): the table is its own carrier. A dispatcher
  claims due rows with a lease (``queue.claim``; ``FOR UPDATE SKIP LOCKED`` on a shared
  PostgreSQL store) and sleeps until the next one is due or ``service.wake`` is set.
- ``JetStreamQueue`` (``nats://HOST:PORT``, ``squall.events.jetstream``): one message per
  event on a NATS JetStream stream, pulled by one durable consumer that every gateway shares.

The worker holds a ``Lease`` per delivery: it writes the outcome to the store first, then says
``done`` (final) or ``again(at)`` (a retry or a throttled attempt, due at ``at``). A delivery
that says neither (a bug, a crash) is delivered again when its lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from squall.aio import wait_event
from squall.errors import InvalidConfig, ServiceUnavailable
from squall.store import queue

if TYPE_CHECKING:
    from squall.events.service import EventService

log = logging.getLogger("squall.events")

IDLE_WAIT_S = 5.0  # upper bound on a sleep, in case the wall clock jumps
# Under load a claim waits up to CLAIM_GATHER_S for CLAIM_BATCH slots to be free before it takes
# fewer: each claim is a transaction, and one per freed slot or two made the commits a fifth of
# the gateway's work while it drained a backlog (claims of 3.8 events on average with a 2 ms
# sleep). It only waits with most slots taken, so the deliveries already claimed keep the
# instances busy meanwhile.
CLAIM_BATCH = 16
CLAIM_GATHER_S = 0.010


class QueueUnavailable(ServiceUnavailable):
    """The carrier could not take the event (NATS unreachable, no stream): 503, retry later."""

    code = "queue_unavailable"


class InvalidQueue(InvalidConfig):
    code = "invalid_queue"


class EventRef(NamedTuple):
    """A committed event row a carrier must deliver."""

    id: str
    namespace: str


class Lease(Protocol):
    """One claimed event on its way through the worker. Calling ``done`` or ``again`` more than
    once, or after the carrier closed, is harmless (the store's row decides anyway)."""

    @property
    def row(self) -> dict[str, Any]: ...

    def hold(self) -> AbstractAsyncContextManager[None]:
        """Around the attempt: keeps the lease alive however long the invocation takes."""
        ...

    async def done(self) -> None:
        """The outcome is committed and final (succeeded, dead-lettered): forget the event."""
        ...

    async def again(self, at: float) -> None:
        """The outcome is committed and the event is due again at ``at`` (retry, throttled)."""
        ...


class Dispatch(Protocol):
    """What a carrier drives: the worker (``squall.events.worker.Worker``)."""

    @property
    def lease_s(self) -> float: ...

    # slots promised to events being written (``EventQueue.reserve``): not free
    reserved: int

    def free(self) -> int:
        """Deliveries that may start now."""
        ...

    def start(self, tg: asyncio.TaskGroup, lease: Lease) -> None:
        """Run one delivery as a task of ``tg``; the carrier's ``freed`` is called after it."""
        ...

    async def housekeeping(self, now: float) -> None:
        """Called on every pass of the dispatcher (pruning old events, at most hourly)."""
        ...


class EventQueue(Protocol):
    """A carrier. ``open`` before the first ``publish``; ``run`` is one task until cancelled."""

    async def open(self) -> None:
        """Connect. Raises QueueUnavailable: ``squall up`` stops with that error."""
        ...

    async def close(self) -> None: ...

    async def recover(self) -> None:
        """At startup, before ``run``: take back what this data dir's previous process left
        running (not on a shared store, where running rows may be another gateway's work)."""
        ...

    async def run(self, worker: Dispatch) -> None:
        """Deliver due events through ``worker`` until cancelled."""
        ...

    async def publish(self, events: Sequence[EventRef], *, strict: bool = False) -> None:
        """These rows were just committed: make them deliverable. ``strict`` (a client's
        submit, answered 202 only after this returns) raises QueueUnavailable when the carrier
        did not confirm; otherwise a failure is logged and the carrier's reconciliation
        delivers them later."""
        ...

    def freed(self) -> None:
        """A delivery finished: a slot is free."""
        ...

    def reserve(self) -> float | None:
        """A lease (seconds) for an event about to be written, to be written claimed by this
        process and started here at once (``hand``); None: write it queued and ``publish``."""
        ...

    def hand(self, row: dict[str, Any] | None) -> None:
        """After ``reserve``: start the committed, leased ``row``, or give the slot back
        (None: nothing was written, or the key's first event was)."""
        ...


def open_queue(settings: Any, service: EventService) -> EventQueue:
    """The carrier ``settings.queue`` names: "" the store's table, ``nats://`` JetStream.
    Raises InvalidQueue for anything else (not connected yet: ``open`` does that)."""
    url = str(getattr(settings, "queue", "") or "")
    if not url:
        return TableQueue(service)
    if url.startswith(("nats://", "tls://")):
        from squall.events.jetstream import JetStreamQueue

        return JetStreamQueue(url, service)
    scheme = url.split("://", 1)[0] if "://" in url else url[:20]
    raise InvalidQueue(f"unknown --queue {scheme!r}: use nats://HOST:PORT (NATS JetStream) or"
                       " leave it empty for the store's own table")


# --- the default: the store's table ----------------------------------------------------------

@dataclass
class TableLease:
    """The table's lease lives in the row (``lease_until``): nothing to tell a carrier."""

    row: dict[str, Any]

    def hold(self) -> AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def done(self) -> None:
        pass

    async def again(self, at: float) -> None:
        pass


class TableQueue:
    """The store's events table, claimed with a lease. One dispatcher claims up to the worker's
    free slots at a time and sleeps until the next event is due, or until ``service.wake`` is
    set (a submit, a finished delivery after a full claim), so a new event starts without a
    polling delay.

    Hand-off: while the dispatcher has caught up (its last claim found fewer due events than it
    had slots, and nobody has written or woken it since) and a slot is free, a submitted event
    is written already claimed (status running, its first attempt, a lease) and started as soon
    as it commits. With deliveries keeping up, that spares a claim (a transaction and a walk of
    the due events) per few events, which at those small batches cost more than the insert and
    the outcome together. It is as durable: the row is committed before the 202, and a process
    that dies leaves it running, to be requeued at startup or claimed when the lease runs out,
    like any claimed event. Nothing due is overtaken: there was none at the last claim. Only
    where this process is the store's one writer (see ``reserve``)."""

    def __init__(self, service: EventService) -> None:
        self.svc = service
        self._caught_up = False
        self._worker: Dispatch | None = None
        self._tg: asyncio.TaskGroup | None = None

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def recover(self) -> None:
        svc = self.svc
        # A shared store, or a worker of a data dir: the running events may be other gateways'
        # or workers' live work; those of one that died are claimed again when their lease runs
        # out.
        requeued = 0 if not svc.db.recovers else await svc.db.run(
            lambda c: queue.recover(c, now=svc.clock()))
        if requeued:
            log.info("requeued %d async events interrupted by the previous shutdown", requeued)

    async def run(self, worker: Dispatch) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._worker, self._tg = worker, tg
                while True:
                    await self.step(worker, tg)
        finally:
            self._worker = self._tg = None
            self._caught_up = False

    async def step(self, worker: Dispatch, tg: asyncio.TaskGroup) -> None:
        """Claim what is due and free slots allow, then wait for a reason to look again."""
        svc = self.svc
        batch = min(CLAIM_BATCH, svc.workers)
        if 0 < worker.free() < batch:  # deliveries in flight: let more slots free
            loop = asyncio.get_running_loop()
            until = loop.time() + CLAIM_GATHER_S
            while worker.free() < batch and (left := until - loop.time()) > 0:
                svc.wake.clear()
                await wait_event(svc.wake, left)
        svc.wake.clear()  # before the claim: a submit from now on wakes the wait below
        now = svc.clock()
        free = worker.free()
        rows = await svc.db.run_inline(functools.partial(queue.claim, now=now, limit=free,
                                                         lease_s=worker.lease_s))
        # nothing due was left behind (with no free slot nothing was looked at)
        self._caught_up = 0 < free and len(rows) < free and not svc.wake.is_set()
        for row in rows:
            worker.start(tg, TableLease(row))
        await worker.housekeeping(now)
        if free <= 0 or len(rows) == free:
            timeout: float | None = None  # all slots busy: a finishing delivery wakes us
        else:
            due = await svc.db.run_inline(queue.next_due_at)
            timeout = IDLE_WAIT_S if due is None else min(IDLE_WAIT_S, max(0.0, due - now))
        if timeout == 0.0:
            return
        await wait_event(svc.wake, timeout)

    async def publish(self, events: Sequence[EventRef], *, strict: bool = False) -> None:
        if events:
            self._caught_up = False
            self.svc.wake.set()

    def freed(self) -> None:
        # events may be waiting for this slot: after a full claim, or written by another
        # process of a shared store, which does not wake this one
        if not self._caught_up or self.svc.db.shared:
            self.svc.wake.set()

    def reserve(self) -> float | None:
        worker = self._worker
        # Not on a store other processes write too (`--workers`, PostgreSQL): two workers
        # handing events to themselves accepted 1,100 a second where they claimed 1,700
        # (the same run), their deliveries waiting on each other's version tokens.
        if worker is None or self.svc.db.shared or not self._caught_up \
                or self.svc.wake.is_set() or worker.free() <= 0:
            return None
        worker.reserved += 1
        return worker.lease_s

    def hand(self, row: dict[str, Any] | None) -> None:
        worker, tg = self._worker, self._tg
        if worker is None:  # stopped meanwhile: the row is recovered like any running event
            return
        worker.reserved -= 1
        if row is not None and tg is not None:
            try:
                worker.start(tg, TableLease(row))
            except RuntimeError:  # the dispatcher is stopping: recovered like a running event
                log.info("event %s was written claimed during the shutdown: it is requeued "
                         "at the next start, or claimed when its lease runs out", row["id"])
