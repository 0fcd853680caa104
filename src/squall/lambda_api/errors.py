"""The one place where platform errors become Lambda's error responses.

botocore reads the error's type from the ``x-amzn-ErrorType`` header and the message from the
JSON body's ``message``; the body is ``{"Type": "User" | "Service", "message": ...}`` as Lambda
sends it. The Squall code stays in the body too (``code``) for people reading raw responses.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from squall.auth.sigv4 import ClockSkew, SigV4Error
from squall.errors import (
    Conflict,
    Forbidden,
    InvalidJSON,
    NotFound,
    PayloadTooLarge,
    SquallError,
    TooManyRequests,
    Unauthorized,
)

log = logging.getLogger("squall.lambda_api")

# Squall's errors by class -> (Lambda type, HTTP status). The first match wins, so subclasses
# come before their bases; any other 4xx is InvalidParameterValueException, any 5xx
# ServiceException.
_BY_CLASS: list[tuple[type[SquallError], str, int]] = [
    (InvalidJSON, "InvalidRequestContentException", 400),
    (NotFound, "ResourceNotFoundException", 404),
    (Conflict, "ResourceConflictException", 409),
    (PayloadTooLarge, "RequestTooLargeException", 413),
    (TooManyRequests, "TooManyRequestsException", 429),
    (Forbidden, "AccessDeniedException", 403),
    (Unauthorized, "UnrecognizedClientException", 403),
]
# Errors raised with a code that says more than their class.
_BY_CODE: dict[str, tuple[str, int]] = {
    "revision_mismatch": ("PreconditionFailedException", 412),
    "unknown_operation": ("UnknownOperationException", 404),
    "invalid_request_content": ("InvalidRequestContentException", 400),
}


def lambda_type(exc: SquallError) -> tuple[str, int]:
    """(x-amzn-ErrorType, HTTP status) for a platform error."""
    if isinstance(exc, SigV4Error):
        return exc.lambda_type, exc.status
    if exc.code in _BY_CODE:
        return _BY_CODE[exc.code]
    for cls, name, status in _BY_CLASS:
        if isinstance(exc, cls):
            return name, status
    if exc.status < 500:
        return "InvalidParameterValueException", 400
    return "ServiceException", 500


def _message(exc: SquallError) -> str:
    if isinstance(exc, ClockSkew):
        # Lambda's wording, which tools and people search for.
        return (f"Signature expired: {exc.details.get('RequestTime')} is now earlier or later "
                f"than {exc.details.get('ServerTime')} by more than the allowed 15 minutes. "
                f"Check the client's clock.")
    return exc.message


def error_response(exc: SquallError) -> Response:
    kind, status = lambda_type(exc)
    body = {"Type": "User" if status < 500 else "Service", "message": _message(exc),
            "code": exc.code}
    headers = {"x-amzn-ErrorType": kind, "x-amzn-RequestId": str(uuid.uuid4())}
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after_s)
        body["Reason"] = "ConcurrentInvocationLimitExceeded"
    return Response(json.dumps(body).encode(), status_code=status, headers=headers,
                    media_type="application/json")


async def squall_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SquallError)
    if exc.status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
    return error_response(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (404, 405):
        return error_response(SquallError(
            f"no Lambda operation {request.method} {request.url.path}",
            code="unknown_operation", status=404))
    return error_response(SquallError(str(exc.detail), code="bad_request", status=400))


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(SquallError(f"internal error: {type(exc).__name__}"))


HANDLERS: dict[Any, Any] = {
    SquallError: squall_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
