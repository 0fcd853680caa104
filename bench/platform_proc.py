"""Drive a real `squall up` child process for the benchmarks: start, deploy, scale, instances."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from util import free_port, stop, wait_for

ROOT = Path(__file__).resolve().parent.parent


def squall_argv() -> list[str]:
    exe = Path(sys.executable).parent / "squall"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "squall.cli.main"]


class Platform:
    """One `squall up` on a free loopback port with its own temporary data dir."""

    def __init__(self, sandbox: str | None = None, env: dict[str, str] | None = None,
                 cpus: str = "") -> None:
        self.extra_env = dict(env or {})
        self.cpus = cpus  # taskset -c: the platform (and so its zygotes and instances) there
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sandbox = sandbox
        self._tmp = tempfile.mkdtemp(prefix="squall-bench-")
        self.data_dir = Path(self._tmp) / "data"
        self.log_path = Path(self._tmp) / "squall.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=120)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.sandbox is not None:
            env["SQUALL_SANDBOX"] = self.sandbox
        env.setdefault("SQUALL_S3_PORT", "0")
        env.update(self.extra_env)
        if self.admin_key:
            env["SQUALL_API_KEY"] = self.admin_key
        return env

    @property
    def admin_key(self) -> str:
        """The key `squall up` wrote on the first start of the data dir ('' before)."""
        try:
            return (self.data_dir / "admin-key").read_text().strip()
        except OSError:
            return ""

    def start(self) -> None:
        log = open(self.log_path, "ab")
        pin = ["taskset", "-c", self.cpus] if self.cpus else []
        self.proc = subprocess.Popen(
            [*pin, *squall_argv(), "up", "--port", str(self.port), "--data-dir",
             str(self.data_dir)], stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=ROOT)
        log.close()
        try:
            wait_for(self._ready, 60, f"squall up on {self.url}")
        except TimeoutError:
            self.close()
            raise RuntimeError(f"squall up did not become ready; log:\n{self.log_tail()}") from None

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"squall up exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            if self.http.get("/healthz", timeout=2).status_code != 200 or not self.admin_key:
                return False
        except httpx.HTTPError:
            return False
        self.http.headers["authorization"] = f"Bearer {self.admin_key}"
        return True

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*squall_argv(), "--url", self.url, *args], capture_output=True,
                             text=True, env=self.env(), cwd=ROOT, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"squall {' '.join(args)} failed ({res.returncode}):\n"
                               f"{res.stdout}\n{res.stderr}")
        return res

    def deploy(self, path: Path, name: str) -> float:
        """Deploy with the real CLI; returns seconds it took (dependency install included)."""
        t0 = time.perf_counter()
        self.cli("deploy", str(path), "--name", name)
        return time.perf_counter() - t0

    def scale(self, name: str, body: dict[str, int]) -> None:
        r = self.http.post(f"/api/v1/functions/{name}/scale", json=body)
        if r.status_code >= 300:
            raise RuntimeError(f"scale {name} {body}: {r.status_code} {r.text}")

    def instances(self, name: str) -> list[dict[str, Any]]:
        r = self.http.get(f"/api/v1/functions/{name}/instances")
        if r.status_code != 200:
            raise RuntimeError(f"instances {name}: {r.status_code} {r.text}")
        return list(r.json()["instances"])

    def created_total(self, name: str) -> int | None:
        r = self.http.get(f"/api/v1/functions/{name}/instances")
        value = r.json().get("created_total") if r.status_code == 200 else None
        return value if isinstance(value, int) else None

    def health(self) -> dict[str, Any]:
        r = self.http.get("/healthz")
        return dict(r.json()) if r.status_code == 200 else {}

    def live_instances(self, name: str) -> list[dict[str, Any]]:
        return [i for i in self.instances(name)
                if str(i.get("state", "")).lower() not in ("stopped", "stopping", "dead")]

    def scale_to_zero(self, name: str) -> None:
        self.scale(name, {"to": 0})
        wait_for(lambda: not self.live_instances(name), 10, f"{name} to reach 0 instances")

    def close(self) -> None:
        self.http.close()
        if self.proc is not None:
            stop(self.proc, grace_s=15)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Platform:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
