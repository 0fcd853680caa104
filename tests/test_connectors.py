"""Event-source connectors against the real brokers on 127.0.0.1.

Each broker gets an adapter (publish, "everything acknowledged?" check, cleanup) with unique
stream/queue/topic/table names; the same scenarios run for all five. A service that is not
reachable skips its tests, unless SQUALL_REQUIRE_SERVICES=1 (CI), which makes them fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import aiomqtt
import asyncpg
import nats
import pytest
import redis.asyncio as aioredis

from squall.errors import InvalidConfig
from squall.events.connectors import CONNECTORS, TriggerSpec, validate_trigger_config
from squall.events.connectors.postgres import consumer_key, uninstall

PORTS = {"redis": 6379, "nats": 4222, "amqp": 5672, "mqtt": 1883, "postgres": 5432}
DSN = "postgresql://postgres@127.0.0.1:5432/test"
DEADLINE_S = 15.0


def require(kind: str) -> None:
    try:
        socket.create_connection(("127.0.0.1", PORTS[kind]), timeout=1).close()
    except OSError as exc:
        msg = f"{kind} not reachable on 127.0.0.1:{PORTS[kind]}: {exc}"
        if os.environ.get("SQUALL_REQUIRE_SERVICES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


async def eventually(pred: Callable[[], Awaitable[bool]] | Callable[[], bool],
                     what: str, within_s: float = DEADLINE_S) -> None:
    """Poll a state predicate until true or the deadline (then fail saying what)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        result = pred()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Recorder:
    """A test ``deliver``: records batches; the first ``fail_first`` calls return False."""

    def __init__(self, fail_first: int = 0, raise_first: int = 0) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.failed: list[list[dict[str, Any]]] = []
        self.fail_first = fail_first
        self.raise_first = raise_first
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: asyncio.Event | None = None

    async def __call__(self, events: list[dict[str, Any]]) -> bool:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.calls <= self.raise_first:
                raise RuntimeError("deliver blew up")
            if self.calls <= self.fail_first + self.raise_first:
                self.failed.append(events)
                return False
            self.batches.append(events)
            return True
        finally:
            self.in_flight -= 1

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for b in self.batches for e in b]


class Status:
    def __init__(self) -> None:
        self.history: list[tuple[str, str]] = []

    def __call__(self, state: str, detail: str = "") -> None:
        self.history.append((state, detail))

    @property
    def state(self) -> str:
        return self.history[-1][0] if self.history else ""


# ---- broker adapters ------------------------------------------------------------------------

class Broker:
    kind = ""
    trigger_id = ""

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    async def setup(self) -> None: ...

    async def publish(self, values: list[int]) -> None:
        raise NotImplementedError

    def value(self, event: dict[str, Any]) -> int:
        return int(event["data"]["n"])

    async def all_acked(self) -> bool:
        """Checked after the connector stopped: nothing left unacknowledged on the broker."""
        raise NotImplementedError

    async def cleanup(self) -> None: ...


class RedisBroker(Broker):
    kind = "redis"

    async def setup(self) -> None:
        self.stream = f"squall-test-{uuid.uuid4().hex}"
        self.client = aioredis.Redis()

    def config(self) -> dict[str, Any]:
        return {"stream": self.stream, "start": "0", "claim_idle_ms": 200}

    async def publish(self, values: list[int]) -> None:
        for v in values:
            await self.client.xadd(self.stream, {"n": str(v)})

    async def all_acked(self) -> bool:
        info: Any = await self.client.xpending(self.stream, f"squall-{self.trigger_id}")
        return int(info["pending"]) == 0

    async def cleanup(self) -> None:
        await self.client.delete(self.stream)
        await self.client.aclose()


class NatsBroker(Broker):
    kind = "nats"

    async def setup(self) -> None:
        tag = uuid.uuid4().hex
        self.stream, self.subject = f"SQT_{tag}", f"squall.test.{tag}"
        self.nc = await nats.connect("nats://127.0.0.1:4222")
        self.js = self.nc.jetstream()
        await self.js.add_stream(name=self.stream, subjects=[self.subject])

    def config(self) -> dict[str, Any]:
        return {"stream": self.stream, "subject": self.subject}

    async def publish(self, values: list[int]) -> None:
        for v in values:
            await self.js.publish(self.subject, json.dumps({"n": v}).encode())

    async def all_acked(self) -> bool:
        info = await self.js.consumer_info(self.stream, f"squall-{self.trigger_id}")
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    async def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            await self.js.delete_stream(self.stream)
        await self.nc.close()


class AmqpBroker(Broker):
    kind = "amqp"

    async def setup(self) -> None:
        self.queue = f"squall-test-{uuid.uuid4().hex}"
        self.conn = await aio_pika.connect("amqp://guest:guest@127.0.0.1/")
        self.channel = await self.conn.channel()
        await self.channel.declare_queue(self.queue, durable=True)

    def config(self) -> dict[str, Any]:
        return {"queue": self.queue}

    async def publish(self, values: list[int]) -> None:
        for v in values:
            await self.channel.default_exchange.publish(
                aio_pika.Message(json.dumps({"n": v}).encode(), message_id=f"m{v}"),
                routing_key=self.queue)

    async def all_acked(self) -> bool:
        # With the consumer gone, unacked messages are back to "ready": a count of 0 means acked.
        q = await self.channel.declare_queue(self.queue, passive=True)
        return bool(q.declaration_result.message_count == 0)

    async def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            await self.channel.queue_delete(self.queue)
        await self.conn.close()


class MqttBroker(Broker):
    kind = "mqtt"

    async def setup(self) -> None:
        self.base = f"squall-test/{uuid.uuid4().hex}"

    def config(self) -> dict[str, Any]:
        return {"url": "mqtt://127.0.0.1:1883", "topic": f"{self.base}/#"}

    async def publish(self, values: list[int]) -> None:
        async with aiomqtt.Client("127.0.0.1", 1883) as pub:
            for v in values:
                await pub.publish(f"{self.base}/v", json.dumps({"n": v}), qos=1)

    async def all_acked(self) -> bool:
        # MQTT brokers expose no per-session in-flight count. Probe: resume the persistent
        # session, publish a marker; anything un-PUBACKed would be resent before it.
        seen: list[str] = []
        async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"squall-{self.trigger_id}",
                                  clean_session=False) as probe:
            await self.publish([-1])
            async for m in probe.messages:
                seen.append(m.payload.decode() if isinstance(m.payload, bytes) else str(m.payload))
                if json.loads(seen[-1])["n"] == -1:
                    break
        return len(seen) == 1

    async def cleanup(self) -> None:
        # A clean-session connect with the same id discards the broker-side session.
        async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"squall-{self.trigger_id}",
                                  clean_session=True):
            pass


class PostgresBroker(Broker):
    kind = "postgres"

    async def setup(self) -> None:
        self.table = f"squall_test_{uuid.uuid4().hex}"
        self.conn = await asyncpg.connect(DSN)
        await self.conn.execute(f"CREATE TABLE {self.table} (id serial PRIMARY KEY, n int)")

    def config(self) -> dict[str, Any]:
        return {"dsn": DSN, "tables": [self.table]}

    async def publish(self, values: list[int]) -> None:
        for v in values:
            await self.conn.execute(f"INSERT INTO {self.table} (n) VALUES ($1)", v)

    def value(self, event: dict[str, Any]) -> int:
        return int(event["data"]["row"]["n"])

    async def all_acked(self) -> bool:
        left = await self.conn.fetchval("SELECT count(*) FROM squall_changes WHERE consumer = $1",
                                        consumer_key(self.trigger_id))
        return int(left) == 0

    async def cleanup(self) -> None:
        await uninstall(spec(self, 1))
        await self.conn.execute(f"DROP TABLE IF EXISTS {self.table}")
        await self.conn.close()


BROKERS: dict[str, type[Broker]] = {
    b.kind: b for b in (RedisBroker, NatsBroker, AmqpBroker, MqttBroker, PostgresBroker)}


def spec(broker: Broker, batch_size: int = 1, batch_window_s: float = 0.0,
         concurrency: int = 1) -> TriggerSpec:
    return TriggerSpec(id=broker.trigger_id, function="fn", type=broker.kind,
                       config=broker.config(), batch_size=batch_size,
                       batch_window_s=batch_window_s, concurrency=concurrency)


@pytest.fixture(params=sorted(BROKERS))
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    require(request.param)
    b = BROKERS[request.param]()
    b.trigger_id = f"t{uuid.uuid4().hex[:12]}"
    await b.setup()
    try:
        yield b
    finally:
        await b.cleanup()


@contextlib.asynccontextmanager
async def running(s: TriggerSpec, deliver: Recorder) -> AsyncIterator[Status]:
    status = Status()
    task = asyncio.create_task(CONNECTORS[s.type](s, deliver, status).run())
    try:
        await eventually(lambda: status.state == "running" or task.done(), "status running")
        assert not task.done(), status.history
        yield status
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---- scenarios, for every broker --------------------------------------------------------------

async def test_publish_n_delivered_exactly_once_and_acked(broker: Broker) -> None:
    rec = Recorder()
    async with running(spec(broker), rec):
        await broker.publish(list(range(20)))
        await eventually(lambda: len(rec.events) >= 20, "20 deliveries")
        # while the connector still runs: it acks after ``deliver`` returns, and stopping it
        # between the two would leave an ack unsent (the broker would redeliver the message)
        await eventually(broker.all_acked, "all messages acknowledged on the broker")
    values = sorted(broker.value(e) for e in rec.events)
    assert values == list(range(20))
    assert all(len(b) == 1 for b in rec.batches)
    ev = rec.events[0]
    assert ev["specversion"] == "1.0" and ev["id"] and ev["source"] and ev["time"]
    assert ev["type"].startswith(f"io.squall.{broker.kind}.")
    assert len({e["id"] for e in rec.events}) == 20


async def test_unhandled_delivery_is_redelivered(broker: Broker) -> None:
    rec = Recorder(fail_first=1, raise_first=1)  # call 1 raises, call 2 returns False
    async with running(spec(broker), rec):
        await broker.publish([1, 2, 3])
        await eventually(lambda: {broker.value(e) for e in rec.events} == {1, 2, 3},
                         "1, 2, 3 handled after two unhandled deliveries")
        await eventually(broker.all_acked, "all messages acknowledged on the broker")
    assert len(rec.failed) == 1
    # The message whose delivery failed came back and was handled.
    assert broker.value(rec.failed[0][0]) in {broker.value(e) for e in rec.events}


async def test_batch_size_gives_lists(broker: Broker) -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()  # hold the first delivery so the rest accumulate into batches
    async with running(spec(broker, batch_size=5, batch_window_s=0.5), rec):
        await broker.publish(list(range(12)))
        await eventually(lambda: rec.calls >= 1, "first delivery started")
        rec.gate.set()
        await eventually(lambda: len(rec.events) >= 12, "12 deliveries")
        await eventually(broker.all_acked, "all messages acknowledged on the broker")
    assert sorted(broker.value(e) for e in rec.events) == list(range(12))
    assert max(len(b) for b in rec.batches) > 1
    assert all(len(b) <= 5 for b in rec.batches)


UNREACHABLE: dict[str, dict[str, Any]] = {
    "redis": {"url": "redis://127.0.0.1:1/0", "stream": "s"},
    "nats": {"url": "nats://127.0.0.1:1", "stream": "S", "subject": "s"},
    "amqp": {"url": "amqp://guest:guest@127.0.0.1:1/", "queue": "q"},
    "mqtt": {"host": "127.0.0.1", "port": 1, "topic": "t/#"},
    "postgres": {"dsn": "postgresql://postgres@127.0.0.1:1/test", "tables": ["t"]},
}


@pytest.mark.parametrize("kind", sorted(UNREACHABLE))
async def test_unreachable_broker_reports_error_and_keeps_retrying(kind: str) -> None:
    status = Status()
    s = TriggerSpec(id="unreachable", function="fn", type=kind, config=UNREACHABLE[kind])
    task = asyncio.create_task(CONNECTORS[kind](s, Recorder(), status).run())
    try:
        await eventually(lambda: [st for st, _ in status.history].count("error") >= 3,
                         "three error reports")
        assert not task.done()
        assert status.history[0] == ("connecting", "")
        errors = [d for st, d in status.history if st == "error"]
        assert all(errors), status.history  # every error says what went wrong
        assert "running" not in [st for st, _ in status.history]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()


# ---- broker-specific ---------------------------------------------------------------------------

async def test_redis_concurrency_limit_and_pending_recovery() -> None:
    require("redis")
    b = RedisBroker()
    b.trigger_id = f"t{uuid.uuid4().hex[:12]}"
    await b.setup()
    try:
        # Entries read by a consumer that then died stay pending; XAUTOCLAIM recovers them.
        await b.publish([0, 1, 2, 3, 4, 5])
        group = f"squall-{b.trigger_id}"
        await b.client.xgroup_create(b.stream, group, id="0")
        await b.client.xreadgroup(group, "dead-consumer", {b.stream: ">"}, count=2)
        rec = Recorder()
        rec.gate = asyncio.Event()
        async with running(spec(b, concurrency=3), rec):
            await eventually(lambda: rec.in_flight == 3, "three deliveries in flight")
            rec.gate.set()
            await eventually(lambda: len(rec.events) >= 6, "6 deliveries")
            await eventually(b.all_acked, "no pending entries")
        assert rec.max_in_flight == 3
        assert sorted(b.value(e) for e in rec.events) == [0, 1, 2, 3, 4, 5]
        claimed = [e for e in rec.events if b.value(e) in (0, 1)]
        assert all(e["deliveryattempt"] == 2 for e in claimed)
        assert all(e["redisid"] and e["id"].endswith(e["redisid"]) for e in rec.events)
    finally:
        await b.cleanup()


async def test_postgres_changes_survive_downtime_and_carry_ops() -> None:
    require("postgres")
    b = PostgresBroker()
    b.trigger_id = f"t{uuid.uuid4().hex[:12]}"
    await b.setup()
    try:
        rec = Recorder()
        async with running(spec(b), rec):  # installs the capture trigger
            pass
        # The platform is "down": changes land in the outbox.
        await b.publish([7])
        await b.conn.execute(f"UPDATE {b.table} SET n = 8 WHERE n = 7")
        await b.conn.execute(f"DELETE FROM {b.table} WHERE n = 8")
        async with running(spec(b), rec):
            await eventually(lambda: len(rec.events) >= 3, "3 change events")
            await eventually(b.all_acked, "outbox empty")
        ops = [(e["pgop"], e["data"]["row"], e["data"]["old"]) for e in rec.events]
        assert [op for op, _, _ in ops] == ["INSERT", "UPDATE", "DELETE"]
        assert ops[0][1]["n"] == 7 and ops[0][2] is None
        assert ops[1][1]["n"] == 8 and ops[1][2]["n"] == 7
        assert ops[2][1] is None and ops[2][2]["n"] == 8
        assert all(e["pgtable"] == b.table and e["subject"] == f"public.{b.table}"
                   for e in rec.events)
    finally:
        await b.cleanup()


async def test_nats_events_carry_stream_metadata() -> None:
    require("nats")
    b = NatsBroker()
    b.trigger_id = f"t{uuid.uuid4().hex[:12]}"
    await b.setup()
    try:
        rec = Recorder(fail_first=1)
        async with running(spec(b), rec):
            await b.publish([1])
            await eventually(lambda: len(rec.events) == 1, "redelivery")
        first, second = rec.failed[0][0], rec.events[0]
        assert first["id"] == second["id"] == f"{b.stream}/1"  # same id: handlers can dedupe
        assert (first["deliveryattempt"], second["deliveryattempt"]) == (1, 2)
        assert second["streamseq"] == 1 and second["natsstream"] == b.stream
        assert second["subject"] == b.subject
    finally:
        await b.cleanup()


async def test_nats_missing_stream_is_an_error_unless_create_stream() -> None:
    require("nats")
    stream, subject = f"SQT_{uuid.uuid4().hex}", f"squall.test.{uuid.uuid4().hex}"
    s = TriggerSpec(id=f"t{uuid.uuid4().hex[:12]}", function="fn", type="nats",
                    config={"stream": stream, "subject": subject})
    status = Status()
    task = asyncio.create_task(CONNECTORS["nats"](s, Recorder(), status).run())
    try:
        await eventually(lambda: status.state == "error", "error status")
        assert "not found" in status.history[-1][1]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    s2 = TriggerSpec(id=s.id, function="fn", type="nats",
                     config={**s.config, "create_stream": True})
    rec = Recorder()
    nc = await nats.connect("nats://127.0.0.1:4222")
    try:
        async with running(s2, rec):
            await nc.jetstream().publish(subject, b"plain text")
            await eventually(lambda: len(rec.events) == 1, "delivery")
        assert rec.events[0]["data"] == "plain text"
        assert rec.events[0]["datacontenttype"] == "text/plain"
    finally:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(stream)
        await nc.close()


# ---- config validation -------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "config", "key"), [
    ("redis", {"stream": "s", "streem": "x"}, "streem"),
    ("redis", {}, "stream"),
    ("redis", {"stream": "s", "start": "now"}, "start"),
    ("redis", {"stream": "s", "claim_idle_ms": True}, "claim_idle_ms"),
    ("nats", {"stream": "S"}, "subject"),
    ("nats", {"stream": "S", "subject": "a", "url": "http://x"}, "url"),
    ("amqp", {"queue": "q", "prefetch": -1}, "prefetch"),
    ("mqtt", {"topic": "t", "qos": 2}, "qos"),
    ("mqtt", {"topic": "t", "url": "mqtt://h", "host": "h"}, "host"),
    ("postgres", {"tables": ["a; drop table x"]}, "tables"),
    ("postgres", {"tables": ["a"], "operations": ["TRUNCATE"]}, "operations"),
    ("kafka", {}, "type"),
])
def test_invalid_config_names_the_key(kind: str, config: dict[str, Any], key: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        validate_trigger_config(kind, config)
    assert info.value.details["key"] == key
    assert key in info.value.message


@pytest.mark.parametrize(("kind", "config"), [
    ("redis", {"stream": "s"}),
    ("nats", {"stream": "S", "subject": "a.>", "create_stream": True}),
    ("amqp", {"queue": "q", "declare": False, "prefetch": 10}),
    ("mqtt", {"url": "mqtt://u:p@127.0.0.1:1883", "topic": "a/+/b", "qos": 1}),
    ("postgres", {"tables": ["orders", "shop.items"], "operations": ["INSERT"]}),
])
def test_valid_configs(kind: str, config: dict[str, Any]) -> None:
    validate_trigger_config(kind, config)
