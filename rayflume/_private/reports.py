"""What the topology controller reports: ``status()``, ``metrics()``, ``health_problems()`` and
``finished()``.

Guarantees:

* ``status()`` and ``metrics()`` call every component at once and wait at most ``call_timeout_s``
  for all the answers together (:meth:`StatusReports._gather`); a component that has not answered
  by then (dead, restarting, still starting, busy) is reported without counters, ``Unhealthy``,
  rather than hold the report up. They read the instance map without the reconcile lock, so a
  slow component delays neither a reconcile tick nor a pause.
* ``health_problems()`` (``GET /health``) calls no component: it answers from what the controller
  knows already (the last tick's listing of Ray's actors, LOST records, waiting tiers).
* Names are Flume's (``SOURCE.gen``; ``SOURCE.<tier>.<instance>.gen`` in a tiered topology), a sink
  group reported as its sinks; a lost channel keeps its name, ``ChannelLost``, until it is back.

:class:`StatusReports` is mixed into :class:`~rayflume._private.controller.TopologyController`:
it reads the controller's state (``instances``, ``topology``, ``lost_channels``, ``waiting``,
``paused``, ``_actors``, the alerts thread's gauges), which a test builds by hand for
``health_problems()``.
"""
from __future__ import annotations

import time

import ray

from rayflume._private import gcs
from rayflume._private.instances import CALL_TIMEOUT_S, metric_key
from rayflume._private.metrics import flume_shape


class StatusReports:
    """The controller's reports (see the module docstring)."""

    def _gather(self, methods: tuple[str, ...], timeout_s: float = CALL_TIMEOUT_S) -> list[dict]:
        """Per method, ``{(tier, instance, kind, name): answer or the exception}`` of calling it on
        every component. All calls go out at once and are waited for at most ``timeout_s`` in all
        (an actor still starting answers only once its constructor returned; it counts as not
        answering)."""
        refs = []
        for method in methods:
            refs.append({(inst.tier, inst.instance_id, *key): getattr(m.handle, method).remote()
                         for inst in list(self.instances.values()) for key, m in inst.components.items()
                         if m.handle is not None})
        deadline = time.monotonic() + timeout_s
        answers = []
        for by_key in refs:
            out = {}
            for key, ref in by_key.items():
                try:
                    out[key] = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
                except Exception as exc:
                    out[key] = exc
            answers.append(out)
        return answers

    def metrics(self, call_timeout_s: float = CALL_TIMEOUT_S) -> dict:
        """Flume's JSON shape: ``{"SOURCE.gen": {...}, ...}``; in a tiered topology the name is
        ``<tier>.<instance>.<component>`` (``SOURCE.agent.3f9a1c2b7d0e.gen``). Components that do not
        answer within ``call_timeout_s`` (in all) report no counters."""
        return self._metrics_of(self._gather(("metrics",), call_timeout_s)[0])

    def _metrics_of(self, results: dict) -> dict:
        """:meth:`metrics` from the components' ``metrics()`` answers (see :meth:`_gather`)."""
        reports = {}
        self._actors = gcs.actor_table()  # restarts as of now, not as of the last tick
        for inst in list(self.instances.values()):
            for m in inst.components.values():
                m.last_restarts = max(m.last_restarts, self._state_of(m.handle)[1])
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
                        reports[inst.metric_key(kind, n)] = extra
                elif kind == "SINK":
                    for n, counters in result.items():
                        reports[inst.metric_key(kind, n)] = {**counters, **extra}
                else:
                    reports[inst.metric_key(kind, name)] = {**result, **extra}
        for tier, instance_id, channel in self.lost_channels:
            reports[metric_key(tier, instance_id, "CHANNEL", channel)] = {"ChannelLost": 1, "Unhealthy": 1}
        gauges = self._alerts.gauges()  # AlertFiring_<rule>: how many components the rule fires for
        if gauges is not None:
            reports[("CONTROLLER", "alerts")] = gauges
        return flume_shape(reports)

    def health_problems(self) -> dict[str, str]:
        """``{name: why}`` of what is not running, for ``GET /health``: from what the controller knows
        already (the last tick's listing of Ray's actors, LOST records, tiers waiting for a node),
        without calling any component. Names are those of :meth:`metrics` (a sink group's sinks by
        sink name); ``TIER.<tier>`` is a tier with no node to run on. A component's own error (a
        source that cannot bind, say) shows in ``status()``, not here: that needs a call to it."""
        problems: dict[str, str] = {}
        if self.state != "RUNNING":
            problems[f"TOPOLOGY.{self.name}"] = self.state
        for inst in list(self.instances.values()):
            tier = self.topology.tiers.get(inst.tier)
            for (kind, name), managed in list(inst.components.items()):
                if managed.lost:
                    why = f"LOST: {managed.lost}"
                elif managed.handle is None:
                    why = "not created"
                else:
                    state = self._state_of(managed.handle)[0]
                    if state == "ALIVE":
                        continue
                    why = state if state != "UNKNOWN" else "UNKNOWN (not in the last listing of Ray's actors)"
                names = tier.groups().get(name, [name]) if kind == "SINK" and tier is not None else [name]
                for n in names:
                    problems[".".join(inst.metric_key(kind, n))] = why
        for (tier_name, instance_id, channel), why in list(self.lost_channels.items()):
            problems[".".join(metric_key(tier_name, instance_id, "CHANNEL", channel))] = f"LOST: {why}"
        for tier_name, message in list(self.waiting.items()):
            problems[f"TIER.{tier_name or self.name}"] = message
        return problems

    def metrics_problem(self) -> str | None:
        """Why the metrics endpoint is not where the topology asked for it, or None."""
        return self.metrics_note

    def metrics_url(self) -> str | None:
        if self.metrics_server is None:
            return None
        return f"http://{self.metrics_server.host}:{self.metrics_server.port}/metrics"

    def status(self, call_timeout_s: float = CALL_TIMEOUT_S) -> dict:
        infos, answers = self._gather(("info", "metrics"), call_timeout_s)
        metrics = self._metrics_of(answers)
        components = []
        for inst in sorted(list(self.instances.values()), key=lambda i: (i.tier, i.instance_id)):
            tier = self.topology.tiers[inst.tier]
            for (kind, name), managed in inst.components.items():
                info = infos.get((inst.tier, inst.instance_id, kind, name))
                state, _ = self._state_of(managed.handle)
                entry = {"kind": kind, "name": name, "tier": inst.tier, "instance": inst.instance_id,
                         "node_id": inst.node_id, "state": state, "restarts": managed.restarts,
                         "died_at": managed.died_at}
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
                    # the desired state; each sink's Paused counter says whether the actor applied it
                    entry["paused"] = [s for s in tier.groups()[name] if (inst.tier, s) in self.paused]
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
                                "lost": {metric_key(t, i, "CHANNEL", c)[1]: why
                                         for (t, i, c), why in self.lost_channels.items() if t == tier_name}}
        return {"name": self.name, "state": self.state, "version": self.version, "deployed_at": self.deployed_at,
                "metrics_url": self.metrics_url(), "metrics_problem": self.metrics_note,
                "tiers": tiers, "components": components,
                "events": list(self.events)[-30:], "finished": self._finished(infos),
                "paused": self._paused_report(metrics), "alerts": self.alerts_report()}

    def _finished(self, infos=None) -> bool:
        infos = infos if infos is not None else self._gather(("info",))[0]
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
