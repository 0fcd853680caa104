"""The async queue with NATS JetStream as its carrier (``squall up --queue nats://``).

The key behaviours of tests/test_events_api.py (success, retries then a dead letter, redrive,
destinations, idempotency) run again on a platform whose queue is JetStream; the carrier itself
runs against the real NATS on 127.0.0.1:4222 with each store backend (claims, a future-due
event, a duplicate message, a row committed without its message, recovery after a crash); NATS
going down answers 503 ``queue_unavailable`` and writes nothing; and two gateways on one
PostgreSQL store share the stream while one of them is killed with kill -9.

Every test uses a stream and consumer of its own (``?prefix=t<random>``) and deletes them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.js.errors
import pytest

from squall.config import Settings
from squall.events import jetstream
from squall.events.jetstream import JetStreamQueue, parse_url
from squall.events.queues import EventRef, InvalidQueue, QueueUnavailable
from squall.events.service import EventService
from squall.store import queue
from squall.store.db import Database
from tests import test_events_api as api
from tests.conftest import SQUALL, PlatformProc, free_port, require_service, wait_for
from tests.pg_helpers import pg_address, pg_schema
from tests.test_chaos import Collector
from tests.test_events_queue import put

NATS_HOST, NATS_PORT = "127.0.0.1", 4222
ASYNC = {"X-Squall-Invocation-Type": "Event"}


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def _consumer(prefix: str, url: str = f"nats://{NATS_HOST}:{NATS_PORT}") -> Any:
    nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2)
    try:
        return await nc.jetstream().consumer_info(f"{prefix.upper()}_EVENTS", f"{prefix}-workers")
    finally:
        await nc.close()


async def _drop(prefix: str) -> None:
    nc = await nats.connect(f"nats://{NATS_HOST}:{NATS_PORT}", allow_reconnect=False)
    try:
        await nc.jetstream().delete_stream(f"{prefix.upper()}_EVENTS")  # its consumer goes too
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A stream/consumer prefix of this test's own; the stream is deleted afterwards."""
    require_service(NATS_HOST, NATS_PORT, "NATS")
    p = _prefix()
    yield p
    asyncio.run(_drop(p))


# --- the URL -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "servers", "public", "stream"), [
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222", "nats://127.0.0.1:4222", "SQUALL_EVENTS"),
    ("nats://app:s3cret@nats.local:4222?prefix=blue", "nats://app:s3cret@nats.local:4222",
     "nats://nats.local:4222", "BLUE_EVENTS"),
    ("tls://[::1]:4443/", "tls://[::1]:4443", "tls://[::1]:4443", "SQUALL_EVENTS"),
])
def test_parse_url(url: str, servers: str, public: str, stream: str) -> None:
    t = parse_url(url)
    assert (t.servers, t.public, t.stream) == (servers, public, stream)
    assert t.subject("acme") == f"{t.prefix}.events.acme" and t.consumer == f"{t.prefix}-workers"


@pytest.mark.parametrize("url", [
    "nats://", "nats://h:99999", "nats://h:1/stream", "nats://h:1?prefix=A.B",
    "nats://h:1?prefix=", "nats://h:1?stream=x", "http://h:1",
])
def test_parse_url_refuses(url: str) -> None:
    with pytest.raises(InvalidQueue) as e:
        parse_url(url)
    assert e.value.code == "invalid_queue" and e.value.status == 400


def test_up_refuses_an_unknown_queue(tmp_path: Path) -> None:
    out = subprocess.run(
        [SQUALL, "up", "--queue", "redis://127.0.0.1:6379", "--data-dir", str(tmp_path / "d"),
         "--port", str(free_port()), "--s3-port", "0"], capture_output=True, text=True,
        timeout=60)
    assert out.returncode == 1 and "[invalid_queue]" in out.stderr, out.stderr


# --- the carrier on its own, with each store ---------------------------------------------------

class _Registry:
    def get(self, name: str, namespace: str = "default") -> Any:
        return None

    def add_listener(self, fn: Any) -> None:
        pass


class _Logs:
    def append(self, function: str, request_id: str, line: str,
               namespace: str = "default") -> None:
        pass


class Deliveries:
    """The worker's side of the carrier (``queues.Dispatch``) without an invoker: records each
    claimed row, fails the ids in ``fail_once`` once (retry 0.3 s later), succeeds the rest."""

    def __init__(self, svc: EventService, hold_s: float = 0.0) -> None:
        self.svc = svc
        self.started: list[tuple[float, dict[str, Any]]] = []
        self.fail_once: set[str] = set()
        self.hold_s = hold_s  # how long each "invocation" takes, inside lease.hold()
        self.busy = 0

    @property
    def lease_s(self) -> float:
        return self.svc.worker.lease_s

    def free(self) -> int:
        return 8 - self.busy

    def start(self, tg: asyncio.TaskGroup, lease: Any) -> None:
        self.busy += 1
        tg.create_task(self._run(lease))

    async def _run(self, lease: Any) -> None:
        svc, row = self.svc, lease.row
        self.started.append((svc.clock(), dict(row)))
        async with lease.hold():
            await asyncio.sleep(self.hold_s)
        now = svc.clock()
        if row["id"] in self.fail_once:
            self.fail_once.discard(row["id"])
            err = {"errorType": "E", "errorMessage": "once", "stackTrace": []}
            await svc.db.run(lambda c: queue.retry_later(c, row["id"], now=now, error=err,
                                                         next_attempt_at=now + 0.3))
            await lease.again(now + 0.3)
        else:
            await svc.db.run(lambda c: queue.succeed(c, row["id"], now=now, result="ok"))
            await lease.done()
        self.busy -= 1
        svc.queue.freed()

    async def housekeeping(self, now: float) -> None:
        pass

    def runs(self, rid: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, r) for t, r in self.started if r["id"] == rid]


async def until(pred: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + 15.0
    while not (value := await pred()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return value


@pytest.fixture
async def carrier(db: Database, prefix: str,
                  request: pytest.FixtureRequest) -> AsyncIterator[JetStreamQueue]:
    # by default longer than the test, so that AckWait never helps it
    lease_s = getattr(request, "param", 30.0)
    settings = Settings(queue=f"nats://{NATS_HOST}:{NATS_PORT}?prefix={prefix}",
                        async_lease_s=lease_s)
    svc = EventService(settings, db, None, _Registry(), _Logs())  # type: ignore[arg-type]
    assert isinstance(svc.queue, JetStreamQueue)
    await svc.queue.open()
    yield svc.queue
    await svc.queue.close()


async def _final(db: Database, rid: str) -> bool:
    return await db.run(lambda c: queue.event_status(c, rid)) in queue.FINAL


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    [out] = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(out, asyncio.CancelledError), out  # the carrier did not fail


async def test_carrier_claims_defers_and_reconciles(carrier: JetStreamQueue, db: Database,
                                                    prefix: str) -> None:
    svc, now = carrier.svc, time.time()
    d = Deliveries(svc)
    d.fail_once.add("retried")

    def rows(c: Any) -> None:
        put(c, "retried", now=now)
        put(c, "later", now=now + 1.0)  # due in a second: its message arrives before that
        put(c, "lost", now=now - 60)  # committed, then the process died before the publish
        put(c, "left", now=now - 1)  # claimed by the previous process, which died
        queue.claim_ids(c, ["left"], now=now - 1, lease_s=30)

    await db.run(rows)
    await carrier.publish([EventRef("retried", "default"), EventRef("later", "default")],
                          strict=True)
    await carrier.recover()  # SQLite: "left" is requeued and published again at once
    task = asyncio.create_task(carrier.run(d))
    try:
        def final(rid: str) -> Any:
            return _final(db, rid)

        # written by someone who only sets service.wake (the object store's storage triggers)
        await db.run(lambda c: put(c, "swept", now=time.time()))
        svc.wake.set()
        await until(lambda: final("swept"))
        await until(lambda: final("retried"))
        await until(lambda: final("later"))
        await until(lambda: _idle(prefix))
        await carrier.reconcile()  # (unless its pass at the start found it already)
        await until(lambda: final("lost"))  # only reconciliation could publish it
        assert carrier.republished >= 1
        if not db.shared:
            await until(lambda: final("left"))
        else:  # another gateway's lease (PostgreSQL): not taken over before it runs out
            assert await db.run(lambda c: queue.event_status(c, "left")) == "running"

        # a retry: failed once, its message nak'd for the backoff, claimed again (attempt 2)
        runs = d.runs("retried")
        assert [r["attempts"] for _, r in runs] == [1, 2]
        assert runs[1][1]["started_at"] >= runs[0][1]["started_at"] + 0.3
        # not run before it was due
        [(_, later)] = d.runs("later")
        assert later["started_at"] >= later["next_attempt_at"]
        # a duplicate message of a finished event is acknowledged without a delivery
        await carrier.republish([{"id": "retried", "namespace": "default", "attempts": 2}],
                                "test")
        await until(lambda: _idle(prefix))
        assert len(d.runs("retried")) == 2
        ev = await db.run(lambda c: queue.get_event(c, "retried"))
        assert ev is not None and (ev["status"], ev["attempts"]) == ("succeeded", 2)
    finally:
        await _stop(task)


@pytest.mark.parametrize("carrier", [1.0], indirect=True)  # AckWait and the row's lease: 1 s
async def test_a_long_delivery_keeps_its_lease(carrier: JetStreamQueue, db: Database,
                                               prefix: str) -> None:
    """+WPI and the row's lease every lease/3 s: a delivery 3x longer than the lease runs
    once, neither redelivered by JetStream nor claimed again from the row."""
    d = Deliveries(carrier.svc, hold_s=3.0)
    await db.run(lambda c: put(c, "slow", now=time.time()))
    await carrier.publish([EventRef("slow", "default")], strict=True)
    task = asyncio.create_task(carrier.run(d))
    try:
        await until(lambda: _final(db, "slow"))
        await until(lambda: _idle(prefix))
        assert [r["attempts"] for _, r in d.runs("slow")] == [1]
    finally:
        await _stop(task)


async def _idle(prefix: str) -> bool:
    info = await _consumer(prefix)
    return not info.num_pending and not info.num_ack_pending


async def test_unreachable_nats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jetstream, "CONNECT_TIMEOUT_S", 0.5)
    d = Database(tmp_path / "q.db")
    d.open()
    try:
        svc = EventService(Settings(queue=f"nats://127.0.0.1:{free_port()}"), d, None,
                           _Registry(), _Logs())  # type: ignore[arg-type]
        with pytest.raises(QueueUnavailable) as e:
            await svc.open()
        assert (e.value.status, e.value.code) == (503, "queue_unavailable")
        with pytest.raises(QueueUnavailable):  # never connected: a submit is refused too
            await svc.queue.publish([EventRef("x", "default")], strict=True)
    finally:
        d.close()


# --- the platform: test_events_api's behaviours on JetStream -----------------------------------

@pytest.fixture(scope="module")
def nats_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PlatformProc, str]]:
    require_service(NATS_HOST, NATS_PORT, "NATS")
    p = _prefix()
    proc = PlatformProc(tmp_path_factory.mktemp("nats") / "data",
                        {"SQUALL_QUEUE": f"nats://{NATS_HOST}:{NATS_PORT}?prefix={p}",
                         "SQUALL_S3_PORT": "0"})
    proc.start()
    yield proc, p
    proc.close()
    asyncio.run(_drop(p))


@pytest.mark.parametrize("case", [
    api.test_async_retry_dead_letter_redrive,  # success, retries (due later), dead letter
    api.test_destination_function,
    api.test_async_bad_input_and_idempotency,
], ids=lambda f: f.__name__.removeprefix("test_"))
def test_events_api_on_jetstream(case: Callable[[PlatformProc, Callable[..., Path]], None],
                                 nats_platform: tuple[PlatformProc, str],
                                 make_fn: Callable[..., Path]) -> None:
    platform, prefix = nats_platform
    before = asyncio.run(_consumer(prefix)).delivered.stream_seq
    case(platform, make_fn)
    # JetStream carried them: the consumer delivered new messages, and nothing is left over
    info = asyncio.run(_consumer(prefix))
    assert info.delivered.stream_seq > before
    assert "Traceback" not in platform.log()


# --- NATS going down ---------------------------------------------------------------------------

class NatsServer:
    """A nats-server of this test's own (so it can be stopped), JetStream in ``store``."""

    def __init__(self, exe: str, store: Path) -> None:
        self.exe, self.store, self.port = exe, store, free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-a", "127.0.0.1", "-p", str(self.port), "-js",
                                      "-sd", str(self.store)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

        def up() -> bool:
            try:
                asyncio.run(_consumer("none", self.url))
            except nats.js.errors.NotFoundError:
                return True
            except Exception:
                return False
            return True

        wait_for(up, timeout=15, message="nats-server to serve JetStream")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    exe = shutil.which("nats-server")
    if exe is None:
        pytest.skip("nats-server is not installed")
    server = NatsServer(exe, tmp_path / "js")
    server.start()
    yield server
    server.kill()


DOUBLE = "def handler(event, context):\n    return event['n'] * 2\n"


def test_nats_down_answers_503_and_writes_nothing(
        own_nats: NatsServer, platform_factory: Callable[..., PlatformProc],
        make_fn: Callable[..., Path]) -> None:
    p = platform_factory(SQUALL_QUEUE=own_nats.url, SQUALL_S3_PORT="0")
    p.deploy(make_fn("dbl", DOUBLE))
    accepted = [api.submit(p, "dbl", {"n": 1})]
    assert api.final(p, accepted[0])["result"] == 2
    own_nats.kill()

    def refused() -> httpx.Response | None:
        r = p.http.post("/api/v1/functions/dbl/invocations", json={"n": 2}, headers=ASYNC)
        if r.status_code == 202:  # sent before the gateway saw the connection go
            accepted.append(r.json()["request_id"])
            return None
        return r

    r = wait_for(refused, message="a submit refused while NATS is down")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "queue_unavailable"
    # nothing half-written: the store holds exactly the accepted events
    listed = p.http.get("/api/v1/invocations", params={"function": "dbl"}).json()
    assert sorted(i["request_id"] for i in listed["invocations"]) == sorted(accepted)

    own_nats.start()  # the same store dir: the stream and its consumer are back
    rid = wait_for(lambda: (r := p.http.post("/api/v1/functions/dbl/invocations", json={"n": 3},
                                             headers=ASYNC)).status_code == 202
                   and r.json()["request_id"], timeout=20, message="a 202 once NATS is back")
    assert api.final(p, rid)["result"] == 6
    for early in accepted:
        assert api.final(p, early)["status"] == "succeeded"


# --- two gateways, one store, one stream, kill -9 ----------------------------------------------

COUNTED = """
import os, time, urllib.request

def handler(event, context):
    req = urllib.request.Request(os.environ["COLLECTOR_URL"],
                                 data=context.aws_request_id.encode(), method="POST")
    urllib.request.urlopen(req, timeout=10).read()
    time.sleep(0.05)
    return event["n"] * 2
"""
EVENTS = 300


def test_two_gateways_share_the_stream_through_a_kill9(
        prefix: str, platform_factory: Callable[..., PlatformProc], tmp_path: Path,
        make_fn: Callable[..., Path]) -> None:
    require_service(*pg_address(), "PostgreSQL")
    with pg_schema() as store, Collector() as collector:
        env = {"SQUALL_STORE": store, "SQUALL_S3_PORT": "0",
               "SQUALL_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
               "SQUALL_QUEUE": f"nats://{NATS_HOST}:{NATS_PORT}?prefix={prefix}",
               "SQUALL_ASYNC_LEASE_S": "3"}
        a = platform_factory(**env)
        (tmp_path / "data1").mkdir()
        (tmp_path / "data1" / "admin-key").write_text(a.admin_key + "\n")
        b = platform_factory(**env)
        try:
            _kill_one_midway(a, b, collector, make_fn)
        finally:
            for p in (a, b):  # before the schema goes
                p.close()


def _kill_one_midway(a: PlatformProc, b: PlatformProc, collector: Collector,
                     make_fn: Callable[..., Path]) -> None:
    a.deploy(make_fn("counted", COUNTED, f'[env]\nCOLLECTOR_URL = "{collector.url}"\n'))
    wait_for(lambda: b.http.get("/api/v1/functions/counted").status_code == 200,
             message="b to learn of counted")
    accepted: dict[str, int] = {}
    lock = threading.Lock()

    def submit(p: PlatformProc, numbers: range) -> None:
        for n in numbers:
            r = p.http.post("/api/v1/functions/counted/invocations", json={"n": n},
                            headers=ASYNC)
            assert r.status_code == 202, r.text
            with lock:
                accepted[r.json()["request_id"]] = n

    half = EVENTS // 2
    both = [threading.Thread(target=submit, args=(p, range(i, half, 2)))
            for i, p in enumerate((a, b))]
    for t in both:
        t.start()
    for t in both:
        t.join()
    wait_for(lambda: len(collector.seen) >= 20, timeout=30, message="deliveries under way")
    a.kill9()  # mid-way: a holds claimed rows and pulled messages
    ran_before_kill = len(collector.seen)
    submit(b, range(half, EVENTS))

    def finished() -> list[dict[str, Any]]:
        rows = b.http.get("/api/v1/invocations",
                          params={"function": "counted", "limit": 1000}).json()["invocations"]
        done = [r for r in rows if r["status"] in ("succeeded", "dead_lettered")]
        return rows if len(done) == len(accepted) else []

    rows = wait_for(finished, timeout=60, message=f"all {EVENTS} events to finish")
    assert len(accepted) == EVENTS
    assert {r["request_id"]: (r["status"], r["result"]) for r in rows} == {
        rid: ("succeeded", n * 2) for rid, n in accepted.items()}  # exactly once in the record
    seen = Counter(collector.seen)
    assert all(seen[rid] >= 1 for rid in accepted)
    duplicates = sum(n - 1 for n in seen.values())
    attempts = Counter(int(r["attempts"]) for r in rows)
    print(f"\njetstream, 2 gateways, a killed after {ran_before_kill} executions: "
          f"{len(accepted)} accepted, {len(rows)} succeeded once in the store, "
          f"{sum(seen.values())} executions ({duplicates} duplicates), attempts {dict(attempts)}")
