"""Chaos, bounded for CI: 2,000 async events submitted by a few concurrent clients while the
platform is killed with kill -9 three times (restarted each time on the same data dir).

The invariant (docs: "an accepted async event is never lost, even with kill -9 at any moment;
delivery is at least once"): every event whose 202 arrived runs at least once. Duplicates are
allowed and reported. What ran is counted outside the platform: the function POSTs its
``context.aws_request_id`` (the event id for async attempts) to a collector this test runs on
127.0.0.1 (functions are sandboxed but share the host network by default), so an execution whose
record was lost in a kill still counts.

The kill moments are random; the seed is printed (and SQUALL_CHAOS_SEED replays one run).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import PlatformProc, wait_for

EVENTS = 2000
CLIENTS = 4
ASYNC = {"X-Squall-Invocation-Type": "Event"}
REPORTER = """
import os
import urllib.request

URL = os.environ["COLLECTOR_URL"]

def handler(event, context):
    req = urllib.request.Request(URL, data=context.aws_request_id.encode(), method="POST")
    urllib.request.urlopen(req, timeout=10).read()
"""


class Collector:
    """A tiny HTTP server counting the request ids POSTed to it."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        lock = threading.Lock()
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                rid = self.rfile.read(int(self.headers["Content-Length"])).decode()
                with lock:
                    seen[rid] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Collector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Submitters:
    """``CLIENTS`` threads submitting EVENTS in all. A request that fails (the platform is
    down) is sent again once the platform is back (``up``); only a 202 counts as accepted."""

    def __init__(self, p: PlatformProc) -> None:
        self.p = p
        self.up = threading.Event()
        self.up.set()
        self.lock = threading.Lock()
        self.accepted: list[str] = []
        self.refused: Counter[str] = Counter()  # connection errors and non-202 answers
        self.threads = [threading.Thread(target=self._run, args=(EVENTS // CLIENTS,), daemon=True)
                        for _ in range(CLIENTS)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def done(self) -> bool:
        return not any(t.is_alive() for t in self.threads)

    def _run(self, count: int) -> None:
        auth = {k: v for k, v in self.p.http.headers.items() if k.lower() == "authorization"}
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=self.p.url, headers={**auth, **ASYNC}, timeout=15) as http:
            sent = 0
            while sent < count and time.monotonic() < deadline:
                self.up.wait(60)
                try:
                    r = http.post("/api/v1/functions/reporter/invocations", json={"n": sent})
                except httpx.HTTPError as exc:
                    self._refused(type(exc).__name__)
                    continue
                if r.status_code != 202:
                    self._refused(str(r.status_code))
                    continue
                with self.lock:
                    self.accepted.append(r.json()["request_id"])
                sent += 1

    def _refused(self, why: str) -> None:
        with self.lock:
            self.refused[why] += 1


def kill_and_restart(p: PlatformProc, subs: Submitters) -> None:
    subs.up.clear()
    p.kill9()
    p.start()
    subs.up.set()


def test_kill9_three_times_loses_no_accepted_event(
        platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    seed = int(os.environ.get("SQUALL_CHAOS_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    # Two kills while clients submit (deliveries run alongside), one once submission is over
    # and the backlog is being delivered.
    during_submit = sorted(rng.sample(range(EVENTS // 10, EVENTS * 8 // 10), 2))
    t0 = time.monotonic()
    with Collector() as collector:
        platform.deploy(make_fn("reporter", REPORTER, f"""
            timeout_s = 15
            [env]
            COLLECTOR_URL = "{collector.url}"
        """))
        subs = Submitters(platform)
        subs.start()
        for at in during_submit:
            wait_for(lambda at=at: len(subs.accepted) >= at or subs.done(), timeout=60,
                     message=f"{at} accepted events")
            kill_and_restart(platform, subs)
        wait_for(subs.done, timeout=120, message="the submitters to finish")
        accepted = list(subs.accepted)
        target = rng.randint(len(accepted) // 4, len(accepted) * 3 // 4)
        wait_for(lambda: len(collector.seen) >= target, timeout=60,
                 message=f"{target} deliveries")
        at_third_kill = len(collector.seen)
        kill_and_restart(platform, subs)

        def all_ran() -> bool:
            return all(rid in collector.seen for rid in accepted)

        try:
            wait_for(all_ran, timeout=60, message="every accepted event to run")
        except AssertionError:
            pass  # counted and reported below
        seen = Counter(collector.seen)
    lost = [rid for rid in accepted if rid not in seen]
    duplicates = sum(n - 1 for rid, n in seen.items() if n > 1)
    unknown = sum(1 for rid in seen if rid not in set(accepted))
    print(f"\nchaos seed {seed}: kills after {during_submit} accepted and at"
          f" {at_third_kill}/{len(accepted)} delivered;"
          f" accepted {len(accepted)}, lost {len(lost)}, duplicates {duplicates}, ran without"
          f" a 202 (request cut by a kill) {unknown}, refused {dict(subs.refused)},"
          f" {time.monotonic() - t0:.0f} s")
    assert len(accepted) == EVENTS
    assert lost == [], f"{len(lost)} accepted events never ran (seed {seed}): {lost[:5]}"
