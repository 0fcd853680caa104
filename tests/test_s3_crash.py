"""kill -9 during uploads: no partial object, no leaked files after restart, events kept."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests import s3_helpers
from tests.conftest import PlatformProc, wait_for

MiB = 1024 * 1024


@pytest.fixture
def p(tmp_path: Path) -> Iterator[PlatformProc]:
    proc = s3_helpers.start(tmp_path / "data")
    yield proc
    proc.close()


def _start_put(p: PlatformProc, path: str, declared: int, sent: int) -> socket.socket:
    """Send a signed PUT's headers and only ``sent`` of its ``declared`` body bytes."""
    url = f"{p.s3_url}{path}"  # type: ignore[attr-defined]
    req = AWSRequest("PUT", url, headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD",
                                          "content-length": str(declared)})
    S3SigV4Auth(Credentials(*s3_helpers.pair(p.admin_key)), "s3", "us-east-1").add_auth(req)
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    head = f"PUT {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1\r\n"
    head += f"host: {parts.netloc}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items() if k.lower() != "host")
    sock.sendall(head.encode() + b"\r\n" + b"z" * sent)
    return sock


def _tmp_files(p: PlatformProc) -> list[Path]:
    return list((p.data_dir / "objects" / "tmp").iterdir())


def _data_files(p: PlatformProc) -> list[Path]:
    return [f for f in (p.data_dir / "objects" / "data").rglob("*") if f.is_file()]


def _crash_and_restart(p: PlatformProc, sock: socket.socket) -> None:
    wait_for(lambda: any(f.stat().st_size > 0 for f in _tmp_files(p)), timeout=20,
             message="the upload to reach its temp file")
    p.kill9()
    sock.close()
    assert _tmp_files(p), "the crash should leave a temp file for the restart to sweep"
    p.start()


def test_kill9_during_put(p: PlatformProc) -> None:
    s3 = s3_helpers.client(p)
    s3.create_bucket(Bucket="crash")
    s3.put_object(Bucket="crash", Key="keep", Body=b"old bytes")
    sock = _start_put(p, "/crash/keep", declared=64 * MiB, sent=4 * MiB)
    _crash_and_restart(p, sock)
    s3 = s3_helpers.client(p)
    assert s3.get_object(Bucket="crash", Key="keep")["Body"].read() == b"old bytes"
    assert _tmp_files(p) == []
    assert len(_data_files(p)) == 1  # the old object's file, nothing else


def test_kill9_during_multipart_upload(p: PlatformProc) -> None:
    s3 = s3_helpers.client(p)
    s3.create_bucket(Bucket="crash")
    uid = s3.create_multipart_upload(Bucket="crash", Key="big")["UploadId"]
    s3.upload_part(Bucket="crash", Key="big", UploadId=uid, PartNumber=1, Body=b"a" * 5 * MiB)
    sock = _start_put(p, f"/crash/big?partNumber=2&uploadId={uid}", declared=64 * MiB,
                      sent=4 * MiB)
    _crash_and_restart(p, sock)
    s3 = s3_helpers.client(p)
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket="crash", Key="big")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert _tmp_files(p) == []
    parts = s3.list_parts(Bucket="crash", Key="big", UploadId=uid)["Parts"]
    assert [pt["PartNumber"] for pt in parts] == [1]  # the finished part survived
    s3.abort_multipart_upload(Bucket="crash", Key="big", UploadId=uid)
    assert _data_files(p) == []


def test_truncated_body_writes_nothing(p: PlatformProc) -> None:
    s3 = s3_helpers.client(p)
    s3.create_bucket(Bucket="short")
    sock = _start_put(p, "/short/k", declared=1000, sent=10)
    sock.shutdown(socket.SHUT_WR)  # the client gives up before its declared length
    sock.recv(1024)
    sock.close()
    wait_for(lambda: _tmp_files(p) == [], message="the cut upload's temp file to go")
    with pytest.raises(ClientError):
        s3.head_object(Bucket="short", Key="k")
    assert _data_files(p) == []


def test_acknowledged_upload_keeps_its_event_across_kill9(
        p: PlatformProc, make_fn: Callable[..., Path]) -> None:
    p.deploy(make_fn("afterkill", "def handler(event, context):\n"
                     "    return event['Records'][0]['s3']['object']['key']\n"))
    s3 = s3_helpers.client(p)
    s3.create_bucket(Bucket="durable")
    r = p.http.post("/api/v1/functions/afterkill/triggers",
                    json={"type": "storage", "config": {"bucket": "durable"}})
    assert r.status_code == 201, r.text
    s3.put_object(Bucket="durable", Key="acked", Body=b"1")
    p.kill9()  # right after the acknowledgement
    p.start()

    def delivered() -> Any:
        rows = p.http.get("/api/v1/invocations", params={"function": "afterkill"}).json()
        ok = [x for x in rows["invocations"] if x["status"] == "succeeded"]
        return ok or None

    assert [x["result"] for x in wait_for(delivered, timeout=60)] == ["acked"]
