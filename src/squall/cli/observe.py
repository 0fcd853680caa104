"""`squall invocations` (a function's invocation history) and `squall top` (a live view)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import click
import httpx

from squall.cli.client import Client, output


def _ts(value: float) -> str:
    return dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@click.command("invocations")
@click.argument("name")
@click.option("--status", default=None,
              help="failed (any failure), or succeeded, timeout, oom, crashed (comma list).")
@click.option("--since", default=None, help="Only invocations newer than this (30m, 1h, 7d).")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def invocations(ctx: click.Context, name: str, status: str | None, since: str | None,
                limit: int, as_json: bool) -> None:
    """A function's recent invocations: trigger, version, timings, status, error type.

    Their logs are one call away: `squall logs NAME --request-id ID`."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if since:
        params["since"] = since
    data = Client.from_ctx(ctx).request(
        "GET", f"/api/v1/functions/{name}/invocations/history", params=params)
    rows = [{**r, "start": _ts(r["start"]), "cold": "cold" if r["cold"] else ""}
            for r in data["invocations"]]
    output(data["invocations"], as_json,
           ["start", "request_id", "trigger", "version", "status", "error_type", "cold",
            "queued_ms", "init_ms", "run_ms", "billed_ms"], rows)
    if not as_json and rows:
        click.echo(f"logs of one: squall logs {name} --request-id <REQUEST_ID>", err=True)


def _scrape(client: Client) -> Any:
    from squall.observability.top import parse

    try:
        resp = client.http.get("/metrics")
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach Squall at {client.url}: {exc}") from None
    if resp.status_code >= 400:
        from squall.cli.client import check

        check(resp)
    return parse(resp.text, time.monotonic())


def _frame(rows: list[Any], interval: float) -> Any:
    from rich.table import Table

    table = Table(title=f"squall top (every {interval:g}s)", title_justify="left")
    for col in ("FUNCTION", "TENANT", "INV/S", "ERRORS", "COLD", "P99 MS", "BUSY", "IDLE",
                "STARTING", "QUEUED"):
        table.add_column(col, justify="left" if col in ("FUNCTION", "TENANT") else "right")
    for r in rows:
        table.add_row(r.function, r.tenant, f"{r.rate:.1f}", f"{r.errors:g}",
                      f"{r.cold_starts:g}", "-" if r.p99_ms is None else f"{r.p99_ms:.1f}",
                      str(r.busy), str(r.idle), str(r.starting), str(r.queued))
    if not rows:
        table.add_row("(no functions)", *[""] * 9)
    return table


@click.command("top")
@click.option("--interval", type=click.FloatRange(0.2, 60), default=1.0, show_default=True,
              help="Seconds between refreshes (rates and p99 cover this interval).")
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.pass_context
def top(ctx: click.Context, interval: float, once: bool) -> None:
    """Functions by invocations/s, errors, cold starts, p99, instances and queue depth."""
    from rich.console import Console
    from rich.live import Live

    from squall.observability.top import rows

    client = Client.from_ctx(ctx)
    before = _scrape(client)
    if once:
        time.sleep(interval)
        Console(width=120).print(_frame(rows(before, _scrape(client)), interval))
        return
    with Live(_frame(rows(None, before), interval), auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                now = _scrape(client)
                live.update(_frame(rows(before, now), interval), refresh=True)
                before = now
        except KeyboardInterrupt:
            return


@click.command("nodes")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def nodes(ctx: click.Context, as_json: bool) -> None:
    """The cluster's node agents as this gateway sees them (squall up --cluster; admin key)."""
    data = Client.from_ctx(ctx).request("GET", "/api/v1/cluster/nodes")
    if not data["cluster"] and not as_json:
        click.echo("not a cluster: this platform runs its instances itself (squall up "
                   "--cluster to use a Ray cluster)")
        return
    rows = [{"node": n["node"][:12], "address": n["address"],
             "state": "up" if n["alive"] else "lost", "cpus": n["cpus"],
             "memory_gb": round(n["memory_bytes"] / 2**30, 1),
             "instances": sum(v["instances"] for v in n["versions"].values()),
             "in_flight": n["in_flight"]} for n in data["nodes"]]
    output(data, as_json,
           ["node", "address", "state", "cpus", "memory_gb", "instances", "in_flight"], rows)


COMMANDS: list[click.Command] = [invocations, top, nodes]
