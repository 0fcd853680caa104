"""The HTTP client the CLI commands share, and table/JSON output."""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Any

import click
import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_DATA_DIR = ".squall"


def find_api_key(explicit: str | None, data_dir: str | None) -> str | None:
    """``--api-key``, else ``SQUALL_API_KEY``, else the admin key a local platform wrote to
    ``<data-dir>/admin-key`` (``--data-dir``, ``SQUALL_DATA_DIR``, default ./.squall)."""
    key = explicit or os.environ.get("SQUALL_API_KEY")
    if key:
        return key.strip()
    path = Path(data_dir or os.environ.get("SQUALL_DATA_DIR") or DEFAULT_DATA_DIR) / "admin-key"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class Client:
    def __init__(self, url: str, timeout: float = 900.0, *, api_key: str | None = None,
                 tenant: str | None = None, verify: bool | ssl.SSLContext = True) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.tenant = tenant
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        params = {"tenant": tenant} if tenant else {}
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers,
                                 params=params, verify=verify)

    @classmethod
    def from_ctx(cls, ctx: click.Context) -> Client:
        obj = ctx.find_root().obj or {}
        cacert = obj.get("cacert") or os.environ.get("SQUALL_CACERT")
        return cls(obj.get("url") or os.environ.get("SQUALL_URL") or DEFAULT_URL,
                   api_key=find_api_key(obj.get("api_key"), obj.get("data_dir")),
                   tenant=obj.get("tenant") or os.environ.get("SQUALL_TENANT") or None,
                   verify=ssl.create_default_context(cafile=cacert) if cacert else True)

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
        if resp.status_code == 401:
            message += ("\n(the CLI sends --api-key, else SQUALL_API_KEY, else the admin key in "
                        "<data-dir>/admin-key; set --data-dir or SQUALL_DATA_DIR to find it)")
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
        return f"{value:.6g}" if abs(value) >= 1e-4 or value == 0 else f"{value:.6f}"
    return str(value)


def money(value: float) -> str:
    """Costs as money: US dollars with enough decimals to show sub-cent usage (``--json`` keeps
    the full precision): 6.08333e-07 -> $0.000001, 0.2271 -> $0.227100."""
    return f"${value:,.6f}"
