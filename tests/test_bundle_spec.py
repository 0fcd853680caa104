"""squall.toml / API config validation: names, every key good and bad, round trip."""

from __future__ import annotations

import json
from typing import Any

import pytest

from squall.bundle.spec import FunctionConfig, config_from_api, parse_config, validate_name
from squall.errors import InvalidConfig, InvalidName


@pytest.mark.parametrize("name", ["a", "hello", "resize-image", "a1", "x-2-y", "a" * 63])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", [
    "", "A", "Hello", "1abc", "-abc", "abc-", "a_b", "a.b", "a b", "héllo", "a" * 64, "a/b",
])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidName) as e:
        validate_name(name)
    assert e.value.code == "invalid_name"
    assert "63" in e.value.message or "non-empty" in e.value.message


def test_defaults_from_empty_toml() -> None:
    cfg = parse_config("")
    assert cfg == FunctionConfig()
    assert cfg.handler == "handler.handler"
    assert cfg.memory_mb == 128 and cfg.timeout_s == 30 and cfg.keep_alive_s == 300
    assert cfg.max_instances == 100 and cfg.min_instances == 0 and cfg.concurrency == 1
    assert cfg.network == "host" and cfg.style == "lambda" and cfg.ephemeral_mb == 512
    assert cfg.env == {} and cfg.triggers == () and cfg.async_ == {}


FULL_TOML = """
name = "thumbs"
handler = "app.main.handle"
memory_mb = 512
timeout_s = 12.5
max_instances = 10
min_instances = 2
concurrency = 4
keep_alive_s = 60
network = "none"
ephemeral_mb = 1024
style = "cloudevent"

[env]
GREETING = "hi"
_X1 = ""

[[triggers]]
type = "http"
path = "/thumbs"

[[triggers]]
type = "schedule"
cron = "*/5 * * * *"

[async]
max_retries = 2
max_event_age_s = 3600
on_success = "queue://ok"
on_failure = "queue://dead"
"""


def test_full_toml() -> None:
    cfg = parse_config(FULL_TOML)
    assert cfg.name == "thumbs"
    assert cfg.handler == "app.main.handle"
    assert cfg.memory_mb == 512 and cfg.timeout_s == 12.5 and cfg.keep_alive_s == 60.0
    assert isinstance(cfg.keep_alive_s, float)
    assert (cfg.max_instances, cfg.min_instances, cfg.concurrency) == (10, 2, 4)
    assert cfg.network == "none" and cfg.style == "cloudevent" and cfg.ephemeral_mb == 1024
    assert cfg.env == {"GREETING": "hi", "_X1": ""}
    assert cfg.triggers == ({"type": "http", "path": "/thumbs"},
                            {"type": "schedule", "cron": "*/5 * * * *"})
    assert cfg.async_ == {"max_retries": 2, "max_event_age_s": 3600,
                          "on_success": "queue://ok", "on_failure": "queue://dead"}


def test_round_trip_through_json() -> None:
    cfg = parse_config(FULL_TOML)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert FunctionConfig.from_dict(d) == cfg
    assert FunctionConfig.from_dict(d).to_dict() == cfg.to_dict()
    assert FunctionConfig.from_dict(FunctionConfig().to_dict()) == FunctionConfig()


GOOD: list[tuple[str, Any]] = [
    ("memory_mb", 128), ("memory_mb", 10240), ("timeout_s", 0.1), ("timeout_s", 900),
    ("max_instances", 1), ("max_instances", 1000), ("concurrency", 1000),
    ("keep_alive_s", 86400), ("keep_alive_s", 0.5), ("ephemeral_mb", 16), ("ephemeral_mb", 10240),
    ("network", "host"), ("style", "lambda"), ("handler", "a.b.c.d"), ("handler", "_m._f"),
    ("name", "ok-name"), ("env", {"A": "1"}), ("triggers", []), ("async", {}),
]


@pytest.mark.parametrize(("key", "value"), GOOD)
def test_good_values(key: str, value: Any) -> None:
    cfg = config_from_api({key: value})
    assert cfg.to_dict()[key] == value


BAD: list[tuple[str, Any, str]] = [
    # (key, value, words the message must contain)
    ("memory_mb", 127, "between 128 and 10240"),
    ("memory_mb", 10241, "between 128 and 10240"),
    ("memory_mb", True, "integer"),
    ("memory_mb", 256.0, "integer"),
    ("memory_mb", "256", "integer"),
    ("timeout_s", 0, "greater than 0 and at most 900"),
    ("timeout_s", 901, "at most 900"),
    ("timeout_s", -1, "greater than 0"),
    ("timeout_s", False, "number"),
    ("timeout_s", "30", "number"),
    ("max_instances", 0, "between 1 and 1000"),
    ("max_instances", 1001, "between 1 and 1000"),
    ("max_instances", True, "integer"),
    ("min_instances", -1, "between 0 and 1000"),
    ("min_instances", 101, "max_instances (100)"),
    ("concurrency", 0, "between 1 and 1000"),
    ("concurrency", 1001, "between 1 and 1000"),
    ("keep_alive_s", 0, "greater than 0 and at most 86400"),
    ("keep_alive_s", 86401, "at most 86400"),
    ("keep_alive_s", float("nan"), "greater than 0"),
    ("ephemeral_mb", 15, "between 16 and 10240"),
    ("ephemeral_mb", 10241, "between 16 and 10240"),
    ("network", "bridge", "'host', 'none'"),
    ("network", 1, "string"),
    ("style", "http", "'lambda', 'cloudevent'"),
    ("handler", "handler", "module.function"),
    ("handler", "a..b", "module.function"),
    ("handler", "a.b-c", "module.function"),
    ("handler", "1a.b", "module.function"),
    ("handler", 5, "string"),
    ("name", "Bad_Name", "lowercase"),
    ("name", 3, "string"),
    ("env", "A=1", "table"),
    ("env", ["A"], "table"),
    ("triggers", {"type": "http"}, "array"),
    ("triggers", ["http"], "table"),
    ("triggers", [{"path": "/x"}], "type"),
    ("triggers", [{"type": 1}], "type"),
    ("async", [], "table"),
    ("bogus", 1, "allowed keys: name, handler, memory_mb"),
    ("async_", {}, "unknown key"),
]


@pytest.mark.parametrize(("key", "value", "words"), BAD)
def test_bad_values(key: str, value: Any, words: str) -> None:
    with pytest.raises(InvalidConfig) as e:
        config_from_api({key: value})
    assert e.value.code == "invalid_config" and e.value.status == 400
    assert e.value.message.startswith(key)
    assert words in e.value.message
    assert e.value.details["key"].startswith(key)


@pytest.mark.parametrize(("env", "key", "words"), [
    ({"1A": "x"}, "env.1A", "[A-Za-z_]"),
    ({"A-B": "x"}, "env.A-B", "[A-Za-z_]"),
    ({"SQUALL_X": "x"}, "env.SQUALL_X", "reserved"),
    ({"AWS_REGION": "x"}, "env.AWS_REGION", "reserved"),
    ({"aws_region": "x"}, "env.aws_region", "reserved"),
    ({"N": 1}, "env.N", "string"),
    ({"N": True}, "env.N", "string"),
])
def test_bad_env(env: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(InvalidConfig) as e:
        config_from_api({"env": env})
    assert e.value.details == {"key": key}
    assert words in e.value.message


@pytest.mark.parametrize(("value", "key", "words"), [
    ({"max_retries": -1}, "async.max_retries", "between 0"),
    ({"max_retries": True}, "async.max_retries", "integer"),
    ({"max_event_age_s": 1.5}, "async.max_event_age_s", "integer"),
    ({"on_success": 1}, "async.on_success", "string"),
    ({"on_failure": None}, "async.on_failure", "string"),
    ({"retries": 1}, "async.retries", "max_retries, max_event_age_s, on_success, on_failure"),
])
def test_bad_async(value: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(InvalidConfig) as e:
        config_from_api({"async": value})
    assert e.value.details == {"key": key}
    assert words in e.value.message


def test_bool_is_not_an_int_in_toml() -> None:
    with pytest.raises(InvalidConfig) as e:
        parse_config("concurrency = true\n")
    assert e.value.details == {"key": "concurrency"}
    assert "boolean" in e.value.message


def test_unknown_key_in_toml_names_it_and_the_allowed_ones() -> None:
    with pytest.raises(InvalidConfig) as e:
        parse_config('handler = "h.h"\nmemroy_mb = 256\n')
    assert e.value.details == {"key": "memroy_mb"}
    assert "memroy_mb" in e.value.message and "memory_mb" in e.value.message


def test_unknown_table_in_toml() -> None:
    with pytest.raises(InvalidConfig) as e:
        parse_config("[scaling]\nmax = 3\n")
    assert e.value.details == {"key": "scaling"}


def test_min_above_max_in_toml() -> None:
    with pytest.raises(InvalidConfig) as e:
        parse_config("max_instances = 3\nmin_instances = 4\n")
    assert e.value.details == {"key": "min_instances"}
    assert "between 0 and max_instances (3)" in e.value.message


@pytest.mark.parametrize(("text", "line"), [
    ('memory_mb = \n', 1),
    ('handler = "a.b"\nmemory_mb = 128\nmemory_mb = 256\n', 3),
    ('name = "x"\n[env\nA = "1"\n', 2),
    ('handler = "unterminated\n', 1),
])
def test_malformed_toml(text: str, line: int) -> None:
    with pytest.raises(InvalidConfig) as e:
        parse_config(text)
    assert "not valid TOML" in e.value.message
    assert f"line {line}" in e.value.message
    assert e.value.details["line"] == line
    assert "key" in e.value.details


def test_api_rejects_non_object() -> None:
    with pytest.raises(InvalidConfig):
        config_from_api([1, 2])  # type: ignore[arg-type]


def test_error_serialises_for_http() -> None:
    with pytest.raises(InvalidConfig) as e:
        config_from_api({"memory_mb": 1})
    body = e.value.to_dict()
    assert body["error"]["code"] == "invalid_config"
    assert body["error"]["details"] == {"key": "memory_mb"}
