"""One invocation on one instance of this machine: the part of the invoker a node agent runs.

The local invoker calls it in-process; a cluster's node agent (squall.cluster.agent) calls it
for a gateway on another machine and sends the ``Execution`` back. Everything around it (which
version, quotas, logs, billing records, metrics, traces) stays with the caller.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from squall.agent.instance import ClientGone, Instance, InstanceDied

if TYPE_CHECKING:
    from squall.agent.node import Agent, VersionSpec
    from squall.invoker.api import ResponseStream


@dataclass
class Execution:
    """What running one request on an instance gave: ``status`` is succeeded, failed,
    timeout, oom or crashed; ``error`` is Lambda's error shape when it is not succeeded."""

    status: str = "succeeded"
    value: Any = None
    error: dict[str, Any] | None = None
    max_rss_kb: int = 0
    duration_ms: float = 0.0
    logs: list[str] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {"s": self.status, "v": self.value, "e": self.error, "m": self.max_rss_kb,
                "d": self.duration_ms, "l": self.logs}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Execution:
        return cls(status=d["s"], value=d.get("v"), error=d.get("e"), max_rss_kb=int(d["m"]),
                   duration_ms=float(d["d"]), logs=list(d["l"]))


class _Deadline:
    """Cancels the task running an invocation when its time limit passes, and remembers that it
    did: the one timer an invocation costs (``asyncio.wait_for`` made a task per invocation and
    ``asyncio.timeout`` a context manager; this is a third of either on the warm path)."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.task.cancel()


async def execute(agent: Agent, vs: VersionSpec, inst: Instance, rid: str, event: Any,
                  frame_ctx: dict[str, str], stream: ResponseStream | None = None) -> Execution:
    """Run ``event`` on ``inst`` within the version's time limit; map a timeout, a client gone
    mid-stream, an out-of-memory kill and a crash to Lambda's error types."""
    cfg = vs.config
    out = Execution()
    task = asyncio.current_task()
    assert task is not None
    cancelling = task.cancelling()
    deadline = _Deadline(task)
    start_wall = time.time()
    t0 = time.perf_counter()
    timer = asyncio.get_running_loop().call_later(cfg.timeout_s, deadline)
    try:
        # A streamed response is relayed inside this wait: the limit covers the whole stream
        # and so does the billed duration.
        try:
            reply = await inst.invoke(rid, event, start_wall * 1000.0 + cfg.timeout_s * 1000.0,
                                      frame_ctx, stream)
        except asyncio.CancelledError:
            # ours alone: the time limit; cancelled from outside too (shutdown): that wins
            if not deadline.fired or task.uncancel() > cancelling:
                raise
            raise TimeoutError from None
        finally:
            timer.cancel()
        # The instance reports its own peak RSS (getrusage) with each result: reading /proc or
        # the cgroup files here cost a sixth to a fifth of the hot path at high throughput.
        out.max_rss_kb = int(reply.get("mem", 0))
        if reply["t"] == "res":
            out.value = reply.get("v")
        else:
            out.error = reply.get("e") or {"errorType": "Error", "errorMessage": "unknown"}
            out.status = "failed"
    except TimeoutError:
        inst.kill()
        out.status = "timeout"
        out.error = {"errorType": "TimeoutError",
                     "errorMessage": f"Task timed out after {cfg.timeout_s:.2f} seconds",
                     "stackTrace": []}
    except ClientGone:
        inst.kill()  # it would go on producing for nobody until its time limit
        out.status = "failed"
        out.error = {"errorType": "ClientDisconnected",
                     "errorMessage": "the client closed the connection during the streamed "
                                     "response", "stackTrace": []}
    except InstanceDied:
        if agent.usage(vs, inst.id).oom_killed:
            out.status = "oom"
            out.error = {"errorType": "OutOfMemoryError",
                         "errorMessage": f"Runtime exited: the function used more than its "
                                         f"{cfg.memory_mb} MB memory limit",
                         "stackTrace": []}
        else:
            out.status = "crashed"
            out.error = {"errorType": "Runtime.ExitError",
                         "errorMessage": f"RequestId: {rid} Error: Runtime exited without "
                                         f"providing a reason (the instance process died)",
                         "stackTrace": []}
    out.duration_ms = (time.perf_counter() - t0) * 1000.0
    out.logs = inst.take_logs(rid)
    return out
