"""The launcher: the zygote of runtimes that are not Python (``nodejs20``, ``provided``).

Started exactly like the Python zygote (same sandbox, cgroup, uid and zygote seccomp filter;
squall.agent.runtimes.launcher), but it imports no function code: it only forks. Each fork
becomes one instance, in this order::

    harden itself (private /tmp, no capabilities, full seccomp filter)   as a Python instance
    listen on 127.0.0.1:0             in the sandbox's network namespace (its own when
                                      network = "none", the host's otherwise)
    hello + the listening socket      to the platform (SCM_RIGHTS), which serves the Lambda
                                      Runtime API on it and puts this pid in its cgroup
    wait for "go"                     so the runtime's whole life is charged to that cgroup
    stdout/stderr -> the log pipe     the platform turns lines into the invocation's logs
    exec the runtime                  node + squall's bootstrap.mjs, or the bundle's bootstrap,
                                      with AWS_LAMBDA_RUNTIME_API=127.0.0.1:<port>

Host -> launcher: {"t": "fork", "id", "harden"} + two fds: the instance's channel, the log pipe.
Instance -> host (channel): {"t": "hello", "pid", "port"} + the listening socket; host ->
instance: {"t": "go"}. The channel is closed at exec; the platform watches the pid instead.
Like runtime/zygote.py this imports nothing of the platform beyond the frame protocol and the
hardening code.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import sys
import time
from typing import Any

from squall.runtime import harden
from squall.runtime.protocol import HEADER, decode, encode, recv_frame, send_frame

CONTROL_FD = 3
EXEC_FAILED = 127


def _recv_fork(ctrl: socket.socket) -> tuple[dict[str, Any], list[int]]:
    fds = array.array("i")
    data, ancdata, _flags, _addr = ctrl.recvmsg(65536, socket.CMSG_SPACE(2 * fds.itemsize))
    if not data:
        raise EOFError
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    (length,) = HEADER.unpack(data[: HEADER.size])
    return decode(data[HEADER.size : HEADER.size + length]), list(fds)


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def _become_instance(chan_fd: int, log_fd: int, msg: dict[str, Any],
                     spec: dict[str, Any]) -> None:
    """Runs in the forked child; never returns."""
    argv: list[str] = spec["argv"]
    try:
        harden.apply(msg.get("harden", {}))
        chan = socket.socket(fileno=chan_fd)
        listener = _listen()
        port = listener.getsockname()[1]
        hello = encode({"t": "hello", "pid": os.getpid(), "port": port})
        chan.sendmsg([hello], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                array.array("i", [listener.fileno()]))])
        listener.close()
        if recv_frame(chan).get("t") != "go":
            os._exit(1)
        env = {**os.environ, **spec["env"], "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}"}
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(null)
        os.close(log_fd)
        chan.close()
        os.execve(argv[0], argv, env)
    except EOFError:
        os._exit(1)  # the platform gave up on us before "go"
    except OSError as exc:
        # stderr is the log pipe once dup2 ran: the deploy shows this line
        reason = exc.strerror or str(exc)
        hint = " (is it executable? chmod +x)" if exc.errno == 13 else ""
        os.write(2, f"squall: cannot run {argv[0]}: {reason}{hint}\n".encode())
    except BaseException as exc:  # the child must never fall back into the launcher's loop
        os.write(2, f"squall: instance setup failed: {exc!r}\n".encode())
    os._exit(EXEC_FAILED)


def main() -> None:
    cfg: dict[str, Any] = json.loads(sys.argv[1])
    started = time.time()
    ctrl = socket.socket(fileno=int(cfg.get("ctrl_fd", CONTROL_FD)))
    try:
        harden.apply_zygote(cfg.get("harden", {}))
    except OSError as exc:
        send_frame(ctrl, {"t": "sandbox_error", "m": f"launcher hardening failed: {exc}"})
        sys.exit(1)
    os.chdir(cfg["code_dir"])
    spec: dict[str, Any] = cfg["static"]["exec"]
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the platform watches each child's pidfd
    send_frame(ctrl, {"t": "ready", "init_ms": (time.time() - started) * 1000.0, "t0": started})
    while True:
        try:
            msg, fds = _recv_fork(ctrl)
        except (EOFError, ConnectionError):
            return
        if msg.get("t") != "fork" or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            continue
        pid = os.fork()
        if pid == 0:
            ctrl.close()
            _become_instance(fds[0], fds[1], msg, spec)
        for fd in fds:
            os.close(fd)
        send_frame(ctrl, {"t": "forked", "id": msg["id"], "pid": pid})


if __name__ == "__main__":
    main()
