"""Storage triggers fed by an external S3-compatible store: webhook, NATS JetStream, RabbitMQ.

No MinIO server installs from the registries here, so the notifications are MinIO's own
documented bodies (``{"EventName", "Key", "Records"}``, MinIO's webhook target, internal/event/
target/webhook.go) and Ceph RGW's ``{"Records": [...]}``, sent the way those stores send them:
POST with ``Authorization: Bearer <auth_token>``, or published to a JetStream subject / an AMQP
queue.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import nats
import pytest

from squall.storage import external
from squall.storage.external import InvalidNotification, InvalidToken
from tests import s3_helpers
from tests.conftest import PlatformProc, require_service, wait_for

HANDLER = """
def handler(event, context):
    assert len(event["Records"]) == 1, event
    r = event["Records"][0]
    o = r["s3"]["object"]
    return {"name": r["eventName"], "key": o["key"], "size": o.get("size"),
            "etag": o.get("eTag"), "bucket": r["s3"]["bucket"]["name"], "seq": o["sequencer"],
            "source": r["eventSource"], "time": r["eventTime"], "rid": context.aws_request_id}
"""
SECRET = "minio-auth-token-9f2c"


def minio_record(bucket: str, key: str, event: str = "s3:ObjectCreated:Put",
                 seq: str | None = None) -> dict[str, Any]:
    """One record as MinIO writes it (key URL-encoded, eventName with its s3: prefix)."""
    return {
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
        "eventTime": "2019-10-22T09:27:27.125Z", "eventName": event,
        "userIdentity": {"principalId": "minioadmin"},
        "requestParameters": {"principalId": "minioadmin", "region": "",
                              "sourceIPAddress": "172.16.118.255"},
        "responseElements": {"x-amz-request-id": "15CFEDF8D4736ED9",
                             "x-minio-deployment-id": "0170a4cc-dca6-4e72-86f1-c0cc760dff7f",
                             "x-minio-origin-endpoint": "http://172.17.0.2:9000"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minioadmin"},
                          "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": key, "size": 224662,
                          "eTag": "5fc7298143efe1276d39a3466d4e255f",
                          "contentType": "image/jpeg",
                          "userMetadata": {"content-type": "image/jpeg"},
                          "sequencer": seq or uuid.uuid4().hex[:16].upper()}},
        "source": {"host": "172.16.118.255", "port": "",
                   "userAgent": "MinIO (linux; amd64) minio-go/v7.0.11 mc/2021-05-12T03:10:39Z"},
    }


def minio_body(rec: dict[str, Any]) -> dict[str, Any]:
    """MinIO's webhook / NATS body: one record, its event name and "bucket/key" beside it."""
    return {"EventName": rec["eventName"],
            "Key": f"{rec['s3']['bucket']['name']}/{rec['s3']['object']['key']}",
            "Records": [rec]}


# --- pure parts --------------------------------------------------------------------------------

CONFIG = {"bucket": "images", "prefix": "uploads/", "suffix": ".jpg"}


@pytest.mark.parametrize("event, key, bucket, want", [
    ("s3:ObjectCreated:Put", "uploads/a.jpg", "images", True),  # MinIO's event name
    ("ObjectCreated:CompleteMultipartUpload", "uploads/a.jpg", "images", True),  # S3, RGW
    ("s3:ObjectCreated:Put", "uploads/my+cat.jpg", "images", True),  # URL-encoded key
    ("s3:ObjectCreated:Put", "uploads%2Fa.jpg", "images", True),  # decoded before the prefix
    ("s3:ObjectCreated:Put", "uploads/a.png", "images", False),
    ("s3:ObjectCreated:Put", "other/a.jpg", "images", False),
    ("s3:ObjectCreated:Put", "uploads/a.jpg", "videos", False),
    ("s3:ObjectRemoved:Delete", "uploads/a.jpg", "images", False),  # not subscribed
    ("s3:ObjectAccessed:Get", "uploads/a.jpg", "images", False),
])
def test_record_matches(event: str, key: str, bucket: str, want: bool) -> None:
    assert external.record_matches(CONFIG, minio_record(bucket, key, event)) is want


@pytest.mark.parametrize("body, what", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "Records"),
    (b'{"EventName": "s3:ObjectCreated:Put"}', "Records"),
    (b'{"Records": []}', "Records"),
    (b'{"Records": [{"eventName": "s3:ObjectCreated:Put"}]}', "Records[0]"),
    (b'{"Records": [{"eventName": 1, "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}}]}',
     "Records[0]"),
])
def test_bad_bodies(body: bytes, what: str) -> None:
    with pytest.raises(InvalidNotification) as e:
        external.parse_body(body)
    assert what in e.value.message and e.value.status == 400
    assert e.value.code == "invalid_notification"


def test_both_body_shapes_parse() -> None:
    rec = minio_record("images", "uploads/a.jpg")
    assert external.parse_body(json.dumps(minio_body(rec)).encode()) == [rec]
    assert external.parse_body(json.dumps({"Records": [rec, rec]}).encode()) == [rec, rec]


def test_dedupe_key_is_stable_per_record() -> None:
    a = minio_record("images", "uploads/a.jpg", seq="15CFEDF8D5304D1A")
    assert external.dedupe_key(a) == external.dedupe_key(copy.deepcopy(a))
    b = minio_record("images", "uploads/a.jpg", seq="15CFEDF8D5304D1B")
    assert external.dedupe_key(a) != external.dedupe_key(b)
    del b["s3"]["object"]["sequencer"]
    assert external.dedupe_key(b) is None


@pytest.mark.parametrize("secret, header, ok", [
    ("tok", "Bearer tok", True),
    ("tok", "Bearer tok2", False),
    ("tok", "tok", False),
    ("tok", None, False),
    ("tok", "", False),
    ("Token abc", "Token abc", True),  # MinIO sends a two-word auth_token as it is
    ("Token abc", "Bearer Token abc", False),
])
def test_check_token(secret: str, header: str | None, ok: bool) -> None:
    if ok:
        external.check_token(secret, header)
    else:
        with pytest.raises(InvalidToken):
            external.check_token(secret, header)


# --- end to end ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformProc]:
    proc = s3_helpers.start(tmp_path_factory.mktemp("s3ext") / "data")
    yield proc
    proc.close()


def _trigger(p: PlatformProc, function: str, config: dict[str, Any],
             name: str | None = None) -> Any:
    body: dict[str, Any] = {"type": "storage", "config": config}
    if name is not None:
        body["name"] = name
    return p.http.post(f"/api/v1/functions/{function}/triggers", json=body)


def _rows(p: PlatformProc, function: str) -> list[dict[str, Any]]:
    r = p.http.get("/api/v1/invocations", params={"function": function, "limit": 1000})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["invocations"]
    return rows


def _results(p: PlatformProc, function: str, count: int) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        ok = [r["result"] for r in _rows(p, function) if r["status"] == "succeeded"]
        return ok if len(ok) >= count else None

    out: list[dict[str, Any]] = wait_for(done, timeout=60, message=f"{count} deliveries")
    return out


def _status(p: PlatformProc, function: str) -> dict[str, Any]:
    r = p.http.get(f"/api/v1/functions/{function}/triggers")
    assert r.status_code == 200, r.text
    status: dict[str, Any] = r.json()["triggers"][0]["status"]
    return status


def _hook(p: PlatformProc, name: str, body: Any, token: str | None = SECRET) -> Any:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    # not p.http: it carries the admin key in Authorization, the store sends its own token
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{p.url}/hooks/{name}", content=content, headers=headers, timeout=30)


@pytest.mark.parametrize("config, key", [
    ({"bucket": "images", "source": "ftp"}, "source"),
    ({"bucket": "images", "source": "webhook"}, "secret"),
    ({"bucket": "images", "source": "webhook", "secret": ""}, "secret"),
    ({"bucket": "images", "source": "webhook", "secret": "x", "stream": "S"}, "stream"),
    ({"bucket": "images", "secret": "x"}, "secret"),  # builtin takes no secret
    ({"bucket": "images", "source": "nats", "subject": "s"}, "stream"),
    ({"bucket": "images", "source": "amqp", "queue": "q", "subjct": "x"}, "subjct"),
    ({"source": "webhook", "secret": "x"}, "bucket"),
])
def test_invalid_external_configs(p: PlatformProc, make_fn: Callable[..., Path],
                                  config: dict[str, Any], key: str) -> None:
    if p.http.get("/api/v1/functions/extbad").status_code == 404:
        p.deploy(make_fn("extbad", HANDLER))
    r = _trigger(p, "extbad", config)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["details"]["key"] == key


def test_minio_webhook_end_to_end(p: PlatformProc, make_fn: Callable[..., Path]) -> None:
    p.deploy(make_fn("extwh", HANDLER))
    r = _trigger(p, "extwh", {"source": "webhook", "secret": SECRET, **CONFIG}, "minio-images")
    assert r.status_code == 201, r.text
    assert r.json()["config"]["secret"] == "***"

    cat = minio_record("images", "uploads/my+cat.jpg", seq="15CFEDF8D5304D1A")
    r = _hook(p, "minio-images", minio_body(cat))
    assert r.status_code == 202, r.text
    first = r.json()
    assert (first["accepted"], first["duplicates"], first["dropped"]) == (1, 0, 0)
    # MinIO resends until it gets a 2xx: the same record is recognised, not run twice
    again = _hook(p, "minio-images", minio_body(cat)).json()
    assert again["request_ids"] == first["request_ids"] and again["duplicates"] == 1
    # Ceph RGW: several records in one body; other buckets and events are dropped, still 202
    rgw = {"Records": [minio_record("images", "uploads/dog.jpg", "ObjectCreated:Put"),
                       minio_record("images", "uploads/dog.png"),
                       minio_record("videos", "uploads/dog.jpg"),
                       minio_record("images", "uploads/dog.jpg", "s3:ObjectAccessed:Get")]}
    r = _hook(p, "minio-images", rgw)
    assert r.status_code == 202, r.text
    assert (r.json()["accepted"], r.json()["dropped"]) == (1, 3)

    results = sorted(_results(p, "extwh", 2), key=lambda x: x["key"])
    assert [(x["key"], x["name"]) for x in results] == [
        ("uploads/dog.jpg", "ObjectCreated:Put"), ("uploads/my+cat.jpg", "s3:ObjectCreated:Put")]
    got = results[1]
    assert got["bucket"] == "images" and got["size"] == 224662
    assert got["etag"] == "5fc7298143efe1276d39a3466d4e255f" and got["seq"] == "15CFEDF8D5304D1A"
    assert got["source"] == "minio:s3" and got["time"] == "2019-10-22T09:27:27.125Z"
    assert got["rid"] == first["request_ids"][0]
    assert len(_rows(p, "extwh")) == 2
    status = _status(p, "extwh")
    assert status["records_accepted"] == 3 and status["records_dropped"] == 3


def test_webhook_bad_token_and_bad_bodies_enqueue_nothing(p: PlatformProc,
                                                          make_fn: Callable[..., Path]) -> None:
    p.deploy(make_fn("extwhbad", HANDLER))
    assert _trigger(p, "extwhbad", {"source": "webhook", "secret": SECRET,
                                    "bucket": "photos"}).status_code == 201
    body = minio_body(minio_record("photos", "a.jpg"))
    for token in ("wrong-token", None, SECRET[:-1]):
        r = _hook(p, "extwhbad", body, token)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "invalid_token"
    for bad in (b"<xml/>", b'{"Key": "photos/a.jpg"}', b'{"Records": [{"eventName": "x"}]}'):
        r = _hook(p, "extwhbad", bad)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_notification"
    # a wrong token is refused before the body is looked at
    assert _hook(p, "extwhbad", b"not json", "wrong").status_code == 401
    assert _rows(p, "extwhbad") == []
    assert _status(p, "extwhbad")["messages_malformed"] == 3
    # the name is the function's by default, like a webhook; a missing hook is 404
    assert _hook(p, "no-such-hook", body).status_code == 404


def test_builtin_writes_do_not_fire_an_external_trigger(p: PlatformProc,
                                                        make_fn: Callable[..., Path]) -> None:
    p.deploy(make_fn("extonly", HANDLER))
    p.deploy(make_fn("builtinonly", HANDLER))
    assert _trigger(p, "extonly", {"source": "webhook", "secret": SECRET,
                                   "bucket": "shared-name"}).status_code == 201
    assert _trigger(p, "builtinonly", {"bucket": "shared-name"}).status_code == 201
    s3 = s3_helpers.client(p)
    s3.create_bucket(Bucket="shared-name")
    s3.put_object(Bucket="shared-name", Key="k", Body=b"x")
    # the built-in store's event is committed with the object: it is there once PUT returned
    assert len(_rows(p, "builtinonly")) == 1
    assert _rows(p, "extonly") == []


# --- brokers ------------------------------------------------------------------------------------

HOST = "127.0.0.1"
AMQP_URL = f"amqp://guest:guest@{HOST}/"


async def _nats_publish(stream: str, subject: str, bodies: list[bytes]) -> None:
    nc = await nats.connect(f"nats://{HOST}:4222")
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        for body in bodies:
            await js.publish(subject, body)
    finally:
        await nc.close()


async def _nats_delete(stream: str) -> None:
    nc = await nats.connect(f"nats://{HOST}:4222")
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


async def _amqp_publish(queue: str, bodies: list[bytes]) -> None:
    async with await aio_pika.connect(AMQP_URL) as conn:
        channel = await conn.channel()
        await channel.declare_queue(queue, durable=True)
        for body in bodies:
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue)


async def _amqp_delete(queue: str) -> None:
    async with await aio_pika.connect(AMQP_URL) as conn:
        channel = await conn.channel()
        await channel.queue_delete(queue)


def _bodies(bucket: str) -> list[bytes]:
    """Two uploads (one published twice: at-least-once), one other bucket, one poison message."""
    a = minio_record(bucket, "in/a.jpg", seq="17A0000000000001")
    b = minio_record(bucket, "in/b+c.jpg", seq="17A0000000000002")
    other = minio_record("elsewhere", "in/a.jpg")
    return [json.dumps(minio_body(r)).encode() for r in (a, b, a, other)] + [b"garbage"]


@pytest.mark.parametrize("kind", ["nats", "amqp"])
def test_broker_notifications(kind: str, p: PlatformProc, make_fn: Callable[..., Path]) -> None:
    require_service(HOST, {"nats": 4222, "amqp": 5672}[kind], kind)
    tag = uuid.uuid4().hex[:10]
    fn, bucket = f"ext{kind}", f"bkt-{tag}"
    stream, subject, queue = f"MINIO_{tag}", f"minio.events.{tag}", f"minio-events-{tag}"
    broker: dict[str, Any] = ({"stream": stream, "subject": subject, "create_stream": True}
                              if kind == "nats" else {"url": AMQP_URL, "queue": queue})
    p.deploy(make_fn(fn, HANDLER))
    try:
        r = _trigger(p, fn, {"source": kind, "bucket": bucket, "suffix": ".jpg", **broker})
        assert r.status_code == 201, r.text
        wait_for(lambda: _status(p, fn).get("state") == "running", timeout=30,
                 message=f"the {kind} storage trigger to connect")
        if kind == "nats":
            asyncio.run(_nats_publish(stream, subject, _bodies(bucket)))
        else:
            asyncio.run(_amqp_publish(queue, _bodies(bucket)))
        wait_for(lambda: _status(p, fn).get("messages_malformed") == 1, timeout=30,
                 message="every message consumed")
        results = sorted(_results(p, fn, 2), key=lambda x: x["key"])
        assert [(x["key"], x["bucket"], x["name"]) for x in results] == [
            ("in/a.jpg", bucket, "s3:ObjectCreated:Put"),
            ("in/b+c.jpg", bucket, "s3:ObjectCreated:Put")]
        status = _status(p, fn)
        assert status["records_accepted"] == 3 and status["records_dropped"] == 1
        assert len(_rows(p, fn)) == 2  # the record published twice ran once
        logs = p.http.get(f"/api/v1/functions/{fn}/logs", params={"limit": 1000}).json()
        assert any("dropped" in row["line"] for row in logs["lines"])
    finally:
        p.http.delete(f"/api/v1/functions/{fn}/triggers/storage-1")
        asyncio.run(_nats_delete(stream) if kind == "nats" else _amqp_delete(queue))
