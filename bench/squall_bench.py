"""The Squall measurements: cold starts, warm latency, throughput, scale-out, memory."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from baselines import warm_latency
from platform_proc import Platform
from util import run_steps, smaps_rollup, summary, wait_for, wrk

FUNCTIONS = Path(__file__).resolve().parent / "functions"
INSTANCE_HEADER = "x-squall-instance-id"
COLD_HEADER = "x-squall-cold-start"


IDLE_S = 1.0  # every real cold start follows idleness: the keep-alive ran out minutes ago


def cold_starts(p: Platform, name: str, n: int, idle_s: float = IDLE_S) -> dict[str, Any]:
    """n times: scale to zero, wait until no instance is left, sit idle ``idle_s``, then time
    one GET /fn/NAME on a fresh connection (what a user meets; the peer harness does the same).
    ``idle_s`` = 0 gives the back-to-back figure, reported beside it."""
    samples: list[float] = []
    ids: list[str] = []
    colds = 0
    for _ in range(n):
        p.scale_to_zero(name)
        if idle_s:
            time.sleep(idle_s)
        conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=60)
        try:
            t0 = time.perf_counter()
            status, headers = _get(conn, f"/fn/{name}")
            samples.append((time.perf_counter() - t0) * 1000.0)
        finally:
            conn.close()
        if status != 200:
            raise RuntimeError(f"cold GET /fn/{name} answered {status}")
        ids.append(headers.get(INSTANCE_HEADER, ""))
        colds += headers.get(COLD_HEADER, "") in ("1", "true")
    distinct = len({i for i in ids if i})
    return {"ms": samples, **summary(samples), "idle_s": idle_s, "cold_header_count": colds,
            "distinct_instance_ids": distinct if any(ids) else None,
            "init": init_breakdown(p, name, n)}


def cold_without_spares(quick: bool) -> dict[str, Any]:
    """The same cold start on a platform with SQUALL_SPARES=0: every cold start forks on the
    request's path (what a burst's second and later instances meet, and the figure before
    spares)."""
    with Platform(None, {"SQUALL_SPARES": "0"}) as p:
        p.deploy(FUNCTIONS / "hello", "hello")
        return cold_starts(p, "hello", 10 if quick else 30)


def cores_curve(quick: bool) -> dict[str, Any]:
    """hello at c=32 with the whole platform (gateway, zygotes, instances) held to one core
    (wrk on the other), then on both (wrk sharing them): the scaling curve on this machine."""
    ncpu = os.cpu_count() or 1
    out: dict[str, Any] = {"cpus": ncpu}
    if ncpu < 2:
        return out | {"error": "needs at least 2 CPUs"}
    for label, cpus, client in (("one_core", "0", "1"), ("all_cores", "", "")):
        with Platform(None, cpus=cpus) as p:
            p.deploy(FUNCTIONS / "hello", "hello")
            wrk(f"{p.url}/fn/hello", duration_s=1, cpus=client)  # warm up: the instances
            r = wrk(f"{p.url}/fn/hello", duration_s=2 if quick else 5, cpus=client)
            out[label] = {k: r.get(k) for k in ("rps", "p50_ms", "p99_ms", "non_2xx", "cmd")}
    return out


def gateways_curve(quick: bool) -> dict[str, Any]:
    """hello at c=32 through one gateway on a PostgreSQL store, then through two gateways of
    that store sharing the port (--reuse-port): what a second gateway process adds here."""
    import base64
    import uuid

    import psycopg

    pg = os.environ.get("SQUALL_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(pg, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except Exception as exc:  # no PostgreSQL here: the row is left out, with the reason
        return {"error": f"PostgreSQL at {pg}: {exc}"}
    sep = "&" if "?" in pg else "?"
    env = {"SQUALL_STORE": f"{pg}{sep}options=-csearch_path%3D{schema}",
           "SQUALL_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
           "SQUALL_REUSE_PORT": "1"}
    out: dict[str, Any] = {}
    first, second = Platform(None, env), Platform(None, env)
    try:
        first.start()
        first.deploy(FUNCTIONS / "hello", "hello")
        url = f"{first.url}/fn/hello"
        wrk(url, duration_s=1)
        out["one"] = _load(wrk(url, duration_s=2 if quick else 5))
        second.port, second.url = first.port, first.url
        second.http = httpx.Client(base_url=first.url, timeout=120)
        second.data_dir.mkdir(parents=True)
        (second.data_dir / "admin-key").write_text(first.admin_key + "\n")
        second.start()
        assert second.proc is not None
        wait_for(lambda: _answered_by(first.port, second.proc.pid if second.proc else 0), 30,
                 "the second gateway on the shared port")
        wrk(url, duration_s=3)  # its instances
        out["two"] = _load(wrk(url, duration_s=2 if quick else 5))
    finally:
        second.close()
        first.close()
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return out


def workers_curve(quick: bool) -> dict[str, Any]:
    """hello at c=32 with `squall up --workers 1` and `--workers 2` (one SQLite data dir, the
    gateway in one or two processes), alternating in rounds: this VM's speed drifts by tens
    of percent within minutes, so each figure is the median of its rounds."""
    rounds = 1 if quick else 3
    runs: dict[str, list[dict[str, Any]]] = {"1": [], "2": []}
    for _ in range(rounds):
        for n in runs:
            with Platform(None, {"SQUALL_WORKERS": n}) as p:
                if n != "1":
                    wait_for(lambda n=n: f"worker {int(n) - 1} serving" in p.log_tail(), 60,
                             "the workers")
                p.deploy(FUNCTIONS / "hello", "hello")
                wrk(f"{p.url}/fn/hello", duration_s=2)  # warm up: every worker's instances
                runs[n].append(_load(wrk(f"{p.url}/fn/hello", duration_s=2 if quick else 5)))
    out: dict[str, Any] = {"rounds": rounds}
    for n, results in runs.items():
        out[f"workers_{n}"] = {k: summary([r[k] for r in results])["p50"]
                               for k in ("rps", "p50_ms", "p99_ms")} | {"runs": results}
    return out


def _load(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r.get(k) for k in ("rps", "p50_ms", "p99_ms", "non_2xx")}


def _answered_by(port: int, pid: int) -> bool:
    """A fresh connection's /healthz came from ``pid`` (the kernel picks per connection)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        return int(json.loads(conn.getresponse().read())["pid"]) == pid
    finally:
        conn.close()


def spare_memory(p: Platform, name: str) -> dict[str, Any]:
    """USS/PSS of the version's spare (one instance forked ahead per Python version)."""
    def spare_pid() -> int | None:
        r = p.http.get(f"/api/v1/functions/{name}/instances")
        pids = [z.get("spare_pid") for z in r.json().get("zygotes", [])]
        return next((int(x) for x in pids if x), None)

    found: list[int] = []

    def ready() -> bool:
        pid = spare_pid()
        if pid:
            found.append(pid)
        return bool(pid)

    wait_for(ready, 30, f"a spare instance of {name}")
    return smaps_rollup(found[-1]) | {"pid": found[-1]}


def platform_idle(p: Platform) -> dict[str, Any]:
    """The platform process's own memory while idle (functions deployed, no instance)."""
    assert p.proc is not None
    return smaps_rollup(p.proc.pid)


INIT_RE = re.compile(r"Init Duration: ([\d.]+) ms \(sandbox ([\d.]+) ms, zygote ([\d.]+) ms, "
                     r"(?:fork|spare) ([\d.]+) ms\)")


def init_breakdown(p: Platform, name: str, n: int) -> dict[str, Any] | None:
    """The platform's own account of the last n cold starts, from the REPORT log lines."""
    r = p.http.get(f"/api/v1/functions/{name}/logs", params={"limit": 10000})
    if r.status_code != 200:
        return None
    found = [m for line in r.json().get("lines", [])
             if (m := INIT_RE.search(str(line.get("line", ""))))][-n:]
    if not found:
        return None
    cols = ("init_ms", "sandbox_ms", "zygote_ms", "fork_ms")
    return {c: summary([float(m.group(i + 1)) for m in found]) for i, c in enumerate(cols)}


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, dict[str, str]]:
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}


def never_invoked(p: Platform, n: int) -> dict[str, Any]:
    """Deploy a new version (a changed comment), then time its first request."""
    first: list[float] = []
    deploys: list[float] = []
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=120)
    with tempfile.TemporaryDirectory(prefix="squall-bench-fresh-") as tmp:
        try:
            for i in range(n):
                bundle = Path(tmp) / f"v{i}"
                shutil.copytree(FUNCTIONS / "hello", bundle)
                with open(bundle / "handler.py", "a") as f:
                    f.write(f"\n# variant {i} {time.time_ns()}\n")
                deploys.append(p.deploy(bundle, "fresh") * 1000.0)
                t0 = time.perf_counter()
                status, _ = _get(conn, "/fn/fresh")
                first.append((time.perf_counter() - t0) * 1000.0)
                if status != 200:
                    raise RuntimeError(f"first GET /fn/fresh answered {status}")
        finally:
            conn.close()
    return {"ms": first, **summary(first), "deploy_ms": deploys, "deploy": summary(deploys),
            "init": init_breakdown(p, "fresh", n)}


async def _burst(url: str, n: int) -> tuple[list[float], list[int], list[str]]:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        async def one() -> tuple[float, int, str]:
            t0 = time.perf_counter()
            r = await client.get(url)
            return (time.perf_counter() - t0) * 1000.0, r.status_code, \
                r.headers.get(INSTANCE_HEADER, "")
        results = await asyncio.gather(*(one() for _ in range(n)))
    return [r[0] for r in results], [r[1] for r in results], [r[2] for r in results]


def scale_out(p: Platform, n: int) -> dict[str, Any]:
    """n concurrent requests to a 100 ms function that starts at zero instances."""
    p.scale_to_zero("slow")
    before = p.created_total("slow")
    t0 = time.perf_counter()
    lat, statuses, ids = asyncio.run(_burst(f"{p.url}/fn/slow", n))
    total_ms = (time.perf_counter() - t0) * 1000.0
    live = len(p.live_instances("slow"))
    created = p.created_total("slow")
    return {
        "total_ms": total_ms, "latency": summary(lat), "ms": lat,
        "ok": sum(1 for s in statuses if s == 200),
        "statuses": sorted(set(statuses)),
        "instances_after": live,
        "instances_created": None if created is None or before is None else created - before,
        "distinct_instance_ids": len({i for i in ids if i}) if any(ids) else None,
    }


def memory(p: Platform, name: str, count: int) -> dict[str, Any]:
    """USS/PSS of `count` warm idle instances (held by min instances)."""
    p.scale(name, {"min": count})
    try:
        wait_for(lambda: len(_with_pid(p, name)) >= count, 120, f"{count} warm {name} instances")
        per = [smaps_rollup(int(i["pid"])) | {"pid": int(i["pid"])} for i in _with_pid(p, name)]
    finally:
        p.scale(name, {"min": 0})
        p.scale_to_zero(name)
    uss = [m["uss_mb"] for m in per]
    pss = [m["pss_mb"] for m in per]
    return {"instances": per, "uss_mb": summary(uss)["p50"], "pss_mb": summary(pss)["p50"],
            "fit_in_1gib": int(1024 / summary(uss)["p50"]) if uss and min(uss) > 0 else None}


def _with_pid(p: Platform, name: str) -> list[dict[str, Any]]:
    return [i for i in p.live_instances(name) if i.get("pid")]


def warm(p: Platform, name: str, n: int) -> dict[str, Any]:
    lat = warm_latency("127.0.0.1", p.port, f"/fn/{name}", n)
    return {"ms": lat, **summary(lat)}


def throughput(p: Platform, name: str, quick: bool) -> dict[str, Any]:
    return wrk(f"{p.url}/fn/{name}", duration_s=2 if quick else 5)


def run_main(quick: bool, sandbox: str | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Everything on one platform process."""
    out: dict[str, Any] = {"sandbox": sandbox or "auto"}
    with Platform(sandbox) as p:
        health = p.health()
        out["sandbox_actual"] = health.get("sandbox")
        out["sandbox_warnings"] = health.get("warnings")
        out["deploy_hello_s"] = p.deploy(FUNCTIONS / "hello", "hello")
        out["deploy_slow_s"] = p.deploy(FUNCTIONS / "slow", "slow")
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("platform_idle", lambda: platform_idle(p)),  # before any load
            ("warm", lambda: warm(p, "hello", 300 if quick else 2000)),
            ("throughput", lambda: throughput(p, "hello", quick)),
            ("cold_hello", lambda: cold_starts(p, "hello", 15 if quick else 40)),
            ("cold_hello_nopause", lambda: cold_starts(p, "hello", 15 if quick else 40, 0.0)),
            ("cold_hello_fork", lambda: cold_without_spares(quick)),
            ("mem_spare", lambda: spare_memory(p, "hello")),
            ("cores", lambda: cores_curve(quick)),
            ("gateways", lambda: gateways_curve(quick)),
            ("workers", lambda: workers_curve(quick)),
            ("never_invoked", lambda: never_invoked(p, 3 if quick else 10)),
            ("scale_out", lambda: scale_out(p, 100)),
            ("mem_hello", lambda: memory(p, "hello", 3 if quick else 10)),
        ]
        if not quick:
            def heavy() -> dict[str, Any]:
                out["deploy_numpy_s"] = p.deploy(FUNCTIONS / "numpy_fn", "numpy-fn")
                return cold_starts(p, "numpy-fn", 20)
            steps += [("cold_numpy", heavy), ("mem_numpy", lambda: memory(p, "numpy-fn", 10))]
        run_steps(steps, out, log, f"squall[{out['sandbox']}]")
        out["platform_log_tail"] = p.log_tail(20)
    return out


def run_sandbox_only(quick: bool, sandbox: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Cold start and warm latency of hello on a platform with the given sandbox backend."""
    out: dict[str, Any] = {"sandbox": sandbox}
    with Platform(sandbox) as p:
        out["sandbox_actual"] = p.health().get("sandbox")
        p.deploy(FUNCTIONS / "hello", "hello")
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("warm", lambda: warm(p, "hello", 300 if quick else 2000)),
            ("cold_hello", lambda: cold_starts(p, "hello", 15 if quick else 40))]
        for key, fn in steps:
            log(f"  squall[{sandbox}]: {key} ...")
            try:
                out[key] = fn()
            except Exception as exc:
                out[key] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"    FAILED: {out[key]['error']}")
    return out
