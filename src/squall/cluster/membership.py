"""The gateway's view of the Ray cluster: every alive node gets its agent, every agent a link.

Every second the gateway lists Ray's nodes; a new alive node gets a ``NodeAgentActor`` pinned to
it (or the one another gateway already placed: actors are named by node), a dead node's link is
dropped. Nodes added by Ray's autoscaler or KubeRay join this way, with no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

from squall.cluster.links import AgentLink, NodeTable
from squall.config import Settings
from squall.errors import ServiceUnavailable

log = logging.getLogger("squall.cluster")

NAMESPACE = "squall"
REFRESH_S = 1.0
AGENT_START_S = 150.0  # a node agent's start, its sandbox check included


def _reachable(address: str) -> None:
    """Fail fast on a Ray head that does not answer (ray.init would wait minutes)."""
    import socket

    hostport = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ServiceUnavailable(f"--cluster {address!r} is not auto, HOST:PORT or "
                                 f"ray://HOST:PORT", code="cluster_unavailable")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ServiceUnavailable(f"cannot reach the Ray head at {address}: {exc}; is `ray "
                                 f"start --head` running there?",
                                 code="cluster_unavailable") from None


class RayMembership:
    def __init__(self, settings: Settings, key: bytes, nodes: NodeTable) -> None:
        self.settings = settings
        self.address = settings.cluster
        self.key = key
        self.nodes = nodes
        self.actors: dict[str, Any] = {}
        self._connecting: set[str] = set()
        # set by ``close``: a thread still waiting for an agent to start gives up within a
        # second, so that stopping the gateway never waits on a node that will not answer
        self._closing = threading.Event()

    def connect(self) -> None:
        """Join the Ray cluster as a driver (blocking; called once at startup)."""
        try:
            import ray
        except ImportError:
            raise ServiceUnavailable("--cluster needs Ray: pip install 'squall[cluster]'",
                                     code="ray_missing") from None
        address = None if self.address == "auto" else self.address
        if address is not None:
            _reachable(address)
        try:
            ray.init(address=address or "auto", namespace=NAMESPACE, log_to_driver=False,
                     logging_level=logging.WARNING, ignore_reinit_error=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ServiceUnavailable(f"cannot join the Ray cluster at {self.address}: {exc}",
                                     code="cluster_unavailable") from None

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("cluster membership refresh failed")
            await asyncio.sleep(REFRESH_S)

    async def refresh(self) -> None:
        import ray

        nodes = await asyncio.to_thread(ray.nodes)
        alive = {n["NodeID"] for n in nodes if n.get("Alive")}
        for node_id, gone in list(self.nodes.links.items()):
            if node_id not in alive:
                log.warning("node %s left the cluster", node_id[:12])
                del self.nodes.links[node_id]
                self.actors.pop(node_id, None)
                await gone.close()
        for node_id in alive:
            link = self.nodes.links.get(node_id)
            if (link is None or not link.alive) and node_id not in self._connecting:
                self._connecting.add(node_id)
                asyncio.get_running_loop().create_task(self._attach(node_id))

    async def _attach(self, node_id: str) -> None:
        """Place (or find) the node's agent, start it, and open a link to it."""
        try:
            await self._link(node_id)
        finally:
            self._connecting.discard(node_id)

    async def _link(self, node_id: str) -> None:
        try:
            address = await asyncio.to_thread(self._start_agent, node_id)
            link = AgentLink(node_id, address["host"], int(address["port"]), self.key)
            await link.open()
        except Exception as exc:
            log.warning("node %s: agent not reachable yet (%s); retrying", node_id[:12], exc)
            return
        old = self.nodes.links.get(node_id)
        self.nodes.links[node_id] = link
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()
        log.info("node %s: agent at %s (%s)", node_id[:12], link.address,
                 address.get("sandbox", ""))

    def _start_agent(self, node_id: str) -> dict[str, Any]:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from squall.cluster.ray_actor import NodeAgentActor

        actor = self.actors.get(node_id)
        if actor is None:
            actor = NodeAgentActor.options(  # type: ignore[attr-defined]
                name=f"agent-{node_id}", namespace=NAMESPACE, lifetime="detached",
                get_if_exists=True,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(node_id, self.settings.sandbox, self.settings.agent_dir)
            self.actors[node_id] = actor
        deadline = time.monotonic() + AGENT_START_S
        try:
            started = actor.start.remote()
            while not ray.wait([started], timeout=1.0)[0]:
                if self._closing.is_set():
                    raise RuntimeError("the gateway is stopping")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the agent did not start in {AGENT_START_S:g} s")
            address: dict[str, Any] = ray.get(started)
        except Exception:
            self.actors.pop(node_id, None)
            raise
        return address

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
