"""Webhooks: HMAC signature checks (pure) and POST /hooks/{name} on the real server."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from squall.errors import InvalidConfig, Unauthorized
from squall.events.webhooks import (
    sign_github,
    sign_stripe,
    validate_webhook_config,
    verify_signature,
)

SECRET = "It's a Secret to Everybody"
BODY = b'{"action":"opened"}'
NOW = 1_700_000_000.0


def test_github_signature_known_vector() -> None:
    # GitHub's documented example: secret "It's a Secret to Everybody", payload "Hello, World!"
    assert sign_github(SECRET, b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")


@pytest.mark.parametrize(("config", "headers", "ok"), [
    ({}, {}, True),  # no secret: no check
    ({"secret": SECRET}, {"x-hub-signature-256": sign_github(SECRET, BODY)}, True),
    ({"secret": SECRET}, {"x-hub-signature-256": sign_github("wrong", BODY)}, False),
    ({"secret": SECRET}, {"x-hub-signature-256": sign_github(SECRET, BODY + b" ")}, False),
    ({"secret": SECRET}, {}, False),
    ({"secret": SECRET}, {"x-hub-signature-256": sign_github(SECRET, BODY)[7:]}, False),
    ({"secret": SECRET, "header": "X-My-Sig"}, {"x-my-sig": sign_github(SECRET, BODY)}, True),
    ({"secret": SECRET, "style": "hex"}, {"x-signature": sign_github(SECRET, BODY)[7:]}, True),
    ({"secret": SECRET, "style": "stripe"},
     {"stripe-signature": sign_stripe(SECRET, BODY, timestamp=int(NOW))}, True),
    ({"secret": SECRET, "style": "stripe"},  # several v1 values (secret rotation): any matches
     {"stripe-signature": sign_stripe(SECRET, BODY, timestamp=int(NOW)) + ",v1=00"}, True),
    ({"secret": SECRET, "style": "stripe"},  # replayed 10 minutes later
     {"stripe-signature": sign_stripe(SECRET, BODY, timestamp=int(NOW) - 600)}, False),
    ({"secret": SECRET, "style": "stripe"},
     {"stripe-signature": sign_stripe("wrong", BODY, timestamp=int(NOW))}, False),
    ({"secret": SECRET, "style": "stripe"}, {"stripe-signature": "v1=abc"}, False),
])
def test_verify(config: dict[str, Any], headers: dict[str, str], ok: bool) -> None:
    if ok:
        verify_signature(config, headers, BODY, now=NOW)
    else:
        with pytest.raises(Unauthorized) as e:
            verify_signature(config, headers, BODY, now=NOW)
        assert e.value.code == "invalid_signature" and e.value.status == 401


@pytest.mark.parametrize("config", [
    {"secret": ""}, {"secret": 5}, {"style": "gitlab"}, {"tolerance_s": 0}, {"sekret": "x"},
])
def test_invalid_config(config: dict[str, Any]) -> None:
    with pytest.raises(InvalidConfig):
        validate_webhook_config(config)


# --- end to end --------------------------------------------------------------------------------

def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return value


def test_webhooks_end_to_end(platform: Any, make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("gh", "def handler(event, context):\n    return event\n", f"""
        [[triggers]]
        type = "webhook"
        secret = "{SECRET}"
    """))
    platform.cli("trigger", "add", "gh", "-t", "webhook", "-n", "open-hook")

    def result(rid: str) -> Any:
        def get() -> Any:
            s = platform.http.get(f"/api/v1/invocations/{rid}").json()
            return s if s["status"] == "succeeded" else None
        return wait_for(get)["result"]

    headers = {"X-Hub-Signature-256": sign_github(SECRET, BODY), "X-GitHub-Event": "issues",
               "X-GitHub-Delivery": "d-1", "Content-Type": "application/json"}
    r = platform.http.post("/hooks/gh", content=BODY, headers=headers)
    assert r.status_code == 202, r.text
    rid = r.json()["request_id"]
    assert r.headers["x-squall-request-id"] == rid
    ev = result(rid)
    assert (ev["specversion"], ev["type"], ev["source"], ev["id"]) == (
        "1.0", "squall.webhook", "/hooks/gh", rid)
    assert ev["data"] == {"action": "opened"}
    assert ev["githubevent"] == "issues" and ev["httpmethod"] == "POST"
    # GitHub redelivers with the same delivery id: not enqueued twice.
    again = platform.http.post("/hooks/gh", content=BODY, headers=headers)
    assert again.status_code == 202 and again.json()["request_id"] == rid

    before = platform.http.get("/api/v1/invocations", params={"function": "gh"}).json()
    for bad in ({"X-Hub-Signature-256": sign_github("guess", BODY)}, {}):
        r = platform.http.post("/hooks/gh", content=BODY, headers=bad)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_signature"
    after = platform.http.get("/api/v1/invocations", params={"function": "gh"}).json()
    assert after == before  # nothing enqueued

    # No secret on this one; a non-JSON body arrives as text, binary as data_base64.
    text = platform.http.post("/hooks/open-hook", content=b"a=1&b=2",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert text.status_code == 202
    ev = result(text.json()["request_id"])
    assert ev["data"] == "a=1&b=2" and ev["httpcontenttype"].startswith("application/x-www")
    blob = platform.http.post("/hooks/open-hook", content=b"\xff\x00\xfe")
    ev = result(blob.json()["request_id"])
    assert base64.b64decode(ev["data_base64"]) == b"\xff\x00\xfe"

    r = platform.http.post("/hooks/nope", content=b"{}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "webhook_not_found"
    r = platform.http.post("/hooks/open-hook", content=b"x" * (256 * 1024 + 1))
    assert r.status_code == 413
    # A second function cannot take a webhook name that is in use.
    platform.deploy(make_fn("other", "def handler(event, context):\n    return 1\n"))
    r = platform.http.post("/api/v1/functions/other/triggers",
                           json={"type": "webhook", "name": "gh"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "webhook_name_taken"
    assert json.loads(platform.cli("trigger", "ls", "gh", "--json").stdout)["triggers"][0][
        "status"]["last_fired"] is not None


def test_webhook_example(platform: Any) -> None:
    example = Path(__file__).parent.parent / "examples" / "webhook"
    platform.deploy(example)
    body = b'{"action":"closed"}'
    r = platform.http.post("/hooks/gh-events", content=body, headers={
        "X-Hub-Signature-256": sign_github("example-secret-change-me", body),
        "X-GitHub-Event": "pull_request", "Content-Type": "application/json"})
    assert r.status_code == 202, r.text
    out = platform.cli("invocation", r.json()["request_id"], "--json")
    rid = r.json()["request_id"]
    wait_for(lambda: json.loads(platform.cli("invocation", rid, "--json").stdout)["status"]
             == "succeeded")
    assert json.loads(platform.cli("invocation", rid, "--json").stdout)["result"] == {
        "event": "pull_request", "action": "closed"}
    assert out.returncode == 0
