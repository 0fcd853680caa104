"""The soak test's report: a markdown table, the slope of each series per hour (least squares)
and a PNG plot (see soak.py)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

SERIES = ["rss_mb", "fds", "threads", "children", "db_mb", "wal_mb", "log_rows",
          "invocation_rows", "event_rows", "data_dir_mb"]


def slope_per_hour(rows: list[dict[str, float]], key: str, since_min: float = 0.0) -> float:
    pts = [(r["t_min"] / 60.0, r[key]) for r in rows if r["t_min"] >= since_min]
    if len(pts) < 2:
        return float("nan")
    xs, ys = zip(*pts, strict=True)
    return statistics.linear_regression(xs, ys).slope


def machine_line() -> str:
    kernel = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    return f"nproc {os.cpu_count()}, uname -r {kernel}, Python {sys.version.split()[0]}"


def write_plot(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 3, figsize=(14, 12), sharex=True)
    ts = [r["t_min"] for r in rows]
    for ax, key in zip(axes.flat, [*SERIES, "rps", "p99_ms"], strict=False):
        ax.plot(ts, [r[key] for r in rows], marker=".")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(rows: list[dict[str, float]], info: dict[str, Any], md: Path,
                 png: Path) -> str:
    warm = info["minutes"] / 3.0
    # a "### " heading: BENCHMARKS.md keeps soak runs under its "## Soak" heading
    lines = [f"### Soak {info['date']} ({info['minutes']:g} min)", "",
             f"Machine: {machine_line()}.",
             f"Load: {info['rate']:g} req/s paced (50 % sync GET /fn/hello-*, 20 % logger of "
             f"three 1 KB lines, 30 % async events), a deploy every {info['deploy_s']:g} s, "
             f"scale to zero every {info['zero_s']:g} s; sampled every {info['sample_s']:g} s.",
             f"Requests: {info['requests']}; outcomes: {info['outcomes']}; latency p50 "
             f"{info['p50_ms']:.1f} ms, p99 {info['p99_ms']:.1f} ms; chores: {info['chores']}.",
             f"Async: {info['async_accepted']} accepted, {info['unfinished']} unfinished "
             f"{info['drain_s']:.0f} s after the load stopped. Platform exit code: "
             f"{info['exit_code']}.", "",
             "| min | " + " | ".join(SERIES) + " | req/s | p99 ms | errors |",
             "|" + " --- |" * (len(SERIES) + 4)]
    for r in rows:
        cells = [f"{r['t_min']:.1f}", *(_fmt(r[k]) for k in SERIES), f"{r['rps']:.1f}",
                 f"{r['p99_ms']:.1f}", f"{r['errors']:g}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Slope per hour (least squares), over the whole run and after the first "
              f"{warm:.1f} min of warm-up:", "",
              "| series | start | end | slope/h | slope/h after warm-up |",
              "| --- | --- | --- | --- | --- |"]
    for k in SERIES:
        lines.append(f"| {k} | {_fmt(rows[0][k])} | {_fmt(rows[-1][k])} | "
                     f"{slope_per_hour(rows, k):+.3g} | {slope_per_hour(rows, k, warm):+.3g} |")
    lines += ["", f"![soak]({png.name})", ""]
    text = "\n".join(lines)
    md.write_text(text)
    write_plot(rows, png)
    return text


def _fmt(v: float) -> str:
    return f"{v:.0f}" if v == int(v) else f"{v:.2f}"
