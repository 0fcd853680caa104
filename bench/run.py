"""Squall's benchmark suite: `make bench` runs `.venv/bin/python bench/run.py`.

Baselines and Squall are measured in the same run; the table goes to stdout and to the top of
BENCHMARKS.md, the raw samples to bench/results/<timestamp>.json.

  --quick          fewer samples, no numpy/scipy function (for CI)
  --baselines-only skip everything that needs the platform
  --no-write       print only; leave BENCHMARKS.md and bench/results alone
  --peers          also run the peer harness (../shared/peers: squall, a bare server, workerd,
                   serverless-offline, functions-framework; ~6 minutes, needs npm and PyPI)
                   into bench/results/peers and put its side-by-side table in BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import baselines  # noqa: E402
import cluster_bench  # noqa: E402
import events_bench  # noqa: E402
import report  # noqa: E402
import runtimes_bench  # noqa: E402
import s3 as s3_bench  # noqa: E402
import squall_bench  # noqa: E402
import tenancy_bench  # noqa: E402
from util import machine  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _squall(quick: bool, notes: list[str]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    main: dict[str, Any] | None = None
    for sandbox in ("bwrap", None):
        try:
            main = squall_bench.run_main(quick, sandbox, log)
            break
        except Exception as exc:
            notes.append(f"platform with SQUALL_SANDBOX={sandbox or 'auto'} failed: {exc}")
            log(f"  platform (sandbox={sandbox or 'auto'}) failed: {exc}")
    if main is None:
        return {"error": "the platform did not start"}, None
    try:
        proc = squall_bench.run_sandbox_only(quick, "process", log)
    except Exception as exc:
        notes.append(f"platform with SQUALL_SANDBOX=process failed: {exc}")
        proc = None
    return main, proc


def _notes_from(r: dict[str, Any], notes: list[str]) -> None:
    for run_key in ("squall", "squall_process", "events", "s3"):
        run = r.get(run_key) or {}
        if run_key in ("events", "s3") and "error" in run:
            notes.append(f"{run_key} failed: {run['error']}")
        for key, value in run.items():
            if isinstance(value, dict) and "error" in value:
                notes.append(f"{run_key}.{key} failed: {' '.join(str(value['error']).split())}")
    cold = (r.get("squall") or {}).get("cold_hello") or {}
    if cold.get("distinct_instance_ids") is not None:
        notes.append(f"cold start hello: {cold['distinct_instance_ids']} distinct instance ids "
                     f"over {cold.get('n')} samples (each sample should be a new instance)")
    if cold.get("cold_header_count") is not None:
        notes.append(f"cold start hello: {cold['cold_header_count']}/{cold.get('n')} answers "
                     f"carried X-Squall-Cold-Start: 1")
    for run_key, key in (("squall", "cold_hello"), ("squall", "cold_numpy"),
                         ("squall", "never_invoked"), ("squall_process", "cold_hello")):
        run = r.get(run_key) or {}
        init = (run.get(key) or {}).get("init")
        if init:
            parts = ", ".join(f"{k[:-3]} {v['p50']:.2f}" for k, v in init.items())
            notes.append(f"{key} ({run.get('sandbox_actual')}): the platform's own init timing "
                         f"p50 (ms): {parts}")
    so = (r.get("squall") or {}).get("scale_out") or {}
    if so.get("statuses"):
        notes.append(f"scale-out statuses: {so['statuses']}; latency p50 "
                     f"{so['latency']['p50']:.0f} ms, p99 {so['latency']['p99']:.0f} ms")
    notes.extend(events_bench.notes(r.get("events") or {}))
    heavy = r.get("heavy_import")
    if heavy:
        notes.append(f"numpy+scipy: uv install into a fresh venv took {heavy['install_s']:.1f} s")


PEERS = ("squall", "baseline", "workerd", "lambda", "ff")
PEERS_DIR = HERE.parent.parent / "shared" / "peers"


def run_peers() -> dict[str, Any]:
    """The peer harness, Squall as a contender (installed from this checkout); its per-peer
    JSON files, by file name. Its own RESULTS.md is left beside them."""
    out_dir = HERE / "results" / "peers"
    out_dir.mkdir(parents=True, exist_ok=True)
    script = PEERS_DIR / "run_all.sh"
    if not script.exists():
        return {"error": f"{script} is missing"}
    # The steps before (the cluster's Ray processes winding down) can leave the CPUs busy: on
    # 2026-12-03 the harness started at load 1.95 and every peer came out slower than the day
    # before. Let the machine settle first (at most two minutes).
    deadline = time.monotonic() + 120
    while os.getloadavg()[0] > 0.6 and time.monotonic() < deadline:
        time.sleep(5)
    env = {**os.environ, "RESULTS_DIR": str(out_dir), "SQUALL_SRC": str(HERE.parent)}
    proc = subprocess.run(["bash", str(script), *PEERS], cwd=HERE.parent, env=env,
                          capture_output=True, text=True, timeout=3600)
    found: dict[str, Any] = {}
    for path in sorted(out_dir.glob("*.json")):
        try:
            found[path.stem] = json.loads(path.read_text())
        except ValueError:
            continue
    if proc.returncode != 0:
        found["error"] = f"run_all.sh exited {proc.returncode}: {proc.stderr[-500:]}"
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--baselines-only", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--peers", action="store_true")
    args = ap.parse_args(argv)

    now = dt.datetime.now(dt.UTC)
    r: dict[str, Any] = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "quick": args.quick,
                         "machine": machine()}
    notes: list[str] = []
    log("baseline A: uvloop + httptools server ...")
    r["baseline_a"] = baselines.baseline_a(args.quick)
    log("baseline B: fork and interpreter start ...")
    r["baseline_b"] = baselines.baseline_b(args.quick)
    if not args.quick:
        log("baseline: fresh interpreter importing numpy + scipy ...")
        r["heavy_import"] = baselines.heavy_import(
            HERE / "functions/numpy_fn/requirements.txt",
            "import numpy, scipy.linalg, scipy.stats", 10)
    if not args.baselines_only:
        r["squall"], r["squall_process"] = _squall(args.quick, notes)
        log("events: async queue throughput, connector latency ...")
        try:
            r["events"] = events_bench.run(args.quick, log)
        except Exception as exc:
            r["events"] = {"error": f"{type(exc).__name__}: {exc}"}
        log("runtimes: python, FastAPI, node, provided cold starts after idle ...")
        try:
            r["runtimes"] = runtimes_bench.run(8 if args.quick else 20, 1.0)
        except Exception as exc:
            r["runtimes"] = {"error": f"{type(exc).__name__}: {exc}"}
        log("tenancy: tenant B's latency while tenant A is at its quota ...")
        try:
            with tempfile.TemporaryDirectory(prefix="squall-bench-") as tmp:
                r["tenancy"] = tenancy_bench.run(args.quick, HERE / "functions", Path(tmp))
        except Exception as exc:
            r["tenancy"] = {"error": f"{type(exc).__name__}: {exc}"}
        log("s3: object store PUT/GET MB/s against the disk, upload -> function start ...")
        try:
            r["s3"] = s3_bench.run(args.quick, log)
        except Exception as exc:
            r["s3"] = {"error": f"{type(exc).__name__}: {exc}"}
        log("cluster: one machine vs --cluster on 1 and 3 Ray nodes, failover ...")
        try:
            r["cluster"] = cluster_bench.run(args.quick)
        except Exception as exc:
            r["cluster"] = {"error": f"{type(exc).__name__}: {exc}"}
    if args.peers:
        log("peers: ../shared/peers/run_all.sh " + " ".join(PEERS) + " (about 6 minutes) ...")
        r["peers"] = run_peers()
    _notes_from(r, notes)

    rows = report.build_rows(r)
    json_name = now.strftime("%Y%m%dT%H%M%SZ") + (".quick" if args.quick else "") + ".json"
    print(report.table(rows))
    for n in notes:
        print(f"- {n}")
    if not args.no_write:
        results = HERE / "results"
        results.mkdir(exist_ok=True)
        (results / json_name).write_text(json.dumps(r | {"rows": rows, "notes": notes},
                                                    indent=1, default=str))
        report.write_benchmarks_md(HERE.parent / "BENCHMARKS.md",
                                   report.section(r, rows, json_name, notes))
        log(f"wrote BENCHMARKS.md and bench/results/{json_name}")
    failed = any(isinstance(v, dict) and "error" in v for v in (r.get("squall") or {}).values())
    return 1 if failed and not args.baselines_only else 0


if __name__ == "__main__":
    sys.exit(main())
