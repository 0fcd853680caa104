"""`squall up`: wires the parts together and runs them: startup -> serve -> drain -> shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from squall.agent.node import Agent
from squall.agent.sandbox.api import SandboxBackend
from squall.api import functions as api_functions
from squall.api.errors import HANDLERS
from squall.config import Settings
from squall.deploy import Deployer
from squall.errors import ServiceUnavailable, SquallError
from squall.gateway.app import Gateway
from squall.invoker.invoker import LocalInvoker
from squall.logs import LogSink
from squall.metering.recorder import Recorder
from squall.platform import Platform
from squall.registry import Registry
from squall.store import functions as store_fn
from squall.store.db import Database

log = logging.getLogger("squall")


class _Server(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM after serving, which would kill us before we stop
    the instances; we take the signal as a request to shut down gracefully and exit 0."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for in-flight requests
        else:
            self.should_exit = True


def choose_backend(setting: str) -> tuple[SandboxBackend, list[str]]:
    try:
        from squall.agent.sandbox.detect import choose_backend as detect
    except ImportError:
        from squall.agent.sandbox.process import ProcessBackend

        return ProcessBackend(), ["bubblewrap sandbox not available in this build: "
                                  "functions run as plain processes"]
    return detect(setting)


def lock_data_dir(settings: Settings) -> int:
    """Hold an exclusive lock on the data dir for the life of the process: two platforms on one
    data dir would each run the same queue and triggers. Raises ServiceUnavailable if taken."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.data_dir / "squall.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ServiceUnavailable(
            f"another squall is already running on the data dir {settings.data_dir}; stop it "
            f"or pass a different --data-dir", code="data_dir_locked") from None
    return fd


def build(settings: Settings) -> tuple[Platform, Any]:
    """Create every part and the ASGI app. The database is opened (and migrated) here."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.data_dir / "squall.db")
    db.open()
    backend, warnings = choose_backend(settings.sandbox)
    registry = Registry(db, settings.data_dir)
    agent = Agent(settings, backend)
    recorder = Recorder(db)
    logs = LogSink(db, settings.log_entries_per_function)
    invoker = LocalInvoker(settings, registry, agent, recorder, logs)
    deployer = Deployer(settings, registry, agent)
    platform = Platform(settings=settings, db=db, registry=registry, agent=agent,
                        invoker=invoker, deployer=deployer, recorder=recorder, logs=logs,
                        sandbox_backend=backend.name, sandbox_warnings=warnings)
    routes: list[BaseRoute] = list(api_functions.ROUTES)
    try:
        from squall.api import events as api_events
        from squall.events.service import EventService
    except ImportError:
        log.warning("events package not available: async invocation and triggers are off")
    else:
        platform.events = EventService(settings, db, invoker, registry, logs)
        routes.extend(api_events.ROUTES)
    app = Starlette(routes=routes, exception_handlers=HANDLERS)
    app.state.platform = platform
    return platform, Gateway(app, platform)


async def _startup(platform: Platform) -> None:
    await platform.registry.load()
    overrides = await platform.db.run(store_fn.min_instances_overrides)
    for rec in platform.registry.all():
        minimum = overrides.get((rec.namespace, rec.name), rec.config.min_instances)
        if minimum > 0:
            try:
                await platform.agent.ensure_min(platform.registry.version_spec(rec), minimum)
            except Exception:  # one broken function must not keep the platform down
                log.exception("cannot keep %s warm", rec.name)


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    lock_fd = lock_data_dir(settings)
    platform, app = build(settings)
    for warning in platform.sandbox_warnings:
        log.warning("WARNING: %s", warning)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, loop="none",
                            http="httptools", lifespan="off", log_level="warning",
                            access_log=False, proxy_headers=False,
                            timeout_graceful_shutdown=int(
                                settings.shutdown_grace_s), backlog=4096)
    server = _Server(config)
    try:
        async with asyncio.TaskGroup() as tg:
            background = [tg.create_task(platform.recorder.run()),
                          tg.create_task(platform.logs.run()),
                          tg.create_task(platform.agent.run())]
            await _startup(platform)
            if platform.events is not None:  # after the registry is loaded
                background.append(tg.create_task(platform.events.run()))
            print(f"squall: serving on http://{settings.host}:{settings.port} "
                  f"(data dir {settings.data_dir}, sandbox {platform.sandbox_backend}, "
                  f"pid {os.getpid()})", file=sys.stderr, flush=True)
            if ready is not None:
                ready.set()
            # uvicorn handles SIGINT/SIGTERM: stops accepting, waits for in-flight requests up
            # to the graceful deadline, returns; its signal handlers are restored afterwards.
            await server.serve()
            await platform.agent.shutdown()
            for task in background:
                task.cancel()
    finally:
        close = getattr(platform.agent.backend, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
        with contextlib.suppress(Exception):
            platform.db.close()
        os.close(lock_fd)
    print("squall: stopped", file=sys.stderr, flush=True)


def run(settings: Settings) -> None:
    logging.basicConfig(level=os.environ.get("SQUALL_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvloop

    try:
        uvloop.run(serve(settings))
    except SquallError as exc:
        print(f"squall: {exc.message} [{exc.code}]", file=sys.stderr)
        sys.exit(1)
