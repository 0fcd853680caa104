"""`squall dev`: a real `squall dev` child process on a temp folder; invoke it, save a new
handler, and see the new behaviour (over HTTP, and on a file or a recorded event)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import SQUALL, PlatformProc, wait_for

V1 = """
def handler(event, context):
    print("v1 saw", event.get("rawPath", event))
    return {"statusCode": 200, "headers": {"content-type": "text/plain"}, "body": "one"}
"""
V2 = """
def handler(event, context):
    print("v2 saw", event["requestContext"]["http"]["method"], event.get("body"))
    return {"version": 2, "function": context.function_name}
"""


class DevProc:
    """`squall dev` with its output in a file that the test reads as it grows."""

    def __init__(self, args: list[str], out: Path, env: dict[str, str] | None = None) -> None:
        self.out = out
        with open(out, "wb") as f:
            self.proc = subprocess.Popen([SQUALL, *args], stdout=f, stderr=subprocess.STDOUT,
                                         env=env or dict(os.environ))

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_text(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"squall dev exited ({self.proc.returncode}):\n{self.text()}")
            return re.search(pattern, self.text())

        match: re.Match[str] = wait_for(found, timeout=timeout, message=repr(pattern))
        return match

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture
def devs() -> Iterator[list[DevProc]]:
    made: list[DevProc] = []
    yield made
    for d in made:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line names ``text`` (the zygote's carries its code folder)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                pids.append(int(entry))
    return pids


def test_dev_serves_http_and_reloads_on_save(tmp_path: Path, devs: list[DevProc],
                                             make_fn: Callable[..., Path]) -> None:
    folder = make_fn("hello", V1)
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"from": "file"}))
    dev = DevProc(["dev", str(folder), "--port", "0", "--event", str(event)],
                  tmp_path / "dev.out")
    devs.append(dev)
    port = int(dev.wait_text(r"serving http://127\.0\.0\.1:(\d+)/fn/hello").group(1))
    assert "v1 saw {'from': 'file'}" in dev.text()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        r = http.get("/fn/hello/some/path?q=1")
        assert (r.status_code, r.text) == (200, "one")
        dev.wait_text(r"v1 saw /fn/hello/some/path")
        assert http.get("/fn/other").status_code == 404

        (folder / "handler.py").write_text(textwrap.dedent(V2))

        def reloaded() -> httpx.Response | None:
            resp = http.post("/fn/hello/x", content=b"payload")
            return resp if resp.status_code == 200 and resp.text != "one" else None

        r = wait_for(reloaded, timeout=30, interval=0.1, message="the saved handler to serve")
        assert r.json() == {"version": 2, "function": "hello"}
        dev.wait_text(r"v2 saw POST payload")
        dev.wait_text(r"handler\.py changed: reloading")
        # the file event ran again on the new code (it has no requestContext: a KeyError)
        dev.wait_text(r"error: KeyError: 'requestContext'")

        (folder / "handler.py").write_text("def handler(event, context):\n    return (\n")
        dev.wait_text(r"the handler does not import")
        broken = wait_for(lambda: (x := http.get("/fn/hello")).status_code == 500 and x,
                          timeout=30, interval=0.1, message="the broken handler's error")
        assert broken.json()["errorType"] == "Runtime.ImportModuleError"
        assert "SyntaxError" in broken.json()["errorMessage"]
    assert dev.stop() == 0
    assert "Traceback" not in dev.text()
    # the runtime processes went with it
    wait_for(lambda: not _processes_mentioning(str(folder)), message="no process left")


def test_dev_replays_a_recorded_event_and_reloads(platform: PlatformProc, tmp_path: Path,
                                                  devs: list[DevProc],
                                                  make_fn: Callable[..., Path]) -> None:
    folder = make_fn("calc", "def handler(event, context):\n    return 10 // event['d']\n")
    platform.deploy(folder)
    rid = platform.invoke("calc", {"d": 0}).headers["x-squall-request-id"]
    dev = DevProc(["--url", platform.url, "dev", str(folder), "--replay", rid],
                  tmp_path / "dev.out", env=platform.env)
    devs.append(dev)
    dev.wait_text(rf"running the event of {rid} \(calc version 1, failed\)")
    dev.wait_text(r"error: ZeroDivisionError: integer division or modulo by zero")
    (folder / "handler.py").write_text(
        "def handler(event, context):\n    return 10 // event['d'] if event['d'] else 'ok'\n")
    dev.wait_text(r'result: "ok"')
    assert dev.stop() == 0
    missing = subprocess.run([SQUALL, "--url", platform.url, "dev", str(folder), "--replay",
                              "no-such-id"], capture_output=True, text=True, env=platform.env,
                             timeout=60)
    assert missing.returncode == 1 and "capture_not_found" in missing.stderr
