"""Storage triggers: S3 notification records through the durable queue, filters, crash safety."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import s3_helpers
from tests.conftest import PlatformProc, wait_for

HANDLER = """
def handler(event, context):
    r = event["Records"][0]
    o = r["s3"]["object"]
    return {"name": r["eventName"], "key": o["key"], "size": o.get("size"),
            "etag": o.get("eTag"), "bucket": r["s3"]["bucket"]["name"],
            "source": r["eventSource"], "version": r["eventVersion"], "seq": o["sequencer"]}
"""


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformProc]:
    proc = s3_helpers.start(tmp_path_factory.mktemp("s3ev") / "data")
    yield proc
    proc.close()


def _deploy(p: PlatformProc, make_fn: Callable[..., Path], name: str) -> None:
    p.deploy(make_fn(name, HANDLER))


def _trigger(p: PlatformProc, function: str, config: dict[str, Any]) -> Any:
    return p.http.post(f"/api/v1/functions/{function}/triggers",
                       json={"type": "storage", "config": config})


def _events(p: PlatformProc, function: str) -> list[dict[str, Any]]:
    r = p.http.get("/api/v1/invocations", params={"function": function, "limit": 1000})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["invocations"]
    return rows


def _results(p: PlatformProc, function: str, count: int) -> list[dict[str, Any]]:
    """Wait until ``count`` events of ``function`` succeeded; return their results."""
    def done() -> list[dict[str, Any]] | None:
        rows = _events(p, function)
        ok = [r for r in rows if r["status"] == "succeeded"]
        return [r["result"] for r in ok] if len(ok) >= count else None

    out: list[dict[str, Any]] = wait_for(done, timeout=60, message=f"{count} deliveries")
    return out


def test_created_events_with_prefix_and_suffix(p: PlatformProc,
                                               make_fn: Callable[..., Path]) -> None:
    s3 = s3_helpers.client(p)
    s3.create_bucket(Bucket="ev-created")
    _deploy(p, make_fn, "oncreate")
    r = _trigger(p, "oncreate", {"bucket": "ev-created", "prefix": "uploads/", "suffix": ".jpg"})
    assert r.status_code == 201, r.text
    s3.put_object(Bucket="ev-created", Key="uploads/a.jpg", Body=b"aaa")
    s3.put_object(Bucket="ev-created", Key="uploads/b c.jpg", Body=b"bb")
    s3.put_object(Bucket="ev-created", Key="uploads/x.png", Body=b"no: suffix")
    s3.put_object(Bucket="ev-created", Key="other/a.jpg", Body=b"no: prefix")
    uid = s3.create_multipart_upload(Bucket="ev-created", Key="uploads/multi.jpg")["UploadId"]
    etag = s3.upload_part(Bucket="ev-created", Key="uploads/multi.jpg", UploadId=uid,
                          PartNumber=1, Body=b"m")["ETag"]
    s3.complete_multipart_upload(Bucket="ev-created", Key="uploads/multi.jpg", UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    s3.copy_object(Bucket="ev-created", Key="uploads/copy.jpg",
                   CopySource="ev-created/uploads/a.jpg")
    s3.delete_object(Bucket="ev-created", Key="uploads/a.jpg")  # not subscribed
    # committed with the objects: every event exists once the writes are acknowledged
    assert len(_events(p, "oncreate")) == 4
    results = sorted(_results(p, "oncreate", 4), key=lambda x: x["key"])
    assert [(x["key"], x["name"]) for x in results] == [
        ("uploads/a.jpg", "ObjectCreated:Put"), ("uploads/b+c.jpg", "ObjectCreated:Put"),
        ("uploads/copy.jpg", "ObjectCreated:Copy"),
        ("uploads/multi.jpg", "ObjectCreated:CompleteMultipartUpload")]
    first = results[0]
    assert first["size"] == 3 and first["bucket"] == "ev-created"
    assert first["source"] == "aws:s3" and first["version"] == "2.1"
    assert len(first["etag"]) == 32 and '"' not in first["etag"]
    assert len(_events(p, "oncreate")) == 4


def test_removed_events_only_when_subscribed(p: PlatformProc,
                                             make_fn: Callable[..., Path]) -> None:
    s3 = s3_helpers.client(p)
    s3.create_bucket(Bucket="ev-removed")
    _deploy(p, make_fn, "onremove")
    assert _trigger(p, "onremove", {"bucket": "ev-removed",
                                    "events": ["s3:ObjectRemoved:*"]}).status_code == 201
    s3.put_object(Bucket="ev-removed", Key="k1", Body=b"1")
    s3.put_object(Bucket="ev-removed", Key="k2", Body=b"2")
    assert _events(p, "onremove") == []
    s3.delete_object(Bucket="ev-removed", Key="k1")
    s3.delete_objects(Bucket="ev-removed", Delete={"Objects": [{"Key": "k2"}, {"Key": "gone"}]})
    got = _results(p, "onremove", 2)
    assert sorted((x["key"], x["name"]) for x in got) == [
        ("k1", "ObjectRemoved:Delete"), ("k2", "ObjectRemoved:Delete")]
    assert got[0]["size"] is None


def test_concurrent_uploads_fire_exactly_as_many_events(p: PlatformProc,
                                                        make_fn: Callable[..., Path]) -> None:
    s3 = s3_helpers.client(p)
    s3.create_bucket(Bucket="ev-many")
    _deploy(p, make_fn, "onmany")
    assert _trigger(p, "onmany", {"bucket": "ev-many"}).status_code == 201
    errors: list[BaseException] = []

    def upload(worker: int) -> None:
        client = s3_helpers.client(p)
        try:
            for i in range(10):
                client.put_object(Bucket="ev-many", Key=f"w{worker}/{i}", Body=b"x" * i)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=upload, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = _events(p, "onmany")
    assert len(rows) == 40 and len({r["request_id"] for r in rows}) == 40
    keys = sorted(x["key"] for x in _results(p, "onmany", 40))
    assert keys == sorted(f"w{w}/{i}" for w in range(4) for i in range(10))


@pytest.mark.parametrize("config, key", [
    ({"bucket": "Bad_Name"}, "bucket"),
    ({}, "bucket"),
    ({"bucket": "ok-bucket", "events": ["s3:ObjectCreated:Nope"]}, "events"),
    ({"bucket": "ok-bucket", "prefix": 3}, "prefix"),
    ({"bucket": "ok-bucket", "colour": "red"}, "colour"),
])
def test_invalid_storage_trigger(p: PlatformProc, make_fn: Callable[..., Path],
                                 config: dict[str, Any], key: str) -> None:
    if p.http.get("/api/v1/functions/badtrig").status_code == 404:
        _deploy(p, make_fn, "badtrig")
    r = _trigger(p, "badtrig", config)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_config" and err["details"]["key"] == key
