"""The platform's side of a zygote: start it inside its sandbox, ask it to fork instances."""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

import squall
from squall.agent.instance import Instance, receive_hello
from squall.agent.sandbox.api import Sandbox
from squall.agent.sandbox.stage import SETUP_FAILED
from squall.errors import HandlerError, SandboxError
from squall.runtime.protocol import HEADER, ProtocolError, decode, encode

log = logging.getLogger("squall.zygote")

# After a spare is handed over, the next one is forked when the taken instance has answered its
# first request, or after this long if it has not (a prewarm takes instances without requests).
REFILL_DELAY_S = 0.1

# The runtime needs only the squall package (for squall.runtime) and msgpack.
RUNTIME_PATHS = sorted({Path(squall.__file__).parent.parent, Path(msgpack.__file__).parent.parent})

BOOTSTRAP = (
    "import sys,json;c=json.loads(sys.argv[1]);sys.path[:0]=c['boot'];"
    "from squall.runtime.zygote import main;main()"
)


@dataclass(frozen=True)
class ZygoteConfig:
    handler: str
    style: str
    static: dict[str, Any]          # context fields: function_name, function_version, ...
    dep_paths: list[Path] = field(default_factory=list)


class Zygote:
    """One zygote process. ``start`` once; ``fork`` many times; ``stop`` when the version goes.

    A zygote that dies is ``dead``; its owner starts a new one on the next demand.
    """

    # what runs in the sandbox (squall.agent.runtimes swaps in the launcher of other runtimes)
    bootstrap = BOOTSTRAP

    def __init__(self, key: str, sandbox: Sandbox, cfg: ZygoteConfig, code_dir: Path) -> None:
        self.key = key
        self.sandbox = sandbox
        self.cfg = cfg
        self.code_dir = code_dir
        self.init_ms = 0.0
        self.start_ms = 0.0
        self.dead = False
        self._proc: asyncio.subprocess.Process | None = None
        self._ctrl: socket.socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._fork_lock = asyncio.Lock()
        self._ctrl_writer: asyncio.StreamWriter | None = None
        self.stderr_tail: list[str] = []
        # Set by the agent for a Python zygote: the thread that moves it into the next instance's
        # cgroup between forks (Sandbox.arm), so each child is born under its limits and the
        # cold path has no cgroup migration. None: place() migrates each instance.
        self.arm_executor: Executor | None = None
        self._arming: asyncio.Future[None] | None = None
        self._runtime_pid: int | None = None
        self._acks: dict[str, asyncio.Future[None]] = {}  # fork requests the zygote has not done
        # One instance forked ahead (set by the agent: Settings.spares): hardened, in its own
        # cgroup, said hello, never served; the next fork hands it over and makes the next.
        self.spares = False
        self._spare: asyncio.Future[Any] | None = None  # of an Instance (of its subclass)
        self._refill_at: asyncio.TimerHandle | None = None

    async def start(self, timeout_s: float = 120.0) -> None:
        """Start the zygote and wait until it has imported the handler.

        Raises HandlerError with the traceback when the import fails (this is deploy validation).
        """
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.sandbox.prepare_zygote)  # its cgroup: mkdir
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mp = self.sandbox.map_path
        config = {
            "boot": [mp(p) for p in RUNTIME_PATHS],
            "paths": [mp(self.code_dir), *(mp(p) for p in self.cfg.dep_paths)],
            "code_dir": mp(self.code_dir),
            "handler": self.cfg.handler,
            "style": self.cfg.style,
            "static": self.cfg.static,
            "ctrl_fd": child.fileno(),
            "harden": self.sandbox.zygote_harden(),
        }
        argv = [sys.executable, "-I", "-S", "-c", self.bootstrap, json.dumps(config)]
        argv = self.sandbox.zygote_argv(argv, [child.fileno()])
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, pass_fds=[child.fileno()], stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                env=self.sandbox_env(), start_new_session=True,
                # as root: join the zygote's cgroup, stage paths, become the sandbox's uid
                preexec_fn=self.sandbox.zygote_launch(),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            parent.close()
            raise SandboxError(f"cannot start zygote: {exc}") from exc
        finally:
            child.close()
        self._ctrl = parent
        self._tasks.append(loop.create_task(self._drain_stderr()))
        # Keep the writer referenced: a collected StreamWriter closes the transport under us.
        reader, self._ctrl_writer = await asyncio.open_unix_connection(sock=parent.dup())
        try:
            first = await asyncio.wait_for(self._read(reader), timeout_s)
        except (TimeoutError, asyncio.IncompleteReadError, ProtocolError) as exc:
            await self.stop()
            detail = "\n".join(self.stderr_tail[-20:])
            if self._proc is not None and self._proc.returncode == SETUP_FAILED:
                raise SandboxError(f"cannot start the sandbox of {self.key}\n{detail}") from None
            reason = "timed out" if isinstance(exc, TimeoutError) else "exited"
            raise HandlerError(
                f"the function's runtime {reason} while importing the handler\n{detail}".rstrip()
            ) from None
        if first["t"] == "sandbox_error":
            await self.stop()
            raise SandboxError(f"{self.key}: {first.get('m')}")
        if first["t"] == "init_error":
            await self.stop()
            err = first["e"]
            trace = "".join(err.get("stackTrace", []))
            raise HandlerError(
                f"cannot import handler '{self.cfg.handler}': "
                f"{err.get('errorType')}: {err.get('errorMessage')}",
                details={"errorType": err.get("errorType"), "stackTrace": trace},
            )
        self.init_ms = float(first.get("init_ms", 0.0))
        self.start_ms = (time.perf_counter() - t0) * 1000.0
        self._tasks.append(loop.create_task(self._watch(reader)))
        self._rearm()
        if self.spares:
            self._refill()

    @property
    def pid(self) -> int | None:
        """The process we started: the zygote itself, or the sandbox's launcher (bwrap)."""
        return None if self._proc is None else self._proc.pid

    @property
    def runtime_pid(self) -> int | None:
        """The host pid of the Python zygote: below the sandbox's own processes (bwrap, then
        bwrap's init in the new pid namespace), each of which has exactly one child."""
        pid = self.pid
        for _ in range(4):
            if pid is None or _proc_text(f"/proc/{pid}/comm").strip() != "bwrap":
                break
            children = _proc_text(f"/proc/{pid}/task/{pid}/children").split()
            if len(children) != 1:
                break
            pid = int(children[0])
        return pid

    def sandbox_env(self) -> dict[str, str]:
        return self.sandbox.zygote_env()

    async def _read(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
        return decode(await reader.readexactly(length))

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                msg = await self._read(reader)  # "forked" acknowledgements
                ack = self._acks.pop(str(msg.get("id", "")), None)
                if ack is not None and not ack.done():
                    ack.set_result(None)
        except (asyncio.IncompleteReadError, ConnectionError, ProtocolError, OSError) as exc:
            # EOF: the zygote died
            if not self.dead:  # not a stop we asked for
                log.warning("zygote %s exited unexpectedly (%r)", self.key, exc)
            self.dead = True
            for ack in self._acks.values():
                if not ack.done():
                    ack.set_exception(SandboxError(f"zygote {self.key} exited"))
            self._acks.clear()

    async def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for raw in self._proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.stderr_tail = [*self.stderr_tail[-49:], line]
            log.debug("[%s] %s", self.key, line)

    async def fork(self, instance_id: str, concurrency: int,
                   on_exit: Callable[[Instance], None]) -> Instance:
        """An instance ready to invoke: the spare when there is one (``instance_id`` is then not
        used: the spare was placed in its cgroup under its own id), else one forked now."""
        if self.dead or self._ctrl is None:
            raise SandboxError(f"zygote {self.key} is not running")
        inst = await self._take_spare()
        if inst is None:
            inst = await self._fork(instance_id, on_exit)
        else:
            inst.on_exit = on_exit
        inst.concurrency = concurrency
        if self.spares:
            # The next spare is forked once this instance has answered its first request (or
            # after REFILL_DELAY_S, for a prewarm): both at once would slow this cold start
            # down, they share the CPUs.
            if self._refill_at is not None:
                self._refill_at.cancel()
            self._refill_at = asyncio.get_running_loop().call_later(REFILL_DELAY_S,
                                                                    self._refill)
            inst.after_first = self._refill
        return inst

    async def _take_spare(self) -> Instance | None:
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        try:
            inst: Instance = await asyncio.shield(spare)  # still forking: nearest to ready
        except Exception as exc:
            log.warning("spare instance of %s failed to start: %r", self.key, exc)
            return None
        if inst.dead:
            await self._discard(inst)
            return None
        inst.from_spare = True
        return inst

    def _refill(self) -> None:
        """Fork the next spare in the background, unless one is there or on its way."""
        if self._refill_at is not None:
            self._refill_at.cancel()
            self._refill_at = None
        if not self.spares or self.dead or self._spare is not None:
            return
        fut = asyncio.get_running_loop().create_task(
            self._fork(uuid.uuid4().hex[:12], _no_exit))
        # a spare nobody takes may fail quietly (it is logged when taken)
        fut.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._spare = fut

    @property
    def spare_pid(self) -> int | None:
        spare = self._spare
        if spare is None or not spare.done() or spare.cancelled() or spare.exception():
            return None
        inst = spare.result()
        return None if inst.dead else inst.pid

    async def _discard(self, inst: Instance) -> None:
        """Stop an instance no pool owns and release its cgroup."""
        await inst.stop(0.5)
        await asyncio.get_running_loop().run_in_executor(None, self.sandbox.release, inst.id)

    async def _fork(self, instance_id: str, on_exit: Callable[[Instance], None]) -> Instance:
        """Fork one instance, place it under its limits, and return it ready to invoke."""
        if self.dead or self._ctrl is None:
            raise SandboxError(f"zygote {self.key} is not running")
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        try:
            await self._request_fork(instance_id, child)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        try:
            pid = await receive_hello(parent, wait_s=10.0)
        except BaseException:
            parent.close()
            raise
        self.sandbox.place(instance_id, pid)
        inst = Instance(instance_id, self.key, parent, pid, 1, on_exit)
        await inst.attach()
        return inst

    async def _request_fork(self, instance_id: str, child: socket.socket) -> None:
        """Send one fork request and wait until the zygote has forked (its acknowledgement):
        from then on the child's cgroups are fixed, so the zygote may move on to the next
        instance's group while the child hardens itself. One request at a time, never while the
        zygote is being moved (a child forked mid-move would be born across two groups)."""
        assert self._ctrl is not None
        frame = encode({"t": "fork", "id": instance_id, "harden": self.sandbox.harden_opts()})
        fds = array.array("i", [child.fileno()])
        async with self._fork_lock:
            await self._armed()
            ack = asyncio.get_running_loop().create_future()
            self._acks[instance_id] = ack
            try:
                self._ctrl.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            except OSError as exc:
                self._acks.pop(instance_id, None)
                self.dead = True
                raise SandboxError(f"zygote {self.key} is gone: {exc}") from exc
            try:
                await asyncio.wait_for(ack, 10.0)
            finally:
                self._acks.pop(instance_id, None)
            self._rearm()

    def _rearm(self) -> None:
        """Start moving the zygote into the next instance's cgroup (off the event loop)."""
        if self.arm_executor is None or self.dead:
            return
        if self._runtime_pid is None:
            self._runtime_pid = self.runtime_pid
        pid = self._runtime_pid
        if pid is None:
            return
        fut = asyncio.get_running_loop().run_in_executor(self.arm_executor, self.sandbox.arm, pid)
        fut.add_done_callback(self._arm_done)
        self._arming = fut

    def _arm_done(self, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is not None:  # place() migrates instead
            log.warning("zygote %s: cannot arm the next instance's cgroup: %r", self.key,
                        fut.exception())

    async def _armed(self) -> None:
        """Wait for the move started by ``_rearm`` (bounded: one cgroup migration)."""
        if self._arming is not None:
            # shielded: a cancelled caller must not let the next fork run while the move does
            with contextlib.suppress(Exception):
                await asyncio.shield(self._arming)

    async def stop(self, grace_s: float = 2.0) -> None:
        """TERM, wait ``grace_s``, KILL. Harmless when already stopped."""
        self.dead = True
        if self._refill_at is not None:
            self._refill_at.cancel()
        spare, self._spare = self._spare, None
        if spare is not None:  # let a fork in flight finish (bounded), then stop the spare
            with contextlib.suppress(Exception):
                await self._discard(await asyncio.shield(spare))
        await self._armed()  # the sandbox may be destroyed next: no move may still run then
        if self._ctrl is not None:
            self._ctrl.close()
            self._ctrl = None
        if self._ctrl_writer is not None:
            self._ctrl_writer.close()
            self._ctrl_writer = None
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


def _no_exit(_inst: Instance) -> None:
    """A spare's exit before it is handed over: noticed (``dead``) when it is taken."""


def _proc_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
