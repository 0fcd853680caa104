"""The SQLite database: one connection, one thread that runs every statement, migrations.

All statements run on one dedicated thread (``Database.run``) so the event loop never blocks on
disk and SQLite never sees two writers. WAL with synchronous=NORMAL: a committed transaction
survives a kill -9 of the platform (it is in the WAL file the OS holds), which is the durability
the async queue promises; only a power loss may drop the last commits.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

Migration = tuple[str, str]  # (unique id, SQL script)


def _all_migrations() -> list[Migration]:
    # Each store module owns its tables; their migrations run in this order, each once.
    from squall.store import functions, invocations, logs, queue

    return [*functions.SCHEMA, *invocations.SCHEMA, *logs.SCHEMA, *queue.SCHEMA]


class Database:
    """Owns the connection. ``run`` executes a function with the connection on the db thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="squall-db")
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        """Open and migrate, synchronously (startup and tests)."""
        self._executor.submit(self._open).result()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (id TEXT PRIMARY KEY, applied_at REAL)"
        )
        done = {row[0] for row in conn.execute("SELECT id FROM schema_migrations")}
        for mig_id, sql in _all_migrations():
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

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the db thread. Wrap writes in ``transaction`` inside ``fn``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Same as ``run`` for code that is not on the event loop (CLI helpers, tests)."""
        return self._executor.submit(self._call, fn).result()

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise RuntimeError("database is not open")
        return fn(self._conn)

    def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)


class transaction:
    """``with transaction(conn): ...`` - BEGIN IMMEDIATE, COMMIT, or ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")
