"""Placement (squall.cluster.links.choose) and the channel's handshake, without Ray."""

from __future__ import annotations

import asyncio
import os

import pytest

from squall.cluster import wire
from squall.cluster.links import AgentLink, NodeState, choose
from squall.errors import InstanceLost

KEY = "default-f-v1-abcdefabcdef"
GB = 2**30


def link(name: str, *, cpus: int = 2, mem: int = 8 * GB, used: int = 0, busy: int = 0,
         versions: dict[str, list[int]] | None = None, mine: int = 0) -> AgentLink:
    a = AgentLink(name, "127.0.0.1", 1, b"k" * 32)
    a.alive = True
    a.state = NodeState(cpus=cpus, mem=mem, used=used, busy=busy, versions=versions or {},
                        inflight={KEY: mine} if mine else {})
    return a


def test_a_warm_instance_wins() -> None:
    a = link("a", versions={KEY: [0, 0, 1]})
    b = link("b", versions={KEY: [2, 1, 1]}, busy=3)
    assert choose([a, b], KEY, 128 * 2**20) is b


def test_instances_this_gateway_already_uses_are_not_warm() -> None:
    a = link("a", versions={KEY: [2, 0, 1]}, mine=2, busy=2)
    b = link("b")
    # a has the zygote and is not busy (2 per 2 CPUs): a fork there beats a build on b
    assert choose([a, b], KEY, 128 * 2**20) is a
    # a busy node's zygote no longer outweighs an idle node
    a.state.busy = 9
    assert choose([a, b], KEY, 128 * 2**20) is b


def test_memory_decides_between_cold_nodes() -> None:
    full = link("full", mem=1 * GB, used=1 * GB - 64 * 2**20)
    roomy = link("roomy", busy=1)
    assert choose([full, roomy], KEY, 128 * 2**20) is roomy


def test_least_loaded_then_same_node_for_same_version() -> None:
    a, b, c = link("a", busy=2), link("b", busy=0), link("c", busy=0)
    first = choose([a, b, c], KEY, 1)
    assert first in (b, c)
    assert all(choose([a, b, c], KEY, 1) is first for _ in range(5))


async def test_handshake_needs_the_same_key() -> None:
    key = wire.channel_key(os.urandom(32))
    accepted: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await wire.accept(reader, writer, key, "node-1")
            accepted.append("yes")
        except (wire.ChannelError, asyncio.IncompleteReadError, ConnectionError):
            accepted.append("no")
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        _, writer, node = await wire.connect("127.0.0.1", port, key)
        assert node == "node-1"
        writer.close()
        with pytest.raises((wire.ChannelError, asyncio.IncompleteReadError, ConnectionError)):
            await wire.connect("127.0.0.1", port, wire.channel_key(os.urandom(32)))
        await asyncio.sleep(0.05)
    assert accepted == ["yes", "no"]


async def test_a_lost_connection_fails_requests_in_flight() -> None:
    key = wire.channel_key(os.urandom(32))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await wire.accept(reader, writer, key, "n")
        await wire.read_frame(reader)  # a request arrives; the node dies before answering
        writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        a = AgentLink("n", "127.0.0.1", server.sockets[0].getsockname()[1], key)
        await a.open()
        with pytest.raises(InstanceLost) as info:
            await a.call({"t": "inv", "k": KEY})
        assert info.value.status == 502 and info.value.code == "instance_lost"
        assert not a.alive
        with pytest.raises(InstanceLost):  # and later ones fail fast, not hang
            await a.call({"t": "inv", "k": KEY})
