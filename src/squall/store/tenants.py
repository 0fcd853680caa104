"""Tenants, API keys, sealed secrets and the audit log (SQL only).

Every other table already carries its tenant in a ``namespace`` column (the word the store used
before tenants existed; it is the tenant's name). The migration below makes the one namespace a
data dir could hold until now, ``default``, a tenant, so an existing data dir keeps all of its
functions, versions, triggers and queued events where they were.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from squall.store.db import Migration, transaction

# Host uids of tenants' sandboxes: one 65536-wide subordinate range each, from 100000 up.
UID_BASE = 100_000
UID_STRIDE = 65_536

SCHEMA: list[Migration] = [
    ("tenants-0001", f"""
CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    uid INTEGER NOT NULL UNIQUE,
    limits TEXT NOT NULL DEFAULT '{{}}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
INSERT INTO tenants VALUES ('default', {UID_BASE}, '{{}}', strftime('%s','now'),
                            strftime('%s','now'));
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT,
    tenant TEXT NOT NULL,
    scopes TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    sealed_secret BLOB NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    last_used_at REAL
);
CREATE TABLE secrets (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    sealed BLOB NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    key_id TEXT,
    namespace TEXT,
    action TEXT NOT NULL,
    target TEXT,
    client TEXT,
    detail TEXT
);
CREATE INDEX audit_by_time ON audit (ts);
CREATE INDEX events_by_tenant ON events (namespace, status);
CREATE INDEX invocations_by_time ON invocations (start_ts)"""),
    # Fewer events indexes to keep up at every write. An event's status changes twice or three
    # times (queued, running, succeeded), and each change moved it in two status indexes,
    # events_due (status, next_attempt_at) and events_by_tenant (namespace, status): one
    # (status, namespace) serves what both did (a status's events, a tenant's unfinished
    # ones, the backlog by tenant), while the due order is the partial events_ready's
    # (queue-0003). And events_source held every event, though most have no source (the API's,
    # the scheduler's): those are left out. Accept, claim and succeed of an event in the store:
    # 107-113 -> 88-92 us (batches of 16, three runs each on the same machine). Here, not in
    # the queue's migrations: events_by_tenant is made above.
    ("tenants-0002-events-indexes", """
DROP INDEX events_due;
DROP INDEX events_by_tenant;
CREATE INDEX events_status ON events (status, namespace);
DROP INDEX events_source;
CREATE INDEX events_source ON events (source, created_at) WHERE source IS NOT NULL"""),
]


# --- tenants ---------------------------------------------------------------------------------

def list_tenants(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM tenants ORDER BY name").fetchall()
    return [{**dict(r), "limits": json.loads(r["limits"])} for r in rows]


def create_tenant(conn: sqlite3.Connection, name: str, limits: dict[str, Any],
                  now: float) -> dict[str, Any] | None:
    """Insert a tenant with the next free uid range; None when the name is taken."""
    with transaction(conn):
        if conn.execute("SELECT 1 FROM tenants WHERE name=?", (name,)).fetchone():
            return None
        top = conn.execute("SELECT MAX(uid) FROM tenants").fetchone()[0]
        uid = UID_BASE if top is None else int(top) + UID_STRIDE
        conn.execute("INSERT INTO tenants VALUES (?,?,?,?,?)",
                     (name, uid, json.dumps(limits), now, now))
    return {"name": name, "uid": uid, "limits": limits, "created_at": now, "updated_at": now}


def update_tenant(conn: sqlite3.Connection, name: str, limits: dict[str, Any],
                  now: float) -> bool:
    with transaction(conn):
        cur = conn.execute("UPDATE tenants SET limits=?, updated_at=? WHERE name=?",
                           (json.dumps(limits), now, name))
    return cur.rowcount > 0


def tenant_counts(conn: sqlite3.Connection, name: str) -> dict[str, int]:
    """What a tenant still owns (an rm without --force refuses while functions remain)."""
    one = conn.execute
    return {
        "functions": one("SELECT COUNT(*) FROM functions WHERE namespace=?", (name,)).fetchone()[0],
        "keys": one("SELECT COUNT(*) FROM api_keys WHERE tenant=? AND revoked_at IS NULL",
                    (name,)).fetchone()[0],
        "secrets": one("SELECT COUNT(*) FROM secrets WHERE namespace=?", (name,)).fetchone()[0],
    }


def delete_tenant(conn: sqlite3.Connection, name: str, now: float) -> bool:
    """Remove the tenant row, its secrets and triggers; revoke its keys. Functions must have been
    removed first (by the deployer, which stops their instances). Invocation records stay: they
    are the billing history."""
    with transaction(conn):
        conn.execute("DELETE FROM secrets WHERE namespace=?", (name,))
        conn.execute("UPDATE api_keys SET revoked_at=? WHERE tenant=? AND revoked_at IS NULL",
                      (now, name))
        cur = conn.execute("DELETE FROM tenants WHERE name=?", (name,))
    return cur.rowcount > 0


def queued_events(conn: sqlite3.Connection, namespace: str) -> int:
    return int(conn.execute(
        "SELECT COUNT(*) FROM events WHERE namespace=? AND status IN ('queued','failed','running')",
        (namespace,)).fetchone()[0])


# --- api keys --------------------------------------------------------------------------------

def insert_key(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO api_keys (id, name, tenant, scopes, secret_hash, sealed_secret,"
            " created_at, expires_at) VALUES (?,?,?,?,?,?,?,?)",
            (row["id"], row["name"], row["tenant"], row["scopes"], row["secret_hash"],
             row["sealed_secret"], row["created_at"], row["expires_at"]))


def list_keys(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute("SELECT * FROM api_keys ORDER BY created_at")]


def revoke_key(conn: sqlite3.Connection, key_id: str, now: float) -> bool:
    with transaction(conn):
        cur = conn.execute("UPDATE api_keys SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
                           (now, key_id))
    return cur.rowcount > 0


def touch_keys(conn: sqlite3.Connection, used: dict[str, float]) -> None:
    with transaction(conn):
        conn.executemany("UPDATE api_keys SET last_used_at=? WHERE id=?",
                         [(ts, kid) for kid, ts in used.items()])


def reseal_keys(conn: sqlite3.Connection, sealed: dict[str, bytes]) -> None:
    conn.executemany("UPDATE api_keys SET sealed_secret=? WHERE id=?",
                     [(blob, kid) for kid, blob in sealed.items()])


# --- secrets ---------------------------------------------------------------------------------

def put_secret(conn: sqlite3.Connection, namespace: str, name: str, sealed: bytes,
               now: float) -> bool:
    """Insert or replace; True when it was new."""
    with transaction(conn):
        existed = conn.execute("SELECT 1 FROM secrets WHERE namespace=? AND name=?",
                               (namespace, name)).fetchone() is not None
        conn.execute(
            "INSERT INTO secrets VALUES (?,?,?,?,?) ON CONFLICT (namespace, name)"
            " DO UPDATE SET sealed=excluded.sealed, updated_at=excluded.updated_at",
            (namespace, name, sealed, now, now))
    return not existed


def list_secrets(conn: sqlite3.Connection, namespace: str | None = None) -> list[dict[str, Any]]:
    if namespace is None:
        rows = conn.execute("SELECT * FROM secrets ORDER BY namespace, name")
    else:
        rows = conn.execute("SELECT * FROM secrets WHERE namespace=? ORDER BY name", (namespace,))
    return [dict(r) for r in rows]


def delete_secret(conn: sqlite3.Connection, namespace: str, name: str) -> bool:
    with transaction(conn):
        cur = conn.execute("DELETE FROM secrets WHERE namespace=? AND name=?", (namespace, name))
    return cur.rowcount > 0


def reseal_secrets(conn: sqlite3.Connection, sealed: dict[tuple[str, str], bytes]) -> None:
    conn.executemany("UPDATE secrets SET sealed=? WHERE namespace=? AND name=?",
                     [(blob, ns, name) for (ns, name), blob in sealed.items()])


# --- audit -----------------------------------------------------------------------------------

AUDIT_COLUMNS = ("ts", "key_id", "namespace", "action", "target", "client", "detail")


def audit_many(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    with transaction(conn):
        conn.executemany(f"INSERT INTO audit ({', '.join(AUDIT_COLUMNS)}) VALUES (?,?,?,?,?,?,?)",
                         rows)


def read_audit(conn: sqlite3.Connection, *, since: float, namespace: str | None,
               limit: int) -> list[dict[str, Any]]:
    sql = "SELECT * FROM audit WHERE ts >= ?"
    args: list[Any] = [since]
    if namespace is not None:
        sql += " AND namespace = ?"
        args.append(namespace)
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    out = []
    for r in rows:
        d = dict(r)
        d["detail"] = json.loads(d["detail"]) if d["detail"] else None
        d["tenant"] = d.pop("namespace")
        out.append(d)
    return out
