"""The warm invocation path through the real server, at the byte level: whole responses leave
with a Content-Length (head and body in one write), on keep-alive and closing connections
alike; large results and many log lines cross the instance channel intact; a full pool serves
its waiters; a time limit still cuts an invocation."""

from __future__ import annotations

import concurrent.futures
import socket
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import PlatformProc

SHAPES = """
    import time
    def handler(event, context):
        path = event["rawPath"]
        if path.endswith("/nocontent"):
            return {"statusCode": 204}
        if path.endswith("/own-length"):
            return {"statusCode": 200, "headers": {"Content-Length": "5"}, "body": "hello"}
        if path.endswith("/big"):
            print("line\\n" * 2000, end="")
            return {"statusCode": 200, "body": "x" * 3_000_000}
        if path.endswith("/fail"):
            raise ValueError("no")
        if path.endswith("/slow"):
            time.sleep(float(event["queryStringParameters"]["s"]))
            return {"slept": True}
        return {"message": "hello"}
"""


def _raw(port: int, request: bytes) -> bytes:
    """Send one raw request and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_whole_responses_have_a_length_on_kept_and_closed_connections(
        platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("shapes", SHAPES))
    with httpx.Client(base_url=platform.url, timeout=60) as client:  # one kept-alive connection
        for _ in range(3):
            r = client.get("/fn/shapes")
            assert r.status_code == 200 and r.json() == {"message": "hello"}
            assert r.headers["content-length"] == str(len(r.content))
            assert "transfer-encoding" not in r.headers
        r = client.get("/fn/shapes/own-length")  # the function's own length is not doubled
        assert r.text == "hello" and r.headers.get_list("content-length") == ["5"]
        r = client.get("/fn/shapes/nocontent")
        assert r.status_code == 204 and "content-length" not in r.headers and r.content == b""
        r = client.get("/fn/shapes/fail")
        assert r.status_code == 500 and r.json()["errorType"] == "ValueError"
        assert r.headers["content-length"] == str(len(r.content))
        r = client.get("/fn/missing")
        assert r.status_code == 404 and r.headers["content-length"] == str(len(r.content))
        r = client.head("/fn/shapes")
        assert r.status_code == 200 and r.content == b""
        assert client.get("/fn/shapes").json() == {"message": "hello"}  # still in step
    # a client that asks to close gets the whole response before the close
    raw = _raw(platform.port, b"GET /fn/shapes HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 20" in head.lower()
    assert body == b'{"message": "hello"}'
    raw = _raw(platform.port, b"GET /fn/missing HTTP/1.0\r\nHost: t\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 404") and raw.endswith(b"}")


def test_large_results_and_many_log_lines_cross_the_channel_intact(
        platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("shapes", SHAPES))
    for _ in range(2):
        r = platform.http.get("/fn/shapes/big", timeout=60)
        assert r.status_code == 200 and r.content == b"x" * 3_000_000
        rid = r.headers["x-squall-request-id"]
    logs = platform.http.get("/api/v1/functions/shapes/logs",
                             params={"request_id": rid, "limit": 5000}).json()["lines"]
    text = [line["line"] for line in logs]
    assert text.count("line") == 2000
    assert text[0].startswith("START") and text[-1].startswith("REPORT")


def test_a_full_pool_serves_its_waiters_and_a_time_limit_still_cuts(
        platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("shapes", SHAPES, toml="""
        name = "shapes"
        max_instances = 2
        timeout_s = 1
    """))

    def call(s: float) -> int:
        return platform.http.get("/fn/shapes/slow", params={"s": s}, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(call, [0.2] * 8)) == [200] * 8  # 8 requests, 2 instances
    assert len(platform.instances("shapes")) <= 2
    r = platform.http.get("/fn/shapes/slow", params={"s": 5}, timeout=60)
    assert r.status_code == 504 and r.json()["errorType"] == "TimeoutError"
    assert call(0) == 200  # a new instance takes the killed one's place


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


class _Cycle:
    """What ``head_with_body`` relies on in uvicorn's request cycle: ``send`` is its bound
    method and it writes each message to ``self.transport`` at once, as uvicorn does."""

    def __init__(self) -> None:
        self.transport = _Transport()

    async def send(self, message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            self.transport.write(b"HEAD\r\n\r\n")
        else:
            self.transport.write(bytes(message.get("body", b"")))  # type: ignore[arg-type]


async def test_api_responses_leave_with_head_and_first_body_chunk_in_one_write() -> None:
    from squall.gateway.app import head_with_body

    cycle = _Cycle()
    send = head_with_body(cycle.send)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    assert cycle.transport.writes == []  # held until the body
    await send({"type": "http.response.body", "body": b"first", "more_body": True})
    await send({"type": "http.response.body", "body": b"second"})
    assert cycle.transport.writes == [b"HEAD\r\n\r\nfirst", b"second"]
    assert isinstance(cycle.transport, _Transport)  # the real transport is back in place
