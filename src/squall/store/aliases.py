"""Aliases: a name for one version of a function, or a weighted split between versions.

Every query takes the namespace (tenant) as a parameter. ``version`` NULL means $LATEST;
``weights`` is a JSON object {"<version>": weight}. ``revision`` changes on every write, for
Lambda's RevisionId (optimistic concurrency).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

from squall.routing import Alias
from squall.store.db import Migration, transaction

SCHEMA: list[Migration] = [
    ("0101_aliases", """
CREATE TABLE aliases (
    namespace TEXT NOT NULL,
    function TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER,
    weights TEXT NOT NULL DEFAULT '{}',
    description TEXT NOT NULL DEFAULT '',
    revision TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (namespace, function, name)
);
CREATE TABLE version_descriptions (
    namespace TEXT NOT NULL,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    description TEXT NOT NULL,
    PRIMARY KEY (namespace, function, version)
)"""),
]


def _alias(r: sqlite3.Row) -> Alias:
    weights = {int(k): float(v) for k, v in json.loads(r["weights"]).items()}
    return Alias(r["namespace"], r["function"], r["name"], r["version"], weights,
                 r["description"], r["revision"], r["created_at"], r["updated_at"])


def all_aliases(conn: sqlite3.Connection) -> list[Alias]:
    """Every alias of every tenant: the in-memory alias table loads this once at startup."""
    rows = conn.execute("SELECT * FROM aliases ORDER BY namespace, function, name").fetchall()
    return [_alias(r) for r in rows]


def put(conn: sqlite3.Connection, alias: Alias) -> Alias:
    """Create or replace an alias; a fresh revision and updated_at. Returns what was stored."""
    now = time.time()
    weights = json.dumps({str(v): w for v, w in sorted(alias.weights.items())})
    revision = uuid.uuid4().hex
    with transaction(conn):
        conn.execute(
            "INSERT INTO aliases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (namespace, function, name) DO UPDATE SET version = excluded.version, "
            "weights = excluded.weights, description = excluded.description, "
            "revision = excluded.revision, updated_at = excluded.updated_at",
            (alias.namespace, alias.function, alias.name, alias.version, weights,
             alias.description, revision, now, now))
    row = conn.execute("SELECT * FROM aliases WHERE namespace = ? AND function = ? AND name = ?",
                       (alias.namespace, alias.function, alias.name)).fetchone()
    return _alias(row)


def delete(conn: sqlite3.Connection, namespace: str, function: str, name: str) -> bool:
    with transaction(conn):
        n = conn.execute("DELETE FROM aliases WHERE namespace = ? AND function = ? AND name = ?",
                         (namespace, function, name)).rowcount
    return n > 0


def delete_function(conn: sqlite3.Connection, namespace: str, function: str) -> None:
    """A removed function takes its aliases and descriptions with it: a function deployed again
    under the same name starts from version 1, and an old alias would point into it."""
    with transaction(conn):
        conn.execute("DELETE FROM aliases WHERE namespace = ? AND function = ?",
                     (namespace, function))
        conn.execute("DELETE FROM version_descriptions WHERE namespace = ? AND function = ?",
                     (namespace, function))


def set_description(conn: sqlite3.Connection, namespace: str, function: str, version: int,
                    description: str) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO version_descriptions VALUES (?, ?, ?, ?) "
            "ON CONFLICT (namespace, function, version) "
            "DO UPDATE SET description = excluded.description",
            (namespace, function, version, description))


def descriptions(conn: sqlite3.Connection, namespace: str, function: str) -> dict[int, str]:
    rows = conn.execute("SELECT version, description FROM version_descriptions "
                        "WHERE namespace = ? AND function = ?", (namespace, function)).fetchall()
    return {int(r[0]): str(r[1]) for r in rows}
