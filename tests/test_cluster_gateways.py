"""Two stateless gateways on one PostgreSQL store: real `squall up` processes, each with a data dir
of its own, sharing the store (a fresh schema of the test database) and the master key.

Deploy through one and invoke through the other; logs and usage read the same through both; a
schedule fires once per tick across both; async events submitted to both are each delivered.
"""

from __future__ import annotations

import base64
import functools
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SQUALL, PlatformProc, free_port, require_service, wait_for
from tests.pg_helpers import pg_address, pg_schema

ASYNC = {"X-Squall-Invocation-Type": "Event"}
Pair = tuple[PlatformProc, PlatformProc]


@pytest.fixture
def gateways(platform_factory: Callable[..., PlatformProc], tmp_path: Path) -> Iterator[Pair]:
    require_service(*pg_address(), "PostgreSQL")
    with pg_schema() as url:
        env = {"SQUALL_STORE": url, "SQUALL_S3_PORT": "0",
               # secrets and keys are sealed with it: every gateway needs the same one
               "SQUALL_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
        a = platform_factory(**env)
        # Only the first gateway of a store creates the admin key; the second uses it too
        # (the data dir platform_factory gives its next platform).
        (tmp_path / "data1").mkdir()
        (tmp_path / "data1" / "admin-key").write_text(a.admin_key + "\n")
        b = platform_factory(**env)
        yield a, b
        for p in (a, b):  # before the schema goes
            p.close()


def _knows(p: PlatformProc, name: str, version: int = 1) -> bool:
    r = p.http.get(f"/api/v1/functions/{name}")
    return r.status_code == 200 and r.json().get("version") == version


def _usage_is(p: PlatformProc, name: str, invocations: int) -> bool:
    rows = p.http.get("/api/v1/usage").json()["functions"]
    return next((int(r["invocations"]) for r in rows if r["name"] == name), 0) == invocations


def _logs_have(p: PlatformProc, name: str, text: str) -> bool:
    return text in p.http.get(f"/api/v1/functions/{name}/logs").text


def test_deploy_on_one_invoke_on_the_other(gateways: Pair, make_fn: Callable[..., Path]) -> None:
    a, b = gateways
    a.deploy(make_fn("greet", """
        def handler(event, context):
            print("hello from", event["who"])
            return {"v": 1, "who": event["who"]}
    """))
    wait_for(lambda: _knows(b, "greet"), message="gateway b to learn of greet v1")
    r = b.invoke("greet", {"who": "b"})
    assert r.status_code == 200, r.text
    assert r.json() == {"v": 1, "who": "b"}
    # a new version deployed through b reaches a: the registry follows the store both ways
    b.deploy(make_fn("greet", "def handler(event, context):\n    return {'v': 2}\n"))
    wait_for(lambda: _knows(a, "greet", 2), message="gateway a to learn of greet v2")
    assert a.invoke("greet", {}).json() == {"v": 2}
    # logs and usage are the store's: the same through both gateways
    for p in (a, b):
        wait_for(functools.partial(_logs_have, p, "greet", "hello from b"),
                 message=f"b's log line through {p.url}")
        wait_for(functools.partial(_usage_is, p, "greet", 2),
                 message=f"usage of 2 through {p.url}")
    # removing through a: b stops serving it
    assert a.http.delete("/api/v1/functions/greet").status_code in (200, 204)
    wait_for(lambda: b.http.get("/api/v1/functions/greet").status_code == 404,
             message="b to forget greet")


def test_keys_and_secrets_follow_the_store(gateways: Pair,
                                           make_fn: Callable[..., Path]) -> None:
    a, b = gateways
    created = a.http.post("/api/v1/keys", json={"tenant": "default", "scopes": ["read"]})
    assert created.status_code == 201, created.text
    token, kid = created.json()["key"], created.json()["id"]
    auth = {"authorization": f"Bearer {token}"}

    def b_says() -> int:
        return b.http.get("/api/v1/functions", headers=auth).status_code

    wait_for(lambda: b_says() == 200, message="b to accept a key created on a")
    assert a.http.delete(f"/api/v1/keys/{kid}").status_code == 200
    wait_for(lambda: b_says() == 401, message="b to refuse the key revoked on a")
    # a secret set through b is what a's instances see
    assert b.http.put("/api/v1/secrets/token", content=b"s3cret").status_code in (200, 201)
    wait_for(lambda: "token" in a.http.get("/api/v1/secrets").text, message="a to see the secret")
    a.deploy(make_fn("reveal", """
        import os
        def handler(event, context):
            return os.environ["TOKEN"]
    """, 'env = { TOKEN = "secret:token" }\n'))
    assert a.invoke("reveal").json() == "s3cret"


def test_schedule_fires_once_per_tick_across_gateways(gateways: Pair,
                                                       make_fn: Callable[..., Path]) -> None:
    a, b = gateways
    a.deploy(make_fn("tick", "def handler(event, context):\n    return event['time']\n", """
        [[triggers]]
        type = "schedule"
        name = "every-second"
        rate = "rate(1 second)"
        allow_overlap = true
    """))
    tid = a.http.get("/api/v1/functions/tick/triggers").json()["triggers"][0]["id"]
    wait_for(lambda: _knows(b, "tick"), message="b to learn of tick")

    def fired() -> list[str]:
        rows = b.http.get("/api/v1/invocations", params={"source": tid, "limit": 100}).json()
        done = [r["result"] for r in rows["invocations"] if r["status"] == "succeeded"]
        return done if len(done) >= 6 else []

    # Each firing returns its tick's time: a tick fired by both gateways shows up twice.
    ticks = wait_for(fired, timeout=30, message="six firings")
    assert len(set(ticks)) == len(ticks), f"a tick fired twice: {sorted(ticks)}"


def test_async_events_through_both_are_each_delivered(gateways: Pair,
                                                      make_fn: Callable[..., Path]) -> None:
    a, b = gateways
    a.deploy(make_fn("work", "def handler(event, context):\n    return event['n'] * 2\n"))
    wait_for(lambda: _knows(b, "work"), message="b to learn of work")
    ids: dict[str, int] = {}
    for n in range(40):
        p = a if n % 2 else b
        r = p.http.post("/api/v1/functions/work/invocations", json={"n": n}, headers=ASYNC)
        assert r.status_code == 202, r.text
        ids[r.json()["request_id"]] = n

    def status(rid: str) -> dict[str, Any]:
        data: dict[str, Any] = a.http.get(f"/api/v1/invocations/{rid}").json()
        return data

    def all_done() -> list[dict[str, Any]]:
        got = [status(rid) for rid in ids]
        return got if all(g.get("status") == "succeeded" for g in got) else []

    done = wait_for(all_done, timeout=60, message="every async event to succeed")
    assert {g["request_id"]: g["result"] for g in done} == {rid: n * 2 for rid, n in ids.items()}
    # at least once: a duplicate delivery would show as a second attempt; report them
    duplicates = sum(max(0, int(g.get("attempts") or 1) - 1) for g in done)
    print(f"async events: {len(ids)} accepted, {len(done)} delivered, {duplicates} duplicates")


def test_up_refuses_an_unreachable_store(tmp_path: Path) -> None:
    # --store names the store; a store that cannot be reached stops `squall up` with a clear
    # error, and a password in the URL is not echoed
    port = free_port()  # nothing listens there
    out = subprocess.run(
        [SQUALL, "up", "--store", f"postgresql://app:hunter2@127.0.0.1:{port}/nope",
         "--data-dir", str(tmp_path / "d"), "--port", str(free_port()), "--s3-port", "0"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "[store_unavailable]" in out.stderr and "app:***@" in out.stderr
    assert "hunter2" not in out.stderr + out.stdout


def test_a_connector_consumes_once_across_gateways(gateways: Pair,
                                                   make_fn: Callable[..., Path]) -> None:
    # MQTT delivers a topic's message to every subscriber: with both gateways consuming, each
    # message would run twice (and their shared session id would kick each other off). The
    # trigger's lease lets one gateway consume; the other stands by.
    import asyncio
    import json
    import uuid

    import aiomqtt

    require_service("127.0.0.1", 1883, "Mosquitto")
    a, b = gateways
    topic = f"squall-once/{uuid.uuid4().hex[:8]}"
    a.deploy(make_fn("once", "def handler(event, context):\n    return len(event)\n", f"""
        [[triggers]]
        type = "mqtt"
        url = "mqtt://127.0.0.1:1883"
        topic = "{topic}/#"
    """))
    wait_for(lambda: _knows(b, "once"), message="b to learn of once")

    def states() -> list[str]:
        return sorted(str(p.http.get("/api/v1/functions/once/triggers").json()["triggers"][0]
                          .get("status", {}).get("state")) for p in (a, b))

    wait_for(lambda: "standby" in states() and states() != ["standby", "standby"],
             timeout=30, message="one gateway consuming, the other standing by")

    async def publish(count: int) -> None:
        async with aiomqtt.Client("127.0.0.1", 1883) as pub:
            for n in range(count):
                await pub.publish(f"{topic}/x", json.dumps({"n": n}), qos=1)

    asyncio.run(publish(20))
    wait_for(functools.partial(_usage_is, a, "once", 20), timeout=30,
             message="20 invocations for 20 messages")
    import time

    time.sleep(2)  # a second consumer's copies would arrive by now
    assert _usage_is(a, "once", 20), a.http.get("/api/v1/usage").json()
    # the consuming gateway stops: the other takes the trigger over (its lease is released)
    def state(p: PlatformProc) -> str:
        return str(p.http.get("/api/v1/functions/once/triggers").json()["triggers"][0]
                   .get("status", {}).get("state"))

    leader, other = (a, b) if state(a) != "standby" else (b, a)
    leader.stop()
    wait_for(lambda: state(other) not in ("standby", "connecting"), timeout=30,
             message="the other gateway to take the trigger over")
    asyncio.run(publish(5))
    wait_for(functools.partial(_usage_is, other, "once", 25), timeout=30,
             message="the 5 later messages through the other gateway")


# ---- several gateways on one port (--reuse-port) ------------------------------------------------

def _fresh_get(port: int, path: str, key: str = "") -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own: the kernel picks a gateway per connection."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"authorization": f"Bearer {key}"} if key else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_two_gateways_share_one_port(platform_factory: Callable[..., PlatformProc],
                                     tmp_path: Path, make_fn: Callable[..., Path]) -> None:
    """--reuse-port: two gateways of one store listen on the same port; connections reach both,
    and a function deployed through the port is served by both."""
    import json

    require_service(*pg_address(), "PostgreSQL")
    with pg_schema() as url:
        env = {"SQUALL_STORE": url, "SQUALL_S3_PORT": "0", "SQUALL_REUSE_PORT": "1",
               "SQUALL_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
        a = platform_factory(**env)
        b = PlatformProc(tmp_path / "data1", env)
        (tmp_path / "data1").mkdir()
        (tmp_path / "data1" / "admin-key").write_text(a.admin_key + "\n")
        b.port, b.url = a.port, a.url  # the same port
        b.http.close()
        b.http = a.http
        try:
            b.start()
            pids: set[int] = set()

            def both_answer() -> bool:
                status, _, body = _fresh_get(a.port, "/healthz")
                assert status == 200
                pids.add(int(json.loads(body)["pid"]))
                return pids == {a.pid, b.pid}

            wait_for(both_answer, timeout=30, interval=0.0, message="both gateways answering")
            # imported once per gateway (by its zygote): the token tells the gateways apart
            a.deploy(make_fn("shared", """
                import os

                TOKEN = os.urandom(8).hex()

                def handler(event, context):
                    return TOKEN
            """))
            served: set[bytes] = set()

            def both_serve() -> bool:
                status, _, body = _fresh_get(a.port, "/fn/shared")
                if status == 404:  # the other gateway has not read the deploy yet
                    return False
                assert status == 200 and len(body) == 16, (status, body)
                served.add(body)
                return len(served) == 2

            wait_for(both_serve, timeout=30, interval=0.0, message="both gateways serving")
        finally:
            b.close()
            a.close()


def test_reuse_port_refuses_a_store_of_its_own(tmp_path: Path) -> None:
    """SQLite is one process's store: two gateways on one port would serve different functions."""
    port = free_port()
    result = subprocess.run(
        [SQUALL, "up", "--reuse-port", "--port", str(port), "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "SQUALL_S3_PORT": "0"})
    assert result.returncode == 1, result.stderr
    assert "[reuse_port_needs_shared_store]" in result.stderr
    assert "--store postgresql://" in result.stderr
