"""Runtimes other than Python: Node and ``provided`` instances behind the Lambda Runtime API.

``make_zygote`` is the one place the agent asks which kind of zygote a version needs.
"""

from __future__ import annotations

from pathlib import Path

from squall.agent.sandbox.api import Sandbox
from squall.agent.zygote import Zygote, ZygoteConfig
from squall.bundle.spec import runtime_kind


def make_zygote(runtime: str, key: str, sandbox: Sandbox, cfg: ZygoteConfig,
                code_dir: Path) -> Zygote:
    """A Python zygote, or the launcher of a ``nodejs20`` / ``provided`` version."""
    kind = runtime_kind(runtime)
    if kind == "python":
        return Zygote(key, sandbox, cfg, code_dir)
    from squall.agent.runtimes.launcher import ExecZygote

    return ExecZygote(key, sandbox, cfg, code_dir, runtime, kind)
