"""Authorization, table-driven from the route table itself: every route x {no key, revoked key,
each scope of the own tenant, another tenant's key, admin}. A route added without a declared
scope fails ``test_every_route_declares_an_authorization_decision``; one whose declaration is
not enforced fails the table."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PlatformProc

HELLO = "def handler(event, context):\n    return 'hi'\n"
SCOPES = ("deploy", "invoke", "read", "metrics")
# What holding a scope grants (squall.tenancy.model): deploy includes read, read includes metrics.
GRANTS = {"deploy": {"deploy", "read", "metrics"}, "invoke": {"invoke"},
          "read": {"read", "metrics"}, "metrics": {"metrics"}}


def _apps(outer: Any) -> list[Any]:
    """Every router behind the platform's ASGI wrappers (gateway, Lambda API, tracing edge)."""
    found, todo = [], [outer]
    while todo:
        app = todo.pop()
        if hasattr(app, "routes"):
            found.append(app)
        todo += [getattr(app, a) for a in ("app", "lambda_app") if hasattr(app, a)]
    return found


def test_every_route_declares_an_authorization_decision(tmp_path: Path) -> None:
    from squall.api.routes import EndpointRoute
    from squall.config import Settings
    from squall.lambda_api.edge import OperationRoute
    from squall.server import build

    platform, app = build(Settings(data_dir=tmp_path / "d", sandbox="process", s3_port=0))
    try:
        routers = _apps(app)
        assert len(routers) == 2  # the control API and the Lambda API
        routes = [r for router in routers for r in router.routes]
        assert len(routes) > 40
        undeclared = [getattr(r, "path", repr(r)) for r in routes
                      if not (isinstance(r, EndpointRoute) and r.decl.scope)
                      and not (isinstance(r, OperationRoute) and r.op.scope)]
        assert not undeclared, f"routes without an authorization decision: {undeclared}"
    finally:
        platform.db.close()


def _fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"{(\w+)}", lambda m: values.get(m.group(1), "nosuch"), path)


@pytest.fixture
def world(platform: PlatformProc, make_fn: Callable[..., Path]) -> dict[str, Any]:
    platform.cli("tenant", "create", "own")
    platform.cli("tenant", "create", "rival")
    fn = make_fn("fn1", HELLO)
    platform.cli("--tenant", "own", "deploy", str(fn))

    def mk(tenant: str, scopes: str) -> str:
        out = json.loads(platform.cli("key", "create", "--tenant", tenant, "--scope", scopes,
                                      "--json").stdout)
        return str(out["key"])

    keys = {s: mk("own", s) for s in SCOPES}
    keys["rival"] = mk("rival", "deploy,invoke")
    revoked = json.loads(platform.cli("key", "create", "--tenant", "own", "--scope", "deploy",
                                      "--json").stdout)
    platform.cli("key", "revoke", revoked["id"])
    keys["revoked"] = revoked["key"]
    keys["admin"] = platform.admin_key
    doc = platform.http.get("/api/v1/openapi.json").json()
    ops = [(m.upper(), path, op) for path, item in doc["paths"].items()
           for m, op in item.items()]
    return {"keys": keys, "ops": ops}


def test_route_table_x_cases(platform: PlatformProc, world: dict[str, Any]) -> None:
    keys, ops = world["keys"], world["ops"]
    assert len(ops) >= 25
    checked = 0
    own_values = {"name": "fn1", "tenant": "own"}
    with httpx.Client(base_url=platform.url, timeout=60) as c:
        for method, path, op in ops:
            scope = op["x-squall-scope"]
            if scope == "public":
                continue
            # Allowed callers get past the edge: any status but 401/403 (a missing resource is
            # 404, an empty body 400): nothing is changed, the names do not exist.
            probe = _fill(path, {})
            r = c.request(method, probe, content=b"")
            assert r.status_code == 401, (method, path, "no key", r.status_code)
            r = c.request(method, probe, content=b"",
                          headers={"authorization": f"Bearer {keys['revoked']}"})
            assert r.status_code == 401, (method, path, "revoked", r.status_code)
            checked += 2
            for held in (*SCOPES, "admin"):
                r = c.request(method, probe, content=b"",
                              headers={"authorization": f"Bearer {keys[held]}"})
                allowed = held == "admin" or scope == "authenticated" or scope in GRANTS[held]
                if allowed:
                    assert r.status_code not in (401, 403), (method, path, held, r.text)
                else:
                    assert r.status_code == 403, (method, path, held, r.status_code)
                    assert r.json()["error"]["code"] == "forbidden"
                checked += 1
            # Another tenant's key, with the scope, on the own tenant's real resource: 404
            # exactly like a missing one (GET only: the others would change it if allowed).
            if re.findall(r"{(\w+)}", path) == ["name"] and method == "GET" \
                    and "/tenants/" not in path and scope in ("read", "metrics"):
                real = _fill(path, own_values)
                r = c.get(real, headers={"authorization": f"Bearer {keys['rival']}"})
                assert r.status_code == 404, (path, "rival", r.status_code)
                mine = c.get(real, headers={"authorization": f"Bearer {keys['read']}"})
                assert mine.status_code != 404, (path, mine.text)
                checked += 1
    print(f"authorization table: {len(ops)} operations, {checked} checks")
    assert checked > 150
