"""The `provided` runtime: any executable `bootstrap` speaking the Lambda Runtime API.

End to end on one real platform (module scope: each test deploys its own functions): unmodified
awslambdaric, a plain bash bootstrap with no curl, network = "none", the Runtime API's answers
to a misbehaving runtime, deploy failures, timeouts and crashes. The Runtime API's rules are
also checked as a pure state machine with a table of cases.
"""

from __future__ import annotations

import shutil
import socket
import stat
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from squall.runtime_api.state import MAX_PAYLOAD, ApiError, Invocation, RuntimeState
from tests.conftest import PlatformProc

ROOT = Path(__file__).resolve().parent.parent

# A Lambda custom runtime in bash alone: HTTP over /dev/tcp, one connection per call. It
# answers every event with the event itself, its handler name and who it runs as.
BASH_BOOTSTRAP = r"""#!/bin/bash
set -euo pipefail
export LC_ALL=C
IFS=: read -r HOST PORT <<<"$AWS_LAMBDA_RUNTIME_API"
call() {  # METHOD PATH [BODY] -> headers + body of the answer on stdout
  local body=${3-}
  exec 3<>"/dev/tcp/$HOST/$PORT"
  printf '%s /2018-06-01/runtime%s HTTP/1.1\r\nHost: %s\r\n' "$1" "$2" "$HOST" >&3
  printf 'Content-Length: %d\r\nConnection: close\r\n\r\n%s' "${#body}" "$body" >&3
  cat <&3
  exec 3<&-
}
echo "bash runtime up as uid $(id -u)"
while true; do
  answer=$(call GET /invocation/next)
  rid=$(printf '%s' "$answer" | tr -d '\r' | sed -n 's/^Lambda-Runtime-Aws-Request-Id: //Ip')
  event=${answer#*$'\r\n\r\n'}
  echo "got $rid"
  reply="{\"event\": $event, \"handler\": \"$_HANDLER\", \"uid\": $(id -u),"
  call POST "/invocation/$rid/response" "$reply \"api\": \"$AWS_LAMBDA_RUNTIME_API\"}" >/dev/null
done
"""

# A small Python runtime that misbehaves on purpose and reports how the Runtime API answered.
PROBE_RUNTIME = r"""
import http.client, json, os, sys, time
host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
conn = http.client.HTTPConnection(host, int(port))

def call(method, path, body=None, headers=None):
    conn.request(method, "/2018-06-01/runtime" + path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.getheaders(), resp.read()

print("probe up", flush=True)
seen = {}
while True:
    status, headers, body = call("GET", "/invocation/next")
    h = {k.lower(): v for k, v in headers}
    rid = h["lambda-runtime-aws-request-id"]
    event = json.loads(body)
    mode = event.get("mode")
    if mode == "misbehave":
        seen["wrong_id"] = call("POST", "/invocation/not-a-request/response", b"{}")[0]
        seen["next_too_early"] = call("GET", "/invocation/next")[0]
        seen["first"] = call("POST", f"/invocation/{rid}/response", b'"first"')[0]
        seen["twice"], _, raw = call("POST", f"/invocation/{rid}/response", b'"second"')
        seen["twice_type"] = json.loads(raw)["errorType"]
        seen["init_error_late"] = call("POST", "/init/error", b"{}")[0]
        continue
    if mode == "report":
        out = {"seen": seen, "headers": h, "env": {k: os.environ.get(k) for k in (
            "_HANDLER", "LAMBDA_TASK_ROOT", "AWS_LAMBDA_FUNCTION_NAME", "AWS_REGION",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION")}}
        call("POST", f"/invocation/{rid}/response", json.dumps(out).encode())
        continue
    if mode == "error":
        print("about to fail", flush=True)
        call("POST", f"/invocation/{rid}/error",
             json.dumps({"errorType": "Oops", "errorMessage": "it broke",
                         "stackTrace": ["probe.py line 1"]}).encode(),
             {"Lambda-Runtime-Function-Error-Type": "Oops"})
        continue
    if mode == "sleep":
        time.sleep(event["s"])
    if mode == "crash":
        print("crashing now", flush=True)
        os._exit(3)
    call("POST", f"/invocation/{rid}/response", json.dumps({"pid": os.getpid()}).encode())
"""

PY_BOOTSTRAP = '#!/bin/sh\nexec "$SQUALL_PYTHON" "$LAMBDA_TASK_ROOT/probe.py"\n'


def _fn(root: Path, name: str, files: dict[str, str], toml: str,
        executable: tuple[str, ...] = ("bootstrap",)) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (d / rel).write_text(text)
    for rel in executable:
        p = d / rel
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    (d / "squall.toml").write_text(f'runtime = "provided"\n{textwrap.dedent(toml)}')
    return d


def _deploy_error(platform: PlatformProc, path: Path) -> dict[str, Any]:
    from squall.bundle.archive import pack_dir

    resp = platform.http.post("/api/v1/functions", params={"default_name": path.name},
                              content=pack_dir(path))
    assert resp.status_code == 400, resp.text
    error: dict[str, Any] = resp.json()["error"]
    return error


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformProc]:
    p = PlatformProc(tmp_path_factory.mktemp("provided") / "data", {})
    p.start()
    yield p
    p.close()


def test_awslambdaric_unmodified_runs_the_example(plat: PlatformProc, tmp_path: Path) -> None:
    fn = tmp_path / "provided-ric"
    shutil.copytree(ROOT / "examples" / "provided-ric", fn)
    plat.deploy(fn)
    resp = plat.invoke("provided-ric", {"name": "ada"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    rid = resp.headers["x-squall-request-id"]
    assert body["hello"] == "ada" and body["request_id"] == rid
    assert body["runtime_api"].startswith("127.0.0.1:")
    assert 0 < body["remaining_ms"] <= 10_000
    lines = [ln["line"] for ln in plat.http.get(
        "/api/v1/functions/provided-ric/logs", params={"request_id": rid}).json()["lines"]]
    assert "event for provided-ric: {'name': 'ada'}" in lines  # the handler's print()
    assert lines[-1].startswith(f"REPORT RequestId: {rid}")


def test_bash_bootstrap_without_curl_on_host_and_no_network(plat: PlatformProc,
                                                            tmp_path: Path) -> None:
    for name, network in (("bash-host", "host"), ("bash-nonet", "none")):
        plat.deploy(_fn(tmp_path, name, {"bootstrap": BASH_BOOTSTRAP},
                        f'handler = "echo.me"\nnetwork = "{network}"\n'))
        resp = plat.invoke(name, {"n": 7, "s": "x y"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["event"] == {"n": 7, "s": "x y"} and body["handler"] == "echo.me"
        if plat.http.get("/healthz").json()["sandbox"] == "bwrap":
            assert body["uid"] == 993  # the sandbox's uid, never root
        rid = resp.headers["x-squall-request-id"]
        lines = [ln["line"] for ln in plat.http.get(
            f"/api/v1/functions/{name}/logs", params={"request_id": rid}).json()["lines"]]
        assert f"got {rid}" in lines  # the bootstrap's stdout is the invocation's log


def test_runtime_api_refuses_other_processes(plat: PlatformProc, tmp_path: Path) -> None:
    plat.deploy(_fn(tmp_path, "guarded", {"bootstrap": BASH_BOOTSTRAP}, 'handler = "a.b"\n'))
    api = plat.invoke("guarded", {}).json()["api"]
    host, port = api.split(":")
    # This test process is not the instance: its connection is closed before any answer.
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = s.recv(4096)
        except ConnectionResetError:  # closed with a reset: also no answer
            answer = b""
        assert answer == b""
    assert plat.invoke("guarded", {"still": "served"}).json()["event"] == {"still": "served"}


def test_runtime_api_answers_a_misbehaving_runtime_as_lambda(plat: PlatformProc,
                                                             tmp_path: Path) -> None:
    plat.deploy(_fn(tmp_path, "probe", {"bootstrap": PY_BOOTSTRAP, "probe.py": PROBE_RUNTIME},
                    'handler = "probe.anything"\nmemory_mb = 256\n'))
    first = plat.invoke("probe", {"mode": "misbehave"})
    assert first.status_code == 200 and first.json() == "first"
    report = plat.invoke("probe", {"mode": "report"}).json()
    assert report["seen"] == {"wrong_id": 400, "next_too_early": 403, "first": 202,
                              "twice": 403, "twice_type": "InvalidStateTransition",
                              "init_error_late": 403}
    h = report["headers"]
    assert h["lambda-runtime-invoked-function-arn"].endswith(":function:probe")
    assert h["lambda-runtime-trace-id"].startswith("Root=1-")
    assert int(h["lambda-runtime-deadline-ms"]) > 0
    assert report["env"] == {"_HANDLER": "probe.anything", "LAMBDA_TASK_ROOT": report["env"][
        "LAMBDA_TASK_ROOT"], "AWS_LAMBDA_FUNCTION_NAME": "probe", "AWS_REGION": "us-east-1",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256", "AWS_LAMBDA_FUNCTION_VERSION": "1"}


def test_errors_timeouts_and_crashes_map_like_python(plat: PlatformProc, tmp_path: Path) -> None:
    plat.deploy(_fn(tmp_path, "rough", {"bootstrap": PY_BOOTSTRAP, "probe.py": PROBE_RUNTIME},
                    'handler = "x.y"\ntimeout_s = 1\n'))
    err = plat.invoke("rough", {"mode": "error"})
    assert err.headers["x-squall-function-error"] == "Unhandled"
    assert err.json() == {"errorType": "Oops", "errorMessage": "it broke",
                          "stackTrace": ["probe.py line 1"]}
    timeout = plat.invoke("rough", {"mode": "sleep", "s": 5})
    assert timeout.json()["errorType"] == "TimeoutError"
    crash = plat.invoke("rough", {"mode": "crash"})
    assert crash.json()["errorType"] == "Runtime.ExitError"
    rid = crash.headers["x-squall-request-id"]
    lines = [ln["line"] for ln in plat.http.get(
        "/api/v1/functions/rough/logs", params={"request_id": rid}).json()["lines"]]
    assert "crashing now" in lines
    # the platform keeps serving: a fresh instance takes the next request
    assert "pid" in plat.invoke("rough", {}).json()


@pytest.mark.parametrize("case", ["not_executable", "exits_early", "init_error", "missing"])
def test_bad_bootstraps_fail_the_deploy_with_their_output(plat: PlatformProc, tmp_path: Path,
                                                          case: str) -> None:
    files = {
        "not_executable": {"bootstrap": "#!/bin/sh\necho hi\n"},
        "exits_early": {"bootstrap": "#!/bin/sh\necho 'cannot find my config' >&2\nexit 2\n"},
        "init_error": {"bootstrap": PY_BOOTSTRAP.replace("probe.py", "init.py"),
                       "init.py": textwrap.dedent("""
                           import os, urllib.request
                           url = f"http://{os.environ['AWS_LAMBDA_RUNTIME_API']}"
                           req = urllib.request.Request(
                               url + "/2018-06-01/runtime/init/error", method="POST",
                               data=b'{"errorType": "Config.Missing", "errorMessage": "no DB"}')
                           urllib.request.urlopen(req)
                       """)},
        "missing": {"other": "x"},
    }[case]
    executable = () if case in ("not_executable", "missing") else ("bootstrap",)
    err = _deploy_error(plat, _fn(tmp_path, f"bad-{case.replace('_', '-')}", files,
                                  'handler = "a.b"\n', executable))
    assert err["code"] == "handler_import_failed"
    expected = {"not_executable": "chmod +x", "exits_early": "cannot find my config",
                "init_error": "Config.Missing: no DB", "missing": "named 'bootstrap'"}[case]
    assert expected in err["message"]
    if case == "exits_early":
        assert "exited before calling /runtime/invocation/next" in err["message"]
    assert plat.http.get(f"/api/v1/functions/bad-{case.replace('_', '-')}").status_code == 404


def test_unknown_runtime_is_rejected_by_name(plat: PlatformProc, tmp_path: Path) -> None:
    d = _fn(tmp_path, "ruby", {"bootstrap": "#!/bin/sh\n"}, "")
    (d / "squall.toml").write_text('runtime = "ruby3.3"\n')
    err = _deploy_error(plat, d)
    assert err["code"] == "invalid_config" and "ruby3.3" in err["message"]
    assert err["details"]["key"] == "runtime"


# -- the Runtime API's rules, as a pure state machine -----------------------------------------

def _inv(rid: str = "r1", deadline: int = 1_000) -> Invocation:
    return Invocation(rid, b"{}", deadline, "arn:x")


def _busy(rid: str = "r1") -> RuntimeState:
    st = RuntimeState()
    st.begin_next()
    st.submit(_inv(rid))
    st.take()
    return st


@pytest.mark.parametrize(("setup", "rid", "now", "size", "status", "error_type"), [
    ("busy", "other", 10, 2, 400, "InvalidRequestID"),
    ("answered", "r1", 10, 2, 403, "InvalidStateTransition"),
    ("busy", "r1", 2_000, 2, 410, "InvocationExpired"),
    ("expired", "r1", 10, 2, 410, "InvocationExpired"),
    ("busy", "r1", 10, MAX_PAYLOAD + 1, 413, "RequestEntityTooLarge"),
    ("idle", "r1", 10, 2, 400, "InvalidRequestID"),
])
def test_runtime_state_rejects_answers(setup: str, rid: str, now: int, size: int, status: int,
                                       error_type: str) -> None:
    st = RuntimeState() if setup == "idle" else _busy()
    if setup == "answered":
        st.answer("r1", 10, 2)
    if setup == "expired":
        st.expire("r1")
    with pytest.raises(ApiError) as exc:
        st.answer(rid, now, size)
    assert (exc.value.status, exc.value.error_type) == (status, error_type)


def test_runtime_state_happy_path_and_order() -> None:
    st = RuntimeState()
    st.begin_next()
    assert st.phase == "idle" and not st.can_take()
    st.submit(_inv("a"))
    with pytest.raises(ApiError):
        st.submit(_inv("b"))  # one invocation at a time
    assert st.take().request_id == "a" and st.phase == "busy"
    with pytest.raises(ApiError) as exc:
        st.begin_next()  # /next before answering
    assert exc.value.status == 403
    assert st.answer("a", 10, 5).request_id == "a" and st.phase == "idle"
    with pytest.raises(ApiError) as late:
        st.init_error()
    assert late.value.status == 403
    fresh = RuntimeState()
    fresh.init_error()
    with pytest.raises(ApiError):
        fresh.begin_next()  # a runtime that failed its init is finished

