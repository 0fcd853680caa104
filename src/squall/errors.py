"""One exception hierarchy for the platform.

Every error a caller can cause carries a machine-readable ``code`` and the HTTP status it maps to.
The mapping to HTTP happens in one place (``squall.api.errors``); everything else raises these.
"""

from __future__ import annotations

from typing import Any


class SquallError(Exception):
    """Base class. ``code`` is stable and machine-readable; ``message`` is for a person."""

    code: str = "internal_error"
    status: int = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class BadRequest(SquallError):
    code = "bad_request"
    status = 400


class InvalidName(BadRequest):
    code = "invalid_name"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class InvalidConfig(BadRequest):
    """squall.toml or API config values that are out of range, of the wrong type, or unknown."""

    code = "invalid_config"


class InvalidBundle(BadRequest):
    """An archive that cannot be unpacked safely: traversal, links outside, bombs, bad format."""

    code = "invalid_bundle"


class HandlerError(BadRequest):
    """The handler could not be imported at deploy time (syntax error, import error, missing)."""

    code = "handler_import_failed"


class DependencyError(BadRequest):
    """requirements.txt did not resolve or install."""

    code = "dependency_install_failed"


class NotFound(SquallError):
    code = "not_found"
    status = 404


class FunctionNotFound(NotFound):
    code = "function_not_found"


class Conflict(SquallError):
    code = "conflict"
    status = 409


class PayloadTooLarge(SquallError):
    code = "payload_too_large"
    status = 413


class Unauthorized(SquallError):
    code = "unauthorized"
    status = 401


class Forbidden(SquallError):
    code = "forbidden"
    status = 403


class TooManyRequests(SquallError):
    """No instance became free within the bounded wait; ``retry_after_s`` goes in Retry-After."""

    code = "too_many_requests"
    status = 429

    def __init__(self, message: str, *, retry_after_s: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(SquallError):
    code = "service_unavailable"
    status = 503


class InstanceLost(SquallError):
    """The node running a request went away before it answered (cluster): safe to retry."""

    code = "instance_lost"
    status = 502


class SandboxError(SquallError):
    """An instance or zygote could not be started or died unexpectedly."""

    code = "sandbox_error"
    status = 502
