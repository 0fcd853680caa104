"""The node agent: zygotes and instance pools for every function version on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from squall.agent.instance import Instance
from squall.agent.pool import Pool, PoolSpec
from squall.agent.runtimes import make_zygote
from squall.agent.sandbox.api import (
    FALLBACK_UID,
    Limits,
    Sandbox,
    SandboxBackend,
    SandboxSpec,
    Usage,
)
from squall.agent.zygote import Zygote, ZygoteConfig
from squall.bundle.spec import FunctionConfig, runtime_kind
from squall.config import Settings
from squall.errors import SandboxError, TooManyRequests
from squall.scaling.autoscaler import (
    ConcurrencyWindow,
    Decision,
    ScalingSpec,
    ScalingState,
    decide,
)

if TYPE_CHECKING:
    from squall.tenancy.model import TenantLimits
    from squall.tokens import SharedLimits

log = logging.getLogger("squall.agent")


class _LoadMeter:
    """Time-weighted mean of in-flight requests between two autoscaler ticks.

    The pool reports every change (thousands a second under load); the window gets one sample
    per tick: e.g. 2 in flight for 0.1 s then 4 for 0.4 s -> (0.2 + 1.6) / 0.5 = 3.6.
    """

    def __init__(self, now: float) -> None:
        self.start = self.last = now
        self.current = 0
        self.area = 0.0
        self.peak = 0

    def observe(self, in_flight: int) -> None:
        now = time.monotonic()
        self.area += self.current * (now - self.last)
        self.last, self.current = now, in_flight
        self.peak = max(self.peak, in_flight)

    def take(self, now: float) -> tuple[float, float]:
        """(bucket start, mean over the bucket); starts the next bucket."""
        self.area += self.current * (now - self.last)
        span = now - self.start
        mean = self.area / span if span > 0 else float(self.current)
        if self.peak and mean == 0.0:
            mean = 1e-6  # a request that came and went within the bucket still counts as one
        start = self.start
        self.start = self.last = now
        self.area = 0.0
        self.peak = self.current
        return start, mean


@dataclass(frozen=True)
class VersionSpec:
    """Everything the agent needs to run one function version."""

    namespace: str
    function: str
    version: int
    sha256: str
    code_dir: Path
    dep_paths: list[Path]
    config: FunctionConfig
    # The tenant's unprivileged host uid the sandbox runs as (None: the platform's own uid).
    uid: int | None = None
    # Environment resolved by the platform beside config.env: secret references, decrypted.
    # Never logged, never written to disk; only the instance's environment sees it.
    secret_env: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}-{self.function}-v{self.version}-{self.sha256[:12]}"


@dataclass
class InitTiming:
    """Where a cold start's time went (ms): sandbox + zygote only when the zygote was built."""

    sandbox_ms: float = 0.0
    zygote_ms: float = 0.0
    fork_ms: float = 0.0
    # the instance was forked ahead (its zygote's spare): fork_ms is only the hand-over
    spare: bool = False

    @property
    def total_ms(self) -> float:
        return self.sandbox_ms + self.zygote_ms + self.fork_ms


@dataclass
class _Slot:
    spec: VersionSpec
    pool: Pool
    sandbox: Sandbox
    zygote: Zygote | None = None
    zygote_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)
    window: ConcurrencyWindow = field(default_factory=ConcurrencyWindow)
    load: _LoadMeter = field(default_factory=lambda: _LoadMeter(time.monotonic()))
    scaling: ScalingState = field(default_factory=ScalingState)
    decision: Decision | None = None
    decided_at: float = 0.0
    growing: int = 0


class Agent:
    def __init__(self, settings: Settings, backend: SandboxBackend) -> None:
        self.settings = settings
        self.backend = backend
        self._slots: dict[str, _Slot] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._releaser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="squall-release")
        # Moves Python zygotes into their next instance's cgroup between forks (Zygote's
        # arm_executor): a thread of its own, so a fork never waits behind a burst of releases.
        self._armer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="squall-arm")
        # the tenants' quotas (squall.tenancy), set by the server; None: no limits
        self.tenant_limits: Callable[[str], TenantLimits] | None = None
        # --workers > 1: the limits that hold across the data dir's workers (squall.tokens)
        self.shared: SharedLimits | None = None

    # -- versions ---------------------------------------------------------------------------

    def _slot(self, vs: VersionSpec) -> _Slot:
        slot = self._slots.get(vs.key)
        if slot is None:
            cfg = vs.config
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                   "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
                   "SQUALL_FUNCTION_NAME": vs.function,
                   "SQUALL_FUNCTION_VERSION": str(vs.version),
                   "AWS_LAMBDA_FUNCTION_NAME": vs.function,
                   "AWS_LAMBDA_FUNCTION_VERSION": str(vs.version),
                   "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(cfg.memory_mb),
                   **cfg.env, **vs.secret_env}
            limits = Limits(memory_mb=cfg.memory_mb, pids=self.settings.pids_limit,
                            ephemeral_mb=cfg.ephemeral_mb, network=cfg.network,
                            timeout_s=cfg.timeout_s)
            from squall.agent.zygote import RUNTIME_PATHS

            # The tenant's host uid; a version without one shares the fallback (never root).
            uid = FALLBACK_UID if vs.uid is None else vs.uid
            sandbox = self.backend.create(SandboxSpec(
                key=vs.key, code_dir=vs.code_dir,
                python_paths=[*vs.dep_paths, *RUNTIME_PATHS], env=env, limits=limits, uid=uid))
            pool_spec = PoolSpec(max_instances=cfg.max_instances,
                                 min_instances=cfg.min_instances, concurrency=cfg.concurrency,
                                 keep_alive_s=cfg.keep_alive_s,
                                 queue_wait_s=self.settings.queue_wait_s)
            slot = _Slot(vs, Pool(vs.key, pool_spec, self._starter(vs)), sandbox)
            if self.shared is not None:
                slot.pool.tokens = self.shared.slots("version", vs.key,
                                                     cfg.max_instances * cfg.concurrency)
            slot.pool.observer = slot.load.observe
            self._slots[vs.key] = slot
        return slot

    def pool(self, vs: VersionSpec) -> Pool:
        return self._slot(vs).pool

    def _zygote_config(self, vs: VersionSpec) -> ZygoteConfig:
        return ZygoteConfig(
            handler=vs.config.handler, style=vs.config.style, dep_paths=vs.dep_paths,
            static={"function_name": vs.function, "function_version": str(vs.version),
                    "memory_limit_in_mb": vs.config.memory_mb,
                    "invoked_function_arn":
                        f"arn:squall:lambda:local:{vs.namespace}:function:{vs.function}",
                    "log_stream_name": vs.key, "log_level": vs.config.log_level})

    async def zygote(self, vs: VersionSpec) -> tuple[Zygote, InitTiming]:
        """The running zygote of a version, built now if needed (timing says what was paid)."""
        slot = self._slot(vs)
        timing = InitTiming()
        async with slot.zygote_lock:
            if slot.zygote is None or slot.zygote.dead:
                if slot.zygote is not None:
                    log.warning("rebuilding zygote of %s", vs.key)
                    await slot.zygote.stop()
                z = make_zygote(vs.config.runtime, vs.key, slot.sandbox,
                                self._zygote_config(vs), vs.code_dir)
                if runtime_kind(vs.config.runtime) == "python":  # it forks its own instances
                    z.arm_executor = self._armer
                    z.spares = self.settings.spares  # (the other runtimes always keep one)
                await z.start()
                slot.zygote = z
                self._prepare_next(slot)
                timing.zygote_ms = z.init_ms
                timing.sandbox_ms = max(0.0, z.start_ms - z.init_ms)
        slot.last_used = time.monotonic()
        assert slot.zygote is not None
        return slot.zygote, timing

    def tenant_memory_mb(self, namespace: str) -> int:
        """Memory of a tenant's instances, running and starting (their limits, not their use)."""
        return sum(slot.pool.size * slot.spec.config.memory_mb for slot in self._slots.values()
                   if slot.spec.namespace == namespace)

    def _admit(self, vs: VersionSpec) -> None:
        """Before an instance starts: keep the tenant within ``max_memory_mb``. Idle instances
        of the tenant's other versions give way first (least recently used); when none is left,
        429 ``tenant_memory_exceeded``. The new instance is already counted (pool.starting)."""
        limit = None if self.tenant_limits is None else \
            self.tenant_limits(vs.namespace).max_memory_mb
        if limit is None:
            return
        if self.shared is None:
            self._fit(vs, limit, 0)
            return
        tally = self.shared.tally(vs.namespace)  # the other workers' instances count too
        tally.lock()
        try:
            self._fit(vs, limit, tally.others())
            tally.set(self.tenant_memory_mb(vs.namespace))
        finally:
            tally.unlock()

    def publish_memory(self) -> None:
        """--workers: tell the other workers what this one's instances of each tenant with a
        memory limit hold now (after instances stopped; ``_admit`` adds new ones at once)."""
        if self.shared is None or self.tenant_limits is None:
            return
        for namespace in {slot.spec.namespace for slot in self._slots.values()}:
            if self.tenant_limits(namespace).max_memory_mb is not None:
                self.shared.tally(namespace).set(self.tenant_memory_mb(namespace))

    def _fit(self, vs: VersionSpec, limit: int, elsewhere: int) -> None:
        used = self.tenant_memory_mb(vs.namespace) + elsewhere
        if used <= limit:
            return
        others = [s for s in self._slots.values()
                  if s.spec.namespace == vs.namespace and s.spec.key != vs.key]
        idle = sorted(((s, i) for s in others for i in s.pool.idle()),
                      key=lambda pair: pair[1].last_used)
        for slot, inst in idle:
            if used <= limit:
                break
            slot.pool.detach([inst])
            self._stop_later(slot, [inst])
            used -= slot.spec.config.memory_mb
        if used > limit:
            raise TooManyRequests(
                f"tenant {vs.namespace!r} has {used - vs.config.memory_mb} MB of instances "
                f"running; one more of {vs.config.memory_mb} MB would pass its limit of {limit} "
                f"MB", retry_after_s=1, code="tenant_memory_exceeded")

    def _starter(self, vs: VersionSpec) -> Any:
        async def start(pool: Pool) -> Instance:
            self._admit(vs)
            z, timing = await self.zygote(vs)
            t0 = time.perf_counter()
            iid = uuid.uuid4().hex[:12]
            try:
                inst = await z.fork(iid, pool.spec.concurrency, pool.on_exit)
            except (SandboxError, EOFError, OSError, TimeoutError):
                # The zygote died since we last used it: rebuild once and retry.
                z.dead = True
                z, timing = await self.zygote(vs)
                t0 = time.perf_counter()
                inst = await z.fork(iid, pool.spec.concurrency, pool.on_exit)
            timing.fork_ms = (time.perf_counter() - t0) * 1000.0
            timing.spare = inst.from_spare
            inst.init_timing = timing
            self._prepare_next(self._slot(vs))
            return inst

        return start

    def _prepare_next(self, slot: _Slot) -> None:
        """Let the sandbox make the next instance's cgroups on the worker thread."""
        async def prepare() -> None:
            try:
                await asyncio.get_running_loop().run_in_executor(self._releaser,
                                                                 slot.sandbox.prepare)
            except Exception:  # place() falls back to making its own cgroup
                log.exception("preparing the next instance of %s failed", slot.spec.key)

        task = asyncio.get_running_loop().create_task(prepare())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def usage(self, vs: VersionSpec, instance_id: str) -> Usage:
        return self._slot(vs).sandbox.usage(instance_id)

    # -- lifecycle ---------------------------------------------------------------------------

    def track(self, task: asyncio.Task[None]) -> None:
        """Own a background task (awaited at shutdown)."""
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def _stop_later(self, slot: _Slot, insts: list[Instance]) -> None:
        for inst in insts:
            task = asyncio.get_running_loop().create_task(self._stop_instance(slot, inst))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def _stop_instance(self, slot: _Slot, inst: Instance) -> None:
        try:
            await inst.stop(self.settings.instance_stop_grace_s)
        finally:
            # Removing cgroups (kill what is left, rmdir three hierarchies) takes milliseconds:
            # off the event loop, so it never delays a cold start happening at the same time.
            # One thread, so releases never run concurrently with each other.
            await asyncio.get_running_loop().run_in_executor(
                self._releaser, slot.sandbox.release, inst.id)

    def scale_to_zero(self, vs: VersionSpec) -> int:
        """Stop every idle instance of a version now; keep its zygote."""
        slot = self._slots.get(vs.key)
        if slot is None:
            return 0
        idle = slot.pool.idle()
        slot.pool.detach(idle)
        self._stop_later(slot, idle)
        # Forget the observed load, or the autoscaler would prewarm right back.
        slot.window = ConcurrencyWindow()
        slot.load = _LoadMeter(time.monotonic())
        slot.pool.observer = slot.load.observe
        slot.scaling = ScalingState()
        return len(idle)

    async def ensure_min(self, vs: VersionSpec, minimum: int) -> None:
        pool = self.pool(vs)
        pool.spec.min_instances = minimum
        while pool.size < minimum:
            await pool.grow()

    async def retire(self, key: str) -> None:
        """Stop a version's instances (in-flight ones finish first) and its zygote."""
        slot = self._slots.pop(key, None)
        if slot is None:
            return
        await slot.pool.drain(self.settings.shutdown_grace_s)
        insts = list(slot.pool.instances.values())
        slot.pool.detach(insts)
        await asyncio.gather(*(self._stop_instance(slot, i) for i in insts))
        if slot.zygote is not None:
            await slot.zygote.stop()
        slot.sandbox.destroy()

    def snapshot(self) -> list[dict[str, Any]]:
        out = []
        for key, slot in self._slots.items():
            for inst in slot.pool.instances.values():
                out.append({"id": inst.id, "pid": inst.pid, "version": slot.spec.version,
                            "function": slot.spec.function, "namespace": slot.spec.namespace,
                            "key": key,
                            "state": "busy" if slot.pool.reserved.get(inst.id) else "idle",
                            "invocations": inst.invocations})
        return out

    def pools(self) -> list[tuple[VersionSpec, Pool]]:
        return [(s.spec, s.pool) for s in self._slots.values()]

    def zygotes(self) -> list[dict[str, Any]]:
        return [{"key": k, "function": s.spec.function, "namespace": s.spec.namespace,
                 "version": s.spec.version,
                 "pid": s.zygote.runtime_pid, "rss_bytes": _rss(s.zygote.runtime_pid),
                 "spare_pid": s.zygote.spare_pid}
                for k, s in self._slots.items() if s.zygote is not None and not s.zygote.dead]

    async def run(self) -> None:
        """Every 0.5 s: stop instances idle past their keep-alive, apply the autoscaler, and
        keep the zygotes within their memory budget."""
        ticks = 0
        while True:
            await asyncio.sleep(0.5)
            ticks += 1
            now = time.monotonic()
            for slot in list(self._slots.values()):
                expired = slot.pool.expired(now)
                if expired:
                    slot.pool.detach(expired)
                    self._stop_later(slot, expired)
                self._autoscale(slot, now)
            self.publish_memory()
            if ticks % 10 == 0:
                await self._trim_zygotes()

    def _autoscale(self, slot: _Slot, now: float) -> None:
        """Prewarm instances ahead of rising load (scale-down is the keep-alive's job).

        Only a version that has served a request within its keep-alive counts as active:
        otherwise the 60 s stable window would bring back instances the keep-alive just reaped.
        """
        cfg = slot.spec.config
        spec = ScalingSpec(target_concurrency_per_instance=cfg.concurrency,
                           min_instances=slot.pool.spec.min_instances,
                           max_instances=cfg.max_instances,
                           scale_to_zero_grace_s=cfg.keep_alive_s)
        ready = slot.pool.size
        start, mean = slot.load.take(now)
        slot.window.record(start, mean)
        decision = decide(spec, slot.window.stats(now, spec), ready, slot.scaling, now)
        slot.scaling = decision.state
        previous = slot.decision
        panic_changed = decision.panic != (previous is not None and previous.panic)
        if previous is None or previous.desired != decision.desired or panic_changed:
            # INFO only when it acts (scale out) or changes mode; "desired 0" for every version
            # on every deploy, and scale-down (the keep-alive's job), are DEBUG noise.
            level = logging.INFO if decision.desired > ready or panic_changed else logging.DEBUG
            log.log(level, "autoscaler %s: desired %d (ready %d)%s: %s", slot.spec.key,
                    decision.desired, ready, " panic" if decision.panic else "",
                    decision.reason)
        slot.decision, slot.decided_at = decision, time.time()
        last = decision.state.last_request_at
        active = last is not None and now - last < cfg.keep_alive_s
        missing = decision.desired - ready - slot.growing
        if active and missing > 0 and slot.zygote is not None and not slot.zygote.dead:
            for _ in range(missing):
                task = asyncio.get_running_loop().create_task(self._prewarm(slot))
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)

    async def _prewarm(self, slot: _Slot) -> None:
        slot.growing += 1
        try:
            if slot.pool.size < slot.pool.spec.max_instances:
                await slot.pool.grow()
        except Exception:  # a failed prewarm is retried on the next decision
            log.exception("prewarm of %s failed", slot.spec.key)
        finally:
            slot.growing -= 1

    def scaling_status(self, vs: VersionSpec) -> dict[str, Any]:
        slot = self._slot(vs)
        d = slot.decision
        return {"key": vs.key, "ready": slot.pool.size, "in_flight": slot.pool.in_flight,
                "desired": None if d is None else d.desired,
                "reason": None if d is None else d.reason,
                "panic": False if d is None else d.panic, "decided_at": slot.decided_at}

    async def _trim_zygotes(self) -> None:
        """Stop the least recently used zygotes without instances while over the budget."""
        budget = self.settings.zygote_memory_budget_mb * 1024 * 1024
        live = [s for s in self._slots.values() if s.zygote is not None and not s.zygote.dead]
        sizes = {s.spec.key: _rss(s.zygote.runtime_pid) for s in live if s.zygote is not None}
        total = sum(sizes.values())
        for slot in sorted(live, key=lambda s: s.last_used):
            if total <= budget:
                break
            if slot.pool.instances or slot.zygote is None:
                continue
            log.info("zygote budget: stopping the zygote of %s", slot.spec.key)
            total -= sizes.get(slot.spec.key, 0)
            await slot.zygote.stop()
            slot.zygote = None

    async def shutdown(self) -> None:
        for key in list(self._slots):
            with contextlib.suppress(Exception):
                await self.retire(key)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        self._releaser.shutdown(wait=True)
        self._armer.shutdown(wait=True)


def _rss(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0
