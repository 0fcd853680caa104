"""End to end: async invocation through the real server and CLI - 202, retries, dead letters,
redrive, idempotency, bad input, kill -9 durability, triggers API.

Attempt counting: every attempt of an async event carries the event's id as
``context.aws_request_id``; the test functions keep a per-instance dict of attempts keyed by it
(max_instances = 1, so every attempt reaches the same warm instance). The platform's own count is
checked through GET /api/v1/invocations/{id}.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PlatformProc = Any  # the `platform` fixture's object (tests/conftest.py)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0,
             message: str = "condition") -> Any:
    """Poll on state with a deadline (conftest's helper is not importable as a module)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.02)
    return value

ASYNC = {"X-Squall-Invocation-Type": "Event"}
FINAL = ("succeeded", "dead_lettered")

FLAKY = """
seen = {}

def handler(event, context):
    n = seen[context.aws_request_id] = seen.get(context.aws_request_id, 0) + 1
    if n <= event.get("fail_times", 0):
        raise RuntimeError(f"planned failure {n}")
    return {"attempt": n, "echo": event.get("x")}
"""
FAST_RETRIES = """
max_instances = 1
[async]
max_retries = 2
"""


def submit(p: PlatformProc, name: str, event: Any, **headers: str) -> str:
    r = p.http.post(f"/api/v1/functions/{name}/invocations", json=event,
                    headers={**ASYNC, **headers})
    assert r.status_code == 202, r.text
    rid: str = r.json()["request_id"]
    assert r.headers["x-squall-request-id"] == rid
    return rid


def status(p: PlatformProc, rid: str) -> dict[str, Any]:
    r = p.http.get(f"/api/v1/invocations/{rid}")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def final(p: PlatformProc, rid: str, timeout: float = 30) -> dict[str, Any]:
    out: dict[str, Any] = wait_for(lambda: (s := status(p, rid))["status"] in FINAL and s,
                                   timeout=timeout, message=f"invocation {rid} to finish")
    return out


def test_async_retry_dead_letter_redrive(platform: PlatformProc,
                                         make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("flaky", FLAKY, FAST_RETRIES))

    ok = submit(platform, "flaky", {"x": 1})
    retried = submit(platform, "flaky", {"x": 2, "fail_times": 2})
    doomed = submit(platform, "flaky", {"x": 3, "fail_times": 99})

    s = final(platform, ok)
    assert (s["status"], s["attempts"], s["result"]) == ("succeeded", 1, {"attempt": 1, "echo": 1})
    s = final(platform, retried)
    assert (s["status"], s["attempts"], s["result"]["attempt"]) == ("succeeded", 3, 3)
    s = final(platform, doomed)
    assert (s["status"], s["attempts"]) == ("dead_lettered", 3)
    assert s["error"]["errorType"] == "RuntimeError"
    assert "planned failure 3" in s["error"]["errorMessage"]

    letters = platform.http.get("/api/v1/dlq", params={"function": "flaky"}).json()["dead_letters"]
    assert [d["request_id"] for d in letters] == [doomed]
    dl = platform.http.get(f"/api/v1/dlq/{letters[0]['id']}").json()
    assert dl["event"] == {"x": 3, "fail_times": 99} and dl["attempts"] == 3

    # The CLI sees the same; redrive runs it again with a fresh retry budget (and fails again).
    out = platform.cli("dlq", "ls", "--function", "flaky").stdout
    assert letters[0]["id"] in out and "RuntimeError" in out
    out = platform.cli("invocation", doomed).stdout
    assert "dead_lettered" in out and "planned failure" in out
    red = json.loads(platform.cli("dlq", "redrive", letters[0]["id"], "--json").stdout)
    new_id = red[0]["redrive_request_id"]
    s = final(platform, new_id)
    assert (s["status"], s["attempts"]) == ("dead_lettered", 3)
    again = platform.http.get("/api/v1/dlq", params={"function": "flaky"}).json()["dead_letters"]
    assert [d["request_id"] for d in again] == [new_id]  # the redriven one left the list

    logs = platform.http.get("/api/v1/functions/flaky/logs").text
    assert "retrying in" in logs and "dead-lettered" in logs


def test_async_bad_input_and_idempotency(platform: PlatformProc,
                                         make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("echo", FLAKY, FAST_RETRIES))
    r = platform.http.post("/api/v1/functions/nope/invocations", json={}, headers=ASYNC)
    assert r.status_code == 404 and r.json()["error"]["code"] == "function_not_found"
    r = platform.http.post("/api/v1/functions/echo/invocations", content=b"{not json",
                           headers=ASYNC)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    big = {"x": "a" * (256 * 1024)}
    r = platform.http.post("/api/v1/functions/echo/invocations", json=big, headers=ASYNC)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    key = {"X-Squall-Idempotency-Key": "order-42"}
    first = submit(platform, "echo", {"x": "a"}, **key)
    second = submit(platform, "echo", {"x": "b"}, **key)
    assert first == second
    assert final(platform, first)["result"]["echo"] == "a"
    listed = platform.http.get("/api/v1/invocations", params={"function": "echo"}).json()
    assert [i["request_id"] for i in listed["invocations"]] == [first]

    r = platform.http.get("/api/v1/invocations/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404 and r.json()["error"]["code"] == "invocation_not_found"
    sync = platform.invoke("echo", {"x": "sync"})
    assert sync.status_code == 200
    sync_id = sync.headers["x-squall-request-id"]
    # From the invocation records, which the recorder writes in batches: poll.
    r = wait_for(lambda: (r := platform.http.get(f"/api/v1/invocations/{sync_id}"))
                 .status_code == 200 and r, message="the sync invocation record")
    assert r.json()["async"] is False and r.json()["request_id"] == sync_id


def test_destination_function(platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("sink", "def handler(event, context):\n    return event\n"))
    platform.deploy(make_fn("src", FLAKY, """
        max_instances = 1
        [async]
        max_retries = 0
        on_success = "function:sink"
        on_failure = "function:sink"
    """))
    ok = submit(platform, "src", {"x": 7})
    bad = submit(platform, "src", {"fail_times": 1})
    final(platform, ok)
    final(platform, bad)

    def sink_results() -> list[dict[str, Any]]:
        rows = platform.http.get("/api/v1/invocations", params={"function": "sink"}).json()
        done = [i for i in rows["invocations"] if i["status"] == "succeeded"]
        return [i["result"] for i in done] if len(done) == 2 else []

    got = {r["request_id"]: r for r in wait_for(sink_results, message="destination events")}
    assert got[ok]["status"] == "succeeded" and got[ok]["result"]["echo"] == 7
    assert got[bad]["status"] == "dead_lettered" and got[bad]["attempts"] == 1
    assert got[bad]["error"]["errorType"] == "RuntimeError"


def test_kill9_durability(platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("slow", """
        import time
        def handler(event, context):
            time.sleep(0.2)
            return event["i"]
    """, "max_instances = 2\n"))
    ids = [submit(platform, "slow", {"i": i}) for i in range(30)]
    # Wait until some are running (in flight) while most are queued, then kill -9.
    wait_for(lambda: status(platform, ids[0])["status"] != "queued", message="first delivery")
    platform.kill9()
    platform.start()
    results = {rid: final(platform, rid, timeout=60) for rid in ids}
    assert all(s["status"] == "succeeded" for s in results.values())
    assert sorted(s["result"] for s in results.values()) == list(range(30))


def test_triggers_api_and_cli(platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("tfn", FLAKY))
    base = "/api/v1/functions/tfn/triggers"
    r = platform.http.post(base, json={"type": "carrier-pigeon", "config": {}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_trigger_type"
    r = platform.http.post(base, json={"type": "schedule", "config": {"cron": "61 * * * *"}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_schedule"
    r = platform.http.post(base, json={"type": "schedule", "config": {"rate": "rate(0 hours)"}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_schedule"
    r = platform.http.post("/api/v1/functions/ghost/triggers",
                           json={"type": "schedule", "config": {"rate": "rate(1 day)"}})
    assert r.status_code == 404

    platform.cli("trigger", "add", "tfn", "--type", "schedule", "--set", "rate=rate(1 day)")
    platform.cli("trigger", "add", "tfn", "-t", "webhook", "-c", '{"secret": "s3cret"}')
    listed = platform.http.get(base).json()["triggers"]
    assert sorted((t["name"], t["type"]) for t in listed) == [("schedule-1", "schedule"),
                                                              ("tfn", "webhook")]
    hook = next(t for t in listed if t["type"] == "webhook")
    assert hook["config"]["secret"] == "***" and hook["origin"] == "api"
    out = platform.cli("trigger", "ls").stdout
    assert "schedule-1" in out and "running" in out
    platform.cli("trigger", "rm", "tfn", "schedule-1")
    assert [t["name"] for t in platform.http.get("/api/v1/triggers").json()["triggers"]] == ["tfn"]
    r = platform.http.delete(f"{base}/schedule-1")
    assert r.status_code == 404 and r.json()["error"]["code"] == "trigger_not_found"

    # Triggers declared in squall.toml follow deploys: added, changed, removed.
    fn = make_fn("tfn", FLAKY, """
        [[triggers]]
        type = "schedule"
        name = "nightly"
        cron = "0 3 * * *"
        timezone = "Europe/Paris"
    """)
    platform.deploy(fn)
    names = {t["name"]: t for t in platform.http.get(base).json()["triggers"]}
    assert names["nightly"]["origin"] == "toml"
    assert names["nightly"]["config"]["cron"] == "0 3 * * *"
    (fn / "squall.toml").write_text("memory_mb = 256\n")
    platform.deploy(fn)
    assert [t["name"] for t in platform.http.get(base).json()["triggers"]] == ["tfn"]
    platform.http.delete("/api/v1/functions/tfn")
    assert platform.http.get("/api/v1/triggers").json()["triggers"] == []


def test_connector_triggers_managed(platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    """The trigger manager runs connectors: Redis Streams delivers (and dead-letters what always
    fails); an unreachable broker only shows as an error status, the platform keeps serving."""
    import socket
    import uuid

    import pytest
    import redis

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
    except OSError:
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    platform.deploy(make_fn("consumer", """
        def handler(event, context):
            if event["data"].get("poison"):
                raise ValueError("poison message")
            print("got", event["data"]["n"])  # stream entry fields arrive as strings
            return int(event["data"]["n"])
    """, "[async]\nmax_retries = 1\n"))
    stream = f"squall-test-{uuid.uuid4().hex[:8]}"
    r = platform.http.post("/api/v1/functions/consumer/triggers",
                           json={"type": "redis", "config": {"stream": stream, "start": "0"}})
    assert r.status_code == 201, r.text
    bad = platform.http.post("/api/v1/functions/consumer/triggers", json={
        "type": "amqp", "name": "nowhere",
        "config": {"url": "amqp://guest:guest@127.0.0.1:1/", "queue": "q"}})
    assert bad.status_code == 201, bad.text  # created; the status tells what is wrong

    client = redis.Redis()
    try:
        for n in range(3):
            client.xadd(stream, {"n": str(n)})
        client.xadd(stream, {"poison": "yes"})

        def logs() -> str:
            text: str = platform.http.get("/api/v1/functions/consumer/logs").text
            return text if all(f"got {n}" in text for n in range(3)) else ""

        wait_for(logs, timeout=30, message="three redis messages")
        letters = wait_for(lambda: platform.http.get(
            "/api/v1/dlq", params={"function": "consumer"}).json()["dead_letters"],
            timeout=30, message="the poison message in the dead letters")
        assert letters[0]["trigger"] == "redis" and letters[0]["attempts"] == 2
        assert letters[0]["error"]["errorMessage"] == "poison message"
        assert letters[0]["event"]["data"] == {"poison": "yes"}

        def status(name: str) -> dict[str, Any]:
            ts = platform.http.get("/api/v1/functions/consumer/triggers").json()["triggers"]
            st: dict[str, Any] = next(t for t in ts if t["name"] == name)["status"]
            return st

        assert status("redis-1")["state"] == "running"
        assert status("redis-1")["last_error"] is not None
        wait_for(lambda: status("nowhere")["state"] == "error", timeout=30,
                 message="the amqp trigger's error status")
        assert "error" in platform.cli("trigger", "ls", "consumer").stdout
        assert platform.invoke("consumer", {"data": {"n": "9"}}).json() == 9  # still serving
    finally:
        client.delete(stream)
        client.close()


def test_destination_url(platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    import http.server
    import threading

    received: list[dict[str, Any]] = []

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        platform.deploy(make_fn("tourl", FLAKY, f"""
            max_instances = 1
            [async]
            max_retries = 0
            on_success = "{url}"
            on_failure = "{url}"
        """))
        ok = submit(platform, "tourl", {"x": "hi"})
        bad = submit(platform, "tourl", {"fail_times": 5})
        wait_for(lambda: len(received) == 2, message="two destination POSTs")
        got = {r["request_id"]: r for r in received}
        assert got[ok] == {"request_id": ok, "function": "tourl", "status": "succeeded",
                           "attempts": 1, "result": {"attempt": 1, "echo": "hi"}}
        assert got[bad]["status"] == "dead_lettered" and "result" not in got[bad]
        assert got[bad]["error"]["errorMessage"] == "planned failure 1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
