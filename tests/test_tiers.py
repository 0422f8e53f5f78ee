"""Two-tier topologies on a multi-node Ray cluster on loopback (ray.cluster_utils.Cluster).

The head node is labelled tier=collector; workers are added with tier=agent or tier=collector.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import ray

import rayflume
from tests.channel_contract import wait_until
from tests.cluster_helpers import child_env, head_collector, start_cluster, stop_cluster, tier_instances

pytestmark = pytest.mark.slow  # multi-node clusters: run by CI after the default suite (-m slow)


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster({"tier": "collector"})
    c.add_node(num_cpus=1, labels={"tier": "agent"})
    yield c
    stop_cluster(c)


def two_tier(name, collector, tmp_path, total=None, collector_label="collector", replicas=2,
             collector_channel=None, refresh_s=0.5):
    agent_gen = {"type": "sequence", "batch_size": 200, "channels": ["disk"]}
    if total is not None:
        agent_gen["total_events"] = total
    return {
        "name": name,
        "metrics": {"port": None},
        "tiers": {
            "agent": {
                "placement": {"per_node": {"label": "agent"}},
                "sources": {"gen": agent_gen},
                "channels": {"disk": {"type": "file", "checkpoint_dir": str(tmp_path / "agent-cp"),
                                      "data_dirs": [str(tmp_path / "agent-data")], "capacity": 200_000,
                                      "minimum_required_space_bytes": 1 << 20}},
                "sinks": {"fwd": {"type": "rayflume", "tier": "collector", "channel": "disk", "batch_size": 200,
                                  "instance_header": "agent", "refresh_s": refresh_s, "max_backoff_s": 2}},
            },
            "collector": {
                "placement": {"replicas": replicas, "label": collector_label},
                "sources": {"in": {"type": "rayflume", "channels": ["mem"]}},
                "channels": {"mem": collector_channel or {"type": "memory", "capacity": 50_000}},
                "sinks": {"out": {"type": "testing_sink", "channel": "mem", "collector": collector,
                                  "batch_size": 200}},
            },
        },
    }


def per_agent(events):
    """{agent instance: [numbers]} from collected events."""
    out: dict[str, list[int]] = {}
    for e in events:
        out.setdefault(e.headers["agent"], []).append(int(e.body))
    return out


def test_two_tiers_end_to_end_and_a_joining_agent_node(cluster, tmp_path):
    out = head_collector("tiers-e2e")
    extra = cluster.add_node(num_cpus=1, labels={"tier": "collector"})
    # Sinks ask for targets only every 30 s here: new collectors reach them by the controller's push.
    handle = rayflume.deploy(two_tier("tiers-e2e", "tiers-e2e", tmp_path, refresh_s=30))
    try:
        agents = tier_instances(handle, "agent")
        collectors = tier_instances(handle, "collector")
        assert len(agents) == 1
        assert len(collectors) == 2 and len(set(collectors.values())) == 2, "replicas spread over nodes"
        out.wait_for(2000, timeout_s=90)
        first = set(per_agent(out.events()))
        assert len(first) == 1

        cluster.add_node(num_cpus=1, labels={"tier": "agent"})
        wait_until(lambda: len(tier_instances(handle, "agent")) == 2, timeout_s=60,
                   what="an agent on the new node")
        # two Ray nodes on one host without the rayflume_node_id label: told apart, and told so
        first_id, second_id = sorted(tier_instances(handle, "agent"))
        assert second_id == f"{first_id}-2"
        assert any("rayflume_node_id" in e["message"] for e in handle.status()["events"])
        wait_until(lambda: len(per_agent(out.events())) == 2, timeout_s=90, what="the new agent's events")
        assert any("instance started" in e["message"] for e in handle.status()["events"])
        # both collectors received from the agents (load balanced)
        m = handle.metrics()
        received = [int(v["EventAcceptedCount"]) for k, v in m.items() if k.startswith("SOURCE.collector.")]
        assert len(received) == 2 and all(r > 0 for r in received), received

        rayflume.deploy(two_tier("tiers-e2e", "tiers-e2e", tmp_path, refresh_s=30, replicas=3))
        wait_until(lambda: len(tier_instances(handle, "collector")) == 3, timeout_s=60, what="a third collector")
        (third,) = set(tier_instances(handle, "collector")) - set(collectors)

        def third_accepted():
            return int(handle.metrics().get(f"SOURCE.collector.{third}.in", {}).get("EventAcceptedCount", 0))
        # well before the sinks' own 30 s refresh
        wait_until(lambda: third_accepted() > 0, timeout_s=15, what="the third collector to receive events")
    finally:
        handle.stop(drain_timeout_s=10)
        cluster.remove_node(extra)


def test_collector_node_loss_loses_no_acknowledged_event(cluster, tmp_path):
    out = head_collector("tiers-loss")
    doomed = cluster.add_node(num_cpus=1, labels={"tier": "collector"})
    total = 150_000
    # The collectors' file channels are on storage every node reaches (here: this machine's
    # disk), so a collector re-placed after its node died replays what it had accepted.
    shared = {"type": "file", "shared_storage": True, "checkpoint_dir": str(tmp_path / "col-cp"),
              "data_dirs": [str(tmp_path / "col-data")], "minimum_required_space_bytes": 1 << 20}
    handle = rayflume.deploy(two_tier("tiers-loss", "tiers-loss", tmp_path, total=total,
                                      collector_channel=shared))
    try:
        wait_until(lambda: len(set(tier_instances(handle, "collector").values())) == 2, timeout_s=60,
                   what="collectors on two nodes")
        doomed_instance = next(i for i, n in tier_instances(handle, "collector").items() if n == doomed.node_id)

        def doomed_accepted():
            m = handle.metrics().get(f"SOURCE.collector.{doomed_instance}.in", {})
            return int(m.get("EventAcceptedCount", 0))
        wait_until(lambda: doomed_accepted() > 2000, timeout_s=90, what="the doomed collector to take events")
        assert out.count() < total, "the node must die while events still flow"
        cluster.remove_node(doomed)
        handle.wait_finished(timeout_s=240)
        events = per_agent(out.events())
        status = handle.status()
        assert any("is gone: moving the instance" in e["message"] for e in status["events"]), status["events"]
        # re-placed under its slot name, on another node
        assert tier_instances(handle, "collector")[doomed_instance] not in (None, doomed.node_id)
        # every agent's source acknowledged all its events (it finished); each reached the sink
        agents = tier_instances(handle, "agent")
        assert len(events) == len(agents)
        for agent, numbers in events.items():
            lost = set(range(total)) - set(numbers)
            duplicates = len(numbers) - len(set(numbers))
            print(f"{agent}: {len(numbers)} delivered, {duplicates} duplicates, {len(lost)} lost")
            assert not lost, f"{len(lost)} acknowledged events lost, e.g. {sorted(lost)[:5]}"
            # One fault: the agent's batch in flight to the dead collector (resent elsewhere), and
            # the dead collector's sink batch and prefetched take (replayed): 200 events each.
            assert duplicates <= 3 * 200, f"{duplicates} duplicates for one node loss"
    finally:
        handle.stop(drain_timeout_s=10)


def test_unknown_label_and_no_live_target_are_reported(cluster, tmp_path):
    handle = rayflume.deploy(two_tier("tiers-wait", "tiers-wait", tmp_path, collector_label="nowhere"))
    try:
        status = handle.status()
        assert status["tiers"]["collector"]["waiting"] == "tier 'collector' waits for a node with tier=nowhere"
        assert status["tiers"]["collector"]["instances"] == {}
        # the agent keeps its data: the sink backs off and says why
        def agent_sink_error():
            sink = next(c for c in handle.status()["components"] if c["kind"] == "SINK")
            return sink.get("error") or ""
        wait_until(lambda: "has no live instance" in agent_sink_error(), timeout_s=60,
                   what="the agent sink to report the missing collectors")
        wait_until(lambda: int(next(v for k, v in handle.metrics().items()
                                    if k.startswith("CHANNEL.agent."))["ChannelSize"]) > 0,
                   timeout_s=30, what="events kept in the agent's channel")
    finally:
        handle.stop(drain_timeout_s=1)


def test_survives_driver_death_and_redeploy_changes_nothing(cluster, tmp_path):
    out = head_collector("tiers-driver")
    topo_file = tmp_path / "t.yaml"
    import yaml

    topo = two_tier("tiers-driver", "tiers-driver", tmp_path, replicas=1)
    topo_file.write_text(yaml.safe_dump(topo))
    script = textwrap.dedent(f"""
        import ray, rayflume, sys, time
        ray.init(address={cluster.address!r}, namespace="rayflume")
        rayflume.deploy({str(topo_file)!r})
        print("deployed", flush=True)
        time.sleep(600)
    """)
    driver = subprocess.Popen([sys.executable, "-c", script], env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "deployed"
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
        before = out.count()
        wait_until(lambda: out.count() > before + 1000, timeout_s=60, what="events after the driver died")

        r = subprocess.run([sys.executable, "-m", "rayflume.cli", "status", "tiers-driver", "--address",
                            cluster.address], env=child_env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "topology tiers-driver: RUNNING (version 1)" in r.stdout

        handle = rayflume.get("tiers-driver")
        pids = {(c["tier"], c["instance"], c["name"]): c["pid"] for c in handle.status()["components"]}
        again = rayflume.deploy(str(topo_file))
        assert again.last_update is None
        after = {(c["tier"], c["instance"], c["name"]): c["pid"] for c in again.status()["components"]}
        assert after == pids
    finally:
        if driver.poll() is None:
            driver.kill()
        h = rayflume.get("tiers-driver")
        if h is not None:
            h.stop(drain_timeout_s=1)


def test_node_local_channel_is_reported_lost_not_recreated(cluster, tmp_path):
    doomed = cluster.add_node(num_cpus=1, labels={"tier": "collector"})
    local = {"type": "file", "checkpoint_dir": str(tmp_path / "col-cp"), "data_dirs": [str(tmp_path / "col-data")],
             "minimum_required_space_bytes": 1 << 20}
    handle = rayflume.deploy(two_tier("tiers-lost", head_collector("tiers-lost").name, tmp_path,
                                      collector_channel=local))
    try:
        wait_until(lambda: len(set(tier_instances(handle, "collector").values())) == 2, timeout_s=60,
                   what="collectors on two nodes")
        gone = next(i for i, n in tier_instances(handle, "collector").items() if n == doomed.node_id)
        cluster.remove_node(doomed)
        wait_until(lambda: gone not in tier_instances(handle, "collector")
                   and len(tier_instances(handle, "collector")) == 2, timeout_s=60,
                   what="a new collector instead of the lost one")
        status = handle.status()
        assert f"collector.{gone}.mem" in status["tiers"]["collector"]["lost"]
        assert handle.metrics()[f"CHANNEL.collector.{gone}.mem"]["ChannelLost"] == "1"
        assert any("lost with the node" in e["message"] for e in status["events"])
        # the replacement has a new name: nothing runs under the lost instance's name
        with pytest.raises(ValueError):
            ray.get_actor(f"tiers-lost/collector/{gone}/channel/mem", namespace="rayflume")
    finally:
        handle.stop(drain_timeout_s=1)
