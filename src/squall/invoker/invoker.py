"""The local invoker: resolve the version, take an instance, run, time out, record."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from squall.agent.instance import Instance, InstanceDied
from squall.agent.node import Agent, InitTiming, VersionSpec
from squall.config import Settings
from squall.errors import FunctionNotFound
from squall.invoker.api import InvokeOutcome
from squall.logs import LogSink
from squall.metering.billing import billed_ms, gb_seconds
from squall.metering.recorder import Recorder
from squall.registry import FunctionRecord, Registry


class LocalInvoker:
    def __init__(self, settings: Settings, registry: Registry, agent: Agent, recorder: Recorder,
                 logs: LogSink) -> None:
        self.settings = settings
        self.registry = registry
        self.agent = agent
        self.recorder = recorder
        self.logs = logs
        self.in_flight = 0

    async def resolve(self, function: str, qualifier: str | None,
                      namespace: str) -> FunctionRecord:
        rec = self.registry.get(function, namespace)
        if rec is None:
            raise FunctionNotFound(f"function '{function}' does not exist; "
                                   f"deploy it with `squall deploy`")
        if qualifier in (None, "", "$LATEST"):
            return rec
        assert qualifier is not None
        if not qualifier.isdigit():
            raise FunctionNotFound(f"unknown qualifier '{qualifier}' for '{function}': "
                                   f"use $LATEST or a version number")
        found = await self.registry.get_version(function, int(qualifier), namespace)
        if found is None:
            raise FunctionNotFound(f"function '{function}' has no version {qualifier}")
        return found

    async def invoke(self, function: str, event: Any, *, trigger: str = "api",
                     request_id: str | None = None, qualifier: str | None = None,
                     namespace: str = "default") -> InvokeOutcome:
        rec = await self.resolve(function, qualifier, namespace)
        vs = self.registry.version_spec(rec)
        rid = request_id or str(uuid.uuid4())
        pool = self.agent.pool(vs)
        inst, cold = await pool.acquire()
        self.in_flight += 1
        try:
            return await self._run(vs, inst, cold, rid, event, trigger)
        finally:
            self.in_flight -= 1
            pool.release(inst)

    async def _run(self, vs: VersionSpec, inst: Instance, cold: bool, rid: str, event: Any,
                   trigger: str) -> InvokeOutcome:
        cfg = vs.config
        timing: InitTiming = inst.init_timing if cold and inst.init_timing else InitTiming()
        start_wall = time.time()
        t0 = time.perf_counter()
        value: Any = None
        max_rss_kb = 0
        error: dict[str, Any] | None = None
        status = "succeeded"
        try:
            reply = await asyncio.wait_for(
                inst.invoke(rid, event, start_wall * 1000.0 + cfg.timeout_s * 1000.0, {}),
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
                                                            "Runtime.ExitError"):
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
        self.logs.append_block(vs.function, rid, block, vs.namespace)

