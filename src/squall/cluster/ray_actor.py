"""The Ray side: one ``NodeAgentActor`` per Ray node, pinned to it, restarted by Ray.

Ray does what it is for: discovery of nodes, placement of exactly one agent on each (a hard
node-affinity strategy and a name per node, so every gateway finds the same one), failure
detection, restarts. The actor only supervises the agent process (``squall.cluster.agent``) and
tells gateways where its channel listens; requests never go through Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import ray

from squall.cluster.agent import READY

START_TIMEOUT_S = 120.0


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class NodeAgentActor:
    """Runs ``python -m squall.cluster.agent`` on this node and exits if it dies (so Ray
    restarts both)."""

    def __init__(self, node_id: str, sandbox: str, agent_dir: str) -> None:
        self.node_id = node_id
        self.sandbox = sandbox
        self.agent_dir = agent_dir or os.path.join(
            os.environ.get("SQUALL_AGENT_DIR", tempfile.gettempdir()),
            f"squall-agent-{node_id[:12]}")
        self.proc: subprocess.Popen[str] | None = None
        self.address: dict[str, Any] | None = None

    def start(self) -> dict[str, Any]:
        """The agent's channel address, starting the agent first if it is not running."""
        if self.proc is not None and self.proc.poll() is None and self.address is not None:
            return self.address
        host: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        env = {**os.environ, "SQUALL_AGENT_PARENT": str(os.getpid())}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "squall.cluster.agent", "--host", host, "--port", "0",
             "--dir", self.agent_dir, "--node", self.node_id, "--sandbox", self.sandbox],
            stdout=subprocess.PIPE, stderr=None, text=True, env=env)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line or line.startswith(READY):
                break
        if not line.startswith(READY):
            code = self.proc.poll()
            raise RuntimeError(f"the node agent did not start (exit code {code}): see the "
                               f"Ray worker's log on node {self.node_id[:12]}")
        _, port, *rest = line.split()
        self.address = {"host": host, "port": int(port), "node": self.node_id,
                        "pid": self.proc.pid, "sandbox": " ".join(rest)}
        threading.Thread(target=self._watch, args=(self.proc,), daemon=True).start()
        return self.address

    def _watch(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for _ in proc.stdout:  # keep the pipe drained
            pass
        proc.wait()
        if proc is self.proc:  # not a deliberate stop: let Ray restart the actor and agent
            os._exit(1)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
