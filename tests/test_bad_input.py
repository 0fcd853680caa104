"""Every bad input gets a 4xx with a machine-readable code, and nothing is stored half-way."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PlatformProc

ROOT = Path(__file__).resolve().parent.parent


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


HANDLER = _file("handler.py", b"def handler(e, c):\n    return 1\n")


def _assert_nothing_stored(platform: PlatformProc, before: list[str]) -> None:
    names = [f["name"] for f in platform.http.get("/api/v1/functions").json()["functions"]]
    assert names == before
    staging = platform.data_dir / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def _deploy_raw(platform: PlatformProc, payload: bytes, name: str = "bad") -> tuple[int, dict]:
    resp = platform.http.post("/api/v1/functions", params={"name": name}, content=payload)
    return resp.status_code, resp.json()


@pytest.mark.parametrize("payload, code", [
    pytest.param(_tar([HANDLER, _file("../escape.py", b"x")]), "invalid_bundle", id="traversal"),
    pytest.param(_tar([HANDLER, _file("/etc/evil", b"x")]), "invalid_bundle", id="absolute"),
    pytest.param(_tar([HANDLER, (_symlink("link", "/etc/passwd"), None)]), "invalid_bundle",
                 id="symlink-outside"),
    pytest.param(_tar([HANDLER, (_symlink("link", "../../x"), None)]), "invalid_bundle",
                 id="symlink-up"),
    pytest.param(b"not an archive at all", "invalid_bundle", id="garbage"),
    pytest.param(b"", "empty_bundle", id="empty"),
])
def test_bad_archives(platform: PlatformProc, payload: bytes, code: str) -> None:
    status, body = _deploy_raw(platform, payload)
    assert status == 400, body
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    _assert_nothing_stored(platform, [])


def test_archive_bomb_is_stopped(platform_factory: Callable[..., PlatformProc]) -> None:
    platform = platform_factory(SQUALL_MAX_BUNDLE_BYTES=str(5 * 1024 * 1024))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("handler.py", "def handler(e, c):\n    return 1\n")
        zf.writestr("zeros.bin", b"\0" * (50 * 1024 * 1024))
    assert len(buf.getvalue()) < 1024 * 1024
    status, body = _deploy_raw(platform, buf.getvalue())
    assert status == 400 and body["error"]["code"] == "invalid_bundle"
    _assert_nothing_stored(platform, [])


def test_too_many_files(platform_factory: Callable[..., PlatformProc]) -> None:
    platform = platform_factory(SQUALL_MAX_BUNDLE_FILES="10")
    payload = _tar([HANDLER, *(_file(f"f{i}.txt", b"x") for i in range(20))])
    status, body = _deploy_raw(platform, payload)
    assert status == 400 and body["error"]["code"] == "invalid_bundle"


@pytest.mark.parametrize("code, toml, expected", [
    ("def handler(e, c):\n    return (\n", None, "handler_import_failed"),
    ("import no_such_module_squall\ndef handler(e, c):\n    return 1\n", None,
     "handler_import_failed"),
    ("def other(e, c):\n    return 1\n", None, "handler_import_failed"),
    ("def handler(e, c):\n    return 1\n", "memory_mb = 64\n", "invalid_config"),
    ("def handler(e, c):\n    return 1\n", "memory = 256\n", "invalid_config"),
    ("def handler(e, c):\n    return 1\n", "timeout_s = 901\n", "invalid_config"),
    ("def handler(e, c):\n    return 1\n", "env = { A = 1 }\n", "invalid_config"),
    ("def handler(e, c):\n    return 1\n", "name = \"Bad_Name\"\n", "invalid_config"),
    ("def handler(e, c):\n    return 1\n", "memory_mb = [\n", "invalid_config"),
], ids=["syntax", "import", "missing-handler", "memory-range", "unknown-key", "timeout-range",
        "env-type", "bad-name", "bad-toml"])
def test_bad_functions_fail_the_deploy_and_keep_the_previous_version(
        platform: PlatformProc, make_fn: Callable[..., Path], code: str, toml: str | None,
        expected: str) -> None:
    platform.deploy(make_fn("keep", "def handler(e, c):\n    return 'v1'\n"))
    bad = make_fn("keep", code, toml=toml)
    out = platform.cli("deploy", str(bad), check=False)
    assert out.returncode != 0
    assert expected in out.stderr
    if expected == "handler_import_failed" and "syntax" in code:
        assert "SyntaxError" in out.stderr
    _assert_nothing_stored(platform, ["keep"])
    assert platform.invoke("keep").json() == "v1"
    assert [v["version"] for v in platform.http.get(
        "/api/v1/functions/keep/versions").json()["versions"]] == [1]


def test_requirements_that_do_not_resolve(platform: PlatformProc,
                                          make_fn: Callable[..., Path]) -> None:
    platform.deploy(make_fn("deps", "def handler(e, c):\n    return 'v1'\n"))
    bad = make_fn("deps", "def handler(e, c):\n    return 'v2'\n",
                  requirements="this-package-does-not-exist-squall==1.0\n")
    out = platform.cli("deploy", str(bad), check=False)
    assert out.returncode != 0
    assert "dependency_install_failed" in out.stderr
    assert "this-package-does-not-exist-squall" in out.stderr
    assert platform.invoke("deps").json() == "v1"


def test_invalid_names_and_unknown_functions(platform: PlatformProc) -> None:
    status, body = _deploy_raw(platform, _tar([HANDLER]), name="-bad")
    assert status == 400 and body["error"]["code"] == "invalid_name"
    resp = platform.http.get("/fn/Not_A_Name")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_name"
    for resp in (platform.http.get("/fn/nope"), platform.invoke("nope"),
                 platform.http.get("/api/v1/functions/nope"),
                 platform.http.delete("/api/v1/functions/nope")):
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "function_not_found"
    assert platform.http.get("/api/v1/nothing-here").json()["error"]["code"] == "route_not_found"


def test_malformed_json_and_oversized_payloads(platform: PlatformProc) -> None:
    platform.deploy(ROOT / "examples" / "hello")
    resp = platform.http.post("/api/v1/functions/hello/invocations", content=b"{not json",
                              headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    # an async event is stored as UTF-8 JSON text: JSON in UTF-16 (which Python's json reads)
    # or bytes that are not UTF-8 are refused, not a 500
    for body in ('{"a": 1}'.encode("utf-16"), b'{"a": "\xff"}'):
        resp = platform.http.post("/api/v1/functions/hello/invocations", content=body,
                                  headers={"x-squall-invocation-type": "Event"})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    assert platform.http.get("/api/v1/invocations",
                             params={"function": "hello"}).json()["invocations"] == []
    big = b"x" * (6 * 1024 * 1024 + 1)
    resp = platform.http.post("/fn/hello", content=big)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"
    resp = platform.http.post("/api/v1/functions/hello/invocations",
                              content=json.dumps("x" * (6 * 1024 * 1024)).encode())
    assert resp.status_code == 413
    # the platform is fine afterwards
    assert platform.http.get("/fn/hello").status_code == 200


def test_cli_reports_errors_with_nonzero_exit(platform: PlatformProc) -> None:
    out = platform.cli("invoke", "hello", "--data", "{bad", check=False)
    assert out.returncode != 0 and "not valid JSON" in out.stderr
    out = platform.cli("scale", "nope", "--to", "0", check=False)
    assert out.returncode != 0 and "function_not_found" in out.stderr
    gone = platform.cli("--url", "http://127.0.0.1:1", "ls", check=False)
    assert gone.returncode != 0 and "cannot reach Squall" in gone.stderr
