"""Request ids are version 7 UUIDs: parseable as UUIDs, unique, and growing with time (so they
are written at the end of the store's indexes)."""

from __future__ import annotations

import time
import uuid

from squall.ids import new_request_id


def test_a_request_id_is_a_version_7_uuid_of_now() -> None:
    before = time.time_ns() // 1_000_000
    rid = new_request_id()
    after = time.time_ns() // 1_000_000
    u = uuid.UUID(rid)
    assert str(u) == rid and len(rid) == 36
    assert u.version == 7 and u.variant == uuid.RFC_4122
    assert before <= u.int >> 80 <= after  # the first 48 bits: Unix time in milliseconds


def test_request_ids_are_unique_and_sort_by_time() -> None:
    ids = [new_request_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    # every id made in a later millisecond sorts after every id of an earlier one
    first = new_request_id()
    time.sleep(0.002)
    second = new_request_id()
    assert first < second
    # the random part is random: the variant nibble takes all four of its values
    assert {i[19] for i in ids} == set("89ab")
