"""Zygotes and instances: isolation between forked siblings, recovery, versions, warm pools."""

from __future__ import annotations

import concurrent.futures
import os
import signal
from collections.abc import Callable
from pathlib import Path

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


def _two_instances(platform: PlatformProc) -> list[dict]:
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
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(),
                 message=f"old process {pid} to exit")


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
