"""The durable queue's store functions on a real SQLite file, and the pure retry arithmetic."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from squall.events.retry import RetryPolicy, after_failure, backoff_s, expired
from squall.store import queue
from squall.store.db import Database, GroupCommit


def put(conn: sqlite3.Connection, id: str, now: float = 100.0, key: str | None = None,
        function: str = "f") -> tuple[str, bool]:
    return queue.enqueue(conn, id=id, function=function, namespace="default", trigger="async",
                         payload=json.dumps({"id": id}), now=now, idempotency_key=key)


def test_enqueue_claim_succeed(db: Database) -> None:
    def run(c: sqlite3.Connection) -> None:
        assert put(c, "a") == ("a", True)
        assert put(c, "b", now=101.0) == ("b", True)
        assert queue.claim(c, now=99.0, limit=8, lease_s=30) == []  # nothing due yet
        got = queue.claim(c, now=102.0, limit=1, lease_s=30)
        assert [(r["id"], r["status"], r["attempts"]) for r in got] == [("a", "running", 1)]
        assert [r["id"] for r in queue.claim(c, now=102.0, limit=8, lease_s=30)] == ["b"]
        assert queue.claim(c, now=103.0, limit=8, lease_s=30) == []  # both leased
        queue.succeed(c, "a", now=104.0, result={"ok": 1})
        ev = queue.get_event(c, "a")
        assert ev is not None
        assert (ev["status"], json.loads(ev["result"]), ev["finished_at"]) == (
            "succeeded", {"ok": 1}, 104.0)

    db.run_sync(run)


def test_listing_by_status_is_right_and_does_not_walk_finished_events(db: Database) -> None:
    """Running and retrying events are found through the status index (a listing by status
    used to walk every event of the function), with the same rows and order as before."""
    def run(c: sqlite3.Connection) -> None:
        for i in range(300):
            put(c, f"e{i:03d}", now=100.0 + i)
        got = sorted(r["id"] for r in queue.claim(c, now=1000.0, limit=300, lease_s=30))
        queue.succeed_many(c, [{"id": r, "now": 1001.0, "result": None, "follow_up": None}
                               for r in got[:290]])
        queue.retry_later(c, "e295", now=1001.0, error={"errorType": "E"},
                          next_attempt_at=2000.0)
        running = queue.list_events(c, function="f", status="running", namespace="default",
                                    limit=3)
        assert [r["id"] for r in running] == ["e299", "e298", "e297"]  # newest first
        failed = queue.list_events(c, function="f", status="failed", limit=10)
        assert [r["id"] for r in failed] == ["e295"]
        assert queue.list_events(c, function="other", status="running") == []
        done = queue.list_events(c, function="f", status="succeeded", limit=2)
        assert [r["id"] for r in done] == ["e289", "e288"]
        if isinstance(c, sqlite3.Connection):  # the plan: the status index, not the function's
            seen: list[str] = []
            c.set_trace_callback(seen.append)  # the statement as run, its values filled in
            try:
                queue.list_events(c, function="f", status="running", limit=1)
            finally:
                c.set_trace_callback(None)
            plan = " ".join(str(tuple(r)) for r in c.execute("EXPLAIN QUERY PLAN " + seen[-1]))
            assert "events_status" in plan and "events_function" not in plan, plan

    db.run_sync(run)


def test_lease_expiry_and_recover(db: Database) -> None:
    def run(c: sqlite3.Connection) -> None:
        put(c, "a")
        put(c, "b")
        queue.claim(c, now=100.0, limit=8, lease_s=30)
        assert queue.next_due_at(c) == 130.0
        # A delivery that outlived its lease is claimed again (at least once), attempt 2.
        again = queue.claim(c, now=130.0, limit=1, lease_s=30)
        assert [(r["id"], r["attempts"]) for r in again] == [("a", 2)]
        # After a crash every running event is requeued at once, the interrupted attempt not
        # charged: a has 1 attempt left on its record, b 0.
        assert queue.recover(c, now=140.0) == 2
        rows = {r["id"]: r for r in queue.claim(c, now=140.0, limit=8, lease_s=30)}
        assert {k: r["attempts"] for k, r in rows.items()} == {"a": 2, "b": 1}

    db.run_sync(run)


def test_due_times_and_overdue_events_come_from_the_partial_indexes(db: Database) -> None:
    """``next_due_at`` and ``overdue`` answer the same as a walk of every event would, and on
    SQLite by searching events_ready and events_leased (with a backlog of thousands, the
    status index made each call a walk of every queued event: ~1 ms at 7,000)."""
    def run(c: sqlite3.Connection) -> None:
        assert queue.next_due_at(c) is None and queue.overdue(c, before=1e9) == []
        for i in range(40):
            put(c, f"q{i:02d}", now=200.0 + i)  # due at 200..239
        for id, now in (("r", 50.0), ("s", 55.0), ("t", 58.0)):
            put(c, id, now=now)
        queue.claim(c, now=60.0, limit=3, lease_s=100)  # r, s, t running, leases until 160
        queue.retry_later(c, "t", now=61.0, error={"errorType": "E"}, next_attempt_at=150.0)
        queue.succeed(c, "s", now=62.0, result=None)
        assert queue.next_due_at(c) == 150.0  # t's retry, before r's lease runs out at 160
        got = queue.overdue(c, before=205.0, limit=4)
        # oldest due first: r (due at 50; its lease ran out at 160), t (150), q00, q01
        assert [(r["id"], r["attempts"]) for r in got] == [
            ("r", 1), ("t", 1), ("q00", 0), ("q01", 0)]
        assert [r["id"] for r in queue.overdue(c, before=155.0)] == ["t"]  # r's lease lives
        if isinstance(c, sqlite3.Connection):
            seen: list[str] = []
            c.set_trace_callback(seen.append)
            try:
                queue.next_due_at(c)
                queue.overdue(c, before=205.0)
            finally:
                c.set_trace_callback(None)
            plans = [" ".join(str(tuple(r)) for r in c.execute("EXPLAIN QUERY PLAN " + sql))
                     for sql in seen]
            assert all("events_status" not in p for p in plans), plans
            assert any("events_ready" in p for p in plans), plans
            assert any("events_leased" in p for p in plans), plans

    db.run_sync(run)


def test_retry_dead_letter_redrive(db: Database) -> None:
    err = {"errorType": "ValueError", "errorMessage": "boom", "stackTrace": []}

    def run(c: sqlite3.Connection) -> None:
        put(c, "a")
        row = queue.claim(c, now=100.0, limit=1, lease_s=30)[0]
        queue.retry_later(c, "a", now=101.0, error=err, next_attempt_at=105.0)
        assert queue.event_status(c, "a") == "failed"
        assert queue.claim(c, now=104.0, limit=1, lease_s=30) == []
        row = queue.claim(c, now=105.0, limit=1, lease_s=30)[0]
        assert row["attempts"] == 2
        follow = {"id": "dest", "function": "g", "namespace": "default", "trigger": "async",
                  "payload": "{}", "now": 106.0, "source": "destination:a"}
        queue.dead_letter(c, row, dlq_id="d1", now=106.0, error=err, follow_up=follow)
        assert queue.event_status(c, "a") == "dead_lettered"
        assert queue.event_status(c, "dest") == "queued"  # same transaction
        [dl] = queue.list_dead_letters(c, function="f")
        assert (dl["id"], dl["request_id"], dl["attempts"]) == ("d1", "a", 2)
        assert json.loads(dl["error"]) == err and json.loads(dl["payload"]) == {"id": "a"}

        out = queue.redrive(c, "d1", new_id="a2", now=107.0)
        assert out is not None and out["redrive_request_id"] == "a2"
        assert queue.list_dead_letters(c, function="f") == []
        assert len(queue.list_dead_letters(c, function="f", include_redriven=True)) == 1
        again = queue.redrive(c, "d1", new_id="a3", now=108.0)  # already redriven: no-op
        assert again is not None and again["redrive_request_id"] == "a2"
        assert queue.get_event(c, "a3") is None
        ev = queue.get_event(c, "a2")
        assert ev is not None and (ev["status"], ev["attempts"]) == ("queued", 0)
        assert queue.redrive(c, "nope", new_id="x", now=1.0) is None

    db.run_sync(run)


def test_idempotency_release_prune(db: Database) -> None:
    def run(c: sqlite3.Connection) -> None:
        assert put(c, "a", key="k1") == ("a", True)
        assert put(c, "b", key="k1") == ("a", False)
        assert put(c, "c", key="k1", function="other") == ("c", True)  # keys are per function
        assert queue.get_event(c, "b") is None
        queue.claim(c, now=100.0, limit=1, lease_s=30)
        queue.release(c, "a", now=100.0, next_attempt_at=110.0)  # throttled: not charged
        ev = queue.get_event(c, "a")
        assert ev is not None and (ev["status"], ev["attempts"]) == ("queued", 0)
        queue.claim(c, now=110.0, limit=8, lease_s=30)
        queue.succeed(c, "a", now=111.0, result=None)
        assert queue.prune(c, before=111.5) == 1
        assert put(c, "d", key="k1") == ("d", True)  # the key went with the pruned event
        assert [e["id"] for e in queue.list_events(c, function="f")] == ["d"]

    db.run_sync(run)


def _item(id: str, key: str | None = None) -> dict[str, Any]:
    return {"id": id, "function": "f", "namespace": "default", "trigger": "async",
            "payload": "{}", "now": 100.0, "source": None, "idempotency_key": key,
            "traceparent": None}


def test_group_commit_writes_concurrent_enqueues_together_and_isolates_a_bad_one(
        db: Database) -> None:
    batches: list[int] = []

    def many(c: sqlite3.Connection, items: list[dict[str, Any]]) -> list[tuple[str, bool]]:
        batches.append(len(items))
        return queue.enqueue_many(c, items)

    writes = GroupCommit(db, many, lambda c, item: queue.enqueue(c, **item))

    async def burst(ids: list[str], keys: dict[str, str]) -> list[Any]:
        return await asyncio.gather(*(writes(_item(i, keys.get(i))) for i in ids),
                                    return_exceptions=True)

    # Writes that arrive before the db thread is free go together, and a key used twice within
    # one batch gives the second the first one's id.
    out = asyncio.run(burst([f"a{i}" for i in range(20)], {"a3": "k", "a7": "k"}))
    assert batches == [20]
    assert out[3] == ("a3", True) and out[7] == ("a3", False)
    assert all(out[i] == (f"a{i}", True) for i in range(20) if i != 7)

    # A batch with one bad item (an id already taken) fails that item's caller only: the batch
    # is rolled back and each item written alone.
    batches.clear()
    out = asyncio.run(burst(["b0", "b1", "a5", "b2"], {}))
    assert isinstance(out[2], Exception) and not isinstance(out[2], asyncio.CancelledError)
    assert [out[0], out[1], out[3]] == [("b0", True), ("b1", True), ("b2", True)]
    assert batches == [4]
    ids = sorted(e["id"] for e in db.run_sync(lambda c: queue.list_events(c, function="f",
                                                                          limit=100)))
    assert ids == sorted([f"a{i}" for i in range(20) if i != 7] + ["b0", "b1", "b2"])


def test_survives_reopen(tmp_path: Path) -> None:
    # A committed enqueue is in the file: a new connection (a restarted platform) sees it.
    d = Database(tmp_path / "q.db")
    d.open()
    d.run_sync(lambda c: put(c, "a"))
    d.close()
    d2 = Database(tmp_path / "q.db")
    d2.open()
    assert d2.run_sync(lambda c: queue.event_status(c, "a")) == "queued"
    d2.close()


@pytest.mark.parametrize(("attempt", "rand", "expected"), [
    (1, 0.5, 0.5),       # window [0, 1)
    (2, 0.5, 1.0),       # [0, 2)
    (5, 0.25, 4.0),      # [0, 16)
    (10, 0.999, 299.7),  # 2**9 = 512 > cap 300
    (200, 1.0, 300.0),   # no overflow for absurd attempts
    (0, 0.5, 0.5),       # treated as attempt 1
])
def test_backoff_full_jitter(attempt: int, rand: float, expected: float) -> None:
    assert backoff_s(attempt, rand=rand) == pytest.approx(expected)


@pytest.mark.parametrize(("async_", "attempt", "now", "reason", "retry_at"), [
    ({}, 1, 10.0, "retry", 10.5),
    ({}, 2, 10.0, "retry", 11.0),
    ({}, 3, 10.0, "retries_exhausted", None),          # default: 2 retries = 3 attempts
    ({"max_retries": 0}, 1, 10.0, "retries_exhausted", None),
    ({"max_event_age_s": 60}, 1, 59.8, "event_expired", None),  # 59.8 + 0.5 > 0 + 60
    ({"max_event_age_s": 60}, 1, 59.0, "retry", 59.5),
])
def test_after_failure(async_: dict[str, Any], attempt: int, now: float, reason: str,
                       retry_at: float | None) -> None:
    policy = RetryPolicy.from_config(async_)
    d = after_failure(policy, attempt=attempt, created_at=0.0, now=now, rand=0.5)
    assert (d.reason, d.retry_at) == (reason, retry_at)


def test_policy_from_config() -> None:
    p = RetryPolicy.from_config({"max_retries": 5, "on_failure": "function:dlq-handler"})
    assert (p.max_attempts, p.max_event_age_s, p.on_failure, p.on_success) == (
        6, 21600.0, "function:dlq-handler", None)
    assert expired(p, created_at=0, now=21600.5) and not expired(p, created_at=0, now=21600)


def test_a_claim_under_load_waits_for_more_free_slots(tmp_path: Path) -> None:
    """With deliveries in flight and a single slot free, the dispatcher lets more slots free
    (up to ``CLAIM_GATHER_S``) and claims them in one transaction, not one event per
    transaction; when none frees meanwhile it claims what it has."""
    from types import SimpleNamespace

    from squall.events import queues

    d = Database(tmp_path / "squall.db")
    d.open()
    for i in range(40):
        d.run_sync(lambda c, i=i: put(c, f"e{i:02d}"))

    class FakeWorker:  # 64 slots, 63 busy
        lease_s = 30.0

        def __init__(self, wake: asyncio.Event) -> None:
            self.busy = 63
            self.started: list[str] = []
            self.wake = wake

        def free(self) -> int:
            return 64 - self.busy

        def start(self, tg: asyncio.TaskGroup, lease: Any) -> None:
            self.started.append(lease.row["id"])

        async def housekeeping(self, now: float) -> None:
            self.wake.set()  # as a delivery finishing would: the step ends after its claim

    async def one_step(finishing: int) -> list[str]:
        wake = asyncio.Event()
        worker = FakeWorker(wake)
        svc = SimpleNamespace(wake=wake, clock=lambda: 1000.0, db=d, workers=64)

        async def deliveries_finish() -> None:  # during the gather, each wakes the dispatcher
            for _ in range(finishing):
                await asyncio.sleep(0)
                worker.busy -= 1
                wake.set()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(deliveries_finish())
            await queues.TableQueue(svc).step(worker, tg)  # type: ignore[arg-type]
        return worker.started

    # 15 more finish during the gather: one claim of 16, oldest first
    assert asyncio.run(one_step(15)) == [f"e{i:02d}" for i in range(16)]
    # nothing finishes: after the gather, the one free slot takes the oldest left
    assert asyncio.run(one_step(0)) == ["e16"]
    d.close()


def test_an_event_written_leased_is_claimed_like_any_other(db: Database) -> None:
    """``TableQueue.reserve``'s write: the row is the one ``claim`` would have left (running,
    attempt 1, leased), so it is not claimed twice while leased, is claimed again when the
    lease runs out, and is requeued by the startup recovery after a crash."""
    def run(c: sqlite3.Connection) -> None:
        item = dict(id="h", function="f", namespace="default", trigger="async",
                    payload='{"x":1}', now=100.0, source=None, idempotency_key=None,
                    traceparent=None, lease_until=130.0)
        assert queue.enqueue(c, **item) == ("h", True)
        stored = queue.get_event(c, "h")
        assert stored == {**queue.leased_row(**item), "result": None, "error": None}
        assert queue.claim(c, now=120.0, limit=8, lease_s=30) == []  # its lease holds
        assert [(r["id"], r["attempts"]) for r in queue.claim(c, now=130.0, limit=8,
                                                              lease_s=30)] == [("h", 2)]
        assert queue.recover(c, now=140.0) == 1  # a crash: requeued, that attempt not charged
        assert [(r["id"], r["attempts"]) for r in queue.claim(c, now=140.0, limit=8,
                                                              lease_s=30)] == [("h", 2)]

    db.run_sync(run)


def test_events_are_handed_over_only_when_the_dispatcher_has_caught_up(tmp_path: Path) -> None:
    """``TableQueue.reserve`` promises a slot only after a claim that left nothing due, with a
    slot free and nobody asking the dispatcher to look again (a queued write, another writer's
    wake); ``hand`` starts the row or gives the slot back; a delivery that finishes wakes the
    dispatcher only when events may be waiting for its slot."""
    from types import SimpleNamespace

    from squall.events import queues

    d = Database(tmp_path / "squall.db")
    d.open()
    d.run_sync(lambda c: put(c, "queued-before"))

    class Worker:
        lease_s = 30.0

        def __init__(self) -> None:
            self.busy = 0
            self.reserved = 0
            self.started: list[str] = []

        def free(self) -> int:
            return 4 - self.busy - self.reserved

        def start(self, tg: asyncio.TaskGroup, lease: Any) -> None:
            self.started.append(lease.row["id"])
            self.busy += 1

        async def housekeeping(self, now: float) -> None:
            pass

    async def scenario() -> None:
        wake = asyncio.Event()
        svc = SimpleNamespace(wake=wake, clock=lambda: 1000.0, db=d, workers=4)
        worker = Worker()
        tq = queues.TableQueue(svc)  # type: ignore[arg-type]
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(tq.run(worker))  # type: ignore[arg-type]
            await asyncio.sleep(0.05)
            assert worker.started == ["queued-before"]  # claimed: 1 of 4 slots, caught up
            assert tq.reserve() == 30.0 and worker.reserved == 1
            tq.hand({"id": "handed", "payload": "{}"})
            assert worker.started == ["queued-before", "handed"] and worker.reserved == 0
            assert tq.reserve() == 30.0
            tq.hand(None)  # the write failed, or the idempotency key's first event came back
            assert worker.reserved == 0 and worker.started == ["queued-before", "handed"]
            tq.freed()
            assert not wake.is_set()  # caught up: nothing waits for the slot
            worker.busy = 4
            assert tq.reserve() is None  # no free slot
            worker.busy = 2
            wake.set()  # another writer (storage events, a connector) wrote rows
            assert tq.reserve() is None
            await asyncio.sleep(0.05)  # the dispatcher looked: nothing due, caught up again
            assert tq.reserve() == 30.0
            tq.hand(None)
            d.shared = True  # other processes write this store (--workers): they claim
            assert tq.reserve() is None
            d.shared = False
            await tq.publish([queues.EventRef("queued-now", "default")])  # written queued
            assert tq.reserve() is None
            runner.cancel()
        assert tq.reserve() is None  # stopped

    asyncio.run(scenario())
    d.close()
