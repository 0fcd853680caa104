"""Shared by the Lambda API tests: a real botocore client for a platform, and zipped code."""

from __future__ import annotations

import io
import json
import textwrap
import zipfile
from typing import Any

import boto3
from botocore.config import Config

from squall.tenancy import keys
from tests.conftest import PlatformProc

HELLO = """
import json

def handler(event, context):
    print("hello from", context.function_name)
    return {"hello": event.get("name", "world"), "version": context.function_version}
"""


def aws_pair(token: str) -> tuple[str, str]:
    """A Squall API key (sq_<id>_<secret>) as an AWS access key pair."""
    parsed = keys.parse_token(token)
    assert parsed is not None, token
    return keys.access_key_id(parsed[0]), parsed[1]


def new_key(platform: PlatformProc, scopes: str, tenant: str = "default") -> dict[str, Any]:
    out = platform.cli("key", "create", "--tenant", tenant, "--scope", scopes, "--json")
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def client(platform: PlatformProc, pair: tuple[str, str] | None = None, **config: Any) -> Any:
    """boto3's Lambda client, unchanged but for the endpoint; no retries (errors are the test)."""
    akid, secret = pair or aws_pair(platform.admin_key)
    return boto3.client(
        "lambda", endpoint_url=platform.url, region_name="us-east-1",
        aws_access_key_id=akid, aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 0, "mode": "standard"}, read_timeout=120,
                      **config))


def zip_code(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, textwrap.dedent(text))
    return buf.getvalue()


def create(lam: Any, name: str, code: str = HELLO, files: dict[str, str] | None = None,
           **fields: Any) -> dict[str, Any]:
    """CreateFunction with ``code`` as app.py (and ``files`` beside it)."""
    zipped = zip_code({"app.py": code, **(files or {})})
    params: dict[str, Any] = {"FunctionName": name, "Role": "arn:aws:iam::123456789012:role/x",
                              "Runtime": "python3.11", "Handler": "app.handler",
                              "Code": {"ZipFile": zipped}}
    params.update(fields)
    result: dict[str, Any] = lam.create_function(**params)
    return result
