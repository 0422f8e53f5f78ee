"""Soak: a durable pipeline running for a long time (RAYFLUME_SOAK_S, default 600 s).

Run with `python -m pytest -m soak`. Checks that nothing acknowledged is lost, nothing unsent
arrives, and the channel and sink actors' memory does not keep growing.
"""
from __future__ import annotations

import os
import time

import pytest
import ray

from tests.channel_contract import wait_until

SOAK_S = float(os.environ.get("RAYFLUME_SOAK_S", "600"))


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 1e6


@pytest.mark.soak
@pytest.mark.timeout(SOAK_S + 600)  # the run itself, plus warm-up and drain
def test_file_channel_pipeline_soak(deployed, tmp_path):
    handle = deployed({
        "name": "soak", "metrics": {"port": None},
        "sources": {"gen": {"type": "sequence", "batch_size": 1000, "channels": ["disk"]}},
        "channels": {"disk": {"type": "file", "capacity": 100_000, "checkpoint_dir": str(tmp_path / "cp"),
                              "data_dirs": [str(tmp_path / "data")], "checkpoint_interval_s": 5,
                              "minimum_required_space_bytes": 1 << 20}},
        # counts only: keeping every event of a long run in the collector would be the leak
        "sinks": {"out": {"type": "null", "channel": "disk", "batch_size": 1000}},
    })
    channel = ray.get_actor("soak/channel/disk", namespace="rayflume")
    sinks = ray.get_actor("soak/sinks/out", namespace="rayflume")
    pids = {"channel": ray.get(channel.pid.remote()), "sinks": ray.get(sinks.pid.remote())}
    wait_until(lambda: int(handle.metrics()["SINK.out"]["EventDrainSuccessCount"]) > 100_000, timeout_s=120,
               what="the pipeline to warm up")
    start = {k: rss_mb(p) for k, p in pids.items()}
    deadline = time.monotonic() + SOAK_S
    while time.monotonic() < deadline:
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
        assert handle.status()["state"] == "RUNNING"
    end = {k: rss_mb(p) for k, p in pids.items()}
    result = handle.stop(drain_timeout_s=120)
    m = result["final_metrics"]
    accepted = int(m["SOURCE.gen"]["EventAcceptedCount"])
    drained = int(m["SINK.out"]["EventDrainSuccessCount"])
    print(f"soak {SOAK_S:.0f}s: {accepted:,} accepted, {drained:,} delivered, rss MB {start} -> {end}")
    assert drained >= accepted, "everything acknowledged was delivered"
    assert drained <= int(m["SOURCE.gen"]["EventReceivedCount"]), "nothing unsent arrived"
    assert m["CHANNEL.disk"]["CorruptRecordCount"] == "0"
    for k in pids:
        assert end[k] < start[k] + 300, f"{k} actor memory grew from {start[k]:.0f} to {end[k]:.0f} MB"
