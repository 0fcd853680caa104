"""`squall up`: wires the parts together and runs them: startup -> serve -> drain -> shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from squall import sync
from squall.agent.node import Agent
from squall.agent.sandbox.api import SandboxBackend
from squall.api import aliases as api_aliases
from squall.api import console as api_console
from squall.api import functions as api_functions
from squall.api import observability as api_observability
from squall.api import openapi
from squall.api import replay as api_replay
from squall.api import routes as api_routes
from squall.api import tenancy as api_tenancy
from squall.api.errors import HANDLERS
from squall.bundle.shared import BundleCache
from squall.config import Settings
from squall.deploy import Deployer
from squall.errors import BadRequest, ServiceUnavailable, SquallError
from squall.gateway.app import Gateway
from squall.invoker.invoker import LocalInvoker
from squall.lambda_api.app import LambdaGateway
from squall.logs import LogSink
from squall.metering.recorder import Recorder
from squall.observability import logfmt
from squall.observability import wiring as observability
from squall.platform import Platform
from squall.registry import FunctionRecord, Registry
from squall.replay import capture as replay_capture
from squall.storage.listener import serve_s3
from squall.store import functions as store_fn
from squall.store import tenants as store_tenants
from squall.store.db import Database, open_database
from squall.tenancy.crypto import Sealer, load_master_key
from squall.tenancy.quota import Refusals
from squall.tenancy.secrets import finish_rotation, references
from squall.tenancy.service import Identity
from squall.tokens import SharedLimits
from squall.workers import Follow, MetricsShare, Peers, ReadYourWrites, Workers

log = logging.getLogger("squall")


class _Server(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM after serving, which would kill us before we stop
    the instances; we take the signal as a request to shut down gracefully and exit 0."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for in-flight requests
        else:
            self.should_exit = True


def choose_backend(settings: Settings) -> tuple[SandboxBackend, list[str]]:
    """The sandbox backend and its startup warnings; SandboxError ``sandbox_unavailable`` when
    bwrap is wanted (auto, bwrap) but none works here: never a silent fall back to no isolation."""
    from squall.agent.sandbox.detect import choose_backend as detect

    return detect(settings.sandbox, settings.bwrap_system, settings.bwrap_wheel)


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
    db = open_database(settings.store, settings.data_dir)
    if settings.workers > 1:  # the data dir's other workers write it too (squall.workers)
        db.shared = True
    if settings.worker_index > 0:  # worker 0 took back what the last run left running
        db.recovers = False
    db.open()
    backend, warnings = choose_backend(settings)
    registry = Registry(db, settings.data_dir)
    if db.shared and db.dialect != "sqlite":  # other gateways deploy too: their bundles come
        # through the store (a data dir's workers share its bundles folder)
        registry.bundles = BundleCache(db, registry.bundles_dir, registry.envs_dir,
                                       max_bytes=settings.max_bundle_bytes,
                                       max_files=settings.max_bundle_files)
    agent = Agent(settings, backend)
    recorder = Recorder(db)
    logs = LogSink(db, settings.log_entries_per_function)
    invoker = _invoker(settings)(settings, registry, agent, recorder, logs)
    deployer = Deployer(settings, registry, agent)
    platform = Platform(settings=settings, db=db, registry=registry, agent=agent,
                        invoker=invoker, deployer=deployer, recorder=recorder, logs=logs,
                        sandbox_backend=backend.name, sandbox_warnings=warnings)
    identity = _wire_identity(platform)
    if settings.workers > 1:  # limits that hold across the data dir's workers
        root = settings.data_dir / "limits"
        if settings.worker_index == 0:  # the others start after this, under its lock
            SharedLimits.reset(root)
        shared = SharedLimits(root, settings.worker_index, settings.workers)
        agent.shared = identity.quotas.shared = shared
        platform.follow = Follow(db, shared)
        platform.peers = Peers(root, settings.worker_index, settings.workers,
                               bool(settings.tls_cert))
    if settings.cluster:
        _wire_cluster(platform, identity)
    endpoints = [*api_functions.ENDPOINTS, *api_tenancy.ENDPOINTS, *api_aliases.ENDPOINTS]
    try:
        from squall.api import events as api_events
        from squall.events.service import EventService
    except ImportError:
        log.warning("events package not available: async invocation and triggers are off")
    else:
        platform.events = EventService(settings, db, invoker, registry, logs)
        platform.events.identity = identity
        if db.shared:  # connector triggers run on one gateway at a time (a lease each)
            from squall.events.leases import Leases

            platform.events.leases = Leases(db)
        endpoints.extend(api_events.ENDPOINTS)
    observability.attach(platform)
    if settings.workers > 1 and platform.obs is not None:  # /metrics: every worker's figures
        metrics = platform.obs.metrics
        metrics.share = MetricsShare(settings.data_dir / "limits", settings.worker_index,
                                     settings.workers, lambda: generate_latest(metrics.registry))
    endpoints.extend(api_observability.ENDPOINTS)
    replay_capture.attach(platform)
    endpoints.extend(api_replay.ENDPOINTS)
    endpoints.extend(api_console.endpoints())
    endpoints.append(openapi.endpoint(endpoints))
    routes: list[BaseRoute] = list(api_routes.routes(endpoints))
    app = Starlette(routes=routes, exception_handlers=HANDLERS)
    app.state.platform = platform
    served: Any = LambdaGateway(Gateway(api_routes.Direct(app, endpoints, HANDLERS), platform),
                                platform)
    if platform.follow is not None:  # a write answered here is served by every worker
        served = ReadYourWrites(served, platform.follow)
    return platform, observability.edge(platform, served)


def _invoker(settings: Settings) -> type[LocalInvoker]:
    if not settings.cluster:
        return LocalInvoker
    from squall.cluster.invoker import ClusterInvoker

    return ClusterInvoker


def _wire_cluster(platform: Platform, identity: Identity) -> None:
    """--cluster: instances run on the Ray cluster's node agents (squall.cluster); this
    process keeps a local agent only for the deploy-time import check."""
    from squall.cluster.invoker import ClusterInvoker
    from squall.cluster.links import NodeTable
    from squall.cluster.membership import RayMembership
    from squall.cluster.wire import channel_key

    if not platform.settings.master_key:
        raise ServiceUnavailable(
            "--cluster needs SQUALL_MASTER_KEY (base64 of 32 bytes) in the environment of "
            "every gateway and of `ray start` on every node: the node agents open secrets and "
            "authenticate gateways with it", code="cluster_needs_master_key")
    nodes = NodeTable()
    assert isinstance(platform.invoker, ClusterInvoker)
    platform.invoker.attach(nodes, identity.sealer)
    platform.cluster = RayMembership(platform.settings, channel_key(identity.sealer.key), nodes)


def _wire_identity(platform: Platform) -> Identity:
    """Tenants, keys, secrets and quotas: one Identity, handed to every part that needs it."""
    settings = platform.settings
    identity = _identity(settings, platform.db)
    platform.identity = platform.registry.identity = platform.deployer.identity = identity
    platform.invoker.quotas = identity.quotas
    identity.quotas.refusals = Refusals(platform.settings.refusals_per_s)
    platform.agent.tenant_limits = identity.limits
    identity.secrets.listeners.append(lambda tenant: _secrets_changed(platform, tenant))
    identity.region = settings.s3_region
    if settings.s3_port:  # functions reach the object store with credentials of their own
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        scheme = "https" if settings.tls_cert else "http"
        platform.registry.s3_endpoint = f"{scheme}://{host}:{settings.s3_port}"

    async def forget_credentials(event: str, rec: FunctionRecord) -> None:
        if event == "removed":
            identity.forget_function(rec.namespace, rec.name)

    platform.registry.add_listener(forget_credentials)
    return identity


def _identity(settings: Settings, db: Database) -> Identity:
    """The master key (finishing a rotation a crash interrupted) and the identity service."""
    key = load_master_key(settings.data_dir, settings.master_key or None)
    probe = db.run_sync(store_tenants.list_keys)
    if probe:
        key = finish_rotation(settings.data_dir, key, probe[0]["sealed_secret"],
                              f"key/{probe[0]['id']}")
    return Identity(db, Sealer(key))


def _secrets_changed(platform: Platform, tenant: str) -> None:
    """New instances of the tenant's versions that use secrets must see the new values: their
    cached specs are dropped and their sandboxes retired (in-flight work finishes first)."""
    platform.registry.invalidate(tenant)
    for rec in platform.registry.all():
        if rec.namespace == tenant and references(rec.config.env):
            key = platform.registry.version_spec(rec).key
            task = asyncio.get_running_loop().create_task(platform.agent.retire(key))
            platform.agent.track(task)


async def _startup(platform: Platform) -> None:
    assert platform.identity is not None
    await platform.identity.load()
    created = await platform.identity.bootstrap(platform.settings.data_dir)
    if created is not None:
        print(f"squall: created the admin API key in {created} (mode 0600); the CLI reads it "
              f"from there, other clients send it as `Authorization: Bearer <key>`",
              file=sys.stderr, flush=True)
    await platform.registry.load()
    if platform.events is not None:
        moved = await platform.events.seal_stored_trigger_secrets()
        if moved:
            log.info("sealed %d trigger secret(s) stored in plaintext by an earlier release",
                     moved)
    overrides = await platform.db.run(store_fn.min_instances_overrides)
    for rec in platform.registry.all():
        minimum = overrides.get((rec.namespace, rec.name), rec.config.min_instances)
        if minimum > 0:
            try:
                await platform.agent.ensure_min(platform.registry.version_spec(rec), minimum)
            except Exception:  # one broken function must not keep the platform down
                log.exception("cannot keep %s warm", rec.name)


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    check_workers(settings)
    first = settings.worker_index == 0
    lock_fd = lock_data_dir(settings) if first else None  # worker 0 holds it for all
    platform, app = build(settings)
    for warning in platform.sandbox_warnings:
        log.warning("WARNING: %s", warning)
    tls = bool(settings.tls_cert)
    if not tls and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("WARNING: serving on %s without TLS: API keys cross the network in clear "
                    "text; pass --tls-cert and --tls-key", settings.host)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, loop="none",
                            ssl_certfile=settings.tls_cert or None,
                            ssl_keyfile=settings.tls_key or None,
                            http="httptools", lifespan="off", log_level="warning",
                            access_log=False, proxy_headers=False,
                            timeout_graceful_shutdown=int(
                                settings.shutdown_grace_s), backlog=4096)
    server = _Server(config)
    shared_port = settings.reuse_port or settings.workers > 1
    sockets = [_shared_listener(settings, platform)] if shared_port else None
    if platform.peers is not None and sockets is not None:  # where the other workers ask
        asked = platform.peers.listener()
        if asked is not None:
            sockets.append(asked)
    workers = Workers(settings, platform.follow) if first and settings.workers > 1 else None
    if platform.cluster is not None:  # blocking, once: join Ray as a driver
        platform.cluster.connect()
    try:
        if platform.events is not None:  # the queue's carrier (--queue): connect before serving
            await platform.events.open()
        async with asyncio.TaskGroup() as tg:
            background = [tg.create_task(platform.recorder.run()),
                          tg.create_task(platform.logs.run()),
                          tg.create_task(platform.agent.run())]
            await _startup(platform)
            assert platform.identity is not None
            background.append(tg.create_task(platform.identity.run()))
            if platform.events is not None:  # after the registry is loaded
                await platform.events.queue.recover()
                background.append(tg.create_task(platform.events.run(recover=False)))
            if workers is not None:  # the store is migrated and recovered: the others may go
                workers.start()
            if platform.cluster is not None:  # one node agent per Ray node, links to each
                background.append(tg.create_task(platform.cluster.run()))
            if platform.db.shared:  # follow what other gateways change in the store
                background.append(tg.create_task(sync.run(platform)))
            background.append(tg.create_task(observability.run(platform)))
            if platform.invoker.capture is not None:
                background.append(tg.create_task(platform.invoker.capture.run()))
            stop_s3 = asyncio.Event()
            if first:
                tg.create_task(serve_s3(settings, platform, stop_s3))
            who = f"worker {settings.worker_index} " if not first else ""
            print(f"squall: {who}serving on {'https' if tls else 'http'}://{settings.host}:"
                  f"{settings.port} "
                  f"(data dir {settings.data_dir}, sandbox {platform.sandbox_backend}, "
                  f"pid {os.getpid()})", file=sys.stderr, flush=True)
            if ready is not None:
                ready.set()
            # uvicorn handles SIGINT/SIGTERM: stops accepting, waits for in-flight requests up
            # to the graceful deadline, returns; its signal handlers are restored afterwards.
            await server.serve(sockets=sockets)
            if workers is not None:  # they finish their in-flight requests too
                await workers.stop(settings.shutdown_grace_s)
            stop_s3.set()
            await platform.agent.shutdown()
            for task in background:
                task.cancel()
    finally:
        if workers is not None:  # a failed start: none may serve on without worker 0
            await workers.stop(0)
        if platform.events is not None:
            await platform.events.close()
        observability.close(platform)
        if platform.cluster is not None:
            platform.cluster.close()
        close = getattr(platform.agent.backend, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
        with contextlib.suppress(Exception):
            platform.db.close()
        if lock_fd is not None:
            os.close(lock_fd)
    print(f"squall: {'worker ' + str(settings.worker_index) + ' ' if not first else ''}stopped",
          file=sys.stderr, flush=True)


def check_workers(settings: Settings) -> None:
    """--workers: 1 or more, and not with --cluster (whose gateways share a PostgreSQL store
    and run instances on Ray's nodes: start several `squall up --reuse-port` there)."""
    if settings.workers < 1:
        raise BadRequest(f"--workers must be 1 or more, got {settings.workers}",
                         code="invalid_workers")
    if settings.workers > 1 and settings.store.startswith(("postgresql://", "postgres://")):
        raise BadRequest("--workers serves one SQLite data dir; with a PostgreSQL store start "
                         "several `squall up --reuse-port` instead", code="invalid_workers")
    if settings.workers > 1 and settings.cluster:
        raise BadRequest("--workers is for one machine; with --cluster start several `squall "
                         "up --reuse-port` on the same --store instead", code="invalid_workers")


def _shared_listener(settings: Settings, platform: Platform) -> socket.socket:
    """--reuse-port: a listening socket with SO_REUSEPORT, so several gateways serve one port.
    Only gateways that share a store may: each answers for the same functions, keys and
    events. Raises ServiceUnavailable (``reuse_port_needs_shared_store``, ``port_unavailable``)."""
    if not platform.db.shared:
        raise ServiceUnavailable(
            "--reuse-port lets several `squall up` serve one port, so they must serve the same "
            "functions: give each the same --store postgresql://... and SQUALL_MASTER_KEY "
            "(with the SQLite store one process serves a data dir)",
            code="reuse_port_needs_shared_store")
    try:
        family = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((settings.host, settings.port), family=family,
                                    backlog=4096, reuse_port=True)
    except OSError as exc:
        raise ServiceUnavailable(f"cannot listen on {settings.host}:{settings.port} with "
                                 f"SO_REUSEPORT: {exc} (a process without --reuse-port may "
                                 f"hold it)", code="port_unavailable") from None


def run(settings: Settings) -> None:
    logfmt.configure_logging(settings.log_format, os.environ.get("SQUALL_LOG_LEVEL", "INFO"),
                             settings.worker_index if settings.workers > 1 else None)
    import uvloop

    try:
        uvloop.run(serve(settings))
    except SquallError as exc:
        print(f"squall: {exc.message} [{exc.code}]", file=sys.stderr)
        sys.exit(1)
