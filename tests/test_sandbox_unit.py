"""The sandbox pieces with real processes: seccomp, harden, cgroups, the bwrap argv."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest

import squall
from squall.agent.sandbox.api import Limits, SandboxSpec
from squall.agent.sandbox.binary import find
from squall.agent.sandbox.bwrap import BwrapBackend, BwrapSandbox
from squall.agent.sandbox.cgroups import CgroupLimits, Cgroups, cpu_quota_us, cpu_shares
from squall.runtime import harden, seccomp

RUNTIME_PATHS = sorted({Path(squall.__file__).parent.parent, Path(msgpack.__file__).parent.parent})


def in_child(fn: Callable[[], object]) -> object:
    """Run ``fn`` in a forked child and return what it returned (JSON over a pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        try:
            out: object = {"ok": fn()}
        except BaseException as exc:
            out = {"exc": repr(exc)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert "exc" not in result, result["exc"]
    return result["ok"]


def _errno_of(ret: int) -> int:
    return 0 if ret == 0 else ctypes.get_errno()


# -- seccomp ---------------------------------------------------------------------------------

def test_filter_shape() -> None:
    for machine in ("x86_64", "aarch64"):
        prog = seccomp.build_filter(machine)
        assert len(prog) % 8 == 0 and 40 < len(prog) // 8 < 100
    with pytest.raises(seccomp.SeccompError):
        seccomp.build_filter("mips")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers below are x86_64")
def test_seccomp_denies_in_a_real_child() -> None:
    def probe() -> dict[str, int]:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        seccomp.install()
        out = {
            "unshare_ns": _errno_of(libc.unshare(0x00020000)),
            "unshare_user": _errno_of(libc.unshare(0x10000000)),
            "mount": _errno_of(libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)),
            "ptrace": _errno_of(libc.ptrace(0, 0, None, None)),       # PTRACE_TRACEME
            "bpf": _errno_of(libc.syscall(321, 0, None, 0)),
            "clone_newpid": _errno_of(libc.syscall(56, 0x20000000 | 17, 0, 0, 0, 0)),
            "clone3": _errno_of(libc.syscall(435, None, 0)),
            "x32_getpid": _errno_of(libc.syscall(0x40000000 | 39)),
        }
        # ordinary things still work: threads (glibc falls back from clone3), fork, files
        import threading

        t = threading.Thread(target=lambda: None)
        t.start()
        t.join()
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        out["fork_status"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        out["nnp"] = int(open("/proc/self/status").read().split("NoNewPrivs:")[1].split()[0])
        return out

    got = in_child(probe)
    assert got == {
        "unshare_ns": errno.EPERM, "unshare_user": errno.EPERM, "mount": errno.EPERM,
        "ptrace": errno.EPERM, "bpf": errno.EPERM, "clone_newpid": errno.EPERM,
        "clone3": errno.ENOSYS, "x32_getpid": errno.EPERM, "fork_status": 7, "nnp": 1,
    }


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers below are x86_64")
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs CAP_SYS_ADMIN")
def test_zygote_filter_allows_only_what_private_tmp_needs(tmp_path: Path) -> None:
    target = str(tmp_path).encode()

    def probe() -> dict[str, int]:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        # our own mount namespace, slave to the host's, so the tmpfs below cannot propagate out
        assert libc.unshare(0x00020000) == 0
        assert libc.mount(None, b"/", None, 0x4000 | 0x80000, None) == 0
        seccomp.install(seccomp.build_filter(zygote=True))
        return {
            "unshare_user": _errno_of(libc.unshare(0x10000000)),
            "unshare_ns_net": _errno_of(libc.unshare(0x00020000 | 0x40000000)),
            "unshare_ns": _errno_of(libc.unshare(0x00020000)),         # allowed
            "bind": _errno_of(libc.mount(b"/usr", target, None, 0x1000, None)),
            "remount": _errno_of(libc.mount(None, b"/", None, 0x20, None)),
            "tmpfs_plain": _errno_of(libc.mount(b"t", target, b"tmpfs", 0, None)),
            "tmpfs": _errno_of(libc.mount(b"t", target, b"tmpfs", 0x2 | 0x4, None)),  # allowed
            "ptrace": _errno_of(libc.ptrace(0, 0, None, None)),
            "fork_status": _fork_status(),
        }

    def _fork_status() -> int:
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    assert in_child(probe) == {
        "unshare_user": errno.EPERM, "unshare_ns_net": errno.EPERM, "unshare_ns": 0,
        "bind": errno.EPERM, "remount": errno.EPERM, "tmpfs_plain": errno.EPERM, "tmpfs": 0,
        "ptrace": errno.EPERM, "fork_status": 7,
    }


@pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs root")
def test_launch_drops_to_the_sandbox_uid_or_fails_loudly() -> None:
    from squall.agent.sandbox.stage import SETUP_FAILED, Launch

    ok = subprocess.run(["/bin/sh", "-c", "id -u; id -g; id -G"], capture_output=True,
                        text=True, preexec_fn=Launch(123_456, 123_456), timeout=10)
    assert ok.stdout.split() == ["123456", "123456", "123456"]   # no supplementary groups
    bad = subprocess.run(["/bin/true"], capture_output=True, text=True, timeout=10,
                         preexec_fn=Launch(123_456, 123_456,
                                           cgroup_procs=("/nonexistent/cgroup.procs",)))
    assert bad.returncode == SETUP_FAILED
    assert "setup before exec failed" in bad.stderr


def test_harden_apply_without_optional_steps_sets_rlimits() -> None:
    def probe() -> list[int]:
        import resource

        harden.apply({"rlimits": {"RLIMIT_NOFILE": 256}})
        return [resource.getrlimit(resource.RLIMIT_CORE)[1],
                resource.getrlimit(resource.RLIMIT_NOFILE)[0]]

    assert in_child(probe) == [0, 256]


# -- cgroups -----------------------------------------------------------------------------------

def test_cpu_arithmetic() -> None:
    assert cpu_shares(1769) == 1024
    assert cpu_shares(3538) == 2048
    assert cpu_shares(128) == 74
    assert cpu_shares(1) == 64          # floor
    assert cpu_quota_us(1769) == 100_000
    assert cpu_quota_us(128) == 7236


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    mgr, reason = Cgroups.open(name="squall-test")
    if mgr is None:
        pytest.skip(f"cgroups unavailable: {reason}")
    yield mgr
    mgr.close()


def _wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _gated_child(code: str) -> subprocess.Popen[str]:
    """A python child that waits for a line on stdin before running ``code``."""
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()\n" + code],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_cgroup_memory_limit_oom_and_usage(cgroups: Cgroups) -> None:
    child = _gated_child("b = []\nwhile True: b.append(bytearray(8 << 20))\n")
    cgroups.create("k.oom", CgroupLimits(memory_mb=64, pids=16), child.pid)
    assert cgroups.pids("k.oom") == [child.pid]
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.wait(timeout=30) == -9
    usage = cgroups.usage("k.oom")
    assert usage.oom_killed
    assert 48 << 20 < usage.max_memory_bytes <= 64 << 20
    assert cgroups.remove("k.oom")


def test_cgroup_pids_limit_and_cleanup_kills_leftovers(cgroups: Cgroups) -> None:
    code = textwrap.dedent("""
        import os, sys, time
        n = 0
        for _ in range(20):
            try:
                if os.fork() == 0:
                    os.execv("/bin/sleep", ["sleep", "300"])
                n += 1
            except OSError:
                break
        print(n, flush=True)
        sys.stdin.readline()
    """)
    child = _gated_child(code)
    cgroups.create("k.pids", CgroupLimits(memory_mb=256, pids=6), child.pid)
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("go\n")
    child.stdin.flush()
    assert int(child.stdout.readline()) == 5   # 6 pids: the parent and 5 sleepers
    usage = cgroups.usage("k.pids")
    assert usage.pids_limit_hit and not usage.oom_killed
    sleepers = [p for p in cgroups.pids("k.pids") if p != child.pid]
    assert len(sleepers) == 5
    assert cgroups.remove("k.pids")
    child.wait(timeout=10)
    _wait_for(lambda: not any(Path(f"/proc/{p}/cmdline").exists() and
                              b"sleep" in Path(f"/proc/{p}/cmdline").read_bytes()
                              for p in sleepers), "the sleepers to be killed")
    assert not [g for c in ("memory", "pids", "cpu")
                for g in (Path("/sys/fs/cgroup") / c / "squall-test").glob("*/k.pids")]
    assert cgroups.usage("k.pids").max_memory_bytes == 0   # unknown group: harmless


def test_stale_platform_groups_are_swept() -> None:
    if Cgroups.open(name="squall-test")[0] is None:
        pytest.skip("cgroups unavailable")
    # a platform that died: pid 1 exists but its start time is not this one
    roots = [Path("/sys/fs/cgroup") / c / "squall-test" for c in ("memory", "pids", "cpu")]
    if not all(r.parent.exists() for r in roots):
        pytest.skip("cgroup v1 layout not present")
    for r in roots:
        (r / "1.0" / "old.instance").mkdir(parents=True, exist_ok=True)
    mgr, _ = Cgroups.open(name="squall-test")
    assert mgr is not None
    try:
        assert not any((r / "1.0").exists() for r in roots)
    finally:
        mgr.close()


# -- bwrap -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def backend() -> Iterator[BwrapBackend]:
    binary, passed = find()
    if binary is None:
        pytest.skip(f"no usable bubblewrap: {passed}")
    be = BwrapBackend(binary, use_cgroups=False)
    error = be.probe()
    if error is not None:
        pytest.skip(f"bubblewrap cannot start a sandbox here: {error}")
    yield be


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    """A bundle dir as the platform makes them (0755; pytest's tmp_path is 0700, which the
    sandbox's unprivileged uid cannot read)."""
    d = tmp_path / "code"
    d.mkdir()
    d.chmod(0o755)
    return d


def run_inside(sb: BwrapSandbox, code: str, pass_fds: tuple[int, ...] = ()) -> dict[str, object]:
    """Run python ``code`` in the sandbox; it must print one JSON object on its last line."""
    boot = f"import sys; sys.path[:0] = {[sb.map_path(p) for p in RUNTIME_PATHS]!r}\n"
    argv = sb.zygote_argv([sys.executable, "-I", "-S", "-c", boot + textwrap.dedent(code)],
                          list(pass_fds))
    env = sb.zygote_env()
    # the environment (secrets included) never goes on bwrap's command line: host users read it
    assert not any(f"{k}={v}" in argv or v in argv for k, v in sb.spec.env.items())
    proc = subprocess.run(argv, pass_fds=pass_fds, capture_output=True, text=True, timeout=60,
                          env=env, preexec_fn=sb.zygote_launch())
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_bwrap_view_of_the_host(backend: BwrapBackend, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    code_dir = data_dir / "bundles" / "fn-a"
    other = data_dir / "bundles" / "fn-b"
    code_dir.mkdir(parents=True)
    other.mkdir(parents=True)
    (code_dir / "handler.py").write_text("X = 1\n")
    (other / "handler.py").write_text("SECRET = 1\n")
    (data_dir / "squall.db").write_text("db")
    marker = tempfile.NamedTemporaryFile(dir="/root", prefix="squall-marker-")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    spec = SandboxSpec(key="fn-a.1", code_dir=code_dir, python_paths=list(RUNTIME_PATHS),
                       env={"FN_VAR": "fn-secret-value"},
                       limits=Limits(network="none", ephemeral_mb=8))
    sb = backend.create(spec)
    r, w = os.pipe()
    try:
        got = run_inside(sb, f"""
            import json, os, socket
            def err(fn):
                try:
                    fn()
                    return 0
                except OSError as exc:
                    return exc.errno
            def connect():
                socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
            os.write({w}, b"fd ok")
            print(json.dumps({{
                "cwd": os.getcwd(), "task": sorted(os.listdir("/var/task")),
                "uid": os.getuid(), "pids": sorted(int(p) for p in os.listdir("/proc")
                                                   if p.isdigit()),
                "env": sorted(os.environ),
                "marker": os.path.exists({marker.name!r}),
                "data_dir": os.path.exists({str(data_dir)!r}),
                "other": os.path.exists({str(other / "handler.py")!r}),
                "home": os.path.exists("/home"),
                "shadow": os.path.exists("/etc/shadow"),
                "write_task": err(lambda: open("/var/task/x", "w")),
                "write_root": err(lambda: open("/x", "w")),
                "write_usr": err(lambda: open("/usr/x", "w")),
                "write_tmp": err(lambda: open("/tmp/x", "w").close()),
                "connect": err(connect),
            }}))
        """, pass_fds=(w,))
    finally:
        marker.close()
        listener.close()
    os.close(w)
    assert os.read(r, 100) == b"fd ok"
    os.close(r)
    assert got["cwd"] == "/var/task" and got["task"] == ["handler.py"]
    assert got["uid"] == 993
    assert got["pids"] == [1, 2]           # bwrap's init and us: nothing of the host
    assert "FN_VAR" in got["env"]  # type: ignore[operator]
    assert "SQUALL_SECRET_TEST" not in got["env"]  # type: ignore[operator]
    assert not got["marker"] and not got["data_dir"] and not got["other"]
    assert not got["home"] and not got["shadow"]
    assert got["write_task"] == errno.EROFS
    assert got["write_root"] == errno.EROFS
    assert got["write_usr"] == errno.EROFS
    assert got["write_tmp"] == 0
    assert got["connect"] in (errno.ECONNREFUSED, errno.ENETUNREACH)


def test_bwrap_zygote_privilege_cannot_touch_host_mounts(backend: BwrapBackend,
                                                         code_dir: Path) -> None:
    """The zygote keeps CAP_SYS_ADMIN (for instances' private /tmp); it must not be able to
    make the read-only binds writable, before or after a new mount namespace."""
    spec = SandboxSpec(key="fn", code_dir=code_dir, python_paths=list(RUNTIME_PATHS), env={})
    got = run_inside(backend.create(spec), """
        import ctypes, json
        libc = ctypes.CDLL(None, use_errno=True)
        MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
        def remount():
            r = libc.mount(None, b"/usr", None, MS_REMOUNT | MS_BIND, None)
            return 0 if r == 0 else ctypes.get_errno()
        def umount():
            r = libc.umount2(b"/var/task", 2)
            return 0 if r == 0 else ctypes.get_errno()
        out = {"remount": remount(), "umount": umount(),
               "userns": 0 if libc.unshare(0x10000000) == 0 else ctypes.get_errno()}
        libc.unshare(0x20000)
        out["remount_newns"] = remount()
        out["umount_newns"] = umount()
        print(json.dumps(out))
    """)
    assert got["remount"] == errno.EPERM and got["umount"] == errno.EPERM
    assert got["remount_newns"] == errno.EPERM and got["umount_newns"] in (errno.EPERM,
                                                                           errno.EINVAL)
    assert got["userns"] in (errno.ENOSPC, errno.EPERM)   # --disable-userns


def test_instances_get_private_tmp_and_no_capabilities(backend: BwrapBackend,
                                                       code_dir: Path) -> None:
    spec = SandboxSpec(key="fn", code_dir=code_dir, python_paths=list(RUNTIME_PATHS), env={},
                       limits=Limits(ephemeral_mb=4))
    sb = backend.create(spec)
    got = run_inside(sb, f"""
        import json, os
        from squall.runtime import harden
        open("/tmp/zygote-file", "w").close()
        def instance(name):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                harden.apply({sb.harden_opts()!r})
                open("/tmp/" + name, "w").close()
                try:
                    with open("/tmp/big", "wb") as f:
                        f.write(b"x" * (8 << 20))
                    full = 0
                except OSError as exc:
                    full = exc.errno
                status = open("/proc/self/status").read()
                caps = [l.split()[1] for l in status.splitlines()
                        if l.startswith(("CapEff", "CapPrm", "CapBnd", "CapAmb"))]
                os.write(w, json.dumps({{"tmp": sorted(os.listdir("/tmp")), "full": full,
                                        "caps": caps}}).encode())
                os._exit(0)
            os.close(w)
            out = json.loads(os.read(r, 4096))
            os.waitpid(pid, 0)
            return out
        a, b = instance("a"), instance("b")
        print(json.dumps({{"a": a, "b": b, "zygote": sorted(os.listdir("/tmp"))}}))
    """)
    assert got["a"]["tmp"] == ["a", "big"]          # type: ignore[index]
    assert got["b"]["tmp"] == ["b", "big"]          # type: ignore[index]
    assert got["zygote"] == ["zygote-file"]
    assert got["a"]["full"] == errno.ENOSPC         # type: ignore[index]
    assert set(got["a"]["caps"]) == {"0000000000000000"}   # type: ignore[index]


def test_map_path(backend: BwrapBackend, tmp_path: Path) -> None:
    spec = SandboxSpec(key="fn", code_dir=tmp_path, python_paths=list(RUNTIME_PATHS), env={})
    sb = backend.create(spec)
    assert sb.map_path(tmp_path) == "/var/task"
    assert sb.map_path(tmp_path / "a" / "b.py") == "/var/task/a/b.py"
    assert sb.map_path(RUNTIME_PATHS[1]) == "/opt/squall/python/1"
    assert sb.map_path(sys.executable).startswith(str(Path(sys.base_prefix).resolve()))
    with pytest.raises(squall.errors.SandboxError):
        sb.map_path("/root/.ssh")
