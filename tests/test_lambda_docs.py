"""README.md, "Coming from AWS Lambda": its bash and python snippets run verbatim, in order,
against a real platform, with the real squall CLI, boto3 and the AWS CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PlatformProc
from tests.readme import BLOCK, script, section

DOC_TEXT = section("Coming from AWS Lambda")


def test_doc_has_the_snippets_we_promise() -> None:
    blocks = BLOCK.findall(DOC_TEXT)
    assert [lang for lang, _ in blocks].count("python") >= 1
    assert any("aws --endpoint-url" in body for lang, body in blocks if lang == "bash")
    assert any("boto3.client" in body for lang, body in blocks if lang == "python")


def test_doc_snippets_run_verbatim(platform: PlatformProc, tmp_path: Path) -> None:
    env = {**platform.env, "SQUALL_URL": platform.url,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    result = subprocess.run(["bash", "-c", script(DOC_TEXT)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    out = result.stdout
    assert "1 {'hello': 'Ada'}" in out
    assert '{"hello": "Grace"}' in out
    assert '"AdditionalVersionWeights"' in out and '"live"' in out
    assert "hello:live -> version 1" in out
    assert "Removed alias hello:live" in out
