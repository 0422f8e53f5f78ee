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

User code: a topology's ``runtime_env`` (working_dir, py_modules, pip, env_vars) is the Ray
runtime environment of its controller, and so of every component actor, which inherits the
environment of the actor that creates it. :data:`RemoteController` applies it when the controller
is started: the deploying process uploads the local directories to the cluster (Ray accepts only
URIs in an actor's options) and merges the result with the options it was given (``deploy
--log-level`` sets ``env_vars``; those win per variable). A topology without one sets none, so its
actors keep using Ray's pre-started workers. The environment is fixed for the controller's life: a
redeploy that changes it is refused (stop, then deploy). A component's ``type`` may be a config
class object (from Python): it reaches the actors pickled with their arguments, and is kept in the
stored spec pickled too (:func:`storable_spec`).

Each tick reads the cluster twice: ``ray.nodes()`` and one listing of the GCS actor table
(:mod:`rayflume._private.gcs`), whatever the number of components; ``hop_targets`` answers from
the last tick's listing. An unhandled exception must never stop the loop: each tick is guarded
and logged. ``tick_stats()`` reports what the last ticks cost (:class:`TickStats`).

History (``handle.history()``/``plot()``): a thread of its own samples the components' counters
every :func:`~rayflume._private.history.history_interval_s` into a bounded, in-memory
:class:`~rayflume._private.history.MetricsHistory`, waiting at most ``HISTORY_CALL_TIMEOUT_S`` a
sample and never asking an actor again before it answered, so neither a slow sample nor a dead
actor delays a reconcile tick. It starts anew when the controller restarts.

Pause switch (``pause``/``resume``, :mod:`rayflume._private.pausing`): the paused sinks, as
``(tier, sink)`` with a change number, are part of the stored document and are stored before any
actor is told. Every instance of the sink's tier is paused. Each tick pushes the state to the sink
groups that have not confirmed the current number (the calls are not waited for: one that has not
answered is looked at next tick), so a restarted controller re-pushes it on its first tick; a sink
group reads the stored state itself when it starts, before its sinks take anything.

Alerts (:mod:`rayflume._private.alerts`): a thread of its own evaluates the topology's rules every
ALERT_INTERVAL_S on a fresh ``status()`` at wall-clock time (so pending-since times mean the same
after a restart); a slow or hung component delays that thread, never a reconcile tick. Each
transition is logged (warning), added to the events, and queued for the webhook's thread. The
evaluator's state is part of the stored document, written when it changes: a restarted controller
keeps firing alerts firing without notifying them again.
"""
from __future__ import annotations

import base64
import logging
import os
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rayflume import registry
from rayflume._private import alerts as alerting
from rayflume._private import gcs, logs, pausing, planner
from rayflume._private.actors import (
    NAMESPACE,
    RemoteChannel,
    RemoteSinkGroup,
    RemoteSource,
    actor_options,
    was_reconstructed,
)
from rayflume._private.history import MetricsHistory, history_interval_s
from rayflume._private.metrics import MetricsServer, TokenUnavailable, flume_shape, resolve_token
from rayflume._private.planner import KINDS, instance_label
from rayflume._private.state_store import RayKVStore, StateStore
from rayflume._private.tick_stats import TickStats
from rayflume._private.volume import HourlyVolume, hour_of, strip_volume
from rayflume.errors import ConfigError
from rayflume.topology import Topology, merge_runtime_envs, validate

logger = logging.getLogger("rayflume.controller")
RECONCILE_INTERVAL_S = 1.0
CALL_TIMEOUT_S = 10.0
# A history sample waits this long for the components' counters, all calls together: one that
# has not answered by then (dead, restarting, busy) is left out of that sample.
HISTORY_CALL_TIMEOUT_S = 1.0
# pause/resume waits this long for the sink groups to confirm before it answers (they are told
# again every tick after that, and read the stored state when they start)
PAUSE_CONFIRM_S = 5.0
# How often the alert rules are evaluated, in a thread of their own (one status() each time).
ALERT_INTERVAL_S = 1.0
ALERT_CALL_TIMEOUT_S = 0.5  # how long an alert evaluation waits for the components' answers, in all
KIND_KEY = {"CHANNEL": "channel", "SOURCE": "source", "SINK": "sinks"}
# The hourly volume is stored at most this often (and whenever the hour changes): a controller
# crash loses nothing (the baselines are stored with the counts) but the attribution to hours of
# what was counted since the last save.
VOLUME_SAVE_EVERY_S = 30.0


def _describe(exc: BaseException) -> str:
    """``Type: first line`` of an exception, of the original one for an error raised in an actor."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else 'no message'}"


def _kill(handle) -> None:
    """End an actor for good; one that is gone already (or never was) is fine."""
    if handle is None:
        return
    try:
        ray.kill(handle, no_restart=True)
    except Exception as exc:
        logger.info("kill of an actor failed (gone already?): %s", _describe(exc))


def controller_name(topology: str) -> str:
    return f"{topology}/controller"


def volume_key(topology: str) -> str:
    """The state store key of a topology's hourly volume (apart from the desired state: it is
    written on its own schedule, see VOLUME_SAVE_EVERY_S)."""
    return f"{state_key(topology)}/volume"


def state_key(topology: str) -> str:
    """The key of a topology's desired state in the state store."""
    return f"topology/{topology}"


def _metric_key(tier: str, instance_id: str, kind: str, name: str) -> tuple[str, str]:
    return (kind, f"{tier}.{instance_id}.{name}" if tier else name)


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
    died_at: float | None = None  # when a tick last saw it restarted or dead (epoch s), for alerts

    @property
    def restarts(self) -> int:
        return self.restarts_before + self.last_restarts + self.replacements

    @property
    def fingerprint(self) -> str:
        return planner.fingerprint(self.raw)


@dataclass
class _Instance:
    tier: str
    instance_id: str
    node_id: str | None  # None: placed by Ray (single tier)
    identity: str | None = None  # the machine's identity (per_node tiers)
    components: dict = field(default_factory=dict)  # (kind, name) -> _Managed

    @property
    def scope(self) -> str:
        """Prefix of actor names and metric keys ("" for a single-tier topology)."""
        return f"{self.tier}/{self.instance_id}" if self.tier else ""

    def label(self) -> str:
        return instance_label(self.tier, self.instance_id)


class TopologyController:
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
        self.instances: dict[tuple[str, str], _Instance] = {}
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
        # The pause switch: paused (tier, sink), the number of the last change (stored), and per
        # sink group actor the number it confirmed and the push it has not answered yet.
        self.paused: set[tuple[str, str]] = set()
        self._pause_seq = 0
        self._pause_acked: dict[str, int] = {}
        self._pause_pending: dict[str, tuple[int, object]] = {}
        # Alerts (rayflume._private.alerts): the evaluator, built by the alerts thread from the
        # topology's rules; until then the stored alert state is kept as read, so a _save before
        # it exists does not forget what was firing.
        self.alerts: alerting.AlertEvaluator | None = None
        self._alerts_config = None
        self._alerts_lock = threading.Lock()
        self._alert_sender: alerting.WebhookSender | None = None
        self._alert_state: dict | None = None
        self._alert_saved: dict | None = None
        restarted = was_reconstructed()
        doc = self.store.get(self._state_key)
        self._alert_state = (doc or {}).get("alerts")
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
        self.metrics_server = None
        self.metrics_note: str | None = None  # why metrics are not where the topology asked
        if self.topology.metrics_port is not None:
            self._start_metrics_server()
        self.state = "RUNNING"
        self._loop = threading.Thread(target=self._reconcile_loop, daemon=True, name="reconcile")
        self._loop.start()
        # The counters' time series (handle.history()/plot()): in memory, so it starts anew when
        # Ray restarts this controller; sampled by a thread of its own so that slow components
        # never delay a reconcile tick (see rayflume._private.history).
        self.history_interval_s = history_interval_s()
        self._history = MetricsHistory()
        self._history_pending: dict = {}  # actor id -> metrics() call not answered yet
        # Hourly volume per source (and header value): fed by the history thread, stored on its own
        # key so that it survives a controller restart (see rayflume._private.volume).
        self._volume_key = volume_key(self.name)
        self.volume_store = HourlyVolume(self.topology.volume_header, max_values=self.topology.volume_max_values)
        try:
            self.volume_store.restore(self.store.get(self._volume_key))
        except Exception as exc:  # unreadable: count afresh rather than not start
            self._event("controller", f"stored hourly volume unusable ({exc}); counting afresh")
        self._volume_lock = threading.Lock()  # the history thread writes, volume() reads
        self._volume_saved_at = time.monotonic()
        self._volume_saved_hour = hour_of(time.time())
        self._sampler = threading.Thread(target=self._history_loop, daemon=True, name="history")
        self._sampler.start()
        self._configure_alerts(self.topology.alerts)  # restored alerts are reported from the start
        self._alerter = threading.Thread(target=self._alerts_loop, daemon=True, name="alerts")
        self._alerter.start()

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
            inst = _Instance(tier, instance_id, rec.get("node_id"), rec.get("identity"))
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

    def _stop_named(self, inst: _Instance, kind: str, name: str, how: str) -> None:
        """Stop the running actor of a component whose config is not the stored spec's."""
        try:
            handle = ray.get_actor(self._actor_name(inst, _Managed(kind, name, None)), namespace=NAMESPACE)
        except ValueError:
            return
        self._stop_and_kill(handle)
        self._event(inst.label(), f"{kind.lower()} '{name}' stopped: {how} version {self.version}")

    # -- instances ------------------------------------------------------------------------------
    def _add_instance(self, tier_name: str, instance_id: str, node_id: str | None,
                      identity: str | None = None) -> _Instance:
        inst = _Instance(tier_name, instance_id, node_id, identity)
        self.instances[(tier_name, instance_id)] = inst
        self._plan(inst)
        self._ensure_all(inst, create=True)
        where = f" on node {node_id[:12]}" if node_id else ""
        self._event(inst.label(), f"instance started{where}")
        return inst

    def _ensure_all(self, inst: _Instance, create: bool) -> None:
        for kind in KINDS:
            for managed in inst.components.values():
                if managed.kind == kind:
                    self._ensure(inst, managed, create_if_missing=create)

    def _plan(self, inst: _Instance) -> None:
        """The instance's components, from the tier's config (keeping those whose config is the same)."""
        old = inst.components
        new = {}
        for key, raw in planner.component_configs(self.topology.tiers[inst.tier]).items():
            if key[0] == "SOURCE" and self.topology.volume_header:
                # a source counts the header's values: a redeploy that changes it recreates the
                # source (only when set, so other topologies keep their fingerprints)
                raw = (raw, {"volume": [self.topology.volume_header, self.topology.volume_max_values]})
            prev = old.get(key)
            new[key] = prev if prev is not None and prev.raw == raw else _Managed(key[0], key[1], raw)
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

    def _ensure(self, inst: _Instance, managed: _Managed, create_if_missing: bool) -> None:
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
            pass
        if create_if_missing:
            managed.handle = self._create(inst, managed)
            self._event(inst.label(), f"{managed.kind.lower()} '{managed.name}' created")

    def _drop_instance(self, inst: _Instance, why: str) -> None:
        for managed in inst.components.values():
            if managed.handle is not None:
                self._stats.gcs("kill")
            _kill(managed.handle)
        self.instances.pop((inst.tier, inst.instance_id), None)
        self._event(inst.label(), why)

    # -- reconcile --------------------------------------------------------------------------------
    def _state_of(self, handle) -> tuple[str, int]:
        """(state, restarts) of an actor as of the last listing (UNKNOWN: not listed then)."""
        if handle is None:
            return gcs.UNKNOWN
        return self._actors.get(handle._actor_id.hex(), gcs.UNKNOWN)

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

    def _reconcile_components(self, inst: _Instance, alive: set) -> None:
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

    # -- alerts -------------------------------------------------------------------------------------
    def _alerts_loop(self) -> None:
        """Evaluates the alert rules every ALERT_INTERVAL_S on a fresh ``status()``, in this thread
        so that neither slow components nor webhook delivery delay a reconcile tick."""
        next_at = time.monotonic() + ALERT_INTERVAL_S
        # At a fixed rate: a slow evaluation does not stretch the time to notice a death.
        while not self.stopping.wait(max(0.0, next_at - time.monotonic())):
            next_at = max(next_at + ALERT_INTERVAL_S, time.monotonic())
            try:
                self._alerts_tick()
            except Exception:
                logger.exception("topology '%s': alert evaluation failed", self.name)

    def _configure_alerts(self, config) -> None:
        """(Re)build the evaluator for ``config`` (a deploy or redeploy), keeping the state of the
        rules it still has (see AlertEvaluator: firing ones stay firing, not notified again)."""
        sink_channels = {(tier_name, sink): getattr(cfg, "channel", None)
                         for tier_name, tier in self.topology.tiers.items() for sink, cfg in tier.sinks.items()}
        with self._alerts_lock:
            state = self.alerts.to_dict() if self.alerts is not None else self._alert_state
            self.alerts = alerting.AlertEvaluator(config.rules, sink_channels, state) if config else None
            self._alerts_config = config
            old, self._alert_sender = self._alert_sender, None
            if config is not None and config.webhook is not None:
                self._alert_sender = alerting.WebhookSender(config.webhook, label=f"topology '{self.name}': ")
        if old is not None:
            old.close()

    def _alerts_tick(self) -> None:
        if self.topology.alerts is not self._alerts_config:
            self._configure_alerts(self.topology.alerts)
        if self.alerts is None or self.state != "RUNNING":
            return
        # A replacement actor still starting would hold a full status up for seconds; its state
        # (from the GCS) is what component_down needs, so the answers are waited for briefly.
        status = self.status(call_timeout_s=ALERT_CALL_TIMEOUT_S)
        with self._alerts_lock, self._volume_lock:  # the history thread feeds the volume
            transitions = self.alerts.evaluate(status, time.time(), self.volume_store)
            state = self.alerts.to_dict()
        for alert in transitions:
            message = f"alert {alert['rule']} {alert['state'].upper()}: {alert['message']}"
            logger.warning("topology '%s': %s", self.name, message)
            self.events.append({"time": alert["time"], "component": "alerts", "message": message})
            if self._alert_sender is not None:
                self._alert_sender.send({**alert, "topology": self.name})
        if state != self._alert_saved:
            # Stored with the desired state, so a restarted controller keeps firing alerts firing.
            with self._lock:
                self._alert_state = state
                if not self.stopping.is_set():
                    self._save()
            self._alert_saved = state

    def alerts_report(self) -> dict:
        """``{"name", "rules", "firing": [...], "recent": [...]}``: the firing alerts and the last
        transitions (oldest first); empty lists when the topology has no alert rules."""
        with self._alerts_lock:
            report = self.alerts.report() if self.alerts is not None else {"firing": [], "recent": []}
            rules = [r.__dict__ for r in self._alerts_config.rules] if self._alerts_config else []
        return {"name": self.name, "rules": rules, **report}

    # -- history ------------------------------------------------------------------------------------
    def _history_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                sample = self._history_sample()
                self._observe_volume(sample)
                self._history.record([(key, strip_volume(counters)) for key, counters in sample])
            except Exception:
                logger.exception("topology '%s': history sample failed", self.name)
            self.stopping.wait(self.history_interval_s)

    def _history_sample(self) -> list[tuple[tuple, dict]]:
        """``[(tier, instance, kind, component), counters]`` of the components that answered
        ``metrics()`` within HISTORY_CALL_TIMEOUT_S (all calls together), a sink group as its
        sinks, each with its ``Restarts`` as of the last tick (no listing of Ray's actors here).

        At most one call per actor is outstanding: an actor that has not answered the previous
        one (stuck, or its node gone) is not asked again until it does, so calls cannot pile up
        in its queue. Reads the instances without the reconcile lock, as ``status()`` does.
        """
        asked = []  # (instance, kind, name, managed, ref) in status order
        outstanding = {}
        for inst in sorted(list(self.instances.values()), key=lambda i: (i.tier, i.instance_id)):
            for (kind, name), managed in list(inst.components.items()):
                if managed.handle is None or managed.lost:
                    continue
                actor = managed.handle._actor_id
                ref = self._history_pending.get(actor)
                if ref is None:
                    ref = managed.handle.metrics.remote()
                outstanding[actor] = ref
                asked.append((inst, kind, name, managed, ref))
        refs = list(outstanding.values())
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=HISTORY_CALL_TIMEOUT_S)[0]) if refs else set()
        # replaced or removed actors drop out of the pending calls here
        self._history_pending = {actor: ref for actor, ref in outstanding.items() if ref not in ready}
        components = []
        for inst, kind, name, managed, ref in asked:
            if ref not in ready:
                continue
            try:
                result = ray.get(ref, timeout=0)
            except Exception:  # died or failed: nothing to record this time
                continue
            if not isinstance(result, dict):
                continue
            per_sink = result.items() if kind == "SINK" else [(name, result)]
            for component, counters in per_sink:
                if isinstance(counters, dict):
                    components.append(((inst.tier, inst.instance_id, kind, component),
                                       {**counters, "Restarts": managed.restarts}))
        return components

    def _observe_volume(self, sample: list) -> None:
        """Feed the sources' counters to the hourly volume; store it every VOLUME_SAVE_EVERY_S and
        when the hour changes (not every sample: one GCS write per 30 s at most, normally)."""
        with self._volume_lock:
            if (self.topology.volume_header, self.topology.volume_max_values) != \
                    (self.volume_store.header, self.volume_store.max_values):
                # redeployed with another volume setting: keep the per-source hours (and the values
                # of the same header), on the new setting
                self.volume_store = HourlyVolume.from_doc(self.volume_store.to_doc(),
                                                          header=self.topology.volume_header,
                                                          max_values=self.topology.volume_max_values)
            for (tier, instance, kind, component), counters in sample:
                if kind == "SOURCE":
                    self.volume_store.observe(tier, instance, component, counters)
        hour = hour_of(time.time())
        if hour != self._volume_saved_hour or time.monotonic() - self._volume_saved_at >= VOLUME_SAVE_EVERY_S:
            self._save_volume()

    def _save_volume(self) -> None:
        if self.stopping.is_set():
            return  # stop() deletes it
        with self._volume_lock:
            doc = self.volume_store.to_doc()
        self.store.put(self._volume_key, doc)
        self._volume_saved_at, self._volume_saved_hour = time.monotonic(), hour_of(time.time())

    def volume(self, days: float = 8, by_header: bool = False):
        """The hourly volume of the last ``days`` days as a pyarrow Table (see
        :meth:`rayflume._private.volume.HourlyVolume.table`; the header column is ``header_value``)."""
        with self._volume_lock:
            return self.volume_store.table(float(days), bool(by_header), header_column="header_value")

    def history(self, window_s: float = 300.0):
        """The counters sampled in the last ``window_s`` seconds as a pyarrow Table, one row per
        (sample time, component) with rates between samples (see
        :meth:`rayflume._private.history.MetricsHistory.table`)."""
        return self._history.table(float(window_s))

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
            for kind in KINDS:
                for managed in inst.components.values():
                    if managed.kind == kind and managed.handle is None:
                        managed.handle = self._create(inst, managed)
        self._reconcile_once()
        self._save()
        self._event("controller", f"redeployed as version {self.version}: {kept} component(s) kept, "
                                  f"{replaced} replaced")
        return {"kept": kept, "replaced": replaced}

    @staticmethod
    def _stop_and_kill(handle) -> None:
        try:
            ray.get(handle.stop.remote(), timeout=60)
        except Exception as exc:  # dead or hung: it is killed next either way
            logger.info("component stop failed before its kill: %s", _describe(exc))
        _kill(handle)

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
                            "retrying next tick", self.name, tier, _describe(exc))
                continue
            self._pushed[(tier, source)] = signature

    # -- the pause switch -----------------------------------------------------------------------------
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
            tiers = pausing.sink_tiers(self.topology, sink, tier)
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
                            self.name, _describe(exc))
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
                sink_counters = metrics.get(".".join(self._metric_key(inst, "SINK", sink)), {})
                channel_counters = metrics.get(".".join(self._metric_key(inst, "CHANNEL", channel)), {})
                size = channel_counters.get("ChannelSize")
                per_instance[inst.label()] = {"applied": sink_counters.get("Paused") == "1",
                                              "backlog": int(size) if str(size or "").isdigit() else None}
            out.append({"tier": tier_name, "sink": sink, "channel": channel, "instances": per_instance})
        return out

    def _metric_key(self, inst: _Instance, kind: str, name: str) -> tuple[str, str]:
        return _metric_key(inst.tier, inst.instance_id, kind, name)

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
                        reports[self._metric_key(inst, kind, n)] = extra
                elif kind == "SINK":
                    for n, counters in result.items():
                        reports[self._metric_key(inst, kind, n)] = {**counters, **extra}
                else:
                    reports[self._metric_key(inst, kind, name)] = {**result, **extra}
        for tier, instance_id, channel in self.lost_channels:
            reports[_metric_key(tier, instance_id, "CHANNEL", channel)] = {"ChannelLost": 1, "Unhealthy": 1}
        if self.alerts is not None:
            with self._alerts_lock:  # AlertFiring_<rule>: how many components the rule fires for
                reports[("CONTROLLER", "alerts")] = self.alerts.gauges()
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
                    problems[".".join(self._metric_key(inst, kind, n))] = why
        for (tier_name, instance_id, channel), why in list(self.lost_channels.items()):
            problems[".".join(_metric_key(tier_name, instance_id, "CHANNEL", channel))] = f"LOST: {why}"
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
                                "lost": {_metric_key(t, i, "CHANNEL", c)[1]: why
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

    def raw_topology(self) -> dict:
        return self.topology.raw

    # -- stop ---------------------------------------------------------------------------------------
    def stop(self, drain_timeout_s: float = 30.0) -> dict:
        """Drain tier by tier, from the first to the last: stop a tier's sources, let its sinks
        empty its live channels (up to ``drain_timeout_s`` in all), stop its sinks; then remove
        every actor. Returns ``undrained`` (events left in live channels), ``not_drained`` (channels
        that could not be drained at all, with why: dead, unreachable, not open, lost with a node)
        and the final metrics."""
        with self._lock:
            self.state = "STOPPING"
            self.stopping.set()
            deadline = time.monotonic() + drain_timeout_s
            left: dict = {}
            not_drained: dict = {key[1]: f"LOST: {why}" for key, why in self.lost_channels.items()}
            for tier in planner.drain_order(self.topology):
                insts = [i for i in list(self.instances.values()) if i.tier == tier]
                self._event(tier or "topology", "stopping: sources first, then draining the channels")
                self._call_all(insts, "SOURCE", "stop")
                sizes, unavailable, pending = self._channel_sizes(insts)
                # A channel restarting after a crash is waited for as a non-empty one: its sinks
                # drain it once it is back.
                while (sum(sizes.values()) > 0 or pending) and time.monotonic() < deadline:
                    time.sleep(0.1)  # the poll interval of this drain wait, bounded by the deadline
                    sizes, unavailable, pending = self._channel_sizes(insts)
                unavailable.update(pending)
                if sum(sizes.values()):
                    self._event(tier or "topology", f"drain timed out; events left in channels: {sizes}")
                for label, why in unavailable.items():
                    self._event(tier or "topology", f"channel {label} not drained: {why}")
                left.update(sizes)
                not_drained.update(unavailable)
                self._call_all(insts, "SINK", "stop")
            final_metrics = self.metrics()
            self._call_all(list(self.instances.values()), "CHANNEL", "stop")
            for inst in list(self.instances.values()):
                for managed in inst.components.values():
                    _kill(managed.handle)
            if self.metrics_server is not None:
                self.metrics_server.close()
            if self._alert_sender is not None:
                self._alert_sender.close()
            try:
                self.store.delete(self._state_key)
                self.store.delete(self._volume_key)
            except Exception:
                logger.exception("topology '%s': could not delete its stored state", self.name)
            self.state = "STOPPED"
            return {"undrained": left, "not_drained": not_drained, "final_metrics": final_metrics}

    def _call_all(self, insts, kind: str, method: str) -> None:
        refs = [getattr(m.handle, method).remote() for i in insts for (k, _), m in i.components.items()
                if k == kind and m.handle is not None]
        for ref in refs:
            try:
                ray.get(ref, timeout=60)
            except Exception as exc:
                self._event("controller", f"{kind.lower()} {method} failed: {type(exc).__name__}")

    def _channel_sizes(self, insts) -> tuple[dict, dict, dict]:
        """``({label: events queued}, {label: why it cannot be drained}, {label: why it cannot be
        asked now})`` of the instances' channels. The second are not worth waiting for: no sink
        drains a dead or lost channel, or one whose sinks are all paused (a durable one keeps its
        events on its node for a later deploy), nor one that failed to open (it says why and keeps
        retrying). The third may answer soon: an actor restarting after a crash (recovering its
        log), a call that timed out."""
        sizes, unavailable, pending = {}, {}, {}
        for inst in insts:
            for (kind, name), m in inst.components.items():
                if kind != "CHANNEL":
                    continue
                label = f"{inst.tier}.{inst.instance_id}.{name}" if inst.tier else name
                if m.lost:
                    unavailable[label] = f"LOST: {m.lost}"
                    continue
                try:
                    size = ray.get(m.handle.size.remote(), timeout=CALL_TIMEOUT_S)
                except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError) as exc:
                    pending[label] = _describe(exc)
                    continue
                except Exception as exc:
                    unavailable[label] = _describe(exc)
                    continue
                drainers = [s for s, cfg in self.topology.tiers[inst.tier].sinks.items() if cfg.channel == name]
                if size and drainers and all((inst.tier, s) in self.paused for s in drainers):
                    # not waited for: draining into a paused sink would undo the pause
                    unavailable[label] = (f"{size} event(s) kept: drained only by paused sink(s) "
                                          f"{', '.join(drainers)}; resume them before stopping to drain it")
                else:
                    sizes[label] = size
        return sizes, unavailable, pending

    def logs(self, lines: int = 100) -> list[str]:
        """The controller's last log lines (since its last restart)."""
        return logs.recent(lines)

    def ping(self) -> str:
        return self.state

    def pid(self) -> int:
        """The controller's process id (tests kill it to check it restarts into its stored state)."""
        return os.getpid()


# -- the controller's runtime environment ------------------------------------------------------------
_CLASS_KEY = "__rayflume_class__"


def storable_spec(value):
    """A topology mapping as the state store keeps it (JSON): a config class given as a component's
    ``type`` from Python is pickled (by value when defined in a notebook or ``__main__``), in a
    mapping that also names it."""
    if isinstance(value, type):
        pickled = base64.b64encode(ray.cloudpickle.dumps(value)).decode("ascii")
        return {_CLASS_KEY: pickled, "name": registry.type_label(value)}
    if isinstance(value, dict):
        return {k: storable_spec(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable_spec(v) for v in value]
    return value


def spec_from_store(value):
    """The topology mapping :func:`storable_spec` stored, with its classes unpickled."""
    if isinstance(value, dict):
        if set(value) == {_CLASS_KEY, "name"}:
            return ray.cloudpickle.loads(base64.b64decode(value[_CLASS_KEY]))
        return {k: spec_from_store(v) for k, v in value.items()}
    if isinstance(value, list):
        return [spec_from_store(v) for v in value]
    return value


def upload_runtime_env(runtime_env: dict) -> dict:
    """``runtime_env`` with its local ``working_dir`` and ``py_modules`` uploaded to the connected
    cluster and replaced by their ``gcs://`` URIs (an actor's options take URIs only); URIs and the
    other keys are kept. Runs in the deploying process, where the paths are. A local path that is
    not there is a ConfigError naming it."""
    env = dict(runtime_env)
    problems = []
    working_dir = env.get("working_dir")
    if isinstance(working_dir, str) and "://" not in working_dir:
        env["working_dir"] = os.path.abspath(os.path.expanduser(working_dir))
        if not os.path.isdir(env["working_dir"]):
            problems.append(f"runtime_env.working_dir: {working_dir!r} is not a directory here, where the topology "
                            f"is deployed from; give the directory holding your modules (a relative path is "
                            f"relative to the topology file)")
    if isinstance(env.get("py_modules"), list):
        modules = []
        for i, entry in enumerate(env["py_modules"]):
            if isinstance(entry, str) and "://" not in entry:
                entry = os.path.abspath(os.path.expanduser(entry))
                if not (os.path.isdir(entry) or (entry.endswith(".py") and os.path.isfile(entry))):
                    problems.append(f"runtime_env.py_modules[{i}]: {env['py_modules'][i]!r} is neither a package "
                                    f"directory nor a .py file here, where the topology is deployed from; fix "
                                    f"the path (a relative path is relative to the topology file)")
            modules.append(entry)
        env["py_modules"] = modules
    if problems:
        raise ConfigError(problems)
    if "working_dir" not in env and "py_modules" not in env:
        return env
    from ray._private import ray_constants
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    worker = ray._private.worker.global_worker
    try:
        scratch_dir = worker.node.get_runtime_env_dir_path()
    except Exception:  # connected without a local node object: any local directory will do
        scratch_dir = tempfile.gettempdir()
    include_gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    env = upload_py_modules_if_needed(env, include_gitignore=include_gitignore, scratch_dir=scratch_dir,
                                      logger=logger)
    return upload_working_dir_if_needed(env, include_gitignore=include_gitignore, scratch_dir=scratch_dir,
                                        logger=logger)


def with_topology_runtime_env(options: dict, raw_topology) -> dict:
    """Controller actor ``options`` with the topology's runtime_env (uploaded) merged in; the
    options as given when the topology has none."""
    topology_env = raw_topology.get("runtime_env") if isinstance(raw_topology, dict) else None
    if not topology_env:
        return options
    merged = merge_runtime_envs(upload_runtime_env(topology_env), options.get("runtime_env"))
    return {**options, "runtime_env": merged}


def check_class_types_pickle(raw_topology) -> None:
    """ConfigError naming each component whose ``type`` is a config class that cannot be pickled to
    the cluster (a pydantic model defined inside a function keeps that function's local variables,
    locks and all), rather than Ray's serialization report."""
    problems = []

    def walk(value, path):
        if isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else str(key)
                if key == "type" and isinstance(item, type):
                    try:
                        ray.cloudpickle.dumps(item)
                    except Exception as exc:
                        problems.append(f"{where}: the config class {registry.type_label(item)} cannot be sent to the "
                                        f"cluster ({type(exc).__name__}: {exc}); define it at the top level of the "
                                        f"notebook or of a module, not inside a function")
                else:
                    walk(item, where)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    walk(raw_topology, "")
    if problems:
        name = raw_topology.get("name") if isinstance(raw_topology, dict) else None
        raise ConfigError(problems, topology=name if isinstance(name, str) else None)


class _ControllerLauncher:
    """What ``RemoteController.options(...)`` returns: ``remote(raw_topology, ...)`` starts the
    controller with those options and the topology's runtime_env."""

    def __init__(self, actor_class, options: dict):
        self._actor_class = actor_class
        self._options = options

    def remote(self, raw_topology, *args, **kwargs):
        check_class_types_pickle(raw_topology)
        options = with_topology_runtime_env(self._options, raw_topology)
        return self._actor_class.options(**options).remote(raw_topology, *args, **kwargs)


class _ControllerActorClass:
    """``ray.remote(TopologyController)`` that starts each controller in its topology's
    runtime_env (see the module docstring), whoever starts it: ``RemoteController.options(**opts)
    .remote(raw_topology)`` as for any actor class."""

    def __init__(self, actor_class):
        self._actor_class = actor_class

    def options(self, **options) -> _ControllerLauncher:
        return _ControllerLauncher(self._actor_class, options)

    def remote(self, raw_topology, *args, **kwargs):
        return self.options().remote(raw_topology, *args, **kwargs)


RemoteController = _ControllerActorClass(ray.remote(TopologyController))


# Every Ray cluster's head node carries this resource; the controller lives there (as Ray Serve's
# does): the head holds the GCS, so the cluster and its controller stand or fall together.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def controller_options(topology: str) -> dict:
    return dict(name=controller_name(topology), namespace=NAMESPACE, lifetime="detached",
                max_restarts=-1, max_task_retries=0, max_concurrency=16, num_cpus=0,
                resources={HEAD_NODE_RESOURCE: 0.001})
