"""Invocation records, batched to the store off the hot path."""

from __future__ import annotations

from typing import Any

from squall.batch import BatchWriter
from squall.store import invocations as store_inv
from squall.store.db import Database


class Recorder:
    def __init__(self, db: Database) -> None:
        self._batch: BatchWriter[dict[str, Any]] = BatchWriter(db, store_inv.insert_many)

    def append(self, record: dict[str, Any]) -> None:
        self._batch.append(record)

    async def flush(self) -> None:
        await self._batch.flush()

    async def run(self) -> None:
        await self._batch.run()
