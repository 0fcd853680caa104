"""Captured events: the event of a recorded invocation, kept a bounded time so it can be replayed.

One row per (tenant, request id): a retried async event keeps its request id, and its attempts
carry the same event, so the latest attempt's row replaces the earlier one. An event larger than
the platform's limit is kept as a row with ``too_large = 1`` and no body: the caller learns that
it was seen and why it cannot be replayed, never a truncated event that would replay differently.
Every read takes the tenant: another tenant's request id reads like a missing one.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from squall.store.db import Migration, transaction

SCHEMA: list[Migration] = [
    ("captures-0001", """
CREATE TABLE captures (
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    request_id TEXT NOT NULL,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    trigger TEXT NOT NULL,
    status TEXT NOT NULL,
    error_type TEXT,
    captured_at REAL NOT NULL,
    size INTEGER NOT NULL,
    too_large INTEGER NOT NULL,
    event TEXT,
    UNIQUE (namespace, request_id)
);
CREATE INDEX captures_by_age ON captures (captured_at)"""),
]

COLUMNS = ("namespace", "request_id", "function", "version", "trigger", "status", "error_type",
           "captured_at", "size", "too_large", "event")


def insert_many(conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    """Insert a batch; a row for a (tenant, request id) already kept replaces it."""
    sql = (f"INSERT INTO captures ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(COLUMNS))}) ON CONFLICT (namespace, request_id) "
           f"DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[2:])}")
    with transaction(conn):
        conn.executemany(sql, [tuple(r.get(c) for c in COLUMNS) for r in rows])


def get(conn: sqlite3.Connection, namespace: str, request_id: str,
        since: float) -> dict[str, Any] | None:
    """The capture of one invocation of ``namespace`` made at or after ``since`` (an expired row
    the pruner has not reached yet reads as gone), or None."""
    row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM captures WHERE namespace = ? AND"
                       f" request_id = ? AND captured_at >= ?",
                       (namespace, request_id, since)).fetchone()
    return None if row is None else dict(row)


def prune(conn: sqlite3.Connection, *, before: float, batch: int = 2000) -> int:
    """Delete captures made before ``before``, in batches so a backlog of large events does not
    hold the write lock for long; returns how many went."""
    total = 0
    while True:
        with transaction(conn):
            cur = conn.execute("DELETE FROM captures WHERE id IN (SELECT id FROM captures"
                               " WHERE captured_at < ? LIMIT ?)", (before, batch))
        total += cur.rowcount
        if cur.rowcount < batch:
            return total


def delete_function(conn: sqlite3.Connection, namespace: str, name: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM captures WHERE namespace = ? AND function = ?",
                     (namespace, name))
