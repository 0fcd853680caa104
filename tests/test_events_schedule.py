"""Schedules: parsing, the pure next-fire decision (tables, time passed in), the scheduler loop with
a controlled clock on a real SQLite file, and end to end on the real server."""

from __future__ import annotations

import asyncio
import itertools
import time
import zoneinfo
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from squall.bundle.spec import FunctionConfig
from squall.config import Settings
from squall.errors import BadRequest
from squall.events.scheduler import (
    Schedule,
    Scheduler,
    latest_tick,
    next_tick,
    parse_schedule,
    plan,
    scheduled_event,
)
from squall.events.service import EventService
from squall.store import queue
from squall.store.db import Database

HOUR = 3600.0


def ts(s: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(s).replace(tzinfo=zoneinfo.ZoneInfo(tz)).timestamp()


@pytest.mark.parametrize("config", [
    {}, {"cron": "* * * * *", "rate": "rate(1 hour)"}, {"cron": "61 * * * *"},
    {"cron": "* * * *"}, {"cron": "0 0 9 * * * 2030"}, {"rate": "rate(0 minutes)"},
    {"rate": "rate(5 fortnights)"}, {"rate": "every 5 minutes"},
    {"cron": "* * * * *", "timezone": "Mars/Olympus"}, {"rate": "rate(1 hour)", "catch_up": "all"},
    {"rate": "rate(1 hour)", "allow_overlap": "yes"}, {"rate": "rate(1 hour)", "when": "now"},
])
def test_invalid_schedules(config: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as e:
        parse_schedule(config)
    assert e.value.code == "invalid_schedule" and e.value.status == 400


def test_parse() -> None:
    assert parse_schedule({"rate": "rate(5 minutes)"}).rate_s == 300
    assert parse_schedule({"rate": "rate(1 second)"}).rate_s == 1
    assert parse_schedule({"rate": " rate( 2 days ) "}).rate_s == 172800
    s = parse_schedule({"cron": "*/10 * * * * *", "timezone": "Asia/Tokyo", "catch_up": "skip",
                        "allow_overlap": True})
    assert (s.cron, s.timezone, s.catch_up, s.allow_overlap) == (
        "*/10 * * * * *", "Asia/Tokyo", "skip", True)


@pytest.mark.parametrize(("config", "now", "latest", "nxt"), [
    # rate ticks are anchored at the epoch
    ({"rate": "rate(5 minutes)"}, 1000.0, 900.0, 1200.0),
    ({"rate": "rate(1 second)"}, 7.0, 7.0, 8.0),  # a tick exactly at now counts as reached
    # 5-field cron in a time zone: 09:00 Paris is 08:00 UTC in winter
    ({"cron": "0 9 * * *", "timezone": "Europe/Paris"}, ts("2026-01-10T12:00:00"),
     ts("2026-01-10T08:00:00"), ts("2026-01-11T08:00:00")),
    # 6-field cron, seconds first
    ({"cron": "*/15 * * * * *"}, ts("2026-01-10T12:00:20"), ts("2026-01-10T12:00:15"),
     ts("2026-01-10T12:00:30")),
    ({"cron": "*/15 * * * * *"}, ts("2026-01-10T12:00:15"), ts("2026-01-10T12:00:15"),
     ts("2026-01-10T12:00:30")),
])
def test_ticks(config: dict[str, Any], now: float, latest: float, nxt: float) -> None:
    s = parse_schedule(config)
    assert latest_tick(s, now) == latest
    assert next_tick(s, now) == nxt


HOURLY = Schedule(rate_s=3600)
HOURLY_SKIP = Schedule(rate_s=3600, catch_up="skip")


@pytest.mark.parametrize(("s", "last", "now", "first", "expected"), [
    (HOURLY, None, 5000.0, True, ("anchor", 3600.0)),   # new: first firing is the next tick
    (HOURLY, 3600.0, 7199.0, False, ("wait", None)),
    (HOURLY, 3600.0, 7200.0, False, ("fire", 7200.0)),
    (HOURLY, 3600.0, 7200.0, True, ("fire", 7200.0)),   # one missed tick, catch up once
    (HOURLY, 3600.0, 20000.0, True, ("fire", 18000.0)),  # 4 missed ticks coalesce into one
    (HOURLY_SKIP, 3600.0, 20000.0, True, ("skip", 18000.0)),  # missed in downtime: skipped
    (HOURLY_SKIP, 3600.0, 7200.5, False, ("fire", 7200.0)),   # while running: fired
])
def test_plan(s: Schedule, last: float | None, now: float, first: bool,
              expected: tuple[str, float | None]) -> None:
    assert plan(s, last_tick=last, now=now, first_look=first) == expected


def test_scheduled_event_shape() -> None:
    assert scheduled_event("rid", "trg", ts("2026-01-10T12:00:15")) == {
        "version": "0", "id": "rid", "detail-type": "Scheduled Event",
        "source": "squall.scheduler", "time": "2026-01-10T12:00:15Z", "resources": ["trg"],
        "detail": {}}


# --- the loop with a controlled clock ----------------------------------------------------------
# The registry and log sink are the scheduler's outer edges; the queue is the real SQLite store.

class Registry:
    def get(self, name: str, namespace: str = "default") -> Any:
        return SimpleNamespace(name=name, namespace=namespace, version=1, config=FunctionConfig())

    def add_listener(self, fn: Any) -> None:
        pass


class Logs:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def append(self, function: str, request_id: str, line: str) -> None:
        self.lines.append(line)



async def until(pred: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + 5.0
    while not (v := pred()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)
    return v


class Harness:
    """An EventService whose scheduler runs alone, on a clock the test sets."""

    def __init__(self, db: Database) -> None:
        self.now = 10_000.0
        self.logs = Logs()
        self.svc = EventService(Settings(), db, None, Registry(), self.logs,  # type: ignore[arg-type]
                                clock=lambda: self.now)
        self.task: asyncio.Task[None] | None = None

    async def restart(self) -> None:
        """Stop the loop and start a fresh scheduler (a platform restart, as far as it knows)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.svc.scheduler = Scheduler(self.svc)
        self.task = asyncio.create_task(self.svc.scheduler.run())
        await self.settle()

    async def settle(self) -> None:
        """Make the loop evaluate at the current clock and wait until it has."""
        sched = self.svc.scheduler
        target = sched.passes + 1
        sched.changed.set()
        await until(lambda: sched.passes >= target)

    async def firings(self, tid: str) -> list[dict[str, Any]]:
        return await self.svc.db.run(lambda c: queue.list_events(c, source=tid))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@pytest.mark.parametrize(("catch_up", "fired_after_downtime"), [("once", 1), ("skip", 0)])
async def test_catch_up_after_downtime(db: Database, catch_up: str,
                                       fired_after_downtime: int) -> None:
    h = Harness(db)
    t = await h.svc.triggers.create("f", {"type": "schedule",
                                          "config": {"rate": "rate(1 hour)",
                                                     "catch_up": catch_up}})
    await h.restart()
    assert await h.firings(t["id"]) == []  # anchored at 7200, nothing fired
    h.now = 7200 + 3 * HOUR + 10  # "down" for three ticks
    await h.restart()
    fired = await h.firings(t["id"])
    assert len(fired) == fired_after_downtime
    await h.settle()  # evaluating again at the same time does not fire again
    assert len(await h.firings(t["id"])) == fired_after_downtime
    if fired:
        assert fired[0]["trigger"] == "schedule"
        assert '"time":"1970-01-01T05:00:00Z"' in fired[0]["payload"]  # latest missed: 18000
    await h.close()


async def test_no_overlap_then_next_tick(db: Database) -> None:
    h = Harness(db)
    t = await h.svc.triggers.create("f", {"type": "schedule",
                                          "config": {"rate": "rate(1 hour)"}})
    await h.restart()
    h.now = 10_800.0
    await h.settle()
    [first] = await h.firings(t["id"])  # nobody delivers it: it stays queued
    h.now = 14_400.0
    await h.settle()
    assert len(await h.firings(t["id"])) == 1  # skipped: the previous firing is in flight
    assert any("tick skipped" in line for line in h.logs.lines)
    await db.run(lambda c: queue.succeed(c, first["id"], now=h.now, result=None))
    h.now = 18_000.0
    await h.settle()
    assert len(await h.firings(t["id"])) == 2
    status = (await h.svc.triggers.list("f"))[0]["status"]
    assert status["state"] == "running" and status["last_fired"] is not None
    await h.close()


async def test_overlap_allowed(db: Database) -> None:
    h = Harness(db)
    t = await h.svc.triggers.create("f", {"type": "schedule",
                                          "config": {"rate": "rate(1 hour)",
                                                     "allow_overlap": True}})
    await h.restart()
    for now in (10_800.0, 14_400.0, 18_000.0):
        h.now = now
        await h.settle()
    assert len(await h.firings(t["id"])) == 3
    await h.close()


# --- end to end --------------------------------------------------------------------------------

ECHO = "def handler(event, context):\n    return event\n"


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_schedules_end_to_end(platform: Any, make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("tick", ECHO, """
        [[triggers]]
        type = "schedule"
        name = "every-second"
        cron = "* * * * * *"
    """))
    platform.deploy(make_fn("slowtick", """
        import time
        def handler(event, context):
            time.sleep(1.5)
            return event["time"]
    """, """
        [[triggers]]
        type = "schedule"
        rate = "rate(1 second)"
    """))
    triggers = {t["function"]: t for t in platform.http.get("/api/v1/triggers").json()["triggers"]}

    def done(fn: str, n: int) -> list[dict[str, Any]]:
        rows = platform.http.get("/api/v1/invocations",
                                 params={"source": triggers[fn]["id"]}).json()["invocations"]
        finished = [r for r in rows if r["status"] == "succeeded"]
        return sorted(finished, key=lambda r: r["created_at"]) if len(finished) >= n else []

    ticks = wait_for(lambda: done("tick", 2))
    ev = ticks[0]["result"]
    assert ev["detail-type"] == "Scheduled Event" and ev["source"] == "squall.scheduler"
    assert ev["resources"] == [triggers["tick"]["id"]] and ev["id"] == ticks[0]["request_id"]
    assert ticks[0]["trigger"] == "schedule"
    assert len({r["result"]["time"] for r in ticks}) == len(ticks)  # one firing per tick

    slow = wait_for(lambda: done("slowtick", 3), timeout=30)
    for before, after in itertools.pairwise(slow):  # never two at once
        assert after["created_at"] >= before["finished_at"]
    out = platform.cli("trigger", "ls").stdout
    assert "every-second" in out and "ago" in out
    logs = platform.http.get("/api/v1/functions/slowtick/logs").text
    assert "tick skipped" in logs


def test_schedule_example(platform: Any) -> None:
    platform.deploy(Path(__file__).parent.parent / "examples" / "schedule")
    got = platform.http.get("/api/v1/functions/cleanup/triggers").json()["triggers"]
    assert sorted((t["name"], t["type"], t["origin"]) for t in got) == [
        ("every-5-min", "schedule", "toml"), ("morning", "schedule", "toml")]
