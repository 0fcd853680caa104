"""CLI: ``squall tenant|key|secret|audit|bill``."""

from __future__ import annotations

import csv
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import click

from squall.cli.client import Client, money, output, table

_LIMIT_OPTIONS = [
    click.option("--max-concurrency", type=int, default=None,
                 help="Concurrent executions (429 tenant_concurrency_exceeded beyond)."),
    click.option("--max-memory-mb", type=int, default=None,
                 help="Total memory of the tenant's instances."),
    click.option("--max-functions", type=int, default=None, help="Number of functions."),
    click.option("--rate", type=float, default=None,
                 help="Invocations per second (token bucket; 429 rate_limited beyond)."),
    click.option("--max-queued", type=int, default=None,
                 help="Async events waiting (429 queue_full beyond)."),
]
_LIMIT_KEYS = ("max_concurrency", "max_memory_mb", "max_functions", "rate", "max_queued")


def _limit_options(fn: Any) -> Any:
    for option in reversed(_LIMIT_OPTIONS):
        fn = option(fn)
    return fn


def _ts(value: float | None) -> str:
    if value is None:
        return "-"
    return dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M")


# --- tenants ---------------------------------------------------------------------------------

@click.group("tenant")
def tenant() -> None:
    """Tenants: the unit of isolation, quotas and billing (admin keys)."""


@tenant.command("create")
@click.argument("name")
@_limit_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tenant_create(ctx: click.Context, /, name: str, as_json: bool, **limits: Any) -> None:
    body = {"name": name, **{k: v for k, v in limits.items() if v is not None}}
    data = Client.from_ctx(ctx).request("POST", "/api/v1/tenants", json=body)
    if as_json:
        output(data, True)
    else:
        click.echo(f"Created tenant {name} (sandbox uid {data['uid']})")


@tenant.command("update")
@click.argument("name")
@_limit_options
@click.option("--clear", multiple=True, type=click.Choice(_LIMIT_KEYS),
              help="Remove a limit (repeatable).")
@click.pass_context
def tenant_update(ctx: click.Context, /, name: str, clear: tuple[str, ...],
                  **limits: Any) -> None:
    body: dict[str, Any] = {k: v for k, v in limits.items() if v is not None}
    body.update({k: None for k in clear})
    if not body:
        raise click.UsageError("give at least one limit option or --clear")
    data = Client.from_ctx(ctx).request("PATCH", f"/api/v1/tenants/{name}", json=body)
    click.echo(json.dumps(data["limits"]))


@tenant.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tenant_ls(ctx: click.Context, as_json: bool) -> None:
    data = Client.from_ctx(ctx).request("GET", "/api/v1/tenants")
    rows = [{"name": t["name"], "uid": t["uid"], "created": _ts(t["created_at"]),
             **{k: t["limits"].get(k) for k in _LIMIT_KEYS}} for t in data["tenants"]]
    output(data, as_json, ["name", "uid", *_LIMIT_KEYS, "created"], rows)


@tenant.command("describe")
@click.argument("name")
@click.pass_context
def tenant_describe(ctx: click.Context, name: str) -> None:
    output(Client.from_ctx(ctx).request("GET", f"/api/v1/tenants/{name}"), True)


@tenant.command("rm")
@click.argument("name")
@click.option("--force", is_flag=True, help="Also remove the tenant's functions.")
@click.pass_context
def tenant_rm(ctx: click.Context, name: str, force: bool) -> None:
    data = Client.from_ctx(ctx).request("DELETE", f"/api/v1/tenants/{name}",
                                        params={"force": "true"} if force else None)
    click.echo(f"Removed tenant {name} ({data['functions_removed']} function(s) removed)")


# --- keys ------------------------------------------------------------------------------------

@click.group("key")
def key() -> None:
    """API keys: create (printed once), list, revoke (admin keys)."""


@key.command("create")
@click.option("--tenant", "key_tenant", default="default", show_default=True)
@click.option("--scope", "scopes", required=True,
              help="Comma-separated: admin, deploy, invoke, read, metrics.")
@click.option("--expires", default=None, help="Lifetime such as 30d, 12h or 90m.")
@click.option("--name", default=None, help="A label shown by `key ls`.")
@click.option("--json", "as_json", is_flag=True,
              help='{"id", "key", "tenant", "scopes", "access_key_id", "secret_access_key"}.')
@click.pass_context
def key_create(ctx: click.Context, key_tenant: str, scopes: str, expires: str | None,
               name: str | None, as_json: bool) -> None:
    body = {"tenant": key_tenant, "scopes": [s.strip() for s in scopes.split(",") if s.strip()],
            "expires": expires, "name": name}
    data = Client.from_ctx(ctx).request("POST", "/api/v1/keys", json=body)
    if as_json:
        click.echo(json.dumps({k: data[k] for k in ("id", "key", "tenant", "scopes",
                                                     "access_key_id", "secret_access_key",
                                                     "expires_at", "name")}, indent=2))
        return
    click.echo(data["key"])
    click.echo(f"key {data['id']} for tenant {data['tenant']} ({', '.join(data['scopes'])}); "
               f"shown once: store it now. AWS-style pair: {data['access_key_id']} / "
               f"the part after the second '_'.", err=True)


@key.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def key_ls(ctx: click.Context, as_json: bool) -> None:
    data = Client.from_ctx(ctx).request("GET", "/api/v1/keys")
    rows = [{**k, "scopes": ",".join(k["scopes"]), "created": _ts(k["created_at"]),
             "last_used": _ts(k["last_used_at"]), "expires": _ts(k["expires_at"]),
             "state": "revoked" if k["revoked_at"] else "live"} for k in data["keys"]]
    output(data, as_json, ["id", "name", "tenant", "scopes", "created", "last_used", "expires",
                           "state"], rows)


@key.command("revoke")
@click.argument("key_id")
@click.pass_context
def key_revoke(ctx: click.Context, key_id: str) -> None:
    Client.from_ctx(ctx).request("DELETE", f"/api/v1/keys/{key_id}")
    click.echo(f"Revoked {key_id}")


# --- secrets ---------------------------------------------------------------------------------

@click.group("secret")
def secret() -> None:
    """Tenant secrets, encrypted at rest; use them as env = { VAR = "secret:NAME" }."""


@secret.command("set")
@click.argument("name")
@click.option("--from-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Read the value from a file (default: standard input).")
@click.pass_context
def secret_set(ctx: click.Context, name: str, from_file: Path | None) -> None:
    value = from_file.read_bytes() if from_file else sys.stdin.buffer.read()
    if from_file is None and value.endswith(b"\n") and value.count(b"\n") == 1:
        value = value[:-1]  # `echo value | squall secret set NAME`
    data = Client.from_ctx(ctx).request("PUT", f"/api/v1/secrets/{name}", content=value,
                                        headers={"content-type": "text/plain"})
    click.echo(f"{'Created' if data['created'] else 'Updated'} secret {name}")


@secret.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def secret_ls(ctx: click.Context, as_json: bool) -> None:
    data = Client.from_ctx(ctx).request("GET", "/api/v1/secrets")
    rows = [{**s, "updated": _ts(s["updated_at"])} for s in data["secrets"]]
    output(data, as_json, ["name", "updated"], rows)


@secret.command("rm")
@click.argument("name")
@click.pass_context
def secret_rm(ctx: click.Context, name: str) -> None:
    Client.from_ctx(ctx).request("DELETE", f"/api/v1/secrets/{name}")
    click.echo(f"Removed secret {name}")


@secret.command("rotate-master")
@click.pass_context
def secret_rotate(ctx: click.Context) -> None:
    """Re-encrypt every secret and key under a new master key (admin)."""
    data = Client.from_ctx(ctx).request("POST", "/api/v1/secrets/rotate-master")
    click.echo(f"Re-encrypted {data['resealed']} value(s) under a new master key")


# --- audit and bill --------------------------------------------------------------------------

@click.command("audit")
@click.option("--since", default="0", help="Duration (30m, 24h, 7d) or unix time.")
@click.option("--limit", default=100, type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def audit(ctx: click.Context, since: str, limit: int, as_json: bool) -> None:
    """Control-plane changes: who (key), what, where, when."""
    data = Client.from_ctx(ctx).request("GET", "/api/v1/audit",
                                        params={"since": since, "limit": limit})
    rows = [{**e, "time": _ts(e["ts"])} for e in data["entries"]]
    output(data, as_json, ["time", "key_id", "tenant", "action", "target", "client"], rows)


@click.command("bill")
@click.option("--month", default=None, help="YYYY-MM (UTC; default: this month).")
@click.option("--tenant", "bill_tenant", default=None, help="Only this tenant (admin keys).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV rows, one per function.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def bill(ctx: click.Context, month: str | None, bill_tenant: str | None, as_csv: bool,
         as_json: bool) -> None:
    """Requests, GB-seconds and cost per function and per tenant for a month (USD)."""
    params = {k: v for k, v in (("month", month), ("tenant", bill_tenant)) if v}
    data = Client.from_ctx(ctx).request("GET", "/api/v1/bill", params=params)
    if as_json:
        output(data, True)
        return
    if as_csv:
        w = csv.writer(sys.stdout)
        w.writerow(["month", "tenant", "function", "requests", "gb_seconds", "cost_usd"])
        for f in data["functions"]:
            w.writerow([data["month"], f["namespace"], f["name"], f["invocations"],
                        f"{f['gb_seconds']:.6f}", f"{f['cost']:.6f}"])
        return
    click.echo(f"Bill for {data['month']} (USD)")
    table([{**f, "tenant": f["namespace"], "function": f["name"], "requests": f["invocations"],
            "cost": money(f["cost"])} for f in data["functions"]],
          ["tenant", "function", "requests", "gb_seconds", "cost"])
    click.echo("")
    table([{**t, "requests": t["invocations"], "cost": money(t["cost"])} for t in data["tenants"]],
          ["tenant", "functions", "requests", "gb_seconds", "cost"])


COMMANDS = [tenant, key, secret, audit, bill]
