"""The local invoker: resolve the version, take an instance, run, time out, record."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from squall.agent.instance import ClientGone, Instance, InstanceDied
from squall.agent.node import Agent, InitTiming, VersionSpec
from squall.aliases import AliasBook
from squall.config import Settings
from squall.errors import FunctionNotFound, SquallError, TooManyRequests
from squall.invoker.api import InvokeOutcome, ResponseStream
from squall.logs import LogSink
from squall.metering.billing import billed_ms, gb_seconds
from squall.metering.recorder import Recorder
from squall.observability import Observability, logfmt
from squall.registry import FunctionRecord, Registry
from squall.routing import LATEST, choose_version

if TYPE_CHECKING:
    from squall.observability.tracing import InvocationTrace
    from squall.replay.capture import Capture
    from squall.tenancy.quota import Quotas


class LocalInvoker:
    def __init__(self, settings: Settings, registry: Registry, agent: Agent, recorder: Recorder,
                 logs: LogSink) -> None:
        self.settings = settings
        self.registry = registry
        self.agent = agent
        self.recorder = recorder
        self.logs = logs
        self.in_flight = 0
        self.quotas: Quotas | None = None  # per-tenant rate and concurrency (the server sets it)
        self.obs = Observability()  # the server's replaces it (metrics, tracing)
        self.aliases = AliasBook(registry)
        self.draw: Callable[[], float] = random.random  # weighted alias routing's dice
        self.capture: Capture | None = None  # events kept for replay (squall.replay.capture)

    async def resolve(self, function: str, qualifier: str | None,
                      namespace: str) -> FunctionRecord:
        """The version one invocation runs: $LATEST (no qualifier), a version number, or an
        alias, whose weights are rolled here (``squall.routing.choose_version``).

        Raises FunctionNotFound for an unknown function, version or alias (404)."""
        rec = self.registry.get(function, namespace)
        if rec is None:
            raise FunctionNotFound(f"function '{function}' does not exist; "
                                   f"deploy it with `squall deploy`")
        if qualifier in (None, "", LATEST):
            return rec
        assert qualifier is not None
        if qualifier.isdigit():
            version: int | None = int(qualifier)
        else:
            alias = await self.aliases.get(namespace, function, qualifier)
            if alias is None:
                raise FunctionNotFound(f"function '{function}' has no alias or version "
                                       f"'{qualifier}': use $LATEST, a version number or an "
                                       f"alias (`squall alias ls {function}`)")
            version = choose_version(alias, self.draw())
        if version is None or version == rec.version:
            return rec
        found = await self.registry.get_version(function, version, namespace)
        if found is None:
            raise FunctionNotFound(f"function '{function}' has no version {version}")
        return found

    async def invoke(self, function: str, event: Any, *, trigger: str = "api",
                     request_id: str | None = None, qualifier: str | None = None,
                     namespace: str = "default",
                     stream: ResponseStream | None = None) -> InvokeOutcome:
        """Run one invocation in ``namespace`` (the tenant). Raises FunctionNotFound, and
        TooManyRequests for a tenant over its rate or concurrency quota or a full pool.
        A streaming function writes into ``stream`` (squall.invoker.api.Invoker)."""
        quotas = self.quotas
        if quotas is None:
            return await self._invoke(function, event, trigger, request_id, qualifier, namespace,
                                      stream)
        try:
            quotas.enter(namespace)
        except TooManyRequests:
            if self.registry.get(function, namespace) is not None:  # bounded label values
                self.obs.metrics.throttled(namespace, function)
            raise
        try:
            return await self._invoke(function, event, trigger, request_id, qualifier, namespace,
                                      stream)
        finally:
            quotas.leave(namespace)

    async def _invoke(self, function: str, event: Any, trigger: str, request_id: str | None,
                      qualifier: str | None, namespace: str,
                      stream: ResponseStream | None = None) -> InvokeOutcome:
        rec = await self.resolve(function, qualifier, namespace)
        vs = self.registry.version_spec(rec)
        rid = request_id or str(uuid.uuid4())
        pool = self.agent.pool(vs)
        span = None if self.obs.tracing is None else self.obs.tracing.begin(vs, trigger, rid)
        try:
            inst, cold = await pool.acquire()
        except SquallError as exc:  # 429 or a sandbox that would not start: counted, traced
            self.obs.metrics.not_started(vs, exc)
            if span is not None:
                span.fail(exc)
            raise
        self.in_flight += 1
        try:
            return await self._run(vs, inst, cold, rid, event, trigger, span, stream)
        finally:
            self.in_flight -= 1
            pool.release(inst)

    async def _run(self, vs: VersionSpec, inst: Instance, cold: bool, rid: str, event: Any,
                   trigger: str, span: InvocationTrace | None = None,
                   stream: ResponseStream | None = None) -> InvokeOutcome:
        cfg = vs.config
        timing: InitTiming = inst.init_timing if cold and inst.init_timing else InitTiming()
        if span is not None:
            span.started(cold, timing)
        start_wall = time.time()
        t0 = time.perf_counter()
        value: Any = None
        max_rss_kb = 0
        error: dict[str, Any] | None = None
        status = "succeeded"
        if stream is not None:
            stream.run_on(vs.version, cold)
        try:
            # A streamed response is relayed inside this wait: the limit covers the whole stream
            # and so does the billed duration below.
            reply = await asyncio.wait_for(
                inst.invoke(rid, event, start_wall * 1000.0 + cfg.timeout_s * 1000.0,
                            {} if span is None else span.frame_ctx(), stream),
                cfg.timeout_s)
            max_rss_kb = int(reply.get("mem", 0))
            if reply["t"] == "res":
                value = reply.get("v")
            else:
                error = reply.get("e") or {"errorType": "Error", "errorMessage": "unknown"}
                status = "failed"
        except TimeoutError:
            inst.kill()
            status = "timeout"
            error = {"errorType": "TimeoutError",
                     "errorMessage": f"Task timed out after {cfg.timeout_s:.2f} seconds",
                     "stackTrace": []}
        except ClientGone:
            inst.kill()  # it would go on producing for nobody until its time limit
            status = "failed"
            error = {"errorType": "ClientDisconnected",
                     "errorMessage": "the client closed the connection during the streamed "
                                     "response", "stackTrace": []}
        except InstanceDied:
            usage = self.agent.usage(vs, inst.id)
            if usage.oom_killed:
                status = "oom"
                error = {"errorType": "OutOfMemoryError",
                         "errorMessage": f"Runtime exited: the function used more than its "
                                         f"{cfg.memory_mb} MB memory limit",
                         "stackTrace": []}
            else:
                status = "crashed"
                error = {"errorType": "Runtime.ExitError",
                         "errorMessage": f"RequestId: {rid} Error: Runtime exited without "
                                         f"providing a reason (the instance process died)",
                         "stackTrace": []}
        duration = (time.perf_counter() - t0) * 1000.0
        billed = billed_ms(duration)
        # The instance reports its own peak RSS (getrusage) with each result: reading /proc or
        # the cgroup files here cost a sixth to a fifth of the hot path at high throughput.
        max_mem = max_rss_kb / 1024 if max_rss_kb else None
        lines = inst.take_logs(rid)
        self._write_logs(vs, rid, lines, duration, billed, max_mem, timing, cold, error)
        self.recorder.append({
            "request_id": rid, "namespace": vs.namespace, "function": vs.function,
            "version": vs.version, "trigger": trigger, "start_ts": start_wall,
            "init_ms": round(timing.total_ms, 3) if cold else 0.0,
            "duration_ms": round(duration, 3), "billed_ms": billed, "memory_mb": cfg.memory_mb,
            "gb_seconds": gb_seconds(billed, cfg.memory_mb), "status": status,
            "error_type": None if error is None else error.get("errorType"),
            "cold": 1 if cold else 0, "max_memory_mb": max_mem,
        })
        self.obs.metrics.invocation(vs, trigger, status, duration, timing.total_ms, cold,
                                    gb_seconds(billed, cfg.memory_mb),
                                    None if error is None else error.get("errorType"))
        if span is not None:
            span.end(status, error, billed)
        if self.capture is not None:  # after the outcome; encoded and written off this path
            self.capture.offer(vs, rid, trigger, status, error, event)
        return InvokeOutcome(request_id=rid, function=vs.function, version=vs.version,
                             value=value, error=error, cold=cold, duration_ms=duration,
                             billed_ms=billed, init_ms=timing.total_ms if cold else 0.0,
                             logs=lines)

    def _write_logs(self, vs: VersionSpec, rid: str, lines: list[str], duration: float,
                    billed: int, max_mem: float | None, timing: InitTiming, cold: bool,
                    error: dict[str, Any] | None) -> None:
        """Lambda's START / END / REPORT framing around the function's own lines."""
        block = [f"START RequestId: {rid} Version: {vs.version}", *lines]
        if error is not None and error.get("errorType") in ("TimeoutError", "OutOfMemoryError",
                                                            "Runtime.ExitError",
                                                            "ClientDisconnected"):
            block.append(f"{error['errorType']}: {error['errorMessage']}")
        block.append(f"END RequestId: {rid}")
        report = (f"REPORT RequestId: {rid}\tDuration: {duration:.2f} ms\t"
                  f"Billed Duration: {billed} ms\tMemory Size: {vs.config.memory_mb} MB")
        if max_mem is not None:
            report += f"\tMax Memory Used: {max_mem:.0f} MB"
        if cold:
            report += (f"\tInit Duration: {timing.total_ms:.2f} ms (sandbox "
                       f"{timing.sandbox_ms:.2f} ms, zygote {timing.zygote_ms:.2f} ms, "
                       f"fork {timing.fork_ms:.2f} ms)")
        if error is not None and error.get("errorType") == "OutOfMemoryError":
            report += "\tStatus: error\tError Type: Runtime.OutOfMemory"
        block.append(report)
        if vs.config.log_format != "text" or vs.config.log_level:
            block = logfmt.apply(block, rid, vs.config.log_format, vs.config.log_level, time.time())
        self.logs.append_block(vs.function, rid, block, vs.namespace)

