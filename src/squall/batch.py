"""Batched writes off the hot path: callers append in memory, one task flushes to the store."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from squall.aio import wait_event
from squall.store.db import Database

T = TypeVar("T")
log = logging.getLogger("squall.batch")


class BatchWriter(Generic[T]):
    """Collects items and writes them with ``write(conn, items)`` every ``interval_s``.

    ``append`` never blocks and never touches the disk. ``run`` flushes until cancelled, then
    flushes once more so nothing appended before shutdown is lost. ``flush`` can be awaited to
    make everything appended so far visible (tests, API reads that must see their own writes).
    """

    def __init__(self, db: Database, write: Callable[[sqlite3.Connection, list[T]], None],
                 interval_s: float = 0.1, max_items: int = 512, inline: bool = False) -> None:
        self._db = db
        # a short insert of bounded size: on the event loop's thread (``Database.run_inline``)
        self._run = db.run_inline if inline else db.run
        self._write = write
        self._interval = interval_s
        self._max = max_items
        self._items: list[T] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self.on_flush: Callable[[float], None] | None = None  # seconds per write (metrics)

    def append(self, item: T) -> None:
        self._items.append(item)
        if len(self._items) >= self._max:
            self._wake.set()

    async def flush(self) -> None:
        async with self._lock:
            items, self._items = self._items, []
            if not items:
                return
            try:
                t0 = time.perf_counter()
                await self._run(lambda conn: self._write(conn, items))
                if self.on_flush is not None:
                    self.on_flush(time.perf_counter() - t0)
            except sqlite3.Error:
                log.exception("dropping %d records after a store error", len(items))

    async def run(self) -> None:
        try:
            while True:
                await wait_event(self._wake, self._interval)
                self._wake.clear()
                await self.flush()
        finally:
            await asyncio.shield(self.flush())
