"""The deliveries of the durable queue: invoke a claimed event, record the outcome, retry or
dead-letter it, send its destinations.

The carrier (``squall.events.queues``: the store's table, or NATS JetStream) claims up to
``workers`` events at a time (settings.async_workers, default 64) and hands each to ``start``,
which runs it as a task of the carrier's TaskGroup; the invoker's per-function max_instances
still bounds real concurrency. Every outcome is written to the store first, then the lease is
told (``done`` or ``again``), so a crash in between only repeats what the row already says.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import uuid
from typing import TYPE_CHECKING, Any

from squall.errors import FunctionNotFound, InstanceLost, SquallError, TooManyRequests
from squall.events import delivery
from squall.events.queues import EventRef, Lease
from squall.events.retry import RetryPolicy, after_failure, expired
from squall.observability import tracing
from squall.store import queue
from squall.store.db import GroupCommit

if TYPE_CHECKING:
    from squall.events.service import EventService

log = logging.getLogger("squall.events.worker")

PRUNE_EVERY_S = 3600.0
RETENTION_DEFAULT_S = 7 * 86400.0
SUCCESS_LINGER_S = 0.005  # successes gather this long for one commit (GroupCommit linger)


def error_dict(e: BaseException) -> dict[str, Any]:
    msg = e.message if isinstance(e, SquallError) else str(e)
    return {"errorType": type(e).__name__, "errorMessage": msg, "stackTrace": []}


def _describe(error: dict[str, Any]) -> str:
    return f"{error.get('errorType', 'Error')}: {error.get('errorMessage', '')}"


class Worker:
    def __init__(self, service: EventService) -> None:
        self.svc = service
        self.inflight: set[str] = set()
        self.reserved = 0  # slots promised to events being written (TableQueue.reserve)
        self._last_prune = 0.0
        # outcomes of deliveries that finish within a few milliseconds share one transaction
        # (a group commit): one per delivery or two made the commits the largest cost of the
        # async path. The event is done either way; only its row says so a little later (a
        # crash in between delivers it again, as it would a crash during the attempt).
        self._successes: GroupCommit[dict[str, Any], None] = GroupCommit(
            service.db, queue.succeed_many, lambda c, item: queue.succeed(c, **item),
            linger_s=SUCCESS_LINGER_S)

    @property
    def lease_s(self) -> float:
        # Longer than the longest possible attempt (timeout_s <= 900 plus the bounded wait for an
        # instance), so a live delivery is never claimed twice; a dead process's leases are
        # requeued at startup by ``queue.recover`` without waiting for them.
        default = 900.0 + self.svc.settings.queue_wait_s + 60.0
        return float(getattr(self.svc.settings, "async_lease_s", default))

    async def run(self) -> None:
        await self.svc.queue.run(self)

    def free(self) -> int:
        return self.svc.workers - len(self.inflight) - self.reserved

    def start(self, tg: asyncio.TaskGroup, lease: Lease) -> None:
        rid = lease.row["id"]
        self.inflight.add(rid)
        task = tg.create_task(self._guarded(lease), name=f"deliver-{rid}")
        task.add_done_callback(functools.partial(self._done, rid))

    def _done(self, request_id: str, _task: object = None) -> None:
        self.inflight.discard(request_id)
        self.svc.queue.freed()

    async def housekeeping(self, now: float) -> None:
        if now - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = now
        keep = float(getattr(self.svc.settings, "async_retention_s", RETENTION_DEFAULT_S))
        await self.svc.db.run(lambda c: queue.prune(c, before=now - keep))

    async def _guarded(self, lease: Lease) -> None:
        # A bug here must not take the carrier's TaskGroup down with every other delivery; the
        # event keeps its lease and is claimed again when it runs out (or after a restart).
        try:
            await self.deliver(lease)
        except Exception:
            log.exception("delivery of async event %s failed unexpectedly", lease.row["id"])

    async def deliver(self, lease: Lease) -> None:
        """One attempt of one claimed event, and the bookkeeping of its outcome."""
        svc = self.svc
        row = lease.row
        fn, ns, rid = row["function"], row["namespace"], row["id"]
        rec = svc.registry.get(fn, ns)
        if rec is None:
            # A failed attempt, not an instant dead letter: at startup the registry may still be
            # loading, and a function may be redeployed right after `rm`.
            err = error_dict(FunctionNotFound(f"function {fn!r} does not exist (removed?)"))
            await self._failed(lease, err, RetryPolicy())
            return
        policy = RetryPolicy.from_config(rec.config.async_)
        if expired(policy, created_at=row["created_at"], now=svc.clock()):
            err = {"errorType": "EventExpired", "stackTrace": [],
                   "errorMessage": f"older than max_event_age_s={policy.max_event_age_s:g}"}
            await self._dead_letter(lease, err, "event_expired", policy)
            return
        try:
            with tracing.delivery(svc.obs.tracing, row.get("traceparent"),
                                  due_at=row["next_attempt_at"], attempt=row["attempts"]):
                async with lease.hold():
                    outcome = await svc.invoker.invoke(fn, json.loads(row["payload"]),
                                                       trigger=row["trigger"], request_id=rid,
                                                       namespace=ns)
        except (TooManyRequests, InstanceLost) as e:
            # Throttled, or the cluster node running it went away: not a failure of the code;
            # wait and try again without using a retry.
            throttled = isinstance(e, TooManyRequests)
            svc.obs.metrics.async_outcome(ns, fn, "throttled" if throttled else "node_lost")
            after = e.retry_after_s if isinstance(e, TooManyRequests) else 1
            wait = max(1.0, float(after)) * (0.5 + random.random())
            now = svc.clock()
            await svc.db.run(lambda c: queue.release(c, rid, now=now, next_attempt_at=now + wait))
            await lease.again(now + wait)
            return
        except SquallError as e:  # function removed meanwhile, sandbox could not start, ...
            await self._failed(lease, error_dict(e), policy)
            return
        if outcome.error is None:
            await self._succeeded(lease, outcome.value, policy)
        else:
            await self._failed(lease, outcome.error, policy)

    async def _follow_up(self, follow: dict[str, Any] | None) -> None:
        """A function destination was written with the outcome: hand it to the carrier."""
        if follow is not None:
            await self.svc.queue.publish([EventRef(follow["id"], follow["namespace"])])

    async def _succeeded(self, lease: Lease, value: Any, policy: RetryPolicy) -> None:
        row = lease.row
        record = delivery.destination_record(row, "succeeded", result=value)
        follow = delivery.function_destination(policy.on_success, record, now=self.svc.clock(),
                                               namespace=row["namespace"])
        tracing.carry(follow, row)
        self.svc.obs.metrics.async_outcome(row["namespace"], row["function"], "succeeded")
        now = self.svc.clock()
        await self._successes({"id": row["id"], "now": now, "result": value,
                               "follow_up": follow})
        await self._follow_up(follow)
        await lease.done()
        await delivery.post_destination(self.svc, row, policy.on_success, record)

    async def _failed(self, lease: Lease, error: dict[str, Any], policy: RetryPolicy) -> None:
        svc = self.svc
        row = lease.row
        now = svc.clock()
        decision = after_failure(policy, attempt=row["attempts"], created_at=row["created_at"],
                                 now=now, rand=random.random())
        if decision.retry_at is None:
            await self._dead_letter(lease, error, decision.reason, policy)
            return
        at = decision.retry_at
        svc.obs.metrics.async_outcome(row["namespace"], row["function"], "retried")
        await svc.db.run(lambda c: queue.retry_later(c, row["id"], now=now, error=error,
                                                     next_attempt_at=at))
        await lease.again(at)
        svc.logs.append(row["function"], row["id"],
                        f"[squall] async attempt {row['attempts']}/{policy.max_attempts} failed"
                        f" ({_describe(error)}); retrying in {at - now:.1f}s", row["namespace"])

    async def _dead_letter(self, lease: Lease, error: dict[str, Any], reason: str,
                           policy: RetryPolicy) -> None:
        svc = self.svc
        row = lease.row
        record = delivery.destination_record(row, "dead_lettered", error=error)
        follow = delivery.function_destination(policy.on_failure, record, now=svc.clock(),
                                               namespace=row["namespace"])
        tracing.carry(follow, row)
        svc.obs.metrics.async_outcome(row["namespace"], row["function"], "dead_lettered")
        dlq_id = uuid.uuid4().hex
        now = svc.clock()
        await svc.db.run(lambda c: queue.dead_letter(c, row, dlq_id=dlq_id, now=now, error=error,
                                                     follow_up=follow))
        await self._follow_up(follow)
        await lease.done()
        svc.logs.append(row["function"], row["id"],
                        f"[squall] async event dead-lettered as {dlq_id} after"
                        f" {row['attempts']} attempt(s) ({reason}): {_describe(error)}",
                        row["namespace"])
        await delivery.post_destination(svc, row, policy.on_failure, record)
