"""End to end through the real server and CLI: deploy, invoke, instances, failures, persistence."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PlatformProc, wait_for

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello"


def test_deploy_and_invoke_hello_via_cli_and_http(platform: PlatformProc) -> None:
    out = platform.cli("deploy", str(HELLO))
    assert "Deployed hello version 1" in out.stdout
    assert "importing handler" in out.stderr  # progress shown while deploying
    resp = platform.http.get("/fn/hello", params={"name": "squall"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["message"] == "hello, squall"
    assert body["request_id"] == resp.headers["x-squall-request-id"]
    # identical content: no new version
    again = platform.cli("deploy", str(HELLO))
    assert "No change" in again.stdout
    listing = json.loads(platform.cli("ls", "--json").stdout)
    assert [(f["name"], f["version"]) for f in listing] == [("hello", 1)]
    result = json.loads(platform.cli("invoke", "hello", "--data", "{}").stdout)
    assert result["message"] == "hello, world"


def test_api_gateway_v2_event_and_response_mapping(
        platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    fn = make_fn("echo", """
        import base64
        def handler(event, context):
            if event["rawPath"].endswith("/full"):
                return {"statusCode": 418, "headers": {"x-kind": "teapot"},
                        "cookies": ["a=1", "b=2"], "body": "short and stout"}
            if event["rawPath"].endswith("/bin"):
                return {"statusCode": 200, "headers": {"content-type": "image/png"},
                        "isBase64Encoded": True, "body": base64.b64encode(b"\\x89PNG").decode()}
            return {"event": event, "ctx": [context.function_name, context.function_version,
                    context.memory_limit_in_mb, context.invoked_function_arn,
                    context.get_remaining_time_in_millis() > 0]}
    """)
    platform.deploy(fn)
    resp = platform.http.post("/fn/echo/a/b?x=1&x=2&y=", content=b"\x00\x01binary",
                              headers={"content-type": "application/octet-stream",
                                       "cookie": "c1=v1; c2=v2", "user-agent": "t/1"})
    assert resp.status_code == 200
    ev = resp.json()["event"]
    assert ev["version"] == "2.0" and ev["routeKey"] == "$default"
    assert ev["rawPath"] == "/fn/echo/a/b" and ev["rawQueryString"] == "x=1&x=2&y="
    assert ev["queryStringParameters"] == {"x": "1,2", "y": ""}
    assert ev["cookies"] == ["c1=v1", "c2=v2"]
    assert ev["requestContext"]["http"]["method"] == "POST"
    assert ev["requestContext"]["http"]["path"] == "/a/b"
    assert ev["requestContext"]["http"]["sourceIp"] == "127.0.0.1"
    assert ev["requestContext"]["http"]["userAgent"] == "t/1"
    assert ev["requestContext"]["requestId"] == resp.headers["x-squall-request-id"]
    assert ev["isBase64Encoded"] is True and ev["body"] == "AAFiaW5hcnk="
    assert resp.json()["ctx"] == ["echo", "1", 128, "arn:squall:lambda:local:default:function:echo",
                                  True]
    full = platform.http.get("/fn/echo/full")
    assert full.status_code == 418 and full.text == "short and stout"
    assert full.headers["x-kind"] == "teapot"
    assert full.headers.get_list("set-cookie") == ["a=1", "b=2"]
    binary = platform.http.get("/fn/echo/bin")
    assert binary.content == b"\x89PNG" and binary.headers["content-type"] == "image/png"


def test_cold_then_warm_and_concurrency_makes_instances(
        platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    fn = make_fn("slow", """
        import os, time
        def handler(event, context):
            time.sleep(event.get("sleep", 0))
            return os.getpid()
    """)
    platform.deploy(fn)
    first = platform.invoke("slow")
    second = platform.invoke("slow")
    assert first.json() == second.json()  # the warm instance was reused
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        pids = set(pool.map(lambda _: platform.invoke("slow", {"sleep": 0.5}).json(), range(6)))
    assert len(pids) >= 2  # concurrent requests got more instances
    assert len(platform.instances("slow")) >= len(pids)


def test_max_instances_gives_429_with_retry_after(
        platform_factory: Callable[..., PlatformProc], make_fn: Callable[..., Path]) -> None:
    platform = platform_factory(SQUALL_QUEUE_WAIT_S="0.2")
    fn = make_fn("one", """
        import time
        def handler(event, context):
            time.sleep(event.get("sleep", 0))
            return "done"
    """, toml="max_instances = 1\n")
    platform.deploy(fn)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        busy = pool.submit(platform.invoke, "one", {"sleep": 3})
        wait_for(lambda: any(i["state"] == "busy" for i in platform.instances("one")),
                 message="the only instance to be busy")
        rejected = platform.invoke("one", {})
        assert rejected.status_code == 429
        assert rejected.headers["retry-after"] == "1"
        assert rejected.json()["error"]["code"] == "too_many_requests"
        assert busy.result().json() == "done"


def test_exception_timeout_and_crash(platform: PlatformProc) -> None:
    platform.deploy(ROOT / "examples" / "fails")
    exc = platform.http.get("/fn/fails")
    assert exc.status_code == 500
    assert exc.headers["x-squall-function-error"] == "Unhandled"
    err = exc.json()
    assert err["errorType"] == "PaymentDeclined"
    assert err["errorMessage"] == "card 4242 was declined"
    assert any("handler.py" in frame for frame in err["stackTrace"])
    api = platform.invoke("fails", {})
    assert api.status_code == 200 and api.headers["x-squall-function-error"] == "Unhandled"
    timeout = platform.http.get("/fn/fails", params={"mode": "timeout"})
    assert timeout.status_code == 504
    assert timeout.json()["errorType"] == "TimeoutError"
    crash = platform.http.get("/fn/fails", params={"mode": "crash"})
    assert crash.status_code == 500
    assert crash.json()["errorType"] == "Runtime.ExitError"
    # the platform keeps serving and the next request gets a fresh instance
    assert platform.http.get("/fn/fails").json()["errorType"] == "PaymentDeclined"
    platform.deploy(HELLO)
    assert platform.http.get("/fn/hello").status_code == 200


def test_logs_are_captured_per_request_with_report_lines(
        platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    fn = make_fn("chatty", """
        import logging, sys
        def handler(event, context):
            print("to stdout", event["n"])
            print("to stderr", file=sys.stderr)
            logging.getLogger("app").warning("via logging")
            context.log("via context")
            return event["n"]
    """)
    platform.deploy(fn)
    rids = [platform.invoke("chatty", {"n": i}).headers["x-squall-request-id"] for i in range(2)]
    out = platform.cli("logs", "chatty", "--request-id", rids[1], "--json").stdout
    lines = [json.loads(x) for x in out.splitlines()]
    assert {ln["request_id"] for ln in lines} == {rids[1]}
    text = [ln["line"] for ln in lines]
    assert text[0].startswith(f"START RequestId: {rids[1]}")
    assert "to stdout 1" in text and "to stderr" in text and "via context" in text
    assert any("via logging" in t and "[WARNING]" in t for t in text)
    assert text[-2] == f"END RequestId: {rids[1]}"
    assert text[-1].startswith(f"REPORT RequestId: {rids[1]}")
    assert "Billed Duration:" in text[-1] and "Memory Size: 128 MB" in text[-1]
    first = platform.cli("logs", "chatty", "--request-id", rids[0], "--json").stdout
    assert "Init Duration" in first  # the cold start reports its init time
    assert "Init Duration" not in out


def test_usage_arithmetic(platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    fn = make_fn("metered", """
        import time
        def handler(event, context):
            time.sleep(0.05)
            if event.get("fail"):
                raise ValueError("no")
            return 1
    """, toml="memory_mb = 512\n")
    platform.deploy(fn)
    for i in range(4):
        platform.invoke("metered", {"fail": i == 3})
    data = json.loads(platform.cli("usage", "--json").stdout)
    row = next(r for r in data if r["name"] == "metered")
    assert row["invocations"] == 4 and row["errors"] == 1 and row["cold_starts"] == 1
    # every invocation slept 50 ms: billed >= 50 ms each; GB-s = billed/1000 * 512/1024
    assert row["p50_ms"] >= 50
    raw = platform.http.get("/api/v1/usage").json()["functions"]
    billed = next(r for r in raw if r["name"] == "metered")["billed_ms"]
    assert billed >= 200
    assert row["gb_seconds"] == pytest.approx(billed / 1000 * 0.5, rel=1e-6)
    expected_cost = 4 / 1e6 * 0.20 + row["gb_seconds"] * 0.0000166667
    assert row["cost"] == pytest.approx(expected_cost, rel=1e-6)


def test_functions_survive_restart_and_sigterm_exits_zero(
        platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    platform.deploy(HELLO)
    fn = make_fn("second", "def handler(e, c):\n    return 2\n")
    platform.deploy(fn)
    platform.deploy(make_fn("second", "def handler(e, c):\n    return 3\n"))
    assert platform.stop() == 0
    platform.start()
    names = {f["name"]: f["version"] for f in platform.http.get("/api/v1/functions").json()[
        "functions"]}
    assert names == {"hello": 1, "second": 2}
    assert platform.invoke("second").json() == 3
    assert platform.invoke("second", params={"qualifier": "1"}).json() == 2
    versions = json.loads(platform.cli("versions", "second", "--json").stdout)
    assert [v["version"] for v in versions["versions"]] == [1, 2]


def test_scale_to_zero_after_keep_alive(platform: PlatformProc,
                                        make_fn: Callable[..., Path]) -> None:
    fn = make_fn("brief", "def handler(e, c):\n    return 1\n", toml="keep_alive_s = 1\n")
    platform.deploy(fn)
    platform.invoke("brief")
    assert len(platform.instances("brief")) == 1
    wait_for(lambda: platform.instances("brief") == [], timeout=10,
             message="the idle instance to be reaped")
    # zero processes left but the next request still works (a cold start from the zygote)
    resp = platform.http.get("/fn/brief")
    assert resp.status_code == 200 and resp.headers["x-squall-cold-start"] == "1"


def test_scale_by_hand(platform: PlatformProc) -> None:
    platform.deploy(HELLO)
    platform.cli("scale", "hello", "--min", "2")
    assert len(platform.instances("hello")) == 2
    platform.cli("scale", "hello", "--to", "0")
    wait_for(lambda: platform.instances("hello") == [], message="scale to zero")
    assert platform.http.get("/fn/hello").headers["x-squall-cold-start"] == "1"


def test_rm_removes_function(platform: PlatformProc) -> None:
    platform.deploy(HELLO)
    platform.cli("rm", "hello")
    resp = platform.http.get("/fn/hello")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "function_not_found"
    failed = platform.cli("describe", "hello", check=False)
    assert failed.returncode != 0 and "function_not_found" in failed.stderr


def test_logs_follow_prints_new_lines(platform: PlatformProc) -> None:
    import os
    import selectors
    import subprocess
    import time

    from tests.conftest import SQUALL

    platform.deploy(HELLO)
    follower = subprocess.Popen([SQUALL, "--url", platform.url, "logs", "hello", "--follow"],
                                stdout=subprocess.PIPE, env=platform.env)
    try:
        rid = platform.invoke("hello").headers["x-squall-request-id"]
        assert follower.stdout is not None
        fd = follower.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        seen = ""
        deadline = time.monotonic() + 15
        while f"REPORT RequestId: {rid}" not in seen:
            assert time.monotonic() < deadline, f"no REPORT line for {rid} in:\n{seen}"
            if sel.select(timeout=0.5):  # raw reads: a buffered reader would hide lines
                seen += os.read(fd, 65536).decode()
    finally:
        follower.terminate()
        follower.wait(10)


def test_second_platform_on_the_same_data_dir_is_refused(platform: PlatformProc) -> None:
    import subprocess

    from tests.conftest import SQUALL, free_port

    out = subprocess.run([SQUALL, "up", "--port", str(free_port()), "--data-dir",
                          str(platform.data_dir)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "data_dir_locked" in out.stderr
    assert platform.http.get("/healthz").status_code == 200
