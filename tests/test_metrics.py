"""Prometheus metrics: counted against known invocations, parsed with prometheus-client's parser,
checked with promtool; tenant scoping; the pure parts (error-type cap, message age)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from squall.observability.metrics import MAX_ERROR_TYPES, Metrics, message_age
from tests.conftest import PlatformProc, wait_for

FLAKY = """
def handler(event, context):
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"ok": True}
"""


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(data: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in data.items() if n == name and want <= ls)


def test_counters_match_known_invocations(platform: PlatformProc,
                                          make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("flaky", FLAKY, "max_instances = 1\n"))
    for _ in range(3):
        assert platform.invoke("flaky", {}).status_code == 200
    for _ in range(2):
        r = platform.invoke("flaky", {"fail": True})
        assert r.headers.get("x-squall-function-error") == "Unhandled"

    r = platform.http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    data = samples(r.text)
    fn = {"tenant": "default", "function": "flaky"}
    assert value(data, "squall_invocations_total", **fn, outcome="succeeded", trigger="api") == 3
    assert value(data, "squall_invocations_total", **fn, outcome="failed") == 2
    assert value(data, "squall_invocation_errors_total", **fn, error_type="ValueError") == 2
    assert value(data, "squall_cold_starts_total", **fn) == 1  # max_instances = 1: one start
    assert value(data, "squall_invocation_duration_seconds_count", **fn) == 5
    assert value(data, "squall_init_duration_seconds_count", **fn) == 1
    # buckets go down to 1 ms
    assert (("squall_invocation_duration_seconds_bucket",
             frozenset({**fn, "version": "1", "le": "0.001"}.items())) in data)
    assert value(data, "squall_billed_gigabyte_seconds_total", **fn) > 0
    # read at scrape time: the one warm instance is idle, its zygote runs
    assert value(data, "squall_instances", **fn, state="idle") == 1
    assert value(data, "squall_instances", **fn, state="busy") == 0
    assert value(data, "squall_zygotes", **fn) == 1
    # platform series: event-loop lag is exported, the invocation records were flushed
    assert any(n == "squall_event_loop_lag_seconds_count" for (n, _) in data)
    # the records are written in batches every 0.1 s: the first write shows up soon after
    wait_for(lambda: value(samples(platform.http.get("/metrics").text),
                           "squall_store_flush_seconds_count", writer="invocations") >= 1,
             message="a store flush to be observed")


def test_queue_depth_dead_letters_and_promtool(platform: PlatformProc,
                                               make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("doomed", FLAKY, "max_instances = 1\n[async]\nmax_retries = 0\n"))
    r = platform.http.post("/api/v1/functions/doomed/invocations", json={"fail": True},
                           headers={"X-Squall-Invocation-Type": "Event"})
    assert r.status_code == 202
    rid = r.json()["request_id"]

    def dead() -> bool:
        s = platform.http.get(f"/api/v1/invocations/{rid}").json()
        return bool(s["status"] == "dead_lettered")

    wait_for(dead, timeout=30, message="the event to be dead-lettered")
    text = platform.http.get("/metrics").text
    data = samples(text)
    fn = {"tenant": "default", "function": "doomed"}
    assert value(data, "squall_dead_letters_total", **fn, source="queue") == 1
    assert value(data, "squall_async_deliveries_total", **fn, outcome="dead_lettered") == 1
    assert value(data, "squall_invocations_total", **fn, trigger="async", outcome="failed") == 1
    # nothing left waiting for this function
    assert value(data, "squall_async_queue_depth", **fn) == 0

    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("SQUALL_REQUIRE_SERVICES") == "1":
            pytest.fail("promtool is required (apt-get install prometheus)")
        pytest.skip("promtool not installed (Debian package prometheus)")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_tenant_key_sees_only_its_tenant(platform: PlatformProc,
                                         make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("mine", FLAKY))
    assert platform.invoke("mine", {}).status_code == 200
    platform.cli("tenant", "create", "other")
    out = platform.cli("key", "create", "--tenant", "other", "--scope", "metrics", "--json")
    key = json.loads(out.stdout)["key"]
    r = platform.http.get("/metrics", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert 'function="mine"' not in r.text
    assert platform.http.get("/metrics", headers={"authorization": ""}).status_code == 401


def test_queue_depth_collector_and_error_type_cap() -> None:
    m = Metrics()
    m.set_queue([{"namespace": "default", "function": "f", "state": "queued", "count": 4,
                  "oldest": 100.0},
                 {"namespace": "default", "function": "f", "state": "retrying", "count": 1,
                  "oldest": 50.0}], now=110.0)
    data = samples(m.render().decode())
    assert value(data, "squall_async_queue_depth", function="f", state="queued") == 4
    assert value(data, "squall_async_queue_oldest_age_seconds", function="f") == 60.0

    from squall.agent.node import VersionSpec
    from squall.bundle.spec import FunctionConfig

    vs = VersionSpec("t1", "f", 1, "0" * 64, Path("/"), [], FunctionConfig())
    for i in range(MAX_ERROR_TYPES + 5):
        m.invocation(vs, "api", "failed", 2.0, 0.0, False, 0.0, f"E{i}")
    data = samples(m.render().decode())
    assert value(data, "squall_invocation_errors_total", function="f", error_type="other") == 5
    assert value(data, "squall_invocations_total", function="f", outcome="failed") == \
        MAX_ERROR_TYPES + 5
    assert 'tenant="t1"' in m.render("t1").decode()
    assert 'tenant="t1"' not in m.render("t2").decode()


@pytest.mark.parametrize(("event", "now", "age"), [
    ({"redisid": "1700000000000-0"}, 1_700_000_002.5, 2.5),
    ({"time": "2023-11-14T22:13:20Z"}, 1_700_000_001.0, 1.0),
    ({"time": "not a time"}, 1.0, None),
    ({}, 1.0, None),
])
def test_message_age(event: dict[str, Any], now: float, age: float | None) -> None:
    assert message_age(event, now) == age
