"""Invocation history (API and `squall invocations`), retention, structured logs
(`log_format`, `log_level`, `squall logs --since --grep --level`, the platform's JSON log) and
`squall top --once`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from squall.errors import InvalidConfig
from squall.observability import logfmt
from squall.observability.history import HistoryQuery, InvalidQuery
from squall.observability.top import quantile
from squall.store import invocations as store_inv
from squall.store.db import Database
from tests.conftest import PlatformProc

CODE = """
import logging

def handler(event, context):
    log = logging.getLogger("app")
    log.debug("debug detail %s", event.get("n"))
    log.error("error line %s", event.get("n"))
    print("printed", event.get("n"))
    if event.get("fail"):
        raise KeyError("missing")
    return event.get("n")
"""


def test_history_api_and_cli(platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("hist", CODE))
    for n in range(3):
        assert platform.invoke("hist", {"n": n}).status_code == 200
    failed = [platform.invoke("hist", {"n": 10 + n, "fail": True}).headers["x-squall-request-id"]
              for n in range(2)]

    r = platform.http.get("/api/v1/functions/hist/invocations/history")
    assert r.status_code == 200, r.text
    rows = r.json()["invocations"]
    assert len(rows) == 5
    assert rows[0]["request_id"] == failed[-1]  # newest first
    assert [x["status"] for x in rows].count("succeeded") == 3
    last = rows[-1]
    assert last["cold"] is True and last["init_ms"] > 0 and last["queued_ms"] is None
    assert last["trigger"] == "api" and last["version"] == 1 and last["billed_ms"] >= 1
    for key in ("start", "run_ms", "error_type", "logs"):
        assert key in last

    out = platform.cli("invocations", "hist", "--status", "failed", "--since", "1h", "--json")
    got = json.loads(out.stdout)
    assert sorted(x["request_id"] for x in got) == sorted(failed)
    assert {x["error_type"] for x in got} == {"KeyError"}
    # its logs are one call away
    logs = platform.http.get(got[0]["logs"]).json()["lines"]
    assert any("printed" in x["line"] for x in logs)
    assert {x["request_id"] for x in logs} == {got[0]["request_id"]}

    table = platform.cli("invocations", "hist", "--limit", "2").stdout
    assert "REQUEST_ID" in table and len(table.strip().splitlines()) == 3
    assert platform.cli("invocations", "hist", "--since", "0").returncode == 0

    bad = platform.http.get("/api/v1/functions/hist/invocations/history",
                            params={"status": "exploded"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_query"
    assert platform.http.get("/api/v1/functions/hist/invocations/history",
                             params={"limit": "0"}).status_code == 400
    assert platform.http.get("/api/v1/functions/nope/invocations/history").status_code == 404


def test_json_logs_level_filter_and_cli_filters(platform: PlatformProc,
                                                make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("jlog", CODE, 'log_format = "json"\nlog_level = "DEBUG"\n'))
    platform.deploy(make_fn("quiet", CODE, 'log_format = "json"\nlog_level = "ERROR"\n'))
    for name in ("jlog", "quiet"):
        assert platform.invoke(name, {"n": 7}).status_code == 200

    lines = [json.loads(x["line"]) for x in
             platform.http.get("/api/v1/functions/jlog/logs").json()["lines"]]
    app = [x for x in lines if "level" in x]
    assert {x["level"] for x in app} == {"DEBUG", "ERROR", "INFO"}
    assert all(set(x) >= {"timestamp", "level", "requestId", "message"} for x in app)
    assert any(x["message"] == "debug detail 7" for x in app)
    assert [x["type"] for x in lines if "type" in x] == \
        ["platform.start", "platform.end", "platform.report"]

    quiet = [json.loads(x["line"]) for x in
             platform.http.get("/api/v1/functions/quiet/logs").json()["lines"]]
    assert {x["level"] for x in quiet if "level" in x} == {"ERROR"}

    out = platform.cli("logs", "jlog", "--level", "ERROR", "--since", "10m").stdout
    assert "error line 7" in out and "debug detail" not in out and "printed" not in out
    out = platform.cli("logs", "jlog", "--grep", "printed").stdout.strip().splitlines()
    assert len(out) == 1 and "printed 7" in out[0]
    assert platform.cli("logs", "jlog", "--since", "soon", check=False).returncode == 2


def test_top_once(platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("busy", CODE))
    assert platform.invoke("busy", {"n": 1}).status_code == 200
    out = platform.cli("top", "--once", "--interval", "0.3").stdout
    assert "FUNCTION" in out and "P99 MS" in out
    row = next(line for line in out.splitlines() if "busy" in line)
    assert "default" in row


def test_platform_log_as_json_lines(platform_factory: Callable[..., PlatformProc]) -> None:
    # the process sandbox makes the platform log a warning at startup: one record to check
    p = platform_factory(SQUALL_LOG_FORMAT="json", SQUALL_SANDBOX="process")
    p.stop()
    records = [json.loads(line) for line in p.log().splitlines() if line.startswith("{")]
    assert records, p.log()
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["level"] == "WARNING" and "sandbox" in r["message"] for r in records)


# ---- pure parts and the store -----------------------------------------------------------------

def test_prune_keeps_recent_records(db: Database) -> None:
    now = time.time()
    rec = {"namespace": "default", "function": "f", "version": 1, "trigger": "api",
           "init_ms": 0.0, "duration_ms": 1.0, "billed_ms": 1, "memory_mb": 128,
           "gb_seconds": 0.0, "status": "succeeded", "error_type": None, "cold": 0,
           "max_memory_mb": None}
    db.run_sync(lambda c: store_inv.insert_many(c, [
        {**rec, "request_id": "old", "start_ts": now - 40 * 86400},
        {**rec, "request_id": "new", "start_ts": now - 60}]))
    assert db.run_sync(lambda c: store_inv.prune(c, before=now - 30 * 86400)) == 1
    rows = db.run_sync(lambda c: store_inv.history(c, "default", "f"))
    assert [r["request_id"] for r in rows] == ["new"]


@pytest.mark.parametrize(("status", "failed", "statuses"), [
    ("failed", True, None),
    ("timeout,oom", False, ("timeout", "oom")),
    ("succeeded", False, ("succeeded",)),
    ("", False, None),
])
def test_history_status_filter(status: str, failed: bool,
                               statuses: tuple[str, ...] | None) -> None:
    q = HistoryQuery.parse({"status": status, "limit": 5})
    assert (q.failed, q.statuses, q.limit) == (failed, statuses, 5)


def test_history_rejects_unknown_status() -> None:
    with pytest.raises(InvalidQuery):
        HistoryQuery.parse({"status": "failed,bogus"})


@pytest.mark.parametrize(("line", "level", "kept"), [
    ("[ERROR]\t2024-01-01T00:00:00.000Z\trid\tboom", "ERROR", True),
    ("[INFO]\t2024-01-01T00:00:00.000Z\trid\tfine", "ERROR", False),
    ('{"level": "warn", "msg": "x"}', "WARN", True),
    ("plain print", "INFO", True),
    ("plain print", "WARNING", False),
    ("REPORT RequestId: rid\tDuration: 1 ms", "INFO", False),
])
def test_level_matching(line: str, level: str, kept: bool) -> None:
    assert logfmt.matches({"ts": 1.0, "line": line}, level=level) is kept


def test_log_config_is_validated() -> None:
    from squall.bundle.spec import config_from_api

    assert config_from_api({"log_format": "json", "log_level": "WARN"}).log_format == "json"
    for bad in ({"log_format": "xml"}, {"log_level": "LOUD"}, {"log_level": 3}):
        with pytest.raises(InvalidConfig) as e:
            config_from_api(bad)
        assert e.value.details["key"] in bad


@pytest.mark.parametrize(("buckets", "p99"), [
    ({0.001: 0, 0.0025: 90, 0.005: 100, float("inf"): 100}, 0.00475),
    ({0.001: 100, float("inf"): 100}, 0.00099),
    ({0.001: 0, float("inf"): 0}, None),
    ({0.5: 0, float("inf"): 10}, 0.5),
])
def test_p99_from_buckets(buckets: dict[float, float], p99: float | None) -> None:
    got = quantile(0.99, buckets)
    assert (got is None and p99 is None) or (got is not None and p99 is not None
                                             and abs(got - p99) < 1e-9)
