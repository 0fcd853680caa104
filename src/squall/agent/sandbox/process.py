"""The ``process`` sandbox: a plain child process held by rlimits only.

The fallback where bubblewrap or namespaces are missing, used only when asked for by name
(``--sandbox process``): it isolates nothing from the filesystem; ``squall up`` and ``squall
doctor`` warn loudly when it is in use. A root platform still never runs it as root: the zygote
starts as the version's unprivileged uid, with the Python install, the code and the dependencies
staged where that uid can read them (stage.py; the stage's tmpfs is also the zygote's /tmp).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from squall.agent.sandbox.api import SandboxSpec, Usage
from squall.agent.sandbox.stage import Launch, check_readable, host_ids, stage_binds, staged
from squall.errors import SandboxError


class ProcessSandbox:
    backend = "process"

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self._ids = host_ids(spec.uid)
        self._stage: tuple[tuple[str, str], ...] = ()
        if self._ids is not None:
            self._stage = stage_binds([Path(sys.base_prefix), Path(spec.code_dir),
                                       *spec.python_paths])

    def zygote_argv(self, argv: list[str], pass_fds: list[int]) -> list[str]:
        exe = self.map_path(argv[0]) if os.path.isabs(argv[0]) else argv[0]
        return [exe, *argv[1:]]

    def map_path(self, host_path: str | os.PathLike[str]) -> str:
        if not self._stage:
            return str(host_path)
        for candidate in (os.path.abspath(host_path), os.path.realpath(host_path)):
            mapped = staged(self._stage, candidate)
            if mapped is not None:
                return mapped
        raise SandboxError(f"{host_path} is not staged for the sandbox uid")

    def harden_opts(self) -> dict[str, Any]:
        limits = self.spec.limits
        # Address-space limits are a poor stand-in for a memory cgroup (they count mappings, not
        # pages), so give 2x headroom plus a fixed allowance for the interpreter's own mappings.
        address_space = (limits.memory_mb * 2 + 512) * 1024 * 1024
        # No namespaces here, but the instance still gives up every capability and the dangerous
        # syscalls (mount, unshare, ptrace, ...): a root platform must not lend root to functions.
        return {"rlimits": {"RLIMIT_AS": address_space, "RLIMIT_NPROC": 4096},
                "drop_caps": True, "no_new_privs": True, "seccomp": True}

    def zygote_env(self) -> dict[str, str]:
        return dict(self.spec.env)

    def zygote_harden(self) -> dict[str, Any]:
        return {"seccomp": "full"}   # no instance here mounts anything

    def prepare_zygote(self) -> None:
        if self._ids is not None:
            check_readable([Path(host) for host, _ in self._stage], *self._ids)

    def zygote_launch(self) -> Callable[[], None] | None:
        if self._ids is None:
            return None
        return Launch(*self._ids, binds=self._stage, stage_mode=0o1777,
                      stage_mb=self.spec.limits.ephemeral_mb)

    def prepare(self) -> None:
        return None

    def arm(self, zygote_pid: int) -> None:
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
