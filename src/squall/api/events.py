"""Routes of the events package: invocations status, dead letters, triggers, webhooks.

- GET  /api/v1/invocations/{request_id}          status, attempts, timestamps, result | error
- GET  /api/v1/invocations?function=&source=&status=&limit=   async invocations (newest first)
- GET  /api/v1/dlq?function=&limit=              dead letters not yet redriven
- GET  /api/v1/dlq/{id}                          one dead letter (event, error)
- POST /api/v1/dlq/{id}/redrive                  enqueue it again -> 202 {dead letter}
- POST /api/v1/dlq/redrive?function=NAME         redrive all of a function -> 202 {redriven: [...]}
- GET/POST /api/v1/functions/{name}/triggers, DELETE /api/v1/functions/{name}/triggers/{ref}
- GET  /api/v1/triggers
- POST /hooks/{name}, /t/{tenant}/hooks/{name}   webhook -> 202 {request_id}
  (a storage trigger with source = "webhook": -> 202 {accepted, dropped, request_ids})

Every read and write is confined to the caller's tenant (``routes.Call``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from squall.api.audit import audit
from squall.api.body import read_body, read_json_object
from squall.api.routes import LIMIT, PUBLIC, Call, Endpoint, Param, platform
from squall.bundle.spec import validate_name
from squall.errors import BadRequest, NotFound, ServiceUnavailable
from squall.events import webhooks
from squall.tenancy.model import Scope

if TYPE_CHECKING:
    from squall.events.service import EventService


def _events(request: Request) -> EventService:
    svc: EventService | None = getattr(platform(request), "events", None)
    if svc is None:
        raise ServiceUnavailable("the events service is not running")
    return svc


async def get_invocation(request: Request, call: Call) -> Response:
    return JSONResponse(await _events(request).get_invocation(
        request.path_params["request_id"], call.tenant))


async def list_invocations(request: Request, call: Call) -> Response:
    q = call.query
    rows = await _events(request).list_invocations(
        function=q["function"], source=q["source"], status=q["status"], limit=q["limit"],
        namespace=call.tenant)
    return JSONResponse({"invocations": rows})


async def list_dlq(request: Request, call: Call) -> Response:
    rows = await _events(request).list_dead_letters(call.query["function"],
                                                    limit=call.query["limit"],
                                                    namespace=call.tenant)
    return JSONResponse({"dead_letters": rows})


async def get_dlq(request: Request, call: Call) -> Response:
    return JSONResponse(await _events(request).get_dead_letter(request.path_params["id"],
                                                               call.tenant))


async def redrive_one(request: Request, call: Call) -> Response:
    out = await _events(request).redrive(request.path_params["id"], call.tenant)
    await audit(platform(request), call, "redrive", out["function"], {"dead_letter": out["id"]})
    return JSONResponse(out, status_code=202)


async def redrive_function(request: Request, call: Call) -> Response:
    fn = call.query["function"]
    if not fn:
        raise BadRequest("give ?function=NAME to redrive all of a function's dead letters",
                         code="missing_function")
    out = await _events(request).redrive_function(fn, call.tenant)
    await audit(platform(request), call, "redrive", fn, {"count": len(out)})
    return JSONResponse({"redriven": out}, status_code=202)


async def list_function_triggers(request: Request, call: Call) -> Response:
    svc = _events(request)
    name = validate_name(request.path_params["name"])
    svc.record(name, call.tenant)
    return JSONResponse({"triggers": await svc.triggers.list(name, call.tenant)})


async def create_trigger(request: Request, call: Call) -> Response:
    svc = _events(request)
    name = validate_name(request.path_params["name"])
    body = await read_json_object(request)
    t = await svc.triggers.create(name, body, namespace=call.tenant)
    await audit(platform(request), call, "trigger_add", name, {"trigger": t["name"],
                                                               "type": t["type"]})
    return JSONResponse(t, status_code=201)


async def delete_trigger(request: Request, call: Call) -> Response:
    name = validate_name(request.path_params["name"])
    t = await _events(request).triggers.delete(name, request.path_params["ref"], call.tenant)
    await audit(platform(request), call, "trigger_rm", name, {"trigger": t["name"]})
    return JSONResponse({"deleted": True, "trigger": t})


async def all_triggers(request: Request, call: Call) -> Response:
    return JSONResponse({"triggers": await _events(request).triggers.list(None, call.tenant)})


async def webhook(request: Request, call: Call) -> Response:
    """Public: the request's HMAC signature with the trigger's secret is the authorization."""
    svc = _events(request)
    tenant = request.path_params.get("tenant", "default")
    p = platform(request)
    if p.identity is not None and not p.identity.tenant_exists(tenant):
        raise NotFound(f"no webhook named {request.path_params['name']!r}",
                       code="webhook_not_found")
    t = await svc.triggers.find_webhook(request.path_params["name"], tenant)
    body = await read_body(request, svc.settings.max_async_payload)
    headers = {k.lower(): v for k, v in request.headers.items()}
    if t["type"] == "storage":  # another S3 store's bucket notifications (bearer token)
        from squall.storage.external import receive_webhook

        return JSONResponse(await receive_webhook(svc, t, headers, body), status_code=202)
    try:
        webhooks.verify_signature(svc.trigger_config(t), headers, body, now=svc.clock())
    except webhooks.InvalidSignature:
        svc.obs.metrics.webhook_rejected(t["name"], "invalid_signature")
        raise
    rid, created = await svc.submit_webhook(t, request.method, request.url.path, headers, body)
    return JSONResponse({"request_id": rid, "created": created}, status_code=202,
                        headers={"X-Squall-Request-Id": rid})


_FUNCTION = Param("function", max_length=63, description="only this function")
_STATUS = Param("status", enum=("queued", "running", "failed", "succeeded", "dead_lettered"))
_TRIGGER_BODY = {"type": "object", "required": ["type"], "properties": {
    "type": {"type": "string"}, "name": {"type": "string"}, "config": {"type": "object"}}}

ENDPOINTS = [
    Endpoint("GET", "/api/v1/invocations", list_invocations, Scope.READ, "List async invocations",
             (_FUNCTION, Param("source", max_length=128), _STATUS, LIMIT)),
    Endpoint("GET", "/api/v1/invocations/{request_id}", get_invocation, Scope.READ,
             "Get an invocation"),
    Endpoint("GET", "/api/v1/dlq", list_dlq, Scope.READ, "List dead letters", (_FUNCTION, LIMIT)),
    Endpoint("POST", "/api/v1/dlq/redrive", redrive_function, Scope.DEPLOY,
             "Redrive a function's dead letters", (_FUNCTION,), responses=(202,)),
    Endpoint("GET", "/api/v1/dlq/{id}", get_dlq, Scope.READ, "Get a dead letter"),
    Endpoint("POST", "/api/v1/dlq/{id}/redrive", redrive_one, Scope.DEPLOY,
             "Redrive a dead letter", responses=(202,)),
    Endpoint("GET", "/api/v1/functions/{name}/triggers", list_function_triggers, Scope.READ,
             "List a function's triggers"),
    Endpoint("POST", "/api/v1/functions/{name}/triggers", create_trigger, Scope.DEPLOY,
             "Add a trigger", body="json", responses=(201,), body_schema=_TRIGGER_BODY),
    Endpoint("DELETE", "/api/v1/functions/{name}/triggers/{ref}", delete_trigger, Scope.DEPLOY,
             "Remove a trigger"),
    Endpoint("GET", "/api/v1/triggers", all_triggers, Scope.READ, "List all triggers"),
    Endpoint("POST", "/hooks/{name}", webhook, PUBLIC, "Webhook (default tenant)", body="binary",
             responses=(202,), tenant_scoped=False),
    Endpoint("POST", "/t/{tenant}/hooks/{name}", webhook, PUBLIC, "Webhook", body="binary",
             responses=(202,), tenant_scoped=False),
]
