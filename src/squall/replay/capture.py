"""Capture: keep the event of recorded invocations for a bounded time, so they can be replayed.

Which events: ``settings.replay_capture`` = ``failed`` (the default: every status but succeeded),
``all``, or ``off``. What is kept: the event as the function received it, nothing else; never
the environment (where secrets are), never the result. An event a caller sent is stored as sent,
so anything the caller put in it (a token in an HTTP header, say) is readable by keys with the
``read`` scope on that tenant for ``replay_retention_s``: set ``replay_capture = "off"`` where
that is not acceptable.

The hot path pays one call and, for an event that is kept, one list append: the outcome is already
known when the invoker offers the event, and the JSON encoding, the size check and the write all
happen in the batch writer on the store's thread. An event over ``replay_max_event_bytes`` is
recorded as too large (its size, no body): a truncated event would replay as a different one.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from squall.batch import BatchWriter
from squall.errors import Conflict, InvalidConfig, NotFound
from squall.store import captures as store
from squall.store.db import Database

if TYPE_CHECKING:
    import sqlite3

    from squall.agent.node import VersionSpec
    from squall.config import Settings
    from squall.platform import Platform
    from squall.registry import FunctionRecord

log = logging.getLogger("squall.replay")

MODES = ("failed", "all", "off")
MAX_PRUNE_EVERY_S = 3600.0


class CaptureNotFound(NotFound):
    code = "capture_not_found"


class EventTooLarge(Conflict):
    code = "event_too_large"


def should_capture(mode: str, status: str) -> bool:
    """``failed`` keeps every outcome but ``succeeded`` (failed, timeout, oom, crashed)."""
    return mode == "all" or (mode == "failed" and status != "succeeded")


def encode_event(event: Any, max_bytes: int) -> tuple[str | None, int]:
    """(JSON text or None when over ``max_bytes``, size in bytes). Raises ValueError/TypeError
    for an event JSON cannot carry (NaN, bytes), which is then not kept.

    Worked example with the default 256 KiB: a 300 000-byte event -> (None, 300000)."""
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    size = len(text.encode("utf-8"))
    return (text if size <= max_bytes else None), size


@dataclass(frozen=True)
class Offered:
    """What the invoker hands over: cheap to build, encoded later on the store's thread."""

    namespace: str
    request_id: str
    function: str
    version: int
    trigger: str
    status: str
    error_type: str | None
    at: float
    event: Any


class Capture:
    """Owns the capture batch and its retention. ``offer`` never blocks and never fails."""

    def __init__(self, db: Database, *, mode: str = "failed", max_event_bytes: int = 256 * 1024,
                 retention_s: float = 7 * 86400.0,
                 clock: Callable[[], float] = time.time) -> None:
        if mode not in MODES:
            raise InvalidConfig(f"replay_capture must be one of {', '.join(MODES)}, got "
                                f"{mode!r}", details={"key": "replay_capture"})
        if max_event_bytes < 0 or retention_s <= 0:
            raise InvalidConfig("replay_max_event_bytes must be >= 0 and replay_retention_s "
                                "> 0", details={"key": "replay_retention_s"})
        self.db = db
        self.mode = mode
        self.max_event_bytes = max_event_bytes
        self.retention_s = retention_s
        self.clock = clock
        self._batch: BatchWriter[Offered] = BatchWriter(db, self._write, max_items=128)

    @classmethod
    def from_settings(cls, settings: Settings, db: Database) -> Capture:
        return cls(db, mode=settings.replay_capture,
                   max_event_bytes=settings.replay_max_event_bytes,
                   retention_s=settings.replay_retention_s)

    def offer(self, vs: VersionSpec, request_id: str, trigger: str, status: str,
              error: dict[str, Any] | None, event: Any) -> None:
        """Called by the invoker once the outcome is known (squall.invoker.invoker._run)."""
        if not should_capture(self.mode, status):
            return
        self._batch.append(Offered(
            vs.namespace, request_id, vs.function, vs.version, trigger, status,
            None if error is None else str(error.get("errorType", "Error")), self.clock(),
            event))

    def _write(self, conn: sqlite3.Connection, items: list[Offered]) -> None:
        rows = []
        for item in items:
            try:
                text, size = encode_event(item.event, self.max_event_bytes)
            except (TypeError, ValueError, RecursionError) as exc:
                log.warning("not keeping the event of %s: not JSON (%s)", item.request_id, exc)
                continue
            rows.append({"namespace": item.namespace, "request_id": item.request_id,
                         "function": item.function, "version": item.version,
                         "trigger": item.trigger, "status": item.status,
                         "error_type": item.error_type, "captured_at": item.at, "size": size,
                         "too_large": 0 if text is not None else 1, "event": text})
        if rows:
            store.insert_many(conn, rows)

    async def flush(self) -> None:
        await self._batch.flush()

    async def get(self, namespace: str, request_id: str) -> dict[str, Any]:
        """The capture of one invocation of ``namespace``, with ``event`` decoded.

        Raises CaptureNotFound (404: never captured, expired, or another tenant's) and
        EventTooLarge (409: seen, but over the size limit, so not kept)."""
        await self.flush()  # an invocation that just failed is still in the batch
        since = self.clock() - self.retention_s
        row = await self.db.run(lambda c: store.get(c, namespace, request_id, since))
        if row is None:
            raise CaptureNotFound(
                f"no captured event for request {request_id[:64]!r}: events are kept "
                f"{self.retention_s / 3600:g} h, and only for failed invocations unless the "
                f"platform sets replay_capture = \"all\" (it is {self.mode!r})")
        if row["too_large"]:
            raise EventTooLarge(
                f"the event of request {request_id[:64]!r} was {row['size']} bytes, over the "
                f"{self.max_event_bytes} bytes kept (replay_max_event_bytes): it was not stored",
                details={"size": row["size"], "limit": self.max_event_bytes})
        row["event"] = json.loads(row["event"])
        row["expires_at"] = row["captured_at"] + self.retention_s
        del row["too_large"]
        return row

    async def prune(self) -> int:
        before = self.clock() - self.retention_s
        return await self.db.run(functools.partial(store.prune, before=before))

    async def forget_function(self, event: str, rec: FunctionRecord) -> None:
        """Registry listener: a removed function's captured events go with it."""
        if event == "removed":
            await self.flush()
            await self.db.run(lambda c: store.delete_function(c, rec.namespace, rec.name))

    async def run(self) -> None:
        """The batch writer and the pruner, until cancelled (then the batch is flushed)."""
        every = min(MAX_PRUNE_EVERY_S, max(1.0, self.retention_s / 4))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._batch.run(), name="capture-batch")
            tg.create_task(self._prune_forever(every), name="capture-prune")

    async def _prune_forever(self, every_s: float) -> None:
        while True:
            try:
                gone = await self.prune()
                if gone:
                    log.info("pruned %d captured events past their retention", gone)
            except Exception:  # housekeeping: log and try again on the next round
                log.exception("pruning captured events failed")
            await asyncio.sleep(every_s)


def attach(platform: Platform) -> Capture:
    """Create the capture and hand it to the invoker and the registry (squall.server.build)."""
    capture = Capture.from_settings(platform.settings, platform.db)
    platform.invoker.capture = capture
    platform.registry.add_listener(capture.forget_function)
    return capture
