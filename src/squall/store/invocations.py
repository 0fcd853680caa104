"""Invocation records: one row per execution, the source of usage and billing."""

from __future__ import annotations

import sqlite3
from typing import Any

from squall.store.db import Migration, transaction

SCHEMA: list[Migration] = [
    ("0002_invocations", """
CREATE TABLE invocations (
    request_id TEXT PRIMARY KEY,
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
CREATE INDEX invocations_by_function ON invocations (namespace, function, start_ts)"""),
]

COLUMNS = ("request_id", "namespace", "function", "version", "trigger", "start_ts", "init_ms",
           "duration_ms", "billed_ms", "memory_mb", "gb_seconds", "status", "error_type", "cold",
           "max_memory_mb")


def insert_many(conn: sqlite3.Connection, records: list[dict[str, Any]]) -> None:
    """Insert a batch; a retried async attempt with the same request id replaces its record."""
    sql = (f"INSERT OR REPLACE INTO invocations ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(COLUMNS))})")
    with transaction(conn):
        conn.executemany(sql, [tuple(r.get(c) for c in COLUMNS) for r in records])


def get(conn: sqlite3.Connection, request_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM invocations WHERE request_id = ?",
                       (request_id,)).fetchone()
    return None if row is None else dict(row)


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
