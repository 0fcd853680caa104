"""The S3 API with a real botocore client against a real platform: every operation, bad input."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests import s3_helpers
from tests.conftest import PlatformProc, wait_for

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformProc]:
    proc = s3_helpers.start(tmp_path_factory.mktemp("s3") / "data")
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def s3(p: PlatformProc) -> Any:
    return s3_helpers.client(p)


@pytest.fixture
def bucket(s3: Any, request: pytest.FixtureRequest) -> str:
    name = "b-" + hashlib.md5(request.node.name.encode()).hexdigest()[:12]
    s3.create_bucket(Bucket=name)
    return name


# --- buckets ---------------------------------------------------------------------------------

def test_bucket_lifecycle(s3: Any) -> None:
    s3.create_bucket(Bucket="life-cycle")
    assert "life-cycle" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket="life-cycle")
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket="life-cycle")
    assert s3_helpers.code(e) == "BucketAlreadyOwnedByYou"
    s3.put_object(Bucket="life-cycle", Key="x", Body=b"1")
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket="life-cycle")
    assert s3_helpers.code(e) == "BucketNotEmpty"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    s3.delete_object(Bucket="life-cycle", Key="x")
    s3.delete_bucket(Bucket="life-cycle")
    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket="life-cycle")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket="life-cycle")
    assert s3_helpers.code(e) == "NoSuchBucket"


@pytest.mark.parametrize("name", ["ab", "UPPER", "has_underscore", "-start", "end-",
                                  "two..dots", "192.168.1.1", "x" * 64, "xn--punycode"])
def test_invalid_bucket_names(s3: Any, name: str) -> None:
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket=name)
    assert s3_helpers.code(e) == "InvalidBucketName"


# --- objects ---------------------------------------------------------------------------------

def test_put_get_head_with_metadata_and_etag(s3: Any, bucket: str) -> None:
    body = os.urandom(1000)
    put = s3.put_object(Bucket=bucket, Key="dir/ü b+c.bin", Body=body, ContentType="image/png",
                        Metadata={"colour": "blue"}, CacheControl="max-age=60")
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key="dir/ü b+c.bin")
    assert got["Body"].read() == body
    assert got["ContentType"] == "image/png" and got["Metadata"] == {"colour": "blue"}
    assert got["CacheControl"] == "max-age=60" and got["ETag"] == put["ETag"]
    head = s3.head_object(Bucket=bucket, Key="dir/ü b+c.bin")
    assert head["ContentLength"] == 1000 and head["Metadata"] == {"colour": "blue"}
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="missing")
    assert s3_helpers.code(e) == "NoSuchKey"


def test_overwrite_replaces_and_leaves_one_file(p: PlatformProc, s3: Any, bucket: str) -> None:
    before = _files(p)
    s3.put_object(Bucket=bucket, Key="k", Body=b"old")
    s3.put_object(Bucket=bucket, Key="k", Body=b"new!")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"new!"
    assert len(_files(p) - before) == 1


def _files(p: PlatformProc) -> set[str]:
    return {f.name for f in (p.data_dir / "objects" / "data").rglob("*") if f.is_file()}


def test_range_reads(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="r", Body=b"0123456789")
    cases = {"bytes=2-4": b"234", "bytes=7-": b"789", "bytes=-3": b"789", "bytes=8-100": b"89"}
    for rng, want in cases.items():
        got = s3.get_object(Bucket=bucket, Key="r", Range=rng)
        assert got["Body"].read() == want, rng
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["ContentRange"].endswith("/10")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="r", Range="bytes=10-")
    assert s3_helpers.code(e) == "InvalidRange"


def test_delete_and_delete_objects(s3: Any, bucket: str) -> None:
    for k in ("a", "b", "c"):
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    s3.delete_object(Bucket=bucket, Key="a")
    s3.delete_object(Bucket=bucket, Key="never-existed")  # S3: 204 for a missing key too
    out = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "b"}, {"Key": "c"}]})
    assert sorted(d["Key"] for d in out["Deleted"]) == ["b", "c"]
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_copy_object_keeps_or_replaces_metadata(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"data", ContentType="text/plain",
                  Metadata={"a": "1"})
    s3.copy_object(Bucket=bucket, Key="same-meta", CopySource={"Bucket": bucket, "Key": "src"})
    got = s3.get_object(Bucket=bucket, Key="same-meta")
    assert got["Body"].read() == b"data" and got["Metadata"] == {"a": "1"}
    s3.copy_object(Bucket=bucket, Key="new-meta", CopySource=f"{bucket}/src",
                   MetadataDirective="REPLACE", Metadata={"b": "2"}, ContentType="text/csv")
    got = s3.head_object(Bucket=bucket, Key="new-meta")
    assert got["Metadata"] == {"b": "2"} and got["ContentType"] == "text/csv"
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="src", CopySource=f"{bucket}/src")
    assert s3_helpers.code(e) == "InvalidRequest"


def test_hostile_keys_stay_inside_the_store(p: PlatformProc, s3: Any, bucket: str) -> None:
    keys = ["../../../etc/passwd", "/abs", "a//b", "..", "%2e%2e/x"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    for k in keys:
        assert s3.get_object(Bucket=bucket, Key=k)["Body"].read() == k.encode()
    root = p.data_dir / "objects"
    for f in root.rglob("*"):
        assert f.resolve().is_relative_to(root.resolve())
        assert "passwd" not in f.name and f.name != "abs"


def test_bad_object_input(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="k" * 1025, Body=b"x")
    assert s3_helpers.code(e) == "KeyTooLongError"
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="md5", Body=b"data", ContentMD5=wrong)
    assert s3_helpers.code(e) == "BadDigest"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="md5")  # nothing half-written
    right = base64.b64encode(hashlib.md5(b"data").digest()).decode()
    s3.put_object(Bucket=bucket, Key="md5", Body=b"data", ContentMD5=right)
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="no-such-bucket-here", Key="k", Body=b"x")
    assert s3_helpers.code(e) == "NoSuchBucket"


# --- listing ---------------------------------------------------------------------------------

def test_list_v2_prefix_delimiter_and_pages(s3: Any, bucket: str) -> None:
    keys = [f"photos/2024/{i:02d}.jpg" for i in range(12)] + [
        "photos/2025/a.jpg", "photos/2025/b.jpg", "photos/top.jpg", "readme.txt", "zz/deep/x"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=b"")
    got = s3.list_objects_v2(Bucket=bucket, Prefix="photos/", Delimiter="/")
    assert [c["Prefix"] for c in got["CommonPrefixes"]] == ["photos/2024/", "photos/2025/"]
    assert [o["Key"] for o in got["Contents"]] == ["photos/top.jpg"]
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [c["Prefix"] for c in top["CommonPrefixes"]] == ["photos/", "zz/"]
    seen, pages = [], 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                             PaginationConfig={"PageSize": 5}):
        seen += [o["Key"] for o in page.get("Contents", [])]
        pages += 1
    assert seen == sorted(keys) and pages == 4
    delimited = []
    for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Delimiter="/", Prefix="photos/", PaginationConfig={"PageSize": 1}):
        delimited += [c["Prefix"] for c in page.get("CommonPrefixes", [])]
        delimited += [o["Key"] for o in page.get("Contents", [])]
    assert delimited == ["photos/2024/", "photos/2025/", "photos/top.jpg"]
    v1 = s3.list_objects(Bucket=bucket, Prefix="photos/2025/")
    assert [o["Key"] for o in v1["Contents"]] == ["photos/2025/a.jpg", "photos/2025/b.jpg"]
    assert s3.list_objects_v2(Bucket=bucket, MaxKeys=0)["KeyCount"] == 0


# --- multipart -------------------------------------------------------------------------------

def test_multipart_upload_complete_and_etag(s3: Any, bucket: str) -> None:
    parts_data = [os.urandom(5 * MiB), os.urandom(5 * MiB), b"tail"]
    up = s3.create_multipart_upload(Bucket=bucket, Key="big.bin", ContentType="video/mp4",
                                    Metadata={"m": "1"})
    uid = up["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key="big.bin", UploadId=uid, PartNumber=i + 1,
                            Body=d)["ETag"] for i, d in enumerate(parts_data)]
    listed = s3.list_parts(Bucket=bucket, Key="big.bin", UploadId=uid)["Parts"]
    assert [pt["Size"] for pt in listed] == [5 * MiB, 5 * MiB, 4]
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [uid]
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="big.bin", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": t} for i, t in enumerate(etags)]})
    md5s = b"".join(hashlib.md5(d).digest() for d in parts_data)
    assert done["ETag"] == f'"{hashlib.md5(md5s).hexdigest()}-3"'
    got = s3.get_object(Bucket=bucket, Key="big.bin")
    assert got["Body"].read() == b"".join(parts_data)
    assert got["ContentType"] == "video/mp4" and got["Metadata"] == {"m": "1"}
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)


def test_multipart_bad_completions_and_abort(s3: Any, bucket: str) -> None:
    uid = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    small = s3.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=1,
                           Body=b"x" * 100)["ETag"]
    last = s3.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=2,
                          Body=b"y")["ETag"]

    def complete(parts: list[dict[str, Any]]) -> str:
        with pytest.raises(ClientError) as e:
            s3.complete_multipart_upload(Bucket=bucket, Key="m", UploadId=uid,
                                         MultipartUpload={"Parts": parts})
        return s3_helpers.code(e)

    assert complete([{"PartNumber": 1, "ETag": small},
                     {"PartNumber": 2, "ETag": last}]) == "EntityTooSmall"
    assert complete([{"PartNumber": 2, "ETag": last},
                     {"PartNumber": 1, "ETag": small}]) == "InvalidPartOrder"
    assert complete([{"PartNumber": 1, "ETag": '"' + "0" * 32 + '"'}]) == "InvalidPart"
    assert complete([{"PartNumber": 3, "ETag": last}]) == "InvalidPart"
    s3.abort_multipart_upload(Bucket=bucket, Key="m", UploadId=uid)
    with pytest.raises(ClientError) as e:
        s3.list_parts(Bucket=bucket, Key="m", UploadId=uid)
    assert s3_helpers.code(e) == "NoSuchUpload"
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="m")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_upload_file_and_download_file_use_multipart(s3: Any, bucket: str,
                                                     tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(11 * MiB))
    cfg = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3.upload_file(str(src), bucket, "file.bin", Config=cfg)
    assert s3.head_object(Bucket=bucket, Key="file.bin")["ETag"].endswith('-3"')
    dst = tmp_path / "dst.bin"
    s3.download_file(bucket, "file.bin", str(dst), Config=cfg)  # ranged GETs
    assert dst.read_bytes() == src.read_bytes()


# --- presigned URLs and signatures -----------------------------------------------------------

@pytest.mark.parametrize("version", ["default", "s3v4"])
def test_presigned_get_and_put(p: PlatformProc, bucket: str, version: str) -> None:
    # boto3 presigns with SigV2 query auth by default for a custom endpoint; s3v4 is SigV4
    s3 = s3_helpers.client(p, **({} if version == "default" else {"signature_version": "s3v4"}))
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "p q"},
                                        ExpiresIn=300)
    r = httpx.put(put_url, content=b"presigned body")
    assert r.status_code == 200, r.text
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p q"},
                                        ExpiresIn=300)
    r = httpx.get(get_url)
    assert r.status_code == 200 and r.content == b"presigned body"
    changed = httpx.delete(get_url)
    assert changed.status_code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in changed.content
    assert httpx.get(get_url).status_code == 200  # still there


def test_presigned_url_expires(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="soon", Body=b"x")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "soon"},
                                    ExpiresIn=1)
    r = wait_for(lambda: (resp := httpx.get(url)).status_code == 403 and resp, timeout=10,
                 message="the presigned URL to expire")
    assert b"<Code>AccessDenied</Code>" in r.content and b"Request has expired" in r.content


def test_unsigned_and_wrongly_signed_requests(p: PlatformProc, bucket: str) -> None:
    r = httpx.get(f"{p.s3_url}/{bucket}")  # type: ignore[attr-defined]
    assert r.status_code == 403 and b"<Code>AccessDenied</Code>" in r.content
    akid, secret = s3_helpers.pair(p.admin_key)
    wrong = s3_helpers.client(p, f"sq_{akid[4:].lower()}_{'A' * 43}")
    with pytest.raises(ClientError) as e:
        wrong.list_objects_v2(Bucket=bucket)
    assert s3_helpers.code(e) == "SignatureDoesNotMatch"
    unknown = s3_helpers.client(p, f"sq_{'0' * 16}_{secret}")
    with pytest.raises(ClientError) as e:
        unknown.list_buckets()
    assert s3_helpers.code(e) == "InvalidAccessKeyId"


def test_virtual_hosted_addressing(p: PlatformProc, s3: Any, bucket: str) -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    s3.put_object(Bucket=bucket, Key="v/h.txt", Body=b"virtual")
    port = p.s3_url.rsplit(":", 1)[1]  # type: ignore[attr-defined]
    req = AWSRequest("GET", f"http://{bucket}.localhost:{port}/v/h.txt",
                     headers={"x-amz-content-sha256": hashlib.sha256(b"").hexdigest()})
    S3SigV4Auth(Credentials(*s3_helpers.pair(p.admin_key)), "s3", "us-east-1").add_auth(req)
    headers = {**dict(req.headers), "host": f"{bucket}.localhost:{port}"}
    r = httpx.get(f"http://127.0.0.1:{port}/v/h.txt", headers=headers)
    assert r.status_code == 200 and r.content == b"virtual"


# --- tenants ---------------------------------------------------------------------------------

def test_another_tenants_bucket_is_no_such_bucket(p: PlatformProc, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="secret.txt", Body=b"mine")
    acme = s3_helpers.client(p, s3_helpers.tenant_key(p, "acme", ["deploy"]))
    for call in (lambda: acme.get_object(Bucket=bucket, Key="secret.txt"),
                 lambda: acme.list_objects_v2(Bucket=bucket),
                 lambda: acme.put_object(Bucket=bucket, Key="x", Body=b"x"),
                 lambda: acme.delete_bucket(Bucket=bucket)):
        with pytest.raises(ClientError) as e:
            call()
        assert s3_helpers.code(e) == "NoSuchBucket"
    assert acme.list_buckets()["Buckets"] == []
    acme.create_bucket(Bucket=bucket)  # names are per tenant
    assert acme.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert s3.get_object(Bucket=bucket, Key="secret.txt")["Body"].read() == b"mine"


def test_read_scope_cannot_write(p: PlatformProc, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="r", Body=b"1")
    reader = s3_helpers.client(p, s3_helpers.tenant_key(p, "default", ["read"]))
    assert reader.get_object(Bucket=bucket, Key="r")["Body"].read() == b"1"
    with pytest.raises(ClientError) as e:
        reader.put_object(Bucket=bucket, Key="w", Body=b"2")
    assert s3_helpers.code(e) == "AccessDenied"
    invoker = s3_helpers.client(p, s3_helpers.tenant_key(p, "default", ["invoke"]))
    with pytest.raises(ClientError) as e:
        invoker.get_object(Bucket=bucket, Key="r")
    assert s3_helpers.code(e) == "AccessDenied"
