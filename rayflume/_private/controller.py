"""The topology controller: a detached, named actor per deployed topology.

It holds the desired state (the validated topology) and reconciles the actual state towards it
in a loop, once a second:

* Each tier runs as *instances*: one per matching node (``per_node``), ``replicas`` spread over
  matching nodes, or a single one (a single-tier topology). An instance is the tier's channels,
  sink groups and sources, each a named, detached actor, all pinned to the instance's node.
* A ``per_node`` instance is named after its machine (label ``rayflume_node_id``, else host name,
  else IP; see :mod:`rayflume._private.identity`), not after Ray's NodeID, which changes when a
  raylet restarts. A node that joins with a matching label gets an instance of each ``per_node``
  tier. When a node is lost its instances stop, and the data of their node-local channels is
  reported LOST; when a node with the same identity comes back, the instance is placed there
  under its old name and reopens and replays its channels (and its sources resume from their own
  positions), and the LOST record is cleared.
* A ``replicas`` instance whose node is lost is re-placed on a remaining node under its slot
  name (``r0``, ``r1``...) if none of its channels is node-local; otherwise its channels are
  reported LOST and a new replica (a new slot) takes its place.
* A component whose actor died for good (restarts exhausted) while its node lives is recreated.
* Every action is recorded as an event shown by ``rayflume status``.

Durable desired state: the topology spec with its version, the instance map (tier, instance,
node identity, node, and a fingerprint of each component's config) and the LOST records are one
document in a :class:`~rayflume._private.state_store.StateStore` (Ray's GCS key-value store; see
that module for why). A restarted controller (Ray restarts it with its original constructor
arguments) reconciles to the stored version, never to those arguments. ``update()`` bumps the
version and stores the new spec before it acts, so a controller that dies during a redeploy
finishes it after its restart: components the stored spec no longer has, or whose stored
fingerprint differs from the spec's, are stopped and (re)created. ``stop()`` deletes the state.

Components are detached and named, so they outlive the driver that deployed them and a restart
of the controller, which re-attaches to them by name. The controller also serves the topology's
metrics as Flume's JSON at ``http://<host>:<port>/metrics``.

The decisions (placement, per-node join and leave, replica re-placement, what a redeploy keeps,
the drain order) are pure functions in :mod:`rayflume._private.planner`, unit-tested without Ray;
this actor observes the cluster, asks the planner and carries out its actions.

Each tick reads the cluster twice: ``ray.nodes()`` and one listing of the GCS actor table
(:mod:`rayflume._private.gcs`), whatever the number of components; ``hop_targets`` answers from
the last tick's listing. An unhandled exception must never stop the loop: each tick is guarded
and logged. ``tick_stats()`` reports what the last ticks cost (:class:`TickStats`).

The actor's parts, each in a module that says what it guarantees:

* :mod:`~rayflume._private.lifecycle`: creating, re-attaching to, replacing and removing component
  actors (:mod:`~rayflume._private.instances`: what the controller knows of each);
  :mod:`~rayflume._private.reports`: ``status()``, ``metrics()``, ``health_problems()``;
  :mod:`~rayflume._private.pausing`: the sink pause switch, part of the stored document and pushed
  by every tick; :mod:`~rayflume._private.drain`: ``stop()``. These are mixed into
  :class:`TopologyController`: they work on its state (which tests build by hand).
* :mod:`~rayflume._private.sampling`: a thread sampling the components' counters for ``history()``
  and the hourly ``volume()`` (stored on a key of its own); :mod:`~rayflume._private.alerts`
  (:class:`~rayflume._private.alerts.AlertsLoop`): a thread evaluating the alert rules, whose state
  is part of the stored document. Each is given what it needs; neither a slow sample nor an alert
  evaluation delays a reconcile tick.
* :mod:`~rayflume._private.user_code`: the topology's ``runtime_env``, applied by
  :data:`RemoteController` when the controller is started, and config classes given as a
  component's ``type``, kept pickled in the stored spec.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque

import ray

from rayflume._private import alerts as alerting
from rayflume._private import gcs, logs, pausing, planner
from rayflume._private.actors import NAMESPACE, was_reconstructed
from rayflume._private.drain import Drain
from rayflume._private.instances import CALL_TIMEOUT_S, Instance, Managed, describe
from rayflume._private.lifecycle import InstanceLifecycle
from rayflume._private.metrics import MetricsServer, TokenUnavailable, resolve_token
from rayflume._private.reports import StatusReports
from rayflume._private.sampling import HISTORY_CALL_TIMEOUT_S as HISTORY_CALL_TIMEOUT_S
from rayflume._private.sampling import Sampler, sample_counters
from rayflume._private.state_store import RayKVStore, StateStore
from rayflume._private.tick_stats import TickStats
from rayflume._private.user_code import ControllerActorClass, spec_from_store, storable_spec
from rayflume._private.user_code import check_class_types_pickle as check_class_types_pickle
from rayflume.errors import ConfigError
from rayflume.topology import Topology, validate

logger = logging.getLogger("rayflume.controller")
RECONCILE_INTERVAL_S = 1.0
# The names tests and scripts/bench_control_plane.py build a controller's instances with.
_Instance, _Managed = Instance, Managed


def controller_name(topology: str) -> str:
    return f"{topology}/controller"


def volume_key(topology: str) -> str:
    """The state store key of a topology's hourly volume (apart from the desired state: it is
    written on its own schedule, see rayflume._private.sampling)."""
    return f"{state_key(topology)}/volume"


def state_key(topology: str) -> str:
    """The key of a topology's desired state in the state store."""
    return f"topology/{topology}"


class TopologyController(InstanceLifecycle, pausing.PauseSwitch, StatusReports, Drain):
    def __init__(self, raw_topology: dict, store: StateStore | None = None):
        logs.configure()
        deployed = validate(raw_topology)
        self.name = deployed.name
        self.store: StateStore = store if store is not None else RayKVStore()
        self._state_key = state_key(self.name)
        self.state = "STARTING"
        self.events: deque = deque(maxlen=300)
        self.stopping = threading.Event()
        self._lock = threading.RLock()
        self.instances: dict[tuple[str, str], Instance] = {}
        self.waiting: dict[str, str] = {}
        # node-local channels whose node is gone: (tier, instance, channel) -> why (kept so status
        # and metrics keep saying so; stored with the desired state)
        self.lost_channels: dict[tuple[str, str, str], str] = {}
        self.deployed_at = time.time()
        self.home_node = ray.get_runtime_context().get_node_id()
        self._next_replica = 0
        self._actors: dict[str, tuple[str, int]] = {}  # GCS actor states as of the last listing
        self._stats = TickStats()  # what the reconcile loop's ticks cost (tick_stats())
        self._pushed: dict[tuple[str, str], list] = {}  # hop targets last pushed to every sender
        # The pause switch (rayflume._private.pausing): paused (tier, sink), the number of the last
        # change (stored), and per sink group actor the number it confirmed and the push it has not
        # answered yet.
        self.paused: set[tuple[str, str]] = set()
        self._pause_seq = 0
        self._pause_acked: dict[str, int] = {}
        self._pause_pending: dict[str, tuple[int, object]] = {}
        restarted = was_reconstructed()
        doc = self.store.get(self._state_key)
        # The alerts thread's state as last stored (see _store_alert_state), kept in the document
        self._alert_state: dict | None = (doc or {}).get("alerts")
        stored = None
        if doc is not None:
            try:
                doc = {**doc, "spec": spec_from_store(doc["spec"])}
                stored = validate(doc["spec"])
            except Exception as exc:  # written by another rayflume version, say: deploy what we were given
                self._event("controller", f"stored desired state unusable ({exc}); using the deployed topology")
                doc = None
        if stored is not None:
            # Restarted (or deployed again over a state a lost controller left): the stored version
            # is what was last deployed, whatever this actor's constructor arguments say.
            self.topology, self.version = stored, int(doc["version"])
            why = "controller restarted" if restarted else "found the state of an earlier controller"
            self._event("controller", f"{why}; reconciling to stored version {self.version} and re-attaching "
                                      f"to running components")
        else:
            self.topology, self.version = deployed, 1
            if restarted:
                self._event("controller", "controller restarted without stored state; re-attaching to running "
                                          "components")
            self._save()  # before acting on it
        with self._lock:
            self._restore(doc)
            self._reconcile_once()
            self._save()
            if stored is not None and not restarted and doc["spec"] != deployed.raw:
                self._update(deployed)  # a new deploy over an old state: the new deploy wins
        # The sampling and alerts threads (see the module docstring), started last; the metrics
        # endpoint reads the alerts' gauges from its start.
        self._history_pending: dict = {}  # actor id -> metrics() call not answered yet (_history_sample)
        self._sampler = Sampler(self.name, self._history_sample, lambda: self.topology, self.store,
                                volume_key(self.name), self.stopping, self._event)
        self._alerts = alerting.AlertsLoop(self.name, lambda: self.topology, self.status,
                                           lambda: self.state == "RUNNING", self._sampler.reading_volume,
                                           self.events, self._store_alert_state, self.stopping, self._alert_state)
        self.metrics_server = None
        self.metrics_note: str | None = None  # why metrics are not where the topology asked
        if self.topology.metrics_port is not None:
            self._start_metrics_server()
        self.state = "RUNNING"
        self._loop = threading.Thread(target=self._reconcile_loop, daemon=True, name="reconcile")
        self._loop.start()
        self._sampler.start()
        self._alerts.start()  # restored alerts are reported from the start

    def _start_metrics_server(self) -> None:
        """Serve metrics and health where the topology asks (see :class:`MetricsServer`). The token is
        read here, on the controller's node; when it cannot be, the endpoint is not started (never
        served without the token it was given)."""
        host, port = self.topology.metrics_host, self.topology.metrics_port
        try:
            token = resolve_token(self.topology.metrics_token, self.topology.metrics_token_file)
        except TokenUnavailable as exc:
            self.metrics_note = f"metrics endpoint not started on {host}:{port}: {exc}"
            self._event("controller", self.metrics_note)
            return

        def serve(on_port: int) -> MetricsServer:
            return MetricsServer(host, on_port, self.metrics, self.health_problems, token=token,
                                 labels={"topology": self.name}, export=self.topology.metrics_export)

        try:
            self.metrics_server = serve(port)
            self._event("controller", f"metrics at {self.metrics_url()}")
        except OSError as exc:
            # Another topology (or program) holds the port: serve on a free one and say so,
            # rather than run without metrics.
            asked = f"{host}:{port}"
            try:
                self.metrics_server = serve(0)
                self.metrics_note = (f"metrics port {asked} is taken ({exc.strerror or exc}); serving "
                                     f"metrics at {self.metrics_url()} instead. Set metrics.port to a free "
                                     f"port (0 picks one)")
            except OSError as exc2:
                self.metrics_note = (f"metrics endpoint not started on {asked}: {exc2}; set metrics.port "
                                     f"to a free port (0 picks one), or null to disable it")
            self._event("controller", self.metrics_note)
        if self.metrics_server is not None and token is None and not (
                host in ("localhost", "::1") or str(host).startswith("127.")):
            self._event("controller", f"metrics and health at {self.metrics_url()} need no token: anyone who can "
                                      f"reach {host} can read them; set metrics.token (e.g. ${{env:NAME}}) or "
                                      f"metrics.token_file")

    # -- durable desired state ---------------------------------------------------------------------
    def _save(self) -> None:
        """Store the desired state (spec and version), the instance map and the LOST records."""
        instances = [{"tier": i.tier, "instance": i.instance_id, "identity": i.identity, "node_id": i.node_id,
                      "components": {f"{k}/{n}": m.fingerprint for (k, n), m in i.components.items()}}
                     for i in list(self.instances.values())]
        lost = [{"tier": t, "instance": i, "channel": c, "why": why} for (t, i, c), why in self.lost_channels.items()]
        self._stats.gcs("kv_put")
        self.store.put(self._state_key, {
            "version": self.version, "spec": storable_spec(self.topology.raw), "deployed_at": self.deployed_at,
            "home_node": self.home_node, "next_replica": self._next_replica, "instances": instances, "lost": lost,
            pausing.DOC_KEY: pausing.pause_doc(self._pause_seq, self.paused),
            "alerts": self._alert_state})

    def _restore(self, doc: dict | None) -> None:
        """Re-attach to the instances ``doc`` lists; stop components the spec no longer has or whose
        config changed (a redeploy the previous controller did not finish)."""
        if not doc:
            return
        self.home_node = doc.get("home_node", self.home_node)
        self.deployed_at = doc.get("deployed_at", self.deployed_at)
        self._next_replica = doc.get("next_replica", 0)
        self._pause_seq, paused = pausing.pause_from_doc(doc)
        self.paused = {(t, s) for t, s in paused if t in self.topology.tiers and s in self.topology.tiers[t].sinks}
        for rec in doc.get("lost", []):
            self.lost_channels[(rec["tier"], rec["instance"], rec["channel"])] = rec["why"]
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        for rec in doc.get("instances", []):
            tier, instance_id = rec["tier"], rec["instance"]
            inst = Instance(tier, instance_id, rec.get("node_id"), rec.get("identity"))
            if tier in self.topology.tiers:
                self._plan(inst)
            stored = {tuple(key.split("/", 1)): fp for key, fp in rec.get("components", {}).items()}
            diff = planner.diff_components(stored, {k: m.fingerprint for k, m in inst.components.items()})
            for how, keys in (("removed from", diff.remove), ("changed in", diff.replace)):
                for kind, name in keys:
                    self._stop_named(inst, kind, name, how)
            if tier not in self.topology.tiers:
                continue
            self.instances[(tier, instance_id)] = inst
            # Components of an instance whose node is gone are not created again there: the
            # next tick reports the node lost.
            self._ensure_all(inst, create=inst.node_id is None or inst.node_id in alive)

    # -- reconcile --------------------------------------------------------------------------------
    def _reconcile_once(self) -> None:
        stats = self._stats
        stats.gcs("nodes")
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        stats.gcs("actor_table")
        self._actors = gcs.actor_table()  # one GCS listing per tick, not one call per component
        placed = [planner.Placed(i.tier, i.instance_id, i.node_id) for i in self.instances.values()]
        started = time.perf_counter()
        plan = planner.plan_instances(self.topology, nodes, placed, set(self.lost_channels), self._next_replica)
        stats.planner_s += time.perf_counter() - started
        self._next_replica = plan.next_replica
        for action in plan.actions:
            if not (isinstance(action, planner.Waiting) and self.waiting.get(action.tier) == action.message):
                stats.actions += 1  # one that changes something (a tier still waiting, or not, does not)
            self._apply(action)
        alive = {n["NodeID"] for n in nodes}
        for inst in list(self.instances.values()):
            if self.stopping.is_set():
                return
            self._reconcile_components(inst, alive)
        if plan.changes_instances:
            self._save()
        self._push_hop_targets()
        self._push_paused()

    def _apply(self, action) -> None:
        """Carry out one of the planner's instance actions."""
        if isinstance(action, planner.AddInstance):
            self._add_instance(action.tier, action.instance_id, action.node_id, action.identity)
        elif isinstance(action, planner.DropInstance):
            self._drop_instance(self.instances[(action.tier, action.instance_id)], action.why)
        elif isinstance(action, planner.MarkLost):
            self.lost_channels[(action.tier, action.instance_id, action.channel)] = action.why
        elif isinstance(action, planner.ClearLost):
            self.lost_channels.pop((action.tier, action.instance_id, action.channel), None)
        elif isinstance(action, planner.Waiting):
            if action.message is None:
                self.waiting.pop(action.tier, None)
            elif self.waiting.get(action.tier) != action.message:
                self.waiting[action.tier] = action.message
                self._event(action.tier or "topology", action.message)
        elif isinstance(action, planner.Note):
            self._event(action.component, action.message)
        else:
            raise TypeError(f"unknown action {action!r}")

    def _reconcile_loop(self) -> None:
        while not self.stopping.wait(RECONCILE_INTERVAL_S):
            try:
                with self._lock:
                    if not self.stopping.is_set():
                        started = self._stats.begin()
                        try:
                            self._reconcile_once()
                        finally:
                            self._stats.end(started)
            except Exception:
                logger.exception("topology '%s': reconcile tick failed", self.name)

    def tick_stats(self) -> dict:
        """What the reconcile loop's last 100 ticks cost (see :class:`TickStats`): ``ticks`` (since
        this controller started), per tick oldest first ``tick_ms``, ``planner_ms``,
        ``actions_per_tick``, ``gcs_calls_per_tick`` and ``gcs_calls_by_kind_per_tick``, and
        ``gcs_calls_by_kind`` summed over those ticks."""
        return self._stats.report()

    # -- the alerts and sampling threads -------------------------------------------------------------
    def alerts_report(self) -> dict:
        """``{"name", "rules", "firing": [...], "recent": [...]}``: the firing alerts and the last
        transitions (oldest first); empty lists when the topology has no alert rules."""
        return {"name": self.name, **self._alerts.report()}

    def _store_alert_state(self, state: dict) -> None:
        """Store the alerts thread's new state with the desired state, so that a restarted controller
        keeps firing alerts firing."""
        with self._lock:
            self._alert_state = state
            if not self.stopping.is_set():
                self._save()

    def _history_sample(self) -> list[tuple[tuple, dict]]:
        """One sample of the components' counters for the sampling thread (see
        :func:`~rayflume._private.sampling.sample_counters`); calls not answered yet wait for the next."""
        sample, self._history_pending = sample_counters(self.instances, self._history_pending)
        return sample

    def volume(self, days: float = 8, by_header: bool = False):
        """The hourly volume of the last ``days`` days as a pyarrow Table (:meth:`Sampler.volume`)."""
        return self._sampler.volume(days, by_header)

    def history(self, window_s: float = 300.0):
        """The counters sampled in the last ``window_s`` seconds as a pyarrow Table (:meth:`Sampler.history`)."""
        return self._sampler.history(window_s)

    def _event(self, component: str, message: str) -> None:
        logger.info("topology '%s': %s: %s", self.name, component, message)
        self.events.append({"time": time.time(), "component": component, "message": message})

    # -- redeploy -------------------------------------------------------------------------------
    def update(self, raw_topology: dict) -> dict:
        """Move to a new configuration; components whose config did not change keep running.

        The new spec is stored under the next version before anything changes: a controller that
        dies during the update finishes it after its restart. The runtime_env cannot change: the
        controller and the components it creates keep the environment they were started in."""
        asked = raw_topology.get("runtime_env") if isinstance(raw_topology, dict) else None
        running = self.topology.raw.get("runtime_env")
        if (asked or None) != (running or None):
            raise ConfigError([f"runtime_env: differs from the one topology '{self.name}' runs with ({running!r}); "
                               f"the environment of a running topology's actors is set when it is first deployed. "
                               f"Stop the topology (rayflume stop {self.name}), then deploy it again"],
                              topology=self.name)
        new = validate(raw_topology)
        if new.name != self.name:
            raise ValueError(f"topology '{new.name}' cannot update topology '{self.name}'")
        with self._lock:
            return self._update(new)

    def _update(self, new: Topology) -> dict:
        old_handles = {(t, i, k): m.handle for (t, i), inst in list(self.instances.items())
                       for k, m in inst.components.items()}
        self.topology = new
        self.version += 1
        server = getattr(self, "metrics_server", None)  # None yet when a deploy replaces a stored state
        if server is not None:  # the endpoint follows metrics.export at once
            server.exported_counters = frozenset(new.metrics_export) if new.metrics_export is not None else None
        # a paused sink the new version no longer has is forgotten (a sink added again later runs)
        kept_paused = {(t, s) for t, s in self.paused if t in new.tiers and s in new.tiers[t].sinks}
        if kept_paused != self.paused:
            self.paused, self._pause_seq = kept_paused, self._pause_seq + 1
        self._save()
        for (tier_name, _), inst in list(self.instances.items()):
            if tier_name not in new.tiers:
                self._drop_instance(inst, "tier removed by redeploy")
        for key in [k for k in self.lost_channels if k[0] not in new.tiers]:
            del self.lost_channels[key]  # nothing will replay them: the tier is gone
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
            for kind in planner.KINDS:
                for managed in inst.components.values():
                    if managed.kind == kind and managed.handle is None:
                        managed.handle = self._create(inst, managed)
        self._reconcile_once()
        self._save()
        self._event("controller", f"redeployed as version {self.version}: {kept} component(s) kept, "
                                  f"{replaced} replaced")
        return {"kept": kept, "replaced": replaced}

    # -- queries ----------------------------------------------------------------------------------
    def hop_targets(self, tier: str, source: str | None = None) -> list:
        """``[(instance id, source actor handle)]`` of the live instances of ``tier`` (asked by a
        ``rayflume`` sink when it starts or when every target failed; changes are pushed)."""
        tier_cfg = self.topology.tiers.get(tier)
        if tier_cfg is None:
            return []
        if source is None:
            source = planner.receiving_source(tier_cfg)
        out = []
        for inst in sorted(list(self.instances.values()), key=lambda i: i.instance_id):
            managed = inst.components.get(("SOURCE", source)) if inst.tier == tier else None
            if managed is not None and managed.handle is not None:
                # from the last tick's listing; an actor created since is not listed yet (UNKNOWN)
                if self._state_of(managed.handle)[0] in ("ALIVE", "RESTARTING", "PENDING_CREATION", "UNKNOWN"):
                    out.append((inst.instance_id, managed.handle))
        return out

    def _push_hop_targets(self) -> None:
        """Push each receiving tier's live targets to the sink groups that send there, when they
        changed since the last push that reached every sender (a failed push is retried next tick;
        a sink group that starts later asks for them itself)."""
        for (tier, source), senders in planner.hop_sources(self.topology).items():
            targets = self.hop_targets(tier, source)
            signature = [(i, h._actor_id.hex()) for i, h in targets]
            if self._pushed.get((tier, source)) == signature:
                continue
            refs = [m.handle.set_hop_targets.remote(tier, source, targets)
                    for inst in list(self.instances.values()) for sender_tier, group in senders
                    if inst.tier == sender_tier
                    for m in [inst.components.get(("SINK", group))] if m is not None and m.handle is not None]
            try:
                ray.get(refs, timeout=CALL_TIMEOUT_S)
            except Exception as exc:
                logger.info("topology '%s': hop targets of tier '%s' not pushed to every sender (%s); "
                            "retrying next tick", self.name, tier, describe(exc))
                continue
            self._pushed[(tier, source)] = signature

    def raw_topology(self) -> dict:
        return self.topology.raw

    def logs(self, lines: int = 100) -> list[str]:
        """The controller's last log lines (since its last restart)."""
        return logs.recent(lines)

    def ping(self) -> str:
        return self.state

    def pid(self) -> int:
        """The controller's process id (tests kill it to check it restarts into its stored state)."""
        return os.getpid()


RemoteController = ControllerActorClass(ray.remote(TopologyController))


# Every Ray cluster's head node carries this resource; the controller lives there (as Ray Serve's
# does): the head holds the GCS, so the cluster and its controller stand or fall together.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def controller_options(topology: str) -> dict:
    return dict(name=controller_name(topology), namespace=NAMESPACE, lifetime="detached",
                max_restarts=-1, max_task_retries=0, max_concurrency=16, num_cpus=0,
                resources={HEAD_NODE_RESOURCE: 0.001})
