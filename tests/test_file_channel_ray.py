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
import threading

import pytest
import ray

from rayflume import testing
from rayflume._private.actors import _ChannelHandlePort
from rayflume.channels.file.config import FileChannelConfig
from rayflume.errors import ChannelError
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


@pytest.mark.slow
def test_sigkill_file_channel_actor_10_times(deployed, tmp_path):
    crash_run(deployed, tmp_path, "fc-crash", kills=10, seed=1)


@pytest.mark.chaos
def test_sigkill_file_channel_actor_100_times(deployed, tmp_path):
    crash_run(deployed, tmp_path, "fc-chaos", kills=100, seed=2)


class GatedFileChannelConfig(FileChannelConfig):
    """The file channel, whose opening waits (as a long recovery does, in the actor's constructor)
    until the knob named ``gate`` holds True: a test decides how long a restart takes. While it
    waits, the knob ``<gate>-waiting`` holds True."""

    gate: str

    def build(self, name: str):
        gate, waiting = testing.knob(self.gate), testing.knob(f"{self.gate}-waiting")
        if not gate.get():
            waiting.set(True)
            try:
                wait_until(gate.get, timeout_s=120, interval_s=0.1, what=f"the test to open the gate of '{name}'")
            except AssertionError as exc:
                raise ChannelError(f"channel '{name}': {exc}") from None
        waiting.set(False)
        return super().build(name)


@pytest.mark.slow
def test_stop_waits_for_a_channel_reopening_after_a_crash_and_drains_it(deployed, tmp_path):
    """A channel killed just before ``stop`` is still restarting (recovering) when the drain
    starts: the drain waits for it (it used to count it as not drainable, and stop left its
    events undelivered)."""
    name = "fc-reopen"
    gate, slow = testing.knob(name), testing.knob(f"{name}-delay")
    gate.set(True)
    slow.set(0.1)  # the sink writes 200 events per 0.1 s: a backlog builds up in the channel
    out = testing.collector(name)
    handle = deployed({
        "name": name,
        "metrics": {"port": None},
        "sources": {"gen": {"type": "sequence", "total_events": 20_000, "batch_size": 500, "channels": ["disk"]}},
        "channels": {"disk": {"type": GatedFileChannelConfig, "gate": name, "capacity": 20_000,
                              "checkpoint_dir": str(tmp_path / "cp"), "data_dirs": [str(tmp_path / "data")],
                              "minimum_required_space_bytes": 1 << 20, "lease_timeout_s": 5}},
        "sinks": {"out": {"type": "flaky_sink", "channel": "disk", "collector": name, "batch_size": 200,
                          "write_delay_knob": f"{name}-delay"}},
    })
    channel = ray.get_actor(f"{name}/channel/disk", namespace="rayflume")
    source = ray.get_actor(f"{name}/source/gen", namespace="rayflume")
    wait_until(lambda: ray.get(channel.size.remote(), timeout=30) >= 5_000, timeout_s=60,
               what="a backlog in the channel")
    gate.set(False)
    os.kill(current_pid(channel), signal.SIGKILL)
    waiting = testing.knob(f"{name}-waiting")
    wait_until(lambda: waiting.get() is True, timeout_s=60, what="the restarted channel to wait for its gate")

    stopped = {}
    stopper = threading.Thread(target=lambda: stopped.update(handle.stop(drain_timeout_s=120)))
    stopper.start()
    wait_until(lambda: ray.get(source.info.remote(), timeout=30)["stopping"], timeout_s=60,
               what="stop to stop the source")
    stopper.join(timeout=3)
    assert stopper.is_alive(), f"stop returned while the channel was reopening: {stopped}"
    slow.set(0)
    gate.set(True)
    stopper.join(timeout=180)
    assert not stopper.is_alive() and stopped["not_drained"] == {} and stopped["undrained"] == {"disk": 0}, stopped
    acknowledged = int(stopped["final_metrics"]["SOURCE.gen"]["EventAcceptedCount"])
    assert acknowledged >= 5_000  # the backlog waited for before the kill
    assert set(range(acknowledged)) <= {int(b) for b in out.bodies()}, "an acknowledged event was not delivered"
