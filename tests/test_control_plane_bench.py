"""The control-plane benchmark's parts (scripts/bench_control_plane.py) and the controller's tick
instrumentation it reads (``tick_stats()``, ``rayflume._private.controller.TickStats``).

* The simulated planner: a steady cluster plans nothing, a joining node one AddInstance, a leaving
  collector node one replica move, at two sizes.
* On a local Ray: a steady tick makes the same GCS calls (one ``ray.nodes()``, one actor-table
  listing) with 1 instance and with 3; a tick that replaces a dead component counts its creation.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import ray

from tests.channel_contract import wait_until

pytestmark = pytest.mark.slow  # a benchmark's Ray run, 25-40 s (-m slow)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "cp-bench-test"


@pytest.fixture(scope="module")
def bench_cp():
    """scripts/bench_control_plane.py as a module (importing it starts nothing)."""
    module = sys.modules.get("bench_control_plane")
    if module is None:
        spec = importlib.util.spec_from_file_location("bench_control_plane",
                                                      os.path.join(ROOT, "scripts", "bench_control_plane.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_control_plane"] = module
        spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("n", [20, 200])
def test_simulated_planner_plans_each_change_once(bench_cp, n):
    row = bench_cp.simulate(n, repeat=3)
    assert row["n"] == n and row["nodes"] == n and row["agents"] + row["collector_replicas"] == n
    assert row["join_actions"] == ["AddInstance"]
    assert row["leave_actions"] == ["DropInstance", "AddInstance"]
    # far below the 100 ms target at N = 1,000; a generous bound so a loaded machine passes
    assert 0 < row["planner_tick_ms"] < 100


def test_fit_and_table(bench_cp):
    a, b = bench_cp.fit_line([(2, 5.0), (4, 9.0), (6, 13.0)])
    assert (round(a, 6), round(b, 6)) == (1.0, 2.0)
    sim = bench_cp.simulate(20, repeat=1)
    model = {"real_steady_tick_ms": 10.0, "real_nodes": 10, "executor_tick_ms_at_real_n": 0.0,
             "actor_listing_parse_ms_at_real_n": 0.0, "save_ms_at_real_n": 0.0, "nodes_listing_ms_per_node": 0.5,
             "add_instance_ms": 50.0, "add_instance_gcs_calls": 9, "move_replica_ms": 60.0,
             "move_replica_gcs_calls": 12}
    rows = [bench_cp.estimate(sim, model, 2)]
    assert rows[0]["gcs_calls_per_steady_tick"] == 2 and rows[0]["gcs_calls_join_tick"] == 9
    # 10 ms at N = 10, 0.5 ms for each of 10 more nodes, and the controller's own work at N = 20
    expected = 10 + 5 + sim["executor_tick_ms"] + sim["actor_listing_parse_ms"]
    assert abs(rows[0]["est_steady_tick_ms"] - expected) < 0.1
    assert abs(rows[0]["est_join_tick_ms"] - (expected + 50 + sim["save_ms"])) < 0.2
    assert "| 20 | simulated |" in bench_cp.table(rows)


def topology(replicas: int) -> dict:
    return {"name": NAME, "metrics": {"port": None}, "tiers": {"edge": {
        "placement": {"replicas": replicas},
        "sources": {"gen": {"type": "sequence", "batch_size": 50, "total_events": 100, "channels": ["mem"]}},
        "channels": {"mem": {"type": "memory", "capacity": 1000}},
        "sinks": {"out": {"type": "null", "channel": "mem", "batch_size": 50}}}}}


def ticks_after(handle, seen: int) -> list[dict]:
    """The ticks after the ``seen``-th, one dict each."""
    stats = handle._call("tick_stats")
    rows = [{"ms": ms, "actions": a, "gcs": g, "kinds": k}
            for ms, a, g, k in zip(stats["tick_ms"], stats["actions_per_tick"], stats["gcs_calls_per_tick"],
                                   stats["gcs_calls_by_kind_per_tick"])]
    return rows[len(rows) - min(len(rows), max(0, stats["ticks"] - seen)):]


def steady_ticks(handle, count: int = 3) -> list[dict]:
    """Wait for ``count`` ticks in a row with no action; return them."""
    start = handle._call("tick_stats")["ticks"]
    got: list[dict] = []

    def enough():
        got[:] = ticks_after(handle, start)
        while got and got[0]["actions"]:  # not settled yet then: count from the next one
            got.pop(0)
        return len(got) >= count and not any(t["actions"] for t in got)
    wait_until(enough, timeout_s=30, interval_s=0.2, what=f"{count} ticks with no action")
    return got


def test_gcs_calls_per_steady_tick_do_not_grow_with_instances(ray_local):
    import rayflume

    handle = rayflume.deploy(topology(1))
    try:
        assert handle._call("tick_stats")["tick_ms"] is not None
        at_1 = steady_ticks(handle)
        assert all(t["kinds"] == {"nodes": 1, "actor_table": 1} for t in at_1), at_1
        assert all(0 < t["ms"] < 5000 for t in at_1), at_1

        # a tick that carries out an action counts its calls: a dead sink group is recreated
        seen = handle._call("tick_stats")["ticks"]
        ray.kill(ray.get_actor(f"{NAME}/edge/r0/sinks/out", namespace="rayflume"), no_restart=True)
        replaced: list[dict] = []

        def recreated():
            replaced[:] = [t for t in ticks_after(handle, seen) if t["actions"]]
            return bool(replaced)
        wait_until(recreated, timeout_s=30, interval_s=0.2, what="a tick replacing the dead sink group")
        assert replaced[0]["kinds"] == {"nodes": 1, "actor_table": 1, "create_actor": 1}, replaced
        assert replaced[0]["gcs"] == 3

        rayflume.deploy(topology(3))  # the redeploy starts instances r1, r2
        wait_until(lambda: len(handle.status()["tiers"]["edge"]["instances"]) == 3, timeout_s=30, interval_s=0.2,
                   what="three instances")
        at_3 = steady_ticks(handle)
        assert [t["gcs"] for t in at_3] == [t["gcs"] for t in at_1] == [2, 2, 2]
        assert all(t["kinds"] == {"nodes": 1, "actor_table": 1} for t in at_3), at_3
        stats = handle._call("tick_stats")
        assert len(stats["tick_ms"]) <= 100 and stats["ticks"] >= len(stats["tick_ms"])
        assert stats["gcs_calls_by_kind"]["create_actor"] >= 1
    finally:
        handle.stop(drain_timeout_s=5)
