"""The nodejs20 runtime: Lambda-style Node handlers (CommonJS and ESM) with npm dependencies.

End to end on one real platform (module scope): the example with its npm dependency, an ESM
handler importing a package, callback handlers, Lambda's context and error shape, timeouts,
the memory limit, cold starts from zero, and the deploy failures (a handler that is not
exported, a module that does not load, dependencies npm cannot resolve).
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from squall.bundle.archive import pack_dir
from tests.conftest import PlatformProc, wait_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")

PACKAGE = json.dumps({"name": "t", "private": True, "dependencies": {"ms": "2.1.3"}})

ESM = """
import ms from "ms";
import { hostname } from "node:os";

export const handler = async (event, context) => ({
  took: ms(event.ms), host: hostname(), fn: context.functionName,
  version: context.functionVersion, memory: context.memoryLimitInMB,
  arn: context.invokedFunctionArn, left: context.getRemainingTimeInMillis(),
});
"""

CJS = """
const fs = require("fs");
let calls = 0;
exports.handler = async (event, context) => {
  calls += 1;
  if (event.mode === "throw") {
    const err = new TypeError("bad input: " + event.value);
    throw err;
  }
  if (event.mode === "hang") await new Promise(() => {});
  if (event.mode === "hog") {
    const keep = [];
    for (let i = 0; i < 64; i++) keep.push(Buffer.alloc(16 * 1024 * 1024, 1));
    return keep.length;
  }
  if (event.mode === "tmp") {
    const before = fs.readdirSync("/tmp");
    fs.writeFileSync("/tmp/mine", "x");
    return { before, uid: process.getuid() };
  }
  return { calls, pid: process.pid };
};
exports.callback = (event, context, callback) => {
  setTimeout(() => callback(null, { via: "callback", rid: context.awsRequestId }), 5);
};
"""


def _fn(root: Path, name: str, files: dict[str, str], toml: str = "") -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (d / rel).write_text(textwrap.dedent(text))
    (d / "squall.toml").write_text('runtime = "nodejs20"\n' + textwrap.dedent(toml))
    return d


def _deploy_error(platform: PlatformProc, path: Path) -> dict[str, Any]:
    resp = platform.http.post("/api/v1/functions", params={"default_name": path.name},
                              content=pack_dir(path))
    assert resp.status_code == 400, resp.text
    error: dict[str, Any] = resp.json()["error"]
    return error


def _lines(platform: PlatformProc, name: str, rid: str) -> list[str]:
    return [ln["line"] for ln in platform.http.get(
        f"/api/v1/functions/{name}/logs", params={"request_id": rid}).json()["lines"]]


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformProc]:
    p = PlatformProc(tmp_path_factory.mktemp("node") / "data", {})
    p.start()
    yield p
    p.close()


def test_example_with_npm_dependency(plat: PlatformProc) -> None:
    plat.deploy(ROOT / "examples" / "node-hello")
    resp = plat.http.get("/fn/node-hello", params={"name": "ada"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["message"].startswith("hello ada from Node v20")
    assert body["uptime"].endswith(("ms", "s", "m"))  # formatted by the `ms` package
    rid = resp.headers["x-squall-request-id"]
    assert body["requestId"] == rid and 0 < body["remainingMs"] <= 10_000
    lines = _lines(plat, "node-hello", rid)
    # console.log as Lambda's Node runtime writes it: time, request id, level, message
    assert any(ln.endswith(f"\t{rid}\tINFO\tgreeting ada") for ln in lines), lines
    assert lines[-1].startswith(f"REPORT RequestId: {rid}")


def test_esm_handler_imports_an_npm_package(plat: PlatformProc, tmp_path: Path) -> None:
    plat.deploy(_fn(tmp_path, "esm", {"package.json": PACKAGE, "app.mjs": ESM},
                    'handler = "app.handler"\nmemory_mb = 256\n'))
    body = plat.invoke("esm", {"ms": 90_000}).json()
    assert body["took"] == "2m" and body["fn"] == "esm" and body["version"] == "1"
    assert body["memory"] == "256" and body["arn"].endswith(":function:esm")
    assert 0 < body["left"] <= 30_000


def test_context_errors_callbacks_and_isolation(plat: PlatformProc, tmp_path: Path) -> None:
    plat.deploy(_fn(tmp_path, "cjs", {"index.js": CJS}, 'handler = "index.handler"\n'))
    first, second = plat.invoke("cjs", {}).json(), plat.invoke("cjs", {}).json()
    assert second["calls"] == first["calls"] + 1 and second["pid"] == first["pid"]  # warm
    err = plat.invoke("cjs", {"mode": "throw", "value": 42})
    assert err.headers["x-squall-function-error"] == "Unhandled"
    shape = err.json()
    assert shape["errorType"] == "TypeError" and shape["errorMessage"] == "bad input: 42"
    assert any("index.js" in frame for frame in shape["stackTrace"])
    tmp = plat.invoke("cjs", {"mode": "tmp"}).json()
    assert "mine" not in tmp["before"]
    if plat.http.get("/healthz").json()["sandbox"] == "bwrap":
        assert tmp["uid"] == 993

    plat.deploy(_fn(tmp_path, "cb", {"index.js": CJS}, 'handler = "index.callback"\n'))
    resp = plat.invoke("cb", {})
    assert resp.json() == {"via": "callback", "rid": resp.headers["x-squall-request-id"]}


def test_timeout_and_memory_limit_end_only_that_invocation(plat: PlatformProc,
                                                           tmp_path: Path) -> None:
    plat.deploy(_fn(tmp_path, "limits", {"index.js": CJS},
                    'handler = "index.handler"\ntimeout_s = 1\nmemory_mb = 128\n'))
    assert plat.invoke("limits", {"mode": "hang"}).json()["errorType"] == "TimeoutError"
    hog = plat.invoke("limits", {"mode": "hog"}).json()
    assert hog.get("errorType") in ("OutOfMemoryError", "Runtime.ExitError"), hog
    assert plat.invoke("limits", {}).json()["calls"] == 1  # a fresh instance serves on


def test_cold_start_from_zero_takes_the_spare(plat: PlatformProc, tmp_path: Path) -> None:
    plat.deploy(_fn(tmp_path, "cold", {"index.js": CJS}, 'handler = "index.handler"\n'))
    first = plat.http.get("/fn/cold")
    assert first.headers["x-squall-cold-start"] == "1"
    plat.cli("scale", "cold", "--to", "0")
    wait_for(lambda: plat.instances("cold") == [], message="scale to zero")
    again = plat.http.get("/fn/cold")
    assert again.headers["x-squall-cold-start"] == "1"
    assert again.json()["pid"] != first.json()["pid"] and again.json()["calls"] == 1


@pytest.mark.parametrize(("case", "expected"), [
    ("not_exported", "index.handler is undefined or not exported"),
    ("syntax", "SyntaxError"),
    ("no_file", "Cannot find module 'missing'"),
    ("bad_handler", "must be 'file.export'"),
])
def test_bad_handlers_fail_the_deploy(plat: PlatformProc, tmp_path: Path, case: str,
                                      expected: str) -> None:
    files = {"not_exported": {"index.js": "exports.other = async () => 1;\n"},
             "syntax": {"index.js": "exports.handler = async (e) => {;\n"},
             "no_file": {"index.js": "exports.handler = async () => 1;\n"},
             "bad_handler": {"index.js": "exports.handler = async () => 1;\n"}}[case]
    handler = {"no_file": "missing.handler", "bad_handler": "../up.handler"}.get(
        case, "index.handler")
    name = f"bad-{case.replace('_', '-')}"
    err = _deploy_error(plat, _fn(tmp_path, name, files, f'handler = "{handler}"\n'))
    assert expected in err["message"], err
    assert err["code"] == ("invalid_config" if case == "bad_handler"
                           else "handler_import_failed")
    assert plat.http.get(f"/api/v1/functions/{name}").status_code == 404


def test_unresolvable_dependencies_fail_with_npms_message(plat: PlatformProc,
                                                          tmp_path: Path) -> None:
    pkg = json.dumps({"name": "t", "dependencies": {"squall-no-such-package-e7c1": "1.0.0"}})
    err = _deploy_error(plat, _fn(tmp_path, "nodeps", {"package.json": pkg,
                                                       "index.js": CJS},
                                  'handler = "index.handler"\n'))
    assert err["code"] == "dependency_install_failed"
    assert "squall-no-such-package-e7c1" in err["message"] and "npm" in err["message"]
    bad_json = _deploy_error(plat, _fn(tmp_path, "badjson", {"package.json": "{nope",
                                                             "index.js": CJS},
                                       'handler = "index.handler"\n'))
    assert bad_json["code"] == "invalid_bundle" and "package.json" in bad_json["message"]
