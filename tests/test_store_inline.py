"""``Database.run_inline``: the hot path's short writes run on the event loop's thread with a
connection of their own, never wait for the write lock (they go to the db thread when it holds
it), and are copied back into the database file by checkpoints the db thread runs."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from squall.store import db as store_db
from squall.store import queue
from squall.store.db import Database, GroupCommit, transaction


def _event(id: str) -> dict[str, object]:
    return {"id": id, "function": "f", "namespace": "default", "trigger": "async",
            "payload": "{}", "now": 100.0, "source": None, "idempotency_key": None,
            "traceparent": None}


def _write(id: str, threads: list[str]):  # type: ignore[no-untyped-def]
    def fn(conn: sqlite3.Connection) -> tuple[str, bool]:
        threads.append(threading.current_thread().name)
        return queue.enqueue(conn, **_event(id))  # type: ignore[arg-type]
    return fn


@pytest.fixture
def sqlite_db(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = Database(tmp_path / "squall.db")
    d.open()
    yield d
    d.close()


async def test_inline_write_runs_on_the_loop_and_the_db_thread_reads_it(
        sqlite_db: Database) -> None:
    threads: list[str] = []
    assert await sqlite_db.run_inline(_write("a", threads)) == ("a", True)
    assert threads == [threading.current_thread().name]  # the event loop's own thread
    row = await sqlite_db.run(lambda c: queue.get_event(c, "a"))
    assert row is not None and row["status"] == "queued"
    # an error that is not "busy" is the caller's, and nothing of it was written
    with pytest.raises(sqlite3.IntegrityError):
        await sqlite_db.run_inline(_write("a", threads))
    count = await sqlite_db.run(lambda c: c.execute("SELECT COUNT(*) FROM events").fetchone())
    assert count[0] == 1


async def test_inline_goes_to_the_db_thread_while_that_holds_the_write_lock(
        sqlite_db: Database) -> None:
    held, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:  # a long write on the db thread (a prune, ...)
        with transaction(conn):
            conn.execute("INSERT INTO schedule_state (trigger_id) VALUES ('x')")
            held.set()
            release.wait(30)

    # the loop's connection never waits for a lock: that would stop every request
    assert sqlite_db._inline is not None
    assert sqlite_db._inline.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    holder = asyncio.ensure_future(sqlite_db.run(hold))
    await asyncio.get_running_loop().run_in_executor(None, held.wait, 30)
    threads: list[str] = []
    write = asyncio.ensure_future(sqlite_db.run_inline(_write("b", threads)))
    await asyncio.sleep(0)  # the inline attempt met the lock and did not wait for it here:
    assert not write.done()  # ... the loop goes on (a wait would have hung this test)
    release.set()
    assert await write == ("b", True)
    await holder
    assert threads[-1].startswith("squall-db")  # written by the db thread, after the holder
    assert await sqlite_db.run(lambda c: queue.get_event(c, "b")) is not None


async def test_a_group_commit_under_a_held_lock_is_written_once_each(
        sqlite_db: Database) -> None:
    held, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        with transaction(conn):
            held.set()
            release.wait(30)

    holder = asyncio.ensure_future(sqlite_db.run(hold))
    await asyncio.get_running_loop().run_in_executor(None, held.wait, 30)
    writes = GroupCommit(sqlite_db, queue.enqueue_many,
                         lambda c, item: queue.enqueue(c, **item))
    pending = [asyncio.ensure_future(writes(_event(f"g{i}"))) for i in range(5)]
    await asyncio.sleep(0)
    release.set()
    assert [await p for p in pending] == [(f"g{i}", True) for i in range(5)]
    await holder
    n = await sqlite_db.run(lambda c: c.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    assert n == 5


async def test_inline_writes_reach_the_database_file_through_checkpoints(
        sqlite_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_db, "CHECKPOINT_EVERY_S", 0.0)
    await sqlite_db.run_inline(_write("c", []))
    checkpoint = sqlite_db._checkpoint  # the checkpoint it asked the db thread for
    assert checkpoint is not None
    await checkpoint
    # the database file alone, without its WAL: only what a checkpoint copied there
    uri = f"file:{sqlite_db.path}?immutable=1"
    with sqlite3.connect(uri, uri=True) as file_only:
        assert file_only.execute("SELECT id FROM events").fetchall() == [("c",)]
