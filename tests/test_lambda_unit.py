"""The Lambda layer's pure parts: ARNs, the error mapping as botocore parses it, the config
translation, and the operation table's scopes."""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest
from botocore.parsers import create_parser

from squall.auth.sigv4 import BadSignature, ClockSkew, MissingAuth, UnknownAccessKey
from squall.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    FunctionNotFound,
    InvalidConfig,
    InvalidJSON,
    PayloadTooLarge,
    ServiceUnavailable,
    SquallError,
    TooManyRequests,
)
from squall.lambda_api import bundle
from squall.lambda_api.app import OPERATIONS
from squall.lambda_api.arn import FunctionRef, account_id, function_arn, parse_function_name
from squall.lambda_api.errors import error_response
from squall.tenancy.model import Scope

ACCOUNT = account_id("default")


@pytest.mark.parametrize(("raw", "qualifier", "expected"), [
    ("hello", None, FunctionRef("hello", None)),
    ("hello:prod", None, FunctionRef("hello", "prod")),
    ("hello", "3", FunctionRef("hello", "3")),
    ("hello:3", "3", FunctionRef("hello", "3")),
    ("hello:$LATEST", None, FunctionRef("hello", "$LATEST")),
    (f"{ACCOUNT}:function:hello", None, FunctionRef("hello", None)),
    (f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:hello", None, FunctionRef("hello", None)),
    (f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:hello:live", None,
     FunctionRef("hello", "live")),
])
def test_function_names_and_arns(raw: str, qualifier: str | None,
                                 expected: FunctionRef) -> None:
    assert parse_function_name(raw, "default", qualifier) == expected


def test_function_name_errors() -> None:
    with pytest.raises(FunctionNotFound):  # another tenant's account
        parse_function_name("arn:aws:lambda:us-east-1:123456789012:function:hello", "default")
    with pytest.raises(BadRequest) as info:
        parse_function_name("hello:1", "default", "2")
    assert info.value.code == "qualifier_mismatch"
    with pytest.raises(BadRequest):
        parse_function_name("arn:aws:s3:::bucket", "default")


def test_accounts_are_stable_and_distinct() -> None:
    assert account_id("default") == account_id("default")
    assert len(account_id("acme")) == 12 and account_id("acme").isdigit()
    assert account_id("acme") != account_id("default")
    assert function_arn("us-east-1", "acme", "f", "2") == (
        f"arn:aws:lambda:us-east-1:{account_id('acme')}:function:f:2")


def _parsed(exc: SquallError) -> tuple[str, str, int]:
    """What botocore makes of our error response (the same parser boto3 uses)."""
    model = botocore.session.get_session().get_service_model("lambda")
    resp = error_response(exc)
    parsed = create_parser("rest-json").parse(
        {"status_code": resp.status_code, "body": bytes(resp.body),
         "headers": {k: v for k, v in resp.headers.items()}},
        model.operation_model("Invoke").output_shape)
    return parsed["Error"]["Code"], parsed["Error"]["Message"], resp.status_code


@pytest.mark.parametrize(("exc", "code", "status"), [
    (FunctionNotFound("gone"), "ResourceNotFoundException", 404),
    (InvalidJSON("bad json"), "InvalidRequestContentException", 400),
    (BadRequest("x", code="invalid_request_content"), "InvalidRequestContentException", 400),
    (PayloadTooLarge("big"), "RequestTooLargeException", 413),
    (TooManyRequests("busy"), "TooManyRequestsException", 429),
    (InvalidConfig("MemorySize: no"), "InvalidParameterValueException", 400),
    (BadRequest("x"), "InvalidParameterValueException", 400),
    (Conflict("exists"), "ResourceConflictException", 409),
    (Forbidden("no"), "AccessDeniedException", 403),
    (BadRequest("x", code="revision_mismatch", status=412), "PreconditionFailedException", 412),
    (SquallError("boom"), "ServiceException", 500),
    (ServiceUnavailable("down"), "ServiceException", 500),
    (BadSignature("sig"), "InvalidSignatureException", 403),
    (UnknownAccessKey("who"), "UnrecognizedClientException", 403),
    (MissingAuth("unsigned"), "MissingAuthenticationTokenException", 403),
])
def test_errors_as_botocore_reads_them(exc: SquallError, code: str, status: int) -> None:
    parsed_code, message, http_status = _parsed(exc)
    assert (parsed_code, http_status) == (code, status)
    assert message == exc.message


def test_clock_skew_says_signature_expired() -> None:
    exc = ClockSkew("too far", details={"RequestTime": "20200101T000000Z",
                                        "ServerTime": "20200101T003000Z"})
    code, message, status = _parsed(exc)
    assert (code, status) == ("InvalidSignatureException", 403)
    assert message.startswith("Signature expired: 20200101T000000Z")


def test_config_translation() -> None:
    changes = bundle.config_changes({"Handler": "app.main", "MemorySize": 512, "Timeout": 9,
                                     "Environment": {"Variables": {"A": "1"}},
                                     "EphemeralStorage": {"Size": 1024},
                                     "Runtime": "python3.12", "Role": "ignored"})
    assert changes == {"handler": "app.main", "memory_mb": 512, "timeout_s": 9,
                       "env": {"A": "1"}, "ephemeral_mb": 1024}
    base = {"name": "x", "concurrency": 4, "memory_mb": 128, "triggers": [
        {"type": "schedule", "rate": "1 hour"}]}
    merged = bundle.merged_config(base, changes)
    assert merged["concurrency"] == 4 and merged["memory_mb"] == 512 and "name" not in merged
    with pytest.raises(InvalidConfig) as info:
        bundle.merged_config({}, {"memory_mb": 64})
    assert info.value.message.startswith("MemorySize:")
    with pytest.raises(InvalidConfig) as info:
        bundle.merged_config({}, {"env": {"AWS_X": "1"}})
    assert info.value.message.startswith("Environment.Variables.AWS_X:")
    for bad in ({"Runtime": "nodejs20.x"}, {"PackageType": "Image"},
                {"Architectures": ["mips"]}):
        with pytest.raises(BadRequest):
            bundle.config_changes(bad)


def test_unsupported_fields_are_named() -> None:
    with pytest.raises(BadRequest) as info:
        bundle.unsupported({"Handler": "a.b", "VpcConfig": {}, "Layers": []},
                           bundle.CREATE_FIELDS, "CreateFunction")
    assert info.value.details == {"fields": ["Layers", "VpcConfig"]}
    assert "Layers, VpcConfig" in info.value.message


def test_every_operation_declares_a_scope() -> None:
    seen: dict[str, Any] = {}
    for op in OPERATIONS:
        assert isinstance(op.scope, Scope), op.name
        seen[op.name] = op.scope
    assert seen["InvokeFunction"] == Scope.INVOKE
    reads = {"ListFunctions", "GetFunction", "ListVersionsByFunction", "GetAlias", "ListAliases"}
    assert {n for n, s in seen.items() if s == Scope.READ} == reads
    assert all(s == Scope.DEPLOY for n, s in seen.items() if n not in reads | {"InvokeFunction"})
    # The paths and methods are botocore's.
    model = botocore.session.get_session().get_service_model("lambda")
    for op in OPERATIONS:
        name = "Invoke" if op.name == "InvokeFunction" else op.name
        http = model.operation_model(name).http
        assert (http["method"], http["requestUri"].split("?")[0]) == (op.method, op.path)
