"""Schedules: cron and rate expressions, the pure next-fire decision, and the loop that fires them.

A schedule trigger's config: exactly one of
- ``cron``: 5 fields (minute hour day month weekday) or 6 with seconds FIRST (Quartz/Spring
  style: ``*/10 * * * * *`` = every 10 s), parsed by croniter, evaluated in ``timezone``
  (IANA name, default UTC);
- ``rate``: ``rate(N unit)``, unit second(s)|minute(s)|hour(s)|day(s), N >= 1. Rate ticks are
  anchored to the UNIX epoch, so ``rate(5 minutes)`` fires at :00, :05, :10 ...
and optionally ``catch_up`` = "once" (default: ticks missed while the platform was down fire once
at startup) or "skip", and ``allow_overlap`` (default false: a tick is skipped, with a log line,
while the previous firing's async invocation has not reached a final state).

Each firing is an async invocation (trigger "schedule") with an EventBridge-style payload.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from squall.aio import wait_event
from squall.errors import BadRequest
from squall.events.queues import EventRef
from squall.ids import new_request_id
from squall.store import queue

if TYPE_CHECKING:
    from squall.events.service import EventService

log = logging.getLogger("squall.events.scheduler")

MAX_SLEEP_S = 60.0
_RATE_RE = re.compile(r"^rate\(\s*(\d+)\s+(second|minute|hour|day)s?\s*\)$")
_UNIT_S = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_KEYS = {"cron", "rate", "timezone", "catch_up", "allow_overlap"}


class InvalidSchedule(BadRequest):
    code = "invalid_schedule"


@dataclass(frozen=True)
class Schedule:
    cron: str | None = None
    rate_s: int | None = None
    timezone: str = "UTC"
    catch_up: Literal["once", "skip"] = "once"
    allow_overlap: bool = False

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def _iter(self, at: float) -> croniter:
        assert self.cron is not None
        six = len(self.cron.split()) == 6
        return croniter(self.cron, dt.datetime.fromtimestamp(at, self.tz),
                        second_at_beginning=six)


def parse_schedule(config: dict[str, Any]) -> Schedule:
    """Validate a schedule trigger's config. Raises InvalidSchedule (400 invalid_schedule)."""
    unknown = set(config) - _KEYS
    if unknown:
        raise InvalidSchedule(f"unknown schedule keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    cron, rate = config.get("cron"), config.get("rate")
    if (cron is None) == (rate is None):
        raise InvalidSchedule("a schedule needs exactly one of 'cron' or 'rate'")
    tz = config.get("timezone", "UTC")
    try:
        ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(f"unknown timezone {tz!r}; use an IANA name like"
                              " 'Europe/Paris'") from None
    catch_up = config.get("catch_up", "once")
    if catch_up not in ("once", "skip"):
        raise InvalidSchedule(f"catch_up must be 'once' or 'skip', got {catch_up!r}")
    overlap = config.get("allow_overlap", False)
    if not isinstance(overlap, bool):
        raise InvalidSchedule(f"allow_overlap must be true or false, got {overlap!r}")
    if rate is not None:
        m = _RATE_RE.match(str(rate).strip())
        if not m or int(m.group(1)) < 1:
            raise InvalidSchedule(f"invalid rate expression {rate!r}: use e.g. 'rate(5 minutes)',"
                                  " 'rate(1 hour)'; the minimum is rate(1 second)")
        return Schedule(rate_s=int(m.group(1)) * _UNIT_S[m.group(2)], timezone=str(tz),
                        catch_up=catch_up, allow_overlap=overlap)
    expr = str(cron).strip()
    fields = len(expr.split())
    if fields not in (5, 6) or not croniter.is_valid(expr, second_at_beginning=fields == 6):
        raise InvalidSchedule(f"invalid cron expression {cron!r}: use 5 fields (min hour day"
                              " month weekday) or 6 with seconds first")
    return Schedule(cron=expr, timezone=str(tz), catch_up=catch_up, allow_overlap=overlap)


def latest_tick(s: Schedule, now: float) -> float:
    """The last tick at or before ``now``.
    rate(5 minutes) at now=1000: floor(1000/300)*300 = 900."""
    if s.rate_s is not None:
        return math.floor(now / s.rate_s) * s.rate_s
    # croniter's get_prev is strictly before its start: start 1 ms later so a tick at ``now``
    # itself counts as reached.
    return float(s._iter(now + 0.001).get_prev(float))


def next_tick(s: Schedule, after: float) -> float:
    """The first tick strictly after ``after``."""
    if s.rate_s is not None:
        return (math.floor(after / s.rate_s) + 1) * s.rate_s
    return float(s._iter(after).get_next(float))


Action = Literal["anchor", "wait", "fire", "skip"]


def plan(s: Schedule, *, last_tick: float | None, now: float,
         first_look: bool) -> tuple[Action, float | None]:
    """What to do with a schedule at ``now``; pure.

    - never evaluated before (``last_tick`` None): ("anchor", latest) - the first firing is the
      next tick after creation, not one in the past;
    - no tick since ``last_tick``: ("wait", None);
    - ticks since: ("fire", latest) - several missed ticks coalesce into one firing - except at
      the first look after a start with catch_up="skip": ("skip", latest). At the first look every
      due tick was missed while the platform was down.
    """
    latest = latest_tick(s, now)
    if last_tick is None:
        return "anchor", latest
    if latest <= last_tick:
        return "wait", None
    if first_look and s.catch_up == "skip":
        return "skip", latest
    return "fire", latest


def scheduled_event(request_id: str, trigger_id: str, tick: float) -> dict[str, Any]:
    """EventBridge's scheduled-event shape."""
    time = dt.datetime.fromtimestamp(tick, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"version": "0", "id": request_id, "detail-type": "Scheduled Event",
            "source": "squall.scheduler", "time": time, "resources": [trigger_id], "detail": {}}


class Scheduler:
    def __init__(self, service: EventService) -> None:
        self.svc = service
        self.changed = asyncio.Event()  # set by the trigger manager when schedules change
        self._seen: set[str] = set()
        self._schedules: dict[str, tuple[dict[str, Any], Schedule]] = {}
        self.passes = 0  # completed evaluation passes (observability; tests wait on it)

    async def run(self) -> None:
        while True:
            self.changed.clear()
            rows = await self.svc.db.run(queue.list_triggers)
            self._schedules = {}
            for t in rows:
                if t["type"] != "schedule":
                    continue
                try:
                    self._schedules[t["id"]] = (t, parse_schedule(t["config"]))
                except BadRequest as e:  # validated at creation; stored by an older version?
                    self.svc.triggers.set_status(t["id"], "error", e.message)
            now = self.svc.clock()
            wake_at = now + MAX_SLEEP_S
            for t, s in self._schedules.values():
                try:
                    await self._evaluate(t, s, now)
                except Exception as e:  # one broken schedule must not stop the others
                    log.exception("schedule %s failed", t["id"])
                    self.svc.triggers.set_status(t["id"], "error", f"{type(e).__name__}: {e}")
                wake_at = min(wake_at, next_tick(s, now))
            self.passes += 1
            delay = max(0.0, wake_at - self.svc.clock())
            await wait_event(self.changed, delay)

    async def _evaluate(self, t: dict[str, Any], s: Schedule, now: float) -> None:
        tid = t["id"]
        state = await self.svc.db.run(lambda c: queue.get_schedule_state(c, tid))
        first = tid not in self._seen
        self._seen.add(tid)
        action, tick = plan(s, last_tick=None if state is None else state["last_tick"], now=now,
                            first_look=first)
        if action == "wait" or tick is None:
            return
        if action == "fire" and state is not None and not s.allow_overlap:
            busy = state["in_flight_status"] not in (None, *queue.FINAL)
            if busy:
                self.svc.logs.append(t["function"], state["in_flight"],
                                     f"[squall] schedule {t['name']}: tick skipped, the previous"
                                     " firing is still running (allow_overlap = false)")
                action = "skip"
        if action in ("anchor", "skip"):
            await self.svc.db.run(lambda c: queue.set_schedule_anchor(c, tid, tick))
            self.svc.triggers.set_status(tid, "running")
            return
        await self._fire(t, tick)

    async def _fire(self, t: dict[str, Any], tick: float) -> None:
        svc = self.svc
        tid, fn = t["id"], t["function"]
        if svc.registry.get(fn, t["namespace"]) is None:
            svc.triggers.set_status(tid, "error", f"function {fn!r} does not exist")
            return
        rid = new_request_id()
        payload = json.dumps(scheduled_event(rid, tid, tick), separators=(",", ":"))
        event = {"id": rid, "function": fn, "namespace": t["namespace"], "trigger": "schedule",
                 "payload": payload, "now": svc.clock(), "source": tid}
        # False: another gateway sharing the store fired this tick first (the store's state of a
        # schedule only moves forward, in the same transaction as the event).
        if not await svc.db.run(lambda c: queue.fire_schedule(c, tid, tick, event)):
            return
        await svc.queue.publish([EventRef(rid, t["namespace"])])
        svc.triggers.set_status(tid, "running")
        svc.triggers.note(tid)
        svc.logs.append(fn, rid, f"[squall] schedule {t['name']} fired (tick"
                                 f" {scheduled_event(rid, tid, tick)['time']})")
