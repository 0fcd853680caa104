"""The HTTP response of a function that streams: sent as it is produced (chunked transfer).

Created per /fn/ request and handed to the invoker; for a function that does not stream, it is
never started and costs one small object. Once started, a watcher owned by the stream reads
``receive`` for the client's disconnect, so that the next chunk stops the relay (ClientGone)
instead of feeding a function that nobody listens to until its time limit.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.types import Receive, Send

from squall.agent.instance import ClientGone


class HttpStream:
    """A squall.invoker.api.ResponseStream writing into one ASGI response."""

    __slots__ = ("_cold", "_receive", "_rid", "_send", "_version", "_watch", "gone", "started")

    def __init__(self, send: Send, receive: Receive, rid: str) -> None:
        self._send = send
        self._receive = receive
        self._rid = rid
        self._version = 0
        self._cold = False
        self._watch: asyncio.Task[None] | None = None
        self.started = False
        self.gone = False

    def run_on(self, version: int, cold: bool) -> None:
        self._version, self._cold = version, cold

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self._send({"type": "http.response.start", "status": status, "headers": [
            *headers,
            (b"x-squall-cold-start", b"1" if self._cold else b"0"),
            (b"x-squall-executed-version", str(self._version).encode()),
            (b"x-squall-request-id", self._rid.encode()),
        ]})
        self.started = True
        self._watch = asyncio.get_running_loop().create_task(self._watch_disconnect())

    async def send(self, chunk: bytes) -> None:
        if self.gone:
            raise ClientGone(f"request {self._rid}: the client closed the connection")
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end(self, complete: bool) -> None:
        """Stop watching; finish the body, or leave it incomplete so that the server closes the
        connection and the client sees a cut stream, not a whole one (a timeout, a crash)."""
        await self.close()
        if complete and not self.gone:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

    async def _watch_disconnect(self) -> None:
        # The request body was read before the invocation: what receive() says now is the
        # disconnect (anything else is ignored).
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
