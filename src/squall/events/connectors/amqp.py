"""RabbitMQ (AMQP 0-9-1) connector with aio-pika: consume a queue, ack after success.

Config: ``url`` (amqp://guest:guest@127.0.0.1/), ``queue``, ``declare`` (default true: declare
the queue durable if missing; false: it must exist, checked with a passive declare), ``prefetch``
(unacknowledged messages the broker may push to us; default ``batch_size * concurrency``, the
most the pump can hold, so no message waits on our side while it could go to another consumer).

On success the message is acked; when the delivery was not handled it is rejected with
``requeue=True`` and the broker hands it out again (to us after the pump's pause, or to another
consumer). A plain (non-robust) connection is used on purpose: the shared reconnect loop owns the
retries and reports them as the trigger's status.

Event: id = the message's ``message_id`` when the publisher set one (stable across redeliveries;
set it if handlers deduplicate), else a fresh UUID. subject = routing key. ``deliveryattempt`` =
``x-delivery-count`` + 1 on quorum queues; on classic queues only the ``redelivered`` flag is
known, so it is 2 for a redelivered message (a lower bound) and 1 otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from squall.events.cloudevents import make_cloudevent

from .base import ConfigReader, Inbound, Pump, ReconnectingConnector, decode_payload, public_url


def parse_config(config: dict[str, Any]) -> dict[str, Any]:
    r = ConfigReader("amqp", config)
    cfg: dict[str, Any] = {
        "url": r.get_url("url", "amqp://guest:guest@127.0.0.1/", ("amqp", "amqps")),
        "queue": r.get_str("queue", required=True, pattern=r"[^\s]{1,255}"),
        "declare": r.get_bool("declare", True),
        "prefetch": r.get_int("prefetch", 0, 0, 65535),  # 0 = batch_size * concurrency
    }
    r.done()
    return cfg


class AmqpConnector(ReconnectingConnector):
    @staticmethod
    def validate(config: dict[str, Any]) -> None:
        parse_config(config)

    async def _session(self, pump: Pump) -> None:
        cfg = parse_config(self.spec.config)
        source = f"{public_url(cfg['url']).rstrip('/')}/{cfg['queue']}"
        conn = await aio_pika.connect(cfg["url"], timeout=5)
        lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def on_close(_sender: Any, exc: BaseException | None = None) -> None:
            if not lost.done():
                lost.set_result(f"{exc.__class__.__name__}: {exc}" if exc else "closed")

        try:
            conn.close_callbacks.add(on_close)
            channel = await conn.channel()
            channel.close_callbacks.add(on_close)
            prefetch = cfg["prefetch"] or self.spec.batch_size * self.spec.concurrency
            await channel.set_qos(prefetch_count=prefetch)
            if cfg["declare"]:
                queue = await channel.declare_queue(cfg["queue"], durable=True)
            else:
                queue = await channel.get_queue(cfg["queue"], ensure=True)

            async def on_message(msg: AbstractIncomingMessage) -> None:
                await pump.put(_inbound(msg, source, cfg["queue"]))

            await queue.consume(on_message)
            self._running()
            raise ConnectionError(f"connection lost: {await lost}")
        finally:
            await conn.close()


def _inbound(msg: AbstractIncomingMessage, source: str, queue: str) -> Inbound:
    data, content_type = decode_payload(msg.body)
    headers = msg.headers or {}
    count = headers.get("x-delivery-count")
    if isinstance(count, int) and not isinstance(count, bool):
        attempt = count + 1
    else:
        attempt = 2 if msg.redelivered else 1
    event = make_cloudevent(
        source=source, type="io.squall.amqp.message", id=msg.message_id or None,
        subject=msg.routing_key or queue, data=data, datacontenttype=content_type,
        extensions={"deliveryattempt": attempt},
    )

    async def ack() -> None:
        await msg.ack()

    async def nack() -> None:
        await msg.reject(requeue=True)

    return Inbound(event, ack, nack)
