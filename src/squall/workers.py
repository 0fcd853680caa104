"""``squall up --workers N``: N gateway processes serve one data dir, so the data plane is not
one Python event loop.

The process the user started is worker 0. It takes the data dir's lock, opens (and migrates)
the store, takes back what the previous run left running, and only then starts workers 1..N-1:
fresh interpreters (``python -c 'from squall.workers import main; main()'``) that read their
settings from a pipe (never the environment or the command line: they may hold the master
key). Every worker listens on the same port with SO_REUSEPORT, so the kernel
spreads connections over them, and serves every route: sync and async invocations, the control
API, Lambda's API. Each has its own agent, instance pools and event loop; async events go to
whichever worker claims them from the shared events table (a claim is one SQLite write
transaction, so no event is taken twice). What one worker caches (functions, keys, tenants,
secrets, aliases, triggers) follows what another writes through the store's change feed
(``squall.store.changes``). Worker 0 alone serves the S3 listener; schedules and connector
triggers run where their store lease is held. Limits that must hold across the workers take
cross-process tokens (``squall.tokens``).

Worker 0 watches the others: one that exits unasked is started again (after 1 s, doubling to
30 s while it keeps failing); stopping worker 0 (SIGTERM, Ctrl-C) stops them first, each
finishing its in-flight requests. A worker asks the kernel for SIGTERM when worker 0 dies
(``PR_SET_PDEATHSIG``), so a kill -9 of worker 0 leaves no worker serving behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from squall.config import Prices, Settings
from squall.store import changes
from squall.store.db import Database
from squall.tokens import SharedLimits

log = logging.getLogger("squall.workers")
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
PR_SET_PDEATHSIG = 1
FOLLOW_WAIT_S = 2.0  # the longest a control-plane write waits for the other workers
FOLLOW_POLL_S = 0.005
SEEN_ANY = 1 << 62  # a worker starting (it loads everything) or gone: waits for nothing
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def encode(settings: Settings, index: int) -> bytes:
    """The settings of worker ``index`` as JSON (sent through a pipe, never logged)."""
    data = dataclasses.asdict(settings)
    data["data_dir"] = str(settings.data_dir)
    data["worker_index"] = index
    return json.dumps(data).encode()


def decode(raw: bytes) -> Settings:
    data: dict[str, Any] = json.loads(raw)
    known = {f.name for f in dataclasses.fields(Settings)}
    settings = Settings(**{k: v for k, v in data.items() if k in known})
    settings.data_dir = Path(settings.data_dir)
    settings.prices = Prices(**data.get("prices", {}))
    return settings


class Follow:
    """Read your writes across workers. Each worker publishes how far it has followed the
    store's change feed (``seen``, after each refresh); a control-plane write (a deploy, a key,
    an alias ...) answers only once every other worker has followed it, so a deploy answered
    on one worker is served by the next request whichever worker takes it. A worker that
    does not catch up within ``FOLLOW_WAIT_S`` is waited for no longer (it is logged)."""

    def __init__(self, db: Database, shared: SharedLimits) -> None:
        self.db = db
        self.tally = shared.tally("store", "seen")
        # starting: it reads everything after this; worker 0 marks the others so too, until
        # they have started
        for index in range(shared.workers) if shared.index == 0 else [shared.index]:
            self.tally.set_for(index, SEEN_ANY)

    def seen(self, total: int) -> None:
        self.tally.set(total)

    def gone(self, index: int) -> None:
        self.tally.set_for(index, SEEN_ANY)

    async def wait(self) -> None:
        target = await self.db.run(changes.total)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FOLLOW_WAIT_S
        while self.tally.lowest(exclude=self.tally.index) < target:
            if loop.time() >= deadline:
                log.warning("a worker has not followed the store's change %d within %.0f s",
                            target, FOLLOW_WAIT_S)
                return
            await asyncio.sleep(FOLLOW_POLL_S)


class ReadYourWrites:
    """The ASGI wrapper that holds a successful control-plane write's answer for ``Follow``.
    Invocations (``/fn/``, ``.../invocations``: async submits, Lambda's Invoke) and webhooks
    pass as they are: they change nothing another worker caches."""

    def __init__(self, app: Any, follow: Follow) -> None:
        self.app = app
        self.follow = follow

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] in _READS or Peers.local(scope) \
                or path.startswith("/fn/") \
                or path.rstrip("/").endswith("/invocations") or "/hooks/" in path:
            await self.app(scope, receive, send)
            return

        async def send_followed(message: Any) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                await self.follow.wait()
            await send(message)

        await self.app(scope, receive, send_followed)


class MetricsShare:
    """``/metrics`` of the whole platform from whichever worker is scraped: every second each
    worker writes its own exposition to ``<limits>/metrics-<index>.prom`` (a rename: a reader
    never sees half a file); a scrape merges the others' with its own
    (``squall.observability.metrics.merge``), so their counters are at most a second old."""

    EVERY_S = 1.0

    def __init__(self, root: Path, index: int, workers: int,
                 render: Callable[[], bytes]) -> None:
        self.root = root
        self.index = index
        self.workers = workers
        self.render = render

    def peers(self) -> list[str]:
        out = []
        for index in range(self.workers):
            if index != self.index:
                with contextlib.suppress(FileNotFoundError):
                    out.append((self.root / f"metrics-{index}.prom").read_text())
        return out

    async def run(self) -> None:
        path = self.root / f"metrics-{self.index}.prom"
        tmp = path.with_suffix(".tmp")
        while True:
            tmp.write_bytes(self.render())
            tmp.replace(path)
            await asyncio.sleep(self.EVERY_S)


class Peers:
    """The other workers, for the few answers that are each worker's own: a function's
    instances, ``scale``, a tenant's usage. Every worker also listens on a unix socket,
    ``<limits>/worker-<index>.sock`` (mode 0600 in a 0700 folder); the worker a client reached
    asks the others there with the client's own request (its key is checked again by each)
    and merges their answers. A request that came through a unix socket is answered locally
    (``local``), so a question never travels twice."""

    TIMEOUT_S = 10.0

    def __init__(self, root: Path, index: int, workers: int, tls: bool) -> None:
        self.root = root
        self.index = index
        self.paths = [root / f"worker-{i}.sock" for i in range(workers) if i != index]
        self.scheme = "https" if tls else "http"

    def listener(self) -> socket.socket | None:
        """This worker's unix socket (an old one of a dead process is replaced); None, with
        a warning, where it cannot be made (a data dir path too long for a socket's name):
        then each worker answers those questions for itself."""
        path = self.root / f"worker-{self.index}.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            log.warning("no unix socket at %s (%s): instances, scale and usage show this "
                        "worker's share only", path, exc)
            return None
        path.chmod(0o600)
        sock.listen(128)
        return sock

    @staticmethod
    def local(scope: Any) -> bool:
        """The request came from another worker: uvicorn gives a unix socket's server address
        no port (``(path, None)``, or None), a TCP listener always has one."""
        server = scope.get("server")
        return server is None or server[1] is None

    async def each(self, method: str, path: str, authorization: str | None,
                   body: bytes = b"") -> list[Any]:
        """The other workers' JSON answers to the request (one that fails is left out)."""
        import httpx

        async def ask(sock: Path) -> Any:
            transport = httpx.AsyncHTTPTransport(uds=str(sock), verify=False)
            async with httpx.AsyncClient(transport=transport, timeout=self.TIMEOUT_S,
                                         base_url=f"{self.scheme}://worker") as client:
                headers = {"authorization": authorization} if authorization else {}
                r = await client.request(method, path, headers=headers, content=body)
                r.raise_for_status()
                return r.json()

        answers = await asyncio.gather(*(ask(p) for p in self.paths), return_exceptions=True)
        out = []
        for sock, answer in zip(self.paths, answers, strict=True):
            if isinstance(answer, BaseException):
                log.warning("worker at %s did not answer %s %s: %s", sock.name, method, path,
                            answer)
            else:
                out.append(answer)
        return out


async def ask_others(peers: Peers | None, request: Any, body: bytes = b"") -> list[Any]:
    """The other workers' answers to this request (none with one worker, or when it came
    from another worker)."""
    if peers is None or Peers.local(request.scope):
        return []
    query = request.url.query
    return await peers.each(request.method, request.url.path + (f"?{query}" if query else ""),
                            request.headers.get("authorization"), body)


class Workers:
    """Worker 0's supervisor of workers 1..N-1 (``start`` once the store is ready)."""

    def __init__(self, settings: Settings, follow: Follow | None = None) -> None:
        self.settings = settings
        self.follow = follow
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for index in range(1, self.settings.workers):
            self._tasks.append(asyncio.get_running_loop().create_task(
                self._keep(index), name=f"worker-{index}"))

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from squall.workers import main; main()",
            stdin=asyncio.subprocess.PIPE)
        assert proc.stdin is not None
        proc.stdin.write(encode(self.settings, index))
        proc.stdin.close()
        return proc

    async def _keep(self, index: int) -> None:
        """Run worker ``index``; start it again when it exits unasked."""
        delay = RESTART_FIRST_S
        loop = asyncio.get_running_loop()
        while not self._closing:
            proc = self.procs[index] = await self._spawn(index)
            started = loop.time()
            code = await proc.wait()
            if loop.time() - started > RESTART_MAX_S * 2:  # it had been serving: start afresh
                delay = RESTART_FIRST_S
            if self.follow is not None:
                self.follow.gone(index)
            if self._closing:
                return
            log.warning("worker %d (pid %d) exited with %s; starting it again in %.0f s",
                        index, proc.pid, code, delay)
            self.restarts += 1
            await asyncio.sleep(delay)
            delay = min(RESTART_MAX_S, delay * 2)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM every worker, wait up to ``grace_s`` (+5 s) for each, then SIGKILL."""
        self._closing = True
        procs = [p for p in self.procs.values() if p.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), grace_s + 5)
            except TimeoutError:
                log.warning("worker pid %d did not stop in time: killed", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when worker 0 dies (the kernel's promise, Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request took effect
        sys.exit(1)


def main() -> None:
    """A worker's entry point: settings from stdin, then the same ``squall.server.run``."""
    parent = os.getppid()
    _die_with_parent(parent)
    settings = decode(sys.stdin.buffer.read())
    from squall.server import run

    run(settings)
