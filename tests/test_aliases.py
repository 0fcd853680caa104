"""Aliases: the pure weighted choice (tables, statistics), validation, the store and the alias
table over a real SQLite file; the end-to-end half (CLI, invocations) is at the bottom."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from squall.aliases import AliasBook, AliasNotFound, RevisionMismatch, VersionNotFound
from squall.errors import Conflict, FunctionNotFound
from squall.registry import Registry
from squall.routing import (
    Alias,
    InvalidAlias,
    InvalidWeights,
    check_weights,
    choose_version,
    parse_version,
    validate_alias_name,
)
from squall.store import functions as store_fn
from squall.store.db import Database
from tests.conftest import PlatformProc, wait_for


def _alias(version: int | None, weights: dict[int, float]) -> Alias:
    return Alias("default", "fn", "prod", version, weights)


@pytest.mark.parametrize(("version", "weights", "draw", "expected"), [
    (3, {}, 0.0, 3),
    (3, {}, 0.999, 3),
    (None, {}, 0.5, None),  # an alias of $LATEST
    (3, {4: 0.1}, 0.0, 4),
    (3, {4: 0.1}, 0.0999, 4),
    (3, {4: 0.1}, 0.1, 3),  # the edge belongs to the next band
    (3, {4: 0.1}, 0.5, 3),
    # bands in version order: [0, .1) v4, [.1, .35) v5, [.35, 1) v3 (the module's example)
    (3, {5: 0.25, 4: 0.1}, 0.05, 4),
    (3, {5: 0.25, 4: 0.1}, 0.2, 5),
    (3, {5: 0.25, 4: 0.1}, 0.35, 3),
    (3, {4: 0.0}, 0.0, 3),  # a zero weight never wins
    (3, {4: 1.0}, 0.999, 4),  # all traffic moved off the primary
])
def test_choose_version_table(version: int | None, weights: dict[int, float], draw: float,
                              expected: int | None) -> None:
    assert choose_version(_alias(version, weights), draw) == expected


def test_choose_version_over_2000_draws_is_within_statistical_bounds() -> None:
    rng = random.Random(1234)
    alias = _alias(3, {4: 0.1})
    runs = Counter(choose_version(alias, rng.random()) for _ in range(2000))
    # Binomial(2000, 0.1): mean 200, sd 13.4; +-5 sd is 133..267 (a false failure ~1e-6).
    assert 133 <= runs[4] <= 267
    assert runs[3] == 2000 - runs[4]
    assert set(runs) == {3, 4}


@pytest.mark.parametrize(("primary", "weights", "code"), [
    (3, {4: 1.5}, "invalid_weights"),
    (3, {4: -0.1}, "invalid_weights"),
    (3, {4: float("nan")}, "invalid_weights"),
    (3, {4: "0.1"}, "invalid_weights"),
    (3, {4: True}, "invalid_weights"),
    (3, {4: 0.6, 5: 0.5}, "invalid_weights"),  # sums above 1
    (3, {3: 0.1}, "invalid_weights"),  # the primary itself
    (None, {4: 0.1}, "invalid_weights"),  # $LATEST cannot split
    (3, {"$LATEST": 0.1}, "invalid_version"),
    (3, {"x": 0.1}, "invalid_version"),
    (3, {0: 0.1}, "invalid_version"),
])
def test_bad_weights_are_rejected_with_a_code(primary: int | None, weights: dict[Any, Any],
                                              code: str) -> None:
    with pytest.raises((InvalidWeights, InvalidAlias)) as info:
        check_weights(primary, weights)
    assert info.value.code == code
    assert info.value.status == 400


def test_good_weights_are_normalised() -> None:
    assert check_weights(3, {"4": 0.1, 5: 1 - 0.1 - 0.2}) == {4: 0.1, 5: pytest.approx(0.7)}
    assert check_weights(3, {"4": 0.7, "5": 0.2, "6": 0.1}) == {4: 0.7, 5: 0.2, 6: 0.1}


@pytest.mark.parametrize("name", ["3", "007", "$LATEST", "", "a" * 129, "has space", "a:b",
                                  "a/b", None, 5])
def test_bad_alias_names(name: Any) -> None:
    with pytest.raises(InvalidAlias):
        validate_alias_name(name)


@pytest.mark.parametrize("name", ["prod", "v2", "blue-green", "A_b-3", "a" * 128])
def test_good_alias_names(name: str) -> None:
    assert validate_alias_name(name) == name


def test_parse_version() -> None:
    assert parse_version("3") == 3
    assert parse_version(3) == 3
    assert parse_version("$LATEST") is None
    for bad in ("0", 0, -1, "x", 1.5, True, None):
        with pytest.raises(InvalidAlias):
            parse_version(bad)
    with pytest.raises(InvalidAlias):
        parse_version("$LATEST", allow_latest=False)


# --- the alias table over a real database ---------------------------------------------------

def _versions(db: Database, name: str, count: int, namespace: str = "default") -> None:
    for i in range(count):
        db.run_sync(lambda c, i=i: store_fn.add_version(  # type: ignore[misc]
            c, namespace, name, f"{i:064x}", {"handler": "handler.handler"}, None))


async def _book(db: Database, tmp_path: Path) -> tuple[AliasBook, Registry]:
    registry = Registry(db, tmp_path)
    await registry.load()
    return AliasBook(registry), registry


async def test_alias_book_validates_persists_and_reloads(db: Database, tmp_path: Path) -> None:
    _versions(db, "fn", 4)
    book, _registry = await _book(db, tmp_path)
    prod = await book.put("default", "fn", "prod", version=3, weights={"4": 0.25},
                          description="canary")
    assert (prod.version, dict(prod.weights), prod.description) == (3, {4: 0.25}, "canary")
    with pytest.raises(VersionNotFound):
        await book.put("default", "fn", "prod", version=9)
    with pytest.raises(VersionNotFound):
        await book.put("default", "fn", "prod", version=3, weights={"9": 0.1})
    with pytest.raises(FunctionNotFound):
        await book.put("default", "nope", "prod", version=1)
    with pytest.raises(FunctionNotFound):  # another tenant's function is a missing one
        await book.put("acme", "fn", "prod", version=1)
    with pytest.raises(Conflict):
        await book.put("default", "fn", "prod", version=1, mode="create")
    with pytest.raises(AliasNotFound):
        await book.put("default", "fn", "beta", version=1, mode="update")
    with pytest.raises(RevisionMismatch):
        await book.put("default", "fn", "prod", version=1, revision="stale")
    moved = await book.put("default", "fn", "prod", version=2, revision=prod.revision)
    assert moved.revision != prod.revision and moved.created_at == prod.created_at
    # A fresh table (a restarted platform) reads the same from the store.
    book2, _ = await _book(db, tmp_path)
    again = await book2.require("default", "fn", "prod")
    assert (again.version, dict(again.weights), again.revision) == (2, {}, moved.revision)
    assert await book2.get("acme", "fn", "prod") is None


async def test_removing_the_function_removes_its_aliases(db: Database, tmp_path: Path) -> None:
    _versions(db, "fn", 2)
    _versions(db, "other", 1)
    book, registry = await _book(db, tmp_path)
    await book.put("default", "fn", "prod", version=1)
    await book.put("default", "other", "prod", version=1)
    rec = registry.get("fn")
    assert rec is not None
    db.run_sync(lambda c: store_fn.delete_function(c, "default", "fn"))
    await registry.remove(rec)
    assert await book.list("default", "fn") == []
    assert [a.name for a in await book.list("default", "other")] == ["prod"]
    book2, _ = await _book(db, tmp_path)
    assert await book2.get("default", "fn", "prod") is None


# --- end to end: the CLI, /api/v1 and real invocations ---------------------------------------

VERSIONED = """
import os

def handler(event, context):
    return {"tag": os.environ["TAG"]}
"""


def _deploy_tagged(platform: PlatformProc, make_fn: Callable[..., Path], tags: list[str]) -> None:
    for tag in tags:
        path = make_fn("tagged", VERSIONED, toml=f'[env]\nTAG = "{tag}"\n')
        platform.deploy(path)


def test_alias_cli_weighted_routing_and_rollback(platform: PlatformProc,
                                                 make_fn: Callable[..., Path]) -> None:
    _deploy_tagged(platform, make_fn, ["one", "two", "three"])
    out = platform.cli("alias", "set", "tagged", "prod", "--version", "1", "--weight", "2=0.5")
    assert "version 1" in out.stdout and "50% to version 2" in out.stdout
    listed = platform.cli("alias", "ls", "tagged", "--json")
    assert '"weights": {\n      "2": 0.5' in listed.stdout

    seen: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    ran: dict[str, str] = {}

    async def many() -> None:
        import httpx

        async with httpx.AsyncClient(base_url=platform.url, timeout=60,
                                     headers=platform.http.headers) as client:
            for _ in range(200):
                r = await client.post("/api/v1/functions/tagged/invocations",
                                      params={"qualifier": "prod"}, json={})
                assert r.status_code == 200, r.text
                seen[r.json()["tag"]] += 1
                versions[r.headers["x-squall-executed-version"]] += 1
                ran[r.headers["x-squall-request-id"]] = r.headers["x-squall-executed-version"]

    asyncio.run(many())
    # Binomial(200, 0.5): sd 7.1; 60..140 is beyond +-5 sd.
    assert 60 <= seen["two"] <= 140 and seen["one"] == 200 - seen["two"]
    assert versions == Counter({"1": seen["one"], "2": seen["two"]})
    # The usage record carries the version that ran.
    rid, version = next(iter(ran.items()))
    record = wait_for(lambda: (r := platform.http.get(f"/api/v1/invocations/{rid}"))
                      .status_code == 200 and r.json(), message="the invocation record")
    assert str(record["version"]) == version
    # Rolling back is moving the alias: everything goes to version 1 now.
    platform.cli("alias", "set", "tagged", "prod", "--version", "1")
    for _ in range(5):
        r = platform.http.post("/api/v1/functions/tagged/invocations",
                               params={"qualifier": "prod"}, json={})
        assert r.json() == {"tag": "one"} and r.headers["x-squall-executed-version"] == "1"
    platform.cli("alias", "rm", "tagged", "prod")
    r = platform.http.post("/api/v1/functions/tagged/invocations",
                           params={"qualifier": "prod"}, json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "function_not_found"


def test_alias_bad_input(platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    _deploy_tagged(platform, make_fn, ["one", "two"])
    cases: list[tuple[str, Any, int, str]] = [
        ("prod", {"version": 7}, 404, "version_not_found"),
        ("prod", {"version": 1, "weights": {"7": 0.1}}, 404, "version_not_found"),
        ("prod", {"version": 1, "weights": {"2": 1.5}}, 400, "invalid_weights"),
        ("prod", {"version": 1, "weights": {"2": -0.5}}, 400, "invalid_weights"),
        ("prod", {"version": "x"}, 400, "invalid_version"),
        ("prod", {}, 400, "invalid_version"),
        ("prod", {"version": 1, "color": "red"}, 400, "invalid_alias"),
        ("12", {"version": 1}, 400, "invalid_alias"),
        ("$LATEST", {"version": 1}, 400, "invalid_alias"),
    ]
    for alias, body, status, code in cases:
        r = platform.http.put(f"/api/v1/functions/tagged/aliases/{alias}", json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (alias, body, r.text)
    r = platform.http.put("/api/v1/functions/missing/aliases/prod", json={"version": 1})
    assert r.status_code == 404
    bad = platform.cli("alias", "set", "tagged", "prod", "--version", "1", "--weight", "2:0.1",
                       check=False)
    assert bad.returncode != 0 and "VERSION=WEIGHT" in bad.stderr
    bad = platform.cli("alias", "set", "tagged", "prod", "--version", "1", "--weight", "2=0.6",
                       "--weight", "3=0.6", check=False)
    assert bad.returncode != 0
    assert platform.http.get("/api/v1/functions/tagged/aliases").json()["aliases"] == []
