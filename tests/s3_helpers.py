"""Shared by the S3 tests: a platform with its S3 listener on a free port, boto3 clients signed
with Squall API keys, tenant keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from squall.tenancy import keys
from tests.conftest import PlatformProc, free_port


def start(data_dir: Path, **env: str) -> PlatformProc:
    """A platform whose S3 API listens on a free port (``p.s3_url``)."""
    port = free_port()
    p = PlatformProc(data_dir, {"SQUALL_S3_PORT": str(port), **env})
    p.s3_url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    p.start()
    return p


def pair(token: str) -> tuple[str, str]:
    """An API key as an AWS pair (access key id, secret access key)."""
    parsed = keys.parse_token(token)
    assert parsed is not None, token
    return keys.access_key_id(parsed[0]), parsed[1]


def client(p: PlatformProc, token: str | None = None, **config: Any) -> Any:
    akid, secret = pair(token or p.admin_key)
    return boto3.client("s3", endpoint_url=p.s3_url,  # type: ignore[attr-defined]
                        region_name="us-east-1", aws_access_key_id=akid,
                        aws_secret_access_key=secret,
                        config=Config(retries={"max_attempts": 1}, **config))


def tenant_key(p: PlatformProc, tenant: str, scopes: list[str]) -> str:
    """A new key of ``tenant`` (created if needed) with ``scopes``; returns the key text."""
    if p.http.get(f"/api/v1/tenants/{tenant}").status_code == 404:
        r = p.http.post("/api/v1/tenants", json={"name": tenant})
        assert r.status_code == 201, r.text
    r = p.http.post("/api/v1/keys", json={"tenant": tenant, "scopes": scopes})
    assert r.status_code == 201, r.text
    token: str = r.json()["key"]
    return token


def code(exc: Any) -> str:
    """The S3 error code of a botocore ClientError."""
    return str(exc.value.response["Error"]["Code"])
