"""The ``context`` object a Lambda-style handler receives, and the log writer of an instance."""

from __future__ import annotations

import contextvars
import os
import socket
import threading
import time
from typing import Any

from squall.runtime.protocol import send_frame

# The request being served by the current thread or task, so that a print() from any frame of the
# handler is tagged with the right request id even when an async instance serves several at once.
current_request: contextvars.ContextVar[str] = contextvars.ContextVar("current_request", default="")


class Channel:
    """The instance's socket to the host; ``send`` is safe from several threads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, msg: dict[str, Any]) -> None:
        with self._lock:
            send_frame(self.sock, msg)


class LogWriter:
    """Stands in for sys.stdout/sys.stderr: each complete line becomes a log frame."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._partial: dict[str, str] = {}

    def write(self, text: str) -> int:
        rid = current_request.get()
        buf = self._partial.get(rid, "") + text
        *lines, rest = buf.split("\n")
        for line in lines:
            self._channel.send({"t": "log", "id": rid, "m": line})
        self._partial[rid] = rest
        return len(text)

    def flush(self, rid: str | None = None) -> None:
        key = current_request.get() if rid is None else rid
        rest = self._partial.pop(key, "")
        if rest:
            self._channel.send({"t": "log", "id": key, "m": rest})

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        raise OSError("the log stream of a Squall instance has no file descriptor")


def trace_env(frame_ctx: dict[str, Any] | None) -> str | None:
    """Per invocation (an instance serves many): the W3C traceparent the platform sent goes to
    ``traceparent`` and, X-Ray style, ``_X_AMZN_TRACE_ID`` in the environment, where an
    OpenTelemetry SDK in the function finds it; returns the trace id for ``context.trace_id``."""
    tp: str | None = frame_ctx.get("traceparent") if frame_ctx else None
    if not tp:
        if "traceparent" in os.environ:
            del os.environ["traceparent"]
            os.environ.pop("_X_AMZN_TRACE_ID", None)
        return None
    _version, trace_id, span_id, flags = [*tp.split("-"), "", "", ""][:4]
    os.environ["traceparent"] = tp
    os.environ["_X_AMZN_TRACE_ID"] = (f"Root=1-{trace_id[:8]}-{trace_id[8:]};Parent={span_id};"
                                      f"Sampled={1 if flags == '01' else 0}")
    return trace_id


class Context:
    """What AWS Lambda's Python runtime passes as ``context``, with the same attribute names."""

    def __init__(self, request_id: str, deadline_ms: float, static: dict[str, Any],
                 log: LogWriter) -> None:
        self.aws_request_id = request_id
        self.request_id = request_id
        self.function_name: str = static["function_name"]
        self.function_version: str = static["function_version"]
        self.memory_limit_in_mb: int = static["memory_limit_in_mb"]
        self.invoked_function_arn: str = static["invoked_function_arn"]
        self.log_group_name = f"/squall/{self.function_name}"
        self.log_stream_name = static.get("log_stream_name", "")
        self.identity = None
        self.client_context = None
        self.trace_id: str | None = None  # W3C trace id when the platform traces (trace_env)
        self._deadline_ms = deadline_ms
        self._log = log

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self._deadline_ms - time.time() * 1000))

    def log(self, message: str) -> None:
        self._log.write(message if message.endswith("\n") else message + "\n")
