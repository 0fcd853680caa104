"""Function logs: one row per invocation (its lines joined by newlines) or platform note,
bounded per function (the oldest rows are dropped)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from squall.store.db import Migration, transaction

SCHEMA: list[Migration] = [
    ("0003_logs", """
CREATE TABLE logs (
    id INTEGER PRIMARY KEY,
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
    """Insert (namespace, function, request_id, ts, text) rows, then trim to the newest
    ``keep_per_function`` rows the functions in ``trim`` (all of them when None)."""
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
    """Lines of the rows with id > after, oldest first; ``tail``: the newest ``limit`` lines.

    Each returned line carries its row's id (the cursor for ``after``) and request id.
    """
    sql = ("SELECT id, request_id, ts, line FROM logs "
           "WHERE namespace = ? AND function = ? AND id > ?")
    args: list[Any] = [namespace, function, after]
    if request_id:
        sql += " AND request_id = ?"
        args.append(request_id)
    if tail:
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return _lines(reversed(conn.execute(sql, args).fetchall()))[-limit:]
    sql += " ORDER BY id LIMIT ?"
    args.append(limit)
    return _lines(conn.execute(sql, args).fetchall())


def _lines(rows: Iterable[sqlite3.Row]) -> list[dict[str, Any]]:
    return [{"id": r["id"], "request_id": r["request_id"], "ts": r["ts"], "line": line}
            for r in rows for line in r["line"].split("\n")]


def delete_function(conn: sqlite3.Connection, namespace: str, name: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM logs WHERE namespace = ? AND function = ?", (namespace, name))
