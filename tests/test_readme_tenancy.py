"""README.md, "Tenants, keys and secrets": the snippet runs verbatim against a real platform."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import PlatformProc
from tests.readme import script, section


def test_tenancy_snippet_runs_verbatim(platform: PlatformProc, tmp_path: Path) -> None:
    fn = tmp_path / "myfn"
    fn.mkdir()
    (fn / "handler.py").write_text(textwrap.dedent("""
        import os
        def handler(event, context):
            return {"statusCode": 200, "body": "db password has %d characters"
                    % len(os.environ["DB_PASSWORD"])}
        """))
    (fn / "squall.toml").write_text('env = { DB_PASSWORD = "secret:db-password" }\n')
    env = {**platform.env, "SQUALL_URL": platform.url,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script(section("Tenants, keys and secrets"))],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    out = result.stdout
    assert "db password has 7 characters" in out
    assert "myfn" in out and "acme" in out  # usage and the bill name the tenant's function
    assert "month,tenant,function,requests,gb_seconds,cost_usd" in out
