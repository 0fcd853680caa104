"""`squall dev`: a function folder run locally, reloaded on save, fed an event, served over HTTP.

The loop: load the folder (squall.replay.local), run the event if one was given and print the
result and the function's log lines; then on every save of a ``.py`` file or ``squall.toml``
under the folder, load again (fresh imports) and run the event again. With a port, the function
is also served at ``http://127.0.0.1:PORT/fn/NAME/...`` with the platform's HTTP event mapping
(API Gateway payload 2.0, squall.gateway.apigw), so a browser or curl sees the new code on the
next request after a save.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import uvicorn
from starlette.types import Receive, Scope, Send
from watchfiles import Change, DefaultFilter, awatch

from squall.api.body import expects_continue, read_limited, receive_chunks
from squall.errors import PayloadTooLarge, SquallError
from squall.gateway.apigw import build_event, to_response
from squall.gateway.app import split_path
from squall.ids import new_request_id
from squall.replay.local import LocalFunction, LocalResult

MAX_BODY = 6 * 1024 * 1024  # the platform's synchronous payload limit


@dataclass(frozen=True)
class Feed:
    """The event run after every load, and where it came from (for the banner)."""

    event: Any
    source: str


class SourceFilter(DefaultFilter):
    """Python sources and squall.toml; DefaultFilter already skips __pycache__, .git, editors'
    swap files and the like."""

    def __call__(self, change: Change, path: str) -> bool:
        return super().__call__(change, path) and (path.endswith(".py")
                                                   or Path(path).name == "squall.toml")


def format_result(result: LocalResult) -> list[str]:
    """What the terminal shows for one invocation: its log lines, then the result or error."""
    lines = [f"START RequestId: {result.request_id}", *result.logs,
             f"END RequestId: {result.request_id}\tDuration: {result.duration_ms:.2f} ms"]
    if result.error is None:
        return [*lines, "result: " + json.dumps(result.value, default=repr)]
    return [*lines, *format_error(result.error)]


def format_error(error: dict[str, Any]) -> list[str]:
    """``error: Type: message`` and the stack trace, indented."""
    return [f"error: {error.get('errorType')}: {error.get('errorMessage')}",
            *("  " + x.rstrip("\n") for x in error.get("stackTrace") or [])]


class Dev:
    """One ``squall dev`` session: ``run`` until ``stop`` is set."""

    def __init__(self, fn: LocalFunction, out: TextIO, *, feed: Feed | None = None,
                 port: int | None = None, host: str = "127.0.0.1") -> None:
        self.fn = fn
        self.out = out
        self.feed = feed
        self.port = port
        self.host = host

    def say(self, *lines: str) -> None:
        for line in lines:
            self.out.write(line + "\n")
        self.out.flush()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            before = self._sources()
            await self._load("loaded")
            with self._listen() as sock:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._watch(stop, before))
                    if sock is not None:
                        tg.create_task(self._serve(sock, stop))
        finally:
            await self.fn.close()

    async def _load(self, what: str) -> None:
        try:
            ms = await self.fn.load()
        except SquallError as exc:  # squall.toml that does not parse: say so, keep watching
            self.say(f"[dev] cannot load {self.fn.folder}: {exc.message} [{exc.code}]")
            return
        if self.fn.load_error is not None:
            self.say(f"[dev] {self.fn.name}: the handler does not import:",
                     *format_error(self.fn.load_error))
        else:
            self.say(f"[dev] {what} {self.fn.name} ({self.fn.config.handler}) from "
                     f"{self.fn.folder} in {ms:.0f} ms")
        if self.feed is not None:
            self.say(f"[dev] running {self.feed.source}")
            self.say(*format_result(await self.fn.invoke(self.feed.event)))

    def _sources(self) -> dict[str, int]:
        """mtime of every watched file (what a save made before the watcher ran would change)."""
        keep = SourceFilter()
        return {str(f): f.stat().st_mtime_ns for f in Path(self.fn.folder).rglob("*")
                if f.is_file() and keep(Change.modified, str(f))}

    async def _watch(self, stop: asyncio.Event, before: dict[str, int]) -> None:
        changes_of = awatch(self.fn.folder, watch_filter=SourceFilter(), stop_event=stop,
                            debounce=400).__aiter__()
        pending = asyncio.ensure_future(changes_of.__anext__())
        for _ in range(3):  # the generator runs up to its first wait: the watcher now exists
            await asyncio.sleep(0)
        if self._sources() != before:  # saved while the first load ran, before the watcher
            self.say("[dev] changed while loading: reloading")
            await self._load("reloaded")
        try:
            while True:
                try:
                    changes = await pending
                except StopAsyncIteration:
                    return
                names = sorted({Path(p).relative_to(self.fn.folder).as_posix()
                                for _c, p in changes})
                self.say(f"[dev] {', '.join(names)} changed: reloading")
                await self._load("reloaded")
                pending = asyncio.ensure_future(changes_of.__anext__())
        finally:
            pending.cancel()

    @contextlib.contextmanager
    def _listen(self) -> Iterator[socket.socket | None]:
        """The HTTP socket, bound before the banner so that port 0 can say which port it got."""
        if self.port is None:
            yield None
            return
        try:
            sock = socket.create_server((self.host, self.port), backlog=128)
        except OSError as exc:
            raise SquallError(f"cannot listen on {self.host}:{self.port}: {exc}",
                              code="port_unavailable") from None
        with sock:
            port = sock.getsockname()[1]
            self.say(f"[dev] serving http://{self.host}:{port}/fn/{self.fn.name}")
            yield sock

    async def _serve(self, sock: socket.socket, stop: asyncio.Event) -> None:
        server = _Server(uvicorn.Config(HttpApp(self), loop="none", http="h11",
                                        lifespan="off", log_level="warning", access_log=False))
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        await stop.wait()
        server.should_exit = True
        await task


class _Server(uvicorn.Server):
    """The dev command owns SIGINT/SIGTERM (they set its stop event), not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpApp:
    """``/fn/NAME[:qualifier][/path]`` -> the local function, as the platform's gateway does
    (the qualifier is accepted and ignored: there is one local version)."""

    def __init__(self, dev: Dev) -> None:
        self.dev = dev

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        rid = new_request_id()
        status, headers, body = await self._serve(scope, receive, rid)
        headers.append((b"x-squall-request-id", rid.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.dev.say(f"[dev] {scope['method']} {scope['path']} -> {status}")

    async def _serve(self, scope: Scope, receive: Receive,
                     rid: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        fn = self.dev.fn
        target = split_path(scope["path"])
        segment, _, sub = (target[1] if target else "").partition("/")
        if segment.partition(":")[0] != fn.name:
            return _error(404, "function_not_found",
                          f"this is `squall dev` of {fn.name}: use /fn/{fn.name}/...")
        try:
            body = await read_limited(receive_chunks(receive), MAX_BODY, expects_continue=(
                expects_continue(scope["headers"])), declared=next(
                    (v.decode("latin-1") for k, v in scope["headers"]
                     if k == b"content-length"), ""))
        except PayloadTooLarge as exc:
            return _error(413, exc.code, exc.message)
        client = scope.get("client") or ("", 0)
        event = build_event(function=fn.name, method=scope["method"], path="/" + sub,
                            raw_query=scope.get("query_string", b"").decode("latin-1"),
                            headers=scope["headers"], body=body, source_ip=client[0],
                            request_id=rid, stage_path=scope["path"])
        result = await fn.invoke(event, rid)
        self.dev.say(*format_result(result))
        if result.error is not None:
            status = 504 if result.error.get("errorType") == "TimeoutError" else 500
            return status, [(b"content-type", b"application/json"),
                            (b"x-squall-function-error", b"Unhandled")], \
                json.dumps(result.error).encode()
        try:
            return to_response(result.value)
        except (TypeError, ValueError) as exc:
            return 502, [(b"content-type", b"application/json")], json.dumps({
                "errorType": "Runtime.InvalidResponse",
                "errorMessage": f"the handler's response cannot be sent: {exc}",
                "stackTrace": []}).encode()


def _error(status: int, code: str, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return status, [(b"content-type", b"application/json")], json.dumps(
        {"error": {"code": code, "message": message}}).encode()
