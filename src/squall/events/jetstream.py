"""NATS JetStream as the carrier of the async queue: ``squall up --queue nats://HOST:PORT``.

The store's events row stays the record of every event; JetStream only carries delivery.

- One stream ``<PREFIX>_EVENTS`` (work-queue retention, file storage), subjects
  ``<prefix>.events.<tenant>``: one message per event, its body the event id, ``Nats-Msg-Id``
  the event id, so a second publish of an event within the stream's duplicate window (2 min) is
  dropped by JetStream. ``?prefix=NAME`` in the URL names another set (default ``squall``).
- One durable pull consumer ``<prefix>-workers`` shared by every gateway: explicit ack,
  AckWait = ``settings.async_lease_s``, no delivery limit, no limit on unacknowledged messages
  (a retry waiting for its backoff is one of them). A gateway killed mid-delivery: its
  unacknowledged messages go to another gateway after AckWait.
- Accept: the row is committed, then JetStream acknowledges the publish, then the 202. NATS
  unreachable: the row is withdrawn and the submit fails with 503 ``queue_unavailable``.
- Delivery: the pulled ids are claimed in the store in one statement (``queue.claim_ids``):

  ============================================  ===========================================
  the row                                       the message
  ============================================  ===========================================
  missing (withdrawn, pruned)                   ack
  finished (a redelivered duplicate)            ack: it does not run twice
  queued/failed, due later (backoff, throttle)  nak with the delay until it is due
  running under another gateway's live lease    nak until that lease ends
  claimed (due, or its lease ran out)           invoke; +WPI and the row's lease moved on every
                                                lease/3 s while it runs; outcome written, then
                                                ack (final) or nak with the retry's delay
  ============================================  ===========================================

- Reconciliation, for rows committed whose message never made it (a crash between commit and
  publish, NATS down when a destination, redrive or schedule firing was written): at startup,
  every ``RECONCILE_EVERY_S``, and when ``service.wake`` is set (the object store wrote
  storage-trigger events without saying which). An event never claimed and created ``GRACE_S``
  before the newest message the consumer delivered (or before now, when nothing is waiting
  undelivered) was never published: publish it, under its own id (a duplicate is dropped).
  When the consumer is idle (nothing undelivered or unacknowledged), any unfinished event
  overdue by ``GRACE_S`` gets a fresh message; the claim makes an extra one harmless.
- Startup on a store of its own (SQLite): the events the previous process left running are
  requeued and published again at once instead of after AckWait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from squall.events.queues import Dispatch, EventRef, InvalidQueue, QueueUnavailable
from squall.store import queue

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from squall.events.service import EventService

log = logging.getLogger("squall.events.jetstream")

CONNECT_TIMEOUT_S = 5.0  # at startup: `squall up` stops with queue_unavailable after this
PUBLISH_TIMEOUT_S = 5.0
FETCH_WAIT_S = 5.0  # a pull waits this long for a message, then the loop looks around
DUPLICATE_WINDOW_S = 120.0
RECONCILE_EVERY_S = 15.0
GRACE_S = 10.0  # covers commit -> publish, a pulled batch not claimed yet, clock skew
SWEEP_OVERLAP_S = 5.0
MIN_DELAY_S = 0.05
ERROR_PAUSE_S = 1.0
RECONCILE_LIMIT = 1000
_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# What a broken or unreachable NATS raises (nats-py's errors, sockets, its timeouts).
NatsErrors = (nats.errors.Error, OSError, asyncio.TimeoutError)


@dataclass(frozen=True)
class Target:
    """Where the events go: the server URL (credentials kept) and the names derived from the
    prefix (stream ``SQUALL_EVENTS``, subjects ``squall.events.<tenant>``, consumer
    ``squall-workers`` for the default prefix)."""

    servers: str
    public: str  # the URL without credentials, for messages
    prefix: str

    @property
    def stream(self) -> str:
        return f"{self.prefix.upper()}_EVENTS"

    @property
    def consumer(self) -> str:
        return f"{self.prefix}-workers"

    @property
    def subjects(self) -> str:
        return f"{self.prefix}.events.*"

    def subject(self, namespace: str) -> str:
        return f"{self.prefix}.events.{namespace}"  # tenant names are subject tokens


def parse_url(url: str) -> Target:
    """``nats://[user:password@]HOST:PORT[?prefix=NAME]`` (or ``tls://``). Raises InvalidQueue."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("nats", "tls") or not parts.hostname or port == -1 or parts.path \
            not in ("", "/"):
        raise InvalidQueue("--queue must look like nats://HOST:PORT[?prefix=NAME]")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"prefix"})
    if unknown:
        raise InvalidQueue(f"unknown --queue option {unknown[0]!r}; the one option is prefix")
    prefix = query.get("prefix", ["squall"])[-1]
    if not _PREFIX_RE.match(prefix):
        raise InvalidQueue(f"--queue prefix {prefix!r}: 1-32 of a-z 0-9 _ -, starting with a"
                           " letter or digit")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if port is None else f"{host}:{port}"
    return Target(urlunsplit((parts.scheme, parts.netloc, "", "", "")),
                  f"{parts.scheme}://{netloc}", prefix)


class JetStreamLease:
    """One pulled message whose row this gateway claimed."""

    def __init__(self, carrier: JetStreamQueue, msg: Msg, row: dict[str, Any]) -> None:
        self.carrier = carrier
        self.msg = msg
        self.row = row
        self._settled = False

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._keepalive(), name=f"keepalive-{self.row['id']}")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _keepalive(self) -> None:
        svc, lease_s = self.carrier.svc, self.carrier.lease_s
        # Worked example: lease 960 s -> +WPI every 320 s, so two can be lost before AckWait.
        every = max(0.2, lease_s / 3)
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(*NatsErrors):
                await self.msg.in_progress()
            until = svc.clock() + lease_s
            await svc.db.run(functools.partial(queue.extend_lease, id=self.row["id"],
                                               until=until))

    async def done(self) -> None:
        await self._settle(self.msg.ack)

    async def again(self, at: float) -> None:
        delay = max(MIN_DELAY_S, at - self.carrier.svc.clock())
        await self._settle(functools.partial(self.msg.nak, delay=delay))

    async def _settle(self, action: Callable[[], Awaitable[None]]) -> None:
        # The row says what happened already: a lost ack or nak only means the message comes
        # back after AckWait and finds the row finished, or due.
        if self._settled:
            return
        self._settled = True
        try:
            await action()
        except NatsErrors as exc:
            log.info("event %s: settling its message failed (%s); it is redelivered after"
                     " AckWait", self.row["id"], exc)


class JetStreamQueue:
    """The carrier (``squall.events.queues.EventQueue``) on a NATS JetStream stream."""

    def __init__(self, url: str, service: EventService) -> None:
        self.target = parse_url(url)
        self.svc = service
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._freed = asyncio.Event()
        self._seen_upto = 0.0  # stream time of the newest first delivery this gateway pulled
        self._last_error = ""
        self._closing = False
        self.published = 0  # messages JetStream took (duplicates it dropped included)
        self.republished = 0  # of them, sent by reconciliation or recovery

    @property
    def lease_s(self) -> float:
        return self.svc.worker.lease_s

    # --- connection -----------------------------------------------------------------------

    async def open(self) -> None:
        errors: list[BaseException] = []

        async def on_error(exc: Exception) -> None:
            errors.append(exc)
            del errors[:-1]

        async def on_disconnect() -> None:
            if self._closing:
                return
            log.warning("NATS at %s: disconnected; async submits answer 503 queue_unavailable"
                        " until it is back", self.target.public)

        async def on_reconnect() -> None:
            log.warning("NATS at %s: reconnected", self.target.public)

        nc = NATS()
        try:
            # nats-py's first connect retries without end with max_reconnect_attempts=-1 (the
            # setting that keeps a running gateway reconnecting): bound it from outside.
            await asyncio.wait_for(nc.connect(
                servers=[self.target.servers], name="squall-events", connect_timeout=2,
                allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=1,
                error_cb=on_error, disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect), CONNECT_TIMEOUT_S)
            js = nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
            await self._ensure_stream(js)
            await js.add_consumer(self.target.stream, ConsumerConfig(
                durable_name=self.target.consumer, ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.lease_s, max_deliver=-1, max_ack_pending=-1,
                deliver_policy=DeliverPolicy.ALL, filter_subject=self.target.subjects))
            self._sub = await js.pull_subscribe_bind(self.target.consumer, self.target.stream)
        except (*NatsErrors, QueueUnavailable) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            if isinstance(exc, QueueUnavailable):
                raise
            cause = errors[-1] if errors and isinstance(exc, asyncio.TimeoutError) else exc
            raise QueueUnavailable(f"cannot use NATS JetStream at {self.target.public}: "
                                   f"{type(cause).__name__}: {cause}".rstrip(": ")) from None
        self._nc, self._js = nc, js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        t = self.target
        try:
            info = await js.stream_info(t.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(StreamConfig(
                name=t.stream, subjects=[t.subjects], retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S))
            return
        if t.subjects not in (info.config.subjects or []):
            raise QueueUnavailable(f"stream {t.stream} at {t.public} exists without the subjects"
                                   f" {t.subjects}: pick another ?prefix= or remove it")

    async def close(self) -> None:
        self._closing = True
        nc, self._nc, self._js, self._sub = self._nc, None, None, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    # --- publishing -----------------------------------------------------------------------

    async def publish(self, events: Sequence[EventRef], *, strict: bool = False) -> None:
        if not events:
            return
        try:
            await self._send(events)
        except QueueUnavailable as exc:
            if strict:
                raise
            log.warning("%s; reconciliation publishes %d event(s) later", exc.message,
                        len(events))

    async def _send(self, events: Sequence[EventRef],
                    msg_ids: Sequence[str] | None = None) -> None:
        """Publish and wait for JetStream's acknowledgements. Raises QueueUnavailable."""
        nc, js, t = self._nc, self._js, self.target
        if nc is None or js is None or not nc.is_connected:
            raise QueueUnavailable(f"NATS at {t.public} is not connected")
        ids = msg_ids or [e.id for e in events]
        results = await asyncio.gather(*(
            js.publish(t.subject(e.namespace), e.id.encode(), timeout=PUBLISH_TIMEOUT_S,
                       stream=t.stream, headers={"Nats-Msg-Id": mid})
            for e, mid in zip(events, ids, strict=True)), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        self.published += len(results) - len(failed)
        for r in failed:
            if not isinstance(r, NatsErrors):
                raise r
        if failed:
            raise QueueUnavailable(f"NATS JetStream at {t.public} did not take"
                                   f" {len(failed)} event(s): {type(failed[0]).__name__}:"
                                   f" {failed[0]}".rstrip(": "))

    # --- delivering -----------------------------------------------------------------------

    async def recover(self) -> None:
        """A store of its own: what the previous process left running is requeued now and
        published again under a fresh message id (its old message would only come back after
        AckWait; when it does, it finds the row finished, or claims it if it is due)."""
        svc = self.svc
        if not svc.db.recovers:
            return  # those are other gateways' live work, or come back after AckWait

        def take(c: Any) -> list[dict[str, Any]]:
            rows = queue.running(c)
            queue.recover(c, now=svc.clock())
            return rows

        rows = await svc.db.run(take)
        if not rows:
            return
        log.info("requeued %d async events interrupted by the previous shutdown", len(rows))
        try:
            await self.republish(rows, "recover")
        except QueueUnavailable as exc:  # their old messages come back after AckWait
            log.warning("%s; the interrupted events wait for AckWait", exc.message)

    async def run(self, worker: Dispatch) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._reconcile_loop(), name="jetstream-reconcile")
            tg.create_task(self._sweep_loop(), name="jetstream-sweep")
            while True:
                await self.step(worker, tg)

    def freed(self) -> None:
        self._freed.set()

    def reserve(self) -> float | None:
        return None  # every event goes through the stream

    def hand(self, row: dict[str, Any] | None) -> None:
        pass

    async def step(self, worker: Dispatch, tg: asyncio.TaskGroup) -> None:
        """Pull as many messages as there are free slots (waiting up to FETCH_WAIT_S for the
        first), claim their rows, start the deliveries, settle the rest."""
        await worker.housekeeping(self.svc.clock())
        self._freed.clear()
        free = worker.free()
        if free <= 0:
            await self._freed.wait()  # all slots busy: a finishing delivery wakes us
            return
        assert self._sub is not None, "open() first"
        try:
            msgs = await self._sub.fetch(free, timeout=FETCH_WAIT_S)
        except TimeoutError:  # nats-py's own, or asyncio's: nothing to pull
            return
        except NatsErrors as exc:
            self._report(f"pulling from NATS at {self.target.public} failed: {exc!r}")
            await asyncio.sleep(ERROR_PAUSE_S)
            return
        self._last_error = ""
        await self._dispatch(worker, tg, msgs)

    async def _dispatch(self, worker: Dispatch, tg: asyncio.TaskGroup, msgs: list[Msg]) -> None:
        ids: list[str] = []
        for msg in msgs:
            ids.append(msg.data.decode(errors="replace"))
            meta = msg.metadata
            if meta.num_delivered == 1:
                self._seen_upto = max(self._seen_upto, meta.timestamp.timestamp())
        now = self.svc.clock()
        claimed, others = await self.svc.db.run(functools.partial(
            queue.claim_ids, ids=list(dict.fromkeys(ids)), now=now, lease_s=self.lease_s))
        rows = {r["id"]: r for r in claimed}
        # a second message of an event claimed from this very batch waits for its lease
        for r in claimed:
            others[r["id"]] = {"status": "running", "lease_until": now + self.lease_s}
        for msg, rid in zip(msgs, ids, strict=True):
            row = rows.pop(rid, None)
            if row is not None:
                worker.start(tg, JetStreamLease(self, msg, row))
            else:  # not due, finished, gone (see the module docstring's table)
                await self._defer(msg, others.get(rid), now)

    async def _defer(self, msg: Msg, state: dict[str, Any] | None, now: float) -> None:
        """A message whose row is not ours to run now (see the module docstring's table)."""
        try:
            if state is None:
                # withdrawn (its submit failed) or pruned; or a gateway on another store shares
                # this prefix, which must not be: its events would be dropped here
                log.warning("event %s has no row in this store: its message is dropped (do "
                            "gateways of different stores share --queue's prefix?)",
                            msg.data[:64].decode(errors="replace"))
                await msg.ack()
            elif state["status"] in queue.FINAL:
                await msg.ack()
            elif state["status"] == "running":
                await msg.nak(delay=max(MIN_DELAY_S, float(state["lease_until"] or 0) - now))
            else:
                await msg.nak(delay=max(MIN_DELAY_S, float(state["next_attempt_at"]) - now))
        except NatsErrors as exc:  # it comes back after AckWait
            log.info("settling a message of event %s failed: %s", msg.data[:64], exc)

    def _report(self, text: str) -> None:
        if text != self._last_error:  # once per kind of failure, not once a second
            log.warning("%s", text)
            self._last_error = text

    # --- reconciliation -------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except QueueUnavailable as exc:
                self._report(f"reconciliation waits: {exc.message}")
            except NatsErrors as exc:
                self._report(f"reconciliation waits: NATS at {self.target.public}: {exc!r}")
            except Exception:  # a bug here must not stop the deliveries; the next pass retries
                log.exception("reconciliation of the JetStream queue failed")
            await asyncio.sleep(RECONCILE_EVERY_S)

    async def reconcile(self) -> int:
        """One pass (module docstring). Returns how many events it published again."""
        svc, js, t = self.svc, self._js, self.target
        if js is None:
            raise QueueUnavailable(f"NATS at {t.public} is not connected")
        info = await js.consumer_info(t.stream, t.consumer)
        now = svc.clock()
        waiting = int(info.num_pending or 0)
        # Every message published before the newest one delivered was delivered too (a
        # consumer delivers a stream in order); with nothing undelivered, every message was.
        upto = now if waiting == 0 else self._seen_upto
        lost = await svc.db.run(functools.partial(
            queue.undelivered, until=upto - GRACE_S, due_before=now - GRACE_S,
            limit=RECONCILE_LIMIT))
        count = 0
        if lost:
            await self._send([EventRef(r["id"], r["namespace"]) for r in lost])
            count += len(lost)
        if waiting == 0 and not info.num_ack_pending:
            stale = await svc.db.run(functools.partial(queue.overdue, before=now - GRACE_S,
                                                       limit=RECONCILE_LIMIT))
            stale = [r for r in stale if r["id"] not in {x["id"] for x in lost}]
            if stale:
                await self.republish(stale, "overdue")
                count += len(stale)
        if count:
            log.info("reconciliation published %d event(s) that had no message", count)
            self.republished += len(lost)
        return count

    async def republish(self, rows: list[dict[str, Any]], why: str) -> None:
        """Fresh messages (not deduplicated against the events' first ones). Raises
        QueueUnavailable."""
        stamp = int(self.svc.clock())
        await self._send([EventRef(r["id"], r["namespace"]) for r in rows],
                         [f"{r['id']}:{why}:{r.get('attempts', 0)}:{stamp}" for r in rows])
        self.republished += len(rows)

    async def _sweep_loop(self) -> None:
        """``service.wake``: rows were written by someone who did not publish them (storage
        triggers): publish the recent unclaimed ones under their own ids, which JetStream
        drops when they were published already."""
        svc = self.svc
        since = svc.clock() - SWEEP_OVERLAP_S
        while True:
            await svc.wake.wait()
            svc.wake.clear()
            start = svc.clock()
            try:
                rows = await svc.db.run(functools.partial(
                    queue.undelivered, since=since, limit=RECONCILE_LIMIT))
                await self.publish([EventRef(r["id"], r["namespace"]) for r in rows])
            except Exception:  # reconciliation publishes them later
                log.exception("publishing events written by others failed")
                continue
            since = start - SWEEP_OVERLAP_S
