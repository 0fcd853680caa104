"""The hot-path cost of observability: warm p50 of hello with tracing off and on (exporting over
OTLP/HTTP to a sink on loopback), in the same run, and the cost of the metrics call per
invocation (metrics cannot be switched off: they are timed on their own).

    .venv/bin/python bench/observability_bench.py [--n 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from baselines import warm_latency
from platform_proc import Platform
from util import free_port, summary

FUNCTIONS = Path(__file__).resolve().parent / "functions"


class _Sink(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and drops them (counts the spans' requests)."""

    received = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        type(self).received += 1
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


def warm_p50(env: dict[str, str], n: int) -> dict[str, Any]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with Platform("bwrap") as p:
            p.deploy(FUNCTIONS / "hello", "hello")
            return summary(warm_latency("127.0.0.1", p.port, "/fn/hello", n))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def metrics_call_us(n: int = 200_000) -> float:
    """One invocation's metrics update (labels bound once, as on the hot path), in µs."""
    from squall.agent.node import VersionSpec
    from squall.bundle.spec import FunctionConfig
    from squall.observability.metrics import Metrics

    m = Metrics()
    vs = VersionSpec("default", "hello", 1, "0" * 64, Path("/x"), [], FunctionConfig())
    t0 = time.perf_counter()
    for _ in range(n):
        m.invocation(vs, "http", "succeeded", 0.4, 0.0, False, 0.0001, None)
    return (time.perf_counter() - t0) / n * 1e6


def run(n: int) -> dict[str, Any]:
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        off = warm_p50({}, n)
        on = warm_p50({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                       "OTEL_BSP_SCHEDULE_DELAY": "200"}, n)
    finally:
        server.shutdown()
    return {"tracing_off": off, "tracing_on": on, "exports_received": _Sink.received,
            "metrics_call_us": metrics_call_us()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=3000)
    out = run(ap.parse_args().n)
    print(json.dumps({k: (v["p50"] if isinstance(v, dict) else v) for k, v in out.items()},
                     indent=1))
