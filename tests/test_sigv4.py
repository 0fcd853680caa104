"""The SigV4 verifier against requests signed by botocore itself (header and presigned forms)."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from squall.auth import sigv4
from squall.tenancy.model import Principal, Scope

AKID = "SQIA0123456789ABCDEF"
SECRET = "s3cr3t-abcdefghijklmnopqrstuvwxyz0123456789ab"
PRINCIPAL = Principal("0123456789abcdef", "acme", frozenset({Scope.DEPLOY}))


class Keys:
    """A tiny in-test KeyResolver: one live key."""

    def __init__(self) -> None:
        self.touched: list[str] = []

    def signing_key(self, access_key_id: str) -> tuple[str, Principal] | None:
        return (SECRET, PRINCIPAL) if access_key_id == AKID else None

    def touch(self, key_id: str) -> None:
        self.touched.append(key_id)


def _signed(method: str, url: str, *, service: str = "s3", body: bytes = b"",
            headers: dict[str, str] | None = None, secret: str = SECRET,
            akid: str = AKID) -> sigv4.SignedRequest:
    req = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    signer_cls = S3SigV4Auth if service == "s3" else SigV4Auth
    signer_cls(Credentials(akid, secret), service, "us-east-1").add_auth(req)
    prepared = req.prepare()
    parts = urlsplit(prepared.url)
    hdrs = [(k, v) for k, v in prepared.headers.items()]
    if not any(k.lower() == "host" for k, _ in hdrs):
        hdrs.append(("host", parts.netloc))
    return sigv4.SignedRequest(method, parts.path, parts.query, hdrs,
                               hashlib.sha256(body).hexdigest())


def _presigned(method: str, key: str = "k", expires: int = 60) -> str:
    s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9000", region_name="us-east-1",
                      aws_access_key_id=AKID, aws_secret_access_key=SECRET,
                      config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    op = {"GET": "get_object", "PUT": "put_object"}[method]
    url: str = s3.generate_presigned_url(op, Params={"Bucket": "b", "Key": key},
                                         ExpiresIn=expires)
    return url


def _from_url(method: str, url: str) -> sigv4.SignedRequest:
    parts = urlsplit(url)
    return sigv4.SignedRequest(method, parts.path, parts.query, [("host", parts.netloc)])


def test_header_signed_s3_request_verifies_and_touches_the_key() -> None:
    keys = Keys()
    req = _signed("PUT", "http://127.0.0.1:9000/bucket/a%20b/c.txt?partNumber=1&uploadId=x",
                  body=b"hello", headers={"x-amz-meta-colour": "blue"})
    got = sigv4.verify(req, keys, service="s3")
    assert got.principal == PRINCIPAL
    assert got.access_key_id == AKID
    assert not got.presigned
    assert keys.touched == [PRINCIPAL.key_id]


def test_lambda_style_request_with_payload_hash() -> None:
    body = b'{"x": 1}'
    req = _signed("POST", "http://127.0.0.1:8080/2015-03-31/functions/arn%3Aaws%3Alambda%3A"
                  "us-east-1%3A1%3Afunction%3Ahello/invocations", service="lambda", body=body)
    assert sigv4.verify(req, Keys(), service="lambda").principal.tenant == "acme"
    tampered = sigv4.SignedRequest(req.method, req.path, req.query, req.headers,
                                   hashlib.sha256(b'{"x": 2}').hexdigest())
    with pytest.raises(sigv4.BadSignature):
        sigv4.verify(tampered, Keys(), service="lambda")


@pytest.mark.parametrize("change", ["method", "path", "query", "header", "secret"])
def test_any_change_breaks_the_signature(change: str) -> None:
    req = _signed("GET", "http://h:1/b/key?list-type=2&prefix=a%2Fb",
                  headers={"x-amz-meta-a": "1"}, secret="wrong" if change == "secret" else SECRET)
    if change == "method":
        req = sigv4.SignedRequest("DELETE", req.path, req.query, req.headers)
    elif change == "path":
        req = sigv4.SignedRequest(req.method, req.path + "x", req.query, req.headers)
    elif change == "query":
        req = sigv4.SignedRequest(req.method, req.path, req.query + "&x=1", req.headers)
    elif change == "header":
        req = sigv4.SignedRequest(req.method, req.path, req.query,
                                  [(k, "2" if k.lower() == "x-amz-meta-a" else v)
                                   for k, v in req.headers])
    with pytest.raises(sigv4.BadSignature) as e:
        sigv4.verify(req, Keys(), service="s3")
    assert e.value.code == "SignatureDoesNotMatch" and e.value.status == 403


def test_unsigned_unknown_key_and_wrong_service() -> None:
    with pytest.raises(sigv4.MissingAuth) as e:
        sigv4.verify(sigv4.SignedRequest("GET", "/", "", [("host", "h")]), Keys(), service="s3")
    assert e.value.code == "AccessDenied"
    with pytest.raises(sigv4.UnknownAccessKey) as e2:
        sigv4.verify(_signed("GET", "http://h/", akid="SQIAFFFFFFFFFFFFFFFF"), Keys(),
                     service="s3")
    assert e2.value.code == "InvalidAccessKeyId"
    assert e2.value.lambda_type == "UnrecognizedClientException"
    with pytest.raises(sigv4.MalformedAuth):
        sigv4.verify(_signed("GET", "http://h/"), Keys(), service="lambda")


def test_clock_skew_is_refused() -> None:
    req = _signed("GET", "http://h/b")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=16)
    with pytest.raises(sigv4.ClockSkew) as e:
        sigv4.verify(req, Keys(), service="s3", now=later)
    assert e.value.code == "RequestTimeTooSkewed"
    almost = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=14)
    assert sigv4.verify(req, Keys(), service="s3", now=almost).principal == PRINCIPAL


def test_presigned_get_verifies_then_expires() -> None:
    url = _presigned("GET", key="photos/cat 1.jpg", expires=60)
    got = sigv4.verify(_from_url("GET", url), Keys(), service="s3")
    assert got.presigned and got.principal == PRINCIPAL
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    with pytest.raises(sigv4.Expired) as e:
        sigv4.verify(_from_url("GET", url), Keys(), service="s3", now=later)
    assert e.value.code == "AccessDenied" and "expired" in e.value.message


def test_presigned_url_with_another_method_fails() -> None:
    url = _presigned("GET")
    with pytest.raises(sigv4.BadSignature):
        sigv4.verify(_from_url("PUT", url), Keys(), service="s3")
    put = _presigned("PUT")
    assert sigv4.verify(_from_url("PUT", put), Keys(), service="s3").presigned


def test_presigned_bad_expires_is_malformed() -> None:
    url = _presigned("GET").replace("X-Amz-Expires=60", "X-Amz-Expires=999999999")
    with pytest.raises(sigv4.MalformedAuth) as e:
        sigv4.verify(_from_url("GET", url), Keys(), service="s3")
    assert e.value.status == 400


def test_chunk_signing_helper_matches_a_fresh_derivation() -> None:
    got: Any = sigv4.verify(_signed("GET", "http://h/b"), Keys(), service="s3")
    sts = "AWS4-HMAC-SHA256-PAYLOAD\nx\ny"
    assert got.sign(sts) == got.sign(sts) and len(got.sign(sts)) == 64
