"""The results table (what | squall | baseline | ratio | target | met?) and BENCHMARKS.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TITLE = "# Squall benchmarks"
INTRO = ("Produced by `make bench` (`.venv/bin/python bench/run.py`); newest run first. Every "
         "baseline is measured in the same run as Squall. Raw samples: `bench/results/*.json`.")

Row = dict[str, Any]


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _row(what: str, squall: float | None, baseline: float | None, unit: str,
         target: str = "", ok: bool | None = None, baseline_what: str = "") -> Row:
    ratio = None
    if squall is not None and baseline and not math.isnan(squall):
        ratio = squall / baseline
    return {"what": what, "squall": squall, "baseline": baseline, "baseline_what": baseline_what,
            "unit": unit, "ratio": ratio, "target": target, "met": ok}


def _le(v: float | None, limit: float) -> bool | None:
    return None if v is None else v <= limit


def build_rows(r: dict[str, Any]) -> list[Row]:
    a, b, s = r["baseline_a"], r["baseline_b"], r.get("squall", {})
    start = _get(b, "python_start", "p50")
    fork = _get(b, "fork", "p50")
    rows: list[Row] = [
        _row("floor: fork of a warm Python to the child's first byte, p50", None, fork, "ms"),
        _row("floor: fork p99", None, _get(b, "fork", "p99"), "ms"),
        _row("floor: `python -I -S -c pass` p50", None, start, "ms"),
    ]
    cold50, cold99 = _get(s, "cold_hello", "p50"), _get(s, "cold_hello", "p99")
    idle = _get(s, "cold_hello", "idle_s") or 0
    rows += [
        _row(f"cold start hello after {idle:g} s idle, HTTP, fresh connection, p50", cold50,
             start, "ms", "<= 5 ms", _le(cold50, 5), "python -I -S start"),
        _row(f"cold start hello after {idle:g} s idle p99", cold99,
             _get(b, "python_start", "p99"), "ms", "<= 15 ms", _le(cold99, 15),
             "python -I -S start"),
        _row("cold start hello, no pause (back to back), p50",
             _get(s, "cold_hello_nopause", "p50"), None, "ms"),
        _row("cold start hello, no pause, p99", _get(s, "cold_hello_nopause", "p99"), None, "ms"),
        _row(f"cold start hello after {idle:g} s idle with no spare (SQUALL_SPARES=0: forked on "
             f"the request's path), p50", _get(s, "cold_hello_fork", "p50"), fork, "ms",
             baseline_what="bare fork"),
        _row("cold start hello with no spare, p99", _get(s, "cold_hello_fork", "p99"),
             _get(b, "fork", "p99"), "ms", baseline_what="bare fork"),
    ]
    heavy = r.get("heavy_import")
    np50 = _get(s, "cold_numpy", "p50")
    if heavy is not None or np50 is not None:
        hb = _get(heavy, "start", "p50")
        rows += [
            _row("cold start numpy+scipy after idle p50", np50, hb, "ms", "<= 10 ms",
                 _le(np50, 10), "fresh python importing them"),
            _row("cold start numpy+scipy p99", _get(s, "cold_numpy", "p99"),
                 _get(heavy, "start", "p99"), "ms",
                 baseline_what="fresh python importing them"),
        ]
    rows.append(_row("first request of a never-invoked version p50",
                     _get(s, "never_invoked", "p50"), start, "ms",
                     baseline_what="python -I -S start"))
    rows.append(_row("deploy of a new version (CLI, end to end) p50",
                     _get(s, "never_invoked", "deploy", "p50"), None, "ms"))
    w50, w99 = _get(s, "warm", "p50"), _get(s, "warm", "p99")
    ratio50 = None if w50 is None else w50 / a["warm"]["p50"]
    rows += [
        _row("warm latency c=1 p50", w50, a["warm"]["p50"], "ms", "<= 6x baseline A",
             None if ratio50 is None else ratio50 <= 6, "uvloop+httptools server"),
        _row("warm latency c=1 p99", w99, a["warm"]["p99"], "ms",
             baseline_what="uvloop+httptools server"),
    ]
    rps, base_rps = _get(s, "throughput", "rps"), _get(a, "wrk", "rps")
    ok = None if rps is None or not base_rps else rps / base_rps >= 0.2
    rows.append(_row("throughput c=32 (wrk)", rps, base_rps, "req/s", ">= 20% of baseline A", ok,
                     "uvloop+httptools server"))
    cores = s.get("cores") or {}
    one, every = _get(cores, "one_core", "rps"), _get(cores, "all_cores", "rps")
    if one is not None and every is not None:
        rows.append(_row("throughput c=32, the platform held to 1 core (wrk on another)", one,
                         None, "req/s"))
        rows.append(_row(f"throughput c=32, the platform on all {cores.get('cpus')} cores "
                         f"(wrk sharing them) vs 1 core", every, one, "req/s",
                         baseline_what="1 core"))
    gw = s.get("gateways") or {}
    one, two = _get(gw, "one", "rps"), _get(gw, "two", "rps")
    if one is not None and two is not None:
        rows.append(_row("throughput c=32, two gateways of a PostgreSQL store on one port "
                         "(--reuse-port) vs one", two, one, "req/s", baseline_what="one gateway"))
    wk = s.get("workers") or {}
    one, two = _get(wk, "workers_1", "rps"), _get(wk, "workers_2", "rps")
    if one is not None and two is not None:
        rows.append(_row(f"throughput c=32, `--workers 2` vs `--workers 1` (SQLite; median of "
                         f"{wk.get('rounds')} alternating rounds)", two, one, "req/s",
                         baseline_what="one worker"))
        rows.append(_row("throughput c=32, `--workers 2`, p99", _get(wk, "workers_2", "p99_ms"),
                         _get(wk, "workers_1", "p99_ms"), "ms", baseline_what="one worker"))
    so = s.get("scale_out") or {}
    if "total_ms" in so:
        rows.append(_row(f"scale-out: 100 concurrent x 100 ms from zero ({so['ok']}/100 ok)",
                         so["total_ms"], 100.0, "ms", baseline_what="one wave of 100 ms"))
        rows.append(_row("scale-out: instances created", so.get("instances_created"), None, "n"))
    for key, label in (("mem_hello", "hello"), ("mem_numpy", "numpy+scipy")):
        m = s.get(key) or {}
        if "uss_mb" in m:
            floor = _get(b, "forked_child_mem", "uss_mb")
            ok = _le(m["uss_mb"], 2) if key == "mem_hello" else None
            rows.append(_row(f"USS per warm idle instance, {label}", m["uss_mb"], floor, "MB",
                             "<= 2 MB" if key == "mem_hello" else "", ok,
                             "idle fork of python -I -S"))
            rows.append(_row(f"PSS per warm idle instance, {label}", m["pss_mb"], None, "MB"))
            if key == "mem_hello" and m.get("fit_in_1gib"):
                rows.append(_row("idle hello instances in 1 GiB (1024 / USS)",
                                 m["fit_in_1gib"], None, "n"))
    spare = s.get("mem_spare") or {}
    if "uss_mb" in spare:
        rows.append(_row("USS of the spare instance kept per Python version (hello)",
                         spare["uss_mb"], None, "MB"))
    plat = s.get("platform_idle") or {}
    if "rss_mb" in plat:
        rows.append(_row("platform process idle RSS (USS)", plat["rss_mb"], plat.get("uss_mb"),
                         "MB", baseline_what="its USS"))
    proc = r.get("squall_process") or {}
    for key, label in (("cold_hello", "cold start p50"), ("warm", "warm c=1 p50")):
        bw, pr = _get(s, key, "p50"), _get(proc, key, "p50")
        if bw is not None and pr is not None:
            rows.append(_row(f"sandbox {s.get('sandbox_actual')} vs {proc.get('sandbox_actual')}: "
                             f"{label}", bw, pr, "ms",
                             baseline_what="SQUALL_SANDBOX=process"))
    return (rows + _event_rows(r.get("events") or {}) + _tenancy_rows(r.get("tenancy") or {})
            + _s3_rows(r.get("s3") or {}) + _runtime_rows(r.get("runtimes") or {})
            + _cluster_rows(r.get("cluster") or {}))


def _cluster_rows(c: dict[str, Any]) -> list[Row]:
    """One machine vs --cluster with 1 and 3 Ray nodes on it; failover (bench/cluster_bench.py)."""
    rows: list[Row] = []
    local = c.get("local") or {}
    for key, label in (("nodes_1", "1 Ray node"), ("nodes_3", "3 Ray nodes on this machine")):
        got = c.get(key) or {}
        if "c1" not in got:
            continue
        rows.append(_row(f"cluster, {label}: warm hello c=1 p50", got["c1"]["p50"],
                         _get(local, "c1", "p50"), "ms", baseline_what="one machine, no cluster"))
        rows.append(_row(f"cluster, {label}: hello c=32 (p99 {_fmt(got.get('c32_p99_ms'))} ms)",
                         got.get("c32_rps"), local.get("c32_rps"), "req/s",
                         baseline_what="one machine, no cluster"))
    f = c.get("failover") or {}
    if "async_lost" in f:
        rows.append(_row(f"cluster failover: async events lost of {f['async_accepted']} "
                         f"accepted (a worker node killed under load)", f["async_lost"], None,
                         "n", "0", f["async_lost"] == 0))
        errors = sum(f["sync_errors"].values())
        rows.append(_row(f"cluster failover: sync errors of {f['sync_requests']} requests "
                         f"({f['sync_errors'] or 'none'}), all 502 instance_lost", errors, None,
                         "n", "only in-flight", set(f["sync_errors"]) <= {502, "502"}))
        rows.append(_row("cluster failover: kill -> every request succeeds again",
                         f["recovered_after_s"], None, "s"))
        rows.append(_row("cluster: a new Ray node -> its agent serving", f["node_join_s"], None,
                         "s"))
    return rows


def _s3_rows(s3: dict[str, Any]) -> list[Row]:
    """Object store PUT/GET against writing the same bytes to the same disk, and the storage
    trigger's upload -> handler start latency (bench/s3.py)."""
    rows: list[Row] = []
    disk = "write+fsync of the same bytes, same disk"
    for key, label in (("put_get_1mb", "1 MB"), ("put_get_100mb", "100 MB")):
        t = s3.get(key) or {}
        if "put" in t:
            rows += [_row(f"object store PUT, {label} objects (n={t['n']})", t["put"], t["copy"],
                          "MB/s", baseline_what=disk),
                     _row(f"object store GET, {label} objects (n={t['n']})", t["get"], t["copy"],
                          "MB/s", baseline_what=disk)]
    lat = s3.get("upload_to_start") or {}
    for p in ("p50", "p99"):
        if p in lat:
            rows.append(_row(f"storage trigger: PUT sent -> handler start {p} (n={lat['n']})",
                             lat[p], None, "ms"))
    return rows


def _runtime_rows(rt: dict[str, Any]) -> list[Row]:
    """Cold starts after 1 s idle per runtime, beside a fresh process (bench/runtimes_bench.py)."""
    rows: list[Row] = []
    fresh = {"python hello": "python3 -I -S -c pass (fresh process)",
             "FastAPI app (asgi)": "python3 -I -S -c pass (fresh process)",
             "node hello": "node -e 0 (fresh process)"}
    for label, row in (rt.get("rows") or {}).items():
        base_key = fresh.get(label)
        base = _get(rt, base_key, "p50") if base_key else None
        rows.append(_row(f"runtime {label}: cold start after 1 s idle p50", row["cold"]["p50"],
                         base, "ms", baseline_what=base_key or ""))
        rows.append(_row(f"runtime {label}: warm p50", row["warm"]["p50"], None, "ms"))
    return rows


def _tenancy_rows(t: dict[str, Any]) -> list[Row]:
    """Tenant B's warm latency while tenant A is driven past its quota (bench/tenancy_bench.py)."""
    if "p50_ratio" not in t:
        return []
    idle, loaded = t["quiet_idle"]["p50"], t["quiet_loaded"]["p50"]
    return [
        _row("tenant B warm p50 while tenant A is at its quota (wrk c=32, mostly 429)", loaded,
             idle, "ms", "<= 2x B idle", loaded <= 2 * idle, "tenant B idle"),
        _row("tenant A requests answered (429 tenant_concurrency_exceeded beyond 4, "
             "refusals paced at SQUALL_REFUSALS_PER_S)", t.get("noisy_rps"), None, "req/s"),
        _row("tenant B warm p99 while tenant A is at its quota", t["quiet_loaded"]["p99"],
             t["quiet_idle"]["p99"], "ms", baseline_what="tenant B idle"),
    ]


def _event_rows(ev: dict[str, Any]) -> list[Row]:
    """Async queue throughput and publish -> handler start latency (bench/events_bench.py)."""
    rows: list[Row] = []
    tp, base = ev.get("async_throughput") or {}, _get(ev, "post_baseline", "accepted_per_s")
    post = "uvloop+httptools server, same POST load"
    if "accepted_per_s" in tp:
        rows += [
            _row("async invoke: accepted (wrk POST Event, c=32)", tp["accepted_per_s"], base,
                 "events/s", baseline_what=post),
            _row("async invoke: completed, load start to queue drained (max_instances 4)",
                 tp["completed_per_s"], base, "events/s", baseline_what=post)]
    two = ev.get("async_throughput_workers") or {}
    if "accepted_per_s" in two:  # the same load on `squall up --workers 2`
        rows += [
            _row("async invoke, `--workers 2`: accepted", two["accepted_per_s"],
                 tp.get("accepted_per_s"), "events/s", baseline_what="one worker"),
            _row("async invoke, `--workers 2`: completed (max_instances 4 across both)",
                 two["completed_per_s"], tp.get("completed_per_s"), "events/s",
                 baseline_what="one worker")]
    alone = ev.get("async_accept_only") or {}
    if "accepted_per_s" in alone:  # nothing delivered meanwhile: the accept path's own ceiling
        rows.append(_row("async invoke: accepted with no delivery meanwhile (ASYNC_WORKERS=0)",
                         alone["accepted_per_s"], base, "events/s", baseline_what=post))
    ins = ev.get("event_inserts") or {}
    if "us_per_event_v7" in ins:
        rows.append(_row(f"store: one event inserted, batches of 16, {ins['events']:,} events "
                         "(version 7 request ids)", ins["us_per_event_v7"],
                         ins["us_per_event_v4"], "us", baseline_what="random version 4 ids"))
    js = ev.get("async_throughput_nats") or {}
    if "accepted_per_s" in js:  # the same load, NATS JetStream carrying the queue
        rows += [
            _row("async invoke, --queue nats://: accepted", js["accepted_per_s"],
                 tp.get("accepted_per_s"), "events/s", baseline_what="the store's table"),
            _row("async invoke, --queue nats://: completed", js["completed_per_s"],
                 tp.get("completed_per_s"), "events/s", baseline_what="the store's table")]
    for kind in ("redis", "nats", "amqp", "mqtt", "postgres"):
        lat = ev.get(f"latency_{kind}") or {}
        for p in ("p50", "p99"):
            if "squall" in lat:
                rows.append(_row(f"{kind} publish -> handler start {p} (n={lat['squall']['n']})",
                                 lat["squall"][p], _get(lat, "broker", p), "ms",
                                 baseline_what="raw broker round trip"))
    return rows


def peers_table(peers: dict[str, Any]) -> str:
    """The side-by-side rows of the peer harness (bench/run.py --peers)."""
    lines = ["| peer | warm c=1 p50 | warm c=32 req/s (p99) | scale-from-zero p50 | idle RSS |",
             "| --- | --- | --- | --- | --- |"]
    for name, d in peers.items():
        if not isinstance(d, dict) or ("warm" not in d and "scale0" not in d):
            continue
        c1, c32 = _get(d, "warm", "c1") or {}, _get(d, "warm", "c32") or {}
        rss = _get(d, "warm", "idle_mem", "rss_kb")
        s0 = _get(d, "scale0", "median_ms")
        lines.append(f"| {d.get('name', name)} | {_fmt(c1.get('p50_ms'), 'ms')} | "
                     f"{_fmt(c32.get('rps'))} ({_fmt(c32.get('p99_ms'), 'ms')}) | "
                     f"{_fmt(s0, 'ms')} | {_fmt(None if rss is None else rss / 1024, 'MiB')} |")
    return "\n".join(lines)


def _fmt(v: Any, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        text = f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
    else:
        text = str(v)
    return f"{text} {unit}".strip()


def table(rows: list[Row]) -> str:
    lines = ["| what | squall | baseline | ratio | target | met? |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        base = _fmt(row["baseline"], row["unit"])
        if row["baseline_what"] and row["baseline"] is not None:
            base += f" ({row['baseline_what']})"
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        met = {True: "yes", False: "**no**", None: "—"}[row["met"]]
        lines.append(f"| {row['what']} | {_fmt(row['squall'], row['unit'])} | {base} | {ratio} "
                     f"| {row['target'] or '—'} | {met} |")
    return "\n".join(lines)


def section(r: dict[str, Any], rows: list[Row], json_name: str, notes: list[str]) -> str:
    m = r["machine"]
    head = [f"## {r['date']}{' (quick)' if r['quick'] else ''}", "",
            f"Machine: `{m['uname']}`, {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, "
            f"Python {m['python']}. Sandbox: {_get(r, 'squall', 'sandbox_actual') or '—'}. "
            f"Raw: `bench/results/{json_name}`.", "", table(rows), ""]
    peers = r.get("peers")
    if peers:
        head += ["Peers, same machine, same run (`bench/run.py --peers`; raw: "
                 "`bench/results/peers/`):", "", peers_table(peers), ""]
    if notes:
        head += [*(f"- {n}" for n in notes), ""]
    return "\n".join(head)


def write_benchmarks_md(path: Path, new_section: str) -> None:
    """Insert the new section at the top, under the title; keep every older section."""
    old = path.read_text() if path.exists() else ""
    body = old
    if old.startswith(TITLE):
        body = old[len(TITLE):].lstrip("\n")
        if body.startswith(INTRO):
            body = body[len(INTRO):].lstrip("\n")
    path.write_text(f"{TITLE}\n\n{INTRO}\n\n{new_section}\n{body}".rstrip("\n") + "\n")
