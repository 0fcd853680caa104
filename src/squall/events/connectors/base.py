"""What every event-source connector shares: the trigger spec, the protocols, batching, reconnects.

A connector turns broker messages into CloudEvents and hands them to ``deliver`` (which applies the
function's retry and dead-letter policy). The guarantees, common to all brokers:

- at least once: a message is acknowledged to its broker only after ``deliver`` returned True;
  on False (or if ``deliver`` raises) it is negatively acknowledged the broker's way (nak, reject
  with requeue, left pending for re-claim, a reconnect) and consumption pauses with backoff so a
  platform that cannot take events does not spin;
- batching: up to ``batch_size`` messages, or whatever arrived within ``batch_window_s`` of the
  first one, make one delivery; at most ``concurrency`` deliveries are in flight;
- resilience: any error ends the broker session, the status becomes ``error`` with the detail,
  and ``run`` reconnects with exponential backoff and jitter. ``run`` never raises except
  ``CancelledError``.

A concrete connector subclasses ``ReconnectingConnector`` and implements ``_session(pump)``:
connect, call ``self._running()``, then feed ``pump.put(Inbound(...))`` until the connection
fails (raise) - the pump runs beside it in the same TaskGroup and is discarded with the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from squall.errors import InvalidConfig

from .backoff import Backoff

log = logging.getLogger("squall.events.connectors")


@dataclass(frozen=True)
class TriggerSpec:
    id: str
    function: str
    type: str
    config: dict[str, Any]
    batch_size: int = 1
    batch_window_s: float = 0.0
    concurrency: int = 1
    namespace: str = "default"  # the tenant the function belongs to


class Deliver(Protocol):
    async def __call__(self, events: list[dict[str, Any]]) -> bool:
        """Invoke the function with the batch, retries and dead-lettering included.

        True = handled (succeeded or dead-lettered): ack. False = not handled: do not ack.
        """
        ...


class StatusReporter(Protocol):
    def __call__(self, state: str, detail: str = "") -> None:
        """``state`` is "connecting", "running" or "error" (with ``detail``)."""
        ...


class Connector(Protocol):
    def __init__(self, spec: TriggerSpec, deliver: Deliver, status: StatusReporter) -> None: ...

    async def run(self) -> None:
        """Consume until cancelled; reconnect with backoff; never raise but CancelledError."""
        ...


@dataclass
class Inbound:
    """One broker message as the pump sees it. The callables talk to the broker.

    ``ack``/``nack`` are awaited at most once each (one of them). ``touch`` (optional) tells the
    broker the message is still being worked on, so a slow delivery (function retries with backoff
    can take minutes) is not redelivered elsewhere meanwhile.
    """

    event: dict[str, Any]
    ack: Callable[[], Awaitable[None]]
    nack: Callable[[], Awaitable[None]]
    touch: Callable[[], Awaitable[None]] | None = None


class Reconnect(Exception):
    """Raised inside a session to reconnect at once (e.g. MQTT redelivers only on reconnect)."""


@dataclass
class Pump:
    """Batches inbound messages and runs deliveries; one per broker session.

    The queue is bounded at ``batch_size * concurrency`` so a fast broker cannot fill memory: the
    session's reader blocks on ``put`` (and the broker's own prefetch limit stops it too).
    """

    spec: TriggerSpec
    deliver: Deliver
    touch_interval_s: float = 10.0
    pause: Backoff = field(default_factory=lambda: Backoff(base_s=0.2, cap_s=10.0))
    queue: asyncio.Queue[Inbound] = field(init=False)

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.spec.batch_size * self.spec.concurrency)
        self._slots = asyncio.Semaphore(self.spec.concurrency)

    async def put(self, item: Inbound) -> None:
        await self.queue.put(item)

    async def run(self) -> None:
        """Collect, then dispatch into a free slot; forever. Ack/nack failures propagate."""
        async with asyncio.TaskGroup() as tg:
            while True:
                await self._slots.acquire()
                try:
                    batch = await self._collect()
                except BaseException:
                    self._slots.release()
                    raise
                tg.create_task(self._dispatch(batch))

    async def _collect(self) -> list[Inbound]:
        batch = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.batch_window_s
        while len(batch) < self.spec.batch_size:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    batch.append(self.queue.get_nowait())
                else:  # not wait_for: see squall.aio.wait_event
                    async with asyncio.timeout(remaining):
                        batch.append(await self.queue.get())
            except (asyncio.QueueEmpty, TimeoutError):
                break
        return batch

    async def _dispatch(self, batch: list[Inbound]) -> None:
        try:
            ok = await self._deliver_touching(batch)
            for item in batch:
                await (item.ack() if ok else item.nack())
            if ok:
                self.pause.reset()
            else:
                # Not handled (platform stopping, function gone): hold this slot for a while so a
                # requeueing broker does not hand the same messages straight back in a hot loop.
                await asyncio.sleep(self.pause.next_s())
        finally:
            self._slots.release()

    async def _deliver_touching(self, batch: list[Inbound]) -> bool:
        touches = [item.touch for item in batch if item.touch is not None]
        async with asyncio.TaskGroup() as tg:
            keeper = tg.create_task(self._keep_touching(touches)) if touches else None
            try:
                return await self.deliver([item.event for item in batch]) is True
            except Exception:
                log.exception("trigger %s: deliver raised; not acknowledging", self.spec.id)
                return False
            finally:
                if keeper is not None:
                    keeper.cancel()

    async def _keep_touching(self, touches: list[Callable[[], Awaitable[None]]]) -> None:
        while True:
            await asyncio.sleep(self.touch_interval_s)
            for touch in touches:
                # Best effort: if the broker is gone the ack will fail and the session restarts.
                with contextlib.suppress(Exception):
                    await touch()


class ReconnectingConnector:
    """Base for the concrete connectors: the reconnect loop and status reporting."""

    touch_interval_s: float = 10.0

    def __init__(self, spec: TriggerSpec, deliver: Deliver, status: StatusReporter) -> None:
        self.spec = spec
        self.deliver = deliver
        self.status = status
        self.backoff = Backoff()

    async def run(self) -> None:
        while True:
            self.status("connecting")
            delay = 0.0
            try:
                pump = Pump(self.spec, self.deliver, touch_interval_s=self.touch_interval_s)
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(pump.run())
                    await self._session(pump)
                    raise ConnectionError("session ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a connector never crashes the platform
                leaf = _first_leaf(exc)
                if isinstance(leaf, Reconnect):
                    continue
                detail = f"{leaf.__class__.__name__}: {leaf}".rstrip(": ")
                log.warning("trigger %s (%s): %s", self.spec.id, self.spec.type, detail)
                self.status("error", detail)
                delay = self.backoff.next_s()
            await asyncio.sleep(delay)

    def _running(self) -> None:
        """Call once connected and subscribed: resets the backoff and reports ``running``."""
        self.backoff.reset()
        self.status("running")

    async def _session(self, pump: Pump) -> None:
        raise NotImplementedError


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        # Prefer a Reconnect signal wherever it is in the group.
        match = exc.subgroup(Reconnect)
        exc = match.exceptions[0] if match is not None else exc.exceptions[0]
    return exc


# ---- config parsing shared by the connectors' validate() ------------------------------------

class ConfigReader:
    """Typed access to a trigger's config table; every rejection names the key.

    ``done()`` rejects keys nobody asked for, so typos (``subjet``) fail at creation.
    """

    def __init__(self, kind: str, config: Mapping[str, Any]) -> None:
        if not isinstance(config, Mapping):
            raise InvalidConfig(f"{kind} trigger config must be a table")
        self.kind = kind
        self.config = config
        self.seen: set[str] = set()

    def _fail(self, key: str, msg: str) -> InvalidConfig:
        return InvalidConfig(f"{self.kind} trigger: {key}: {msg}", details={"key": key})

    def _get(self, key: str, default: Any, required: bool) -> Any:
        self.seen.add(key)
        if key not in self.config:
            if required:
                raise self._fail(key, "is required")
            return default
        return self.config[key]

    def get_str(self, key: str, default: str | None = None, *, required: bool = False,
            pattern: str | None = None) -> str | None:
        v = self._get(key, default, required)
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            raise self._fail(key, f"must be a non-empty string, got {v!r}")
        if pattern is not None and not re.fullmatch(pattern, v):
            raise self._fail(key, f"{v!r} is not valid (must match {pattern})")
        return v

    def get_int(self, key: str, default: int, lo: int, hi: int) -> int:
        v = self._get(key, default, False)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self._fail(key, f"must be an integer between {lo} and {hi}, got {v!r}")
        return v

    def get_bool(self, key: str, default: bool) -> bool:
        v = self._get(key, default, False)
        if not isinstance(v, bool):
            raise self._fail(key, f"must be true or false, got {v!r}")
        return v

    def get_choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        v = self._get(key, default, False)
        if v not in allowed:
            raise self._fail(key, f"must be one of {', '.join(map(repr, allowed))}, got {v!r}")
        return str(v)

    def get_str_list(self, key: str, default: list[str] | None, *, required: bool = False,
                 allowed: tuple[str, ...] | None = None, pattern: str | None = None) -> list[str]:
        v = self._get(key, default, required)
        if not isinstance(v, list | tuple) or not v or not all(isinstance(x, str) for x in v):
            raise self._fail(key, f"must be a non-empty list of strings, got {v!r}")
        for x in v:
            if allowed is not None and x not in allowed:
                raise self._fail(key, f"{x!r} is not one of {', '.join(map(repr, allowed))}")
            if pattern is not None and not re.fullmatch(pattern, x):
                raise self._fail(key, f"{x!r} is not valid (must match {pattern})")
        return list(v)

    def get_url(self, key: str, default: str, schemes: tuple[str, ...]) -> str:
        v = self.get_str(key, default)
        assert v is not None
        parts = urlsplit(v)
        if parts.scheme not in schemes or not parts.hostname:
            raise self._fail(key, f"must be a {'/'.join(schemes)}:// URL with a host, got {v!r}")
        return v

    def done(self) -> None:
        unknown = sorted(set(self.config) - self.seen)
        if unknown:
            raise self._fail(unknown[0], f"unknown key (allowed: {', '.join(sorted(self.seen))})")


# ---- payload helpers ---------------------------------------------------------------------------

def decode_payload(body: bytes) -> tuple[Any, str]:
    """(data, datacontenttype) for a raw message body: JSON if it parses, else text, else bytes."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body, "application/octet-stream"
    try:
        return json.loads(text), "application/json"
    except ValueError:
        return text, "text/plain"


def public_url(url: str) -> str:
    """The URL without credentials or query, for CloudEvent ``source`` and status messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def safe_name(prefix: str, trigger_id: str, max_len: int = 63) -> str:
    """A broker-safe name from a trigger id: ``<prefix><id>``, odd characters -> '-'."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", trigger_id)
    return f"{prefix}{cleaned}"[:max_len]
