"""Limits that hold across the gateway processes of one data dir (``squall up --workers N``).

Each worker has its own event loop, instance pools and counters; what must hold for the sum of
them is kept in small files under ``<data-dir>/limits``, with POSIX record locks (``lockf``):
the kernel drops a process's locks when it exits, so a worker killed mid-request gives back
what it held, and nothing needs cleaning up after it.

- ``Slots``: n tokens in one file; byte i locked by a process = token i is held. A version's
  concurrent executions (``max_instances`` x ``concurrency``) and a tenant's
  (``max_concurrency``) each take one per invocation. A process never opens a file twice:
  closing any descriptor of a file drops all of the process's locks on it.
- ``Bucket``: a token bucket (a tenant's ``rate``) whose state is 16 bytes of the file, read
  and written under the file's lock.
- ``Tally``: one number per worker (a tenant's instance memory), summed under the lock when a
  worker wants to add to it.

With one worker (the default) none of this exists: the in-process counters are exact.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import struct
from pathlib import Path

from squall.tenancy.quota import Bucket as BucketState

_LOCK_AT = 1 << 20  # the byte locked around a read-modify-write (past any token)
_TALLY = struct.Struct("<q")
_BUCKET = struct.Struct("<dd")
SEEN_NONE_LEFT = 1 << 62


def _busy(exc: OSError) -> bool:
    return exc.errno in (errno.EAGAIN, errno.EACCES)


class _File:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def lock(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, _LOCK_AT)

    def unlock(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, _LOCK_AT)


class Slots(_File):
    """``n`` tokens shared by every process that opens ``path``. ``n`` may change (a new
    limit); tokens held above it are given back as usual."""

    def __init__(self, path: Path, n: int, share: tuple[int, int] = (0, 1)) -> None:
        super().__init__(path)
        self.n = n
        self.mine: set[int] = set()
        # (this worker's index, workers): its scan starts at its own share of the tokens, so
        # the workers rarely try a token another holds (each try is a system call). Tokens are
        # counted, not owned: any worker may take any free one.
        self.share = share

    def take(self) -> bool:
        """Take a free token (False when all n are held, here or by other processes)."""
        n = self.n
        mine = self.mine
        start = self.share[0] * n // self.share[1]
        for k in range(n):
            i = (start + k) % n
            if i in mine:
                continue
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, i)
            except OSError as exc:
                if _busy(exc):
                    continue
                raise
            mine.add(i)
            return True
        return False

    def give(self) -> None:
        """Give back one token this process holds."""
        if self.mine:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, self.mine.pop())


class Bucket(_File):
    """The shared state of one token bucket (``squall.tenancy.quota.take`` decides)."""

    def read(self) -> BucketState | None:
        raw = os.pread(self.fd, _BUCKET.size, 0)
        if len(raw) < _BUCKET.size:
            return None
        tokens, at = _BUCKET.unpack(raw)
        return BucketState(tokens, at)

    def write(self, state: BucketState) -> None:
        os.pwrite(self.fd, _BUCKET.pack(state.tokens, state.at), 0)


class Tally(_File):
    """One non-negative number per worker; ``others`` sums every worker's but this one's."""

    def __init__(self, path: Path, index: int, workers: int) -> None:
        super().__init__(path)
        self.index = index
        self.workers = workers

    def others(self) -> int:
        raw = os.pread(self.fd, _TALLY.size * self.workers, 0)
        values = [_TALLY.unpack_from(raw, at)[0]
                  for at in range(0, len(raw) - _TALLY.size + 1, _TALLY.size)]
        return sum(v for i, v in enumerate(values) if i != self.index)

    def set(self, value: int) -> None:
        os.pwrite(self.fd, _TALLY.pack(value), _TALLY.size * self.index)

    def set_for(self, index: int, value: int) -> None:
        os.pwrite(self.fd, _TALLY.pack(value), _TALLY.size * index)

    def lowest(self, exclude: int = -1) -> int:
        """The smallest value a worker but ``exclude`` holds (0 for one that never wrote)."""
        raw = os.pread(self.fd, _TALLY.size * self.workers, 0).ljust(
            _TALLY.size * self.workers, b"\0")
        values = [_TALLY.unpack_from(raw, _TALLY.size * i)[0]
                  for i in range(self.workers) if i != exclude]
        return min(values, default=SEEN_NONE_LEFT)


def _name(kind: str, key: str) -> str:
    return f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:24]}"


class SharedLimits:
    """The files of one data dir's workers, opened once each (see the module's note)."""

    def __init__(self, root: Path, index: int, workers: int) -> None:
        self.root = root
        self.index = index
        self.workers = workers
        self._slots: dict[str, Slots] = {}
        self._buckets: dict[str, Bucket] = {}
        self._tallies: dict[str, Tally] = {}

    @classmethod
    def reset(cls, root: Path) -> None:
        """Worker 0 at startup, before the others exist: nothing from the last run counts."""
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True, mode=0o700, exist_ok=True)

    def slots(self, kind: str, key: str, n: int) -> Slots:
        name = _name(kind, key)
        s = self._slots.get(name)
        if s is None:
            s = self._slots[name] = Slots(self.root / name, n, (self.index, self.workers))
        s.n = n
        return s

    def bucket(self, key: str) -> Bucket:
        name = _name("rate", key)
        b = self._buckets.get(name)
        if b is None:
            b = self._buckets[name] = Bucket(self.root / name)
        return b

    def tally(self, key: str, kind: str = "memory") -> Tally:
        name = _name(kind, key)
        t = self._tallies.get(name)
        if t is None:
            t = self._tallies[name] = Tally(self.root / name, self.index, self.workers)
        return t
