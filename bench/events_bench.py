"""The events measurements: async invocation throughput on the SQLite queue, and the latency from a
broker publish to the handler's start for each connector. Each has a baseline from the same run:
the bare uvloop+httptools server under the same POST load, and the raw broker round trip (publish
-> a plain client subscribed to the same broker receives it) with the same client libraries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aio_pika
import aiomqtt
import asyncpg
import httpx
import nats
import queue_bench
import redis.asyncio as aioredis
from platform_proc import Platform
from util import WRK_HINT, free_port, run_steps, stop, summary, wait_for

HERE = Path(__file__).resolve().parent
KINDS = ("redis", "nats", "amqp", "mqtt", "postgres")
PORTS = {"redis": 6379, "nats": 4222, "amqp": 5672, "mqtt": 1883, "postgres": 5432}
DSN = "postgresql://postgres@127.0.0.1:5432/test"
AMQP_URL = "amqp://guest:guest@127.0.0.1/"
WARMUP = 3  # the first message pays the cold start; it is not a latency sample
POST_LUA = """wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Squall-Invocation-Type"] = "Event"
"""
NOOP = "def handler(event, context):\n    return None\n"
# time.time() first, before anything else the handler does: that is "handler start".
STAMP = """import json, time


def handler(event, context):
    start = time.time()
    for ev in event if isinstance(event, list) else [event]:
        print("SQB " + repr(start) + " " + json.dumps(ev.get("data")), flush=True)
    return None
"""
LINE_RE = re.compile(r"^SQB (\S+) (.*)$", re.M)  # a log row may hold several lines
Log = Callable[[str], None]
Toml = dict[str, str | int | bool | list[str]]


# ---- 1. async throughput ----------------------------------------------------------------------

def wrk_post(url: str, duration_s: int, token: str = "") -> dict[str, Any]:
    """wrk -t2 -c32 with POST + X-Squall-Invocation-Type: Event; 2xx answers count as accepted."""
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError(WRK_HINT)
    with tempfile.TemporaryDirectory(prefix="squall-bench-lua-") as tmp:
        script = Path(tmp) / "post.lua"
        auth = f'wrk.headers["Authorization"] = "Bearer {token}"\n' if token else ""
        script.write_text(POST_LUA + auth)
        cmd = [exe, "-t2", "-c32", f"-d{duration_s}s", "-s", str(script), url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    if total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    secs = float(total.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[total.group(3)]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    rejected = int(non2xx.group(1)) if non2xx else 0
    accepted = int(total.group(1)) - rejected
    sock = re.search(r"Socket errors:(.*)", out)
    return {"requests": int(total.group(1)), "accepted": accepted, "non_2xx": rejected,
            "seconds": secs, "accepted_per_s": accepted / secs,
            "socket_errors": sock.group(1).strip() if sock else "", "raw": out}


def post_baseline(duration_s: int) -> dict[str, Any]:
    """The same wrk POST load against the bare uvloop+httptools server (baseline A)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "baseline_server.py"), str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("baseline server did not start")
        return wrk_post(f"http://127.0.0.1:{port}/", duration_s)
    finally:
        stop(proc)


def _backlog(p: Platform, name: str) -> int:
    """Async invocations of ``name`` not finished yet (queued, running, or waiting for a retry)."""
    left = 0
    for status in ("queued", "running", "failed"):
        r = p.http.get("/api/v1/invocations",
                       params={"function": name, "status": status, "limit": 1})
        r.raise_for_status()
        left += len(r.json()["invocations"])
    return left


def async_throughput(p: Platform, quick: bool, tmp: Path) -> dict[str, Any]:
    name = f"noop-{uuid.uuid4().hex[:8]}"
    bundle = tmp / name
    bundle.mkdir()
    (bundle / "handler.py").write_text(NOOP)
    (bundle / "squall.toml").write_text(f'name = "{name}"\nmax_instances = 4\n')
    p.deploy(bundle, name)
    t0 = time.monotonic()
    load = wrk_post(f"{p.url}/api/v1/functions/{name}/invocations", 2 if quick else 5,
                    token=p.admin_key)
    wait_for(lambda: _backlog(p, name) == 0, 600, f"the {name} async queue to drain")
    drained_s = time.monotonic() - t0
    ok = p.http.get("/api/v1/invocations",
                    params={"function": name, "status": "succeeded", "limit": 10000})
    succeeded = len(ok.json()["invocations"]) if ok.status_code == 200 else None
    p.http.delete(f"/api/v1/functions/{name}")
    return {**load, "drained_s": drained_s, "completed_per_s": load["accepted"] / drained_s,
            "succeeded_listed": succeeded}


def event_inserts(quick: bool, tmp: Path) -> dict[str, Any]:
    """The store's cost of accepting events: ``queue.enqueue_many`` in batches of 16 (what the
    group commit forms under load) into a fresh SQLite store, with the platform's request ids
    (version 7 UUIDs, growing with time) and, as the baseline, random version 4 UUIDs."""
    sys.path.insert(0, str(HERE.parent / "src"))
    from squall.ids import new_request_id
    from squall.store import queue
    from squall.store.db import Database

    n = 8_000 if quick else 40_000
    out: dict[str, Any] = {"events": n, "batch": 16}
    for label, make in (("v7", new_request_id), ("v4", lambda: str(uuid.uuid4()))):
        db = Database(tmp / f"inserts-{label}" / "squall.db")
        db.open()
        try:
            conn = db.run_sync(lambda c: c)
            t0 = time.perf_counter()
            for _ in range(n // 16):
                now = time.time()
                queue.enqueue_many(conn, [
                    {"id": make(), "function": "noop", "namespace": "default", "trigger": "async",
                     "payload": "{}", "now": now, "source": None, "idempotency_key": None,
                     "traceparent": None} for _ in range(16)])
            out[f"us_per_event_{label}"] = (time.perf_counter() - t0) / n * 1e6
        finally:
            db.close()
    return out


def with_workers(quick: bool, tmp: Path) -> dict[str, Any]:
    """``async_throughput`` on `squall up --workers 2`: both workers accept and deliver."""
    with Platform(env={"SQUALL_WORKERS": "2"}) as p:
        wait_for(lambda: "worker 1 serving" in p.log_tail(), 60, "worker 1")
        return async_throughput(p, quick, tmp)


def accept_only(quick: bool) -> dict[str, Any]:
    """The accept path alone: the same wrk POST load on a platform that delivers nothing
    (``SQUALL_ASYNC_WORKERS=0``), so every event only has to be stored and answered 202."""
    with Platform(env={"SQUALL_ASYNC_WORKERS": "0"}) as p, \
            tempfile.TemporaryDirectory(prefix="squall-bench-accept-") as tmp:
        bundle = Path(tmp) / "noop"
        bundle.mkdir()
        (bundle / "handler.py").write_text(NOOP)
        (bundle / "squall.toml").write_text('name = "noop"\n')
        p.deploy(bundle, "noop")
        return wrk_post(f"{p.url}/api/v1/functions/noop/invocations", 2 if quick else 5,
                        token=p.admin_key)


# ---- 2. publish -> handler start, per connector ----------------------------------------------

Inbox = asyncio.Queue[tuple[float, dict[str, Any]]]  # (receive time, payload) of raw messages
Publish = Callable[[dict[str, Any]], Awaitable[Any]]


def _put(q: Inbox, body: bytes | str) -> None:
    q.put_nowait((time.time(), json.loads(body)))


def _spawn(stack: contextlib.AsyncExitStack, coro: Coroutine[Any, Any, None]) -> None:
    """Run a reader loop until the stack closes."""
    task = asyncio.create_task(coro)

    async def cancel() -> None:
        task.cancel()
        # redis-py can turn the cancelled blocking read into its own TimeoutError: whatever the
        # reader dies with while being torn down does not matter.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    stack.push_async_callback(cancel)


class Broker:
    """One connector's broker: the trigger config, a publisher, and the raw baseline."""

    kind = ""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:12]
        self.stack = contextlib.AsyncExitStack()  # clients and broker objects, closed last-first

    def trigger(self) -> Toml:
        raise NotImplementedError

    async def setup(self) -> None: ...

    async def publish(self, msg: dict[str, Any]) -> None:
        raise NotImplementedError

    def fields(self, data: Any) -> dict[str, Any]:
        """The published {"seq", "ts"} back out of the CloudEvent's data."""
        return dict(data)

    async def raw(self, q: Inbox, stack: contextlib.AsyncExitStack) -> Publish:
        """Subscribe a plain client to a fresh stream/queue/topic that puts what it receives on
        q (cleanup on ``stack``); return the matching publisher."""
        raise NotImplementedError


class RedisBroker(Broker):
    kind = "redis"

    async def setup(self) -> None:
        self.stream = f"squall-bench-{self.tag}"
        self.client = aioredis.Redis()
        self.stack.push_async_callback(self.client.aclose)
        self.stack.push_async_callback(self.client.delete, self.stream, self.stream + "-raw")

    def trigger(self) -> Toml:
        return {"stream": self.stream, "start": "0"}

    async def publish(self, msg: dict[str, Any], stream: str = "") -> None:
        await self.client.xadd(stream or self.stream, {k: repr(v) for k, v in msg.items()})

    def fields(self, data: Any) -> dict[str, Any]:
        return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in data.items()}

    async def raw(self, q: Inbox, stack: contextlib.AsyncExitStack) -> Publish:
        stream, reader = self.stream + "-raw", aioredis.Redis()
        stack.push_async_callback(reader.aclose)

        async def read() -> None:
            last: Any = "0-0"
            while True:  # the same blocking stream read as the connector's, without a group
                resp: Any = await reader.xread({stream: last}, block=5000, count=1)
                for _s, entries in resp or []:
                    for entry_id, fields in entries:
                        last = entry_id
                        q.put_nowait((time.time(), self.fields(fields)))
        _spawn(stack, read())
        return lambda m: self.publish(m, stream)


class NatsBroker(Broker):
    kind = "nats"

    async def setup(self) -> None:
        self.stream, self.subject = f"SQB_{self.tag}", f"squall.bench.{self.tag}"
        self.nc = await nats.connect("nats://127.0.0.1:4222")
        self.js = self.nc.jetstream()
        self.stack.push_async_callback(self.nc.close)
        for s in (self.stream, self.stream + "_RAW"):
            self.stack.push_async_callback(self._drop, s)

    async def _drop(self, stream: str) -> None:
        with contextlib.suppress(Exception):
            await self.js.delete_stream(stream)

    def trigger(self) -> Toml:
        return {"stream": self.stream, "subject": self.subject, "create_stream": True}

    async def publish(self, msg: dict[str, Any], subject: str = "") -> None:
        await self.js.publish(subject or self.subject, json.dumps(msg).encode())

    async def raw(self, q: Inbox, stack: contextlib.AsyncExitStack) -> Publish:
        subject = self.subject + ".raw"
        await self.js.add_stream(name=self.stream + "_RAW", subjects=[subject])
        psub = await self.js.pull_subscribe(subject, durable="raw", stream=self.stream + "_RAW")

        async def read() -> None:  # the same durable pull consumer as the connector's
            while True:
                with contextlib.suppress(nats.errors.TimeoutError):
                    for m in await psub.fetch(batch=1, timeout=5):
                        _put(q, m.data)
                        await m.ack()
        _spawn(stack, read())
        return lambda m: self.publish(m, subject)


class AmqpBroker(Broker):
    kind = "amqp"

    async def setup(self) -> None:
        self.queue = f"squall-bench-{self.tag}"
        self.conn = await aio_pika.connect(AMQP_URL)
        self.channel = await self.conn.channel()
        self.stack.push_async_callback(self.conn.close)
        for name in (self.queue, self.queue + "-raw"):
            self.stack.push_async_callback(self._drop, name)

    async def _drop(self, queue: str) -> None:
        with contextlib.suppress(Exception):
            await self.channel.queue_delete(queue)

    def trigger(self) -> Toml:
        return {"url": AMQP_URL, "queue": self.queue}

    async def publish(self, msg: dict[str, Any], queue: str = "") -> None:
        await self.channel.default_exchange.publish(
            aio_pika.Message(json.dumps(msg).encode()), routing_key=queue or self.queue)

    async def raw(self, q: Inbox, stack: contextlib.AsyncExitStack) -> Publish:
        name = self.queue + "-raw"
        chan = await self.conn.channel()
        stack.push_async_callback(chan.close)
        queue = await chan.declare_queue(name, durable=True)

        async def on_message(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            _put(q, m.body)
            await m.ack()
        await queue.consume(on_message)
        return lambda m: self.publish(m, name)


class MqttBroker(Broker):
    kind = "mqtt"

    async def setup(self) -> None:
        self.base = f"squall-bench/{self.tag}"
        self.client_id = f"squall-bench-{self.tag}"
        # Last out: a clean-session connect with the trigger's client id drops its session.
        self.stack.push_async_callback(self._forget)
        self.pub = await self.stack.enter_async_context(aiomqtt.Client("127.0.0.1", 1883))

    async def _forget(self) -> None:
        async with aiomqtt.Client("127.0.0.1", 1883, identifier=self.client_id,
                                  clean_session=True):
            pass

    def trigger(self) -> Toml:
        return {"url": "mqtt://127.0.0.1:1883", "topic": f"{self.base}/#",
                "client_id": self.client_id}

    async def publish(self, msg: dict[str, Any], topic: str = "") -> None:
        await self.pub.publish(topic or f"{self.base}/v", json.dumps(msg), qos=1)

    async def raw(self, q: Inbox, stack: contextlib.AsyncExitStack) -> Publish:
        topic = f"{self.base}-raw/v"
        sub = await stack.enter_async_context(aiomqtt.Client("127.0.0.1", 1883))
        await sub.subscribe(topic, qos=1)

        async def read() -> None:
            async for m in sub.messages:
                _put(q, m.payload if isinstance(m.payload, bytes | str) else str(m.payload))
        _spawn(stack, read())
        return lambda m: self.publish(m, topic)


class PostgresBroker(Broker):
    kind = "postgres"

    async def setup(self) -> None:
        self.table = f"squall_bench_{self.tag}"
        self.conn = await asyncpg.connect(DSN)
        self.stack.push_async_callback(self.conn.close)
        self.stack.push_async_callback(self._drop)
        await self.conn.execute(
            f"CREATE TABLE {self.table} (id serial PRIMARY KEY, seq int, ts double precision)")

    async def _drop(self) -> None:
        # Dropping the table drops the connector's capture trigger; its outbox rows go too.
        await self.conn.execute(f"DROP TABLE IF EXISTS {self.table}")
        with contextlib.suppress(asyncpg.UndefinedTableError):
            await self.conn.execute("DELETE FROM squall_changes WHERE table_name = $1",
                                    self.table)

    def trigger(self) -> Toml:
        return {"dsn": DSN, "tables": [self.table], "operations": ["INSERT"]}

    async def publish(self, msg: dict[str, Any]) -> None:
        await self.conn.execute(f"INSERT INTO {self.table} (seq, ts) VALUES ($1, $2)",
                                msg["seq"], msg["ts"])

    def fields(self, data: Any) -> dict[str, Any]:
        return dict(data["row"])

    async def raw(self, q: Inbox, stack: contextlib.AsyncExitStack) -> Publish:
        channel = f"squall_bench_{self.tag}"
        listener = await asyncpg.connect(DSN)
        stack.push_async_callback(listener.close)
        await listener.add_listener(channel, lambda *args: _put(q, args[3]))
        return lambda m: self.conn.execute("SELECT pg_notify($1, $2)", channel, json.dumps(m))


BROKERS: dict[str, type[Broker]] = {
    b.kind: b for b in (RedisBroker, NatsBroker, AmqpBroker, MqttBroker, PostgresBroker)}


def _toml_value(v: str | int | bool | list[str]) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(v)  # a JSON string or list of strings is valid TOML


def write_bundle(tmp: Path, name: str, kind: str, trigger: Toml) -> Path:
    bundle = tmp / name
    bundle.mkdir()
    (bundle / "handler.py").write_text(STAMP)
    lines = [f'name = "{name}"', "", "[[triggers]]", f'type = "{kind}"', 'name = "bench"',
             *(f"{k} = {_toml_value(v)}" for k, v in trigger.items())]
    (bundle / "squall.toml").write_text("\n".join(lines) + "\n")
    return bundle


async def _wait_running(http: httpx.AsyncClient, name: str, deadline_s: float = 30) -> None:
    end = time.monotonic() + deadline_s
    status: Any = None
    while time.monotonic() < end:
        r = await http.get(f"/api/v1/functions/{name}/triggers")
        ts = r.json().get("triggers", []) if r.status_code == 200 else []
        status = ts[0].get("status") if ts else None
        if status and status.get("state") == "running":
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"trigger of {name} not running after {deadline_s:g}s: {status}")


class LogReader:
    """Follows GET /api/v1/functions/{name}/logs with a cursor; yields (start, fields) by seq."""

    def __init__(self, http: httpx.AsyncClient, name: str, broker: Broker) -> None:
        self.http, self.name, self.broker = http, name, broker
        self.cursor = 0
        self.seen: dict[int, tuple[float, dict[str, Any]]] = {}

    async def wait(self, seq: int, deadline_s: float = 30) -> tuple[float, dict[str, Any]]:
        end = time.monotonic() + deadline_s
        while seq not in self.seen:
            if time.monotonic() > end:
                raise TimeoutError(f"message {seq} never reached {self.name}'s handler")
            r = await self.http.get(f"/api/v1/functions/{self.name}/logs",
                                    params={"after": self.cursor, "limit": 1000})
            r.raise_for_status()
            body = r.json()
            self.cursor = int(body["cursor"])
            for row in body["lines"]:
                for m in LINE_RE.finditer(str(row.get("line", ""))):
                    f = self.broker.fields(json.loads(m.group(2)))
                    self.seen[int(f["seq"])] = (float(m.group(1)), f)
            if seq not in self.seen:
                await asyncio.sleep(0.01)
        return self.seen[seq]


async def _squall_latency(http: httpx.AsyncClient, b: Broker, name: str, n: int) -> list[float]:
    logs = LogReader(http, name, b)
    samples: list[float] = []
    for i in range(WARMUP + n):
        await b.publish({"seq": i, "ts": time.time()})
        start, f = await logs.wait(i)  # one at a time: latency, not queueing
        if i >= WARMUP:
            samples.append((start - float(f["ts"])) * 1000.0)
    return samples


async def _raw_latency(b: Broker, n: int) -> list[float]:
    q: Inbox = asyncio.Queue()
    samples: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        publish = await b.raw(q, stack)
        for i in range(WARMUP + n):
            await publish({"seq": i, "ts": time.time()})
            got, msg = await asyncio.wait_for(q.get(), 30)
            if int(msg["seq"]) != i:
                raise RuntimeError(f"raw {b.kind}: expected message {i}, got {msg}")
            if i >= WARMUP:
                samples.append((got - float(msg["ts"])) * 1000.0)
    return samples


async def connector_latency(p: Platform, kind: str, n: int, tmp: Path) -> dict[str, Any]:
    b = BROKERS[kind]()
    name = f"ev-{kind}-{b.tag[:8]}"
    async with httpx.AsyncClient(base_url=p.url, timeout=60,
                                 headers=dict(p.http.headers)) as http:
        try:
            await b.setup()
            bundle = write_bundle(tmp, name, kind, b.trigger())
            await asyncio.to_thread(p.deploy, bundle, name)
            await _wait_running(http, name)
            squall = await _squall_latency(http, b, name, n)
            raw = await _raw_latency(b, n)
        finally:
            with contextlib.suppress(httpx.HTTPError):
                await http.delete(f"/api/v1/functions/{name}")
            await b.stack.aclose()
    return {"squall_ms": squall, "squall": summary(squall), "broker_ms": raw,
            "broker": summary(raw)}


def reachable(kind: str) -> str | None:
    """None when the broker answers on 127.0.0.1, else why not."""
    try:
        socket.create_connection(("127.0.0.1", PORTS[kind]), timeout=1).close()
        return None
    except OSError as exc:
        return f"{kind} not reachable on 127.0.0.1:{PORTS[kind]}: {exc}"


def run(quick: bool, log: Log) -> dict[str, Any]:
    """Everything events-related on one platform process; a failing step is recorded, not fatal."""
    out: dict[str, Any] = {}
    duration = 2 if quick else 5
    n = 15 if quick else 50
    log("  events: baseline POST throughput (uvloop+httptools) ...")
    try:
        out["post_baseline"] = post_baseline(duration)
    except Exception as exc:
        out["post_baseline"] = {"error": f"{type(exc).__name__}: {exc}"}
    with tempfile.TemporaryDirectory(prefix="squall-bench-events-") as tmp, Platform() as p:
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("async_throughput", lambda: async_throughput(p, quick, Path(tmp))),
            ("async_accept_only", lambda: accept_only(quick)),
            ("async_throughput_workers", lambda: with_workers(quick, Path(tmp))),
            ("event_inserts", lambda: event_inserts(quick, Path(tmp))),
            # the same load with NATS JetStream carrying the queue (--queue nats://)
            ("async_throughput_nats", lambda: queue_bench.async_throughput(quick, Path(tmp)))]
        for kind in KINDS:
            def one(kind: str = kind) -> dict[str, Any]:
                why = reachable(kind)
                if why is not None:
                    return {"skipped": why}
                return asyncio.run(connector_latency(p, kind, n, Path(tmp)))
            steps.append((f"latency_{kind}", one))
        run_steps(steps, out, log, "events")
        out["platform_log_tail"] = p.log_tail(20)
    return out


def notes(ev: dict[str, Any]) -> list[str]:
    """What the table cannot say: skipped connectors, rejected submissions, the drain."""
    out = [f"events.{k}: skipped ({v['skipped']})" for k, v in ev.items()
           if isinstance(v, dict) and "skipped" in v]
    for key, what in (("async_throughput", "async invoke"),
                      ("async_throughput_nats", "async invoke, --queue nats://")):
        tp = ev.get(key) or {}
        if "drained_s" in tp:
            out.append(f"{what}: {tp['accepted']} accepted in {tp['seconds']:.1f} s "
                       f"({tp['non_2xx']} non-2xx, socket errors: "
                       f"{tp['socket_errors'] or 'none'}), queue drained {tp['drained_s']:.1f} s"
                       f" after the load started; {tp['succeeded_listed']} listed as succeeded"
                       " (wrk does not count the requests still in flight when it stops)")
    return out
