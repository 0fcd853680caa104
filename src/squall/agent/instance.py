"""The platform's side of one instance: its channel, its pid, the invocations in flight on it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from squall.runtime.adapters import lambda_response
from squall.runtime.protocol import HEADER, MAX_FRAME, ProtocolError, decode, encode

CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
# Frames of one stream held while the consumer (the HTTP client) is slower than the function.
# When full, the channel's reader waits: the instance then blocks in send, which is the
# backpressure a streaming function should feel (at the price of its other in-flight requests
# waiting too when it serves several at once).
STREAM_WINDOW = 64
_DEAD: dict[str, Any] = {"t": "dead"}


class ClientGone(Exception):
    """A StreamSink's client went away mid-stream; the instance is still producing."""


class StreamSink(Protocol):
    """Where a streamed response goes as it is produced (the gateway's HTTP response).

    ``start`` is called once, before any ``send``; either raises ClientGone when the client has
    left, which ends the relay and propagates to the caller of ``Instance.invoke`` (the instance
    is still producing: kill it).
    """

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    async def send(self, chunk: bytes) -> None: ...


class Collected:
    """The sink used when the caller has none (queue triggers, the Lambda API): the stream is
    gathered into the Lambda response dict a non-streaming handler would have returned."""

    def __init__(self) -> None:
        self.status = 200
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.headers = status, headers

    async def send(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def response(self) -> dict[str, Any]:
        return lambda_response(self.status, self.headers, b"".join(self.chunks))


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Channel(asyncio.Protocol):
    """The platform's end of an instance's channel: frames are parsed as the loop reads them and
    handed to the instance synchronously (no reader task, no await per frame: this is on every
    warm invocation's path). A frame split over several reads is kept until it is whole."""

    def __init__(self, inst: Instance) -> None:
        self._inst = inst
        self._buf = bytearray()
        self._need = HEADER.size  # bytes the buffer must hold before a frame can be complete
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return
            data = bytes(buf)
            buf.clear()
        end = len(data)
        pos = 0
        frame = self._inst._frame
        try:
            while end - pos >= 4:
                (length,) = HEADER.unpack_from(data, pos)
                if length > MAX_FRAME:
                    raise ProtocolError(f"frame of {length} bytes")
                stop = pos + 4 + length
                if stop > end:
                    self._need = 4 + length
                    break
                frame(decode(data[pos + 4:stop]))
                pos = stop
            else:
                self._need = HEADER.size
        except ProtocolError:
            if self.transport is not None:
                self.transport.abort()
            self._inst._mark_dead()
            return
        if pos < end:
            buf += memoryview(data)[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self._inst._mark_dead()


class InstanceDied(Exception):
    """The instance's channel closed (crash, kill, OOM) while an invocation was in flight."""


class Instance:
    """One forked instance. Created by ``Zygote.fork``; owned by its version's pool."""

    def __init__(self, instance_id: str, version_key: str, sock: socket.socket, pid: int,
                 concurrency: int, on_exit: Callable[[Instance], None]) -> None:
        self.id = instance_id
        self.version_key = version_key
        self.pid = pid
        self.concurrency = concurrency
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        self.invocations = 0
        self.inflight: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.logs: dict[str, list[str]] = {}
        self.streams: dict[str, asyncio.Queue[dict[str, Any]]] = {}  # after a head frame
        self.dead = False
        self.init_timing: Any = None  # agent.node.InitTiming of the cold start that made it
        self.from_spare = False  # forked ahead, before the request that took it
        # called once, when the first invocation has its answer (the zygote forks its next
        # spare then, so that the two processes do not compete for the CPU)
        self.after_first: Callable[[], None] | None = None
        self._sock = sock
        self.on_exit = on_exit
        self._pidfd = -1
        with contextlib.suppress(OSError):
            self._pidfd = os.pidfd_open(pid)
        self._transport: asyncio.Transport | None = None
        self._paused = False  # reading stopped: a stream's consumer is behind (STREAM_WINDOW)

    async def attach(self) -> None:
        """Start reading frames from the channel (after ``place``)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_unix_connection(lambda: _Channel(self), sock=self._sock)
        self._transport = transport

    @property
    def spare(self) -> int:
        return 0 if self.dead else self.concurrency - len(self.inflight)

    async def invoke(self, request_id: str, event: Any, deadline_ms: float,
                     ctx: dict[str, Any], sink: StreamSink | None = None) -> dict[str, Any]:
        """Send one invocation and wait for its result frame (``res`` or ``err``).

        A streamed response (``head``, ``body``... then ``res`` or ``err``) is relayed to
        ``sink`` as it arrives, or, without one, gathered into the Lambda response dict that
        becomes the ``res`` frame's value. Raises InstanceDied if the channel closes first, and
        whatever the sink raises. The caller enforces the timeout, over the whole stream.
        """
        transport = self._transport
        if self.dead or transport is None:
            raise InstanceDied("instance is not running")
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.inflight[request_id] = fut
        self.logs[request_id] = []
        self.invocations += 1
        try:
            transport.write(
                encode({"t": "inv", "id": request_id, "ev": event, "dl": deadline_ms, "ctx": ctx})
            )
            reply = await fut
            if reply["t"] != "head":
                return reply
            return await self._relay(request_id, reply, sink)
        finally:
            self.inflight.pop(request_id, None)
            if self.streams:
                self._end_stream(request_id)
            self.last_used = time.monotonic()
            if self.after_first is not None:
                after, self.after_first = self.after_first, None
                after()

    async def _relay(self, request_id: str, head: dict[str, Any],
                     sink: StreamSink | None) -> dict[str, Any]:
        queue = self.streams[request_id]
        out = Collected() if sink is None else sink
        await out.start(int(head.get("s", 200)), [(bytes(k), bytes(v)) for k, v in head["h"]])
        while True:
            msg = await queue.get()
            if self._paused and queue.qsize() < STREAM_WINDOW:
                self._resume()
            kind = msg["t"]
            if kind == "body":
                await out.send(msg["b"])
            elif kind == "dead":
                raise InstanceDied("instance exited during a streamed response")
            elif isinstance(out, Collected) and kind == "res":
                return {**msg, "v": out.response()}
            else:
                return msg

    def _end_stream(self, request_id: str) -> None:
        """Forget a stream; reading resumes if it was the one that paused it."""
        self.streams.pop(request_id, None)
        if self._paused:
            self._resume()

    def _to_stream(self, rid: str, kind: str, msg: dict[str, Any]) -> bool:
        """Route a frame of a streamed response; False when it is not one. A queue that reaches
        STREAM_WINDOW frames stops the reading of the channel until its consumer catches up:
        the instance then blocks in send, the backpressure a streaming function should feel."""
        queue = self.streams.get(rid)
        if queue is not None:
            queue.put_nowait(msg)
            if queue.qsize() >= STREAM_WINDOW and not self._paused:
                transport = self._transport
                if transport is not None and not transport.is_closing():
                    transport.pause_reading()
                    self._paused = True
            return True
        if kind == "head":
            fut = self.inflight.get(rid)
            if fut is not None and not fut.done():
                self.streams[rid] = asyncio.Queue()
                fut.set_result(msg)
            return True
        return kind == "body"  # of a stream already given up: dropped

    def _resume(self) -> None:
        if any(q.qsize() >= STREAM_WINDOW for q in self.streams.values()):
            return
        self._paused = False
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def take_logs(self, request_id: str) -> list[str]:
        return self.logs.pop(request_id, [])

    def _frame(self, msg: dict[str, Any]) -> None:
        """One frame from the instance (called by the channel as soon as it is read)."""
        kind = msg["t"]
        rid = msg.get("id", "")
        if kind == "log":
            lines = self.logs.get(rid)
            if lines is not None:
                lines.append(str(msg.get("m", "")))
        elif self.streams and self._to_stream(rid, kind, msg):
            pass
        elif kind == "res" or kind == "err":
            fut = self.inflight.get(rid)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif kind == "head" or kind == "body":
            self._to_stream(rid, kind, msg)

    def _mark_dead(self) -> None:
        if self.dead:
            return
        self.dead = True
        for fut in self.inflight.values():
            if not fut.done():
                fut.set_exception(InstanceDied("instance exited"))
        for queue in self.streams.values():
            queue.put_nowait(_DEAD)
        self.on_exit(self)

    def kill(self) -> None:
        """SIGKILL through the pidfd (never a recycled pid). Harmless when already dead."""
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        if self._transport is not None:
            self._transport.close()

    async def stop(self, grace_s: float) -> None:
        """Close the channel (the runtime exits on EOF), wait up to ``grace_s``, then SIGKILL."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        if self._pidfd >= 0 and not await self._wait_exit(grace_s):
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGTERM)
            if not await self._wait_exit(grace_s):
                self.kill()
                await self._wait_exit(grace_s)
        await self.close()

    async def _wait_exit(self, wait_s: float) -> bool:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        fd = self._pidfd
        loop.add_reader(fd, _resolve, done)
        try:
            await asyncio.wait_for(done, wait_s)
            return True
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)

    async def close(self) -> None:
        self._mark_dead()
        if self._transport is not None:
            self._transport.close()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


async def receive_hello(sock: socket.socket, wait_s: float) -> int:
    """Read the instance's hello frame and return its pid as the host sees it (SCM_CREDENTIALS).

    The kernel translates the sender's pid into our pid namespace, which is how we learn the host
    pid of a process forked inside a sandbox with its own pid namespace.
    """
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), _resolve, ready)
    try:
        await asyncio.wait_for(ready, wait_s)
    finally:
        loop.remove_reader(sock.fileno())
    data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(CRED.size))
    if not data:
        raise InstanceDied("instance exited before saying hello")
    pid = -1
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = CRED.unpack(payload[: CRED.size])[0]
    (length,) = HEADER.unpack(data[: HEADER.size])
    msg = decode(data[HEADER.size : HEADER.size + length])
    if msg.get("t") != "hello" or pid <= 0:
        raise ProtocolError("instance did not start with a credentialed hello")
    return pid
