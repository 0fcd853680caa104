"""One instance's Lambda Runtime API endpoint (version 2018-06-01), served by the platform.

The instance made the listening socket inside its own network namespace and handed it over
(runtime/launcher.py), so the same code serves network = "host" and "none". HTTP/1.1 is parsed
by httptools (uvicorn's parser); the rules are in state.py. Routes::

    GET  /2018-06-01/runtime/invocation/next            waits for the next invocation
    POST /2018-06-01/runtime/invocation/{id}/response    202
    POST /2018-06-01/runtime/invocation/{id}/error       202 (Lambda-Runtime-Function-Error-Type)
    POST /2018-06-01/runtime/init/error                  202, before the first /next only

Every task here belongs to the endpoint and is cancelled by ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import httptools

from squall.runtime_api.peer import belongs_to
from squall.runtime_api.state import MAX_PAYLOAD, ApiError, Invocation, RuntimeState

log = logging.getLogger("squall.runtime_api")

PREFIX = "/2018-06-01/runtime/"
Reply = dict[str, Any]
_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 410: "Gone",
            413: "Payload Too Large", 500: "Internal Server Error"}


class InitFailed(Exception):
    """The runtime posted /runtime/init/error (``error`` is Lambda's error shape)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('errorType')}: {error.get('errorMessage')}")
        self.error = error


def error_shape(body: bytes, header_type: str | None) -> dict[str, Any]:
    """Lambda's {errorType, errorMessage, stackTrace} from what a runtime posted."""
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {"errorMessage": body.decode("utf-8", "replace")}
    if not isinstance(data, dict):
        data = {"errorMessage": json.dumps(data)}
    trace = data.get("stackTrace", data.get("trace", []))
    if isinstance(trace, str):
        trace = trace.splitlines()
    return {"errorType": str(data.get("errorType") or header_type or "Runtime.Unknown"),
            "errorMessage": str(data.get("errorMessage", "")),
            "stackTrace": [str(t) for t in trace] if isinstance(trace, list) else []}


def _value(body: bytes) -> Any:
    """A response body is JSON as Lambda treats it; anything else is returned as text."""
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


class RuntimeApi:
    """The endpoint of one instance (host pid ``pid``). ``start``, then ``submit`` invocations.

    ``ready`` resolves at the runtime's first /next (its init is done), or fails with
    InitFailed. ``before_answer`` runs before an answer is handed to the platform (the instance
    drains its log pipe there, so lines printed before the response belong to it).
    """

    def __init__(self, pid: int, listener: socket.socket, *, check_peer: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.pid = pid
        self.state = RuntimeState()
        self.before_answer: Callable[[], None] = lambda: None
        self._listener = listener
        self._port = int(listener.getsockname()[1])
        self._check_peer = check_peer
        self._clock = clock
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self._replies: dict[str, asyncio.Future[Reply]] = {}
        self._wakeup: asyncio.Event = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=self._listener)

    def allowed(self, peer: Any) -> bool:
        if not self._check_peer:
            return True
        ok = isinstance(peer, tuple) and belongs_to(self.pid, int(peer[1]), self._port)
        if not ok:
            log.warning("runtime API of pid %d: refused a connection from %r (not the "
                        "instance's process)", self.pid, peer)
        return ok

    # -- the platform's side ---------------------------------------------------------------

    def submit(self, inv: Invocation) -> asyncio.Future[Reply]:
        """Queue one invocation; the future gets {"t": "res", "v"} or {"t": "err", "e"}."""
        self.state.submit(inv)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._replies[inv.request_id] = fut
        self._wakeup.set()
        return fut

    def abandon(self, request_id: str) -> None:
        """The platform stopped waiting (timeout): later answers for it get 410."""
        self._replies.pop(request_id, None)
        self.state.expire(request_id)

    def shutdown(self) -> None:
        """Stop listening and drop every connection (a waiting /next ends). Idempotent."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.abort()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("the runtime API closed"))
            self.ready.exception()  # retrieved: nobody may be waiting any more

    async def close(self) -> None:
        self.shutdown()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    # -- routes ----------------------------------------------------------------------------

    async def handle(self, method: str, path: str, headers: dict[str, str],
                     body: bytes) -> tuple[int, dict[str, str], bytes]:
        try:
            if not path.startswith(PREFIX):
                raise ApiError(404, "NotFound", f"no route {path}")
            parts = path[len(PREFIX):].split("/")
            if parts == ["invocation", "next"]:
                _method(method, "GET")
                return await self._next()
            if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response",
                                                                             "error"):
                _method(method, "POST")
                self._answer(parts[1], parts[2], headers, body)
                return _json(202, {"status": "OK"})
            if parts == ["init", "error"]:
                _method(method, "POST")
                self.state.init_error()
                error = error_shape(body, headers.get("lambda-runtime-function-error-type"))
                if not self.ready.done():
                    self.ready.set_exception(InitFailed(error))
                return _json(202, {"status": "OK"})
            raise ApiError(404, "NotFound", f"no route {path}")
        except ApiError as exc:
            return _json(exc.status, {"errorType": exc.error_type, "errorMessage": exc.message})

    async def _next(self) -> tuple[int, dict[str, str], bytes]:
        self.state.begin_next()
        if not self.ready.done():
            self.ready.set_result(None)
        while not self.state.can_take():
            self._wakeup.clear()
            await self._wakeup.wait()
        inv = self.state.take()
        headers = {"Lambda-Runtime-Aws-Request-Id": inv.request_id,
                   "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
                   "Lambda-Runtime-Invoked-Function-Arn": inv.function_arn,
                   "Content-Type": "application/json"}
        if inv.trace_id:
            headers["Lambda-Runtime-Trace-Id"] = inv.trace_id
        return 200, headers, inv.payload

    def _answer(self, request_id: str, kind: str, headers: dict[str, str], body: bytes) -> None:
        self.state.answer(request_id, self._clock() * 1000.0, len(body))
        fut = self._replies.pop(request_id, None)
        self.before_answer()
        if fut is None or fut.done():
            return
        if kind == "response":
            fut.set_result({"t": "res", "id": request_id, "v": _value(body)})
        else:
            error = error_shape(body, headers.get("lambda-runtime-function-error-type"))
            fut.set_result({"t": "err", "id": request_id, "e": error})


def _method(got: str, want: str) -> None:
    if got != want:
        raise ApiError(405, "MethodNotAllowed", f"use {want}")


def _json(status: int, data: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(data).encode()


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: requests are answered in order (runtimes do not pipeline, but
    a pipelined request still waits for the one before it)."""

    def __init__(self, api: RuntimeApi) -> None:
        self.api = api
        # uvloop's transports do not subclass asyncio.Transport: typed by what is used
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._too_large = False
        self._tail: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if not self.api.allowed(transport.get_extra_info("peername")):
            self.transport.abort()
            return
        self.api._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.api._conns.discard(self)
        for task in self._tasks:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.abort()
        except httptools.HttpParserError:
            self._write(400, {"Content-Type": "application/json"},
                        b'{"errorType":"BadRequest","errorMessage":"malformed HTTP"}', False)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._too_large = b"", {}, bytearray(), False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if len(self._body) + len(body) > MAX_PAYLOAD + 1:
            self._too_large = True  # keep counting nothing: the answer is 413 either way
            return
        self._body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        path = httptools.parse_url(self._url).path.decode()
        body = bytes(self._body) + (b"\0" if self._too_large else b"")
        keep = self.parser.should_keep_alive()
        task = asyncio.get_running_loop().create_task(
            self._serve(self._tail, method, path, dict(self._headers), body, keep))
        self._tail = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, before: asyncio.Task[None] | None, method: str, path: str,
                     headers: dict[str, str], body: bytes, keep: bool) -> None:
        if before is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await before
        status, out_headers, out = await self.api.handle(method, path, headers, body)
        self._write(status, out_headers, out, keep)

    def _write(self, status: int, headers: dict[str, str], body: bytes, keep: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
                *(f"{k}: {v}" for k, v in headers.items()),
                f"Content-Length: {len(body)}",
                "Connection: keep-alive" if keep else "Connection: close"]
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        if not keep:
            self.transport.close()
