"""README.md, "Running on a cluster": the one-machine walkthrough runs verbatim (a real
`ray start --head`, `squall up --cluster auto`, deploy, invoke, `squall nodes`, `ray stop`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_ray
from tests.readme import script, section

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.cluster


def test_cluster_walkthrough_runs_verbatim(tmp_path: Path) -> None:
    require_ray()
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SQUALL_", "RAY_"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    try:
        result = subprocess.run(["bash", "-c", script(section("Running on a cluster"))],
                                cwd=work, env=env, capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run([str(bin_dir / "ray"), "stop", "--force"], capture_output=True,
                       timeout=120, env=env)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    print(result.stdout)
    assert '"message": "hello, cluster"' in result.stdout
    assert " up " in result.stdout  # squall nodes: the head's agent
