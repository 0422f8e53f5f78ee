"""Soak: a durable pipeline running for a long time (RAYFLUME_SOAK_S, default 600 s).

Run with `python -m pytest -m soak`. ``sequence -> file channel -> file_roll``: the sink writes
every event's body (the counter, zero-padded to a fixed width) to disk, and afterwards the files
are read back with a streaming reader into a bitmap (:class:`tests.chaos.NumberedLines`), so the
test never holds the events themselves. Checks, by identity: every acknowledged counter was
delivered, nothing never generated was delivered, every duplicate is one the sink counted; and
that the channel and sink actors' memory does not keep growing.
"""
from __future__ import annotations

import os
import time

import pytest
import ray

from tests.channel_contract import wait_until
from tests.chaos import NumberedLines, ranges, sink_duplicates

SOAK_S = float(os.environ.get("RAYFLUME_SOAK_S", "600"))
BODY_SIZE = 12  # counters up to 10**12, fixed width: the reader parses whole rows with numpy
BATCH = 1000


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 1e6


@pytest.mark.soak
@pytest.mark.timeout(SOAK_S + 600)  # the run itself, plus warm-up, drain and reading the output
def test_file_channel_pipeline_soak(deployed, tmp_path):
    out_dir = tmp_path / "out"
    handle = deployed({
        "name": "soak", "metrics": {"port": None},
        "sources": {"gen": {"type": "sequence", "batch_size": BATCH, "body_size": BODY_SIZE, "channels": ["disk"]}},
        "channels": {"disk": {"type": "file", "capacity": 100_000, "checkpoint_dir": str(tmp_path / "cp"),
                              "data_dirs": [str(tmp_path / "data")], "checkpoint_interval_s": 5,
                              "minimum_required_space_bytes": 1 << 20}},
        "sinks": {"out": {"type": "file_roll", "channel": "disk", "batch_size": BATCH, "directory": str(out_dir),
                          "roll_interval_s": 30}},
    })
    channel = ray.get_actor("soak/channel/disk", namespace="rayflume")
    sinks = ray.get_actor("soak/sinks/out", namespace="rayflume")
    pids = {"channel": ray.get(channel.pid.remote()), "sinks": ray.get(sinks.pid.remote())}
    wait_until(lambda: int(handle.metrics()["SINK.out"].get("EventDrainSuccessCount", 0)) > 100_000, timeout_s=120,
               interval_s=0.5, what="the pipeline to warm up")
    start = {k: rss_mb(p) for k, p in pids.items()}
    deadline = time.monotonic() + SOAK_S
    output = NumberedLines(out_dir, BODY_SIZE)
    while time.monotonic() < deadline:
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
        assert handle.status()["state"] == "RUNNING"
        output.scan()  # read as the files grow: the end of the test reads only the tail
    end = {k: rss_mb(p) for k, p in pids.items()}
    result = handle.stop(drain_timeout_s=120)
    m = result["final_metrics"]
    assert not any(result["undrained"].values()), result["undrained"]
    assert not result["not_drained"], result["not_drained"]
    t0 = time.monotonic()
    output.scan()
    read_s = time.monotonic() - t0

    acknowledged = int(m["SOURCE.gen"]["EventAcceptedCount"])  # counters 0 .. acknowledged-1
    # the source generates a batch before it is acknowledged: at stop, one may have been in flight
    generated = acknowledged + BATCH
    lost = output.missing(acknowledged)
    unexpected = output.beyond(generated)
    in_flight = output.beyond(acknowledged).size - unexpected.size
    duplicates = output.extra
    counted = sink_duplicates(m)
    restarts = sum(int(v.get("Restarts", 0) or 0) for v in m.values())
    print(f"soak {SOAK_S:.0f}s: {acknowledged:,} acknowledged, {output.lines:,} delivered ({in_flight} of the batch "
          f"in flight at stop), {lost.size} lost, {unexpected.size} unexpected, {output.malformed} malformed, "
          f"{duplicates} duplicates ({counted} counted by the sink), {restarts} restarts; output read back in "
          f"{read_s:.1f}s after the run; rss MB {start} -> {end}")
    assert acknowledged > 100_000
    assert lost.size == 0, f"{lost.size} acknowledged events lost, ranges {ranges(lost)}"
    assert unexpected.size == 0, f"{unexpected.size} events never generated were delivered: {ranges(unexpected)}"
    assert output.malformed == 0, f"malformed output lines, e.g. {output.malformed_examples}"
    assert not output.unterminated(), f"a file ends in a partial line: {output.unterminated()}"
    # without faults a duplicate can only come from a lease that expired under the sink, which counts it
    assert duplicates <= counted + BATCH * restarts, (duplicates, counted, restarts)
    assert m["CHANNEL.disk"]["CorruptRecordCount"] == "0"
    for k in pids:
        assert end[k] < start[k] + 300, f"{k} actor memory grew from {start[k]:.0f} to {end[k]:.0f} MB"
