"""Invocation records: one row per execution, the source of usage and billing."""

from __future__ import annotations

import sqlite3
from typing import Any

from squall.store.db import Migration, transaction

SCHEMA: list[Migration] = [
    ("0002_invocations", """
CREATE TABLE invocations (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    namespace TEXT NOT NULL,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    trigger TEXT NOT NULL,
    start_ts REAL NOT NULL,
    init_ms REAL NOT NULL,
    duration_ms REAL NOT NULL,
    billed_ms INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    gb_seconds REAL NOT NULL,
    status TEXT NOT NULL,
    error_type TEXT,
    cold INTEGER NOT NULL,
    max_memory_mb REAL
);
CREATE INDEX invocations_by_function ON invocations (namespace, function, start_ts);
CREATE INDEX invocations_by_request ON invocations (request_id)"""),
]

COLUMNS = ("request_id", "namespace", "function", "version", "trigger", "start_ts", "init_ms",
           "duration_ms", "billed_ms", "memory_mb", "gb_seconds", "status", "error_type", "cold",
           "max_memory_mb")


def insert_many(conn: sqlite3.Connection, records: list[dict[str, Any]]) -> None:
    """Insert a batch. A retried async attempt keeps its request id (so handlers can
    deduplicate) and gets a record of its own: every attempt ran and is billed."""
    sql = (f"INSERT INTO invocations ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(COLUMNS))})")
    with transaction(conn):
        conn.executemany(sql, [tuple(r.get(c) for c in COLUMNS) for r in records])


def get(conn: sqlite3.Connection, request_id: str) -> dict[str, Any] | None:
    """The latest attempt's record, with ``attempts`` (how many records share the id)."""
    rows = conn.execute("SELECT * FROM invocations WHERE request_id = ? ORDER BY id",
                        (request_id,)).fetchall()
    if not rows:
        return None
    record = dict(rows[-1])
    record.pop("id", None)
    record["attempts"] = len(rows)
    return record


def for_usage(conn: sqlite3.Connection, since: float, namespace: str | None = None,
              until: float | None = None) -> list[dict[str, Any]]:
    sql = ("SELECT namespace, function, duration_ms, billed_ms, gb_seconds, status, cold "
           "FROM invocations WHERE start_ts >= ?")
    args: list[Any] = [since]
    if until is not None:
        sql += " AND start_ts < ?"
        args.append(until)
    if namespace is not None:
        sql += " AND namespace = ?"
        args.append(namespace)
    return [dict(r) for r in conn.execute(sql, args).fetchall()]


def history(conn: sqlite3.Connection, namespace: str, function: str, *, since: float = 0.0,
            statuses: tuple[str, ...] | None = None, failed: bool = False,
            before_id: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """A function's invocations, newest first. ``failed``: every status but succeeded.
    ``queued_ms`` (async events only) is the time from acceptance to this attempt's start, from
    the queue's row while it is kept. ``id`` is the cursor for ``before_id``."""
    sql = ("SELECT i.id, i.request_id, i.version, i.trigger, i.start_ts, i.init_ms,"
           " i.duration_ms, i.billed_ms, i.memory_mb, i.status, i.error_type, i.cold,"
           " i.max_memory_mb, CASE WHEN e.created_at IS NULL THEN NULL"
           " WHEN i.start_ts < e.created_at THEN 0.0"
           " ELSE (i.start_ts - e.created_at) * 1000.0 END AS queued_ms"
           " FROM invocations i LEFT JOIN events e ON e.id = i.request_id"
           " WHERE i.namespace = ? AND i.function = ? AND i.start_ts >= ?")
    args: list[Any] = [namespace, function, since]
    if failed:
        sql += " AND i.status != 'succeeded'"
    if statuses:
        sql += f" AND i.status IN ({', '.join('?' * len(statuses))})"
        args.extend(statuses)
    if before_id is not None:
        sql += " AND i.id < ?"
        args.append(before_id)
    sql += " ORDER BY i.start_ts DESC, i.id DESC LIMIT ?"
    args.append(limit)
    return [dict(r) for r in conn.execute(sql, args).fetchall()]


def series_rows(conn: sqlite3.Connection, namespace: str, function: str, *, since: float,
                until: float, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """What the console's charts are made of: start, run time, status and cold flag of a
    function's invocations in [since, until), oldest first. Past ``limit`` rows only the newest
    ``limit`` come back and the flag says the window was cut."""
    rows = conn.execute(
        "SELECT start_ts, duration_ms, status, cold FROM invocations"
        " WHERE namespace = ? AND function = ? AND start_ts >= ? AND start_ts < ?"
        " ORDER BY start_ts DESC LIMIT ?", (namespace, function, since, until, limit + 1),
    ).fetchall()
    cut = len(rows) > limit
    return [dict(r) for r in reversed(rows[:limit])], cut


def summary_by_function(conn: sqlite3.Connection, namespace: str,
                        since: float) -> list[dict[str, Any]]:
    """One row per function of the tenant with invocations since ``since``: counts, mean run
    time and the last start (the console's function list; percentiles need the rows)."""
    sql = ("SELECT function, COUNT(*) AS invocations,"
           " SUM(CASE WHEN status != 'succeeded' THEN 1 ELSE 0 END) AS errors,"
           " SUM(cold) AS cold_starts, AVG(duration_ms) AS avg_ms, MAX(start_ts) AS last_ts"
           " FROM invocations WHERE namespace = ? AND start_ts >= ? GROUP BY function")
    return [dict(r) for r in conn.execute(sql, (namespace, since)).fetchall()]


def prune(conn: sqlite3.Connection, *, before: float, batch: int = 5000) -> int:
    """Delete records that started before ``before``, in batches so a large backlog does not
    hold the write lock for long; returns how many went."""
    total = 0
    while True:
        with transaction(conn):
            cur = conn.execute("DELETE FROM invocations WHERE id IN (SELECT id FROM invocations"
                               " WHERE start_ts < ? LIMIT ?)", (before, batch))
        total += cur.rowcount
        if cur.rowcount < batch:
            return total


def delete_function(conn: sqlite3.Connection, namespace: str, name: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM invocations WHERE namespace = ? AND function = ?",
                     (namespace, name))
