"""Reading request bodies with a size limit: 413 without buffering the body, and without a reset.

Why the rest of an oversized body is read and dropped before answering: uvicorn closes the socket
right after the response when the client asked for ``Connection: close`` (urllib.request does,
always). Closing a socket whose receive buffer still holds unread bytes makes the kernel send a
RST, and a client still busy sending sees "connection reset" or "broken pipe" instead of our 413.
Well-known servers avoid this with a "lingering close" (nginx reads and discards for up to 30 s);
we do the same with a bound, before the response: a body declared at most ``DRAIN_BYTES`` long,
or up to ``DRAIN_BYTES`` past the limit of one that streams, within ``DRAIN_SECONDS``. A client
sending more than that still gets a reset, the price of not letting one request tie up a
worker. Keep-alive clients are unaffected either way: uvicorn keeps reading and discarding the
rest of a body after the response.

Worked example, limit 6 MB: a 10 MB upload is read to 6 MB + 1 byte, the remaining ~4 MB are
dropped as they arrive (well under ``DRAIN_BYTES``), then the 413 is sent and read by the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from squall.errors import InvalidJSON, PayloadTooLarge

DRAIN_BYTES = 16 * 1024 * 1024
DRAIN_SECONDS = 5.0


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body of a control-API request; PayloadTooLarge (413) when over ``limit``."""
    return await read_limited(request.stream(), limit,
                              declared=request.headers.get("content-length", ""),
                              expects_continue=_expects_continue(request.headers.get("expect")))


async def read_limited(chunks: AsyncIterator[bytes], limit: int, *, declared: str = "",
                       expects_continue: bool = False, what: str = "") -> bytes:
    """Join ``chunks`` up to ``limit`` bytes. Over the limit, drop what the client is still
    sending (bounded, see the module docstring), then raise PayloadTooLarge; ``what`` ends the
    message (" for synchronous invocations")."""
    if declared.isdigit() and int(declared) > limit:
        # A client waiting for "100 Continue" has not sent the body and will not: answer now.
        # Past the drain budget the reset is unavoidable, so don't spend time on it.
        if not expects_continue and int(declared) <= DRAIN_BYTES:
            await discard(chunks)
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit} byte "
                              f"limit{what}")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            await discard(chunks)
            raise PayloadTooLarge(f"request body exceeds the {limit} byte limit{what}")
        parts.append(chunk)
    return b"".join(parts)


async def discard(chunks: AsyncIterator[bytes], budget: int = DRAIN_BYTES,
                  seconds: float = DRAIN_SECONDS) -> None:
    """Read and drop the rest of a body, stopping after ``budget`` bytes or ``seconds``, or when
    the client disconnects (nobody is left to answer)."""
    size = 0
    with contextlib.suppress(TimeoutError, ClientDisconnect):
        async with asyncio.timeout(seconds):
            async for chunk in chunks:
                size += len(chunk)
                if size > budget:
                    return


async def receive_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The body of a raw ASGI request as chunks; ends at the last chunk or a disconnect."""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


def _expects_continue(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "100-continue"


def expects_continue(headers: list[tuple[bytes, bytes]]) -> bool:
    """True when raw ASGI ``headers`` ask for ``Expect: 100-continue``."""
    return any(k == b"expect" and _expects_continue(v.decode("latin-1")) for k, v in headers)


async def read_json_object(request: Request, limit: int = 1024 * 1024) -> dict[str, Any]:
    """A JSON object body ({} when empty): 400 ``invalid_json`` for anything else."""
    raw = await read_body(request, limit)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSON(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidJSON("the body must be a JSON object")
    return body
