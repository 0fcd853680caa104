"""API Gateway HTTP API payload format 2.0: the event a handler receives, and how its return
value becomes an HTTP response (the same rules API Gateway applies)."""

from __future__ import annotations

import base64
import json
import time
from json import encoder as _json_encoder
from typing import Any
from urllib.parse import parse_qsl

# Content types whose bodies are passed as text; everything else is base64 (isBase64Encoded).
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript",
               "application/x-www-form-urlencoded", "application/graphql")


def _is_text(content_type: str) -> bool:
    ct = content_type.lower()
    return any(ct.startswith(t) for t in _TEXT_TYPES) or ct.endswith("+json") or ct.endswith("+xml")


def _not_serializable(o: Any) -> Any:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


# json.dumps(value) with its defaults, minus the per-call set-up (a third of the cost for a
# small value): the C encoder is made once. No circular-reference check: the values come from
# msgpack frames, which cannot hold a cycle.
_c_make_encoder: Any = getattr(_json_encoder, "c_make_encoder", None)  # CPython's accelerator
_ENCODE: Any = None if _c_make_encoder is None else _c_make_encoder(
    None, _not_serializable, _json_encoder.encode_basestring_ascii, None, ": ", ", ", False,
    False, True)


def dumps(value: Any) -> bytes:
    """``json.dumps(value).encode()``, the same bytes, faster."""
    if _ENCODE is None or isinstance(value, str):
        return json.dumps(value).encode()
    return "".join(_ENCODE(value, 0)).encode()


_clock: tuple[int, str] = (0, "")


def _request_time(now: float) -> str:
    """requestContext.time ("02/Dec/2026:21:00:00 +0000"), formatted once a second."""
    global _clock
    sec = int(now)
    if _clock[0] != sec:
        _clock = (sec, time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(sec)))
    return _clock[1]


def build_event(*, function: str, method: str, path: str, raw_query: str,
                headers: list[tuple[bytes, bytes]], body: bytes, source_ip: str,
                request_id: str, stage_path: str) -> dict[str, Any]:
    """``path`` is the part after /fn/<name> (rawPath keeps the full request path)."""
    hdrs: dict[str, str] = {}
    cookies: list[str] = []
    for k, v in headers:
        name = k.decode("latin-1").lower()
        value = v.decode("latin-1")
        if name == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        hdrs[name] = f"{hdrs[name]},{value}" if name in hdrs else value
    qs: dict[str, str] = {}
    if raw_query:
        for k2, v2 in parse_qsl(raw_query, keep_blank_values=True):
            qs[k2] = f"{qs[k2]},{v2}" if k2 in qs else v2
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": stage_path,
        "rawQueryString": raw_query,
        "headers": hdrs,
        "requestContext": {
            "accountId": "squall",
            "apiId": "squall",
            "domainName": hdrs.get("host", ""),
            "domainPrefix": hdrs.get("host", "").split(".")[0],
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": hdrs.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": _request_time(now),
            "timeEpoch": int(now * 1000),
        },
        "pathParameters": {"proxy": path.lstrip("/")} if path not in ("", "/") else {},
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if qs:
        event["queryStringParameters"] = qs
    if body:
        if _is_text(hdrs.get("content-type", "text/plain")):
            try:
                event["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                event["body"] = base64.b64encode(body).decode()
                event["isBase64Encoded"] = True
        else:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
    return event


def to_response(value: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Map a handler's return value as API Gateway does for payload format 2.0.

    A dict with ``statusCode`` is a full response; anything else is JSON with status 200.
    A ``body`` that is not a string is JSON-encoded; ``isBase64Encoded`` bodies are decoded.
    """
    if isinstance(value, dict) and "statusCode" in value:
        status = int(value["statusCode"])
        headers: list[tuple[bytes, bytes]] = []
        has_ct = False
        for k, v in (value.get("headers") or {}).items():
            if str(k).lower() == "content-type":
                has_ct = True
            headers.append((str(k).encode("latin-1"), str(v).encode("latin-1")))
        for name, vals in (value.get("multiValueHeaders") or {}).items():
            for v in vals:
                headers.append((str(name).encode("latin-1"), str(v).encode("latin-1")))
        for cookie in value.get("cookies") or []:
            headers.append((b"set-cookie", str(cookie).encode("latin-1")))
        raw = value.get("body")
        if raw is None:
            body = b""
        elif value.get("isBase64Encoded"):
            body = base64.b64decode(raw)
        elif isinstance(raw, str):
            body = raw.encode("utf-8")
        else:
            body = dumps(raw)
        if not has_ct:
            headers.append((b"content-type", b"application/json"))
        return status, headers, body
    if isinstance(value, str):
        return 200, [(b"content-type", b"application/json")], value.encode("utf-8")
    return 200, [(b"content-type", b"application/json")], dumps(value)
