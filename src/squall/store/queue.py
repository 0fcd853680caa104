"""The durable async queue, dead letters, idempotency keys, triggers and schedule state (SQL only).

Every function takes the connection first and runs on the db thread (``Database.run``). Writes that
must be atomic use ``transaction``. Times are UNIX seconds (float). JSON columns hold text.

Event lifecycle (column ``status``)::

    queued --claim--> running --ok--> succeeded
                        |--error, retries left--> failed (at next_attempt_at) --claim--> running
                        |--error, none left / expired / function gone--> dead_lettered

A claim sets a lease (``lease_until``); a running event whose lease ran out is claimable again, and
``recover`` requeues every running event at startup: the process that held it is gone. With a
NATS JetStream carrier (squall.events.jetstream) the same lease is taken per delivered message
(``claim_ids``) instead of by ``claim``; the row stays the record either way.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from squall.store.db import Migration, is_postgres, transaction

SCHEMA: list[Migration] = [
    ("queue-0001", """
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    namespace TEXT NOT NULL DEFAULT 'default',
    trigger TEXT NOT NULL,
    source TEXT,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    lease_until REAL,
    started_at REAL,
    finished_at REAL,
    result TEXT,
    error TEXT
);
CREATE INDEX events_due ON events (status, next_attempt_at);
CREATE INDEX events_source ON events (source, created_at);
CREATE UNIQUE INDEX events_idem ON events (namespace, function, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE dead_letters (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    function TEXT NOT NULL,
    namespace TEXT NOT NULL DEFAULT 'default',
    trigger TEXT NOT NULL,
    payload TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    redriven_at REAL,
    redrive_request_id TEXT
);
CREATE INDEX dead_letters_function ON dead_letters (function, created_at);
CREATE TABLE triggers (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    namespace TEXT NOT NULL DEFAULT 'default',
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    config TEXT NOT NULL,
    origin TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (namespace, function, name)
);
CREATE TABLE schedule_state (
    trigger_id TEXT PRIMARY KEY,
    last_tick REAL,
    in_flight TEXT
)
"""),
    # W3C traceparent of the request that submitted the event: every attempt and destination
    # continues that trace (squall.observability.tracing).
    ("queue-0002-traceparent", "ALTER TABLE events ADD COLUMN traceparent TEXT"),
    # What ``claim`` and ``next_due_at`` walk, in order, without a sort; and the events API's
    # listing of one function's events, newest first.
    ("queue-0003-claim-indexes", """
CREATE INDEX events_ready ON events (next_attempt_at, created_at, id)
    WHERE status IN ('queued','failed');
CREATE INDEX events_leased ON events (lease_until, created_at, id) WHERE status='running';
CREATE INDEX events_function ON events (function, created_at)
"""),
]

FINAL = ("succeeded", "dead_lettered")
_EVENT_COLS = ("id, function, namespace, trigger, source, payload, status, attempts, "
               "idempotency_key, created_at, updated_at, next_attempt_at, lease_until, "
               "started_at, finished_at, result, error, traceparent")


# MAX(attempts-1, 0) in SQL both dialects speak (PostgreSQL's two-argument form is GREATEST)
_UNCHARGE = "CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"


def _row(r: sqlite3.Row | None) -> dict[str, Any] | None:
    return None if r is None else dict(r)


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), default=str)


# --- events ----------------------------------------------------------------------------------

def find_idempotent(conn: sqlite3.Connection, namespace: str, function: str,
                    key: str) -> str | None:
    r = conn.execute("SELECT id FROM events WHERE namespace=? AND function=? AND idempotency_key=?",
                     (namespace, function, key)).fetchone()
    return None if r is None else str(r[0])


def _insert_event(conn: sqlite3.Connection, *, id: str, function: str, namespace: str,
                  trigger: str, payload: str, now: float, source: str | None = None,
                  idempotency_key: str | None = None, traceparent: str | None = None,
                  lease_until: float | None = None) -> None:
    """A queued event; with ``lease_until``, one already claimed by the writer (its first
    attempt running, as ``claim`` would leave it): see ``TableQueue.reserve``."""
    if lease_until is None:
        conn.execute(
            "INSERT INTO events (id, function, namespace, trigger, source, payload, status,"
            " attempts, idempotency_key, created_at, updated_at, next_attempt_at, traceparent)"
            " VALUES (?,?,?,?,?,?,'queued',0,?,?,?,?,?)",
            (id, function, namespace, trigger, source, payload, idempotency_key, now, now, now,
             traceparent))
        return
    conn.execute(
        "INSERT INTO events (id, function, namespace, trigger, source, payload, status, attempts,"
        " idempotency_key, created_at, updated_at, next_attempt_at, lease_until, started_at,"
        " traceparent) VALUES (?,?,?,?,?,?,'running',1,?,?,?,?,?,?,?)",
        (id, function, namespace, trigger, source, payload, idempotency_key, now, now, now,
         lease_until, now, traceparent))


def leased_row(*, id: str, function: str, namespace: str, trigger: str, payload: str, now: float,
               source: str | None, idempotency_key: str | None, traceparent: str | None,
               lease_until: float | None) -> dict[str, Any]:
    """The row ``_insert_event`` wrote with a lease, as ``claim`` returns rows."""
    return {"id": id, "function": function, "namespace": namespace, "trigger": trigger,
            "source": source, "payload": payload, "status": "running", "attempts": 1,
            "idempotency_key": idempotency_key, "created_at": now, "updated_at": now,
            "next_attempt_at": now, "lease_until": lease_until, "started_at": now,
            "finished_at": None, "result": None, "error": None, "traceparent": traceparent}


def enqueue(conn: sqlite3.Connection, *, id: str, function: str, namespace: str, trigger: str,
            payload: str, now: float, source: str | None = None,
            idempotency_key: str | None = None, traceparent: str | None = None,
            lease_until: float | None = None) -> tuple[str, bool]:
    """Insert a queued event in one transaction. With a key already used for this function,
    return (first id, False) and insert nothing."""
    with transaction(conn):
        return _enqueue(conn, id=id, function=function, namespace=namespace, trigger=trigger,
                        payload=payload, now=now, source=source,
                        idempotency_key=idempotency_key, traceparent=traceparent,
                        lease_until=lease_until)


def enqueue_many(conn: sqlite3.Connection,
                 items: Sequence[dict[str, Any]]) -> list[tuple[str, bool]]:
    """``enqueue`` of each item (its keyword arguments), all in one transaction: a key used twice
    in the batch is found by the second, as if they had come one after the other."""
    with transaction(conn):
        return [_enqueue(conn, **item) for item in items]


def _enqueue(conn: sqlite3.Connection, *, id: str, function: str, namespace: str, trigger: str,
             payload: str, now: float, source: str | None, idempotency_key: str | None,
             traceparent: str | None, lease_until: float | None = None) -> tuple[str, bool]:
    if idempotency_key is not None:
        first = find_idempotent(conn, namespace, function, idempotency_key)
        if first is not None:
            return first, False
    _insert_event(conn, id=id, function=function, namespace=namespace, trigger=trigger,
                  payload=payload, now=now, source=source, idempotency_key=idempotency_key,
                  traceparent=traceparent, lease_until=lease_until)
    return id, True


def claim(conn: sqlite3.Connection, *, now: float, limit: int,
          lease_s: float) -> list[dict[str, Any]]:
    """Lease up to ``limit`` due events (queued/failed whose time has come, or running whose lease
    ran out), oldest due first; bump their attempt count."""
    if limit <= 0:
        return []
    # PostgreSQL, where gateways claim concurrently: each locks the rows it takes and skips the
    # rows another holds, in a read-committed transaction (a second claimer re-checks a row
    # another just took and finds it running). SQLite has one writer: nothing to skip.
    pg = is_postgres(conn)
    skip = " FOR UPDATE SKIP LOCKED" if pg else ""
    take = ("UPDATE events SET status='running', attempts=attempts+1, lease_until=?,"
            " started_at=?, updated_at=? WHERE id IN (SELECT id FROM events {} WHERE {} LIMIT ?"
            f"{skip}) RETURNING {_EVENT_COLS}")
    # Two walks of two partial indexes (queue-0003), each in order and stopping at ``limit``:
    # one query with an OR sorted every due row first, milliseconds with a backlog of 10,000.
    # SQLite is told the index: without statistics its planner prefers events_status and a sort.
    # Leases that ran out first (their events are the oldest), then what is due.
    with transaction(conn, isolation="read committed"):
        rows = conn.execute(take.format(
            "" if pg else "INDEXED BY events_leased",
            "status='running' AND lease_until<=? ORDER BY lease_until, created_at, id"),
            (now + lease_s, now, now, now, limit)).fetchall()
        if len(rows) < limit:
            rows += conn.execute(take.format(
                "" if pg else "INDEXED BY events_ready",
                "status IN ('queued','failed') AND next_attempt_at<=?"
                " ORDER BY next_attempt_at, created_at, id"),
                (now + lease_s, now, now, now, limit - len(rows))).fetchall()
    return [dict(r) for r in rows]


def claim_ids(conn: sqlite3.Connection, ids: Sequence[str], *, now: float,
              lease_s: float) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Lease the events a carrier delivered (``squall.events.jetstream``), each if it is due
    (queued/failed whose time has come, or running whose lease ran out); bump their attempt
    count. Returns (claimed rows, {id: status, next_attempt_at, lease_until} of the others).
    An id with no row is in neither. On PostgreSQL two gateways claiming the same id: the
    second waits for the first's row lock, re-checks, and finds it running."""
    if not ids:
        return [], {}
    marks = ",".join("?" * len(ids))
    with transaction(conn, isolation="read committed"):
        rows = conn.execute(
            f"UPDATE events SET status='running', attempts=attempts+1, lease_until=?,"
            f" started_at=?, updated_at=? WHERE id IN ({marks})"
            f" AND ((status IN ('queued','failed') AND next_attempt_at<=?)"
            f"   OR (status='running' AND lease_until<=?)) RETURNING {_EVENT_COLS}",
            (now + lease_s, now, now, *ids, now, now)).fetchall()
        claimed = [dict(r) for r in rows]
        taken = {r["id"] for r in claimed}
        rest = [i for i in ids if i not in taken]
        others: dict[str, dict[str, Any]] = {}
        if rest:
            for r in conn.execute(
                    "SELECT id, status, next_attempt_at, lease_until FROM events"
                    f" WHERE id IN ({','.join('?' * len(rest))})", rest).fetchall():
                others[r["id"]] = dict(r)
    return claimed, others


def extend_lease(conn: sqlite3.Connection, id: str, *, until: float) -> None:
    """A long attempt is still running here: move its lease on (no-op once it finished)."""
    conn.execute("UPDATE events SET lease_until=? WHERE id=? AND status='running'", (until, id))


def withdraw(conn: sqlite3.Connection, id: str) -> bool:
    """Delete an event that was never delivered (its carrier refused it: the submit fails).
    False when it is gone or was claimed meanwhile, so it must be kept."""
    cur = conn.execute("DELETE FROM events WHERE id=? AND status='queued' AND attempts=0", (id,))
    return cur.rowcount > 0


def undelivered(conn: sqlite3.Connection, *, since: float | None = None,
                until: float | None = None, due_before: float | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
    """Events never claimed (queued, no attempt yet) created in [since, until) and due before
    ``due_before``, oldest first: (id, namespace), what a carrier needs to publish them again."""
    where, args = ["status='queued' AND attempts=0"], []
    for cond, val in (("created_at>=?", since), ("created_at<?", until),
                      ("next_attempt_at<?", due_before)):
        if val is not None:
            where.append(cond)
            args.append(val)
    rows = conn.execute(f"SELECT id, namespace FROM events WHERE {' AND '.join(where)}"
                        " ORDER BY created_at LIMIT ?", (*args, limit)).fetchall()
    return [dict(r) for r in rows]


def overdue(conn: sqlite3.Connection, *, before: float,
            limit: int = 1000) -> list[dict[str, Any]]:
    """Unfinished events that became claimable before ``before`` and are still not running
    under a live lease: (id, namespace, attempts), oldest due first."""
    # Each half walks its partial index in order and stops at ``limit`` (queue-0003): one
    # query with an OR searched every unfinished event and sorted them.
    ready, leased = _hints(conn)
    rows = [*conn.execute(
        f"SELECT id, namespace, attempts, next_attempt_at FROM events {ready}"
        " WHERE status IN ('queued','failed') AND next_attempt_at<?"
        " ORDER BY next_attempt_at LIMIT ?", (before, limit)).fetchall(),
        *conn.execute(
        f"SELECT id, namespace, attempts, next_attempt_at FROM events {leased}"
        " WHERE status='running' AND lease_until<? ORDER BY lease_until LIMIT ?",
        (before, limit)).fetchall()]
    rows.sort(key=lambda r: r["next_attempt_at"])
    return [{"id": r["id"], "namespace": r["namespace"], "attempts": r["attempts"]}
            for r in rows[:limit]]


def next_due_at(conn: sqlite3.Connection) -> float | None:
    """The earliest time an event becomes claimable, or None when nothing is waiting: the first
    entry of each partial index (a search each, whatever the backlog)."""
    ready, leased = _hints(conn)
    r = conn.execute(
        f"SELECT MIN(t) FROM (SELECT MIN(next_attempt_at) AS t FROM events {ready}"
        " WHERE status IN ('queued','failed')"
        f" UNION ALL SELECT MIN(lease_until) FROM events {leased} WHERE status='running')"
        " AS due").fetchone()
    return None if r is None or r[0] is None else float(r[0])


def _hints(conn: sqlite3.Connection) -> tuple[str, str]:
    """SQLite's INDEXED BY for the due (queued, failed) and the leased (running) events: with
    no statistics its planner takes events_status and searches every row of those statuses.
    PostgreSQL plans for itself."""
    if is_postgres(conn):
        return "", ""
    return "INDEXED BY events_ready", "INDEXED BY events_leased"


def depth(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Unfinished events per function and state (queued, retrying, running) with the oldest
    creation time: one indexed query, for the metrics scrape."""
    rows = conn.execute(
        "SELECT namespace, function, status, COUNT(*) AS count, MIN(created_at) AS oldest"
        " FROM events WHERE status IN ('queued','failed','running')"
        " GROUP BY namespace, function, status").fetchall()
    names = {"queued": "queued", "failed": "retrying", "running": "running"}
    return [{"namespace": r["namespace"], "function": r["function"],
             "state": names[r["status"]], "count": r["count"], "oldest": r["oldest"]}
            for r in rows]


def recover(conn: sqlite3.Connection, *, now: float) -> int:
    """At startup: every running event was held by a process that is gone. Requeue it now and do
    not charge the interrupted attempt to its retry budget (the platform failed, not the code)."""
    with transaction(conn):
        cur = conn.execute(
            f"UPDATE events SET status='queued', attempts={_UNCHARGE}, lease_until=NULL,"
            " next_attempt_at=?, updated_at=? WHERE status='running'", (now, now))
    return cur.rowcount


def running(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """(id, namespace, attempts) of every running event (at startup, before ``recover``)."""
    rows = conn.execute("SELECT id, namespace, attempts FROM events WHERE status='running'")
    return [dict(r) for r in rows.fetchall()]


def release(conn: sqlite3.Connection, id: str, *, now: float, next_attempt_at: float) -> None:
    """Put a claimed event back without charging the attempt (throttled: 429 from the invoker)."""
    with transaction(conn):
        conn.execute(f"UPDATE events SET status='queued', attempts={_UNCHARGE},"
                     " lease_until=NULL, next_attempt_at=?, updated_at=? WHERE id=?",
                     (next_attempt_at, now, id))


def succeed(conn: sqlite3.Connection, id: str, *, now: float, result: Any,
            follow_up: dict[str, Any] | None = None) -> None:
    """Mark succeeded; ``follow_up`` (enqueue kwargs) is a function destination, written in the
    same transaction so it is as durable as the outcome."""
    with transaction(conn):
        _succeed(conn, id, now=now, result=result, follow_up=follow_up)


def succeed_many(conn: sqlite3.Connection, items: Sequence[dict[str, Any]]) -> list[None]:
    """``succeed`` of each item (its keyword arguments), all in one transaction: one statement
    for all of them, then the follow-up events (destinations) of those that have one."""
    with transaction(conn):
        conn.executemany(_SUCCEED, [(_dumps(i["result"]), i["now"], i["now"], i["id"])
                                    for i in items])
        for item in items:
            if item["follow_up"] is not None:
                _insert_event(conn, **item["follow_up"])
    return [None] * len(items)


_SUCCEED = ("UPDATE events SET status='succeeded', result=?, error=NULL, lease_until=NULL,"
            " finished_at=?, updated_at=? WHERE id=?")


def _succeed(conn: sqlite3.Connection, id: str, *, now: float, result: Any,
             follow_up: dict[str, Any] | None) -> None:
    conn.execute(_SUCCEED, (_dumps(result), now, now, id))
    if follow_up is not None:
        _insert_event(conn, **follow_up)


def retry_later(conn: sqlite3.Connection, id: str, *, now: float, error: dict[str, Any],
                next_attempt_at: float) -> None:
    with transaction(conn):
        conn.execute("UPDATE events SET status='failed', error=?, lease_until=NULL,"
                     " next_attempt_at=?, updated_at=? WHERE id=?",
                     (_dumps(error), next_attempt_at, now, id))


def dead_letter(conn: sqlite3.Connection, event: dict[str, Any], *, dlq_id: str, now: float,
                error: dict[str, Any], follow_up: dict[str, Any] | None = None) -> None:
    """Final failure: the event row says dead_lettered and a dead letter keeps payload and error.
    ``event`` needs id, function, namespace, trigger, payload, attempts."""
    with transaction(conn):
        conn.execute("UPDATE events SET status='dead_lettered', error=?, lease_until=NULL,"
                     " finished_at=?, updated_at=? WHERE id=?",
                     (_dumps(error), now, now, event["id"]))
        insert_dead_letter(conn, event, dlq_id=dlq_id, now=now, error=error)
        if follow_up is not None:
            _insert_event(conn, **follow_up)


def get_event(conn: sqlite3.Connection, id: str) -> dict[str, Any] | None:
    return _row(conn.execute(f"SELECT {_EVENT_COLS} FROM events WHERE id=?", (id,)).fetchone())


def event_status(conn: sqlite3.Connection, id: str) -> str | None:
    r = conn.execute("SELECT status FROM events WHERE id=?", (id,)).fetchone()
    return None if r is None else str(r[0])


def list_events(conn: sqlite3.Connection, *, function: str | None = None,
                source: str | None = None, status: str | None = None,
                limit: int = 100, namespace: str | None = None) -> list[dict[str, Any]]:
    where, args = ["1=1"], []
    for col, val in (("namespace", namespace), ("function", function), ("source", source),
                     ("status", status)):
        if val is not None:
            where.append(f"{col}=?")
            args.append(val)
    # Running and retrying events are few among many finished ones: found through the status
    # index, not by walking every event of the function (SQLite's plan for ``function=?``, 5 ms
    # per call with 20,000 events; a poll of the backlog made that a load of its own).
    hint = "INDEXED BY events_status" if status in ("running", "failed") and not is_postgres(conn) \
        else ""
    rows = conn.execute(f"SELECT {_EVENT_COLS} FROM events {hint} WHERE {' AND '.join(where)}"
                        " ORDER BY created_at DESC LIMIT ?", (*args, limit)).fetchall()
    return [dict(r) for r in rows]


def prune(conn: sqlite3.Connection, *, before: float) -> int:
    """Forget finished events (and with them their idempotency keys) older than ``before``."""
    with transaction(conn):
        cur = conn.execute("DELETE FROM events WHERE status IN ('succeeded','dead_lettered')"
                           " AND finished_at < ?", (before,))
    return cur.rowcount


# --- dead letters ----------------------------------------------------------------------------

def insert_dead_letter(conn: sqlite3.Connection, event: dict[str, Any], *, dlq_id: str,
                       now: float, error: dict[str, Any]) -> None:
    """Insert only (call inside a transaction, or alone: one statement is atomic)."""
    conn.execute(
        "INSERT INTO dead_letters (id, request_id, function, namespace, trigger, payload, error,"
        " attempts, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
        (dlq_id, event["id"], event["function"], event.get("namespace", "default"),
         event["trigger"], event["payload"], _dumps(error), event["attempts"], now))


def list_dead_letters(conn: sqlite3.Connection, *, function: str | None = None,
                      include_redriven: bool = False, limit: int = 100,
                      namespace: str | None = None) -> list[dict[str, Any]]:
    where, args = [], []
    if namespace is not None:
        where.append("namespace=?")
        args.append(namespace)
    if function is not None:
        where.append("function=?")
        args.append(function)
    if not include_redriven:
        where.append("redriven_at IS NULL")
    sql = "SELECT * FROM dead_letters"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = conn.execute(sql + " ORDER BY created_at DESC LIMIT ?", (*args, limit)).fetchall()
    return [dict(r) for r in rows]


def get_dead_letter(conn: sqlite3.Connection, id: str) -> dict[str, Any] | None:
    return _row(conn.execute("SELECT * FROM dead_letters WHERE id=?", (id,)).fetchone())


def redrive(conn: sqlite3.Connection, dlq_id: str, *, new_id: str,
            now: float) -> dict[str, Any] | None:
    """Re-enqueue one dead letter as a new event (fresh attempts) and mark it redriven.
    None when there is no such dead letter; an already redriven one returns its row unchanged."""
    with transaction(conn):
        dl = _row(conn.execute("SELECT * FROM dead_letters WHERE id=?", (dlq_id,)).fetchone())
        if dl is None or dl["redriven_at"] is not None:
            return dl
        _insert_event(conn, id=new_id, function=dl["function"], namespace=dl["namespace"],
                      trigger=dl["trigger"], payload=dl["payload"], now=now, source=None,
                      idempotency_key=None)
        conn.execute("UPDATE dead_letters SET redriven_at=?, redrive_request_id=? WHERE id=?",
                     (now, new_id, dlq_id))
        dl.update(redriven_at=now, redrive_request_id=new_id)
    return dl


# --- triggers and schedules ------------------------------------------------------------------

def _trigger(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    d["config"] = json.loads(d["config"])
    return d


def insert_trigger(conn: sqlite3.Connection, t: dict[str, Any], *, now: float) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO triggers (id, function, namespace, name, type, config, origin,"
            " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (t["id"], t["function"], t.get("namespace", "default"), t["name"], t["type"],
             _dumps(t["config"]), t["origin"], now, now))


def update_trigger(conn: sqlite3.Connection, id: str, *, type: str, config: dict[str, Any],
                   now: float) -> None:
    """A changed definition also forgets the schedule state (a new cron starts afresh)."""
    with transaction(conn):
        conn.execute("UPDATE triggers SET type=?, config=?, updated_at=? WHERE id=?",
                     (type, _dumps(config), now, id))
        conn.execute("DELETE FROM schedule_state WHERE trigger_id=?", (id,))


def delete_trigger(conn: sqlite3.Connection, id: str) -> bool:
    with transaction(conn):
        conn.execute("DELETE FROM schedule_state WHERE trigger_id=?", (id,))
        cur = conn.execute("DELETE FROM triggers WHERE id=?", (id,))
    return cur.rowcount > 0


def list_triggers(conn: sqlite3.Connection, *, function: str | None = None,
                  namespace: str | None = None) -> list[dict[str, Any]]:
    """Triggers of one tenant (``namespace``; None: every tenant), of one function if given."""
    where, args = ["1=1"], []
    for col, val in (("namespace", namespace), ("function", function)):
        if val is not None:
            where.append(f"{col}=?")
            args.append(val)
    rows = conn.execute(f"SELECT * FROM triggers WHERE {' AND '.join(where)}"
                        " ORDER BY namespace, function, name", args).fetchall()
    return [_trigger(r) for r in rows]


def get_trigger(conn: sqlite3.Connection, id: str) -> dict[str, Any] | None:
    r = conn.execute("SELECT * FROM triggers WHERE id=?", (id,)).fetchone()
    return None if r is None else _trigger(r)


def get_schedule_state(conn: sqlite3.Connection, trigger_id: str) -> dict[str, Any] | None:
    """{last_tick, in_flight, in_flight_status} or None for a schedule that never fired."""
    r = conn.execute(
        "SELECT s.last_tick, s.in_flight, e.status AS in_flight_status FROM schedule_state s"
        " LEFT JOIN events e ON e.id = s.in_flight WHERE s.trigger_id=?", (trigger_id,)).fetchone()
    return _row(r)


# A schedule's last tick only moves forward: of two gateways that evaluate the same tick, the
# second finds it taken (see fire_schedule).
_ADVANCE = (" WHERE schedule_state.last_tick IS NULL"
            " OR schedule_state.last_tick < excluded.last_tick")


def set_schedule_anchor(conn: sqlite3.Connection, trigger_id: str, tick: float) -> None:
    """Remember ``tick`` as handled without firing (first start, or a skipped tick)."""
    with transaction(conn):
        conn.execute("INSERT INTO schedule_state (trigger_id, last_tick) VALUES (?, ?)"
                     " ON CONFLICT (trigger_id) DO UPDATE SET last_tick=excluded.last_tick"
                     + _ADVANCE, (trigger_id, tick))


def fire_schedule(conn: sqlite3.Connection, trigger_id: str, tick: float,
                  event: dict[str, Any]) -> bool:
    """Enqueue a firing and advance the schedule in one transaction: a crash can neither lose the
    tick nor fire it twice, and neither can two gateways sharing the store: the schedule's state
    moves to ``tick`` only if it is still before it, and only then is the event written.
    Returns False (nothing written) when the tick was taken already. ``event`` holds enqueue
    kwargs (without idempotency)."""
    with transaction(conn):
        cur = conn.execute(
            "INSERT INTO schedule_state (trigger_id, last_tick, in_flight) VALUES (?,?,?)"
            " ON CONFLICT (trigger_id) DO UPDATE SET last_tick=excluded.last_tick,"
            " in_flight=excluded.in_flight" + _ADVANCE, (trigger_id, tick, event["id"]))
        if cur.rowcount == 0:
            return False
        _insert_event(conn, idempotency_key=None, **event)
    return True
