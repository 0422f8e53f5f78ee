"""The file channel as a supervised Ray actor, killed with SIGKILL while events stream through it.

Oracle (Jepsen's total-queue): every event the source saw acknowledged reaches the sink at least
once; nothing arrives that the source never sent (a batch in flight when the source stopped may
or may not arrive: its put is indeterminate); duplicates are bounded: a kill can return to the
queue only what the sink holds uncommitted, which is its sink window (the batch being written,
the prefetched take and the commits not yet answered).
"""
from __future__ import annotations

import os
import random
import signal

import pytest
import ray

from rayflume import testing
from rayflume._private.actors import _ChannelHandlePort
from tests.channel_contract import wait_until


def current_pid(actor, timeout_s: float = 60.0) -> int:
    """The actor's pid, waiting out a restart in progress."""
    pid = []

    def ask():
        try:
            pid.append(ray.get(actor.pid.remote(), timeout=5))
            return True
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            return False

    wait_until(ask, timeout_s=timeout_s, interval_s=0.1, what="the actor to be available")
    return pid[0]


def crash_run(deployed, tmp_path, name: str, kills: int, seed: int):
    rng = random.Random(seed)
    out = testing.collector(name)
    handle = deployed({
        "name": name,
        "metrics": {"port": None},
        "sources": {"gen": {"type": "sequence", "batch_size": 500, "channels": ["disk"]}},
        "channels": {"disk": {"type": "file", "capacity": 20_000, "transaction_capacity": 1000,
                              "checkpoint_dir": str(tmp_path / "cp"), "data_dirs": [str(tmp_path / "data")],
                              "checkpoint_interval_s": 1, "minimum_required_space_bytes": 1 << 20,
                              "lease_timeout_s": 5}},
        "sinks": {"out": {"type": "testing_sink", "channel": "disk", "collector": name, "batch_size": 1000}},
    })
    channel = ray.get_actor(f"{name}/channel/disk", namespace="rayflume")
    pids = set()
    for _ in range(kills):
        before = out.count()
        # let some events through after each restart, then kill at a random moment
        wait_until(lambda: out.count() > before + rng.randint(1, 3000), timeout_s=90,
                   what="events to flow after the last kill")
        pid = current_pid(channel)
        pids.add(pid)
        os.kill(pid, signal.SIGKILL)
    result = handle.stop(drain_timeout_s=120)
    final = result["final_metrics"]
    acknowledged = int(final["SOURCE.gen"]["EventAcceptedCount"])
    attempted = int(final["SOURCE.gen"]["EventReceivedCount"])  # acknowledged + the batch in flight
    delivered = [int(b) for b in out.bodies()]
    seen = set(delivered)
    lost = set(range(acknowledged)) - seen
    unexpected = seen - set(range(attempted))
    duplicates = len(delivered) - len(seen)
    assert attempted - acknowledged <= 500
    print(f"{name}: {kills} kills, {acknowledged} acknowledged, {len(lost)} lost, "
          f"{len(unexpected)} unexpected, {duplicates} duplicates")
    assert len(pids) == kills, "each kill hit a new incarnation of the channel actor"
    assert not lost, f"{len(lost)} acknowledged events lost, e.g. {sorted(lost)[:10]}"
    assert not unexpected, f"unexpected events: {sorted(unexpected)[:10]}"
    assert int(final["CHANNEL.disk"]["Restarts"]) == kills
    assert acknowledged > 0
    sink_window = (_ChannelHandlePort.MAX_PENDING_COMMITS + 2) * 1000  # batches of batch_size 1000
    assert duplicates <= kills * sink_window, f"{duplicates} duplicates for {kills} kills"
    return duplicates


def test_sigkill_file_channel_actor_10_times(deployed, tmp_path):
    crash_run(deployed, tmp_path, "fc-crash", kills=10, seed=1)


@pytest.mark.chaos
def test_sigkill_file_channel_actor_100_times(deployed, tmp_path):
    crash_run(deployed, tmp_path, "fc-chaos", kills=100, seed=2)
