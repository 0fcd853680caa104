"""Cold and warm starts of the three runtimes, beside a fresh interpreter start in the same run.

    .venv/bin/python bench/runtimes_bench.py [--n 20] [--json out.json]

One platform; examples/hello (python3.11), examples/node-hello (nodejs20, with an npm
dependency) and examples/provided-ric (provided: awslambdaric with a Python handler). Cold is
GET /fn/NAME on a function scaled to zero, over an open connection, two ways:

- "idle": the function has been at zero for ``--settle`` seconds (a real cold start: the keep-
  alive ran out). Node and provided instances come from the version's spare, already started.
- "back-to-back": right after the previous cold start (squall_bench.cold_starts): the spare
  that replaces the one just taken may still be starting, and the request waits for it.

Warm is the same GET on a live instance. The references are fresh processes started here:
``node -e 0`` and ``python3 -I -S -c pass``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from platform_proc import Platform
from squall_bench import cold_starts
from util import summary

ROOT = Path(__file__).resolve().parent.parent
# label -> (function name, folder, path requested under /fn/<name>)
FUNCTIONS = {"python hello": ("hello", ROOT / "examples" / "hello", ""),
             "FastAPI app (asgi)": ("shop", ROOT / "examples" / "fastapi-app", "/items/1"),
             "node hello": ("node-hello", ROOT / "examples" / "node-hello", ""),
             "provided (awslambdaric)": ("provided-ric", ROOT / "examples" / "provided-ric", "")}


def fresh_process(argv: list[str], n: int) -> dict[str, Any]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return summary(samples)


def cold_idle(p: Platform, name: str, n: int, settle_s: float,
              sub: str = "") -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=60)
    samples = []
    try:
        for _ in range(n):
            p.scale_to_zero(name)
            time.sleep(settle_s)  # idle, as after a keep-alive expiry
            t0 = time.perf_counter()
            conn.request("GET", f"/fn/{name}{sub}")
            resp = conn.getresponse()
            resp.read()
            samples.append((time.perf_counter() - t0) * 1000.0)
            if resp.status != 200 or resp.getheader("x-squall-cold-start") != "1":
                raise RuntimeError(f"GET /fn/{name}: {resp.status}, not a cold start")
    finally:
        conn.close()
    return summary(samples)


def warm(port: int, name: str, n: int, sub: str = "") -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    samples = []
    try:
        for _ in range(n + 1):
            t0 = time.perf_counter()
            conn.request("GET", f"/fn/{name}{sub}")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET /fn/{name} answered {resp.status}")
            samples.append((time.perf_counter() - t0) * 1000.0)
    finally:
        conn.close()
    return summary(samples[1:])  # the first may be the cold one


def run(n: int, settle_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n, "rows": {}}
    node = shutil.which("node")
    if node:
        out["node -e 0 (fresh process)"] = fresh_process([node, "-e", "0"], n)
    out["python3 -I -S -c pass (fresh process)"] = fresh_process(
        [sys.executable, "-I", "-S", "-c", "pass"], n)
    with Platform() as p:
        for label, (name, path, sub) in FUNCTIONS.items():
            if name == "node-hello" and not node:
                continue
            p.deploy(path, name)
            row: dict[str, Any] = {"cold": cold_idle(p, name, n, settle_s, sub),
                                   "warm": warm(p.port, name, n * 5, sub)}
            if not sub:  # squall_bench.cold_starts requests /fn/<name> itself
                b2b = cold_starts(p, name, n)
                row["cold_b2b"] = {k: b2b[k] for k in ("p50", "p99", "mean", "n")}
            out["rows"][label] = row
    return out


def table(r: dict[str, Any]) -> str:
    lines = ["| runtime | cold p50 ms (idle) | cold p99 ms (idle) | cold p50 ms "
             "(back-to-back) | warm p50 ms |", "| --- | ---: | ---: | ---: | ---: |"]
    for label, row in r["rows"].items():
        b2b = f"{row['cold_b2b']['p50']:.1f}" if "cold_b2b" in row else "-"
        lines.append(f"| {label} | {row['cold']['p50']:.1f} | {row['cold']['p99']:.1f} | "
                     f"{b2b} | {row['warm']['p50']:.2f} |")
    for key in ("node -e 0 (fresh process)", "python3 -I -S -c pass (fresh process)"):
        if key in r:
            lines.append(f"| {key} | {r[key]['p50']:.1f} | {r[key]['p99']:.1f} | - | - |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=20, help="samples per measurement")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds at zero before an idle cold start")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    args = ap.parse_args()
    result = run(args.n, args.settle)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
