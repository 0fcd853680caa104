"""CLI: ``squall alias set NAME ALIAS --version 3 [--weight 4=0.1]``, ``alias ls``, ``alias rm``."""

from __future__ import annotations

import click

from squall.cli.client import Client, output


def _weights(values: tuple[str, ...]) -> dict[str, float]:
    """``("4=0.1",)`` -> ``{"4": 0.1}``; the platform checks the versions and the ranges."""
    out: dict[str, float] = {}
    for value in values:
        version, sep, weight = value.partition("=")
        try:
            if not sep or not version.strip():
                raise ValueError(value)
            out[version.strip()] = float(weight)
        except ValueError:
            raise click.BadParameter(f"{value!r}: use VERSION=WEIGHT, e.g. 4=0.1",
                                     param_hint="--weight") from None
    return out


@click.group("alias")
def alias() -> None:
    """Aliases: a name for a version, or a weighted split between versions."""


@alias.command("set")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.option("--version", "version", required=True,
              help="The version the alias points at (a number, or $LATEST).")
@click.option("--weight", "weights", multiple=True, metavar="VERSION=WEIGHT",
              help="Send this share (0..1) of the traffic to another version; repeatable.")
@click.option("--description", default="", help="A note shown by `alias ls`.")
@click.option("--json", "as_json", is_flag=True, help="Print the alias as JSON.")
@click.pass_context
def set_cmd(ctx: click.Context, name: str, alias_name: str, version: str,
            weights: tuple[str, ...], description: str, as_json: bool) -> None:
    """Create or move ALIAS of function NAME (moving it back is a rollback)."""
    body = {"version": int(version) if version.isdigit() else version,
            "weights": _weights(weights), "description": description}
    data = Client.from_ctx(ctx).request("PUT", f"/api/v1/functions/{name}/aliases/{alias_name}",
                                        json=body)
    if as_json:
        output(data, True)
        return
    split = ", ".join(f"{w:.0%} to version {v}" for v, w in data["weights"].items())
    click.echo(f"{name}:{data['name']} -> version {data['version']}"
               + (f" ({split})" if split else ""))


@alias.command("ls")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def ls_cmd(ctx: click.Context, name: str, as_json: bool) -> None:
    """List the aliases of function NAME."""
    data = Client.from_ctx(ctx).request("GET", f"/api/v1/functions/{name}/aliases")
    rows = [{**a, "weights": " ".join(f"{v}={w:g}" for v, w in a["weights"].items()) or "-"}
            for a in data["aliases"]]
    output(data["aliases"], as_json, ["name", "version", "weights", "description"], rows)


@alias.command("rm")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.pass_context
def rm_cmd(ctx: click.Context, name: str, alias_name: str) -> None:
    """Remove ALIAS of function NAME (its versions stay)."""
    Client.from_ctx(ctx).request("DELETE", f"/api/v1/functions/{name}/aliases/{alias_name}")
    click.echo(f"Removed alias {name}:{alias_name}")


COMMANDS: list[click.Command] = [alias]
