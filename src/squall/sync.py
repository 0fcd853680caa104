"""Cluster sync: keep this gateway's in-memory caches in step with a store others write too.

What the hot path reads without a database round trip - the registry's functions, the
identity's tenants, keys and secrets, the alias table, the scheduler's schedules - is written
through by the gateway that changes it. A gateway sharing the store (PostgreSQL) hears of the
change from ``Database.watch`` (LISTEN/NOTIFY, sent by the store at commit) and reloads the part
that changed here. On SQLite the workers of one data dir (``squall up --workers``) hear of it
through the store's change feed (``squall.store.changes``); with one process this never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from squall.errors import SquallError
from squall.platform import Platform
from squall.registry import FunctionRecord
from squall.store import functions as store_fn
from squall.store import tenants as store_tenants
from squall.tenancy.crypto import Sealer, decode_key

if TYPE_CHECKING:
    from squall.tenancy.service import Identity

log = logging.getLogger("squall.sync")
IDENTITY_TABLES = frozenset({"tenants", "api_keys", "secrets"})


async def run(platform: Platform) -> None:
    """Until cancelled: refresh after every batch of changes made by other gateways."""
    follow = platform.follow
    await platform.db.watch(lambda tables: refresh(platform, tables),
                            None if follow is None else follow.seen)


async def refresh(platform: Platform, tables: frozenset[str]) -> None:
    if tables & IDENTITY_TABLES and platform.identity is not None:
        await _identity(platform)
    if "functions" in tables:
        await _functions(platform)
    if "aliases" in tables:
        platform.invoker.aliases.reload()
    if "triggers" in tables and platform.events is not None:
        platform.events.scheduler.changed.set()  # it reads the schedules again
        await platform.events.triggers.reconcile()  # connectors: started here, under a lease


async def _functions(platform: Platform) -> None:
    """Adopt versions deployed elsewhere (once their bundle is here), forget removed functions;
    this node's instances of a replaced or removed version are retired."""
    registry = platform.registry
    rows = await platform.db.run(store_fn.latest_versions)
    fresh = {(r.namespace, r.name): FunctionRecord.from_row(r) for r in rows}
    for rec in fresh.values():
        current = registry.get(rec.name, rec.namespace)
        if current is not None and (current.version, current.sha256) == (rec.version,
                                                                          rec.sha256):
            continue
        try:
            await registry.ensure_local(rec)
        except SquallError:  # its bundle or requirements cannot be had: keep serving the rest
            log.exception("cannot take version %d of %s/%s", rec.version, rec.namespace,
                          rec.name)
            continue
        registry.adopt(rec)
        log.info("took version %d of %s/%s from the store", rec.version, rec.namespace, rec.name)
        if current is not None:
            _retire(platform, current)
    for rec in registry.all():
        if (rec.namespace, rec.name) not in fresh:
            registry.forget(rec)
            _retire(platform, rec)
            if platform.identity is not None:
                platform.identity.forget_function(rec.namespace, rec.name)
            platform.invoker.aliases.reload()


def _retire(platform: Platform, rec: FunctionRecord) -> None:
    """In the background: retiring drains in-flight work first, which may take a while."""
    key = platform.registry.version_spec(rec).key
    task = asyncio.get_running_loop().create_task(platform.agent.retire(key))
    platform.agent.track(task)


async def _identity(platform: Platform) -> None:
    """Reload tenants, keys and secrets; a tenant whose secrets changed is announced to the
    secret listeners exactly as a local change is (new instances see the new values)."""
    identity = platform.identity
    assert identity is not None
    before = _secret_stamps(identity)
    if platform.db.dialect == "sqlite" and not platform.settings.master_key:
        # a worker of this data dir may have rotated <data-dir>/master-key (rotate-master)
        key = await platform.db.run(lambda c: _master_key(platform.settings.data_dir, c))
        if key != identity.sealer.key:
            identity.sealer = identity.secrets.sealer = Sealer(key)
            log.info("took the rotated master key of the data dir")
    await identity.load()
    after = _secret_stamps(identity)
    for tenant in sorted(before.keys() | after.keys()):
        if before.get(tenant) != after.get(tenant):
            for listener in identity.secrets.listeners:
                listener(tenant)


def _master_key(data_dir: Path, conn: Any) -> bytes:
    """The data dir's master key now: ``master-key``, or ``master-key.new`` between a
    rotation's commit and its rename (the one that opens a sealed key of the store)."""
    keys = [decode_key((data_dir / "master-key").read_text())]
    with contextlib.suppress(FileNotFoundError, ValueError):
        keys.append(decode_key((data_dir / "master-key.new").read_text()))
    probe = store_tenants.list_keys(conn)[:1]
    for key in keys:
        try:
            if probe:
                Sealer(key).open(probe[0]["sealed_secret"], f"key/{probe[0]['id']}")
        except Exception:  # sealed under the other one
            continue
        return key
    return keys[0]


def _secret_stamps(identity: Identity) -> dict[str, list[tuple[str, float]]]:
    return {t.name: [(s["name"], s["updated_at"]) for s in identity.secrets.names(t.name)]
            for t in identity.tenants()}
