"""The control plane keeps what it promised across node and controller restarts.

* Unit tests (no Ray cluster): the state store, node identities, per-instance source positions.
* Cluster tests (ray.cluster_utils.Cluster on loopback, one cluster for the module; the head is
  labelled tier=collector): an agent node that leaves and comes back with the same
  ``rayflume_node_id`` replays its channel event by event; a SIGKILLed controller restarts into the
  last deployed version with its LOST records.
"""
from __future__ import annotations

import copy
import os
import signal
import time

import pytest
import ray

import rayflume
from rayflume._private.actors import ledger_key
from rayflume._private.identity import LABEL, assign_instances, node_identity, sanitize
from rayflume._private.state_store import MemoryStore, RayKVStore
from rayflume.sources.base import SourceContext
from rayflume.sources.spooldir import SpoolDirSourceConfig
from rayflume.sources.taildir import TaildirSourceConfig
from tests.channel_contract import wait_until
from tests.cluster_helpers import controller_pid, head_collector, start_cluster, stop_cluster, tier_instances

POLL_S = 0.2  # status calls ask every actor: do not poll the controller faster


# -- state store ------------------------------------------------------------------------------------
def test_memory_store_get_put_delete():
    store = MemoryStore()
    assert store.get("topology/a") is None
    doc = {"version": 1, "spec": {"name": "a"}, "lost": []}
    store.put("topology/a", doc)
    doc["version"] = 99  # the store keeps what was put, not the caller's object
    assert store.get("topology/a") == {"version": 1, "spec": {"name": "a"}, "lost": []}
    got = store.get("topology/a")
    got["spec"]["name"] = "changed"
    assert store.get("topology/a")["spec"] == {"name": "a"}
    store.put("topology/a", {"version": 2})
    assert store.get("topology/a") == {"version": 2}
    store.delete("topology/a")
    store.delete("topology/a")  # deleting what is not there is fine
    assert store.get("topology/a") is None


def test_memory_store_put_of_a_non_json_document_stores_nothing():
    store = MemoryStore()
    store.put("k", {"version": 1})
    with pytest.raises(TypeError):
        store.put("k", {"version": 2, "bad": object()})
    assert store.get("k") == {"version": 1}


# -- node identity ----------------------------------------------------------------------------------
def node(node_id, host="host-a", ip="10.0.0.1", **labels):
    return {"NodeID": node_id, "NodeManagerHostname": host, "NodeManagerAddress": ip, "Labels": labels}


def test_identity_label_then_host_name_then_ip():
    assert node_identity(node("n1", **{LABEL: "Agent-1"})) == ("agent-1", f"label {LABEL}")
    assert node_identity(node("n1", tier="agent")) == ("host-a", "host name")
    assert node_identity(node("n1", host="")) == ("10-0-0-1", "IP address")
    assert node_identity({"NodeID": "n1"})[0] == "node"


def test_identity_is_sanitized_for_actor_names_metric_keys_and_paths():
    assert sanitize("Web-7.example.COM") == "web-7-example-com"
    assert sanitize("../../etc/passwd") == "etc-passwd"
    assert sanitize("a b/c\\d") == "a-b-c-d"
    assert sanitize("///") == "node"
    assert len(sanitize("x" * 500)) == 63


def test_a_returning_node_gets_its_old_instance_id():
    # agent-1's instance is not running (its node left): the new node with that label takes it back
    new, warnings = assign_instances([node("new-id", **{LABEL: "agent-1"})], placed={"agent-2": "n2"})
    assert new == {"new-id": "agent-1"} and warnings == []
    # running instances keep their ids and nodes
    assert assign_instances([node("n2", **{LABEL: "agent-2"})], placed={"agent-2": "n2"}) == ({}, [])


def test_nodes_sharing_an_identity_are_told_apart_deterministically():
    nodes = [node("c"), node("a"), node("b")]  # one host, no label
    new, warnings = assign_instances(nodes, placed={})
    assert new == {"a": "host-a", "b": "host-a-2", "c": "host-a-3"}
    assert assign_instances(list(reversed(nodes)), placed={})[0] == new
    assert len(warnings) == 2 and all(LABEL in w for w in warnings)
    # a running instance keeps the plain name; the newcomer gets the first free suffix
    new, warnings = assign_instances([node("z")], placed={"host-a": "a", "host-a-3": "c"})
    assert new == {"z": "host-a-2"} and len(warnings) == 1


# -- per-instance source positions ------------------------------------------------------------------
def test_taildir_positions_are_per_instance_only_in_a_tier(tmp_path):
    (tmp_path / "logs").mkdir()
    configured = tmp_path / "pos" / "tail.json"

    def source(position_file):
        return TaildirSourceConfig(type="taildir", channels=["c"], filegroups={"g": str(tmp_path / "logs" / ".*")},
                                   position_file=position_file).build("tail")

    scoped = source(str(configured))
    scoped.use_scope("agent/agent-1")
    plain = source(str(tmp_path / "pos2" / "tail.json"))
    for src in (scoped, plain):
        src.start(SourceContext(name="tail", topology="t"))
        src.stop()
    assert scoped.position_file == str(tmp_path / "pos" / "agent" / "agent-1" / "tail.json")
    assert os.path.exists(scoped.position_file) and not configured.exists()
    assert plain.position_file == str(tmp_path / "pos2" / "tail.json")


def test_spooldir_positions_are_per_instance_only_in_a_tier(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    src = SpoolDirSourceConfig(type="spooldir", channels=["c"], spool_dir=str(spool)).build("spool")
    src.use_scope("agent/agent-1")
    src.start(SourceContext(name="spool", topology="t"))
    src.stop()
    assert src.positions_path == str(spool / ".flumespool" / "agent" / "agent-1" / "rayflume-positions.json")
    plain = SpoolDirSourceConfig(type="spooldir", channels=["c"], spool_dir=str(spool)).build("spool")
    plain.start(SourceContext(name="spool", topology="t"))
    plain.stop()
    assert plain.positions_path == str(spool / ".flumespool" / "rayflume-positions.json")


# -- on a cluster -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    c = start_cluster({"tier": "collector"})
    yield c
    stop_cluster(c)


def test_ray_kv_store(cluster):
    store = RayKVStore()
    store.put("test/doc", {"version": 3, "spec": {"name": "x"}})
    assert store.get("test/doc") == {"version": 3, "spec": {"name": "x"}}
    store.delete("test/doc")
    assert store.get("test/doc") is None


def metric(handle, key, counter):
    return int(handle.metrics().get(key, {}).get(counter, -1))


@pytest.mark.slow
def test_agent_node_that_comes_back_replays_its_channel(cluster, tmp_path):
    name, total, batch = "cp-rejoin", 3000, 200
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text("".join(f"{i}\n" for i in range(total)))
    out = head_collector(name)
    topology = {
        "name": name,
        "metrics": {"port": None},
        "tiers": {
            "agent": {
                "placement": {"per_node": {"label": "agent"}},
                "sources": {"tail": {"type": "taildir", "filegroups": {"app": str(logs / r"app\.log")},
                                     "position_file": str(tmp_path / "pos" / "tail.json"), "batch_size": batch,
                                     "channels": ["disk"]}},
                "channels": {"disk": {"type": "file", "checkpoint_dir": str(tmp_path / "agent-cp"),
                                      "data_dirs": [str(tmp_path / "agent-data")], "capacity": 100_000,
                                      "minimum_required_space_bytes": 1 << 20}},
                "sinks": {"fwd": {"type": "rayflume", "tier": "collector", "channel": "disk", "batch_size": batch,
                                  "refresh_s": 0.5, "max_backoff_s": 1}},
            },
            # no node has this label until the agent is back: every event waits in the agent's channel
            "collector": {
                "placement": {"replicas": 1, "label": "late-collector"},
                "sources": {"in": {"type": "rayflume", "channels": ["mem"]}},
                "channels": {"mem": {"type": "memory", "capacity": 50_000}},
                "sinks": {"out": {"type": "testing_sink", "channel": "mem", "collector": name, "batch_size": batch}},
            },
        },
    }
    labels = {"tier": "agent", LABEL: "agent-1"}
    first = cluster.add_node(num_cpus=1, labels=labels)
    added = [first]
    handle = rayflume.deploy(topology)
    try:
        wait_until(lambda: tier_instances(handle, "agent") == {"agent-1": first.node_id}, timeout_s=60,
                   interval_s=POLL_S, what="the agent instance named after its label")
        # every line acknowledged by the source = committed to the agent's file channel
        wait_until(lambda: metric(handle, "SOURCE.agent.agent-1.tail", "EventAcceptedCount") == total,
                   timeout_s=90, interval_s=POLL_S, what="all lines acknowledged into the agent's channel")
        assert metric(handle, "CHANNEL.agent.agent-1.disk", "ChannelSize") == total
        assert (tmp_path / "pos" / "agent" / "agent-1" / "tail.json").exists()
        assert out.count() == 0
        # the channel keeps the source's count where the returning agent finds it (saved every 0.5 s)
        saved = RayKVStore()
        wait_until(lambda: ((saved.get(ledger_key(name, "agent/agent-1", "disk")) or {})
                            .get(f"{name}/agent/agent-1/tail", {}).get("EventAcceptedCount")) == total,
                   timeout_s=10, interval_s=POLL_S, what="the channel's ledger saved")

        cluster.remove_node(first)
        added.remove(first)
        lost_key = "agent.agent-1.disk"
        wait_until(lambda: lost_key in handle.status()["tiers"]["agent"]["lost"], timeout_s=60,
                   interval_s=POLL_S, what="the agent's channel reported LOST")
        assert "joins again" in handle.status()["tiers"]["agent"]["lost"][lost_key]

        t0 = time.monotonic()
        back = cluster.add_node(num_cpus=1, labels=labels)
        added.append(back)
        wait_until(lambda: tier_instances(handle, "agent") == {"agent-1": back.node_id}, timeout_s=60,
                   interval_s=POLL_S, what="the instance re-placed on the returning node")
        status = handle.status()
        assert status["tiers"]["agent"]["lost"] == {}
        assert any("is back" in e["message"] and "LOST record cleared" in e["message"] for e in status["events"])
        wait_until(lambda: metric(handle, "CHANNEL.agent.agent-1.disk", "ChannelSize") == total, timeout_s=60,
                   interval_s=POLL_S, what="the reopened channel to hold the old events")
        replayed_s = time.monotonic() - t0

        added.append(cluster.add_node(num_cpus=1, labels={"tier": "late-collector"}))
        out.wait_for(total, timeout_s=120)
        wait_until(lambda: metric(handle, "CHANNEL.agent.agent-1.disk", "ChannelSize") == 0, timeout_s=60,
                   interval_s=POLL_S, what="the agent's channel drained")
        delivered_s = time.monotonic() - t0
        numbers = [int(b) for b in out.bodies()]
        lost = set(range(total)) - set(numbers)
        duplicates = len(numbers) - len(set(numbers))
        print(f"rejoin: {total} acknowledged, {len(numbers)} delivered, {len(lost)} lost, {duplicates} duplicates; "
              f"channel reopened {replayed_s:.1f}s and drained {delivered_s:.1f}s after the node came back")
        assert not lost, f"{len(lost)} acknowledged events lost, e.g. {sorted(lost)[:5]}"
        assert duplicates <= batch
        # the source resumed from its own positions and its count: nothing read or counted twice
        assert metric(handle, "SOURCE.agent.agent-1.tail", "EventAcceptedCount") == total
    finally:
        handle.stop(drain_timeout_s=5)
        for n in added:
            cluster.remove_node(n)


@pytest.mark.slow
def test_killed_controller_restarts_into_the_redeployed_version(cluster, tmp_path):
    name = "cp-redeploy"
    out = head_collector(name)
    head_collector(f"{name}-extra")
    v1 = {
        "name": name,
        "metrics": {"port": None},
        "tiers": {
            "agent": {
                "placement": {"per_node": {"label": "agent"}},
                "sources": {"gen": {"type": "sequence", "total_events": 5000, "batch_size": 100,
                                    "channels": ["disk"]}},
                "channels": {"disk": {"type": "file", "checkpoint_dir": str(tmp_path / "agent-cp"),
                                      "data_dirs": [str(tmp_path / "agent-data")],
                                      "minimum_required_space_bytes": 1 << 20}},
                "sinks": {"fwd": {"type": "rayflume", "tier": "collector", "channel": "disk", "batch_size": 100,
                                  "refresh_s": 0.5, "max_backoff_s": 1}},
            },
            "collector": {
                "placement": {"replicas": 1, "label": "collector"},
                "sources": {"in": {"type": "rayflume", "channels": ["mem", "mem2"]}},
                "channels": {"mem": {"type": "memory", "capacity": 10_000},
                             "mem2": {"type": "memory", "capacity": 10_000}},
                "sinks": {"out": {"type": "testing_sink", "channel": "mem", "collector": name},
                          "extra": {"type": "testing_sink", "channel": "mem2", "collector": f"{name}-extra"}},
            },
        },
    }
    v2 = copy.deepcopy(v1)
    collector = v2["tiers"]["collector"]
    collector["sources"]["in"]["channels"] = ["mem"]          # changed
    collector["channels"]["mem"]["capacity"] = 20_000         # changed
    del collector["channels"]["mem2"], collector["sinks"]["extra"]  # removed

    agent = cluster.add_node(num_cpus=1, labels={"tier": "agent", LABEL: "agent-2"})
    handle = rayflume.deploy(v1)
    try:
        assert handle.status()["version"] == 1
        out.wait_for(1000, timeout_s=90)
        # a LOST record: the agent's node leaves with events possibly still in its file channel
        cluster.remove_node(agent)
        agent = None
        wait_until(lambda: "agent.agent-2.disk" in handle.status()["tiers"]["agent"]["lost"], timeout_s=60,
                   interval_s=POLL_S, what="the agent's channel reported LOST")

        rayflume.deploy(v2)
        before = handle.status()
        assert before["version"] == 2
        raw_v2 = handle._call("raw_topology")
        pids = {(c["tier"], c["instance"], c["kind"], c["name"]): c["pid"] for c in before["components"]}
        assert ("collector", "r0", "SINK", "extra") not in pids

        pid = controller_pid(handle)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        controller_pid(handle, not_pid=pid)
        restarted_s = time.monotonic() - t0

        after = handle.status()
        print(f"controller: restarted in {restarted_s:.1f}s at version {after['version']}")
        assert after["version"] == 2
        assert handle._call("raw_topology") == raw_v2
        assert any("controller restarted; reconciling to stored version 2" in e["message"] for e in after["events"])
        assert after["tiers"]["agent"]["lost"].keys() == {"agent.agent-2.disk"}
        # removed components did not come back; the others run on, not restarted or replaced
        for actor in (f"{name}/collector/r0/sinks/extra", f"{name}/collector/r0/channel/mem2"):
            with pytest.raises(ValueError):
                ray.get_actor(actor, namespace="rayflume")
        assert {(c["tier"], c["instance"], c["kind"], c["name"]): c["pid"] for c in after["components"]} == pids
        mem = ray.get_actor(f"{name}/collector/r0/channel/mem", namespace="rayflume")
        assert ray.get(mem.info.remote(), timeout=30)["capacity"] == 20_000
    finally:
        handle.stop(drain_timeout_s=5)
        if agent is not None:
            cluster.remove_node(agent)


@pytest.mark.slow
def test_pipeline_flows_while_the_controller_is_killed_four_times(cluster, tmp_path):
    flows_while_the_controller_is_killed(cluster, tmp_path, "cp-kill4", kills=4)


@pytest.mark.chaos
def test_pipeline_flows_while_the_controller_is_killed_twenty_times(cluster, tmp_path):
    flows_while_the_controller_is_killed(cluster, tmp_path, "cp-kill20", kills=20)


def flows_while_the_controller_is_killed(cluster, tmp_path, name: str, kills: int):
    """SIGKILLs of the controller while events cross a tier hop: each time, the events pushed
    right after the kill arrive (the data path needs no controller), and at the end every
    acknowledged event has arrived, with duplicates at most a batch per kill."""
    from rayflume import testing

    batch, per_kill = 200, 1000
    feed = testing.feed(name)
    out = head_collector(name)
    handle = rayflume.deploy({
        "name": name,
        "metrics": {"port": None},
        "tiers": {
            "agent": {
                "placement": {"replicas": 1, "label": "collector"},
                "sources": {"in": {"type": "testing_feed", "feed": name, "batch_size": batch, "channels": ["disk"]}},
                "channels": {"disk": {"type": "file", "checkpoint_dir": str(tmp_path / "cp"),
                                      "data_dirs": [str(tmp_path / "data")],
                                      "minimum_required_space_bytes": 1 << 20}},
                "sinks": {"fwd": {"type": "rayflume", "tier": "collector", "channel": "disk", "batch_size": batch,
                                  "refresh_s": 0.5, "max_backoff_s": 1}},
            },
            "collector": {
                "placement": {"replicas": 1, "label": "collector"},
                "sources": {"in": {"type": "rayflume", "channels": ["mem"]}},
                "channels": {"mem": {"type": "memory", "capacity": 10_000}},
                "sinks": {"out": {"type": "testing_sink", "channel": "mem", "collector": name, "batch_size": batch}},
            },
        },
    })
    sent, pid = 0, None
    try:
        for _ in range(kills):
            pid = controller_pid(handle, not_pid=pid)
            os.kill(pid, signal.SIGKILL)
            feed.push([str(i) for i in range(sent, sent + per_kill)])
            sent += per_kill
            out.wait_for(sent, timeout_s=60)  # flows while the controller is dead or restarting
        controller_pid(handle, not_pid=pid)
        feed.close()
        handle.wait_finished(timeout_s=120)
        got = [int(b) for b in out.bodies()]
        missing = set(range(sent)) - set(got)
        print(f"controller kills: {kills}, {sent} events, {len(missing)} lost, {len(got) - len(set(got))} duplicates")
        assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:10]}"
        assert set(got) <= set(range(sent))
        assert len(got) - len(set(got)) <= kills * batch
        assert handle.status()["version"] == 1
    finally:
        handle.stop(drain_timeout_s=5)
