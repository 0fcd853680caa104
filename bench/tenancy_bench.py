"""Tenant isolation under load: tenant A saturated at its quota, tenant B's warm latency.

The quiet tenant's hello is measured idle, then again while wrk drives the noisy tenant's
function far past its concurrency quota (most of its requests answered 429). The ratio of the
two p50s is the figure the tenancy issue asks for (target: within 2x).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from baselines import warm_latency
from platform_proc import Platform
from util import summary, wrk

BUSY = """
import time
def handler(event, context):
    time.sleep(0.02)
    return {"statusCode": 200, "body": "busy"}
"""


def tenant_isolation(p: Platform, functions: Path, tmp: Path, quick: bool) -> dict[str, Any]:
    p.cli("tenant", "create", "noisy", "--max-concurrency", "4")
    p.cli("tenant", "create", "quiet")
    busy = tmp / "busy"
    busy.mkdir(parents=True, exist_ok=True)
    (busy / "handler.py").write_text(BUSY)
    p.cli("--tenant", "noisy", "deploy", str(busy), "--name", "busy")
    p.cli("--tenant", "quiet", "deploy", str(functions / "hello"), "--name", "hello")
    n = 300 if quick else 1500
    path = "/t/quiet/fn/hello"
    idle = warm_latency("127.0.0.1", p.port, path, n)
    result: dict[str, Any] = {}
    duration = 3 if quick else 8

    def load() -> None:
        result["noisy"] = wrk(f"{p.url}/t/noisy/fn/busy", connections=32,
                              duration_s=duration, threads=1)

    t = threading.Thread(target=load)
    t.start()
    time.sleep(0.5)  # wrk is connected and the noisy tenant is at its limit
    loaded: list[float] = []
    while t.is_alive() and len(loaded) < 20 * n:  # sample for as long as the load lasts
        loaded += warm_latency("127.0.0.1", p.port, path, 50, warmup=0)
    t.join()
    noisy = result.get("noisy", {})
    usage = json.loads(p.cli("tenant", "describe", "noisy").stdout)
    shutil.rmtree(busy, ignore_errors=True)
    return {"quiet_idle": summary(idle), "quiet_loaded": summary(loaded),
            "p50_ratio": summary(loaded)["p50"] / summary(idle)["p50"],
            "noisy_rps": noisy.get("rps"), "noisy_non_2xx": noisy.get("non_2xx"),
            "noisy_limit": usage["limits"]["max_concurrency"], "cmd": noisy.get("cmd")}


def run(quick: bool, functions: Path, tmp: Path) -> dict[str, Any]:
    with Platform("bwrap") as p:
        return tenant_isolation(p, functions, tmp, quick)


if __name__ == "__main__":
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = run("--quick" in sys.argv, Path(__file__).parent / "functions", Path(d))
    print(json.dumps(out, indent=1))
