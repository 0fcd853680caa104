"""The ``process`` sandbox: a plain child process held by rlimits only.

The fallback where bubblewrap or namespaces are missing. It isolates nothing from the filesystem;
``squall up`` and ``squall doctor`` warn loudly when it is in use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from squall.agent.sandbox.api import SandboxSpec, Usage


class ProcessSandbox:
    backend = "process"

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec

    def zygote_argv(self, argv: list[str], pass_fds: list[int]) -> list[str]:
        return argv

    def map_path(self, host_path: Path) -> str:
        return str(host_path)

    def harden_opts(self) -> dict[str, Any]:
        limits = self.spec.limits
        # Address-space limits are a poor stand-in for a memory cgroup (they count mappings, not
        # pages), so give 2x headroom plus a fixed allowance for the interpreter's own mappings.
        address_space = (limits.memory_mb * 2 + 512) * 1024 * 1024
        # No namespaces here, but the instance still gives up every capability and the dangerous
        # syscalls (mount, unshare, ptrace, ...): a root platform must not lend root to functions.
        return {"rlimits": {"RLIMIT_AS": address_space, "RLIMIT_NPROC": 4096},
                "drop_caps": True, "no_new_privs": True, "seccomp": True}

    def prepare(self) -> None:
        return None

    def place(self, instance_id: str, pid: int) -> None:
        return None

    def usage(self, instance_id: str) -> Usage:
        return Usage()

    def release(self, instance_id: str) -> None:
        return None

    def destroy(self) -> None:
        return None


class ProcessBackend:
    name = "process"

    def create(self, spec: SandboxSpec) -> ProcessSandbox:
        return ProcessSandbox(spec)
