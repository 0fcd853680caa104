"""/api/v1/functions: deploy, list, describe, versions, remove, invoke, logs, scale, instances,
and usage. Every handler gets the caller's tenant from the edge (``routes.Call``)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from squall.agent.node import VersionSpec
from squall.api.audit import audit
from squall.api.body import read_body
from squall.api.routes import PUBLIC, Call, Endpoint, Param, platform
from squall.bundle.spec import validate_name
from squall.errors import (
    BadRequest,
    FunctionNotFound,
    InvalidJSON,
    SquallError,
)
from squall.metering.billing import by_tenant, summarise
from squall.platform import Platform
from squall.registry import FunctionRecord
from squall.store import functions as store_fn
from squall.store import invocations as store_inv
from squall.store import logs as store_logs
from squall.tenancy.model import DEFAULT_TENANT, Scope
from squall.workers import Peers, ask_others


def fn_url(tenant: str, name: str) -> str:
    return f"/fn/{name}" if tenant == DEFAULT_TENANT else f"/t/{tenant}/fn/{name}"


def _describe(p: Platform, rec: FunctionRecord) -> dict[str, Any]:
    vs = p.registry.version_spec(rec)
    instances = [i for i in p.agent.snapshot()
                 if i["function"] == rec.name and i["namespace"] == rec.namespace]
    return {
        "name": rec.name, "namespace": rec.namespace, "version": rec.version,
        "sha256": rec.sha256, "created_at": rec.created_at, "config": rec.config.to_dict(),
        "url": fn_url(rec.namespace, rec.name), "instances": len(instances),
        "busy": sum(1 for i in instances if i["state"] == "busy"),
        "key": vs.key,
    }


def _record(p: Platform, name: str, tenant: str) -> FunctionRecord:
    validate_name(name)
    rec = p.registry.get(name, tenant)
    if rec is None:
        raise FunctionNotFound(f"function '{name}' does not exist")
    return rec


def _named(request: Request, call: Call) -> FunctionRecord:
    return _record(platform(request), request.path_params["name"], call.tenant)


async def deploy(request: Request, call: Call) -> Response:
    p = platform(request)
    payload = await read_body(request, p.settings.max_bundle_bytes)
    if not payload:
        raise BadRequest("empty body: send a .zip or .tar.gz bundle", code="empty_bundle")
    name, default_name = call.query["name"], call.query["default_name"]
    tenant = call.tenant

    async def run(progress: Any = None) -> Any:
        kwargs = {} if progress is None else {"progress": progress}
        result = await p.deployer.deploy(payload, name=name, default_name=default_name,
                                         namespace=tenant, **kwargs)
        if result.created:
            await audit(p, call, "deploy", result.record.name,
                        {"version": result.record.version, "sha256": result.record.sha256})
        return result

    if "application/x-ndjson" not in request.headers.get("accept", ""):
        result = await run()
        return JSONResponse(result.to_dict(), status_code=201 if result.created else 200)
    # Streaming progress: validation errors found before the first byte still get their 4xx.
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def progress(message: str) -> None:
        queue.put_nowait(json.dumps({"event": "progress", "message": message}).encode() + b"\n")

    async def work() -> None:
        try:
            result = await run(progress)
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


async def list_functions(request: Request, call: Call) -> Response:
    p = platform(request)
    found = [_describe(p, r) for r in p.registry.all() if r.namespace == call.tenant]
    others = await ask_others(p.peers, request)
    for fn in found:
        for other in others:
            _add_instances(fn, next((o for o in other["functions"] if o["name"] == fn["name"]),
                                    None))
    return JSONResponse({"functions": found})


async def describe(request: Request, call: Call) -> Response:
    p = platform(request)
    found = _describe(p, _named(request, call))
    for other in await ask_others(p.peers, request):
        _add_instances(found, other)
    return JSONResponse(found)


def _add_instances(fn: dict[str, Any], other: dict[str, Any] | None) -> None:
    """Another worker's instances of the same version count too (--workers)."""
    if other is not None and other.get("key") == fn["key"]:
        fn["instances"] += other["instances"]
        fn["busy"] += other["busy"]


async def remove(request: Request, call: Call) -> Response:
    p = platform(request)
    rec = await p.deployer.remove(_named(request, call).name, call.tenant)
    await audit(p, call, "rm", rec.name)
    return JSONResponse({"name": rec.name, "removed": True})


async def versions(request: Request, call: Call) -> Response:
    p = platform(request)
    rec = _named(request, call)
    rows = await p.db.run(lambda c: store_fn.versions(c, rec.namespace, rec.name))
    return JSONResponse({"name": rec.name, "latest": rec.version, "versions": [
        {"version": r.version, "sha256": r.sha256, "created_at": r.created_at,
         "memory_mb": r.config.get("memory_mb"), "handler": r.config.get("handler"),
         "latest": r.version == rec.version} for r in rows]})


async def invoke(request: Request, call: Call) -> Response:
    p = platform(request)
    rec = _named(request, call)
    mode = (request.headers.get("x-squall-invocation-type")
            or call.query["InvocationType"] or "RequestResponse")
    if mode == "Event":
        if p.events is None:
            raise BadRequest("async invocation is not available", code="async_unavailable")
        body = await read_body(request, p.settings.max_async_payload)
        rid, _created = await p.events.submit(
            rec.name, body, trigger="async", namespace=call.tenant,
            idempotency_key=request.headers.get("x-squall-idempotency-key"))
        # the body JSONResponse would render, without the JSON encoder it builds on every call
        return Response(b'{"request_id":' + json.dumps(rid).encode() + b"}", status_code=202,
                        headers={"x-squall-request-id": rid}, media_type="application/json")
    if mode != "RequestResponse":
        raise BadRequest(f"unknown invocation type '{mode[:40]}': use RequestResponse or Event",
                         code="invalid_invocation_type")
    body = await read_body(request, p.settings.max_sync_payload)
    try:
        event = json.loads(body) if body.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidJSON(f"the event is not valid JSON: {exc}") from None
    outcome = await p.invoker.invoke(rec.name, event, trigger="api", namespace=call.tenant,
                                     qualifier=call.query["qualifier"])
    headers = {"x-squall-request-id": outcome.request_id,
               "x-squall-executed-version": str(outcome.version)}
    if outcome.error is not None:
        headers["x-squall-function-error"] = "Unhandled"
        return JSONResponse(outcome.error, headers=headers)
    return Response(json.dumps(outcome.value).encode(), media_type="application/json",
                    headers=headers)


async def logs(request: Request, call: Call) -> Response:
    p = platform(request)
    rec = _named(request, call)
    q = call.query
    after, limit = q["after"], q["limit"]
    await p.logs.flush()
    rows = await p.db.run(lambda c: store_logs.read(
        c, rec.namespace, rec.name, after=after, request_id=q["request_id"], limit=limit,
        tail=after == 0 and q["tail"]))
    cursor = rows[-1]["id"] if rows else after
    return JSONResponse({"name": rec.name, "lines": rows, "cursor": cursor})


async def usage(request: Request, call: Call) -> Response:
    p = platform(request)
    since = call.query["since"]
    tenant = None if call.all_tenants else call.tenant
    await p.recorder.flush()
    records = await p.db.run(lambda c: store_inv.for_usage(c, since, tenant))
    functions = summarise(records, p.settings.prices)
    return JSONResponse({"since": since, "currency": "USD", "prices": {
        "per_million_requests": p.settings.prices.per_million_requests,
        "per_gb_second": p.settings.prices.per_gb_second},
        "functions": functions, "tenants": by_tenant(functions)})


async def scale(request: Request, call: Call) -> Response:
    p = platform(request)
    rec = _named(request, call)
    try:
        body = json.loads(await read_body(request, 64 * 1024) or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
        if body["to"] != 0 or isinstance(body["to"], bool):
            raise BadRequest('only {"to": 0} is supported; use {"min": N} to keep N warm',
                             code="invalid_scale")
        p.agent.pool(vs).spec.min_instances = 0
        await p.db.run(lambda c: store_fn.set_min_instances(c, rec.namespace, rec.name, None))
        result["stopped"] = p.agent.scale_to_zero(vs)
    result["instances"] = p.agent.pool(vs).size
    for other in await ask_others(p.peers, request, json.dumps(body).encode()):  # --workers
        result["instances"] += other["instances"]
        if "stopped" in result:
            result["stopped"] += other["stopped"]
    if not Peers.local(request.scope):  # once, by the worker the client reached
        await audit(p, call, "scale", rec.name, body)
    return JSONResponse(result)


async def instances(request: Request, call: Call) -> Response:
    p = platform(request)
    rec = _named(request, call)
    insts = [i for i in p.agent.snapshot()
             if i["function"] == rec.name and i["namespace"] == rec.namespace]
    pool = p.agent.pool(p.registry.version_spec(rec))
    out = {"name": rec.name, "instances": insts, "created_total": pool.created_total,
           "zygotes": [z for z in p.agent.zygotes() if z["function"] == rec.name
                       and z["namespace"] == rec.namespace]}
    for other in await ask_others(p.peers, request):  # every worker's (--workers)
        out["instances"] += other["instances"]
        out["zygotes"] += other["zygotes"]
        out["created_total"] += other["created_total"]
    return JSONResponse(out)


async def scaling(request: Request, call: Call) -> Response:
    """The autoscaler's latest decision for the function's live version, with its reason."""
    p = platform(request)
    rec = _named(request, call)
    return JSONResponse({"name": rec.name,
                         **p.agent.scaling_status(p.registry.version_spec(rec))})


async def health(request: Request, call: Call) -> Response:
    p = platform(request)
    return JSONResponse({"status": "ok", "sandbox": p.sandbox_backend,
                         "warnings": p.sandbox_warnings, "pid": os.getpid()})


_FN = "/api/v1/functions/{name}"
_SCALE_BODY = {"type": "object", "properties": {
    "to": {"type": "integer", "enum": [0]},
    "min": {"type": "integer", "minimum": 0, "maximum": 1000}}}

ENDPOINTS = [
    Endpoint("GET", "/healthz", health, PUBLIC, "Health", tenant_scoped=False),
    Endpoint("POST", "/api/v1/functions", deploy, Scope.DEPLOY, "Deploy a bundle",
             (Param("name", max_length=63), Param("default_name", max_length=255)),
             body="binary", responses=(200, 201),
             response_types=("application/json", "application/x-ndjson")),
    Endpoint("GET", "/api/v1/functions", list_functions, Scope.READ, "List functions"),
    Endpoint("GET", _FN, describe, Scope.READ, "Describe a function"),
    Endpoint("DELETE", _FN, remove, Scope.DEPLOY, "Remove a function"),
    Endpoint("GET", _FN + "/versions", versions, Scope.READ, "List versions"),
    Endpoint("POST", _FN + "/invocations", invoke, Scope.INVOKE, "Invoke",
             (Param("qualifier", max_length=128),
              Param("InvocationType", enum=("RequestResponse", "Event"))),
             body="json", responses=(200, 202), hot=True),
    Endpoint("GET", _FN + "/logs", logs, Scope.READ, "Read logs",
             (Param("after", "integer", 0, 2**62, 0), Param("request_id", max_length=64),
              Param("limit", "integer", 1, 10_000, 1000), Param("tail", "boolean", default=True))),
    Endpoint("POST", _FN + "/scale", scale, Scope.DEPLOY, "Scale by hand", body="json",
             body_schema=_SCALE_BODY),
    Endpoint("GET", _FN + "/instances", instances, Scope.READ, "Instances"),
    Endpoint("GET", _FN + "/scaling", scaling, Scope.READ, "Autoscaler decision"),
    Endpoint("GET", "/api/v1/usage", usage, Scope.READ, "Usage and cost",
             (Param("since", "since", default=0.0),)),
]
