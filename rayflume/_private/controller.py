"""The topology controller: a detached, named actor per deployed topology.

It holds the desired state (the validated topology) and reconciles the actual state towards it
in a loop, once a second:

* Each tier runs as *instances*: one per matching node (``per_node``), ``replicas`` spread over
  matching nodes, or a single one (a single-tier topology). An instance is the tier's channels,
  sink groups and sources, each a named, detached actor, all pinned to the instance's node.
* A node that joins with a matching label gets an instance of each ``per_node`` tier; the
  instances of a lost node are dropped, and a ``replicas`` tier is re-placed on remaining nodes.
  The data of a lost instance's node-local channels is reported lost, never silently recreated.
* A component whose actor died for good (restarts exhausted) while its node lives is recreated.
* Every action is recorded as an event shown by ``rayflume status``.

Components are detached and named, so they outlive the driver that deployed them and a restart
of the controller, which re-attaches to them by name; the instance map (which node hosts which
instance) is kept in Ray's internal KV store for that purpose. The controller also serves the
topology's metrics as Flume's JSON at ``http://<host>:<port>/metrics``.

An unhandled exception must never stop the loop: each tick is guarded and logged.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rayflume._private.actors import (NAMESPACE, RemoteChannel, RemoteSinkGroup, RemoteSource,
                                      actor_options, was_reconstructed)
from rayflume._private.metrics import MetricsServer, flume_shape
from rayflume.topology import Tier, Topology, validate

logger = logging.getLogger("rayflume.controller")
RECONCILE_INTERVAL_S = 1.0
CALL_TIMEOUT_S = 10.0
KINDS = ("CHANNEL", "SINK", "SOURCE")  # creation order: what others need first
KIND_KEY = {"CHANNEL": "channel", "SOURCE": "source", "SINK": "sinks"}


def controller_name(topology: str) -> str:
    return f"{topology}/controller"


def _actor_state(handle) -> tuple[str, int]:
    """(state, restarts) of an actor from the GCS: ALIVE, RESTARTING, DEAD, PENDING_CREATION..."""
    try:
        info = ray._private.state.actors(handle._actor_id.hex())
        return info.get("State", "UNKNOWN"), int(info.get("NumRestarts", 0))
    except Exception:
        return "UNKNOWN", 0


def _kv():
    from ray.experimental import internal_kv

    return internal_kv


@dataclass
class _Managed:
    """One component actor and what the controller knows of it."""

    kind: str
    name: str
    raw: object  # what decides whether a redeploy changes it
    handle: object = None
    restarts_before: int = 0  # restarts of actors this one replaced
    replacements: int = 0
    last_restarts: int = 0
    announced_restarts: int = 0
    lost: str | None = None  # why a node-local component is gone for good

    @property
    def restarts(self) -> int:
        return self.restarts_before + self.last_restarts + self.replacements


@dataclass
class _Instance:
    tier: str
    instance_id: str
    node_id: str | None  # None: placed by Ray (single tier)
    components: dict = field(default_factory=dict)  # (kind, name) -> _Managed

    @property
    def scope(self) -> str:
        """Prefix of actor names and metric keys ("" for a single-tier topology)."""
        return f"{self.tier}/{self.instance_id}" if self.tier else ""

    def label(self) -> str:
        return f"{self.tier}/{self.instance_id}" if self.tier else "topology"


class TopologyController:
    def __init__(self, raw_topology: dict):
        self.topology: Topology = validate(raw_topology)
        self.name = self.topology.name
        self.state = "STARTING"
        self.events: deque = deque(maxlen=300)
        self.stopping = threading.Event()
        self._lock = threading.RLock()
        self.instances: dict[tuple[str, str], _Instance] = {}
        self.waiting: dict[str, str] = {}
        # node-local channels whose node is gone: metric key -> why (kept so status and metrics
        # keep saying so; they are never recreated under their old name)
        self.lost_channels: dict[tuple[str, str], str] = {}
        self.deployed_at = time.time()
        self._kv_key = f"rayflume/{self.name}/instances".encode()
        self.home_node = ray.get_runtime_context().get_node_id()
        self._next_replica = 0
        if was_reconstructed():
            self._event("controller", "controller restarted; re-attaching to running components")
        self._restore()
        with self._lock:
            self._reconcile_once()
        self.metrics_server = None
        self.metrics_note: str | None = None  # why metrics are not where the topology asked
        if self.topology.metrics_port is not None:
            try:
                self.metrics_server = MetricsServer(self.topology.metrics_host, self.topology.metrics_port,
                                                    self.metrics)
                self._event("controller", f"metrics at {self.metrics_url()}")
            except OSError as exc:
                # Another topology (or program) holds the port: serve on a free one and say so,
                # rather than run without metrics.
                asked = f"{self.topology.metrics_host}:{self.topology.metrics_port}"
                try:
                    self.metrics_server = MetricsServer(self.topology.metrics_host, 0, self.metrics)
                    self.metrics_note = (f"metrics port {asked} is taken ({exc.strerror or exc}); serving "
                                         f"metrics at {self.metrics_url()} instead. Set metrics.port to a free "
                                         f"port (0 picks one)")
                except OSError as exc2:
                    self.metrics_note = (f"metrics endpoint not started on {asked}: {exc2}; set metrics.port "
                                         f"to a free port (0 picks one), or null to disable it")
                self._event("controller", self.metrics_note)
        self.state = "RUNNING"
        self._loop = threading.Thread(target=self._reconcile_loop, daemon=True, name="reconcile")
        self._loop.start()

    # -- persistence of the instance map ------------------------------------------------------
    def _save(self) -> None:
        data = {"home_node": self.home_node, "next_replica": self._next_replica,
                "instances": [[i.tier, i.instance_id, i.node_id] for i in list(self.instances.values())]}
        _kv()._internal_kv_put(self._kv_key, json.dumps(data).encode(), overwrite=True)

    def _restore(self) -> None:
        raw = _kv()._internal_kv_get(self._kv_key)
        if not raw:
            return
        data = json.loads(raw)
        self.home_node = data.get("home_node", self.home_node)
        self._next_replica = data.get("next_replica", 0)
        for tier, instance_id, node_id in data.get("instances", []):
            if tier in self.topology.tiers:
                self._add_instance(tier, instance_id, node_id, create=False)

    # -- instances ------------------------------------------------------------------------------
    def _add_instance(self, tier_name: str, instance_id: str, node_id: str | None, create: bool = True) -> _Instance:
        inst = _Instance(tier_name, instance_id, node_id)
        self.instances[(tier_name, instance_id)] = inst
        self._plan(inst)
        for kind in KINDS:
            for managed in inst.components.values():
                if managed.kind == kind:
                    self._ensure(inst, managed, create_if_missing=True)
        if create:
            where = f" on node {node_id[:12]}" if node_id else ""
            self._event(inst.label(), f"instance started{where}")
        return inst

    def _plan(self, inst: _Instance) -> None:
        """The instance's components, from the tier's config (keeping handles that exist)."""
        tier = self.topology.tiers[inst.tier]
        old = inst.components
        new = {}
        for ch in tier.channels:
            new[("CHANNEL", ch)] = _Managed("CHANNEL", ch, tier.raw["channels"][ch])
        for group, sinks in tier.groups().items():
            grp = tier.sink_groups.get(group)
            channels = sorted({tier.sinks[s].channel for s in sinks})
            raw = ({s: tier.raw["sinks"][s] for s in sinks}, grp.raw_processor if grp else None,
                   [tier.raw["channels"][c] for c in channels])
            new[("SINK", group)] = _Managed("SINK", group, raw)
        for src, cfg in tier.sources.items():
            raw = (tier.raw["sources"][src], [tier.raw["channels"][c] for c in cfg.channels])
            new[("SOURCE", src)] = _Managed("SOURCE", src, raw)
        for key, managed in new.items():
            prev = old.get(key)
            if prev is not None and prev.raw == managed.raw:
                new[key] = prev
        inst.components = new

    def _actor_name(self, inst: _Instance, managed: _Managed) -> str:
        scope = f"{inst.scope}/" if inst.scope else ""
        return f"{self.name}/{scope}{KIND_KEY[managed.kind]}/{managed.name}"

    def _options(self, inst: _Instance, managed: _Managed, max_restarts: int, node_local: bool = False) -> dict:
        opts = actor_options(self.name, KIND_KEY[managed.kind], managed.name, max_restarts)
        opts["name"] = self._actor_name(inst, managed)
        node = inst.node_id or (self.home_node if node_local else None)
        if node:
            # Pinned: Ray restarts the actor on this node (where a file channel's data lives).
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        return opts

    def _create(self, inst: _Instance, managed: _Managed):
        tier = self.topology.tiers[inst.tier]
        channels = {k[1]: m.handle for k, m in inst.components.items() if k[0] == "CHANNEL"}
        scope_topology = self.name
        if managed.kind == "CHANNEL":
            cfg = tier.channels[managed.name]
            return RemoteChannel.options(**self._options(inst, managed, cfg.max_restarts, cfg.node_local)).remote(
                scope_topology, managed.name, tier.raw["channels"][managed.name], inst.scope)
        if managed.kind == "SOURCE":
            cfg = tier.sources[managed.name]
            return RemoteSource.options(**self._options(inst, managed, cfg.max_restarts)).remote(
                scope_topology, managed.name, tier.raw["sources"][managed.name],
                {c: channels[c] for c in cfg.channels})
        sinks = tier.groups()[managed.name]
        grp = tier.sink_groups.get(managed.name)
        max_restarts = min((tier.sinks[s].max_restarts for s in sinks),
                           key=lambda r: float("inf") if r < 0 else r)
        needed = {tier.sinks[s].channel for s in sinks}
        return RemoteSinkGroup.options(**self._options(inst, managed, max_restarts)).remote(
            scope_topology, managed.name, {s: tier.raw["sinks"][s] for s in sinks},
            grp.raw_processor if grp else None, {c: channels[c] for c in needed}, inst.scope)

    def _ensure(self, inst: _Instance, managed: _Managed, create_if_missing: bool) -> None:
        """Attach to the component's running actor, or create it."""
        if managed.handle is not None:
            return
        try:
            handle = ray.get_actor(self._actor_name(inst, managed), namespace=NAMESPACE)
            if _actor_state(handle)[0] != "DEAD":
                managed.handle = handle
                return
        except ValueError:
            pass
        if create_if_missing:
            managed.handle = self._create(inst, managed)
            self._event(inst.label(), f"{managed.kind.lower()} '{managed.name}' created")

    def _drop_instance(self, inst: _Instance, why: str) -> None:
        for managed in inst.components.values():
            try:
                ray.kill(managed.handle, no_restart=True)
            except Exception:
                pass
        self.instances.pop((inst.tier, inst.instance_id), None)
        self._event(inst.label(), why)

    # -- reconcile --------------------------------------------------------------------------------
    def _reconcile_once(self) -> None:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        alive = {n["NodeID"] for n in nodes}
        changed = False
        for tier_name, tier in self.topology.tiers.items():
            changed |= self._reconcile_tier(tier_name, tier, nodes, alive)
        for inst in list(self.instances.values()):
            if self.stopping.is_set():
                return
            self._reconcile_components(inst, alive)
        if changed:
            self._save()

    def _reconcile_tier(self, tier_name: str, tier: Tier, nodes: list, alive: set) -> bool:
        placement = tier.placement
        mine = [i for i in list(self.instances.values()) if i.tier == tier_name]
        changed = False
        for inst in mine:
            if inst.node_id is not None and inst.node_id not in alive:
                lost = [n for n, c in tier.channels.items() if c.node_local]
                if placement.mode == "replicas" and not lost:
                    # Nothing of it lives only on that node: move it, keeping its name (and so the
                    # shared storage its channels replay from).
                    node_id = self._pick_node(tier_name, nodes, placement)
                    if node_id is None:
                        continue
                    self._drop_instance(inst, f"node {inst.node_id[:12]} is gone: moving the instance to "
                                              f"node {node_id[:12]}")
                    self._add_instance(tier_name, inst.instance_id, node_id)
                else:
                    detail = f"; its channel data ({', '.join(lost)}) is lost with the node" if lost else ""
                    for ch in lost:
                        self.lost_channels[self._metric_key(inst, "CHANNEL", ch)] = (
                            f"node {inst.node_id[:12]} is gone with this channel's files; bring the node back to "
                            f"recover them, or use shared_storage / an s3:// data_dirs")
                    self._drop_instance(inst, f"node {inst.node_id[:12]} is gone: instance removed{detail}")
                changed = True
        mine = [i for i in list(self.instances.values()) if i.tier == tier_name]
        if placement.mode == "single":
            if not mine:
                self._add_instance(tier_name, "main", None)
                changed = True
            return changed
        matching = [n for n in nodes if placement.matches(n)]
        if not matching:
            msg = f"tier '{tier_name}' waits for a node with {placement.describe()}"
            if self.waiting.get(tier_name) != msg:
                self.waiting[tier_name] = msg
                self._event(tier_name or "topology", msg)
            return changed
        self.waiting.pop(tier_name, None)
        if placement.mode == "per_node":
            have = {i.node_id for i in mine}
            for node in matching:
                if node["NodeID"] not in have:
                    self._add_instance(tier_name, node["NodeID"][:12], node["NodeID"])
                    changed = True
        else:
            while len(mine) < placement.replicas:
                node_id = self._pick_node(tier_name, nodes, placement)
                inst = self._add_instance(tier_name, f"r{self._next_replica}", node_id)
                self._next_replica += 1
                mine.append(inst)
                changed = True
            for extra in sorted(mine, key=lambda i: i.instance_id)[placement.replicas:]:
                self._drop_instance(extra, "instance removed: more replicas than placement asks for")
                changed = True
        return changed

    def _pick_node(self, tier_name: str, nodes: list, placement) -> str | None:
        """The matching alive node with the fewest instances of the tier (spreading replicas)."""
        counts = {n["NodeID"]: 0 for n in nodes if placement.matches(n)}
        for i in list(self.instances.values()):
            if i.tier == tier_name and i.node_id in counts:
                counts[i.node_id] += 1
        return min(counts, key=lambda n: (counts[n], n)) if counts else None

    def _reconcile_components(self, inst: _Instance, alive: set) -> None:
        tier = self.topology.tiers[inst.tier]
        for key, managed in inst.components.items():
            state, restarts = _actor_state(managed.handle)
            managed.last_restarts = max(managed.last_restarts, restarts)
            if restarts > managed.announced_restarts:
                self._event(inst.label(), f"{managed.kind.lower()} '{managed.name}' restarted "
                                          f"({restarts} restart(s) of this actor)")
                managed.announced_restarts = restarts
            if state != "DEAD" or managed.lost:
                continue
            node = inst.node_id or self.home_node
            if managed.kind == "CHANNEL" and tier.channels[managed.name].node_local and node not in alive:
                managed.lost = (f"its node {node[:12]} is gone with the channel's files; it is not recreated "
                                f"empty. Bring the node back, or use data_dirs on shared storage")
                self._event(inst.label(), f"channel '{managed.name}' LOST: {managed.lost}")
                continue
            self._event(inst.label(), f"{managed.kind.lower()} '{managed.name}' is dead (restarts exhausted); "
                                      f"replacing it")
            managed.restarts_before += managed.last_restarts
            managed.last_restarts = managed.announced_restarts = 0
            managed.replacements += 1
            managed.handle = self._create(inst, managed)

    def _reconcile_loop(self) -> None:
        while not self.stopping.wait(RECONCILE_INTERVAL_S):
            try:
                with self._lock:
                    if not self.stopping.is_set():
                        self._reconcile_once()
            except Exception:
                logger.exception("topology '%s': reconcile tick failed", self.name)

    def _event(self, component: str, message: str) -> None:
        logger.info("topology '%s': %s: %s", self.name, component, message)
        self.events.append({"time": time.time(), "component": component, "message": message})

    # -- redeploy -------------------------------------------------------------------------------
    def update(self, raw_topology: dict) -> dict:
        """Move to a new configuration; components whose config did not change keep running."""
        new = validate(raw_topology)
        with self._lock:
            old_handles = {(t, i, k): m.handle for (t, i), inst in list(self.instances.items())
                           for k, m in inst.components.items()}
            self.topology = new
            for (tier_name, _), inst in list(self.instances.items()):
                if tier_name not in new.tiers:
                    self._drop_instance(inst, "tier removed by redeploy")
            kept, replaced = 0, 0
            for (tier_name, instance_id), inst in list(self.instances.items()):
                self._plan(inst)
                for key, managed in inst.components.items():
                    if managed.handle is not None:
                        kept += 1
                stale = [h for (t, i, k), h in old_handles.items() if t == tier_name and i == instance_id and
                         all(m.handle is not h for m in inst.components.values())]
                for handle in stale:
                    self._stop_and_kill(handle)
                    replaced += 1
                for kind in KINDS:
                    for managed in inst.components.values():
                        if managed.kind == kind and managed.handle is None:
                            managed.handle = self._create(inst, managed)
            self._reconcile_once()
            self._save()
            self._event("controller", f"redeployed: {kept} component(s) kept, {replaced} replaced")
            return {"kept": kept, "replaced": replaced}

    @staticmethod
    def _stop_and_kill(handle) -> None:
        try:
            ray.get(handle.stop.remote(), timeout=60)
        except Exception:
            pass
        try:
            ray.kill(handle, no_restart=True)
        except Exception:
            pass

    # -- queries ----------------------------------------------------------------------------------
    def hop_targets(self, tier: str, source: str | None = None) -> list:
        """``[(instance id, source actor handle)]`` of the live instances of ``tier``."""
        tier_cfg = self.topology.tiers.get(tier)
        if tier_cfg is None:
            return []
        if source is None:
            source = next((n for n, c in tier_cfg.sources.items() if getattr(c, "receives_hops", False)), None)
        out = []
        for inst in sorted(list(self.instances.values()), key=lambda i: i.instance_id):
            managed = inst.components.get(("SOURCE", source)) if inst.tier == tier else None
            if managed is not None and managed.handle is not None:
                if _actor_state(managed.handle)[0] in ("ALIVE", "RESTARTING", "PENDING_CREATION"):
                    out.append((inst.instance_id, managed.handle))
        return out

    def _metric_key(self, inst: _Instance, kind: str, name: str) -> tuple[str, str]:
        return (kind, f"{inst.tier}.{inst.instance_id}.{name}" if inst.tier else name)

    def _gather(self, method: str) -> dict:
        refs = {}
        for inst in list(self.instances.values()):
            for key, m in inst.components.items():
                if m.handle is not None:
                    refs[(inst.tier, inst.instance_id, *key)] = getattr(m.handle, method).remote()
        out = {}
        for key, ref in refs.items():
            try:
                out[key] = ray.get(ref, timeout=CALL_TIMEOUT_S)
            except Exception as exc:
                out[key] = exc
        return out

    def metrics(self) -> dict:
        """Flume's JSON shape: ``{"SOURCE.gen": {...}, ...}``; in a tiered topology the name is
        ``<tier>.<instance>.<component>`` (``SOURCE.agent.3f9a1c2b7d0e.gen``)."""
        reports = {}
        for inst in list(self.instances.values()):
            for m in inst.components.values():
                m.last_restarts = max(m.last_restarts, _actor_state(m.handle)[1])  # live, not last tick
        results = self._gather("metrics")
        for inst in list(self.instances.values()):
            tier = self.topology.tiers[inst.tier]
            for (kind, name), managed in inst.components.items():
                result = results.get((inst.tier, inst.instance_id, kind, name))
                extra = {"Restarts": managed.restarts}
                names = tier.groups()[name] if kind == "SINK" else [name]
                if not isinstance(result, dict):
                    extra["Unhealthy"] = 1
                    if managed.lost:
                        extra["ChannelLost"] = 1
                    for n in names:
                        reports[self._metric_key(inst, kind, n)] = extra
                elif kind == "SINK":
                    for n, counters in result.items():
                        reports[self._metric_key(inst, kind, n)] = {**counters, **extra}
                else:
                    reports[self._metric_key(inst, kind, name)] = {**result, **extra}
        for key in self.lost_channels:
            reports[key] = {"ChannelLost": 1, "Unhealthy": 1}
        return flume_shape(reports)

    def metrics_problem(self) -> str | None:
        """Why the metrics endpoint is not where the topology asked for it, or None."""
        return self.metrics_note

    def metrics_url(self) -> str | None:
        if self.metrics_server is None:
            return None
        return f"http://{self.metrics_server.host}:{self.metrics_server.port}/metrics"

    def status(self) -> dict:
        infos = self._gather("info")
        metrics = self.metrics()
        components = []
        for inst in sorted(list(self.instances.values()), key=lambda i: (i.tier, i.instance_id)):
            tier = self.topology.tiers[inst.tier]
            for (kind, name), managed in inst.components.items():
                info = infos.get((inst.tier, inst.instance_id, kind, name))
                state, _ = _actor_state(managed.handle)
                entry = {"kind": kind, "name": name, "tier": inst.tier, "instance": inst.instance_id,
                         "node_id": inst.node_id, "state": state, "restarts": managed.restarts}
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
                prefix = f"{inst.tier}.{inst.instance_id}." if inst.tier else ""
                if kind == "SINK":
                    entry["sinks"] = {s: metrics.get(f"SINK.{prefix}{s}", {}) for s in tier.groups()[name]}
                else:
                    entry["counters"] = metrics.get(f"{kind}.{prefix}{name}", {})
                components.append(entry)
        tiers = {}
        for tier_name, tier in self.topology.tiers.items():
            tiers[tier_name] = {"placement": tier.placement.mode, "selector": tier.placement.describe(),
                                "replicas": tier.placement.replicas if tier.placement.mode == "replicas" else None,
                                "instances": {i.instance_id: i.node_id for i in list(self.instances.values())
                                              if i.tier == tier_name},
                                "waiting": self.waiting.get(tier_name),
                                "lost": {name: why for (_, name), why in self.lost_channels.items()
                                         if name.startswith(f"{tier_name}.")}}
        return {"name": self.name, "state": self.state, "deployed_at": self.deployed_at,
                "metrics_url": self.metrics_url(), "metrics_problem": self.metrics_note, "tiers": tiers, "components": components,
                "events": list(self.events)[-30:], "finished": self._finished(infos)}

    def _finished(self, infos=None) -> bool:
        infos = infos if infos is not None else self._gather("info")
        if not infos:
            return False
        for key, info in infos.items():
            tier, _, kind, name = key
            if kind == "SOURCE" and getattr(self.topology.tiers[tier].sources[name], "receives_hops", False):
                # A receiving source only carries what upstream sends: with every reading source
                # finished and every channel (leases included) empty, nothing more arrives.
                continue
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

    # -- stop ---------------------------------------------------------------------------------------
    def _tier_order(self) -> list[str]:
        """Tiers from the first hop to the last (agents before collectors)."""
        tiers = self.topology.tiers
        incoming = {t: 0 for t in tiers}
        for t in tiers.values():
            for target in set(t.hops().values()):
                incoming[target] += 1
        order, ready = [], sorted(t for t, n in incoming.items() if n == 0)
        while ready:
            t = ready.pop(0)
            order.append(t)
            for target in sorted(set(tiers[t].hops().values())):
                incoming[target] -= 1
                if incoming[target] == 0:
                    ready.append(target)
        return order + [t for t in tiers if t not in order]

    def stop(self, drain_timeout_s: float = 30.0) -> dict:
        """Drain tier by tier, from the first to the last: stop a tier's sources, let its sinks
        empty its channels (up to ``drain_timeout_s`` in all), stop its sinks; then remove every
        actor. Returns what was left undrained and the final metrics."""
        with self._lock:
            self.state = "STOPPING"
            self.stopping.set()
            deadline = time.monotonic() + drain_timeout_s
            left: dict = {}
            for tier in self._tier_order():
                insts = [i for i in list(self.instances.values()) if i.tier == tier]
                self._event(tier or "topology", "stopping: sources first, then draining the channels")
                self._call_all(insts, "SOURCE", "stop")
                sizes = self._channel_sizes(insts)
                while sum(sizes.values()) > 0 and time.monotonic() < deadline:
                    time.sleep(0.1)
                    sizes = self._channel_sizes(insts)
                if sum(sizes.values()):
                    self._event(tier or "topology", f"drain timed out; events left in channels: {sizes}")
                left.update(sizes)
                self._call_all(insts, "SINK", "stop")
            final_metrics = self.metrics()
            self._call_all(list(self.instances.values()), "CHANNEL", "stop")
            for inst in list(self.instances.values()):
                for managed in inst.components.values():
                    try:
                        ray.kill(managed.handle, no_restart=True)
                    except Exception:
                        pass
            if self.metrics_server is not None:
                self.metrics_server.close()
            try:
                _kv()._internal_kv_del(self._kv_key)
            except Exception:
                pass
            self.state = "STOPPED"
            return {"undrained": left, "final_metrics": final_metrics}

    def _call_all(self, insts, kind: str, method: str) -> None:
        refs = [getattr(m.handle, method).remote() for i in insts for (k, _), m in i.components.items()
                if k == kind and m.handle is not None]
        for ref in refs:
            try:
                ray.get(ref, timeout=60)
            except Exception as exc:
                self._event("controller", f"{kind.lower()} {method} failed: {type(exc).__name__}")

    def _channel_sizes(self, insts) -> dict:
        out = {}
        for inst in insts:
            for (kind, name), m in inst.components.items():
                if kind == "CHANNEL":
                    label = f"{inst.tier}.{inst.instance_id}.{name}" if inst.tier else name
                    try:
                        out[label] = ray.get(m.handle.size.remote(), timeout=CALL_TIMEOUT_S)
                    except Exception:
                        out[label] = 0  # a dead channel has nothing left that a sink could drain
        return out

    def ping(self) -> str:
        return self.state


RemoteController = ray.remote(TopologyController)


# Every Ray cluster's head node carries this resource; the controller lives there (as Ray Serve's
# does): the head holds the GCS, so the cluster and its controller stand or fall together.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def controller_options(topology: str) -> dict:
    return dict(name=controller_name(topology), namespace=NAMESPACE, lifetime="detached",
                max_restarts=-1, max_task_retries=0, max_concurrency=16, num_cpus=0,
                resources={HEAD_NODE_RESOURCE: 0.001})
