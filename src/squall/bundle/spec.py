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
_APP_HANDLER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
                             r":[A-Za-z_][A-Za-z0-9_]*$")  # module:attribute (uvicorn's form)
# Node: Lambda's "path/to/file.export" (the file relative to the bundle, without extension)
_NODE_HANDLER_RE = re.compile(r"^([A-Za-z0-9_@-][A-Za-z0-9_.@-]*/)*[A-Za-z0-9_@-][A-Za-z0-9_@-]*"
                              r"\.[A-Za-z_$][A-Za-z0-9_$]*$")
# `provided`: any label the bootstrap understands (it reads it from _HANDLER)
_ANY_HANDLER_RE = re.compile(r"^[!-~]{1,128}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RESERVED_ENV_PREFIXES = ("SQUALL_", "AWS_")

Network = Literal["host", "none"]
# asgi / wsgi: handler = "module:app" names a web app (FastAPI, Flask) served behind /fn/<name>/
Style = Literal["lambda", "cloudevent", "asgi", "wsgi"]
LogFormat = Literal["text", "json"]
LOG_LEVELS = ("DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL", "FATAL")
# runtime name -> the runtime that runs it. The Python names are all the platform's own Python
# (the zygote path); the Lambda spellings are accepted so configs written for Lambda carry over.
RUNTIMES = {
    "python3.11": "python", "python3.12": "python", "python3": "python",
    "nodejs20": "nodejs20", "nodejs20.x": "nodejs20",
    "provided": "provided", "provided.al2": "provided", "provided.al2023": "provided",
}


def runtime_kind(runtime: str) -> str:
    """"python", "nodejs20" or "provided" for a validated runtime name."""
    return RUNTIMES.get(runtime, "python")


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
    # Lambda's logging controls: "json" writes each line as {timestamp, level, requestId,
    # message}; log_level drops application lines below it (squall.observability.logfmt).
    log_format: LogFormat = "text"
    log_level: str | None = None
    # /fn/ requests: "public" (like a Lambda function URL with auth NONE) or "key" (a key with
    # the invoke scope for the function's tenant)
    http_auth: str = "public"
    # "python3.11" (default; also "python3.12"/"python3": the platform's Python), "nodejs20",
    # "provided" (an executable `bootstrap` speaking the Lambda Runtime API)
    runtime: str = "python3.11"

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
            "log_format": self.log_format,
            "log_level": self.log_level,
            "http_auth": self.http_auth,
            "runtime": self.runtime,
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
    # The form depends on the runtime: checked by _check_handler once every key is read.
    s = _str(key, v)
    if not _ANY_HANDLER_RE.match(s):
        raise _fail(key, f"must be 1..128 printable characters without spaces; got {s!r}")
    return s


def _check_handler(cfg: FunctionConfig) -> None:
    kind = runtime_kind(cfg.runtime)
    if kind == "python" and not (_HANDLER_RE.match(cfg.handler)
                                 or _APP_HANDLER_RE.match(cfg.handler)):
        raise _fail("handler", f"must be 'module.function' or 'module:attribute' (module may be "
                               f"dotted, identifiers only), e.g. 'handler.handler' or "
                               f"'app:app'; got {cfg.handler!r}")
    if kind == "nodejs20" and (not _NODE_HANDLER_RE.match(cfg.handler)
                               or ".." in cfg.handler.split("/")):
        raise _fail("handler", f"must be 'file.export' (the file relative to the bundle, "
                               f"without .js/.mjs/.cjs), e.g. 'index.handler'; "
                               f"got {cfg.handler!r}")


def _check_runtime(cfg: FunctionConfig) -> None:
    """Node and provided instances serve one invocation at a time, as Lambda's do (the Runtime
    API has one /next at a time), with Lambda's (event, context) style only."""
    kind = runtime_kind(cfg.runtime)
    if kind == "python":
        return
    if cfg.concurrency != 1:
        raise _fail("concurrency", f"the {cfg.runtime} runtime runs one invocation per instance "
                                   f"(as Lambda does); got {cfg.concurrency}")
    if cfg.style != "lambda":
        raise _fail("style", f"the {cfg.runtime} runtime only has the 'lambda' style; "
                             f"got {cfg.style!r}")


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
    "style": ("style", lambda k, v: _choice(k, v, ("lambda", "cloudevent", "asgi", "wsgi"))),
    "triggers": ("triggers", _triggers),
    "async": ("async_", _async),
    "log_format": ("log_format", lambda k, v: _choice(k, v, ("text", "json"))),
    "log_level": ("log_level", lambda k, v: None if v is None else _choice(k, v, LOG_LEVELS)),
    "http_auth": ("http_auth", lambda k, v: _choice(k, v, ("public", "key"))),
    "runtime": ("runtime", lambda k, v: _choice(k, v, tuple(RUNTIMES))),
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
    _check_handler(cfg)
    _check_runtime(cfg)
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
