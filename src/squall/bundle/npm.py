"""Node dependencies: a bundle's package.json -> node_modules, installed by npm at deploy.

Content-addressed like Python's (bundle/deps.py, whose locking and commit steps this shares):
the key is the sha256 of the Node major version, package.json and package-lock.json, so every
version with the same manifests shares one folder. The dependency root of a key is
``envs_dir/<key>/site-packages`` as for Python (the registry's rule for ``deps_key``); for Node
it holds ``node_modules/``, which the runtime finds through NODE_PATH (CommonJS) and a resolve
hook (ESM) (squall.agent.runtimes.commands, runtime/node/).

npm runs with ``--ignore-scripts``: a package's install scripts would run on the platform's
host, outside any sandbox. Packages that need them (native addons) must ship prebuilt files.
Only ``dependencies`` are installed (``--omit=dev``).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from squall.bundle.deps import MARKER, _commit, _flock, _prepare, run_installer
from squall.errors import DependencyError, InvalidBundle


def has_dependencies(package_json: bytes) -> bool:
    """Whether package.json declares dependencies; InvalidBundle when it is not JSON."""
    try:
        data = json.loads(package_json)
    except ValueError as exc:
        raise InvalidBundle(f"package.json is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidBundle("package.json must be a JSON object")
    deps = data.get("dependencies") or {}
    if not isinstance(deps, dict):
        raise InvalidBundle("package.json: 'dependencies' must be an object")
    return bool(deps)


def node_major() -> str:
    try:
        out = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "none"
    return out.stdout.strip().lstrip("v").split(".")[0] or "none"


def npm_key(package_json: bytes, lock: bytes | None, node: str) -> str:
    """sha256 hex of the Node major version and the manifests (``npm-`` never collides with
    a Python key: those hash a ``python3.x`` line first)."""
    h = hashlib.sha256(f"npm\nnode{node}\n".encode())
    h.update(hashlib.sha256(package_json).digest())
    h.update(hashlib.sha256(lock or b"").digest())
    return h.hexdigest()


async def ensure_node_modules(package_json: bytes, lock: bytes | None, envs_dir: Path,
                              progress: Callable[[str], None]) -> tuple[str, Path]:
    """(key, dependency root) with the manifests' dependencies installed under
    ``root/node_modules``. Concurrent installs of one key (tasks or processes) install once.
    Raises DependencyError with npm's last lines when it fails; nothing partial is kept."""
    node = await asyncio.to_thread(node_major)
    key = npm_key(package_json, lock, node)
    env_dir = envs_dir / key
    root = env_dir / "site-packages"
    if (env_dir / MARKER).is_file():
        return key, root
    os.makedirs(envs_dir, exist_ok=True)
    fd = os.open(envs_dir / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        await _flock(fd)
        if (env_dir / MARKER).is_file():
            return key, root
        await _install(package_json, lock, env_dir, progress)
        return key, root
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


async def _install(package_json: bytes, lock: bytes | None, env_dir: Path,
                   progress: Callable[[str], None]) -> None:
    tmp = await asyncio.to_thread(_prepare, env_dir)
    work = tmp / "site-packages"
    try:
        (work / "package.json").write_bytes(package_json)
        if lock is not None:
            (work / "package-lock.json").write_bytes(lock)
        verb = "ci" if lock is not None else "install"
        await _run_npm([verb, "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund",
                        "--no-update-notifier", "--loglevel=error"], work, progress)
        await asyncio.to_thread(_commit, tmp, env_dir, verb)
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)


async def _run_npm(args: list[str], cwd: Path, progress: Callable[[str], None]) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise DependencyError("cannot install package.json dependencies: npm was not found on "
                              "the platform's PATH")
    await run_installer([npm, *args], "package.json dependencies", progress, cwd=cwd,
                        env={"npm_config_progress": "false"})
