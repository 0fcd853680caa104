"""make_cloudevent: structured-mode JSON dicts that the CloudEvents SDK itself parses back."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from cloudevents.core.formats.json import JSONFormat

from squall.errors import SquallError
from squall.events.cloudevents import InvalidCloudEvent, make_cloudevent


def test_structured_json_with_extensions_round_trips_through_the_sdk() -> None:
    ev = make_cloudevent(source="redis://127.0.0.1:6379/0/orders", type="io.squall.redis.entry",
                         data={"n": 1}, subject="orders", id="orders/1-0",
                         extensions={"redisid": "1-0", "deliveryattempt": 2, "flag": True})
    assert ev["specversion"] == "1.0"
    assert ev["id"] == "orders/1-0"
    assert ev["datacontenttype"] == "application/json"
    assert ev["data"] == {"n": 1}
    assert (ev["redisid"], ev["deliveryattempt"], ev["flag"]) == ("1-0", 2, True)
    assert datetime.fromisoformat(ev["time"].replace("Z", "+00:00")).tzinfo is not None
    parsed = JSONFormat().read(None, json.dumps(ev).encode())
    assert parsed.get_id() == "orders/1-0" and parsed.get_subject() == "orders"
    assert parsed.get_extension("deliveryattempt") == 2
    assert parsed.get_data() == {"n": 1}


def test_default_id_is_unique_and_none_extensions_are_dropped() -> None:
    a = make_cloudevent(source="s", type="t", data=None, extensions={"x": None})
    b = make_cloudevent(source="s", type="t", data=None)
    assert a["id"] != b["id"]
    assert "x" not in a and "data" not in a


@pytest.mark.parametrize(("data", "content_type", "key", "expected"), [
    (b"\x00\xff", "application/octet-stream", "data_base64", "AP8="),
    ("plain", "text/plain", "data", "plain"),
    ([1, 2], "application/json", "data", [1, 2]),
    (3, "application/json", "data", 3),
])
def test_data_encodings(data: Any, content_type: str, key: str, expected: Any) -> None:
    ev = make_cloudevent(source="s", type="t", data=data, datacontenttype=content_type)
    assert ev[key] == expected
    assert ev["datacontenttype"] == content_type


@pytest.mark.parametrize("name", ["StreamSeq", "stream_seq", "averyveryverylongextension",
                                  "", "data", "subject", "id"])
def test_invalid_extension_names(name: str) -> None:
    with pytest.raises(InvalidCloudEvent) as info:
        make_cloudevent(source="s", type="t", data=None, extensions={name: "v"})
    assert isinstance(info.value, SquallError) and info.value.code == "invalid_cloudevent"


def test_invalid_extension_value_and_attributes() -> None:
    with pytest.raises(InvalidCloudEvent):
        make_cloudevent(source="s", type="t", data=None, extensions={"x": {"a": 1}})
    with pytest.raises(InvalidCloudEvent):
        make_cloudevent(source="", type="t", data=None)
    with pytest.raises(InvalidCloudEvent):
        make_cloudevent(source="s", type="t", data=None, subject="")
    with pytest.raises(InvalidCloudEvent):
        make_cloudevent(source="s", type="t", data={"x": object()})
