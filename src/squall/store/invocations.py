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


def for_usage(conn: sqlite3.Connection, since: float,
              namespace: str | None = None) -> list[dict[str, Any]]:
    sql = ("SELECT namespace, function, duration_ms, billed_ms, gb_seconds, status, cold "
           "FROM invocations WHERE start_ts >= ?")
    args: list[Any] = [since]
    if namespace is not None:
        sql += " AND namespace = ?"
        args.append(namespace)
    return [dict(r) for r in conn.execute(sql, args).fetchall()]


def delete_function(conn: sqlite3.Connection, namespace: str, name: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM invocations WHERE namespace = ? AND function = ?",
                     (namespace, name))
