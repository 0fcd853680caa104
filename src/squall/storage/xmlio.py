"""S3's XML documents: the responses we write and the request bodies we read.

Request bodies are parsed with ElementTree after a size cap (``MAX_XML_BYTES``): with the expat
Python ships (2.4.1 and later) entity expansion is bounded and external entities are never
fetched, so a hostile document cannot blow up memory or read files.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from squall.storage.errors import S3Error
from squall.store.objects import ObjectRow

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_XML_BYTES = 2 * 1024 * 1024  # 10,000 parts or 1,000 keys fit well within


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _doc(root: ET.Element) -> bytes:
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body


def _root(tag: str) -> ET.Element:
    return ET.Element(tag, xmlns=NS)


def _add(parent: ET.Element, tag: str, text: Any = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    return el


def _owner(parent: ET.Element, tenant: str) -> None:
    owner = _add(parent, "Owner")
    _add(owner, "ID", tenant)
    _add(owner, "DisplayName", tenant)


def list_buckets(tenant: str, buckets: list[dict[str, Any]]) -> bytes:
    root = _root("ListAllMyBucketsResult")
    _owner(root, tenant)
    node = _add(root, "Buckets")
    for b in buckets:
        el = _add(node, "Bucket")
        _add(el, "Name", b["name"])
        _add(el, "CreationDate", iso(b["created_at"]))
    return _doc(root)


def location(region: str) -> bytes:
    root = _root("LocationConstraint")
    root.text = "" if region == "us-east-1" else region
    return _doc(root)


def _enc(text: str, url: bool) -> str:
    return quote(text, safe="/") if url else text


def _contents(root: ET.Element, rows: list[ObjectRow], url: bool, owner: str | None) -> None:
    for r in rows:
        el = _add(root, "Contents")
        _add(el, "Key", _enc(r.key, url))
        _add(el, "LastModified", iso(r.modified_at))
        _add(el, "ETag", r.etag)
        _add(el, "Size", r.size)
        _add(el, "StorageClass", "STANDARD")
        if owner is not None:
            _owner(el, owner)


def list_objects(*, bucket: str, prefix: str, delimiter: str, max_keys: int, url: bool,
                 rows: list[ObjectRow], prefixes: list[str], truncated: bool,
                 v2: dict[str, str] | None, marker: str = "", next_marker: str = "") -> bytes:
    """ListObjectsV2 (``v2`` holds ContinuationToken/NextContinuationToken/StartAfter) or V1."""
    root = _root("ListBucketResult")
    _add(root, "Name", bucket)
    _add(root, "Prefix", _enc(prefix, url))
    if v2 is None:
        _add(root, "Marker", _enc(marker, url))
        if truncated and next_marker:
            _add(root, "NextMarker", _enc(next_marker, url))
    else:
        for k in ("ContinuationToken", "StartAfter"):
            if v2.get(k):
                _add(root, k, _enc(v2[k], url) if k == "StartAfter" else v2[k])
        if truncated:
            _add(root, "NextContinuationToken", v2["NextContinuationToken"])
        _add(root, "KeyCount", len(rows) + len(prefixes))
    _add(root, "MaxKeys", max_keys)
    if delimiter:
        _add(root, "Delimiter", _enc(delimiter, url))
    if url:
        _add(root, "EncodingType", "url")
    _add(root, "IsTruncated", "true" if truncated else "false")
    _contents(root, rows, url, None)
    for p in prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", _enc(p, url))
    return _doc(root)


def initiate(bucket: str, key: str, upload_id: str) -> bytes:
    root = _root("InitiateMultipartUploadResult")
    for tag, text in (("Bucket", bucket), ("Key", key), ("UploadId", upload_id)):
        _add(root, tag, text)
    return _doc(root)


def completed(location_url: str, bucket: str, key: str, etag: str) -> bytes:
    root = _root("CompleteMultipartUploadResult")
    for tag, text in (("Location", location_url), ("Bucket", bucket), ("Key", key),
                      ("ETag", etag)):
        _add(root, tag, text)
    return _doc(root)


def parts(bucket: str, key: str, upload_id: str, tenant: str,
          rows: list[dict[str, Any]]) -> bytes:
    root = _root("ListPartsResult")
    for tag, text in (("Bucket", bucket), ("Key", key), ("UploadId", upload_id)):
        _add(root, tag, text)
    _owner(root, tenant)
    _add(root, "StorageClass", "STANDARD")
    _add(root, "MaxParts", 10000)
    _add(root, "IsTruncated", "false")
    for p in rows:
        el = _add(root, "Part")
        _add(el, "PartNumber", p["part_number"])
        _add(el, "LastModified", iso(p["created_at"]))
        _add(el, "ETag", p["etag"])
        _add(el, "Size", p["size"])
    return _doc(root)


def uploads(bucket: str, tenant: str, rows: list[dict[str, Any]]) -> bytes:
    root = _root("ListMultipartUploadsResult")
    _add(root, "Bucket", bucket)
    _add(root, "MaxUploads", 1000)
    _add(root, "IsTruncated", "false")
    for u in rows:
        el = _add(root, "Upload")
        _add(el, "Key", u["key"])
        _add(el, "UploadId", u["id"])
        _owner(el, tenant)
        _add(el, "StorageClass", "STANDARD")
        _add(el, "Initiated", iso(u["created_at"]))
    return _doc(root)


def copy_result(etag: str, modified_at: float) -> bytes:
    root = _root("CopyObjectResult")
    _add(root, "LastModified", iso(modified_at))
    _add(root, "ETag", etag)
    return _doc(root)


def delete_result(deleted: Iterable[str], quiet: bool) -> bytes:
    root = _root("DeleteResult")
    if not quiet:
        for key in deleted:
            _add(_add(root, "Deleted"), "Key", key)
    return _doc(root)


# --- request bodies --------------------------------------------------------------------------

def _parse(body: bytes) -> ET.Element:
    if len(body) > MAX_XML_BYTES:
        raise S3Error("MalformedXML", "The XML you provided is too large.")
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not "
                      "validate against our published schema.") from None
    for el in root.iter():  # drop namespaces: clients send S3's, or none
        el.tag = el.tag.rpartition("}")[2]
    return root


def _text(el: ET.Element, tag: str) -> str | None:
    child = el.find(tag)
    return None if child is None or child.text is None else child.text


def parse_complete(body: bytes) -> list[tuple[int, str]]:
    """CompleteMultipartUpload: [(PartNumber, ETag), ...] in document order."""
    out = []
    for part in _parse(body).findall("Part"):
        number, etag = _text(part, "PartNumber"), _text(part, "ETag")
        if number is None or etag is None or not number.isdigit():
            raise S3Error("MalformedXML", "every Part needs a PartNumber and an ETag")
        out.append((int(number), etag))
    return out


def parse_delete(body: bytes) -> tuple[list[str], bool]:
    """DeleteObjects: (keys, quiet). At most 1,000 keys, as S3."""
    root = _parse(body)
    keys = [k for k in (_text(o, "Key") for o in root.findall("Object")) if k is not None]
    if not keys or len(keys) > 1000:
        raise S3Error("MalformedXML", "Delete needs 1 to 1000 Object/Key elements")
    return keys, (_text(root, "Quiet") or "").lower() == "true"
