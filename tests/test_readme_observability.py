"""README.md, "Observability": the Prometheus scrape config is valid (promtool), and scraping
with a metrics key works as the section says."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import PlatformProc
from tests.readme import section


def test_scrape_config_is_valid_and_a_metrics_key_scrapes(
        platform: PlatformProc, tmp_path: Path, make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("hello", "def handler(event, context):\n    return 1\n"))
    assert platform.invoke("hello").status_code == 200
    text = section("Observability")
    yaml = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert yaml is not None
    key = json.loads(platform.cli("key", "create", "--scope", "metrics", "--json").stdout)["key"]
    creds = tmp_path / "squall-key"
    creds.write_text(key)
    config = yaml.group(1).replace("/etc/prometheus/squall-key", str(creds)).replace(
        "127.0.0.1:8080", f"127.0.0.1:{platform.port}")
    (tmp_path / "prometheus.yml").write_text(config)
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("SQUALL_REQUIRE_SERVICES") == "1":
            pytest.fail("promtool is required (Debian package prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    check = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    r = httpx.get(f"{platform.url}/metrics", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert re.search(r'squall_invocations_total\{[^}]*function="hello"[^}]*\} 1', r.text), r.text
    assert httpx.get(f"{platform.url}/metrics").status_code == 401
