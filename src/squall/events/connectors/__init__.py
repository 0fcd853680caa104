"""Event-source connectors: one module per broker, all built on ``base.ReconnectingConnector``.

``CONNECTORS`` maps a trigger ``type`` to its connector class; ``validate_trigger_config`` checks
a trigger's broker config (unknown keys, types, required keys) without connecting, so a bad
squall.toml fails at deploy while an unreachable broker only shows in the trigger's status.
"""

from __future__ import annotations

from typing import Any

from squall.errors import InvalidConfig

from .amqp import AmqpConnector
from .base import Connector, Deliver, Inbound, StatusReporter, TriggerSpec
from .mqtt import MqttConnector
from .nats import NatsConnector
from .postgres import PostgresConnector
from .redis_streams import RedisStreamsConnector

CONNECTORS: dict[str, type[Connector]] = {
    "nats": NatsConnector,
    "amqp": AmqpConnector,
    "mqtt": MqttConnector,
    "redis": RedisStreamsConnector,
    "postgres": PostgresConnector,
}

_VALIDATORS = {
    "nats": NatsConnector.validate,
    "amqp": AmqpConnector.validate,
    "mqtt": MqttConnector.validate,
    "redis": RedisStreamsConnector.validate,
    "postgres": PostgresConnector.validate,
}


def validate_trigger_config(type: str, config: dict[str, Any]) -> None:
    """Raise ``InvalidConfig`` (naming the key) if ``config`` is not valid for ``type``."""
    validator = _VALIDATORS.get(type)
    if validator is None:
        raise InvalidConfig(
            f"unknown trigger type {type!r} for a connector (known: {', '.join(CONNECTORS)})",
            details={"key": "type"})
    validator(config)


__all__ = ["CONNECTORS", "Connector", "Deliver", "Inbound", "StatusReporter", "TriggerSpec",
           "validate_trigger_config"]
