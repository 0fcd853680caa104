"""Storage triggers fed by an external S3-compatible store (MinIO, Ceph RGW).

A ``type = "storage"`` trigger's ``source`` says where its bucket notifications come from:

- ``"builtin"`` (default): Squall's own object store fires it (``squall.storage.events``);
- ``"webhook"``: the store POSTs them to ``/hooks/<trigger name>`` (``/t/<tenant>/hooks/<name>``
  for another tenant), with ``Authorization: Bearer <secret>``, as MinIO's ``notify_webhook``
  target does with its ``auth_token``. ``secret`` is required: without it anyone who can reach
  the hook could make up uploads. It is sealed like a webhook trigger's secret;
- ``"nats"`` / ``"amqp"``: the store publishes them to a broker, consumed with the connector of
  that name; the connector's own keys (``url``, ``stream``, ``subject``, ``queue``...) sit beside
  the storage keys in the same config.

A notification body is MinIO's ``{"EventName": ..., "Key": ..., "Records": [...]}`` or Ceph
RGW's / S3's ``{"Records": [...]}``. It is split into its records; each record of the trigger's
bucket whose event and key match ``events``, ``prefix`` and ``suffix`` becomes one event of the
durable queue, delivered to the function as ``{"Records": [record]}`` with the record exactly as
the store wrote it (MinIO's ``eventName`` keeps its ``s3:`` prefix; the key stays URL-encoded).
Matching strips that prefix and decodes the key, so one trigger config means the same thing for
every store. Records of other buckets or events are dropped and counted (the trigger's status:
``records_accepted``, ``records_dropped``, ``messages_malformed``); the store still gets a 2xx,
because it would otherwise retry a notification that can never match.

Stores deliver at least once (MinIO retries until a 2xx; a broker redelivers an unacked
message), so each record is enqueued with an idempotency key made of bucket, key, event name and
``sequencer``: a redelivered record returns the first event's request id instead of a second
invocation.

Bad input: a body that is not JSON, has no non-empty ``Records`` list, or has a record without
``eventName``, ``s3.bucket.name`` and ``s3.object.key`` is 400 ``invalid_notification`` and
nothing is enqueued; a wrong or missing token is 401 ``invalid_token``, checked before the body
is read as JSON. On a broker such a message is logged in the function's logs and acknowledged
(a poison message must not come back forever).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from squall.errors import (
    BadRequest,
    FunctionNotFound,
    InvalidConfig,
    SquallError,
    TooManyRequests,
    Unauthorized,
)
from squall.storage.events import matches

if TYPE_CHECKING:
    from squall.events.connectors.base import Deliver, TriggerSpec
    from squall.events.service import EventService

SOURCES = ("builtin", "webhook", "nats", "amqp")
BROKERS = ("nats", "amqp")
STORAGE_KEYS = frozenset({"bucket", "events", "prefix", "suffix", "region", "source"})


class InvalidNotification(BadRequest):
    code = "invalid_notification"


class InvalidToken(Unauthorized):
    code = "invalid_token"


def source_of(config: Mapping[str, Any]) -> str:
    return str(config.get("source", "builtin"))


def broker_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The connector's part of a ``source = "nats"|"amqp"`` config."""
    return {k: v for k, v in config.items() if k not in STORAGE_KEYS}


def validate_source(config: Mapping[str, Any]) -> None:
    """Check ``source`` and the keys that belong to it; the storage keys themselves are checked
    by ``validate_storage_config``. Raises InvalidConfig (with ``details.key``)."""
    source = config.get("source", "builtin")
    if source not in SOURCES:
        raise InvalidConfig(f"'source' must be one of {list(SOURCES)}", details={"key": "source"})
    if source in BROKERS:
        from squall.events.connectors import validate_trigger_config

        validate_trigger_config(str(source), broker_config(config))
        return
    allowed = STORAGE_KEYS | ({"secret"} if source == "webhook" else set())
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise InvalidConfig(f"unknown storage trigger keys {unknown} for source {source!r}; use "
                            f"{sorted(allowed)}", details={"key": unknown[0]})
    if source == "webhook":
        secret = config.get("secret")
        if not isinstance(secret, str) or not secret.strip():
            raise InvalidConfig("a storage trigger with source = \"webhook\" needs 'secret' (the "
                                "store's auth_token)", details={"key": "secret"})


# --- notification bodies (pure) ------------------------------------------------------------------

def _is_record(rec: Any) -> bool:
    s3 = rec.get("s3") if isinstance(rec, dict) else None
    return (isinstance(rec, dict) and isinstance(rec.get("eventName"), str)
            and isinstance(s3, dict) and isinstance(s3.get("bucket"), dict)
            and isinstance(s3["bucket"].get("name"), str) and isinstance(s3.get("object"), dict)
            and isinstance(s3["object"].get("key"), str))


def records_of(body: Any) -> list[dict[str, Any]]:
    """The records of one decoded notification body. Raises InvalidNotification."""
    records = body.get("Records") if isinstance(body, dict) else None
    if not isinstance(records, list) or not records:
        raise InvalidNotification("a bucket notification is a JSON object with a non-empty "
                                  "'Records' list (S3's event notification format)")
    for i, rec in enumerate(records):
        if not _is_record(rec):
            raise InvalidNotification(f"Records[{i}] is not an S3 event record: it needs "
                                      "eventName, s3.bucket.name and s3.object.key",
                                      details={"record": i})
    return records


def parse_body(body: bytes) -> list[dict[str, Any]]:
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidNotification("the notification body is not JSON") from None
    return records_of(decoded)


def record_matches(config: Mapping[str, Any], rec: dict[str, Any]) -> bool:
    """MinIO writes "s3:ObjectCreated:Put", S3 and RGW "ObjectCreated:Put"; keys arrive
    URL-encoded ("my+cat.jpg"), filters are written against the real key ("my cat.jpg")."""
    s3 = rec["s3"]
    return matches(dict(config), s3["bucket"]["name"], unquote_plus(s3["object"]["key"]),
                   rec["eventName"].removeprefix("s3:"))


def dedupe_key(rec: dict[str, Any]) -> str | None:
    """The same record delivered twice gives the same key; None without a sequencer."""
    obj = rec["s3"]["object"]
    seq = obj.get("sequencer")
    if not isinstance(seq, str) or not seq:
        return None
    ident = json.dumps([rec["s3"]["bucket"]["name"], obj["key"], rec["eventName"], seq])
    return "s3:" + hashlib.sha256(ident.encode()).hexdigest()


def check_token(secret: str | None, authorization: str | None) -> None:
    """MinIO sends ``Bearer <auth_token>``, or the token as it is when it is already of the form
    "<scheme> <token>"; expect exactly what it sends. Constant-time comparison."""
    if not secret:
        raise InvalidToken("this storage webhook has no secret to check the token against")
    expected = secret if len(secret.split()) == 2 else f"Bearer {secret}"
    got = (authorization or "").strip()
    if not got or not hmac.compare_digest(got.encode(), expected.encode()):
        raise InvalidToken("missing or wrong Authorization token (the store's auth_token must "
                           "be the trigger's secret)")


# --- into the durable queue ----------------------------------------------------------------------

@dataclass
class Outcome:
    request_ids: list[str] = field(default_factory=list)
    duplicates: int = 0
    dropped: int = 0

    def view(self) -> dict[str, Any]:
        return {"accepted": len(self.request_ids), "duplicates": self.duplicates,
                "dropped": self.dropped, "request_ids": self.request_ids}


def _count(svc: EventService, trigger_id: str, **counts: int) -> None:
    st = svc.triggers.status.setdefault(trigger_id, {"state": "running", "detail": "",
                                                     "last_fired": None, "last_error": None})
    for name, n in counts.items():
        st[name] = int(st.get(name, 0)) + n


async def enqueue(svc: EventService, trigger: dict[str, Any],
                  records: list[dict[str, Any]]) -> Outcome:
    """One queue event per matching record. Raises what ``submit_event`` raises (a quota, a
    removed function); records enqueued before that stay, and the store's retry finds them by
    their idempotency keys."""
    out = Outcome()
    for rec in records:
        if not record_matches(trigger["config"], rec):
            out.dropped += 1
            continue
        rid, created = await svc.submit_event(
            trigger["function"], {"Records": [rec]}, trigger="storage",
            namespace=trigger["namespace"], source=trigger["id"], idempotency_key=dedupe_key(rec))
        out.request_ids.append(rid)
        out.duplicates += 0 if created else 1
    _count(svc, trigger["id"], records_accepted=len(out.request_ids), records_dropped=out.dropped)
    if out.request_ids:
        svc.triggers.note(trigger["id"])
    return out


async def receive_webhook(svc: EventService, trigger: dict[str, Any],
                          headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """POST /hooks/<name> of a ``source = "webhook"`` storage trigger (``headers`` lowercase)."""
    try:
        check_token(svc.trigger_config(trigger).get("secret"), headers.get("authorization"))
    except InvalidToken:
        svc.obs.metrics.webhook_rejected(trigger["name"], "invalid_token")
        raise
    try:
        records = parse_body(body)
    except InvalidNotification:
        _count(svc, trigger["id"], messages_malformed=1)
        raise
    return (await enqueue(svc, trigger, records)).view()


def broker_connector(svc: EventService,
                     trigger: dict[str, Any]) -> tuple[TriggerSpec, Deliver] | None:
    """For a ``source = "nats"|"amqp"`` trigger: the connector spec and the ``Deliver`` that
    moves each message's records into the durable queue; None for the other sources."""
    from squall.events.connectors.base import TriggerSpec

    source = source_of(trigger["config"])
    if source not in BROKERS:
        return None
    spec = TriggerSpec(id=trigger["id"], function=trigger["function"], type=source,
                       config=broker_config(trigger["config"]),
                       namespace=trigger.get("namespace", "default"))
    return spec, _broker_deliver(svc, trigger)


def _broker_deliver(svc: EventService, trigger: dict[str, Any]) -> Deliver:
    fn, ns, name = trigger["function"], trigger.get("namespace", "default"), trigger["name"]

    async def deliver(events: list[dict[str, Any]]) -> bool:
        for ev in events:
            try:
                records = records_of(ev.get("data"))
                await enqueue(svc, trigger, records)
            except (TooManyRequests, FunctionNotFound) as e:
                # Not now: leave it to the broker (nack), it comes back after the pump's pause.
                svc.triggers.note(trigger["id"], error=e.message)
                return False
            except SquallError as e:  # malformed or too large: it will never succeed
                _count(svc, trigger["id"], messages_malformed=1)
                svc.logs.append(fn, "", f"[squall] storage trigger {name!r}: message "
                                f"{ev.get('id')} dropped: {e.message}", ns)
        return True

    return deliver
