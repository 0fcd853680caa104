"""Streamed responses, inside the instance: a handler's generator becomes frames as it yields.

A Lambda-style handler streams by returning a generator or an async generator (a bare one:
status 200, ``application/octet-stream``, as Lambda's response streaming defaults), or a
response dict whose ``body`` is one::

    def handler(event, context):
        def events():
            for i in range(3):
                yield f"data: {i}\\n\\n"
        return {"statusCode": 200, "headers": {"content-type": "text/event-stream"},
                "body": events()}

Each item is sent as soon as it is produced: ``bytes`` as is, ``str`` as UTF-8, anything else
as one line of JSON. The ``head`` frame waits for the first item, so a generator that fails
before producing anything still gets an ordinary error response (500 with the error shape).
"""

from __future__ import annotations

import contextlib
import json
import traceback
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from squall.runtime.context import Channel

DEFAULT_TYPE = (b"content-type", b"application/octet-stream")


class Stream:
    """One streamed response of request ``rid`` on the instance's channel: ``head`` once, then
    ``body`` chunks; the caller ends it with the usual ``res`` (value None) or ``err`` frame."""

    __slots__ = ("_channel", "rid", "started")

    def __init__(self, channel: Channel, rid: str) -> None:
        self._channel = channel
        self.rid = rid
        self.started = False

    def head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._channel.send({"t": "head", "id": self.rid, "s": status,
                            "h": [[k, v] for k, v in headers]})
        self.started = True

    def body(self, data: bytes) -> None:
        if data:  # an empty frame would carry nothing; the end is the res frame
            self._channel.send({"t": "body", "id": self.rid, "b": data})

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Log a failure once the head went out: the client sees only a cut stream, so the
        function's log is where the traceback can be read (before the err frame ends it)."""
        try:
            yield
        except Exception:
            if self.started:
                traceback.print_exc()
            raise


# Return values that are never streams, told apart by their type alone: every invocation asks,
# and an ABC isinstance check costs several times a set lookup.
_PLAIN = frozenset({dict, list, str, int, float, bool, bytes, type(None)})


def is_streamed(value: Any) -> bool:
    """True for a generator (or any iterator) and for a response dict whose body is one."""
    if type(value) is dict:
        body = value.get("body") if "statusCode" in value else None
        return type(body) not in _PLAIN and isinstance(body, Iterator | AsyncIterator)
    return type(value) not in _PLAIN and isinstance(value, Iterator | AsyncIterator)


def is_async(value: Any) -> bool:
    """A streamed value that needs an event loop (``apump``)."""
    body = value.get("body") if isinstance(value, dict) else value
    return isinstance(body, AsyncIterator)


def to_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    return (json.dumps(item) + "\n").encode("utf-8")


def _parts(value: Any) -> tuple[int, list[tuple[bytes, bytes]], Any]:
    """(status, headers, body iterator) of a streamed return value."""
    if not isinstance(value, dict):
        return 200, [DEFAULT_TYPE], value
    headers = [(str(k).encode("latin-1"), str(v).encode("latin-1"))
               for k, v in (value.get("headers") or {}).items()]
    headers += [(b"set-cookie", str(c).encode("latin-1")) for c in value.get("cookies") or []]
    if not any(k.lower() == b"content-type" for k, _ in headers):
        headers.append(DEFAULT_TYPE)
    return int(value["statusCode"]), headers, value["body"]


def _send(out: Stream, status: int, headers: list[tuple[bytes, bytes]], item: Any) -> None:
    if not out.started:
        out.head(status, headers)
    out.body(to_bytes(item))


def pump(value: Any, out: Stream) -> None:
    """Send a synchronous stream (for an async generator, use ``apump``)."""
    status, headers, body = _parts(value)
    items: Iterable[Any] = body
    with out.guard():
        for item in items:
            _send(out, status, headers, item)
    if not out.started:
        out.head(status, headers)


async def apump(value: Any, out: Stream) -> None:
    """Send a stream from inside the instance's event loop; sync generators are fine too."""
    status, headers, body = _parts(value)
    with out.guard():
        if isinstance(body, AsyncIterator):
            async for item in body:
                _send(out, status, headers, item)
        else:
            for item in body:
                _send(out, status, headers, item)
    if not out.started:
        out.head(status, headers)
