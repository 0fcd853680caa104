"""S3 operations, one function each, chosen by method, bucket/key and query (``dispatch``).

Supported: ListBuckets, CreateBucket, HeadBucket, DeleteBucket, GetBucketLocation,
ListObjects (V1), ListObjectsV2, DeleteObjects, PutObject, GetObject (Range), HeadObject,
DeleteObject, CopyObject, CreateMultipartUpload, UploadPart, ListParts, CompleteMultipartUpload,
AbortMultipartUpload, ListMultipartUploads. Anything else is 501 NotImplemented.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from io import BufferedReader
from typing import TYPE_CHECKING
from urllib.parse import unquote

from starlette.responses import Response, StreamingResponse

from squall.storage import xmlio
from squall.storage.errors import S3Error
from squall.store.objects import ObjectRow

if TYPE_CHECKING:
    from squall.storage.app import Ctx, S3App

Handler = Callable[["S3App", "Ctx"], Awaitable[Response]]
READ_CHUNK = 1 << 20
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_OVERRIDES = ("content-type", "content-language", "expires", "cache-control",
              "content-disposition", "content-encoding")
_UNSUPPORTED = ("acl", "tagging", "versioning", "policy", "cors", "lifecycle", "website",
                "encryption", "replication", "notification", "object-lock", "retention",
                "legal-hold", "torrent", "restore", "select", "attributes", "versions")


def _xml(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/xml")


async def dispatch(app: S3App, ctx: Ctx) -> Response:
    method, q = ctx.request.method, ctx.query
    unsupported = [s for s in _UNSUPPORTED if s in q]
    if unsupported:
        raise S3Error("NotImplemented", f"?{unsupported[0]} is not supported by this store.")
    if not ctx.bucket:
        if method != "GET":
            raise S3Error("MethodNotAllowed", "The specified method is not allowed here.")
        return await list_buckets(app, ctx)
    if not ctx.key:
        table = _BUCKET
        sub = next((s for s in ("location", "uploads", "delete") if s in q), "")
    else:
        table = _OBJECT
        sub = next((s for s in ("uploadId", "uploads") if s in q), "")
        if method == "PUT" and "x-amz-copy-source" in ctx.headers:
            sub = "copy" if not sub else "copy-part"
    handler = table.get((method, sub))
    if handler is None:
        raise S3Error("MethodNotAllowed" if not sub else "NotImplemented",
                      f"{method} {'?' + sub if sub else ''} is not supported here.")
    return await handler(app, ctx)


# --- buckets ---------------------------------------------------------------------------------

async def list_buckets(app: S3App, ctx: Ctx) -> Response:
    return _xml(xmlio.list_buckets(ctx.tenant, await app.objects.list_buckets(ctx.caller)))


async def create_bucket(app: S3App, ctx: Ctx) -> Response:
    await app.objects.create_bucket(ctx.caller, ctx.bucket)
    return Response(headers={"location": f"/{ctx.bucket}"})


async def head_bucket(app: S3App, ctx: Ctx) -> Response:
    await app.objects.require_bucket(ctx.caller, ctx.bucket)
    return Response(headers={"x-amz-bucket-region": app.objects.region})


async def delete_bucket(app: S3App, ctx: Ctx) -> Response:
    await app.objects.delete_bucket(ctx.caller, ctx.bucket)
    return Response(status_code=204)


async def bucket_location(app: S3App, ctx: Ctx) -> Response:
    await app.objects.require_bucket(ctx.caller, ctx.bucket)
    return _xml(xmlio.location(app.objects.region))


def _int(text: str | None, default: int, name: str, lo: int, hi: int) -> int:
    if text is None or text == "":
        return default
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise S3Error("InvalidArgument", f"{name} must be an integer from {lo} to {hi}.")
    return int(text)


async def list_objects(app: S3App, ctx: Ctx) -> Response:
    q = ctx.query
    v2 = q.get("list-type") == "2"
    url = q.get("encoding-type") == "url"
    if q.get("encoding-type") not in (None, "url"):
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request")
    limit = _int(q.get("max-keys"), 1000, "max-keys", 0, 2**31 - 1)
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    after, after_prefix = (q.get("start-after", "") if v2 else q.get("marker", "")), False
    token = q.get("continuation-token") if v2 else None
    if token is not None:
        after, after_prefix = _read_token(token)
    rows, prefixes, truncated = await app.objects.list_objects(
        ctx.caller, ctx.bucket, prefix=prefix, after=after, after_prefix=after_prefix,
        delimiter=delimiter, limit=min(limit, 1000))
    last_key = rows[-1].key if rows else ""
    last_prefix = prefixes[-1] if prefixes else ""
    is_prefix = last_prefix > last_key
    last = last_prefix if is_prefix else last_key
    info = None
    if v2:
        info = {"ContinuationToken": token or "", "StartAfter": q.get("start-after", ""),
                "NextContinuationToken": _token(last, is_prefix)}
    return _xml(xmlio.list_objects(
        bucket=ctx.bucket, prefix=prefix, delimiter=delimiter, max_keys=limit, url=url,
        rows=rows, prefixes=prefixes, truncated=truncated, v2=info,
        marker=q.get("marker", ""), next_marker=last if delimiter else ""))


def _token(last: str, is_prefix: bool) -> str:
    return base64.urlsafe_b64encode(("p" if is_prefix else "k").encode() + last.encode()).decode()


def _read_token(token: str) -> tuple[str, bool]:
    try:
        raw = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raw = ""
    if raw[:1] not in ("p", "k"):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect")
    return raw[1:], raw[0] == "p"


async def _small_body(ctx: Ctx) -> bytes:
    body = bytearray()
    async for chunk in ctx.request.stream():
        body += chunk
        if len(body) > xmlio.MAX_XML_BYTES:
            raise S3Error("MalformedXML", "The XML you provided is too large.")
    return bytes(body)


async def delete_objects(app: S3App, ctx: Ctx) -> Response:
    keys, quiet = xmlio.parse_delete(await _small_body(ctx))
    await app.objects.delete_objects(ctx.caller, ctx.bucket, keys)
    return _xml(xmlio.delete_result(keys, quiet))


async def list_uploads(app: S3App, ctx: Ctx) -> Response:
    rows = await app.multipart.list_uploads(ctx.caller, ctx.bucket, ctx.query.get("prefix", ""))
    return _xml(xmlio.uploads(ctx.bucket, ctx.tenant, rows))


# --- objects ---------------------------------------------------------------------------------

async def put_object(app: S3App, ctx: Ctx) -> Response:
    row = await app.objects.put_object(ctx.caller, ctx.bucket, ctx.key, ctx.request.stream(),
                                       ctx.headers, ctx.signing)
    return Response(headers={"etag": row.etag})


def _object_headers(row: ObjectRow, query: dict[str, str]) -> dict[str, str]:
    h = {"etag": row.etag, "last-modified": email.utils.formatdate(row.modified_at, usegmt=True),
         "content-type": row.content_type, "accept-ranges": "bytes", **row.headers}
    for name in _OVERRIDES:  # presigned GETs may ask for other response headers
        if f"response-{name}" in query:
            h[name] = query[f"response-{name}"]
    return h


async def head_object(app: S3App, ctx: Ctx) -> Response:
    row = await app.objects.head(ctx.caller, ctx.bucket, ctx.key)
    return Response(headers={**_object_headers(row, ctx.query), "content-length": str(row.size)})


def parse_range(text: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` -> (start, end inclusive); None for no (or a multi-) range.
    Raises InvalidRange (416) for a range outside the object."""
    if not text:
        return None
    m = _RANGE_RE.match(text.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end or (first == "" and int(last) == 0):
        raise S3Error("InvalidRange", "The requested range is not satisfiable",
                      RangeRequested=text, ActualObjectSize=str(size))
    return start, end


async def get_object(app: S3App, ctx: Ctx) -> Response:
    row, f = await app.objects.open(ctx.caller, ctx.bucket, ctx.key)
    try:
        rng = parse_range(ctx.headers.get("range"), row.size)
    except BaseException:
        f.close()
        raise
    start, end = rng if rng is not None else (0, row.size - 1)
    headers = {**_object_headers(row, ctx.query), "content-length": str(end - start + 1)}
    status = 200
    if rng is not None:
        status = 206
        headers["content-range"] = f"bytes {start}-{end}/{row.size}"
    return StreamingResponse(_read(f, start, end - start + 1), status_code=status,
                             headers=headers)


async def _read(f: BufferedReader, start: int, length: int) -> AsyncIterator[bytes]:
    try:
        if start:
            await asyncio.to_thread(f.seek, start)
        while length > 0:
            data = await asyncio.to_thread(f.read, min(READ_CHUNK, length))
            if not data:
                break
            length -= len(data)
            yield data
    finally:
        f.close()


async def delete_object(app: S3App, ctx: Ctx) -> Response:
    await app.objects.delete_objects(ctx.caller, ctx.bucket, [ctx.key])
    return Response(status_code=204)


def _copy_source(text: str) -> tuple[str, str]:
    src = unquote(text.split("?versionId=", 1)[0]).lstrip("/")
    bucket, _, key = src.partition("/")
    if not bucket or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: "
                      "sourcebucket/sourcekey")
    return bucket, key


async def copy_object(app: S3App, ctx: Ctx) -> Response:
    src_bucket, src_key = _copy_source(ctx.headers["x-amz-copy-source"])
    row = await app.objects.copy_object(ctx.caller, ctx.bucket, ctx.key, src_bucket, src_key,
                                        ctx.headers)
    return _xml(xmlio.copy_result(row.etag, row.modified_at))


# --- multipart -------------------------------------------------------------------------------

async def create_upload(app: S3App, ctx: Ctx) -> Response:
    upload_id = await app.multipart.create(ctx.caller, ctx.bucket, ctx.key, ctx.headers)
    return _xml(xmlio.initiate(ctx.bucket, ctx.key, upload_id))


async def upload_part(app: S3App, ctx: Ctx) -> Response:
    number = _int(ctx.query.get("partNumber"), -1, "partNumber", 1, 10_000)
    etag = await app.multipart.upload_part(
        ctx.caller, ctx.bucket, ctx.key, ctx.query["uploadId"], number, ctx.request.stream(),
        ctx.headers, ctx.signing)
    return Response(headers={"etag": etag})


async def list_parts(app: S3App, ctx: Ctx) -> Response:
    upload_id = ctx.query["uploadId"]
    rows = await app.multipart.list_parts(ctx.caller, ctx.bucket, ctx.key, upload_id)
    return _xml(xmlio.parts(ctx.bucket, ctx.key, upload_id, ctx.tenant, rows))


async def complete_upload(app: S3App, ctx: Ctx) -> Response:
    wanted = xmlio.parse_complete(await _small_body(ctx))
    row = await app.multipart.complete(ctx.caller, ctx.bucket, ctx.key, ctx.query["uploadId"],
                                       wanted)
    where = f"{ctx.request.url.scheme}://{ctx.headers.get('host', '')}/{ctx.bucket}/{ctx.key}"
    return _xml(xmlio.completed(where, ctx.bucket, ctx.key, row.etag))


async def abort_upload(app: S3App, ctx: Ctx) -> Response:
    await app.multipart.abort(ctx.caller, ctx.bucket, ctx.key, ctx.query["uploadId"])
    return Response(status_code=204)


_BUCKET: dict[tuple[str, str], Handler] = {
    ("PUT", ""): create_bucket, ("HEAD", ""): head_bucket, ("DELETE", ""): delete_bucket,
    ("GET", ""): list_objects, ("GET", "location"): bucket_location,
    ("GET", "uploads"): list_uploads, ("POST", "delete"): delete_objects,
}
_OBJECT: dict[tuple[str, str], Handler] = {
    ("PUT", ""): put_object, ("GET", ""): get_object, ("HEAD", ""): head_object,
    ("DELETE", ""): delete_object, ("PUT", "copy"): copy_object,
    ("POST", "uploads"): create_upload, ("PUT", "uploadId"): upload_part,
    ("GET", "uploadId"): list_parts, ("POST", "uploadId"): complete_upload,
    ("DELETE", "uploadId"): abort_upload,
}
