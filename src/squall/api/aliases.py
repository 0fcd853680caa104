"""/api/v1/functions/{name}/aliases: name a version, split traffic between two, roll back.

``PUT .../aliases/prod {"version": 3, "weights": {"4": 0.1}}`` sends 10% of ``prod``'s traffic to
version 4 and the rest to 3; ``PUT`` again to move it (rolling back is moving the alias).
Invocations name it as ``?qualifier=prod`` (or ``/fn/<name>:prod/`` on the HTTP trigger).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from squall.api.audit import audit
from squall.api.body import read_body
from squall.api.routes import Call, Endpoint, platform
from squall.bundle.spec import validate_name
from squall.errors import BadRequest, FunctionNotFound, InvalidJSON
from squall.routing import parse_version
from squall.tenancy.model import Scope

_FN = "/api/v1/functions/{name}"
_BODY = {"type": "object", "required": ["version"], "properties": {
    "version": {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string",
                                                               "enum": ["$LATEST"]}]},
    "weights": {"type": "object", "additionalProperties": {
        "type": "number", "minimum": 0, "maximum": 1}},
    "description": {"type": "string", "maxLength": 256}}}
_KEYS = frozenset({"version", "weights", "description"})


def _function(request: Request, call: Call) -> str:
    name = validate_name(request.path_params["name"])
    if platform(request).registry.get(name, call.tenant) is None:
        raise FunctionNotFound(f"function '{name}' does not exist")
    return name


async def _body(request: Request) -> dict[str, Any]:
    raw = await read_body(request, 64 * 1024)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSON(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest('send {"version": 3, "weights": {"4": 0.1}}', code="invalid_alias")
    unknown = sorted(set(body) - _KEYS)
    if unknown:
        raise BadRequest(f"unknown key(s) {', '.join(unknown)}: use version, weights, "
                         f"description", code="invalid_alias")
    if "version" not in body:
        raise BadRequest("version is required (a version number or $LATEST)",
                         code="invalid_version")
    return body


async def list_aliases(request: Request, call: Call) -> Response:
    function = _function(request, call)
    aliases = await platform(request).invoker.aliases.list(call.tenant, function)
    return JSONResponse({"name": function, "aliases": [a.to_dict() for a in aliases]})


async def get_alias(request: Request, call: Call) -> Response:
    alias = await platform(request).invoker.aliases.require(
        call.tenant, _function(request, call), request.path_params["alias"])
    return JSONResponse(alias.to_dict())


async def set_alias(request: Request, call: Call) -> Response:
    p = platform(request)
    function = _function(request, call)
    body = await _body(request)
    weights = body.get("weights") or {}
    if not isinstance(weights, dict):
        raise BadRequest('weights must be an object: {"4": 0.1}', code="invalid_weights")
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > 256:
        raise BadRequest("description must be a string of at most 256 characters",
                         code="invalid_alias")
    existed = await p.invoker.aliases.get(call.tenant, function, request.path_params["alias"])
    alias = await p.invoker.aliases.put(
        call.tenant, function, request.path_params["alias"],
        version=parse_version(body["version"]), weights=weights, description=description)
    await audit(p, call, "alias set", f"{function}:{alias.name}", alias.to_dict())
    return JSONResponse(alias.to_dict(), status_code=200 if existed else 201)


async def remove_alias(request: Request, call: Call) -> Response:
    p = platform(request)
    function = _function(request, call)
    alias = await p.invoker.aliases.delete(call.tenant, function, request.path_params["alias"])
    await audit(p, call, "alias rm", f"{function}:{alias.name}")
    return JSONResponse({"name": function, "alias": alias.name, "removed": True})


ENDPOINTS = [
    Endpoint("GET", _FN + "/aliases", list_aliases, Scope.READ, "List aliases"),
    Endpoint("GET", _FN + "/aliases/{alias}", get_alias, Scope.READ, "Describe an alias"),
    Endpoint("PUT", _FN + "/aliases/{alias}", set_alias, Scope.DEPLOY,
             "Create or move an alias", body="json", responses=(200, 201), body_schema=_BODY),
    Endpoint("DELETE", _FN + "/aliases/{alias}", remove_alias, Scope.DEPLOY, "Remove an alias"),
]
