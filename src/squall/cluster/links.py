"""The gateway's side of the channel: one multiplexed connection per node agent, the table of
nodes, and placement (which node runs the next request of a version)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import zlib
from dataclasses import dataclass, field
from typing import Any

from squall.cluster import wire
from squall.errors import InstanceLost, ServiceUnavailable
from squall.runtime.protocol import ProtocolError

log = logging.getLogger("squall.cluster")

# A node with this many of this gateway's requests per CPU is busy: a zygote there no longer
# outweighs an idle node (a cold start elsewhere beats queueing behind a full node).
BUSY_PER_CPU = 4.0
DRAIN_ABOVE = 256 * 1024  # bytes buffered for one agent before a request waits for the socket


@dataclass
class NodeState:
    """What an agent last said of itself (``state`` frames) and what this gateway has sent it."""

    cpus: int = 1
    mem: int = 0
    used: int = 0
    versions: dict[str, list[int]] = field(default_factory=dict)  # key -> [size, idle, zygote]
    inflight: dict[str, int] = field(default_factory=dict)  # this gateway's, per version key
    busy: int = 0  # this gateway's requests in flight on the node


class AgentLink:
    def __init__(self, node: str, host: str, port: int, key: bytes) -> None:
        self.node, self.host, self.port = node, host, port
        self._key = key
        self.state = NodeState()
        self.known: set[str] = set()  # version keys whose spec this connection has given
        self.alive = False
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def open(self) -> None:
        reader, writer, _ = await wire.connect(self.host, self.port, self._key)
        self._writer = writer
        self.alive = True
        self._task = asyncio.get_running_loop().create_task(self._read(reader))

    async def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one request, wait for its reply; InstanceLost if the node goes away first."""
        writer = self._writer
        if not self.alive or writer is None:
            raise InstanceLost(f"node {self.node[:12]} is gone; retry the request")
        i = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[i] = fut
        msg["i"] = i
        try:
            wire.write_frame(writer, msg)
            transport = writer.transport
            if transport.get_write_buffer_size() > DRAIN_ABOVE:
                await writer.drain()
            return await fut
        except ConnectionError as exc:
            raise InstanceLost(f"node {self.node[:12]} went away ({exc}); retry the "
                               f"request") from None
        finally:
            self._pending.pop(i, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                msg = await wire.read_frame(reader)
                if msg["t"] == "state":
                    st = self.state
                    st.cpus, st.mem, st.used = int(msg["cpus"]), int(msg["mem"]), int(msg["used"])
                    st.versions = msg["v"]
                    continue
                fut = self._pending.get(msg.get("i", -1))
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (asyncio.IncompleteReadError, ConnectionError, ProtocolError, OSError) as exc:
            if self.alive:
                log.warning("lost node agent %s at %s: %s", self.node[:12], self.address,
                            exc or type(exc).__name__)
        finally:
            self._lost()

    def _lost(self) -> None:
        self.alive = False
        lost = InstanceLost(f"node {self.node[:12]} went away while running the request; it "
                            f"is safe to retry (another node takes it)")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(lost)
        self._pending.clear()
        if self._writer is not None:
            self._writer.close()

    async def close(self) -> None:
        self.alive = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._lost()


class NodeTable:
    """The node agents this gateway reaches, by Ray node id."""

    def __init__(self) -> None:
        self.links: dict[str, AgentLink] = {}

    def live(self) -> list[AgentLink]:
        return [link for link in self.links.values() if link.alive]

    def place(self, key: str, memory_mb: int) -> AgentLink:
        """The node for the next request of version ``key`` (``choose``); 503 ``no_nodes``
        when no agent is reachable."""
        links = self.live()
        if not links:
            raise ServiceUnavailable("no node agent of the cluster is reachable; the gateway "
                                     "retries placing agents every second",
                                     code="no_nodes")
        return choose(links, key, memory_mb * 1024 * 1024)


def choose(links: list[AgentLink], key: str, memory: int) -> AgentLink:
    """Placement, in order: a node with a warm instance of the version that this gateway is
    not already using; a node with the version's zygote (a fork, not a build); the node with
    the most free capacity (requests per CPU, then memory left after this instance). Ties go
    to the same node for the same version (a hash of the key), so a version's instances
    gather where its zygote is."""
    best: AgentLink | None = None
    best_score: tuple[float, ...] = ()
    pivot = zlib.crc32(key.encode()) % len(links)
    for n, link in enumerate(links):
        st = link.state
        size, _idle, zygote = st.versions.get(key, (0, 0, 0))
        load = st.busy / max(1, st.cpus)
        mem_ok = not st.mem or st.mem - st.used >= memory
        score = (float(size - st.inflight.get(key, 0) > 0), float(load < BUSY_PER_CPU),
                 float(zygote), float(mem_ok), -load, float(n == pivot))
        if best is None or score > best_score:
            best, best_score = link, score
    assert best is not None
    return best
