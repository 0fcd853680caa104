"""Dependency envs with the real uv against the package index. Kept few: installs are slow."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from squall.bundle.deps import MARKER, ensure_env, normalise_requirements, requirements_key
from squall.errors import DependencyError


def test_key_ignores_comments_blank_lines_and_order() -> None:
    a = b"six==1.17.0\nidna  # for urls\n\n# comment\n"
    b = b"# deps\nidna\r\n   six==1.17.0   \n"
    assert normalise_requirements(a) == "idna\nsix==1.17.0\n"
    assert requirements_key(a) == requirements_key(b)
    assert requirements_key(a) != requirements_key(b"six==1.16.0\nidna\n")
    assert len(requirements_key(a)) == 64
    # a URL fragment is not a comment
    assert "#egg=x" in normalise_requirements(b"x @ https://h/x.zip#egg=x\n")


async def test_install_then_reuse(tmp_path: Path) -> None:
    envs = tmp_path / "envs"
    lines: list[str] = []
    site = await ensure_env(b"six\n", envs, lines.append)
    assert site == envs / requirements_key(b"six\n") / "site-packages"
    assert (site / "six.py").is_file()
    assert (site.parent / MARKER).is_file()
    assert any("six" in line for line in lines)
    # no temp folders left behind
    assert sorted(p.name for p in site.parent.iterdir()) == [MARKER, "site-packages"]
    # usable by putting it on sys.path of a fresh interpreter
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import six; print(six.__file__)",
        env={**os.environ, "PYTHONPATH": str(site)}, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert out.decode().strip() == str(site / "six.py")

    again: list[str] = []
    assert await ensure_env(b"# same\nsix\n\n", envs, again.append) == site
    assert again == []


async def test_unresolvable_requirement(tmp_path: Path) -> None:
    envs = tmp_path / "envs"
    lines: list[str] = []
    req = b"this-package-does-not-exist-squall==1.0\n"
    with pytest.raises(DependencyError) as e:
        await ensure_env(req, envs, lines.append)
    assert e.value.code == "dependency_install_failed"
    assert "this-package-does-not-exist-squall" in e.value.message
    assert "uv exited with" in e.value.message
    assert lines  # the installer's output was streamed
    env_dir = envs / requirements_key(req)
    assert not (env_dir / "site-packages").exists() and not (env_dir / MARKER).exists()
    assert not env_dir.exists() or list(env_dir.iterdir()) == []


async def test_concurrent_calls_install_once(tmp_path: Path) -> None:
    envs = tmp_path / "envs"
    a: list[str] = []
    b: list[str] = []
    sa, sb = await asyncio.gather(ensure_env(b"six\n", envs, a.append),
                                  ensure_env(b"six\n", envs, b.append))
    assert sa == sb and (sa / "six.py").is_file()
    assert (a == []) != (b == [])  # exactly one of them ran the installer


def _fds_pointing_at(path: Path) -> bool:
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


async def test_waits_for_another_process_then_reuses_its_env(tmp_path: Path) -> None:
    # A separate process holds the install lock. Our call must wait for it, then find the env
    # that process "installed" instead of running uv (which would fail on this requirement).
    envs = tmp_path / "envs"
    envs.mkdir()
    req = b"this-package-does-not-exist-squall==2.0\n"
    key = requirements_key(req)
    lock_path = envs / f"{key}.lock"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import fcntl, os, sys\n"
        f"fd = os.open({str(lock_path)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.readline()\n",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert (await holder.stdout.readline()).strip() == b"locked"
        lines: list[str] = []
        task = asyncio.create_task(ensure_env(req, envs, lines.append))
        deadline = time.monotonic() + 10
        # Our call opens the lock file and tries it in one step; once the fd is open it is waiting.
        while not _fds_pointing_at(lock_path):
            assert time.monotonic() < deadline, "ensure_env never opened the lock file"
            await asyncio.sleep(0.01)
        assert not task.done()
        site = envs / key / "site-packages"
        site.mkdir(parents=True)
        (envs / key / MARKER).write_text("done by the other process")
        holder.stdin.write(b"\n")
        await holder.stdin.drain()
        assert await asyncio.wait_for(task, 30) == site
        assert lines == []
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()
