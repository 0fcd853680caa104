"""The registry: deployed functions and their versions, cached in memory, backed by the store."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from squall.agent.node import VersionSpec
from squall.bundle.spec import FunctionConfig
from squall.store import functions as store_fn
from squall.store.db import Database

log = logging.getLogger("squall.registry")


@dataclass(frozen=True)
class FunctionRecord:
    namespace: str
    name: str
    version: int
    sha256: str
    config: FunctionConfig
    deps_key: str | None
    created_at: float

    @classmethod
    def from_row(cls, row: store_fn.VersionRow) -> FunctionRecord:
        return cls(row.namespace, row.name, row.version, row.sha256,
                   FunctionConfig.from_dict(row.config), row.deps_key, row.created_at)


Listener = Callable[[str, FunctionRecord], Awaitable[None]]


class Registry:
    """``get`` is a dict lookup (the hot path); writes go through the store first, then here."""

    def __init__(self, db: Database, data_dir: Path) -> None:
        self.db = db
        self.bundles_dir = data_dir / "bundles"
        self.envs_dir = data_dir / "envs"
        self._latest: dict[tuple[str, str], FunctionRecord] = {}
        self._versions: dict[tuple[str, str, int], FunctionRecord] = {}
        self._listeners: list[Listener] = []

    async def load(self) -> None:
        rows = await self.db.run(store_fn.latest_versions)
        for row in rows:
            rec = FunctionRecord.from_row(row)
            self._latest[(rec.namespace, rec.name)] = rec

    def get(self, name: str, namespace: str = "default") -> FunctionRecord | None:
        return self._latest.get((namespace, name))

    def all(self) -> list[FunctionRecord]:
        return sorted(self._latest.values(), key=lambda r: (r.namespace, r.name))

    async def get_version(self, name: str, version: int,
                          namespace: str = "default") -> FunctionRecord | None:
        latest = self.get(name, namespace)
        if latest is None:
            return None
        if latest.version == version:
            return latest
        key = (namespace, name, version)
        rec = self._versions.get(key)
        if rec is None:
            row = await self.db.run(lambda c: store_fn.get_version(c, namespace, name, version))
            if row is None:
                return None
            rec = self._versions[key] = FunctionRecord.from_row(row)
        return rec

    def version_spec(self, rec: FunctionRecord) -> VersionSpec:
        deps = [self.envs_dir / rec.deps_key / "site-packages"] if rec.deps_key else []
        return VersionSpec(rec.namespace, rec.name, rec.version, rec.sha256,
                           self.bundles_dir / rec.sha256, deps, rec.config)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def _notify(self, event: str, rec: FunctionRecord) -> None:
        for listener in self._listeners:
            try:
                await listener(event, rec)
            except Exception:  # a listener's failure must not undo a committed deploy
                log.exception("registry listener failed on %s of %s", event, rec.name)

    async def set_latest(self, rec: FunctionRecord) -> None:
        self._latest[(rec.namespace, rec.name)] = rec
        await self._notify("deployed", rec)

    async def remove(self, rec: FunctionRecord) -> None:
        self._latest.pop((rec.namespace, rec.name), None)
        for key in [k for k in self._versions if k[:2] == (rec.namespace, rec.name)]:
            del self._versions[key]
        await self._notify("removed", rec)
