"""The local invoker: resolve the version, take an instance, run, time out, record."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from squall.agent.node import Agent, InitTiming, VersionSpec
from squall.aliases import AliasBook
from squall.config import Settings
from squall.errors import FunctionNotFound, SquallError, TooManyRequests
from squall.ids import new_request_id
from squall.invoker.api import InvokeOutcome, ResponseStream
from squall.invoker.execute import Execution, execute
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


_WARM = InitTiming()  # a warm invocation's: all zero (read only, shared)
_NO_CTX: dict[str, str] = {}  # the frame context of an untraced invocation (read only, shared)
# Invocations a client's request waits on (/fn/, the API's and Lambda's Invoke, a replay).
# Async deliveries are not paced: a held refusal would hold a delivery slot other tenants' events
# need, and a refused delivery is retried by the queue's own backoff.
_CLIENT_TRIGGERS = frozenset({"http", "api", "replay"})


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
            if trigger in _CLIENT_TRIGGERS:  # a client waits: its refusals are paced
                wait = quotas.refusals.wait_s(namespace)  # squall.tenancy.quota.Refusals
                if wait > 0:
                    await asyncio.sleep(wait)
            raise
        try:
            return await self._invoke(function, event, trigger, request_id, qualifier, namespace,
                                      stream)
        finally:
            quotas.leave(namespace)

    async def _invoke(self, function: str, event: Any, trigger: str, request_id: str | None,
                      qualifier: str | None, namespace: str,
                      stream: ResponseStream | None = None) -> InvokeOutcome:
        if qualifier is None or qualifier == "":  # $LATEST without an await (the usual case)
            rec = self.registry.get(function, namespace)
            if rec is None:
                rec = await self.resolve(function, qualifier, namespace)  # raises not found
        else:
            rec = await self.resolve(function, qualifier, namespace)
        vs = self.registry.version_spec(rec)
        rid = request_id or new_request_id()
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
            timing: InitTiming = inst.init_timing if cold and inst.init_timing else _WARM
            if span is not None:
                span.started(cold, timing)
            start_wall = time.time()
            if stream is not None:
                stream.run_on(vs.version, cold)
            done = await execute(self.agent, vs, inst, rid, event,
                                 _NO_CTX if span is None else span.frame_ctx(), stream)
        finally:
            self.in_flight -= 1
            pool.release(inst)  # before the bookkeeping: a waiting request can have it now
        return self.finish(vs, rid, trigger, event, start_wall, cold, timing, done, span)

    def finish(self, vs: VersionSpec, rid: str, trigger: str, event: Any, start_wall: float,
               cold: bool, timing: InitTiming, done: Execution,
               span: InvocationTrace | None = None) -> InvokeOutcome:
        """Everything after the instance answered, wherever it ran: Lambda's log framing, the
        billing record, metrics, the trace span, the replay capture, and the outcome."""
        cfg = vs.config
        error, status = done.error, done.status
        duration = done.duration_ms
        billed = billed_ms(duration)
        gbs = gb_seconds(billed, cfg.memory_mb)
        error_type = None if error is None else error.get("errorType")
        max_mem = done.max_rss_kb / 1024 if done.max_rss_kb else None
        lines = done.logs
        self._write_logs(vs, rid, lines, duration, billed, max_mem, timing, cold, error)
        self.recorder.append({
            "request_id": rid, "namespace": vs.namespace, "function": vs.function,
            "version": vs.version, "trigger": trigger, "start_ts": start_wall,
            "init_ms": round(timing.total_ms, 3) if cold else 0.0,
            "duration_ms": round(duration, 3), "billed_ms": billed, "memory_mb": cfg.memory_mb,
            "gb_seconds": gbs, "status": status, "error_type": error_type,
            "cold": 1 if cold else 0, "max_memory_mb": max_mem,
        })
        self.obs.metrics.invocation(vs, trigger, status, duration, timing.total_ms, cold, gbs,
                                    error_type)
        if span is not None:
            span.end(status, error, billed)
        if self.capture is not None:  # after the outcome; encoded and written off this path
            self.capture.offer(vs, rid, trigger, status, error, event)
        return InvokeOutcome(request_id=rid, function=vs.function, version=vs.version,
                             value=done.value, error=error, cold=cold, duration_ms=duration,
                             billed_ms=billed, init_ms=timing.total_ms if cold else 0.0,
                             logs=lines)

    def _write_logs(self, vs: VersionSpec, rid: str, lines: list[str], duration: float,
                    billed: int, max_mem: float | None, timing: InitTiming, cold: bool,
                    error: dict[str, Any] | None) -> None:
        """Lambda's START / END / REPORT framing around the function's own lines."""
        cfg = vs.config
        report = (f"REPORT RequestId: {rid}\tDuration: {duration:.2f} ms\t"
                  f"Billed Duration: {billed} ms\tMemory Size: {cfg.memory_mb} MB")
        if max_mem is not None:
            report += f"\tMax Memory Used: {max_mem:.0f} MB"
        if error is None and not cold and cfg.log_format == "text" and not cfg.log_level:
            # the usual warm success, as one string: the same text as the block below
            body = "\n".join(lines) + "\n" if lines else ""
            self.logs.append_text(vs.function, rid, f"START RequestId: {rid} Version: "
                                  f"{vs.version}\n{body}END RequestId: {rid}\n{report}",
                                  vs.namespace)
            return
        block = [f"START RequestId: {rid} Version: {vs.version}", *lines]
        if error is not None and error.get("errorType") in ("TimeoutError", "OutOfMemoryError",
                                                            "Runtime.ExitError",
                                                            "ClientDisconnected"):
            block.append(f"{error['errorType']}: {error['errorMessage']}")
        block.append(f"END RequestId: {rid}")
        if cold:
            report += (f"\tInit Duration: {timing.total_ms:.2f} ms (sandbox "
                       f"{timing.sandbox_ms:.2f} ms, zygote {timing.zygote_ms:.2f} ms, "
                       f"{'spare' if timing.spare else 'fork'} {timing.fork_ms:.2f} ms)")
        if error is not None and error.get("errorType") == "OutOfMemoryError":
            report += "\tStatus: error\tError Type: Runtime.OutOfMemory"
        block.append(report)
        if vs.config.log_format != "text" or vs.config.log_level:
            block = logfmt.apply(block, rid, vs.config.log_format, vs.config.log_level, time.time())
        self.logs.append_block(vs.function, rid, block, vs.namespace)

