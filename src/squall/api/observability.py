"""Observability endpoints: Prometheus metrics and invocation history.

- GET /metrics                                      text exposition (scope ``metrics``; ``read``
                                                    implies it); a tenant's key sees its tenant
- GET /api/v1/cluster/nodes                          node agents of --cluster (scope ``admin``)
- GET /api/v1/functions/{name}/invocations/history  ?status=failed|timeout,...&since=1h&limit=50
                                                    &before=<cursor>  (scope ``read``)
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from squall.api.routes import Call, Endpoint, Param, platform
from squall.bundle.spec import validate_name
from squall.errors import FunctionNotFound, ServiceUnavailable
from squall.observability import Observability, history
from squall.platform import Platform
from squall.store import queue
from squall.tenancy.model import Scope


def _obs(p: Platform) -> Observability:
    if p.obs is None:
        raise ServiceUnavailable("observability is not wired in this platform")
    return p.obs


async def metrics(request: Request, call: Call) -> Response:
    p = platform(request)
    obs = _obs(p)
    # The queue's depth is read here, once per scrape, not kept up to date on every event.
    obs.metrics.set_queue(await p.db.run(queue.depth), time.time())
    # An admin key that named no tenant sees every tenant; any other key only its own.
    body = obs.metrics.render(None if call.all_tenants else call.tenant)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def invocation_history(request: Request, call: Call) -> Response:
    p = platform(request)
    name = validate_name(request.path_params["name"])
    if p.registry.get(name, call.tenant) is None:
        raise FunctionNotFound(f"function '{name}' does not exist")
    q = history.HistoryQuery.parse(call.query)
    await p.recorder.flush()  # the newest invocations are still in the write batch
    rows = await history.read(p.db, call.tenant, name, q)
    nxt = rows[-1]["cursor"] if len(rows) == q.limit else None
    return JSONResponse({"name": name, "invocations": rows, "next": nxt})


async def cluster_nodes(request: Request, call: Call) -> Response:
    """The node agents this gateway reaches (--cluster), with what each last reported."""
    p = platform(request)
    snapshot = getattr(p.invoker, "snapshot", None)
    nodes = snapshot() if p.cluster is not None and snapshot is not None else []
    return JSONResponse({"cluster": p.settings.cluster or None, "nodes": nodes})


ENDPOINTS = [
    Endpoint("GET", "/api/v1/cluster/nodes", cluster_nodes, Scope.ADMIN,
             "The cluster's node agents as this gateway sees them", tenant_scoped=False),
    Endpoint("GET", "/metrics", metrics, Scope.METRICS, "Prometheus metrics",
             response_types=(CONTENT_TYPE_LATEST,)),
    Endpoint("GET", "/api/v1/functions/{name}/invocations/history", invocation_history,
             Scope.READ, "A function's invocation history", (
                 Param("status", max_length=128, description="a status, a comma list, or "
                       "failed (any failure): succeeded, failed, timeout, oom, crashed"),
                 Param("since", "since", description="30m, 24h, 7d or a unix time"),
                 Param("limit", "integer", 1, history.MAX_LIMIT, 50),
                 Param("before", "integer", 1, 2**62, description="cursor: the `next` of the "
                       "previous page"))),
]
