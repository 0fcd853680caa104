"""The control API's edge: every route is declared once, with the scope it needs and its
parameters, and that one declaration gives the Starlette route, the authorization check, the
query validation and the OpenAPI document (``openapi.py``).

A request to a declared route goes through ``_guard`` and nowhere else: the key is resolved into a
principal (``platform.identity.authenticate``), its scope checked, the tenant chosen (an admin key
may pass ``?tenant=``; any other key acts on its own tenant), the query parsed into typed values.
The handler receives a ``Call`` and never looks at the credential again. A route built without a
declaration cannot be added by accident: ``tests/test_authz.py`` walks the route table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from squall.errors import BadRequest, Forbidden, NotFound
from squall.platform import Platform, platform_of
from squall.tenancy.model import DEFAULT_TENANT, Principal, Scope

PUBLIC = "public"  # no key: the route makes its own decision (health, a webhook's signature)
AUTHENTICATED = "authenticated"  # any live key, whatever its scopes

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SINCE_S = 100 * 365 * 86400.0


@dataclass(frozen=True)
class Param:
    """A query parameter. ``kind``: string, integer, number, boolean, or since (a duration like
    30m / 24h / 7d back from now, or a unix time). Numbers must be finite and within range."""

    name: str
    kind: str = "string"
    minimum: float | None = None
    maximum: float | None = None
    default: Any = None
    enum: tuple[str, ...] | None = None
    description: str = ""
    max_length: int = 256

    def parse(self, raw: str) -> Any:
        try:
            value = self._convert(raw)
        except ValueError:
            raise BadRequest(f"query parameter {self.name}={raw[:64]!r} is not {self._what()}",
                             code="invalid_query", details={"parameter": self.name}) from None
        return value

    def _what(self) -> str:
        if self.kind == "since":
            return "a duration (30m, 24h, 7d) or a unix time"
        if self.kind in ("integer", "number"):
            rng = f" from {self.minimum:g} to {self.maximum:g}" if self.minimum is not None \
                and self.maximum is not None else ""
            return f"an {self.kind}{rng}" if self.kind == "integer" else f"a number{rng}"
        if self.enum:
            return "one of " + ", ".join(self.enum)
        if self.kind == "boolean":
            return "true or false"
        return f"a string of at most {self.max_length} characters"

    def _convert(self, raw: str) -> Any:
        if self.kind == "string":
            if len(raw) > self.max_length or (self.enum and raw not in self.enum):
                raise ValueError
            return raw
        if not raw.isascii():  # float() would take "１２" (full-width digits) as 12
            raise ValueError(raw)
        if self.kind == "boolean":
            if raw.lower() not in ("1", "0", "true", "false"):
                raise ValueError
            return raw.lower() in ("1", "true")
        if self.kind == "since":
            return parse_since(raw, time.time())
        value: float = int(raw) if self.kind == "integer" else float(raw)
        if not math.isfinite(value):
            raise ValueError
        if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum):
            raise ValueError
        return value


def parse_since(raw: str, now: float) -> float:
    """``30m`` -> now - 1800; ``1700000000`` -> that unix time. Finite, 0 .. now + 1 day."""
    raw = raw.strip()
    if raw and raw[-1] in _DURATION_UNITS:
        amount = float(raw[:-1])
        if not math.isfinite(amount) or not 0 <= amount * _DURATION_UNITS[raw[-1]] <= MAX_SINCE_S:
            raise ValueError(raw)
        return now - amount * _DURATION_UNITS[raw[-1]]
    value = float(raw)
    if not math.isfinite(value) or not 0 <= value <= now + 86400:
        raise ValueError(raw)
    return value


LIMIT = Param("limit", "integer", 1, 10_000, 100, description="at most this many items")
TENANT = Param("tenant", description="admin keys: act on this tenant (default: `default`)",
               max_length=32)


@dataclass(frozen=True)
class Call:
    """What the edge established about a request, handed to the handler."""

    principal: Principal | None
    tenant: str
    query: dict[str, Any]
    client: str
    # an admin key that named no tenant: reads that span tenants (usage, bill, audit) show all
    all_tenants: bool = False

    @property
    def key_id(self) -> str | None:
        return None if self.principal is None else self.principal.key_id


Handler = Callable[[Request, Call], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    scope: Scope | str
    summary: str
    params: tuple[Param, ...] = ()
    # request body: None, "json" (an object), "binary" (a bundle), "text" (a secret value)
    body: str | None = None
    responses: tuple[int, ...] = (200,)
    tenant_scoped: bool = True
    body_schema: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    response_types: tuple[str, ...] = ("application/json",)


class EndpointRoute(Route):
    """A Starlette route that knows its declaration (the authorization test reads it)."""

    def __init__(self, decl: Endpoint) -> None:
        self.decl = decl
        super().__init__(decl.path, _guard(decl), methods=[decl.method], name=decl.summary)


def routes(endpoints: list[Endpoint]) -> list[Route]:
    return [EndpointRoute(e) for e in endpoints]


def _guard(decl: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        p = platform_of(request.app.state)
        principal = authorize(p, request.headers.get("authorization"), decl.scope)
        tenant, all_tenants = _tenant(p, principal, request, decl)
        query = {}
        for param in decl.params:
            raw = request.query_params.get(param.name)
            query[param.name] = param.default if raw is None else param.parse(raw)
        client = request.client.host if request.client else ""
        return await decl.handler(request, Call(principal, tenant, query, client, all_tenants))

    return endpoint


def authorize(p: Platform, authorization: str | None, scope: Scope | str) -> Principal | None:
    """The scope check shared by the control API and the gateway: None for public routes."""
    if scope == PUBLIC:
        return None
    assert p.identity is not None
    principal = p.identity.authenticate(authorization)
    if scope != AUTHENTICATED and not principal.allows(Scope(scope)):
        raise Forbidden(f"this key (scopes {', '.join(sorted(principal.scopes))}) lacks the "
                        f"{scope!r} scope this call needs", code="forbidden")
    return principal


def _tenant(p: Platform, principal: Principal | None, request: Request,
            decl: Endpoint) -> tuple[str, bool]:
    asked = request.query_params.get("tenant")
    if principal is None or not decl.tenant_scoped:
        return asked or DEFAULT_TENANT, False
    if asked is None:
        return principal.tenant, principal.is_admin
    # Another tenant's name is answered like a tenant that does not exist: names do not leak.
    assert p.identity is not None
    if not principal.can_act_on(asked) or not p.identity.tenant_exists(asked):
        raise NotFound(f"tenant {asked[:32]!r} does not exist", code="tenant_not_found")
    return asked, False


def platform(request: Request) -> Platform:
    return platform_of(request.app.state)
