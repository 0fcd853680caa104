"""Baselines measured in the same run as Squall: A = a bare uvloop+httptools server, B = fork and
interpreter start-up, plus the cost of importing the heavy function's dependencies from scratch."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from util import free_port, smaps_rollup, stop, summary, wrk

HERE = Path(__file__).resolve().parent


def warm_latency(host: str, port: int, path: str, n: int, warmup: int = 50) -> list[float]:
    """Sequential GETs over one keep-alive connection; ms per request."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    samples: list[float] = []
    try:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            dt = (time.perf_counter() - t0) * 1000.0
            if resp.status != 200:
                raise RuntimeError(f"GET {path} answered {resp.status}")
            if i >= warmup:
                samples.append(dt)
    finally:
        conn.close()
    return samples


def baseline_a(quick: bool) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "baseline_server.py"), str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"baseline server did not start: {line!r}")
        lat = warm_latency("127.0.0.1", port, "/", 300 if quick else 2000)
        tp = wrk(f"http://127.0.0.1:{port}/", duration_s=2 if quick else 5)
    finally:
        stop(proc)
    return {"warm_ms": lat, "warm": summary(lat), "wrk": tp}


def fork_to_first_byte(n: int) -> list[float]:
    """ms from os.fork() in the parent to the child's first byte on a pipe."""
    samples: list[float] = []
    for _ in range(n):
        r, w = os.pipe()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.write(w, b"x")
            os._exit(0)
        os.read(r, 1)
        samples.append((time.perf_counter() - t0) * 1000.0)
        os.close(r)
        os.close(w)
        os.waitpid(pid, 0)
    return samples


def process_start(argv: list[str], n: int) -> list[float]:
    samples: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return samples


FORKED_IDLE = """
import os, sys, time
pid = os.fork()
if pid == 0:
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
time.sleep(60)
"""


def forked_child_memory() -> dict[str, float]:
    """USS/PSS of an idle fork of a bare `python -I -S` process: the floor for an instance."""
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", FORKED_IDLE],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        mem = smaps_rollup(child)
        os.kill(child, 9)
    finally:
        proc.kill()
        proc.wait()
    return mem


def baseline_b(quick: bool) -> dict[str, Any]:
    forks = fork_to_first_byte(50 if quick else 200)
    starts = process_start([sys.executable, "-I", "-S", "-c", "pass"], 20 if quick else 100)
    return {
        "fork_ms": forks, "fork": summary(forks),
        "python_start_ms": starts, "python_start": summary(starts),
        "forked_child_mem": forked_child_memory(),
    }


def heavy_import(requirements: Path, imports: str, n: int) -> dict[str, Any]:
    """A cold start without a zygote: a fresh interpreter importing the function's dependencies.

    The venv is built with uv into a temporary directory (uv's cache makes it quick)."""
    uv = Path(sys.executable).parent / "uv"
    with tempfile.TemporaryDirectory(prefix="squall-bench-venv-") as tmp:
        venv = Path(tmp) / "v"
        subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(venv)], check=True)
        t0 = time.perf_counter()
        subprocess.run([str(uv), "pip", "install", "-q", "--python", str(venv / "bin/python"),
                        "-r", str(requirements)], check=True)
        install_s = time.perf_counter() - t0
        py = str(venv / "bin/python")
        process_start([py, "-c", imports], 1)  # writes the .pyc files, as a deploy would
        starts = process_start([py, "-c", imports], n)
    return {"install_s": install_s, "start_ms": starts, "start": summary(starts)}
