"""Shared fixtures. Ray in tests binds loopback, has fixed CPUs and no dashboard."""
from __future__ import annotations

import os

import pytest

# Must be set before Ray starts: makes Ray bind 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for a whole test module."""
    import ray

    # address="local": always a new instance of our own, even if another Ray runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="rayflume", logging_level="WARNING",
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def deployed(ray_local):
    """Deploy topologies in a test and always stop them afterwards."""
    import rayflume

    handles = []

    def deploy(topology):
        handle = rayflume.deploy(topology)
        handles.append(handle)
        return handle

    yield deploy
    for handle in handles:
        try:
            handle.stop(drain_timeout_s=5)
        except Exception:
            pass
