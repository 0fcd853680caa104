"""`squall up --workers N`: several gateway processes on one data dir and one port
(squall.workers), the limits that hold across them (squall.tokens) and the SQLite change feed
that keeps their caches in step (squall.store.changes). Real processes, sockets and files."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from squall.config import Settings, workers_count
from squall.observability.metrics import merge
from squall.store.db import Database
from squall.tenancy.model import TenantLimits
from squall.tenancy.quota import Quotas
from squall.tokens import SharedLimits, Slots
from squall.workers import decode, encode
from tests.conftest import PlatformProc, wait_for

# A child process that takes Slots tokens until refused, reports how many, and holds them.
HOLDER = """
import sys, time
from pathlib import Path
from squall.tokens import Slots
s = Slots(Path(sys.argv[1]), int(sys.argv[2]))
n = 0
while n < int(sys.argv[3]) and s.take():
    n += 1
print(n, flush=True)
time.sleep(60)
"""


def _holder(path: Path, n: int, want: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(n), str(want)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def test_slots_are_shared_by_processes_and_freed_by_death(tmp_path: Path) -> None:
    path = tmp_path / "slots"
    mine = Slots(path, 3)
    assert mine.take()
    other, took = _holder(path, 3, 10)  # it gets what this process left
    try:
        assert took == 2
        assert not mine.take()  # all three are held
        mine.give()
        assert mine.take()  # the one this process gave back, not one of the other's
        assert not mine.take()
    finally:
        other.kill()
        other.wait()
    # The kernel dropped the dead process's locks: its two tokens are free again.
    assert mine.take() and mine.take() and not mine.take()


def test_each_worker_takes_from_its_own_share_first(tmp_path: Path) -> None:
    """Worker 1 of 2 starts at the second half of the tokens, so it rarely tries one worker 0
    holds; once its half is held it takes what is free of the other's, and no more than n."""
    path = tmp_path / "slots"
    other, took = _holder(path, 8, 3)  # worker 0's share first: tokens 0, 1, 2
    try:
        assert took == 3
        mine = Slots(path, 8, (1, 2))
        got = []
        while mine.take():
            got.append(sorted(mine.mine))
        assert got[:4] == [[4], [4, 5], [4, 5, 6], [4, 5, 6, 7]]
        assert sorted(mine.mine) == [3, 4, 5, 6, 7]  # the one free token of the other half
    finally:
        other.kill()
        other.wait()


def test_a_rate_is_one_bucket_for_every_worker(tmp_path: Path) -> None:
    SharedLimits.reset(tmp_path / "limits")
    now = [100.0]
    quotas = []
    for index in (0, 1):
        q = Quotas(lambda _t: TenantLimits(rate=5), clock=lambda: now[0])
        q.shared = SharedLimits(tmp_path / "limits", index, 2)
        quotas.append(q)
    allowed = 0
    for i in range(10):  # alternate workers at one instant: a burst of 5 in all, not 5 each
        try:
            quotas[i % 2].enter("acme")
            allowed += 1
        except Exception as exc:
            assert getattr(exc, "code", "") == "rate_limited"
    assert allowed == 5
    now[0] += 0.2  # one token back, whichever worker takes it
    quotas[1].enter("acme")
    with pytest.raises(Exception, match="rate"):
        quotas[0].enter("acme")


def test_tally_sums_the_other_workers(tmp_path: Path) -> None:
    SharedLimits.reset(tmp_path / "limits")
    a = SharedLimits(tmp_path / "limits", 0, 3).tally("acme")
    b = SharedLimits(tmp_path / "limits", 1, 3).tally("acme")
    c = SharedLimits(tmp_path / "limits", 2, 3).tally("acme")
    a.set(256)
    b.set(128)
    assert c.others() == 384 and a.others() == 128 and b.others() == 256
    assert c.lowest(exclude=2) == 128 and c.lowest() == 0  # c never wrote


def test_metrics_merge_sums_workers_and_keeps_store_figures_once() -> None:
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

    def exposition(invocations: int, depth: int) -> str:
        r = CollectorRegistry()
        Counter("squall_invocations", "I.", ["function"], registry=r).labels("f").inc(
            invocations)
        Gauge("squall_async_queue_depth", "D.", ["function"], registry=r).labels("f").set(
            depth)
        Gauge("squall_instances", "N.", ["function"], registry=r).labels("f").set(2)
        return generate_latest(r).decode()

    merged = {s.name: s.value for f in merge(exposition(3, 7), [exposition(4, 99),
                                                                  exposition(5, 1)])
              for s in f.samples}
    assert merged["squall_invocations_total"] == 12
    assert merged["squall_instances"] == 6
    assert merged["squall_async_queue_depth"] == 7  # the store's: the scraped worker's read


def test_settings_travel_whole(tmp_path: Path) -> None:
    s = Settings(port=1234, data_dir=tmp_path, master_key="a2V5", store="", workers=3)
    s.prices.per_gb_second = 0.5
    back = decode(encode(s, 2))
    assert back.worker_index == 2 and back.workers == 3 and back.port == 1234
    assert back.master_key == "a2V5" and back.data_dir == tmp_path
    assert back.prices.per_gb_second == 0.5


def test_sqlite_change_feed_reports_cached_tables(tmp_path: Path) -> None:
    """Two processes' connections to one SQLite file: a write to a cached table through one
    is reported to the other's watch; a write to another table is not."""
    writer, reader = Database(tmp_path / "s.db"), Database(tmp_path / "s.db")
    writer.open()
    reader.open()
    reader.shared = True
    seen: list[frozenset[str]] = []
    totals: list[int] = []

    async def main() -> None:
        async def on_change(tables: frozenset[str]) -> None:
            seen.append(tables)

        task = asyncio.create_task(reader.watch(on_change, totals.append))
        await asyncio.sleep(0.2)
        assert len(seen) == 1 and "functions" in seen[0]  # everything, once, at the start
        writer.run_sync(lambda c: c.execute(
            "INSERT INTO leases (name, holder, expires_at) VALUES ('x', 'y', 1)"))
        await asyncio.sleep(0.2)
        assert len(seen) == 1  # not a cached table
        writer.run_sync(lambda c: c.execute(
            "INSERT INTO aliases (namespace, function, name, version, revision, created_at, "
            "updated_at) VALUES ('default', 'f', 'live', 1, 'r', 0, 0)"))
        await asyncio.sleep(0.2)
        assert seen[1:] == [frozenset({"aliases"})]
        assert totals[-1] > totals[0]
        task.cancel()

    try:
        asyncio.run(main())
    finally:
        writer.close()
        reader.close()


# ---- a platform with two workers ------------------------------------------------------------

def _serving_pids(port: int) -> set[int]:
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


def _worker_pids(platform: PlatformProc) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(platform.pid), "-f", "squall.workers"],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"


SPAN = """
import time
def handler(event, context):
    t0 = time.time()
    time.sleep(0.3)
    return {"start": t0, "end": time.time()}
"""
SECRET_FN = """
import hashlib, os
def handler(event, context):
    return hashlib.sha256(os.environ["DB_PASSWORD"].encode()).hexdigest()
"""
HELLO = """
def handler(event, context):
    return {"hello": context.function_name}
"""


def test_two_workers_serve_one_platform(platform_factory: Callable[..., PlatformProc],
                                        make_fn: Callable[..., Path]) -> None:
    p = platform_factory(SQUALL_WORKERS="2", SQUALL_SANDBOX="process")
    wait_for(lambda: "worker 1 serving" in p.log(), 60, message="worker 1 to serve")
    workers = _worker_pids(p)
    assert len(workers) == 1

    # Both processes take connections on the one port.
    clients = [httpx.Client(base_url=p.url, timeout=30) for _ in range(24)]
    try:
        for c in clients:
            assert c.get("/healthz").status_code == 200
        assert _serving_pids(p.port) >= {p.pid, workers[0]}
    finally:
        for c in clients:
            c.close()

    # Read your writes: a deploy or a key answered by one worker is served by every worker.
    p.deploy(make_fn("hi", HELLO))
    for _ in range(12):
        with httpx.Client(base_url=p.url, headers=p.http.headers, timeout=30) as c:
            r = c.post("/api/v1/functions/hi/invocations", json={})
            assert r.status_code == 200 and r.json() == {"hello": "hi"}, r.text
    # The worker that did not deploy took the version from the store, and says who it is.
    assert re.search(r"\[worker [01]\] squall\.sync: took version 1 of default/hi", p.log())
    made = json.loads(p.cli("key", "create", "--tenant", "default", "--scope", "invoke",
                            "--json").stdout)
    for _ in range(12):
        with httpx.Client(base_url=p.url, timeout=30,
                          headers={"authorization": f"Bearer {made['key']}"}) as c:
            assert c.post("/api/v1/functions/hi/invocations", json={}).status_code == 200

    # A rotated master key reaches every worker: a secret sealed under the new key opens for a
    # version first started after the rotation, whichever worker starts it.
    p.cli("secret", "set", "DB_PASSWORD", input="s3cret")
    p.cli("secret", "rotate-master")
    p.deploy(make_fn("sec", SECRET_FN, toml='env = { DB_PASSWORD = "secret:DB_PASSWORD" }\n'))
    for _ in range(12):
        with httpx.Client(base_url=p.url, headers=p.http.headers, timeout=30) as c:
            r = c.post("/api/v1/functions/sec/invocations", json={})
            assert r.status_code == 200, r.text
            assert r.json() == hashlib.sha256(b"s3cret").hexdigest()

    # /metrics from either worker counts both workers' invocations (as of their last second).
    def counted() -> set[float]:
        totals = set()
        for _ in range(8):
            with httpx.Client(base_url=p.url, headers=p.http.headers, timeout=30) as c:
                text = c.get("/metrics").text
            totals.add(sum(s.value for f in text_string_to_metric_families(text)
                           for s in f.samples if s.name == "squall_invocations_total"
                           and s.labels.get("function") == "hi"))
        return totals

    wait_for(lambda: counted() == {24.0}, 10, message="both workers' 24 invocations of hi")

    # instances, describe and scale answer for every worker, whichever one a client reaches:
    # each worker's own view (asked on its unix socket) adds up to what a client sees.
    def local(index: int, path: str, method: str = "GET", **kw: Any) -> Any:
        sock = p.data_dir / "limits" / f"worker-{index}.sock"
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://w",
                          headers=p.http.headers, timeout=30) as c:
            r = c.request(method, path, **kw)
            assert r.status_code == 200, r.text
            return r.json()

    own = [{i["id"] for i in local(w, "/api/v1/functions/hi/instances")["instances"]}
           for w in (0, 1)]
    assert own[0] and own[1] and not own[0] & own[1]
    for _ in range(6):
        with httpx.Client(base_url=p.url, headers=p.http.headers, timeout=30) as c:
            seen = c.get("/api/v1/functions/hi/instances").json()["instances"]
            assert {i["id"] for i in seen} == own[0] | own[1]
            assert c.get("/api/v1/functions/hi").json()["instances"] == len(own[0] | own[1])
    stopped = p.http.post("/api/v1/functions/hi/scale", json={"to": 0}).json()
    assert stopped["stopped"] == len(own[0] | own[1]) and stopped["instances"] == 0
    assert not local(0, "/api/v1/functions/hi/instances")["instances"]
    assert not local(1, "/api/v1/functions/hi/instances")["instances"]
    audited = p.http.get("/api/v1/audit").json()
    assert sum(1 for e in audited["entries"] if e["action"] == "scale") == 1

    # max_instances = 1 holds across the workers: no two executions overlap.
    p.deploy(make_fn("one", SPAN, toml="max_instances = 1\n"))
    spans: list[dict[str, Any]] = []

    def call() -> None:
        with httpx.Client(base_url=p.url, headers=p.http.headers, timeout=60) as c:
            r = c.post("/api/v1/functions/one/invocations", json={})
            assert r.status_code == 200, r.text
            spans.append(r.json())

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(spans) == 6
    ordered = sorted(spans, key=lambda s: s["start"])
    for a, b in itertools.pairwise(ordered):
        assert b["start"] >= a["end"] - 0.005, f"executions overlap: {ordered}"

    # A worker killed with -9 is started again by worker 0; the platform keeps answering.
    os.kill(workers[0], signal.SIGKILL)
    wait_for(lambda: "starting it again" in p.log(), 30, message="worker 0 to notice")
    wait_for(lambda: p.log().count("worker 1 serving") == 2, 60, message="the new worker 1")
    again = _worker_pids(p)
    assert len(again) == 1 and again[0] != workers[0]
    assert p.invoke("hi").status_code == 200

    # SIGTERM to worker 0 stops them all, gracefully.
    assert p.stop() == 0
    assert not _alive(again[0])


def test_workers_die_with_worker_0(platform_factory: Callable[..., PlatformProc]) -> None:
    p = platform_factory(SQUALL_WORKERS="3", SQUALL_SANDBOX="process")
    wait_for(lambda: "worker 2 serving" in p.log() and "worker 1 serving" in p.log(), 60,
             message="workers 1 and 2")
    workers = _worker_pids(p)
    assert len(workers) == 2
    p.kill9()
    wait_for(lambda: not any(_alive(w) for w in workers), 10, message="the workers to go with it")
    # The data dir is free again: a new platform starts on it, with its workers.
    p.start()
    wait_for(lambda: p.log().count("worker 2 serving") == 2, 60, message="the new workers")


def test_bad_worker_counts_are_refused(tmp_path: Path) -> None:
    from tests.conftest import SQUALL

    for n, extra in (("0", []), ("2", ["--cluster", "auto"])):
        r = subprocess.run([SQUALL, "up", "--data-dir", str(tmp_path), "--workers", n, *extra],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SQUALL_SANDBOX": "process"})
        assert r.returncode != 0 and "invalid_workers" in r.stderr, r.stderr
    for args, env, says in ((["--workers", "many"], {}, "give a number or auto"),
                            ([], {"SQUALL_WORKERS": "many"}, "SQUALL_WORKERS='many'")):
        r = subprocess.run([SQUALL, "up", "--data-dir", str(tmp_path), *args],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SQUALL_SANDBOX": "process", **env})
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    # auto: one worker per CPU this process may use
    assert workers_count("auto") == len(os.sched_getaffinity(0)) and workers_count("3") == 3


def test_tenant_limits_hold_across_workers(platform_factory: Callable[..., PlatformProc],
                                           make_fn: Callable[..., Path]) -> None:
    """A tenant's concurrency and instance memory are the platform's: what one worker runs
    counts against what another may start (each worker asked on its own unix socket)."""
    from tests.test_tenancy import SLOW, deploy_as, key

    p = platform_factory(SQUALL_WORKERS="2", SQUALL_SANDBOX="process")
    wait_for(lambda: "worker 1 serving" in p.log(), 60, message="worker 1 to serve")
    p.cli("tenant", "create", "acme", "--max-concurrency", "1", "--max-memory-mb", "128")
    k = key(p, "acme", "deploy,invoke")["key"]
    assert deploy_as(p, k, make_fn("slow", SLOW)).status_code == 201

    def at(index: int, sleep: float) -> httpx.Response:
        sock = p.data_dir / "limits" / f"worker-{index}.sock"
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://w",
                          headers={"authorization": f"Bearer {k}"}, timeout=60) as c:
            return c.post("/api/v1/functions/slow/invocations", json={"sleep": sleep})

    first: list[httpx.Response] = []
    t = threading.Thread(target=lambda: first.append(at(0, 3)))
    t.start()
    wait_for(lambda: p.http.get("/api/v1/tenants/acme").json()["usage"][
        "concurrent_executions"] == 1, 30, message="the execution on worker 0")
    busy = at(1, 0)
    t.join()
    assert first[0].status_code == 200, first[0].text
    assert busy.status_code == 429 and busy.json()["error"]["code"] == \
        "tenant_concurrency_exceeded", busy.text
    # Worker 0 keeps its 128 MB instance warm: worker 1 may not start another.
    full = at(1, 0)
    assert full.status_code == 429 and full.json()["error"]["code"] == \
        "tenant_memory_exceeded", full.text
    assert at(0, 0).status_code == 200  # worker 0 reuses its own
