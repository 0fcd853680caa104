"""Function log lines, bounded per function (the oldest are dropped)."""

from __future__ import annotations

import sqlite3
from typing import Any

from squall.store.db import Migration, transaction

SCHEMA: list[Migration] = [
    ("0003_logs", """
CREATE TABLE logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    function TEXT NOT NULL,
    request_id TEXT NOT NULL,
    ts REAL NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX logs_by_function ON logs (namespace, function, id);
CREATE INDEX logs_by_request ON logs (request_id)"""),
]


def append_many(conn: sqlite3.Connection, rows: list[tuple[str, str, str, float, str]],
                keep_per_function: int, trim: set[tuple[str, str]] | None = None) -> None:
    """Insert (namespace, function, request_id, ts, line) rows, then trim to the newest
    ``keep_per_function`` lines the functions in ``trim`` (all of them when None)."""
    with transaction(conn):
        conn.executemany(
            "INSERT INTO logs (namespace, function, request_id, ts, line) VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        for namespace, function in ({(r[0], r[1]) for r in rows} if trim is None else trim):
            conn.execute(
                "DELETE FROM logs WHERE namespace = ? AND function = ? AND id <= ("
                " SELECT id FROM logs WHERE namespace = ? AND function = ?"
                " ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (namespace, function, namespace, function, keep_per_function),
            )


def read(conn: sqlite3.Connection, namespace: str, function: str, *, after: int = 0,
         request_id: str | None = None, limit: int = 1000,
         tail: bool = False) -> list[dict[str, Any]]:
    """Lines with id > after, oldest first. ``tail`` returns the newest ``limit`` lines."""
    sql = ("SELECT id, request_id, ts, line FROM logs "
           "WHERE namespace = ? AND function = ? AND id > ?")
    args: list[Any] = [namespace, function, after]
    if request_id:
        sql += " AND request_id = ?"
        args.append(request_id)
    if tail:
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [dict(r) for r in reversed(conn.execute(sql, args).fetchall())]
    sql += " ORDER BY id LIMIT ?"
    args.append(limit)
    return [dict(r) for r in conn.execute(sql, args).fetchall()]


def delete_function(conn: sqlite3.Connection, namespace: str, name: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM logs WHERE namespace = ? AND function = ?", (namespace, name))
