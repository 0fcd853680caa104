"""Function logs: lines tagged with their request id, batched to the store, bounded per function."""

from __future__ import annotations

import sqlite3
import time

from squall.batch import BatchWriter
from squall.store import logs as store_logs
from squall.store.db import Database

LogRow = tuple[str, str, str, float, str]


class LogSink:
    """``append`` is cheap and never blocks; ``run`` (a task) writes batches to the store."""

    def __init__(self, db: Database, keep_per_function: int) -> None:
        def write(conn: sqlite3.Connection, rows: list[LogRow]) -> None:
            store_logs.append_many(conn, rows, keep_per_function)

        self._batch: BatchWriter[LogRow] = BatchWriter(db, write)

    def append(self, function: str, request_id: str, line: str,
               namespace: str = "default") -> None:
        self._batch.append((namespace, function, request_id, time.time(), line))

    async def flush(self) -> None:
        await self._batch.flush()

    async def run(self) -> None:
        await self._batch.run()
