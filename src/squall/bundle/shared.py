"""Bundles for gateways that share a store: published by the deploying gateway, fetched by hash.

A version names its bundle by content hash (``archive.tree_hash``). On one machine the bundle
folder under ``<data-dir>/bundles/<sha256>`` is all there is. With a shared store the deploying
gateway also writes the bundle to the store before the version row commits (``publish``), and a
gateway that meets a version it lacks fetches it, checks the hash, and caches it in its own
data dir (``ensure_local``), installing the version's requirements the same way a deploy does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from squall.bundle import archive
from squall.bundle.deps import ensure_env
from squall.errors import ServiceUnavailable
from squall.store import bundles as store_bundles
from squall.store.db import Database

log = logging.getLogger("squall.bundle.shared")


async def publish(db: Database, bundle_dir: Path, sha256: str) -> None:
    """Make the bundle fetchable by every gateway; nothing to do on a store of its own."""
    if not db.shared or await db.run(lambda c: store_bundles.has(c, sha256)):
        return
    data = await asyncio.to_thread(archive.pack_dir, bundle_dir)
    await db.run(lambda c: store_bundles.put(c, sha256, data, time.time()))


class BundleCache:
    """``ensure_local`` for one node: its bundles and dependency environments dirs."""

    def __init__(self, db: Database, bundles_dir: Path, envs_dir: Path, *, max_bytes: int,
                 max_files: int) -> None:
        self.db = db
        self.bundles_dir = bundles_dir
        self.envs_dir = envs_dir
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure_local(self, sha256: str, deps_key: str | None) -> None:
        """The bundle folder, and its requirements' environment when it has one, exist here.
        Raises ServiceUnavailable (503 ``bundle_unavailable``) when the store has no such
        bundle or its content does not hash to ``sha256``; DependencyError when the
        requirements do not install."""
        target = self.bundles_dir / sha256
        lock = self._locks.setdefault(sha256, asyncio.Lock())
        async with lock:
            if not target.is_dir():
                data = await self.db.run(lambda c: store_bundles.get(c, sha256))
                if data is None:
                    raise ServiceUnavailable(f"bundle {sha256[:12]} is in no gateway's store yet",
                                             code="bundle_unavailable")
                await asyncio.to_thread(self._unpack, data, target, sha256)
                log.info("fetched bundle %s from the store", sha256[:12])
            requirements = target / "requirements.txt"
            if deps_key and requirements.is_file():
                content = await asyncio.to_thread(requirements.read_bytes)
                await ensure_env(content, self.envs_dir, lambda _line: None)

    def _unpack(self, data: bytes, target: Path, sha256: str) -> None:
        install(data, self.bundles_dir, sha256, max_bytes=self.max_bytes,
                max_files=self.max_files)


def install(data: bytes, bundles_dir: Path, sha256: str, *, max_bytes: int,
            max_files: int) -> None:
    """Unpack a packed bundle as ``bundles_dir/<sha256>`` once its tree hashes to ``sha256``
    (ServiceUnavailable ``bundle_unavailable`` otherwise); atomic, and safe to race."""
    target = bundles_dir / sha256
    staging = bundles_dir / f".fetch-{uuid.uuid4().hex[:12]}"
    try:
        archive.unpack(data, staging, max_bytes=max_bytes, max_files=max_files)
        if archive.tree_hash(staging) != sha256:
            raise ServiceUnavailable(f"bundle {sha256[:12]} does not match its hash",
                                     code="bundle_unavailable")
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # not "another task put it there first"
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
