"""README.md, "Every core on one machine: `--workers`": the walkthrough runs verbatim (two
workers on one port, a deploy, an invocation, a clean stop of both)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.readme import script, section

ROOT = Path(__file__).resolve().parent.parent


def test_workers_walkthrough_runs_verbatim(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUALL_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["SQUALL_SANDBOX"] = os.environ.get("SQUALL_SANDBOX", "auto")
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    result = subprocess.run(["bash", "-c", script(section("Every core on one machine: "
                                                          "`--workers`"))],
                            cwd=work, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert '"message": "hello, workers"' in result.stdout, result.stdout
