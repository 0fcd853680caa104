"""The ``bwrap`` sandbox: each version's zygote runs inside bubblewrap.

What the zygote sees (everything read-only except /tmp and /dev/shm)::

    /usr, /bin, /lib, /lib64, /sbin      the host's system dirs
    /etc/{passwd,hosts,resolv.conf,...}  a short list of files; never all of /etc (see below)
    <sys.base_prefix>                    the Python install in use, at its own path (it may live
                                         under /root: only that subtree is bound)
    /opt/squall/python/<i>               SandboxSpec.python_paths[i] (deps, then the runtime's)
    /var/task                            SandboxSpec.code_dir (Lambda's path)
    /proc (its own pid namespace), /dev (null, zero, urandom, ...), /tmp (tmpfs, ephemeral_mb)

Nothing else of the host exists: not /root, /home, the platform's data dir, nor other bundles.
``map_path`` turns a host path (code dir, python path, interpreter) into the path the zygote
must use; the zygote's argv and config must only contain mapped paths.

Namespaces: user, pid, ipc, uts, cgroup (if possible), mount, and net when network = "none".

Capabilities, and why the zygote keeps CAP_SYS_ADMIN: every instance needs its own /tmp, so the
forked instance unshares a mount namespace and mounts a tmpfs (runtime/harden.py), which needs
CAP_SYS_ADMIN. bwrap runs as root here, so it would otherwise keep *all* capabilities; we pass
``--cap-drop ALL --cap-add CAP_SYS_ADMIN --cap-add CAP_SETPCAP`` (SETPCAP lets the instance empty
its bounding set). This is safe because ``--uid``/``--disable-userns`` make bwrap move the zygote
into a second, nested user namespace after the mounts are set up: its capabilities are
capabilities in that inner namespace only, which owns no mount, pid, net, uts or ipc namespace.
So the zygote (which runs the function's import-time code) cannot remount /usr or /var/task
read-write, unmount anything, or touch the host; with CAP_SYS_ADMIN it can only make *new* mount
namespaces, in which the copied mounts are locked (read-only stays read-only, nothing can be
unmounted to reveal what is below). It cannot create user namespaces (--disable-userns). Each
instance then drops every capability, sets no_new_privs and installs the seccomp filter before it
runs any request.

Why not the whole /etc: the sandboxed processes still have host uid 0 (bwrap is started by root),
so any file that is bound in is readable whatever its mode; /etc/shadow must stay out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from squall.agent.sandbox.api import SandboxSpec, Usage
from squall.agent.sandbox.cgroups import CgroupLimits, Cgroups
from squall.errors import SandboxError

TASK_DIR = "/var/task"
PYTHON_DIR = "/opt/squall/python"
SANDBOX_UID = 993   # Lambda's sbx_user1051 uid
SANDBOX_GID = 990
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = (
    "/etc/passwd", "/etc/group", "/etc/hosts", "/etc/host.conf", "/etc/resolv.conf",
    "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/services", "/etc/protocols", "/etc/networks",
    "/etc/localtime", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
    "/etc/ssl", "/etc/ca-certificates", "/etc/pki", "/etc/mime.types", "/etc/os-release",
    "/etc/alternatives", "/etc/debian_version", "/etc/timezone", "/etc/python3",
)
DEFAULT_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LAMBDA_TASK_ROOT": TASK_DIR,
}
SHM_MB = 64
NOFILE = 1024  # Lambda's file descriptor limit
# cgroups made ahead per version: enough for back-to-back cold starts, few enough to not
# clutter the hierarchy (each is three empty directories on v1)
SPARE_CGROUPS = 2


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class BwrapSandbox:
    backend = "bwrap"

    def __init__(self, spec: SandboxSpec, bwrap: str, cgroups: Cgroups | None,
                 tmpfs_size: bool, cpu_quota: bool = False) -> None:
        self.spec = spec
        self._bwrap = bwrap
        self._cgroups = cgroups
        self._tmpfs_size = tmpfs_size
        self._cpu_quota = cpu_quota
        self._groups: dict[str, str] = {}   # instance id -> cgroup name
        # prepared by prepare() on the agent's worker thread, taken by place() on the loop;
        # deque append/popleft are atomic, so no lock is needed
        self._spares: deque[str] = deque()
        self._dead = False
        self._binds: list[tuple[Path, str]] = [(Path(spec.code_dir).resolve(), TASK_DIR)] + [
            (Path(p).resolve(), f"{PYTHON_DIR}/{i}") for i, p in enumerate(spec.python_paths)
        ]
        self._identity = [Path(sys.base_prefix).resolve()] + [Path(d) for d in SYSTEM_DIRS]

    # -- paths -----------------------------------------------------------------------------

    def _map(self, path: Path) -> str | None:
        for host, inside in self._binds:
            if _under(path, host):
                return inside + str(path)[len(str(host)):]
        for root in self._identity:
            if _under(path, root):
                return str(path)
        return None

    def map_path(self, host_path: str | os.PathLike[str]) -> str:
        """The path under which ``host_path`` is visible inside this sandbox.

        The interpreter of a venv (a symlink into the base install) maps to its target.
        Raises SandboxError for a path the sandbox does not contain.
        """
        path = Path(os.path.abspath(host_path))
        mapped = self._map(path)
        if mapped is None:
            mapped = self._map(Path(os.path.realpath(path)))
        if mapped is None:
            raise SandboxError(f"{host_path} is not visible inside the sandbox")
        return mapped

    # -- the Sandbox contract --------------------------------------------------------------

    def zygote_argv(self, argv: list[str], pass_fds: list[int]) -> list[str]:
        """bwrap + options + argv (argv[0] mapped). bwrap leaves inherited fds open, so the fds
        in ``pass_fds`` reach the zygote with the same numbers."""
        for fd in pass_fds:
            os.set_inheritable(fd, True)
        limits = self.spec.limits
        args = [self._bwrap, "--unshare-user", "--uid", str(SANDBOX_UID), "--gid",
                str(SANDBOX_GID), "--disable-userns", "--unshare-pid", "--unshare-ipc",
                "--unshare-uts", "--hostname", "squall", "--unshare-cgroup-try",
                "--die-with-parent", "--new-session"]
        if limits.network == "none":
            args.append("--unshare-net")
        if os.geteuid() == 0:
            args += ["--cap-drop", "ALL", "--cap-add", "CAP_SYS_ADMIN",
                     "--cap-add", "CAP_SETPCAP"]
        args += self._mount_args()
        args.append("--clearenv")
        env = {**DEFAULT_ENV, **self.spec.env}
        for key, value in env.items():
            args += ["--setenv", key, value]
        args += ["--chdir", TASK_DIR, "--"]
        exe = self.map_path(argv[0]) if os.path.isabs(argv[0]) else argv[0]
        return [*args, exe, *argv[1:]]

    def _mount_args(self) -> list[str]:
        args: list[str] = []
        for d in SYSTEM_DIRS:
            if os.path.islink(d):
                args += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                args += ["--ro-bind", d, d]
        for f in ETC_FILES:
            args += ["--ro-bind-try", f, f]
        base = str(Path(sys.base_prefix).resolve())
        if not any(_under(Path(base), Path(d)) for d in SYSTEM_DIRS):
            args += ["--ro-bind", base, base]
        for host, inside in self._binds:
            args += ["--ro-bind", str(host), inside]
        args += ["--dev", "/dev", "--proc", "/proc"]
        if self._tmpfs_size:
            args += ["--size", str(self.spec.limits.ephemeral_mb * 1024 * 1024)]
        args += ["--tmpfs", "/tmp", "--remount-ro", "/"]
        return args

    def harden_opts(self) -> dict[str, Any]:
        rlimits: dict[str, int] = {"RLIMIT_NOFILE": NOFILE}
        if self._cgroups is None:
            # Without a memory cgroup, an address-space cap is the only memory bound (see
            # process.py for the 2x + 512 MB headroom).
            rlimits["RLIMIT_AS"] = (self.spec.limits.memory_mb * 2 + 512) * 1024 * 1024
        return {
            "rlimits": rlimits,
            "private_tmp_mb": self.spec.limits.ephemeral_mb,
            "private_shm_mb": SHM_MB,
            "drop_caps": True,
            "no_new_privs": True,
            "seccomp": True,
        }

    def place(self, instance_id: str, pid: int) -> None:
        if self._dead:
            raise SandboxError("sandbox was destroyed")
        if self._cgroups is None:
            return
        try:
            group = self._spares.popleft()
        except IndexError:
            group = Cgroups.group_name(self.spec.key, instance_id)
            ready = False
        else:
            ready = True
        try:
            if ready:
                self._cgroups.attach(group, pid)
            else:
                self._cgroups.create(group, self._limits(), pid)
        except OSError as exc:
            self._cgroups.remove(group, wait_s=0.0)
            raise SandboxError(f"cannot place instance {instance_id} in its cgroup: {exc}") \
                from exc
        self._groups[instance_id] = group

    def _limits(self) -> CgroupLimits:
        limits = self.spec.limits
        return CgroupLimits(limits.memory_mb, limits.pids, self._cpu_quota)

    def prepare(self) -> None:
        """Create cgroups for the next instances ahead (called off the event loop), so that
        ``place`` is a pid write per hierarchy instead of a slow mkdir."""
        if self._cgroups is None:
            return
        while not self._dead and len(self._spares) < SPARE_CGROUPS:
            group = Cgroups.group_name(self.spec.key, f"spare-{uuid.uuid4().hex[:12]}")
            try:
                self._cgroups.prepare(group, self._limits())
            except OSError:
                self._cgroups.remove(group, wait_s=0.0)
                return  # place() falls back to creating its own
            self._spares.append(group)

    def usage(self, instance_id: str) -> Usage:
        group = self._groups.get(instance_id)
        if group is None or self._cgroups is None:
            return Usage()
        return self._cgroups.usage(group)

    def release(self, instance_id: str) -> None:
        group = self._groups.pop(instance_id, None)
        if group is not None and self._cgroups is not None:
            self._cgroups.remove(group)
            self._cgroups.retry_busy()

    def destroy(self) -> None:
        self._dead = True
        for instance_id in list(self._groups):
            self.release(instance_id)
        while self._spares and self._cgroups is not None:
            self._cgroups.remove(self._spares.popleft(), wait_s=0.0)


def tmpfs_size_supported(bwrap: str) -> bool:
    """``--size`` for --tmpfs arrived in bubblewrap 0.5."""
    try:
        out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--size" in out.stdout


class BwrapBackend:
    name = "bwrap"

    def __init__(self, bwrap: str | None = None, cgroups: Cgroups | None = None,
                 use_cgroups: bool = True, cpu_quota: bool = False) -> None:
        """``cgroups``: a shared manager; when None and ``use_cgroups``, one is opened here
        (which also removes stale groups of dead platforms). ``cgroup_reason`` says why there
        is none."""
        found = bwrap or shutil.which("bwrap")
        if found is None:
            raise SandboxError("bubblewrap (bwrap) is not installed")
        self.bwrap = found
        self.cgroup_reason = ""
        if cgroups is None and use_cgroups:
            cgroups, self.cgroup_reason = Cgroups.open()
        elif cgroups is None:
            self.cgroup_reason = "cgroups disabled"
        self.cgroups = cgroups
        self.cpu_quota = cpu_quota
        self.tmpfs_size = tmpfs_size_supported(found)

    def create(self, spec: SandboxSpec) -> BwrapSandbox:
        return BwrapSandbox(spec, self.bwrap, self.cgroups, self.tmpfs_size, self.cpu_quota)

    def probe(self) -> str | None:
        """None when a sandbox with our exact options starts here, else bwrap's error."""
        spec = SandboxSpec(key="probe", code_dir=Path("/usr"), python_paths=[], env={})
        argv = self.create(spec).zygote_argv(["/bin/true"], [])
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        return None if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")

    def close(self) -> None:
        """Remove this platform's cgroup subtree (at shutdown)."""
        if self.cgroups is not None:
            self.cgroups.close()
