"""The spillable channel's ``mode: dual`` (issue 18): memory while the backlog is below
``switch_threshold``, the file log from there until it falls below ``switch_back_threshold``; FIFO
across any number of switches; only what is on disk survives a crash.

Most cases run the channel object itself, without Ray. The last two deploy sequence -> dual
spillable -> a sink whose speed the test changes while it runs (``flaky_sink`` with a
``write_delay_knob``):

* a sink that slows down and speeds up: the backlog crosses ``switch_threshold`` (puts go to the
  fsynced file log) and falls back below ``switch_back_threshold`` (puts go to memory again), twice,
  and the source's events arrive exactly once and in order;
* a SIGKILL of the channel's actor in disk mode: every event the source had acknowledged while the
  channel was in disk mode arrives (checked event by event); only the memory part's events may be
  lost, as documented. The oracle is Jepsen's total queue, as in ``tests/test_file_channel_ray.py``.
"""
from __future__ import annotations

import errno
import os
import random
import signal
import textwrap
import threading

import pytest
import ray
from pydantic import ValidationError

from rayflume import testing
from rayflume.channels.file import ChannelWriteError, FileIO
from rayflume.channels.spillable import SpillableChannel, SpillableChannelConfig
from rayflume.errors import ChannelFull, ConfigError
from rayflume.topology import loads_topology
from tests.channel_contract import ReopeningContract, closing_factory, drain, numbered, numbers, wait_until
from tests.test_file_channel import FaultyIO
from tests.test_file_channel_ray import current_pid
from tests.test_file_channel_recovery import flip_bit, spans


def dual(tmp_path, memory_capacity=100, overflow_capacity=1000, switch_threshold=10,
         switch_back_threshold=4, **options) -> SpillableChannel:
    options.setdefault("checkpoint_dir", str(tmp_path / "checkpoint"))
    options.setdefault("data_dirs", [str(tmp_path / "data")])
    options.setdefault("minimum_required_space_bytes", 0)
    return SpillableChannel("dual", memory_capacity=memory_capacity, overflow_capacity=overflow_capacity,
                            mode="dual", switch_threshold=switch_threshold,
                            switch_back_threshold=switch_back_threshold, **options)


@pytest.fixture
def channels(tmp_path):
    with closing_factory(lambda **options: dual(tmp_path, **options)) as factory:
        yield factory


def crash(ch: SpillableChannel) -> None:
    """Lose the memory part; leave the overflow's files as after a crash (no checkpoint)."""
    ch.overflow.close(checkpoint=False)


def where(ch: SpillableChannel) -> tuple[int, int, int, int]:
    """(events in memory, events on disk, DiskMode, ModeSwitchCount)."""
    m = ch.metrics()
    return m["MemoryChannelSize"], m["OverflowChannelSize"], m["DiskMode"], m["ModeSwitchCount"]


def take_commit(ch: SpillableChannel, n: int) -> list[int]:
    lease, b = ch.take(n)
    ch.commit(lease)
    return numbers(b)


# -- the shared contract ------------------------------------------------------------------------
class _DualContract(ReopeningContract):
    def split(self, capacity):  # pragma: no cover - overridden
        """(memory_capacity, overflow_capacity, switch_threshold, switch_back_threshold)."""
        raise NotImplementedError  # every concrete contract class below defines its split

    def open_channel(self, tmp_path, **options):
        memory, overflow, threshold, back = self.split(options.pop("capacity", None))
        ch = dual(tmp_path, memory_capacity=memory, overflow_capacity=overflow,
                  switch_threshold=threshold, switch_back_threshold=back, **options)
        assert ch.capacity == memory + overflow
        return ch


class TestDualCrossingThresholds(_DualContract):
    """Thresholds of a few events: the cases' puts cross them both ways (most go to disk), and the
    reopen cases find on disk what they put there."""

    durable = True

    def split(self, capacity):
        if capacity is None:
            return 12, 100_000, 6, 3
        memory = min(capacity // 2, 12)
        threshold = max(2, min(6, memory))
        return memory, capacity - memory, threshold, threshold // 2

    def test_capacity_in_bytes(self):
        # byte_capacity bounds the memory part only; past the threshold everything is on disk.
        one = numbered(0, 10, size=100)
        ch = self.make(byte_capacity=one.nbytes * 2 + 10)
        for i in range(3):
            ch.put(numbered(i * 10, 10, size=100), f"t{i}")
        assert ch.metrics()["SpilledEventCount"] == 30
        assert drain(ch) == list(range(30))

    def test_the_cases_cross_the_thresholds(self):
        ch = self.make(capacity=1000, transaction_capacity=100)
        ch.put(numbered(0, 2), "m")
        ch.put(numbered(2, 10), "d")
        assert where(ch)[2:] == (1, 1)
        assert drain(ch) == list(range(12))
        ch.put(numbered(12, 1), "m2")
        assert where(ch) == (1, 0, 0, 2)


class TestDualBelowThresholds(_DualContract):
    """Thresholds as high as memory: the cases stay in memory mode, except those that fill the
    channel (the last events of its capacity go to the file log)."""

    def split(self, capacity):
        if capacity is None:
            return 100_000, 100_000, 100_000, 50_000
        return capacity - 1, 1, capacity - 1, (capacity - 1) // 2

    def test_capacity_in_bytes(self):
        # byte_capacity bounds the memory part only: a put that does not fit in memory spills.
        one = numbered(0, 10, size=100)
        ch = self.make(byte_capacity=one.nbytes * 2 + 10)
        for i in range(3):
            ch.put(numbered(i * 10, 10, size=100), f"t{i}")
        m = ch.metrics()
        assert (m["MemoryChannelSize"], m["SpilledEventCount"], m["DiskMode"]) == (20, 10, 0)
        ch.put(numbered(30, 1, size=100), "t3")  # memory mode, but behind a spilled put: still FIFO
        assert drain(ch) == list(range(31))


# -- switching ----------------------------------------------------------------------------------
def test_switches_at_the_threshold_and_back_below_the_lower_one(channels):
    ch = channels(switch_threshold=10, switch_back_threshold=4)
    ch.put(numbered(0, 5), "a")
    ch.put(numbered(5, 4), "b")  # backlog 9: below the threshold
    assert where(ch) == (9, 0, 0, 0)
    ch.put(numbered(9, 1), "c")  # reaches it: this put goes to disk
    assert where(ch) == (9, 1, 1, 1)
    ch.put(numbered(10, 3), "d")
    assert where(ch) == (9, 4, 1, 1)
    # between the thresholds: still disk mode, however the backlog moves (no flapping)
    assert take_commit(ch, 7) == list(range(7))  # backlog 6
    ch.put(numbered(13, 1), "e")
    assert take_commit(ch, 3) == [7, 8, 9]  # backlog 4: not below 4
    ch.put(numbered(14, 1), "f")
    assert where(ch) == (0, 5, 1, 1)
    # below switch_back_threshold: memory mode as soon as a commit gets there
    assert take_commit(ch, 2) == [10, 11]  # backlog 3
    assert where(ch) == (0, 3, 0, 2)
    ch.put(numbered(15, 2), "g")
    assert where(ch) == (2, 3, 0, 2)
    assert ch.metrics()["SpilledEventCount"] == 6
    # memory events newer than disk ones leave after them
    assert drain(ch, batch=2) == [12, 13, 14, 15, 16]
    assert where(ch)[2:] == (0, 2)


def test_each_crossing_is_one_switch(channels):
    ch = channels(switch_threshold=10, switch_back_threshold=4)
    ch.put(numbered(0, 10), "a")  # one put straight to disk
    assert where(ch) == (0, 10, 1, 1)
    assert take_commit(ch, 7) == list(range(7))  # backlog 3: memory mode
    assert where(ch)[2:] == (0, 2)
    ch.put(numbered(10, 7), "b")  # 3 + 7 reaches 10: disk again, one switch
    assert where(ch) == (0, 10, 1, 3)
    assert take_commit(ch, 8) == list(range(7, 15))  # backlog 2: back to memory
    ch.put(numbered(17, 7), "c")  # 2 + 7 < 10: memory
    assert where(ch) == (7, 2, 0, 4)
    assert drain(ch) == list(range(15, 24))


def test_no_flapping_while_the_backlog_moves_between_the_thresholds(channels):
    ch = channels(switch_threshold=20, switch_back_threshold=5)
    ch.put(numbered(0, 20), "up")
    assert where(ch)[2:] == (1, 1)
    nxt = 20
    for i in range(30):  # hover between 6 and 20
        ch.put(numbered(nxt, 1), f"p{i}")
        nxt += 1
        take_commit(ch, 1 if ch.size() <= 6 else 2)
    assert where(ch)[2:] == (1, 1)
    assert ch.metrics()["SpilledEventCount"] == 50


def test_order_kept_across_many_switches_with_rollbacks(channels):
    ch = channels(switch_threshold=12, switch_back_threshold=5, lease_timeout_s=60)
    rng = random.Random(7)
    put = 0
    got: list[int] = []
    for step in range(400):
        if rng.random() < 0.55 and ch.size() < 40:
            k = rng.randint(1, 6)
            ch.put(numbered(put, k), f"t{put}")
            put += k
        elif ch.size():
            lease, b = ch.take(rng.randint(1, 15))
            if rng.random() < 0.25:
                ch.rollback(lease)  # back to the head: the next take sees them first
            else:
                ch.commit(lease)
                got += numbers(b)
    got += drain(ch, batch=7)
    assert got == list(range(put))
    m = ch.metrics()
    assert m["ModeSwitchCount"] >= 6, m
    assert 0 < m["SpilledEventCount"] < put


def test_a_take_spans_runs_in_order(channels):
    ch = channels(switch_threshold=10, switch_back_threshold=4)
    ch.put(numbered(0, 6), "m1")
    ch.put(numbered(6, 6), "d1")  # 12 >= 10: disk
    assert take_commit(ch, 9) == list(range(9))  # backlog 3: memory mode
    ch.put(numbered(12, 3), "m2")
    ch.put(numbered(15, 4), "d2")  # 10: disk
    assert where(ch) == (3, 7, 1, 3)
    # runs now: disk [9..11], memory [12..14], disk [15..18]: one take walks all three
    lease, b = ch.take(10)
    assert numbers(b) == list(range(9, 19))
    ch.rollback(lease)
    lease, b = ch.take(5)
    assert numbers(b) == list(range(9, 14))
    lease2, b2 = ch.take(5)
    assert numbers(b2) == list(range(14, 19))
    ch.rollback(lease2)
    ch.rollback(lease)  # older lease last: back at the head, in order
    assert drain(ch, batch=4) == list(range(9, 19))


def test_concurrent_sources_keep_their_own_order(channels):
    ch = channels(memory_capacity=200, overflow_capacity=5000, switch_threshold=60,
                  switch_back_threshold=20, transaction_capacity=100)
    sources, per_source, per_put = 4, 1500, 15
    done = threading.Event()
    got: list[int] = []

    def produce(s):
        base = s * 100_000
        for i in range(0, per_source, per_put):
            while True:
                try:
                    ch.put(numbered(base + i, per_put), f"s{s}-{i}")
                    break
                except ChannelFull:
                    done.wait(0.001)

    def consume():
        rng = random.Random(3)
        while not done.is_set() or ch.size():
            t = ch.take(rng.randint(5, 60), timeout_s=0.05)
            if t is None:
                continue
            got.extend(numbers(t[1]))
            ch.commit(t[0])
            if rng.random() < 0.3:
                done.wait(0.002)  # a sink that slows down now and then: the backlog moves

    threads = [threading.Thread(target=produce, args=(s,)) for s in range(sources)]
    consumer = threading.Thread(target=consume)
    for t in [*threads, consumer]:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    consumer.join(60)
    for s in range(sources):
        mine = [e - s * 100_000 for e in got if s * 100_000 <= e < (s + 1) * 100_000]
        assert mine == list(range(per_source)), f"source {s} out of order or incomplete"
    m = ch.metrics()
    assert m["ModeSwitchCount"] >= 2 and m["SpilledEventCount"] > 0, m


class GatedIO(FileIO):
    """FileIO whose fsyncs wait while ``closed`` is set (a slow disk, held still by the test)."""

    def __init__(self):
        self.closed = threading.Event()
        self.waiting = threading.Event()
        self.released = threading.Event()

    def fsync(self, fd):
        if self.closed.is_set():
            self.waiting.set()
            self.released.wait(30)
        super().fsync(fd)


def test_a_memory_put_waits_for_a_disk_put_in_flight(channels):
    """A put to memory while a disk put has not returned would be taken before it although it may
    be newer (the disk put's source could have put again meanwhile, through another thread's group
    commit): it waits for the disk put, so the runs follow the order puts returned in."""
    io = GatedIO()
    big = numbered(0, 3, size=300)
    ch = channels(switch_threshold=10, switch_back_threshold=4, byte_capacity=big.nbytes - 1, io=io)
    io.closed.set()
    spill = threading.Thread(target=ch.put, args=(big, "spill"))  # memory mode, no room in bytes
    spill.start()
    wait_until(io.waiting.is_set, timeout_s=10, what="the spilled put to reach its fsync")
    small = threading.Thread(target=ch.put, args=(numbered(3, 1), "small"))
    small.start()
    small.join(0.3)
    assert small.is_alive(), "a memory put went ahead of a disk put in flight"
    io.released.set()
    spill.join(10)
    small.join(10)
    assert where(ch)[1:] == (3, 0, 0)
    assert drain(ch) == [0, 1, 2, 3]


# -- capacity -------------------------------------------------------------------------------------
def test_capacity_is_the_total_in_either_part(channels):
    ch = channels(memory_capacity=10, overflow_capacity=5, switch_threshold=4, switch_back_threshold=2)
    ch.put(numbered(0, 3), "m")
    ch.put(numbered(3, 5), "d")
    ch.put(numbered(8, 7), "d2")  # the file log uses memory's share: 12 events on disk
    assert where(ch)[:2] == (3, 12)
    assert ch.size() == ch.capacity == 15
    with pytest.raises(ChannelFull) as err:
        ch.put(numbered(15, 1), "full")
    assert "dual" in str(err.value) and "full" in str(err.value)
    assert ch.metrics()["EventPutErrorCount"] == 1
    ch.put(numbered(3, 5), "d")  # a retry of a stored put is a no-op even when full
    assert drain(ch) == list(range(15))


# -- failures and crashes ---------------------------------------------------------------------------
def test_a_commit_that_fails_on_disk_keeps_the_whole_lease(channels):
    io = FaultyIO()
    ch = channels(switch_threshold=6, switch_back_threshold=3, io=io)
    ch.put(numbered(0, 4), "m1")
    ch.put(numbered(4, 4), "d1")
    assert take_commit(ch, 6) == list(range(6))  # backlog 2: memory mode
    ch.put(numbered(8, 2), "m2")
    ch.put(numbered(10, 3), "d2")
    lease, b = ch.take(11)  # disk, memory, disk
    assert numbers(b) == list(range(6, 13))
    io.fsync_errno = errno.EIO
    with pytest.raises(ChannelWriteError):
        ch.commit(lease)
    assert ch.size() == 7
    io.fsync_errno = None
    ch.commit(lease)
    assert ch.size() == 0


def test_lease_expiry_returns_every_part_in_order(channels):
    ch = channels(switch_threshold=6, switch_back_threshold=3, lease_timeout_s=0.2)
    ch.put(numbered(0, 4), "m")
    ch.put(numbered(4, 4), "d")
    lease, b = ch.take(6)
    wait_until(lambda: ch.expire_leases() > 0, timeout_s=5, what="the lease to expire")
    assert ch.size() == 8
    assert drain(ch, batch=3) == list(range(8))


def test_an_unreadable_record_is_dropped_without_reordering_the_rest(channels):
    ch = channels(switch_threshold=4, switch_back_threshold=2, cache_bytes=0)  # takes read the disk
    ch.put(numbered(0, 6), "d1")  # one record on disk
    assert take_commit(ch, 5) == list(range(5))  # backlog 1: memory mode
    ch.put(numbered(6, 2), "m")
    ch.put(numbered(8, 4), "d2")  # 7: disk
    segment = ch.overflow.segment_paths()[max(ch.overflow.segment_paths())]
    offset, size = spans(segment)[0]
    flip_bit(segment, offset + size - 5, 0)  # bit rot under the running channel: event 5 is lost
    # the overflow skips the damaged record and would hand out 8 next; 6 and 7 still come first
    assert drain(ch) == list(range(6, 12))
    m = ch.metrics()
    assert (m["OverflowCorruptRecordCount"], m["ChannelSize"]) == (1, 0)
    ch.put(numbered(12, 1), "m2")
    assert drain(ch) == [12]


def test_a_crash_keeps_exactly_what_was_on_disk(channels):
    ch = channels(switch_threshold=10, switch_back_threshold=4)
    ch.put(numbered(0, 6), "m1")  # memory
    ch.put(numbered(6, 6), "d1")  # reaches the threshold: disk
    ch.put(numbered(12, 3), "d2")
    assert take_commit(ch, 2) == [0, 1]
    lease, b = ch.take(6)  # 2..7: memory and disk, never committed
    assert numbers(b) == list(range(2, 8))
    crash(ch)
    ch2 = channels(switch_threshold=10, switch_back_threshold=4)
    # memory (2..5) is gone; the leased disk events 6, 7 come back with the rest of the disk
    assert ch2.size() == 9
    assert where(ch2) == (0, 9, 1, 0)  # the recovered backlog is above switch_back_threshold
    ch2.put(numbered(6, 6), "d1")  # a retried put that was stored on disk: a no-op
    assert ch2.metrics()["DuplicatePutCount"] == 6
    ch2.put(numbered(0, 6), "m1")  # one that was in memory is stored again (disk mode: on disk)
    assert drain(ch2) == list(range(6, 15)) + list(range(6))


def test_a_crash_after_switching_back_loses_only_the_memory_runs(channels):
    ch = channels(switch_threshold=10, switch_back_threshold=4)
    ch.put(numbered(0, 6), "m1")
    ch.put(numbered(6, 6), "d1")  # disk
    assert take_commit(ch, 9) == list(range(9))  # backlog 3: memory mode
    ch.put(numbered(12, 3), "m2")  # memory, behind disk events 9..11
    ch.put(numbered(15, 5), "d2")  # 11: disk
    ch.put(numbered(20, 2), "d3")
    assert where(ch) == (3, 10, 1, 3)
    crash(ch)
    ch2 = channels(switch_threshold=10, switch_back_threshold=4)
    assert drain(ch2) == [9, 10, 11] + list(range(15, 22))


def test_restart_below_the_lower_threshold_starts_in_memory_mode(channels):
    ch = channels(switch_threshold=10, switch_back_threshold=4)
    ch.put(numbered(0, 12), "d")
    assert take_commit(ch, 9) == list(range(9))
    ch.close()
    ch2 = channels(switch_threshold=10, switch_back_threshold=4)
    assert where(ch2) == (0, 3, 0, 0)
    ch2.put(numbered(12, 2), "m")
    assert where(ch2) == (2, 3, 0, 0)
    assert drain(ch2) == list(range(9, 14))


# -- config ---------------------------------------------------------------------------------------
def test_config_builds_a_dual_channel(tmp_path):
    cfg = SpillableChannelConfig(type="spillable", mode="dual", memory_capacity=50, overflow_capacity=500,
                                 switch_threshold=20, checkpoint_dir=str(tmp_path / "c"),
                                 data_dirs=[str(tmp_path / "d")], minimum_required_space_bytes=1 << 20)
    ch = cfg.build("dualcfg")
    try:
        assert (ch.mode, ch.capacity, ch.switch_threshold, ch.switch_back_threshold) == ("dual", 550, 20, 10)
        ch.put(numbered(0, 19), "a")
        ch.put(numbered(19, 1), "b")
        m = ch.metrics()
        assert (m["DiskMode"], m["SpilledEventCount"], m["SwitchThreshold"], m["SwitchBackThreshold"]) == \
            (1, 1, 20, 10)
    finally:
        ch.close()
    defaults = SpillableChannelConfig(type="spillable", mode="dual")
    assert (defaults.memory_capacity, defaults.switch_threshold, defaults.switch_back_threshold) == \
        (10_000, None, None)  # built with switch_threshold = memory_capacity, half of it to go back
    assert SpillableChannelConfig(type="spillable").mode == "spill"


@pytest.mark.parametrize("bad, key", [
    ({"switch_threshold": 100, "switch_back_threshold": 100}, "switch_back_threshold"),
    ({"switch_threshold": 100, "switch_back_threshold": 150}, "switch_back_threshold"),
    ({"memory_capacity": 50, "switch_threshold": 100}, "switch_threshold"),
    ({"memory_capacity": 1}, "switch_threshold"),
    ({"switch_threshold": 1}, "switch_threshold"),
    ({"overflow_capacity": 0}, "overflow_capacity"),
    ({"mode": "both"}, "mode"),
])
def test_config_rejects_bad_dual_settings_naming_the_key(bad, key):
    with pytest.raises(ValidationError) as err:
        SpillableChannelConfig(type="spillable", **{"mode": "dual", **bad})
    assert key in str(err.value)


def test_thresholds_without_dual_are_refused():
    with pytest.raises(ValidationError, match="switch_threshold is only used with mode: dual"):
        SpillableChannelConfig(type="spillable", switch_threshold=10)


def test_topology_validation_names_the_channel_and_the_key():
    with pytest.raises(ConfigError) as err:
        loads_topology(textwrap.dedent("""\
            name: t
            sources: {s: {type: sequence, channels: [c]}}
            channels:
              c: {type: spillable, mode: dual, switch_threshold: 100, switch_back_threshold: 200}
            sinks: {k: {type: "null", channel: c}}
            """))
    [problem] = [e for e in err.value.errors if "switch_back_threshold" in e]
    assert problem.startswith("channels.c") and "below switch_threshold (100)" in problem, problem


def test_constructor_rejects_thresholds_without_dual(tmp_path):
    with pytest.raises(ValueError, match="only used with mode dual"):
        SpillableChannel("x", overflow_capacity=0, switch_threshold=5)
    with pytest.raises(ValueError, match="needs an overflow"):
        SpillableChannel("x", overflow_capacity=0, mode="dual")


# -- on Ray ----------------------------------------------------------------------------------------
SLOW_WRITE_S = 0.1  # a 500-event write: about 5,000 events/s, far below the source's pace
THRESHOLD, BACK = 4000, 1000


def topology(name: str, tmp_path, total_events: int | None) -> dict:
    return {
        "name": name,
        "metrics": {"port": None},
        "sources": {"gen": {"type": "sequence", "batch_size": 200, "total_events": total_events,
                            "channels": ["dual"]}},
        "channels": {"dual": {"type": "spillable", "mode": "dual", "memory_capacity": THRESHOLD,
                              "switch_threshold": THRESHOLD, "switch_back_threshold": BACK,
                              "overflow_capacity": 16_000, "transaction_capacity": 1000,
                              "checkpoint_dir": str(tmp_path / "cp"), "data_dirs": [str(tmp_path / "data")],
                              "checkpoint_interval_s": 1, "minimum_required_space_bytes": 1 << 20,
                              "lease_timeout_s": 5}},
        "sinks": {"out": {"type": "flaky_sink", "channel": "dual", "collector": name, "batch_size": 500,
                          "write_delay_knob": name}},
    }


def channel_metrics(handle) -> dict:
    """The channel's counters as numbers (the handle reports them as strings, as Flume does)."""
    found = handle.metrics().get("CHANNEL.dual") or {}
    return {key: float(value) for key, value in found.items() if key not in ("Type",)}


def wait_for_channel(handle, predicate, what: str, timeout_s: float = 30.0) -> dict:
    seen = {}

    def check():
        seen.update(channel_metrics(handle))
        return bool(seen) and predicate(seen)

    wait_until(check, timeout_s=timeout_s, interval_s=0.05, what=what)
    return dict(seen)


def test_a_sink_that_slows_down_and_speeds_up_crosses_the_threshold_both_ways(deployed, tmp_path):
    name = "dual-both-ways"
    out = testing.collector(name)
    speed = testing.knob(name)
    handle = deployed(topology(name, tmp_path, total_events=None))
    for cycle in range(2):
        speed.set(SLOW_WRITE_S)  # the backlog grows to switch_threshold: puts go to disk
        wait_for_channel(handle, lambda m: m.get("DiskMode") == 1 and m["ModeSwitchCount"] >= 2 * cycle + 1,
                         f"the backlog to reach switch_threshold (cycle {cycle})")
        speed.set(0)  # it falls below switch_back_threshold: puts go to memory again
        wait_for_channel(handle, lambda m: m.get("DiskMode") == 0 and m["ModeSwitchCount"] >= 2 * cycle + 2,
                         f"the backlog to fall below switch_back_threshold (cycle {cycle})")
    final = handle.stop(drain_timeout_s=30)["final_metrics"]
    channel, source = final["CHANNEL.dual"], final["SOURCE.gen"]
    acknowledged, attempted = int(source["EventAcceptedCount"]), int(source["EventReceivedCount"])
    print(f"{name}: {channel['ModeSwitchCount']} switches, {channel['SpilledEventCount']} of "
          f"{acknowledged} events through the file log")
    delivered = [int(b) for b in out.bodies()]
    # exactly once and in order: every acknowledged event, and maybe the batch in flight at the stop
    assert delivered == list(range(len(delivered))), "events duplicated or out of order"
    assert acknowledged <= len(delivered) <= attempted
    assert int(channel["ModeSwitchCount"]) >= 4
    assert 0 < int(channel["SpilledEventCount"]) < acknowledged
    out.kill()
    speed.kill()


def test_sigkill_in_disk_mode_loses_nothing_that_was_on_disk(deployed, tmp_path):
    name = "dual-sigkill"
    total = 40_000
    out = testing.collector(name)
    speed = testing.knob(name)
    speed.set(SLOW_WRITE_S)
    handle = deployed(topology(name, tmp_path, total))
    channel = ray.get_actor(f"{name}/channel/dual", namespace="rayflume")
    # Deep in disk mode: at the slow sink's pace the backlog needs seconds to fall to
    # switch_back_threshold, so no put goes to memory again before the kill.
    m = wait_for_channel(handle, lambda m: m.get("DiskMode") == 1 and m.get("ChannelSize", 0) >= 8000,
                         "a backlog deep in disk mode")
    assert m["ModeSwitchCount"] == 1
    # One source, one switch: its first events went to memory, every later one to disk.
    in_memory = int(m["EventPutSuccessCount"]) - int(m["SpilledEventCount"])
    assert THRESHOLD - 200 <= in_memory < THRESHOLD
    pid = current_pid(channel)
    os.kill(pid, signal.SIGKILL)
    assert current_pid(channel) != pid
    speed.set(0)
    wait_until(handle.finished, timeout_s=60, interval_s=0.2, what="every event to be delivered")
    final = handle.stop(drain_timeout_s=30)["final_metrics"]
    acknowledged = int(final["SOURCE.gen"]["EventAcceptedCount"])
    attempted = int(final["SOURCE.gen"]["EventReceivedCount"])
    delivered = [int(b) for b in out.bodies()]
    seen = set(delivered)
    on_disk = set(range(in_memory, acknowledged))
    lost_from_disk = on_disk - seen
    lost_from_memory = set(range(in_memory)) - seen
    unexpected = seen - set(range(attempted))
    print(f"{name}: {acknowledged} acknowledged, {in_memory} put in memory ({len(lost_from_memory)} "
          f"lost with the actor), {len(delivered) - len(seen)} duplicates")
    assert acknowledged == total
    assert not lost_from_disk, f"{len(lost_from_disk)} lost from disk, e.g. {sorted(lost_from_disk)[:10]}"
    assert not unexpected, f"unexpected events: {sorted(unexpected)[:10]}"
    firsts = list(dict.fromkeys(delivered))  # first arrivals: redeliveries after the kill left out
    assert firsts == sorted(firsts), "events of the source out of order"
    assert int(final["CHANNEL.dual"]["Restarts"]) == 1
    out.kill()
    speed.kill()
