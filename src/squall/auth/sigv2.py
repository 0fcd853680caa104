"""Presigned S3 URLs in the legacy form (``?AWSAccessKeyId=&Expires=&Signature=``, HMAC-SHA1).

boto3's ``generate_presigned_url`` still produces this form for a custom endpoint unless the
client is configured with ``signature_version="s3v4"``, so the S3 API accepts it for presigned
URLs only (never in an Authorization header). Verified with botocore's ``HmacV1QueryAuth`` the way
``sigv4`` verifies SigV4: rebuild the request, sign with the looked-up secret, compare in
constant time. Reached through ``sigv4.verify(..., service="s3")``.
"""

from __future__ import annotations

import datetime as dt
import hmac
from typing import Any
from urllib.parse import unquote, urlsplit

from botocore.auth import HmacV1QueryAuth
from botocore.awsrequest import HTTPHeaders
from botocore.credentials import Credentials

from squall.auth.sigv4 import (
    BadSignature,
    Expired,
    KeyLookup,
    MalformedAuth,
    SignedRequest,
    UnknownAccessKey,
    Verified,
)

AUTH_PARAMS = ("AWSAccessKeyId", "Signature", "Expires")


class _Verifier(HmacV1QueryAuth):  # type: ignore[misc]
    """Signs with the URL's own Expires instead of now + expires."""

    def __init__(self, credentials: Any, expires: str) -> None:
        super().__init__(credentials)
        self._at = expires

    def _get_date(self) -> str:
        return self._at


def is_v2_presigned(query: list[tuple[str, str]]) -> bool:
    names = {k for k, _ in query}
    return "AWSAccessKeyId" in names and "Signature" in names


def verify(req: SignedRequest, query: list[tuple[str, str]], keys: KeyLookup,
           now: dt.datetime) -> Verified:
    q = dict(query)
    if not q.get("Expires", "").isdigit():
        raise MalformedAuth("a presigned URL needs Expires (seconds since the epoch)",
                            code="AuthorizationQueryParametersError")
    if now.timestamp() > int(q["Expires"]):
        raise Expired("Request has expired")
    found = keys.signing_key(q["AWSAccessKeyId"])
    if found is None:
        raise UnknownAccessKey("The AWS Access Key Id you provided does not exist in our records.")
    secret, principal = found
    headers = HTTPHeaders()
    for k, v in query:  # presigning moved these headers into the query
        if k.lower().startswith("x-amz-") or k.lower() in ("content-md5", "content-type"):
            headers[k.lower()] = v
    kept = "&".join(p for p in req.query.split("&")
                    if p and unquote(p.partition("=")[0]) not in AUTH_PARAMS)
    split = urlsplit(f"http://squall{req.path}" + (f"?{kept}" if kept else ""))
    signer = _Verifier(Credentials(q["AWSAccessKeyId"], secret), q["Expires"])
    expected = str(signer.get_signature(req.method.upper(), split, headers))
    if not hmac.compare_digest(expected.encode(), q["Signature"].encode()):
        raise BadSignature("The request signature we calculated does not match the signature "
                           "you provided. Check your key and signing method.")
    keys.touch(principal.key_id)
    return Verified(principal, q["AWSAccessKeyId"], "", "", expected, True,
                    lambda sts: "")
