"""The S3 listener's ASGI app: addressing, SigV4, scopes, dispatch, S3's error documents.

Addressing: path-style (``/bucket/key``) always; virtual-hosted (``bucket.<domain>/key``) when
the Host header ends in ``.<s3_domain>`` (a setting) or ``.localhost``.

Identity: every request is signed with an API key used as an AWS pair (see ``squall.auth.sigv4``
and ``squall.tenancy.keys``). The key's tenant is the namespace of every bucket it names, so a
bucket of another tenant is answered exactly like a missing one (404 NoSuchBucket); an admin key
acts on the default tenant's buckets. Reads (GET, HEAD, listings) need the ``read`` scope, writes
(PUT, POST, DELETE) ``deploy``; a key without it gets 403 AccessDenied.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from squall.auth import sigv4
from squall.errors import SquallError
from squall.storage import handlers
from squall.storage.body import ChunkSigning
from squall.storage.errors import S3Error, error_xml
from squall.storage.multipart import Multipart
from squall.storage.service import Caller, ObjectStore
from squall.tenancy.model import Scope as KeyScope

log = logging.getLogger("squall.storage")
KeysProvider = Callable[[], sigv4.KeyLookup | None]


@dataclass
class Ctx:
    """One request, parsed: who, which bucket and key, its query and (lower-case) headers."""

    request: Request
    caller: Caller
    bucket: str
    key: str
    query: dict[str, str]
    headers: dict[str, str]
    signing: ChunkSigning | None
    tenant: str


class S3App:
    def __init__(self, objects: ObjectStore, keys: KeysProvider, *, domain: str = "") -> None:
        self.objects = objects
        self.multipart = Multipart(objects)
        self.keys = keys
        self.domain = domain.lower().strip(".")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        rid = uuid.uuid4().hex[:16].upper()
        resource = scope.get("path", "/")
        try:
            ctx = self._context(request, rid)
            resource = f"/{ctx.bucket}/{ctx.key}".rstrip("/") or "/"
            response = await handlers.dispatch(self, ctx)
        except ClientDisconnect:
            return  # nothing to answer: the upload was cut off and nothing was written
        except SquallError as exc:
            response = _error(exc.code, exc.message, exc.status, resource, rid, exc.details,
                              head=scope["method"] == "HEAD")
        except Exception:
            log.exception("S3 %s %s failed", scope["method"], resource)
            response = _error("InternalError", "We encountered an internal error. Please try "
                              "again.", 500, resource, rid, None, head=scope["method"] == "HEAD")
        if response.status_code >= 400 and _has_body(scope):
            # The body may be unread (an error found before it; a client that waited on
            # Expect: 100-continue never sent it): the connection cannot carry another request.
            response.headers["connection"] = "close"
        response.headers["x-amz-request-id"] = rid
        response.headers["x-amz-id-2"] = rid
        await response(scope, receive, send)

    def _context(self, request: Request, rid: str) -> Ctx:
        scope = request.scope
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        bucket, key = self._address(scope, headers.get("host", ""))
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                               keep_blank_values=True))
        keys = self.keys()
        if keys is None:
            raise S3Error("AccessDenied", "the platform has no key store configured")
        verified = sigv4.verify(sigv4.from_asgi(scope), keys, service="s3")
        need = KeyScope.READ if request.method in ("GET", "HEAD") else KeyScope.DEPLOY
        principal = verified.principal
        # A function's own credentials carry `storage`: its tenant's buckets, read and write.
        if not (principal.allows(need) or principal.allows(KeyScope.STORAGE)):
            raise S3Error("AccessDenied", f"Access Denied: this key lacks the {need.value!r} "
                          "scope.")
        client = scope.get("client") or ("", 0)
        caller = Caller(principal.tenant, principal.key_id, rid, client[0], principal.function)
        signing = None if verified.presigned else ChunkSigning(
            verified.amz_date, verified.credential_scope, verified.signature, verified.sign)
        return Ctx(request, caller, bucket, key, query, headers, signing, principal.tenant)

    def _address(self, scope: Scope, host: str) -> tuple[str, str]:
        raw = scope.get("raw_path") or scope["path"].encode()
        try:
            path = unquote_to_bytes(raw.split(b"?", 1)[0]).decode("utf-8")
        except UnicodeDecodeError:
            raise S3Error("InvalidArgument", "The request path is not valid UTF-8.") from None
        name = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else ""
        for suffix in filter(None, (f".{self.domain}" if self.domain else "", ".localhost")):
            if name.endswith(suffix) and len(name) > len(suffix):
                return name[:-len(suffix)], path[1:]
        bucket, _, key = path[1:].partition("/")
        return bucket, key


def _has_body(scope: Scope) -> bool:
    return any(k in (b"transfer-encoding", b"content-length") and v not in (b"0",)
               for k, v in scope["headers"])


def _error(code: str, message: str, status: int, resource: str, rid: str,
           details: dict[str, Any] | None, *, head: bool) -> Response:
    if head:  # a HEAD answer has no body: botocore reads the status alone
        return Response(status_code=status)
    return Response(error_xml(code, message, resource, rid, details), status_code=status,
                    media_type="application/xml")
