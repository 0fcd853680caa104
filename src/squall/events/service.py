"""EventService: accepts async events durably and owns the worker, scheduler and trigger manager.

``submit`` writes the event in one transaction before it returns, so a 202 means the event
survives a kill -9 (see store/db.py on WAL durability); with a NATS JetStream carrier
(``--queue nats://``) the 202 also waits for JetStream's acknowledgement of the event's message,
and a carrier that cannot take it fails the submit with 503 ``queue_unavailable`` after the row
is withdrawn (squall.events.queues). Delivery is at least once; every attempt of an event uses
the event id as the invocation's request id, so a handler can deduplicate on
``context.aws_request_id``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from squall.bundle.spec import FunctionConfig
from squall.config import Settings
from squall.errors import FunctionNotFound, InvalidJSON, NotFound, PayloadTooLarge
from squall.events.queues import EventQueue, EventRef, QueueUnavailable, open_queue
from squall.ids import new_request_id
from squall.invoker.api import Invoker
from squall.observability import Observability
from squall.observability.tracing import current_traceparent
from squall.store import queue
from squall.store.db import Database, GroupCommit

ASYNC_WORKERS_DEFAULT = 64
log = logging.getLogger("squall.events")


class FunctionRecord(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def config(self) -> FunctionConfig: ...


Listener = Callable[[str, Any], Awaitable[None]]


class Registry(Protocol):
    def get(self, name: str, namespace: str = "default") -> Any: ...
    def add_listener(self, fn: Listener) -> None: ...


class LogSink(Protocol):
    def append(self, function: str, request_id: str, line: str,
               namespace: str = "default") -> None: ...


def _json_payload(body: bytes, limit: int) -> str:
    """Validate an async body: at most ``limit`` bytes of JSON (empty means {}); return the text."""
    if len(body) > limit:
        raise PayloadTooLarge(f"async payload is {len(body)} bytes; the limit is {limit}"
                              " (settings.max_async_payload)")
    if not body.strip():
        return "{}"
    try:  # UTF-8 only (RFC 8259); decoding first also spares json its encoding guess
        text = body.decode("utf-8")
        json.loads(text)
    except ValueError as e:  # UnicodeDecodeError is one
        raise InvalidJSON(f"the event body is not valid JSON: {e}") from None
    return text


class EventService:
    """Built by the server; ``run`` is one task of the server's TaskGroup until it is cancelled."""

    def __init__(self, settings: Settings, db: Database, invoker: Invoker, registry: Registry,
                 logs: LogSink, *, clock: Callable[[], float] = time.time) -> None:
        from squall.events.scheduler import Scheduler
        from squall.events.triggers import TriggerManager
        from squall.events.worker import Worker

        self.settings = settings
        self.db = db
        self.invoker = invoker
        self.registry = registry
        self.logs = logs
        self.clock = clock
        # set when event rows were written: the carrier looks for them at once (the object
        # store sets it after a write that fired storage triggers)
        self.wake = asyncio.Event()
        # tenant quotas and secrets (squall.tenancy.service.Identity), set by the server
        self.identity: Any = None
        self.obs = Observability()  # metrics and tracing, replaced by the server's
        self.queue: EventQueue = open_queue(settings, self)  # raises InvalidQueue
        # concurrent submits share one transaction (a group commit): accepted events per second
        # are bounded by the db thread's hops, not by each event's own
        self._writes: GroupCommit[dict[str, Any], tuple[str, bool]] = GroupCommit(
            db, queue.enqueue_many, lambda c, item: queue.enqueue(c, **item))
        self.worker = Worker(self)
        self.scheduler = Scheduler(self)
        self.triggers = TriggerManager(self)

    @property
    def workers(self) -> int:
        return int(getattr(self.settings, "async_workers", ASYNC_WORKERS_DEFAULT))

    async def open(self) -> None:
        """Connect the carrier before the first submit. Raises QueueUnavailable."""
        await self.queue.open()

    async def close(self) -> None:
        await self.queue.close()

    async def run(self, *, recover: bool = True) -> None:
        """Recover leases of the previous process (unless the caller did), then run worker,
        scheduler and triggers."""
        if recover:
            await self.queue.recover()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.worker.run(), name="events-worker")
            tg.create_task(self.scheduler.run(), name="events-scheduler")
            tg.create_task(self.triggers.run(), name="events-triggers")

    def record(self, function: str, namespace: str = "default") -> Any:
        rec = self.registry.get(function, namespace)
        if rec is None:
            raise FunctionNotFound(f"function {function!r} does not exist")
        return rec

    async def submit(self, function: str, body: bytes, *, trigger: str = "async",
                     idempotency_key: str | None = None, namespace: str = "default",
                     source: str | None = None) -> tuple[str, bool]:
        """Store an async event; return (request_id, created). ``created`` is False when the
        idempotency key was used before for this function: the first request id comes back.

        Raises FunctionNotFound, PayloadTooLarge (above settings.max_async_payload), InvalidJSON.
        """
        self.record(function, namespace)
        payload = _json_payload(body, self.settings.max_async_payload)
        await self._check_queue_quota(namespace)
        return await self._enqueue(function, payload, trigger=trigger, namespace=namespace,
                                   source=source, idempotency_key=idempotency_key or None)

    async def submit_event(self, function: str, event: Any, *, trigger: str,
                           namespace: str = "default", source: str | None = None,
                           idempotency_key: str | None = None,
                           request_id: str | None = None) -> tuple[str, bool]:
        """Like ``submit`` for an event built by the platform (webhook, redrive, destination)."""
        self.record(function, namespace)
        await self._check_queue_quota(namespace)
        payload = json.dumps(event, separators=(",", ":"))
        if len(payload) > self.settings.max_async_payload:
            raise PayloadTooLarge(f"event is {len(payload)} bytes; the limit is"
                                  f" {self.settings.max_async_payload}")
        return await self._enqueue(function, payload, trigger=trigger, namespace=namespace,
                                   source=source, idempotency_key=idempotency_key,
                                   request_id=request_id)

    async def submit_webhook(self, trigger: dict[str, Any], method: str, path: str,
                             headers: dict[str, str], body: bytes) -> tuple[str, bool]:
        """Enqueue a verified webhook request as a CloudEvent whose id is the request id."""
        from squall.events.webhooks import idempotency_key, webhook_event

        rid = new_request_id()
        event = webhook_event(trigger["name"], rid, method, path, headers, body)
        out = await self.submit_event(trigger["function"], event, trigger="webhook",
                                      namespace=trigger["namespace"], source=trigger["id"],
                                      idempotency_key=idempotency_key(headers), request_id=rid)
        self.triggers.note(trigger["id"])
        return out

    async def _check_queue_quota(self, namespace: str) -> None:
        """429 ``queue_full`` when the tenant already has ``max_queued`` events waiting."""
        if self.identity is None:
            return
        limit = self.identity.limits(namespace).max_queued
        if limit is None:
            return
        from squall.errors import TooManyRequests
        from squall.store.tenants import queued_events

        waiting = await self.db.run(lambda c: queued_events(c, namespace))
        if waiting >= limit:
            raise TooManyRequests(f"tenant {namespace!r} has {waiting} async events waiting, its "
                                  f"limit is {limit}: retry later or raise --max-queued",
                                  retry_after_s=5, code="queue_full")

    async def seal_trigger_secrets(self, namespace: str, function: str, name: str,
                                   config: dict[str, Any]) -> dict[str, Any]:
        """A trigger's literal ``secret`` becomes a tenant secret and the config keeps only a
        ``secret:NAME`` reference, so no plaintext is stored with the trigger."""
        value = config.get("secret")
        if self.identity is None or not isinstance(value, str) or value.startswith("secret:"):
            if isinstance(value, str) and value.startswith("secret:") and self.identity:
                self.identity.secrets.check_refs(namespace, {"secret": value})
            return config
        ref = f"trigger.{function}.{name}"
        await self.identity.secrets.put(namespace, ref, value.encode())
        return {**config, "secret": f"secret:{ref}"}

    async def seal_stored_trigger_secrets(self) -> int:
        """At startup: triggers written before secrets were sealed (a data dir of an earlier
        release) keep a literal ``secret``; move each into the tenant's secrets."""
        moved = 0
        for t in await self.db.run(queue.list_triggers):
            value = t["config"].get("secret")
            if not isinstance(value, str) or value.startswith("secret:"):
                continue
            config = await self.seal_trigger_secrets(t["namespace"], t["function"], t["name"],
                                                     t["config"])
            await self.db.run(functools.partial(queue.update_trigger, id=t["id"], type=t["type"],
                                                config=config, now=self.clock()))
            moved += 1
        return moved

    def trigger_config(self, t: dict[str, Any]) -> dict[str, Any]:
        """A trigger's config with its secret reference opened (for verifying a webhook)."""
        value = t["config"].get("secret")
        if self.identity is None or not isinstance(value, str) or \
                not value.startswith("secret:"):
            return dict(t["config"])
        opened = self.identity.secrets.resolve(t["namespace"], {"secret": value})
        return {**t["config"], "secret": opened["secret"]}

    async def _enqueue(self, function: str, payload: str, *, trigger: str, namespace: str,
                       source: str | None, idempotency_key: str | None,
                       request_id: str | None = None) -> tuple[str, bool]:
        rid = request_id or new_request_id()
        now = self.clock()
        # the submitting request's trace, continued by every attempt (squall.observability)
        tp = None if self.obs.tracing is None else current_traceparent()
        lease_s = self.queue.reserve()  # a free slot here and nothing due: start it at once
        item = dict(id=rid, function=function, namespace=namespace, trigger=trigger,
                    payload=payload, now=now, source=source, idempotency_key=idempotency_key,
                    traceparent=tp, lease_until=None if lease_s is None else now + lease_s)
        if lease_s is None:
            out = await self._writes(item)
            if out[1]:
                await self._publish(EventRef(rid, namespace))
            return out
        written = self._writes.submit(item)
        # handed over when the write is done, whether or not this request still waits for it
        written.add_done_callback(functools.partial(self._hand, item))
        return await asyncio.shield(written)

    def _hand(self, item: dict[str, Any], written: asyncio.Future[tuple[str, bool]]) -> None:
        ok = not written.cancelled() and written.exception() is None and written.result()[1]
        self.queue.hand(queue.leased_row(**item) if ok else None)

    async def _publish(self, ref: EventRef) -> None:
        """Accepted = committed and taken by the carrier. A carrier that refuses it: withdraw
        the row (nothing half-written) and fail with 503; if a delivery claimed it meanwhile
        (the publish landed after all, only its answer was lost), it stays accepted."""
        try:
            await self.queue.publish([ref], strict=True)
        except QueueUnavailable:
            if await self.db.run(lambda c: queue.withdraw(c, ref.id)):
                raise
            log.info("event %s: the carrier's answer was lost but it was delivered", ref.id)

    # --- reads -------------------------------------------------------------------------------

    async def get_invocation(self, request_id: str,
                             namespace: str = "default") -> dict[str, Any]:
        """Where an invocation is. Async ones come from the queue; sync ones from the invocation
        records (``squall.store.invocations.get``). Raises NotFound (also for another
        tenant's invocation)."""
        ev = await self.db.run(lambda c: queue.get_event(c, request_id))
        if ev is not None and ev["namespace"] == namespace:
            return invocation_view(ev)
        rec = await self.db.run(lambda c: _sync_invocation(c, request_id))
        if rec is None or rec.get("namespace", "default") != namespace or ev is not None:
            raise NotFound(f"no invocation with request id {request_id!r}",
                           code="invocation_not_found")
        return rec

    async def list_invocations(self, *, function: str | None = None, source: str | None = None,
                               status: str | None = None, limit: int = 100,
                               namespace: str = "default") -> list[dict[str, Any]]:
        """Async invocations, newest first (a schedule's firings: ``source`` = trigger id)."""
        rows = await self.db.run(lambda c: queue.list_events(
            c, function=function, source=source, status=status, limit=limit,
            namespace=namespace))
        return [invocation_view(r) for r in rows]

    async def list_dead_letters(self, function: str | None = None, limit: int = 100,
                                namespace: str = "default") -> list[dict[str, Any]]:
        rows = await self.db.run(lambda c: queue.list_dead_letters(
            c, function=function, limit=limit, namespace=namespace))
        return [dead_letter_view(r) for r in rows]

    async def get_dead_letter(self, dlq_id: str, namespace: str = "default") -> dict[str, Any]:
        row = await self.db.run(lambda c: queue.get_dead_letter(c, dlq_id))
        if row is None or row["namespace"] != namespace:
            raise NotFound(f"no dead letter {dlq_id[:64]!r}", code="dead_letter_not_found")
        return dead_letter_view(row)

    async def redrive(self, dlq_id: str, namespace: str = "default") -> dict[str, Any]:
        """Enqueue a dead letter again as a new event with a fresh retry budget."""
        dl = await self.get_dead_letter(dlq_id, namespace)
        self.record(dl["function"], dl["namespace"])
        new_id = new_request_id()
        now = self.clock()
        row = await self.db.run(lambda c: queue.redrive(c, dlq_id, new_id=new_id, now=now))
        assert row is not None  # it existed a moment ago; dead letters are never deleted
        if row["redrive_request_id"] == new_id:  # not redriven before
            # not strict: the redrive is committed; a carrier that is down gets it from its
            # reconciliation (squall.events.jetstream)
            await self.queue.publish([EventRef(new_id, row["namespace"])])
        self.logs.append(row["function"], row["request_id"],
                         f"[events] dead letter {dlq_id} redriven as {row['redrive_request_id']}",
                         namespace)
        return dead_letter_view(row)

    async def redrive_function(self, function: str,
                               namespace: str = "default") -> list[dict[str, Any]]:
        rows = await self.db.run(lambda c: queue.list_dead_letters(
            c, function=function, limit=10_000, namespace=namespace))
        return [await self.redrive(r["id"], namespace) for r in rows]


def _sync_invocation(conn: Any, request_id: str) -> dict[str, Any] | None:
    # The lead's invocation store; imported here so this module does not depend on its import
    # order, and absent gracefully while that module is being written.
    try:
        from squall.store import invocations  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    got = invocations.get(conn, request_id)
    if got is None:
        return None
    out = dict(got)
    out.setdefault("request_id", request_id)
    out.setdefault("async", False)
    out.setdefault("attempts", 1)
    out.setdefault("final", True)
    return out


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def invocation_view(ev: dict[str, Any]) -> dict[str, Any]:
    """The public JSON of an async invocation (GET /api/v1/invocations/{id})."""
    status = ev["status"]
    return {
        "request_id": ev["id"], "function": ev["function"], "async": True,
        "trigger": ev["trigger"], "source": ev["source"], "status": status,
        "final": status in queue.FINAL, "attempts": ev["attempts"],
        "created_at": ev["created_at"], "updated_at": ev["updated_at"],
        "started_at": ev["started_at"], "finished_at": ev["finished_at"],
        "next_attempt_at": ev["next_attempt_at"] if status in ("queued", "failed") else None,
        "result": _loads(ev["result"]), "error": _loads(ev["error"]),
    }


def dead_letter_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "request_id": row["request_id"], "function": row["function"],
        "namespace": row["namespace"], "trigger": row["trigger"], "attempts": row["attempts"],
        "error": _loads(row["error"]), "event": _loads(row["payload"]),
        "created_at": row["created_at"], "redriven_at": row["redriven_at"],
        "redrive_request_id": row["redrive_request_id"],
    }
