"""Lambda's response shapes (FunctionConfiguration, AliasConfiguration) from Squall's records."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
import platform as host
import sys
import uuid
from typing import Any

from squall.lambda_api.arn import function_arn
from squall.registry import FunctionRecord
from squall.routing import LATEST, Alias

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
ARCHITECTURE = "arm64" if host.machine() in ("aarch64", "arm64") else "x86_64"


def timestamp(ts: float) -> str:
    """Lambda's LastModified: 2024-01-31T12:00:00.000+0000."""
    t = dt.datetime.fromtimestamp(ts, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}+0000"


def code_sha256(rec: FunctionRecord) -> str:
    """Lambda gives base64 of the zip's SHA-256; Squall hashes the unpacked tree (content
    addressing that ignores zip metadata), so this is base64 of the tree hash."""
    return base64.b64encode(bytes.fromhex(rec.sha256)).decode()


def revision_id(rec: FunctionRecord) -> str:
    """Stable for one version: any deploy (a new version) changes it."""
    digest = hashlib.sha256(f"{rec.namespace}/{rec.name}/{rec.version}/{rec.sha256}".encode())
    return str(uuid.UUID(bytes=digest.digest()[:16]))


def function_configuration(rec: FunctionRecord, *, region: str, qualifier: str | None,
                           description: str, code_size: int) -> dict[str, Any]:
    """``qualifier`` None or $LATEST describes the function's $LATEST; a number, that version."""
    version = LATEST if qualifier in (None, LATEST) else str(rec.version)
    cfg = rec.config
    out: dict[str, Any] = {
        "FunctionName": rec.name,
        "FunctionArn": function_arn(region, rec.namespace, rec.name,
                                    None if version == LATEST else version),
        "Runtime": RUNTIME,
        "Handler": cfg.handler,
        "CodeSize": code_size,
        "Description": description,
        # Lambda's Timeout is whole seconds; a squall.toml may give a fraction: round up.
        "Timeout": math.ceil(cfg.timeout_s),
        "MemorySize": cfg.memory_mb,
        "LastModified": timestamp(rec.created_at),
        "CodeSha256": code_sha256(rec),
        "Version": version,
        "Environment": {"Variables": dict(cfg.env)},
        "RevisionId": revision_id(rec),
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": [ARCHITECTURE],
        "EphemeralStorage": {"Size": cfg.ephemeral_mb},
    }
    return out


def alias_configuration(alias: Alias, region: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "AliasArn": function_arn(region, alias.namespace, alias.function, alias.name),
        "Name": alias.name,
        "FunctionVersion": LATEST if alias.version is None else str(alias.version),
        "Description": alias.description,
        "RevisionId": alias.revision,
    }
    if alias.weights:
        out["RoutingConfig"] = {"AdditionalVersionWeights": {
            str(v): w for v, w in sorted(alias.weights.items())}}
    return out
