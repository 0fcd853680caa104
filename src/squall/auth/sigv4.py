"""Verify AWS Signature Version 4 on an incoming request, with botocore's own signer.

Rather than a second canonicaliser that could drift from the clients', the verifier rebuilds a
botocore ``AWSRequest`` from what arrived (method, the raw percent-encoded path and query, exactly
the headers the client listed in SignedHeaders), stamps it with the request's own X-Amz-Date, lets
botocore's ``SigV4Auth`` / ``S3SigV4Auth`` (header form) or ``SigV4QueryAuth`` /
``S3SigV4QueryAuth`` (presigned URLs) compute the signature with the secret looked up for the
access key id, and compares the two with ``hmac.compare_digest``.

Use::

    req = from_asgi(request.scope, payload_sha256=hashlib.sha256(body).hexdigest())
    verified = verify(req, platform.identity, service="lambda")   # raises SigV4Error
    verified.principal                                            # tenant and scopes

``payload_sha256`` is what the client hashed: for S3 the client always sends it in
``x-amz-content-sha256`` (a hex digest, ``UNSIGNED-PAYLOAD`` or a ``STREAMING-...`` marker), so
leave it None; for Lambda and other JSON services pass the hex SHA-256 of the body. A hex digest
in the header is only a claim about the body: the caller that reads the body checks it.

Rules enforced here: the credential scope's date must be the request date and its service the
expected one (any region is accepted: the key is derived from the region the client signed
with); header-signed requests may be at most 15 minutes away from our clock; presigned URLs carry
X-Amz-Expires (1 s .. 7 days) and are refused once expired, and as they sign the method, the
same URL with another method does not verify. On success the key's use is noted
(``resolver.touch``). For S3 only, presigned URLs of the legacy form (SigV2 query
authentication, what boto3 presigns by default for a custom endpoint) are verified by
``squall.auth.sigv2``.

Errors are ``SigV4Error`` subclasses whose ``code`` is S3's error code; the Lambda layer maps
them to its own types:

=========================  ====== =================================================
code (S3)                  status Lambda ``x-amzn-ErrorType``
=========================  ====== =================================================
AccessDenied (unsigned)    403    MissingAuthenticationTokenException
AuthorizationHeaderMalf.   400    IncompleteSignatureException
InvalidAccessKeyId         403    UnrecognizedClientException
SignatureDoesNotMatch      403    InvalidSignatureException
RequestTimeTooSkewed       403    InvalidSignatureException ("Signature expired")
AccessDenied (expired)     403    InvalidSignatureException ("Signature expired")
=========================  ====== =================================================
(``SigV4Error.lambda_type`` holds the right-hand column.)
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import unquote

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from squall.errors import SquallError
from squall.tenancy.model import Principal

MAX_SKEW_S = 15 * 60
MAX_PRESIGN_EXPIRES_S = 7 * 86400
ALGORITHM = "AWS4-HMAC-SHA256"
_TS_FORMAT = "%Y%m%dT%H%M%SZ"
_AUTH_RE = re.compile(r"\s*(\w+)\s*=\s*([^,\s]*)\s*,?")


class KeyLookup(Protocol):
    """The part of ``squall.tenancy.api.KeyResolver`` the verifier needs."""

    def signing_key(self, access_key_id: str) -> tuple[str, Principal] | None: ...

    def touch(self, key_id: str) -> None: ...


class SigV4Error(SquallError):
    status = 403
    code = "SignatureDoesNotMatch"
    lambda_type = "InvalidSignatureException"


class MissingAuth(SigV4Error):
    code = "AccessDenied"
    lambda_type = "MissingAuthenticationTokenException"


class MalformedAuth(SigV4Error):
    status = 400
    code = "AuthorizationHeaderMalformed"
    lambda_type = "IncompleteSignatureException"


class UnknownAccessKey(SigV4Error):
    code = "InvalidAccessKeyId"
    lambda_type = "UnrecognizedClientException"


class BadSignature(SigV4Error):
    code = "SignatureDoesNotMatch"


class ClockSkew(SigV4Error):
    code = "RequestTimeTooSkewed"


class Expired(SigV4Error):
    code = "AccessDenied"


@dataclass(frozen=True)
class SignedRequest:
    """An incoming request as it arrived: ``path`` and ``query`` raw (still percent-encoded),
    ``headers`` as (name, value) pairs in arrival order (repeats allowed)."""

    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    payload_sha256: str | None = None

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass(frozen=True)
class Verified:
    """A verified request: who signed it, and what signs its streamed chunks
    (STREAMING-AWS4-HMAC-SHA256-PAYLOAD): ``sign(string_to_sign)`` with the request's key."""

    principal: Principal
    access_key_id: str
    amz_date: str
    credential_scope: str
    signature: str
    presigned: bool
    sign: Callable[[str], str] = field(repr=False, compare=False)


def from_asgi(scope: Any, payload_sha256: str | None = None) -> SignedRequest:
    """Build a ``SignedRequest`` from an ASGI HTTP scope (Starlette: ``request.scope``)."""
    raw_path = scope.get("raw_path") or scope["path"].encode()
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    return SignedRequest(scope["method"], raw_path.decode("latin-1").split("?", 1)[0],
                         scope.get("query_string", b"").decode("latin-1"), headers,
                         payload_sha256)


def verify(req: SignedRequest, keys: KeyLookup, *, service: str,
           now: dt.datetime | None = None) -> Verified:
    """Check the signature of ``req`` for ``service`` ("s3", "lambda"); return who signed it.
    Raises a ``SigV4Error`` subclass (see the module docstring); never returns unverified."""
    now = now or dt.datetime.now(dt.UTC)
    query = _query_pairs(req.query)
    if service == "s3" and not req.header("authorization"):
        from squall.auth import sigv2

        if sigv2.is_v2_presigned(query):
            return sigv2.verify(req, query, keys, now)
    if any(k == "X-Amz-Signature" for k, _ in query):
        parts = _presigned_parts(query)
        _check_expiry(parts, now)
    else:
        parts = _header_parts(req)
        _check_skew(parts["date"], now)
    found = keys.signing_key(parts["akid"])
    if found is None:
        raise UnknownAccessKey("The AWS Access Key Id you provided does not exist in our records.")
    secret, principal = found
    _check_scope(parts, service)
    signer, request = _signer(req, parts, secret, service, query)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)),
                                request)
    if not hmac.compare_digest(expected.encode(), parts["signature"].encode()):
        raise BadSignature("The request signature we calculated does not match the signature "
                           "you provided. Check your key and signing method.")
    keys.touch(principal.key_id)
    return Verified(principal, parts["akid"], parts["date"], parts["scope"], expected,
                    "expires" in parts, lambda sts: str(signer.signature(sts, request)))


# --- parsing ---------------------------------------------------------------------------------

def _query_pairs(query: str) -> list[tuple[str, str]]:
    """Raw query -> (decoded name, decoded value) pairs, '+' kept as is (S3 clients encode
    spaces as %20; a literal '+' in a query is a plus)."""
    out = []
    for pair in query.split("&"):
        if pair:
            k, _, v = pair.partition("=")
            out.append((unquote(k), unquote(v)))
    return out


def _header_parts(req: SignedRequest) -> dict[str, str]:
    auth = req.header("authorization")
    if not auth:
        raise MissingAuth("Access Denied: the request is not signed (SigV4 required).")
    algorithm, _, rest = auth.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise MalformedAuth(f"unsupported authorization type {algorithm!r}: use {ALGORITHM}")
    fields = {m.group(1): m.group(2) for m in _AUTH_RE.finditer(rest)}
    if not {"Credential", "SignedHeaders", "Signature"} <= set(fields):
        raise MalformedAuth("the Authorization header needs Credential, SignedHeaders and "
                            "Signature")
    return {**_credential(fields["Credential"]), "signed_headers": fields["SignedHeaders"],
            "signature": fields["Signature"], "date": _request_date(req)}


def _presigned_parts(query: list[tuple[str, str]]) -> dict[str, str]:
    q = dict(query)
    missing = [k for k in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date",
                           "X-Amz-Expires", "X-Amz-SignedHeaders") if k not in q]
    if missing:
        raise MalformedAuth(f"presigned URL lacks {', '.join(missing)}",
                            code="AuthorizationQueryParametersError")
    if q["X-Amz-Algorithm"] != ALGORITHM:
        raise MalformedAuth(f"X-Amz-Algorithm must be {ALGORITHM}",
                            code="AuthorizationQueryParametersError")
    return {**_credential(q["X-Amz-Credential"]), "signed_headers": q["X-Amz-SignedHeaders"],
            "signature": q["X-Amz-Signature"], "date": q["X-Amz-Date"],
            "expires": q["X-Amz-Expires"]}


def _credential(text: str) -> dict[str, str]:
    # AKID/20240101/us-east-1/s3/aws4_request
    parts = text.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not parts[0]:
        raise MalformedAuth(f"malformed credential {text!r}: expected "
                            "<access key id>/<yyyymmdd>/<region>/<service>/aws4_request")
    return {"akid": parts[0], "scope_date": parts[1], "region": parts[2], "service": parts[3],
            "scope": "/".join(parts[1:])}


def _request_date(req: SignedRequest) -> str:
    amz = req.header("x-amz-date")
    if amz:
        return amz
    date = req.header("date")
    if date:
        try:
            return parsedate_to_datetime(date).astimezone(dt.UTC).strftime(_TS_FORMAT)
        except (TypeError, ValueError):
            pass
    raise MissingAuth("Access Denied: a signed request needs X-Amz-Date or Date.")


def _parse_ts(text: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(text, _TS_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        raise MalformedAuth(f"X-Amz-Date {text!r} is not in the form 20240101T120000Z") from None


# --- rules -----------------------------------------------------------------------------------

def _check_skew(date: str, now: dt.datetime) -> None:
    if abs((_parse_ts(date) - now).total_seconds()) > MAX_SKEW_S:
        raise ClockSkew("The difference between the request time and the current time is too "
                        "large.", details={"RequestTime": date,
                                           "ServerTime": now.strftime(_TS_FORMAT)})


def _check_expiry(parts: dict[str, str], now: dt.datetime) -> None:
    try:
        expires = int(parts["expires"])
    except ValueError:
        expires = -1
    if not 1 <= expires <= MAX_PRESIGN_EXPIRES_S:
        raise MalformedAuth("X-Amz-Expires must be a number of seconds from 1 to 604800",
                            code="AuthorizationQueryParametersError")
    signed_at = _parse_ts(parts["date"])
    if now > signed_at + dt.timedelta(seconds=expires):
        raise Expired("Request has expired")
    if signed_at - now > dt.timedelta(seconds=MAX_SKEW_S):
        raise Expired("Request is not valid yet")


def _check_scope(parts: dict[str, str], service: str) -> None:
    if parts["service"] != service:
        raise MalformedAuth(f"the credential scope names service {parts['service']!r}; this "
                            f"endpoint is {service!r}")
    if parts["scope_date"] != parts["date"][:8]:
        raise MalformedAuth("the credential scope's date is not the request's date")


# --- botocore ---------------------------------------------------------------------------------

class _Exact:
    """Mixed into botocore's signers: sign exactly the headers the client listed (botocore
    alone would pick every header present, minus a blacklist) and, when given, the payload
    hash the client used."""

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        names = request.context["squall_signed_headers"]
        out = HTTPHeaders()
        for name in names:
            for value in request.context["squall_headers"].get(name, []):
                out[name] = value
        return out

    def payload(self, request: AWSRequest) -> str:
        given = request.context.get("squall_payload")
        if given is not None:
            return str(given)
        return str(super().payload(request))  # type: ignore[misc]


class _S3Header(_Exact, S3SigV4Auth):  # type: ignore[misc]
    pass


class _S3Query(_Exact, S3SigV4QueryAuth):  # type: ignore[misc]
    pass


class _Header(_Exact, SigV4Auth):  # type: ignore[misc]
    pass


class _Query(_Exact, SigV4QueryAuth):  # type: ignore[misc]
    pass


def _signer(req: SignedRequest, parts: dict[str, str], secret: str, service: str,
            query: list[tuple[str, str]]) -> tuple[Any, AWSRequest]:
    presigned = "expires" in parts
    cls: Any = {(True, True): _S3Query, (True, False): _S3Header, (False, True): _Query,
                (False, False): _Header}[(service == "s3", presigned)]
    signer = cls(Credentials(parts["akid"], secret), service, parts["region"])
    raw_query = "&".join(p for p in req.query.split("&")
                         if p and unquote(p.partition("=")[0]) != "X-Amz-Signature")
    url = f"http://squall{req.path}" + (f"?{raw_query}" if raw_query else "")
    request = AWSRequest(method=req.method.upper(), url=url)
    headers: dict[str, list[str]] = {}
    for k, v in req.headers:
        headers.setdefault(k.lower(), []).append(v)
    signed = [h for h in parts["signed_headers"].lower().split(";") if h]
    if "host" not in signed:
        raise MalformedAuth("SignedHeaders must include host")
    request.context.update(timestamp=parts["date"], squall_signed_headers=signed,
                           squall_headers=headers)
    if "x-amz-content-sha256" in signed:
        # botocore takes the payload hash from this header when the request has it. Where the
        # caller hashed the body itself (Lambda), that hash is used instead of the header's
        # claim, so a signed header cannot vouch for a swapped body.
        claimed = headers.get("x-amz-content-sha256", [""])[0]
        request.headers["X-Amz-Content-SHA256"] = req.payload_sha256 or claimed
    elif not (service == "s3" and presigned):
        request.context["squall_payload"] = req.payload_sha256 or _EMPTY_SHA256
    return signer, request


_EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
