"""Replay: read a recorded invocation's event, or run it again against a chosen version.

- GET  /api/v1/invocations/{request_id}/event    the captured event (scope ``read``: an event is
                                                 the caller's data, readable like its logs)
- POST /api/v1/invocations/{request_id}/replay   {"version": 2 | "$LATEST"} or {"alias": "prod"}
                                                 or {} (the version that ran it); scope
                                                 ``invoke``: a replay runs the function's code,
                                                 is recorded and billed like any invocation, with
                                                 trigger ``replay``

Which events are kept, for how long, and what is never kept: squall.replay.capture. Another
tenant's request id answers 404 exactly like one never captured.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from squall.api.body import read_body
from squall.api.routes import Call, Endpoint, platform
from squall.errors import BadRequest, InvalidJSON, ServiceUnavailable
from squall.platform import Platform
from squall.replay.capture import Capture
from squall.routing import LATEST, parse_version, validate_alias_name
from squall.tenancy.model import Scope

MAX_REQUEST_ID = 128
_BODY: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": {
    "version": {"oneOf": [{"type": "integer", "minimum": 1},
                          {"type": "string", "enum": [LATEST]}]},
    "alias": {"type": "string", "maxLength": 128}}}


class InvalidReplayTarget(BadRequest):
    code = "invalid_replay_target"


def _capture(p: Platform) -> Capture:
    capture = p.invoker.capture
    if capture is None:
        raise ServiceUnavailable("replay is not wired in this platform", code="replay_unavailable")
    return capture


def _request_id(request: Request) -> str:
    rid: str = request.path_params["request_id"]
    if not 0 < len(rid) <= MAX_REQUEST_ID or not rid.isprintable():
        raise BadRequest(f"request id must be 1..{MAX_REQUEST_ID} printable characters",
                         code="invalid_request_id")
    return rid


async def event(request: Request, call: Call) -> Response:
    row = await _capture(platform(request)).get(call.tenant, _request_id(request))
    return JSONResponse(row)


async def _qualifier(request: Request) -> str | None:
    """The body's target as the invoker's qualifier; None ({}): the version that ran it."""
    raw = await read_body(request, 16 * 1024)
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSON(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or set(body) - {"version", "alias"}:
        raise InvalidReplayTarget('send {"version": 2}, {"version": "$LATEST"}, '
                                  '{"alias": "prod"} or {} (the version that ran it)')
    if "version" in body and "alias" in body:
        raise InvalidReplayTarget("give a version or an alias, not both")
    if "alias" in body:
        return validate_alias_name(body["alias"])
    if "version" in body:
        version = parse_version(body["version"])
        return LATEST if version is None else str(version)
    return None


async def replay(request: Request, call: Call) -> Response:
    p = platform(request)
    rid = _request_id(request)
    qualifier = await _qualifier(request)  # a bad body is a 400 before any lookup
    captured = await _capture(p).get(call.tenant, rid)
    outcome = await p.invoker.invoke(captured["function"], captured["event"], trigger="replay",
                                     qualifier=qualifier or str(captured["version"]),
                                     namespace=call.tenant)
    body = {"request_id": outcome.request_id, "replay_of": rid, "function": outcome.function,
            "version": outcome.version, "ok": outcome.ok, "result": outcome.value,
            "error": outcome.error, "duration_ms": round(outcome.duration_ms, 3),
            "billed_ms": outcome.billed_ms, "cold": outcome.cold, "logs": outcome.logs}
    headers = {"x-squall-request-id": outcome.request_id,
               "x-squall-executed-version": str(outcome.version)}
    if outcome.error is not None:
        headers["x-squall-function-error"] = "Unhandled"
    return JSONResponse(body, headers=headers)


_INV = "/api/v1/invocations/{request_id}"

ENDPOINTS = [
    Endpoint("GET", _INV + "/event", event, Scope.READ,
             "A recorded invocation's captured event"),
    Endpoint("POST", _INV + "/replay", replay, Scope.INVOKE,
             "Run a recorded invocation's event again", body="json", body_schema=_BODY),
]
