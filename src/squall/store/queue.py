"""The durable async queue, dead letters, idempotency keys, triggers and schedules (events issue)."""

from __future__ import annotations

from squall.store.db import Migration

SCHEMA: list[Migration] = []
