"""The controller's decisions, as pure functions: desired topology + observed cluster -> actions.

Nothing here calls Ray. The controller (:mod:`rayflume._private.controller`) observes the
cluster (``ray.nodes()`` and one listing of the actor table per tick), asks these functions what
to do, and carries the actions out; so placement, per-node join and leave, replica re-placement,
the redeploy diff and the drain order are unit-tested without a cluster (``tests/test_planner.py``).

Actions are plain frozen dataclasses, applied in the order returned:

* :class:`AddInstance` / :class:`DropInstance`: start or remove one instance of a tier.
* :class:`MarkLost` / :class:`ClearLost`: a node-local channel's data is gone with its node, or
  its node (the same identity) is back to replay it.
* :class:`Waiting`: a tier has no node to run on (``message``), or no longer waits (None).
* :class:`Note`: something worth an event line that changes nothing.
* :class:`ReplaceComponent` / :class:`ComponentLost` / :class:`ComponentRestarted`: per component.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from rayflume._private.identity import assign_instances, node_identity
from rayflume.topology import Tier, Topology

KINDS = ("CHANNEL", "SINK", "SOURCE")  # creation order: what others need first


@dataclass(frozen=True)
class _OfInstance:
    """One instance of a tier: the first fields of :class:`Placed` and of each action on an instance,
    ``(tier, instance_id, ...)`` (the tier ``""`` in a single-tier topology)."""

    tier: str
    instance_id: str


@dataclass(frozen=True)
class Placed(_OfInstance):
    """An instance that runs now (as the controller's instance map says)."""

    node_id: str | None  # None: placed by Ray (single tier)


@dataclass(frozen=True)
class AddInstance(_OfInstance):
    node_id: str | None
    identity: str | None = None


@dataclass(frozen=True)
class DropInstance(_OfInstance):
    why: str


@dataclass(frozen=True)
class MarkLost(_OfInstance):
    channel: str
    why: str


@dataclass(frozen=True)
class ClearLost(_OfInstance):
    channel: str


@dataclass(frozen=True)
class Waiting:
    tier: str
    message: str | None  # None: the tier has nodes again


@dataclass(frozen=True)
class Note:
    component: str
    message: str


@dataclass(frozen=True)
class Plan:
    actions: tuple
    next_replica: int  # the slot number the next new replica takes

    @property
    def changes_instances(self) -> bool:
        """Whether the instance map (and so the stored state) changes."""
        return any(isinstance(a, (AddInstance, DropInstance, MarkLost, ClearLost)) for a in self.actions)


def instance_label(tier: str, instance_id: str) -> str:
    return f"{tier}/{instance_id}" if tier else "topology"


def plan_instances(topology: Topology, nodes: list[dict], placed: list[Placed],
                   lost: set[tuple[str, str, str]], next_replica: int) -> Plan:
    """What to do so that every tier runs where its placement says, given the alive ``nodes``
    (``ray.nodes()`` entries), the instances that run now and the LOST records
    (``(tier, instance, channel)``). Tiers are planned in the topology's order; within a tier,
    lost nodes are handled before new ones are used."""
    running = {(p.tier, p.instance_id): p for p in placed}
    lost = set(lost)
    actions: list = []
    for tier_name, tier in topology.tiers.items():
        next_replica = _plan_tier(tier_name, tier, nodes, running, lost, next_replica, actions)
    return Plan(tuple(actions), next_replica)


def _plan_tier(tier_name: str, tier: Tier, nodes: list[dict], running: dict, lost: set,
               next_replica: int, actions: list) -> int:
    placement = tier.placement
    alive = {n["NodeID"] for n in nodes}

    def mine() -> list[Placed]:
        return sorted((p for p in running.values() if p.tier == tier_name), key=lambda p: p.instance_id)

    def add(instance_id: str, node_id: str | None, identity: str | None = None) -> None:
        running[(tier_name, instance_id)] = Placed(tier_name, instance_id, node_id)
        actions.append(AddInstance(tier_name, instance_id, node_id, identity))

    def drop(p: Placed, why: str) -> None:
        del running[(p.tier, p.instance_id)]
        actions.append(DropInstance(p.tier, p.instance_id, why))

    node_local = [n for n, c in tier.channels.items() if c.node_local]
    for p in mine():
        if p.node_id is None or p.node_id in alive:
            continue
        gone = f"node {p.node_id[:12]} is gone"
        if placement.mode == "replicas" and not node_local:
            # Nothing of it lives only on that node: move it, keeping its name (and so the shared
            # storage its channels replay from).
            node_id = pick_node(tier_name, placement, nodes, running.values())
            if node_id is None:
                continue
            drop(p, f"{gone}: moving the instance to node {node_id[:12]}")
            add(p.instance_id, node_id)
            continue
        if placement.mode == "per_node":
            # The files stay on that machine under this instance's name: a node with the same
            # identity that joins takes the instance back and replays them.
            why = (f"{gone} with this channel's files; they are replayed when a node with identity "
                   f"'{p.instance_id}' (label rayflume_node_id, else host name) joins again")
            detail = (f"; its channel data ({', '.join(node_local)}) is LOST until a node with identity "
                      f"'{p.instance_id}' joins again")
        else:
            why = (f"{gone} with this channel's files; a new replica with new storage replaces this one, so "
                   f"they are not replayed. Use shared_storage: true or an s3:// data_dirs")
            detail = f"; its channel data ({', '.join(node_local)}) is lost with the node"
        for ch in node_local:
            lost.add((tier_name, p.instance_id, ch))
            actions.append(MarkLost(tier_name, p.instance_id, ch, why))
        drop(p, f"{gone}: instance removed{detail if node_local else ''}")

    if placement.mode == "single":
        if not mine():
            add("main", None)
        return next_replica
    matching = [n for n in nodes if placement.matches(n)]
    if not matching:
        actions.append(Waiting(tier_name, f"tier '{tier_name}' waits for a node with {placement.describe()}"))
        return next_replica
    actions.append(Waiting(tier_name, None))
    if placement.mode == "per_node":
        new, warnings = assign_instances(matching, {p.instance_id: p.node_id for p in mine()})
        actions.extend(Note(tier_name, w) for w in warnings)
        by_id = {n["NodeID"]: n for n in matching}
        for node_id, instance_id in new.items():
            back = sorted(c for (t, i, c) in lost if t == tier_name and i == instance_id)
            for ch in back:
                lost.discard((tier_name, instance_id, ch))
                actions.append(ClearLost(tier_name, instance_id, ch))
            add(instance_id, node_id, node_identity(by_id[node_id])[0])
            if back:
                actions.append(Note(instance_label(tier_name, instance_id),
                                    f"node identity '{instance_id}' is back (node {node_id[:12]}): channel(s) "
                                    f"{', '.join(back)} reopened to replay their events; LOST record cleared"))
        return next_replica
    while len(mine()) < placement.replicas:
        add(f"r{next_replica}", pick_node(tier_name, placement, nodes, running.values()))
        next_replica += 1
    for extra in mine()[placement.replicas:]:
        drop(extra, "instance removed: more replicas than placement asks for")
    return next_replica


def pick_node(tier_name: str, placement, nodes: list[dict], placed) -> str | None:
    """The matching alive node with the fewest instances of the tier (spreading replicas); ties
    go to the lowest NodeID, so the choice is deterministic."""
    counts = {n["NodeID"]: 0 for n in nodes if placement.matches(n)}
    for p in placed:
        if p.tier == tier_name and p.node_id in counts:
            counts[p.node_id] += 1
    return min(counts, key=lambda n: (counts[n], n)) if counts else None


# -- components ---------------------------------------------------------------------------------
def fingerprint(raw) -> str:
    """A digest of a component's config, stored to tell later whether its actor is stale."""
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]


def component_configs(tier: Tier) -> dict[tuple[str, str], object]:
    """``{(kind, name): what decides whether a redeploy changes it}`` of one instance of ``tier``:
    a channel's own config; a sink group's sinks, processor and channels; a source's config and
    channels (a component is recreated when a channel it holds is)."""
    out: dict[tuple[str, str], object] = {}
    for ch in tier.channels:
        out[("CHANNEL", ch)] = tier.raw["channels"][ch]
    for group, sinks in tier.groups().items():
        grp = tier.sink_groups.get(group)
        channels = sorted({tier.sinks[s].channel for s in sinks})
        out[("SINK", group)] = ({s: tier.raw["sinks"][s] for s in sinks}, grp.raw_processor if grp else None,
                                [tier.raw["channels"][c] for c in channels])
    for src, cfg in tier.sources.items():
        out[("SOURCE", src)] = (tier.raw["sources"][src], [tier.raw["channels"][c] for c in cfg.channels])
    return out


@dataclass(frozen=True)
class Diff:
    """How an instance's components move from one config to the next (keys are ``(kind, name)``)."""

    keep: tuple
    replace: tuple  # same name, new config: stop the old actor, create a new one
    remove: tuple
    add: tuple


def diff_components(old: dict[tuple[str, str], str], new: dict[tuple[str, str], str]) -> Diff:
    """Compare ``{(kind, name): fingerprint}`` maps (see :func:`fingerprint`)."""
    return Diff(keep=tuple(sorted(k for k in new if old.get(k) == new[k])),
                replace=tuple(sorted(k for k in new if k in old and old[k] != new[k])),
                remove=tuple(sorted(k for k in old if k not in new)),
                add=tuple(sorted(k for k in new if k not in old)))


@dataclass(frozen=True)
class _OfComponent:
    """One component of an instance: the first fields of :class:`ComponentView` and of each action
    on a component, ``(kind, name, ...)``."""

    kind: str  # CHANNEL, SINK or SOURCE
    name: str


@dataclass(frozen=True)
class ComponentView(_OfComponent):
    """What the controller observed of one component this tick."""

    state: str  # the actor's GCS state: ALIVE, RESTARTING, DEAD, ... or UNKNOWN
    restarts: int  # restarts of the current actor, as the GCS counts them
    announced_restarts: int  # the restarts already reported as events
    lost: bool  # already reported LOST
    node_local: bool  # a channel whose data lives only on its node


@dataclass(frozen=True)
class ComponentRestarted(_OfComponent):
    restarts: int


@dataclass(frozen=True)
class ReplaceComponent(_OfComponent):
    """Recreate a component whose actor is dead for good."""


@dataclass(frozen=True)
class ComponentLost(_OfComponent):
    why: str


def plan_components(components: list[ComponentView], node_id: str, node_alive: bool) -> list:
    """Per component of one instance: announce new restarts; replace an actor that is dead for
    good (restarts exhausted), except a node-local channel whose node is gone, which is LOST
    rather than recreated empty."""
    actions: list = []
    for c in components:
        if c.restarts > c.announced_restarts:
            actions.append(ComponentRestarted(c.kind, c.name, c.restarts))
        if c.state != "DEAD" or c.lost:
            continue
        if c.kind == "CHANNEL" and c.node_local and not node_alive:
            actions.append(ComponentLost(c.kind, c.name, f"its node {node_id[:12]} is gone with the channel's "
                                                         f"files; it is not recreated empty. Bring the node "
                                                         f"back, or use data_dirs on shared storage"))
        else:
            actions.append(ReplaceComponent(c.kind, c.name))
    return actions


# -- stop -----------------------------------------------------------------------------------------
def drain_order(topology: Topology) -> list[str]:
    """Tiers from the first hop to the last (agents before collectors), so that a tier is drained
    into the next before the next is drained; tiers in a cycle (not valid) come last."""
    tiers = topology.tiers
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


def hop_sources(topology: Topology) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """``{(target tier, target source): [(sending tier, sink group), ...]}``: which sink groups
    send to which receiving source, so the controller can push a tier's live targets to them."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for tier_name, tier in topology.tiers.items():
        group_of = {s: g for g, sinks in tier.groups().items() for s in sinks}
        for sink, target in tier.hops().items():
            target_tier = topology.tiers.get(target)
            if target_tier is None:
                continue
            source = getattr(tier.sinks[sink], "source", None) or receiving_source(target_tier)
            if source is None:
                continue
            senders = out.setdefault((target, source), [])
            if (tier_name, group_of[sink]) not in senders:
                senders.append((tier_name, group_of[sink]))
    return out


def receiving_source(tier: Tier) -> str | None:
    """The tier's first source that receives hops (a ``rayflume`` source), or None."""
    return next((n for n, c in tier.sources.items() if getattr(c, "receives_hops", False)), None)
