"""`squall replay` (run a recorded invocation's event again) and `squall dev` (the local loop)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from squall.cli.client import Client, output
from squall.errors import SquallError


def _captured(client: Client, request_id: str) -> dict[str, Any]:
    data: dict[str, Any] = client.request(
        "GET", f"/api/v1/invocations/{quote(request_id, safe='')}/event")
    return data


async def _run_local(folder: Path, event: Any) -> Any:
    from squall.replay.local import LocalFunction

    fn = LocalFunction(folder)
    try:
        await fn.load()
        return await fn.invoke(event)
    finally:
        await fn.close()


@click.command("replay")
@click.argument("request_id")
@click.option("--version", "version", default=None,
              help="Run it on this version (a number or $LATEST; default: the version that "
                   "ran it).")
@click.option("--alias", default=None, help="Run it on the version this alias routes to.")
@click.option("--local", is_flag=True,
              help="Fetch the event and run it here, on the function folder --dir.")
@click.option("--dir", "folder", default=None,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="With --local: the function folder (default: the current directory).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def replay(ctx: click.Context, request_id: str, version: str | None, alias: str | None,
           local: bool, folder: Path | None, as_json: bool) -> None:
    """Run a recorded invocation's event again: on the platform (needs the invoke scope; the new
    invocation has trigger `replay`), or with --local on a function folder here.

    Events are kept for failed invocations (unless the platform captures all or none) for a
    bounded time; exits 1 when the function fails again."""
    if version and alias:
        raise click.UsageError("give --version or --alias, not both")
    client = Client.from_ctx(ctx)
    if local:
        if version or alias:
            raise click.UsageError("--version and --alias choose a version on the platform; "
                                   "--local runs the folder given by --dir")
        captured = _captured(client, request_id)
        try:
            result = asyncio.run(_run_local(folder or Path("."), captured["event"]))
        except SquallError as exc:
            raise click.ClickException(f"{exc.message} [{exc.code}]") from None
        data = {"request_id": result.request_id, "replay_of": request_id, "local": True,
                "function": captured["function"], "ok": result.ok, "result": result.value,
                "error": result.error, "duration_ms": round(result.duration_ms, 3),
                "logs": result.logs}
    else:
        if folder is not None:
            raise click.UsageError("--dir is the folder of --local")
        body: dict[str, Any] = {}
        if version:
            body["version"] = int(version) if version.isdigit() else version
        if alias:
            body["alias"] = alias
        data = client.request("POST", f"/api/v1/invocations/{quote(request_id, safe='')}"
                                      f"/replay", json=body)
    _show(data, as_json)
    if not data["ok"]:
        sys.exit(1)


def _show(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        output(data, True)
        return
    where = "locally" if data.get("local") else f"on version {data['version']}"
    click.echo(f"replayed {data['replay_of']} as {data['request_id']} ({data['function']}, "
               f"{where})", err=True)
    for line in data["logs"]:
        click.echo(line, err=True)
    click.echo(json.dumps(data["result"] if data["ok"] else data["error"], indent=2))


@click.command("dev")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--event", "event_file", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A JSON event to run on start and after every reload.")
@click.option("--replay", "replay_id", default=None,
              help="Run the recorded event of this request id (fetched from the platform).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Also serve it at http://127.0.0.1:PORT/fn/NAME (0: any free port).")
@click.pass_context
def dev(ctx: click.Context, folder: Path, event_file: Path | None, replay_id: str | None,
        port: int | None) -> None:
    """Run a function folder locally in the platform's runtime, reloading on every save of a
    .py file or squall.toml, and print each result with the function's log lines.

    No isolation and no memory limit here; dependencies are those installed where squall runs;
    `secret:NAME` variables take the value of the same variable in your environment."""
    from squall.replay.dev import Dev, Feed
    from squall.replay.local import LocalFunction

    if event_file and replay_id:
        raise click.UsageError("give --event or --replay, not both")
    feed = None
    if event_file is not None:
        try:
            feed = Feed(json.loads(event_file.read_text()), f"the event in {event_file}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"{event_file} is not a JSON event: {exc}") from None
    elif replay_id is not None:
        captured = _captured(Client.from_ctx(ctx), replay_id)
        feed = Feed(captured["event"], f"the event of {replay_id} ({captured['function']} "
                                       f"version {captured['version']}, {captured['status']})")
    elif port is None:
        feed = Feed({}, "the event {} (give --event FILE or --replay REQUEST_ID)")
    session = Dev(LocalFunction(folder), sys.stdout, feed=feed, port=port)
    try:
        asyncio.run(_until_signalled(session))
    except SquallError as exc:
        raise click.ClickException(f"{exc.message} [{exc.code}]") from None


async def _until_signalled(session: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await session.run(stop)


COMMANDS: list[click.Command] = [replay, dev]
