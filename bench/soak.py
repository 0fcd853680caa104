"""Soak test: `make soak` runs `.venv/bin/python bench/soak.py` (not part of `make test`).

Starts its own `squall up` (free loopback port, temporary data dir), drives a moderate mixed load
for SOAK_MINUTES / --minutes (30 by default), samples the platform process every --sample-s
seconds, then writes bench/results/soak-<date>.md and .png with the slope of every series per hour
(least squares). Flat is the target; a series that keeps growing is a leak or an unbounded table.

Load, paced to --rate requests/s in total (60 by default, fine for a 2-core machine):
  sync HTTP    GET /fn/hello-a, /fn/hello-b, /fn/hello-c       (50 %)
  logs         GET /fn/logger: three 1 KB lines per call          (20 %)
  async        POST /api/v1/functions/evt/invocations, Event type (30 %)
  every minute a deploy of hello-a with new content; every 3 minutes a scale to zero of
  hello-b and logger.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from soak_report import write_report  # noqa: E402
from util import free_port, percentile, stop, wait_for  # noqa: E402

from squall.bundle.archive import pack_dir  # noqa: E402

HELLO = 'VERSION = {n}\n\ndef handler(event, context):\n    return {{"ok": True, "v": VERSION}}\n'
LOGGER = ('LINE = "x" * 1024\n\ndef handler(event, context):\n'
          '    for _ in range(3):\n        print(LINE)\n    return "logged"\n')
NOOP = "def handler(event, context):\n    return None\n"
# (kind, target) per request, in a fixed rotation of 10: the mix in the module docstring
MIX = [("sync", "hello-a"), ("async", "evt"), ("sync", "hello-b"), ("logs", "logger"),
       ("sync", "hello-c"), ("async", "evt"), ("sync", "hello-a"), ("logs", "logger"),
       ("sync", "hello-b"), ("async", "evt")]


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the platform under test ---------------------------------------------------------------

class Platform:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = root / "data"
        self.log_path = root / "squall.log"
        self.headers: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = Path(sys.executable).parent / "squall"
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [str(exe), "up", "--port", str(self.port), "--data-dir", str(self.data_dir)],
                stdout=out, stderr=subprocess.STDOUT)
        wait_for(self._healthy, 60, f"squall up on {self.url}")
        key = self.data_dir / "admin-key"
        if key.exists():  # platforms with API keys write the admin key on first start
            self.headers["Authorization"] = f"Bearer {key.read_text().strip()}"

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"squall up exited early:\n{self.log_path.read_text()[-3000:]}")
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        stop(self.proc, grace_s=30)
        return self.proc.returncode


def deploy(http: httpx.Client, fn_root: Path, name: str, code: str) -> None:
    d = fn_root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "handler.py").write_text(code)
    r = http.post("/api/v1/functions", params={"default_name": name}, content=pack_dir(d))
    if r.status_code not in (200, 201):
        raise RuntimeError(f"deploy {name}: {r.status_code} {r.text}")


# -- sampling --------------------------------------------------------------------------------

def _status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def descendants(pid: int) -> int:
    """How many processes have ``pid`` as an ancestor (zygotes, instances, bwrap, helpers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # the command name may hold spaces and parentheses: split after the last ")"
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    count, todo = 0, [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        count += len(kids)
        todo.extend(kids)
    return count


def _count_rows(db: Path) -> dict[str, float]:
    # Read-only and closed at once: a reader left open would hold back WAL checkpoints.
    tables = {"logs": "log_rows", "invocations": "invocation_rows", "events": "event_rows"}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return {key: float(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                for table, key in tables.items()}
    finally:
        conn.close()


def _dir_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total / 1e6


def probe(pid: int, data_dir: Path) -> dict[str, float]:
    db = data_dir / "squall.db"
    wal = data_dir / "squall.db-wal"
    out = {"rss_mb": _status_field(pid, "VmRSS") / 1024.0,
           "fds": float(len(os.listdir(f"/proc/{pid}/fd"))),
           "threads": float(_status_field(pid, "Threads")),
           "children": float(descendants(pid)),
           "db_mb": db.stat().st_size / 1e6,
           "wal_mb": wal.stat().st_size / 1e6 if wal.exists() else 0.0,
           "data_dir_mb": _dir_mb(data_dir)}
    out.update(_count_rows(db))
    return out


# -- load ------------------------------------------------------------------------------------

@dataclass
class Tally:
    """Outcomes since the last sample (latencies, statuses) and in total."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)
    all_latencies_ms: list[float] = field(default_factory=list)

    def add(self, kind: str, outcome: str, ms: float) -> None:
        with self.lock:
            self.latencies_ms.append(ms)
            self.statuses[outcome] += 1
            self.total[f"{kind} {outcome}"] += 1
            self.all_latencies_ms.append(ms)

    def take(self) -> tuple[list[float], Counter[str]]:
        with self.lock:
            lat, st = self.latencies_ms, self.statuses
            self.latencies_ms, self.statuses = [], Counter()
        return lat, st


class Load:
    """``workers`` threads share one schedule: request i starts at t0 + i / rate, so the rate
    holds while any worker is free, and never more than rate x duration requests are sent."""

    def __init__(self, p: Platform, rate: float, until: float, workers: int = 8) -> None:
        self.p, self.rate, self.until, self.workers = p, rate, until, workers
        self.tally = Tally()
        self._next = itertools.count()
        self._t0 = time.monotonic()
        self._lock = threading.Lock()

    def run(self) -> None:
        threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _worker(self) -> None:
        with self.p.client() as http:
            while True:
                with self._lock:
                    i = next(self._next)
                at = self._t0 + i / self.rate
                if at >= self.until:
                    return
                time.sleep(max(0.0, at - time.monotonic()))  # pacing, not waiting on state
                kind, target = MIX[i % len(MIX)]
                self._one(http, kind, target, i)

    def _one(self, http: httpx.Client, kind: str, target: str, i: int) -> None:
        t0 = time.perf_counter()
        try:
            if kind == "async":
                r = http.post(f"/api/v1/functions/{target}/invocations", json={"i": i},
                              headers={"x-squall-invocation-type": "Event"})
            else:
                r = http.get(f"/fn/{target}")
            outcome = str(r.status_code)
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        self.tally.add(kind, outcome, (time.perf_counter() - t0) * 1000.0)


def chores(p: Platform, fn_root: Path, until: float, deploy_s: float, zero_s: float,
           done: list[str]) -> None:
    """A deploy of hello-a with new content every ``deploy_s``; hello-b and logger scaled to zero
    every ``zero_s``. Failures are counted in ``done``, not raised: the soak goes on."""
    start = time.monotonic()
    deploys = zeros = 0
    with p.client() as http:
        while time.monotonic() < until:
            time.sleep(1.0)
            elapsed = time.monotonic() - start
            try:
                if elapsed >= (deploys + 1) * deploy_s:
                    deploys += 1
                    deploy(http, fn_root, "hello-a", HELLO.format(n=deploys))
                    done.append("deploy")
                if elapsed >= (zeros + 1) * zero_s:
                    zeros += 1
                    for name in ("hello-b", "logger"):
                        r = http.post(f"/api/v1/functions/{name}/scale", json={"to": 0})
                        done.append("scale_to_zero" if r.status_code == 200
                                    else f"scale_to_zero {r.status_code}")
            except (httpx.HTTPError, RuntimeError) as exc:
                done.append(f"chore failed: {exc}")


def unfinished_events(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT count(*) FROM events WHERE status NOT IN "
                           "('succeeded', 'dead_lettered')").fetchone()
        return int(row[0])
    finally:
        conn.close()


# -- main ------------------------------------------------------------------------------------

def sample(p: Platform, load: Load, t0: float, period_s: float) -> dict[str, float]:
    lat, statuses = load.tally.take()
    row = {"t_min": (time.monotonic() - t0) / 60.0, **probe(p.pid, p.data_dir)}
    row["rps"] = len(lat) / period_s
    row["p99_ms"] = percentile(lat, 99) if lat else 0.0
    row["errors"] = float(sum(n for s, n in statuses.items() if s not in ("200", "202")))
    return row


def drive(p: Platform, args: argparse.Namespace, fn_root: Path, chores_done: list[str]
          ) -> tuple[list[dict[str, float]], Load]:
    """Run the load and the chores for ``args.minutes``, sampling as it goes."""
    t0 = time.monotonic()
    until = t0 + args.minutes * 60.0
    load = Load(p, args.rate, until)
    workers = [threading.Thread(target=load.run, daemon=True),
               threading.Thread(target=chores, daemon=True, args=(
                   p, fn_root, until, args.deploy_s, args.zero_s, chores_done))]
    for w in workers:
        w.start()
    rows = [sample(p, load, t0, 1.0)]
    while time.monotonic() < until:
        time.sleep(min(args.sample_s, max(0.0, until - time.monotonic())))
        rows.append(r := sample(p, load, t0, args.sample_s))
        log(f"{r['t_min']:.1f} min: rss {r['rss_mb']:.1f} MB, fds {r['fds']:g}, "
            f"children {r['children']:g}, db {r['db_mb']:.1f} MB, wal {r['wal_mb']:.1f} MB, "
            f"{r['rps']:.0f} req/s, errors {r['errors']:g}")
    for w in workers:
        w.join(120)
    return rows, load


def summarize(p: Platform, load: Load, chores_done: list[str]) -> dict[str, Any]:
    """Totals, once the async backlog has drained (or two minutes have passed)."""
    db = p.data_dir / "squall.db"
    drain0 = time.monotonic()
    try:
        wait_for(lambda: unfinished_events(db) == 0, 120, "the async queue to drain")
    except TimeoutError:
        pass
    total, lat = load.tally.total, load.tally.all_latencies_ms
    return {"drain_s": time.monotonic() - drain0, "unfinished": unfinished_events(db),
            "requests": sum(total.values()), "outcomes": dict(sorted(total.items())),
            "async_accepted": total.get("async 202", 0),
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
            "chores": dict(Counter("failed" if c.startswith("chore failed") else c
                                   for c in chores_done))}


def soak(args: argparse.Namespace) -> Path:
    root = Path(tempfile.mkdtemp(prefix="squall-soak-"))
    p = Platform(root)
    chores_done: list[str] = []
    info: dict[str, Any] = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
                            "minutes": args.minutes, "rate": args.rate,
                            "deploy_s": args.deploy_s, "zero_s": args.zero_s,
                            "sample_s": args.sample_s}
    try:
        try:
            p.start()
            log(f"platform pid {p.pid} on {p.url}, data dir {p.data_dir}")
            with p.client() as http:
                for name in ("hello-a", "hello-b", "hello-c"):
                    deploy(http, root / "fns", name, HELLO.format(n=0))
                deploy(http, root / "fns", "logger", LOGGER)
                deploy(http, root / "fns", "evt", NOOP)
            rows, load = drive(p, args, root / "fns", chores_done)
            info.update(summarize(p, load, chores_done))
        finally:
            info["exit_code"] = p.stop()
    finally:
        if args.keep:
            log(f"kept {root} (platform log: {p.log_path})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    for failure in [c for c in chores_done if c.startswith("chore failed")][:5]:
        log(failure)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M")
    md, png = out / f"soak-{stamp}.md", out / f"soak-{stamp}.png"
    print(write_report(rows, info, md, png))
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float,
                    default=float(os.environ.get("SOAK_MINUTES", "30")))
    ap.add_argument("--rate", type=float, default=60.0, help="requests per second, in total")
    ap.add_argument("--sample-s", type=float, default=30.0)
    ap.add_argument("--deploy-s", type=float, default=60.0)
    ap.add_argument("--zero-s", type=float, default=180.0)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--keep", action="store_true", help="keep the data dir and platform log")
    md = soak(ap.parse_args())
    log(f"wrote {md} and {md.with_suffix('.png')}")


if __name__ == "__main__":
    main()
