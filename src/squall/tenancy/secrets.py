"""Tenant secrets: sealed at rest (AES-GCM, see ``crypto``), opened only to build an instance's
environment. squall.toml refers to them as ``env = { DB_PASSWORD = "secret:db-password" }``.

The sealed values are cached in memory (still sealed); a value is opened when a version's
environment is resolved, and only the instance's environment ever holds it in plaintext.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from squall.errors import BadRequest, Conflict, NotFound
from squall.store import tenants as store
from squall.store.db import Database, transaction
from squall.tenancy.crypto import Sealer, decode_key, encode_key, write_private

REF_PREFIX = "secret:"
MAX_SECRET_BYTES = 64 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_secret_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise BadRequest(f"invalid secret name {name!r}: 1-128 characters of letters, digits, "
                         f"'_', '.' and '-', starting with a letter or digit",
                         code="invalid_secret_name")
    return name


def references(env: Mapping[str, str]) -> dict[str, str]:
    """{VAR: secret name} for the values of ``env`` that are ``secret:NAME`` references."""
    return {k: v[len(REF_PREFIX):] for k, v in env.items()
            if isinstance(v, str) and v.startswith(REF_PREFIX)}


class SecretBox:
    def __init__(self, db: Database, sealer: Sealer, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.sealer = sealer
        self.clock = clock
        self._sealed: dict[tuple[str, str], bytes] = {}
        self._meta: dict[tuple[str, str], tuple[float, float]] = {}
        # called with a tenant whenever one of its secrets changes (caches of resolved
        # environments are dropped; new instances get the new value)
        self.listeners: list[Callable[[str], None]] = []

    async def load(self) -> None:
        rows = await self.db.run(store.list_secrets)
        self._sealed = {(r["namespace"], r["name"]): r["sealed"] for r in rows}
        self._meta = {(r["namespace"], r["name"]): (r["created_at"], r["updated_at"])
                      for r in rows}

    def _aad(self, tenant: str, name: str) -> str:
        return f"secret/{tenant}/{name}"

    async def put(self, tenant: str, name: str, value: bytes) -> bool:
        validate_secret_name(name)
        if not value:
            raise BadRequest(f"secret {name!r} has an empty value: send the value as the body "
                             f"(`squall secret set NAME` reads stdin)", code="empty_secret")
        if len(value) > MAX_SECRET_BYTES:
            raise BadRequest(f"secret {name!r} is {len(value)} bytes; the limit is "
                             f"{MAX_SECRET_BYTES}", code="secret_too_large")
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("a secret must be UTF-8 text (it becomes an environment variable)",
                             code="invalid_secret_value") from None
        if "\x00" in text:
            raise BadRequest("a secret cannot contain a NUL byte", code="invalid_secret_value")
        sealed = self.sealer.seal(value, self._aad(tenant, name))
        now = self.clock()
        created = await self.db.run(lambda c: store.put_secret(c, tenant, name, sealed, now))
        self._sealed[(tenant, name)] = sealed
        first = self._meta.get((tenant, name), (now, now))[0]
        self._meta[(tenant, name)] = (first, now)
        self._changed(tenant)
        return created

    def names(self, tenant: str) -> list[dict[str, Any]]:
        return [{"name": n, "created_at": self._meta[(t, n)][0],
                 "updated_at": self._meta[(t, n)][1]}
                for (t, n) in sorted(self._sealed) if t == tenant]

    def exists(self, tenant: str, name: str) -> bool:
        return (tenant, name) in self._sealed

    async def delete(self, tenant: str, name: str) -> None:
        if (tenant, name) not in self._sealed:
            raise NotFound(f"no secret {name!r}", code="secret_not_found")
        await self.db.run(lambda c: store.delete_secret(c, tenant, name))
        self._sealed.pop((tenant, name), None)
        self._meta.pop((tenant, name), None)
        self._changed(tenant)

    def forget_tenant(self, tenant: str) -> None:
        for key in [k for k in self._sealed if k[0] == tenant]:
            self._sealed.pop(key, None)
            self._meta.pop(key, None)

    def check_refs(self, tenant: str, env: Mapping[str, str]) -> None:
        """Deploy-time check: every ``secret:NAME`` reference names an existing secret."""
        missing = sorted({n for n in references(env).values()
                          if (tenant, n) not in self._sealed})
        if missing:
            raise BadRequest(f"env refers to missing secret(s) {', '.join(missing)}: create "
                             f"them first with `squall secret set NAME`", code="missing_secret",
                             details={"missing": missing})

    def resolve(self, tenant: str, env: Mapping[str, str]) -> dict[str, str]:
        """{VAR: plaintext} for the references in ``env``; a secret removed since the deploy
        resolves to an empty string (the instance starts; the function sees no value)."""
        out: dict[str, str] = {}
        for var, name in references(env).items():
            sealed = self._sealed.get((tenant, name))
            out[var] = "" if sealed is None else self.sealer.open(
                sealed, self._aad(tenant, name)).decode()
        return out

    def value(self, tenant: str, name: str) -> bytes:
        sealed = self._sealed.get((tenant, name))
        if sealed is None:
            raise NotFound(f"no secret {name!r}", code="secret_not_found")
        return self.sealer.open(sealed, self._aad(tenant, name))

    def _changed(self, tenant: str) -> None:
        for listener in self.listeners:
            listener(tenant)

    def resealed(self, sealer: Sealer) -> dict[tuple[str, str], bytes]:
        return {(t, n): sealer.seal(self.sealer.open(blob, self._aad(t, n)), self._aad(t, n))
                for (t, n), blob in self._sealed.items()}


async def rotate_master(identity: Any, data_dir: Path, from_env: bool) -> int:
    """Re-seal every secret and key under a new master key. Returns how many values moved.

    Crash-safe order: the new key is written to ``master-key.new`` first, then the database is
    re-sealed in one transaction, then the file replaces ``master-key``. A crash in between leaves
    both files; ``load_master_key`` is not told about ``.new``, so the next start opens with the
    old key if the transaction did not commit, and ``finish_rotation`` (called at startup) moves
    ``.new`` into place if it did.
    """
    if from_env:
        raise Conflict("the master key comes from SQUALL_MASTER_KEY: rotate it by re-sealing "
                       "offline; `rotate-master` only manages <data-dir>/master-key",
                       code="master_key_from_env")
    new_key = AESGCM.generate_key(bit_length=256)
    new = Sealer(new_key)
    box: SecretBox = identity.secrets
    sealed_secrets = box.resealed(new)
    sealed_keys = identity.resealed_keys(new)
    pending = data_dir / "master-key.new"
    write_private(pending, encode_key(new_key) + "\n")

    def reseal(conn: Any) -> None:
        with transaction(conn):
            store.reseal_secrets(conn, sealed_secrets)
            store.reseal_keys(conn, sealed_keys)

    await identity.db.run(reseal)
    pending.replace(data_dir / "master-key")
    identity.sealer = box.sealer = new
    box._sealed.update(sealed_secrets)
    return len(sealed_secrets) + len(sealed_keys)


def finish_rotation(data_dir: Path, key: bytes, probe: bytes | None, aad: str) -> bytes:
    """At startup: if a rotation was interrupted after its commit, the sealed values open only
    with ``master-key.new``; then finish it (rename) and return that key."""
    pending = data_dir / "master-key.new"
    if not pending.exists():
        return key
    if probe is not None:
        try:
            Sealer(key).open(probe, aad)
        except Exception:
            new_key = decode_key(pending.read_text())
            Sealer(new_key).open(probe, aad)  # raises if neither key opens it
            pending.replace(data_dir / "master-key")
            return new_key
    pending.unlink()
    return key
