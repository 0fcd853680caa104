"""Functions and their immutable versions."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from squall.store.db import Migration, transaction

SCHEMA: list[Migration] = [
    ("0001_functions", """
CREATE TABLE functions (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    latest_version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE versions (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    config TEXT NOT NULL,
    deps_key TEXT,
    created_at REAL NOT NULL,
    PRIMARY KEY (namespace, name, version)
);
CREATE TABLE scaling (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    min_instances INTEGER,
    PRIMARY KEY (namespace, name)
)"""),
]


@dataclass(frozen=True)
class VersionRow:
    namespace: str
    name: str
    version: int
    sha256: str
    config: dict[str, Any]
    deps_key: str | None
    created_at: float


def _row(r: sqlite3.Row) -> VersionRow:
    return VersionRow(r["namespace"], r["name"], r["version"], r["sha256"],
                      json.loads(r["config"]), r["deps_key"], r["created_at"])


def latest_versions(conn: sqlite3.Connection) -> list[VersionRow]:
    rows = conn.execute(
        "SELECT v.* FROM versions v JOIN functions f ON f.namespace = v.namespace "
        "AND f.name = v.name AND f.latest_version = v.version ORDER BY v.namespace, v.name"
    ).fetchall()
    return [_row(r) for r in rows]


def versions(conn: sqlite3.Connection, namespace: str, name: str) -> list[VersionRow]:
    rows = conn.execute(
        "SELECT * FROM versions WHERE namespace = ? AND name = ? ORDER BY version",
        (namespace, name),
    ).fetchall()
    return [_row(r) for r in rows]


def get_version(conn: sqlite3.Connection, namespace: str, name: str,
                version: int) -> VersionRow | None:
    r = conn.execute(
        "SELECT * FROM versions WHERE namespace = ? AND name = ? AND version = ?",
        (namespace, name, version),
    ).fetchone()
    return None if r is None else _row(r)


def add_version(conn: sqlite3.Connection, namespace: str, name: str, sha256: str,
                config: dict[str, Any], deps_key: str | None) -> tuple[VersionRow, bool]:
    """Create the next version unless the latest one has the same content hash.

    Returns (version, created). One transaction: either the version and the function's
    latest pointer are both written, or neither.
    """
    now = time.time()
    with transaction(conn):
        cur = conn.execute(
            "SELECT latest_version FROM functions WHERE namespace = ? AND name = ?",
            (namespace, name),
        ).fetchone()
        if cur is not None:
            latest = get_version(conn, namespace, name, cur[0])
            if latest is not None and latest.sha256 == sha256:
                return latest, False
            number = int(conn.execute(
                "SELECT MAX(version) FROM versions WHERE namespace = ? AND name = ?",
                (namespace, name),
            ).fetchone()[0]) + 1
            conn.execute(
                "UPDATE functions SET latest_version = ?, updated_at = ? "
                "WHERE namespace = ? AND name = ?", (number, now, namespace, name),
            )
        else:
            number = 1
            conn.execute("INSERT INTO functions VALUES (?, ?, ?, ?, ?)",
                         (namespace, name, number, now, now))
        conn.execute(
            "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?)",
            (namespace, name, number, sha256, json.dumps(config), deps_key, now),
        )
    row = get_version(conn, namespace, name, number)
    assert row is not None
    return row, True


def delete_function(conn: sqlite3.Connection, namespace: str, name: str) -> bool:
    with transaction(conn):
        n = conn.execute("DELETE FROM functions WHERE namespace = ? AND name = ?",
                         (namespace, name)).rowcount
        conn.execute("DELETE FROM versions WHERE namespace = ? AND name = ?", (namespace, name))
        conn.execute("DELETE FROM scaling WHERE namespace = ? AND name = ?", (namespace, name))
    return n > 0


def set_min_instances(conn: sqlite3.Connection, namespace: str, name: str,
                      value: int | None) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO scaling VALUES (?, ?, ?) ON CONFLICT (namespace, name) "
            "DO UPDATE SET min_instances = excluded.min_instances", (namespace, name, value),
        )


def min_instances_overrides(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    rows = conn.execute(
        "SELECT namespace, name, min_instances FROM scaling WHERE min_instances IS NOT NULL"
    ).fetchall()
    return {(r[0], r[1]): int(r[2]) for r in rows}


def bundle_in_use(conn: sqlite3.Connection, sha256: str) -> bool:
    return conn.execute("SELECT 1 FROM versions WHERE sha256 = ? LIMIT 1",
                        (sha256,)).fetchone() is not None
