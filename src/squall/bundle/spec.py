"""squall.toml: the function's configuration, validated the same way from TOML and from the API.

Every rejection raises ``InvalidConfig`` whose message names the key and says what is allowed,
and whose ``details`` carry ``{"key": ...}`` (dotted for nested keys: ``env.FOO``,
``async.max_retries``, ``triggers[0].type``) so a client can point at the offending field.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from squall.errors import InvalidConfig, InvalidName

_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
_HANDLER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_ENV_PREFIXES = ("SQUALL_", "AWS_")

Network = Literal["host", "none"]
Style = Literal["lambda", "cloudevent"]


def validate_name(name: str) -> str:
    """Return ``name`` if it is a DNS label (1..63 of a-z 0-9 '-', starts with a letter)."""
    if not isinstance(name, str) or not name:
        raise InvalidName("function name must be a non-empty string")
    if len(name) > 63:
        raise InvalidName(f"function name {name!r} is {len(name)} characters; the maximum is 63")
    if not _NAME_RE.match(name):
        raise InvalidName(
            f"function name {name!r} is not valid: use 1..63 lowercase letters a-z, digits and '-',"
            " starting with a letter and not ending with '-' (e.g. 'resize-image')"
        )
    return name


@dataclass(frozen=True)
class FunctionConfig:
    name: str | None = None
    handler: str = "handler.handler"
    memory_mb: int = 128
    timeout_s: float = 30.0
    env: dict[str, str] = field(default_factory=dict)
    max_instances: int = 100
    min_instances: int = 0
    concurrency: int = 1
    keep_alive_s: float = 300.0
    network: Network = "host"
    ephemeral_mb: int = 512
    style: Style = "lambda"
    triggers: tuple[dict[str, Any], ...] = ()
    async_: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict using the squall.toml key names (``async``, triggers as a list)."""
        return {
            "name": self.name,
            "handler": self.handler,
            "memory_mb": self.memory_mb,
            "timeout_s": self.timeout_s,
            "env": dict(self.env),
            "max_instances": self.max_instances,
            "min_instances": self.min_instances,
            "concurrency": self.concurrency,
            "keep_alive_s": self.keep_alive_s,
            "network": self.network,
            "ephemeral_mb": self.ephemeral_mb,
            "style": self.style,
            "triggers": [dict(t) for t in self.triggers],
            "async": dict(self.async_),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FunctionConfig:
        """Inverse of ``to_dict`` (validates again: stored JSON is input too)."""
        return config_from_api(d)


def _fail(key: str, message: str) -> InvalidConfig:
    return InvalidConfig(f"{key}: {message}", details={"key": key})


def _type_name(v: object) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "table"}.get(type(v), type(v).__name__)


def _int(key: str, v: object, lo: int, hi: int) -> int:
    # bool is a subclass of int in Python; `memory_mb = true` is a mistake, not 1.
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(key, f"must be an integer, got {_type_name(v)} {v!r}")
    if not lo <= v <= hi:
        raise _fail(key, f"must be between {lo} and {hi}, got {v}")
    return v


def _number(key: str, v: object, lo_exclusive: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _fail(key, f"must be a number, got {_type_name(v)} {v!r}")
    if not lo_exclusive < v <= hi or v != v:  # v != v catches NaN
        raise _fail(key, f"must be greater than {lo_exclusive:g} and at most {hi:g}, got {v}")
    return float(v)


def _str(key: str, v: object) -> str:
    if not isinstance(v, str):
        raise _fail(key, f"must be a string, got {_type_name(v)} {v!r}")
    return v


def _choice(key: str, v: object, allowed: tuple[str, ...]) -> str:
    s = _str(key, v)
    if s not in allowed:
        raise _fail(key, f"must be one of {', '.join(repr(a) for a in allowed)}, got {s!r}")
    return s


def _name(key: str, v: object) -> str | None:
    if v is None:
        return None
    try:
        return validate_name(_str(key, v))
    except InvalidName as e:
        raise _fail(key, e.message) from None


def _handler(key: str, v: object) -> str:
    s = _str(key, v)
    if not _HANDLER_RE.match(s):
        raise _fail(key, f"must be 'module.function' (module may be dotted, identifiers only),"
                         f" e.g. 'handler.handler'; got {s!r}")
    return s


def _env(key: str, v: object) -> dict[str, str]:
    if not isinstance(v, dict):
        raise _fail(key, f"must be a table of string values, got {_type_name(v)}")
    out: dict[str, str] = {}
    for k, val in v.items():
        if not isinstance(k, str) or not _ENV_KEY_RE.match(k):
            raise _fail(f"{key}.{k}",
                        "environment variable names must match [A-Za-z_][A-Za-z0-9_]*")
        if k.upper().startswith(_RESERVED_ENV_PREFIXES):
            raise _fail(f"{key}.{k}", "names starting with SQUALL_ or AWS_ are reserved"
                                      " for the platform")
        if not isinstance(val, str):
            raise _fail(f"{key}.{k}", f"must be a string, got {_type_name(val)} {val!r}"
                                      " (quote it in squall.toml)")
        out[k] = val
    return out


def _triggers(key: str, v: object) -> tuple[dict[str, Any], ...]:
    if not isinstance(v, list | tuple):
        raise _fail(key, f"must be an array of tables ([[triggers]]), got {_type_name(v)}")
    out: list[dict[str, Any]] = []
    for i, t in enumerate(v):
        if not isinstance(t, dict):
            raise _fail(f"{key}[{i}]", f"must be a table, got {_type_name(t)}")
        if not isinstance(t.get("type"), str):
            raise _fail(f"{key}[{i}].type", "every trigger needs a string 'type'")
        out.append(dict(t))
    return tuple(out)


_ASYNC_KEYS: dict[str, Callable[[str, object], object]] = {
    "max_retries": lambda k, v: _int(k, v, 0, 2**31 - 1),
    "max_event_age_s": lambda k, v: _int(k, v, 0, 2**31 - 1),
    "on_success": _str,
    "on_failure": _str,
}


def _async(key: str, v: object) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(key, f"must be a table, got {_type_name(v)}")
    out: dict[str, Any] = {}
    for k, val in v.items():
        check = _ASYNC_KEYS.get(k)
        if check is None:
            raise _fail(f"{key}.{k}", f"unknown key; allowed: {', '.join(_ASYNC_KEYS)}")
        out[k] = check(f"{key}.{k}", val)
    return out


# key in squall.toml / JSON -> (dataclass field, validator). The order is the order in messages.
_FIELDS: dict[str, tuple[str, Callable[[str, object], object]]] = {
    "name": ("name", _name),
    "handler": ("handler", _handler),
    "memory_mb": ("memory_mb", lambda k, v: _int(k, v, 128, 10240)),
    "timeout_s": ("timeout_s", lambda k, v: _number(k, v, 0, 900)),
    "env": ("env", _env),
    "max_instances": ("max_instances", lambda k, v: _int(k, v, 1, 1000)),
    "min_instances": ("min_instances", lambda k, v: _int(k, v, 0, 1000)),
    "concurrency": ("concurrency", lambda k, v: _int(k, v, 1, 1000)),
    "keep_alive_s": ("keep_alive_s", lambda k, v: _number(k, v, 0, 86400)),
    "network": ("network", lambda k, v: _choice(k, v, ("host", "none"))),
    "ephemeral_mb": ("ephemeral_mb", lambda k, v: _int(k, v, 16, 10240)),
    "style": ("style", lambda k, v: _choice(k, v, ("lambda", "cloudevent"))),
    "triggers": ("triggers", _triggers),
    "async": ("async_", _async),
}


def config_from_api(d: Mapping[str, Any]) -> FunctionConfig:
    """Validate a JSON object (API override or stored config); missing keys take defaults."""
    if not isinstance(d, Mapping):
        raise InvalidConfig(f"config must be an object, got {_type_name(d)}", details={"key": None})
    values: dict[str, Any] = {}
    for key, raw in d.items():
        spec = _FIELDS.get(key)
        if spec is None:
            raise _fail(str(key), f"unknown key; allowed keys: {', '.join(_FIELDS)}")
        attr, check = spec
        values[attr] = check(key, raw)
    cfg = FunctionConfig(**values)
    if cfg.min_instances > cfg.max_instances:
        raise _fail("min_instances", f"must be between 0 and max_instances ({cfg.max_instances}),"
                                     f" got {cfg.min_instances}")
    return cfg


_TOML_LINE_RE = re.compile(r"line (\d+)")


def parse_config(text: str) -> FunctionConfig:
    """Parse squall.toml text. Malformed TOML reports the parser's message with its line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = _TOML_LINE_RE.search(str(e))
        details: dict[str, Any] = {"key": None}
        if m:
            details["line"] = int(m.group(1))
        raise InvalidConfig(f"squall.toml is not valid TOML: {e}", details=details) from None
    return config_from_api(data)
