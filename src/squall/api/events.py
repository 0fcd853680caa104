"""Routes of the events package: invocations status, dead letters, triggers, webhooks.

- GET  /api/v1/invocations/{request_id}          status, attempts, timestamps, result | error
- GET  /api/v1/invocations?function=&source=&status=&limit=   async invocations (newest first)
- GET  /api/v1/dlq?function=&limit=              dead letters not yet redriven
- GET  /api/v1/dlq/{id}                          one dead letter (event, error)
- POST /api/v1/dlq/{id}/redrive                  enqueue it again -> 202 {dead letter}
- POST /api/v1/dlq/redrive?function=NAME         redrive all of a function -> 202 {redriven: [...]}
- GET/POST /api/v1/functions/{name}/triggers, DELETE /api/v1/functions/{name}/triggers/{ref}
- GET  /api/v1/triggers
- POST /hooks/{name}                             webhook -> 202 {request_id}
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from squall.api.body import read_body
from squall.errors import BadRequest, InvalidJSON, ServiceUnavailable
from squall.events import webhooks

if TYPE_CHECKING:
    from squall.events.service import EventService


def _events(request: Request) -> EventService:
    svc: EventService | None = getattr(request.app.state.platform, "events", None)
    if svc is None:
        raise ServiceUnavailable("the events service is not running")
    return svc


async def _json(request: Request) -> Any:
    raw = await read_body(request, 1024 * 1024)
    try:
        return json.loads(raw or b"{}")
    except ValueError as e:
        raise InvalidJSON(f"the body is not valid JSON: {e}") from None


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise BadRequest("limit must be an integer from 1 to 10000", code="invalid_limit")
    return int(raw)


async def get_invocation(request: Request) -> Response:
    return JSONResponse(await _events(request).get_invocation(request.path_params["request_id"]))


async def list_invocations(request: Request) -> Response:
    q = request.query_params
    rows = await _events(request).list_invocations(
        function=q.get("function"), source=q.get("source"), status=q.get("status"),
        limit=_limit(request))
    return JSONResponse({"invocations": rows})


async def list_dlq(request: Request) -> Response:
    rows = await _events(request).list_dead_letters(request.query_params.get("function"),
                                                    limit=_limit(request))
    return JSONResponse({"dead_letters": rows})


async def get_dlq(request: Request) -> Response:
    return JSONResponse(await _events(request).get_dead_letter(request.path_params["id"]))


async def redrive_one(request: Request) -> Response:
    return JSONResponse(await _events(request).redrive(request.path_params["id"]),
                        status_code=202)


async def redrive_function(request: Request) -> Response:
    fn = request.query_params.get("function")
    if not fn:
        raise BadRequest("give ?function=NAME to redrive all of a function's dead letters",
                         code="missing_function")
    return JSONResponse({"redriven": await _events(request).redrive_function(fn)},
                        status_code=202)


async def function_triggers(request: Request) -> Response:
    svc = _events(request)
    name = request.path_params["name"]
    if request.method == "POST":
        body = await _json(request)
        return JSONResponse(await svc.triggers.create(name, body), status_code=201)
    svc.record(name)
    return JSONResponse({"triggers": await svc.triggers.list(name)})


async def delete_trigger(request: Request) -> Response:
    t = await _events(request).triggers.delete(request.path_params["name"],
                                               request.path_params["ref"])
    return JSONResponse({"deleted": True, "trigger": t})


async def all_triggers(request: Request) -> Response:
    return JSONResponse({"triggers": await _events(request).triggers.list()})


async def webhook(request: Request) -> Response:
    svc = _events(request)
    name = request.path_params["name"]
    t = await svc.triggers.find_webhook(name)
    body = await read_body(request, svc.settings.max_async_payload)
    headers = {k.lower(): v for k, v in request.headers.items()}
    webhooks.verify_signature(t["config"], headers, body, now=svc.clock())
    rid, created = await svc.submit_webhook(t, request.method, request.url.path, headers, body)
    return JSONResponse({"request_id": rid, "created": created}, status_code=202,
                        headers={"X-Squall-Request-Id": rid})


ROUTES = [
    Route("/api/v1/invocations", list_invocations, methods=["GET"]),
    Route("/api/v1/invocations/{request_id}", get_invocation, methods=["GET"]),
    Route("/api/v1/dlq", list_dlq, methods=["GET"]),
    Route("/api/v1/dlq/redrive", redrive_function, methods=["POST"]),
    Route("/api/v1/dlq/{id}", get_dlq, methods=["GET"]),
    Route("/api/v1/dlq/{id}/redrive", redrive_one, methods=["POST"]),
    Route("/api/v1/functions/{name}/triggers", function_triggers, methods=["GET", "POST"]),
    Route("/api/v1/functions/{name}/triggers/{ref}", delete_trigger, methods=["DELETE"]),
    Route("/api/v1/triggers", all_triggers, methods=["GET"]),
    Route("/hooks/{name}", webhook, methods=["POST"]),
]
