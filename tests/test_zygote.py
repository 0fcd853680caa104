"""Zygotes and instances: isolation between forked siblings, recovery, versions, warm pools."""

from __future__ import annotations

import concurrent.futures
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PlatformProc, wait_for

STATEFUL = """
import os, random
COUNTER = {"n": 0}

def handler(event, context):
    COUNTER["n"] += 1
    if event.get("write"):
        with open("/tmp/mark", "w") as f:
            f.write(context.aws_request_id)
    if event.get("sleep"):
        import time
        time.sleep(event["sleep"])
    return {"pid": os.getpid(), "n": COUNTER["n"], "rand": [random.random() for _ in range(3)],
            "tmp": sorted(os.listdir("/tmp"))}
"""


def _gone(path: Path) -> Callable[[], bool]:
    return lambda: not path.exists()


def _two_instances(platform: PlatformProc) -> list[dict[str, Any]]:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(platform.invoke, "state", {"sleep": 0.6, "write": i == 0})
                for i in range(2)]
        return [f.result().json() for f in futs]


def test_forked_siblings_share_no_state(platform: PlatformProc,
                                        make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("state", STATEFUL))
    a, b = _two_instances(platform)
    assert a["pid"] != b["pid"]
    assert a["n"] == 1 and b["n"] == 1  # a global mutated in one is not seen in the other
    assert a["rand"] != b["rand"]  # reseeded after fork: distinct random sequences
    # the instance that wrote /tmp/mark sees it; its sibling has its own empty /tmp
    assert "mark" in a["tmp"]
    if platform.http.get("/healthz").json()["sandbox"] == "bwrap":
        assert "mark" not in b["tmp"]
    again = platform.invoke("state", {}).json()
    assert again["n"] == 2  # warm reuse keeps an instance's own globals


def test_zygote_crash_is_recovered(platform: PlatformProc,
                                   make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("phoenix", "def handler(e, c):\n    return 'up'\n"))
    zygotes = platform.http.get("/api/v1/functions/phoenix/instances").json()["zygotes"]
    assert len(zygotes) == 1
    os.kill(zygotes[0]["pid"], signal.SIGKILL)
    wait_for(lambda: platform.http.get("/api/v1/functions/phoenix/instances").json()[
        "zygotes"] == [], message="the dead zygote to be noticed")
    resp = platform.http.get("/fn/phoenix")
    assert resp.status_code == 200 and resp.text == "up"  # a string is the body, as API GW
    rebuilt = platform.http.get("/api/v1/functions/phoenix/instances").json()["zygotes"]
    assert len(rebuilt) == 1 and rebuilt[0]["pid"] != zygotes[0]["pid"]


def test_new_version_gets_new_zygote_and_old_is_reaped(
        platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("evolve", "def handler(e, c):\n    return 1\n"))
    assert platform.invoke("evolve").json() == 1
    old = platform.http.get("/api/v1/functions/evolve/instances").json()
    old_pids = [z["pid"] for z in old["zygotes"]] + [i["pid"] for i in old["instances"]]
    platform.deploy(make_fn("evolve", "def handler(e, c):\n    return 2\n"))
    assert platform.invoke("evolve").json() == 2
    new = platform.http.get("/api/v1/functions/evolve/instances").json()
    assert [z["version"] for z in new["zygotes"]] == [2]
    assert all(i["version"] == 2 for i in new["instances"])
    for pid in old_pids:
        wait_for(_gone(Path(f"/proc/{pid}")), message=f"old process {pid} to exit")


def test_min_instances_are_kept_warm(platform: PlatformProc,
                                     make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("warm", "def handler(e, c):\n    return 1\n",
                            toml="min_instances = 2\nkeep_alive_s = 1\n"))
    platform.invoke("warm")
    wait_for(lambda: len(platform.instances("warm")) == 2, message="two warm instances")
    # beyond the keep-alive, min_instances still holds
    platform.restart()
    wait_for(lambda: len(platform.instances("warm")) == 2, message="warm again after restart")
    resp = platform.http.get("/fn/warm")
    assert resp.headers["x-squall-cold-start"] == "0"


def test_autoscaler_decision_is_observable(platform: PlatformProc,
                                           make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("busy", STATEFUL.replace("state", "busy")))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: platform.invoke("busy", {"sleep": 0.8}), range(4)))
    status = wait_for(lambda: (s := platform.http.get("/api/v1/functions/busy/scaling").json())[
        "desired"] is not None and s, message="a scaling decision")
    assert status["desired"] >= 1
    assert "avg" in status["reason"] or "panic" in status["reason"]


IMPORT_TIME_PROBE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)

def _call(ret):
    return 0 if ret == 0 else ctypes.get_errno()

# At import time, in the zygote, before any instance exists:
AT_IMPORT = {
    "unshare_user": _call(libc.unshare(0x10000000)),
    "unshare_ns_and_net": _call(libc.unshare(0x00020000 | 0x40000000)),
    "bind_mount": _call(libc.mount(b"/usr", b"/tmp", None, 0x1000, None)),
    "remount": _call(libc.mount(None, b"/var/task", None, 0x20 | 0x1000, None)),
    "ptrace": _call(libc.ptrace(0, 0, None, None)),
    "nnp": int(open("/proc/self/status").read().split("NoNewPrivs:")[1].split()[0]),
    "seccomp": int(open("/proc/self/status").read().split("Seccomp:")[1].split()[0]),
}

def handler(event, context):
    return AT_IMPORT
"""


def _cgroup_memory_limit(pid: int) -> int | None:
    """The memory limit of the cgroup ``pid`` is in (v1 or v2), or None when it has none."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "memory":
            raw = (Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.limit_in_bytes")
        elif controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            raw = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max"
        else:
            continue
        value = raw.read_text().strip()
        return None if value == "max" or int(value) >= 1 << 62 else int(value)
    return None


def test_the_zygote_runs_its_import_fenced(platform: PlatformProc,
                                           make_fn: Callable[..., Path]) -> None:
    """Import-time code runs under the zygote's seccomp filter and in the zygote's cgroup."""
    if platform.http.get("/healthz").json()["sandbox"] != "bwrap":
        pytest.skip("the zygote's fence is the bwrap sandbox's")
    platform.deploy(make_fn("fenced", IMPORT_TIME_PROBE, toml="memory_mb = 192\n"))
    got = platform.invoke("fenced").json()
    assert got == {"unshare_user": 1, "unshare_ns_and_net": 1, "bind_mount": 1, "remount": 1,
                   "ptrace": 1, "nnp": 1, "seccomp": 2}, got   # 1 = EPERM, 2 = filter mode
    [zygote] = platform.http.get("/api/v1/functions/fenced/instances").json()["zygotes"]
    if os.geteuid() == 0 and Path("/sys/fs/cgroup").exists():
        assert _cgroup_memory_limit(zygote["pid"]) == 192 << 20
        # its own group, or (between forks) the one prepared for its next instance (same limits)
        where = Path(f"/proc/{zygote['pid']}/cgroup").read_text()
        assert ".zygote" in where or ".spare-" in where, where
