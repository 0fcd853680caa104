"""Squall on a Ray cluster vs on one machine, in one run (issue: "Beyond one machine").

Warm hello latency (c=1, p50) and throughput (wrk c=32) through one gateway: the platform on its
own (the baseline: no cluster), `--cluster` with a one-node Ray cluster (the cost of the
gateway -> node agent hop), and with three nodes on this machine (a head and two workers, one
CPU each). Then failover on the three-node cluster: sync load (8 clients) and 300 async events,
one worker node killed (raylet and all) mid-way; accepted events lost, sync errors, time until
requests succeed again, and the time for a new node to get its agent.

All nodes share this machine's cores, so three nodes cannot be faster than one here: the rows
show the routing overhead and the failover behaviour, not scale-out.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from baselines import warm_latency
from platform_proc import ROOT, Platform
from util import summary, wait_for, wrk

from squall.bundle.archive import pack_dir
from squall.cluster.local import ray_cluster


class ClusterPlatform(Platform):
    def __init__(self, extra: dict[str, str]) -> None:
        super().__init__("bwrap")
        self.extra = extra

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra}


def _nodes_up(p: Platform) -> int:
    try:
        nodes = p.http.get("/api/v1/cluster/nodes").json()["nodes"]
    except (httpx.HTTPError, ValueError, KeyError):
        return 0
    return sum(1 for n in nodes if n["alive"])


def _warm(p: Platform, quick: bool) -> dict[str, Any]:
    p.cli("deploy", str(ROOT / "examples" / "hello"))
    n = 300 if quick else 2000
    lat = warm_latency("127.0.0.1", p.port, "/fn/hello", n)
    load = wrk(f"{p.url}/fn/hello", connections=32, duration_s=3 if quick else 8, threads=1)
    return {"c1": summary(lat), "c32_rps": load.get("rps"), "c32_p99_ms": load.get("p99_ms"),
            "c32_non_2xx": load.get("non_2xx")}


def _failover(p: Platform, cluster: Any, tmp: Path) -> dict[str, Any]:
    fn = tmp / "steady"
    fn.mkdir()
    (fn / "handler.py").write_text("import time\ndef handler(event, context):\n"
                                   "    time.sleep(0.05)\n    return event\n")
    (fn / "squall.toml").write_text("max_instances = 24\n")
    dep = p.http.post("/api/v1/functions", params={"default_name": "steady"},
                      content=pack_dir(fn))
    sha = dep.json()["sha256"][:12]
    stop = threading.Event()
    sync: list[tuple[float, int]] = []

    def load() -> None:
        with httpx.Client(base_url=p.url, timeout=60) as c:
            while not stop.is_set():
                sync.append((time.monotonic(), c.get("/fn/steady").status_code))

    loaders = [threading.Thread(target=load) for _ in range(8)]
    for t in loaders:
        t.start()
    hdr = {"X-Squall-Invocation-Type": "Event"}
    accepted = [p.http.post("/api/v1/functions/steady/invocations", json={"n": n},
                            headers=hdr).json()["request_id"] for n in range(150)]

    def busy_nodes() -> set[str]:
        nodes = p.http.get("/api/v1/cluster/nodes").json()["nodes"]
        return {n["node"] for n in nodes if n["alive"] and any(
            k.endswith(sha) and v["instances"] for k, v in n["versions"].items())}

    wait_for(lambda: len(busy_nodes()) >= 2, 30, "instances on two nodes")
    busy = busy_nodes()
    victim = next(n for n in cluster.worker_nodes if n.node_id in busy)
    killed = time.monotonic()
    cluster.remove_node(victim, allow_graceful=False)
    accepted += [p.http.post("/api/v1/functions/steady/invocations", json={"n": n},
                             headers=hdr).json()["request_id"] for n in range(150, 300)]
    time.sleep(4)
    stop.set()
    for t in loaders:
        t.join()

    def settled() -> bool:
        got = Counter(p.http.get(f"/api/v1/invocations/{i}").json().get("status")
                      for i in accepted)
        return got["succeeded"] == len(accepted)

    t0 = time.monotonic()
    try:
        wait_for(settled, 120, "every accepted event to succeed")
    except TimeoutError:
        pass
    statuses = Counter(p.http.get(f"/api/v1/invocations/{i}").json().get("status")
                       for i in accepted)
    after = [(t, s) for t, s in sync if t > killed]
    last_err = max((t for t, s in after if s != 200), default=killed)
    joined = time.monotonic()
    cluster.add_node(num_cpus=1)
    wait_for(lambda: _nodes_up(p) == 3, 120, "an agent on the new node")
    return {"async_accepted": len(accepted), "async_lost": len(accepted) - statuses["succeeded"],
            "async_settle_s": time.monotonic() - t0,
            "sync_requests": len(sync),
            "sync_errors": dict(Counter(s for _, s in sync if s != 200)),
            "recovered_after_s": last_err - killed,
            "node_join_s": time.monotonic() - joined}


def run(quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Platform("bwrap") as p:
        out["local"] = _warm(p, quick)
    for nodes, cpus in ((1, 2), (3, 1)):
        with ray_cluster(nodes=nodes, cpus_per_node=cpus) as (cluster, key):
            extra = {"SQUALL_CLUSTER": cluster.address, "SQUALL_MASTER_KEY": key}
            with ClusterPlatform(extra) as p:
                wait_for(lambda p=p, n=nodes: _nodes_up(p) == n, 120, f"{nodes} node agents")
                out[f"nodes_{nodes}"] = _warm(p, quick)
                if nodes == 3:
                    with tempfile.TemporaryDirectory() as tmp:
                        out["failover"] = _failover(p, cluster, Path(tmp))
    return out


if __name__ == "__main__":
    import json
    import sys

    os.environ.setdefault("SQUALL_S3_PORT", "0")
    print(json.dumps(run("--quick" in sys.argv), indent=1, default=str))
