"""Tenants, keys, secrets, quotas, audit and billing, end to end through the real platform and
its CLI (and the identity service on a real database with a fake clock for expiry)."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from squall.tenancy.quota import Refusals
from tests.conftest import PlatformProc, wait_for

HELLO = """
def handler(event, context):
    return {"statusCode": 200, "body": "hello " + context.function_name}
"""
# Returns a digest, not the value: an async result is stored, and a function that returns its
# secret has leaked it itself.
ENV_FN = """
import hashlib, os
def handler(event, context):
    value = os.environ.get("DB_PASSWORD")
    return {"password": value and hashlib.sha256(value.encode()).hexdigest(),
            "plain": os.environ.get("PLAIN")}
"""


def digest(value: str) -> str:
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest()
SLOW = """
import time
def handler(event, context):
    time.sleep(float(event.get("sleep", 1.5)))
    return "done"
"""


def key(p: PlatformProc, tenant: str, scopes: str, **extra: str) -> dict[str, Any]:
    args = ["key", "create", "--tenant", tenant, "--scope", scopes, "--json"]
    for k, v in extra.items():
        args += [f"--{k}", v]
    out: dict[str, Any] = json.loads(p.cli(*args).stdout)
    return out


def client(p: PlatformProc, token: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=p.url, headers=headers, timeout=60)


def deploy_as(p: PlatformProc, token: str, path: Path, **params: str) -> httpx.Response:
    from squall.bundle.archive import pack_dir

    with client(p, token) as c:
        return c.post("/api/v1/functions", params={"default_name": path.name, **params},
                      content=pack_dir(path))


def test_bootstrap_key_file_and_every_api_route_needs_a_key(platform: PlatformProc) -> None:
    path = platform.data_dir / "admin-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "created the admin API key in" in platform.log()
    with client(platform, None) as anon:
        r = anon.get("/api/v1/functions")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert anon.post("/api/v1/functions", content=b"x").status_code == 401
        assert anon.get("/healthz").status_code == 200
    with client(platform, "sq_0123456789abcdef_" + "A" * 43) as wrong:
        assert wrong.get("/api/v1/functions").json()["error"]["code"] == "unauthorized"
    # The CLI finds the key through --data-dir with nothing else set.
    env = {k: v for k, v in platform.env.items() if k != "SQUALL_API_KEY"}
    import subprocess

    from tests.conftest import SQUALL
    res = subprocess.run([SQUALL, "--url", platform.url, "--data-dir", str(platform.data_dir),
                          "ls"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([SQUALL, "--url", platform.url, "--data-dir", "/nonexistent", "ls"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode != 0 and "unauthorized" in res.stderr
    # A restart keeps the same admin key (no second bootstrap).
    platform.restart()
    assert (platform.data_dir / "admin-key").read_text().strip() == platform.admin_key


def test_tenant_isolation_through_the_cli(platform: PlatformProc,
                                          make_fn: Callable[..., Path]) -> None:
    platform.cli("tenant", "create", "acme", "--max-functions", "5")
    platform.cli("tenant", "create", "globex")
    acme = key(platform, "acme", "deploy,invoke", name="ci")
    globex = key(platform, "globex", "deploy,invoke")
    assert set(acme) >= {"id", "key", "tenant", "scopes", "access_key_id", "secret_access_key"}
    assert acme["key"].endswith(acme["secret_access_key"]) and acme["tenant"] == "acme"
    fn = make_fn("shop", HELLO)
    as_acme = ["--api-key", acme["key"]]
    as_globex = ["--api-key", globex["key"]]
    platform.cli(*as_acme, "deploy", str(fn))
    assert "shop" in platform.cli(*as_acme, "ls").stdout
    assert "shop" not in platform.cli(*as_globex, "ls").stdout
    assert "shop" not in platform.cli("ls").stdout  # the admin's default tenant
    assert "shop" in platform.cli("--tenant", "acme", "ls").stdout
    # Another tenant's function answers exactly like a missing one.
    for args in (["describe", "shop"], ["invoke", "shop"], ["logs", "shop"], ["rm", "shop"],
                 ["versions", "shop"]):
        res = platform.cli(*as_globex, *args, check=False)
        assert res.returncode != 0 and "function_not_found" in res.stderr, args
        missing = platform.cli(*as_globex, args[0], "nosuchfn", check=False)
        assert missing.stderr.replace("nosuchfn", "shop") == res.stderr
    res = platform.cli(*as_globex, "--tenant", "acme", "ls", check=False)
    assert "tenant_not_found" in res.stderr
    # HTTP functions: /t/<tenant>/fn/<name>; /fn/ is the default tenant's.
    assert platform.http.get("/t/acme/fn/shop").text == "hello shop"
    assert platform.http.get("/fn/shop").status_code == 404
    assert platform.http.get("/t/nosuch/fn/shop").status_code == 404
    # Invocations, usage and bill per tenant.
    out = platform.cli(*as_acme, "invoke", "shop").stdout
    assert "hello shop" in out
    usage = json.loads(platform.cli("--tenant", "acme", "usage", "--json").stdout)
    assert [u["name"] for u in usage] == ["shop"] and usage[0]["invocations"] == 2
    assert json.loads(platform.cli(*as_globex, "usage", "--json").stdout) == []
    every = json.loads(platform.cli("usage", "--json").stdout)
    assert {(u["namespace"], u["name"]) for u in every} >= {("acme", "shop")}
    text = platform.cli("usage").stdout
    assert "$0.0000" in text and "e-0" not in text
    csv_out = platform.cli("bill", "--tenant", "acme", "--csv").stdout.splitlines()
    assert csv_out[0] == "month,tenant,function,requests,gb_seconds,cost_usd"
    assert csv_out[1].split(",")[1:4] == ["acme", "shop", "2"]
    # Audit: who deployed what, from where.
    entries = json.loads(platform.cli("audit", "--json").stdout)["entries"]
    deploys = [e for e in entries if e["action"] == "deploy" and e["target"] == "shop"]
    assert deploys and deploys[0]["key_id"] == acme["id"] and deploys[0]["tenant"] == "acme"
    assert deploys[0]["client"] == "127.0.0.1"
    assert {"tenant_create", "key_create"} <= {e["action"] for e in entries}
    # rm of a tenant with functions: 409 unless --force.
    res = platform.cli("tenant", "rm", "acme", check=False)
    assert "tenant_not_empty" in res.stderr
    platform.cli("tenant", "rm", "acme", "--force")
    res = platform.cli(*as_acme, "ls", check=False)
    assert "unauthorized" in res.stderr  # its keys went with it


def test_revoke_takes_effect_at_once_and_key_ls(platform: PlatformProc) -> None:
    k = key(platform, "default", "read", name="dash")
    with client(platform, k["key"]) as c:
        assert c.get("/api/v1/functions").status_code == 200
        assert c.post("/api/v1/functions", content=b"x").json()["error"]["code"] == "forbidden"
        listed = {row["id"]: row for row in platform.http.get("/api/v1/keys").json()["keys"]}
        assert listed[k["id"]]["name"] == "dash"
        assert "key" not in listed[k["id"]] and "secret_access_key" not in listed[k["id"]]
        platform.cli("key", "revoke", k["id"])
        r = c.get("/api/v1/functions")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    wait_for(lambda: platform.http.get("/api/v1/keys").json()["keys"][-1]["last_used_at"],
             timeout=15, message="last use recorded")
    text = platform.cli("key", "ls").stdout
    assert "revoked" in text and "dash" in text


@pytest.mark.parametrize("bad", [
    (["tenant", "create", "Bad_Name"], "invalid_tenant_name"),
    (["tenant", "create", "default"], "tenant_exists"),
    (["key", "create", "--scope", "root"], "invalid_scope"),
    (["key", "create", "--scope", "read", "--tenant", "nosuch"], "tenant_not_found"),
    (["key", "create", "--scope", "read", "--expires", "soon"], "invalid_expiry"),
    (["tenant", "create", "t1", "--rate", "-1"], "invalid_limit"),
    (["tenant", "rm", "default"], "tenant_protected"),
])
def test_bad_tenancy_input(platform: PlatformProc, bad: tuple[list[str], str]) -> None:
    args, code = bad
    res = platform.cli(*args, check=False)
    assert res.returncode != 0 and code in res.stderr, res.stderr
    assert "t1" not in platform.cli("tenant", "ls").stdout


def test_secrets_reach_only_the_instance_and_never_the_disk(
        platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    plaintext = "s3cr3t-" + os.urandom(8).hex()
    hook_secret = "hook-" + os.urandom(8).hex()
    platform.cli("secret", "set", "db-password", input=plaintext + "\n")
    assert "db-password" in platform.cli("secret", "ls").stdout
    fn = make_fn("uses-secret", ENV_FN, toml=f"""
        env = {{ DB_PASSWORD = "secret:db-password", PLAIN = "visible" }}
        [[triggers]]
        type = "webhook"
        secret = "{hook_secret}"
        """)
    platform.cli("deploy", str(fn))
    out = platform.invoke("uses-secret").json()
    assert out == {"password": digest(plaintext), "plain": "visible"}
    # The webhook still verifies with the secret that moved out of the bundle.
    from squall.events.webhooks import sign_github
    body = b'{"ping": 1}'
    r = platform.http.post("/hooks/uses-secret", content=body,
                           headers={"x-hub-signature-256": sign_github(hook_secret, body)})
    assert r.status_code == 202, r.text
    assert platform.http.post("/hooks/uses-secret", content=body).status_code == 401
    # Nothing a client can read shows the value.
    for path in ("/api/v1/secrets", "/api/v1/functions/uses-secret", "/api/v1/triggers",
                 "/api/v1/functions/uses-secret/logs", "/api/v1/audit"):
        text = platform.http.get(path).text
        assert plaintext not in text and hook_secret not in text, path
    # Rotating the master key keeps every value readable and changes every ciphertext.
    platform.cli("secret", "rotate-master")
    platform.cli("scale", "uses-secret", "--to", "0")
    assert platform.invoke("uses-secret").json()["password"] == digest(plaintext)
    platform.stop()
    for f in platform.data_dir.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert plaintext.encode() not in data and hook_secret.encode() not in data, f
    assert platform.log().count(plaintext) == 0
    platform.start()
    assert platform.invoke("uses-secret").json()["password"] == digest(plaintext)
    # A changed value reaches new instances.
    platform.cli("secret", "set", "db-password", input="v2\n")
    wait_for(lambda: platform.invoke("uses-secret").json()["password"] == digest("v2"), timeout=20,
             message="the new secret value")


def test_secret_bad_input(platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    res = platform.cli("secret", "set", "empty", input="", check=False)
    assert "empty_secret" in res.stderr
    res = platform.cli("secret", "set", "bad name!", input="x", check=False)
    assert "invalid_secret_name" in res.stderr
    fn = make_fn("needs", ENV_FN, toml='env = { DB_PASSWORD = "secret:not-there" }\n')
    res = platform.cli("deploy", str(fn), check=False)
    assert res.returncode != 0 and "missing_secret" in res.stderr and "not-there" in res.stderr
    assert platform.http.get("/api/v1/functions/needs").status_code == 404
    assert platform.cli("secret", "rm", "nope", check=False).returncode != 0


def test_http_auth_key(platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    platform.cli("tenant", "create", "acme")
    platform.cli("tenant", "create", "other")
    fn = make_fn("private", """
        def handler(event, context):
            seen = "authorization" in event["headers"]
            body = "hello private" + (" (saw the key!)" if seen else "")
            return {"statusCode": 200, "body": body}
        """, toml='http_auth = "key"\n')
    platform.cli("--tenant", "acme", "deploy", str(fn))
    inv = key(platform, "acme", "invoke")
    read = key(platform, "acme", "read")
    other = key(platform, "other", "invoke")
    with httpx.Client(base_url=platform.url) as c:
        assert c.get("/t/acme/fn/private").status_code == 401
        ok = c.get("/t/acme/fn/private", headers={"authorization": f"Bearer {inv['key']}"})
        assert ok.status_code == 200 and ok.text == "hello private"
        r = c.get("/t/acme/fn/private", headers={"authorization": f"Bearer {read['key']}"})
        assert r.status_code == 403
        r = c.get("/t/acme/fn/private", headers={"authorization": f"Bearer {other['key']}"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "function_not_found"


def test_quotas_with_their_codes(platform: PlatformProc, make_fn: Callable[..., Path]) -> None:
    platform.cli("tenant", "create", "small", "--max-functions", "1", "--rate", "1",
                 "--max-queued", "2")
    k = key(platform, "small", "deploy,invoke")
    hello, slow = make_fn("hello", HELLO), make_fn("slow", SLOW)
    assert deploy_as(platform, k["key"], hello).status_code == 201
    r = deploy_as(platform, k["key"], slow)
    assert r.status_code == 403 and r.json()["error"]["code"] == "quota_exceeded"
    with client(platform, k["key"]) as c:
        statuses = [c.post("/api/v1/functions/hello/invocations", json={}) for _ in range(3)]
        limited = [s for s in statuses if s.status_code == 429]
        assert limited and limited[0].json()["error"]["code"] == "rate_limited"
        assert int(limited[0].headers["retry-after"]) >= 1
        # queue_full: events wait in the queue behind a rate of 1/s.
        platform.cli("tenant", "update", "small", "--rate", "0.01")
        codes = [c.post("/api/v1/functions/hello/invocations", json={},
                        headers={"x-squall-invocation-type": "Event"}).status_code
                 for _ in range(4)]
        assert codes[:2] == [202, 202] and 429 in codes[2:]
    # Concurrency: one execution at a time.
    platform.cli("tenant", "update", "small", "--clear", "rate", "--max-functions", "3",
                 "--max-concurrency", "1")
    assert deploy_as(platform, k["key"], slow).status_code == 201
    results: list[httpx.Response] = []

    def call() -> None:
        with client(platform, k["key"]) as c:
            results.append(c.post("/api/v1/functions/slow/invocations", json={"sleep": 2}))

    t = threading.Thread(target=call)
    t.start()
    wait_for(lambda: platform.http.get("/api/v1/tenants/small").json()["usage"][
        "concurrent_executions"] == 1, message="the first execution")
    with client(platform, k["key"]) as c:
        r = c.post("/api/v1/functions/hello/invocations", json={})
    t.join()
    assert r.status_code == 429 and r.json()["error"]["code"] == "tenant_concurrency_exceeded"
    assert results[0].status_code == 200
    # Another tenant is not affected by this one's limits.
    other = make_fn("free", HELLO)
    platform.cli("deploy", str(other))
    assert platform.invoke("free").status_code == 200


def test_refusals_are_paced_per_tenant() -> None:
    """A fake clock: the first refusal goes out at once, the next ones 1/rate apart, never held
    over max_wait_s; another tenant's are not behind them; a rate of 0 holds none."""
    now = [100.0]
    r = Refusals(10.0, max_wait_s=0.25, clock=lambda: now[0])
    assert [round(r.wait_s("noisy"), 3) for _ in range(5)] == [0.0, 0.1, 0.2, 0.25, 0.25]
    assert r.wait_s("quiet") == 0.0
    now[0] += 5.0  # a quiet spell: the next refusal goes out at once again
    assert r.wait_s("noisy") == 0.0
    assert Refusals(0.0).wait_s("noisy") == 0.0


def test_a_tenant_past_its_quota_is_answered_at_the_refusal_pace(
        platform_factory: Callable[..., PlatformProc], make_fn: Callable[..., Path]) -> None:
    """Each 429 still says why, with Retry-After; one connection that retries at once gets them
    no faster than SQUALL_REFUSALS_PER_S, while another tenant is served meanwhile."""
    p = platform_factory(SQUALL_REFUSALS_PER_S="20")
    p.cli("tenant", "create", "busy", "--max-concurrency", "1")
    k = key(p, "busy", "deploy,invoke")
    assert deploy_as(p, k["key"], make_fn("slow", SLOW)).status_code == 201
    p.cli("deploy", str(make_fn("hello", HELLO)))
    held: list[httpx.Response] = []

    def call() -> None:
        with client(p, k["key"]) as c:
            held.append(c.post("/api/v1/functions/slow/invocations", json={"sleep": 4}))

    t = threading.Thread(target=call)
    t.start()
    wait_for(lambda: p.http.get("/api/v1/tenants/busy").json()["usage"][
        "concurrent_executions"] == 1, message="the first execution")
    with client(p, k["key"]) as c:
        t0 = time.monotonic()
        refused = [c.get("/t/busy/fn/slow") for _ in range(10)]
        elapsed = time.monotonic() - t0
        assert p.invoke("hello").status_code == 200  # the default tenant is served
    t.join()
    assert held[0].status_code == 200
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["error"]["code"] for r in refused} == {"tenant_concurrency_exceeded"}
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    # 10 refusals at 20 a second: the last went out at least 9/20 s after the first (a lower
    # bound: a slow machine only makes it longer)
    assert elapsed >= 0.45, elapsed


def test_memory_quota_evicts_idle_then_refuses(platform: PlatformProc,
                                               make_fn: Callable[..., Path]) -> None:
    platform.cli("tenant", "create", "mem", "--max-memory-mb", "256")
    k = key(platform, "mem", "deploy,invoke")
    for name in ("a", "b", "c"):
        assert deploy_as(platform, k["key"], make_fn(name, SLOW)).status_code == 201
    with client(platform, k["key"]) as c:
        for name in ("a", "b", "c"):  # c's instance makes room by stopping a's idle one
            r = c.post(f"/api/v1/functions/{name}/invocations", json={"sleep": 0})
            assert r.status_code == 200, r.text
        usage = platform.http.get("/api/v1/tenants/mem").json()["usage"]
        assert usage["memory_mb"] <= 256
        results: list[httpx.Response] = []
        # 4 s each, so that both are seen running together even when one of them is slow to
        # arrive on a loaded machine (2 s once left no moment with both in flight)
        threads = [threading.Thread(target=lambda n=n: results.append(c.post(
            f"/api/v1/functions/{n}/invocations", json={"sleep": 4}))) for n in ("a", "b")]
        for th in threads:
            th.start()
        try:
            wait_for(lambda: platform.http.get("/api/v1/tenants/mem").json()["usage"][
                "concurrent_executions"] == 2, message="two busy instances")
        except AssertionError as exc:  # say what the two invocations got
            for th in threads:
                th.join()
            raise AssertionError(f"{exc}; the two answered "
                                 f"{[(x.status_code, x.text[:200]) for x in results]}") from None
        r = c.post("/api/v1/functions/c/invocations", json={"sleep": 0})
        for th in threads:
            th.join()
    if r.status_code != 200:  # c's idle instance may still be there; else it cannot start
        assert r.status_code == 429 and r.json()["error"]["code"] == "tenant_memory_exceeded"


def test_migration_from_a_data_dir_of_the_previous_release(
        platform_factory: Callable[..., PlatformProc], tmp_path: Path) -> None:
    """tests/fixtures/datadir-0.1.0.tar.gz was made by the release before tenants: five
    functions, a webhook (its secret in plaintext), two schedules, three async events running
    when the platform was killed, one failed and waiting for its retry, one dead letter."""
    import tarfile

    fixture = Path(__file__).parent / "fixtures" / "datadir-0.1.0.tar.gz"
    with tarfile.open(fixture) as tar:
        tar.extractall(tmp_path / "old", filter="data")
    # The slow function's requeued events run 30 s each: do not wait for them when stopping.
    p = PlatformProc(tmp_path / "old" / "data", {"SQUALL_SHUTDOWN_GRACE_S": "1"})
    try:
        p.start()
        names = {f["name"] for f in p.http.get("/api/v1/functions").json()["functions"]}
        assert names == {"hello", "gh-events", "cleanup", "slow", "fails"}
        assert p.http.get("/fn/hello").status_code == 200
        assert p.http.get("/api/v1/functions/hello/versions").json()["latest"] == 1
        triggers = {t["name"] for t in p.http.get("/api/v1/triggers").json()["triggers"]}
        assert triggers == {"every-5-min", "morning", "gh-events"}
        events = p.http.get("/api/v1/invocations", params={"function": "slow"}).json()
        assert len(events["invocations"]) == 3
        # The dead letter is kept; the event that waited for its retry resumed after the
        # restart (its function always fails, so it may have been dead-lettered since).
        dead = {d["request_id"] for d in p.http.get("/api/v1/dlq").json()["dead_letters"]}
        assert "c2f0013c-a2be-408d-8715-6dd75c653c49" in dead
        assert p.http.get("/api/v1/tenants/default").json()["usage"]["functions"] == 5
        # The webhook's plaintext secret was sealed at startup and still verifies.
        from squall.events.webhooks import sign_github
        body = b"{}"
        r = p.http.post("/hooks/gh-events", content=body, headers={
            "x-hub-signature-256": sign_github("example-secret-change-me", body)})
        assert r.status_code == 202
        import sqlite3
        db = sqlite3.connect(f"file:{p.data_dir / 'squall.db'}?mode=ro", uri=True)
        configs = [row[0] for row in db.execute("SELECT config FROM triggers")]
        db.close()
        assert not any("example-secret-change-me" in c for c in configs)
    finally:
        p.close()


def test_identity_expiry_with_a_fake_clock(tmp_path: Path) -> None:
    import asyncio

    from squall.errors import Unauthorized
    from squall.store.db import Database
    from squall.tenancy.crypto import Sealer
    from squall.tenancy.service import Identity

    db = Database(tmp_path / "squall.db")
    db.open()
    now = [1_000_000.0]
    ident = Identity(db, Sealer(os.urandom(32)), clock=lambda: now[0])

    async def scenario() -> None:
        await ident.load()
        k = await ident.create_key("default", "invoke", expires_in_s=3600)
        assert ident.authenticate(f"Bearer {k['key']}").tenant == "default"
        assert ident.signing_key(k["access_key_id"]) is not None
        now[0] += 3601
        with pytest.raises(Unauthorized):
            ident.authenticate(f"Bearer {k['key']}")
        assert ident.signing_key(k["access_key_id"]) is None
        # Reloading from the store gives the same answers (nothing only in memory).
        fresh = Identity(db, ident.sealer, clock=lambda: now[0])
        await fresh.load()
        with pytest.raises(Unauthorized):
            fresh.authenticate(f"Bearer {k['key']}")

    try:
        asyncio.run(scenario())
    finally:
        db.close()
