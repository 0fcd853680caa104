"""The Lambda Invoke API through a real boto3 client against a real platform process: sync,
Event, DryRun, Tail logs, function errors, each error type, SigV4 and scopes."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import PlatformProc, wait_for
from tests.lambda_helpers import aws_pair, client, create, new_key

FAILING = """
def handler(event, context):
    raise ValueError("bad input: " + str(event.get("n")))
"""

SLOW = """
import time

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return "done"
"""


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    err = exc.value.response
    return (err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"],
            err["Error"]["Message"])


def test_invoke_sync_event_dryrun_tail_and_function_error(platform: PlatformProc) -> None:
    lam = client(platform)
    created = create(lam, "hello", Description="greets")
    assert created["FunctionName"] == "hello" and created["Version"] == "$LATEST"

    out = lam.invoke(FunctionName="hello", Payload=json.dumps({"name": "Ada"}))
    assert out["StatusCode"] == 200
    assert out["ExecutedVersion"] == "1"
    assert "FunctionError" not in out
    assert json.loads(out["Payload"].read()) == {"hello": "Ada", "version": "1"}

    tail = lam.invoke(FunctionName="hello", LogType="Tail", Payload=b"{}")
    log = base64.b64decode(tail["LogResult"]).decode()
    rid = tail["ResponseMetadata"]["RequestId"]
    assert f"START RequestId: {rid} Version: 1" in log
    assert "hello from hello" in log
    assert f"END RequestId: {rid}" in log and f"REPORT RequestId: {rid}" in log

    dry = lam.invoke(FunctionName="hello", InvocationType="DryRun")
    assert dry["StatusCode"] == 204 and dry["Payload"].read() == b""

    event = lam.invoke(FunctionName="hello", InvocationType="Event",
                       Payload=json.dumps({"name": "async"}))
    assert event["StatusCode"] == 202
    rid = event["ResponseMetadata"]["RequestId"]
    record = wait_for(lambda: (r := platform.http.get(f"/api/v1/invocations/{rid}")).json()
                      .get("status") == "succeeded" and r.json(), message="the Event invocation")
    assert record["function"] == "hello"

    # An ARN with a qualifier names the same function.
    arn = lam.get_function(FunctionName="hello")["Configuration"]["FunctionArn"]
    by_arn = lam.invoke(FunctionName=f"{arn}:1", Payload=b'{"name": "arn"}')
    assert json.loads(by_arn["Payload"].read())["hello"] == "arn"

    create(lam, "fails", FAILING)
    failed = lam.invoke(FunctionName="fails", Payload=b'{"n": 7}', LogType="Tail")
    assert failed["StatusCode"] == 200 and failed["FunctionError"] == "Unhandled"
    payload = json.loads(failed["Payload"].read())
    assert payload["errorType"] == "ValueError"
    assert payload["errorMessage"] == "bad input: 7"
    assert isinstance(payload["stackTrace"], list)


def test_invoke_error_types(platform_factory: Callable[..., PlatformProc]) -> None:
    platform = platform_factory(SQUALL_MAX_SYNC_PAYLOAD="2048", SQUALL_QUEUE_WAIT_S="0.2")
    lam = client(platform)
    create(lam, "slow", SLOW)
    cases: list[tuple[dict[str, Any], str, int]] = [
        ({"FunctionName": "missing"}, "ResourceNotFoundException", 404),
        ({"FunctionName": "slow", "Qualifier": "9"}, "ResourceNotFoundException", 404),
        ({"FunctionName": "slow", "Qualifier": "nope"}, "ResourceNotFoundException", 404),
        ({"FunctionName": "arn:aws:lambda:us-east-1:999999999999:function:slow"},
         "ResourceNotFoundException", 404),  # another account (tenant) is a missing function
        ({"FunctionName": "slow", "Payload": b"{not json"}, "InvalidRequestContentException",
         400),
        ({"FunctionName": "slow", "Payload": b"x" * 4096}, "RequestTooLargeException", 413),
        ({"FunctionName": "slow:1", "Qualifier": "2"}, "InvalidParameterValueException", 400),
        ({"FunctionName": "slow", "ClientContext": base64.b64encode(b"{}").decode()},
         "InvalidParameterValueException", 400),
        ({"FunctionName": "slow", "InvocationType": "Event", "Qualifier": "1"},
         "InvalidParameterValueException", 400),
    ]
    for params, code, status in cases:
        with pytest.raises(ClientError) as info:
            lam.invoke(**params)
        assert _error(info)[:2] == (code, status), (params, _error(info))

    # The zip's own squall.toml keeps Squall-only settings: one instance at most. A second call
    # while the first runs waits 0.2 s (SQUALL_QUEUE_WAIT_S) for a free instance, then gets 429.
    create(lam, "single", SLOW, files={"squall.toml": "max_instances = 1\n"})
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(
        lam.invoke(FunctionName="single", Payload=b'{"sleep": 3}')))
    first.start()
    try:
        wait_for(lambda: any(i["state"] == "busy" for i in platform.instances("single")),
                 message="the first invocation to be running")
        with pytest.raises(ClientError) as info:
            lam.invoke(FunctionName="single", Payload=b"{}")
        assert _error(info)[:2] == ("TooManyRequestsException", 429)
        assert info.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"]
    finally:
        first.join(60)
    assert json.loads(results[0]["Payload"].read()) == "done"


def _signed_request(platform: PlatformProc, akid: str, secret: str,
                    when: dt.datetime | None = None) -> httpx.Response:
    """A hand-signed ListFunctions, optionally with an old X-Amz-Date (botocore signs "now")."""
    url = f"{platform.url}/2015-03-31/functions"
    req = AWSRequest(method="GET", url=url)
    signer = SigV4Auth(Credentials(akid, secret), "lambda", "us-east-1")
    if when is None:
        signer.add_auth(req)
    else:
        req.context["timestamp"] = when.strftime("%Y%m%dT%H%M%SZ")
        signer._modify_request_before_signing(req)
        sig = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
        signer._inject_signature_to_request(req, sig)
    prepared = req.prepare()
    return httpx.get(url, headers=dict(prepared.headers.items()))


def test_signatures_and_scopes(platform: PlatformProc) -> None:
    akid, secret = aws_pair(platform.admin_key)
    assert _signed_request(platform, akid, secret).status_code == 200
    wrong = _signed_request(platform, akid, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert (wrong.status_code, wrong.headers["x-amzn-ErrorType"]) == (
        403, "InvalidSignatureException")
    unknown = _signed_request(platform, "SQIA0000000000000000", secret)
    assert (unknown.status_code, unknown.headers["x-amzn-ErrorType"]) == (
        403, "UnrecognizedClientException")
    old = _signed_request(platform, akid, secret,
                          dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20))
    assert (old.status_code, old.headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")
    assert old.json()["message"].startswith("Signature expired")
    unsigned = httpx.get(f"{platform.url}/2015-03-31/functions")
    assert unsigned.status_code == 403
    assert unsigned.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"

    # botocore reads the same errors as ClientError codes.
    with pytest.raises(ClientError) as info:
        client(platform, ("SQIA0000000000000000", secret)).list_functions()
    assert _error(info)[:2] == ("UnrecognizedClientException", 403)

    lam = client(platform)
    create(lam, "hello")
    reader = client(platform, aws_pair(new_key(platform, "read")["key"]))
    assert [f["FunctionName"] for f in reader.list_functions()["Functions"]] == ["hello"]
    with pytest.raises(ClientError) as info:
        reader.invoke(FunctionName="hello")
    assert _error(info)[:2] == ("AccessDeniedException", 403)
    invoker = client(platform, aws_pair(new_key(platform, "invoke")["key"]))
    assert invoker.invoke(FunctionName="hello")["StatusCode"] == 200
    with pytest.raises(ClientError) as info:
        invoker.delete_function(FunctionName="hello")
    assert _error(info)[:2] == ("AccessDeniedException", 403)


def test_tenants_are_accounts(platform: PlatformProc) -> None:
    platform.cli("tenant", "create", "acme")
    admin = client(platform)
    create(admin, "hello")
    acme = client(platform, aws_pair(new_key(platform, "deploy,invoke", "acme")["key"]))
    assert acme.list_functions()["Functions"] == []
    with pytest.raises(ClientError) as info:
        acme.invoke(FunctionName="hello")
    assert _error(info)[:2] == ("ResourceNotFoundException", 404)
    default_arn = admin.get_function(FunctionName="hello")["Configuration"]["FunctionArn"]
    with pytest.raises(ClientError) as info:
        acme.get_function(FunctionName=default_arn)
    assert _error(info)[:2] == ("ResourceNotFoundException", 404)
    # The same name in acme is acme's own function.
    mine = create(acme, "hello")
    assert mine["FunctionArn"] != default_arn
    out = acme.invoke(FunctionName=mine["FunctionArn"], Payload=b'{"name": "acme"}')
    assert json.loads(out["Payload"].read())["hello"] == "acme"
