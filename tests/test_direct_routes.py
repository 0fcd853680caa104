"""``routes.Direct`` serves the hot declared routes (the invocation API) without Starlette's
router: it must answer every request exactly as the Starlette route it stands in for would,
authorization and errors included, and pass every other request on untouched."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from squall.api.routes import Direct
from squall.config import Settings
from squall.server import build


def _direct(app: Any) -> Direct:
    while not isinstance(app, Direct):
        app = app.app
    return app


@pytest.fixture
async def apps(tmp_path: Path) -> AsyncIterator[tuple[Direct, str]]:
    platform, app = build(Settings(data_dir=tmp_path / "d", sandbox="process", s3_port=0))
    assert platform.identity is not None
    try:
        await platform.identity.load()
        await platform.identity.bootstrap(tmp_path / "d")
        await platform.registry.load()
        yield _direct(app), (tmp_path / "d" / "admin-key").read_text().strip()
    finally:
        platform.db.close()


async def _ask(app: Any, method: str, url: str, headers: dict[str, str],
               body: bytes = b"") -> tuple[int, bytes, dict[str, str]]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://squall") as client:
        r = await client.request(method, url, headers=headers, content=body)
    return r.status_code, r.content, dict(r.headers)


REQUESTS = [
    # (method, path and query, key: none / bad / admin, extra headers)
    ("POST", "/api/v1/functions/hello/invocations", "none", {}),
    ("POST", "/api/v1/functions/hello/invocations", "bad", {}),
    ("POST", "/api/v1/functions/hello/invocations", "admin", {}),  # no such function: 404
    ("POST", "/api/v1/functions/hello/invocations?InvocationType=Bogus", "admin", {}),
    ("POST", "/api/v1/functions/hello/invocations?tenant=nosuch", "admin", {}),
    ("POST", "/api/v1/functions/hello/invocations?qualifier=" + "x" * 200, "admin", {}),
    ("POST", "/api/v1/functions/hello/invocations", "admin",
     {"x-squall-invocation-type": "Event"}),
    ("POST", "/api/v1/functions/hello/invocations/", "admin", {}),  # Starlette's: redirect
    ("POST", "/api/v1/functions//invocations", "admin", {}),
    ("GET", "/api/v1/functions/hello/invocations", "admin", {}),  # 405
    ("PUT", "/api/v1/functions/hello/invocations", "none", {}),
    ("POST", "/api/v1/functions/a/b/invocations", "admin", {}),
]


@pytest.mark.parametrize(("method", "url", "key", "extra"), REQUESTS)
async def test_a_hot_route_answers_as_the_router_would(
        apps: tuple[Direct, str], method: str, url: str, key: str,
        extra: dict[str, str]) -> None:
    direct, admin = apps
    headers = {**extra, **({"authorization": f"Bearer {admin}"} if key == "admin" else
                           {"authorization": "Bearer sq_nope"} if key == "bad" else {})}
    fast = await _ask(direct, method, url, headers, b'{"a": 1}')
    slow = await _ask(direct.app, method, url, headers, b'{"a": 1}')
    assert fast == slow
    assert fast[0] >= 300  # each of these is refused or redirected, for a reason a client reads


async def test_only_hot_routes_are_served_directly(apps: tuple[Direct, str]) -> None:
    direct, _ = apps
    assert direct._match("POST", "/api/v1/functions/hello/invocations") is not None
    assert direct._match("POST", "/api/v1/functions/hello/invocations") is not None  # cached
    for method, path in [("GET", "/api/v1/functions/hello/invocations"),
                         ("POST", "/api/v1/functions"), ("GET", "/api/v1/functions/hello"),
                         ("POST", "/api/v1/functions//invocations"),
                         ("POST", "//api/v1/functions/hello/invocations"),
                         ("POST", "/api/v1/functions/hello/invocations/extra")]:
        assert direct._match(method, path) is None, (method, path)


async def test_an_unexpected_error_is_a_500_with_a_code(apps: tuple[Direct, str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a handler answers like the router's last-resort handler: a JSON 500 that
    names no internals beyond the exception's type."""
    direct, admin = apps
    platform = direct.app.state.platform

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("the store caught fire")

    monkeypatch.setattr(platform.registry, "get", broken)
    status, body, _ = await _ask(direct, "POST", "/api/v1/functions/hello/invocations",
                                 {"authorization": f"Bearer {admin}"})
    assert status == 500
    assert json.loads(body)["error"]["code"] == "internal_error"
    assert b"caught fire" not in body
