"""Per-instance cgroups: memory, pids and a CPU share proportional to memory, like Lambda.

Layout (v1: the same tree under each of memory/, pids/ and cpu/; v2: one tree)::

    /sys/fs/cgroup[/<controller>]/squall/<platform pid>.<start time>/<sandbox key>.<instance>

The per-platform level lets several platforms share a machine, and lets a starting platform tell
a dead one's leftovers (owner pid gone, or reused with another start time) from a live one's:
``Cgroups.open`` kills what is left in the stale ones and removes them.

A Python instance is born in its group: between forks its zygote sits in the group prepared
for the next instance (the sandbox's ``arm``), so the child starts under its limits with no
migration on the cold path (a migration waits for an RCU grace period; see ``attach``); other
instances are moved into theirs before they serve anything. Pages an instance shares with its
zygote stay charged to where they were first touched, so ``memory_mb`` limits what the instance
allocates itself. tmpfs pages written to its private /tmp are charged to it too.

The zygote has a group of its own per version, ``<sandbox key>.zygote``, which its launcher joins
before exec (so bwrap, bwrap's init and the zygote are all in it before any function code runs):
memory.max = the version's memory_mb (import-time code is held to the function's memory, as in
Lambda's init phase), pids.max = the platform's pids limit, CPU share as an instance of that
memory. That group is the version's: it holds the version's shared, imported pages, and an
instance counts its own pages in its own group; the group goes when the version's sandbox does.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from squall.agent.sandbox.api import Usage

MOUNT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu")
V2_CONTROLLERS = ("memory", "pids", "cpu")
LAMBDA_MB_PER_VCPU = 1769
CFS_PERIOD_US = 100_000
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def cpu_shares(memory_mb: int) -> int:
    """v1 cpu.shares: 1024 (one default share) per 1769 MB, the memory at which Lambda gives one
    vCPU. 128 MB -> 74, 1769 MB -> 1024, 3538 MB -> 2048. Floor 64 so a 128 MB instance is
    never starved to the kernel's minimum of 2 by a neighbour at 10 GB (5924 shares)."""
    return max(64, min(262_144, round(1024 * memory_mb / LAMBDA_MB_PER_VCPU)))


def cpu_weight(memory_mb: int) -> int:
    """v2 cpu.weight: 100 (the default) per 1769 MB; 128 MB -> 7, floored at 10 for the same
    reason as ``cpu_shares`` (the range is 1..10000); 10240 MB -> 579."""
    return max(10, min(10_000, round(100 * memory_mb / LAMBDA_MB_PER_VCPU)))


def cpu_quota_us(memory_mb: int, period_us: int = CFS_PERIOD_US) -> int:
    """CFS quota per period, Lambda's hard cap: 128 MB -> 7,236 us of every 100,000 us (7% of a
    CPU); 1769 MB -> one CPU; 3538 MB -> two. Floor 5% so an import-heavy start is not glacial."""
    return max(period_us // 20, round(period_us * memory_mb / LAMBDA_MB_PER_VCPU))


@dataclass(frozen=True)
class CgroupLimits:
    memory_mb: int
    pids: int
    cpu_quota: bool = False


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _field(text: str, key: str) -> int:
    """The value of ``key N`` in a flat keyed file (memory.events, oom_control, pids.events)."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value.strip() or 0)
    return 0


def _start_time(pid: int) -> str | None:
    stat = _read(Path(f"/proc/{pid}/stat"))
    if not stat:
        return None
    # Field 22 (starttime); the command name (field 2) may contain spaces, so split after ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def _procs(group: Path) -> list[int]:
    return [int(p) for p in _read(group / "cgroup.procs").split()]


def detect_version() -> int:
    """2 on a unified hierarchy, 1 when the v1 controllers we need are mounted, 0 otherwise."""
    if (MOUNT / "cgroup.controllers").exists():
        return 2
    if all((MOUNT / c / "cgroup.procs").exists() for c in V1_CONTROLLERS):
        return 1
    return 0


class Cgroups:
    """The platform's cgroup subtree. Create it with ``open``; every method is synchronous and
    touches only small files in cgroupfs (microseconds each)."""

    def __init__(self, version: int, bases: dict[str, Path]) -> None:
        self.version = version
        self._bases = bases        # controller (or "unified") -> this platform's directory
        self._busy: set[str] = set()

    @classmethod
    def open(cls, name: str = "squall") -> tuple[Cgroups | None, str]:
        """(manager, "") when usable, else (None, the reason) so callers fall back to rlimits."""
        if os.geteuid() != 0:
            return None, "not running as root: cannot create cgroups (limits fall back to rlimits)"
        version = detect_version()
        if version == 0:
            return None, ("no usable cgroup hierarchy: neither cgroup v2 at /sys/fs/cgroup nor "
                          f"v1 {', '.join(V1_CONTROLLERS)} mounted")
        me = f"{os.getpid()}.{_start_time(os.getpid())}"
        roots = ({"unified": MOUNT / name} if version == 2
                 else {c: MOUNT / c / name for c in V1_CONTROLLERS})
        try:
            if version == 2:
                cls._enable_v2(MOUNT)
            for root in roots.values():
                root.mkdir(exist_ok=True)
                if version == 2:
                    cls._enable_v2(root)
            bases = {k: root / me for k, root in roots.items()}
            for base in bases.values():
                base.mkdir(exist_ok=True)
                if version == 2:
                    cls._enable_v2(base)
        except OSError as exc:
            return None, f"cannot set up cgroup v{version} tree under {name}/: {exc}"
        mgr = cls(version, bases)
        mgr.sweep_stale(roots)
        return mgr, ""

    @staticmethod
    def _enable_v2(group: Path) -> None:
        wanted = set(V2_CONTROLLERS) & set(_read(group / "cgroup.controllers").split())
        missing = set(V2_CONTROLLERS) - wanted
        if {"memory", "pids"} & missing:
            raise OSError(errno.ENOTSUP, f"{group} lacks controllers {sorted(missing)}")
        enabled = set(_read(group / "cgroup.subtree_control").split())
        if wanted - enabled:
            # EBUSY here means the group has processes of its own (v2's no-internal-process
            # rule): run squall in a delegated cgroup whose processes sit in a leaf.
            _write(group / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted - enabled))

    def sweep_stale(self, roots: dict[str, Path]) -> int:
        """Remove the subtrees of platforms that no longer run; returns how many were removed."""
        removed = 0
        for root in roots.values():
            for child in root.iterdir() if root.is_dir() else ():
                if not child.is_dir():
                    continue
                pid, _, start = child.name.partition(".")
                if pid.isdigit() and _start_time(int(pid)) == start:
                    continue  # a live platform (maybe us)
                try:
                    groups = sorted((p for p in child.rglob("*") if p.is_dir()), reverse=True)
                except FileNotFoundError:
                    # the exiting platform's own teardown, or another starting one's sweep,
                    # removed part of it as we walked: a CI run's `squall up` died of this
                    continue
                for group in groups:
                    self._kill_all(group)
                    self._rmdir(group)
                self._kill_all(child)
                removed += self._rmdir(child)
        return removed

    def _dirs(self, group: str) -> list[Path]:
        return [base / group for base in self._bases.values()]

    @staticmethod
    def group_name(key: str, instance_id: str) -> str:
        name = _SAFE.sub("_", f"{key}.{instance_id}")
        return name[:200]

    def create(self, group: str, limits: CgroupLimits, pid: int) -> None:
        """Make ``group`` with ``limits`` and move ``pid`` (a host pid) into it."""
        self.prepare(group, limits)
        self.attach(group, pid)

    def procs_files(self, group: str) -> list[str]:
        """The cgroup.procs file of ``group`` in each hierarchy: a process joins the group by
        writing 0 to each (the zygote's launcher does, before exec)."""
        return [str(d / "cgroup.procs") for d in self._dirs(group)]

    def attach(self, group: str, pid: int) -> None:
        """Move ``pid`` into a prepared ``group``: a write per hierarchy, but a migration takes
        the kernel's global cgroup_threadgroup_rwsem for writing, which waits for an RCU grace
        period unless another migration happened just before: 0.1 ms back to back, 5-20 ms
        after a second of idle on this VM. Keep it off the cold path (see ``holds``)."""
        for d in self._dirs(group):
            _write(d / "cgroup.procs", str(pid))

    def holds(self, group: str, pid: int) -> bool:
        """Whether ``pid`` is in ``group`` in every hierarchy: a process forked by one that sat
        there was born in it (fork inherits the parent's cgroups with no migration). One read
        of /proc/PID/cgroup, whose lines are ``id:controllers:path`` (v2: ``0::path``)."""
        where: dict[str, str] = {}
        for line in _read(Path(f"/proc/{pid}/cgroup")).splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else ["unified"]:
                where[c] = path
        return all(where.get(key, "").endswith(f"/{base.name}/{group}")
                   for key, base in self._bases.items())

    def prepare(self, group: str, limits: CgroupLimits) -> None:
        """Make ``group`` with ``limits``, empty. mkdir of a memory cgroup takes from 1 to
        more than 15 ms on this kernel (it contends with rmdir), hence doing it ahead."""
        mem = limits.memory_mb * 1024 * 1024
        for d in self._dirs(group):
            d.mkdir(exist_ok=True)
        if self.version == 1:
            m, p, c = (self._bases[k] / group for k in V1_CONTROLLERS)
            _write(m / "memory.limit_in_bytes", str(mem))
            if (m / "memory.memsw.limit_in_bytes").exists():  # only with swap accounting
                _write(m / "memory.memsw.limit_in_bytes", str(mem))
            _write(p / "pids.max", str(limits.pids))
            _write(c / "cpu.shares", str(cpu_shares(limits.memory_mb)))
            if limits.cpu_quota:
                _write(c / "cpu.cfs_quota_us", str(cpu_quota_us(limits.memory_mb)))
            return
        d = self._bases["unified"] / group
        _write(d / "memory.max", str(mem))
        if (d / "memory.swap.max").exists():
            _write(d / "memory.swap.max", "0")
        _write(d / "pids.max", str(limits.pids))
        if (d / "cpu.weight").exists():
            _write(d / "cpu.weight", str(cpu_weight(limits.memory_mb)))
            if limits.cpu_quota:
                _write(d / "cpu.max", f"{cpu_quota_us(limits.memory_mb)} {CFS_PERIOD_US}")

    def usage(self, group: str) -> Usage:
        if self.version == 1:
            m, p = self._bases["memory"] / group, self._bases["pids"] / group
            peak = _read(m / "memory.max_usage_in_bytes").strip()
            oom = _field(_read(m / "memory.oom_control"), "oom_kill")
        else:
            m = p = self._bases["unified"] / group
            peak = _read(m / "memory.peak").strip()
            oom = _field(_read(m / "memory.events"), "oom_kill")
        return Usage(max_memory_bytes=int(peak or 0), oom_killed=oom > 0,
                     pids_limit_hit=_field(_read(p / "pids.events"), "max") > 0)

    def pids(self, group: str) -> list[int]:
        key = "pids" if self.version == 1 else "unified"
        return _procs(self._bases[key] / group)

    def _kill_all(self, d: Path) -> None:
        if (d / "cgroup.kill").exists():  # v2, Linux 5.14+: atomic, no fork race
            try:
                _write(d / "cgroup.kill", "1")
            except OSError:
                pass
            return
        if (d / "pids.max").exists():
            try:
                _write(d / "pids.max", "0")  # nothing new can fork while we kill
            except OSError:
                pass
        for _ in range(100):
            procs = _procs(d)
            if not procs:
                return
            for pid in procs:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    @staticmethod
    def _rmdir(d: Path, wait_s: float = 0.0) -> int:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                d.rmdir()
                return 1
            except FileNotFoundError:
                return 0
            except OSError as exc:
                # EBUSY while killed tasks finish exiting
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    return 0
                time.sleep(0.002)

    def remove(self, group: str, wait_s: float = 1.0) -> bool:
        """Kill every process left in ``group`` (background children included) and remove it.
        True when gone; otherwise it is retried by later calls (``retry_busy``)."""
        gone = True
        for d in self._dirs(group):
            if d.exists():
                self._kill_all(d)
                if not self._rmdir(d, wait_s) and d.exists():
                    gone = False
        if gone:
            self._busy.discard(group)
        else:
            self._busy.add(group)
        return gone

    def retry_busy(self) -> None:
        for group in list(self._busy):
            self.remove(group, wait_s=0.0)

    def close(self) -> None:
        """Remove this platform's whole subtree (at shutdown)."""
        for base in self._bases.values():
            if not base.exists():
                continue
            for d in sorted((p for p in base.rglob("*") if p.is_dir()), reverse=True):
                self._kill_all(d)
                self._rmdir(d, 1.0)
            self._rmdir(base, 1.0)
