"""Per-instance hardening, applied in the forked child before it serves anything.

``apply`` takes the ``harden`` map the platform put in the fork request (built by the sandbox's
``harden_opts``). Every step is optional so the same runtime serves the ``process`` and ``bwrap``
sandboxes. Keys, in the order they are applied:

- ``rlimits``: {"RLIMIT_NAME": value} set as soft = hard (RLIMIT_CORE is always 0).
- ``private_tmp_mb``: N -> a new mount namespace with a fresh tmpfs of N MiB on /tmp, so an
  instance never sees its siblings' files. Needs CAP_SYS_ADMIN in the sandbox's user namespace.
- ``private_shm_mb``: N -> and a fresh tmpfs of N MiB on /dev/shm (with ``private_tmp_mb``).
- ``drop_caps``: true -> empty bounding, ambient, permitted, effective and inheritable sets.
- ``no_new_privs``: true -> PR_SET_NO_NEW_PRIVS (also implied by ``seccomp``).
- ``seccomp``: true -> the deny-list filter of runtime/seccomp.py; always last, since it forbids
  the mount and unshare calls the steps before it need.

Each step that fails raises OSError; the instance then exits before saying hello, and the platform
reports a sandbox error instead of running a function with weaker isolation than it asked for.
The whole ``apply`` costs tens of microseconds (it runs on every cold start).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
from typing import Any

from squall.runtime import seccomp

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
CAP_SETPCAP = 8
PR_CAP_AMBIENT_CLEAR_ALL = 4
CLONE_NEWNS = 0x00020000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REC = 0x4000
MS_SLAVE = 0x80000
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p)


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _bounding_caps() -> list[int]:
    """The capabilities in our bounding set, read in the zygote (which imports this module): an
    instance then drops only those (two under bwrap) instead of probing all ~41."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    mask = int(line.split()[1], 16)
                    return [c for c in range(64) if mask >> c & 1]
    except OSError:
        pass
    return list(range(41))  # up to CAP_CHECKPOINT_RESTORE (40), the last one as of Linux 6.x


# Read in the zygote (which imports this module) so instances do not open a file to learn it.
# CAP_SETPCAP, which dropping needs, goes last.
_BOUNDING = sorted(_bounding_caps(), key=lambda c: c == CAP_SETPCAP)
PR_CAPBSET_READ = 23
PR_GET_NO_NEW_PRIVS = 39


def _warm() -> None:
    """Call each libc function once, harmlessly, in the zygote.

    ctypes resolves and sets up a foreign function on its first call; done here (the zygote
    imports this module) that cost is paid once instead of in every forked instance, where it
    was most of a ~2 ms ``apply``.
    """
    _libc.prctl(PR_CAPBSET_READ, 0, 0, 0, 0)
    _libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
    _libc.unshare(0)  # no flags: a no-op
    _libc.mount(None, None, None, 0, None)  # EFAULT
    _libc.capget(ctypes.byref(_CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)),
                 ctypes.byref((_CapData * 2)()))
    resource.getrlimit(resource.RLIMIT_CORE)


_warm()


def _mount_tmpfs(target: str, size_mb: int) -> None:
    data = f"size={int(size_mb)}m,mode=1777".encode()
    _check(_libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, data),
           f"mount {target}")


def private_tmp(size_mb: int, shm_mb: int = 0) -> None:
    """A mount namespace of our own with an empty tmpfs on /tmp.

    The new namespace is owned by the sandbox's inner user namespace, so the mounts it copies
    from the zygote are locked (read-only stays read-only) and turn into slaves: our tmpfs does
    not propagate back to the zygote or to siblings.
    """
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    if os.geteuid() == 0:
        # Real root (no user namespace, e.g. a process sandbox): our namespace is not less
        # privileged than the host's, so shared mounts stay shared; make them slaves so the
        # tmpfs cannot propagate back. Inside bwrap (uid 993) this is already so, and skipped.
        _check(_libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "make / a slave")
    _mount_tmpfs("/tmp", size_mb)
    if shm_mb and os.path.isdir("/dev/shm"):
        _mount_tmpfs("/dev/shm", shm_mb)


def drop_capabilities() -> None:
    """No capabilities left, and none an execve could give back."""
    for cap in _BOUNDING:
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == errno.EPERM:
                break  # no CAP_SETPCAP (an unprivileged sandbox): the set cannot be changed
            _check(-1, f"PR_CAPBSET_DROP {cap}")
    # EINVAL on kernels without ambient capabilities: nothing there to clear.
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def apply_zygote(opts: dict[str, Any]) -> None:
    """The zygote's own fence, applied to itself before it imports any function code.

    ``seccomp``: "zygote" -> the zygote variant of the filter (its instances can still mount
    their private /tmp), "full" -> the instances' filter, absent -> none. Raises OSError.
    """
    kind = opts.get("seccomp")
    if kind == "zygote":
        seccomp.install(seccomp.build_filter(zygote=True))
    elif kind == "full":
        seccomp.install()


def apply(opts: dict[str, Any]) -> None:
    # The zygote is our parent; when it dies we die (the zygote itself dies with the platform).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for name, value in opts.get("rlimits", {}).items():
        limit = getattr(resource, name)
        hard = resource.getrlimit(limit)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)  # lowering is always allowed, raising is not
        resource.setrlimit(limit, (value, value))
    tmp_mb = opts.get("private_tmp_mb")
    if tmp_mb:
        private_tmp(int(tmp_mb), int(opts.get("private_shm_mb", 0)))
    if opts.get("drop_caps"):
        drop_capabilities()
    if opts.get("no_new_privs"):
        seccomp.set_no_new_privs()
    if opts.get("seccomp"):
        seccomp.install()
