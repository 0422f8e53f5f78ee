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

:class:`PauseSwitch` is the controller's side, mixed into
:class:`~rayflume._private.controller.TopologyController` (it works on the controller's instance map
and on its ``paused`` set and ``_pause_*`` records, which its stored document and every reconcile tick
read): ``set_paused`` stores the change, tells the sink groups and waits at most
:data:`PAUSE_CONFIRM_S` for their confirmations, without holding the reconcile lock meanwhile; each
tick sends the state to the sink groups that have not confirmed the current ``seq`` and collects the
answers that came, never waiting for one (one that has not answered is looked at next tick).
"""
from __future__ import annotations

import logging

import ray

from rayflume._private.instances import describe
from rayflume.topology import Topology

logger = logging.getLogger("rayflume.controller")
# The key of the pause state in the controller's document.
DOC_KEY = "paused"
# pause/resume waits this long for the sink groups to confirm before it answers (they are told
# again every tick after that, and read the stored state when they start)
PAUSE_CONFIRM_S = 5.0


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


class PauseSwitch:
    """The controller's side of the pause switch (see the module docstring)."""

    def set_paused(self, sink: str, paused: bool, tier: str | None = None,
                   confirm_timeout_s: float = PAUSE_CONFIRM_S) -> dict:
        """Pause (``paused`` true) or resume sink ``sink`` on every instance of its tier; ``tier``
        says which tier when several have a sink of that name. ValueError, naming the sinks, for
        a sink (or tier) that is not there. Pausing a paused sink, or resuming a running one,
        changes nothing and is not an error.

        A paused sink finishes (or rolls back) the batch in hand, returns its prefetched take and
        takes nothing more; its channel keeps accepting events until it is full, then the sources
        back off as for any full channel. In a group, the processor skips it (failover: the next
        sink by priority delivers). The state is stored before any actor is told, so it holds
        across a restart of this controller and of the sink's actor.

        Returns when every instance's sink group confirmed, having settled the batch in hand (a
        paused sink writes nothing more after that), or after ``confirm_timeout_s``: ``{"sink",
        "tiers", "paused", "changed", "channel", "instances": {label: "confirmed" or what is not
        done yet}}``. An instance that has not confirmed (restarting, say) is told again each
        tick, and reads the stored state itself when it starts."""
        with self._lock:
            tiers = sink_tiers(self.topology, sink, tier)
            keys = {(t, sink) for t in tiers}
            wanted = self.paused | keys if paused else self.paused - keys
            changed = wanted != self.paused
            if changed:
                self.paused, self._pause_seq = wanted, self._pause_seq + 1
                self._save()  # before any actor is told: a crash from here on keeps the new state
                for t in tiers:
                    self._event(t or "topology", f"sink '{sink}' {'paused' if paused else 'resumed'} "
                                                 f"(every instance of {'tier ' + repr(t) if t else 'the topology'})")
            self._send_paused()
            seq = self._pause_seq
            targets = {}  # sink group actor id -> instance label
            instances = {}
            for inst in sorted(list(self.instances.values()), key=lambda i: (i.tier, i.instance_id)):
                if inst.tier not in tiers:
                    continue
                group = next(g for g, sinks in self.topology.tiers[inst.tier].groups().items() if sink in sinks)
                managed = inst.components.get(("SINK", group))
                if managed is None or managed.handle is None or managed.lost:
                    instances[inst.label()] = "not running; it reads the pause state when it starts"
                else:
                    targets[managed.handle._actor_id.hex()] = inst.label()
            refs = {a: self._pause_pending[a][1] for a in targets if a in self._pause_pending}
        if refs:  # waited for without the lock: the reconcile loop goes on meanwhile
            ray.wait(list(refs.values()), num_returns=len(refs), timeout=confirm_timeout_s)
        with self._lock:
            self._reap_paused()
            for actor, label in targets.items():
                if self._pause_acked.get(actor, -1) < seq:
                    instances[label] = ("not confirmed yet (restarting or busy?); told again every second, and it "
                                        "reads the pause state when it starts")
                    continue
                answer = {}
                if actor in refs:
                    try:
                        answer = ray.get(refs[actor], timeout=0)
                    except Exception:  # confirmed by an earlier push, say: this one's answer is not needed
                        pass
                instances[label] = "confirmed" if answer.get("settled", True) else (
                    "confirmed; still finishing the batch in hand (its Paused counter turns 1 when done)")
        return {"sink": sink, "tiers": tiers, "paused": bool(paused), "changed": changed,
                "channel": {t: self.topology.tiers[t].sinks[sink].channel for t in tiers},
                "instances": instances}

    def paused_sinks(self) -> list[dict]:
        """``[{"tier", "sink"}]`` of the sinks an operator paused (the desired state)."""
        return [{"tier": t, "sink": s} for t, s in sorted(self.paused)]

    def _push_paused(self) -> None:
        """Each tick: tell the sink groups that have not confirmed the current pause state, and
        collect the answers that came (never waiting for one)."""
        self._send_paused()
        self._reap_paused()

    def _send_paused(self) -> None:
        """Send the pause state to every sink group actor that has neither confirmed the current
        number nor a call for it under way; forget actors that are no longer ours."""
        seq, ours = self._pause_seq, set()
        for inst in list(self.instances.values()):
            tier = self.topology.tiers.get(inst.tier)
            if tier is None:
                continue
            groups = tier.groups()
            for (kind, name), managed in list(inst.components.items()):
                if kind != "SINK" or managed.handle is None or managed.lost:
                    continue
                actor = managed.handle._actor_id.hex()
                ours.add(actor)
                pending = self._pause_pending.get(actor)
                if self._pause_acked.get(actor, -1) >= seq or (pending is not None and pending[0] == seq):
                    continue
                sinks = [s for s in groups.get(name, []) if (inst.tier, s) in self.paused]
                self._pause_pending[actor] = (seq, managed.handle.set_paused.remote(sinks, seq))
        self._pause_acked = {a: s for a, s in self._pause_acked.items() if a in ours}
        self._pause_pending = {a: p for a, p in self._pause_pending.items() if a in ours}

    def _reap_paused(self) -> None:
        """Record the pushes that were answered; a failed one is sent again next tick."""
        pending = list(self._pause_pending.items())
        refs = [ref for _, (_, ref) in pending]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        for actor, (seq, ref) in pending:
            if ref not in ready:
                continue
            del self._pause_pending[actor]
            try:
                ray.get(ref, timeout=0)
            except Exception as exc:  # dead, restarting: sent again next tick
                logger.info("topology '%s': pause state not delivered to a sink group (%s); retrying next tick",
                            self.name, describe(exc))
                continue
            self._pause_acked[actor] = max(seq, self._pause_acked.get(actor, -1))

    def _paused_report(self, metrics: dict) -> list[dict]:
        """For ``status()``: each paused sink with, per instance, whether its actor applied the
        pause (its ``Paused`` gauge) and the backlog of its channel (events queued)."""
        out = []
        for tier_name, sink in sorted(self.paused):
            channel = self.topology.tiers[tier_name].sinks[sink].channel
            per_instance = {}
            for inst in sorted(list(self.instances.values()), key=lambda i: i.instance_id):
                if inst.tier != tier_name:
                    continue
                sink_counters = metrics.get(".".join(inst.metric_key("SINK", sink)), {})
                channel_counters = metrics.get(".".join(inst.metric_key("CHANNEL", channel)), {})
                size = channel_counters.get("ChannelSize")
                per_instance[inst.label()] = {"applied": sink_counters.get("Paused") == "1",
                                              "backlog": int(size) if str(size or "").isdigit() else None}
            out.append({"tier": tier_name, "sink": sink, "channel": channel, "instances": per_instance})
        return out
