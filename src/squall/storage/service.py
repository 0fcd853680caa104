"""The object store's operations on buckets and objects, below HTTP: a caller's tenant comes in
as a value (``Caller.namespace``), S3Errors come out.

Write order (see ``layout``): stream to a temp file and fsync, rename into ``data/``, then one
transaction commits the metadata, the tenant's byte count and the storage events; the replaced
file is removed after the commit. A failed commit removes the new file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from io import BufferedReader
from typing import Any

from squall.storage import events
from squall.storage.body import ChunkSigning, receive
from squall.storage.errors import S3Error
from squall.storage.layout import Layout, Written
from squall.storage.names import check_bucket, check_key
from squall.store import objects as store
from squall.store.db import Database

log = logging.getLogger("squall.storage")

MAX_OBJECT_BYTES = 5 * 1024**3  # PutObject, UploadPart and CopyObject, as S3
KEPT_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language",
                "expires")


@dataclass(frozen=True)
class Caller:
    """Who asks, as far as the store cares: the tenant's buckets, and what events record."""

    namespace: str
    principal_id: str
    request_id: str
    source_ip: str = "127.0.0.1"
    function: str | None = None  # set for credentials issued to a function's instances


def object_headers(headers: dict[str, str]) -> dict[str, str]:
    """What an object keeps of its upload's headers: user metadata and a few standard ones."""
    kept = {k: v for k, v in headers.items() if k.startswith("x-amz-meta-") or k in KEPT_HEADERS}
    if sum(len(k) + len(v) for k, v in kept.items() if k.startswith("x-amz-meta-")) > 2048:
        raise S3Error("MetadataTooLarge", "Your metadata headers exceed the maximum allowed "
                      "metadata size (2 KB).")
    return kept


def etag_of(md5: bytes) -> str:
    return f'"{md5.hex()}"'


class ObjectStore:
    def __init__(self, db: Database, layout: Layout, *, region: str, quota_bytes: int,
                 wake: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.layout = layout
        self.region = region
        self.quota = quota_bytes or None
        self.wake = wake
        self.clock = clock

    async def startup(self) -> None:
        """Create the folders and sweep what a crash left behind (see ``layout``)."""
        await asyncio.to_thread(self.layout.prepare)
        live = await self.db.run(store.live_files)
        temps, orphans = await asyncio.to_thread(self.layout.sweep, live)
        if temps or orphans:
            log.info("object store: removed %d temp files and %d unreferenced files left by "
                     "the previous run", temps, orphans)

    # --- buckets -----------------------------------------------------------------------------

    async def create_bucket(self, c: Caller, name: str) -> None:
        check_bucket(name)
        now = self.clock()
        if not await self.db.run(lambda conn: store.create_bucket(conn, c.namespace, name, now)):
            raise S3Error("BucketAlreadyOwnedByYou", "Your previous request to create the named "
                          "bucket succeeded and you already own it.", BucketName=name)

    async def list_buckets(self, c: Caller) -> list[dict[str, Any]]:
        return await self.db.run(lambda conn: store.list_buckets(conn, c.namespace))

    async def require_bucket(self, c: Caller, name: str) -> None:
        """Raise NoSuchBucket; another tenant's bucket is answered the same way."""
        if not await self.db.run(lambda conn: store.bucket_exists(conn, c.namespace, name)):
            raise no_such_bucket(name)

    async def delete_bucket(self, c: Caller, name: str) -> None:
        state, files = await self.db.run(lambda conn: store.delete_bucket(conn, c.namespace,
                                                                         name))
        if state == "missing":
            raise no_such_bucket(name)
        if state == "not_empty":
            raise S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty.",
                          BucketName=name)
        await asyncio.to_thread(self.layout.remove, files)

    # --- objects -----------------------------------------------------------------------------

    async def put_object(self, c: Caller, bucket: str, key: str, raw: AsyncIterator[bytes],
                         headers: dict[str, str],
                         signing: ChunkSigning | None) -> store.ObjectRow:
        check_key(key)
        kept = object_headers(headers)
        await self.require_bucket(c, bucket)
        written = await receive(raw, headers, self.layout, max_bytes=MAX_OBJECT_BYTES,
                                signing=signing)
        return await self.commit(c, bucket, key, written, etag_of(written.md5),
                                 headers.get("content-type") or "binary/octet-stream", kept,
                                 "ObjectCreated:Put")

    async def commit(self, c: Caller, bucket: str, key: str, w: Written, etag: str,
                     content_type: str, kept: dict[str, str], event: str,
                     upload_id: str | None = None) -> store.ObjectRow:
        """Publish a written temp file as ``bucket/key`` (see the module docstring)."""
        row = store.ObjectRow(c.namespace, bucket, key, w.file_id, w.size, etag, content_type,
                              kept, self.clock())
        notify = events.notifier(self._change(c, bucket, key, event, w.size, etag), self.region,
                                 self.clock)
        await asyncio.to_thread(self.layout.publish, w.tmp, w.file_id)
        try:
            old, parts, fired = await self.db.run(lambda conn: store.put_object(
                conn, row, quota=self.quota, notify=notify, upload_id=upload_id))
        except BaseException as exc:
            await asyncio.to_thread(self.layout.remove, [w.file_id])
            if isinstance(exc, KeyError):
                raise (no_such_bucket(bucket) if exc.args == ("bucket",)
                       else no_such_upload()) from None
            if isinstance(exc, store.QuotaExceeded):
                raise S3Error("QuotaExceeded", f"The tenant's storage quota of {exc.quota} bytes "
                              f"would be exceeded ({exc.used} bytes stored).") from None
            raise
        if fired:
            self.wake()
        await asyncio.to_thread(self.layout.remove, ([old] if old else []) + parts)
        return row

    def _change(self, c: Caller, bucket: str, key: str, event: str, size: int | None,
                etag: str | None) -> events.Change:
        return events.Change(c.namespace, bucket, key, event, size, etag, c.request_id,
                             c.principal_id, c.source_ip, c.function)

    async def head(self, c: Caller, bucket: str, key: str) -> store.ObjectRow:
        row = await self.db.run(lambda conn: store.get_object(conn, c.namespace, bucket, key))
        if row is None:
            await self.require_bucket(c, bucket)
            raise S3Error("NoSuchKey", "The specified key does not exist.", Key=key)
        return row

    async def open(self, c: Caller, bucket: str, key: str) -> tuple[store.ObjectRow,
                                                                    BufferedReader]:
        """The current object and its file, opened: an overwrite or delete that commits after
        this keeps the opened bytes readable (the file is unlinked, not truncated)."""
        for _ in range(5):
            row = await self.head(c, bucket, key)
            try:
                f = await asyncio.to_thread(open, self.layout.path(row.file), "rb")
            except FileNotFoundError:
                continue  # replaced between the lookup and the open: look again
            return row, f
        raise S3Error("InternalError", "the object changed too often while being opened")

    async def delete_objects(self, c: Caller, bucket: str, keys: list[str]) -> None:
        """Delete keys; missing keys are fine (S3 answers 204 for them too)."""
        now = self.clock()

        def notify(key: str) -> store.Notify:
            return events.notifier(self._change(c, bucket, key, "ObjectRemoved:Delete", None,
                                                None), self.region, self.clock)

        try:
            files, fired = await self.db.run(lambda conn: store.delete_objects(
                conn, c.namespace, bucket, keys, now=now, notify=notify))
        except KeyError:
            raise no_such_bucket(bucket) from None
        if fired:
            self.wake()
        await asyncio.to_thread(self.layout.remove, files)

    async def list_objects(self, c: Caller, bucket: str, *, prefix: str, after: str,
                           after_prefix: bool, delimiter: str,
                           limit: int) -> tuple[list[store.ObjectRow], list[str], bool]:
        await self.require_bucket(c, bucket)
        return await self.db.run(lambda conn: store.list_objects(
            conn, c.namespace, bucket, prefix=prefix, after=after, after_prefix=after_prefix,
            delimiter=delimiter, limit=limit))

    async def copy_object(self, c: Caller, bucket: str, key: str, src_bucket: str, src_key: str,
                          headers: dict[str, str]) -> store.ObjectRow:
        check_key(key)
        replace = headers.get("x-amz-metadata-directive", "COPY").upper() == "REPLACE"
        if (bucket, key) == (src_bucket, src_key) and not replace:
            raise S3Error("InvalidRequest", "This copy request is illegal because it is trying "
                          "to copy an object to itself without changing the object's metadata.")
        await self.require_bucket(c, bucket)
        src = await self.head(c, src_bucket, src_key)
        file_id, tmp = await asyncio.to_thread(self.layout.concat, [src.file])
        kept = object_headers(headers) if replace else src.headers
        ctype = (headers.get("content-type") or "binary/octet-stream") if replace \
            else src.content_type
        w = Written(file_id, tmp, src.size, b"", None, None)
        return await self.commit(c, bucket, key, w, src.etag, ctype, kept, "ObjectCreated:Copy")


def no_such_bucket(name: str) -> S3Error:
    return S3Error("NoSuchBucket", "The specified bucket does not exist.", BucketName=name)


def no_such_upload() -> S3Error:
    return S3Error("NoSuchUpload", "The specified multipart upload does not exist. The upload "
                   "ID may be invalid, or the upload may have been aborted or completed.")
