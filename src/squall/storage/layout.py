"""Object files on disk: ``<data-dir>/objects/data/<id[:2]>/<id>`` and ``objects/tmp/<id>``.

Files are named by a random id, never by key, so no key can name a path outside the folder.
A write goes to ``tmp/``, is fsynced, renamed into ``data/`` (one rename: a reader opens the old
file or the new one), and only then does a metadata row point at it. The rule that keeps a
crash from leaking space: a file no row points at is garbage. ``sweep`` at startup removes
``tmp/`` and every unreferenced data file (a kill -9 between rename and commit, or between a
delete's commit and its unlink).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FLUSH_BYTES = 1 << 20  # hash and write in 1 MiB batches, off the event loop
_CHECKSUMS = ("crc32", "sha1", "sha256")


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.tmp = root / "tmp"

    def prepare(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, file_id: str) -> Path:
        return self.data / file_id[:2] / file_id

    def temp(self) -> tuple[str, Path]:
        file_id = uuid.uuid4().hex
        return file_id, self.tmp / file_id

    def publish(self, tmp: Path, file_id: str) -> None:
        dest = self.path(file_id)
        dest.parent.mkdir(exist_ok=True)
        os.replace(tmp, dest)

    def remove(self, file_ids: list[str]) -> None:
        for f in file_ids:
            self.path(f).unlink(missing_ok=True)

    def sweep(self, live: set[str]) -> tuple[int, int]:
        """Remove every temp file and every data file not in ``live``; return the counts."""
        temps = 0
        for p in self.tmp.iterdir():
            p.unlink(missing_ok=True)
            temps += 1
        orphans = 0
        for sub in self.data.iterdir():
            for p in sub.iterdir():
                if p.name not in live:
                    p.unlink(missing_ok=True)
                    orphans += 1
        return temps, orphans

    def concat(self, sources: list[str]) -> tuple[str, Path]:
        """Copy the files ``sources`` one after another into a new fsynced temp file (the
        kernel copies: copy_file_range; blocking, call it in a thread)."""
        file_id, tmp = self.temp()
        with open(tmp, "wb") as out:
            for src in sources:
                with open(self.path(src), "rb") as f:
                    left = os.fstat(f.fileno()).st_size
                    while left > 0:
                        n = os.copy_file_range(f.fileno(), out.fileno(), min(left, 1 << 30))
                        if n == 0:
                            break
                        left -= n
            out.flush()
            os.fsync(out.fileno())
        return file_id, tmp


@dataclass(frozen=True)
class Written:
    file_id: str
    tmp: Path
    size: int
    md5: bytes
    sha256: str | None
    checksum: str | None  # base64, of the algorithm the Sink was asked for


class Sink:
    """Streams an upload into a temp file, computing MD5 (the ETag), and SHA-256 or an
    x-amz-checksum algorithm when asked. ``discard`` removes the temp file (any failure)."""

    def __init__(self, layout: Layout, *, sha256: bool = False,
                 checksum: str | None = None) -> None:
        self.file_id, self.tmp = layout.temp()
        self._f = open(self.tmp, "wb")  # closed by finish or discard
        self._md5 = hashlib.md5()
        self._sha = hashlib.sha256() if sha256 else None
        self._alg = checksum if checksum in _CHECKSUMS else None
        self._crc = 0
        self._csum: Any = hashlib.new(self._alg) if self._alg in ("sha1", "sha256") else None
        self._buf = bytearray()
        self.size = 0

    async def write(self, data: bytes) -> None:
        self._buf += data
        self.size += len(data)
        if len(self._buf) >= FLUSH_BYTES:
            buf, self._buf = self._buf, bytearray()
            await asyncio.to_thread(self._write, buf)

    def _write(self, buf: bytes | bytearray) -> None:
        self._md5.update(buf)
        if self._sha is not None:
            self._sha.update(buf)
        if self._alg == "crc32":
            self._crc = zlib.crc32(buf, self._crc)
        elif self._csum is not None:
            self._csum.update(buf)
        self._f.write(buf)

    async def finish(self) -> Written:
        buf, self._buf = self._buf, bytearray()
        await asyncio.to_thread(self._finish, buf)
        checksum = None
        if self._alg == "crc32":
            checksum = base64.b64encode(self._crc.to_bytes(4, "big")).decode()
        elif self._csum is not None:
            checksum = base64.b64encode(self._csum.digest()).decode()
        return Written(self.file_id, self.tmp, self.size, self._md5.digest(),
                       None if self._sha is None else self._sha.hexdigest(), checksum)

    def _finish(self, buf: bytearray) -> None:
        self._write(buf)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def discard(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.tmp.unlink(missing_ok=True)
