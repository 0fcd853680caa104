"""The PostgreSQL side of the store seam (``squall up --store postgresql://...``).

The store modules are written against the part of ``sqlite3.Connection`` they use; ``PgConnection``
gives them the same over psycopg 3's sync connection, on the same single db thread as SQLite:

- qmark placeholders: ``?`` becomes ``%s`` (and a literal ``%`` becomes ``%%``), once per
  distinct statement (cached);
- rows addressable by name and by index, iterable, and ``dict(row)`` works (``PgRow``);
- ``execute``/``executemany`` return a cursor with ``fetchone``, ``fetchall``, ``rowcount``,
  iteration; ``RETURNING`` works as in SQLite;
- Python ``bool`` is written as 0/1 (SQLite's INTEGER columns stay BIGINT here);
- errors arrive as ``sqlite3`` exception classes (IntegrityError, OperationalError,
  DatabaseError), so callers catch one hierarchy whatever the backend.

``transaction`` opens SERIALIZABLE transactions here (see ``squall.store.db.transaction``);
``PgDatabase.run`` runs the function again when PostgreSQL aborts it for a serialisation failure
or a deadlock, which is how every read-then-write of the store stays correct with several
gateways writing at once. Migrations are the SQLite ones, translated (``pg_ddl``), plus
``PG_MIGRATIONS``; they run under an advisory lock, so gateways starting together migrate once.

Cluster notifications: statement triggers on the tables that gateways cache in memory
(functions, tenants, keys, secrets, aliases, triggers) send ``NOTIFY squall_changes`` with
``<schema>.<table>``, delivered at commit with the change itself; ``PgDatabase.watch`` listens
on a connection of its own and hands the changed tables to the platform (``squall.sync``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import psycopg
from psycopg import errors as pg_errors
from psycopg.adapt import Dumper
from psycopg.pq import Format, TransactionStatus

from squall.errors import ServiceUnavailable
from squall.store.db import Database, Isolation, Migration, OnChange, _all_migrations

T = TypeVar("T")
log = logging.getLogger("squall.store.pg")

CHANNEL = "squall_changes"
WATCHED = frozenset({"functions", "tenants", "api_keys", "secrets", "aliases", "triggers"})
MAX_ATTEMPTS = 30  # serialisation failures in a row before the error reaches the caller
LISTEN_RETRY_CAP_S = 10.0


# --- the connection --------------------------------------------------------------------------

class PgRow:
    """One row: ``row[0]``, ``row["name"]``, ``for v in row``, ``dict(row)``, like sqlite3.Row."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._index, self._values, strict=True))!r})"


def _row_factory(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], PgRow]:
    index = {d.name: i for i, d in enumerate(cursor.description or ())}
    return lambda values: PgRow(values, index)


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """qmark to psycopg's format style: ``?`` -> ``%s`` outside string literals, ``%`` -> ``%%``.
    "SELECT '%?' || ? WHERE a = ?" -> "SELECT '%%?' || %s WHERE a = %s"."""
    out: list[str] = []
    quoted = False
    for ch in sql:
        if ch == "'":
            quoted = not quoted  # '' inside a literal toggles twice: still inside
        if ch == "%":
            out.append("%%")
        elif ch == "?" and not quoted:
            out.append("%s")
        else:
            out.append(ch)
    return "".join(out)


class _BoolText(Dumper):
    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


class _BoolBinary(Dumper):
    format = Format.BINARY
    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return (1 if obj else 0).to_bytes(8, "big", signed=True)


class PgConnection:
    """What the store modules use of ``sqlite3.Connection``, over a psycopg connection in
    autocommit mode (a statement outside ``transaction`` commits on its own, as in SQLite with
    ``isolation_level=None``)."""

    dialect = "postgresql"

    def __init__(self, raw: psycopg.Connection[PgRow]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> psycopg.Cursor[PgRow]:
        if params is None:  # no placeholders: psycopg leaves '%' alone
            return self.raw.execute(cast(Any, sql))
        return self.raw.execute(cast(Any, translate(sql)), params)

    def executemany(self, sql: str,
                    seq: Iterable[Sequence[Any]]) -> psycopg.Cursor[PgRow]:
        cur = self.raw.cursor()
        cur.executemany(cast(Any, translate(sql)), list(seq))
        return cur

    def begin(self, isolation: Isolation) -> None:
        level = "SERIALIZABLE" if isolation == "serializable" else "READ COMMITTED"
        self.raw.execute(cast(Any, f"BEGIN ISOLATION LEVEL {level}"))

    def close(self) -> None:
        self.raw.close()


def connect(url: str) -> PgConnection:
    raw = psycopg.connect(url, autocommit=True, row_factory=_row_factory)
    raw.adapters.register_dumper(bool, _BoolText)
    raw.adapters.register_dumper(bool, _BoolBinary)
    return PgConnection(raw)


# --- migrations ------------------------------------------------------------------------------

_DDL = [  # (SQLite, PostgreSQL), applied in order
    (re.compile(r"\bINTEGER PRIMARY KEY\b"),
     "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),  # sizes, counts and uids outgrow int4
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),  # PostgreSQL's REAL is a 4-byte float
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT ROWID"), ")"),
    (re.compile(r"strftime\('%s',\s*'now'\)"), "extract(epoch from now())"),
]


def pg_ddl(sql: str) -> str:
    """A store module's SQLite migration in PostgreSQL's dialect. The store's DDL keeps to types
    written in capitals and lower-case names, so whole-word rewrites are exact."""
    for pattern, replacement in _DDL:
        sql = pattern.sub(replacement, sql)
    return sql


_NOTIFY_FN = f"""
CREATE FUNCTION squall_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;
END $$;
"""


def _notify_trigger(table: str, events: str = "INSERT OR UPDATE OR DELETE") -> str:
    return (f"CREATE TRIGGER {table}_changed AFTER {events} ON {table}"
            f" FOR EACH STATEMENT EXECUTE FUNCTION squall_notify_change();\n")


PG_MIGRATIONS: list[Migration] = [
    # S3 listings are in UTF-8 byte order (store/objects.py): the "C" collation is that order
    # whatever the database's default is.
    ("pg-0001-objects-collate", """
ALTER TABLE objects ALTER COLUMN key TYPE TEXT COLLATE "C";
ALTER TABLE multipart_uploads ALTER COLUMN key TYPE TEXT COLLATE "C";
"""),
    # Last-use times of keys change every few seconds and matter to no cache: not watched.
    ("pg-0002-notify", _NOTIFY_FN + "".join(
        _notify_trigger(t) for t in sorted(WATCHED - {"api_keys"}))
     + _notify_trigger("api_keys", "INSERT OR DELETE OR UPDATE OF tenant, scopes, secret_hash,"
                                   " sealed_secret, expires_at, revoked_at")),
]


def _migrate(conn: PgConnection) -> None:
    raw = conn.raw
    # One gateway migrates, the others wait and then find every migration done.
    raw.execute("SELECT pg_advisory_lock(hashtext(current_schema() || '/squall-migrate'))")
    try:
        raw.execute("CREATE TABLE IF NOT EXISTS schema_migrations"
                    " (id TEXT PRIMARY KEY, applied_at DOUBLE PRECISION)")
        done = {row[0] for row in raw.execute("SELECT id FROM schema_migrations")}
        todo = [(m, pg_ddl(sql)) for m, sql in _all_migrations()] + PG_MIGRATIONS
        for mig_id, sql in todo:
            if mig_id in done:
                continue
            with raw.transaction():
                raw.execute(cast(Any, sql))
                raw.execute("INSERT INTO schema_migrations VALUES (%s, extract(epoch from now()))",
                            (mig_id,))
    finally:
        raw.execute("SELECT pg_advisory_unlock(hashtext(current_schema() || '/squall-migrate'))")


# --- the database ----------------------------------------------------------------------------

def redact(url: str) -> str:
    """postgresql://app:pw@db/x -> postgresql://app:***@db/x (for messages and logs)."""
    return re.sub(r"(://[^/:@]*):[^/@]*@", r"\1:***@", url)


def _as_sqlite_error(exc: psycopg.Error) -> sqlite3.Error:
    if isinstance(exc, psycopg.IntegrityError):
        return sqlite3.IntegrityError(f"postgresql: {exc}")
    if isinstance(exc, psycopg.OperationalError):
        return sqlite3.OperationalError(f"postgresql: {exc}")
    return sqlite3.DatabaseError(f"postgresql: {exc}")


class PgDatabase(Database):
    """A PostgreSQL store shared by every gateway that names it. Same contract as ``Database``:
    ``run(fn)`` calls ``fn(conn)`` on the one db thread of this process."""

    shared = True
    recovers = False
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__(Path("postgresql"))  # no file: ``path`` is SQLite's
        self.url = url
        self._pg: PgConnection | None = None
        self._backend_pid = 0  # this process's own notifications are not news to it

    def _open(self) -> None:
        try:
            conn = connect(self.url)
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable(
                f"cannot connect to the store {redact(self.url)}: {str(exc).strip()}",
                code="store_unavailable") from None
        try:
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._use(conn)

    def _use(self, conn: PgConnection) -> None:
        self._pg = conn
        self._backend_pid = conn.raw.info.backend_pid
        # The store modules are typed against sqlite3.Connection; PgConnection provides the
        # part of it they use (the module docstring lists it).
        self._conn = cast(sqlite3.Connection, conn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._pg is None:
            raise RuntimeError("database is not open")
        if self._pg.raw.closed:  # PostgreSQL restarted, or the network dropped us: reconnect
            try:
                self._use(connect(self.url))
            except psycopg.Error as exc:
                raise _as_sqlite_error(exc) from exc
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return fn(cast(sqlite3.Connection, self._pg))
            except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected) as exc:
                self._rollback()
                if attempt == MAX_ATTEMPTS:
                    raise _as_sqlite_error(exc) from exc
                # Another gateway won the race: run the whole function again on fresh data,
                # after a short random pause so that the two do not collide again.
                time.sleep(random.uniform(0.0005, 0.002) * attempt)
            except psycopg.Error as exc:
                self._rollback()
                raise _as_sqlite_error(exc) from exc
        raise AssertionError("unreachable")

    def _rollback(self) -> None:
        assert self._pg is not None
        raw = self._pg.raw
        if not raw.closed and raw.info.transaction_status != TransactionStatus.IDLE:
            try:
                raw.execute("ROLLBACK")
            except psycopg.Error:
                pass  # a broken connection: the next call reconnects

    def close(self) -> None:
        def _close() -> None:
            if self._pg is not None:
                self._pg.close()
                self._pg = None
                self._conn = None

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)

    async def watch(self, on_change: OnChange,
                    on_seen: Callable[[int], None] | None = None) -> None:
        """LISTEN on a connection of its own; batch what arrives within 50 ms into one call.
        After every (re)connect, report every watched table: what changed while nobody
        listened (startup, a dropped connection) is reloaded too."""
        pending: set[str] = set()
        wake = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._listen(pending, wake), name="store-listen")
            while True:
                await wake.wait()
                await asyncio.sleep(0.05)
                wake.clear()
                tables = frozenset(pending)
                pending.clear()
                try:
                    await on_change(tables)
                except Exception:  # a failed refresh must not stop the next ones
                    log.exception("refreshing after changes to %s failed", sorted(tables))

    async def _listen(self, pending: set[str], wake: asyncio.Event) -> None:
        failures = 0
        while True:
            try:
                aconn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                async with aconn:
                    cur = await aconn.execute("SELECT current_schema()")
                    row = await cur.fetchone()
                    schema = str(row[0]) if row else "public"
                    await aconn.execute(f"LISTEN {CHANNEL}")
                    failures = 0
                    pending.update(WATCHED)
                    wake.set()
                    async for note in aconn.notifies():
                        where, _, table = note.payload.partition(".")
                        if where == schema and note.pid != self._backend_pid:
                            pending.add(table)
                            wake.set()
            except psycopg.Error as exc:
                failures += 1
                delay = min(LISTEN_RETRY_CAP_S, 0.2 * 2 ** failures)
                log.warning("store notifications lost (%s); listening again in %.1fs", exc, delay)
                await asyncio.sleep(delay)
