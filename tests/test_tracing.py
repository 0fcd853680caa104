"""OpenTelemetry traces: the span tree of one invocation (in-memory exporter, real middleware),
and end to end through a real OTLP/HTTP receiver on loopback: an HTTP call, an async retry and a
Redis message in one trace, which the functions themselves see."""

from __future__ import annotations

import asyncio
import http.server
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from squall.agent.node import InitTiming, VersionSpec
from squall.bundle.spec import FunctionConfig
from squall.observability.tracing import (
    Tracing,
    current_traceparent,
    delivery,
    enabled_by_env,
    span_name,
)
from tests.conftest import PlatformProc, require_service, wait_for

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
VS = VersionSpec("default", "hello", 3, "0" * 64, Path("/"), [],
                 FunctionConfig(memory_mb=256))


# ---- component: the span tree, with the SDK's in-memory exporter ------------------------------

@pytest.fixture
def traced() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracing(exporter, batch=False), exporter


def test_http_invocation_span_tree(traced: tuple[Tracing, InMemorySpanExporter]) -> None:
    tracing, exporter = traced
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        # what the invoker does for one cold invocation
        span = tracing.begin(VS, "http", "rid-1")
        span.started(True, InitTiming(sandbox_ms=2.0, zygote_ms=30.0, fork_ms=1.5))
        seen["frame"] = span.frame_ctx()
        span.end("succeeded", None, 12)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=tracing.middleware(app)),
                               base_url="http://test")
    r = asyncio.run(client.get("/fn/hello/x", headers={"traceparent": PARENT}))
    assert r.status_code == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"GET /fn/hello", "hello", "init", "sandbox", "zygote", "fork", "run"}
    assert all(f"{s.context.trace_id:032x}" == TRACE for s in spans.values())
    http_span, inv = spans["GET /fn/hello"], spans["hello"]
    # the incoming traceparent is continued: the edge span is its child
    assert http_span.parent is not None and f"{http_span.parent.span_id:016x}" == PARENT[36:52]
    assert http_span.kind == SpanKind.SERVER
    assert http_span.attributes is not None
    assert http_span.attributes["http.response.status_code"] == 200
    assert inv.parent is not None and inv.parent.span_id == http_span.context.span_id
    assert inv.attributes is not None
    assert inv.attributes["faas.trigger"] == "http"
    assert inv.attributes["faas.invocation_id"] == "rid-1"
    assert inv.attributes["faas.coldstart"] is True
    assert inv.attributes["faas.name"] == "hello"
    assert inv.attributes["faas.version"] == "3"
    assert inv.attributes["faas.max_memory"] == 256 * 1024 * 1024
    for child in ("init", "run"):
        parent = spans[child].parent
        assert parent is not None and parent.span_id == inv.context.span_id
    init = spans["init"]
    assert init.end_time is not None and init.start_time is not None
    assert round((init.end_time - init.start_time) / 1e6, 1) == 33.5
    for part in ("sandbox", "zygote", "fork"):
        parent = spans[part].parent
        assert parent is not None and parent.span_id == init.context.span_id
    # the function is handed the run span's context
    assert seen["frame"]["traceparent"] == \
        f"00-{TRACE}-{spans['run'].context.span_id:016x}-01"


def test_async_attempts_continue_the_submitting_trace(
        traced: tuple[Tracing, InMemorySpanExporter]) -> None:
    tracing, exporter = traced
    with tracing.tracer.start_as_current_span("submit"):
        stored = current_traceparent()  # what the queue row keeps
    assert stored is not None and stored.startswith("00-")
    for attempt in (1, 2):  # a failure, then its retry
        with delivery(tracing, stored, due_at=time.time() - 0.05, attempt=attempt):
            span = tracing.begin(VS, "async", "rid-2")
            span.started(False, None)
            span.end("failed" if attempt == 1 else "succeeded",
                     {"errorType": "ValueError", "errorMessage": "x"} if attempt == 1 else None,
                     1)
    spans = exporter.get_finished_spans()
    submit = next(s for s in spans if s.name == "submit")
    invs = [s for s in spans if s.name == "hello"]
    queues = [s for s in spans if s.name == "queue"]
    assert len(invs) == 2 and len(queues) == 2
    for s in [*invs, *queues]:
        assert s.context.trace_id == submit.context.trace_id
        assert s.parent is not None and s.parent.span_id == submit.context.span_id
    assert [q.attributes["squall.attempt"] for q in queues if q.attributes] == [1, 2]
    assert invs[0].status.status_code == StatusCode.ERROR
    assert invs[0].kind == SpanKind.CONSUMER
    assert invs[0].attributes is not None and invs[0].attributes["faas.trigger"] == "other"
    # a queued span lasts from due to claimed
    assert queues[0].end_time is not None and queues[0].start_time is not None
    assert queues[0].end_time - queues[0].start_time >= 40_000_000


def test_off_by_default_and_no_context_without_tracing() -> None:
    assert not enabled_by_env({})
    assert enabled_by_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not enabled_by_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x",
                               "OTEL_SDK_DISABLED": "true"})
    assert current_traceparent() is None
    with delivery(None, PARENT, due_at=0.0):
        assert current_traceparent() is None  # tracing off: nothing attached


@pytest.mark.parametrize(("method", "path", "name"), [
    ("GET", "/fn/hello/a/b", "GET /fn/hello"),
    ("POST", "/api/v1/functions/f/invocations", "POST /api/v1/functions/f"),
    ("POST", "/hooks/github", "POST /hooks/github"),
])
def test_span_names_are_low_cardinality(method: str, path: str, name: str) -> None:
    assert span_name(method, path) == name


# ---- end to end: a real OTLP/HTTP receiver on loopback ----------------------------------------

class _Receiver(http.server.ThreadingHTTPServer):
    spans: list[dict[str, Any]]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        assert isinstance(self.server, _Receiver)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {a.key: getattr(a.value, a.value.WhichOneof("value"))
                             for a in s.attributes}
                    self.server.spans.append({
                        "name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(), "attrs": attrs,
                        "error": s.status.code == 2})
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver(("127.0.0.1", 0), _Handler)
    server.spans = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


ECHO = """
import os

def handler(event, context):
    return {"trace_id": context.trace_id, "env": os.environ.get("traceparent"),
            "xray": os.environ.get("_X_AMZN_TRACE_ID")}
"""

# Fails its first attempt, then (the retry) writes a Redis stream entry carrying its traceparent.
PRODUCER = """
import os, socket

seen = {}

def _resp(*args):
    out = "*%d\\r\\n" % len(args)
    for a in args:
        out += "$%d\\r\\n%s\\r\\n" % (len(a.encode()), a)
    return out.encode()

def handler(event, context):
    n = seen[context.aws_request_id] = seen.get(context.aws_request_id, 0) + 1
    if n == 1:
        raise RuntimeError("first attempt fails")
    with socket.create_connection(("127.0.0.1", 6379)) as s:
        s.sendall(_resp("XADD", event["stream"], "*", "traceparent",
                        os.environ["traceparent"], "m", "hi"))
        s.recv(128)
    return {"sent": True}
"""
SINK = """
import os

def handler(event, context):
    print("TRACE", context.trace_id, os.environ.get("traceparent"))
    return {"ok": True}
"""


def test_trace_crosses_http_async_retry_and_redis(receiver: _Receiver,
                                                  platform_factory: Callable[..., PlatformProc],
                                                  make_fn: Callable[..., Path]) -> None:
    require_service("127.0.0.1", 6379, "redis")
    p = platform_factory(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.server_port}",
                         OTEL_BSP_SCHEDULE_DELAY="50")
    stream = f"squall-trace-{uuid.uuid4().hex[:10]}"
    p.deploy(make_fn("echo", ECHO))
    p.deploy(make_fn("producer", PRODUCER, "max_instances = 1\n[async]\nmax_retries = 2\n"))
    p.deploy(make_fn("sink", SINK, f'[[triggers]]\ntype = "redis"\nstream = "{stream}"\n'
                                   f'start = "0"\n'))

    # 1. HTTP: the function sees the incoming trace (context.trace_id and its environment)
    r = p.http.get("/fn/echo", headers={"traceparent": PARENT})
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["trace_id"] == TRACE
    assert seen["env"].startswith(f"00-{TRACE}-") and seen["env"] != PARENT
    assert seen["xray"].startswith(f"Root=1-{TRACE[:8]}-{TRACE[8:]};Parent=")

    # 2. async, retried once, then a Redis message to another function: still one trace
    trace2 = uuid.uuid4().hex
    r = p.http.post("/api/v1/functions/producer/invocations", json={"stream": stream},
                    headers={"X-Squall-Invocation-Type": "Event",
                             "traceparent": f"00-{trace2}-1111111111111111-01"})
    assert r.status_code == 202, r.text
    rid = r.json()["request_id"]
    line = wait_for(lambda: next((x["line"] for x in p.http.get(
        "/api/v1/functions/sink/logs").json()["lines"] if x["line"].startswith("TRACE")), None),
        timeout=30, message="the sink to run")
    assert line.split()[1] == trace2

    def spans_of(trace_id: str) -> list[dict[str, Any]]:
        return [s for s in receiver.spans if s["trace_id"] == trace_id]

    wait_for(lambda: any(s["name"] == "sink" for s in spans_of(trace2)), timeout=15,
             message="the sink's span to be exported")
    spans = spans_of(trace2)
    producer = [s for s in spans if s["name"] == "producer"]
    assert len(producer) == 2  # the failed attempt and its retry
    assert {s["attrs"]["faas.invocation_id"] for s in producer} == {rid}
    assert sorted(s["error"] for s in producer) == [False, True]
    assert sorted(s["attrs"]["squall.attempt"] for s in spans if s["name"] == "queue") == [1, 2]
    edge = next(s for s in spans if s["name"] == "POST /api/v1/functions/producer")
    assert edge["parent"] == "1111111111111111"
    sink = next(s for s in spans if s["name"] == "sink")
    assert sink["attrs"]["faas.trigger"] == "pubsub"
    # the sink continues the producer's retry: its receive span's parent is that run span
    receive = next(s for s in spans if s["name"] == "receive")
    runs = {s["span_id"] for s in spans if s["name"] == "run"}
    assert receive["parent"] in runs and sink["parent"] in runs
    # HTTP trace exported too, with the function's span under the edge span
    first = spans_of(TRACE)
    fn_span = next(s for s in first if s["name"] == "echo")
    assert fn_span["attrs"]["faas.coldstart"] is True
    assert os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") is None  # the test process stays off
