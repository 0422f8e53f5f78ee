"""Helpers shared by the multi-node tests (ray.cluster_utils.Cluster on loopback)."""
from __future__ import annotations

import os

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rayflume import testing


def child_env() -> dict:
    """This process's environment as it is now (ray.init may have switched on token auth)."""
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def start_cluster(head_labels: dict):
    """A one-node cluster (1 CPU, no dashboard) with this process connected as its driver."""
    from ray.cluster_utils import Cluster

    from tests.conftest import release_shared_ray

    release_shared_ray()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "labels": head_labels,
                                                      "include_dashboard": False})
    ray.init(address=c.address, namespace="rayflume", logging_level="WARNING", log_to_driver=False)
    return c


def stop_cluster(c) -> None:
    ray.shutdown()
    c.shutdown()


def head_collector(name):
    """A collector actor pinned to the head node, which no test removes."""
    head = ray.get_runtime_context().get_node_id()
    return testing.collector(name, scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False))


def tier_instances(handle, tier):
    return handle.status()["tiers"][tier]["instances"]


def controller_pid(handle, not_pid=None, timeout_s: float = 120.0) -> int:
    """The pid of ``handle``'s controller, waiting out its restart (until it differs from ``not_pid``)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            pid = ray.get(handle._controller.pid.remote(), timeout=10)
            if pid != not_pid:
                return pid
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # killed and not back yet: ask again until the deadline
        if time.monotonic() > deadline:
            raise AssertionError("the controller did not come back")
        time.sleep(0.2)  # the poll interval of this condition wait, bounded by the deadline above
