"""The alias table: aliases cached in memory (the invoke path reads a dict), written through to
the store. Only this process writes aliases (one platform per data dir), so the cache is the
truth once loaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Literal

from squall.errors import Conflict, FunctionNotFound, NotFound, SquallError
from squall.registry import FunctionRecord, Registry
from squall.routing import Alias, check_weights, validate_alias_name
from squall.store import aliases as store_aliases

Key = tuple[str, str, str]  # (namespace, function, alias)
Mode = Literal["create", "update", "set"]


class AliasNotFound(NotFound):
    code = "alias_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class RevisionMismatch(SquallError):
    code = "revision_mismatch"
    status = 412


class AliasBook:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.db = registry.db
        self._aliases: dict[Key, Alias] | None = None
        self._lock = asyncio.Lock()
        registry.add_listener(self._on_registry)

    async def _table(self) -> dict[Key, Alias]:
        if self._aliases is None:
            async with self._lock:
                if self._aliases is None:
                    rows = await self.db.run(store_aliases.all_aliases)
                    self._aliases = {(a.namespace, a.function, a.name): a for a in rows}
        return self._aliases

    def reload(self) -> None:
        """Another gateway sharing the store changed aliases (squall.sync): read the table
        again at the next use."""
        self._aliases = None

    async def get(self, namespace: str, function: str, name: str) -> Alias | None:
        return (await self._table()).get((namespace, function, name))

    async def require(self, namespace: str, function: str, name: str) -> Alias:
        alias = await self.get(namespace, function, name)
        if alias is None:
            raise AliasNotFound(f"function '{function}' has no alias '{name}'")
        return alias

    async def list(self, namespace: str, function: str) -> list[Alias]:
        table = await self._table()
        return sorted((a for (ns, fn, _), a in table.items() if (ns, fn) == (namespace, function)),
                      key=lambda a: a.name)

    async def put(self, namespace: str, function: str, name: str, *, version: int | None,
                  weights: Mapping[Any, Any] | None = None, description: str = "",
                  mode: Mode = "set", revision: str | None = None) -> Alias:
        """Create or move an alias after checking it: a valid name, weights in [0, 1] summing
        to at most 1, and every version it names deployed. ``mode`` "create" fails with 409 if
        the alias exists, "update" with 404 if it does not; ``revision``, when given, must be the
        current one (412 otherwise). Raises before anything is written."""
        validate_alias_name(name)
        checked = check_weights(version, weights or {})
        if self.registry.get(function, namespace) is None:
            raise FunctionNotFound(f"function '{function}' does not exist")
        for v in [version, *checked]:
            if v is not None and await self.registry.get_version(function, v, namespace) is None:
                raise VersionNotFound(f"function '{function}' has no version {v}: an alias "
                                      f"can only point at a deployed version")
        table = await self._table()
        current = table.get((namespace, function, name))
        if mode == "create" and current is not None:
            raise Conflict(f"alias '{name}' of '{function}' already exists",
                           code="alias_exists")
        if mode == "update" and current is None:
            raise AliasNotFound(f"function '{function}' has no alias '{name}'")
        if revision is not None and (current is None or current.revision != revision):
            raise RevisionMismatch(f"alias '{name}' has changed since revision {revision!r}: "
                                   f"read it again")
        wanted = Alias(namespace, function, name, version, checked, description)
        stored = await self.db.run(lambda c: store_aliases.put(c, wanted))
        table[(namespace, function, name)] = stored
        return stored

    async def delete(self, namespace: str, function: str, name: str) -> Alias:
        alias = await self.require(namespace, function, name)
        await self.db.run(lambda c: store_aliases.delete(c, namespace, function, name))
        (await self._table()).pop((namespace, function, name), None)
        return alias

    async def _on_registry(self, event: str, rec: FunctionRecord) -> None:
        if event != "removed":
            return
        await self.db.run(lambda c: store_aliases.delete_function(c, rec.namespace, rec.name))
        table = await self._table()
        for key in [k for k in table if k[:2] == (rec.namespace, rec.name)]:
            del table[key]
