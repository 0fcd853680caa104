"""The web console (/console): the time-series arithmetic, its API, and the page itself in a real
headless Chromium (Debian's, driven by Playwright) against a real platform: sign in, the function
list, a function's charts, an invocation's timeline and logs, the live tail, usage, redrive of a
dead letter, deploy from a zip, sign out. Screenshots go to the test's tmp dir (and, with
SQUALL_SAVE_SCREENSHOTS=1, to bench/results/console/)."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from squall.console import stats
from squall.console.assets import Assets
from squall.errors import BadRequest
from squall.store import invocations as store_inv
from squall.store.db import Database
from tests.conftest import PlatformProc, wait_for

CHROMIUM = Path("/usr/bin/chromium")
RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "console"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

FLAKY = """
def handler(event, context):
    print("flaky got", event)
    if event.get("fail"):
        raise ValueError("asked to fail #" + str(event.get("n")))
    return {"ok": True, "n": event.get("n")}
"""
# One attempt: the async failure goes straight to the dead letters.
FLAKY_TOML = "[async]\nmax_retries = 0\n"


# --- the arithmetic (pure) ---------------------------------------------------------------------

def _row(start: float, ms: float, status: str = "succeeded", cold: bool = False) -> dict[str, Any]:
    return {"start_ts": start, "duration_ms": ms, "status": status, "cold": int(cold)}


def test_series_counts_percentiles_and_concurrency() -> None:
    w = stats.Window(0.0, 30.0, 10)
    rows = [_row(2, 12_000), _row(5, 2_000, "failed", cold=True), _row(21, 4),
            _row(22, 6, "timeout")]
    s = stats.series(rows, w)
    assert s["t"] == [0.0, 10.0, 20.0]
    assert s["invocations"] == [2, 0, 2]
    assert s["errors"] == [1, 0, 1]
    assert s["cold_starts"] == [1, 0, 0]
    assert s["p50_ms"] == [2000.0, None, 4.0]  # nearest rank; an empty bucket is a gap
    assert s["p99_ms"] == [12000.0, None, 6.0]
    # A (2..14 s) and B (5..7 s) overlap in the first bucket; A is still running when the
    # second opens; the two short ones in the third do not overlap.
    assert s["concurrency"] == [2, 1, 1]


@pytest.mark.parametrize(("rows", "expected"), [
    ([], [0, 0, 0]),
    ([_row(1, 1000), _row(2, 1000)], [1, 0, 0]),        # back to back: 1..2 then 2..3
    ([_row(1, 1500), _row(2, 1000)], [2, 0, 0]),
    ([_row(5, 25_000)], [1, 1, 1]),                     # spans the whole window
    ([_row(28, 10_000)], [0, 0, 1]),                    # ends after the window: clamped
])
def test_peak_concurrency_table(rows: list[dict[str, Any]], expected: list[int]) -> None:
    assert stats.peak_concurrency(rows, stats.Window(0.0, 30.0, 10)) == expected


@pytest.mark.parametrize(("span", "step", "expected_step", "buckets"), [
    (3600.0, None, 30, 121),            # an hour: 30 s buckets, aligned (one partial at the end)
    (3600.4, None, 30, 121),            # "1h" read a moment before now still gets 30 s
    (900.0, None, 10, 91),
    (7 * 86400.0, None, 10800, 57),
    (3600.0, 60, 60, 61),
    (1_700_000_000.0, None, 14169600, 120),  # since=0: whole days, still about 120 buckets
])
def test_choose_window(span: float, step: int | None, expected_step: int, buckets: int) -> None:
    now = 1_700_000_000.0
    w = stats.choose_window(now - span, now, step)
    assert w.step == expected_step
    assert w.start <= now - span and w.end > now
    assert w.buckets == buckets


def test_choose_window_refuses_too_many_buckets() -> None:
    with pytest.raises(BadRequest) as err:
        stats.choose_window(0.0, 86400.0 * 30, 1)
    assert err.value.code == "invalid_query"


def test_store_rows_newest_kept_and_summary(db: Database) -> None:
    recs = [{"request_id": f"r{i}", "namespace": "t1", "function": "f", "version": 1,
             "trigger": "api", "start_ts": 100.0 + i, "init_ms": 0.0, "duration_ms": 2.0 * i,
             "billed_ms": 1, "memory_mb": 128, "gb_seconds": 0.0, "cold": int(i == 0),
             "status": "failed" if i % 2 else "succeeded"} for i in range(5)]
    recs.append({**recs[0], "namespace": "t2"})  # another tenant's: never counted
    db.run_sync(lambda c: store_inv.insert_many(c, recs))
    rows, cut = db.run_sync(lambda c: store_inv.series_rows(c, "t1", "f", since=100.0,
                                                            until=200.0, limit=3))
    assert cut and [r["start_ts"] for r in rows] == [102.0, 103.0, 104.0]
    rows, cut = db.run_sync(lambda c: store_inv.series_rows(c, "t1", "f", since=100.0,
                                                            until=104.0, limit=10))
    assert not cut and len(rows) == 4
    (summary,) = db.run_sync(lambda c: store_inv.summary_by_function(c, "t1", 101.0))
    assert (summary["invocations"], summary["errors"], summary["cold_starts"]) == (4, 2, 0)
    assert summary["avg_ms"] == 5.0 and summary["last_ts"] == 104.0


def test_assets_are_built_into_the_package() -> None:
    assets = Assets()
    page = assets.get("index.html")
    assert page is not None and page.media_type.startswith("text/html")
    js = assets.get("app.js")
    assert js is not None and js.media_type.startswith("text/javascript")
    vendor = assets.get("vendor/uPlot.iife.min.js")
    assert vendor is not None and b"uPlot" in vendor.body
    assert assets.get("../server.py") is None and assets.get("/etc/passwd") is None


# --- the API -----------------------------------------------------------------------------------

def _traffic(platform: PlatformProc, make_fn: Callable[..., Path]) -> str:
    """Deploy the flaky function; 5 successes, 2 sync failures, 1 async failure that ends in
    the dead letters. Returns the dead letter's id."""
    platform.deploy(make_fn("flaky", FLAKY, FLAKY_TOML))
    for n in range(5):
        assert platform.invoke("flaky", {"n": n}).status_code == 200
    for n in range(2):
        assert "x-squall-function-error" in platform.invoke("flaky", {"fail": True, "n": n}).headers
    r = platform.invoke("flaky", {"fail": True, "n": 99},
                        headers={"x-squall-invocation-type": "Event"})
    assert r.status_code == 202
    dead = wait_for(lambda: platform.http.get("/api/v1/dlq").json()["dead_letters"],
                    message="the async failure to be dead-lettered")
    return str(dead[0]["id"])


def test_console_api(platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    _traffic(platform, make_fn)
    s = platform.http.get("/api/v1/functions/flaky/stats", params={"since": "1h"}).json()
    assert s["step"] == 30 and len(s["t"]) == len(s["invocations"]) == len(s["concurrency"])
    assert sum(s["invocations"]) == 8 and sum(s["errors"]) == 3
    assert sum(s["cold_starts"]) >= 1 and max(s["concurrency"]) >= 1
    assert any(v is not None for v in s["p99_ms"])

    over = platform.http.get("/api/v1/console/overview").json()
    (flaky,) = over["functions"]
    assert (flaky["name"], flaky["invocations"], flaky["errors"]) == ("flaky", 8, 3)
    assert flaky["idle"] + flaky["busy"] >= 1 and flaky["zygote"] is not None

    me = platform.http.get("/api/v1/whoami").json()
    assert me["admin"] is True and "default" in me["tenants"]

    # Bad input is a 4xx with a code; another tenant's function is answered like a missing one.
    bad = platform.http.get("/api/v1/functions/flaky/stats", params={"since": "1d", "step": 1})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_query"
    assert platform.http.get("/api/v1/functions/nosuch/stats").status_code == 404
    platform.cli("tenant", "create", "other")
    key = platform.cli("key", "create", "--tenant", "other", "--scope", "read", "--json").stdout
    other = {"authorization": "Bearer " + json.loads(key)["key"]}
    with httpx.Client(base_url=platform.url, timeout=30) as anon:
        assert anon.get("/api/v1/console/overview").status_code == 401
        assert anon.get("/api/v1/functions/flaky/stats", headers=other).status_code == 404
        assert anon.get("/api/v1/console/overview", headers=other).json()["functions"] == []
        assert anon.get("/api/v1/whoami", headers=other).json()["tenant"] == "other"
        # The page and its files need no key; they carry a strict CSP and revalidate by ETag.
        page = anon.get("/console")
        assert page.status_code == 200 and "script-src 'self'" in \
            page.headers["content-security-policy"]
        again = anon.get("/console", headers={"if-none-match": page.headers["etag"]})
        assert again.status_code == 304
        assert anon.get("/console/static/vendor/uPlot.min.css").status_code == 200
        missing = anon.get("/console/static/nosuch.js")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "file_not_found"


# --- the page, in Chromium ---------------------------------------------------------------------

@pytest.fixture
def browser_context(tmp_path: Path) -> Iterator[Any]:
    require = os.environ.get("SQUALL_REQUIRE_SERVICES") == "1"
    if not CHROMIUM.exists():
        if require:
            pytest.fail(f"{CHROMIUM} is required (apt-get install chromium) but missing")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium to test the console")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if require:
            raise
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        # A persistent context is how Playwright takes a user-data-dir: a fresh one per test.
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=ARGS, viewport={"width": 1360, "height": 900})
        try:
            yield ctx
        finally:
            ctx.close()


class Shots:
    """Numbered screenshots under the test's tmp dir (the artefacts)."""

    def __init__(self, page: Any, folder: Path) -> None:
        self.page, self.folder, self.n = page, folder, 0
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, name: str) -> None:
        self.n += 1
        self.page.screenshot(path=str(self.folder / f"{self.n:02d}-{name}.png"), full_page=True)

    def publish(self) -> None:
        """With SQUALL_SAVE_SCREENSHOTS=1, refresh the copies kept in bench/results/console/
        (the test's tmp dir always has them): a plain `make test` leaves the tree alone."""
        if os.environ.get("SQUALL_SAVE_SCREENSHOTS") != "1":
            return
        shutil.rmtree(RESULTS, ignore_errors=True)
        RESULTS.mkdir(parents=True)
        for f in sorted(self.folder.glob("*.png")):
            shutil.copy(f, RESULTS / f.name)


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


def test_console_in_chromium(platform: PlatformProc, make_fn: Callable[..., Path],
                             browser_context: Any, tmp_path: Path) -> None:
    dead_id = _traffic(platform, make_fn)
    page = browser_context.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" and "401" not in m.text else None)
    shots = Shots(page, tmp_path / "screenshots")
    try:
        _sign_in(page, platform, shots)
        _function_page(page, shots)
        _invocation(page, shots)
        _live_tail(page, platform, shots)
        _versions_and_triggers(page, platform, shots)
        _usage(page, shots)
        _redrive(page, platform, dead_id, shots)
        _deploy(page, platform, tmp_path, shots)
        page.click("#sign-out")
        page.wait_for_selector("#signin")
        assert page.evaluate("sessionStorage.length") == 0
    finally:
        shots.publish()
    assert not problems, problems


# Predicates are given as functions ("() => ..."): Playwright evaluates a bare expression with
# eval(), which the console's Content-Security-Policy forbids (as it should).


def _sign_in(page: Any, platform: PlatformProc, shots: Shots) -> None:
    page.goto(platform.url + "/console")
    page.wait_for_selector("#signin")
    shots.take("sign-in")
    page.fill("#api-key", "sq_not_a_real_key")
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#signin .alert")
    assert "not valid" in page.inner_text("#signin .alert")
    page.fill("#api-key", platform.admin_key)
    page.click("#signin button[type=submit]")
    page.wait_for_selector("tr[data-name=flaky]")
    # The live state and the last hour's traffic arrive with the list, in the same two calls.
    page.wait_for_function("() => document.querySelector('tr[data-name=flaky] td:nth-child(4)')"
                           ".innerText === '8'")
    assert "zygote" in page.inner_text("tr[data-name=flaky] td:nth-child(3)")
    # The key is in this tab's sessionStorage only: not a cookie, not in the URL.
    assert page.evaluate("sessionStorage.getItem('squall.key')") == platform.admin_key
    assert page.evaluate("document.cookie") == ""
    assert platform.admin_key not in page.url
    shots.take("functions")


def _function_page(page: Any, shots: Shots) -> None:
    page.click("tr[data-name=flaky] a")
    page.wait_for_function("() => window.squallConsole.charts && window.squallConsole.charts.name"
                           " === 'flaky'")
    charts = page.evaluate("window.squallConsole.charts")
    assert sum(charts["invocations"]) == 8 and sum(charts["errors"]) == 3
    # uPlot draws each chart on a canvas: four charts, each with its series.
    page.wait_for_function("() => document.querySelectorAll('.chart canvas').length === 4")
    assert page.locator("[data-chart=invocations] .u-legend").count() == 1
    shots.take("function-overview")


def _invocation(page: Any, shots: Shots) -> None:
    page.click("[data-tab=invocations]")
    page.wait_for_function("() => window.squallConsole.invocations"
                           " && window.squallConsole.invocations.length === 8")
    page.select_option("#inv-status", "failed")
    page.wait_for_function("() => window.squallConsole.invocations.length === 3")
    page.locator("tr.clickable", has_text="async").first.click()
    page.wait_for_selector("#timeline")
    page.wait_for_function("() => window.squallConsole.opened && window.squallConsole.opened.logs")
    logs = page.inner_text("#invocation-logs")
    assert "asked to fail #99" in logs and "REPORT RequestId" in logs
    assert page.locator("#timeline .seg.run").count() == 1
    assert page.locator("#timeline .seg.queued").count() == 1  # an async event waited in line
    shots.take("invocation")


def _live_tail(page: Any, platform: PlatformProc, shots: Shots) -> None:
    page.click("[data-tab=logs]")
    page.wait_for_function("() => window.squallConsole.tail"
                           " && window.squallConsole.tail.length > 0")
    assert platform.invoke("flaky", {"n": "tail-marker-7"}).status_code == 200
    # The tail polls every second: the new line shows up without a reload.
    page.wait_for_function("() => document.querySelector('#log-tail').innerText"
                           ".includes('tail-marker-7')")
    shots.take("live-logs")


def _versions_and_triggers(page: Any, platform: PlatformProc, shots: Shots) -> None:
    r = platform.http.put("/api/v1/functions/flaky/aliases/prod", json={"version": 1})
    assert r.status_code == 201, r.text
    r = platform.http.post("/api/v1/functions/flaky/triggers", json={
        "type": "schedule", "name": "hourly", "config": {"rate": "rate(1 hour)"}})
    assert r.status_code == 201, r.text
    page.click("[data-tab=versions]")
    page.wait_for_selector("td >> text=prod")
    shots.take("versions")
    page.click("[data-tab=triggers]")
    page.wait_for_selector("td >> text=hourly")
    shots.take("triggers")
    page.click("[data-tab=config]")
    page.wait_for_selector("dl.kv >> text=handler.handler")
    shots.take("configuration")


def _usage(page: Any, shots: Shots) -> None:
    page.click("[data-nav=usage]")
    page.wait_for_function("() => window.squallConsole.usage")
    usage = page.evaluate("window.squallConsole.usage")
    (flaky,) = [f for f in usage["functions"] if f["name"] == "flaky"]
    assert flaky["invocations"] >= 9 and flaky["cost"] > 0
    page.wait_for_selector("text=By tenant")
    shots.take("usage")


def _redrive(page: Any, platform: PlatformProc, dead_id: str, shots: Shots) -> None:
    page.click("[data-nav=dlq]")
    button = page.locator(f"[data-redrive='{dead_id}']")
    button.wait_for()
    page.locator("tr.clickable", has_text="ValueError").first.click()
    page.wait_for_selector("#dlq-detail >> text=asked to fail #99")
    shots.take("dead-letters")
    button.click()
    page.wait_for_selector(".toast >> text=Redriven")
    got = platform.http.get(f"/api/v1/dlq/{dead_id}").json()
    assert got["redriven_at"] is not None and got["redrive_request_id"]
    shots.take("redriven")


def _deploy(page: Any, platform: PlatformProc, tmp_path: Path, shots: Shots) -> None:
    bundle = tmp_path / "uploaded.zip"
    bundle.write_bytes(_zip({"handler.py": "def handler(event, context):\n"
                                           "    return 'from the console'\n"}))
    page.click("[data-nav=deploy]")
    page.set_input_files("#deploy-file", str(bundle))
    page.click("form.deploy button[type=submit]")
    page.wait_for_selector("#deploy-result .success")
    assert "uploaded" in page.inner_text("#deploy-result")
    assert platform.invoke("uploaded").json() == "from the console"
    shots.take("deployed")
