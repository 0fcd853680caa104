"""The web console's routes: its files, and the few reads it needs that the API lacked.

- GET /console, /console/static/{file}, /console/static/vendor/{file}   the page (public: it
  holds no data; every data call it makes carries the key the user signs in with)
- GET /api/v1/whoami                    the calling key: id, tenant, scopes (and, for an admin
                                        key, the tenants it may switch to)
- GET /api/v1/console/overview?since=1h each function's live state (instances idle / busy, the
                                        zygote) and its traffic since then, in one call
- GET /api/v1/functions/{name}/stats?since=1h&step=30   time series for the charts
                                        (``squall.console.stats``)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from squall.api.routes import AUTHENTICATED, PUBLIC, Call, Endpoint, Param, platform
from squall.bundle.spec import validate_name
from squall.console import stats
from squall.console.assets import SECURITY_HEADERS, Assets
from squall.errors import FunctionNotFound, NotFound
from squall.platform import Platform
from squall.registry import FunctionRecord
from squall.store import invocations as store_inv
from squall.tenancy.model import Scope
from squall.workers import ask_others

DEFAULT_SINCE_S = 3600.0
# A chart of more invocations than this shows the newest ones and says the window was cut;
# reading and bucketing them takes about a fifth of a second.
MAX_SERIES_ROWS = 200_000


def endpoints(assets: Assets | None = None) -> list[Endpoint]:
    """The console's declarations; ``assets`` defaults to the files built into the package."""
    files = assets or Assets()

    def serve(request: Request, path: str) -> Response:
        asset = files.get(path)
        if asset is None:
            raise NotFound(f"no console file {path[:80]!r}", code="file_not_found")
        headers = {"etag": asset.etag, "cache-control": "no-cache", **SECURITY_HEADERS}
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    async def page(request: Request, call: Call) -> Response:
        return serve(request, "index.html")

    async def static(request: Request, call: Call) -> Response:
        return serve(request, request.path_params["file"])

    async def vendor(request: Request, call: Call) -> Response:
        return serve(request, "vendor/" + request.path_params["file"])

    async def slash(request: Request, call: Call) -> Response:
        return RedirectResponse("/console", status_code=308)

    since = Param("since", "since", description="30m, 24h, 7d or a unix time (default 1h)")
    return [
        Endpoint("GET", "/console", page, PUBLIC, "Web console", tenant_scoped=False,
                 response_types=("text/html",)),
        Endpoint("GET", "/console/", slash, PUBLIC, "Web console (redirect)",
                 tenant_scoped=False, responses=(308,)),
        Endpoint("GET", "/console/static/{file}", static, PUBLIC, "Web console file",
                 tenant_scoped=False, response_types=("text/javascript", "text/css")),
        Endpoint("GET", "/console/static/vendor/{file}", vendor, PUBLIC,
                 "Web console vendored file", tenant_scoped=False,
                 response_types=("text/javascript", "text/css")),
        Endpoint("GET", "/api/v1/whoami", whoami, AUTHENTICATED, "The calling key",
                 tenant_scoped=False),
        Endpoint("GET", "/api/v1/console/overview", overview, Scope.READ,
                 "Functions' live state and recent traffic", (since,)),
        Endpoint("GET", "/api/v1/functions/{name}/stats", function_stats, Scope.READ,
                 "A function's invocations over time", (
                     since, Param("step", "integer", 1, 86400,
                                  description="bucket width in seconds (default: about 120 "
                                              "buckets)"))),
    ]


async def whoami(request: Request, call: Call) -> Response:
    p = platform(request)
    principal = call.principal
    assert principal is not None and p.identity is not None  # AUTHENTICATED routes have one
    body: dict[str, Any] = {"key_id": principal.key_id, "tenant": principal.tenant,
                            "scopes": sorted(principal.scopes), "admin": principal.is_admin}
    if principal.is_admin:
        body["tenants"] = [t.name for t in p.identity.tenants()]
    return JSONResponse(body)


async def overview(request: Request, call: Call) -> Response:
    p = platform(request)
    now = time.time()
    since = call.query["since"] if call.query["since"] is not None else now - DEFAULT_SINCE_S
    await p.recorder.flush()  # the newest invocations are still in the write batch
    rows = await p.db.run(lambda c: store_inv.summary_by_function(c, call.tenant, since))
    traffic = {r["function"]: r for r in rows}
    states: Counter[tuple[str, str]] = Counter(
        (i["function"], i["state"]) for i in p.agent.snapshot() if i["namespace"] == call.tenant)
    zygotes = {z["key"]: z for z in p.agent.zygotes()}
    out = []
    for rec in p.registry.all():
        if rec.namespace != call.tenant:
            continue
        zygote = zygotes.get(p.registry.version_spec(rec).key)
        t = traffic.get(rec.name, {})
        out.append({
            "name": rec.name, "version": rec.version,
            "idle": states[(rec.name, "idle")], "busy": states[(rec.name, "busy")],
            "zygote": None if zygote is None else {"pid": zygote["pid"],
                                                   "rss_bytes": zygote["rss_bytes"]},
            "invocations": t.get("invocations", 0), "errors": t.get("errors", 0),
            "cold_starts": t.get("cold_starts", 0),
            "avg_ms": None if t.get("avg_ms") is None else round(t["avg_ms"], 3),
            "last_invoked": t.get("last_ts"),
        })
    for other in await ask_others(p.peers, request):  # every worker's instances (--workers)
        theirs = {f["name"]: f for f in other["functions"]}
        for fn in out:
            their = theirs.get(fn["name"])
            if their is not None and their["version"] == fn["version"]:
                fn["idle"] += their["idle"]
                fn["busy"] += their["busy"]
    return JSONResponse({"since": since, "now": now, "functions": out})


async def function_stats(request: Request, call: Call) -> Response:
    p = platform(request)
    rec = _function(p, request.path_params["name"], call.tenant)
    now = time.time()
    since = call.query["since"] if call.query["since"] is not None else now - DEFAULT_SINCE_S
    window = stats.choose_window(since, now, call.query["step"])
    await p.recorder.flush()
    rows, cut = await p.db.run(lambda c: store_inv.series_rows(
        c, rec.namespace, rec.name, since=window.start, until=window.end,
        limit=MAX_SERIES_ROWS))
    # The bucketing is plain Python over up to MAX_SERIES_ROWS rows: off the event loop, and
    # off the database's one thread.
    body = await asyncio.to_thread(stats.series, rows, window)
    return JSONResponse({"name": rec.name, "since": window.start, "until": window.end,
                         "step": window.step, "truncated": cut, **body})


def _function(p: Platform, name: str, tenant: str) -> FunctionRecord:
    validate_name(name)
    rec = p.registry.get(name, tenant)
    if rec is None:
        raise FunctionNotFound(f"function '{name}' does not exist")
    return rec
