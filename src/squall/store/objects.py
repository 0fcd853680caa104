"""Buckets, objects and multipart uploads of the S3-compatible store (SQL only).

Object bytes live in files under ``<data-dir>/objects`` named by a random id (``file``), never by
key; a row here is what makes a file visible. Every write is one transaction that also updates
the tenant's stored-bytes total (``storage_usage``, checked against the quota inside the same
transaction) and inserts the storage-trigger events for the write (``notify``), so an
acknowledged write always has its events, even across a kill -9.

``notify`` is a pure function from the tenant's storage triggers (rows of ``triggers``) to the
events to enqueue (kwargs of ``queue._insert_event`` without ``now``); the storage package
supplies it, so the matching rules stay out of SQL.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from squall.store.db import Migration, transaction
from squall.store.queue import _insert_event

SCHEMA: list[Migration] = [
    ("objects-0001", """
CREATE TABLE buckets (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE objects (
    namespace TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    content_type TEXT NOT NULL,
    headers TEXT NOT NULL,
    modified_at REAL NOT NULL,
    PRIMARY KEY (namespace, bucket, key)
) WITHOUT ROWID;
CREATE TABLE multipart_uploads (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    content_type TEXT NOT NULL,
    headers TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX multipart_uploads_bucket ON multipart_uploads (namespace, bucket, key);
CREATE TABLE multipart_parts (
    upload_id TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);
CREATE TABLE storage_usage (
    namespace TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL
)"""),
]

Notify = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


class QuotaExceeded(Exception):
    """The write would take the tenant above ``quota`` stored bytes."""

    def __init__(self, used: int, quota: int) -> None:
        super().__init__(f"{used} of {quota} bytes used")
        self.used, self.quota = used, quota


@dataclass(frozen=True)
class ObjectRow:
    namespace: str
    bucket: str
    key: str
    file: str
    size: int
    etag: str
    content_type: str
    headers: dict[str, str]
    modified_at: float


def _object(r: sqlite3.Row) -> ObjectRow:
    return ObjectRow(r["namespace"], r["bucket"], r["key"], r["file"], r["size"], r["etag"],
                     r["content_type"], json.loads(r["headers"]), r["modified_at"])


# --- buckets ---------------------------------------------------------------------------------

def create_bucket(conn: sqlite3.Connection, namespace: str, name: str, now: float) -> bool:
    """False when the tenant has that bucket already."""
    with transaction(conn):
        cur = conn.execute("INSERT INTO buckets VALUES (?,?,?) ON CONFLICT DO NOTHING",
                           (namespace, name, now))
    return cur.rowcount == 1


def bucket_exists(conn: sqlite3.Connection, namespace: str, name: str) -> bool:
    return conn.execute("SELECT 1 FROM buckets WHERE namespace=? AND name=?",
                        (namespace, name)).fetchone() is not None


def list_buckets(conn: sqlite3.Connection, namespace: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT name, created_at FROM buckets WHERE namespace=? ORDER BY name",
                        (namespace,)).fetchall()
    return [dict(r) for r in rows]


def delete_bucket(conn: sqlite3.Connection, namespace: str, name: str) -> tuple[str, list[str]]:
    """("deleted", part files to remove) | ("missing", []) | ("not_empty", []). Uploads in
    progress in the bucket are aborted with it."""
    with transaction(conn):
        if not bucket_exists(conn, namespace, name):
            return "missing", []
        if conn.execute("SELECT 1 FROM objects WHERE namespace=? AND bucket=? LIMIT 1",
                        (namespace, name)).fetchone():
            return "not_empty", []
        files: list[str] = []
        for (uid,) in conn.execute("SELECT id FROM multipart_uploads WHERE namespace=? AND "
                                   "bucket=?", (namespace, name)).fetchall():
            parts = _drop_upload(conn, namespace, uid)
            _add_usage(conn, namespace, -_parts_bytes_dropped(parts), None)
            files += [f for f, _ in parts]
        conn.execute("DELETE FROM buckets WHERE namespace=? AND name=?", (namespace, name))
    return "deleted", files


# --- objects ---------------------------------------------------------------------------------

def get_object(conn: sqlite3.Connection, namespace: str, bucket: str,
               key: str) -> ObjectRow | None:
    r = conn.execute("SELECT * FROM objects WHERE namespace=? AND bucket=? AND key=?",
                     (namespace, bucket, key)).fetchone()
    return None if r is None else _object(r)


def usage(conn: sqlite3.Connection, namespace: str) -> int:
    r = conn.execute("SELECT bytes FROM storage_usage WHERE namespace=?", (namespace,)).fetchone()
    return 0 if r is None else int(r[0])


def _add_usage(conn: sqlite3.Connection, namespace: str, delta: int, quota: int | None) -> None:
    used = usage(conn, namespace) + delta
    if quota is not None and delta > 0 and used > quota:
        raise QuotaExceeded(used - delta, quota)
    conn.execute("INSERT INTO storage_usage VALUES (?, ?) ON CONFLICT (namespace) DO UPDATE"
                 " SET bytes=excluded.bytes", (namespace, max(used, 0)))


def _fire(conn: sqlite3.Connection, namespace: str, notify: Notify | None, now: float) -> int:
    if notify is None:
        return 0
    rows = conn.execute("SELECT * FROM triggers WHERE namespace=? AND type='storage'",
                        (namespace,)).fetchall()
    triggers = [{**dict(r), "config": json.loads(r["config"])} for r in rows]
    events = notify(triggers) if triggers else []
    for ev in events:
        _insert_event(conn, now=now, **ev)
    return len(events)


def put_object(conn: sqlite3.Connection, obj: ObjectRow, *, quota: int | None,
               notify: Notify | None = None,
               upload_id: str | None = None) -> tuple[str | None, list[str], int]:
    """Make ``obj`` the current object for its key; return (replaced file or None, part files
    of the completed upload to remove, events queued). With ``upload_id`` the upload and its
    parts go in the same transaction (CompleteMultipartUpload).
    Raises KeyError("bucket") for a missing bucket, KeyError("upload") for a missing upload,
    QuotaExceeded; nothing is written then."""
    with transaction(conn):
        if not bucket_exists(conn, obj.namespace, obj.bucket):
            raise KeyError("bucket")
        parts: list[tuple[str, int]] = []
        if upload_id is not None:
            if _upload(conn, obj.namespace, upload_id) is None:
                raise KeyError("upload")
            parts = _drop_upload(conn, obj.namespace, upload_id)
            _add_usage(conn, obj.namespace, -_parts_bytes_dropped(parts), None)
        old = get_object(conn, obj.namespace, obj.bucket, obj.key)
        _add_usage(conn, obj.namespace, obj.size - (old.size if old else 0), quota)
        conn.execute(
            "INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (namespace, bucket, key)"
            " DO UPDATE SET file=excluded.file, size=excluded.size, etag=excluded.etag,"
            " content_type=excluded.content_type, headers=excluded.headers,"
            " modified_at=excluded.modified_at",
            (obj.namespace, obj.bucket, obj.key, obj.file, obj.size, obj.etag, obj.content_type,
             json.dumps(obj.headers), obj.modified_at))
        fired = _fire(conn, obj.namespace, notify, obj.modified_at)
    return (old.file if old else None), [f for f, _ in parts], fired


def _parts_bytes_dropped(parts: list[tuple[str, int]]) -> int:
    return sum(size for _, size in parts)


def delete_objects(conn: sqlite3.Connection, namespace: str, bucket: str, keys: list[str], *,
                   now: float, notify: Callable[[str], Notify] | None = None
                   ) -> tuple[list[str], int]:
    """Delete keys (missing ones are no error, as in S3); return (files to remove, events).
    ``notify(key)`` gives the notify function of one deleted key.
    Raises KeyError("bucket") for a missing bucket."""
    files: list[str] = []
    fired = 0
    with transaction(conn):
        if not bucket_exists(conn, namespace, bucket):
            raise KeyError("bucket")
        for key in keys:
            r = conn.execute("DELETE FROM objects WHERE namespace=? AND bucket=? AND key=?"
                             " RETURNING file, size", (namespace, bucket, key)).fetchone()
            if r is None:
                continue
            files.append(r[0])
            _add_usage(conn, namespace, -int(r[1]), None)
            fired += _fire(conn, namespace, None if notify is None else notify(key), now)
    return files, fired


def list_objects(conn: sqlite3.Connection, namespace: str, bucket: str, *, prefix: str,
                 after: str, after_prefix: bool, delimiter: str,
                 limit: int) -> tuple[list[ObjectRow], list[str], bool]:
    """Keys that start with ``prefix``, after ``after`` (a key, or with ``after_prefix`` a
    common prefix returned before), in UTF-8 byte order, up to ``limit`` entries counting each
    common prefix (with ``delimiter``) once. Returns (objects, common prefixes, truncated)."""
    objects: list[ObjectRow] = []
    prefixes: list[str] = []
    low, inclusive = (prefix, True) if after < prefix else (after, False)
    if after_prefix and after >= prefix:
        up = _upper(after)
        low, inclusive = (up, True) if up is not None else (after, False)
    high = _upper(prefix)
    while True:
        sql = (f"SELECT * FROM objects WHERE namespace=? AND bucket=?"
               f" AND key {'>=' if inclusive else '>'} ?")
        args: list[Any] = [namespace, bucket, low]
        if high is not None:
            sql += " AND key < ?"
            args.append(high)
        rows = conn.execute(sql + " ORDER BY key LIMIT 500", args).fetchall()
        if not rows:
            return objects, prefixes, False
        for r in rows:
            key: str = r["key"]
            if not key.startswith(prefix):
                return objects, prefixes, False
            low, inclusive = key, False
            rest = key[len(prefix):]
            cut = rest.find(delimiter) if delimiter else -1
            common = prefix + rest[:cut + len(delimiter)] if cut >= 0 else None
            if common is not None and prefixes and prefixes[-1] == common:
                continue  # only when the prefix cannot be jumped over (see _upper)
            if len(objects) + len(prefixes) >= limit:
                return objects, prefixes, True
            if common is None:
                objects.append(_object(r))
                continue
            prefixes.append(common)
            up = _upper(common)
            if up is not None:  # jump past every key of this "folder" in one query
                low, inclusive = up, True
                break


def _upper(text: str) -> str | None:
    """The smallest string above every string starting with ``text`` (UTF-8 byte order is code
    point order): 'a/' -> 'a0'. None for '' or a last character that cannot be incremented."""
    if not text or ord(text[-1]) >= 0x10FFFF:
        return None
    return text[:-1] + chr(ord(text[-1]) + 1)


def live_files(conn: sqlite3.Connection) -> set[str]:
    """Every file a row points at (startup sweep: anything else under objects/ is garbage)."""
    rows = conn.execute("SELECT file FROM objects UNION ALL SELECT file FROM multipart_parts")
    return {r[0] for r in rows}


# --- multipart -------------------------------------------------------------------------------

def create_upload(conn: sqlite3.Connection, *, id: str, namespace: str, bucket: str, key: str,
                  content_type: str, headers: dict[str, str], now: float) -> bool:
    """False when the bucket does not exist."""
    with transaction(conn):
        if not bucket_exists(conn, namespace, bucket):
            return False
        conn.execute("INSERT INTO multipart_uploads VALUES (?,?,?,?,?,?,?)",
                     (id, namespace, bucket, key, content_type, json.dumps(headers), now))
    return True


def _upload(conn: sqlite3.Connection, namespace: str, upload_id: str) -> dict[str, Any] | None:
    r = conn.execute("SELECT * FROM multipart_uploads WHERE id=? AND namespace=?",
                     (upload_id, namespace)).fetchone()
    return None if r is None else {**dict(r), "headers": json.loads(r["headers"])}


def get_upload(conn: sqlite3.Connection, namespace: str, bucket: str, key: str,
               upload_id: str) -> dict[str, Any] | None:
    u = _upload(conn, namespace, upload_id)
    return u if u is not None and (u["bucket"], u["key"]) == (bucket, key) else None


def list_uploads(conn: sqlite3.Connection, namespace: str, bucket: str,
                 prefix: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT id, key, created_at FROM multipart_uploads WHERE namespace=?"
                        " AND bucket=? AND substr(key, 1, ?)=? ORDER BY key, created_at",
                        (namespace, bucket, len(prefix), prefix)).fetchall()
    return [dict(r) for r in rows]


def put_part(conn: sqlite3.Connection, namespace: str, upload_id: str, part_number: int, *,
             file: str, size: int, etag: str, now: float, quota: int | None) -> str | None:
    """Record a part (replacing one with the same number); return the replaced part's file.
    Parts count toward the tenant's stored bytes. Raises KeyError for a missing upload,
    QuotaExceeded."""
    with transaction(conn):
        if _upload(conn, namespace, upload_id) is None:
            raise KeyError("upload")
        old = conn.execute("SELECT file, size FROM multipart_parts WHERE upload_id=? AND "
                           "part_number=?", (upload_id, part_number)).fetchone()
        _add_usage(conn, namespace, size - (int(old[1]) if old else 0), quota)
        conn.execute("INSERT INTO multipart_parts VALUES (?,?,?,?,?,?)"
                     " ON CONFLICT (upload_id, part_number) DO UPDATE SET file=excluded.file,"
                     " size=excluded.size, etag=excluded.etag, created_at=excluded.created_at",
                     (upload_id, part_number, file, size, etag, now))
    return None if old is None else str(old[0])


def list_parts(conn: sqlite3.Connection, upload_id: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT part_number, file, size, etag, created_at FROM multipart_parts"
                        " WHERE upload_id=? ORDER BY part_number", (upload_id,)).fetchall()
    return [dict(r) for r in rows]


def _drop_upload(conn: sqlite3.Connection, namespace: str,
                 upload_id: str) -> list[tuple[str, int]]:
    rows = conn.execute("DELETE FROM multipart_parts WHERE upload_id=? RETURNING file, size",
                        (upload_id,)).fetchall()
    conn.execute("DELETE FROM multipart_uploads WHERE id=?", (upload_id,))
    return [(r[0], int(r[1])) for r in rows]


def abort_upload(conn: sqlite3.Connection, namespace: str, bucket: str, key: str,
                 upload_id: str) -> list[str] | None:
    """Forget an upload; return its part files, or None when there is no such upload."""
    with transaction(conn):
        if get_upload(conn, namespace, bucket, key, upload_id) is None:
            return None
        parts = _drop_upload(conn, namespace, upload_id)
        _add_usage(conn, namespace, -_parts_bytes_dropped(parts), None)
    return [f for f, _ in parts]
