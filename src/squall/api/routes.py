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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import Headers
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
    # served by ``Direct``, not Starlette's router: the invocation routes, which see load
    hot: bool = False


class EndpointRoute(Route):
    """A Starlette route that knows its declaration (the authorization test reads it)."""

    def __init__(self, decl: Endpoint) -> None:
        self.decl = decl
        super().__init__(decl.path, _guard(decl), methods=[decl.method], name=decl.summary)


def routes(endpoints: list[Endpoint]) -> list[Route]:
    return [EndpointRoute(e) for e in endpoints]


class _LeanHeaders(Headers):
    """Starlette's ``Headers`` answers ``get`` through ``Mapping.get``, which raises and catches
    a KeyError for every header that is absent (most of those a handler asks for)."""

    def get(self, key: str, default: Any = None) -> Any:
        wanted = key.lower().encode("latin-1")
        for name, value in self._list:
            if name == wanted:
                return value.decode("latin-1")
        return default


class _LeanRequest(Request):
    @property
    def headers(self) -> Headers:
        if not hasattr(self, "_headers"):
            self._headers = _LeanHeaders(scope=self.scope)
        return self._headers


class Direct:
    """The ``hot`` declared routes without Starlette's router and middleware stack.

    An async invocation is accepted in a few tens of microseconds of Squall's own work, and
    Starlette's middleware, its route scan (a regular expression per route) and its request
    wrappers took about as much again. A hot route's request goes to the very endpoint that
    ``_guard`` built for the Starlette route (so the same authorization decision), and its
    errors to the same ``HANDLERS``; anything else, and any path that does not match a hot
    route exactly, passes on to ``app``.
    """

    def __init__(self, app: Any, endpoints: list[Endpoint],
                 handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]]) -> None:
        self.app = app
        self.handlers = handlers
        # (method, segment count) -> [(segments, {index: parameter name}, endpoint)]
        self._table: dict[tuple[str, int], list[tuple[list[str], dict[int, str], Any]]] = {}
        for decl in endpoints:
            if not decl.hot:
                continue
            segments = decl.path.strip("/").split("/")
            params = {i: s[1:-1] for i, s in enumerate(segments) if s.startswith("{")}
            self._table.setdefault((decl.method, len(segments)), []).append(
                (segments, params, _guard(decl)))
        self._seen: dict[tuple[str, str], tuple[Any, dict[str, str]] | None] = {}

    def _match(self, method: str, path: str) -> tuple[Any, dict[str, str]] | None:
        key = (method, path)
        try:
            return self._seen[key]
        except KeyError:
            pass
        found = self._find(method, path)
        if len(self._seen) >= 4096:  # bounded: any client can make up paths
            self._seen.clear()
        self._seen[key] = found
        return found

    def _find(self, method: str, path: str) -> tuple[Any, dict[str, str]] | None:
        parts = path[1:].split("/")
        for segments, params, endpoint in self._table.get((method, len(parts)), ()):
            for i, seg in enumerate(segments):
                if i in params:
                    if not parts[i]:
                        break
                elif parts[i] != seg:
                    break
            else:
                return endpoint, {name: parts[i] for i, name in params.items()}
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        found = self._match(scope["method"], scope["path"]) if scope["type"] == "http" \
            and self._table and not scope["path"].endswith("/") else None
        if found is None:
            await self.app(scope, receive, send)
            return
        endpoint, path_params = found
        scope["app"] = self.app
        scope["path_params"] = dict(path_params)  # the cached match stays as it was
        request = _LeanRequest(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:  # the Starlette app's handlers, most specific class first
            handler = next(h for cls, h in self.handlers.items() if isinstance(exc, cls))
            response = await handler(request, exc)
        await response(scope, receive, send)


def _guard(decl: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        p = platform_of(request.app.state)
        principal = authorize(p, request.headers.get("authorization"), decl.scope)
        # most calls have no query string: nothing to parse
        params = request.query_params if request.scope.get("query_string") else _NO_QUERY
        tenant, all_tenants = _tenant(p, principal, params, decl)
        query = {}
        for param in decl.params:
            raw = params.get(param.name)
            query[param.name] = param.default if raw is None else param.parse(raw)
        client = request.scope.get("client")
        return await decl.handler(request, Call(principal, tenant, query,
                                                client[0] if client else "", all_tenants))

    return endpoint


_NO_QUERY: dict[str, str] = {}


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


def _tenant(p: Platform, principal: Principal | None, params: Mapping[str, str],
            decl: Endpoint) -> tuple[str, bool]:
    asked = params.get("tenant")
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
