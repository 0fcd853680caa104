"""The frame protocol between the platform and a zygote or instance.

A frame is a 4-byte big-endian length followed by a msgpack map. Every map has ``t`` (the kind).

Host -> zygote (control socket):
  {"t": "fork", "id", "harden"} + one fd (SCM_RIGHTS): the new instance's channel
Zygote -> host:
  {"t": "ready", "init_ms"}       after importing the handler
  {"t": "init_error", "e"}        the import failed; the zygote exits
  {"t": "forked", "id", "pid"}    pid as the zygote sees it
Host -> instance (its channel):
  {"t": "inv", "id", "ev", "dl", "ctx"}
Instance -> host:
  {"t": "hello", "pid"}           first frame; the kernel attaches SCM_CREDENTIALS
  {"t": "res", "id", "v"}         the handler returned v
  {"t": "err", "id", "e"}         {errorType, errorMessage, stackTrace}
  {"t": "log", "id", "m"}         one log line of request id
  {"t": "head", "id", "s", "h"}   a streamed response begins: status, [[name, value], ...];
  {"t": "body", "id", "b"}        then its chunks as produced, ended by res (v None) or err
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024


class ProtocolError(Exception):
    """The peer sent something that is not a frame (too large, not msgpack, not a map)."""


def encode(msg: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(msg, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> dict[str, Any]:
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"undecodable frame: {exc}") from exc
    if not isinstance(msg, dict) or "t" not in msg:
        raise ProtocolError("frame is not a map with a 't' key")
    return msg


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("peer closed the channel")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> dict[str, Any]:
    """Blocking read of one frame; EOFError when the peer has closed."""
    (length,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    return decode(_recv_exact(sock, length))


class FrameReader:
    """Blocking reads of frames from one socket, usually one ``recv`` per frame (``recv_frame``
    makes two): what arrives beyond a frame is kept for the next one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def next(self) -> dict[str, Any]:
        """The next frame; EOFError when the peer has closed."""
        buf = self._buf
        need = HEADER.size
        while True:
            if len(buf) >= HEADER.size:
                (length,) = HEADER.unpack_from(buf, 0)
                if length > MAX_FRAME:
                    raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME}")
                need = HEADER.size + length
                if len(buf) >= need:
                    body = bytes(buf[HEADER.size:need])
                    del buf[:need]
                    return decode(body)
            chunk = self.sock.recv(max(65536, need - len(buf)))
            if not chunk:
                raise EOFError("peer closed the channel")
            buf += chunk


def send_frame(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall(encode(msg))
