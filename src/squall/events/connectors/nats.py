"""NATS JetStream connector: a durable pull consumer, ack after success, nak on failure.

Config: ``url`` (nats://127.0.0.1:4222), ``stream``, ``subject`` (the consumer's filter subject;
wildcards allowed), ``durable`` (consumer name, default squall-<trigger id>), ``create_stream``
(default false).

The stream must exist unless ``create_stream = true``: streams carry retention, limits and
replication that belong to whoever runs NATS, and a typo in a stream name should show as an error
in ``squall trigger ls``, not silently create a new empty stream. With ``create_stream = true`` a
missing stream is created with just ``subjects = [subject]`` and the server's defaults.

The durable consumer (explicit ack) keeps its position on the server, so events published while
the platform is down are delivered after restart. A delivery that takes longer than the consumer's
AckWait is kept alive with +WPI (``in_progress``) so the server does not redeliver it meanwhile.
NATS's own reconnect is off: the shared reconnect loop owns retries and status reporting.

Event: id ``<stream>/<stream sequence>`` (stable across redeliveries), subject = the message
subject, extensions ``natsstream``, ``streamseq``, ``deliveryattempt`` (metadata.num_delivered).
"""

from __future__ import annotations

from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from squall.events.cloudevents import make_cloudevent

from .base import (
    ConfigReader,
    Inbound,
    Pump,
    ReconnectingConnector,
    decode_payload,
    public_url,
    safe_name,
)

_NAME = r"[A-Za-z0-9_-]{1,200}"
_SUBJECT = r"[^\s]+"


def parse_config(trigger_id: str, config: dict[str, Any]) -> dict[str, Any]:
    r = ConfigReader("nats", config)
    cfg = {
        "url": r.get_url("url", "nats://127.0.0.1:4222", ("nats", "tls")),
        "stream": r.get_str("stream", required=True, pattern=_NAME),
        "subject": r.get_str("subject", required=True, pattern=_SUBJECT),
        "durable": r.get_str("durable", safe_name("squall-", trigger_id, 200), pattern=_NAME),
        "create_stream": r.get_bool("create_stream", False),
    }
    r.done()
    return cfg



class NatsConnector(ReconnectingConnector):
    @staticmethod
    def validate(config: dict[str, Any]) -> None:
        parse_config("x", config)

    async def _session(self, pump: Pump) -> None:
        cfg = parse_config(self.spec.id, self.spec.config)
        stream: str = cfg["stream"]
        source = f"{public_url(cfg['url']).rstrip('/')}/{stream}"
        errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            # Kept for the status detail (NoServersError alone says nothing); not logged twice.
            errors.append(exc)

        try:
            # nats-py's initial connect loops forever with max_reconnect_attempts=0 (= no limit);
            # 1 means two quick tries, after which our own backoff takes over.
            nc = await nats.connect(cfg["url"], allow_reconnect=False, connect_timeout=5,
                                    max_reconnect_attempts=1, reconnect_time_wait=0.1,
                                    error_cb=on_error)
        except nats.errors.NoServersError:
            cause = errors[-1] if errors else None
            raise ConnectionError(f"cannot connect to {public_url(cfg['url'])}: {cause}") from None
        try:
            js = nc.jetstream()
            if cfg["create_stream"]:
                try:
                    await js.stream_info(stream)
                except nats.js.errors.NotFoundError:
                    await js.add_stream(name=stream, subjects=[cfg["subject"]])
            try:
                psub = await js.pull_subscribe(cfg["subject"], durable=cfg["durable"],
                                               stream=stream)
            except nats.js.errors.NotFoundError as exc:
                raise LookupError(f"stream {stream!r} not found (create it, or set"
                                  " create_stream = true)") from exc
            self._running()
            while True:
                try:
                    msgs = await psub.fetch(batch=self.spec.batch_size, timeout=5)
                except nats.errors.TimeoutError:
                    if nc.is_closed:
                        raise ConnectionError("connection closed") from None
                    continue
                for msg in msgs:
                    await pump.put(_inbound(msg, source, stream))
        finally:
            await nc.close()


def _inbound(msg: Msg, source: str, stream: str) -> Inbound:
    meta = msg.metadata
    seq = int(meta.sequence.stream)
    data, content_type = decode_payload(msg.data)
    event = make_cloudevent(
        source=source, type="io.squall.nats.message", id=f"{stream}/{seq}", subject=msg.subject,
        data=data, datacontenttype=content_type,
        extensions={"natsstream": stream, "streamseq": seq,
                    "deliveryattempt": int(meta.num_delivered)},
    )

    async def ack() -> None:
        # Wait for the server's confirmation: a lost fire-and-forget ack means a duplicate.
        await msg.ack_sync(timeout=5)

    async def nack() -> None:
        await msg.nak()

    async def touch() -> None:
        await msg.in_progress()

    return Inbound(event, ack, nack, touch)
