"""Identity: tenants and API keys, cached in memory, written through to the store.

``authenticate`` is the one place a bearer key is checked (see ``squall.tenancy.api``). Keys and
tenants are few and change rarely, so the whole set lives in memory: a request never waits on the
database to be authorised, and a revocation takes effect on the next request. Last-use times are
collected in memory and written once every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squall.errors import Conflict, NotFound, Unauthorized
from squall.store import tenants as store
from squall.store.db import Database
from squall.tenancy import keys
from squall.tenancy.crypto import Sealer, write_private
from squall.tenancy.model import (
    DEFAULT_TENANT,
    Principal,
    Scope,
    Tenant,
    TenantLimits,
    check_limits,
    parse_scopes,
    validate_tenant_name,
)
from squall.tenancy.quota import Quotas
from squall.tenancy.secrets import SecretBox

log = logging.getLogger("squall.tenancy")
_UNAUTHORIZED = ("missing, malformed, unknown, revoked or expired API key: send "
                 "`Authorization: Bearer sq_...` with a live key (`squall key create`)")
MAX_KEY_TTL_S = 10 * 365 * 86400.0


@dataclass
class _Key:
    id: str
    name: str | None
    tenant: str
    scopes: frozenset[Scope]
    secret_hash: str
    secret: str  # unsealed, for SigV4; never logged or returned after creation
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None

    function: str | None = None  # ephemeral credentials of one function's instances

    def live(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def principal(self) -> Principal:
        return Principal(self.id, self.tenant, self.scopes, self.function)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "tenant": self.tenant,
                "scopes": sorted(self.scopes), "access_key_id": keys.access_key_id(self.id),
                "created_at": self.created_at, "expires_at": self.expires_at,
                "revoked_at": self.revoked_at, "last_used_at": self.last_used_at}


class Identity:
    """Built by the server; ``load`` once at startup (on the db thread's results), ``run`` as a
    background task (flushes last-use times)."""

    def __init__(self, db: Database, sealer: Sealer, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.sealer = sealer
        self.clock = clock
        self.secrets = SecretBox(db, sealer, clock=clock)
        self.quotas = Quotas(self.limits)
        self._tenants: dict[str, Tenant] = {}
        self._keys: dict[str, _Key] = {}
        self._used: dict[str, float] = {}
        # credentials handed to functions' instances: in memory only, gone with the process
        self._ephemeral: dict[str, _Key] = {}
        self._function_keys: dict[tuple[str, str], str] = {}
        self.region = "us-east-1"

    # -- loading ------------------------------------------------------------------------------

    async def load(self) -> None:
        tenants = await self.db.run(store.list_tenants)
        rows = await self.db.run(store.list_keys)
        self._tenants = {t["name"]: _tenant(t) for t in tenants}
        self._keys = {}
        for r in rows:
            secret = self.sealer.open(r["sealed_secret"], f"key/{r['id']}").decode()
            self._keys[r["id"]] = _Key(
                r["id"], r["name"], r["tenant"], parse_scopes(r["scopes"]), r["secret_hash"],
                secret, r["created_at"], r["expires_at"], r["revoked_at"], r["last_used_at"])
        await self.secrets.load()

    async def bootstrap(self, data_dir: Path) -> Path | None:
        """First start of a data dir (no live admin key): create one and write it to
        ``<data-dir>/admin-key`` (0600). Returns the path when a key was created."""
        now = self.clock()
        if any(Scope.ADMIN in k.scopes and k.live(now) for k in self._keys.values()):
            return None
        created = await self.create_key(DEFAULT_TENANT, [Scope.ADMIN], name="bootstrap-admin")
        path = data_dir / "admin-key"
        write_private(path, created["key"] + "\n")
        return path

    # -- the edge -----------------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized(_UNAUTHORIZED)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized(_UNAUTHORIZED)
        return self.authenticate_token(token)

    def authenticate_token(self, token: str) -> Principal:
        parsed = keys.parse_token(token)
        if parsed is None:
            raise Unauthorized(_UNAUTHORIZED)
        key = self._keys.get(parsed[0])
        ok = keys.secret_matches(parsed[1], None if key is None else key.secret_hash)
        now = self.clock()
        if not ok or key is None or not key.live(now):
            raise Unauthorized(_UNAUTHORIZED)
        self._used[key.id] = now
        return key.principal()

    def signing_key(self, access_key_id: str) -> tuple[str, Principal] | None:
        kid = keys.key_id_of_access_key(access_key_id)
        key = None if kid is None else self._keys.get(kid) or self._ephemeral.get(kid)
        if key is None or not key.live(self.clock()):
            return None
        return key.secret, key.principal()

    def function_credentials(self, tenant: str, function: str) -> tuple[str, str]:
        """(access key id, secret) for a function's instances: the ``storage`` scope on its
        tenant's buckets and nothing else. Never stored: they live as long as this process (a
        restart issues new ones to the new sandboxes), and go when the function is removed or
        its tenant is."""
        kid = self._function_keys.get((tenant, function))
        key = None if kid is None else self._ephemeral.get(kid)
        if key is None:
            new = keys.generate()
            key = _Key(new.key_id, f"function:{function}", tenant, frozenset({Scope.STORAGE}),
                       keys.hash_secret(new.secret), new.secret, self.clock(), None, None, None,
                       function=function)
            self._ephemeral[key.id] = key
            self._function_keys[(tenant, function)] = key.id
        return keys.access_key_id(key.id), key.secret

    def instance_env(self, tenant: str, function: str, env: dict[str, str],
                     s3_endpoint: str | None) -> dict[str, str]:
        """What the platform adds to a version's environment: its secret references opened,
        and when the object store runs, the endpoint and the function's own credentials so that
        ``boto3.client("s3")`` works with no configuration."""
        out = self.secrets.resolve(tenant, env)
        if s3_endpoint:
            akid, secret = self.function_credentials(tenant, function)
            out.update(AWS_ENDPOINT_URL_S3=s3_endpoint, AWS_ACCESS_KEY_ID=akid,
                       AWS_SECRET_ACCESS_KEY=secret, AWS_REGION=self.region,
                       AWS_DEFAULT_REGION=self.region)
        return out

    def forget_function(self, tenant: str, function: str) -> None:
        kid = self._function_keys.pop((tenant, function), None)
        if kid is not None:
            self._ephemeral.pop(kid, None)

    def touch(self, key_id: str) -> None:
        self._used[key_id] = self.clock()

    async def run(self) -> None:
        """Write last-use times every 5 s (and once more when cancelled)."""
        try:
            while True:
                await asyncio.sleep(5)
                await self.flush()
        finally:
            if self._used:
                used, self._used = self._used, {}
                await asyncio.shield(self.db.run(lambda c: store.touch_keys(c, used)))

    async def flush(self) -> None:
        if self._used:
            used, self._used = self._used, {}
            for kid, ts in used.items():
                if kid in self._keys:
                    self._keys[kid].last_used_at = ts
            await self.db.run(lambda c: store.touch_keys(c, used))

    # -- tenants ------------------------------------------------------------------------------

    def tenant_exists(self, tenant: str) -> bool:
        return tenant in self._tenants

    def tenant(self, name: str) -> Tenant:
        t = self._tenants.get(name)
        if t is None:
            raise NotFound(f"tenant {name!r} does not exist", code="tenant_not_found")
        return t

    def tenants(self) -> list[Tenant]:
        return sorted(self._tenants.values(), key=lambda t: t.name)

    def limits(self, tenant: str) -> TenantLimits:
        t = self._tenants.get(tenant)
        return TenantLimits() if t is None else t.limits

    def uid(self, tenant: str) -> int | None:
        t = self._tenants.get(tenant)
        return None if t is None else t.uid

    async def create_tenant(self, name: str, limits: dict[str, Any]) -> Tenant:
        validate_tenant_name(name)
        values = TenantLimits(**check_limits(limits)).to_dict()
        row = await self.db.run(lambda c: store.create_tenant(c, name, values, self.clock()))
        if row is None:
            raise Conflict(f"tenant {name!r} already exists", code="tenant_exists")
        t = self._tenants[name] = _tenant(row)
        return t

    async def update_tenant(self, name: str, changes: dict[str, Any]) -> Tenant:
        t = self.tenant(name)
        merged = {**t.limits.to_dict(), **check_limits(changes)}
        await self.db.run(lambda c: store.update_tenant(c, name, merged, self.clock()))
        t.limits = TenantLimits.from_dict(merged)
        t.updated_at = self.clock()
        return t

    async def delete_tenant(self, name: str) -> None:
        """Forget the tenant, its secrets and keys (its functions are gone already)."""
        self.tenant(name)
        now = self.clock()
        await self.db.run(lambda c: store.delete_tenant(c, name, now))
        self._tenants.pop(name, None)
        for t, fn in [k for k in self._function_keys if k[0] == name]:
            self.forget_function(t, fn)
        for k in self._keys.values():
            if k.tenant == name and k.revoked_at is None:
                k.revoked_at = now
        self.secrets.forget_tenant(name)

    async def counts(self, name: str) -> dict[str, int]:
        return await self.db.run(lambda c: store.tenant_counts(c, name))

    # -- keys ---------------------------------------------------------------------------------

    async def create_key(self, tenant: str, scopes: list[Scope] | str, *,
                         name: str | None = None,
                         expires_in_s: float | None = None) -> dict[str, Any]:
        """Create a key; the returned dict is the only place its secret ever appears."""
        self.tenant(tenant)
        scope_set = parse_scopes([str(s) for s in scopes] if isinstance(scopes, list) else scopes)
        if Scope.ADMIN in scope_set and tenant != DEFAULT_TENANT:
            raise Conflict("admin keys belong to the default tenant: admin acts on every "
                           "tenant already", code="admin_key_tenant")
        new = keys.generate()
        now = self.clock()
        expires = None if expires_in_s is None else now + expires_in_s
        row = {"id": new.key_id, "name": name, "tenant": tenant,
               "scopes": ",".join(sorted(scope_set)), "secret_hash": keys.hash_secret(new.secret),
               "sealed_secret": self.sealer.seal(new.secret.encode(), f"key/{new.key_id}"),
               "created_at": now, "expires_at": expires}
        await self.db.run(lambda c: store.insert_key(c, row))
        key = _Key(new.key_id, name, tenant, scope_set, keys.hash_secret(new.secret), new.secret,
                   now, expires, None, None)
        self._keys[key.id] = key
        return {**key.public(), "key": new.token, "secret_access_key": new.secret}

    def list_keys(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return [k.public() for k in sorted(self._keys.values(), key=lambda k: k.created_at)
                if tenant is None or k.tenant == tenant]

    def key(self, key_id: str) -> dict[str, Any]:
        k = self._keys.get(key_id)
        if k is None:
            raise NotFound(f"no API key {key_id!r}", code="key_not_found")
        return k.public()

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        k = self._keys.get(key_id)
        if k is None:
            raise NotFound(f"no API key {key_id!r}", code="key_not_found")
        if k.revoked_at is None:
            now = self.clock()
            k.revoked_at = now  # in memory first: the next request is refused
            await self.db.run(lambda c: store.revoke_key(c, key_id, now))
        return k.public()

    # -- master key ---------------------------------------------------------------------------

    def resealed_keys(self, sealer: Sealer) -> dict[str, bytes]:
        return {k.id: sealer.seal(k.secret.encode(), f"key/{k.id}") for k in self._keys.values()}


def _tenant(row: dict[str, Any]) -> Tenant:
    return Tenant(row["name"], int(row["uid"]), TenantLimits.from_dict(row["limits"]),
                  row["created_at"], row["updated_at"])
