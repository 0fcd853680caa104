"""Who is on the other end of a Runtime API connection.

The endpoint must be ``host:port`` (AWS_LAMBDA_RUNTIME_API), and with network = "host" the
sandbox shares the host's loopback: any local process could connect to an instance's port and
take its events. So each accepted connection is checked once: the kernel's TCP table of the
instance's network namespace (/proc/<pid>/net/tcp) names the socket inode at the other end,
and that inode must be an open fd of the instance or one of its descendants (a shell bootstrap
may run the real runtime as a child). Anything else is refused before a byte is read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

_LOOPBACK_HEX = "0100007F"  # 127.0.0.1 in /proc/net/tcp's byte order (little-endian)


def _peer_inode(pid: int, peer_port: int, our_port: int) -> int | None:
    """The inode of the socket 127.0.0.1:peer_port -> 127.0.0.1:our_port seen from ``pid``."""
    want_local = f"{_LOOPBACK_HEX}:{peer_port:04X}"
    want_remote = f"{_LOOPBACK_HEX}:{our_port:04X}"
    try:
        with open(f"/proc/{pid}/net/tcp") as f:
            next(f, None)  # header
            for line in f:
                cols = line.split()
                if len(cols) > 9 and cols[1] == want_local and cols[2] == want_remote:
                    return int(cols[9])
    except OSError:
        return None
    return None


def _tree(pid: int) -> Iterator[int]:
    """``pid`` and its descendants (children of every thread), depth first."""
    stack, seen = [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        yield p
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
            except OSError:
                continue


def _holds(pid: int, target: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def belongs_to(pid: int, peer_port: int, our_port: int) -> bool:
    """True when the connection from ``peer_port`` to ``our_port`` is held by ``pid``'s tree."""
    inode = _peer_inode(pid, peer_port, our_port)
    if inode is None or inode == 0:
        return False
    target = f"socket:[{inode}]"
    return any(_holds(p, target) for p in _tree(pid))
