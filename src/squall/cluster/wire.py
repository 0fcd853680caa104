"""The channel between a gateway and a node agent: msgpack frames over TCP, mutually
authenticated with a key derived from the cluster's master key.

Frames are the runtime's (``squall.runtime.protocol``: a 4-byte length and a msgpack map with
``t``). After the handshake every gateway request carries ``i`` and gets exactly one reply with
the same ``i``; replies may come in any order, so one connection carries many requests at once.
The agent also pushes ``state`` frames (no ``i``) about twice a second.

Handshake (both sides prove they hold the key; nothing else is accepted before it):
  agent   -> {"t": "hi", "node", "n": 16 random bytes}
  gateway -> {"t": "auth", "mac": HMAC(k, "gateway" + n), "n": 16 random bytes}
  agent   -> {"t": "ok", "mac": HMAC(k, "agent" + gateway's n)}   (or it closes)

Gateway -> agent:
  {"t": "put", "i", "k", "s", "b"?}  a version's spec (secrets sealed) and, if asked, its bundle
  {"t": "inv", "i", "k", "r", "ev", "ctx"}  run one request of version key k
  {"t": "retire", "i", "k"}          stop the version's instances and zygote
Agent -> gateway:
  {"t": "done", "i", "cold", "tm": [sandbox, zygote, fork ms, spare], "x": Execution.to_wire()}
  {"t": "need", "i", "b": bool}      spec unknown here (b: the bundle is missing too)
  {"t": "fail", "i", "code", "msg", "status", "ra"}  a SquallError (e.g. 429 of a full pool)
  {"t": "ok", "i"}
  {"t": "state", "cpus", "mem", "used", "busy", "v": {key: [instances, idle, zygote]}}
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from squall.runtime.protocol import HEADER, MAX_FRAME, ProtocolError, decode, encode

__all__ = ["ChannelError", "accept", "channel_key", "connect", "read_frame", "write_frame"]

HANDSHAKE_S = 10.0


class ChannelError(Exception):
    """The peer failed the handshake or broke the protocol."""


def channel_key(master_key: bytes) -> bytes:
    """The channel's key: HKDF of the master key, so the master key never crosses a wire."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"squall cluster agent channel v1").derive(master_key)


def _mac(key: bytes, who: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, who + nonce, hashlib.sha256).digest()


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    head = await reader.readexactly(HEADER.size)
    (size,) = HEADER.unpack(head)
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes is over the limit")
    return decode(await reader.readexactly(size))


def write_frame(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
    writer.write(encode(msg))


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: bytes,
                 node: str) -> None:
    """The agent's side of the handshake; ChannelError if the gateway does not hold the key."""
    nonce = os.urandom(16)
    write_frame(writer, {"t": "hi", "node": node, "n": nonce})
    msg = await asyncio.wait_for(read_frame(reader), HANDSHAKE_S)
    mac, theirs = msg.get("mac"), msg.get("n")
    if (msg["t"] != "auth" or not isinstance(mac, bytes) or not isinstance(theirs, bytes)
            or not hmac.compare_digest(mac, _mac(key, b"gateway", nonce))):
        raise ChannelError("the gateway did not prove it holds the cluster key")
    write_frame(writer, {"t": "ok", "mac": _mac(key, b"agent", theirs)})
    await writer.drain()


async def connect(host: str, port: int,
                  key: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """The gateway's side: open, prove the key, check the agent's proof; returns the node id."""
    timeout = HANDSHAKE_S
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        hello = await asyncio.wait_for(read_frame(reader), timeout)
        nonce = hello.get("n")
        if hello["t"] != "hi" or not isinstance(nonce, bytes):
            raise ChannelError("not a squall node agent")
        mine = os.urandom(16)
        write_frame(writer, {"t": "auth", "mac": _mac(key, b"gateway", nonce), "n": mine})
        ok = await asyncio.wait_for(read_frame(reader), timeout)
        mac = ok.get("mac")
        if ok["t"] != "ok" or not isinstance(mac, bytes) or \
                not hmac.compare_digest(mac, _mac(key, b"agent", mine)):
            raise ChannelError("the node agent did not prove it holds the cluster key")
    except BaseException:
        writer.close()
        raise
    return reader, writer, str(hello.get("node", ""))
