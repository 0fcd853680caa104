"""A Ray cluster of several nodes on this one machine (``ray.cluster_utils.Cluster``): what the
cluster tests and `make bench` run against. Every node's processes inherit SQUALL_MASTER_KEY, as
the environment of `ray start` gives it on a real node."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def ray_cluster(nodes: int = 3, cpus_per_node: int = 1) -> Iterator[tuple[Any, str]]:
    """Yield (cluster, master key): a head and ``nodes - 1`` workers; all shut down after."""
    from ray.cluster_utils import Cluster

    key = base64.b64encode(os.urandom(32)).decode()
    saved = os.environ.get("SQUALL_MASTER_KEY")
    os.environ["SQUALL_MASTER_KEY"] = key  # the raylets and their workers inherit it
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": cpus_per_node, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus_per_node)
        cluster.wait_for_nodes()
        yield cluster, key
    finally:
        # Not gracefully: a node's processes may wait many seconds on SIGTERM (the CI run saw
        # 30 s after a node had been killed and replaced), and nothing here needs a clean exit;
        # the agents' instances die with them (PDEATHSIG).
        for node in [*cluster.worker_nodes, *([cluster.head_node] if cluster.head_node else [])]:
            cluster.remove_node(node, allow_graceful=False)
        cluster.shutdown()  # type: ignore[no-untyped-call]  # resets Ray's module state
        if saved is None:
            os.environ.pop("SQUALL_MASTER_KEY", None)
        else:
            os.environ["SQUALL_MASTER_KEY"] = saved
