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
- The zygote's start: ``prepare_zygote`` (off the event loop) makes what it needs ahead (its
  cgroup); ``zygote_launch`` is what the platform's forked child runs before exec, as root (join
  that cgroup, drop to ``spec.uid``); ``zygote_env`` is the zygote's whole environment;
  ``zygote_harden`` is what the zygote applies to itself before it imports any function code.

Host uids: every sandbox of a root platform runs as ``SandboxSpec.uid``, the tenant's unprivileged
host uid, never as root. A version without a tenant uid gets ``FALLBACK_UID``: below the first
tenant range (100000 + 65536 * n), above every ordinary login uid, and not 65534 (nobody), which
other daemons use. A platform that is not root runs sandboxes as its own uid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Network = Literal["host", "none"]
FALLBACK_UID = 99_999


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
    # the function's own variables (secrets included) plus the runtime's, nothing else; never
    # logged, never put on a command line (host users can read those)
    env: dict[str, str] = field(repr=False)
    limits: Limits = field(default_factory=Limits)
    uid: int = FALLBACK_UID       # host uid (and gid) the sandbox runs as when the platform is root


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

    def zygote_env(self) -> dict[str, str]: ...

    def zygote_harden(self) -> dict[str, Any]: ...

    def prepare_zygote(self) -> None:
        """Make the zygote's cgroup, off the event loop. Raises SandboxError if it cannot."""
        ...

    def zygote_launch(self) -> Callable[[], None] | None: ...

    def prepare(self) -> None:
        """Make resources for the next instances ahead, off the event loop. Harmless any time."""
        ...

    def arm(self, zygote_pid: int) -> None:
        """Between two forks, off the event loop: put the zygote (host pid) where its next child
        should be born (a prepared instance cgroup), so ``place`` has no migration to do. The
        caller sends no fork request while it runs. Harmless any time; may do nothing."""
        ...

    def place(self, instance_id: str, pid: int) -> None: ...

    def usage(self, instance_id: str) -> Usage: ...

    def release(self, instance_id: str) -> None: ...

    def destroy(self) -> None: ...


class SandboxBackend(Protocol):
    name: str

    def create(self, spec: SandboxSpec) -> Sandbox: ...
