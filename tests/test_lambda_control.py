"""Lambda's control-plane calls through boto3 and the AWS CLI against a real platform."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import PlatformProc
from tests.lambda_helpers import aws_pair, client, create, zip_code

V2 = """
import os

def handler(event, context):
    return {"code": "v2", "greeting": os.environ.get("GREETING")}
"""


def _code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return (exc.value.response["Error"]["Code"],
            exc.value.response["ResponseMetadata"]["HTTPStatusCode"])


def _run(lam: Any, name: str, **kw: Any) -> tuple[Any, str]:
    out = lam.invoke(FunctionName=name, Payload=b"{}", **kw)
    return json.loads(out["Payload"].read()), out["ExecutedVersion"]


def test_functions_versions_and_publish(platform: PlatformProc) -> None:
    lam = client(platform)
    made = create(lam, "greeter", MemorySize=256, Timeout=10, Description="first",
                  Environment={"Variables": {"GREETING": "hi"}}, Publish=True)
    assert made["Version"] == "1" and made["FunctionArn"].endswith(":function:greeter:1")
    assert (made["MemorySize"], made["Timeout"], made["Handler"]) == (256, 10, "app.handler")
    assert made["Environment"] == {"Variables": {"GREETING": "hi"}}
    assert made["Description"] == "first" and made["State"] == "Active"
    assert made["CodeSize"] > 0 and made["CodeSha256"]

    got = lam.get_function(FunctionName="greeter")["Configuration"]
    assert got["Version"] == "$LATEST" and got["RevisionId"] == made["RevisionId"]
    assert lam.get_function(FunctionName="greeter", Qualifier="1")["Configuration"][
        "Version"] == "1"

    with pytest.raises(ClientError) as info:
        lam.update_function_configuration(FunctionName="greeter", MemorySize=512,
                                          RevisionId="stale")
    assert _code(info) == ("PreconditionFailedException", 412)
    cfg = lam.update_function_configuration(FunctionName="greeter", MemorySize=512,
                                            Environment={"Variables": {"GREETING": "hey"}},
                                            RevisionId=got["RevisionId"])
    assert cfg["MemorySize"] == 512 and cfg["Version"] == "$LATEST"
    assert cfg["Description"] == "first"  # kept from the version it was made from
    code = lam.update_function_code(FunctionName="greeter",
                                    ZipFile=zip_code({"app.py": V2}), Publish=True)
    assert code["Version"] == "3" and code["MemorySize"] == 512  # configuration kept
    assert _run(lam, "greeter") == ({"code": "v2", "greeting": "hey"}, "3")
    assert _run(lam, "greeter", Qualifier="1")[0]["hello"] == "world"

    published = lam.publish_version(FunctionName="greeter", Description="v2 code")
    assert published["Version"] == "3" and published["Description"] == "v2 code"
    with pytest.raises(ClientError) as info:
        lam.publish_version(FunctionName="greeter", CodeSha256="not-it")
    assert _code(info) == ("InvalidParameterValueException", 400)

    versions = lam.list_versions_by_function(FunctionName="greeter")["Versions"]
    assert [v["Version"] for v in versions] == ["$LATEST", "1", "2", "3"]
    assert [v["MemorySize"] for v in versions] == [512, 256, 512, 512]
    pages = lam.get_paginator("list_versions_by_function").paginate(
        FunctionName="greeter", PaginationConfig={"PageSize": 2})
    assert [[v["Version"] for v in p["Versions"]] for p in pages] == [["$LATEST", "1"],
                                                                     ["2", "3"]]

    create(lam, "another")
    names = [f["FunctionName"] for p in lam.get_paginator("list_functions").paginate(
        PaginationConfig={"PageSize": 1}) for f in p["Functions"]]
    assert names == ["another", "greeter"]
    every = lam.list_functions(FunctionVersion="ALL")["Functions"]
    assert len(every) == 2 + 4  # another: $LATEST and 1; greeter: $LATEST, 1, 2 and 3

    lam.delete_function(FunctionName="greeter")
    with pytest.raises(ClientError) as info:
        lam.get_function(FunctionName="greeter")
    assert _code(info) == ("ResourceNotFoundException", 404)
    with pytest.raises(ClientError) as info:
        lam.delete_function(FunctionName="greeter")
    assert _code(info) == ("ResourceNotFoundException", 404)


def test_aliases_through_lambda(platform: PlatformProc) -> None:
    lam = client(platform)
    create(lam, "svc")
    lam.update_function_code(FunctionName="svc", ZipFile=zip_code({"app.py": V2}))
    made = lam.create_alias(FunctionName="svc", Name="live", FunctionVersion="1",
                            Description="canary",
                            RoutingConfig={"AdditionalVersionWeights": {"2": 0.25}})
    assert made["AliasArn"].endswith(":function:svc:live")
    assert made["FunctionVersion"] == "1"
    assert made["RoutingConfig"] == {"AdditionalVersionWeights": {"2": 0.25}}
    got = lam.get_alias(FunctionName="svc", Name="live")
    assert got["RevisionId"] == made["RevisionId"] and got["Description"] == "canary"
    assert [a["Name"] for a in lam.list_aliases(FunctionName="svc")["Aliases"]] == ["live"]
    ran = {_run(lam, "svc", Qualifier="live")[1] for _ in range(40)}
    assert ran == {"1", "2"}  # both versions serve (P(miss one) = 0.75^40 + 0.25^40 ~ 1e-5)

    moved = lam.update_alias(FunctionName="svc", Name="live", FunctionVersion="2",
                             RoutingConfig={"AdditionalVersionWeights": {}})
    assert moved["FunctionVersion"] == "2" and "RoutingConfig" not in moved
    assert moved["Description"] == "canary"
    assert _run(lam, "svc", Qualifier="live") == ({"code": "v2", "greeting": None}, "2")
    arn = lam.get_function(FunctionName="svc")["Configuration"]["FunctionArn"]
    assert _run(lam, f"{arn}:live")[1] == "2"
    assert lam.get_function(FunctionName="svc", Qualifier="live")["Configuration"][
        "Version"] == "2"
    with pytest.raises(ClientError) as info:
        lam.update_alias(FunctionName="svc", Name="live", FunctionVersion="1",
                         RevisionId=made["RevisionId"])
    assert _code(info) == ("PreconditionFailedException", 412)

    bad: list[tuple[dict[str, Any], tuple[str, int]]] = [
        ({"Name": "live", "FunctionVersion": "1"}, ("ResourceConflictException", 409)),
        ({"Name": "x", "FunctionVersion": "9"}, ("ResourceNotFoundException", 404)),
        ({"Name": "x", "FunctionVersion": "1",
          "RoutingConfig": {"AdditionalVersionWeights": {"2": 1.5}}},
         ("InvalidParameterValueException", 400)),
        ({"Name": "x", "FunctionVersion": "1",
          "RoutingConfig": {"AdditionalVersionWeights": {"9": 0.5}}},
         ("ResourceNotFoundException", 404)),
        ({"Name": "123", "FunctionVersion": "1"}, ("InvalidParameterValueException", 400)),
    ]
    for params, expected in bad:
        with pytest.raises(ClientError) as info:
            lam.create_alias(FunctionName="svc", **params)
        assert _code(info) == expected, params

    lam.delete_alias(FunctionName="svc", Name="live")
    actions = [(e["action"], e["target"]) for e in
               platform.http.get("/api/v1/audit", params={"limit": 100}).json()["entries"]]
    for expected in [("lambda:CreateFunction", "svc"), ("lambda:UpdateFunctionCode", "svc"),
                     ("lambda:CreateAlias", "svc:live"), ("lambda:UpdateAlias", "svc:live"),
                     ("lambda:DeleteAlias", "svc:live")]:
        assert expected in actions, (expected, actions)
    with pytest.raises(ClientError) as info:
        lam.get_alias(FunctionName="svc", Name="live")
    assert _code(info) == ("ResourceNotFoundException", 404)
    with pytest.raises(ClientError) as info:
        lam.invoke(FunctionName="svc", Qualifier="live")
    assert _code(info) == ("ResourceNotFoundException", 404)


def test_unsupported_and_bad_fields_are_named(platform: PlatformProc) -> None:
    lam = client(platform)
    create(lam, "base")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"VpcConfig": {"SubnetIds": ["s"]}}, "VpcConfig"),
        ({"Layers": ["arn:aws:lambda:us-east-1:123456789012:layer:x:1"],
          "TracingConfig": {"Mode": "Active"}}, "Layers, TracingConfig"),
        ({"Runtime": "nodejs20.x"}, "nodejs20.x"),
        ({"MemorySize": 20000}, "MemorySize"),
        ({"Timeout": 901}, "Timeout"),
        ({"Handler": "not a handler"}, "Handler"),
        ({"Environment": {"Variables": {"AWS_REGION": "x"}}}, "Environment.Variables"),
        ({"PackageType": "Image"}, "PackageType"),
    ]
    for fields, named in cases:
        with pytest.raises(ClientError) as info:
            create(lam, "broken", **fields)
        assert _code(info) == ("InvalidParameterValueException", 400), fields
        assert named in info.value.response["Error"]["Message"], fields
    with pytest.raises(ClientError) as info:
        lam.create_function(FunctionName="broken", Role="r", Code={"ZipFile": b"not a zip"})
    assert _code(info) == ("InvalidParameterValueException", 400)
    with pytest.raises(ClientError) as info:
        lam.create_function(FunctionName="broken", Role="r",
                            Code={"S3Bucket": "bucket", "S3Key": "key"})
    assert _code(info) == ("InvalidParameterValueException", 400)
    with pytest.raises(ClientError) as info:
        create(lam, "base")
    assert _code(info) == ("ResourceConflictException", 409)
    with pytest.raises(ClientError) as info:
        lam.update_function_configuration(FunctionName="base", KMSKeyArn="arn:x")
    assert "KMSKeyArn" in info.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        lam.delete_function(FunctionName="base", Qualifier="1")
    assert _code(info) == ("InvalidParameterValueException", 400)
    assert [f["FunctionName"] for f in lam.list_functions()["Functions"]] == ["base"]


def _aws(platform: PlatformProc, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    akid, secret = aws_pair(platform.admin_key)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": akid, "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    aws = shutil.which("aws", path=str(Path(sys.executable).parent))
    assert aws is not None, "awscli is a dev dependency"
    result = subprocess.run([aws, "--endpoint-url", platform.url, "lambda", *args],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def test_aws_cli(platform: PlatformProc, tmp_path: Path) -> None:
    (tmp_path / "code.zip").write_bytes(zip_code({"app.py": V2}))
    made = json.loads(_aws(platform, tmp_path, "create-function", "--function-name", "cli",
                           "--runtime", "python3.12", "--role", "arn:aws:iam::1:role/r",
                           "--handler", "app.handler", "--zip-file", "fileb://code.zip",
                           "--environment", "Variables={GREETING=yo}").stdout)
    assert made["FunctionName"] == "cli"
    listed = json.loads(_aws(platform, tmp_path, "list-functions").stdout)
    assert [f["FunctionName"] for f in listed["Functions"]] == ["cli"]
    out = json.loads(_aws(platform, tmp_path, "invoke", "--function-name", "cli",
                          "--payload", "{}", "out.json").stdout)
    assert out["StatusCode"] == 200 and out["ExecutedVersion"] == "1"
    assert json.loads((tmp_path / "out.json").read_text()) == {"code": "v2", "greeting": "yo"}
