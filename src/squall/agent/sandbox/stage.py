"""Start a sandbox as its tenant's unprivileged host uid: the step between fork and exec.

A root platform never lets a sandbox run as host root: the zygote's launcher (bwrap, or the
Python zygote itself for the ``process`` sandbox) runs as ``SandboxSpec.uid``. That uid cannot
reach what the sandbox must read when it lies under a private directory (a Python install under
/root, a data dir under a 0700 temp dir), and an unprivileged bwrap resolves its bind sources
with its own rights. So, in the forked child, while it is still root, ``Launch`` does::

    join the zygote's cgroup          (write 0 to cgroup.procs: bwrap and the zygote are in it
                                       before any function code runs)
    unshare(CLONE_NEWNS), / rslave    (a mount namespace of this child only: the host sees none
                                       of what follows)
    open each source (O_PATH)         (before /tmp is covered: sources may live under /tmp)
    tmpfs on /tmp, mode 0755          (the stage: a fresh, traversable directory)
    bind each source read-only to /tmp/.squall/<i>
    chdir /, setgroups [], setresgid, setresuid (uid)
    exec                              (bwrap then reads only the stage, as the sandbox uid)

Nothing under the stage is writable, and after bwrap's pivot_root the stage is gone from the
sandbox's view. This runs once per zygote (per version), never on the instance fork path. It
costs well under a millisecond; the cgroup was made ahead, off the event loop.

The code here runs in a child forked from a threaded process, so it calls only os functions and
ctypes functions resolved at import, takes no lock, and never returns an exception to Python's
subprocess machinery: a failure is written to stderr and the child exits with ``SETUP_FAILED``.
"""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from squall.errors import SandboxError

STAGE_MOUNT = "/tmp"
STAGE = "/tmp/.squall"
SETUP_FAILED = 125
CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p)
_libc.unshare.argtypes = (ctypes.c_int,)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def host_ids(uid: int) -> tuple[int, int] | None:
    """(uid, gid) the sandbox must run as, or None when this platform is not root (it cannot
    switch, and its own uid is already unprivileged). A tenant's gid is its uid."""
    if os.geteuid() != 0:
        return None
    if uid <= 0:
        raise SandboxError(f"refusing to run a sandbox as host uid {uid}: never root")
    return uid, uid


@dataclass(frozen=True)
class Launch:
    """The child's steps before exec (see the module docstring). Call it as ``preexec_fn``."""

    uid: int
    gid: int
    binds: tuple[tuple[str, str], ...] = ()      # (host path, staged path under STAGE)
    cgroup_procs: tuple[str, ...] = ()           # cgroup.procs files the child joins
    stage_mode: int = 0o755
    stage_mb: int = 1

    def __call__(self) -> None:
        try:
            self._join_cgroup()
            if self.binds:
                self._stage()
            os.chdir("/")
            os.setgroups([])
            os.setresgid(self.gid, self.gid, self.gid)
            os.setresuid(self.uid, self.uid, self.uid)
        except BaseException as exc:  # never let the child fall back into the platform's code
            os.write(2, f"squall-sandbox: setup before exec failed: {exc}\n".encode())
            os._exit(SETUP_FAILED)

    def _join_cgroup(self) -> None:
        for procs in self.cgroup_procs:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    def _stage(self) -> None:
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _check(_libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None), "make / a slave")
        fds = [os.open(host, os.O_PATH | os.O_CLOEXEC) for host, _ in self.binds]
        opts = f"mode={self.stage_mode:o},size={self.stage_mb}m".encode()
        _check(_libc.mount(b"squall-stage", STAGE_MOUNT.encode(), b"tmpfs",
                           MS_NOSUID | MS_NODEV, opts), "mount the stage")
        os.mkdir(STAGE, 0o755)
        for fd, (_, staged) in zip(fds, self.binds, strict=True):
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.mkdir(staged, 0o755)
            else:
                os.close(os.open(staged, os.O_WRONLY | os.O_CREAT, 0o444))
            _check(_libc.mount(f"/proc/self/fd/{fd}".encode(), staged.encode(), None,
                               MS_BIND | MS_REC, None), f"bind {staged}")
            _check(_libc.mount(None, staged.encode(), None,
                               MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None),
                   f"make {staged} read-only")
            os.close(fd)


def check_readable(paths: list[Path], uid: int, gid: int) -> None:
    """SandboxError unless each path's own mode lets ``uid`` read it (directories: list and
    enter). Only the top is checked (walking a dependency tree per start would be slow); the
    platform writes bundles and environments 0755/0644, so a failure here means a umask or a
    hand-made directory that keeps the sandbox out."""
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise SandboxError(f"the sandbox cannot use {path}: {exc.strerror}") from None
        need = 0o5 if stat.S_ISDIR(st.st_mode) else 0o4
        shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
        if (st.st_mode >> shift) & need != need:
            raise SandboxError(
                f"{path} (mode {stat.S_IMODE(st.st_mode):04o}, owner {st.st_uid}) is not "
                f"readable by the sandbox's host uid {uid}; make it world-readable "
                f"(chmod o+rX) or deploy with a umask of 022")


def reachable(path: Path) -> bool:
    """Whether any uid can reach ``path``: every directory above it searchable by others."""
    try:
        return all(os.stat(d).st_mode & 0o001 for d in Path(path).resolve().parents)
    except OSError:
        return False


def stage_binds(sources: list[Path]) -> tuple[tuple[str, str], ...]:
    """Each distinct source (resolved) gets ``STAGE/<i>``; nothing when every source is
    reachable as it is (staging then saves nothing and costs ~2 ms per zygote start)."""
    if all(reachable(src) for src in sources):
        return ()
    seen: dict[str, str] = {}
    for src in sources:
        host = str(Path(src).resolve())
        if host not in seen:
            seen[host] = f"{STAGE}/{len(seen)}"
    return tuple(seen.items())


def staged(binds: tuple[tuple[str, str], ...], host: str) -> str | None:
    """Where ``host`` (or the source containing it) is staged, or None."""
    for source, target in binds:
        if host == source or host.startswith(source.rstrip("/") + "/"):
            return target + host[len(source):]
    return None
