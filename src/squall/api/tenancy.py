"""/api/v1 tenants, keys, secrets, audit and bill.

Tenants and keys are the operator's: ``admin`` scope. A tenant's own keys may read their tenant
(``GET /api/v1/tenants/{name}`` with ``read``), and manage its secrets (``deploy``).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from squall.api.audit import audit
from squall.api.body import read_body, read_json_object
from squall.api.routes import LIMIT, Call, Endpoint, Param, platform
from squall.errors import BadRequest, Conflict, NotFound
from squall.metering.billing import by_tenant, month_bounds, summarise
from squall.platform import Platform
from squall.store import invocations as store_inv
from squall.store import tenants as store
from squall.tenancy.model import DEFAULT_TENANT, Scope, validate_tenant_name
from squall.tenancy.secrets import rotate_master
from squall.tenancy.service import MAX_KEY_TTL_S, Identity
from squall.workers import ask_others

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _identity(p: Platform) -> Identity:
    assert p.identity is not None
    return p.identity


def _visible(call: Call, name: str) -> None:
    """A tenant key sees its own tenant only; any other name answers 404, like a missing one."""
    if call.principal is not None and not call.principal.can_act_on(name):
        raise NotFound(f"tenant {name[:32]!r} does not exist", code="tenant_not_found")


# --- tenants ---------------------------------------------------------------------------------

async def create_tenant(request: Request, call: Call) -> Response:
    p = platform(request)
    body = await read_json_object(request, 64 * 1024)
    name = body.pop("name", None)
    if not isinstance(name, str):
        raise BadRequest('send {"name": "...", limits...}', code="invalid_tenant_name")
    t = await _identity(p).create_tenant(name, body)
    await audit(p, call, "tenant_create", name, t.limits.to_dict(), tenant=name)
    return JSONResponse(t.to_dict(), status_code=201)


async def list_tenants(request: Request, call: Call) -> Response:
    return JSONResponse({"tenants": [t.to_dict() for t in _identity(platform(request)).tenants()]})


async def describe_tenant(request: Request, call: Call) -> Response:
    p = platform(request)
    name = request.path_params["name"]
    _visible(call, name)
    t = _identity(p).tenant(name)
    usage = await _live_usage(p, name)
    for other in await ask_others(p.peers, request):  # every worker's (--workers)
        for k in ("instances", "memory_mb", "concurrent_executions"):
            usage[k] += other["usage"][k]
    return JSONResponse({**t.to_dict(), "usage": usage})


async def _live_usage(p: Platform, name: str) -> dict[str, Any]:
    counts = await _identity(p).counts(name)
    insts = [i for i in p.agent.snapshot() if i["namespace"] == name]
    queued = await p.db.run(lambda c: store.queued_events(c, name))
    return {**counts, "instances": len(insts),
            "memory_mb": p.agent.tenant_memory_mb(name),
            "concurrent_executions": _identity(p).quotas.in_flight.get(name, 0),
            "queued_events": queued}


async def update_tenant(request: Request, call: Call) -> Response:
    p = platform(request)
    name = request.path_params["name"]
    body = await read_json_object(request, 64 * 1024)
    t = await _identity(p).update_tenant(name, body)
    await audit(p, call, "tenant_update", name, body, tenant=name)
    return JSONResponse(t.to_dict())


async def delete_tenant(request: Request, call: Call) -> Response:
    p = platform(request)
    name = request.path_params["name"]
    ident = _identity(p)
    ident.tenant(name)
    if name == DEFAULT_TENANT:
        raise Conflict("the default tenant cannot be removed", code="tenant_protected")
    functions = [r for r in p.registry.all() if r.namespace == name]
    if functions and not call.query["force"]:
        raise Conflict(f"tenant {name!r} still has {len(functions)} function(s): remove them "
                       f"first, or pass force (`squall tenant rm {name} --force`)",
                       code="tenant_not_empty", details={"functions": len(functions)})
    for rec in functions:
        await p.deployer.remove(rec.name, name)
    await ident.delete_tenant(name)
    await audit(p, call, "tenant_rm", name, {"functions_removed": len(functions)}, tenant=name)
    return JSONResponse({"name": name, "removed": True, "functions_removed": len(functions)})


# --- keys ------------------------------------------------------------------------------------

def parse_ttl(value: Any) -> float | None:
    """``30d`` / ``12h`` / seconds -> seconds; None for no expiry."""
    if value is None:
        return None
    seconds: float
    if isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise BadRequest(f"expires {value!r} is not a duration like 30d, 12h or 90m",
                         code="invalid_expiry")
    if not math.isfinite(seconds) or not 60 <= seconds <= MAX_KEY_TTL_S:
        raise BadRequest("expires must be from 1 minute to 10 years", code="invalid_expiry")
    return seconds


async def create_key(request: Request, call: Call) -> Response:
    p = platform(request)
    body = await read_json_object(request, 64 * 1024)
    tenant = body.get("tenant", DEFAULT_TENANT)
    if not isinstance(tenant, str):
        raise BadRequest("tenant must be a string", code="invalid_tenant_name")
    validate_tenant_name(tenant)
    scopes = body.get("scopes")
    if not isinstance(scopes, list | str):
        raise BadRequest('scopes must be a list such as ["deploy", "read"]', code="invalid_scope")
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 128):
        raise BadRequest("name must be a string of at most 128 characters", code="invalid_name")
    out = await _identity(p).create_key(tenant, scopes, name=name,
                                        expires_in_s=parse_ttl(body.get("expires")))
    await audit(p, call, "key_create", out["id"], {"scopes": out["scopes"], "name": name},
                tenant=tenant)
    return JSONResponse(out, status_code=201)


async def list_keys(request: Request, call: Call) -> Response:
    tenant = None if call.all_tenants else call.tenant
    return JSONResponse({"keys": _identity(platform(request)).list_keys(tenant)})


async def revoke_key(request: Request, call: Call) -> Response:
    p = platform(request)
    out = await _identity(p).revoke_key(request.path_params["id"])
    await audit(p, call, "key_revoke", out["id"], tenant=out["tenant"])
    return JSONResponse(out)


# --- secrets ---------------------------------------------------------------------------------

async def put_secret(request: Request, call: Call) -> Response:
    p = platform(request)
    name = request.path_params["name"]
    value = await read_body(request, 64 * 1024 + 1)
    created = await _identity(p).secrets.put(call.tenant, name, value)
    await audit(p, call, "secret_set", name)  # the name only: never the value
    return JSONResponse({"name": name, "created": created}, status_code=201 if created else 200)


async def list_secrets(request: Request, call: Call) -> Response:
    return JSONResponse({"secrets": _identity(platform(request)).secrets.names(call.tenant)})


async def delete_secret(request: Request, call: Call) -> Response:
    p = platform(request)
    name = request.path_params["name"]
    await _identity(p).secrets.delete(call.tenant, name)
    await audit(p, call, "secret_rm", name)
    return JSONResponse({"name": name, "removed": True})


async def rotate(request: Request, call: Call) -> Response:
    p = platform(request)
    moved = await rotate_master(_identity(p), p.settings.data_dir,
                                from_env=bool(p.settings.master_key))
    p.registry.invalidate()
    await audit(p, call, "rotate_master", None, {"resealed": moved})
    return JSONResponse({"resealed": moved})


# --- audit and bill --------------------------------------------------------------------------

async def read_audit(request: Request, call: Call) -> Response:
    p = platform(request)
    tenant = None if call.all_tenants else call.tenant
    rows = await p.db.run(lambda c: store.read_audit(c, since=call.query["since"],
                                                     namespace=tenant, limit=call.query["limit"]))
    return JSONResponse({"entries": rows})


async def bill(request: Request, call: Call) -> Response:
    p = platform(request)
    month = call.query["month"] or time.strftime("%Y-%m", time.gmtime())
    try:
        start, end = month_bounds(month)
    except ValueError:
        raise BadRequest(f"month {month!r} is not YYYY-MM", code="invalid_query") from None
    tenant = None if call.all_tenants else call.tenant
    await p.recorder.flush()
    records = await p.db.run(lambda c: store_inv.for_usage(c, start, tenant, until=end))
    functions = summarise(records, p.settings.prices)
    return JSONResponse({"month": month, "currency": "USD", "start": start, "end": end,
                         "prices": {"per_million_requests": p.settings.prices.per_million_requests,
                                    "per_gb_second": p.settings.prices.per_gb_second},
                         "functions": functions, "tenants": by_tenant(functions)})


_LIMITS = {k: {"type": ["integer", "null"], "minimum": 1} for k in
           ("max_concurrency", "max_functions", "max_queued")}
_LIMITS["max_memory_mb"] = {"type": ["integer", "null"], "minimum": 128}
_LIMITS["rate"] = {"type": ["number", "null"], "exclusiveMinimum": 0}
_TENANT_BODY = {"type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}, **_LIMITS}}
_KEY_BODY = {"type": "object", "required": ["scopes"], "properties": {
    "tenant": {"type": "string"}, "name": {"type": "string"},
    "scopes": {"type": "array", "items": {"type": "string", "enum": [s.value for s in Scope]}},
    "expires": {"type": "string"}}}
_MONTH = Param("month", default="", description="YYYY-MM (UTC)", max_length=7)

ENDPOINTS = [
    Endpoint("POST", "/api/v1/tenants", create_tenant, Scope.ADMIN, "Create a tenant",
             body="json", responses=(201,), tenant_scoped=False, body_schema=_TENANT_BODY),
    Endpoint("GET", "/api/v1/tenants", list_tenants, Scope.ADMIN, "List tenants",
             tenant_scoped=False),
    Endpoint("GET", "/api/v1/tenants/{name}", describe_tenant, Scope.READ, "Describe a tenant",
             tenant_scoped=False),
    Endpoint("PATCH", "/api/v1/tenants/{name}", update_tenant, Scope.ADMIN,
             "Change a tenant's limits", body="json", tenant_scoped=False,
             body_schema={"type": "object", "properties": _LIMITS}),
    Endpoint("DELETE", "/api/v1/tenants/{name}", delete_tenant, Scope.ADMIN, "Remove a tenant",
             (Param("force", "boolean", default=False),), tenant_scoped=False),
    Endpoint("POST", "/api/v1/keys", create_key, Scope.ADMIN, "Create an API key", body="json",
             responses=(201,), tenant_scoped=False, body_schema=_KEY_BODY),
    Endpoint("GET", "/api/v1/keys", list_keys, Scope.ADMIN, "List API keys"),
    Endpoint("DELETE", "/api/v1/keys/{id}", revoke_key, Scope.ADMIN, "Revoke an API key",
             tenant_scoped=False),
    Endpoint("GET", "/api/v1/secrets", list_secrets, Scope.READ, "List secret names"),
    Endpoint("PUT", "/api/v1/secrets/{name}", put_secret, Scope.DEPLOY, "Set a secret",
             body="text", responses=(200, 201)),
    Endpoint("DELETE", "/api/v1/secrets/{name}", delete_secret, Scope.DEPLOY, "Remove a secret"),
    Endpoint("POST", "/api/v1/secrets/rotate-master", rotate, Scope.ADMIN,
             "Re-encrypt every secret under a new master key", tenant_scoped=False),
    Endpoint("GET", "/api/v1/audit", read_audit, Scope.READ, "Audit log",
             (Param("since", "since", default=0.0), LIMIT)),
    Endpoint("GET", "/api/v1/bill", bill, Scope.READ, "Monthly bill", (_MONTH,)),
]
