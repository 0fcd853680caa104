"""Storage triggers and S3's event notification records (pure functions).

A trigger ``type = "storage"`` has ``bucket``, ``events`` (default ``["s3:ObjectCreated:*"]``),
optional ``prefix`` and ``suffix``. On every write the store's commit asks ``notify`` which of
the tenant's storage triggers match and enqueues one event per match, in the same transaction as
the object's metadata (see ``squall.store.objects``). The function receives S3's record format::

    {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName":
      "ObjectCreated:Put", "s3": {"bucket": {"name": ..., "arn": ...},
      "object": {"key": "photos/my+cat.jpg", "size": 3, "eTag": ..., "sequencer": ...}}}]}

``context.aws_request_id`` is the event's id: the same on every retry, so duplicates (delivery
is at least once) can be recognised.

With ``source = "webhook" | "nats" | "amqp"`` the trigger listens to another S3-compatible
store's notifications instead (``squall.storage.external``); the built-in store ignores it.

Loop guard: a write made with credentials issued to a function's own instances (a principal
whose ``function`` attribute names it) does not fire that function's storage triggers, so a
function that writes into the bucket it is triggered by cannot call itself forever. Other
functions' triggers still fire.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

from squall.errors import InvalidConfig
from squall.ids import new_request_id

CREATED = ("Put", "Post", "Copy", "CompleteMultipartUpload")
REMOVED = ("Delete",)
EVENT_NAMES = frozenset(
    ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
    + [f"s3:ObjectCreated:{e}" for e in CREATED] + [f"s3:ObjectRemoved:{e}" for e in REMOVED])
_KEYS = {"bucket", "events", "prefix", "suffix", "region"}


def validate_storage_config(config: dict[str, Any]) -> None:
    """Check a storage trigger's config. Raises InvalidConfig (with ``details.key``)."""
    from squall.storage.errors import S3Error
    from squall.storage.names import check_bucket

    if config.get("source", "builtin") != "builtin":
        from squall.storage.external import validate_source  # an external store's notifications

        validate_source(config)
    else:
        unknown = set(config) - _KEYS - {"source"}
        if unknown:
            raise InvalidConfig(f"unknown storage trigger keys {sorted(unknown)}; use bucket, "
                                "events, prefix, suffix, source",
                                details={"key": sorted(unknown)[0]})
    bucket = config.get("bucket")
    if not isinstance(bucket, str):
        raise InvalidConfig("a storage trigger needs 'bucket' (a bucket name)",
                            details={"key": "bucket"})
    try:
        check_bucket(bucket)
    except S3Error as e:
        raise InvalidConfig(e.message, details={"key": "bucket"}) from None
    events = config.get("events", ["s3:ObjectCreated:*"])
    if (not isinstance(events, list) or not events
            or not all(isinstance(e, str) and e in EVENT_NAMES for e in events)):
        raise InvalidConfig(f"'events' must be a non-empty list of {sorted(EVENT_NAMES)}",
                            details={"key": "events"})
    for key in ("prefix", "suffix", "region"):
        value = config.get(key, "")
        if not isinstance(value, str) or len(value.encode()) > 1024:
            raise InvalidConfig(f"'{key}' must be a string of at most 1024 bytes",
                                details={"key": key})


def matches(config: dict[str, Any], bucket: str, key: str, event: str) -> bool:
    """Does a trigger fire for ``event`` ("ObjectCreated:Put") on ``bucket``/``key``?"""
    if config.get("bucket") != bucket:
        return False
    if not key.startswith(config.get("prefix", "")) or not key.endswith(config.get("suffix", "")):
        return False
    kind = event.split(":", 1)[0]
    wanted = config.get("events", ["s3:ObjectCreated:*"])
    return f"s3:{event}" in wanted or f"s3:{kind}:*" in wanted


_seq_lock = threading.Lock()
_seq_last = 0


def sequencer() -> str:
    """Increasing hex values (S3: compare as strings of equal length to order the events of a
    key): nanoseconds since the epoch, forced to grow within this process."""
    global _seq_last
    with _seq_lock:
        _seq_last = max(_seq_last + 1, time.time_ns())
        return f"{_seq_last:016X}"


@dataclass(frozen=True)
class Change:
    """One write, as the notification describes it."""

    namespace: str
    bucket: str
    key: str
    event: str  # "ObjectCreated:Put", "ObjectRemoved:Delete", ...
    size: int | None
    etag: str | None
    request_id: str
    principal_id: str
    source_ip: str
    writer_function: str | None  # the function whose instance credentials made the write


def record(change: Change, region: str, now: float, trigger_name: str) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": quote_plus(change.key, safe="/"), "sequencer": sequencer()}
    if change.size is not None:
        obj.update(size=change.size, eTag=(change.etag or "").strip('"'))
    when = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": region,
        "eventTime": when, "eventName": change.event,
        "userIdentity": {"principalId": change.principal_id},
        "requestParameters": {"sourceIPAddress": change.source_ip},
        "responseElements": {"x-amz-request-id": change.request_id,
                             "x-amz-id-2": change.request_id},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": trigger_name,
               "bucket": {"name": change.bucket,
                          "ownerIdentity": {"principalId": change.namespace},
                          "arn": f"arn:aws:s3:::{change.bucket}"},
               "object": obj},
    }


def notifier(change: Change, region: str,
             clock: Callable[[], float] = time.time) -> Callable[[list[dict[str, Any]]],
                                                                 list[dict[str, Any]]]:
    """The ``notify`` function the store calls inside the write's transaction: from the tenant's
    storage triggers, the queue events to insert (``queue._insert_event`` kwargs)."""

    def notify(triggers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for t in triggers:
            if t["function"] == change.writer_function:
                continue  # the loop guard (module docstring)
            if t["config"].get("source", "builtin") != "builtin":
                continue  # fed by another store's notifications (squall.storage.external)
            if not matches(t["config"], change.bucket, change.key, change.event):
                continue
            rec = record(change, t["config"].get("region") or region, clock(), t["name"])
            out.append({"id": new_request_id(), "function": t["function"],
                        "namespace": t["namespace"], "trigger": "storage", "source": t["id"],
                        "payload": json.dumps({"Records": [rec]}, separators=(",", ":"))})
        return out

    return notify
