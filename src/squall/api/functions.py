"""/api/v1/functions: deploy, list, describe, versions, remove, invoke, logs, scale, instances."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from squall.agent.node import VersionSpec
from squall.api.body import read_body
from squall.bundle.spec import validate_name
from squall.errors import (
    BadRequest,
    FunctionNotFound,
    InvalidJSON,
    SquallError,
)
from squall.metering.billing import summarise
from squall.platform import Platform, platform_of
from squall.registry import FunctionRecord
from squall.store import functions as store_fn
from squall.store import invocations as store_inv
from squall.store import logs as store_logs


def _p(request: Request) -> Platform:
    return platform_of(request.app.state)


def _describe(p: Platform, rec: FunctionRecord) -> dict[str, Any]:
    vs = p.registry.version_spec(rec)
    instances = [i for i in p.agent.snapshot()
                 if i["function"] == rec.name and i["namespace"] == rec.namespace]
    return {
        "name": rec.name, "namespace": rec.namespace, "version": rec.version,
        "sha256": rec.sha256, "created_at": rec.created_at, "config": rec.config.to_dict(),
        "url": f"/fn/{rec.name}", "instances": len(instances),
        "busy": sum(1 for i in instances if i["state"] == "busy"),
        "key": vs.key,
    }


def _record(p: Platform, name: str) -> FunctionRecord:
    validate_name(name)
    rec = p.registry.get(name)
    if rec is None:
        raise FunctionNotFound(f"function '{name}' does not exist")
    return rec


async def deploy(request: Request) -> Response:
    p = _p(request)
    payload = await read_body(request, p.settings.max_bundle_bytes)
    if not payload:
        raise BadRequest("empty body: send a .zip or .tar.gz bundle", code="empty_bundle")
    name = request.query_params.get("name") or None
    default_name = request.query_params.get("default_name") or None
    if "application/x-ndjson" not in request.headers.get("accept", ""):
        result = await p.deployer.deploy(payload, name=name, default_name=default_name)
        return JSONResponse(result.to_dict(), status_code=201 if result.created else 200)
    # Streaming progress: validation errors found before the first byte still get their 4xx.
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def progress(message: str) -> None:
        queue.put_nowait(json.dumps({"event": "progress", "message": message}).encode() + b"\n")

    async def work() -> None:
        try:
            result = await p.deployer.deploy(payload, name=name, default_name=default_name,
                                             progress=progress)
            queue.put_nowait(json.dumps({"event": "done", "result": result.to_dict()}).encode()
                             + b"\n")
        except SquallError as exc:
            queue.put_nowait(json.dumps({"event": "error", "status": exc.status,
                                         **exc.to_dict()}).encode() + b"\n")
        finally:
            queue.put_nowait(None)

    task = asyncio.get_running_loop().create_task(work())

    async def stream() -> Any:
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            await task

    return StreamingResponse(stream(), media_type="application/x-ndjson")


async def list_functions(request: Request) -> Response:
    p = _p(request)
    return JSONResponse({"functions": [_describe(p, r) for r in p.registry.all()]})


async def describe(request: Request) -> Response:
    p = _p(request)
    return JSONResponse(_describe(p, _record(p, request.path_params["name"])))


async def remove(request: Request) -> Response:
    p = _p(request)
    rec = await p.deployer.remove(_record(p, request.path_params["name"]).name)
    return JSONResponse({"name": rec.name, "removed": True})


async def versions(request: Request) -> Response:
    p = _p(request)
    rec = _record(p, request.path_params["name"])
    rows = await p.db.run(lambda c: store_fn.versions(c, rec.namespace, rec.name))
    return JSONResponse({"name": rec.name, "latest": rec.version, "versions": [
        {"version": r.version, "sha256": r.sha256, "created_at": r.created_at,
         "memory_mb": r.config.get("memory_mb"), "handler": r.config.get("handler"),
         "latest": r.version == rec.version} for r in rows]})


async def invoke(request: Request) -> Response:
    p = _p(request)
    name = request.path_params["name"]
    _record(p, name)
    mode = (request.headers.get("x-squall-invocation-type")
            or request.query_params.get("InvocationType") or "RequestResponse")
    if mode == "Event":
        if p.events is None:
            raise BadRequest("async invocation is not available", code="async_unavailable")
        body = await read_body(request, p.settings.max_async_payload)
        rid, _created = await p.events.submit(
            name, body, trigger="async",
            idempotency_key=request.headers.get("x-squall-idempotency-key"))
        return JSONResponse({"request_id": rid}, status_code=202,
                            headers={"x-squall-request-id": rid})
    if mode != "RequestResponse":
        raise BadRequest(f"unknown invocation type '{mode}': use RequestResponse or Event",
                         code="invalid_invocation_type")
    body = await read_body(request, p.settings.max_sync_payload)
    try:
        event = json.loads(body) if body.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidJSON(f"the event is not valid JSON: {exc}") from None
    outcome = await p.invoker.invoke(name, event, trigger="api",
                                     qualifier=request.query_params.get("qualifier"))
    headers = {"x-squall-request-id": outcome.request_id,
               "x-squall-executed-version": str(outcome.version)}
    if outcome.error is not None:
        headers["x-squall-function-error"] = "Unhandled"
        return JSONResponse(outcome.error, headers=headers)
    return Response(json.dumps(outcome.value).encode(), media_type="application/json",
                    headers=headers)


async def logs(request: Request) -> Response:
    p = _p(request)
    rec = _record(p, request.path_params["name"])
    q = request.query_params
    try:
        after = int(q.get("after", "0"))
        limit = min(int(q.get("limit", "1000")), 10_000)
    except ValueError:
        raise BadRequest("after and limit must be integers", code="invalid_query") from None
    await p.logs.flush()
    rows = await p.db.run(lambda c: store_logs.read(
        c, rec.namespace, rec.name, after=after, request_id=q.get("request_id"), limit=limit,
        tail=after == 0 and q.get("tail", "1") == "1"))
    cursor = rows[-1]["id"] if rows else after
    return JSONResponse({"name": rec.name, "lines": rows, "cursor": cursor})


async def usage(request: Request) -> Response:
    p = _p(request)
    raw = request.query_params.get("since", "0")
    try:
        since = _parse_since(raw)
    except ValueError:
        raise BadRequest(f"since '{raw}' is not a duration (30m, 24h, 7d) or a unix time",
                         code="invalid_query") from None
    await p.recorder.flush()
    records = await p.db.run(lambda c: store_inv.for_usage(c, since))
    return JSONResponse({"since": since, "prices": {
        "per_million_requests": p.settings.prices.per_million_requests,
        "per_gb_second": p.settings.prices.per_gb_second},
        "functions": summarise(records, p.settings.prices)})


def _parse_since(raw: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if raw and raw[-1] in units and raw[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(raw[:-1]) * units[raw[-1]]
    return float(raw)


async def scale(request: Request) -> Response:
    p = _p(request)
    rec = _record(p, request.path_params["name"])
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or not ({"to", "min"} & body.keys()):
        raise BadRequest('send {"to": 0} or {"min": N}', code="invalid_scale")
    vs: VersionSpec = p.registry.version_spec(rec)
    result: dict[str, Any] = {"name": rec.name}
    if "min" in body:
        value = body["min"]
        if not isinstance(value, int) or isinstance(value, bool) or not (
                0 <= value <= rec.config.max_instances):
            raise BadRequest(f"min must be an integer in 0..{rec.config.max_instances}",
                             code="invalid_scale")
        await p.db.run(lambda c: store_fn.set_min_instances(c, rec.namespace, rec.name, value))
        await p.agent.ensure_min(vs, value)
        result["min_instances"] = value
    if "to" in body:
        if body["to"] != 0:
            raise BadRequest('only {"to": 0} is supported; use {"min": N} to keep N warm',
                             code="invalid_scale")
        p.agent.pool(vs).spec.min_instances = 0
        await p.db.run(lambda c: store_fn.set_min_instances(c, rec.namespace, rec.name, None))
        result["stopped"] = p.agent.scale_to_zero(vs)
    result["instances"] = p.agent.pool(vs).size
    return JSONResponse(result)


async def instances(request: Request) -> Response:
    p = _p(request)
    rec = _record(p, request.path_params["name"])
    insts = [i for i in p.agent.snapshot()
             if i["function"] == rec.name and i["namespace"] == rec.namespace]
    pool = p.agent.pool(p.registry.version_spec(rec))
    return JSONResponse({"name": rec.name, "instances": insts,
                         "created_total": pool.created_total,
                         "zygotes": [z for z in p.agent.zygotes() if z["function"] == rec.name]})


async def scaling(request: Request) -> Response:
    """The autoscaler's latest decision for the function's live version, with its reason."""
    p = _p(request)
    rec = _record(p, request.path_params["name"])
    return JSONResponse({"name": rec.name,
                         **p.agent.scaling_status(p.registry.version_spec(rec))})


async def health(request: Request) -> Response:
    p = _p(request)
    return JSONResponse({"status": "ok", "sandbox": p.sandbox_backend,
                         "warnings": p.sandbox_warnings, "pid": os.getpid()})


ROUTES = [
    Route("/healthz", health),
    Route("/api/v1/functions", deploy, methods=["POST"]),
    Route("/api/v1/functions", list_functions, methods=["GET"]),
    Route("/api/v1/functions/{name}", describe, methods=["GET"]),
    Route("/api/v1/functions/{name}", remove, methods=["DELETE"]),
    Route("/api/v1/functions/{name}/versions", versions, methods=["GET"]),
    Route("/api/v1/functions/{name}/invocations", invoke, methods=["POST"]),
    Route("/api/v1/functions/{name}/logs", logs, methods=["GET"]),
    Route("/api/v1/functions/{name}/scale", scale, methods=["POST"]),
    Route("/api/v1/functions/{name}/instances", instances, methods=["GET"]),
    Route("/api/v1/functions/{name}/scaling", scaling, methods=["GET"]),
    Route("/api/v1/usage", usage, methods=["GET"]),
]
