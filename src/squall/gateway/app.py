"""The HTTP trigger: /fn/{name}[/{path}] as a lean ASGI app (the hot path skips the router)."""

from __future__ import annotations

import json
import uuid

from starlette.types import ASGIApp, Receive, Scope, Send

from squall.api.errors import error_body, error_headers
from squall.bundle.spec import validate_name
from squall.errors import InvalidName, PayloadTooLarge, SquallError
from squall.gateway.apigw import build_event, to_response
from squall.platform import Platform

PREFIX = "/fn/"


class Gateway:
    """Wraps the control-API app: /fn/ requests are served here, everything else passes on."""

    def __init__(self, app: ASGIApp, platform: Platform) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        rid = str(uuid.uuid4())
        try:
            status, headers, body = await self._serve(scope, receive, rid)
        except SquallError as exc:
            status = exc.status
            headers = [(b"content-type", b"application/json"),
                       *((k.encode(), v.encode()) for k, v in error_headers(exc).items())]
            body = error_body(exc.code, exc.message, exc.details or None)
        headers.append((b"x-squall-request-id", rid.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _serve(self, scope: Scope, receive: Receive,
                     rid: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        rest = scope["path"][len(PREFIX):]
        name, _, sub = rest.partition("/")
        if not name:
            raise InvalidName("no function name in the path: use /fn/<name>/...")
        validate_name(name)
        body = await self._body(receive, scope)
        client = scope.get("client") or ("", 0)
        event = build_event(
            function=name, method=scope["method"], path="/" + sub,
            raw_query=scope.get("query_string", b"").decode("latin-1"),
            headers=scope["headers"], body=body, source_ip=client[0], request_id=rid,
            stage_path=scope["path"])
        outcome = await self.platform.invoker.invoke(name, event, trigger="http",
                                                     request_id=rid)
        extra = [(b"x-squall-cold-start", b"1" if outcome.cold else b"0")]
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

    async def _body(self, receive: Receive, scope: Scope) -> bytes:
        limit = self.platform.settings.max_sync_payload
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > limit:
                raise PayloadTooLarge(f"request body of {int(v)} bytes exceeds the {limit} "
                                      f"byte limit for synchronous invocations")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the {limit} byte limit for "
                                      f"synchronous invocations")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)
