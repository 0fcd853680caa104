"""The registry: deployed functions and their versions, cached in memory, backed by the store."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from squall.agent.node import VersionSpec
from squall.bundle.spec import FunctionConfig
from squall.errors import SquallError
from squall.store import functions as store_fn
from squall.store.db import Database

if TYPE_CHECKING:
    from squall.bundle.shared import BundleCache
    from squall.tenancy.service import Identity

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
        self._specs: dict[tuple[str, str, int, str], VersionSpec] = {}
        self.identity: Identity | None = None  # tenants' uids and secrets, set by the server
        self.s3_endpoint: str | None = None  # the object store's URL for functions, if it runs
        # a store shared with other gateways: versions' bundles are fetched from it (the server
        # sets this then; squall.bundle.shared)
        self.bundles: BundleCache | None = None

    async def load(self) -> None:
        rows = await self.db.run(store_fn.latest_versions)
        for row in rows:
            rec = FunctionRecord.from_row(row)
            try:
                await self.ensure_local(rec)
            except SquallError:  # one version whose bundle cannot be had must not stop startup
                log.exception("%s/%s is not served here: its bundle is unavailable",
                              rec.namespace, rec.name)
                continue
            self._latest[(rec.namespace, rec.name)] = rec

    async def ensure_local(self, rec: FunctionRecord) -> None:
        """The version's bundle is on this node (fetched from a shared store if need be)."""
        if self.bundles is not None:
            await self.bundles.ensure_local(rec.sha256, rec.deps_key)

    def adopt(self, rec: FunctionRecord) -> None:
        """Another gateway deployed ``rec`` (squall.sync): cache it, tell no listener (the
        deploying gateway has done what they do to the store)."""
        self._latest[(rec.namespace, rec.name)] = rec

    def forget(self, rec: FunctionRecord) -> None:
        """Another gateway removed the function (squall.sync): drop it from the caches."""
        self._latest.pop((rec.namespace, rec.name), None)
        for key in [k for k in self._versions if k[:2] == (rec.namespace, rec.name)]:
            del self._versions[key]

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
            rec = FunctionRecord.from_row(row)
            await self.ensure_local(rec)
            self._versions[key] = rec
        return rec

    def version_spec(self, rec: FunctionRecord) -> VersionSpec:
        """The agent's view of a version: with its tenant's host uid and its secret
        references opened (cached: this is on every invocation's path)."""
        key = (rec.namespace, rec.name, rec.version, rec.sha256)
        spec = self._specs.get(key)
        if spec is None:
            deps = [self.envs_dir / rec.deps_key / "site-packages"] if rec.deps_key else []
            uid, secret_env = None, {}
            if self.identity is not None:
                uid = self.identity.uid(rec.namespace)
                secret_env = self.identity.instance_env(rec.namespace, rec.name, rec.config.env,
                                                        self.s3_endpoint)
            spec = VersionSpec(rec.namespace, rec.name, rec.version, rec.sha256,
                               self.bundles_dir / rec.sha256, deps, rec.config, uid=uid,
                               secret_env=secret_env)
            if len(self._specs) > 10_000:
                self._specs.clear()
            self._specs[key] = spec
        return spec

    def invalidate(self, namespace: str | None = None) -> None:
        """Forget cached specs (a secret of the tenant changed: new instances see it)."""
        for key in [k for k in self._specs if namespace is None or k[0] == namespace]:
            del self._specs[key]

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
