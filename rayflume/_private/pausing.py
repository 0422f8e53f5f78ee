"""The sink pause switch: which sinks an operator paused, as the controller stores it and as a sink
group actor reads it.

``rayflume pause NAME SINK`` (``handle.pause(sink)``) asks the controller, which keeps the desired
state, a set of ``(tier, sink)`` pairs with a number ``seq`` that grows with every change, in its
one durable document (:meth:`TopologyController._save`, Ray's GCS key-value store) *before* it
tells any actor. So the pause survives a SIGKILL of the controller (the restarted controller reads
it back, and pushes it again to every sink group on its first tick) and a restart of a sink group's
actor: a sink group reads the stored state itself when it starts, *before* its sinks take anything
(:func:`read_pause_state`), rather than wait for the controller's next push, because between its
start and that push it could take and write a batch while it should be paused; and the controller
may be down at that moment. The controller pushes every change, and again to an actor that has not
confirmed the current ``seq``, each reconcile tick; an actor ignores a push older than what it
applied (pushes and its own read can arrive in any order), so the newest state wins everywhere.

A pause names a sink of one tier and applies to every instance of that tier. The functions here
are pure except :func:`read_pause_state`, which reads the store.
"""
from __future__ import annotations

from rayflume.topology import Topology

# The key of the pause state in the controller's document.
DOC_KEY = "paused"


def sink_tiers(topology: Topology, sink: str, tier: str | None = None) -> list[str]:
    """The tiers whose sink ``sink`` a pause of (``sink``, ``tier``) means: the one tier that has
    such a sink, or ``tier`` when given. ValueError, with the sinks to choose from, for a sink
    that is not there, a tier that does not exist or lacks the sink, and for a sink name several
    tiers use when ``tier`` is not given."""
    where = {t: sorted(cfg.sinks) for t, cfg in topology.tiers.items()}
    known = ", ".join(f"{s} (tier {t})" if topology.tiered else s for t, sinks in where.items() for s in sinks)
    if tier is not None and (topology.tiered or tier):
        if tier not in where:
            raise ValueError(f"topology '{topology.name}' has no tier '{tier}'; its tiers: "
                             f"{', '.join(t for t in where if t) or 'none'}")
        if sink not in where[tier]:
            raise ValueError(f"tier '{tier}' of topology '{topology.name}' has no sink '{sink}'; its sinks: "
                             f"{', '.join(where[tier]) or 'none'}")
        return [tier]
    tiers = [t for t, sinks in where.items() if sink in sinks]
    if not tiers:
        raise ValueError(f"topology '{topology.name}' has no sink '{sink}'; its sinks: {known or 'none'}")
    if len(tiers) > 1:
        raise ValueError(f"sink '{sink}' is in several tiers of topology '{topology.name}' "
                         f"({', '.join(tiers)}); say which one (tier=..., or --tier on the command line)")
    return tiers


def pause_doc(seq: int, paused: set[tuple[str, str]]) -> dict:
    """The pause state as the controller's document keeps it (JSON)."""
    return {"seq": int(seq), "sinks": sorted([tier, sink] for tier, sink in paused)}


def pause_from_doc(doc: dict | None) -> tuple[int, set[tuple[str, str]]]:
    """``(seq, {(tier, sink)})`` of a controller's document (``(0, set())`` when it has none: a
    document from before the pause switch, or no document)."""
    state = (doc or {}).get(DOC_KEY) or {}
    return int(state.get("seq", 0)), {(str(t), str(s)) for t, s in state.get("sinks", [])}


def tier_of_scope(scope: str) -> str:
    """The tier of an instance's scope (``tier/instance``; "" for a topology without tiers)."""
    return scope.split("/", 1)[0] if scope else ""


def read_pause_state(store, topology: str, scope: str) -> tuple[int, set[str]]:
    """``(seq, paused sink names)`` of the instance ``scope`` of ``topology``, from the
    controller's stored document (``(0, set())`` when there is none). Raises when the store
    cannot be read: a sink group must not start taking without knowing."""
    from rayflume._private.controller import state_key  # the controller imports the actors: not at load

    seq, paused = pause_from_doc(store.get(state_key(topology)))
    tier = tier_of_scope(scope)
    return seq, {sink for t, sink in paused if t == tier}
