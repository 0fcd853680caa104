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
import uuid

from starlette.types import ASGIApp, Receive, Scope, Send

from squall.api.body import expects_continue, read_limited, receive_chunks
from squall.api.errors import error_body, error_headers
from squall.bundle.spec import validate_name
from squall.errors import Forbidden, FunctionNotFound, InvalidName, SquallError
from squall.gateway.apigw import build_event, to_response
from squall.gateway.stream import HttpStream
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


class Gateway:
    """Wraps the control-API app: /fn/ requests are served here, everything else passes on."""

    def __init__(self, app: ASGIApp, platform: Platform) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = split_path(scope["path"]) if scope["type"] == "http" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        rid = str(uuid.uuid4())
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
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

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
        declared = next((v.decode("latin-1") for k, v in scope["headers"]
                         if k == b"content-length"), "")
        return await read_limited(receive_chunks(receive), self.platform.settings.max_sync_payload,
                                  declared=declared, expects_continue=expects_continue(
                                      scope["headers"]), what=" for synchronous invocations")
