"""The Lambda API's edge: read the body, verify the SigV4 signature, check the scope.

Every operation is declared with the scope it needs (Invoke: invoke; reads: read; writes:
deploy) and goes through ``operation``; the handler receives a ``Call`` and never looks at the
credential again. The signature covers the body's SHA-256, so the body is read (with the
operation's size limit) before the signature is checked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from squall.api import routes as api_routes
from squall.api.audit import audit
from squall.api.body import read_body
from squall.auth import sigv4
from squall.errors import BadRequest, Forbidden, ServiceUnavailable
from squall.platform import Platform, platform_of
from squall.tenancy.model import Principal, Scope


@dataclass(frozen=True)
class Call:
    platform: Platform
    principal: Principal
    region: str
    body: bytes
    client: str = ""

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    async def audit(self, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
        """Record a change in the audit log, as the control API does (``lambda:`` actions)."""
        call = api_routes.Call(self.principal, self.tenant, {}, self.client)
        await audit(self.platform, call, f"lambda:{action}", target, detail)

    def json(self) -> dict[str, Any]:
        """The body as a JSON object ({} when empty); InvalidRequestContentException if not."""
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"Could not parse request body into json: {exc}",
                             code="invalid_request_content") from None
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object",
                             code="invalid_request_content")
        return data


Handler = Callable[[Request, Call], Awaitable[Response]]
Limit = Callable[[Platform, Request], int]


def _control_limit(p: Platform, request: Request) -> int:
    return 1024 * 1024


@dataclass(frozen=True)
class Operation:
    name: str
    method: str
    path: str
    scope: Scope
    handler: Handler
    limit: Limit = _control_limit


class OperationRoute(Route):
    """A route that knows its declaration (tests walk the table: every operation has a scope)."""

    def __init__(self, op: Operation) -> None:
        self.op = op
        super().__init__(op.path, _guard(op), methods=[op.method], name=op.name)


def _guard(op: Operation) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        p = platform_of(request.app.state)
        body = await read_body(request, op.limit(p, request))
        principal, region = authenticate(p, request, body)
        if not principal.allows(op.scope):
            raise Forbidden(f"User is not authorized to perform: lambda:{op.name} (the key "
                            f"lacks the {op.scope.value!r} scope)")
        client = request.client.host if request.client else ""
        return await op.handler(request, Call(p, principal, region, body, client))

    return endpoint


def authenticate(p: Platform, request: Request, body: bytes) -> tuple[Principal, str]:
    """(principal, the region the client signed for). Raises a ``sigv4.SigV4Error``."""
    if p.identity is None:
        raise ServiceUnavailable("the Lambda API needs the identity service (API keys)",
                                 code="identity_unavailable")
    signed = sigv4.from_asgi(request.scope, payload_sha256=hashlib.sha256(body).hexdigest())
    verified = sigv4.verify(signed, p.identity, service="lambda")
    # credential scope: 20240101/us-east-1/lambda/aws4_request
    region = verified.credential_scope.split("/")[1]
    return verified.principal, region


def routes(ops: list[Operation]) -> list[Route]:
    return [OperationRoute(op) for op in ops]
