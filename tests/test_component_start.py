"""A component that cannot start yet keeps its actor and says why; it starts once it can."""
from __future__ import annotations

import os

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
