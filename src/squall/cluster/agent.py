"""A node agent: one machine's zygotes, pools, sandboxes and cgroups (``squall.agent.node``),
serving gateways on other machines over the channel (``squall.cluster.wire``).

The Ray actor (``squall.cluster.ray_actor``) runs it as a child process on its node:
``python -m squall.cluster.agent --host IP --port 0 --dir DIR``. It needs the cluster's master key
in ``SQUALL_MASTER_KEY`` (to authenticate gateways and open the secrets of the specs they send);
it holds no store credentials: specs and bundles come from the gateways, by content hash.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from squall.agent.node import Agent, InitTiming, VersionSpec
from squall.bundle.deps import ensure_env
from squall.bundle.shared import install
from squall.bundle.spec import FunctionConfig
from squall.cluster import wire
from squall.config import Settings
from squall.errors import SquallError
from squall.invoker.execute import execute
from squall.runtime.protocol import ProtocolError
from squall.tenancy.crypto import Sealer, decode_key

log = logging.getLogger("squall.cluster.agent")

STATE_EVERY_S = 0.5
READY = "SQUALL_AGENT_READY"


def spec_aad(key: str) -> str:
    return f"cluster-spec/{key}"


class NodeAgent:
    """The channel's server side around one local Agent."""

    def __init__(self, settings: Settings, agent: Agent, sealer: Sealer, node: str) -> None:
        self.settings = settings
        self.agent = agent
        self.sealer = sealer
        self.key = wire.channel_key(sealer.key)
        self.node = node
        self.bundles_dir = settings.data_dir / "bundles"
        self.envs_dir = settings.data_dir / "envs"
        self.bundles_dir.mkdir(parents=True, exist_ok=True)
        self.specs: dict[str, VersionSpec] = {}
        self.busy = 0
        self.mem_total = _mem_total()
        self.cpus = len(os.sched_getaffinity(0))

    # -- connections -------------------------------------------------------------------------

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._connection, host, port, backlog=1024)

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        tasks: set[asyncio.Task[None]] = set()
        try:
            await wire.accept(reader, writer, self.key, self.node)
        except (wire.ChannelError, ProtocolError, OSError, EOFError, TimeoutError,
                asyncio.IncompleteReadError) as exc:
            log.warning("refused a channel from %s: %s", peer, exc)
            writer.close()
            return
        pusher = asyncio.get_running_loop().create_task(self._push_state(writer))
        try:
            while True:
                msg = await wire.read_frame(reader)
                task = asyncio.get_running_loop().create_task(self._answer(writer, msg))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, ProtocolError):
            pass  # the gateway went away; its requests' replies have nowhere to go
        finally:
            pusher.cancel()
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
        i = msg.get("i")
        try:
            reply = await self.handle(msg)
        except SquallError as exc:
            reply = {"t": "fail", "code": exc.code, "msg": exc.message, "status": exc.status,
                     "ra": getattr(exc, "retry_after_s", None)}
        except Exception as exc:  # a bug must answer, or the gateway's request hangs
            log.exception("node agent failed on %s", msg.get("t"))
            reply = {"t": "fail", "code": "agent_error", "msg": f"node agent error: {exc}",
                     "status": 500, "ra": None}
        reply["i"] = i
        if not writer.is_closing():
            wire.write_frame(writer, reply)
            await writer.drain()

    async def _push_state(self, writer: asyncio.StreamWriter) -> None:
        while not writer.is_closing():
            wire.write_frame(writer, self.state())
            await writer.drain()
            await asyncio.sleep(STATE_EVERY_S)

    def state(self) -> dict[str, Any]:
        zygotes = {z["key"] for z in self.agent.zygotes()}
        versions: dict[str, list[int]] = {}
        used = 0
        for vs, pool in self.agent.pools():
            versions[vs.key] = [pool.size, len(pool.idle()), int(vs.key in zygotes)]
            used += pool.size * vs.config.memory_mb
        return {"t": "state", "cpus": self.cpus, "mem": self.mem_total,
                "used": used * 1024 * 1024, "busy": self.busy, "v": versions}

    # -- requests ----------------------------------------------------------------------------

    async def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        kind = msg["t"]
        if kind == "inv":
            return await self.invoke(msg)
        if kind == "put":
            await self.put(msg["k"], msg["s"], msg.get("b"))
            return {"t": "ok"}
        if kind == "retire":
            self.specs.pop(msg["k"], None)
            await self.agent.retire(msg["k"])
            return {"t": "ok"}
        raise SquallError(f"unknown request {kind!r}", code="bad_frame", status=400)

    async def invoke(self, msg: dict[str, Any]) -> dict[str, Any]:
        vs = self.specs.get(msg["k"])
        if vs is None:
            short = str(msg["k"]).rsplit("-", 1)[-1]  # the key ends with the bundle's hash
            return {"t": "need", "b": not any(self.bundles_dir.glob(f"{short}*"))}
        pool = self.agent.pool(vs)
        inst, cold = await pool.acquire()
        self.busy += 1
        try:
            done = await execute(self.agent, vs, inst, msg["r"], msg.get("ev"),
                                 msg.get("ctx") or {})
        finally:
            self.busy -= 1
            pool.release(inst)
        timing: InitTiming = inst.init_timing if cold and inst.init_timing else InitTiming()
        return {"t": "done", "cold": cold,
                "tm": [timing.sandbox_ms, timing.zygote_ms, timing.fork_ms, timing.spare],
                "x": done.to_wire()}

    async def put(self, key: str, s: dict[str, Any], bundle: bytes | None) -> None:
        sha = str(s["sha"])
        code_dir = self.bundles_dir / sha
        if bundle is not None and not code_dir.is_dir():
            await asyncio.to_thread(install, bundle, self.bundles_dir, sha,
                                    max_bytes=self.settings.max_bundle_bytes,
                                    max_files=self.settings.max_bundle_files)
        if not code_dir.is_dir():
            raise SquallError(f"bundle {sha[:12]} is not on this node", code="bundle_missing",
                              status=503)
        deps: list[Path] = []
        requirements = code_dir / "requirements.txt"
        if s.get("deps") and requirements.is_file():
            deps = [await ensure_env(requirements.read_bytes(), self.envs_dir, lambda _l: None)]
        sealed = s.get("sec")
        secret_env: dict[str, str] = {}
        if sealed:
            secret_env = json.loads(self.sealer.open(sealed, spec_aad(key)))
        vs = VersionSpec(str(s["ns"]), str(s["fn"]), int(s["ver"]), sha, code_dir, deps,
                         FunctionConfig.from_dict(s["cfg"]), uid=s.get("uid"),
                         secret_env=secret_env)
        if vs.key != key:
            raise SquallError("the spec does not match its key", code="bad_frame", status=400)
        self.specs[key] = vs


def spec_wire(vs: VersionSpec, deps_key: str | None, sealer: Sealer) -> dict[str, Any]:
    """A version spec for the channel; the opened secrets travel sealed under the master key."""
    sec = sealer.seal(json.dumps(vs.secret_env).encode(), spec_aad(vs.key)) \
        if vs.secret_env else None
    return {"ns": vs.namespace, "fn": vs.function, "ver": vs.version, "sha": vs.sha256,
            "deps": deps_key, "cfg": vs.config.to_dict(), "uid": vs.uid, "sec": sec}


def _mem_total() -> int:
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    return 0


def _die_with_parent() -> None:
    """The agent lives as long as the Ray actor that started it (SQUALL_AGENT_PARENT)."""
    parent = os.environ.get("SQUALL_AGENT_PARENT")
    if not parent:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):
        os._exit(1)


async def _main(args: argparse.Namespace) -> None:
    from squall.server import choose_backend

    raw = os.environ.get("SQUALL_MASTER_KEY", "")
    if not raw:
        print("squall agent: SQUALL_MASTER_KEY is not set; a node agent needs the cluster's "
              "master key (set it in the environment of `ray start` on every node)",
              file=sys.stderr, flush=True)
        sys.exit(2)
    settings = Settings.from_env(data_dir=Path(args.dir), sandbox=args.sandbox)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    backend, warnings = choose_backend(settings)
    for warning in warnings:
        log.warning("WARNING: %s", warning)
    agent = Agent(settings, backend)
    node = NodeAgent(settings, agent, Sealer(decode_key(raw)), args.node)
    server = await node.serve(args.host, args.port)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = loop.create_task(agent.run())
    print(f"{READY} {port} sandbox={backend.name}", flush=True)
    started = time.monotonic()
    await stop.wait()
    log.info("node agent stopping after %.0f s", time.monotonic() - started)
    server.close()
    runner.cancel()
    await agent.shutdown()
    close = getattr(backend, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m squall.cluster.agent")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dir", required=True, help="this node's bundles, envs and cgroups")
    parser.add_argument("--node", default=os.uname().nodename)
    parser.add_argument("--sandbox", default=os.environ.get("SQUALL_SANDBOX", "auto"))
    args = parser.parse_args()
    _die_with_parent()
    logging.basicConfig(level=os.environ.get("SQUALL_LOG_LEVEL", "INFO"),
                        format="%(asctime)s agent %(levelname)s %(name)s: %(message)s")
    import uvloop

    try:
        uvloop.run(_main(args))
    except SquallError as exc:
        print(f"squall agent: {exc.message} [{exc.code}]", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
