"""The zygote: imports a function's handler once, then forks instances on request.

Started by the platform as ``python -I -S -c <bootstrap>`` with the control socket on fd 3 and its
configuration as JSON in argv[1]. It never serves a request itself: each instance is a fork that
inherits the imported modules (copy-on-write), hardens itself, says hello on its own channel and
serves invocations until the channel closes.
"""

from __future__ import annotations

import array
import asyncio
import gc
import importlib
import inspect
import json
import logging
import os
import random
import resource
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from squall.runtime import harden
from squall.runtime.adapters import AsgiApp, call_wsgi, preload
from squall.runtime.context import Channel, Context, LogWriter, current_request, trace_env
from squall.runtime.protocol import FrameReader, ProtocolError, send_frame
from squall.runtime.stream import Stream, apump, is_async, is_streamed, pump

CONTROL_FD = 3


_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def error_payload(exc: BaseException, skip: int = 0,
                  user_only: bool = False) -> dict[str, Any]:
    """Lambda's error shape: errorType, errorMessage, stackTrace (list of frame strings).
    ``user_only``: without this runtime's frames (the instance loop, the stream pump, the
    ASGI/WSGI adapters), as Lambda shows only the function's."""
    frames = traceback.extract_tb(exc.__traceback__)[skip:]
    if user_only:
        frames = traceback.StackSummary.from_list(
            [f for f in frames if not f.filename.startswith(_RUNTIME_DIR)])
    return {
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_list(frames),
    }


def load_handler(spec: str) -> Callable[..., Any]:
    """``module.func`` (Lambda's form) or ``module:attribute`` (an ASGI/WSGI app, uvicorn's)."""
    module_name, colon, func_name = spec.partition(":")
    if not colon:
        module_name, _, func_name = spec.rpartition(".")
    module = importlib.import_module(module_name)
    try:
        handler = getattr(module, func_name)
    except AttributeError:
        raise AttributeError(
            f"handler '{func_name}' is missing from module '{module_name}'"
        ) from None
    if not callable(handler):
        raise TypeError(f"handler '{spec}' is not callable")
    return handler  # type: ignore[no-any-return]


class _LogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ms = int(record.msecs)
        sys.stderr.write(
            f"[{record.levelname}]\t{ts}.{ms:03d}Z\t{current_request.get()}\t{self.format(record)}\n"
        )


class Instance:
    """One forked instance: serves invocations from its channel, one or several at a time."""

    def __init__(self, sock: socket.socket, handler: Callable[..., Any], static: dict[str, Any],
                 style: str) -> None:
        self.channel = Channel(sock)
        self.handler = handler
        self.static = static
        self.style = style
        self.asgi = AsgiApp(handler) if style == "asgi" else None
        self.log = LogWriter(self.channel)
        sys.stdout = self.log
        sys.stderr = self.log
        root = logging.getLogger()
        root.handlers[:] = [_LogHandler()]
        if static.get("log_level"):  # squall.toml log_level, as Lambda's logging controls do
            root.setLevel(static["log_level"])

    def _call(self, msg: dict[str, Any]) -> dict[str, Any]:
        rid = msg["id"]
        ctx = Context(rid, msg["dl"], self.static, self.log)
        ctx.trace_id = trace_env(msg.get("ctx"))
        try:
            if self.style == "wsgi":
                return {"t": "res", "id": rid,
                        "v": call_wsgi(self.handler, msg["ev"], Stream(self.channel, rid))}
            if self.style == "cloudevent":
                value = self.handler(msg["ev"])
            else:
                value = self.handler(msg["ev"], ctx)
            if is_streamed(value):  # sent as it is produced; the res frame ends it
                out = Stream(self.channel, rid)
                if is_async(value):  # a sync handler returning an async generator
                    asyncio.run(apump(value, out))
                else:
                    pump(value, out)
                value = None
            return {"t": "res", "id": rid, "v": value}
        except Exception as exc:
            return {"t": "err", "id": rid, "e": error_payload(exc, user_only=True)}

    def _finish(self, rid: str, reply: dict[str, Any]) -> None:
        self.log.flush(rid)
        reply["mem"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # peak RSS, KiB
        try:
            self.channel.send(reply)
        except TypeError as exc:  # a value msgpack cannot carry
            self.channel.send({"t": "err", "id": rid, "e": {
                "errorType": "Runtime.MarshalError",
                "errorMessage": f"Unable to marshal response: {exc}",
                "stackTrace": [],
            }})

    def serve_sync(self) -> None:
        frames = FrameReader(self.channel.sock)
        while True:
            try:
                msg = frames.next()
            except (EOFError, ProtocolError, OSError):
                return
            if msg["t"] != "inv":
                continue
            token = current_request.set(msg["id"])
            reply = self._call(msg)
            self._finish(msg["id"], reply)
            current_request.reset(token)

    async def _call_async(self, msg: dict[str, Any]) -> None:
        rid = msg["id"]
        current_request.set(rid)
        ctx = Context(rid, msg["dl"], self.static, self.log)
        ctx.trace_id = trace_env(msg.get("ctx"))
        try:
            reply: dict[str, Any] = {"t": "res", "id": rid, "v": await self._value(msg, ctx)}
        except Exception as exc:
            reply = {"t": "err", "id": rid, "e": error_payload(exc, user_only=True)}
        self._finish(rid, reply)

    async def _value(self, msg: dict[str, Any], ctx: Context) -> Any:
        if self.asgi is not None:
            return await self.asgi.call(msg["ev"], Stream(self.channel, msg["id"]))
        args = (msg["ev"],) if self.style == "cloudevent" else (msg["ev"], ctx)
        value = self.handler(*args)
        if inspect.isawaitable(value):
            value = await value
        if is_streamed(value):  # an async generator handler, or a coroutine returning one
            await apump(value, Stream(self.channel, msg["id"]))
            return None
        return value

    async def serve_async(self) -> None:
        """Frames are read by a thread and handed to the loop; each invocation is its own task."""
        loop = asyncio.get_running_loop()
        if self.asgi is not None:
            self.asgi.start()  # lifespan startup, here after the fork, never in the zygote
        done = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        def spawn(msg: dict[str, Any]) -> None:
            task = loop.create_task(self._call_async(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        def reader() -> None:
            frames = FrameReader(self.channel.sock)
            while True:
                try:
                    msg = frames.next()
                except (EOFError, ProtocolError, OSError):
                    loop.call_soon_threadsafe(done.set)
                    return
                if msg["t"] == "inv":
                    loop.call_soon_threadsafe(spawn, msg)

        threading.Thread(target=reader, daemon=True).start()
        await done.wait()
        if self.asgi is not None:
            await self.asgi.shutdown()


def _recv_fork(ctrl: socket.socket) -> tuple[dict[str, Any], int]:
    fds = array.array("i")
    data, ancdata, _flags, _addr = ctrl.recvmsg(65536, socket.CMSG_SPACE(fds.itemsize))
    if not data:
        raise EOFError
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    from squall.runtime.protocol import HEADER, decode

    (length,) = HEADER.unpack(data[: HEADER.size])
    msg = decode(data[HEADER.size : HEADER.size + length])
    return msg, (fds[0] if fds else -1)


def _become_instance(fd: int, msg: dict[str, Any], handler: Callable[..., Any],
                     cfg: dict[str, Any]) -> None:
    """Runs in the forked child; never returns."""
    code = 0
    try:
        harden.apply(msg.get("harden", {}))
        random.seed()  # each instance its own sequence, not the zygote's
        np_random = sys.modules.get("numpy.random")
        if np_random is not None:
            np_random.seed()
        sock = socket.socket(fileno=fd)
        send_frame(sock, {"t": "hello", "pid": os.getpid()})
        inst = Instance(sock, handler, cfg["static"], cfg.get("style", "lambda"))
        if inst.asgi is not None or inspect.iscoroutinefunction(handler) \
                or inspect.isasyncgenfunction(handler):
            asyncio.run(inst.serve_async())
        else:
            inst.serve_sync()
    except BaseException:  # the instance must never fall back into the zygote's loop
        traceback.print_exc(file=sys.__stderr__)
        code = 1
    os._exit(code)


def main() -> None:
    cfg: dict[str, Any] = json.loads(sys.argv[1])
    started = time.time()
    ctrl = socket.socket(fileno=int(cfg.get("ctrl_fd", CONTROL_FD)))
    try:
        # Before the function's code is on sys.path: its import-time code runs fenced.
        harden.apply_zygote(cfg.get("harden", {}))
    except OSError as exc:
        send_frame(ctrl, {"t": "sandbox_error", "m": f"zygote hardening failed: {exc}"})
        sys.exit(1)
    for path in reversed(cfg["paths"]):
        sys.path.insert(0, path)
    os.chdir(cfg["code_dir"])
    try:
        handler = load_handler(cfg["handler"])
    except BaseException as exc:
        send_frame(ctrl, {"t": "init_error", "e": error_payload(exc)})
        sys.exit(1)
    preload()
    # Children are reaped by the kernel; the platform watches each one through a pidfd.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # Move everything imported so far out of the GC's reach so forked children do not dirty the
    # shared pages by walking it (the copy-on-write cost of a fork is then near zero).
    gc.collect()
    gc.freeze()
    send_frame(ctrl, {"t": "ready", "init_ms": (time.time() - started) * 1000.0, "t0": started})
    while True:
        try:
            msg, fd = _recv_fork(ctrl)
        except (EOFError, ConnectionError):
            return
        if msg.get("t") != "fork" or fd < 0:
            continue
        pid = os.fork()
        if pid == 0:
            ctrl.close()
            _become_instance(fd, msg, handler, cfg)
        os.close(fd)
        send_frame(ctrl, {"t": "forked", "id": msg["id"], "pid": pid})


if __name__ == "__main__":
    main()
