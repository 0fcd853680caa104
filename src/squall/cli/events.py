"""CLI: ``squall invocation ID``, ``squall dlq ls|show|redrive``, ``squall trigger add|ls|rm``."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from squall.cli.client import Client, output


def _ago(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    d = time.time() - ts
    if d < 120:
        return f"{d:.0f}s ago"
    return f"{d / 60:.0f}m ago" if d < 7200 else f"{d / 3600:.0f}h ago"


@click.command("invocation")
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON record.")
@click.pass_context
def invocation(ctx: click.Context, request_id: str, as_json: bool) -> None:
    """Where an invocation is: status, attempts, result or error."""
    data = Client.from_ctx(ctx).request("GET", f"/api/v1/invocations/{request_id}")
    if as_json:
        output(data, True)
        return
    for key in ("request_id", "function", "trigger", "status", "attempts"):
        if key in data:
            click.echo(f"{key:<12} {data[key]}")
    for key in ("created_at", "started_at", "finished_at", "next_attempt_at"):
        if data.get(key):
            click.echo(f"{key:<12} {_ago(data[key])}")
    if data.get("error") is not None:
        err = data["error"]
        click.echo(f"error        {err.get('errorType')}: {err.get('errorMessage')}")
    elif "result" in data:
        click.echo(f"result       {json.dumps(data['result'])}")


@click.group("dlq")
def dlq() -> None:
    """Dead letters: async events whose last attempt failed."""


@dlq.command("ls")
@click.option("--function", "-f", default=None, help="Only this function's dead letters.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dlq_ls(ctx: click.Context, function: str | None, as_json: bool) -> None:
    params = {"function": function} if function else {}
    data = Client.from_ctx(ctx).request("GET", "/api/v1/dlq", params=params)
    rows = [{**r, "error": (r.get("error") or {}).get("errorType"), "age": _ago(r["created_at"])}
            for r in data["dead_letters"]]
    output(data, as_json, ["id", "function", "request_id", "attempts", "error", "age"], rows)


@dlq.command("show")
@click.argument("dlq_id")
@click.pass_context
def dlq_show(ctx: click.Context, dlq_id: str) -> None:
    output(Client.from_ctx(ctx).request("GET", f"/api/v1/dlq/{dlq_id}"), True)


@dlq.command("redrive")
@click.argument("dlq_id", required=False)
@click.option("--function", "-f", default=None, help="Redrive all of this function's.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def dlq_redrive(ctx: click.Context, dlq_id: str | None, function: str | None,
                as_json: bool) -> None:
    """Enqueue a dead letter again (fresh retries): by ID, or all of --function."""
    client = Client.from_ctx(ctx)
    if (dlq_id is None) == (function is None):
        raise click.UsageError("give a dead letter ID or --function NAME")
    if dlq_id is not None:
        rows = [client.request("POST", f"/api/v1/dlq/{dlq_id}/redrive")]
    else:
        rows = client.request("POST", "/api/v1/dlq/redrive",
                              params={"function": function})["redriven"]
    output(rows, as_json, ["id", "function", "redrive_request_id"], rows)


@click.group("trigger")
def trigger() -> None:
    """Triggers: schedule, webhook, nats, amqp, mqtt, redis, postgres."""


def _value(raw: str) -> Any:
    # key=value flags: JSON when it parses (numbers, booleans, lists), else the plain string.
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@trigger.command("add")
@click.argument("function")
@click.option("--type", "-t", "type_", required=True, help="schedule, webhook, nats, ...")
@click.option("--name", "-n", default=None, help="Trigger name (default: derived).")
@click.option("--config", "-c", "config_json", default=None, help="Config as a JSON object.")
@click.option("--set", "-s", "pairs", multiple=True, metavar="KEY=VALUE",
              help="Config entry (repeatable); VALUE is JSON if it parses, else a string.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def trigger_add(ctx: click.Context, function: str, type_: str, name: str | None,
                config_json: str | None, pairs: tuple[str, ...], as_json: bool) -> None:
    """Add a trigger, e.g. `squall trigger add fn -t schedule -s 'rate=rate(5 minutes)'`."""
    config: dict[str, Any] = {}
    if config_json:
        try:
            config = json.loads(config_json)
        except ValueError as e:
            raise click.BadParameter(f"not JSON: {e}", param_hint="--config") from None
        if not isinstance(config, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--config")
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--set")
        config[key] = _value(raw)
    body: dict[str, Any] = {"type": type_, "config": config}
    if name:
        body["name"] = name
    data = Client.from_ctx(ctx).request("POST", f"/api/v1/functions/{function}/triggers",
                                        json=body)
    output(data, as_json, ["id", "function", "name", "type"], [data])


@trigger.command("ls")
@click.argument("function", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def trigger_ls(ctx: click.Context, function: str | None, as_json: bool) -> None:
    """List triggers with their status (connecting/running/error), last firing and error."""
    path = f"/api/v1/functions/{function}/triggers" if function else "/api/v1/triggers"
    data = Client.from_ctx(ctx).request("GET", path)
    rows = []
    for t in data["triggers"]:
        st = t.get("status") or {}
        rows.append({"id": t["id"], "function": t["function"], "name": t["name"],
                     "type": t["type"], "origin": t["origin"], "state": st.get("state"),
                     "detail": st.get("detail") or None, "last_fired": _ago(st.get("last_fired")),
                     "last_error": st.get("last_error")})
    output(data, as_json, ["id", "function", "name", "type", "origin", "state", "last_fired",
                           "last_error", "detail"], rows)


@trigger.command("rm")
@click.argument("function")
@click.argument("ref")
@click.pass_context
def trigger_rm(ctx: click.Context, function: str, ref: str) -> None:
    """Remove a trigger by id or name."""
    Client.from_ctx(ctx).request("DELETE", f"/api/v1/functions/{function}/triggers/{ref}")
    click.echo(f"removed trigger {ref} of {function}")


COMMANDS: list[click.Command] = [invocation, dlq, trigger]
