"""Dependency environments: requirements.txt -> a plain site-packages folder, installed by uv.

Environments are content-addressed by the normalised requirements (plus the Python version, since
wheels are built per interpreter), so every version and every function with the same
requirements shares one folder. Layout::

    envs_dir/<key>/site-packages/   added to sys.path by the runtime
    envs_dir/<key>/complete         written last; without it the env is treated as absent
    envs_dir/<key>.lock             fcntl lock held while installing (separate processes)
"""

from __future__ import annotations

import asyncio
import collections
import errno
import fcntl
import hashlib
import os
import shutil
import sys
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path

from squall.errors import DependencyError

MARKER = "complete"
_TAIL_LINES = 40
_LOCK_POLL_S = 0.05

# Per event loop, per key: one install at a time within this process. Keyed by loop because an
# asyncio.Lock belongs to the loop it first waited on (tests run one loop each).
_loop_locks: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakValueDictionary[str, asyncio.Lock]
] = weakref.WeakKeyDictionary()


def normalise_requirements(requirements: bytes) -> str:
    """Strip comments and blank lines, sort: formatting-only edits map to the same env."""
    text = requirements.decode("utf-8-sig", errors="replace")
    lines = []
    for line in text.splitlines():
        # pip's rule: '#' starts a comment at line start or after whitespace ('pkg @ url#frag'
        # keeps its fragment).
        if line.lstrip().startswith("#"):
            continue
        for sep in (" #", "\t#"):
            if sep in line:
                line = line[: line.index(sep)]
        line = line.strip()
        if line:
            lines.append(line)
    return "\n".join(sorted(lines)) + ("\n" if lines else "")


def requirements_key(requirements: bytes) -> str:
    """sha256 hex of the Python version (major.minor) and the normalised requirements."""
    py = f"python{sys.version_info.major}.{sys.version_info.minor}\n"
    return hashlib.sha256((py + normalise_requirements(requirements)).encode()).hexdigest()


def find_uv() -> str:
    """uv beside this interpreter, else on PATH, else from the ``uv`` Python package."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    on_path = shutil.which("uv")
    if on_path:
        return on_path
    try:
        from uv import find_uv_bin
    except ImportError:
        raise DependencyError("cannot install requirements: the uv installer was not found "
                              "(pip install uv)") from None
    return str(find_uv_bin())


async def ensure_env(requirements: bytes, envs_dir: Path,
                     progress: Callable[[str], None]) -> Path:
    """Return ``envs_dir/<key>/site-packages`` with ``requirements`` installed.

    Reuses a complete environment without calling ``progress``. Otherwise installs with uv,
    passing each output line to ``progress``. Concurrent calls for one key (tasks or processes)
    install once. Raises DependencyError with the installer's last lines on failure; nothing
    partial is left behind. Cancellation kills the installer and cleans up.
    """
    key = requirements_key(requirements)
    env_dir = envs_dir / key
    site = env_dir / "site-packages"
    if (env_dir / MARKER).is_file():
        return site
    locks = _loop_locks.setdefault(asyncio.get_running_loop(), weakref.WeakValueDictionary())
    lock = locks.get(key)
    if lock is None:
        lock = locks[key] = asyncio.Lock()
    async with lock:
        os.makedirs(envs_dir, exist_ok=True)
        fd = os.open(envs_dir / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            await _flock(fd)
            # Someone else may have finished while we waited for either lock.
            if (env_dir / MARKER).is_file():
                return site
            await _install(requirements, env_dir, progress)
            return site
        finally:
            os.close(fd)  # closing releases the flock


async def _flock(fd: int) -> None:
    # Non-blocking attempts on the loop: a blocking flock in a thread could not be cancelled.
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        await asyncio.sleep(_LOCK_POLL_S)


def _prepare(env_dir: Path) -> Path:
    env_dir.mkdir(parents=True, exist_ok=True)
    # A crash between rename and marker leaves site-packages without a marker: start over.
    shutil.rmtree(env_dir / "site-packages", ignore_errors=True)
    tmp = env_dir / f".tmp-{uuid.uuid4().hex[:12]}"
    (tmp / "site-packages").mkdir(parents=True)
    return tmp


def _commit(tmp: Path, env_dir: Path, normalised: str) -> None:
    os.rename(tmp / "site-packages", env_dir / "site-packages")
    (env_dir / MARKER).write_text(normalised)


async def _install(requirements: bytes, env_dir: Path, progress: Callable[[str], None]) -> None:
    tmp = await asyncio.to_thread(_prepare, env_dir)
    try:
        normalised = normalise_requirements(requirements)
        if normalised:
            req = tmp / "requirements.txt"
            req.write_bytes(normalised.encode())
            await _run_uv(["pip", "install", "--target", str(tmp / "site-packages"),
                           "-r", str(req), "--python", sys.executable], progress)
        await asyncio.to_thread(_commit, tmp, env_dir, normalised)
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)


async def _run_uv(args: list[str], progress: Callable[[str], None]) -> None:
    await run_installer([find_uv(), *args], "requirements", progress,
                        env={"UV_NO_PROGRESS": "1"})


async def run_installer(argv: list[str], what: str, progress: Callable[[str], None], *,
                        env: dict[str, str], cwd: Path | None = None) -> None:
    """Run a package installer (uv, npm), stream its lines to ``progress``; on failure raise
    DependencyError with the last lines of its output (400 ``dependency_install_failed``)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=dict(os.environ, NO_COLOR="1", **env))
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            tail.append(line)
            progress(line)
        rc = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if rc != 0:
        output = "\n".join(tail)
        raise DependencyError(f"installing {what} failed ({Path(argv[0]).name} exited with "
                              f"{rc}):\n{output}", details={"output": output})
