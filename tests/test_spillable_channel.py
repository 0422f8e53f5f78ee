"""The spillable channel: memory first, a file overflow beyond, FIFO across both."""
from __future__ import annotations

import errno

import pytest
from pydantic import ValidationError

from rayflume.channels.file import ChannelWriteError
from rayflume.channels.spillable import SpillableChannel, SpillableChannelConfig
from rayflume.errors import ChannelFull
from rayflume.registry import lookup
from tests.channel_contract import ReopeningContract, closing_factory, drain, numbered, numbers, wait_until
from tests.test_file_channel import FaultyIO


def spillable(tmp_path, memory_capacity=10, overflow_capacity=1000, **options) -> SpillableChannel:
    if overflow_capacity:
        options.setdefault("checkpoint_dir", str(tmp_path / "checkpoint"))
        options.setdefault("data_dirs", [str(tmp_path / "data")])
        options.setdefault("minimum_required_space_bytes", 0)
    return SpillableChannel("sp", memory_capacity=memory_capacity,
                            overflow_capacity=overflow_capacity, **options)


@pytest.fixture
def channels(tmp_path):
    with closing_factory(lambda **options: spillable(tmp_path, **options)) as factory:
        yield factory


def crash(ch: SpillableChannel) -> None:
    """Lose the memory part; leave the overflow's files as after a crash (no checkpoint)."""
    ch.overflow.close(checkpoint=False)


# -- the shared contract ------------------------------------------------------------------------
class _SpillableContract(ReopeningContract):
    def split(self, capacity):  # pragma: no cover - overridden
        raise NotImplementedError

    def open_channel(self, tmp_path, **options):
        memory, overflow = self.split(options.pop("capacity", None))
        return spillable(tmp_path, memory_capacity=memory, overflow_capacity=overflow, **options)


class TestSpillableAllInMemory(_SpillableContract):
    """No overflow: the memory channel's behaviour."""

    def split(self, capacity):
        return (capacity or 100_000), 0


class TestSpillableAllOverflow(_SpillableContract):
    """No memory: every put spills, and the channel is as durable as the file channel."""

    durable = True

    def split(self, capacity):
        return 0, (capacity or 100_000)

    def test_capacity_in_bytes(self):
        # byte_capacity bounds the memory part only; the overflow is bounded in events.
        one = numbered(0, 10, size=100)
        ch = self.make(byte_capacity=one.nbytes * 2 + 10)
        for i in range(3):
            ch.put(numbered(i * 10, 10, size=100), f"t{i}")
        assert ch.metrics()["SpilledEventCount"] == 30


class TestSpillableMixed(_SpillableContract):
    """Half memory, half overflow (small capacities stay in memory: a put is never split)."""

    def split(self, capacity):
        if capacity is None:
            return 12, 100_000
        if capacity <= 100:
            return capacity, 0
        return capacity // 2, capacity - capacity // 2

    def test_capacity_in_bytes(self):
        one = numbered(0, 10, size=100)
        ch = self.make(byte_capacity=one.nbytes * 2 + 10, capacity=1000)
        for i in range(3):
            ch.put(numbered(i * 10, 10, size=100), f"t{i}")
        m = ch.metrics()
        assert (m["MemoryChannelSize"], m["SpilledEventCount"]) == (20, 10)
        assert drain(ch) == list(range(30))


# -- spilling -------------------------------------------------------------------------------------
def test_spills_beyond_memory_capacity_and_keeps_fifo(channels):
    ch = channels(memory_capacity=10)
    for i in range(5):
        ch.put(numbered(i * 4, 4), f"t{i}")
    m = ch.metrics()
    assert (m["MemoryChannelSize"], m["OverflowChannelSize"], m["SpilledEventCount"]) == (8, 12, 12)
    # memory has room again, but the overflow is not empty: new puts still spill
    lease, b = ch.take(6)
    assert numbers(b) == list(range(6))
    ch.commit(lease)
    ch.put(numbered(20, 2), "t5")
    assert ch.metrics()["SpilledEventCount"] == 14
    lease, b = ch.take(10)  # spans memory and overflow
    assert numbers(b) == list(range(6, 16))
    ch.rollback(lease)
    assert drain(ch, batch=7) == list(range(6, 22))
    # the overflow is empty again: puts go to memory
    ch.put(numbered(22, 3), "t6")
    m = ch.metrics()
    assert (m["MemoryChannelSize"], m["SpilledEventCount"]) == (3, 14)
    assert drain(ch) == [22, 23, 24]


def test_only_the_overflow_survives_a_crash(channels):
    ch = channels(memory_capacity=10)
    ch.put(numbered(0, 8), "mem")
    ch.put(numbered(8, 8), "disk-1")
    ch.put(numbered(16, 2), "disk-2")
    lease, b = ch.take(12)
    assert numbers(b) == list(range(12))
    crash(ch)
    ch2 = channels(memory_capacity=10)
    # events 8..11 were leased, not committed: they come back; the memory part is gone
    assert ch2.size() == 10
    ch2.put(numbered(18, 2), "after")  # the overflow is not empty: spills, keeping order
    ch2.put(numbered(8, 8), "disk-1")  # a retried put that was stored on disk: a no-op
    assert ch2.metrics()["DuplicatePutCount"] == 8
    assert drain(ch2) == list(range(8, 20))


def test_a_commit_that_fails_on_disk_keeps_the_whole_lease(channels):
    io = FaultyIO()
    ch = channels(memory_capacity=4, io=io)
    ch.put(numbered(0, 4), "mem")
    ch.put(numbered(4, 4), "disk")
    lease, b = ch.take(6)
    io.fsync_errno = errno.EIO
    with pytest.raises(ChannelWriteError):
        ch.commit(lease)
    assert ch.size() == 8
    io.fsync_errno = None
    ch.commit(lease)
    assert drain(ch) == [6, 7]


def test_lease_expiry_returns_both_parts(channels):
    ch = channels(memory_capacity=4, lease_timeout_s=0.2)
    ch.put(numbered(0, 4), "mem")
    ch.put(numbered(4, 4), "disk")
    lease, b = ch.take(6)
    wait_until(lambda: ch.expire_leases() > 0, timeout_s=5, what="the lease to expire")
    assert ch.size() == 8
    assert drain(ch) == list(range(8))


def test_full_when_both_parts_are_full(channels):
    ch = channels(memory_capacity=4, overflow_capacity=6)
    ch.put(numbered(0, 4), "a")
    ch.put(numbered(4, 6), "b")
    with pytest.raises(ChannelFull):
        ch.put(numbered(10, 1), "c")
    assert ch.size() == 10


def test_no_overflow_is_a_memory_channel(channels):
    ch = channels(memory_capacity=4, overflow_capacity=0)
    ch.put(numbered(0, 4), "a")
    with pytest.raises(ChannelFull) as err:
        ch.put(numbered(4, 1), "b")
    assert "memory" in str(err.value)
    assert ch.overflow is None


# -- config -------------------------------------------------------------------------------------
def test_config_registered_and_builds(tmp_path):
    cls = lookup("channel", "spillable")
    assert cls is SpillableChannelConfig
    cfg = cls(type="spillable", memory_capacity=5, overflow_capacity=50,
              checkpoint_dir=str(tmp_path / "c"), data_dirs=[str(tmp_path / "d")],
              minimum_required_space_bytes=1 << 20)
    ch = cfg.build("spcfg")
    try:
        assert ch.capacity == 55
        ch.put(numbered(0, 8), "a")
        assert ch.metrics()["SpilledEventCount"] == 8
    finally:
        ch.close()
    defaults = cls(type="spillable")
    assert (defaults.memory_capacity, defaults.overflow_capacity) == (10_000, 100_000_000)
    ckpt, data = defaults.storage_dirs("x")
    assert "spillable-channel" in ckpt and "spillable-channel" in data[0]
    memory_only = cls(type="spillable", overflow_capacity=0).build("m")
    memory_only.close()


@pytest.mark.parametrize("bad", [{"capacity": 10}, {"memory_capacity": 0, "overflow_capacity": 0},
                                 {"memory_capacity": -1}, {"memoryCapacity": 3}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        SpillableChannelConfig(type="spillable", **bad)


def test_release_returns_a_holders_leases_oldest_first(channels):
    ch = channels(memory_capacity=4)
    ch.put(numbered(0, 4), "mem")
    ch.put(numbered(4, 4), "disk")
    ch.take(3, holder="s")
    ch.take(3, holder="s")
    ch.take(1, holder="other")
    assert ch.release("s") == 6
    assert drain(ch) == [0, 1, 2, 3, 4, 5, 7]
