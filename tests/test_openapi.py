"""The OpenAPI document is generated from the route declarations, and schemathesis holds the
running platform to it: no 5xx, every status code, content type and JSON body as documented,
with an admin key and with a tenant's key."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PlatformProc

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance")


def test_document_is_generated_from_the_declarations(platform: PlatformProc) -> None:
    doc = platform.http.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    ops = {(m.upper(), path): op for path, item in doc["paths"].items() for m, op in item.items()}
    assert ops[("POST", "/api/v1/functions")]["x-squall-scope"] == "deploy"
    assert ops[("GET", "/healthz")]["security"] == []
    limit = next(p for p in ops[("GET", "/api/v1/dlq")]["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 10000}
    # Needs a key, like every /api/v1 route.
    import httpx
    assert httpx.get(f"{platform.url}/api/v1/openapi.json").status_code == 401


def _schemathesis(platform: PlatformProc, key: str, schema: Path, tag: str) -> dict[str, int]:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", str(schema),
         "--url", platform.url, "-H", f"Authorization: Bearer {key}", "--checks", CHECKS,
         "--max-examples", "8", "--phases", "examples,fuzzing", "--workers", "1",
         "--seed", "1", "--exclude-path-regex", "^/(console|metrics)"],
        capture_output=True, text=True, timeout=600, cwd=schema.parent)
    text = out.stdout + out.stderr
    m = re.search(r"(\d+) generated", text)
    counts = {"generated": int(m.group(1)) if m else 0,
              "operations": int(re.search(r"Tested: (\d+)", text).group(1))  # type: ignore[union-attr]
              if "Tested:" in text else 0}
    print(f"schemathesis ({tag}): {counts['operations']} operations, {counts['generated']} "
          f"generated cases, exit {out.returncode}")
    assert out.returncode == 0, text[-6000:]
    return counts


@pytest.mark.timeout(600)
def test_schemathesis_admin_and_tenant_key(platform: PlatformProc, tmp_path: Path) -> None:
    doc = platform.http.get("/api/v1/openapi.json").json()
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(doc))
    platform.cli("tenant", "create", "fuzz")
    key = json.loads(platform.cli("key", "create", "--tenant", "fuzz", "--scope",
                                  "deploy,invoke", "--json").stdout)["key"]
    admin = _schemathesis(platform, platform.admin_key, schema, "admin key")
    tenant = _schemathesis(platform, key, schema, "tenant key")
    assert admin["operations"] >= 30 and tenant["generated"] >= 100
    assert platform.http.get("/healthz").status_code == 200
