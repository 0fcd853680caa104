"""Rough edges of issue 13: an oversized body is answered 413 to every client, including the ones
still sending when the server decides (urllib closes with ``Connection: close``, so a server that
closes with unread bytes makes the kernel reset the connection); the autoscaler logs at INFO only
decisions that change something."""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from squall.agent.node import Agent, VersionSpec, _LoadMeter
from squall.agent.sandbox.process import ProcessBackend
from squall.bundle.spec import FunctionConfig
from squall.config import Settings
from tests.conftest import PlatformProc

LIMIT = 1000
# Bigger than loopback socket buffers, so the client is still sending when the server answers;
# smaller than the server's drain budget (squall.api.body.DRAIN_BYTES).
BIG = 8 * 1024 * 1024
HELLO = "def handler(event, context):\n    return 'hi'\n"
PATHS = ["/fn/hello", "/api/v1/functions"]  # the gateway's reader and the control API's


def pieces(size: int, step: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, size, step):
        yield b"x" * min(step, size - start)


def post_urllib(url: str, size: int, chunked: bool, headers: dict[str, str]) -> tuple[int, Any]:
    """POST with the standard library; returns (status, parsed JSON body)."""
    req = urllib.request.Request(url, data=pieces(size) if chunked else b"x" * size,
                                 method="POST", headers=headers)
    if chunked:
        req.add_header("Transfer-Encoding", "chunked")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post_httpx(url: str, size: int, chunked: bool, headers: dict[str, str]) -> tuple[int, Any]:
    content = pieces(size) if chunked else b"x" * size
    resp = httpx.post(url, content=content, headers=headers, timeout=30)
    return resp.status_code, resp.json()


@pytest.mark.parametrize("client", [post_urllib, post_httpx], ids=["urllib", "httpx"])
def test_oversized_body_gets_413_not_reset(platform_factory: Callable[..., PlatformProc],
                                           make_fn: Callable[..., Path],
                                           client: Callable[..., tuple[int, Any]]) -> None:
    p = platform_factory(SQUALL_MAX_SYNC_PAYLOAD=str(LIMIT), SQUALL_MAX_BUNDLE_BYTES=str(LIMIT))
    p.deploy(make_fn("hello", HELLO))  # the gateway looks the function up before the body
    auth = {k: v for k, v in p.http.headers.items() if k.lower() == "authorization"}
    for path in PATHS:
        for chunked in (False, True):
            for size in (LIMIT + 1, BIG):
                status, body = client(p.url + path, size, chunked, auth)
                assert (status, body["error"]["code"]) == (413, "payload_too_large"), \
                    (path, chunked, size, body)
    # The server is still fine and serves a body within the limit on a fresh connection.
    assert p.http.get("/healthz").status_code == 200


def test_expect_continue_answered_without_the_body(
        platform_factory: Callable[..., PlatformProc], make_fn: Callable[..., Path]) -> None:
    """A client asking "100 Continue" for a declared oversized body is answered at once."""
    p = platform_factory(SQUALL_MAX_SYNC_PAYLOAD=str(LIMIT))
    p.deploy(make_fn("hello", HELLO))
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(f"POST /fn/hello HTTP/1.1\r\nHost: x\r\nContent-Length: {BIG}\r\n"
                  f"Expect: 100-continue\r\n\r\n".encode())
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head


def autoscale_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "squall.agent" and r.levelno == level and "autoscaler" in r.msg]


def test_autoscaler_logs_info_only_when_it_acts(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """A real agent slot, driven tick by tick: an idle version's "desired 0" stays at DEBUG,
    a burst from zero (scale out, panic) is INFO, the way back is DEBUG until panic ends."""
    caplog.set_level(logging.DEBUG, logger="squall.agent")
    agent = Agent(Settings(data_dir=tmp_path), ProcessBackend())
    vs = VersionSpec(namespace="default", function="quiet", version=1, sha256="0" * 64,
                     code_dir=tmp_path, dep_paths=[], config=FunctionConfig())
    slot = agent._slot(vs)
    now = time.monotonic()
    agent._autoscale(slot, now)  # a deploy, no traffic
    assert autoscale_lines(caplog, logging.INFO) == []
    assert any("desired 0 (ready 0)" in m for m in autoscale_lines(caplog, logging.DEBUG))

    slot.load.observe(4)  # four requests in flight for the next 5 s, no instance yet
    t1 = time.monotonic() + 5.0  # long enough that the moments between lines do not count
    agent._autoscale(slot, t1)
    info = autoscale_lines(caplog, logging.INFO)
    assert len(info) == 1 and "(ready 0) panic" in info[0], info

    slot.load = _LoadMeter(t1)  # the burst is over: nothing in flight from t1 on
    for tick in range(1, 7):  # desired stays held in panic: nothing new at INFO
        agent._autoscale(slot, t1 + 0.5 * tick)
    assert len(autoscale_lines(caplog, logging.INFO)) == 1
    agent._autoscale(slot, t1 + 120)  # a stable window later panic ends: a mode change
    assert len(autoscale_lines(caplog, logging.INFO)) == 2
