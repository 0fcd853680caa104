"""Web frameworks as one function, end to end: the FastAPI example (style "asgi") and a Flask app
(style "wsgi") behind /fn/<name>/..., with their dependencies installed at deploy by uv."""

from __future__ import annotations

import asyncio
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from squall.runtime.adapters import (
    AsgiApp,
    LifespanStartupFailed,
    call_wsgi,
    lambda_response,
    wsgi_environ,
)
from squall.runtime.context import Channel
from squall.runtime.protocol import recv_frame
from squall.runtime.stream import Stream
from tests.conftest import PlatformProc
from tests.test_streaming import Gate

ROOT = Path(__file__).resolve().parent.parent

FLASK_APP = """
    from flask import Flask, Response, abort, jsonify, redirect, request, url_for

    app = Flask(__name__)

    @app.get("/hello/<name>")
    def hello(name):
        return jsonify(name=name, q=request.args.getlist("q"), agent=request.headers.get("x-agent"),
                       remote=request.remote_addr, script=request.script_root,
                       url=url_for("hello", name=name, _external=True))

    @app.post("/echo")
    def echo():
        return jsonify(got=request.get_json(), type=request.content_type), 202

    @app.post("/login")
    def login():
        resp = jsonify(ok=True)
        resp.set_cookie("session", "s3cr3t", httponly=True)
        resp.set_cookie("lang", "fr")
        return resp

    @app.get("/whoami")
    def whoami():
        return jsonify(session=request.cookies.get("session"), lang=request.cookies.get("lang"))

    @app.get("/go")
    def go():
        return redirect(url_for("hello", name="redirected"))

    @app.get("/missing")
    def missing():
        abort(404)

    @app.get("/teapot")
    def teapot():
        return "short and stout", 418, {"x-kind": "teapot"}

    @app.get("/png")
    def png():
        return Response(b"\\x89PNG\\r\\n\\x1a\\n\\x00\\xff", mimetype="image/png")

    @app.get("/stream")
    def stream():
        import urllib.request
        gate = request.args["gate"]

        def events():
            yield "data: one\\n\\n"
            urllib.request.urlopen(gate, timeout=60).read()
            yield "data: two\\n\\n"
        return Response(events(), mimetype="text/event-stream")
"""

LIFESPAN_APP = """
    import contextlib, os
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield {"startup_pid": os.getpid()}

    app = FastAPI(lifespan=lifespan)

    @app.get("/pids")
    def pids(request: Request):
        return {"startup_pid": request.state.startup_pid, "pid": os.getpid()}

    @app.get("/gated")
    async def gated(gate: str):
        import asyncio, urllib.request

        async def body():
            yield b"one\\n"
            await asyncio.to_thread(lambda: urllib.request.urlopen(gate, timeout=60).read())
            yield b"two\\n"
        return StreamingResponse(body(), media_type="text/plain")
"""


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.close()


def write_app(tmp: Path, name: str, style: str, code: str, requirements: str) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "app.py").write_text(textwrap.dedent(code))
    (d / "requirements.txt").write_text(requirements)
    (d / "squall.toml").write_text(f'name = "{name}"\nstyle = "{style}"\nhandler = "app:app"\n'
                                   f"memory_mb = 256\n")
    return d


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformProc]:
    tmp = tmp_path_factory.mktemp("webapps")
    p = PlatformProc(tmp / "data", {})
    p.start()
    p.deploy(ROOT / "examples" / "fastapi-app")
    p.deploy(write_app(tmp, "flasky", "wsgi", FLASK_APP, "flask>=3.0\n"))
    p.deploy(write_app(tmp, "lifespan", "asgi", LIFESPAN_APP, "fastapi>=0.110\n"))
    yield p
    p.close()


def test_fastapi_path_query_headers_and_json(plat: PlatformProc) -> None:
    resp = plat.http.get("/fn/shop/items/1", params={"currency": "USD"},
                         headers={"user-agent": "tester/1"})
    assert resp.status_code == 200
    assert resp.json() == {"id": 1, "name": "kite", "price": 12.5, "currency": "USD",
                           "url": f"{plat.url}/fn/shop/items/1", "agent": "tester/1"}
    created = plat.http.post("/fn/shop/items", json={"name": "yo-yo", "price": 3})
    assert created.status_code == 201
    assert created.json() == {"id": 2, "name": "yo-yo", "price": 3.0}
    assert created.headers["location"] == "items/2"
    invalid = plat.http.post("/fn/shop/items", json={"name": "no price"})
    assert invalid.status_code == 422  # FastAPI's validation error, passed through
    assert invalid.json()["detail"][0]["loc"] == ["body", "price"]


def test_fastapi_404s_cookies_and_redirect(plat: PlatformProc) -> None:
    missing = plat.http.get("/fn/shop/items/99")
    assert missing.status_code == 404 and missing.json() == {"detail": "no item 99"}
    no_route = plat.http.get("/fn/shop/nowhere")
    assert no_route.status_code == 404 and no_route.json() == {"detail": "Not Found"}
    login = plat.http.post("/fn/shop/login", params={"user": "grace"})
    cookies = login.headers.get_list("set-cookie")
    assert len(cookies) == 2
    assert cookies[0].startswith("user=grace;") and "HttpOnly" in cookies[0]
    assert cookies[1].startswith("theme=dark;")
    me = plat.http.get("/fn/shop/me", headers={"cookie": "user=grace; theme=dark"})
    assert me.json() == {"user": "grace", "theme": "dark"}
    moved = plat.http.get("/fn/shop/old-items/1")
    assert moved.status_code == 308
    assert moved.headers["location"] == f"{plat.url}/fn/shop/items/1"
    followed = plat.http.get("/fn/shop/old-items/1", follow_redirects=True)
    assert followed.status_code == 200 and followed.json()["name"] == "kite"


def test_app_urls_follow_the_tenant_and_qualifier_paths(plat: PlatformProc) -> None:
    tenant = plat.http.get("/t/default/fn/shop/items/1")
    assert tenant.json()["url"] == f"{plat.url}/t/default/fn/shop/items/1"
    pinned = plat.http.get("/fn/shop:1/items/1")
    assert pinned.json()["url"] == f"{plat.url}/fn/shop:1/items/1"


def test_fastapi_server_sent_events(plat: PlatformProc) -> None:
    with plat.http.stream("GET", "/fn/shop/ticks", params={"n": "3", "every": "0.01"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["transfer-encoding"] == "chunked"
        lines = [line for line in resp.iter_lines() if line]
    assert lines == ["event: tick", "data: 0", "event: tick", "data: 1", "event: tick",
                     "data: 2"]


def test_asgi_stream_arrives_while_the_app_runs(plat: PlatformProc, gate: Gate) -> None:
    with plat.http.stream("GET", "/fn/lifespan/gated", params={"gate": gate.url}) as resp:
        chunks = resp.iter_bytes()
        assert next(chunks) == b"one\n"
        assert gate.arrived.wait(30) and not gate.released.is_set()
        gate.open()
        assert b"".join(chunks) == b"two\n"


def test_lifespan_startup_runs_in_the_instance_not_the_zygote(plat: PlatformProc) -> None:
    body = plat.http.get("/fn/lifespan/pids").json()
    assert body["startup_pid"] == body["pid"]


def test_flask_request_mapping(plat: PlatformProc) -> None:
    resp = plat.http.get("/fn/flasky/hello/ada", params=[("q", "1"), ("q", "2")],
                         headers={"x-agent": "t"})
    assert resp.status_code == 200
    assert resp.json() == {"name": "ada", "q": ["1", "2"], "agent": "t", "remote": "127.0.0.1",
                           "script": "/fn/flasky",
                           "url": f"{plat.url}/fn/flasky/hello/ada"}
    echo = plat.http.post("/fn/flasky/echo", json={"a": [1, "b"]})
    assert echo.status_code == 202
    assert echo.json() == {"got": {"a": [1, "b"]}, "type": "application/json"}
    teapot = plat.http.get("/fn/flasky/teapot")
    assert teapot.status_code == 418 and teapot.text == "short and stout"
    assert teapot.headers["x-kind"] == "teapot"
    png = plat.http.get("/fn/flasky/png")
    assert png.content == b"\x89PNG\r\n\x1a\n\x00\xff"
    assert png.headers["content-type"] == "image/png"


def test_flask_cookies_redirect_and_404(plat: PlatformProc) -> None:
    client = httpx.Client(base_url=plat.url)
    try:
        login = client.post("/fn/flasky/login")
        assert [c.split("=")[0] for c in login.headers.get_list("set-cookie")] == ["session",
                                                                                   "lang"]
        assert client.get("/fn/flasky/whoami").json() == {"session": "s3cr3t", "lang": "fr"}
    finally:
        client.close()
    go = plat.http.get("/fn/flasky/go")
    assert go.status_code == 302
    assert go.headers["location"] == "/fn/flasky/hello/redirected"
    assert plat.http.get("/fn/flasky/go", follow_redirects=True).json()["name"] == "redirected"
    missing = plat.http.get("/fn/flasky/missing")
    assert missing.status_code == 404 and "Not Found" in missing.text


def test_flask_generator_response_streams(plat: PlatformProc, gate: Gate) -> None:
    with plat.http.stream("GET", "/fn/flasky/stream", params={"gate": gate.url}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.iter_lines()
        assert next(lines) == "data: one"
        assert gate.arrived.wait(30) and not gate.released.is_set()
        gate.open()
        assert [line for line in lines if line] == ["data: two"]


# The adapters alone, in this process: real frames over a real socket pair.

def _event(raw_path: str, path: str, **extra: object) -> dict[str, object]:
    return {"rawPath": raw_path, "rawQueryString": "a=1&a=2",
            "headers": {"host": "fns.example:8443", "x-forwarded-proto": "https", "x-a": "b"},
            "cookies": ["c1=v1", "c2=v2"],
            "requestContext": {"http": {"method": "post", "path": path, "sourceIp": "10.0.0.9"}},
            **extra}


@pytest.fixture
def channel() -> Iterator[tuple[Channel, socket.socket]]:
    a, b = socket.socketpair()
    yield Channel(a), b
    a.close()
    b.close()


@pytest.mark.parametrize(("raw", "sub", "root"), [
    ("/fn/shop/items/3", "/items/3", "/fn/shop"),
    ("/fn/shop", "/", "/fn/shop"),
    ("/fn/shop/", "/", "/fn/shop"),
    ("/t/acme/fn/shop:prod/a", "/a", "/t/acme/fn/shop:prod"),
    ("/items/3", "/items/3", ""),  # an event made by hand (the Lambda API): no mount point
])
def test_scope_and_environ_paths(raw: str, sub: str, root: str) -> None:
    scope = AsgiApp(lambda *a: None).scope(_event(raw, sub))
    assert (scope["root_path"], scope["path"]) == (root, root + sub)
    environ = wsgi_environ(_event(raw, sub))
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == (root, sub)


def test_scope_and_environ_carry_the_request() -> None:
    ev = _event("/fn/x/é", "/é", body="aGk=", isBase64Encoded=True)
    scope = AsgiApp(lambda *a: None).scope(ev)
    assert scope["method"] == "POST" and scope["scheme"] == "https"
    assert scope["query_string"] == b"a=1&a=2" and scope["raw_path"] == b"/fn/x/%C3%A9"
    assert (b"cookie", b"c1=v1; c2=v2") in scope["headers"]
    assert scope["client"] == ("10.0.0.9", 0) and scope["server"] == ("fns.example", 8443)
    environ = wsgi_environ(ev)
    assert environ["PATH_INFO"] == "/é".encode().decode("latin-1")  # PEP 3333
    assert environ["wsgi.input"].read() == b"hi" and environ["CONTENT_LENGTH"] == "2"
    assert environ["HTTP_COOKIE"] == "c1=v1; c2=v2" and environ["HTTP_X_A"] == "b"
    assert environ["wsgi.url_scheme"] == "https" and environ["SERVER_PORT"] == "8443"
    with pytest.raises(ValueError, match="HTTP requests"):
        wsgi_environ({"just": "json"})


def test_lambda_response_keeps_repeats_cookies_and_binary() -> None:
    out = lambda_response(200, [(b"x-v", b"1"), (b"x-v", b"2"), (b"set-cookie", b"a=1"),
                                (b"set-cookie", b"b=2"), (b"content-type", b"image/png")],
                          b"\x89PNG")
    assert out == {"statusCode": 200, "headers": {"x-v": "1", "content-type": "image/png"},
                   "multiValueHeaders": {"x-v": ["2"]}, "cookies": ["a=1", "b=2"],
                   "body": "iVBORw==", "isBase64Encoded": True}
    text = lambda_response(201, [(b"content-type", b"application/json")], b'{"k": 1}')
    assert text["body"] == '{"k": 1}' and "isBase64Encoded" not in text


def test_wsgi_write_and_streamed_bodies(channel: tuple[Channel, socket.socket]) -> None:
    ch, peer = channel

    def legacy(environ: dict[str, object], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain"),
                                          ("Content-Length", "5")])
        write(b"he")
        return [b"llo"]

    out = call_wsgi(legacy, _event("/fn/w/", "/"), Stream(ch, "r1"))
    assert out is not None and out["body"] == "hello"

    def streamed(environ: dict[str, object], start_response: Any) -> Iterator[bytes]:
        start_response("207 Multi", [("Content-Type", "text/plain")])
        yield b"a"
        yield b"b"

    assert call_wsgi(streamed, _event("/fn/w/", "/"), Stream(ch, "r2")) is None
    frames = [recv_frame(peer) for _ in range(3)]
    assert frames[0]["t"] == "head" and frames[0]["s"] == 207
    assert [f["b"] for f in frames[1:]] == [b"a", b"b"]


def test_lifespan_unsupported_failed_and_shutdown(channel: tuple[Channel, socket.socket]) -> None:
    ch, _peer = channel
    seen: list[str] = []

    async def plain(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            seen.append(msg["type"])
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.failed", "message": "db down"})

    async def polite(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                seen.append(msg["type"])
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def run() -> None:
        app = AsgiApp(plain)
        out = await app.call(_event("/fn/p/", "/"), Stream(ch, "r"))
        assert out is not None and out["statusCode"] == 204 and not app.lifespan.supported
        await app.shutdown()
        bad = AsgiApp(failing)
        with pytest.raises(LifespanStartupFailed, match="db down"):
            await bad.call(_event("/fn/p/", "/"), Stream(ch, "r"))
        await bad.shutdown()
        good = AsgiApp(polite)
        out = await good.call(_event("/fn/p/", "/"), Stream(ch, "r"))
        assert out is not None and out["body"] == "ok"
        await good.shutdown()

    asyncio.run(run())
    assert seen == ["lifespan.startup", "lifespan.startup", "lifespan.shutdown"]
