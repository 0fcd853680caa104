"""Invocation records, batched to the store off the hot path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from squall.batch import BatchWriter
from squall.store import invocations as store_inv
from squall.store.db import Database


class Recorder:
    def __init__(self, db: Database) -> None:
        self._batch: BatchWriter[dict[str, Any]] = BatchWriter(
            db, store_inv.insert_many, inline=True)

    def append(self, record: dict[str, Any]) -> None:
        self._batch.append(record)

    def observe_flush(self, observe: Callable[[float], None]) -> None:
        self._batch.on_flush = observe

    async def flush(self) -> None:
        await self._batch.flush()

    async def run(self) -> None:
        await self._batch.run()
