"""Which sandbox this machine can run, and what of it is active (for ``squall doctor``)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from squall.agent.sandbox.api import SandboxBackend
from squall.agent.sandbox.bwrap import BwrapBackend
from squall.agent.sandbox.cgroups import MOUNT, V1_CONTROLLERS, detect_version
from squall.agent.sandbox.process import ProcessBackend
from squall.errors import InvalidConfig, SandboxError

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


def choose_backend(setting: str) -> tuple[SandboxBackend, list[str]]:
    """The backend for ``settings.sandbox`` and the warnings to show at startup.

    "auto": bwrap when a sandbox with our exact options starts here, else process (warned).
    "bwrap": bwrap or SandboxError. "process": process, with the same warning.
    """
    if setting not in ("auto", "bwrap", "process"):
        raise InvalidConfig(f"sandbox must be auto, bwrap or process, not {setting!r}")
    warnings: list[str] = []
    if setting in ("auto", "bwrap"):
        try:
            backend = BwrapBackend()
            error = backend.probe()
        except SandboxError as exc:
            error = exc.message
        if error is None:
            if backend.cgroups is None:
                warnings.append(f"no cgroups: {backend.cgroup_reason}")
            return backend, warnings
        if setting == "bwrap":
            raise SandboxError(f"the bwrap sandbox does not work here: {error}")
        warnings.append(f"bubblewrap sandbox unavailable ({error})")
    warnings.append("sandbox 'process': functions run as plain processes with rlimits only; they "
                    "can read the host's files and see its processes (run `squall doctor`)")
    return ProcessBackend(), warnings


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


def _bwrap_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unusable: {exc}"
    return out.stdout.strip() or out.stderr.strip()


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


def report() -> list[Feature]:
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
    path = shutil.which("bwrap")
    if path is None:
        features.append(Feature("bubblewrap", False, "not installed",
                                "apt-get install bubblewrap (or dnf install bubblewrap)"))
    else:
        error: str | None = None
        try:
            error = BwrapBackend(path, use_cgroups=False).probe()
        except SandboxError as exc:
            error = exc.message
        detail = f"{_bwrap_version(path)} at {path}"
        features.append(Feature("bubblewrap", error is None,
                                detail if error is None else f"{detail}; probe failed: {error}",
                                "" if error is None else "see the namespaces above"))
    auto = "bwrap" if features[-1].active else "process"
    features.append(Feature("sandbox (auto)", auto == "bwrap", f"'auto' chooses {auto}",
                            "" if auto == "bwrap" else "install bubblewrap and enable namespaces"))
    return features

