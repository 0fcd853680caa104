"""MQTT connector (aiomqtt over paho-mqtt 2.x): a topic filter, QoS 1, PUBACK after success.

Config: ``url`` (mqtt://[user:pass@]127.0.0.1:1883) or ``host``/``port``, ``username``/
``password``, ``topic`` (a filter: ``sensors/+/temp``, ``plant/#``), ``qos`` (1; 0 gives up the
at-least-once guarantee), ``client_id`` (squall-<trigger id>), ``clean_session`` (false).

At least once, and how: with QoS 1 the broker keeps a message until the subscriber's PUBACK.
paho acknowledges as soon as a message arrives unless ``manual_ack`` is on; aiomqtt (2.5) does not
expose that option, so the connector switches it on the paho client aiomqtt wraps
(``client._client.manual_ack_set(True)``, paho's public API on aiomqtt's private attribute) before
connecting, and sends the PUBACK itself (``paho.Client.ack(mid, qos)``) once the delivery
succeeded. PUBACKs go out in the order the messages arrived, as MQTT 3.1.1 section 4.6 requires:
a finished message waits for earlier ones still in flight.

MQTT has no negative ack and a broker resends an un-PUBACKed message only when the session
resumes. So a delivery that was not handled ends the connection (after a pause) and reconnects
with the same client id and ``clean_session = false``: the broker resends every message still
without PUBACK, and also queues QoS 1 messages that arrive while the platform is down (Mosquitto:
``max_queued_messages``, default 1000). Messages after the failed one that had already been handled
but not yet PUBACKed (in-order rule) are resent too: duplicates, as at-least-once allows.

Event: MQTT 3.1.1 has no message id that survives a resend, so the CloudEvent id is a fresh UUID;
subject = the message's topic; extension ``mqttretain`` for retained messages. No
``deliveryattempt``: aiomqtt does not surface the DUP flag.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt

from squall.events.cloudevents import make_cloudevent

from .backoff import Backoff
from .base import (
    ConfigReader,
    Inbound,
    Pump,
    Reconnect,
    ReconnectingConnector,
    decode_payload,
    safe_name,
)


def parse_config(trigger_id: str, config: dict[str, Any]) -> dict[str, Any]:
    r = ConfigReader("mqtt", config)
    url = r.get_str("url", None)
    host = r.get_str("host", None)
    port = r.get_int("port", 1883, 1, 65535)
    username = r.get_str("username", None)
    password = r.get_str("password", None)
    if url is not None:
        if host is not None:
            raise r._fail("host", "give either url or host/port, not both")
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise r._fail("url", f"must be an mqtt:// URL with a host, got {url!r}")
        host, port = parts.hostname, parts.port or 1883
        username = unquote(parts.username) if parts.username else username
        password = unquote(parts.password) if parts.password else password
    cfg = {
        "host": host or "127.0.0.1", "port": port, "username": username, "password": password,
        "topic": r.get_str("topic", required=True, pattern=r"[^\s]{1,65535}"),
        "qos": r.get_int("qos", 1, 0, 1),
        "client_id": r.get_str("client_id", safe_name("squall-", trigger_id, 128)),
        "clean_session": r.get_bool("clean_session", False),
    }
    r.done()
    return cfg


class _InOrderAcks:
    """PUBACKs in arrival order: ``done(mid)`` sends every leading finished one."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._paho = client._client
        self._order: deque[tuple[int, int]] = deque()
        self._finished: set[int] = set()

    def arrived(self, mid: int, qos: int) -> None:
        if qos > 0:  # QoS 0 has no PUBACK (and every such message has mid 0)
            self._order.append((mid, qos))

    def done(self, mid: int, qos: int) -> None:
        if qos == 0:
            return
        self._finished.add(mid)
        while self._order and self._order[0][0] in self._finished:
            head, qos = self._order.popleft()
            self._finished.discard(head)
            self._paho.ack(head, qos)


class MqttConnector(ReconnectingConnector):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Survives reconnects: consecutive unhandled deliveries space out the resend cycles.
        self._nack_pause = Backoff(base_s=0.2, cap_s=10.0)

    @staticmethod
    def validate(config: dict[str, Any]) -> None:
        parse_config("x", config)

    async def _session(self, pump: Pump) -> None:
        cfg = parse_config(self.spec.id, self.spec.config)
        source = f"mqtt://{cfg['host']}:{cfg['port']}"
        client = aiomqtt.Client(cfg["host"], cfg["port"], identifier=cfg["client_id"],
                                username=cfg["username"], password=cfg["password"],
                                clean_session=cfg["clean_session"], timeout=5)
        client._client.manual_ack_set(True)
        acks = _InOrderAcks(client)
        async with client:
            await client.subscribe(cfg["topic"], qos=cfg["qos"])
            self._running()
            async for message in client.messages:
                acks.arrived(message.mid, message.qos)
                await pump.put(self._inbound(message, source, acks))

    def _inbound(self, message: aiomqtt.Message, source: str, acks: _InOrderAcks) -> Inbound:
        payload = message.payload
        body = payload if isinstance(payload, bytes) else str(payload).encode()
        data, content_type = decode_payload(body)
        event = make_cloudevent(
            source=source, type="io.squall.mqtt.message", subject=message.topic.value,
            data=data, datacontenttype=content_type,
            extensions={"mqttretain": True} if message.retain else None,
        )
        mid, qos = message.mid, message.qos

        async def ack() -> None:
            acks.done(mid, qos)
            self._nack_pause.reset()

        async def nack() -> None:
            await asyncio.sleep(self._nack_pause.next_s())
            raise Reconnect("unhandled delivery: reconnecting so the broker resends")

        return Inbound(event, ack, nack)
