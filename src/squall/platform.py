"""The running platform's parts, wired together once by the server (squall.server)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from squall.agent.node import Agent
    from squall.config import Settings
    from squall.deploy import Deployer
    from squall.invoker.invoker import LocalInvoker
    from squall.logs import LogSink
    from squall.metering.recorder import Recorder
    from squall.observability import Observability
    from squall.registry import Registry
    from squall.store.db import Database
    from squall.tenancy.service import Identity


@dataclass
class Platform:
    settings: Settings
    db: Database
    registry: Registry
    agent: Agent
    invoker: LocalInvoker
    deployer: Deployer
    recorder: Recorder
    logs: LogSink
    sandbox_backend: str
    sandbox_warnings: list[str]
    events: Any = None  # squall.events.service.EventService, when the events package is wired
    obs: Observability | None = None  # metrics and tracing (squall.observability)
    identity: Identity | None = None  # tenants, keys, secrets, quotas (squall.tenancy)
    cluster: Any = None  # squall.cluster.membership.RayMembership with --cluster
    follow: Any = None  # squall.workers.Follow with --workers > 1
    peers: Any = None  # squall.workers.Peers with --workers > 1


def platform_of(app_state: Any) -> Platform:
    platform: Platform = app_state.platform
    return platform
