"""Streaming responses end to end: generators (sync and async) sent chunk by chunk through the
real gateway, Server-Sent Events, the time limit and the billing over the whole stream."""

from __future__ import annotations

import base64
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PlatformProc, wait_for

ROOT = Path(__file__).resolve().parent.parent


class Gate:
    """A loopback HTTP server a function calls to wait until the test lets it go on: the
    function's request blocks (server side) until ``open()``, or ``HOLD_S`` as a safety net."""

    HOLD_S = 30.0

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.released = threading.Event()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                gate.arrived.set()
                opened = gate.released.wait(gate.HOLD_S)
                body = b"open" if opened else b"expired"
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def open(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.close()


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformProc]:
    p = PlatformProc(tmp_path_factory.mktemp("streaming") / "data", {})
    p.start()
    yield p
    p.close()


def deploy(p: PlatformProc, tmp: Path, name: str, code: str, toml: str = "") -> None:
    d = tmp / name
    d.mkdir()
    (d / "handler.py").write_text(textwrap.dedent(code))
    (d / "squall.toml").write_text(f'name = "{name}"\n' + textwrap.dedent(toml))
    p.deploy(d)


def history(p: PlatformProc, name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = p.http.get(
        f"/api/v1/functions/{name}/invocations/history").json()["invocations"]
    return rows


def logs(p: PlatformProc, name: str) -> str:
    lines = p.http.get(f"/api/v1/functions/{name}/logs").json()["lines"]
    return "\n".join(row["line"] for row in lines)


GATED = """
    import urllib.request

    def handler(event, context):
        gate = event["queryStringParameters"]["gate"]

        def body():
            yield "first\\n"
            answer = urllib.request.urlopen(gate, timeout=60).read().decode()
            yield f"second after {answer}\\n"

        return {"statusCode": 201, "headers": {"content-type": "text/plain", "x-mine": "1"},
                "cookies": ["a=1", "b=2"], "body": body()}
"""


def test_generator_chunks_reach_the_client_while_the_function_runs(
        plat: PlatformProc, tmp_path: Path, gate: Gate) -> None:
    deploy(plat, tmp_path, "gated", GATED)
    with plat.http.stream("GET", "/fn/gated", params={"gate": gate.url}) as resp:
        assert resp.status_code == 201
        assert resp.headers["transfer-encoding"] == "chunked"
        assert resp.headers["content-type"] == "text/plain"
        assert resp.headers["x-mine"] == "1"
        assert resp.headers.get_list("set-cookie") == ["a=1", "b=2"]
        assert resp.headers["x-squall-executed-version"] == "1"
        chunks = resp.iter_bytes()
        assert next(chunks) == b"first\n"
        # The function has not finished: it is waiting at the gate, its instance busy.
        assert gate.arrived.wait(30) and not gate.released.is_set()
        assert [i["state"] for i in plat.instances("gated")] == ["busy"]
        gate.open()
        assert b"".join(chunks) == b"second after open\n"
    row = wait_for(lambda: history(plat, "gated"), message="the usage record")[0]
    assert row["status"] == "succeeded"


def test_server_sent_events_arrive_one_by_one(plat: PlatformProc) -> None:
    plat.deploy(ROOT / "examples" / "streaming")
    events: list[str] = []
    with plat.http.stream("GET", "/fn/ticker", params={"n": "3", "every": "0.01"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(line)
    assert len(events) == 3
    assert [e.count('"i": ') for e in events] == [1, 1, 1]
    assert '"i": 2' in events[2]


def test_async_generator_and_bare_generator_defaults(plat: PlatformProc, tmp_path: Path) -> None:
    deploy(plat, tmp_path, "agen", """
        import asyncio

        async def handler(event, context):
            for item in ("text ", b"bytes ", {"json": True}):
                await asyncio.sleep(0)
                yield item
    """, "concurrency = 4\n")
    resp = plat.http.get("/fn/agen")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/octet-stream"  # Lambda's default
    assert resp.content == b'text bytes {"json": true}\n'
    # Without an HTTP client to stream to (the invoke API), the stream is gathered into the
    # Lambda response dict a non-streaming handler would have returned.
    api = plat.invoke("agen", {})
    assert api.status_code == 200
    assert api.json() == {"statusCode": 200,
                          "headers": {"content-type": "application/octet-stream"},
                          "body": base64.b64encode(b'text bytes {"json": true}\n').decode(),
                          "isBase64Encoded": True}


def test_failure_before_the_first_chunk_is_an_ordinary_500(
        plat: PlatformProc, tmp_path: Path) -> None:
    deploy(plat, tmp_path, "early", """
        def handler(event, context):
            def body():
                raise ValueError("no data")
                yield "never"
            return body()
    """)
    resp = plat.http.get("/fn/early")
    assert resp.status_code == 500
    assert resp.headers["x-squall-function-error"] == "Unhandled"
    assert resp.json()["errorType"] == "ValueError"
    # The trace is the function's own, as on Lambda: no frame of the runtime's stream pump.
    assert [f.split(",")[0].rsplit("/", 1)[-1] for f in resp.json()["stackTrace"]] == [
        'handler.py"']


def test_failure_mid_stream_cuts_it_and_logs_the_traceback(
        plat: PlatformProc, tmp_path: Path) -> None:
    deploy(plat, tmp_path, "midway", """
        def handler(event, context):
            yield "partial\\n"
            raise ValueError("lost the feed")
    """)
    got = b""
    with plat.http.stream("GET", "/fn/midway") as resp:
        assert resp.status_code == 200  # already sent when the function failed
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in resp.iter_bytes():
                got += chunk
    assert got == b"partial\n"
    row = wait_for(lambda: history(plat, "midway"), message="the usage record")[0]
    assert (row["status"], row["error_type"]) == ("failed", "ValueError")
    assert "ValueError: lost the feed" in wait_for(
        lambda: "REPORT" in logs(plat, "midway") and logs(plat, "midway"),
        message="the REPORT line")


def test_time_limit_cuts_the_stream_and_billing_covers_it(
        plat: PlatformProc, tmp_path: Path) -> None:
    deploy(plat, tmp_path, "endless", """
        import time

        def handler(event, context):
            def body():
                i = 0
                while True:
                    yield f"data: {i}\\n\\n"
                    i += 1
                    time.sleep(0.05)
            return {"statusCode": 200, "headers": {"content-type": "text/event-stream"},
                    "body": body()}
    """, "timeout_s = 1\n")
    got = b""
    with plat.http.stream("GET", "/fn/endless") as resp:
        assert resp.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):  # cut, not a complete chunked body
            for chunk in resp.iter_bytes():
                got += chunk
    assert got.startswith(b"data: 0\n\ndata: 1\n\n")
    row = wait_for(lambda: history(plat, "endless"), message="the usage record")[0]
    assert row["status"] == "timeout"
    # Billed up to the cut (the 1 s limit), not just to the first chunk; the event loop's
    # timer and the run's clock can differ by a fraction of a millisecond, hence 900.
    assert row["run_ms"] >= 900 and row["billed_ms"] >= 900
    assert "TimeoutError" in wait_for(lambda: "REPORT" in logs(plat, "endless")
                                      and logs(plat, "endless"), message="the REPORT line")


def test_client_leaving_stops_the_function(plat: PlatformProc, tmp_path: Path) -> None:
    deploy(plat, tmp_path, "chatty", """
        import time

        def handler(event, context):
            def body():
                while True:
                    yield "tick\\n"
                    time.sleep(0.02)
            return body()
    """, "timeout_s = 60\n")
    with plat.http.stream("GET", "/fn/chatty") as resp:
        assert next(resp.iter_bytes()).startswith(b"tick")
    # Long before its 60 s limit, the invocation ends and is recorded as such.
    row = wait_for(lambda: history(plat, "chatty"), timeout=20, message="the usage record")[0]
    assert row["error_type"] == "ClientDisconnected"


def test_lambda_dict_response_is_unchanged(plat: PlatformProc, tmp_path: Path) -> None:
    deploy(plat, tmp_path, "plain", """
        def handler(event, context):
            return {"statusCode": 202, "headers": {"x-a": "b"}, "body": {"k": [1, 2]}}
    """)
    resp = plat.http.get("/fn/plain")
    assert resp.status_code == 202 and resp.json() == {"k": [1, 2]}
    assert resp.headers["x-a"] == "b" and resp.headers["content-type"] == "application/json"
    assert plat.invoke("plain", {}).json() == {"statusCode": 202, "headers": {"x-a": "b"},
                                               "body": {"k": [1, 2]}}
