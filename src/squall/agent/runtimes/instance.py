"""An instance of a runtime that speaks the Lambda Runtime API (``nodejs20``, ``provided``).

It has the interface of a forked Python instance (squall.agent.instance.Instance), so pools,
the invoker's timeout, metering, logs and error mapping treat both alike; underneath:

- invocations go through the instance's own Runtime API endpoint (squall.runtime_api);
- its log lines are what the process writes to stdout/stderr (one pipe), each line given to
  the invocation in flight, or kept as init output (deploy errors show it);
- death is seen on its pidfd (the process exited), not on a channel;
- its peak memory (``mem`` of a reply) is the process's VmHWM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
import uuid
from typing import Any

from squall.agent.instance import Instance, InstanceDied, StreamSink
from squall.runtime_api.server import RuntimeApi
from squall.runtime_api.state import Invocation

log = logging.getLogger("squall.runtimes")

MAX_LINE = 256 * 1024      # longer lines are cut (one line must not hold the loop's memory)
INIT_LINES = 200           # init output kept for deploy errors


def _no_exit(_inst: Instance) -> None:
    return None


class RuntimeApiInstance(Instance):
    """One runtime process. Made by ExecZygote; ``attach`` starts its endpoint and watchers."""

    def __init__(self, instance_id: str, version_key: str, sock: socket.socket, pid: int,
                 listener: socket.socket, log_fd: int, function_arn: str,
                 check_peer: bool = True) -> None:
        super().__init__(instance_id, version_key, sock, pid, 1, _no_exit)
        self.api = RuntimeApi(pid, listener, check_peer=check_peer)
        self.api.before_answer = self._drain
        self.function_arn = function_arn
        self.init_lines: list[str] = []
        self._log_fd = log_fd
        self._partial = b""
        self._current: str | None = None
        self._watch_fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    async def attach(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        await self.api.start()
        os.set_blocking(self._log_fd, False)
        loop.add_reader(self._log_fd, self._read_logs)
        if self._pidfd >= 0:
            # a dup: Instance._wait_exit registers its own reader on the original
            self._watch_fd = os.dup(self._pidfd)
            loop.add_reader(self._watch_fd, self._exited)

    async def invoke(self, request_id: str, event: Any, deadline_ms: float,
                     ctx: dict[str, Any], sink: StreamSink | None = None) -> dict[str, Any]:
        """One invocation through the Runtime API. The response arrives whole (a Runtime API
        response is one body), so ``sink`` is not used: the caller sends the value itself."""
        if self.dead:
            raise InstanceDied("instance is not running")
        inv = Invocation(request_id, _payload(event), int(deadline_ms), self.function_arn,
                         _trace_header(ctx))
        self.logs[request_id] = []
        self.invocations += 1
        self._current = request_id
        fut = self.api.submit(inv)
        self.inflight[request_id] = fut
        answered = False
        try:
            reply = await fut
            answered = True
            reply["mem"] = _peak_rss_kb(self.pid)
            return reply
        finally:
            if not answered:  # timed out or cancelled: answers for it are now late
                self.api.abandon(request_id)
            self.inflight.pop(request_id, None)
            self._current = None
            self.last_used = time.monotonic()
            after, self.after_first = self.after_first, None
            if after is not None:
                after()

    # -- logs ------------------------------------------------------------------------------

    def _read_logs(self) -> None:
        try:
            data = os.read(self._log_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._stop_reading()
            if self._partial:
                self._line(self._partial)
                self._partial = b""
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        *lines, rest = (self._partial + data).split(b"\n")
        for line in lines:
            self._line(line)
        if len(rest) > MAX_LINE:
            self._line(rest)
            rest = b""
        self._partial = rest

    def _line(self, raw: bytes) -> None:
        text = raw[:MAX_LINE].decode("utf-8", "replace").rstrip("\r")
        rid = self._current
        lines = self.logs.get(rid) if rid is not None else None
        if lines is not None:
            lines.append(text)
            return
        self.init_lines = [*self.init_lines[-(INIT_LINES - 1):], text]
        log.debug("[%s] %s", self.version_key, text)

    def _drain(self) -> None:
        """Read what is in the pipe now: lines written before a response belong to it."""
        if self._log_fd < 0:
            return
        while True:
            try:
                data = os.read(self._log_fd, 65536)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            self._feed(data)
        if self._partial:  # a last line without its newline still belongs to this request
            self._line(self._partial)
            self._partial = b""

    def _stop_reading(self) -> None:
        if self._log_fd >= 0 and self._loop is not None:
            self._loop.remove_reader(self._log_fd)

    # -- life ------------------------------------------------------------------------------

    def _exited(self) -> None:
        self._mark_dead()

    def _mark_dead(self) -> None:
        if self.dead:
            return
        self._drain()
        super()._mark_dead()
        # Nobody closes an instance that died in a pool (it is only dropped from it): give
        # back its endpoint, pipe and fds now.
        self._release_fds()

    def _release_fds(self) -> None:
        self.api.shutdown()
        loop = self._loop
        if self._watch_fd >= 0:
            if loop is not None:
                loop.remove_reader(self._watch_fd)
            os.close(self._watch_fd)
            self._watch_fd = -1
        if self._log_fd >= 0:
            self._stop_reading()
            os.close(self._log_fd)
            self._log_fd = -1
        with contextlib.suppress(OSError):
            self._sock.close()

    def kill(self) -> None:
        """SIGKILL, and dead from now on: the pool must not hand it the next request in the
        moment before the kernel reports the exit."""
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        self._mark_dead()

    async def stop(self, grace_s: float) -> None:
        """A runtime waiting on /next never exits by itself: close the endpoint, SIGTERM,
        wait ``grace_s``, SIGKILL."""
        await self.api.close()
        if self._pidfd >= 0 and not self.dead:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGTERM)
            if not await self._wait_exit(grace_s):
                self.kill()
                await self._wait_exit(grace_s)
        await self.close()

    async def close(self) -> None:
        self._mark_dead()
        self._release_fds()
        await self.api.close()
        await super().close()


def _payload(event: Any) -> bytes:
    return json.dumps(event, default=str).encode()


def _trace_header(ctx: dict[str, Any]) -> str:
    """X-Ray's header from the platform's W3C traceparent (a fresh root when untraced)."""
    tp = str(ctx.get("traceparent") or "")
    parts = tp.split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        _v, trace_id, span_id, flags = parts
        return (f"Root=1-{trace_id[:8]}-{trace_id[8:]};Parent={span_id};"
                f"Sampled={1 if flags == '01' else 0}")
    raw = uuid.uuid4().hex
    return f"Root=1-{int(time.time()):08x}-{raw[:24]};Sampled=0"


def _peak_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0
