"""Flume's RPC between topologies on one Ray: a sending topology's ``avro`` (or ``thrift``) sinks
feed receiving topologies' sources of the same type, as a rayflume agent would feed Flume collectors (or rayflume ones)
outside its cluster. Checked event by event: nothing acknowledged is lost while the receiver's
source is SIGKILLed and the whole receiving topology is stopped and deployed again; duplicates
stay within what the kills can cause; failover and load_balance groups behave as in Flume's
documentation.
"""
from __future__ import annotations

import os
import signal
import socket

import pytest
import ray

from rayflume import testing
from tests.channel_contract import wait_until
from tests.chaos import NAMESPACE

BATCH = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def receiver(name: str, port: int, tmp_path, out: str | None = None, kind: str = "avro") -> dict:
    sink = ({"type": "testing_sink", "channel": "disk", "collector": out, "batch_size": BATCH} if out else
            {"type": "file_roll", "channel": "disk", "directory": str(tmp_path / f"{name}-out"), "batch_size": BATCH})
    return {
        "name": name,
        "metrics": {"port": None},
        "sources": {"in": {"type": kind, "port": port, "channels": ["disk"],
                           "interceptors": [{"type": "static", "key": "receiver", "value": name}]}},
        "channels": {"disk": {"type": "file", "checkpoint_dir": str(tmp_path / f"{name}-cp"),
                              "data_dirs": [str(tmp_path / f"{name}-data")], "capacity": 100_000,
                              "minimum_required_space_bytes": 1 << 20}},
        "sinks": {"out": sink},
    }


def sender(name: str, total: int, sinks: dict, group: dict | None = None, rate_batch: int = BATCH,
           kind: str = "avro") -> dict:
    topo = {
        "name": name,
        "metrics": {"port": None},
        "sources": {"gen": {"type": "sequence", "total_events": total, "batch_size": rate_batch, "channels": ["mem"]}},
        "channels": {"mem": {"type": "memory", "capacity": 100_000}},
        "sinks": {k: {"type": kind, "channel": "mem", "hostname": "127.0.0.1", "port": port, "batch_size": BATCH,
                      "connect_timeout_s": 2, "request_timeout_s": 10}
                  for k, port in sinks.items()},
    }
    if group:
        topo["sink_groups"] = {"g": group}
    return topo


def numbers_in(directory) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return [int(x) for f in sorted(os.listdir(directory))
            for x in open(os.path.join(directory, f), "rb").read().split()]


def sigkill_source(topology: str) -> None:
    actor = ray.get_actor(f"{topology}/source/in", namespace=NAMESPACE)
    os.kill(ray.get(actor.pid.remote(), timeout=10), signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["avro", "thrift"])
def test_no_acknowledged_event_is_lost_while_the_receiver_is_killed_and_redeployed(deployed, tmp_path, kind):
    total = 60_000
    port = free_port()
    out_dir = tmp_path / "rx-out"
    rx = deployed(receiver("rx", port, tmp_path, kind=kind))
    tx = deployed(sender("tx", total, {"fwd": port}, rate_batch=100, kind=kind))

    def delivered() -> int:
        return len(set(numbers_in(out_dir)))

    wait_until(lambda: delivered() >= 5_000, 60, interval_s=0.2, what="the first events across the hop")
    sigkill_source("rx")  # supervised restart on the same port; the sink reconnects
    wait_until(lambda: delivered() >= 20_000, 60, interval_s=0.2, what="events after the source's restart")
    rx.stop(drain_timeout_s=10)  # the whole receiving topology goes away: the sink keeps retrying
    rx = deployed(receiver("rx", port, tmp_path, kind=kind))  # the same disk channel, deployed again
    tx.wait_finished(timeout_s=180)
    wait_until(lambda: delivered() == total, 120, interval_s=0.5, what="every event delivered")
    got = numbers_in(out_dir)
    assert sorted(set(got)) == list(range(total))
    duplicates = len(got) - total
    # each interruption can resend what was in flight: at most a batch per sink call in the air,
    # plus the receiver's own sink re-writing a batch it had not committed when stopped
    assert 0 <= duplicates <= 4 * BATCH, duplicates
    print(f"{kind} hop: {total} events, {duplicates} duplicates")


def test_failover_group_moves_to_the_next_collector_when_the_first_goes(deployed, tmp_path):
    total = 30_000
    first, second = free_port(), free_port()
    out = testing.collector("avro-failover")
    out.clear()
    rx1 = deployed(receiver("rx1", first, tmp_path, out="avro-failover"))
    deployed(receiver("rx2", second, tmp_path, out="avro-failover"))
    group = {"sinks": ["k1", "k2"], "processor": {"type": "failover", "priority": {"k1": 10, "k2": 5},
                                                  "max_penalty_s": 2}}
    tx = deployed(sender("tx-fo", total, {"k1": first, "k2": second}, group))
    wait_until(lambda: len(out.events()) >= 5_000, 60, interval_s=0.2, what="events through the first collector")
    via_first_before = _count(out.events(), "rx1")
    assert via_first_before >= 5_000 and _count(out.events(), "rx2") == 0  # the lower priority sink idles
    rx1.stop(drain_timeout_s=10)
    tx.wait_finished(timeout_s=120)
    wait_until(lambda: len({int(e.body) for e in out.events()}) == total, 60, interval_s=0.5,
               what="every event, the rest through the second collector")
    events = out.events()
    assert sorted({int(e.body) for e in events}) == list(range(total))
    assert _count(events, "rx2") > 0
    assert len(events) - total <= 2 * BATCH


def test_load_balance_group_spreads_over_both_collectors(deployed, tmp_path):
    total = 10_000
    first, second = free_port(), free_port()
    out = testing.collector("avro-lb")
    out.clear()
    deployed(receiver("lb1", first, tmp_path, out="avro-lb"))
    deployed(receiver("lb2", second, tmp_path, out="avro-lb"))
    group = {"sinks": ["k1", "k2"], "processor": {"type": "load_balance", "selector": "round_robin"}}
    tx = deployed(sender("tx-lb", total, {"k1": first, "k2": second}, group))
    tx.wait_finished(timeout_s=120)
    wait_until(lambda: len(out.events()) >= total, 60, interval_s=0.5, what="every event")
    events = out.events()
    assert sorted(int(e.body) for e in events) == list(range(total))
    assert _count(events, "lb1") > total // 5 and _count(events, "lb2") > total // 5


def _count(events, receiver_name: str) -> int:
    return sum(1 for e in events if e.headers.get("receiver") == receiver_name)
