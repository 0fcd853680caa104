"""Replay: the events of failed invocations are kept, replayed on the platform against a chosen
version (`squall replay`, POST /api/v1/invocations/{id}/replay) or locally on a function folder
(`--local`); capture settings, size limit, retention and tenant isolation."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from squall.agent.node import VersionSpec
from squall.bundle.spec import FunctionConfig
from squall.errors import InvalidConfig
from squall.replay.capture import (
    Capture,
    CaptureNotFound,
    EventTooLarge,
    encode_event,
    should_capture,
)
from squall.replay.local import LocalFunction
from squall.store.db import Database
from tests.conftest import PlatformProc

BROKEN = """
def handler(event, context):
    print("dividing by", event["d"])
    return {"q": 10 // event["d"]}
"""
FIXED = """
def handler(event, context):
    print("dividing by", event["d"])
    return {"q": 10 // event["d"] if event["d"] else None, "fixed": True}
"""


def _replay(platform: PlatformProc, rid: str, body: dict[str, Any] | None = None,
            **kw: Any) -> httpx.Response:
    return platform.http.post(f"/api/v1/invocations/{rid}/replay", json=body or {}, **kw)


def _key(platform: PlatformProc, tenant: str, scopes: str) -> dict[str, str]:
    out = json.loads(platform.cli("key", "create", "--tenant", tenant, "--scope", scopes,
                                  "--json").stdout)
    return {"authorization": f"Bearer {out['key']}"}


def test_replay_reproduces_the_error_then_passes_on_the_fixed_version(
        platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("calc", BROKEN))
    ok = platform.invoke("calc", {"d": 2})
    assert ok.json() == {"q": 5}
    bad = platform.invoke("calc", {"d": 0, "note": "ünïcode"})
    assert bad.headers.get("x-squall-function-error") == "Unhandled"
    rid = bad.headers["x-squall-request-id"]

    # by default only failed invocations are kept, with the event as the function received it
    captured = platform.http.get(f"/api/v1/invocations/{rid}/event")
    assert captured.status_code == 200, captured.text
    got = captured.json()
    assert got["event"] == {"d": 0, "note": "ünïcode"}
    assert (got["function"], got["version"], got["trigger"]) == ("calc", 1, "api")
    assert got["status"] == "failed" and got["error_type"] == "ZeroDivisionError"
    assert got["expires_at"] > got["captured_at"]
    missing = platform.http.get(f"/api/v1/invocations/{ok.headers['x-squall-request-id']}/event")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "capture_not_found"

    # the replay reproduces the same error on the version that ran it, as a new invocation
    out = platform.cli("replay", rid, "--json", check=False)
    assert out.returncode == 1, out.stderr
    again = json.loads(out.stdout)
    assert again["replay_of"] == rid and again["request_id"] != rid
    assert again["version"] == 1 and again["ok"] is False
    assert again["error"]["errorType"] == "ZeroDivisionError"
    assert "dividing by 0" in again["logs"]

    platform.deploy(make_fn("calc", FIXED))  # version 2
    fixed = platform.cli("replay", rid, "--version", "2")
    assert json.loads(fixed.stdout) == {"q": None, "fixed": True}
    assert "on version 2" in fixed.stderr and "dividing by 0" in fixed.stderr
    # no target: still the version that failed; $LATEST and an alias choose the new one
    assert _replay(platform, rid).json()["error"]["errorType"] == "ZeroDivisionError"
    latest = _replay(platform, rid, {"version": "$LATEST"}).json()
    assert latest["version"] == 2 and latest["ok"] is True
    assert platform.http.put("/api/v1/functions/calc/aliases/prod",
                             json={"version": 2}).status_code in (200, 201)
    via_alias = platform.cli("replay", rid, "--alias", "prod", "--json")
    assert json.loads(via_alias.stdout)["version"] == 2

    # the replays are invocations of their own, with trigger "replay"
    history = platform.http.get("/api/v1/functions/calc/invocations/history").json()
    triggers = [x["trigger"] for x in history["invocations"]]
    assert triggers.count("replay") == 5 and triggers.count("api") == 2

    for body, code in (({"version": 1, "alias": "prod"}, "invalid_replay_target"),
                       ({"versoin": 2}, "invalid_replay_target"),
                       ({"version": 0}, "invalid_version"),
                       ({"alias": "no way"}, "invalid_alias")):
        r = _replay(platform, rid, body)
        assert (r.status_code, r.json()["error"]["code"]) == (400, code), body
    assert _replay(platform, rid, {"version": 9}).status_code == 404
    assert _replay(platform, rid, {"alias": "nope"}).status_code == 404
    assert _replay(platform, "no-such-request").json()["error"]["code"] == "capture_not_found"
    assert platform.cli("replay", rid, "--version", "2", "--alias", "prod",
                        check=False).returncode == 2

    # removing the function removes its captured events
    platform.cli("rm", "calc")
    assert platform.http.get(f"/api/v1/invocations/{rid}/event").status_code == 404


def test_scopes_and_tenants(platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    platform.cli("tenant", "create", "own")
    platform.cli("tenant", "create", "rival")
    platform.cli("--tenant", "own", "deploy", str(make_fn("calc", BROKEN)))
    read, invoke = _key(platform, "own", "read"), _key(platform, "own", "invoke")
    rival = _key(platform, "rival", "read,invoke")
    r = platform.http.post("/api/v1/functions/calc/invocations", json={"d": 0}, headers=invoke)
    rid = r.headers["x-squall-request-id"]

    assert platform.http.get(f"/api/v1/invocations/{rid}/event",
                             headers=read).json()["event"] == {"d": 0}
    refused = _replay(platform, rid, headers=read)  # replay runs code: it needs invoke
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert _replay(platform, rid, headers=invoke).json()["ok"] is False
    # another tenant's request id reads exactly like one never captured
    for r in (platform.http.get(f"/api/v1/invocations/{rid}/event", headers=rival),
              _replay(platform, rid, headers=rival)):
        assert r.status_code == 404 and r.json()["error"]["code"] == "capture_not_found"


def test_capture_all_and_the_size_limit(platform_factory: Callable[..., PlatformProc],
                                        make_fn: Callable[..., Path]) -> None:
    platform = platform_factory(SQUALL_REPLAY_CAPTURE="all", SQUALL_REPLAY_MAX_EVENT_BYTES="64")
    platform.deploy(make_fn("echo", "def handler(event, context):\n    return event\n"))
    small = platform.invoke("echo", {"a": 1}).headers["x-squall-request-id"]
    large = platform.invoke("echo", {"a": "x" * 100}).headers["x-squall-request-id"]
    assert platform.http.get(f"/api/v1/invocations/{small}/event").json()["status"] == \
        "succeeded"
    r = platform.http.get(f"/api/v1/invocations/{large}/event")
    assert r.status_code == 409 and r.json()["error"]["code"] == "event_too_large"
    assert r.json()["error"]["details"] == {"size": 108, "limit": 64}
    assert _replay(platform, large).status_code == 409
    assert _replay(platform, small).json()["result"] == {"a": 1}


def test_replay_local_runs_the_event_on_a_folder(platform: PlatformProc,
                                                 make_fn: Callable[..., Path],
                                                 tmp_path: Path) -> None:
    broken = make_fn("calc", BROKEN)
    platform.deploy(broken)
    rid = platform.invoke("calc", {"d": 0}).headers["x-squall-request-id"]
    fixed = tmp_path / "work" / "calc"
    fixed.mkdir(parents=True)
    (fixed / "handler.py").write_text(textwrap.dedent(FIXED))

    again = platform.cli("replay", rid, "--local", "--dir", str(broken), "--json", check=False)
    assert again.returncode == 1
    data = json.loads(again.stdout)
    assert data["local"] is True and data["error"]["errorType"] == "ZeroDivisionError"
    assert data["logs"] == ["dividing by 0"]
    assert 'handler.py", line 4, in handler' in "".join(data["error"]["stackTrace"])
    ok = platform.cli("replay", rid, "--local", "--dir", str(fixed))
    assert json.loads(ok.stdout) == {"q": None, "fixed": True}
    assert platform.cli("replay", rid, "--local", "--version", "2",
                        check=False).returncode == 2


# --- components ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "status", "kept"), [
    ("failed", "succeeded", False), ("failed", "failed", True), ("failed", "timeout", True),
    ("failed", "oom", True), ("all", "succeeded", True), ("off", "crashed", False)])
def test_should_capture(mode: str, status: str, kept: bool) -> None:
    assert should_capture(mode, status) is kept


def test_encode_event_keeps_or_refuses_whole_events() -> None:
    assert encode_event({"a": "é"}, 100) == ('{"a":"é"}', 10)
    assert encode_event({"a": "é"}, 9) == (None, 10)
    with pytest.raises(ValueError):
        encode_event({"a": float("nan")}, 100)


async def test_capture_retention_and_pruning(db: Database, tmp_path: Path) -> None:
    now = [1000.0]
    capture = Capture(db, mode="failed", max_event_bytes=1024, retention_s=60,
                      clock=lambda: now[0])
    vs = VersionSpec("t1", "fn", 3, "0" * 64, tmp_path, [], FunctionConfig())
    error = {"errorType": "KeyError"}
    capture.offer(vs, "r-ok", "api", "succeeded", None, {"x": 0})
    capture.offer(vs, "r-1", "api", "failed", error, {"x": 1})
    capture.offer(vs, "r-big", "http", "timeout", None, {"x": "y" * 2000})
    capture.offer(vs, "r-bytes", "api", "failed", error, {"x": b"raw"})  # not JSON: not kept
    row = await capture.get("t1", "r-1")
    assert row["event"] == {"x": 1} and row["version"] == 3 and row["error_type"] == "KeyError"
    for missing in (("t1", "r-ok"), ("t2", "r-1"), ("t1", "r-bytes")):
        with pytest.raises(CaptureNotFound):
            await capture.get(*missing)
    with pytest.raises(EventTooLarge):
        await capture.get("t1", "r-big")

    now[0] += 61  # past the retention: unreadable at once, deleted by the next prune
    with pytest.raises(CaptureNotFound):
        await capture.get("t1", "r-1")
    assert await capture.prune() == 2
    assert await capture.prune() == 0
    with pytest.raises(InvalidConfig):
        Capture(db, mode="some")


async def test_local_function_reload_and_errors(tmp_path: Path) -> None:
    folder = tmp_path / "fn"
    folder.mkdir()
    (folder / "handler.py").write_text("def handler(event, context):\n"
                                       "    return [context.function_name, event]\n")
    fn = LocalFunction(folder)
    try:
        await fn.load()
        assert (await fn.invoke(1)).value == ["fn", 1]
        (folder / "handler.py").write_text("def handler(event, context):\n    return 'v2\n")
        await fn.load()
        broken = await fn.invoke(2)
        assert broken.error is not None
        assert broken.error["errorType"] == "Runtime.ImportModuleError"
        assert "SyntaxError" in broken.error["errorMessage"]
        (folder / "squall.toml").write_text('handler = "main.go"\ntimeout_s = 0.5\n')
        (folder / "main.py").write_text("import time\n"
                                        "def go(event, context):\n    time.sleep(event)\n")
        await fn.load()
        assert (await fn.invoke(0)).ok
        slow = await fn.invoke(5)
        assert slow.error is not None and slow.error["errorType"] == "TimeoutError"
        assert (await fn.invoke(0)).ok  # a new instance after the one that timed out
        assert not list(folder.rglob("*.pyc"))  # nothing written beside the developer's code
    finally:
        await fn.close()
