"""Lambda's alias calls: CreateAlias, UpdateAlias, GetAlias, DeleteAlias, ListAliases."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from squall.errors import BadRequest
from squall.lambda_api.arn import parse_function_name
from squall.lambda_api.bundle import unsupported
from squall.lambda_api.edge import Call
from squall.lambda_api.shapes import alias_configuration
from squall.routing import Alias, parse_version, validate_alias_name

_CREATE = frozenset({"Name", "FunctionVersion", "Description", "RoutingConfig"})
_UPDATE = frozenset({"FunctionVersion", "Description", "RoutingConfig", "RevisionId"})


def _function(request: Request, call: Call) -> str:
    ref = parse_function_name(request.path_params["FunctionName"], call.tenant)
    if ref.qualifier:
        raise BadRequest("an alias belongs to the function: give its name without a qualifier",
                         code="invalid_function_name")
    return ref.name


def _weights(body: dict[str, Any]) -> dict[str, Any] | None:
    routing = body.get("RoutingConfig")
    if routing is None:
        return None
    if not isinstance(routing, dict):
        raise BadRequest("RoutingConfig must be an object", code="invalid_weights")
    unsupported(routing, frozenset({"AdditionalVersionWeights"}), "RoutingConfig")
    weights = routing.get("AdditionalVersionWeights") or {}
    if not isinstance(weights, dict):
        raise BadRequest("AdditionalVersionWeights must map versions to weights",
                         code="invalid_weights")
    return weights


def _text(body: dict[str, Any], default: str) -> str:
    value = body.get("Description", default)
    if not isinstance(value, str) or len(value) > 256:
        raise BadRequest("Description must be a string of at most 256 characters",
                         code="invalid_description")
    return value


async def create_alias(request: Request, call: Call) -> Response:
    body = call.json()
    unsupported(body, _CREATE, "CreateAlias")
    alias = await call.platform.invoker.aliases.put(
        call.tenant, _function(request, call), validate_alias_name(body.get("Name")),
        version=parse_version(body.get("FunctionVersion")), weights=_weights(body),
        description=_text(body, ""), mode="create")
    await call.audit("CreateAlias", f"{alias.function}:{alias.name}", alias.to_dict())
    return JSONResponse(alias_configuration(alias, call.region), status_code=201)


async def update_alias(request: Request, call: Call) -> Response:
    body = call.json()
    unsupported(body, _UPDATE, "UpdateAlias")
    book = call.platform.invoker.aliases
    function = _function(request, call)
    current = await book.require(call.tenant, function, request.path_params["Name"])
    version = parse_version(body["FunctionVersion"]) if "FunctionVersion" in body \
        else current.version
    weights = _weights(body)
    alias = await book.put(
        call.tenant, function, current.name, version=version,
        weights=current.weights if weights is None else weights,
        description=_text(body, current.description), mode="update",
        revision=body.get("RevisionId"))
    await call.audit("UpdateAlias", f"{alias.function}:{alias.name}", alias.to_dict())
    return JSONResponse(alias_configuration(alias, call.region))


async def get_alias(request: Request, call: Call) -> Response:
    alias = await call.platform.invoker.aliases.require(
        call.tenant, _function(request, call), request.path_params["Name"])
    return JSONResponse(alias_configuration(alias, call.region))


async def delete_alias(request: Request, call: Call) -> Response:
    alias = await call.platform.invoker.aliases.delete(call.tenant, _function(request, call),
                                                       request.path_params["Name"])
    await call.audit("DeleteAlias", f"{alias.function}:{alias.name}")
    return Response(status_code=204)


async def list_aliases(request: Request, call: Call) -> Response:
    function = _function(request, call)
    await call.platform.invoker.resolve(function, None, call.tenant)  # 404 for no function
    aliases: list[Alias] = await call.platform.invoker.aliases.list(call.tenant, function)
    wanted = request.query_params.get("FunctionVersion")
    if wanted is not None:
        aliases = [a for a in aliases if str(a.version) == wanted or a.weights.get(
            int(wanted) if wanted.isdigit() else -1) is not None]
    return JSONResponse({"Aliases": [alias_configuration(a, call.region) for a in aliases]})
