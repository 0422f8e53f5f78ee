#!/usr/bin/env python
"""What the control plane costs as instances are added: the controller's reconcile tick, its calls to
Ray's control store (GCS) per tick, and how fast it follows nodes joining and leaving.

    python scripts/bench_control_plane.py                    # real N = 10, simulated N = 100 and 1,000
    python scripts/bench_control_plane.py --instances 6      # a smaller real cluster
    python scripts/bench_control_plane.py --quick            # smoke run: real N = 3, simulated N = 100
    python scripts/bench_control_plane.py --simulate 100,1000,5000 --no-real

**Real run** (N instances on a loopback ``ray.cluster_utils.Cluster``; this machine cannot hold
hundreds of actor processes). A two-tier topology: ``collector`` (2 replicas, label
``tier=collector``: the head and one collector node) and ``agent`` (``per_node`` on nodes labelled
``tier=agent``, N - 2 of them, each with its own ``rayflume_node_id``); every instance is a
``sequence`` source (a few thousand events, then idle), a memory channel and a null sink. Agent
nodes are added one at a time; for each the time from ``add_node()`` to its instance's three actors
ALIVE and to its sink's first drained events is measured (the node registers with the GCS while
``add_node()`` runs; the time from its return is reported too). Between joins, and for a window at
N, the controller's ``tick_stats()`` gives each tick's duration, its planner part, its actions and
its GCS calls by kind (see ``rayflume._private.controller.TickStats``). Then the collector node
is removed (``Cluster.remove_node``: a graceful stop of its raylet, so the GCS marks it dead at
once; a machine that vanishes is noticed after Ray's health checks, some 15-30 s more) and the
time until its replica runs again on the head (same name, actors ALIVE, events drained) is
measured. Per instance: its actor processes and their RSS (from /proc, pids from the GCS actor
table); per Ray node: the Ray daemons a node adds (raylet and agents) and their RSS.

**Simulated run** (N = 100 and 1,000 by default), no Ray: a cluster shaped as the real run's scaled
up (N nodes, ``max(2, N // 10)`` collector replicas on as many collector nodes, an agent on each
other node) as fake ``ray.nodes()`` entries. Timed, medians of several runs:

* the pure planner (``rayflume._private.planner``): a steady tick (``plan_instances`` with
  everything placed, plus ``plan_components`` of every instance's three components), a join (one
  new agent node: one AddInstance), a leave (a collector node gone: its replica moves) and a cold
  start (every instance to place);
* the controller's own steady tick: ``TopologyController._reconcile_once`` on a controller holding
  N running instances (fake actor handles), with ``ray.nodes()`` and the actor-table listing
  answered from memory: its bookkeeping plus the planner; and one ``_save`` of the stored state
  (the JSON of N instances; a tick that changes instances writes it once);
* parsing an actor-table listing of 3N entries as the controller does (protobuf to dict to
  states): the serialized entries of the real run's components over and over (synthetic entries
  of that shape when there was no real run).

**Estimated controller tick at N.** The real steady tick at the real N (median), plus what grows
with N, each measured at both sizes: the controller's own tick (simulated, above), the parse of the
actor listing (the real run's entries, repeated, as above) and ``ray.nodes()`` (its cost per node:
a least-squares fit of the driver's timings of it at each size of the real run, the fastest of 21
calls at each). A join tick adds the cost of one AddInstance
measured in the real run (a join tick minus the median steady tick at that size: three actor
creations and a state write, median over the joins), corrected for the larger state write at N; a
leave tick likewise with the real replica move (three kills, three creations, a write). Not in the
estimate: the GCS's own time to serialise the larger listings, and the actors that Ray keeps
listing after they died (a controller that replaced many actors lists more). GCS calls per tick
are counted, not estimated: a steady tick makes the same calls at every N; a tick with actions adds
a fixed number per action (the real run's per-kind counts).

Targets: planner tick under 100 ms at N = 1,000; GCS calls per steady tick independent of N;
join-to-running under 10 s at N = 10.

The last lines printed are one JSON object per row: ``mode`` ``real`` or ``simulated`` with ``n``
and its figures, then one ``summary`` with the targets and whether each is met.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")

PIPELINES = ("control-plane",)
REAL_N, QUICK_REAL_N = 10, 3
SIMULATED_N, QUICK_SIMULATED_N = (100, 1000), (100,)
STEADY_S, QUICK_STEADY_S = 12.0, 4.0  # the window of steady ticks taken at the real N
PLANNER_TARGET_MS, PLANNER_TARGET_N = 100.0, 1000
JOIN_TARGET_S = 10.0
TOPOLOGY = "bench-cp"
COLLECTOR_REPLICAS = 2  # real run: on the head and on one collector node
POLL_S = 0.05  # the poll interval of the condition waits below (each bounded by a deadline)
WAIT_S = 120.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tier_config(events: int = 5000) -> dict:
    """One instance: a sequence source (``events``, then idle), a memory channel, a null sink."""
    return {"sources": {"gen": {"type": "sequence", "batch_size": 500, "total_events": events, "channels": ["mem"]}},
            "channels": {"mem": {"type": "memory", "capacity": 10_000, "transaction_capacity": 500}},
            "sinks": {"out": {"type": "null", "channel": "mem", "batch_size": 500}}}


def topology(collector_replicas: int = COLLECTOR_REPLICAS) -> dict:
    return {"name": TOPOLOGY, "metrics": {"port": None}, "tiers": {
        "collector": {"placement": {"replicas": collector_replicas, "label": "collector"}, **tier_config()},
        "agent": {"placement": {"per_node": {"label": "agent"}}, **tier_config()}}}


def actor_names(tier: str, instance: str) -> dict[str, str]:
    """{kind: actor name} of one instance's components (as the controller names them)."""
    scope = f"{TOPOLOGY}/{tier}/{instance}"
    return {"CHANNEL": f"{scope}/channel/mem", "SOURCE": f"{scope}/source/gen", "SINK": f"{scope}/sinks/out"}


def percentile(values, q: float) -> float | None:
    values = sorted(values)
    if not values:
        return None
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[k]


def summarize_ms(values) -> dict:
    values = list(values)
    if not values:
        return {"median_ms": None, "p95_ms": None, "max_ms": None}
    return {"median_ms": round(statistics.median(values), 3), "p95_ms": round(percentile(values, 0.95), 3),
            "max_ms": round(max(values), 3)}


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (0 when it is gone), from /proc: no psutil needed."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0  # the process is gone: it holds no memory
    return 0


def child_processes() -> dict[int, list[tuple[int, str]]]:
    """{parent pid: [(pid, command line)]} of this machine's processes, from /proc."""
    out: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        out.setdefault(ppid, []).append((int(entry), cmd))
    return out


RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # what a raylet starts besides workers


def is_worker(cmd: str) -> bool:
    """Whether a raylet's child is a worker process (an actor's, or idle) rather than an agent."""
    if cmd.startswith(RAY_AGENTS):
        return False
    return cmd.startswith("ray::") or "default_worker.py" in cmd


# -- simulated cluster --------------------------------------------------------------------------------
def fake_node(i: int, tier: str) -> dict:
    """A ``ray.nodes()`` entry as the planner reads it."""
    return {"NodeID": f"{i:056x}", "Alive": True, "NodeManagerHostname": "sim-host",
            "NodeManagerAddress": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
            "Labels": {"tier": tier, "rayflume_node_id": f"{tier}-{i}"}, "Resources": {"CPU": 1.0}}


def simulated_shape(n: int) -> tuple[int, int]:
    """(collector replicas, agent instances) of the simulated cluster of ``n`` instances (and nodes)."""
    replicas = max(2, n // 10)
    return replicas, n - replicas


def _timed(fn, repeat: int) -> tuple[float, object]:
    """(median ms of ``repeat`` runs of ``fn``, its last result)."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), out


def _fastest(fn, repeat: int) -> float:
    """The fastest of ``repeat`` runs of ``fn``, in ms."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def simulate(n: int, repeat: int = 7, entries: list[bytes] | None = None) -> dict:
    """Time the planner and the controller's own tick on a fake cluster of ``n`` instances, and the
    parse of an actor listing of ``3 n`` ``entries`` (see the module docstring)."""
    from rayflume._private import planner
    from rayflume.topology import validate

    replicas, agents = simulated_shape(n)
    topo = validate(topology(replicas))
    nodes = [fake_node(i, "collector") for i in range(replicas)] + \
            [fake_node(replicas + i, "agent") for i in range(agents)]

    cold_ms, cold = _timed(lambda: planner.plan_instances(topo, nodes, [], set(), 0), max(3, repeat // 2))
    placed = [planner.Placed(a.tier, a.instance_id, a.node_id) for a in cold.actions
              if isinstance(a, planner.AddInstance)]
    assert len(placed) == n, f"cold start placed {len(placed)} of {n} instances"
    next_replica = cold.next_replica

    def views(tier):
        return [planner.ComponentView(kind, name, "ALIVE", 0, 0, False, False)
                for kind, name in planner.component_configs(topo.tiers[tier])]
    per_tier = {t: views(t) for t in topo.tiers}

    def components():
        return [planner.plan_components(per_tier[p.tier], p.node_id, True) for p in placed]
    instances_ms, steady = _timed(lambda: planner.plan_instances(topo, nodes, placed, set(), next_replica), repeat)
    components_ms, comp = _timed(components, repeat)
    tick_ms = instances_ms + components_ms
    changing = [a for a in steady.actions if not isinstance(a, planner.Waiting)]
    assert not changing and not any(comp), f"a steady cluster must plan nothing: {changing[:3]}"

    joined = nodes + [fake_node(n + 1, "agent")]
    join_ms, join = _timed(lambda: planner.plan_instances(topo, joined, placed, set(), next_replica), repeat)
    adds = [a for a in join.actions if isinstance(a, planner.AddInstance)]
    assert len(adds) == 1 and adds[0].node_id == joined[-1]["NodeID"], join.actions

    gone = nodes[1]["NodeID"]  # a collector node (it hosts one replica)
    left = [x for x in nodes if x["NodeID"] != gone]
    leave_ms, leave = _timed(lambda: planner.plan_instances(topo, left, placed, set(), next_replica), repeat)
    moved = [a for a in leave.actions if isinstance(a, (planner.AddInstance, planner.DropInstance))]
    assert len(moved) == 2 and all(a.tier == "collector" for a in moved), leave.actions
    executor = executor_tick(n, repeat)
    parse_ms, entry_bytes = actor_listing_parse_ms(3 * n, entries=entries)
    return {"mode": "simulated", "n": n, "nodes": len(nodes), "agents": agents, "collector_replicas": replicas,
            **executor, "actor_listing_parse_ms": round(parse_ms, 3), "actor_entry_bytes": entry_bytes,
            "planner_tick_ms": round(tick_ms, 3), "plan_instances_ms": round(instances_ms, 3),
            "plan_components_ms": round(components_ms, 3),
            "join_plan_ms": round(join_ms, 3), "leave_plan_ms": round(leave_ms, 3),
            "cold_start_plan_ms": round(cold_ms, 3),
            "join_actions": [type(a).__name__ for a in join.actions if not isinstance(a, planner.Waiting)],
            "leave_actions": [type(a).__name__ for a in leave.actions if not isinstance(a, planner.Waiting)]}


class _FakeActorId(str):
    def hex(self) -> str:
        return str(self)


class _FakeHandle:
    """What the controller's tick reads of an actor handle: its id."""

    def __init__(self, actor_id: str):
        self._actor_id = _FakeActorId(actor_id)


def simulated_controller(n: int):
    """A TopologyController over a fake cluster of ``n`` instances, everything placed and running:
    ``(controller, nodes, actor table)`` for :func:`executor_tick` (no Ray: its Ray calls are stood in
    for there)."""
    import threading
    from collections import deque

    from rayflume._private import controller as ctl
    from rayflume._private import planner
    from rayflume._private.state_store import MemoryStore
    from rayflume.topology import validate

    replicas, agents = simulated_shape(n)
    topo = validate(topology(replicas))
    nodes = [fake_node(i, "collector") for i in range(replicas)] + \
            [fake_node(replicas + i, "agent") for i in range(agents)]
    cold = planner.plan_instances(topo, nodes, [], set(), 0)
    c = ctl.TopologyController.__new__(ctl.TopologyController)
    c.name, c.topology, c.version, c.store = TOPOLOGY, topo, 1, MemoryStore()
    c._state_key, c.deployed_at, c.home_node = ctl.state_key(TOPOLOGY), time.time(), nodes[0]["NodeID"]
    c.instances, c.waiting, c.lost_channels, c._next_replica = {}, {}, {}, cold.next_replica
    c.events, c.stopping, c._stats, c._pushed = deque(maxlen=300), threading.Event(), ctl.TickStats(), {}
    c.paused, c._pause_seq, c._pause_acked, c._pause_pending, c._alert_state = set(), 0, {}, {}, None
    table = {}
    for a in cold.actions:
        if not isinstance(a, planner.AddInstance):
            continue
        inst = ctl._Instance(a.tier, a.instance_id, a.node_id, a.identity)
        c._plan(inst)
        for (kind, name), managed in inst.components.items():
            actor = f"{len(table):032x}"
            managed.handle = _FakeHandle(actor)
            table[actor] = ("ALIVE", 0)
            if kind == "SINK":
                c._pause_acked[actor] = 0  # the pause state was confirmed: nothing to push
        c.instances[(a.tier, a.instance_id)] = inst
    return c, nodes, table


def executor_tick(n: int, repeat: int = 7) -> dict:
    """The controller's own steady tick (``_reconcile_once``: its bookkeeping and the planner) on
    :func:`simulated_controller`, with ``ray.nodes()`` and the actor-table listing answered from
    memory, and what one write of the stored state (``_save``, one per tick that changes instances)
    costs in encoding; milliseconds, medians."""
    from unittest import mock

    import ray

    from rayflume._private import gcs

    c, nodes, table = simulated_controller(n)
    with mock.patch.object(ray, "nodes", lambda: nodes), mock.patch.object(gcs, "actor_table", lambda: dict(table)):
        c._reconcile_once()  # the first tick notes the tiers are not waiting
        assert not c.events, list(c.events)[:3]
        tick_ms, _ = _timed(c._reconcile_once, repeat)
    assert not c.events and len(c.instances) == n, list(c.events)[:3]
    save_ms, _ = _timed(c._save, max(3, repeat // 2))
    return {"executor_tick_ms": round(tick_ms, 3), "save_ms": round(save_ms, 3), "actors": len(table)}


def actor_listing_parse_ms(actors: int, repeat: int = 3, entries: list[bytes] | None = None) -> tuple[float, int]:
    """(ms, bytes per entry) to parse an actor-table listing of ``actors`` entries as the controller
    does (protobuf to dict, then ``gcs.actor_table``'s states): ``entries`` (serialized entries of a
    real listing) over and over, else synthetic rayflume-like entries."""
    from ray._private import state
    from ray.core.generated import gcs_pb2

    from rayflume._private import gcs

    def entry(i: int) -> bytes:
        d = gcs_pb2.ActorTableData(
            actor_id=i.to_bytes(16, "big"), job_id=b"\x01\x00\x00\x00", state=gcs_pb2.ActorTableData.ALIVE,
            max_restarts=-1, is_detached=True, name=f"{TOPOLOGY}/agent/agent-{i // 3}/channel/mem",
            ray_namespace="rayflume", class_name="ChannelActor", pid=100000 + i, timestamp=1.7e12,
            start_time=1_700_000_000_000, node_id=(i // 3).to_bytes(28, "big"))
        d.address.ip_address, d.address.port, d.address.node_id = "10.0.0.1", 40000 + i % 20000, d.node_id
        d.address.worker_id = i.to_bytes(28, "big")
        d.owner_address.ip_address, d.owner_address.port = "10.0.0.1", 30000
        d.owner_address.node_id = b"\x00" * 28
        return d.SerializeToString()
    raw = [entries[i % len(entries)] for i in range(actors)] if entries else [entry(i) for i in range(actors)]
    parser = state.GlobalState()

    def parse():
        out = {}
        for b in raw:
            d = gcs_pb2.ActorTableData.FromString(b)
            out[d.actor_id.hex()] = parser._gen_actor_info(d)
        return {a: gcs._parse(info) for a, info in out.items()}
    ms, _ = _timed(parse, repeat)
    return ms, round(sum(map(len, raw)) / max(1, len(raw)))


# -- real cluster ---------------------------------------------------------------------------------------
class RealRun:
    """The real measurement on a loopback Cluster (see the module docstring)."""

    def __init__(self, n: int, steady_s: float):
        if n < COLLECTOR_REPLICAS + 1:
            raise SystemExit(f"--instances must be at least {COLLECTOR_REPLICAS + 1} (2 collectors and an agent)")
        self.n, self.steady_s = n, steady_s
        self.cluster = None
        self.handle = None
        self.nodes: dict[str, object] = {}  # rayflume_node_id -> cluster node
        self.steady: dict[int, list[dict]] = {}  # instances -> steady ticks seen at that size
        self.action_ticks: list[dict] = []  # ticks with actions, with the instance count then
        self.listings: dict[int, dict] = {}  # instances -> ray.nodes() and actor-table listing timings
        self.entries: list[bytes] = []  # serialized actor-table entries of the components, as last listed
        self._seen_ticks = 0

    # ray plumbing
    def start(self) -> None:
        import ray
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False,
            "labels": {"tier": "collector", "rayflume_node_id": "head"}})
        ray.init(address=self.cluster.address, namespace="rayflume", logging_level="WARNING", log_to_driver=False)

    def shutdown(self) -> None:
        import ray

        if self.handle is not None:
            try:
                self.handle.stop(drain_timeout_s=5)
            except Exception as exc:  # the numbers are taken; report and go on tearing down
                log(f"stop failed: {exc!r}")
        ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()

    def add_node(self, tier: str, ident: str):
        t0 = time.monotonic()
        node = self.cluster.add_node(num_cpus=0, labels={"tier": tier, "rayflume_node_id": ident})
        self.nodes[ident] = node
        return node, t0, time.monotonic()

    @staticmethod
    def actors_by_name() -> dict[str, dict]:
        """{name: GCS actor entry} of the live (not DEAD) named actors."""
        import ray

        return {a["Name"]: a for a in ray._private.state.actors().values() if a["Name"] and a["State"] != "DEAD"}

    def wait_running(self, tier: str, instance: str, t0: float, not_on: str | None = None) -> dict:
        """Wait for the instance's three actors ALIVE (on another node than ``not_on``) and its sink's
        first drained events; seconds from ``t0`` to each."""
        import ray

        names = actor_names(tier, instance)
        deadline = t0 + WAIT_S
        created_at = alive_at = None
        while time.monotonic() < deadline:
            table = self.actors_by_name()
            entries = [table.get(n) for n in names.values()]
            ours = [e for e in entries if e is not None and e["Address"]["NodeID"] != not_on]
            if created_at is None and len(ours) == len(names):
                created_at = time.monotonic()  # the controller's tick created them (any state)
            if all(e is not None and e["State"] == "ALIVE" and e["Address"]["NodeID"] != not_on for e in entries):
                if alive_at is None:
                    alive_at = time.monotonic()
                sink = ray.get_actor(names["SINK"], namespace="rayflume")
                try:
                    drained = ray.get(sink.metrics.remote(), timeout=10)["out"].get("EventDrainSuccessCount", 0)
                except Exception:  # started but not answering yet: ask again
                    drained = 0
                if int(drained) > 0:
                    return {"to_created_s": (created_at or alive_at) - t0, "to_alive_s": alive_at - t0,
                            "to_events_s": time.monotonic() - t0,
                            "node_id": entries[0]["Address"]["NodeID"],
                            "pids": {k: e["Pid"] for k, e in zip(names, entries)}}
            time.sleep(POLL_S)  # the poll interval of this condition wait, bounded by the deadline
        raise TimeoutError(f"{tier}/{instance} not running after {WAIT_S:.0f} s")

    def ticks(self) -> list[dict]:
        """The ticks since the last call, one dict each."""
        stats = self.handle._call("tick_stats")
        new = stats["ticks"] - self._seen_ticks
        self._seen_ticks = stats["ticks"]
        rows = [{"ms": ms, "planner_ms": p, "actions": a, "gcs": g, "gcs_by_kind": k}
                for ms, p, a, g, k in zip(stats["tick_ms"], stats["planner_ms"], stats["actions_per_tick"],
                                          stats["gcs_calls_per_tick"], stats["gcs_calls_by_kind_per_tick"])]
        return rows[len(rows) - min(new, len(rows)):]

    def record_ticks(self, instances: int, settle: int = 0) -> None:
        """File the ticks since the last call: those with actions apart, the others as steady ticks
        at ``instances`` but for the first ``settle`` after the last action (actors still starting)."""
        since_action = None
        for t in self.ticks():
            if t["actions"]:
                self.action_ticks.append({**t, "instances": instances})
                since_action = 0
                continue
            if since_action is not None:
                since_action += 1
                if since_action <= settle:
                    continue
            self.steady.setdefault(instances, []).append(t)
        self.observe(instances)

    def observe(self, instances: int) -> None:
        """The two listings a tick makes, timed from this driver, with their sizes: the fastest of 21
        calls each, the cost without the machine's other load (other ticks, actors starting)."""
        import ray

        accessor = ray._private.state.state._connect_and_get_accessor()
        # the serialized entries of our live components, for the parse cost at larger N
        self.entries = [b for b in accessor.get_actor_table(None, None) if TOPOLOGY.encode() + b"/" in b
                        and b"/controller" not in b] or self.entries
        self.listings[instances] = {
            "nodes": len(ray.nodes()), "nodes_ms": round(_fastest(ray.nodes, 21), 3),
            "actors": len(ray._private.state.actors()),
            "actor_table_ms": round(_fastest(ray._private.state.actors, 21), 3)}

    def wait_ticks(self, count: int) -> None:
        """Wait for ``count`` more ticks of the loop."""
        target = self.handle._call("tick_stats")["ticks"] + count
        deadline = time.monotonic() + count * 5 + 30
        while self.handle._call("tick_stats")["ticks"] < target:
            if time.monotonic() > deadline:
                raise TimeoutError("the controller's reconcile loop does not tick")
            time.sleep(0.2)  # the poll interval of this condition wait, bounded by the deadline

    # the run
    def run(self) -> dict:
        import rayflume

        n, agents = self.n, self.n - COLLECTOR_REPLICAS
        self.start()
        try:
            self.add_node("collector", "col-1")
            t0 = time.monotonic()
            self.handle = rayflume.deploy(topology())
            deploy_s = time.monotonic() - t0
            for r in range(COLLECTOR_REPLICAS):
                self.wait_running("collector", f"r{r}", t0)
            log(f"deployed {COLLECTOR_REPLICAS} collectors in {time.monotonic() - t0:.1f} s")
            self.wait_ticks(3)
            self.record_ticks(COLLECTOR_REPLICAS, settle=1)
            joins = []
            for i in range(1, agents + 1):
                ident = f"agent-{i}"
                _, t_add, t_registered = self.add_node("agent", ident)
                got = self.wait_running("agent", ident, t_add)
                joins.append({"instances_after": COLLECTOR_REPLICAS + i, "add_node_s": t_registered - t_add,
                              "to_created_s": got["to_created_s"], "to_alive_s": got["to_alive_s"],
                              "to_events_s": got["to_events_s"],
                              "registered_to_events_s": got["to_events_s"] - (t_registered - t_add),
                              "pids": got["pids"]})
                log(f"join {i}/{agents}: add_node {t_registered - t_add:.2f} s, actors created after "
                    f"{got['to_created_s']:.2f} s, ALIVE after {got['to_alive_s']:.2f} s, events after "
                    f"{got['to_events_s']:.2f} s")
                self.wait_ticks(3 if i < agents else 1)
                self.record_ticks(COLLECTOR_REPLICAS + i, settle=1)
            log(f"N = {n}: taking steady ticks for {self.steady_s:.0f} s")
            self.wait_ticks(max(3, int(self.steady_s)))
            self.record_ticks(n, settle=1)
            footprint = self.footprint(joins)
            # a collector node leaves: its replica is re-placed on the head, under its name
            table = self.actors_by_name()
            doomed = self.nodes["col-1"]
            moved = next(r for r in range(COLLECTOR_REPLICAS)
                         if table[actor_names("collector", f"r{r}")["SOURCE"]]["Address"]["NodeID"] == doomed.node_id)
            t_remove = time.monotonic()
            self.cluster.remove_node(doomed)
            removed_s = time.monotonic() - t_remove
            got = self.wait_running("collector", f"r{moved}", t_remove, not_on=doomed.node_id)
            leave = {"instance": f"collector/r{moved}", "remove_node_s": removed_s, "to_created_s": got["to_created_s"],
                     "to_alive_s": got["to_alive_s"], "to_events_s": got["to_events_s"]}
            log(f"leave: remove_node {removed_s:.2f} s, replica re-placed (ALIVE) after {got['to_alive_s']:.2f} s, "
                f"events after {got['to_events_s']:.2f} s")
            self.wait_ticks(2)
            self.record_ticks(n, settle=1)
            return {"deploy_s": deploy_s, "joins": joins, "leave": leave, "footprint": footprint}
        finally:
            self.shutdown()

    def footprint(self, joins: list[dict]) -> dict:
        """Processes and RSS of an instance (its actors) and of a Ray node (its daemons)."""
        import ray

        table = self.actors_by_name()
        per_instance = []
        for i in range(1, self.n - COLLECTOR_REPLICAS + 1):
            pids = [table[name]["Pid"] for name in actor_names("agent", f"agent-{i}").values() if name in table]
            per_instance.append((len(pids), sum(rss_bytes(p) for p in pids)))
        daemons, idle = [], []
        children = child_processes()
        for node in self.cluster.worker_nodes:
            pids = [p.process.pid for infos in node.all_processes.values() for p in infos if p.process is not None]
            # the raylet's own children that are not workers: the agents it starts
            kids = [(pid, cmd) for parent in pids for pid, cmd in children.get(parent, [])]
            pids += [pid for pid, cmd in kids if not is_worker(cmd)]
            idle.append(sum(1 for _, cmd in kids if cmd.startswith("ray::IDLE")))
            daemons.append((len(pids), sum(rss_bytes(p) for p in pids)))
        observe = {}
        for what, call in (("nodes", ray.nodes), ("actor_table", ray._private.state.actors)):
            observe[f"{what}_ms"] = round(_timed(call, 21)[0], 3)
        observe["actors_listed"] = len(ray._private.state.actors())
        controller = table.get(f"{TOPOLOGY}/controller")
        controller_rss = rss_bytes(controller["Pid"]) if controller else None
        return {"instance_processes": max(c for c, _ in per_instance),
                "instance_rss_mb_median": round(statistics.median(r for _, r in per_instance) / 2**20, 1),
                "instance_rss_mb_max": round(max(r for _, r in per_instance) / 2**20, 1),
                "node_daemon_processes": max(c for c, _ in daemons) if daemons else None,
                "node_daemon_rss_mb_median": (round(statistics.median(r for _, r in daemons) / 2**20, 1)
                                              if daemons else None),
                "node_idle_workers_max": max(idle) if idle else None,
                "controller_rss_mb": round(controller_rss / 2**20, 1) if controller_rss else None,
                "driver_observe": observe,
                "worker_nodes": len(self.cluster.worker_nodes), "_ray": ray.__version__}


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(a, b) of the least-squares line y = a + b x (b = 0 with fewer than two distinct x)."""
    xs = [x for x, _ in points]
    if len(set(xs)) < 2:
        return (statistics.mean(y for _, y in points) if points else 0.0), 0.0
    mx, my = statistics.mean(xs), statistics.mean(y for _, y in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def real_rows(run: RealRun, got: dict) -> tuple[list[dict], dict]:
    """Rows per instance count of the real run, and the model the estimates at larger N start from."""
    rows = []
    for n in sorted(run.steady):
        ticks = run.steady[n]
        calls = sorted({t["gcs"] for t in ticks})
        rows.append({"mode": "real", "n": n, "steady_ticks": len(ticks), "tick": summarize_ms(t["ms"] for t in ticks),
                     "plan_instances": summarize_ms(t["planner_ms"] for t in ticks),
                     "gcs_calls_per_steady_tick": calls[0] if len(calls) == 1 else calls,
                     "gcs_calls_by_kind": ticks[-1]["gcs_by_kind"], "listings": run.listings.get(n)})
    # the cost of an action tick above the median steady tick at the same size, per kind of change
    steady_at = {n: statistics.median(t["ms"] for t in run.steady[n]) for n in run.steady}
    joins, moves = [], []
    for t in run.action_ticks:
        base = steady_at.get(t["instances"]) or steady_at.get(t["instances"] - 1)
        if base is None:
            continue
        k = t["gcs_by_kind"]
        # (an action tick below the median steady tick is the machine's load, not a negative cost)
        if k.get("create_actor") == 3 and not k.get("kill"):
            joins.append((max(0.0, t["ms"] - base), t["gcs"], t["ms"]))
        elif k.get("create_actor") and k.get("kill"):
            moves.append((max(0.0, t["ms"] - base), t["gcs"], t["ms"]))
    n = run.n
    listings = list(run.listings.values())
    nodes_b = fit_line([(v["nodes"], v["nodes_ms"]) for v in listings])[1]
    actors_b = fit_line([(v["actors"], v["actor_table_ms"]) for v in listings])[1]
    at_real = executor_tick(n)
    parse_at_real, entry_bytes = actor_listing_parse_ms(3 * n, entries=run.entries)
    model = {"real_n": n, "real_steady_tick_ms": round(steady_at[n], 3),
             "real_nodes": run.listings[n]["nodes"],
             "executor_tick_ms_at_real_n": at_real["executor_tick_ms"], "save_ms_at_real_n": at_real["save_ms"],
             "actor_listing_parse_ms_at_real_n": round(parse_at_real, 3), "actor_entry_bytes": entry_bytes,
             "nodes_listing_ms_per_node": round(max(0.0, nodes_b), 4),
             "actor_listing_ms_per_actor_driver_fit": round(actors_b, 4),
             "add_instance_ms": round(statistics.median(e for e, _, _ in joins), 3) if joins else None,
             "add_instance_gcs_calls": statistics.median(g for _, g, _ in joins) if joins else None,
             "move_replica_ms": round(statistics.median(e for e, _, _ in moves), 3) if moves else None,
             "move_replica_gcs_calls": statistics.median(g for _, g, _ in moves) if moves else None}
    join_times = [j["to_events_s"] for j in got["joins"]]
    last = got["joins"][-1]
    top = next(r for r in rows if r["n"] == n)
    top.update({
        "join_to_created_s": round(last["to_created_s"], 2), "join_to_alive_s": round(last["to_alive_s"], 2),
        "join_to_events_s": round(last["to_events_s"], 2), "join_add_node_s": round(last["add_node_s"], 2),
        "join_registered_to_events_s": round(last["registered_to_events_s"], 2),
        "joins_to_events_s": {"median": round(statistics.median(join_times), 2), "max": round(max(join_times), 2),
                              "count": len(join_times)},
        "joins": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in j.items() if k != "pids"}
                  for j in got["joins"]],
        "join_tick_ms": round(statistics.median(ms for _, _, ms in joins), 3) if joins else None,
        "join_tick_gcs_calls": statistics.median(g for _, g, _ in joins) if joins else None,
        "leave_tick_ms": round(statistics.median(ms for _, _, ms in moves), 3) if moves else None,
        "leave_tick_gcs_calls": statistics.median(g for _, g, _ in moves) if moves else None,
        "leave_to_created_s": round(got["leave"]["to_created_s"], 2),
        "leave_to_replaced_alive_s": round(got["leave"]["to_alive_s"], 2),
        "leave_to_replaced_events_s": round(got["leave"]["to_events_s"], 2),
        "remove_node_s": round(got["leave"]["remove_node_s"], 2),
        "deploy_s": round(got["deploy_s"], 2),
        "action_ticks": [{k: t[k] for k in ("instances", "ms", "actions", "gcs", "gcs_by_kind")}
                         for t in run.action_ticks],
        **{k: v for k, v in got["footprint"].items() if not k.startswith("_")}})
    return rows, model


def estimate(sim: dict, model: dict | None, steady_calls) -> dict:
    """The simulated row with the controller's estimated tick at its N: the real steady tick at the
    real N plus what grows with N, each measured at both sizes (see the module docstring)."""
    if not model:
        return sim
    growth = (sim["executor_tick_ms"] - model["executor_tick_ms_at_real_n"]
              + sim["actor_listing_parse_ms"] - model["actor_listing_parse_ms_at_real_n"]
              + model["nodes_listing_ms_per_node"] * (sim["nodes"] - model["real_nodes"]))
    steady = model["real_steady_tick_ms"] + growth
    out = {**sim, "est_steady_tick_ms": round(steady, 1), "gcs_calls_per_steady_tick": steady_calls}
    save = sim["save_ms"] - model["save_ms_at_real_n"]  # one write of the (larger) stored state
    if model["add_instance_ms"] is not None:
        out["est_join_tick_ms"] = round(steady + model["add_instance_ms"] + save, 1)
        out["gcs_calls_join_tick"] = model["add_instance_gcs_calls"]
    if model["move_replica_ms"] is not None:
        out["est_leave_tick_ms"] = round(steady + model["move_replica_ms"] + save, 1)
        out["gcs_calls_leave_tick"] = model["move_replica_gcs_calls"]
    return out


def table(rows: list[dict]) -> str:
    """The per-N rows as a markdown table."""
    def f(v, nd=1):
        return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))
    head = ("| N | mode | steady tick ms (median / p95 / max) | planner ms | GCS calls per steady tick | "
            "join tick ms (GCS calls) | leave tick ms (GCS calls) | join to running s | leave to re-placed s |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        if r["mode"] == "real":
            t = r["tick"]
            tick = f"{f(t['median_ms'])} / {f(t['p95_ms'])} / {f(t['max_ms'])}"
            planner = f(r["plan_instances"]["median_ms"], 2)
            join = f"{f(r['join_tick_ms'])} ({f(r['join_tick_gcs_calls'])})" if r.get("join_tick_ms") else "-"
            leave = f"{f(r['leave_tick_ms'])} ({f(r['leave_tick_gcs_calls'])})" if r.get("leave_tick_ms") else "-"
            joined = f"{f(r.get('join_to_events_s'), 2)}" if "join_to_events_s" in r else "-"
            left = f"{f(r.get('leave_to_replaced_events_s'), 2)}" if "leave_to_replaced_events_s" in r else "-"
        else:
            tick = (f"~{f(r.get('est_steady_tick_ms'))} (est.)" if "est_steady_tick_ms" in r
                    else f"{f(r['executor_tick_ms'], 2)} (controller's own part; no Ray)")
            planner = f(r["planner_tick_ms"], 2)
            join = (f"~{f(r.get('est_join_tick_ms'))} ({f(r.get('gcs_calls_join_tick'))})"
                    if "est_join_tick_ms" in r else "-")
            leave = (f"~{f(r.get('est_leave_tick_ms'))} ({f(r.get('gcs_calls_leave_tick'))})"
                     if "est_leave_tick_ms" in r else "-")
            joined = left = "-"
        calls = r.get("gcs_calls_per_steady_tick", "-")
        lines.append(f"| {r['n']} | {r['mode']} | {tick} | {planner} | {calls} | {join} | {leave} | {joined} "
                     f"| {left} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The name is optional: `bench.py control-plane ...` hands its whole command line over, name included.
    parser.add_argument("pipeline", nargs="?", choices=PIPELINES, default=PIPELINES[0],
                        help="the benchmark (the only one)")
    parser.add_argument("--instances", type=int, default=None,
                        help=f"instances of the real run (default {REAL_N}; {QUICK_REAL_N} with --quick; at least 3)")
    parser.add_argument("--simulate", default=None,
                        help="comma-separated instance counts for the simulated planner "
                             f"(default {','.join(map(str, SIMULATED_N))}; "
                             f"{','.join(map(str, QUICK_SIMULATED_N))} with --quick)")
    parser.add_argument("--steady-s", type=float, default=None,
                        help=f"window of steady ticks at the real N (default {STEADY_S:g}; "
                             f"{QUICK_STEADY_S:g} with --quick)")
    parser.add_argument("--no-real", action="store_true", help="only the simulated planner (no Ray)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run, not a measurement")
    return parser


def measure(args) -> list[dict]:
    n = args.instances if args.instances is not None else (QUICK_REAL_N if args.quick else REAL_N)
    sim_ns = ([int(x) for x in args.simulate.split(",") if x.strip()] if args.simulate
              else list(QUICK_SIMULATED_N if args.quick else SIMULATED_N))
    steady_s = args.steady_s if args.steady_s is not None else (QUICK_STEADY_S if args.quick else STEADY_S)
    rows, model, steady_calls, entries = [], None, None, None
    if not args.no_real:
        log(f"real run: {n} instances ({n - COLLECTOR_REPLICAS} agent nodes, {COLLECTOR_REPLICAS} collectors) on a "
            f"loopback Cluster")
        run = RealRun(n, steady_s)
        got = run.run()
        rows, model = real_rows(run, got)
        entries = run.entries
        calls = {c for r in rows for c in ([r["gcs_calls_per_steady_tick"]]
                                           if isinstance(r["gcs_calls_per_steady_tick"], int)
                                           else r["gcs_calls_per_steady_tick"])}
        steady_calls = calls.pop() if len(calls) == 1 else sorted(calls)
        log(f"executor model: {model}")
    for sim_n in sim_ns:
        log(f"simulated planner: N = {sim_n}")
        rows.append(estimate(simulate(sim_n, entries=entries), model, steady_calls))
    summary = {"mode": "summary", "pipeline": PIPELINES[0], "executor_model": model}
    at_target = next((r for r in rows if r["mode"] == "simulated" and r["n"] == PLANNER_TARGET_N), None)
    if at_target:
        summary["planner_tick_ms_at_1000"] = at_target["planner_tick_ms"]
        summary["planner_tick_target_ms"] = PLANNER_TARGET_MS
        summary["planner_tick_ratio_to_target"] = round(at_target["planner_tick_ms"] / PLANNER_TARGET_MS, 3)
        summary["planner_tick_met"] = at_target["planner_tick_ms"] < PLANNER_TARGET_MS
        summary["controller_own_tick_ms_at_1000"] = at_target["executor_tick_ms"]
        summary["cold_start_plan_ms_at_1000"] = at_target["cold_start_plan_ms"]
        if "est_steady_tick_ms" in at_target:
            summary["est_steady_tick_ms_at_1000"] = at_target["est_steady_tick_ms"]
            summary["est_join_tick_ms_at_1000"] = at_target.get("est_join_tick_ms")
    sims = sorted((r for r in rows if r["mode"] == "simulated"), key=lambda r: r["n"])
    if len(sims) >= 2:
        summary["planner_tick_growth"] = {
            f"{b['n']}/{a['n']}": round(b["planner_tick_ms"] / max(a["planner_tick_ms"], 1e-6), 2)
            for a, b in zip(sims, sims[1:])}
    reals = [r for r in rows if r["mode"] == "real"]
    if reals:
        summary["gcs_calls_per_steady_tick_by_n"] = {r["n"]: r["gcs_calls_per_steady_tick"] for r in reals}
        summary["gcs_calls_independent_of_n"] = isinstance(steady_calls, int)
        top = max(reals, key=lambda r: r["n"])
        summary.update({"real_n": top["n"], "join_to_running_s": top.get("join_to_events_s"),
                        "join_target_s": JOIN_TARGET_S,
                        "join_ratio_to_target": round(top["join_to_events_s"] / JOIN_TARGET_S, 3)
                        if top.get("join_to_events_s") is not None else None,
                        "join_met": top.get("join_to_events_s") is not None and top["join_to_events_s"] < JOIN_TARGET_S,
                        "joins_to_running_s": top.get("joins_to_events_s"),
                        "leave_to_replaced_s": top.get("leave_to_replaced_events_s"),
                        "instance_processes": top.get("instance_processes"),
                        "instance_rss_mb": top.get("instance_rss_mb_median"),
                        "node_daemon_processes": top.get("node_daemon_processes"),
                        "node_daemon_rss_mb": top.get("node_daemon_rss_mb_median"),
                        "controller_rss_mb": top.get("controller_rss_mb")})
    rows.append(summary)
    log("\n" + table([r for r in rows if r["mode"] != "summary"]))
    if reals:
        log(f"footprint: an instance is {summary['instance_processes']} actor processes, "
            f"{summary['instance_rss_mb']} MB RSS together; a Ray node adds {summary['node_daemon_processes']} "
            f"daemon process(es), {summary['node_daemon_rss_mb']} MB; the controller {summary['controller_rss_mb']} MB")
    targets = "; ".join(filter(None, [
        f"planner tick at N=1000 {summary['planner_tick_ms_at_1000']:.2f} ms vs < {PLANNER_TARGET_MS:g} ms "
        f"(x{summary['planner_tick_ratio_to_target']}): {'met' if summary['planner_tick_met'] else 'NOT met'}"
        if "planner_tick_met" in summary else None,
        f"GCS calls per steady tick {summary['gcs_calls_per_steady_tick_by_n']}: "
        f"{'independent of N' if summary['gcs_calls_independent_of_n'] else 'VARY with N'}"
        if "gcs_calls_independent_of_n" in summary else None,
        f"join to running at N={summary['real_n']} {summary['join_to_running_s']} s vs < {JOIN_TARGET_S:g} s "
        f"(x{summary['join_ratio_to_target']}): {'met' if summary['join_met'] else 'NOT met'} "
        f"(every join: median {summary['joins_to_running_s']['median']} s, "
        f"max {summary['joins_to_running_s']['max']} s)"
        if "join_met" in summary else None]))
    if targets:
        log("targets: " + targets)
    return rows


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for r in measure(args):
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
