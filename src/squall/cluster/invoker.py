"""The cluster invoker: the local invoker's bookkeeping, with the instance on a node agent.

Resolve the version, check the tenant's quotas, place the request on a node (``links.choose``),
send it over that node's channel, and account for the answer exactly as a local invocation is
(``LocalInvoker.finish``: logs, billing record, metrics, trace, replay capture). A node that goes
away mid-request fails it with 502 ``instance_lost``, which is safe to retry: new requests go to
the other nodes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from squall.agent.node import InitTiming
from squall.bundle import archive
from squall.cluster.agent import spec_wire
from squall.cluster.links import AgentLink, NodeTable
from squall.errors import InstanceLost, SquallError, TooManyRequests
from squall.ids import new_request_id
from squall.invoker.api import InvokeOutcome, ResponseStream
from squall.invoker.execute import Execution
from squall.invoker.invoker import LocalInvoker
from squall.registry import FunctionRecord
from squall.tenancy.crypto import Sealer

ANSWER_MARGIN_S = 30.0  # beyond the time limit and the wait for an instance (and a bundle)


class ClusterInvoker(LocalInvoker):
    nodes: NodeTable
    sealer: Sealer

    def attach(self, nodes: NodeTable, sealer: Sealer) -> None:
        self.nodes = nodes
        self.sealer = sealer

        async def on_change(event: str, rec: FunctionRecord) -> None:
            if event == "removed":
                await self.retire(self.registry.version_spec(rec).key)

        self.registry.add_listener(on_change)

    async def _invoke(self, function: str, event: Any, trigger: str, request_id: str | None,
                      qualifier: str | None, namespace: str,
                      stream: ResponseStream | None = None) -> InvokeOutcome:
        rec = await self.resolve(function, qualifier, namespace)
        vs = self.registry.version_spec(rec)
        rid = request_id or new_request_id()
        span = None if self.obs.tracing is None else self.obs.tracing.begin(vs, trigger, rid)
        start_wall = time.time()
        self.in_flight += 1
        try:
            link = self.nodes.place(vs.key, vs.config.memory_mb)
            reply = await self._run_on(link, rec, event, rid,
                                       {} if span is None else span.frame_ctx())
        except SquallError as exc:  # no node, 429 of a full pool, node lost: counted, traced
            self.obs.metrics.not_started(vs, exc)
            if span is not None:
                span.fail(exc)
            raise
        finally:
            self.in_flight -= 1
        cold = bool(reply["cold"])
        timing = InitTiming(*reply["tm"]) if cold else InitTiming()
        if span is not None:
            span.started(cold, timing)
        if stream is not None:  # a streamed response arrives whole from another node
            stream.run_on(vs.version, cold)
        return self.finish(vs, rid, trigger, event, start_wall, cold, timing,
                           Execution.from_wire(reply["x"]), span)

    async def _run_on(self, link: AgentLink, rec: FunctionRecord, event: Any, rid: str,
                      ctx: dict[str, str]) -> dict[str, Any]:
        vs = self.registry.version_spec(rec)
        st = link.state
        st.inflight[vs.key] = st.inflight.get(vs.key, 0) + 1
        st.busy += 1
        try:
            msg = {"t": "inv", "k": vs.key, "r": rid, "ev": event, "ctx": ctx}
            # The node enforces the time limit; this bound is for a node that stops answering
            # without closing the connection (a partition, a hung agent).
            limit = vs.config.timeout_s + self.settings.queue_wait_s + ANSWER_MARGIN_S
            try:
                reply = await asyncio.wait_for(link.call(dict(msg)), limit)
                if reply["t"] == "need":  # the node has not seen this version yet
                    await self._put(link, rec, bool(reply.get("b")))
                    reply = await asyncio.wait_for(link.call(dict(msg)), limit)
            except TimeoutError:
                raise InstanceLost(f"node {link.node[:12]} did not answer within {limit:.0f} s; "
                                   f"it is safe to retry") from None
        finally:
            st.busy -= 1
            left = st.inflight.get(vs.key, 1) - 1
            if left:
                st.inflight[vs.key] = left
            else:
                st.inflight.pop(vs.key, None)
        if reply["t"] == "fail":
            status = int(reply.get("status") or 500)
            if status == 429:
                raise TooManyRequests(str(reply["msg"]), retry_after_s=int(reply.get("ra") or 1),
                                      code=str(reply["code"]))
            raise SquallError(str(reply["msg"]), code=str(reply["code"]), status=status)
        if reply["t"] != "done":
            raise SquallError(f"node agent answered {reply['t']!r}", code="agent_error")
        return reply

    async def _put(self, link: AgentLink, rec: FunctionRecord, with_bundle: bool) -> None:
        """Give a node the version's spec (secrets sealed) and, if it lacks it, the bundle."""
        vs = self.registry.version_spec(rec)
        msg: dict[str, Any] = {"t": "put", "k": vs.key,
                               "s": spec_wire(vs, rec.deps_key, self.sealer)}
        if with_bundle:
            await self.registry.ensure_local(rec)
            msg["b"] = await asyncio.to_thread(archive.pack_dir, vs.code_dir)
        reply = await link.call(msg)
        if reply["t"] == "fail":
            raise SquallError(str(reply["msg"]), code=str(reply["code"]),
                              status=int(reply.get("status") or 500))
        link.known.add(vs.key)

    async def retire(self, key: str) -> None:
        for link in self.nodes.live():
            if key in link.state.versions or key in link.known:
                try:
                    await link.call({"t": "retire", "k": key})
                except SquallError:
                    pass  # a node that went away has nothing left to retire

    def snapshot(self) -> list[dict[str, Any]]:
        """The cluster's nodes as this gateway sees them (the /api/v1/cluster/nodes view)."""
        return [{"node": link.node, "address": link.address, "alive": link.alive,
                 "cpus": link.state.cpus, "memory_bytes": link.state.mem,
                 "instance_memory_bytes": link.state.used, "in_flight": link.state.busy,
                 "versions": {k: {"instances": v[0], "idle": v[1], "zygote": bool(v[2])}
                              for k, v in link.state.versions.items()}}
                for link in self.nodes.links.values()]
