"""The topology controller: a detached, named actor per deployed topology.

It holds the desired state (the validated topology) and reconciles actual state towards it in a
loop: components are created as named, detached actors (so they outlive the driver that deployed
them and a restart of the controller itself, which re-attaches to them by name), their restarts
are recorded, and a component that died for good (restarts exhausted) is recreated. Every action
is recorded as an event shown by ``rayflume status``. The controller also serves the topology's
metrics as Flume's JSON at ``http://<host>:<port>/metrics``.

An unhandled exception must never stop the loop: each tick is guarded and logged.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rayflume._private.actors import (NAMESPACE, RemoteChannel, RemoteSinkGroup, RemoteSource,
                                      actor_name, actor_options, was_reconstructed)
from rayflume._private.metrics import MetricsServer, flume_shape
from rayflume.topology import Topology, validate

logger = logging.getLogger("rayflume.controller")
RECONCILE_INTERVAL_S = 1.0
CALL_TIMEOUT_S = 10.0


def controller_name(topology: str) -> str:
    return f"{topology}/controller"


def _actor_state(handle) -> tuple[str, int]:
    """(state, restarts) of an actor from the GCS: ALIVE, RESTARTING, DEAD, PENDING_CREATION..."""
    try:
        info = ray._private.state.actors(handle._actor_id.hex())
        return info.get("State", "UNKNOWN"), int(info.get("NumRestarts", 0))
    except Exception:
        return "UNKNOWN", 0


class _Managed:
    """One component actor and what the controller knows of it."""

    def __init__(self, kind: str, name: str, create):
        self.kind = kind
        self.name = name
        self.create = create
        self.handle = None
        self.restarts_before = 0  # restarts of actors this one replaced
        self.replacements = 0
        self.last_restarts = 0
        self.announced_restarts = 0
        self.lost: str | None = None  # why a node-local component is gone for good

    @property
    def restarts(self) -> int:
        return self.restarts_before + self.last_restarts + self.replacements


class TopologyController:
    def __init__(self, raw_topology: dict):
        self.topology: Topology = validate(raw_topology)
        self.name = self.topology.name
        self.state = "STARTING"
        self.events: deque = deque(maxlen=200)
        self.stopping = threading.Event()
        self._lock = threading.RLock()
        self.components: dict[tuple[str, str], _Managed] = {}
        self.deployed_at = time.time()
        self.node_id = ray.get_runtime_context().get_node_id()
        if was_reconstructed():
            self._event("controller", "controller restarted; re-attaching to running components")
        self._plan()
        for managed in self.components.values():
            self._ensure(managed)
        self.metrics_server = None
        if self.topology.metrics_port is not None:
            try:
                self.metrics_server = MetricsServer(self.topology.metrics_host, self.topology.metrics_port,
                                                    self.metrics)
                self._event("controller", f"metrics at {self.metrics_url()}")
            except OSError as exc:
                self._event("controller", f"metrics endpoint not started on {self.topology.metrics_host}:"
                                          f"{self.topology.metrics_port}: {exc}; set metrics.port to a "
                                          f"free port (0 picks one)")
        self.state = "RUNNING"
        self._loop = threading.Thread(target=self._reconcile_loop, daemon=True, name="reconcile")
        self._loop.start()

    # -- desired state -------------------------------------------------------------------------
    def _plan(self) -> None:
        topo = self.topology
        for ch, cfg in topo.channels.items():
            self.components[("CHANNEL", ch)] = _Managed("CHANNEL", ch, self._channel_creator(ch, cfg))
        for group, sinks in topo.groups().items():
            self.components[("SINK", group)] = _Managed("SINK", group, self._group_creator(group, sinks))
        for src, cfg in topo.sources.items():
            self.components[("SOURCE", src)] = _Managed("SOURCE", src, self._source_creator(src, cfg))

    def _channel_handles(self, names) -> dict:
        return {ch: self.components[("CHANNEL", ch)].handle for ch in names}

    def _channel_creator(self, ch, cfg):
        raw = self.topology.raw["channels"][ch]
        extra = {}
        if cfg.node_local:
            # The channel's files live on this node: Ray must restart it here, nowhere else.
            extra["scheduling_strategy"] = NodeAffinitySchedulingStrategy(self.node_id, soft=False)
        return lambda: RemoteChannel.options(
            **actor_options(self.name, "channel", ch, cfg.max_restarts, **extra)).remote(self.name, ch, raw)

    def _source_creator(self, src, cfg):
        raw = self.topology.raw["sources"][src]
        return lambda: RemoteSource.options(
            **actor_options(self.name, "source", src, cfg.max_restarts)).remote(
                self.name, src, raw, self._channel_handles(cfg.channels))

    def _group_creator(self, group, sinks):
        raw_sinks = {s: self.topology.raw["sinks"][s] for s in sinks}
        grp = self.topology.sink_groups.get(group)
        raw_proc = grp.raw_processor if grp else None
        max_restarts = min((self.topology.sinks[s].max_restarts for s in sinks),
                           key=lambda r: float("inf") if r < 0 else r)
        channels = {self.topology.sinks[s].channel for s in sinks}
        return lambda: RemoteSinkGroup.options(
            **actor_options(self.name, "sinks", group, max_restarts)).remote(
                self.name, group, raw_sinks, raw_proc, self._channel_handles(channels))

    # -- actual state --------------------------------------------------------------------------
    def _ensure(self, managed: _Managed) -> None:
        """Attach to the component's running actor, or create it."""
        kind_key = {"CHANNEL": "channel", "SOURCE": "source", "SINK": "sinks"}[managed.kind]
        name = actor_name(self.name, kind_key, managed.name)
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
            state, _ = _actor_state(handle)
            if state == "DEAD":
                raise ValueError("dead")
            managed.handle = handle
            return
        except ValueError:
            pass
        managed.handle = managed.create()
        self._event(managed.name, f"{managed.kind.lower()} actor created")

    def _reconcile_once(self) -> None:
        for managed in list(self.components.values()):
            if self.stopping.is_set():
                return
            state, restarts = _actor_state(managed.handle)
            managed.last_restarts = max(managed.last_restarts, restarts)
            if restarts > managed.announced_restarts:
                self._event(managed.name, f"{managed.kind.lower()} restarted "
                                          f"({restarts} restart(s) of this actor)")
                managed.announced_restarts = restarts
            if state == "DEAD" and managed.lost is None and self._node_lost(managed):
                managed.lost = (f"its node {self.node_id[:12]} is gone with the channel's files; it is not "
                                f"recreated empty. Bring the node back, or redeploy with data_dirs on "
                                f"shared storage")
                self._event(managed.name, f"channel LOST: {managed.lost}")
            if state == "DEAD" and managed.lost is None:
                self._event(managed.name, f"{managed.kind.lower()} actor is dead (restarts exhausted); "
                                          f"replacing it")
                managed.restarts_before += managed.last_restarts
                managed.last_restarts = managed.announced_restarts = 0
                managed.replacements += 1
                managed.handle = managed.create()

    def _node_lost(self, managed: _Managed) -> bool:
        if managed.kind != "CHANNEL" or not self.topology.channels[managed.name].node_local:
            return False
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        return self.node_id not in alive

    def _reconcile_loop(self) -> None:
        while not self.stopping.wait(RECONCILE_INTERVAL_S):
            try:
                with self._lock:
                    self._reconcile_once()
            except Exception:
                logger.exception("topology '%s': reconcile tick failed", self.name)

    def _event(self, component: str, message: str) -> None:
        logger.info("topology '%s': %s: %s", self.name, component, message)
        self.events.append({"time": time.time(), "component": component, "message": message})

    # -- queries -------------------------------------------------------------------------------
    def _gather(self, method: str) -> dict:
        refs = {key: getattr(m.handle, method).remote() for key, m in self.components.items()}
        out = {}
        for key, ref in refs.items():
            try:
                out[key] = ray.get(ref, timeout=CALL_TIMEOUT_S)
            except Exception as exc:
                out[key] = exc
        return out

    def metrics(self) -> dict:
        """Flume's JSON shape: ``{"SOURCE.gen": {...}, "CHANNEL.mem": {...}, "SINK.out": {...}}``."""
        reports = {}
        for managed in self.components.values():
            # read restarts live, not as of the last reconcile tick
            managed.last_restarts = max(managed.last_restarts, _actor_state(managed.handle)[1])
        for (kind, name), result in self._gather("metrics").items():
            managed = self.components[(kind, name)]
            if isinstance(result, Exception):
                # the actor is restarting or gone: report what is known
                if kind == "SINK":
                    for sink in self.topology.groups()[name]:
                        reports[(kind, sink)] = {"Unhealthy": 1, "Restarts": managed.restarts}
                else:
                    reports[(kind, name)] = {"Unhealthy": 1, "Restarts": managed.restarts,
                                             **({"ChannelLost": 1} if managed.lost else {})}
                continue
            if kind == "SINK":
                for sink, counters in result.items():
                    reports[(kind, sink)] = {**counters, "Restarts": managed.restarts}
            else:
                reports[(kind, name)] = {**result, "Restarts": managed.restarts}
        return flume_shape(reports)

    def metrics_url(self) -> str | None:
        if self.metrics_server is None:
            return None
        return f"http://{self.metrics_server.host}:{self.metrics_server.port}/metrics"

    def status(self) -> dict:
        infos = self._gather("info")
        metrics = self.metrics()
        components = []
        for (kind, name), managed in self.components.items():
            info = infos.get((kind, name))
            state, _ = _actor_state(managed.handle)
            entry = {"kind": kind, "name": name, "state": state, "restarts": managed.restarts}
            if isinstance(info, dict):
                entry.update(pid=info.get("pid"), node_id=info.get("node_id"))
                if info.get("finished"):
                    entry["state"] = "FINISHED"
                if info.get("error"):
                    entry["error"] = info["error"]
                if info.get("errors"):
                    entry["error"] = "; ".join(f"{k}: {v}" for k, v in info["errors"].items())
            elif info is not None:
                entry["error"] = f"unreachable: {type(info).__name__}"
            if managed.lost:
                entry.update(state="LOST", error=managed.lost)
            if kind == "SINK":
                entry["sinks"] = {s: metrics.get(f"SINK.{s}", {}) for s in self.topology.groups()[name]}
            else:
                entry["counters"] = metrics.get(f"{kind}.{name}", {})
            components.append(entry)
        return {"name": self.name, "state": self.state, "deployed_at": self.deployed_at,
                "metrics_url": self.metrics_url(), "components": components,
                "events": list(self.events)[-20:], "finished": self._finished(infos)}

    def _finished(self, infos=None) -> bool:
        infos = infos or self._gather("info")
        for (kind, _), info in infos.items():
            if kind == "SOURCE" and not (isinstance(info, dict) and info.get("finished")):
                return False
            if kind == "CHANNEL" and not (isinstance(info, dict) and info.get("size") == 0):
                return False
        return True

    def finished(self) -> bool:
        """True when every source is finished and every channel is empty."""
        return self._finished()

    def raw_topology(self) -> dict:
        return self.topology.raw

    # -- stop ----------------------------------------------------------------------------------
    def stop(self, drain_timeout_s: float = 30.0) -> dict:
        """Stop sources, let the sinks drain the channels (up to ``drain_timeout_s``), stop the
        sinks (flushing their files), then remove every actor. Returns what was left undrained."""
        with self._lock:
            self.state = "STOPPING"
            self.stopping.set()
            self._event("controller", "stopping: sources first")
            self._call_all("SOURCE", "stop")
            deadline = time.monotonic() + drain_timeout_s
            left = self._channel_sizes()
            while sum(left.values()) > 0 and time.monotonic() < deadline:
                time.sleep(0.1)
                left = self._channel_sizes()
            if sum(left.values()):
                self._event("controller", f"drain timed out; events left in channels: {left}")
            self._call_all("SINK", "stop")
            final_metrics = self.metrics()
            self._call_all("CHANNEL", "stop")
            for managed in self.components.values():
                try:
                    ray.kill(managed.handle, no_restart=True)
                except Exception:
                    pass
            if self.metrics_server is not None:
                self.metrics_server.close()
            self.state = "STOPPED"
            return {"undrained": left, "final_metrics": final_metrics}

    def _call_all(self, kind: str, method: str) -> None:
        refs = [getattr(m.handle, method).remote() for (k, _), m in self.components.items() if k == kind]
        for ref in refs:
            try:
                ray.get(ref, timeout=60)
            except Exception as exc:
                self._event("controller", f"{kind.lower()} {method} failed: {exc}")

    def _channel_sizes(self) -> dict:
        out = {}
        for (kind, name), m in self.components.items():
            if kind == "CHANNEL":
                try:
                    out[name] = ray.get(m.handle.size.remote(), timeout=CALL_TIMEOUT_S)
                except Exception:
                    out[name] = 0  # a dead memory channel has nothing left to drain
        return out

    def ping(self) -> str:
        return self.state


RemoteController = ray.remote(TopologyController)


def controller_options(topology: str) -> dict:
    return dict(name=controller_name(topology), namespace=NAMESPACE, lifetime="detached",
                max_restarts=-1, max_task_retries=0, max_concurrency=16, num_cpus=0)
