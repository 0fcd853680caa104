"""Redis Streams connector: a consumer group, XACK after success, XAUTOCLAIM recovery.

Config: ``url`` (redis://127.0.0.1:6379/0), ``stream``, ``group`` (squall-<trigger id>),
``consumer`` (<hostname>-<pid>), ``start`` ("$": only new entries, or "0": the whole stream, when
the group is first created), ``claim_idle_ms`` (60000).

At least once: an entry read with XREADGROUP sits in the group's pending entries list (PEL) until
it is XACKed after a successful delivery. Entries whose delivery was not handled, and entries left
pending by a consumer that died (every platform restart is a new consumer name), are taken over
with XAUTOCLAIM once idle for ``claim_idle_ms`` - at startup and then every ``claim_idle_ms / 2``
(at most 30 s). A slow delivery keeps its entries "fresh" with XCLAIM JUSTID (resets idle time
without counting a delivery) so another consumer does not claim them meanwhile.

Event: id ``<stream>/<entry id>`` (stable across redeliveries), data = the entry's fields as a
text -> text object, extensions ``redisid`` and ``deliveryattempt`` (1 for a first read; the
PEL's delivery counter for a claimed entry).
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from squall.events.cloudevents import make_cloudevent

from .base import ConfigReader, Inbound, Pump, ReconnectingConnector, public_url, safe_name

_BLOCK_MS = 5000


@dataclass(frozen=True)
class RedisConfig:
    url: str
    stream: str
    group: str
    consumer: str
    start: str
    claim_idle_ms: int


def parse_config(trigger_id: str, config: dict[str, Any]) -> RedisConfig:
    r = ConfigReader("redis", config)
    cfg = RedisConfig(
        url=r.get_url("url", "redis://127.0.0.1:6379/0", ("redis", "rediss", "unix")),
        stream=r.get_str("stream", required=True) or "",
        group=r.get_str("group", safe_name("squall-", trigger_id, 200)) or "",
        consumer=r.get_str("consumer", f"{socket.gethostname()}-{os.getpid()}") or "",
        start=r.get_choice("start", "$", ("$", "0")),
        claim_idle_ms=r.get_int("claim_idle_ms", 60_000, 10, 86_400_000),
    )
    r.done()
    return cfg


def _text(b: bytes | str) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else b


class RedisStreamsConnector(ReconnectingConnector):
    @staticmethod
    def validate(config: dict[str, Any]) -> None:
        parse_config("x", config)

    async def _session(self, pump: Pump) -> None:
        cfg = parse_config(self.spec.id, self.spec.config)
        self._cfg = cfg
        self._source = f"{public_url(cfg.url).rstrip('/')}/{cfg.stream}"
        # Socket timeout above the BLOCK time: a dead peer surfaces as an error, not a hang.
        client = aioredis.Redis.from_url(cfg.url, socket_connect_timeout=5,
                                         socket_timeout=_BLOCK_MS / 1000 + 10)
        self._in_flight: set[str] = set()
        try:
            await client.ping()
            try:
                await client.xgroup_create(cfg.stream, cfg.group, id=cfg.start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._running()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._claim_loop(client, pump))
                await self._read_loop(client, pump)
        finally:
            await client.aclose()

    async def _read_loop(self, client: aioredis.Redis, pump: Pump) -> None:
        cfg = self._cfg
        while True:
            resp: Any = await client.xreadgroup(cfg.group, cfg.consumer, {cfg.stream: ">"},
                                           count=self.spec.batch_size, block=_BLOCK_MS)
            for _stream, entries in resp or []:
                for entry_id, fields in entries:
                    await self._put(client, pump, _text(entry_id), fields, 1)

    async def _claim_loop(self, client: aioredis.Redis, pump: Pump) -> None:
        cfg = self._cfg
        interval = min(max(cfg.claim_idle_ms / 2000, 0.05), 30.0)
        while True:
            cursor: bytes | str = "0-0"
            while True:
                claimed: Any = await client.xautoclaim(cfg.stream, cfg.group, cfg.consumer,
                                               min_idle_time=cfg.claim_idle_ms,
                                               start_id=cursor, count=100)
                cursor, entries = claimed[0], claimed[1]
                for entry_id, fields in entries:
                    eid = _text(entry_id)
                    if eid in self._in_flight:
                        continue  # ours and still being delivered (claiming only reset its idle)
                    if fields is None:  # trimmed from the stream while pending: nothing to send
                        await client.xack(cfg.stream, cfg.group, eid)
                        continue
                    await self._put(client, pump, eid, fields,
                                    await self._times_delivered(client, eid))
                if _text(cursor) == "0-0":
                    break
            await asyncio.sleep(interval)

    async def _times_delivered(self, client: aioredis.Redis, entry_id: str) -> int:
        cfg = self._cfg
        rows = await client.xpending_range(cfg.stream, cfg.group, min=entry_id, max=entry_id,
                                           count=1)
        return int(rows[0]["times_delivered"]) if rows else 1

    async def _put(self, client: aioredis.Redis, pump: Pump, entry_id: str,
                   fields: dict[Any, Any], attempt: int) -> None:
        cfg = self._cfg
        event = make_cloudevent(
            source=self._source, type="io.squall.redis.stream.entry",
            id=f"{cfg.stream}/{entry_id}",
            data={_text(k): _text(v) for k, v in fields.items()},
            extensions={"redisid": entry_id, "deliveryattempt": attempt,
                        # a producer's W3C trace context, as the CloudEvents tracing extension
                        "traceparent": _text(fields.get(b"traceparent", b"")) or None},
        )
        self._in_flight.add(entry_id)

        async def ack() -> None:
            await client.xack(cfg.stream, cfg.group, entry_id)
            self._in_flight.discard(entry_id)

        async def nack() -> None:
            # Left in the PEL: the claim loop takes it again once it has been idle long enough.
            self._in_flight.discard(entry_id)

        async def touch() -> None:
            await client.xclaim(cfg.stream, cfg.group, cfg.consumer, 0, [entry_id], justid=True)

        await pump.put(Inbound(event, ack, nack, touch))
