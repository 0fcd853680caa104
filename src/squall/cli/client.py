"""The HTTP client the CLI commands share, and table/JSON output."""

from __future__ import annotations

import json
import os
from typing import Any

import click
import httpx

DEFAULT_URL = "http://127.0.0.1:8080"


class Client:
    def __init__(self, url: str, timeout: float = 900.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

    @classmethod
    def from_ctx(cls, ctx: click.Context) -> Client:
        obj = ctx.find_root().obj or {}
        return cls(obj.get("url") or os.environ.get("SQUALL_URL") or DEFAULT_URL)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; return the decoded JSON. Raise ClickException on any error."""
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise click.ClickException(
                f"cannot reach Squall at {self.url}: is `squall up` running? "
                f"(set --url or SQUALL_URL)") from None
        except httpx.HTTPError as exc:
            raise click.ClickException(f"request to {self.url}{path} failed: {exc}") from None
        return check(resp)


def check(resp: httpx.Response) -> Any:
    try:
        data = resp.json()
    except ValueError:
        data = None
    if resp.status_code >= 400:
        err = (data or {}).get("error", {}) if isinstance(data, dict) else {}
        code = err.get("code", f"http_{resp.status_code}")
        message = err.get("message", resp.text[:500])
        raise click.ClickException(f"{message} [{code}, HTTP {resp.status_code}]")
    return data


def output(data: Any, as_json: bool, columns: list[str] | None = None,
           rows: list[dict[str, Any]] | None = None) -> None:
    """Print ``data`` as JSON (``--json``), else ``rows`` as a table of ``columns``."""
    if as_json or columns is None:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    table(rows if rows is not None else data, columns)


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        click.echo("(none)")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
