"""How the topology controller creates, re-attaches to, replaces and removes component actors.

Guarantees:

* A component's actor is named after its topology, instance and component
  (``<topology>/<tier>/<instance>/<kind>/<name>``, without the tier and instance in a single-tier
  topology), detached, so a restarted controller re-attaches to it by name (:meth:`_ensure`)
  rather than start a second one; an actor of that name that is DEAD is created again.
* An instance's actors are pinned to its node (Ray restarts them there, where a file channel's
  data lives) and created channels first, then sink groups, then sources (``planner.KINDS``): a
  component gets handles of the channels it uses.
* A component whose config did not change keeps its actor across a redeploy (:meth:`_plan`).
* An actor dead for good (its restarts exhausted) is recreated, its restarts carried over into
  the component's count; a node-local channel whose node is gone is LOST instead (never recreated
  empty elsewhere). Every such action is an event.

:class:`InstanceLifecycle` is mixed into :class:`~rayflume._private.controller.TopologyController`:
it works on the controller's own state (its ``instances`` map, ``topology``, ``home_node``, the
last tick's listing of Ray's actors in ``_actors``, ``_stats`` and ``_event``), which tests and
``scripts/bench_control_plane.py`` build by hand.
"""
from __future__ import annotations

import logging
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rayflume._private import gcs, planner
from rayflume._private.actors import NAMESPACE, RemoteChannel, RemoteSinkGroup, RemoteSource, actor_options
from rayflume._private.instances import KIND_KEY, Instance, Managed, describe, kill
from rayflume._private.planner import KINDS

logger = logging.getLogger("rayflume.controller")


class InstanceLifecycle:
    """The controller's instance and component actions (see the module docstring)."""

    def _state_of(self, handle) -> tuple[str, int]:
        """(state, restarts) of an actor as of the last listing (UNKNOWN: not listed then)."""
        if handle is None:
            return gcs.UNKNOWN
        return self._actors.get(handle._actor_id.hex(), gcs.UNKNOWN)

    def _add_instance(self, tier_name: str, instance_id: str, node_id: str | None,
                      identity: str | None = None) -> Instance:
        inst = Instance(tier_name, instance_id, node_id, identity)
        self.instances[(tier_name, instance_id)] = inst
        self._plan(inst)
        self._ensure_all(inst, create=True)
        where = f" on node {node_id[:12]}" if node_id else ""
        self._event(inst.label(), f"instance started{where}")
        return inst

    def _ensure_all(self, inst: Instance, create: bool) -> None:
        for kind in KINDS:
            for managed in inst.components.values():
                if managed.kind == kind:
                    self._ensure(inst, managed, create_if_missing=create)

    def _plan(self, inst: Instance) -> None:
        """The instance's components, from the tier's config (keeping those whose config is the same)."""
        old = inst.components
        new = {}
        for key, raw in planner.component_configs(self.topology.tiers[inst.tier]).items():
            if key[0] == "SOURCE" and self.topology.volume_header:
                # a source counts the header's values: a redeploy that changes it recreates the
                # source (only when set, so other topologies keep their fingerprints)
                raw = (raw, {"volume": [self.topology.volume_header, self.topology.volume_max_values]})
            prev = old.get(key)
            new[key] = prev if prev is not None and prev.raw == raw else Managed(key[0], key[1], raw)
        inst.components = new

    def _actor_name(self, inst: Instance, managed: Managed) -> str:
        scope = f"{inst.scope}/" if inst.scope else ""
        return f"{self.name}/{scope}{KIND_KEY[managed.kind]}/{managed.name}"

    def _options(self, inst: Instance, managed: Managed, max_restarts: int, node_local: bool = False) -> dict:
        opts = actor_options(self.name, KIND_KEY[managed.kind], managed.name, max_restarts)
        opts["name"] = self._actor_name(inst, managed)
        node = inst.node_id or (self.home_node if node_local else None)
        if node:
            # Pinned: Ray restarts the actor on this node (where a file channel's data lives).
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        return opts

    def _create(self, inst: Instance, managed: Managed):
        self._stats.gcs("create_actor")
        tier = self.topology.tiers[inst.tier]
        channels = {k[1]: m.handle for k, m in inst.components.items() if k[0] == "CHANNEL"}
        scope_topology = self.name
        if managed.kind == "CHANNEL":
            cfg = tier.channels[managed.name]
            return RemoteChannel.options(**self._options(inst, managed, cfg.max_restarts, cfg.node_local)).remote(
                scope_topology, managed.name, tier.raw["channels"][managed.name], inst.scope,
                metrics_export=self.topology.metrics_export)
        if managed.kind == "SOURCE":
            cfg = tier.sources[managed.name]
            return RemoteSource.options(**self._options(inst, managed, cfg.max_restarts)).remote(
                scope_topology, managed.name, tier.raw["sources"][managed.name],
                {c: channels[c] for c in cfg.channels}, inst.scope, metrics_export=self.topology.metrics_export,
                volume={"header": self.topology.volume_header, "max_values": self.topology.volume_max_values})
        sinks = tier.groups()[managed.name]
        grp = tier.sink_groups.get(managed.name)
        max_restarts = min((tier.sinks[s].max_restarts for s in sinks),
                           key=lambda r: float("inf") if r < 0 else r)
        needed = {tier.sinks[s].channel for s in sinks}
        return RemoteSinkGroup.options(**self._options(inst, managed, max_restarts)).remote(
            scope_topology, managed.name, {s: tier.raw["sinks"][s] for s in sinks},
            grp.raw_processor if grp else None, {c: channels[c] for c in needed}, inst.scope,
            metrics_export=self.topology.metrics_export)

    def _ensure(self, inst: Instance, managed: Managed, create_if_missing: bool) -> None:
        """Attach to the component's running actor, or create it."""
        if managed.handle is not None:
            return
        try:
            self._stats.gcs("get_actor")
            handle = ray.get_actor(self._actor_name(inst, managed), namespace=NAMESPACE)
            self._stats.gcs("actor_state")
            if gcs.actor_state(handle)[0] != "DEAD":
                managed.handle = handle
                return
        except ValueError:
            pass  # no actor of that name: create one below
        if create_if_missing:
            managed.handle = self._create(inst, managed)
            self._event(inst.label(), f"{managed.kind.lower()} '{managed.name}' created")

    def _drop_instance(self, inst: Instance, why: str) -> None:
        for managed in inst.components.values():
            if managed.handle is not None:
                self._stats.gcs("kill")
            kill(managed.handle)
        self.instances.pop((inst.tier, inst.instance_id), None)
        self._event(inst.label(), why)

    def _reconcile_components(self, inst: Instance, alive: set) -> None:
        tier = self.topology.tiers[inst.tier]
        views = []
        for managed in inst.components.values():
            state, restarts = self._state_of(managed.handle)
            managed.last_restarts = max(managed.last_restarts, restarts)
            views.append(planner.ComponentView(
                managed.kind, managed.name, state, restarts, managed.announced_restarts, bool(managed.lost),
                managed.kind == "CHANNEL" and tier.channels[managed.name].node_local))
        node = inst.node_id or self.home_node
        for action in planner.plan_components(views, node, node in alive):
            self._stats.actions += 1
            managed = inst.components[(action.kind, action.name)]
            what = f"{managed.kind.lower()} '{managed.name}'"
            if isinstance(action, planner.ComponentRestarted):
                self._event(inst.label(), f"{what} restarted ({action.restarts} restart(s) of this actor)")
                managed.announced_restarts = action.restarts
                managed.died_at = time.time()
            elif isinstance(action, planner.ComponentLost):
                managed.lost = action.why
                self._event(inst.label(), f"channel '{managed.name}' LOST: {managed.lost}")
            else:
                self._event(inst.label(), f"{what} is dead (restarts exhausted); replacing it")
                managed.restarts_before += managed.last_restarts
                managed.last_restarts = managed.announced_restarts = 0
                managed.replacements += 1
                managed.died_at = time.time()
                managed.handle = self._create(inst, managed)

    def _stop_named(self, inst: Instance, kind: str, name: str, how: str) -> None:
        """Stop the running actor of a component whose config is not the stored spec's."""
        try:
            handle = ray.get_actor(self._actor_name(inst, Managed(kind, name, None)), namespace=NAMESPACE)
        except ValueError:
            return
        self._stop_and_kill(handle)
        self._event(inst.label(), f"{kind.lower()} '{name}' stopped: {how} version {self.version}")

    @staticmethod
    def _stop_and_kill(handle) -> None:
        try:
            ray.get(handle.stop.remote(), timeout=60)
        except Exception as exc:  # dead or hung: it is killed next either way
            logger.info("component stop failed before its kill: %s", describe(exc))
        kill(handle)
