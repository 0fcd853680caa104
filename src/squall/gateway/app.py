"""The HTTP trigger as a lean ASGI app (the hot path skips the router):

- ``/fn/{name}[:{qualifier}][/{path}]``: the ``default`` tenant's functions;
- ``/t/{tenant}/fn/{name}[:{qualifier}][/{path}]``: any tenant's.

A qualifier is a version number or an alias. A function with ``http_auth = "key"`` needs a key
with the invoke scope for its tenant (``Authorization: Bearer``); ``public`` (the default) needs
none, like a Lambda function URL with auth NONE. A tenant that does not exist, or a key of another
tenant, gets the same 404 as a function that does not exist.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from squall.api.body import expects_continue, read_limited, receive_chunks
from squall.api.errors import error_body, error_headers
from squall.bundle.spec import validate_name
from squall.errors import Forbidden, FunctionNotFound, InvalidName, SquallError
from squall.gateway.apigw import build_event, to_response
from squall.gateway.stream import HttpStream
from squall.ids import new_request_id
from squall.platform import Platform
from squall.tenancy.model import DEFAULT_TENANT
from squall.tenancy.model import Scope as KeyScope

PREFIX = "/fn/"
TENANT_PREFIX = "/t/"


def split_path(path: str) -> tuple[str, str] | None:
    """(tenant, rest after ``fn/``) for a function URL, None for any other path."""
    if path.startswith(PREFIX):
        return DEFAULT_TENANT, path[len(PREFIX):]
    if path.startswith(TENANT_PREFIX):
        tenant, _, rest = path[len(TENANT_PREFIX):].partition("/")
        if tenant and rest.startswith("fn/"):
            return tenant, rest[3:]
    return None


def _has_length(headers: list[tuple[bytes, bytes]]) -> bool:
    for k, _ in headers:
        if k.lower() == b"content-length":
            return True
    return False


class _Joined:
    """Stands in for a uvicorn connection's transport while one whole response is sent, so
    that its head and body leave in one write: one system call and one wake-up of the client
    instead of two (uvloop writes at once on every call). Whatever else the server does with
    its transport goes to the real one, after what is held."""

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._held.append(data)

    def flush(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held = []
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def _send_joined(send: Send, start: Message, body: Message) -> None:
    """A response's start and its first body message; under uvicorn (its send is a bound
    method of the request's cycle, which has a ``transport``), written with one write."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None or not hasattr(transport, "write"):
        await send(start)
        await send(body)
        return
    joined = _Joined(transport)
    cycle.transport = joined  # type: ignore[union-attr]
    try:
        await send(start)
        await send(body)
    finally:
        cycle.transport = transport  # type: ignore[union-attr]
        joined.flush()


async def _send_whole(send: Send, status: int, headers: list[tuple[bytes, bytes]],
                      body: bytes) -> None:
    """The two ASGI messages of a whole response, in one write."""
    await _send_joined(send, {"type": "http.response.start", "status": status,
                              "headers": headers}, {"type": "http.response.body", "body": body})


def head_with_body(send: Send) -> Send:
    """``send`` for an app whose responses should leave with their head and first body chunk
    in one write (the control API, S3, Lambda's API): the start is held until the body."""
    held: Message | None = None

    async def joined(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start":
            held = message
            return
        if held is not None:
            start, held = held, None
            if message["type"] == "http.response.body":
                await _send_joined(send, start, message)
                return
            await send(start)
        await send(message)

    return joined


class Gateway:
    """Wraps the control-API app: /fn/ requests are served here, everything else passes on."""

    def __init__(self, app: ASGIApp, platform: Platform) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = split_path(scope["path"]) if scope["type"] == "http" else None
        if target is None:
            await self.app(scope, receive, head_with_body(send) if scope["type"] == "http"
                           else send)
            return
        rid = new_request_id()
        stream = HttpStream(send, receive, rid)
        try:
            served = await self._serve(scope, receive, rid, *target, stream)
            if served is None:  # streamed: sent as the function produced it
                return
            status, headers, body = served
        except SquallError as exc:
            status = exc.status
            headers = [(b"content-type", b"application/json"),
                       *((k.encode(), v.encode()) for k, v in error_headers(exc).items())]
            body = error_body(exc.code, exc.message, exc.details or None)
        headers.append((b"x-squall-request-id", rid.encode()))
        if status >= 200 and status not in (204, 304) and not _has_length(headers):
            # a length instead of chunked transfer encoding: the whole body is here already
            headers.append((b"content-length", str(len(body)).encode()))
        await _send_whole(send, status, headers, body)

    async def _serve(self, scope: Scope, receive: Receive, rid: str, tenant: str, rest: str,
                     stream: HttpStream) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        segment, _, sub = rest.partition("/")
        name, _, qualifier = segment.partition(":")
        if not name:
            raise InvalidName("no function name in the path: use /fn/<name>/...")
        validate_name(name)
        headers = scope["headers"]
        if self._authorize(scope, tenant, name):
            # The platform's key was for the platform: the function (and any captured event)
            # never sees it.
            headers = [h for h in headers if h[0] != b"authorization"]
        body = await self._body(receive, scope)
        client = scope.get("client") or ("", 0)
        event = build_event(
            function=name, method=scope["method"], path="/" + sub,
            raw_query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers, body=body, source_ip=client[0], request_id=rid,
            stage_path=scope["path"])
        try:
            outcome = await self.platform.invoker.invoke(name, event, trigger="http",
                                                         request_id=rid, namespace=tenant,
                                                         qualifier=qualifier or None,
                                                         stream=stream)
        finally:
            if stream.started:
                await stream.close()
        if stream.started:  # a failure mid-stream (time limit, crash) cuts the connection
            await stream.end(outcome.error is None)
            return None
        extra = [(b"x-squall-cold-start", b"1" if outcome.cold else b"0"),
                 (b"x-squall-executed-version", str(outcome.version).encode())]
        if outcome.error is not None:
            status = 504 if outcome.error_type == "TimeoutError" else 500
            return status, [(b"content-type", b"application/json"),
                            (b"x-squall-function-error", b"Unhandled"), *extra], \
                json.dumps(outcome.error).encode()
        try:
            status, headers, payload = to_response(outcome.value)
        except (TypeError, ValueError) as exc:
            err = {"errorType": "Runtime.InvalidResponse",
                   "errorMessage": f"the handler's response cannot be sent: {exc}",
                   "stackTrace": []}
            return 502, [(b"content-type", b"application/json"), *extra], json.dumps(err).encode()
        headers.extend(extra)
        return status, headers, payload

    def _authorize(self, scope: Scope, tenant: str, name: str) -> bool:
        """The function's ``http_auth`` decides: public (False), or a key allowed to invoke
        here (True: the request's Authorization header was the platform's)."""
        rec = self.platform.registry.get(name, tenant)
        if rec is None:
            raise FunctionNotFound(f"function '{name}' does not exist")
        if rec.config.http_auth == "public":
            return False
        identity = self.platform.identity
        assert identity is not None
        header = next((v.decode("latin-1") for k, v in scope["headers"]
                       if k == b"authorization"), None)
        principal = identity.authenticate(header)
        if not principal.can_act_on(tenant):
            raise FunctionNotFound(f"function '{name}' does not exist")
        if not principal.allows(KeyScope.INVOKE):
            raise Forbidden(f"function '{name}' needs a key with the invoke scope",
                            code="forbidden")
        return True

    async def _body(self, receive: Receive, scope: Scope) -> bytes:
        declared = ""
        chunked = False
        for k, v in scope["headers"]:
            if k == b"content-length":
                declared = v.decode("latin-1")
                break
            if k == b"transfer-encoding":
                chunked = True
        if not declared and not chunked:
            return b""  # neither header: the request has no body (RFC 9112, 6.3)
        return await read_limited(receive_chunks(receive), self.platform.settings.max_sync_payload,
                                  declared=declared, expects_continue=expects_continue(
                                      scope["headers"]), what=" for synchronous invocations")
