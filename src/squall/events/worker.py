"""The delivery loop of the durable queue: claim due events, invoke, record the outcome.

One dispatcher claims up to ``workers`` events at a time (settings.async_workers, default 8) and
runs each delivery as a task it owns; the invoker's per-function max_instances still bounds real
concurrency. The dispatcher sleeps until the next event is due, or until ``submit`` or a finished
delivery sets ``service.wake``, so a new event starts without a polling delay.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import uuid
from typing import TYPE_CHECKING, Any

from squall.errors import FunctionNotFound, SquallError, TooManyRequests
from squall.events import delivery
from squall.events.retry import RetryPolicy, after_failure, expired
from squall.observability import tracing
from squall.store import queue

if TYPE_CHECKING:
    from squall.events.service import EventService

log = logging.getLogger("squall.events.worker")

IDLE_WAIT_S = 5.0  # upper bound on a sleep, in case the wall clock jumps
PRUNE_EVERY_S = 3600.0
RETENTION_DEFAULT_S = 7 * 86400.0


def error_dict(e: BaseException) -> dict[str, Any]:
    msg = e.message if isinstance(e, SquallError) else str(e)
    return {"errorType": type(e).__name__, "errorMessage": msg, "stackTrace": []}


def _describe(error: dict[str, Any]) -> str:
    return f"{error.get('errorType', 'Error')}: {error.get('errorMessage', '')}"


class Worker:
    def __init__(self, service: EventService) -> None:
        self.svc = service
        self.inflight: set[str] = set()
        self._last_prune = 0.0

    @property
    def lease_s(self) -> float:
        # Longer than the longest possible attempt (timeout_s <= 900 plus the bounded wait for an
        # instance), so a live delivery is never claimed twice; a dead process's leases are
        # requeued at startup by ``queue.recover`` without waiting for them.
        default = 900.0 + self.svc.settings.queue_wait_s + 60.0
        return float(getattr(self.svc.settings, "async_lease_s", default))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                await self.step(tg)

    async def step(self, tg: asyncio.TaskGroup) -> None:
        """Claim what is due and free slots allow, then wait for a reason to look again."""
        svc = self.svc
        svc.wake.clear()  # before the claim: a submit from now on wakes the wait below
        now = svc.clock()
        free = svc.workers - len(self.inflight)
        rows = await svc.db.run(lambda c: queue.claim(c, now=now, limit=free, lease_s=self.lease_s))
        for row in rows:
            self.inflight.add(row["id"])
            task = tg.create_task(self._guarded(row), name=f"deliver-{row['id']}")
            task.add_done_callback(functools.partial(self._done, row["id"]))
        await self._maybe_prune(now)
        if free <= 0 or len(rows) == free:
            timeout: float | None = None  # all slots busy: a finishing delivery wakes us
        else:
            due = await svc.db.run(queue.next_due_at)
            timeout = IDLE_WAIT_S if due is None else min(IDLE_WAIT_S, max(0.0, due - now))
        if timeout == 0.0:
            return
        try:
            await asyncio.wait_for(svc.wake.wait(), timeout)
        except TimeoutError:
            pass

    def _done(self, request_id: str, _task: object = None) -> None:
        self.inflight.discard(request_id)
        self.svc.wake.set()

    async def _maybe_prune(self, now: float) -> None:
        if now - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = now
        keep = float(getattr(self.svc.settings, "async_retention_s", RETENTION_DEFAULT_S))
        await self.svc.db.run(lambda c: queue.prune(c, before=now - keep))

    async def _guarded(self, row: dict[str, Any]) -> None:
        # A bug here must not take the worker's TaskGroup down with every other delivery; the
        # event keeps its lease and is claimed again when it runs out (or after a restart).
        try:
            await self.deliver(row)
        except Exception:
            log.exception("delivery of async event %s failed unexpectedly", row["id"])

    async def deliver(self, row: dict[str, Any]) -> None:
        """One attempt of one claimed event, and the bookkeeping of its outcome."""
        svc = self.svc
        fn, ns, rid = row["function"], row["namespace"], row["id"]
        rec = svc.registry.get(fn, ns)
        if rec is None:
            # A failed attempt, not an instant dead letter: at startup the registry may still be
            # loading, and a function may be redeployed right after `rm`.
            err = error_dict(FunctionNotFound(f"function {fn!r} does not exist (removed?)"))
            await self._failed(row, err, RetryPolicy())
            return
        policy = RetryPolicy.from_config(rec.config.async_)
        if expired(policy, created_at=row["created_at"], now=svc.clock()):
            err = {"errorType": "EventExpired", "stackTrace": [],
                   "errorMessage": f"older than max_event_age_s={policy.max_event_age_s:g}"}
            await self._dead_letter(row, err, "event_expired", policy)
            return
        try:
            with tracing.delivery(svc.obs.tracing, row.get("traceparent"),
                                  due_at=row["next_attempt_at"], attempt=row["attempts"]):
                outcome = await svc.invoker.invoke(fn, json.loads(row["payload"]),
                                                   trigger=row["trigger"], request_id=rid,
                                                   namespace=ns)
        except TooManyRequests as e:
            # Throttled is not a failure of the code: wait and try again without using a retry.
            svc.obs.metrics.async_outcome(ns, fn, "throttled")
            wait = max(1.0, float(e.retry_after_s)) * (0.5 + random.random())
            now = svc.clock()
            await svc.db.run(lambda c: queue.release(c, rid, now=now, next_attempt_at=now + wait))
            return
        except SquallError as e:  # function removed meanwhile, sandbox could not start, ...
            await self._failed(row, error_dict(e), policy)
            return
        if outcome.error is None:
            await self._succeeded(row, outcome.value, policy)
        else:
            await self._failed(row, outcome.error, policy)

    async def _succeeded(self, row: dict[str, Any], value: Any, policy: RetryPolicy) -> None:
        record = delivery.destination_record(row, "succeeded", result=value)
        follow = delivery.function_destination(policy.on_success, record, now=self.svc.clock(),
                                               namespace=row["namespace"])
        tracing.carry(follow, row)
        self.svc.obs.metrics.async_outcome(row["namespace"], row["function"], "succeeded")
        now = self.svc.clock()
        await self.svc.db.run(lambda c: queue.succeed(c, row["id"], now=now, result=value,
                                                      follow_up=follow))
        if follow is not None:
            self.svc.wake.set()
        await delivery.post_destination(self.svc, row, policy.on_success, record)

    async def _failed(self, row: dict[str, Any], error: dict[str, Any],
                      policy: RetryPolicy) -> None:
        svc = self.svc
        now = svc.clock()
        decision = after_failure(policy, attempt=row["attempts"], created_at=row["created_at"],
                                 now=now, rand=random.random())
        if decision.retry_at is None:
            await self._dead_letter(row, error, decision.reason, policy)
            return
        at = decision.retry_at
        svc.obs.metrics.async_outcome(row["namespace"], row["function"], "retried")
        await svc.db.run(lambda c: queue.retry_later(c, row["id"], now=now, error=error,
                                                     next_attempt_at=at))
        svc.logs.append(row["function"], row["id"],
                        f"[squall] async attempt {row['attempts']}/{policy.max_attempts} failed"
                        f" ({_describe(error)}); retrying in {at - now:.1f}s", row["namespace"])

    async def _dead_letter(self, row: dict[str, Any], error: dict[str, Any], reason: str,
                           policy: RetryPolicy) -> None:
        svc = self.svc
        record = delivery.destination_record(row, "dead_lettered", error=error)
        follow = delivery.function_destination(policy.on_failure, record, now=svc.clock(),
                                               namespace=row["namespace"])
        tracing.carry(follow, row)
        svc.obs.metrics.async_outcome(row["namespace"], row["function"], "dead_lettered")
        dlq_id = uuid.uuid4().hex
        now = svc.clock()
        await svc.db.run(lambda c: queue.dead_letter(c, row, dlq_id=dlq_id, now=now, error=error,
                                                     follow_up=follow))
        if follow is not None:
            svc.wake.set()
        svc.logs.append(row["function"], row["id"],
                        f"[squall] async event dead-lettered as {dlq_id} after"
                        f" {row['attempts']} attempt(s) ({reason}): {_describe(error)}",
                        row["namespace"])
        await delivery.post_destination(svc, row, policy.on_failure, record)
