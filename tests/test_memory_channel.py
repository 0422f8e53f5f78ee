import time

from rayflume.channels.memory import MemoryChannel
from rayflume.channels.null import NullChannel
from tests.channel_contract import ChannelContract, numbered


class TestMemoryChannel(ChannelContract):
    def make_channel(self, tmp_path, **options):
        return MemoryChannel("mem", **options)


def test_null_channel_discards_and_counts():
    ch = NullChannel("n", capacity=10, transaction_capacity=100)
    for i in range(5):
        ch.put(numbered(0, 100), f"t{i}")  # far beyond capacity: nothing is kept
    assert ch.size() == 0
    assert ch.take(10) is None
    assert ch.metrics()["EventPutSuccessCount"] == 500
    assert ch.renew("anyone") == ch.lease_timeout_s  # no leases to renew


def test_a_channel_that_cannot_count_ready_events_does_not_wait_to_fill():
    ch = NullChannel("n", capacity=10, transaction_capacity=100)
    assert ch.ready_events() is None
    started = time.monotonic()
    ch.wait_for_batch(100, timeout_s=30)
    assert time.monotonic() - started < 10
