"""Shared fixtures. Ray in tests binds loopback, has fixed CPUs and no dashboard."""
from __future__ import annotations

import os

import pytest

# Must be set before Ray starts: makes Ray bind 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")


RAY_CPUS = 2


def _start_local_ray():
    import ray

    # address="local": always a new instance of our own, even if another Ray runs on this machine
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, namespace="rayflume",
             logging_level="WARNING", log_to_driver=False)


def release_shared_ray() -> None:
    """Shut down the local Ray that :func:`ray_local` shares between modules, so that a module can
    connect to a cluster of its own (``tests.cluster_helpers.start_cluster`` calls this)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _clean_slate(ray, timeout_s: float = 30.0) -> bool:
    """Remove what a module left on the shared Ray: every named actor (controllers, components,
    collectors and feeds are all named and mostly detached, so they would outlive the module and a
    later module's collector of the same name would start with old events) and the controllers'
    state in the GCS key-value store. True when the Ray is back to all of its CPUs free."""
    import time

    from ray.experimental import internal_kv

    from rayflume._private.state_store import KV_NAMESPACE

    for entry in ray.util.list_named_actors(all_namespaces=True):
        try:
            ray.kill(ray.get_actor(entry["name"], namespace=entry["namespace"]), no_restart=True)
        except ValueError:  # gone between the listing and the look-up
            continue
    for key in internal_kv._internal_kv_list(b"", namespace=KV_NAMESPACE):
        internal_kv._internal_kv_del(key, namespace=KV_NAMESPACE)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not ray.util.list_named_actors(all_namespaces=True) and \
                ray.available_resources().get("CPU", 0) >= RAY_CPUS:
            return True
        time.sleep(0.2)  # the poll interval of this condition wait, bounded by timeout_s
    return False


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance for a whole test module, shared with the next modules that ask for one.

    Starting Ray costs about 5 s; most modules leave nothing behind that a later one could see once
    :func:`_clean_slate` has run, so the instance is kept. A module that leaves actors holding CPUs
    gets the next module a fresh instance."""
    import ray

    if not ray.is_initialized():
        _start_local_ray()
    yield ray
    if ray.is_initialized() and not _clean_slate(ray):
        ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _shut_down_ray_at_the_end():
    yield
    release_shared_ray()


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
