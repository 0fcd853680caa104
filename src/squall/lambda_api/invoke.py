"""Invoke: POST /2015-03-31/functions/{FunctionName}/invocations, as Lambda answers it.

RequestResponse runs the function and returns its payload (200); a function error is still a
200, with ``X-Amz-Function-Error: Unhandled`` and Lambda's {errorType, errorMessage, stackTrace}
as the payload. Event stores the event in the durable async queue and answers 202. DryRun checks
the function and the caller's right to invoke it, and answers 204. ``X-Amz-Executed-Version``
is the number of the version that ran: a $LATEST invocation reports the version $LATEST was at
that moment, an alias the version its weights chose.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from squall.errors import BadRequest
from squall.invoker.api import InvokeOutcome
from squall.lambda_api.arn import parse_function_name
from squall.lambda_api.edge import Call
from squall.platform import Platform
from squall.routing import LATEST

LOG_TAIL_BYTES = 4096
_TYPES = ("RequestResponse", "Event", "DryRun")


def invoke_limit(p: Platform, request: Request) -> int:
    if request.headers.get("x-amz-invocation-type") == "Event":
        # One byte over the async limit reaches the queue's own check, which names the limit.
        return p.settings.max_async_payload + 1
    return p.settings.max_sync_payload


def _event(body: bytes) -> Any:
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Could not parse request body into json: {exc}",
                         code="invalid_request_content") from None


def log_tail(outcome: InvokeOutcome, memory_mb: int) -> str:
    """Base64 of the last 4 KB of the invocation's log, framed as invoker.py stores it."""
    lines = [f"START RequestId: {outcome.request_id} Version: {outcome.version}",
             *outcome.logs, f"END RequestId: {outcome.request_id}"]
    report = (f"REPORT RequestId: {outcome.request_id}\tDuration: {outcome.duration_ms:.2f} ms"
              f"\tBilled Duration: {outcome.billed_ms} ms\tMemory Size: {memory_mb} MB")
    if outcome.cold:
        report += f"\tInit Duration: {outcome.init_ms:.2f} ms"
    text = "\n".join([*lines, report]) + "\n"
    return base64.b64encode(text.encode()[-LOG_TAIL_BYTES:]).decode()


async def invoke(request: Request, call: Call) -> Response:
    p = call.platform
    kind = request.headers.get("x-amz-invocation-type") or "RequestResponse"
    if kind not in _TYPES:
        raise BadRequest(f"X-Amz-Invocation-Type {kind!r} is not one of {', '.join(_TYPES)}",
                         code="invalid_invocation_type")
    log_type = request.headers.get("x-amz-log-type") or "None"
    if log_type not in ("None", "Tail"):
        raise BadRequest(f"X-Amz-Log-Type {log_type!r} must be None or Tail",
                         code="invalid_log_type")
    if request.headers.get("x-amz-client-context"):
        raise BadRequest("X-Amz-Client-Context is not supported by Squall",
                         code="unsupported_field")
    ref = parse_function_name(request.path_params["FunctionName"], call.tenant,
                              request.query_params.get("Qualifier"))
    # Resolving checks the function, version or alias exists before anything runs or queues.
    rec = await p.invoker.resolve(ref.name, ref.qualifier, call.tenant)
    if kind == "DryRun":
        return Response(status_code=204)
    if kind == "Event":
        return await _enqueue(call, ref.name, ref.qualifier)
    event = _event(call.body)
    outcome = await p.invoker.invoke(ref.name, event, trigger="api", qualifier=ref.qualifier,
                                     namespace=call.tenant)
    headers = {"X-Amz-Executed-Version": str(outcome.version),
               "x-amzn-RequestId": outcome.request_id}
    if log_type == "Tail":
        memory = rec.config.memory_mb if rec.version == outcome.version else (
            await p.registry.get_version(ref.name, outcome.version, call.tenant) or rec
        ).config.memory_mb
        headers["X-Amz-Log-Result"] = log_tail(outcome, memory)
    if outcome.error is not None:
        headers["X-Amz-Function-Error"] = "Unhandled"
        payload = json.dumps(outcome.error).encode()
    else:
        try:
            payload = json.dumps(outcome.value).encode()
        except (TypeError, ValueError) as exc:
            headers["X-Amz-Function-Error"] = "Unhandled"
            payload = json.dumps({"errorType": "Runtime.InvalidResponse",
                                  "errorMessage": f"the handler's result is not JSON: {exc}",
                                  "stackTrace": []}).encode()
    return Response(payload, status_code=200, headers=headers, media_type="application/json")


async def _enqueue(call: Call, name: str, qualifier: str | None) -> Response:
    p = call.platform
    if qualifier not in (None, LATEST):
        # The async queue stores the function, not a version: delivering an alias's or a
        # version's event later would silently run $LATEST instead.
        raise BadRequest("asynchronous (Event) invocation of a version or alias is not "
                         "supported yet: invoke $LATEST, or invoke it synchronously",
                         code="unsupported_qualifier")
    if p.events is None:
        raise BadRequest("asynchronous invocation is not available on this platform",
                         code="async_unavailable")
    rid, _created = await p.events.submit(name, call.body, trigger="async",
                                          namespace=call.tenant)
    return Response(status_code=202, headers={"x-amzn-RequestId": rid})
