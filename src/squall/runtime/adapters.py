"""Web frameworks as one function, inside the instance: ``style = "asgi"`` (FastAPI, Starlette)
and ``style = "wsgi"`` (Flask) with ``handler = "app:app"``.

The API Gateway v2 event becomes a real ASGI ``http`` scope or WSGI environ, and the app's answer
becomes the Lambda response dict the gateway already maps (``statusCode``, ``headers``,
``multiValueHeaders`` for repeated names, ``cookies`` for each Set-Cookie, ``body``, base64 when
binary), so an app invoked through the Lambda API answers as Mangum would on AWS.

Paths: the function's URL is the app's mount point. For ``GET /fn/shop/items/3?x=1`` the ASGI
scope has ``root_path = "/fn/shop"`` and ``path = "/fn/shop/items/3"`` (the full path, as uvicorn
gives with ``--root-path``; Starlette routes on the part after root_path), and the WSGI environ
``SCRIPT_NAME = "/fn/shop"``, ``PATH_INFO = "/items/3"``; so url_for and redirects point back
through the gateway (``/t/<tenant>/fn/<name>`` and ``:qualifier`` URLs alike: the event's
rawPath carries them).

Streaming: an ASGI response whose first body message says ``more_body`` (StreamingResponse,
Server-Sent Events, FileResponse) is streamed; a WSGI response without Content-Length (a
generator body) is streamed. Anything else is sent whole in one result frame.

Lifespan (ASGI startup/shutdown) never runs in the zygote: it forks instances, and threads or
sockets opened by startup code would not survive the fork. Each instance runs startup once
after the fork, before its first request is served, and shutdown when its channel closes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import io
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

from squall.runtime.stream import Stream

Headers = list[tuple[bytes, bytes]]
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript",
               "application/x-www-form-urlencoded", "application/graphql")
SHUTDOWN_WAIT_S = 5.0


# Modules that frameworks import only at their first request: imported in the zygote instead, so
# that each instance does not pay for it. anyio's asyncio backend (Starlette's threadpool for
# sync endpoints) is ~80 ms of a FastAPI app's first request otherwise. Importing starts no
# thread and opens no socket, so it is safe before the fork.
_LAZY_IMPORTS = {"anyio": ("anyio._backends._asyncio",)}


def preload() -> None:
    """Run in the zygote after the app is imported (any style: a Lambda handler may use them)."""
    for trigger, modules in _LAZY_IMPORTS.items():
        if trigger in sys.modules:
            for name in modules:
                with contextlib.suppress(ImportError):
                    importlib.import_module(name)


class LifespanStartupFailed(Exception):
    """The ASGI app answered ``lifespan.startup.failed``: its instance serves nothing."""


def _http(event: Any) -> dict[str, Any]:
    try:
        http: dict[str, Any] = event["requestContext"]["http"]
    except (KeyError, TypeError):
        raise ValueError("an ASGI or WSGI function serves HTTP requests (API Gateway v2 "
                         "events): call it through /fn/<name>/...") from None
    return http


def _mount(event: dict[str, Any], sub: str) -> str:
    """The root path: rawPath without the part after the function (``/fn/shop/a`` -> /fn/shop)."""
    raw = str(event.get("rawPath") or "")
    if sub in ("", "/"):
        return raw[:-1] if raw.endswith("/") else raw
    return raw[: -len(sub)] if raw.endswith(sub) else ""


def _body(event: dict[str, Any]) -> bytes:
    raw = event.get("body")
    if not raw:
        return b""
    return base64.b64decode(raw) if event.get("isBase64Encoded") else str(raw).encode("utf-8")


def _request_headers(event: dict[str, Any]) -> Headers:
    headers = [(str(k).lower().encode("latin-1"), str(v).encode("latin-1"))
               for k, v in (event.get("headers") or {}).items()]
    if event.get("cookies"):
        headers.append((b"cookie", "; ".join(event["cookies"]).encode("latin-1")))
    return headers


def _server(host: str, scheme: str) -> tuple[str, int]:
    """(name, port) from the Host header ("[::1]:8080" too), the scheme's port when absent."""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, int(port)
    return host or "localhost", 443 if scheme == "https" else 80


def _is_text(content_type: str) -> bool:
    ct = content_type.lower()
    return any(ct.startswith(t) for t in _TEXT_TYPES) or ct.endswith(("+json", "+xml"))


def lambda_response(status: int, headers: Iterable[tuple[bytes, bytes]],
                    body: bytes) -> dict[str, Any]:
    """An HTTP response as a Lambda (API Gateway v2) response dict."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    cookies: list[str] = []
    for k, v in headers:
        name, value = k.decode("latin-1"), v.decode("latin-1")
        if name.lower() == "set-cookie":
            cookies.append(value)
        elif name in single:
            multi.setdefault(name, []).append(value)
        else:
            single[name] = value
    out: dict[str, Any] = {"statusCode": status, "headers": single}
    if multi:
        out["multiValueHeaders"] = multi
    if cookies:
        out["cookies"] = cookies
    text = _is_text(single.get("content-type", single.get("Content-Type", "text/plain")))
    try:
        out["body"] = body.decode("utf-8") if text else None
    except UnicodeDecodeError:
        out["body"] = None
    if out["body"] is None:
        out["body"] = base64.b64encode(body).decode("ascii")
        out["isBase64Encoded"] = True
    return out


class _AsgiResponse:
    """The ``send`` of one request: buffers a whole response, streams one with more_body."""

    def __init__(self, out: Stream) -> None:
        self.out = out
        self.status = 0
        self.headers: Headers = []
        self.body = b""
        self.complete = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = int(message["status"])
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif kind == "http.response.body" and not self.complete.is_set():
            if not self.status:
                raise RuntimeError("ASGI app sent a body before http.response.start")
            chunk = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            if self.out.started:
                self.out.body(chunk)
            elif more:
                self.out.head(self.status, self.headers)
                self.out.body(chunk)
            else:
                self.body = chunk
            if not more:
                self.complete.set()


class AsgiApp:
    """An ASGI 3 app served by one instance; ``call`` once per invocation."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.lifespan = Lifespan(app)
        self._ready: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin lifespan startup in this instance's loop (requests wait for it)."""
        self._ready = asyncio.get_running_loop().create_task(self.lifespan.startup())

    async def call(self, event: dict[str, Any], out: Stream) -> dict[str, Any] | None:
        """The app's response as a Lambda response dict, or None when it was streamed."""
        if self._ready is None:
            self.start()
        assert self._ready is not None
        await self._ready
        if self.lifespan.error is not None:
            raise LifespanStartupFailed(self.lifespan.error)
        body = _body(event)
        resp = _AsgiResponse(out)
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await resp.complete.wait()  # the client stays connected until the response ends
            return {"type": "http.disconnect"}

        try:
            with out.guard():
                await self.app(self.scope(event), receive, resp.send)
        except Exception:
            if not resp.complete.is_set():
                raise
            # Starlette answers 500 and re-raises for the server to log: the log is here.
            traceback.print_exc()
        if out.started:
            if not resp.complete.is_set():
                raise RuntimeError("ASGI app returned without completing its streamed response")
            return None
        if not resp.status:
            raise RuntimeError("ASGI app returned without sending a response")
        return lambda_response(resp.status, resp.headers, resp.body)

    def scope(self, event: dict[str, Any]) -> dict[str, Any]:
        http = _http(event)
        sub = str(http.get("path") or "/")
        root = _mount(event, sub)
        headers = _request_headers(event)
        host = str((event.get("headers") or {}).get("host", ""))
        scheme = str((event.get("headers") or {}).get("x-forwarded-proto", "http"))
        path = root + sub
        return {
            "type": "http",
            # 2.4: a send after the client left raises OSError, so Starlette need not
            # watch receive() for a disconnect while it streams
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": str(http.get("method", "GET")).upper(),
            "scheme": scheme,
            "path": path,
            "raw_path": quote(path).encode("ascii"),
            "query_string": str(event.get("rawQueryString", "")).encode("latin-1"),
            "root_path": root,
            "headers": headers,
            "client": (str(http.get("sourceIp", "")), 0),
            "server": _server(host, scheme),
            "state": dict(self.lifespan.state),
        }

    async def shutdown(self) -> None:
        if self._ready is not None:
            with contextlib.suppress(Exception):
                await self._ready
            await self.lifespan.shutdown(SHUTDOWN_WAIT_S)


class Lifespan:
    """The ASGI lifespan protocol for one instance. An app that raises before answering startup
    does not speak it (as uvicorn's ``lifespan="auto"`` decides) and is served without it."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.error: str | None = None
        self.supported = True
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None
        self._stopped: asyncio.Future[None] | None = None

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        self._started, self._stopped = loop.create_future(), loop.create_future()
        self._task = loop.create_task(self._run())
        await self._inbox.put({"type": "lifespan.startup"})
        await self._started

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": self.state}
        try:
            await self.app(scope, self._inbox.get, self._send)
        except Exception:
            if self._started is not None and not self._started.done():
                self.supported = False
            else:
                traceback.print_exc(file=sys.__stderr__)
        finally:
            for fut in (self._started, self._stopped):
                if fut is not None and not fut.done():
                    fut.set_result(None)

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.failed":
            self.error = str(message.get("message") or "lifespan startup failed")
        fut = self._started if kind.startswith("lifespan.startup.") else self._stopped
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def shutdown(self, wait_s: float) -> None:
        task = self._task
        if task is None:
            return
        if not task.done() and self.supported and self.error is None:
            await self._inbox.put({"type": "lifespan.shutdown"})
            assert self._stopped is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._stopped), wait_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def wsgi_environ(event: dict[str, Any]) -> dict[str, Any]:
    """PEP 3333 environ (paths as latin-1 strings of their UTF-8 bytes, as the PEP says)."""
    http = _http(event)
    sub = str(http.get("path") or "/")
    root = _mount(event, sub)
    body = _body(event)
    hdrs = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    scheme = hdrs.get("x-forwarded-proto", "http")
    name, port = _server(hdrs.get("host", ""), scheme)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": str(http.get("method", "GET")).upper(),
        "SCRIPT_NAME": root.encode("utf-8").decode("latin-1"),
        "PATH_INFO": sub.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": str(event.get("rawQueryString", "")),
        "SERVER_NAME": name,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": str(http.get("sourceIp", "")),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for k, v in _request_headers(event):
        key = k.decode("latin-1").upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = v.decode("latin-1")
        elif key != "CONTENT_LENGTH":
            environ[f"HTTP_{key}"] = v.decode("latin-1")
    return environ


def call_wsgi(app: Callable[..., Any], event: dict[str, Any],
              out: Stream) -> dict[str, Any] | None:
    """The app's response as a Lambda response dict, or None when it was streamed."""
    started: list[Any] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and out.started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [int(status.split(" ", 1)[0]),
                      [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]]
        return written.append  # the legacy write(): buffered, sent before the iterable

    result = app(wsgi_environ(event), start_response)
    try:
        chunks = iter(result)
        first = next(chunks, b"")  # start_response may be called on the first iteration
        if not started:
            raise RuntimeError("WSGI app returned without calling start_response")
        status, headers = started
        whole = isinstance(result, list | tuple) or any(
            k.lower() == b"content-length" for k, _ in headers)
        if whole:
            return lambda_response(status, headers, b"".join([*written, first, *chunks]))
        out.head(status, headers)
        with out.guard():
            for chunk in [*written, first]:
                out.body(chunk)
            for chunk in chunks:
                out.body(chunk)
        return None
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
