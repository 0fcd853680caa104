"""Bundles by content hash, for gateways that share one store (SQL only).

On one machine a bundle lives only as files under ``<data-dir>/bundles/<sha256>``; this table
stays empty. When several gateways share a PostgreSQL store, the gateway that deploys a version
also writes the bundle here (a deterministic tar.gz of the bundle folder) before the version row
is committed, so any gateway that learns of the version can fetch and unpack it by its hash
(``squall.bundle.shared``).
"""

from __future__ import annotations

import sqlite3

from squall.store.db import Migration, transaction

SCHEMA: list[Migration] = [
    ("bundles-0001", """
CREATE TABLE bundles (
    sha256 TEXT PRIMARY KEY,
    archive BLOB NOT NULL,
    created_at REAL NOT NULL
)"""),
]


def put(conn: sqlite3.Connection, sha256: str, archive: bytes, now: float) -> None:
    """Store a bundle once: the same hash is the same content, a second put changes nothing."""
    with transaction(conn):
        conn.execute("INSERT INTO bundles VALUES (?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
                     (sha256, archive, now))


def has(conn: sqlite3.Connection, sha256: str) -> bool:
    return conn.execute("SELECT 1 FROM bundles WHERE sha256 = ?",
                        (sha256,)).fetchone() is not None


def get(conn: sqlite3.Connection, sha256: str) -> bytes | None:
    r = conn.execute("SELECT archive FROM bundles WHERE sha256 = ?", (sha256,)).fetchone()
    return None if r is None else bytes(r[0])


def delete_unused(conn: sqlite3.Connection) -> int:
    """Forget bundles no version refers to any more (after a function's removal)."""
    with transaction(conn):
        cur = conn.execute("DELETE FROM bundles WHERE sha256 NOT IN (SELECT sha256 FROM versions)")
    return cur.rowcount
