"""The store seam: the connections, the thread that runs statements, migrations.

Statements run on one dedicated thread (``Database.run``) so that the event loop never waits
for a lock, a checkpoint's fsync or a long query. The hot path's short writes are the exception
(``Database.run_inline``: a group commit of events or outcomes, a claim, a batch of invocation
records and log rows): they run on the event loop's thread with a second connection that never
waits (busy_timeout 0, no checkpoints); when the db thread's connection holds the write lock
they go to the db thread instead. WAL with synchronous=NORMAL: a committed transaction
survives a kill -9 of the platform (it is in the WAL file the OS holds), which is the durability
the async queue promises; only a power loss may drop the last commits.

Two backends behind this class (``open_database`` picks one from ``settings.store``):
``Database`` itself is SQLite, the default, and stays exactly as lean as it always was;
``squall.store.pg.PgDatabase`` is PostgreSQL, shared by any number of gateways. The store
modules are written once against what they use of ``sqlite3.Connection`` (qmark placeholders,
rows by name and index, ``executemany``, ``rowcount``, ``RETURNING``) and ``transaction``;
the PostgreSQL connection provides the same. Where the SQL cannot be shared a module asks
``is_postgres(conn)``; where the DDL differs ``squall.store.pg`` translates it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, cast

T = TypeVar("T")
log = logging.getLogger("squall.store")
CHECKPOINT_EVERY_S = 0.5

Migration = tuple[str, str]  # (unique id, SQL script)
Isolation = Literal["serializable", "read committed"]
# Called with the names of the tables another process changed (see ``Database.watch``).
OnChange = Callable[[frozenset[str]], Awaitable[None]]


def _all_migrations() -> list[Migration]:
    # Each store module owns its tables; their migrations run in this order, each once.
    from squall.store import (
        aliases,
        bundles,
        captures,
        functions,
        invocations,
        leases,
        logs,
        objects,
        queue,
        tenants,
    )

    return [*functions.SCHEMA, *invocations.SCHEMA, *logs.SCHEMA, *queue.SCHEMA,
            *tenants.SCHEMA, *aliases.SCHEMA, *objects.SCHEMA, *captures.SCHEMA,
            *bundles.SCHEMA, *leases.SCHEMA]


def is_postgres(conn: sqlite3.Connection) -> bool:
    """For the few statements whose SQL cannot be shared (``FOR UPDATE SKIP LOCKED``)."""
    return type(conn) is not sqlite3.Connection


def open_database(store: str, data_dir: Path) -> Database:
    """The store ``settings.store`` names: ``postgresql://...`` (or ``postgres://``) is
    PostgreSQL; anything else is a SQLite file, by default ``<data-dir>/squall.db``. Not opened
    yet: call ``open``."""
    if store.startswith(("postgresql://", "postgres://")):
        from squall.store.pg import PgDatabase

        return PgDatabase(store)
    return Database(Path(store) if store else data_dir / "squall.db")


class Database:
    """Owns the connection. ``run`` executes a function with the connection on the db thread."""

    # Other processes write the same store (gateways of a cluster, or the workers of one data
    # dir, ``squall up --workers``): caches must follow ``watch``.
    shared = False
    # This process takes back at startup what the previous run left running (the async queue's
    # leases): the store's only process, or the first of a data dir's workers. A gateway of a
    # store others share, or a worker, never does: running rows may be another's live work.
    recovers = True
    dialect = "sqlite"
    # the event loop's own connection (``run_inline``); None: everything goes to the db thread
    _inline: sqlite3.Connection | None = None

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="squall-db")
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._checkpointed = 0.0  # monotonic time of the last checkpoint asked for
        self._checkpoint: asyncio.Task[None] | None = None

    def open(self) -> None:
        """Open and migrate, synchronously (startup and tests)."""
        self._executor.submit(self._open).result()

    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        # SQLite reuses the WAL from its start after a checkpoint but never shrinks it: the soak
        # test saw it stay at its high-water mark. Truncate it back to 16 MB after checkpoints.
        conn.execute("PRAGMA journal_size_limit=16777216")
        return conn

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect(5000)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (id TEXT PRIMARY KEY, applied_at REAL)"
        )
        done = {row[0] for row in conn.execute("SELECT id FROM schema_migrations")}
        from squall.store.changes import SQLITE_SCHEMA

        for mig_id, sql in [*_all_migrations(), *SQLITE_SCHEMA]:
            if mig_id in done:
                continue
            conn.execute("BEGIN")
            try:
                for statement in sql.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, strftime('%s','now'))", (mig_id,)
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self._conn = conn
        # The event loop's connection never waits for the write lock (it would stop the loop)
        # and never checkpoints (an fsync); ``run_inline`` asks the db thread for checkpoints.
        inline = self._connect(0)
        inline.execute("PRAGMA wal_autocheckpoint=0")
        self._inline = inline

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the db thread. Wrap writes in ``transaction`` inside ``fn``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    async def run_inline(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``run`` for a short write of bounded size on the hot path, run at once on the event
        loop's thread with a connection of its own: no thread hop, and no handing the GIL back
        and forth with the db thread at every statement, which cost more than the statements
        (``make bench``: accepting events, 4,100 -> 6,100 a second). ``fn`` must take the write
        lock before it writes (``transaction``, or one statement): when the db thread's
        connection holds the lock (a deploy, a prune), SQLite answers busy at once, nothing
        was written, and ``fn`` runs on the db thread like ``run``. Stores without an inline
        connection (PostgreSQL) run everything there."""
        conn = self._inline
        if conn is not None:
            try:
                out = fn(conn)
            except sqlite3.OperationalError as exc:
                if (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
            else:
                self._checkpoint_soon()
                return out
        return await self.run(fn)

    def _checkpoint_soon(self) -> None:
        """The inline connection never checkpoints: at most twice a second, the db thread
        copies the WAL back into the database (PASSIVE: it waits for no writer)."""
        now = time.monotonic()
        running = self._checkpoint is not None and not self._checkpoint.done()
        if running or now - self._checkpointed < CHECKPOINT_EVERY_S:
            return
        self._checkpointed = now
        self._checkpoint = asyncio.get_running_loop().create_task(self._run_checkpoint())

    async def _run_checkpoint(self) -> None:
        try:
            await self.run(lambda c: c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        except Exception:  # the next one tries again; the commits are safe in the WAL
            log.exception("WAL checkpoint failed")
        finally:
            self._checkpoint = None

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Same as ``run`` for code that is not on the event loop (CLI helpers, tests)."""
        return self._executor.submit(self._call, fn).result()

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise RuntimeError("database is not open")
        return fn(self._conn)

    def close(self) -> None:
        def _close() -> None:
            if self._inline is not None:
                self._inline.close()
                self._inline = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)

    async def watch(self, on_change: OnChange,
                    on_seen: Callable[[int], None] | None = None) -> None:
        """Until cancelled, await ``on_change(tables)`` whenever another process changed rows
        of those tables, so that in-memory caches can reload. SQLite: the counters of
        ``squall.store.changes``, read every ``POLL_S``; every watched table is reported once
        at the start (what changed before this began); ``on_seen(total)`` follows each
        refresh with the sum of the counters it caught up with. Not shared: one process owns
        the file (the data-dir lock), nothing changes behind its back, so this only waits."""
        from squall.store import changes

        if not self.shared:
            await asyncio.Event().wait()
        seen: dict[str, int] = {}
        while True:
            try:
                now = await self.run(changes.counters)
            except sqlite3.Error:  # the next poll tries again
                log.exception("reading the store's change counters failed")
                now = seen
            moved = frozenset(t for t, n in now.items() if seen.get(t) != n)
            seen = now
            if moved:
                try:
                    await on_change(moved)
                except Exception:  # a failed refresh must not stop the next ones
                    log.exception("refreshing after changes to %s failed", sorted(moved))
            if on_seen is not None:
                on_seen(sum(now.values()))
            await asyncio.sleep(changes.POLL_S)


class transaction:
    """``with transaction(conn): ...`` - BEGIN, COMMIT, or ROLLBACK on any exception.

    SQLite: BEGIN IMMEDIATE, the one writer lock, whatever ``isolation`` says. PostgreSQL:
    SERIALIZABLE by default, so that every read-then-write of the store modules stays as correct
    as under SQLite's single writer (a conflict aborts one transaction and ``Database.run``
    runs its function again); "read committed" for a claim that locks the rows it takes
    (``FOR UPDATE SKIP LOCKED``), where serialisation failures would only slow claimers down.
    """

    def __init__(self, conn: sqlite3.Connection, *,
                 isolation: Isolation = "serializable") -> None:
        self.conn = conn
        self.isolation = isolation

    def __enter__(self) -> sqlite3.Connection:
        if type(self.conn) is sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            cast(Any, self.conn).begin(self.isolation)
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


Item = TypeVar("Item")
A = TypeVar("A")


def _bind(fn: Callable[[sqlite3.Connection, A], T], arg: A) -> Callable[[sqlite3.Connection], T]:
    return lambda conn: fn(conn, arg)


class GroupCommit(Generic[Item, T]):
    """Writes that arrive in the same turn of the event loop, or while one is on the db thread,
    go together in the next one: one transaction for the lot (a group commit), run inline
    (``Database.run_inline``). ``many(conn, items)`` writes them all
    in one transaction and returns one result per item; when it raises, each item is written
    again alone with ``one(conn, item)`` so that one bad item fails only its own caller. A
    lone write goes at once: batches form only under load, and never wait for one to fill, except
    with ``linger_s`` (for writes no client waits on, such as the outcomes of deliveries)."""

    def __init__(self, db: Database, many: Callable[[sqlite3.Connection, list[Item]], list[T]],
                 one: Callable[[sqlite3.Connection, Item], T], *, linger_s: float = 0.0,
                 fill: int = 16) -> None:
        self._db = db
        self._many = many
        self._one = one
        # for writes nobody waits on to answer a client: a batch short of ``fill`` items waits
        # this long for more (the cost of a commit is mostly fixed: the pages it writes)
        self._linger_s = linger_s
        self._fill = fill
        self._pending: list[tuple[Item, asyncio.Future[T]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def __call__(self, item: Item) -> T:
        return await self.submit(item)

    def submit(self, item: Item) -> asyncio.Future[T]:
        """``item`` is written with the next batch; the future is its outcome (cancelled only
        when the writer is, at shutdown)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append((item, fut))
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        batch: list[tuple[Item, asyncio.Future[T]]] = []
        try:
            while self._pending:
                if self._linger_s and len(self._pending) < self._fill:
                    await asyncio.sleep(self._linger_s)
                batch, self._pending = self._pending, []
                items = [item for item, _ in batch]
                try:
                    results = await self._db.run_inline(_bind(self._many, items))
                except Exception:  # one item may be at fault: each alone, with its own outcome
                    for item, fut in batch:
                        try:
                            result = await self._db.run_inline(_bind(self._one, item))
                        except Exception as exc:
                            if not fut.done():
                                fut.set_exception(exc)
                        else:
                            if not fut.done():
                                fut.set_result(result)
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self._draining = None
            for _, fut in [*batch, *self._pending]:  # cancelled (shutdown): nobody waits forever
                if not fut.done():
                    fut.cancel()
