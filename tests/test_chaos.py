"""Chaos: SIGKILLs of every kind of rayflume actor (both tiers' sources, channels and sink groups,
so both sides of a hop, and the controller) on a three-node loopback cluster running
taildir -> file -> rayflume hop -> file -> file_roll, then Jepsen's total-queue check: every
written line delivered, nothing unsent delivered, duplicates at most a batch per fault.
The runner is ``tests/chaos.py``.

* ``test_chaos_one_round`` (default suite): one round of kills, every kind once (about 30 s).
* ``test_chaos_long`` (``-m chaos``): ``RAYFLUME_CHAOS_S`` seconds (default 600) of kills, plus
  removal and return of the agent's and the collector's node.

``RAYFLUME_CHAOS_SEED`` fixes the order of the faults (their timing still varies).
``RAYFLUME_CHAOS_CHECK_DUP_METRIC=1`` also asserts that the sinks' summed
``DuplicateDeliveryCount`` equals the duplicates observed in the output.
"""
from __future__ import annotations

import os
import random

import pytest
import yaml

import rayflume
from tests.chaos import (
    ACTOR_KINDS,
    LINE_SUFFIX,
    NODE_KINDS,
    SEQ_WIDTH,
    ChaosCluster,
    ChaosResult,
    NumberedLines,
    actor_kind,
    chaos_topology,
    largest_batch,
    ranges,
    run_chaos,
)

CHAOS_S = float(os.environ.get("RAYFLUME_CHAOS_S", "600"))


def chaos_seed() -> int:
    """RAYFLUME_CHAOS_SEED, else a new one each run (printed in the summary, to replay the fault order)."""
    return int(os.environ.get("RAYFLUME_CHAOS_SEED") or random.SystemRandom().randrange(1 << 31))


@pytest.fixture
def chaos_cluster():
    c = ChaosCluster()
    yield c
    c.shutdown()


def deploy_and_run(cluster, tmp_path, name, duration_s, kinds, seed, drain_timeout_s, rounds=None):
    topology = chaos_topology(name, tmp_path)
    handle = rayflume.deploy(topology)
    try:
        result = run_chaos(handle, topology, tmp_path, duration_s, seed=seed, kinds=kinds,
                           cluster=cluster, drain_timeout_s=drain_timeout_s, rounds=rounds)
    finally:
        handle.stop(drain_timeout_s=5)
    return result


def check(result):
    problems = result.problems()
    details = {k: result.details[k] for k in ("kill_log", "skipped", "unterminated", "dup_metric_by_sink",
                                              "restarts")}
    print("faults (t, kind, actor or node, pid, seconds until back):", result.details["kill_log"])
    print("DuplicateDeliveryCount by sink:", result.details["dup_metric_by_sink"])
    assert not problems, f"{result.summary()}\n" + "\n".join(problems) + f"\n{details}"


# -- the oracle, without Ray -------------------------------------------------------------------------
def line(n: int) -> bytes:
    return b"%0*d%s\n" % (SEQ_WIDTH, n, LINE_SUFFIX)


def test_numbered_lines_counts_missing_duplicates_unexpected_and_malformed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    reader = NumberedLines(out, SEQ_WIDTH, LINE_SUFFIX)
    assert reader.scan() == 0
    (out / "a").write_bytes(b"".join(line(i) for i in range(0, 100)) + line(100)[:7])  # torn tail
    assert reader.scan() == 100
    assert reader.unterminated() == {"a": 7}
    with open(out / "a", "ab") as f:  # the rest of the line arrives: read incrementally
        f.write(line(100)[7:])
    assert reader.scan() == 101 and reader.unterminated() == {}
    # a second file: duplicates 50..59, a gap 101..199, a number never written, a bad line
    (out / "b").write_bytes(b"".join(line(i) for i in list(range(50, 60)) + list(range(200, 300)) + [10**6])
                            + b"0000000007 chaos-line-payloaX\n" + line(300) + line(300))
    reader.scan()
    assert reader.extra == 11  # 50..59 again, 300 twice
    assert reader.lines == 101 + 10 + 100 + 1 + 2
    assert reader.malformed == 1 and reader.malformed_examples == [b"0000000007 chaos-line-payloaX"]
    missing = reader.missing(400)
    assert ranges(missing) == [(101, 199), (301, 399)]
    assert reader.beyond(400).tolist() == [10**6]
    # nothing read twice on a later scan
    reader.scan()
    assert reader.lines == 214 and reader.extra == 11


def test_chaos_result_reports_every_violation():
    def result(**kw):
        base = dict(duration_s=60, kills={"agent.source": 2, "controller": 1}, events=1000, delivered_lines=1000,
                    lost=0, unexpected=0, malformed=0, duplicates=10, bound=600, dup_metric=10, rotations=1,
                    drain_s=1.0, details={"kinds": ("agent.source", "controller"), "batch": 200})
        base.update(kw)
        return ChaosResult(**base)

    assert result().problems(check_dup_metric=True) == []
    assert "lost" in " ".join(result(lost=3).problems())
    assert "unexpected" in " ".join(result(unexpected=1).problems())
    assert "malformed" in " ".join(result(malformed=1).problems())
    assert "exceed the bound" in " ".join(result(duplicates=601).problems())
    assert "killed fewer" in " ".join(result(kills={"agent.source": 3}).problems())
    assert result(dup_metric=3).problems(check_dup_metric=False) == []
    assert "DuplicateDeliveryCount" in " ".join(result(dup_metric=3).problems(check_dup_metric=True))
    stuck = result(details={"kinds": (), "stuck": ["x not back"], "writer_error": "OSError()"}).problems()
    assert len(stuck) == 2


def test_actor_kinds_and_bound_of_the_topology(tmp_path):
    assert actor_kind("t", "t/controller") == "controller"
    assert actor_kind("t", "t/agent/chaos-agent/channel/disk") == "agent.channel"
    assert actor_kind("t", "t/collector/r0/sinks/out") == "collector.sinks"
    assert actor_kind("t", "other/controller") is None
    topology = chaos_topology("t", tmp_path, batch=300)
    assert largest_batch(topology) == 300
    rayflume.loads(yaml.safe_dump(topology))  # a valid topology


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_chaos_one_round(chaos_cluster, tmp_path):
    result = deploy_and_run(chaos_cluster, tmp_path, "chaos1", 120, ACTOR_KINDS, seed=chaos_seed(),
                            drain_timeout_s=60, rounds=1)
    check(result)
    assert result.kills == {kind: 1 for kind in ACTOR_KINDS}, result.details["kill_log"]


@pytest.mark.chaos
@pytest.mark.timeout(CHAOS_S + 900)
def test_chaos_long(chaos_cluster, tmp_path):
    check(deploy_and_run(chaos_cluster, tmp_path, "chaoslong", CHAOS_S, ACTOR_KINDS + NODE_KINDS,
                         seed=chaos_seed(), drain_timeout_s=300))
