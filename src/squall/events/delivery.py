"""Destinations (on_success / on_failure) and the ``Deliver`` callable that connectors call.

A destination is ``"function:NAME"`` (an async event to that function, enqueued in the same
transaction as the outcome, so it is as durable as the outcome) or an ``http(s)://`` URL, POSTed
once after the outcome is committed with a 10 s timeout: best effort, a failure is only logged.
The record sent is ``{request_id, function, status, result | error, attempts}``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import uuid
from typing import TYPE_CHECKING, Any

import httpx

from squall.errors import FunctionNotFound, SquallError, TooManyRequests
from squall.events.retry import RetryPolicy, after_failure
from squall.ids import new_request_id
from squall.observability import tracing
from squall.store import queue

if TYPE_CHECKING:
    from squall.events.connectors.base import Deliver, TriggerSpec
    from squall.events.service import EventService

URL_TIMEOUT_S = 10.0
# A connector holds its message (unacked) while it retries in place, so its waits are capped
# lower than the queue's: a poison message should reach the dead letters in minutes, not hours.
CONNECTOR_BACKOFF_CAP_S = 30.0


def destination_record(row: dict[str, Any], status: str, *, result: Any = None,
                       error: dict[str, Any] | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"request_id": row["id"], "function": row["function"],
                           "status": status, "attempts": row["attempts"]}
    if error is None:
        rec["result"] = result
    else:
        rec["error"] = error
    return rec


def function_destination(dest: str | None, record: dict[str, Any], *, now: float,
                         namespace: str = "default") -> dict[str, Any] | None:
    """Enqueue kwargs for a ``function:NAME`` destination (in the same tenant), else None."""
    if not dest or not dest.startswith("function:"):
        return None
    return {"id": new_request_id(), "function": dest.removeprefix("function:"),
            "namespace": namespace, "trigger": "async",
            "payload": json.dumps(record, separators=(",", ":"), default=str), "now": now,
            "source": f"destination:{record['request_id']}"}


async def post_destination(svc: EventService, row: dict[str, Any], dest: str | None,
                           record: dict[str, Any]) -> None:
    """POST the record to an http(s) destination; log the outcome in the function's logs."""
    if not dest or dest.startswith("function:"):
        return
    fn, rid, ns = row["function"], row["id"], row.get("namespace", "default")
    if not dest.startswith(("http://", "https://")):
        svc.logs.append(fn, rid, f"[squall] destination {dest!r} ignored: use function:NAME"
                                 " or an http(s) URL", ns)
        return
    try:
        async with httpx.AsyncClient(timeout=URL_TIMEOUT_S) as client:
            resp = await client.post(dest, json=record)
        if resp.status_code >= 300:
            svc.logs.append(fn, rid, f"[squall] destination {dest} answered {resp.status_code}",
                            ns)
    except httpx.HTTPError as e:
        svc.logs.append(fn, rid, f"[squall] destination {dest} failed: {type(e).__name__}: {e}",
                        ns)


def _err(e: BaseException) -> dict[str, Any]:
    msg = e.message if isinstance(e, SquallError) else str(e)
    return {"errorType": type(e).__name__, "errorMessage": msg, "stackTrace": []}


def make_deliver(svc: EventService, spec: TriggerSpec) -> Deliver:
    """The ``Deliver`` for one connector trigger: invoke with the batch, retry in place with the
    function's policy, dead-letter after the last failure. True = handled (ack), False = not
    (function removed). Cancellation (shutdown) propagates: the connector must not ack."""

    async def deliver(events: list[dict[str, Any]]) -> bool:
        payload: Any = events[0] if spec.batch_size == 1 and len(events) == 1 else events
        rid = new_request_id()  # one request id for every attempt: handlers can deduplicate
        first = svc.clock()
        svc.obs.metrics.connector_delivered(spec.id, spec.type, events, first)
        attempt = 0
        while True:
            rec = svc.registry.get(spec.function, spec.namespace)
            if rec is None:
                svc.triggers.note(spec.id, error="function not found")
                return False
            policy = RetryPolicy.from_config(rec.config.async_)
            attempt += 1
            try:
                with tracing.delivery(svc.obs.tracing, events[0].get("traceparent"),
                                      due_at=first, attempt=attempt, name="receive"):
                    outcome = await svc.invoker.invoke(spec.function, payload, trigger=spec.type,
                                                       request_id=rid, namespace=spec.namespace)
                error = outcome.error
            except TooManyRequests as e:
                attempt -= 1  # throttled, not failed: wait without using a retry
                await asyncio.sleep(max(1.0, float(e.retry_after_s)) * (0.5 + random.random()))
                continue
            except FunctionNotFound:
                svc.triggers.note(spec.id, error="function not found")
                return False
            except SquallError as e:
                error = _err(e)
            row = {"id": rid, "function": spec.function, "namespace": spec.namespace,
                   "trigger": spec.type, "attempts": attempt,
                   "payload": json.dumps(payload, separators=(",", ":"), default=str)}
            if error is None:
                svc.triggers.note(spec.id)
                record = destination_record(row, "succeeded", result=outcome.value)
                await _destinations(svc, row, policy.on_success, record)
                return True
            now = svc.clock()
            decision = after_failure(policy, attempt=attempt, created_at=first, now=now,
                                     rand=random.random(), cap_s=CONNECTOR_BACKOFF_CAP_S)
            text = f"{error.get('errorType')}: {error.get('errorMessage')}"
            svc.triggers.note(spec.id, error=text)
            if decision.retry_at is None:
                dlq_id = uuid.uuid4().hex
                svc.obs.metrics.dead_lettered(spec.namespace, spec.function, spec.type)
                await svc.db.run(functools.partial(queue.insert_dead_letter, event=row,
                                                   dlq_id=dlq_id, now=now, error=error))
                svc.logs.append(spec.function, rid, f"[squall] {spec.type} delivery dead-lettered"
                                f" as {dlq_id} after {attempt} attempt(s): {text}", spec.namespace)
                record = destination_record(row, "dead_lettered", error=error)
                await _destinations(svc, row, policy.on_failure, record)
                return True
            svc.logs.append(spec.function, rid, f"[squall] {spec.type} attempt {attempt}/"
                            f"{policy.max_attempts} failed ({text}); retrying in"
                            f" {decision.retry_at - now:.1f}s", spec.namespace)
            await asyncio.sleep(decision.retry_at - now)

    return deliver


async def _destinations(svc: EventService, row: dict[str, Any], dest: str | None,
                        record: dict[str, Any]) -> None:
    ns = row.get("namespace", "default")
    follow = function_destination(dest, record, now=svc.clock(), namespace=ns)
    if follow is not None:
        # Through submit_event so a missing destination function is reported, not queued.
        try:
            await svc.submit_event(follow["function"], record, trigger="async",
                                   source=follow["source"], namespace=ns)
        except SquallError as e:
            svc.logs.append(row["function"], row["id"], f"[squall] destination {dest} failed:"
                                                        f" {e.message}", ns)
    await post_destination(svc, row, dest, record)
