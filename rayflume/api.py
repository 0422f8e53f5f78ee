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

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

import ray

from rayflume._private import logs
from rayflume._private.actors import NAMESPACE
from rayflume._private.controller import RemoteController, controller_name, controller_options
from rayflume.errors import ClusterUnavailable
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


CONNECT_TIMEOUT_S = 15.0


def ensure_ray(address: str | None = None, num_cpus: int | None = None,
               connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Connect to Ray unless already connected.

    With no address, do what ``ray.init()`` does: use the Ray instance this machine runs, else
    start one. ``local`` always starts a new local instance (the CLI's embedded Ray): a cluster
    someone else started on the machine is not taken over. Connecting to ``address``
    (``host:port`` or ``auto``) gives up after ``connect_timeout_s``
    with :class:`~rayflume.errors.ClusterUnavailable`, whatever listens there; the wait answers
    Ctrl-C. Starting a local instance is not bounded (it does not wait on anything remote).
    """
    if ray.is_initialized():
        return
    if not address or address == "local":
        with _quiet_ray_thread_warning():
            ray.init(address=address or None, num_cpus=num_cpus, include_dashboard=False, namespace=NAMESPACE,
                     logging_level="WARNING")
        return
    _check_reachable(address, connect_timeout_s)
    _use_token_auth_if_available()
    outcome: list = []

    def connect():
        try:
            with _quiet_ray_thread_warning():
                ray.init(address=address, namespace=NAMESPACE, logging_level="WARNING")
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append(exc)

    # ray.init blocks in native code while it waits for a GCS, deaf to signals and with no deadline
    # of its own; waiting for it in another thread keeps this one responsive to Ctrl-C.
    worker = threading.Thread(target=connect, daemon=True, name="rayflume-connect")
    worker.start()
    deadline = time.monotonic() + connect_timeout_s
    while worker.is_alive() and time.monotonic() < deadline:
        worker.join(0.1)
    if worker.is_alive():
        raise ClusterUnavailable(
            f"no Ray cluster answered at {address} within {connect_timeout_s:g} s: something may listen "
            f"there that is not Ray's GCS port, or the cluster is overloaded. `ray status` on the head node "
            f"prints the right address; raise --connect-timeout-s for a slow cluster")
    if outcome and outcome[0] is not None:
        exc = outcome[0]
        if address == "auto":
            raise ClusterUnavailable(
                f"no running Ray cluster found for --address auto ({_first_line(exc)}). Start one with "
                f"`ray start --head`, give --address HOST:PORT, or omit --address to run on an embedded "
                f"local Ray") from None
        raise ClusterUnavailable(f"cannot connect to Ray at {address}: {_first_line(exc)}. Check the address "
                                 f"(`ray status` on the head node prints it)") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_reachable(address: str, timeout_s: float) -> None:
    """Fail fast on a host:port where nothing listens (Ray itself would retry for minutes)."""
    if address == "auto" or ":" not in address:
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=min(3.0, timeout_s)).close()
    except (OSError, ValueError) as exc:
        raise ClusterUnavailable(f"cannot reach a Ray cluster at {address}: {exc}. Start one with "
                                 f"`ray start --head`, or omit --address to run on an embedded local Ray") from None


@contextlib.contextmanager
def _quiet_ray_thread_warning():
    """Ray warns that a driver connected outside the main thread sets no SIGTERM handler; the
    CLI handles SIGTERM itself, so the warning only confuses."""
    class _Drop(logging.Filter):
        def filter(self, record):
            return "SIGTERM handler is not set" not in record.getMessage()

    ray_logger = logging.getLogger("ray")
    drop = _Drop()
    targets = [ray_logger, *ray_logger.handlers]
    for t in targets:
        t.addFilter(drop)
    try:
        yield
    finally:
        for t in targets:
            t.removeFilter(drop)


def cluster_address() -> str:
    """The GCS address of the connected Ray cluster."""
    return ray.get_runtime_context().gcs_address


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


def deploy(topology: Topology | dict | str | os.PathLike, *, address: str | None = None,
           log_level: str | None = None) -> TopologyHandle:
    """Validate and deploy ``topology`` (a file path, YAML mapping or Topology) under its name.

    Deploying a name that is already running updates it: components whose configuration did not
    change keep running; changed ones are replaced; an identical configuration changes nothing.
    ``log_level`` (DEBUG, INFO, WARNING, ERROR; INFO when None) applies to every actor of a newly
    deployed topology; a redeploy keeps the level the topology was first deployed with.
    """
    topo = _as_topology(topology)
    level = (log_level or logs.DEFAULT_LEVEL).upper()
    if level not in logs.LEVELS:
        raise ValueError(f"log_level {log_level!r} is not one of {', '.join(logs.LEVELS)}")
    ensure_ray(address)
    existing = get(topo.name)
    if existing is not None:
        if existing._call("raw_topology") != topo.raw:
            existing.last_update = existing._call("update", topo.raw, timeout_s=600)
        return existing
    # Actors inherit the runtime environment of the actor that creates them: the controller's
    # reaches every component of the topology. Only a level other than the default sets one, since
    # actors with a runtime environment of their own cannot use Ray's pre-started workers (each
    # start costs about a second more).
    options = controller_options(topo.name)
    if level != logs.DEFAULT_LEVEL:
        options["runtime_env"] = {"env_vars": {logs.LEVEL_ENV: level}}
    controller = RemoteController.options(**options).remote(topo.raw)
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


def component_logs(name: str, component: str | None = None, lines: int = 100,
                   timeout_s: float = 30.0) -> dict[str, list[str] | str]:
    """Recent log lines of topology ``name``'s actors: ``{actor label: lines}``.

    ``component`` picks actors whose label (``source/gen``, ``agent/r0/channel/disk``) is it or
    ends with ``/<component>``; None takes all. An actor that does not answer maps to a string
    saying why. Lines come from each actor's memory (the last 1,000 since its last restart); the
    whole logs are Ray's worker logs on the actor's node.
    """
    prefix = f"{name}/"
    labels = sorted(e["name"][len(prefix):] for e in ray.util.list_named_actors(all_namespaces=True)
                    if e.get("namespace") == NAMESPACE and e["name"].startswith(prefix))
    if component is not None:
        labels = [lb for lb in labels if lb == component or lb.endswith(f"/{component}")]
    refs = {}
    for label in labels:
        actor = ray.get_actor(prefix + label, namespace=NAMESPACE)
        if hasattr(actor, "logs"):
            refs[label] = actor.logs.remote(lines)
    out: dict[str, list[str] | str] = {}
    for label, ref in refs.items():
        try:
            out[label] = ray.get(ref, timeout=timeout_s)
        except Exception as exc:
            out[label] = f"no answer ({type(exc).__name__}): the actor is down or restarting"
    return out


__all__: list[Any] = ["load", "loads", "deploy", "get", "list_deployed", "TopologyHandle", "ensure_ray",
                      "ClusterUnavailable", "component_logs"]
