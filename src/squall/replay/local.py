"""A function folder run on this machine in the platform's own runtime.

The same parts as on the platform: a zygote (squall.runtime.zygote) imports the handler, an
instance is forked from it and served over the same frame protocol, and the handler receives the
same ``context`` object and error shapes. What differs is the sandbox: ``LocalSandbox`` isolates
nothing and limits nothing (it is the developer's own code on the developer's machine), and:

- the code is the folder itself, read where it is; no bytecode is written beside it;
- dependencies are what is installed in the Python environment running squall (install the
  folder's requirements.txt there);
- ``env`` comes from squall.toml; a ``secret:NAME`` value cannot be opened here, so the variable
  takes its value from the developer's environment variable of the same name, when set;
- the time limit is squall.toml's ``timeout_s``; memory is not limited.

Reloading starts a fresh zygote (fresh imports, no module state carried over), then stops the old.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sysconfig
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from squall.agent.instance import Instance, InstanceDied
from squall.agent.sandbox.api import Limits, SandboxSpec, Usage
from squall.agent.zygote import RUNTIME_PATHS, Zygote, ZygoteConfig
from squall.bundle.spec import FunctionConfig, parse_config
from squall.errors import HandlerError, InvalidConfig
from squall.ids import new_request_id
from squall.tenancy.secrets import references

log = logging.getLogger("squall.replay.local")
LOCAL_VERSION = "$LATEST"
_RUNTIME_FRAME = re.compile(r'"<frozen |importlib[/\\]__init__\.py"|squall[/\\]runtime[/\\]')


@dataclass
class LocalResult:
    """One local invocation: the handler's value, or Lambda's error shape, and its log lines."""

    request_id: str
    value: Any = None
    error: dict[str, Any] | None = None
    logs: list[str] = field(default_factory=list)
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class LocalSandbox:
    """The Sandbox contract (squall.agent.sandbox.api) with nothing in it: no namespaces, no
    cgroup, no uid change, no seccomp. Only for ``squall dev`` and ``squall replay --local``."""

    backend = "local"

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec

    def zygote_argv(self, argv: list[str], pass_fds: list[int]) -> list[str]:
        # -B: no __pycache__ beside the developer's files; -I already ignores PYTHON* variables.
        return [argv[0], "-B", *argv[1:]]

    def map_path(self, host_path: str | os.PathLike[str]) -> str:
        return str(host_path)

    def harden_opts(self) -> dict[str, Any]:
        return {}

    def zygote_env(self) -> dict[str, str]:
        return dict(self.spec.env)

    def zygote_harden(self) -> dict[str, Any]:
        return {}

    def prepare_zygote(self) -> None:
        return None

    def zygote_launch(self) -> Callable[[], None] | None:
        return None

    def prepare(self) -> None:
        return None

    def arm(self, zygote_pid: int) -> None:
        return None

    def place(self, instance_id: str, pid: int) -> None:
        return None

    def usage(self, instance_id: str) -> Usage:
        return Usage()

    def release(self, instance_id: str) -> None:
        return None

    def destroy(self) -> None:
        return None


def read_config(folder: Path) -> FunctionConfig:
    """squall.toml of the folder (defaults without one). Raises InvalidConfig."""
    path = folder / "squall.toml"
    if not path.is_file():
        return FunctionConfig()
    try:
        return parse_config(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidConfig(f"squall.toml is not UTF-8: {exc}") from None


def local_env(name: str, cfg: FunctionConfig, environ: dict[str, str]) -> dict[str, str]:
    """The zygote's environment: the platform's variables, squall.toml's env, and each
    ``secret:NAME`` reference replaced by the developer's own variable of that name if set."""
    env = {"PATH": environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": "C.UTF-8",
           "PYTHONUNBUFFERED": "1", "SQUALL_FUNCTION_NAME": name,
           "SQUALL_FUNCTION_VERSION": LOCAL_VERSION, "AWS_LAMBDA_FUNCTION_NAME": name,
           "AWS_LAMBDA_FUNCTION_VERSION": LOCAL_VERSION,
           "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(cfg.memory_mb), **cfg.env}
    for var in references(cfg.env):
        if var in environ:
            env[var] = environ[var]
        else:
            del env[var]
    return env


def import_error(exc: HandlerError) -> dict[str, Any]:
    """A handler that does not import, as the error every invocation gets until it is fixed;
    the frames of the runtime and of importlib are left out: they are noise to the developer."""
    trace = str(exc.details.get("stackTrace") or "")
    frames = [f for f in re.split(r"(?m)^(?=  File )", trace)
              if f.strip() and not _RUNTIME_FRAME.search(f.partition("\n")[0])]
    return {"errorType": "Runtime.ImportModuleError", "errorMessage": exc.message,
            "stackTrace": frames}


def _site_paths() -> list[Path]:
    """Where the Python running squall installs packages: the function's dependencies."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(Path(paths[k]) for k in ("purelib", "platlib")))


class LocalFunction:
    """A folder's function: ``load`` (again to reload), ``invoke``, ``close``.

    Invocations run one at a time (a local loop has one developer). ``load_error`` is set while
    the code does not import; ``invoke`` then answers with it instead of running anything.
    """

    def __init__(self, folder: Path, *, name: str | None = None,
                 environ: dict[str, str] | None = None) -> None:
        self.folder = folder.resolve()
        self._name = name
        self._environ = dict(os.environ if environ is None else environ)
        self.config = FunctionConfig()
        self.load_error: dict[str, Any] | None = None
        self.loads = 0
        self._zygote: Zygote | None = None
        self._instance: Instance | None = None
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self._name or self.config.name or self.folder.name

    async def load(self) -> float:
        """(Re)read squall.toml and import the handler in a new zygote; returns the ms it took.

        A handler that does not import sets ``load_error`` (not raised: the developer fixes the
        file and the next load clears it). Raises InvalidConfig for a bad squall.toml and
        SandboxError when no runtime process can start at all."""
        t0 = time.perf_counter()
        async with self._lock:
            self.config = read_config(self.folder)
            zygote = await self._start_zygote()
            await self._stop_current()
            self._zygote = zygote
        return (time.perf_counter() - t0) * 1000.0

    async def _start_zygote(self) -> Zygote | None:
        """A new zygote with the handler imported, or None with ``load_error`` set."""
        zygote = Zygote(f"local-{self.name}-{self.loads}", self._sandbox(),
                        self._zygote_config(), self.folder)
        self.loads += 1
        try:
            await zygote.start()
        except HandlerError as exc:
            self.load_error = import_error(exc)
            return None
        self.load_error = None
        return zygote

    def _sandbox(self) -> LocalSandbox:
        return LocalSandbox(SandboxSpec(
            key=f"local-{self.name}", code_dir=self.folder,
            python_paths=[*_site_paths(), *RUNTIME_PATHS],
            env=local_env(self.name, self.config, self._environ),
            limits=Limits(memory_mb=self.config.memory_mb, timeout_s=self.config.timeout_s)))

    def _zygote_config(self) -> ZygoteConfig:
        return ZygoteConfig(
            handler=self.config.handler, style=self.config.style, dep_paths=_site_paths(),
            static={"function_name": self.name, "function_version": LOCAL_VERSION,
                    "memory_limit_in_mb": self.config.memory_mb,
                    "invoked_function_arn": f"arn:squall:lambda:local:local:function:{self.name}",
                    "log_stream_name": f"local-{self.name}",
                    "log_level": self.config.log_level})

    async def invoke(self, event: Any, request_id: str | None = None) -> LocalResult:
        rid = request_id or new_request_id()
        async with self._lock:
            if self._zygote is None or self._zygote.dead:
                # never loaded, its code does not import, or its runtime died: import again
                await self._stop_current()
                self._zygote = await self._start_zygote()
            if self._zygote is None:
                assert self.load_error is not None
                return LocalResult(rid, error=self.load_error)
            inst = self._instance
            if inst is None or inst.dead:
                inst = self._instance = await self._zygote.fork(
                    f"local-{uuid.uuid4().hex[:8]}", self.config.concurrency, lambda _i: None)
            result = await self._run(inst, rid, event)
            if inst.dead or (result.error or {}).get("errorType") == "TimeoutError":
                self._instance = None  # killed or gone: the next invocation forks a new one
                await inst.close()
            return result

    async def _run(self, inst: Instance, rid: str, event: Any) -> LocalResult:
        timeout = self.config.timeout_s
        t0 = time.perf_counter()
        value, error = None, None
        try:
            reply = await asyncio.wait_for(
                inst.invoke(rid, event, time.time() * 1000.0 + timeout * 1000.0, {}), timeout)
            if reply["t"] == "res":
                value = reply.get("v")
            else:
                error = reply.get("e") or {"errorType": "Error", "errorMessage": "unknown"}
        except TimeoutError:
            inst.kill()
            error = {"errorType": "TimeoutError",
                     "errorMessage": f"Task timed out after {timeout:.2f} seconds",
                     "stackTrace": []}
        except InstanceDied:
            error = {"errorType": "Runtime.ExitError",
                     "errorMessage": f"RequestId: {rid} Error: Runtime exited without "
                                     f"providing a reason (the instance process died)",
                     "stackTrace": []}
        return LocalResult(rid, value, error, inst.take_logs(rid),
                           (time.perf_counter() - t0) * 1000.0)

    async def _stop_current(self) -> None:
        inst, zygote = self._instance, self._zygote
        self._instance = self._zygote = None
        if inst is not None:
            with contextlib.suppress(Exception):
                await inst.stop(1.0)
        if zygote is not None:
            await zygote.stop(1.0)

    async def close(self) -> None:
        async with self._lock:
            await self._stop_current()
