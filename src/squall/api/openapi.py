"""The OpenAPI 3.1 document of the control API, generated from the route declarations
(``routes.Endpoint``) that also build the routes and their checks: it cannot drift from them."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from squall.api.routes import AUTHENTICATED, PUBLIC, Call, Endpoint, Param

_ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                   "details": {"type": "object"}}}}}
_ERRORS = {400: "Bad input (code says which)", 401: "No, unknown, revoked or expired key",
           403: "The key lacks the scope", 404: "Not found (or another tenant's)",
           405: "Method not allowed", 409: "Conflict", 413: "Body too large",
           429: "Quota or capacity reached (Retry-After)", 502: "Sandbox failure",
           503: "Service unavailable", 504: "Function timed out"}
_BODIES = {"json": ("application/json", {"type": "object"}),
           "binary": ("application/octet-stream", {"type": "string", "format": "binary"}),
           "text": ("text/plain", {"type": "string"})}


def _param_schema(p: Param) -> dict[str, Any]:
    if p.kind in ("integer", "number"):
        s: dict[str, Any] = {"type": p.kind}
        if p.minimum is not None:
            s["minimum"] = p.minimum
        if p.maximum is not None:
            s["maximum"] = p.maximum
        return s
    if p.kind == "boolean":
        return {"type": "boolean"}
    if p.kind == "since":
        return {"type": "string", "pattern": r"^(\d+(\.\d+)?[smhd]|\d+(\.\d+)?)$"}
    s = {"type": "string", "maxLength": p.max_length}
    if p.enum:
        s["enum"] = list(p.enum)
    return s


def _operation(e: Endpoint) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": n, "in": "path", "required": True,
         "schema": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}}
        for n in re.findall(r"{(\w+)}", e.path)]
    params += [{"name": p.name, "in": "query", "required": False, "schema": _param_schema(p),
                "description": p.description} for p in e.params]
    if e.tenant_scoped and e.scope != PUBLIC:
        params.append({"name": "tenant", "in": "query", "required": False,
                       "schema": {"type": "string", "maxLength": 32},
                       "description": "admin keys: act on this tenant"})
    responses: dict[str, Any] = {}
    for status in e.responses:
        responses[str(status)] = {"description": "OK", "content": {
            t: {"schema": {}} for t in e.response_types}}
    for status, text in _ERRORS.items():
        responses[str(status)] = {"description": text, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    op: dict[str, Any] = {"summary": e.summary, "operationId": _op_id(e),
                          "parameters": params, "responses": responses,
                          "x-squall-scope": str(e.scope)}
    if e.scope == PUBLIC:
        op["security"] = []
    elif e.scope != AUTHENTICATED:
        op["description"] = f"Needs a key with the `{e.scope}` scope (or `admin`)."
    if e.body is not None:
        media, schema = _BODIES[e.body]
        op["requestBody"] = {"required": e.body != "json",
                             "content": {media: {"schema": e.body_schema or schema}}}
    return op


def _op_id(e: Endpoint) -> str:
    return e.method.lower() + "_" + re.sub(r"[^a-zA-Z0-9]+", "_", e.path).strip("_")


def document(endpoints: list[Endpoint], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        paths.setdefault(e.path, {})[e.method.lower()] = _operation(e)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Squall control API", "version": version,
                 "description": "Every route needs `Authorization: Bearer <key>` unless marked "
                                "public; see README, 'Tenants, keys and secrets'."},
        "paths": paths,
        "components": {"schemas": {"Error": _ERROR_SCHEMA},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }


def endpoint(endpoints: list[Endpoint]) -> Endpoint:
    """The declaration of ``GET /api/v1/openapi.json`` itself (any live key may read it)."""
    from importlib.metadata import version

    doc: dict[str, Any] = {}

    async def serve(request: Request, call: Call) -> Response:
        if not doc:
            doc.update(document([*endpoints, me], version("squall")))
        return JSONResponse(doc)

    me = Endpoint("GET", "/api/v1/openapi.json", serve, AUTHENTICATED, "OpenAPI document",
                  tenant_scoped=False)
    return me
