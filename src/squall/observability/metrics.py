"""Prometheus metrics, written with prometheus-client into a registry the platform owns.

Two kinds of numbers:

- events counted where they happen (invocations, errors, throttles, cold starts, durations,
  GB-seconds, async outcomes, dead letters, webhook rejections, connector errors, store flushes,
  event-loop lag). The hot path (one invocation) looks up a pre-bound set of label children per
  (version, trigger) in a dict and increments them: no ``.labels()`` call, no allocation beyond
  the first invocation of a version;
- state read at scrape time (instances by state, zygotes, async queue depth and oldest age) by a
  custom collector, so keeping them costs nothing between scrapes.

Cardinality is bounded: labels are tenant, function, version, trigger (a handful of kinds) and
outcome (six statuses); error types are capped per function (``MAX_ERROR_TYPES``, then "other");
no request ids anywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

if TYPE_CHECKING:
    from squall.agent.node import VersionSpec
    from squall.agent.pool import Pool

# Seconds. Warm invocations of a small handler take about a millisecond, so the buckets start
# at 1 ms; the last finite bucket is the longest timeout (900 s).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 300.0, 900.0)
INIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
FLUSH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
MAX_ERROR_TYPES = 20  # distinct errorType values per function before they count as "other"
FN = ("tenant", "function")
FNV = ("tenant", "function", "version")


class Share(Protocol):
    """The other workers' expositions, each as of its last second (squall.workers)."""

    def peers(self) -> list[str]: ...
    async def run(self) -> None: ...


class AgentView(Protocol):
    """What the scrape-time collector reads from the node agent (squall.agent.node.Agent)."""

    def snapshot(self) -> list[dict[str, Any]]: ...
    def zygotes(self) -> list[dict[str, Any]]: ...
    def pools(self) -> list[tuple[VersionSpec, Pool]]: ...


@dataclass
class _Bound:
    """The label children of one (version, trigger), bound once: the hot path only calls inc."""

    labels: tuple[str, str, str, str]  # tenant, function, version, trigger
    metrics: Metrics
    outcomes: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, Any] = field(default_factory=dict)
    duration: Any = None
    init: Any = None
    cold: Any = None
    gb: Any = None

    def outcome(self, status: str) -> Any:
        child = self.outcomes.get(status)
        if child is None:
            child = self.outcomes[status] = self.metrics.invocations.labels(*self.labels, status)
        return child

    def error(self, error_type: str) -> Any:
        child = self.errors.get(error_type)
        if child is None:
            if len(self.errors) >= MAX_ERROR_TYPES:
                error_type = "other"
                child = self.errors.get(error_type)
            if child is None:
                child = self.metrics.errors.labels(*self.labels[:2], error_type)
                self.errors[error_type] = child
        return child


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # --workers: the other workers' expositions (squall.workers.MetricsShare)
        self.share: Share | None = None
        r = self.registry
        self.invocations = Counter(
            "squall_invocations", "Invocations that ran, by outcome (succeeded, failed, "
            "timeout, oom, crashed).", [*FNV, "trigger", "outcome"], registry=r)
        self.errors = Counter("squall_invocation_errors", "Failed invocations by errorType.",
                              [*FN, "error_type"], registry=r)
        self.throttles = Counter("squall_throttles", "Invocations refused with 429 (no instance "
                                 "free within the bounded wait).", list(FN), registry=r)
        self.cold_starts = Counter("squall_cold_starts", "Invocations that started an instance.",
                                   list(FNV), registry=r)
        self.duration = Histogram("squall_invocation_duration_seconds", "Run time of the "
                                  "handler.", list(FNV), buckets=DURATION_BUCKETS, registry=r)
        self.init_duration = Histogram("squall_init_duration_seconds", "Cold start time "
                                       "(sandbox + zygote + fork).", list(FNV),
                                       buckets=INIT_BUCKETS, registry=r)
        self.gb_seconds = Counter("squall_billed_gigabyte_seconds", "Billed GB-seconds "
                                  "(memory in GB x billed seconds).", list(FN), registry=r)
        self.async_deliveries = Counter(
            "squall_async_deliveries", "Async queue deliveries by outcome (succeeded, retried, "
            "dead_lettered, throttled, node_lost).", [*FN, "outcome"], registry=r)
        self.dead_letters = Counter("squall_dead_letters", "Events moved to the dead letters.",
                                    [*FN, "source"], registry=r)
        self.connector_errors = Counter("squall_connector_errors", "Broker sessions that failed.",
                                        ["trigger", "type"], registry=r)
        self.connector_lag = Gauge("squall_connector_lag_seconds", "Age of the last message a "
                                   "connector delivered, when it was delivered.",
                                   ["trigger", "type"], registry=r)
        self.webhook_rejections = Counter("squall_webhook_rejections", "Webhook requests refused "
                                          "(bad signature).", ["hook", "reason"], registry=r)
        self.loop_lag = Histogram("squall_event_loop_lag_seconds", "How late a timer on the "
                                  "event loop fires (a blocked loop shows here).",
                                  buckets=LAG_BUCKETS, registry=r)
        self.store_flush = Histogram("squall_store_flush_seconds", "Time to write one batch "
                                     "to the store.", ["writer"], buckets=FLUSH_BUCKETS,
                                     registry=r)
        self.sandbox_failures = Counter("squall_sandbox_creation_failures", "Instances that "
                                        "could not be started.", list(FN), registry=r)
        self._bound: dict[tuple[str, str], _Bound] = {}
        self._state = _ScrapeState(self)
        r.register(self._state)

    # -- hot path ------------------------------------------------------------------------------

    def invocation(self, vs: VersionSpec, trigger: str, status: str, duration_ms: float,
                   init_ms: float, cold: bool, gb_seconds: float,
                   error_type: str | None) -> None:
        """One finished invocation. About a microsecond: a dict lookup and a few increments."""
        b = self._bound.get((vs.key, trigger))
        if b is None:
            b = self._bind(vs, trigger)
        b.outcome(status).inc()
        b.duration.observe(duration_ms / 1000.0)
        if gb_seconds:
            b.gb.inc(gb_seconds)
        if cold:
            b.cold.inc()
            b.init.observe(init_ms / 1000.0)
        if error_type is not None:
            b.error(error_type).inc()

    def _bind(self, vs: VersionSpec, trigger: str) -> _Bound:
        labels = (vs.namespace, vs.function, str(vs.version), trigger)
        fnv = labels[:3]
        b = _Bound(labels, self, duration=self.duration.labels(*fnv),
                   init=self.init_duration.labels(*fnv), cold=self.cold_starts.labels(*fnv),
                   gb=self.gb_seconds.labels(*labels[:2]))
        self._bound[(vs.key, trigger)] = b
        return b

    def throttled(self, namespace: str, function: str) -> None:
        """A tenant quota (rate, concurrency) refused the invocation before it was resolved."""
        self.throttles.labels(namespace, function).inc()

    def not_started(self, vs: VersionSpec, exc: BaseException) -> None:
        """The invocation never reached an instance: 429, or the sandbox failed."""
        from squall.errors import SandboxError, TooManyRequests

        if isinstance(exc, TooManyRequests):
            self.throttles.labels(vs.namespace, vs.function).inc()
        elif isinstance(exc, SandboxError):
            self.sandbox_failures.labels(vs.namespace, vs.function).inc()

    # -- events ---------------------------------------------------------------------------------

    def async_outcome(self, namespace: str, function: str, outcome: str) -> None:
        self.async_deliveries.labels(namespace, function, outcome).inc()
        if outcome == "dead_lettered":
            self.dead_letters.labels(namespace, function, "queue").inc()

    def dead_lettered(self, namespace: str, function: str, source: str) -> None:
        self.dead_letters.labels(namespace, function, source).inc()

    def connector_delivered(self, trigger_id: str, type_: str, events: list[dict[str, Any]],
                            now: float) -> None:
        age = message_age(events[0], now) if events else None
        if age is not None:
            self.connector_lag.labels(trigger_id, type_).set(age)

    def connector_status(self, trigger_id: str, type_: str, state: str) -> None:
        if state == "error":
            self.connector_errors.labels(trigger_id, type_).inc()

    def webhook_rejected(self, hook: str, reason: str) -> None:
        self.webhook_rejections.labels(hook, reason).inc()

    def flush_observer(self, writer: str) -> Any:
        """A callable for a batch writer: seconds one store write took."""
        return self.store_flush.labels(writer).observe

    # -- scrape ---------------------------------------------------------------------------------

    def watch(self, agent: AgentView) -> None:
        """Read instances and zygotes from ``agent`` at every scrape."""
        self._state.agent = agent

    def set_queue(self, rows: list[dict[str, Any]], now: float) -> None:
        """Async queue depth, from ``squall.store.queue.depth`` (the endpoint reads it first)."""
        self._state.queue, self._state.queue_at = rows, now

    def render(self, tenant: str | None = None) -> bytes:
        """The text exposition; with ``tenant``, only that tenant's series (a tenant's key
        must not see other tenants' function names) and no platform-wide ones. With
        ``share`` (the other workers' latest expositions, ``--workers``), the platform's
        whole: see ``merge``."""
        source: Any = self.registry
        if self.share is not None:
            source = _Families(merge(generate_latest(self.registry).decode(),
                                     self.share.peers()))
        if tenant is None:
            if source is self.registry:
                return generate_latest(self.registry)
            view = CollectorRegistry(auto_describe=False)
            view.register(source)
            return generate_latest(view)
        view = CollectorRegistry(auto_describe=False)
        view.register(_TenantView(source, tenant))
        return generate_latest(view)


# Read from the shared store by the worker that answers the scrape, just before: its own
# figures are the platform's, and the others' (as old as their last scrape) are not added.
STORE_FAMILIES = frozenset({"squall_async_queue_depth", "squall_async_queue_oldest_age_seconds"})


def merge(own: str, peers: list[str]) -> list[Metric]:
    """One worker's exposition and the others' as one platform's: counters, histograms and
    per-process gauges (instances, zygotes) are summed series by series; ``_created`` times
    take the earliest; the store's figures (``STORE_FAMILIES``) are this worker's alone."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for index, text in enumerate([own, *peers]):
        for family in text_string_to_metric_families(text):
            if index and family.name in STORE_FAMILIES:
                continue
            kept = families.setdefault(family.name, family)
            series = values.setdefault(family.name, {})
            earliest = family.name.endswith("_created")
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = series.get(key)
                series[key] = sample.value if seen is None else (
                    min(seen, sample.value) if earliest else seen + sample.value)
            kept.samples = []
    for name, family in families.items():
        family.samples = [Sample(n, dict(labels), v) for (n, labels), v in values[name].items()]
    return list(families.values())


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def message_age(event: dict[str, Any], now: float) -> float | None:
    """Seconds since the broker took the message: a Redis entry id starts with its unix ms
    ("1700000000123-0"); otherwise the CloudEvent ``time`` the connector stamped."""
    rid = event.get("redisid")
    if isinstance(rid, str) and rid.partition("-")[0].isdigit():
        return max(0.0, now - int(rid.partition("-")[0]) / 1000.0)
    raw = event.get("time")
    if isinstance(raw, str):
        import datetime as dt

        try:
            return max(0.0, now - dt.datetime.fromisoformat(raw).timestamp())
        except ValueError:
            return None
    return None


class _ScrapeState(Collector):
    """Instances, zygotes and the async queue, read when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.agent: AgentView | None = None
        self.queue: list[dict[str, Any]] = []
        self.queue_at = 0.0

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand only: no scrape at registration time

    def collect(self) -> Iterator[Metric]:
        yield from self._instances()
        yield from self._queue()

    def _instances(self) -> Iterator[Metric]:
        inst = GaugeMetricFamily("squall_instances", "Instances by state.",
                                 labels=[*FNV, "state"])
        zyg = GaugeMetricFamily("squall_zygotes", "Running zygotes.", labels=list(FNV))
        if self.agent is not None:
            counts: dict[tuple[str, str, str, str], int] = {}
            for spec, pool in self.agent.pools():
                key = (spec.namespace, spec.function, str(spec.version))
                for state in ("starting", "idle", "busy"):
                    counts.setdefault((*key, state), 0)
                counts[(*key, "starting")] += pool.starting
            for i in self.agent.snapshot():
                key4 = (i["namespace"], i["function"], str(i["version"]), i["state"])
                counts[key4] = counts.get(key4, 0) + 1
            for labels, n in sorted(counts.items()):
                inst.add_metric(list(labels), n)
            tenants = {(s.function, s.version): s.namespace for s, _ in self.agent.pools()}
            zcount: dict[tuple[str, str, str], int] = {}
            for z in self.agent.zygotes():
                ns = tenants.get((z["function"], z["version"]), "default")
                k = (ns, z["function"], str(z["version"]))
                zcount[k] = zcount.get(k, 0) + 1
            for labels3, n in sorted(zcount.items()):
                zyg.add_metric(list(labels3), n)
        yield inst
        yield zyg

    def _queue(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("squall_async_queue_depth", "Async events not finished, by "
                                  "state (queued, retrying, running).", labels=[*FN, "state"])
        age = GaugeMetricFamily("squall_async_queue_oldest_age_seconds", "Age of the oldest "
                                "waiting (queued or retrying) async event.", labels=list(FN))
        for row in self.queue:
            depth.add_metric([row["namespace"], row["function"], row["state"]], row["count"])
        oldest: dict[tuple[str, str], float] = {}
        for row in self.queue:
            if row["state"] != "running" and row["oldest"] is not None:
                k = (row["namespace"], row["function"])
                oldest[k] = min(oldest.get(k, row["oldest"]), row["oldest"])
        for (ns, fn), t in sorted(oldest.items()):
            age.add_metric([ns, fn], max(0.0, self.queue_at - t))
        yield depth
        yield age


class _TenantView(Collector):
    def __init__(self, source: CollectorRegistry | Collector, tenant: str) -> None:
        self.source = source
        self.tenant = tenant

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            samples = [s for s in family.samples if s.labels.get("tenant") == self.tenant]
            if samples:
                family.samples = samples
                yield family


async def watch_loop_lag(metrics: Metrics, interval_s: float = 0.5) -> None:
    """Sleep ``interval_s`` again and again; the overshoot is how long the loop was blocked."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(interval_s)
        metrics.loop_lag.observe(max(0.0, loop.time() - t0 - interval_s))
