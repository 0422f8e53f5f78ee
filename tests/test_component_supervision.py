"""Supervision beyond Ray's restarts: a component that cannot start yet keeps its actor and says
why; a channel whose restarts are exhausted is replaced and its users switch to the new actor."""
from __future__ import annotations

import os
import signal
import time

import pytest
import ray

from rayflume import testing
from tests.channel_contract import wait_until


def test_sink_that_cannot_start_reports_it_retries_and_then_delivers(deployed, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the sink wants a directory")
    out_dir = blocker / "out"
    handle = deployed({
        "name": "late-sink",
        "sources": {"gen": {"type": "sequence", "total_events": 2000, "batch_size": 500, "channels": ["mem"]}},
        "channels": {"mem": {"type": "memory", "capacity": 10000}},
        "sinks": {"out": {"type": "file_roll", "channel": "mem", "directory": str(out_dir)}},
        "metrics": {"port": None},
    })

    def sink_entry():
        return next(c for c in handle.status()["components"] if c["kind"] == "SINK")

    wait_until(lambda: "failed to start" in (sink_entry().get("error") or ""), timeout_s=60, interval_s=0.5,
               what="the sink to report its failed start")
    entry = sink_entry()
    assert entry["state"] == "ALIVE" and entry["restarts"] == 0, entry  # the actor lives on
    assert "NotADirectoryError" in entry["error"] or "Not a directory" in entry["error"], entry

    os.remove(blocker)  # now the directory can be made: the next retry starts the sink
    handle.wait_finished(timeout_s=120)
    lines = sorted(int(x) for f in out_dir.iterdir() for x in f.read_bytes().splitlines())
    assert lines == list(range(2000))
    assert not sink_entry().get("error")


def test_a_replaced_channel_is_used_by_its_source_and_sink(deployed, tmp_path):
    """A file channel with max_restarts 0 is SIGKILLed mid-stream: the controller replaces it,
    the source and the sink switch to the new actor, and every acknowledged event arrives."""
    feed = testing.feed("replaced-in")
    out = testing.collector("replaced-out")
    out.clear()
    handle = deployed({
        "name": "replaced",
        "sources": {"in": {"type": "testing_feed", "feed": "replaced-in", "channels": ["disk"]}},
        "channels": {"disk": {"type": "file", "max_restarts": 0, "checkpoint_dir": str(tmp_path / "cp"),
                              "data_dirs": [str(tmp_path / "data")]}},
        "sinks": {"out": {"type": "testing_sink", "channel": "disk", "collector": "replaced-out",
                          "batch_size": 100}},
        "metrics": {"port": None},
    })
    sent = 0

    def push(n):
        nonlocal sent
        feed.push([str(i) for i in range(sent, sent + n)])
        sent += n

    for _ in range(5):
        push(200)
    out.wait_for(500, timeout_s=60)
    channel = ray.get_actor("replaced/channel/disk", namespace="rayflume")
    os.kill(ray.get(channel.pid.remote()), signal.SIGKILL)
    for _ in range(5):
        push(200)  # sent while the channel is dead or being replaced
    wait_until(lambda: any("channel 'disk' is dead" in e["message"] for e in handle.status()["events"]),
               timeout_s=60, interval_s=0.5, what="the controller to replace the channel")
    for _ in range(5):
        push(200)
    feed.close()
    handle.wait_finished(timeout_s=120)
    got = [int(b) for b in out.bodies()]
    assert set(got) == set(range(sent)), f"lost: {sorted(set(range(sent)) - set(got))[:20]}"
    assert len(got) - sent <= 200  # duplicates: at most the batches in flight at the kill
    assert ray.get_actor("replaced/channel/disk", namespace="rayflume")._actor_id != channel._actor_id


def test_a_channel_that_cannot_open_reports_it_and_opens_later(deployed, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the channel wants its directories")
    handle = deployed({
        "name": "late-channel",
        "sources": {"gen": {"type": "sequence", "total_events": 1000, "batch_size": 250, "channels": ["disk"]}},
        "channels": {"disk": {"type": "file", "checkpoint_dir": str(blocker / "cp"),
                              "data_dirs": [str(blocker / "data")]}},
        "sinks": {"out": {"type": "testing_sink", "channel": "disk", "collector": "late-channel"}},
        "metrics": {"port": None},
    })
    out = testing.collector("late-channel")
    out.clear()

    def channel_entry():
        return next(c for c in handle.status()["components"] if c["kind"] == "CHANNEL")

    wait_until(lambda: "failed to start" in (channel_entry().get("error") or ""), timeout_s=60, interval_s=0.5,
               what="the channel to report that it cannot open")
    entry = channel_entry()
    assert entry["state"] == "ALIVE" and entry["restarts"] == 0, entry
    os.remove(blocker)
    handle.wait_finished(timeout_s=120)
    assert sorted(int(b) for b in out.bodies()) == list(range(1000))
    assert not channel_entry().get("error")


@pytest.mark.slow
def test_stop_drains_what_is_alive_and_says_what_it_could_not(deployed, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("the channel can never open here")
    handle = deployed({
        "name": "half-stop",
        "sources": {"gen": {"type": "sequence", "total_events": 500, "batch_size": 100,
                            "channels": ["mem", "disk"]}},
        "channels": {"mem": {"type": "memory"},
                     "disk": {"type": "file", "checkpoint_dir": str(blocker / "cp"),
                              "data_dirs": [str(blocker / "data")]}},
        "sinks": {"a": {"type": "null", "channel": "mem"}, "b": {"type": "null", "channel": "disk"}},
        "metrics": {"port": None},
    })
    wait_until(lambda: any("failed to start" in (c.get("error") or "") for c in handle.status()["components"]
                           if c["kind"] == "CHANNEL"), timeout_s=60, interval_s=0.5, what="the channel's error")
    t = time.monotonic()
    result = handle.stop(drain_timeout_s=60)
    assert time.monotonic() - t < 45, "stop waited for a channel that cannot be drained"
    assert "ChannelError" in result["not_drained"]["disk"] and "not open" in result["not_drained"]["disk"]
    assert result["undrained"] == {"mem": 0}
