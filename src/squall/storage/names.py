"""Bucket name and object key rules (pure functions)."""

from __future__ import annotations

import ipaddress
import re

from squall.storage.errors import S3Error

MAX_KEY_BYTES = 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_bucket(name: str) -> str:
    """S3's general purpose bucket rules: 3-63 characters of a-z 0-9 . -, starting and ending
    with a letter or digit, no '..', not an IP address, none of the reserved prefixes and
    suffixes. Raises InvalidBucketName."""
    ok = (_BUCKET_RE.match(name) is not None and ".." not in name and ".-" not in name
          and "-." not in name and not _is_ip(name)
          and not name.startswith(("xn--", "sthree-", "amzn-s3-demo-"))
          and not name.endswith(("-s3alias", "--ol-s3", ".mrap", "--x-s3")))
    if not ok:
        raise S3Error("InvalidBucketName", "The specified bucket is not valid: 3-63 characters "
                      "of a-z, 0-9, '.' and '-', starting and ending with a letter or digit.",
                      BucketName=name)
    return name


def _is_ip(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def check_key(key: str) -> str:
    """1..1024 bytes of UTF-8 (the path arrives decoded; invalid UTF-8 shows up as surrogate
    escapes). Raises KeyTooLongError or InvalidArgument."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise S3Error("InvalidArgument", "The object key is not valid UTF-8.") from None
    if size == 0:
        raise S3Error("InvalidArgument", "The object key must not be empty.")
    if size > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", f"Your key is too long: {size} bytes; the limit is "
                      f"{MAX_KEY_BYTES}.")
    return key
