"""The identity model: scopes, principals, tenants and their limits (plain values, no I/O)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from squall.errors import BadRequest

DEFAULT_TENANT = "default"
_TENANT_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")


class Scope(StrEnum):
    """What a key may do. ``admin`` is everything on every tenant; the others are limited to
    the key's own tenant. ``deploy`` includes ``read`` (managing functions means seeing them);
    ``read`` includes ``metrics``. ``storage`` (read and write the tenant's buckets, nothing
    else) is what functions' own credentials carry; ``deploy`` includes it."""

    ADMIN = "admin"
    DEPLOY = "deploy"
    INVOKE = "invoke"
    READ = "read"
    METRICS = "metrics"
    STORAGE = "storage"


# What holding a scope grants besides itself.
_IMPLIES: dict[Scope, frozenset[Scope]] = {
    Scope.ADMIN: frozenset(Scope),
    Scope.DEPLOY: frozenset({Scope.READ, Scope.METRICS, Scope.STORAGE}),
    Scope.READ: frozenset({Scope.METRICS}),
    Scope.INVOKE: frozenset(),
    Scope.METRICS: frozenset(),
    Scope.STORAGE: frozenset(),
}
# The other way round, for the check at the edge: the scopes whose holder may do this.
_GRANTED_BY: dict[Scope, frozenset[Scope]] = {
    wanted: frozenset(s for s in Scope if s == wanted or wanted in _IMPLIES[s]) for wanted in Scope}


def parse_scopes(raw: str | list[str]) -> frozenset[Scope]:
    """``"deploy,read"`` or a list -> scopes; an unknown name is a 400 ``invalid_scope``."""
    names = [s.strip() for s in (raw.split(",") if isinstance(raw, str) else raw)]
    names = [n for n in names if n]
    if not names:
        raise BadRequest("give at least one scope: admin, deploy, invoke, read, metrics, "
                         "storage", code="invalid_scope")
    out = set()
    for n in names:
        try:
            out.add(Scope(n))
        except ValueError:
            raise BadRequest(f"unknown scope {n!r}: use admin, deploy, invoke, read, metrics "
                             f"or storage", code="invalid_scope") from None
    return frozenset(out)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's public id, its tenant and its scopes."""

    key_id: str
    tenant: str
    scopes: frozenset[Scope]
    # set for the credentials of a function's own instances (the storage loop guard uses it)
    function: str | None = None

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def allows(self, scope: Scope) -> bool:
        return not self.scopes.isdisjoint(_GRANTED_BY[scope])

    def can_act_on(self, tenant: str) -> bool:
        """Admin keys act on every tenant; any other key only on its own."""
        return self.is_admin or tenant == self.tenant


def validate_tenant_name(name: str) -> str:
    if not isinstance(name, str) or not _TENANT_RE.match(name):
        raise BadRequest(f"invalid tenant name {name!r}: 1-32 characters of a-z, 0-9 and '-', "
                         f"starting and ending with a letter or digit", code="invalid_tenant_name")
    return name


@dataclass
class TenantLimits:
    """Quotas; None means unlimited. ``rate`` is invocations per second (a token bucket with a
    burst of one second's worth)."""

    max_concurrency: int | None = None
    max_memory_mb: int | None = None
    max_functions: int | None = None
    rate: float | None = None
    max_queued: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TenantLimits:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


LIMIT_RANGES: dict[str, tuple[float, float]] = {
    "max_concurrency": (1, 100_000),
    "max_memory_mb": (128, 10_000_000),
    "max_functions": (1, 100_000),
    "rate": (0.01, 1_000_000),
    "max_queued": (1, 100_000_000),
}


def check_limits(values: dict[str, Any]) -> dict[str, Any]:
    """Validate limit fields (None clears one). Unknown fields and out-of-range or non-numeric
    values are a 400 ``invalid_limit``."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if k not in LIMIT_RANGES:
            raise BadRequest(f"unknown limit {k!r}: use {', '.join(LIMIT_RANGES)}",
                             code="invalid_limit")
        if v is None:
            out[k] = None
            continue
        lo, hi = LIMIT_RANGES[k]
        integral = k != "rate"
        ok = isinstance(v, int | float) and not isinstance(v, bool) and lo <= v <= hi
        if ok and integral and float(v) != int(v):
            ok = False
        if not ok:
            kind = "an integer" if integral else "a number"
            raise BadRequest(f"{k} must be {kind} from {lo:g} to {hi:g} (or null for no limit)",
                             code="invalid_limit")
        out[k] = int(v) if integral else float(v)
    return out


@dataclass
class Tenant:
    name: str
    uid: int
    limits: TenantLimits = field(default_factory=TenantLimits)
    created_at: float = 0.0
    updated_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "uid": self.uid, "limits": self.limits.to_dict(),
                "created_at": self.created_at, "updated_at": self.updated_at}
