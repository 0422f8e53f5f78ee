"""End-to-end pipelines on a local Ray: the Python API, routing, sink groups, supervision."""
from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request

import pytest
import ray

import rayflume
from rayflume import testing
from tests.channel_contract import wait_until


def topo(name, sources, channels, sinks, sink_groups=None, metrics_port=None):
    t = {"name": name, "sources": sources, "channels": channels, "sinks": sinks,
         "metrics": {"port": metrics_port}}
    if sink_groups:
        t["sink_groups"] = sink_groups
    return t


def ints(bodies):
    return [int(b) for b in bodies]


def test_api_end_to_end_with_flume_metrics(deployed):
    out = testing.collector("api-e2e")
    handle = deployed(topo(
        "api-e2e",
        {"gen": {"type": "sequence", "total_events": 5000, "batch_size": 700, "channels": ["mem"],
                 "interceptors": [{"type": "static", "key": "env", "value": "test"}, {"type": "timestamp"}]}},
        {"mem": {"type": "memory", "capacity": 10000, "transaction_capacity": 1000}},
        {"out": {"type": "testing_sink", "channel": "mem", "collector": "api-e2e", "batch_size": 300}},
    ))
    handle.wait_finished(timeout_s=60)
    events = out.events()
    assert sorted(ints(e.body for e in events)) == list(range(5000))
    assert all(e.headers["env"] == "test" and e.headers["timestamp"].isdigit() for e in events)

    m = handle.metrics()
    assert set(m) == {"SOURCE.gen", "CHANNEL.mem", "SINK.out"}
    assert m["SOURCE.gen"]["EventAcceptedCount"] == "5000"
    assert m["SOURCE.gen"]["Type"] == "SOURCE"
    assert m["CHANNEL.mem"]["ChannelSize"] == "0"
    assert m["CHANNEL.mem"]["EventPutSuccessCount"] == "5000"
    assert m["SINK.out"]["EventDrainSuccessCount"] == "5000"
    assert all(isinstance(v, str) for group in m.values() for v in group.values())
    # each component reports its actor process's memory: a Python process with pyarrow and Ray
    # holds tens of MB at least, and never more than this machine has
    for group in m.values():
        assert 30e6 < int(group["ProcessRssBytes"]) <= int(group["ProcessPeakRssBytes"]) < 64e9

    status = handle.status()
    states = {(c["kind"], c["name"]): c["state"] for c in status["components"]}
    assert states[("SOURCE", "gen")] == "FINISHED"
    assert states[("CHANNEL", "mem")] == "ALIVE"
    assert status["finished"] is True


def test_metrics_endpoint_serves_flume_json(deployed):
    handle = deployed(topo(
        "metrics-http",
        {"gen": {"type": "sequence", "total_events": 100, "batch_size": 10, "channels": ["mem"]}},
        {"mem": {"type": "memory"}},
        {"out": {"type": "null", "channel": "mem"}},
        metrics_port=0,
    ))
    handle.wait_finished(timeout_s=60)
    url = handle.metrics_url()
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["SINK.out"]["EventDrainSuccessCount"] == "100"
    assert body["CHANNEL.mem"]["Type"] == "CHANNEL"
    req = urllib.request.Request(url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 405


def test_replicating_with_optional_and_multiplexing(deployed):
    feed = testing.feed("routing")
    out = testing.collector("routing")
    handle = deployed(topo(
        "routing",
        {"split": {"type": "testing_feed", "feed": "routing", "channels": ["east", "west", "rest"],
                   "selector": {"type": "multiplexing", "header": "dc",
                                "mapping": {"east": ["east"], "west": ["west"]}, "default": ["rest"],
                                "optional": {"east": ["rest"]}}},
         "copy": {"type": "testing_feed", "feed": "routing-copy", "channels": ["all", "audit"],
                  "selector": {"type": "replicating", "optional": ["audit"]}}},
        {"east": {"type": "memory"}, "west": {"type": "memory"}, "rest": {"type": "memory"},
         "all": {"type": "memory"}, "audit": {"type": "memory", "capacity": 5}},
        {"k_east": {"type": "testing_sink", "channel": "east", "collector": "routing"},
         "k_west": {"type": "testing_sink", "channel": "west", "collector": "routing"},
         "k_rest": {"type": "testing_sink", "channel": "rest", "collector": "routing"},
         "k_all": {"type": "testing_sink", "channel": "all", "collector": "routing"},
         "k_audit": {"type": "flaky_sink", "channel": "audit", "collector": "routing", "fail_every": 1}},
    ))
    events = [rayflume.Event(f"{dc}-{i}".encode(), {"dc": dc}) for i, dc in
              enumerate(["east", "west", "north", "east", "west", "east"])]
    events.append(rayflume.Event(b"nodc-6", {}))
    feed.push(events)
    feed.close()
    copy = testing.feed("routing-copy")
    copy.push([str(i) for i in range(4)])  # fits in audit
    copy.push([str(i) for i in range(4, 20)])  # does not: refused whole, and only there
    copy.close()
    wait_until(lambda: out.count("k_all") == 20 and out.count("k_west") == 2, timeout_s=60,
               what="routed events")
    wait_until(lambda: out.count("k_rest") == 5, timeout_s=30, what="default and optional events")
    assert sorted(out.bodies("k_east")) == [b"east-0", b"east-3", b"east-5"]
    assert sorted(out.bodies("k_west")) == [b"west-1", b"west-4"]
    # default channel for unmatched values and missing headers, plus east's optional copy
    assert sorted(out.bodies("k_rest")) == sorted([b"north-2", b"nodc-6", b"east-0", b"east-3", b"east-5"])
    assert ints(out.bodies("k_all")) == list(range(20))
    # the optional audit channel (capacity 5, its sink always fails) filled up; that never blocked `copy`
    m = handle.metrics()
    assert int(m["SOURCE.copy"]["OptionalChannelWriteFail"]) >= 1
    assert m["CHANNEL.audit"]["ChannelSize"] == "4"
    for k in ("feed", "copy"):
        (feed if k == "feed" else copy).kill()


def test_failover_moves_to_backup_and_returns(deployed):
    out = testing.collector("failover")
    feed = testing.feed("failover")
    handle = deployed(topo(
        "failover",
        {"in": {"type": "testing_feed", "feed": "failover", "channels": ["mem"], "batch_size": 100}},
        {"mem": {"type": "memory"}},
        {"primary": {"type": "flaky_sink", "channel": "mem", "collector": "failover", "fail_first": 2,
                     "batch_size": 100},
         "backup": {"type": "testing_sink", "channel": "mem", "collector": "failover", "batch_size": 100}},
        sink_groups={"g": {"sinks": ["primary", "backup"],
                           "processor": {"type": "failover", "priority": {"primary": 10, "backup": 5},
                                         "max_penalty_s": 1}}},
    ))
    sent = 0

    def send(n=50):
        nonlocal sent
        feed.push([str(i) for i in range(sent, sent + n)])
        sent += n
        wait_until(lambda: out.count() >= sent, timeout_s=30, what=f"{sent} events")

    send()
    assert out.count("backup") == 50 and out.count("primary") == 0  # primary failed: backup took over
    for _ in range(5):
        send()
    # (Its return after the penalty is shown with a controlled clock in test_processors.py.)
    assert sorted(ints(out.bodies())) == list(range(sent))
    m = handle.metrics()
    assert 1 <= int(m["SINK.primary"]["EventWriteFail"]) <= 2
    assert m["SINK.primary"]["EventWriteFail"] == m["SINK.primary"]["RollbackCount"]
    feed.kill()


def test_load_balance_spreads_over_sinks(deployed):
    out = testing.collector("lb")
    n = 4000
    handle = deployed(topo(
        "lb",
        {"gen": {"type": "sequence", "total_events": n, "batch_size": 100, "channels": ["mem"]}},
        {"mem": {"type": "memory"}},
        {"a": {"type": "testing_sink", "channel": "mem", "collector": "lb", "batch_size": 100},
         "b": {"type": "testing_sink", "channel": "mem", "collector": "lb", "batch_size": 100}},
        sink_groups={"g": {"sinks": ["a", "b"], "processor": {"type": "load_balance"}}},
    ))
    handle.wait_finished(timeout_s=90)
    assert sorted(ints(out.bodies())) == list(range(n))
    a, b = out.count("a"), out.count("b")
    assert a > n // 4 and b > n // 4, (a, b)


def test_full_channel_backpressure_loses_nothing(deployed):
    out = testing.collector("backpressure")
    n = 5000
    handle = deployed(topo(
        "backpressure",
        {"gen": {"type": "sequence", "total_events": n, "batch_size": 250, "channels": ["small"]}},
        {"small": {"type": "memory", "capacity": 500, "transaction_capacity": 250}},
        {"slow": {"type": "flaky_sink", "channel": "small", "collector": "backpressure", "fail_first": 4,
                  "batch_size": 250}},
    ))
    handle.wait_finished(timeout_s=120)
    assert sorted(set(ints(out.bodies()))) == list(range(n))
    m = handle.metrics()
    assert int(m["SOURCE.gen"]["ChannelWriteFail"]) > 0  # the source was refused and kept its batch
    assert m["SOURCE.gen"]["EventAcceptedCount"] == str(n)


@pytest.mark.slow
def test_sigkill_of_sink_actor_is_survived(deployed):
    out = testing.collector("sigkill")
    n = 300_000
    handle = deployed(topo(
        "sigkill",
        {"gen": {"type": "sequence", "total_events": n, "batch_size": 1000, "channels": ["mem"]}},
        {"mem": {"type": "memory", "capacity": 20000, "transaction_capacity": 1000}},
        {"out": {"type": "testing_sink", "channel": "mem", "collector": "sigkill", "batch_size": 1000}},
    ))
    wait_until(lambda: out.count() > 20_000, timeout_s=60, what="events to flow")
    sink_actor = ray.get_actor("sigkill/sinks/out", namespace="rayflume")
    pid = ray.get(sink_actor.pid.remote())
    os.kill(pid, signal.SIGKILL)
    handle.wait_finished(timeout_s=120)
    got = ints(out.bodies())
    assert set(got) == set(range(n)), "every event the source produced reaches the sink"
    duplicates = len(got) - n
    assert 0 <= duplicates <= 1000  # at most the batch in flight at the kill
    wait_until(lambda: next(c for c in handle.status()["components"] if c["kind"] == "SINK")["restarts"] >= 1,
               timeout_s=30, what="the restart to show in status")
    assert any("restarted" in e["message"] for e in handle.status()["events"])
    assert handle.metrics()["SINK.out"]["Restarts"] == "1"


def test_redeploy_keeps_unchanged_components(deployed):
    t = topo("redeploy",
             {"gen": {"type": "sequence", "batch_size": 10, "channels": ["mem"]}},
             {"mem": {"type": "memory"}, "other": {"type": "memory"}},
             {"out": {"type": "null", "channel": "mem"}, "out2": {"type": "null", "channel": "other"}})
    t["sources"]["gen2"] = {"type": "sequence", "batch_size": 10, "channels": ["other"]}
    first = deployed(t)
    pids = {c["name"]: c["pid"] for c in first.status()["components"]}
    again = rayflume.deploy(t)
    assert again.name == first.name and again.last_update is None  # identical: nothing to do
    changed = {**t, "channels": {**t["channels"], "other": {"type": "memory", "capacity": 5000}}}
    handle = rayflume.deploy(changed)
    # the changed channel, and the source and sink attached to it, are replaced; the rest keep running
    assert handle.last_update == {"kept": 3, "replaced": 3}
    after = {c["name"]: c["pid"] for c in handle.status()["components"]}
    assert after["mem"] == pids["mem"] and after["gen"] == pids["gen"] and after["out"] == pids["out"]
    assert after["other"] != pids["other"] and after["gen2"] != pids["gen2"] and after["out2"] != pids["out2"]
    wait_until(lambda: int(handle.metrics()["SINK.out2"].get("EventDrainSuccessCount", 0)) > 0, timeout_s=30,
               what="the replaced part to run")


def test_exec_source_to_file_roll(deployed, tmp_path):
    handle = deployed(topo(
        "exec-roll",
        {"seq": {"type": "exec", "command": "seq 1 1000", "batch_size": 100, "channels": ["mem"]}},
        {"mem": {"type": "memory"}},
        {"files": {"type": "file_roll", "channel": "mem", "directory": str(tmp_path / "out"),
                   "batch_size": 100}},
    ))
    handle.wait_finished(timeout_s=60)
    handle.stop()
    lines = []
    for f in sorted((tmp_path / "out").iterdir()):
        lines += f.read_bytes().splitlines()
    assert ints(lines) == list(range(1, 1001))
