"""Named leases for work that one gateway of a shared store must do alone (a connector
trigger's consumer). A lease has a holder and an expiry; the holder renews it, anyone may take
it once it has expired. On a store of its own (SQLite, one process) the one gateway always
holds every lease.
"""

from __future__ import annotations

import sqlite3

from squall.store.db import Migration, transaction

SCHEMA: list[Migration] = [
    ("leases-0001", """
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
)"""),
]


def acquire(conn: sqlite3.Connection, name: str, holder: str, *, now: float,
            ttl_s: float) -> bool:
    """Take or renew ``name`` for ``holder`` until now + ttl_s; False while another holder's
    lease has not expired."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at "
            "WHERE leases.holder = excluded.holder OR leases.expires_at < ?",
            (name, holder, now + ttl_s, now))
        row = conn.execute("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
    return row is not None and row[0] == holder


def release(conn: sqlite3.Connection, name: str, holder: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))
