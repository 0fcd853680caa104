"""PostgreSQL change connector (asyncpg): row changes in chosen tables as CloudEvents.

Config: ``dsn`` (postgresql://postgres@127.0.0.1:5432/test), ``tables`` (["orders",
"shop.items"]), ``operations`` (["INSERT", "UPDATE", "DELETE"]).

Why a trigger-fed outbox table, not plain LISTEN/NOTIFY and not logical replication:
- plain NOTIFY is not durable (changes made while the platform is down are lost) and a payload is
  capped at 8000 bytes, too small for wide rows;
- logical replication (pgoutput/wal2json) is durable, but needs ``wal_level = logical`` (a server
  restart on most installs), a replication-privileged role, and a slot that pins WAL on disk
  forever if the platform stays down - a trap on the small self-hosted machines Squall targets.
So the connector installs, per table, an AFTER ROW trigger that INSERTs the change into the
outbox ``squall_changes`` (id bigserial, consumer, schema_name, table_name, op, new_row jsonb,
old_row jsonb, created_at) inside the user's own transaction - the change and its event commit or
roll back together - and NOTIFYs ``squall_changes`` with the consumer key as a wake-up only. The
connector reads that consumer's rows in id order, delivers, and DELETEs each row after success:
at least once, and changes made while the platform is down wait in the table. A 5 s poll covers
a missed wake-up (e.g. while reconnecting).

Rows are re-read from the start of the consumer's backlog each time (skipping those in flight)
rather than from a high-water mark, because bigserial ids are taken at INSERT but become visible
at COMMIT: a cursor could step over a slow transaction's smaller id. Delivered rows are deleted,
so the backlog stays short. One connector per trigger consumes a given consumer key; two platform
processes running the same trigger would deliver the backlog twice (at least once still holds).

Removing a trigger does not drop the database triggers (the connector does not know it is being
removed rather than stopped); ``uninstall(spec)`` does, for the trigger manager to call on rm.

Event: id ``squall_changes/<id>``, type ``io.squall.postgres.insert|update|delete``, subject
``<schema>.<table>``, data ``{"schema", "table", "op", "row", "old", "created_at"}``, extensions
``pgtable``, ``pgschema``, ``pgop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from typing import Any

import asyncpg

from squall.events.cloudevents import make_cloudevent

from .base import ConfigReader, Inbound, Pump, ReconnectingConnector, TriggerSpec, public_url

_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_TABLE = rf"{_IDENT}(\.{_IDENT})?"
_OPS = ("INSERT", "UPDATE", "DELETE")
_CHANNEL = "squall_changes"
_POLL_S = 5.0

_INSTALL = """
CREATE TABLE IF NOT EXISTS squall_changes (
    id bigserial PRIMARY KEY,
    consumer text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    op text NOT NULL,
    new_row jsonb,
    old_row jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS squall_changes_consumer_id ON squall_changes (consumer, id);
CREATE OR REPLACE FUNCTION squall_capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO squall_changes (consumer, schema_name, table_name, op, new_row, old_row)
    VALUES (TG_ARGV[0], TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END);
    PERFORM pg_notify('squall_changes', TG_ARGV[0]);
    RETURN NULL;
END $$;
"""


def parse_config(config: dict[str, Any]) -> dict[str, Any]:
    r = ConfigReader("postgres", config)
    dsn = r.get_url("dsn", "postgresql://postgres@127.0.0.1:5432/test",
                    ("postgresql", "postgres"))
    tables = r.get_str_list("tables", None, required=True, pattern=_TABLE)
    ops = r.get_str_list("operations", list(_OPS), allowed=_OPS)
    r.done()
    return {"dsn": dsn, "tables": tables, "operations": ops}


def consumer_key(trigger_id: str) -> str:
    """A SQL-identifier-safe key for a trigger id, unique by a hash suffix (fits in 63 chars)."""
    cleaned = re.sub(r"[^a-z0-9_]", "_", trigger_id.lower())[:40]
    return f"{cleaned}_{hashlib.sha256(trigger_id.encode()).hexdigest()[:8]}"


def _quote_table(table: str) -> str:
    # Names are validated against _TABLE (letters, digits, _), so quoting cannot be escaped.
    return ".".join(f'"{part}"' for part in table.split("."))


async def install(conn: asyncpg.Connection, key: str, tables: list[str], ops: list[str]) -> None:
    """Create the outbox, the capture function and this consumer's triggers (idempotent)."""
    async with conn.transaction():
        # Concurrent CREATE OR REPLACE FUNCTION from several connectors can fail with "tuple
        # concurrently updated"; one lock serialises the installs.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('squall_changes_install'))")
        await conn.execute(_INSTALL)
        for table in tables:
            await conn.execute(
                f'CREATE OR REPLACE TRIGGER "squall_{key}" AFTER {" OR ".join(ops)}'
                f" ON {_quote_table(table)} FOR EACH ROW EXECUTE FUNCTION squall_capture('{key}')")


async def uninstall(spec: TriggerSpec) -> None:
    """Drop this trigger's database triggers and its undelivered rows (call on trigger removal)."""
    cfg = parse_config(spec.config)
    key = consumer_key(spec.id)
    conn = await asyncpg.connect(cfg["dsn"], timeout=5)
    try:
        async with conn.transaction():
            for table in cfg["tables"]:
                await conn.execute(
                    f'DROP TRIGGER IF EXISTS "squall_{key}" ON {_quote_table(table)}')
            if await conn.fetchval("SELECT to_regclass('squall_changes') IS NOT NULL"):
                await conn.execute("DELETE FROM squall_changes WHERE consumer = $1", key)
    finally:
        await conn.close()


class PostgresConnector(ReconnectingConnector):
    @staticmethod
    def validate(config: dict[str, Any]) -> None:
        parse_config(config)

    async def _session(self, pump: Pump) -> None:
        cfg = parse_config(self.spec.config)
        key = consumer_key(self.spec.id)
        source = public_url(cfg["dsn"])
        # Two connections: the reader's (LISTEN + SELECT, used by one loop) and the acker's
        # (DELETEs from concurrent deliveries, serialised by a lock): asyncpg runs one query at
        # a time per connection.
        reader = await asyncpg.connect(cfg["dsn"], timeout=5)
        try:
            acker = await asyncpg.connect(cfg["dsn"], timeout=5)
        except BaseException:
            await reader.close()
            raise
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        lost: asyncio.Future[Any] = loop.create_future()

        def on_notify(_c: object, _pid: int, _channel: str, payload: str) -> None:
            if payload == key:
                wake.set()

        def on_terminate(_c: object) -> None:
            if not lost.done():
                lost.set_result(None)

        try:
            reader.add_termination_listener(on_terminate)
            acker.add_termination_listener(on_terminate)
            await install(reader, key, cfg["tables"], cfg["operations"])
            await reader.add_listener(_CHANNEL, on_notify)
            self._running()
            in_flight: set[int] = set()
            ack_lock = asyncio.Lock()
            limit = self.spec.batch_size * max(self.spec.concurrency, 1)
            while True:
                wake.clear()
                rows = await reader.fetch(
                    "SELECT id, schema_name, table_name, op, new_row, old_row, created_at"
                    " FROM squall_changes WHERE consumer = $1 AND NOT (id = ANY($2::bigint[]))"
                    " ORDER BY id LIMIT $3", key, list(in_flight), limit)
                for row in rows:
                    in_flight.add(row["id"])
                    await pump.put(_inbound(row, source, acker, ack_lock, in_flight, wake))
                if rows:
                    continue
                waiter: asyncio.Future[Any] = asyncio.ensure_future(wake.wait())
                try:
                    await asyncio.wait({waiter, lost}, timeout=_POLL_S,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if lost.done():
                    raise ConnectionError("connection to PostgreSQL lost")
        finally:
            for conn in (reader, acker):
                if lost.done():
                    conn.terminate()
                    continue
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)


def _inbound(row: asyncpg.Record, source: str, acker: asyncpg.Connection, lock: asyncio.Lock,
             in_flight: set[int], wake: asyncio.Event) -> Inbound:
    row_id: int = row["id"]
    schema, table, op = row["schema_name"], row["table_name"], row["op"]
    new_row = json.loads(row["new_row"]) if row["new_row"] is not None else None
    old_row = json.loads(row["old_row"]) if row["old_row"] is not None else None
    event = make_cloudevent(
        source=source, type=f"io.squall.postgres.{op.lower()}", id=f"squall_changes/{row_id}",
        subject=f"{schema}.{table}",
        data={"schema": schema, "table": table, "op": op, "row": new_row, "old": old_row,
              "created_at": row["created_at"].isoformat()},
        extensions={"pgtable": table, "pgschema": schema, "pgop": op},
    )

    async def ack() -> None:
        async with lock:
            await acker.execute("DELETE FROM squall_changes WHERE id = $1", row_id)
        in_flight.discard(row_id)

    async def nack() -> None:
        # The row stays; the reader picks it up again on its next read.
        in_flight.discard(row_id)
        wake.set()

    return Inbound(event, ack, nack)
