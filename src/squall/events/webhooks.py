"""Webhooks: ``POST /hooks/{name}`` -> signature check -> async invocation with a CloudEvent.

``name`` is the *trigger's* name. A webhook trigger is named explicitly (``name = "github"``) or,
by default, after its function, so ``/hooks/<function>`` works for the common one-hook case;
webhook names are unique across the platform (409 otherwise). A function is only reachable here
through a webhook trigger: deploying a function does not expose it.

Config keys (all optional):
- ``secret``: HMAC-SHA256 key; without it no signature is checked;
- ``style``: "github" (default: header ``X-Hub-Signature-256: sha256=<hex>`` over the body),
  "stripe" (``Stripe-Signature: t=<unix>,v1=<hex>`` over ``"<t>." + body``, within
  ``tolerance_s`` of now, default 300) or "hex" (``X-Signature: <hex>`` over the body);
- ``header``: another header name carrying the signature in the chosen style.
A missing or wrong signature is 401 ``invalid_signature`` and nothing is enqueued.

The event is a CloudEvent (type "squall.webhook", source "/hooks/<name>"): ``data`` is the JSON
body, else text, else ``data_base64``; extensions carry the useful request headers (below).
An ``X-Squall-Idempotency-Key`` or ``X-GitHub-Delivery`` header de-duplicates redeliveries.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from typing import Any

from squall.errors import InvalidConfig, Unauthorized
from squall.events.cloudevents import make_cloudevent
from squall.events.connectors.base import decode_payload

STYLES = {"github": "x-hub-signature-256", "stripe": "stripe-signature", "hex": "x-signature"}
_KEYS = {"secret", "style", "header", "tolerance_s"}
# Request headers worth carrying to the handler, as CloudEvents extensions (name: lowercase
# alphanumerics). traceparent is the CloudEvents distributed-tracing extension.
HEADER_EXTENSIONS = {
    "content-type": "httpcontenttype", "user-agent": "httpuseragent",
    "x-github-event": "githubevent", "x-github-delivery": "githubdelivery",
    "x-gitlab-event": "gitlabevent", "x-request-id": "httprequestid",
    "traceparent": "traceparent", "tracestate": "tracestate",
}
IDEMPOTENCY_HEADERS = ("x-squall-idempotency-key", "x-github-delivery")


class InvalidSignature(Unauthorized):
    code = "invalid_signature"


def validate_webhook_config(config: Mapping[str, Any]) -> None:
    unknown = set(config) - _KEYS
    if unknown:
        raise InvalidConfig(f"webhook trigger: unknown keys {sorted(unknown)};"
                            f" allowed: {sorted(_KEYS)}", details={"key": sorted(unknown)[0]})
    secret = config.get("secret")
    if secret is not None and (not isinstance(secret, str) or not secret):
        raise InvalidConfig("webhook trigger: secret must be a non-empty string",
                            details={"key": "secret"})
    if config.get("style", "github") not in STYLES:
        raise InvalidConfig(f"webhook trigger: style must be one of {sorted(STYLES)}",
                            details={"key": "style"})
    header = config.get("header")
    if header is not None and (not isinstance(header, str) or not header):
        raise InvalidConfig("webhook trigger: header must be a header name",
                            details={"key": "header"})
    tol = config.get("tolerance_s", 300)
    if isinstance(tol, bool) or not isinstance(tol, int | float) or tol <= 0:
        raise InvalidConfig("webhook trigger: tolerance_s must be a positive number",
                            details={"key": "tolerance_s"})


def _hex_hmac(secret: str, msg: bytes) -> str:
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def verify_signature(config: Mapping[str, Any], headers: Mapping[str, str], body: bytes,
                     *, now: float) -> None:
    """Raise InvalidSignature unless the request is signed with the trigger's secret.
    ``headers`` keys are lowercase. Comparisons are constant-time."""
    secret = config.get("secret")
    if not secret:
        return
    style = str(config.get("style", "github"))
    header = str(config.get("header") or STYLES[style]).lower()
    value = headers.get(header, "").strip()
    if not value:
        raise InvalidSignature(f"missing signature header {header}")
    if style == "stripe":
        parts = [p.split("=", 1) for p in value.split(",") if "=" in p]
        ts = next((v for k, v in parts if k.strip() == "t"), "")
        sigs = [v.strip() for k, v in parts if k.strip() == "v1"]
        if not re.fullmatch(r"\d{1,12}", ts.strip()):
            raise InvalidSignature("signature header has no valid t=<timestamp>")
        if abs(now - int(ts)) > float(config.get("tolerance_s", 300)):
            raise InvalidSignature("signature timestamp is outside the tolerance")
        want = _hex_hmac(secret, ts.strip().encode() + b"." + body)
        if not any(hmac.compare_digest(want, s) for s in sigs):
            raise InvalidSignature("signature does not match")
        return
    got = value.removeprefix("sha256=") if style == "hex" else value
    want = _hex_hmac(secret, body)
    expected = want if style == "hex" else f"sha256={want}"
    if not hmac.compare_digest(expected, got):
        raise InvalidSignature("signature does not match")


def sign_github(secret: str, body: bytes) -> str:
    """The header value a GitHub-style sender computes (for clients and tests)."""
    return f"sha256={_hex_hmac(secret, body)}"


def sign_stripe(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_hex_hmac(secret, str(t).encode() + b'.' + body)}"


def webhook_event(name: str, request_id: str, method: str, path: str,
                  headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The CloudEvent a webhook delivers; its id is the invocation's request id."""
    data, ctype = decode_payload(body)
    ext: dict[str, Any] = {"httpmethod": method, "httppath": path}
    for header, ext_name in HEADER_EXTENSIONS.items():
        if header in headers:
            ext[ext_name] = headers[header]
    return make_cloudevent(source=f"/hooks/{name}", type="squall.webhook", data=data,
                           id=request_id, datacontenttype=ctype, extensions=ext)


def idempotency_key(headers: Mapping[str, str]) -> str | None:
    for h in IDEMPOTENCY_HEADERS:
        if headers.get(h):
            return f"{h}:{headers[h]}"
    return None
