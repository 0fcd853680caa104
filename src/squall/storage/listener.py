"""The object store's own listener: a second uvicorn server in the platform's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Iterator

import uvicorn

from squall.config import Settings
from squall.platform import Platform

log = logging.getLogger("squall")


class _Listener(uvicorn.Server):
    """A second listener in the same event loop: the main server owns SIGINT/SIGTERM (and
    re-raising them); this one stops when ``serve_s3`` is told to."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_s3(settings: Settings, platform: Platform, stop: asyncio.Event) -> None:
    """Serve the S3-compatible object store (squall.storage) on ``settings.s3_port``, same host
    and TLS as the API, until ``stop`` is set, then drain like the main server. Port 0 turns it
    off; a port that cannot be bound is logged and the platform serves without it (the API and
    functions do not depend on it)."""
    if settings.s3_port == 0:
        return
    from squall.storage.app import S3App
    from squall.storage.layout import Layout
    from squall.storage.service import ObjectStore

    try:
        sock = socket.create_server((settings.host, settings.s3_port), backlog=1024)
    except OSError as exc:
        log.warning("WARNING: S3 API off: cannot listen on %s:%d: %s (set --s3-port or "
                    "SQUALL_S3_PORT)", settings.host, settings.s3_port, exc)
        return
    with sock:
        def wake() -> None:
            if platform.events is not None:
                platform.events.wake.set()

        objects = ObjectStore(platform.db, Layout(settings.data_dir / "objects"),
                              region=settings.s3_region, quota_bytes=settings.s3_quota_bytes,
                              wake=wake)
        await objects.startup()  # sweeps what a crash left, before the first request
        app = S3App(objects, lambda: platform.identity, domain=settings.s3_domain)
        server = _Listener(uvicorn.Config(
            app, loop="none", http="httptools", lifespan="off", log_level="warning",
            access_log=False, proxy_headers=False, ssl_certfile=settings.tls_cert or None,
            ssl_keyfile=settings.tls_key or None,
            timeout_graceful_shutdown=int(settings.shutdown_grace_s)))
        scheme = "https" if settings.tls_cert else "http"
        print(f"squall: S3 API on {scheme}://{settings.host}:{settings.s3_port}",
              file=sys.stderr, flush=True)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(server.serve(sockets=[sock]))
            await stop.wait()
            server.should_exit = True
