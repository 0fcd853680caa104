"""The platform's side of the launcher (runtime/launcher.py): Node and ``provided`` instances.

A Python zygote forks instances that already hold the imported handler; Node cannot fork and a
``provided`` bootstrap is any executable, so here each instance is a fresh runtime process,
forked by the launcher inside the version's sandbox (same namespaces, uid, seccomp and its own
cgroup as a Python instance) and exec'd. What makes its cold start fast is a **spare**: one
instance per version started ahead, placed in its cgroup, its handler loaded, waiting on /next.
``fork`` hands the spare over (no process start on the request's path) and starts the next
spare in the background; when two cold starts come at once the second starts its own.

Deploy validation is the first spare: the version is only accepted once a runtime process has
reached /next. A bootstrap that is not executable, exits first, posts /runtime/init/error, or
does not get there within the init timeout fails the deploy with its output (HandlerError).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from squall.agent.instance import CRED, Instance, InstanceDied, _resolve
from squall.agent.runtimes.commands import exec_spec
from squall.agent.runtimes.instance import RuntimeApiInstance
from squall.agent.sandbox.api import Sandbox
from squall.agent.zygote import Zygote, ZygoteConfig
from squall.errors import HandlerError, SandboxError
from squall.runtime.protocol import HEADER, ProtocolError, decode, encode
from squall.runtime_api.server import InitFailed

log = logging.getLogger("squall.runtimes")

LAUNCHER_BOOTSTRAP = (
    "import sys,json;c=json.loads(sys.argv[1]);sys.path[:0]=c['boot'];"
    "from squall.runtime.launcher import main;main()"
)
# Lambda gives a runtime 10 s to initialise; a longer function timeout extends it here.
MIN_INIT_TIMEOUT_S = 10.0
REFILL_DELAY_S = 0.1


class ExecZygote(Zygote):
    """The launcher of one version plus its spare instance. Same life cycle as a Zygote."""

    bootstrap = LAUNCHER_BOOTSTRAP

    def __init__(self, key: str, sandbox: Sandbox, cfg: ZygoteConfig, code_dir: Path,
                 runtime: str, kind: str) -> None:
        super().__init__(key, sandbox, cfg, code_dir)
        self.runtime = runtime
        self.kind = kind
        self.init_timeout_s = max(MIN_INIT_TIMEOUT_S, sandbox.spec.limits.timeout_s)
        self._spare: asyncio.Future[RuntimeApiInstance] | None = None

    async def start(self, timeout_s: float = 120.0) -> None:
        """Start the launcher, then the first instance; raises HandlerError (deploy fails)
        when the runtime cannot get to its first /next."""
        t0 = time.perf_counter()
        spec = exec_spec(self.kind, self.runtime, self.sandbox, self.code_dir, self.cfg.handler,
                         self.cfg.dep_paths, self.cfg.static,
                         int(self.cfg.static.get("memory_limit_in_mb", 128)))
        self.cfg = dataclasses.replace(self.cfg, static={**self.cfg.static, "exec": spec})
        await super().start(timeout_s)
        launcher_ms = self.init_ms
        t1 = time.perf_counter()
        try:
            first = await self._spawn()
        except BaseException:
            await self.stop()
            raise
        done: asyncio.Future[RuntimeApiInstance] = asyncio.get_running_loop().create_future()
        done.set_result(first)
        self._spare = done
        # sandbox = bwrap + launcher start; "zygote" = the runtime's own init (handler loaded)
        self.init_ms = (time.perf_counter() - t1) * 1000.0
        self.start_ms = (time.perf_counter() - t0) * 1000.0
        log.debug("%s: launcher %.1f ms, first runtime %.1f ms", self.key, launcher_ms,
                  self.init_ms)

    async def fork(self, instance_id: str, concurrency: int,
                   on_exit: Callable[[Instance], None]) -> Instance:
        """Hand over the spare (or start an instance now) and start the next spare.
        ``instance_id`` is not used: a spare was placed in its cgroup under its own id."""
        if self.dead or self._ctrl is None:
            raise SandboxError(f"launcher {self.key} is not running")
        spare, self._spare = self._spare, None
        inst: RuntimeApiInstance | None = None
        if spare is not None:
            try:
                inst = await spare  # when still starting, it is still the nearest to ready
            except (HandlerError, SandboxError, InstanceDied, OSError, TimeoutError) as exc:
                log.warning("spare instance of %s failed to start: %s", self.key, exc)
            if inst is not None and inst.dead:
                await self._discard(inst)
                inst = None
            if inst is not None:
                inst.from_spare = True
        if inst is None:
            inst = await self._spawn()
        # The next spare starts when this instance has answered its first request, or after
        # REFILL_DELAY_S (a prewarm takes spares without a request): starting both at once
        # would slow this cold start down, they share the CPUs.
        handle = asyncio.get_running_loop().call_later(REFILL_DELAY_S, self._refill)

        def refill_now() -> None:
            handle.cancel()
            self._refill()

        inst.after_first = refill_now
        inst.on_exit = on_exit
        return inst

    def _refill(self) -> None:
        if self._spare is not None or self.dead:
            return
        task = asyncio.get_running_loop().create_task(self._spawn())
        # a spare nobody takes may fail quietly (it is logged when taken, or at stop)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._spare = task

    async def _spawn(self) -> RuntimeApiInstance:
        """One runtime process: fork it in the launcher, place it, wait for its first /next."""
        if self._ctrl is None:
            raise SandboxError(f"launcher {self.key} is not running")
        iid = uuid.uuid4().hex[:12]
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        log_r, log_w = os.pipe2(os.O_CLOEXEC)
        try:
            frame = encode({"t": "fork", "id": iid, "harden": self.sandbox.harden_opts()})
            fds = array.array("i", [child.fileno(), log_w])
            async with self._fork_lock:
                self._ctrl.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except OSError as exc:
            parent.close()
            os.close(log_r)
            self.dead = True
            raise SandboxError(f"launcher {self.key} is gone: {exc}") from exc
        finally:
            child.close()
            os.close(log_w)
        try:
            pid, listener = await _receive_hello(parent, wait_s=10.0)
        except BaseException:
            parent.close()
            os.close(log_r)
            raise
        inst = RuntimeApiInstance(iid, self.key, parent, pid, listener, log_r,
                                  str(self.cfg.static.get("invoked_function_arn", "")))
        try:
            self.sandbox.place(iid, pid)
            await inst.attach()
            parent.sendall(encode({"t": "go"}))
            await self._until_ready(inst)
        except BaseException:
            await self._discard(inst)
            raise
        return inst

    async def _until_ready(self, inst: RuntimeApiInstance) -> None:
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()
        inst.on_exit = lambda _i: _resolve(exited)
        try:
            await asyncio.wait({inst.api.ready, exited}, timeout=self.init_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            inst.on_exit = lambda _i: None
        ready = inst.api.ready
        if ready.done() and not ready.cancelled() and ready.exception() is None:
            return
        inst._drain()
        output = "\n".join(inst.init_lines[-40:])
        label = "bootstrap" if self.kind == "provided" else "Node runtime"
        if ready.done() and isinstance(ready.exception(), InitFailed):
            err = ready.exception()
            assert isinstance(err, InitFailed)
            trace = "\n".join(err.error.get("stackTrace", []))
            raise HandlerError(
                f"the {label} reported an init error: {err.error.get('errorType')}: "
                f"{err.error.get('errorMessage')}\n{output}".rstrip(),
                details={"errorType": err.error.get("errorType"), "stackTrace": trace,
                         "output": output})
        if exited.done() or inst.dead:
            raise HandlerError(f"the {label} exited before calling /runtime/invocation/next"
                               f"\n{output}".rstrip(), details={"output": output})
        raise HandlerError(f"the {label} did not call /runtime/invocation/next within "
                           f"{self.init_timeout_s:g} s\n{output}".rstrip(),
                           details={"output": output})

    async def stop(self, grace_s: float = 2.0) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            if not spare.done():
                spare.cancel()
            with contextlib.suppress(BaseException):
                inst = await spare
                await self._discard(inst)
        await super().stop(grace_s)


async def _receive_hello(sock: socket.socket, wait_s: float) -> tuple[int, socket.socket]:
    """The instance's hello: its host pid (SCM_CREDENTIALS, as for a Python instance) and the
    listening socket it made for its Runtime API (SCM_RIGHTS)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), _resolve, ready)
    try:
        await asyncio.wait_for(ready, wait_s)
    finally:
        loop.remove_reader(sock.fileno())
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(
        4096, socket.CMSG_SPACE(CRED.size) + socket.CMSG_SPACE(fds.itemsize))
    if not data:
        raise InstanceDied("the runtime process exited before saying hello")
    pid = -1
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = CRED.unpack(payload[: CRED.size])[0]
        elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    (length,) = HEADER.unpack(data[: HEADER.size])
    msg = decode(data[HEADER.size : HEADER.size + length])
    if msg.get("t") != "hello" or pid <= 0 or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ProtocolError("the runtime process did not start with a credentialed hello")
    listener = socket.socket(fileno=fds[0])
    listener.setblocking(False)
    return pid, listener
