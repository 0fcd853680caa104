"""Shared fixtures: a real `squall up` child process on a free loopback port, real bundles."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from squall.store.db import Database, open_database

BIN = Path(sys.executable).parent
SQUALL = str(BIN / "squall")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class PlatformProc:
    """A real platform process. ``start``/``stop``/``kill9``/``restart`` keep the data dir."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=60)
        self.log_path = data_dir.parent / f"platform-{self.port}.log"
        self.admin_key = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [SQUALL, "up", "--port", str(self.port), "--data-dir", str(self.data_dir)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"platform exited early:\n{self.log()}")
            try:
                return self.http.get("/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=30, message="the platform to answer /healthz")
        # The admin key written on the first start of the data dir: every /api/v1 call needs a
        # key, so the test client and the CLI send this one unless a test says otherwise.
        self.admin_key = (self.data_dir / "admin-key").read_text().strip()
        self.http.headers["authorization"] = f"Bearer {self.admin_key}"
        self.env["SQUALL_API_KEY"] = self.admin_key

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        if self.proc is not None:
            self.stop()
        self.start()

    def cli(self, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([SQUALL, "--url", self.url, *args], capture_output=True,
                                text=True, env=self.env, input=input, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"squall {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def deploy(self, path: Path, name: str | None = None) -> dict[str, Any]:
        from squall.bundle.archive import pack_dir

        params = {"default_name": path.name}
        if name:
            params["name"] = name
        resp = self.http.post("/api/v1/functions", params=params, content=pack_dir(path))
        assert resp.status_code in (200, 201), resp.text
        result: dict[str, Any] = resp.json()
        return result

    def invoke(self, name: str, event: Any = None, **kwargs: Any) -> httpx.Response:
        return self.http.post(f"/api/v1/functions/{name}/invocations",
                              json={} if event is None else event, **kwargs)

    def instances(self, name: str) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.http.get(
            f"/api/v1/functions/{name}/instances").json()["instances"]
        return data

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.stop(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.http.close()


@pytest.fixture
def platform_factory(tmp_path: Path) -> Iterator[Callable[..., PlatformProc]]:
    made: list[PlatformProc] = []

    def make(**env: str) -> PlatformProc:
        p = PlatformProc(tmp_path / f"data{len(made)}", {k: str(v) for k, v in env.items()})
        made.append(p)
        p.start()
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def platform(platform_factory: Callable[..., PlatformProc]) -> PlatformProc:
    return platform_factory()


@pytest.fixture
def make_fn(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str, code: str, toml: str | None = None,
             requirements: str | None = None) -> Path:
        d = tmp_path / "fns" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "handler.py").write_text(textwrap.dedent(code))
        if toml is not None:
            (d / "squall.toml").write_text(textwrap.dedent(toml))
        if requirements is not None:
            (d / "requirements.txt").write_text(requirements)
        return d

    return make


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A real, migrated store, once per backend: a SQLite file in a temp dir, and PostgreSQL
    (a fresh schema of the test database, tests/pg_helpers.py; skipped when unreachable)."""
    if request.param == "sqlite":
        d = Database(tmp_path / "squall.db")
        d.open()
        yield d
        d.close()
        return
    from tests.pg_helpers import pg_address, pg_schema

    require_service(*pg_address(), "PostgreSQL")
    with pg_schema() as url:
        d = open_database(url, tmp_path)
        d.open()
        yield d
        d.close()


def require_service(host: str, port: int, name: str) -> None:
    """Skip when a backing service is unreachable, unless SQUALL_REQUIRE_SERVICES=1 (then fail)."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        if os.environ.get("SQUALL_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{name} at {host}:{port} is required but unreachable: {exc}")
        pytest.skip(f"{name} at {host}:{port} is not reachable: {exc}")


def require_ray() -> None:
    """Skip without Ray (`pip install 'squall[cluster]'`), unless SQUALL_REQUIRE_SERVICES=1."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        if os.environ.get("SQUALL_REQUIRE_SERVICES") == "1":
            pytest.fail(f"Ray is required for the cluster tests: {exc}")
        pytest.skip("Ray is not installed: pip install 'squall[cluster]'")
