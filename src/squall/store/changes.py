"""The SQLite store's change feed: how the gateway processes of one data dir (``squall up
--workers N``) hear that another one changed what they cache in memory.

PostgreSQL tells gateways with NOTIFY (``squall.store.pg``). SQLite has no such channel between
processes, so row triggers on the cached tables bump a counter per table in ``store_changes``
in the same transaction as the change; each process reads the few counters every
``POLL_S`` (one indexed read of six rows, no write) and reloads the tables whose counter moved.
A process also sees its own changes come back: the reloads are idempotent (``squall.sync``).
"""

from __future__ import annotations

import sqlite3

from squall.store.db import Migration

POLL_S = 0.05
# The tables whose rows gateways cache (the same set PostgreSQL notifies about).
WATCHED = ("functions", "tenants", "api_keys", "secrets", "aliases", "triggers")
# Last-use times of keys change every few seconds and matter to no cache: not watched.
_API_KEY_COLUMNS = "tenant, scopes, secret_hash, sealed_secret, expires_at, revoked_at"


def _triggers(table: str, update: str = "UPDATE") -> str:
    bump = f"UPDATE store_changes SET seq = seq + 1 WHERE tbl = '{table}'"
    return "".join(
        f"CREATE TRIGGER {table}_changed_{what.split()[0].lower()} AFTER {what} ON {table} "
        f"BEGIN {bump}; END;\n"
        for what in ("INSERT", update, "DELETE"))


SQLITE_SCHEMA: list[Migration] = [
    ("sqlite-0001-changes",
     "CREATE TABLE store_changes (tbl TEXT PRIMARY KEY, seq INTEGER NOT NULL DEFAULT 0);\n"
     + "".join(f"INSERT INTO store_changes (tbl) VALUES ('{t}');\n" for t in WATCHED)
     + "".join(_triggers(t) for t in WATCHED if t != "api_keys")
     + _triggers("api_keys", f"UPDATE OF {_API_KEY_COLUMNS}")),
]


def counters(conn: sqlite3.Connection) -> dict[str, int]:
    return {row[0]: row[1] for row in conn.execute("SELECT tbl, seq FROM store_changes")}


def total(conn: sqlite3.Connection) -> int:
    """The sum of the counters: it only grows, by one or more with every change."""
    return int(conn.execute("SELECT sum(seq) FROM store_changes").fetchone()[0] or 0)
