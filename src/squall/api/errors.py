"""The one place where platform errors become HTTP responses."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from squall.errors import SquallError, TooManyRequests

log = logging.getLogger("squall.api")


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message}
    if details:
        err["details"] = details
    return json.dumps({"error": err}).encode()


def error_headers(exc: SquallError) -> dict[str, str]:
    if isinstance(exc, TooManyRequests):
        return {"retry-after": str(exc.retry_after_s)}
    return {}


async def squall_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SquallError)
    if exc.status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=error_headers(exc))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "route_not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return Response(error_body(code, str(exc.detail)), status_code=exc.status_code,
                    media_type="application/json")


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return Response(error_body("internal_error", f"internal error: {type(exc).__name__}"),
                    status_code=500, media_type="application/json")


HANDLERS: dict[Any, Any] = {
    SquallError: squall_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
