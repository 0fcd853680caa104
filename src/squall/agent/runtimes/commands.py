"""What the launcher execs for each runtime, and the environment Lambda gives it.

- ``provided``: the bundle's executable ``bootstrap`` (any language). It also gets
  ``SQUALL_PYTHON`` (the platform's Python) and ``PYTHONPATH`` (the bundle's requirements.txt
  packages, installed at deploy for that Python), so a bootstrap can be
  ``exec "$SQUALL_PYTHON" -m awslambdaric "$_HANDLER"``.
- ``nodejs20``: the host's ``node`` running squall's bootstrap.mjs (runtime/node/), itself a
  Runtime API client like Lambda's own Node runtime. ``NODE_PATH`` and ``SQUALL_NODE_DEPS``
  point at the package.json dependencies installed at deploy (squall.bundle.npm).
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import squall.runtime
from squall.agent.sandbox.api import Sandbox
from squall.errors import HandlerError, SandboxError

NODE_BOOTSTRAP = Path(squall.runtime.__file__).parent / "node" / "bootstrap.mjs"
# What SDKs inside a function expect to find; Squall's own ARNs and endpoints use the same
# default region (squall.lambda_api.arn)
REGION = "us-east-1"


def _visible(sandbox: Sandbox, host_path: Path | str) -> str:
    """A host path as the sandbox sees it; system paths (/usr/bin/node) are visible as-is
    even where the sandbox maps only what it stages (a root platform's process sandbox)."""
    try:
        return sandbox.map_path(Path(host_path))
    except SandboxError:
        return str(host_path)


def _lambda_env(runtime: str, handler: str, static: dict[str, Any],
                task_root: str) -> dict[str, str]:
    return {
        "_HANDLER": handler,
        "LAMBDA_TASK_ROOT": task_root,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{runtime}",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/squall/{static.get('function_name', '')}",
        "AWS_LAMBDA_LOG_STREAM_NAME": str(static.get("log_stream_name", "")),
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "TZ": ":UTC",
    }


def check_bootstrap(code_dir: Path) -> None:
    """Deploy-time check of a ``provided`` bundle, with an answer a person can act on."""
    path = code_dir / "bootstrap"
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise HandlerError("the provided runtime needs an executable file named 'bootstrap' "
                           "at the top of the bundle") from None
    if stat.S_ISLNK(st.st_mode):
        st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise HandlerError("'bootstrap' must be a regular file")
    if not st.st_mode & 0o111:
        raise HandlerError("'bootstrap' is not executable: chmod +x bootstrap before deploying")


def find_node() -> str:
    node = shutil.which("node")
    if node is None:
        raise SandboxError("the nodejs20 runtime needs Node.js 20 ('node') on the platform's "
                           "PATH")
    return os.path.realpath(node)


def exec_spec(kind: str, runtime: str, sandbox: Sandbox, code_dir: Path, handler: str,
              dep_paths: list[Path], static: dict[str, Any], memory_mb: int) -> dict[str, Any]:
    """{"argv", "env"} for the launcher (runtime/launcher.py): mapped paths only."""
    task_root = _visible(sandbox, code_dir)
    env = _lambda_env(runtime, handler, static, task_root)
    deps = [_visible(sandbox, p) for p in dep_paths]
    if kind == "provided":
        check_bootstrap(code_dir)
        env["SQUALL_PYTHON"] = _visible(sandbox, sys.executable)
        if deps:
            env["PYTHONPATH"] = ":".join(deps)
        return {"argv": [f"{task_root}/bootstrap"], "env": env}
    if kind == "nodejs20":
        env["AWS_EXECUTION_ENV"] = "AWS_Lambda_nodejs20.x"
        modules = [f"{d}/node_modules" for d in deps]
        if modules:
            env["NODE_PATH"] = ":".join(modules)
            env["SQUALL_NODE_DEPS"] = ":".join(deps)
        # V8 collects before the cgroup's limit rather than being OOM-killed at it
        heap_mb = max(32, int(memory_mb * 0.85))
        argv = [_visible(sandbox, find_node()), f"--max-old-space-size={heap_mb}",
                _visible(sandbox, NODE_BOOTSTRAP)]
        return {"argv": argv, "env": env}
    raise ValueError(f"no launcher command for runtime {runtime!r}")
