"""The sandbox interface. One Sandbox holds one function version's zygote and its instances.

Contract (the same for every implementation):
- ``zygote_argv`` wraps the runtime command so the zygote starts inside the sandbox; the fds in
  ``pass_fds`` must reach the zygote with the same numbers.
- ``harden_opts`` is what each forked instance applies to itself (runtime/harden.py) before it
  serves anything: rlimits, private /tmp, seccomp, dropped capabilities.
- ``place`` puts an instance (host pid) under its limits (cgroup, or nothing for rlimit-only).
  It is called before the instance receives its first invocation.
- ``usage`` reads what the instance used; ``release`` removes what ``place`` created.
  Calling ``usage`` or ``release`` for an unknown or already released instance is harmless.
- ``prepare`` may be called (from a worker thread) to make the next ``place`` cheap.
- ``destroy`` removes everything this sandbox created; calling anything after it is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Network = Literal["host", "none"]


@dataclass(frozen=True)
class Limits:
    memory_mb: int = 128
    pids: int = 256
    ephemeral_mb: int = 512
    network: Network = "host"
    timeout_s: float = 30.0


@dataclass(frozen=True)
class SandboxSpec:
    """What a sandbox needs to know about the version it runs."""

    key: str                      # unique per version, safe as a path component
    code_dir: Path                # the unpacked bundle, mounted read-only
    python_paths: list[Path]      # dependency site-packages, then the platform's runtime paths
    env: dict[str, str]           # the function's own variables plus the runtime's, nothing else
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Usage:
    max_memory_bytes: int = 0
    oom_killed: bool = False
    pids_limit_hit: bool = False


class Sandbox(Protocol):
    backend: str
    spec: SandboxSpec

    def zygote_argv(self, argv: list[str], pass_fds: list[int]) -> list[str]: ...

    def map_path(self, host_path: Path) -> str:
        """Where a host path of the spec (code dir, python paths) appears inside the sandbox."""
        ...

    def harden_opts(self) -> dict[str, Any]: ...

    def prepare(self) -> None:
        """Make resources for the next instances ahead, off the event loop. Harmless any time."""
        ...

    def place(self, instance_id: str, pid: int) -> None: ...

    def usage(self, instance_id: str) -> Usage: ...

    def release(self, instance_id: str) -> None: ...

    def destroy(self) -> None: ...


class SandboxBackend(Protocol):
    name: str

    def create(self, spec: SandboxSpec) -> Sandbox: ...
