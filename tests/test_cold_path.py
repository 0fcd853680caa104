"""The cold path after idle: a Python instance is born inside its own cgroup (its zygote waits
in the next instance's prepared group between forks), so no cgroup migration sits between a
request and its answer, and no instance runs a single instruction outside its limits.

Behaviour only (no timings). Needs the bwrap sandbox with cgroups (root); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from squall.agent.sandbox.cgroups import detect_version
from tests.conftest import PlatformProc, wait_for

FN = """
import os

def handler(event, context):
    if event.get("alloc_mb"):
        hog = [bytearray(16 << 20) for _ in range(event["alloc_mb"] // 16)]
        return len(hog)
    return {"pid": os.getpid()}
"""


@pytest.fixture
def sandboxed(platform_factory: Callable[..., PlatformProc]) -> PlatformProc:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    if detect_version() == 0 or os.geteuid() != 0:
        pytest.skip("no cgroups here (needs root and a cgroup hierarchy)")
    p = platform_factory(SQUALL_SANDBOX="auto")
    if "sandbox bwrap" not in p.log():
        pytest.skip(f"the platform did not choose the bwrap sandbox:\n{p.log()[-2000:]}")
    return p


def _cgroups(pid: int) -> dict[str, str]:
    """controller -> cgroup path of a host pid (v2: key "unified")."""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else ["unified"]:
                out[c] = path
    return out


def _memory_group(pid: int) -> str:
    groups = _cgroups(pid)
    return groups.get("memory") or groups["unified"]


def _instance(p: PlatformProc, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = wait_for(
        lambda: [i for i in p.instances(name) if i.get("pid")], message=f"an instance of {name}")
    return found[0]


def _zygote_pid(p: PlatformProc, name: str) -> int:
    data = p.http.get(f"/api/v1/functions/{name}/instances").json()
    pids = [z["pid"] for z in data.get("zygotes", []) if z.get("pid")]
    assert pids, data
    return int(pids[0])


def _cold(p: PlatformProc, name: str, event: Any) -> Any:
    """Scale to zero, wait until no instance is left, then invoke (a cold start)."""
    resp = p.http.post(f"/api/v1/functions/{name}/scale", json={"to": 0})
    assert resp.status_code == 200, resp.text
    wait_for(lambda: not p.instances(name), message=f"{name} to reach zero instances")
    return p.invoke(name, event)


def test_each_cold_instance_is_born_in_its_own_group_not_the_zygotes(
        sandboxed: PlatformProc, make_fn: Callable[..., Path]) -> None:
    p = sandboxed
    p.deploy(make_fn("born", FN))
    groups: list[str] = []
    for _ in range(3):
        resp = _cold(p, "born", {})
        assert resp.status_code == 200, resp.text
        inst = _instance(p, "born")
        group = _memory_group(int(inst["pid"]))
        assert "/squall/" in group and not group.endswith(".zygote"), group
        # every hierarchy agrees (v1 has one tree per controller)
        where = _cgroups(int(inst["pid"]))
        keys = ("memory", "pids", "cpu") if "memory" in where else ("unified",)
        names = {where[c].rsplit("/", 1)[-1] for c in keys}
        assert names == {group.rsplit("/", 1)[-1]}, where
        groups.append(group)
        # the zygote moves on to the group prepared for the next instance (not its own, not
        # this one): that is where the next instance will be born
        zpid = _zygote_pid(p, "born")

        def armed(zpid: int = zpid, group: str = group) -> bool:
            now = _memory_group(zpid)
            return now != group and not now.endswith(".zygote")

        wait_for(armed, message="the zygote to sit in the next instance's group")
    assert len(set(groups)) == 3, groups


def test_zygote_survives_its_instances_being_released(
        sandboxed: PlatformProc, make_fn: Callable[..., Path]) -> None:
    """Releasing an instance kills what is left in its group; the zygote, which was in that
    group when it forked the instance, must never be among it."""
    p = sandboxed
    p.deploy(make_fn("churn", FN))
    assert p.invoke("churn", {}).status_code == 200
    zygote = _zygote_pid(p, "churn")
    for _ in range(5):
        # scale to zero right after the answer: the release races the zygote's next move
        p.http.post("/api/v1/functions/churn/scale", json={"to": 0})
        resp = p.invoke("churn", {})
        assert resp.status_code == 200, resp.text
    assert _zygote_pid(p, "churn") == zygote
    assert "rebuilding zygote" not in p.log()


def test_first_request_after_idle_is_held_to_memory_mb(
        sandboxed: PlatformProc, make_fn: Callable[..., Path]) -> None:
    """The instance serving the first request after idle is under its memory limit before any
    user code runs: allocating past memory_mb is an OutOfMemoryError, not a success."""
    p = sandboxed
    p.deploy(make_fn("hog", FN, toml="memory_mb = 128\n"))
    assert p.invoke("hog", {}).status_code == 200
    resp = _cold(p, "hog", {"alloc_mb": 512})
    assert resp.headers.get("x-squall-function-error") == "Unhandled", resp.text
    assert resp.json()["errorType"] == "OutOfMemoryError", resp.text
    resp = _cold(p, "hog", {"alloc_mb": 32})  # the next cold instance is fine
    assert resp.status_code == 200 and resp.json() == 2, resp.text


# ---- spares: one instance per version forked ahead ---------------------------------------------

COUNTER = """
import os

served = 0

def handler(event, context):
    global served
    served += 1
    return {"pid": os.getpid(), "served": served}
"""


def _zygote(p: PlatformProc, name: str) -> dict[str, Any]:
    data = p.http.get(f"/api/v1/functions/{name}/instances").json()
    zygotes: list[dict[str, Any]] = data.get("zygotes", [])
    assert len(zygotes) == 1, data
    return zygotes[0]


def _spare_pid(p: PlatformProc, name: str) -> int:
    pid: int = wait_for(lambda: _zygote(p, name).get("spare_pid"), timeout=15,
                        message=f"a spare instance of {name}")
    return pid


def _report(p: PlatformProc, name: str, request_id: str) -> str:
    lines = p.http.get(f"/api/v1/functions/{name}/logs",
                       params={"request_id": request_id}).json()["lines"]
    found = [str(x["line"]) for x in lines if "REPORT" in str(x["line"])]
    assert found, lines
    return found[-1]


def test_a_cold_start_after_idle_takes_the_spare_forked_ahead(
        sandboxed: PlatformProc, make_fn: Callable[..., Path]) -> None:
    """After scale to zero the next request is served by the spare: a process that never
    served (fresh module state), already in its own cgroup before the request; then the zygote
    forks the next spare."""
    p = sandboxed
    p.deploy(make_fn("ahead", COUNTER))
    first = p.invoke("ahead", {})
    assert first.status_code == 200 and first.json()["served"] == 1, first.text
    served_by = int(_instance(p, "ahead")["pid"])  # host pids (the response has the sandbox's)
    for _ in range(2):
        spare = _spare_pid(p, "ahead")
        group = _memory_group(spare)  # under its own limits while it waits
        assert "/squall/" in group and not group.endswith(".zygote"), group
        assert spare != served_by
        resp = _cold(p, "ahead", {})
        assert resp.status_code == 200, resp.text
        assert resp.json()["served"] == 1  # a process that never served before
        served_by = int(_instance(p, "ahead")["pid"])
        assert served_by == spare  # the spare forked ahead
        report = _report(p, "ahead", resp.headers["x-squall-request-id"])
        assert "Init Duration" in report and ", spare " in report, report
        wait_for(lambda spare=spare: _zygote(p, "ahead").get("spare_pid") not in (None, spare),
                 timeout=15, message="the next spare")


def test_a_spare_that_died_is_replaced_and_the_request_still_served(
        sandboxed: PlatformProc, make_fn: Callable[..., Path]) -> None:
    p = sandboxed
    p.deploy(make_fn("fragile", COUNTER))
    assert p.invoke("fragile", {}).status_code == 200
    spare = _spare_pid(p, "fragile")
    os.kill(spare, 9)
    resp = _cold(p, "fragile", {})
    assert resp.status_code == 200, resp.text
    assert resp.json()["served"] == 1
    served_by = int(_instance(p, "fragile")["pid"])
    assert served_by != spare
    report = _report(p, "fragile", resp.headers["x-squall-request-id"])
    assert ", fork " in report, report  # no spare to take: forked on the request's path
    assert _spare_pid(p, "fragile") not in (spare, served_by)
    assert "rebuilding zygote" not in p.log()


def test_removing_the_function_stops_its_spare(
        sandboxed: PlatformProc, make_fn: Callable[..., Path]) -> None:
    p = sandboxed
    p.deploy(make_fn("gone", COUNTER))
    spare = _spare_pid(p, "gone")  # made at deploy, with the prewarmed zygote
    assert p.http.delete("/api/v1/functions/gone").status_code in (200, 204)
    wait_for(lambda: not os.path.exists(f"/proc/{spare}"), timeout=15,
             message="the spare to exit")


def test_with_spares_off_every_cold_start_forks(
        platform_factory: Callable[..., PlatformProc], make_fn: Callable[..., Path]) -> None:
    p = platform_factory(SQUALL_SPARES="0")
    p.deploy(make_fn("plain", COUNTER))
    for _ in range(2):
        resp = _cold(p, "plain", {})
        assert resp.status_code == 200, resp.text
        report = _report(p, "plain", resp.headers["x-squall-request-id"])
        assert ", fork " in report, report
    assert _zygote(p, "plain").get("spare_pid") is None
