"""Shared helpers for the benchmark suite: statistics, machine description, wrk, child processes."""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile, p in 0..100 (p99 of 50 samples is the largest one)."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100.0 * len(ordered)) - 1))
    return ordered[k]


def summary(samples_ms: list[float]) -> dict[str, Any]:
    return {
        "n": len(samples_ms),
        "p50": percentile(samples_ms, 50),
        "p99": percentile(samples_ms, 99),
        "mean": statistics.fmean(samples_ms) if samples_ms else float("nan"),
        "min": min(samples_ms) if samples_ms else float("nan"),
        "max": max(samples_ms) if samples_ms else float("nan"),
    }


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram_gb = 0.0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram_gb = int(line.split()[1]) / 1024 / 1024
                    break
    except OSError:
        pass
    uname = subprocess.run(["uname", "-srm"], capture_output=True, text=True).stdout.strip()
    return {
        "uname": uname,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(ram_gb, 1),
        "python": platform.python_version(),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], bool], deadline_s: float, what: str) -> None:
    """Poll ``pred`` until it is true; raise with ``what`` when the deadline passes."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {deadline_s:g}s waiting for {what}")


def stop(proc: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    """TERM, wait, then KILL: the child gets a chance to clean up its instances."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


WRK_HINT = "wrk is missing: install it with `apt-get install -y wrk` (or brew install wrk)"


def wrk(url: str, connections: int = 32, duration_s: int = 5, threads: int = 2,
        cpus: str = "") -> dict[str, Any]:
    """Run wrk once (on the CPUs ``cpus`` names, like taskset -c, when given); returns
    requests/s, latency p50/p99 (ms), errors and the raw output."""
    exe = shutil.which("wrk")
    if exe is None:
        print(WRK_HINT)
        return {"rps": float("nan"), "error": WRK_HINT}
    cmd = [exe, f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", url]
    pin = ["taskset", "-c", cpus] if cpus else []
    out = subprocess.run([*pin, *cmd], capture_output=True, text=True,
                         timeout=duration_s + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock_err = re.search(r"Socket errors:(.*)", out)
    return {
        "rps": float(rps.group(1)) if rps else float("nan"),
        "p50_ms": _wrk_latency(out, "50%"),
        "p99_ms": _wrk_latency(out, "99%"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sock_err.group(1).strip() if sock_err else "",
        "cmd": " ".join(cmd[1:]),
        "raw": out,
    }


def _wrk_latency(out: str, label: str) -> float:
    m = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000.0 if unit == "us" else value * 1000.0 if unit == "s" else value


def smaps_rollup(pid: int) -> dict[str, float]:
    """USS (private clean + dirty) and PSS of a process, in MB."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1])
    uss_kb = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return {"uss_mb": uss_kb / 1024.0, "pss_mb": fields.get("Pss", 0) / 1024.0,
            "rss_mb": fields.get("Rss", 0) / 1024.0}


def run_steps(steps: list[tuple[str, Callable[[], Any]]], out: dict[str, Any],
              log: Callable[[str], None], label: str) -> None:
    """Run each measurement; one broken measurement must not hide the others."""
    for key, fn in steps:
        log(f"  {label}: {key} ...")
        try:
            out[key] = fn()
        except Exception as exc:
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"    FAILED: {out[key]['error']}")
