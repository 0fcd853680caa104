"""End to end: every connector type through the real platform (`squall up`), real brokers.

One test per broker kind, one platform each. Three functions are deployed, each with its own
``[[triggers]]`` source (a unique stream/queue/topic/table):

- ``ok`` always succeeds: N messages are each processed exactly once; then it is scaled to zero
  and one more message wakes it up;
- ``flaky`` fails twice per event and then succeeds (``[async] max_retries = 2``);
- ``doomed`` always fails: the message ends in the dead letters with its error.

Afterwards the triggers are removed and every source is checked on the broker side: nothing
left unacknowledged (no redelivery loop), and the platform's attempt counts did not grow.

The functions run sandboxed (private /tmp, no host writes), so processing is observed through the
platform only: each attempt prints an ``E2E {json}`` line, read from GET .../logs, and the
invocation counts come from GET /api/v1/usage. Attempts are counted per CloudEvent id in a
module-level dict: in-place retries carry the same event, and ``max_instances = 1`` makes every
attempt reach the same warm instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import aiomqtt
import asyncpg
import nats
import pytest
import redis.asyncio as aioredis
from nats.js import JetStreamContext

from squall.events.connectors.base import TriggerSpec
from squall.events.connectors.postgres import consumer_key, uninstall
from tests.conftest import PlatformProc, require_service, wait_for

T = TypeVar("T")
HOST = "127.0.0.1"
PORTS = {"amqp": 5672, "mqtt": 1883, "nats": 4222, "postgres": 5432, "redis": 6379}
AMQP_URL = f"amqp://guest:guest@{HOST}/"
DSN = f"postgresql://postgres@{HOST}:5432/test"
N = 10
DEADLINE_S = 30.0

HANDLER = """
import json
import os

FAIL_TIMES = int(os.environ.get("FAIL_TIMES", "0"))
seen = {}


def marker(data):
    if not isinstance(data, dict):
        return None
    if "m" in data:
        return data["m"]
    return (data.get("row") or {}).get("m")  # postgres: the changed row


def handler(event, context):
    n = seen[event["id"]] = seen.get(event["id"], 0) + 1
    rec = {"id": event["id"], "m": marker(event.get("data")), "n": n, "type": event["type"],
           "rid": context.aws_request_id, "ok": n > FAIL_TIMES}
    print("E2E " + json.dumps(rec), flush=True)
    if not rec["ok"]:
        raise RuntimeError(f"planned failure {n}")
    return rec
"""


def run(coro: Coroutine[Any, Any, T]) -> T:
    """The broker clients are asyncio ones; the platform fixtures are sync."""
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def jetstream() -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(f"nats://{HOST}:4222")
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def amqp_channel() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    async with await aio_pika.connect(AMQP_URL) as conn:
        yield await conn.channel()


@contextlib.asynccontextmanager
async def pg() -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(DSN)
    try:
        yield conn
    finally:
        await conn.close()


# ---- one broker source per function -----------------------------------------------------------

class Source:
    """A unique stream/queue/topic/table: its trigger config, publishing, the ack check."""

    kind = ""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:12]
        self.trigger_id = ""  # known once the platform created the trigger

    def trigger(self) -> dict[str, Any]:
        raise NotImplementedError

    async def setup(self) -> None: ...

    async def publish(self, markers: list[str]) -> None:
        raise NotImplementedError

    async def acked(self) -> bool:
        """After the trigger was removed: nothing is left unacknowledged on the broker."""
        raise NotImplementedError

    async def cleanup(self) -> None: ...


class RedisSource(Source):
    kind = "redis"

    def trigger(self) -> dict[str, Any]:
        return {"stream": f"squall-e2e-{self.tag}", "start": "0"}

    async def publish(self, markers: list[str]) -> None:
        async with aioredis.Redis(host=HOST) as r:
            for m in markers:
                await r.xadd(f"squall-e2e-{self.tag}", {"m": m})

    async def acked(self) -> bool:
        async with aioredis.Redis(host=HOST) as r:
            info: Any = await r.xpending(f"squall-e2e-{self.tag}", f"squall-{self.trigger_id}")
            return int(info["pending"]) == 0

    async def cleanup(self) -> None:
        async with aioredis.Redis(host=HOST) as r:
            await r.delete(f"squall-e2e-{self.tag}")


class NatsSource(Source):
    kind = "nats"

    def trigger(self) -> dict[str, Any]:
        return {"stream": f"SQE2E_{self.tag}", "subject": f"squall.e2e.{self.tag}"}

    async def setup(self) -> None:
        async with jetstream() as js:
            await js.add_stream(name=f"SQE2E_{self.tag}", subjects=[f"squall.e2e.{self.tag}"])

    async def publish(self, markers: list[str]) -> None:
        async with jetstream() as js:
            for m in markers:
                await js.publish(f"squall.e2e.{self.tag}", json.dumps({"m": m}).encode())

    async def acked(self) -> bool:
        async with jetstream() as js:
            info = await js.consumer_info(f"SQE2E_{self.tag}", f"squall-{self.trigger_id}")
            return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    async def cleanup(self) -> None:
        async with jetstream() as js:
            await js.delete_stream(f"SQE2E_{self.tag}")


class AmqpSource(Source):
    kind = "amqp"

    def trigger(self) -> dict[str, Any]:
        return {"url": AMQP_URL, "queue": f"squall-e2e-{self.tag}"}

    async def setup(self) -> None:
        async with amqp_channel() as channel:
            await channel.declare_queue(f"squall-e2e-{self.tag}", durable=True)

    async def publish(self, markers: list[str]) -> None:
        async with amqp_channel() as channel:
            for m in markers:
                # message_id: a stable CloudEvent id across redeliveries.
                await channel.default_exchange.publish(
                    aio_pika.Message(json.dumps({"m": m}).encode(), message_id=m),
                    routing_key=f"squall-e2e-{self.tag}")

    async def acked(self) -> bool:
        # Unacked messages return to "ready" once the consumer is gone (the trigger was removed):
        # no consumer and no message means everything was acknowledged.
        async with amqp_channel() as channel:
            q = await channel.declare_queue(f"squall-e2e-{self.tag}", passive=True)
            res = q.declaration_result
            return bool(res.consumer_count == 0 and res.message_count == 0)

    async def cleanup(self) -> None:
        async with amqp_channel() as channel:
            await channel.queue_delete(f"squall-e2e-{self.tag}")


class MqttSource(Source):
    kind = "mqtt"

    def trigger(self) -> dict[str, Any]:
        return {"url": f"mqtt://{HOST}:1883", "topic": f"squall-e2e/{self.tag}/#"}

    async def publish(self, markers: list[str]) -> None:
        async with aiomqtt.Client(HOST, 1883) as pub:
            for m in markers:
                await pub.publish(f"squall-e2e/{self.tag}/x", json.dumps({"m": m}), qos=1)

    async def acked(self) -> bool:
        # No broker API for a session's in-flight messages. Probe: resume the trigger's
        # persistent session and publish a marker; anything never PUBACKed is resent before it.
        seen: list[Any] = []
        async with aiomqtt.Client(HOST, 1883, identifier=f"squall-{self.trigger_id}",
                                  clean_session=False, timeout=5) as probe:
            await self.publish(["probe"])
            async with asyncio.timeout(10):
                async for msg in probe.messages:
                    raw = msg.payload
                    seen.append(json.loads(raw.decode() if isinstance(raw, bytes) else str(raw)))
                    if seen[-1]["m"] == "probe":
                        break
        # Not a retryable False: the probe took (and PUBACKed) whatever was resent.
        assert seen == [{"m": "probe"}], f"resent without a PUBACK before: {seen}"
        return True

    async def cleanup(self) -> None:
        if self.trigger_id:  # a clean-session connect discards the broker-side session
            async with aiomqtt.Client(HOST, 1883, identifier=f"squall-{self.trigger_id}",
                                      clean_session=True, timeout=5):
                pass


class PostgresSource(Source):
    kind = "postgres"

    @property
    def table(self) -> str:
        return f"squall_e2e_{self.tag}"

    def trigger(self) -> dict[str, Any]:
        return {"dsn": DSN, "tables": [self.table]}

    async def setup(self) -> None:
        async with pg() as conn:
            await conn.execute(f"CREATE TABLE {self.table} (id serial PRIMARY KEY, m text)")

    async def publish(self, markers: list[str]) -> None:
        async with pg() as conn:
            for m in markers:
                await conn.execute(f"INSERT INTO {self.table} (m) VALUES ($1)", m)

    async def acked(self) -> bool:
        async with pg() as conn:
            left = await conn.fetchval("SELECT count(*) FROM squall_changes WHERE consumer = $1",
                                       consumer_key(self.trigger_id))
            return int(left) == 0

    async def cleanup(self) -> None:
        # The platform does not drop the capture trigger / outbox rows when a trigger is removed.
        if self.trigger_id:
            await uninstall(TriggerSpec(id=self.trigger_id, function="", type="postgres",
                                        config=self.trigger()))
        async with pg() as conn:
            await conn.execute(f"DROP TABLE IF EXISTS {self.table}")


SOURCES: dict[str, type[Source]] = {
    s.kind: s for s in (AmqpSource, MqttSource, NatsSource, PostgresSource, RedisSource)}


# ---- platform helpers ---------------------------------------------------------------------------

def toml_for(source: Source, fail_times: int) -> str:
    lines = ["max_instances = 1", f'env = {{ FAIL_TIMES = "{fail_times}" }}', "",
             "[async]", "max_retries = 2", "", "[[triggers]]", f'type = "{source.kind}"']
    # JSON scalars and string lists are valid TOML values.
    lines += [f"{k} = {json.dumps(v)}" for k, v in source.trigger().items()]
    return "\n".join(lines) + "\n"


def trigger_of(p: PlatformProc, fn: str) -> dict[str, Any]:
    triggers: list[dict[str, Any]] = p.http.get(
        f"/api/v1/functions/{fn}/triggers").json()["triggers"]
    assert len(triggers) == 1, triggers
    return triggers[0]


def running_trigger(p: PlatformProc, fn: str) -> dict[str, Any] | None:
    t = trigger_of(p, fn)
    return t if t["status"]["state"] == "running" else None


def is_acked(src: Source) -> bool:
    return run(src.acked())


def attempts(p: PlatformProc, fn: str) -> list[dict[str, Any]]:
    """Every ``E2E`` line the function printed, oldest first."""
    lines = p.http.get(f"/api/v1/functions/{fn}/logs", params={"limit": 10_000}).json()["lines"]
    return [json.loads(row["line"].split("E2E ", 1)[1]) for row in lines
            if "E2E {" in row["line"]]


def done(p: PlatformProc, fn: str, markers: list[str]) -> list[dict[str, Any]]:
    """The successful attempts once every marker has one, else [] (for wait_for)."""
    ok = [a for a in attempts(p, fn) if a["ok"]]
    return ok if {a["m"] for a in ok} >= set(markers) else []


def usage(p: PlatformProc) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in p.http.get("/api/v1/usage").json()["functions"]}


# ---- the scenario, for every broker -------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_connector_trigger_end_to_end(kind: str, platform: PlatformProc,
                                      make_fn: Callable[..., Path]) -> None:
    require_service(HOST, PORTS[kind], kind)
    fail_times = {"ok": 0, "flaky": 2, "doomed": 99}
    sources = {role: SOURCES[kind]() for role in fail_times}
    fns = {role: f"{role}-{kind}" for role in fail_times}
    try:
        for role, src in sources.items():
            run(src.setup())
            platform.deploy(make_fn(fns[role], HANDLER, toml_for(src, fail_times[role])))
        for role, src in sources.items():
            t = wait_for(functools.partial(running_trigger, platform, fns[role]),
                         timeout=DEADLINE_S, message=f"the {kind} trigger of {fns[role]} to run")
            assert t["type"] == kind and t["origin"] == "toml"
            src.trigger_id = t["id"]

        tag = sources["ok"].tag
        markers = {role: [f"{role}-{tag}-{i}" for i in range(n)]
                   for role, n in (("ok", N), ("flaky", 2), ("doomed", 1))}
        for role, src in sources.items():
            run(src.publish(markers[role]))

        # 1. N messages, each processed exactly once.
        ok = wait_for(lambda: done(platform, fns["ok"], markers["ok"]), timeout=DEADLINE_S,
                      message=f"{N} {kind} messages processed")
        assert sorted(a["m"] for a in ok) == sorted(markers["ok"])
        assert len({a["id"] for a in ok}) == N
        assert all(a["n"] == 1 and a["type"].startswith(f"io.squall.{kind}.") for a in ok)

        # 2. Failing twice, then succeeding: three attempts of the same event, one request id.
        flaky = wait_for(lambda: done(platform, fns["flaky"], markers["flaky"]),
                         timeout=DEADLINE_S, message="the flaky messages to succeed")
        assert sorted((a["m"], a["n"]) for a in flaky) == [(m, 3) for m in markers["flaky"]]
        tries = attempts(platform, fns["flaky"])
        assert Counter(a["m"] for a in tries) == {m: 3 for m in markers["flaky"]}
        for m in markers["flaky"]:
            assert len({a["rid"] for a in tries if a["m"] == m}) == 1
        assert platform.http.get("/api/v1/dlq", params={"function": fns["flaky"]}
                                 ).json()["dead_letters"] == []

        # 3. Always failing: dead-lettered with its error after 1 + max_retries attempts.
        letters = wait_for(lambda: platform.http.get(
            "/api/v1/dlq", params={"function": fns["doomed"]}).json()["dead_letters"],
            timeout=DEADLINE_S, message="the doomed message in the dead letters")
        assert len(letters) == 1
        dl = letters[0]
        assert (dl["function"], dl["trigger"], dl["attempts"]) == (fns["doomed"], kind, 3)
        assert dl["error"]["errorType"] == "RuntimeError"
        assert dl["error"]["errorMessage"] == "planned failure 3"
        data = dl["event"]["data"]
        assert (data["row"] if kind == "postgres" else data)["m"] == markers["doomed"][0]

        # 4. Scaled to zero, then woken by a message.
        r = platform.http.post(f"/api/v1/functions/{fns['ok']}/scale", json={"to": 0})
        assert r.status_code == 200, r.text
        wait_for(lambda: platform.instances(fns["ok"]) == [], timeout=DEADLINE_S,
                 message=f"{fns['ok']} to have no instances")
        wake = f"wake-{tag}"
        run(sources["ok"].publish([wake]))
        woken = wait_for(lambda: done(platform, fns["ok"], [wake]), timeout=DEADLINE_S,
                         message="the scaled-to-zero function to process a message")
        assert [a["n"] for a in woken if a["m"] == wake] == [1]

        # Stop consuming, then check the broker: everything acknowledged, nothing redelivered.
        for role, src in sources.items():
            r = platform.http.delete(f"/api/v1/functions/{fns[role]}/triggers/{src.trigger_id}")
            assert r.status_code == 200, r.text
        for role, src in sources.items():
            wait_for(functools.partial(is_acked, src), timeout=DEADLINE_S, interval=0.2,
                     message=f"every {kind} message of {fns[role]} acknowledged")
        assert Counter(a["m"] for a in attempts(platform, fns["ok"])) == {
            m: 1 for m in [*markers["ok"], wake]}
        assert len(attempts(platform, fns["flaky"])) == 3 * len(markers["flaky"])
        doomed = attempts(platform, fns["doomed"])
        assert [(a["m"], a["n"], a["ok"]) for a in doomed] == [
            (markers["doomed"][0], n, False) for n in (1, 2, 3)]

        use = usage(platform)
        assert (use[fns["ok"]]["invocations"], use[fns["ok"]]["errors"]) == (N + 1, 0)
        assert use[fns["ok"]]["cold_starts"] >= 2  # the first one, and the wake-up
        # Retries reuse the request id, but every attempt ran and is billed: one usage record
        # per attempt (two failures and a success per flaky message, three failures doomed).
        assert use[fns["flaky"]]["invocations"] == 3 * len(markers["flaky"])
        assert use[fns["flaky"]]["errors"] == 2 * len(markers["flaky"])
        assert (use[fns["doomed"]]["invocations"], use[fns["doomed"]]["errors"]) == (3, 3)
    finally:
        for src in sources.values():
            with contextlib.suppress(Exception):
                run(src.cleanup())
