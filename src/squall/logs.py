"""Function logs: tagged with their request id, batched to the store, bounded per function.

An invocation's lines (START, what it printed, END, REPORT) are stored as one row: a quarter of
the rows to write on the hot path."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from squall.batch import BatchWriter
from squall.store import logs as store_logs
from squall.store.db import Database

LogRow = tuple[str, str, str, float, str]


class LogSink:
    """``append`` is cheap and never blocks; ``run`` (a task) writes batches to the store."""

    def __init__(self, db: Database, keep_per_function: int) -> None:
        # Trimming walks `keep` index entries, so it runs once a function has written another
        # tenth of its bound (keep 10,000 -> trim every 1,000 entries; at most 11,000 held).
        since_trim: dict[tuple[str, str], int] = {}
        trim_every = max(1, keep_per_function // 10)

        def write(conn: sqlite3.Connection, rows: list[LogRow]) -> None:
            due: set[tuple[str, str]] = set()
            for row in rows:
                key = (row[0], row[1])
                since_trim[key] = since_trim.get(key, 0) + 1
                if since_trim[key] >= trim_every:
                    due.add(key)
                    since_trim[key] = 0
            store_logs.append_many(conn, rows, keep_per_function, trim=due)

        self._batch: BatchWriter[LogRow] = BatchWriter(db, write, inline=True)

    def append(self, function: str, request_id: str, line: str,
               namespace: str = "default") -> None:
        self._batch.append((namespace, function, request_id, time.time(), line))

    def append_block(self, function: str, request_id: str, lines: list[str],
                     namespace: str = "default") -> None:
        """All the lines of one invocation, in order, as one entry."""
        self._batch.append((namespace, function, request_id, time.time(), "\n".join(lines)))

    def append_text(self, function: str, request_id: str, text: str,
                    namespace: str = "default") -> None:
        """``append_block`` of lines already joined by newlines."""
        self._batch.append((namespace, function, request_id, time.time(), text))

    def observe_flush(self, observe: Callable[[float], None]) -> None:
        self._batch.on_flush = observe

    async def flush(self) -> None:
        await self._batch.flush()

    async def run(self) -> None:
        await self._batch.run()
