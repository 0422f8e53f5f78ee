"""The Python API: deploy a topology to the connected Ray cluster and manage it.

    import ray, rayflume
    ray.init()                                   # or ray.init(address="auto")
    handle = rayflume.deploy("topologies/quickstart.yaml")
    handle.wait_finished(timeout_s=60)           # finite sources only
    print(handle.metrics()["SINK.out"]["EventDrainSuccessCount"])
    handle.stop()

``deploy`` starts a local Ray when none is connected. Topologies run in detached actors: they
outlive the Python process that deployed them until ``stop()``.
"""
from __future__ import annotations

import os
import time
from typing import Any

import ray

from rayflume._private.actors import NAMESPACE
from rayflume._private.controller import RemoteController, controller_name, controller_options
from rayflume.topology import Topology, load_topology, loads_topology, validate


def load(path: str | os.PathLike) -> Topology:
    """Read and validate a topology file (raises ConfigError listing every problem)."""
    return load_topology(path)


def loads(text: str) -> Topology:
    """Validate a topology given as YAML text."""
    return loads_topology(text)


def _as_topology(topology: Topology | dict | str | os.PathLike) -> Topology:
    if isinstance(topology, Topology):
        return topology
    if isinstance(topology, dict):
        return validate(topology)
    return load_topology(topology)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray unless already connected; with no address, start a local instance."""
    if ray.is_initialized():
        return
    if address:
        _use_token_auth_if_available()
        ray.init(address=address, namespace=NAMESPACE, logging_level="WARNING")
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, namespace=NAMESPACE,
                 logging_level="WARNING")


def _use_token_auth_if_available() -> None:
    """Send the local Ray auth token (~/.ray/auth_token) when connecting to a cluster.

    A cluster started by ``ray.init()`` (as ``rayflume deploy`` does) requires the token, but a
    client connecting by address only sends it when token mode is switched on for it.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


CONTROLLER_RESTART_WAIT_S = 120.0


class TopologyHandle:
    """A deployed topology, reached through its controller actor. Safe to pickle and share."""

    def __init__(self, name: str, controller=None):
        self.name = name
        self.last_update: dict | None = None  # {"kept": n, "replaced": m} after a redeploy
        self._controller = controller or ray.get_actor(controller_name(name), namespace=NAMESPACE)

    def __repr__(self) -> str:
        return f"TopologyHandle({self.name!r})"

    def _call(self, method: str, *args, timeout_s: float = 60.0):
        """Call the controller, waiting out a restart of it (it re-attaches to its components)."""
        deadline = time.monotonic() + CONTROLLER_RESTART_WAIT_S
        while True:
            try:
                return ray.get(getattr(self._controller, method).remote(*args), timeout=timeout_s)
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def status(self) -> dict:
        """State, tiers, components (state, restarts, counters, errors) and recent controller events."""
        return self._call("status")

    def metrics(self) -> dict:
        """Flume-shaped counters: ``{"SOURCE.gen": {"EventAcceptedCount": "10", ...}, ...}``."""
        return self._call("metrics")

    def metrics_url(self) -> str | None:
        return self._call("metrics_url")

    def finished(self) -> bool:
        """True when every source is finished and every channel is empty."""
        return self._call("finished")

    def wait_finished(self, timeout_s: float = 300.0, poll_s: float = 0.25) -> None:
        """Block until ``finished()``; raises TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.finished():
            if time.monotonic() > deadline:
                raise TimeoutError(f"topology '{self.name}' did not finish within {timeout_s}s")
            time.sleep(poll_s)

    def stop(self, drain_timeout_s: float = 30.0) -> dict:
        """Stop sources, drain channels (up to ``drain_timeout_s``), stop sinks, remove all actors."""
        result = self._call("stop", drain_timeout_s, timeout_s=drain_timeout_s + 180)
        ray.kill(self._controller, no_restart=True)
        return result


def deploy(topology: Topology | dict | str | os.PathLike, *, address: str | None = None) -> TopologyHandle:
    """Validate and deploy ``topology`` (a file path, YAML mapping or Topology) under its name.

    Deploying a name that is already running updates it: components whose configuration did not
    change keep running; changed ones are replaced; an identical configuration changes nothing.
    """
    topo = _as_topology(topology)
    ensure_ray(address)
    existing = get(topo.name)
    if existing is not None:
        if existing._call("raw_topology") != topo.raw:
            existing.last_update = existing._call("update", topo.raw, timeout_s=600)
        return existing
    controller = RemoteController.options(**controller_options(topo.name)).remote(topo.raw)
    ray.get(controller.ping.remote(), timeout=180)
    return TopologyHandle(topo.name, controller)


def get(name: str) -> TopologyHandle | None:
    """The handle of the running topology ``name``, or None."""
    try:
        return TopologyHandle(name)
    except ValueError:
        return None


def list_deployed() -> list[str]:
    """Names of the topologies deployed on the connected cluster."""
    names = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") == NAMESPACE and entry["name"].endswith("/controller"):
            names.append(entry["name"].rsplit("/", 1)[0])
    return sorted(names)


__all__: list[Any] = ["load", "loads", "deploy", "get", "list_deployed", "TopologyHandle", "ensure_ray"]
