"""README.md, "Object storage and upload events": the thumbnail walkthrough runs verbatim."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests import s3_helpers
from tests.readme import script, section

ROOT = Path(__file__).resolve().parent.parent


def test_thumbnail_walkthrough_runs_verbatim(tmp_path: Path) -> None:
    p = s3_helpers.start(tmp_path / "data")
    try:
        env = {**p.env, "SQUALL_URL": p.url, "SQUALL_S3_URL": p.s3_url,  # type: ignore[attr-defined]
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        work = tmp_path / "work"
        work.mkdir()
        (work / "examples").symlink_to(ROOT / "examples")
        result = subprocess.run(["bash", "-c", script(section("Object storage and upload events"))],
                                cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        assert "thumbnails/cat.jpg" in result.stdout
        assert "thumbnail s3://images/thumbnails/cat.jpg: 128x96" in result.stdout
    finally:
        p.close()
