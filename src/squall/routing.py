"""Aliases and weighted routing: which version an alias sends one invocation to (pure).

An alias names a primary version and, optionally, other versions with the share of traffic each
takes (Lambda's ``RoutingConfig.AdditionalVersionWeights``). The primary version gets whatever
the others leave: ``prod`` = v3 with ``{4: 0.1}`` sends 10% to v4 and 90% to v3.

The choice is a pure function of the alias and one uniform draw in [0, 1), so it is tested with
tables of draws and the caller owns the randomness. Worked example for ``{4: 0.1, 5: 0.25}`` on
primary 3: the additional versions are laid end to end in version order on [0, 1):
[0, 0.1) -> v4, [0.1, 0.35) -> v5, [0.35, 1) -> v3. A draw of 0.2 runs v5, 0.5 runs v3.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from squall.errors import BadRequest

LATEST = "$LATEST"
# Lambda's alias pattern: letters, digits, '-' and '_', and not all digits (a number is a
# version). 128 characters at most.
_ALIAS_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class InvalidAlias(BadRequest):
    code = "invalid_alias"


class InvalidWeights(BadRequest):
    code = "invalid_weights"


@dataclass(frozen=True)
class Alias:
    """``version`` None means $LATEST (allowed only without additional weights)."""

    namespace: str
    function: str
    name: str
    version: int | None
    weights: Mapping[int, float] = field(default_factory=dict)
    description: str = ""
    revision: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "function": self.function, "namespace": self.namespace,
                "version": LATEST if self.version is None else self.version,
                "weights": {str(v): w for v, w in sorted(self.weights.items())},
                "description": self.description, "revision": self.revision,
                "created_at": self.created_at, "updated_at": self.updated_at}


def choose_version(alias: Alias, draw: float) -> int | None:
    """The version one invocation through ``alias`` runs, for a uniform ``draw`` in [0, 1).

    Returns None for an alias of $LATEST. Weights are assumed valid (``check_weights``)."""
    edge = 0.0
    for version in sorted(alias.weights):
        edge += alias.weights[version]
        if draw < edge:
            return version
    return alias.version


def validate_alias_name(name: object) -> str:
    """Raise InvalidAlias unless ``name`` can name an alias (not a number, not $LATEST)."""
    if not isinstance(name, str) or not _ALIAS_RE.match(name):
        raise InvalidAlias(f"alias name {name!r} is not valid: use 1..128 letters, digits, '-' "
                           f"and '_' (e.g. 'prod')")
    if name.isdigit():
        raise InvalidAlias(f"alias name {name!r} is a number: numbers name versions, give the "
                           f"alias a name with a letter in it")
    return name


def parse_version(raw: object, *, allow_latest: bool = True) -> int | None:
    """'3' / 3 -> 3; '$LATEST' -> None. Raise InvalidAlias for anything else."""
    if allow_latest and raw == LATEST:
        return None
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1:
        return raw
    if isinstance(raw, str) and raw.isdigit() and int(raw) >= 1:
        return int(raw)
    allowed = "a version number or $LATEST" if allow_latest else "a version number"
    raise InvalidAlias(f"version {raw!r} is not {allowed}", code="invalid_version")


def check_weights(primary: int | None, raw: Mapping[Any, Any]) -> dict[int, float]:
    """Validate additional version weights: versions are numbers other than the primary, each
    weight a number in [0, 1], and together at most 1 (the primary takes the rest)."""
    weights: dict[int, float] = {}
    for key, value in raw.items():
        version = parse_version(key, allow_latest=False)
        assert version is not None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value) or not 0.0 <= value <= 1.0:
            raise InvalidWeights(f"the weight of version {version} must be a number from 0 to 1, "
                                 f"got {value!r}")
        if version == primary:
            raise InvalidWeights(f"version {version} is the alias's primary version: it gets "
                                 f"the traffic the additional versions leave, give it no weight")
        weights[version] = float(value)
    if weights and primary is None:
        raise InvalidWeights("an alias of $LATEST cannot split traffic: point it at a version "
                             "number to add weights")
    total = sum(weights.values())
    # A little slack for sums of decimal fractions (0.7 + 0.2 + 0.1 is 1.0000000000000002).
    if total > 1.0 + 1e-9:
        raise InvalidWeights(f"the additional version weights add up to {total:g}; at most 1 "
                             f"is allowed (the primary version takes the rest)")
    return weights
