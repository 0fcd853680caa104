"""Invocation history: the query's arguments, the public shape of a record, retention.

Every invocation is already recorded (``squall.store.invocations``, batched off the hot path);
this module turns query strings into arguments, records into the API's JSON, and keeps the table
bounded: records older than ``settings.invocation_retention_days`` are pruned by a background
task every ``PRUNE_EVERY_S``. The endpoint is ``squall.api.observability.invocation_history``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from squall.errors import BadRequest
from squall.store import invocations as store_inv
from squall.store.db import Database

log = logging.getLogger("squall.observability.history")

STATUSES = ("succeeded", "failed", "timeout", "oom", "crashed")
PRUNE_EVERY_S = 3600.0
MAX_LIMIT = 1000


class InvalidQuery(BadRequest):
    code = "invalid_query"


@dataclass(frozen=True)
class HistoryQuery:
    since: float = 0.0
    statuses: tuple[str, ...] | None = None
    failed: bool = False
    before_id: int | None = None
    limit: int = 50

    @classmethod
    def parse(cls, query: dict[str, Any]) -> HistoryQuery:
        """From the API's parsed query: ``status`` (one status, a comma list, or ``failed`` =
        any failure), ``since`` (unix time), ``limit``, ``before`` (a cursor)."""
        failed, statuses = False, None
        raw = query.get("status") or ""
        if raw:
            names = tuple(s.strip() for s in str(raw).split(",") if s.strip())
            unknown = [s for s in names if s not in STATUSES]
            if unknown:
                raise InvalidQuery(f"unknown status {unknown[0]!r}: use {', '.join(STATUSES)}",
                                   details={"parameter": "status"})
            # Alone, "failed" means any failure (the CLI's --status failed), as people mean it;
            # in a list it is the one status (an exception in the handler).
            if names == ("failed",):
                failed = True
            else:
                statuses = names
        return cls(float(query.get("since") or 0.0), statuses, failed, query.get("before"),
                   int(query.get("limit") or 50))


def view(row: dict[str, Any], function: str) -> dict[str, Any]:
    """One record as the API shows it; ``logs`` is the call that returns its lines."""
    rid = row["request_id"]
    return {
        "request_id": rid, "function": function, "version": row["version"],
        "trigger": row["trigger"], "start": row["start_ts"], "status": row["status"],
        "error_type": row["error_type"], "cold": bool(row["cold"]),
        "queued_ms": None if row["queued_ms"] is None else round(row["queued_ms"], 3),
        "init_ms": row["init_ms"], "run_ms": row["duration_ms"], "billed_ms": row["billed_ms"],
        "memory_mb": row["memory_mb"], "max_memory_mb": row["max_memory_mb"],
        "cursor": row["id"],
        "logs": f"/api/v1/functions/{function}/logs?request_id={rid}",
    }


async def read(db: Database, namespace: str, function: str,
               q: HistoryQuery) -> list[dict[str, Any]]:
    rows = await db.run(lambda c: store_inv.history(
        c, namespace, function, since=q.since, statuses=q.statuses, failed=q.failed,
        before_id=q.before_id, limit=q.limit))
    return [view(r, function) for r in rows]


async def prune_forever(db: Database, retention_days: float,
                        clock: Callable[[], float] = time.time,
                        every_s: float = PRUNE_EVERY_S) -> None:
    """Delete records past the retention, now and then every ``every_s``, until cancelled.
    A store error is logged and retried on the next round: pruning is housekeeping."""
    while True:
        before = clock() - retention_days * 86400.0
        try:
            gone = await db.run(functools.partial(store_inv.prune, before=before))
            if gone:
                log.info("pruned %d invocation records older than %g days", gone,
                         retention_days)
        except Exception:
            log.exception("pruning invocation records failed")
        await asyncio.sleep(every_s)
