"""Multipart uploads: create, upload part, list parts, complete, abort.

Each part is an object file of its own (temp, fsync, rename, then its row). Completing checks
the list (ascending part numbers, each part present with that ETag, every part but the last at
least 5 MiB), has the kernel concatenate the parts into one new file, and commits the object in
the same transaction that forgets the upload; the part files go after the commit. The ETag is
S3's: MD5 of the parts' binary MD5s, then ``-<number of parts>``::

    parts with MD5s a1.. and b2.. -> md5(bytes.fromhex("a1..") + bytes.fromhex("b2..")) + "-2"
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

from squall.storage.body import ChunkSigning, receive
from squall.storage.errors import S3Error
from squall.storage.layout import Written
from squall.storage.names import check_key
from squall.storage.service import (
    MAX_OBJECT_BYTES,
    Caller,
    ObjectStore,
    etag_of,
    no_such_upload,
    object_headers,
)
from squall.store import objects as store

MIN_PART_BYTES = 5 * 1024**2
MAX_PARTS = 10_000


def multipart_etag(etags: list[str]) -> str:
    joined = b"".join(bytes.fromhex(e.strip('"')) for e in etags)
    return f'"{hashlib.md5(joined).hexdigest()}-{len(etags)}"'


class Multipart:
    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects
        self.db = objects.db
        self.layout = objects.layout

    async def create(self, c: Caller, bucket: str, key: str, headers: dict[str, str]) -> str:
        check_key(key)
        upload_id = uuid.uuid4().hex
        kept = object_headers(headers)
        ctype = headers.get("content-type") or "binary/octet-stream"
        now = self.objects.clock()
        ok = await self.db.run(lambda conn: store.create_upload(
            conn, id=upload_id, namespace=c.namespace, bucket=bucket, key=key,
            content_type=ctype, headers=kept, now=now))
        if not ok:
            await self.objects.require_bucket(c, bucket)
        return upload_id

    async def _upload(self, c: Caller, bucket: str, key: str, upload_id: str) -> dict[str, Any]:
        u = await self.db.run(lambda conn: store.get_upload(conn, c.namespace, bucket, key,
                                                            upload_id))
        if u is None:
            await self.objects.require_bucket(c, bucket)
            raise no_such_upload()
        return u

    async def upload_part(self, c: Caller, bucket: str, key: str, upload_id: str,
                          part_number: int, raw: AsyncIterator[bytes], headers: dict[str, str],
                          signing: ChunkSigning | None) -> str:
        """Store one part; return its ETag."""
        if not 1 <= part_number <= MAX_PARTS:
            raise S3Error("InvalidArgument", f"Part number must be an integer between 1 and "
                          f"{MAX_PARTS}, inclusive.")
        await self._upload(c, bucket, key, upload_id)
        w = await receive(raw, headers, self.layout, max_bytes=MAX_OBJECT_BYTES, signing=signing)
        etag = etag_of(w.md5)
        return await self._record_part(c, upload_id, part_number, w, etag)

    async def _record_part(self, c: Caller, upload_id: str, part_number: int, w: Written,
                           etag: str) -> str:
        await asyncio.to_thread(self.layout.publish, w.tmp, w.file_id)
        now = self.objects.clock()
        try:
            old = await self.db.run(lambda conn: store.put_part(
                conn, c.namespace, upload_id, part_number, file=w.file_id, size=w.size,
                etag=etag, now=now, quota=self.objects.quota))
        except BaseException as exc:
            await asyncio.to_thread(self.layout.remove, [w.file_id])
            if isinstance(exc, KeyError):
                raise no_such_upload() from None  # aborted while the part was uploading
            if isinstance(exc, store.QuotaExceeded):
                raise S3Error("QuotaExceeded", f"The tenant's storage quota of {exc.quota} "
                              f"bytes would be exceeded.") from None
            raise
        if old is not None:
            await asyncio.to_thread(self.layout.remove, [old])
        return etag

    async def list_parts(self, c: Caller, bucket: str, key: str,
                         upload_id: str) -> list[dict[str, Any]]:
        await self._upload(c, bucket, key, upload_id)
        return await self.db.run(lambda conn: store.list_parts(conn, upload_id))

    async def list_uploads(self, c: Caller, bucket: str, prefix: str) -> list[dict[str, Any]]:
        await self.objects.require_bucket(c, bucket)
        return await self.db.run(lambda conn: store.list_uploads(conn, c.namespace, bucket,
                                                                 prefix))

    async def abort(self, c: Caller, bucket: str, key: str, upload_id: str) -> None:
        files = await self.db.run(lambda conn: store.abort_upload(conn, c.namespace, bucket, key,
                                                                  upload_id))
        if files is None:
            await self.objects.require_bucket(c, bucket)
            raise no_such_upload()
        await asyncio.to_thread(self.layout.remove, files)

    async def complete(self, c: Caller, bucket: str, key: str, upload_id: str,
                       wanted: list[tuple[int, str]]) -> store.ObjectRow:
        u = await self._upload(c, bucket, key, upload_id)
        have = {p["part_number"]: p for p in await self.db.run(
            lambda conn: store.list_parts(conn, upload_id))}
        chosen = choose_parts(wanted, have)
        file_id, tmp = await asyncio.to_thread(self.layout.concat, [p["file"] for p in chosen])
        size = sum(int(p["size"]) for p in chosen)
        w = Written(file_id, tmp, size, b"", None, None)
        return await self.objects.commit(c, bucket, key, w, multipart_etag(
            [p["etag"] for p in chosen]), u["content_type"], u["headers"],
            "ObjectCreated:CompleteMultipartUpload", upload_id=upload_id)


def choose_parts(wanted: list[tuple[int, str]],
                 have: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The parts a CompleteMultipartUpload list names, checked (pure). Raises InvalidPartOrder,
    InvalidPart, EntityTooSmall, MalformedXML."""
    if not wanted:
        raise S3Error("MalformedXML", "The XML you provided did not list any part.")
    numbers = [n for n, _ in wanted]
    if any(b <= a for a, b in itertools.pairwise(numbers)):
        raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order. Parts "
                      "must be ordered by part number.")
    chosen = []
    for n, etag in wanted:
        p = have.get(n)
        if p is None or p["etag"].strip('"') != etag.strip('"'):
            raise S3Error("InvalidPart", "One or more of the specified parts could not be "
                          "found. The part may not have been uploaded, or the specified entity "
                          "tag may not match the part's entity tag.", PartNumber=str(n))
        chosen.append(p)
    for p in chosen[:-1]:
        if int(p["size"]) < MIN_PART_BYTES:
            raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the minimum "
                          "allowed object size: every part but the last must be at least 5 MB.",
                          PartNumber=str(p["part_number"]))
    return chosen
