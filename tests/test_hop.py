"""The rayflume hop: batch ids (stable for a retried batch, fresh otherwise), batches passed by
reference from the sink's take to the next tier's channel, and takes that wait to fill a batch."""
import threading
import time

import pytest
import ray

from rayflume._private.actors import RemoteChannel, RemoteSource, _ChannelHandlePort
from rayflume._private.stored import StoredBatch
from rayflume.event import EventBatch
from rayflume.sinks.base import SinkContext
from rayflume.sinks.rayflume import RayflumeSinkConfig, events_digest
from tests.channel_contract import numbered, numbers


def sink():
    return RayflumeSinkConfig(type="rayflume", channel="c", tier="collector", policy="load_balance", batch_size=100,
                              call_timeout_s=10, refresh_s=2, max_backoff_s=30).build("fwd")


def batch(start, n=10):
    return EventBatch.from_bodies([str(i).encode() for i in range(start, start + n)])


def bodies(parts):
    return [[int(b) for b in part.bodies()] for part, _ in parts]


def test_new_batches_get_fresh_ids():
    s = sink()
    [(_, first)], [(_, second)] = s._parts(batch(0)), s._parts(batch(0))
    assert first != second


def test_failed_parts_keep_their_ids_when_they_head_the_batch_again():
    s = sink()
    s._failed = [(10, events_digest(batch(0)), "a")]  # what write() records on failure
    assert s._parts(batch(0)) == [(s._parts(batch(0))[0][0], "a")]  # the same events, re-taken
    [(_, other)] = s._parts(batch(10))
    assert other != "a"  # same size, other events
    # back with more behind them (the channel regrouped them): the old part under its id, apart
    parts = s._parts(batch(0, 25))
    assert bodies(parts) == [list(range(10)), list(range(10, 25))]
    assert parts[0][1] == "a" and parts[1][1] != "a"
    # two parts of a write whose second part failed, back in one take
    s._failed = [(10, events_digest(batch(0)), "a"), (5, events_digest(batch(10, 5)), "b")]
    parts = s._parts(batch(0, 20))
    assert bodies(parts) == [list(range(10)), list(range(10, 15)), list(range(15, 20))]
    assert [pid for _, pid in parts][:2] == ["a", "b"]
    # fewer events than the failed part: nothing matches, all of it is new
    [(_, pid)] = s._parts(batch(0, 5))
    assert pid not in ("a", "b")


def test_digest_is_of_the_events_not_their_layout():
    a = EventBatch.from_bodies([b"x" * 100, b"y" * 100])
    b = EventBatch.from_bodies([b"x" * 100, b"y" * 99 + b"z"])
    assert events_digest(a) != events_digest(b)
    assert events_digest(batch(0, 20).slice(0, 10)) == events_digest(batch(0))
    assert events_digest(batch(0, 20).slice(10)) == events_digest(batch(10))


# -- on Ray -----------------------------------------------------------------------------------
ACTOR_OPTIONS = dict(num_cpus=0, max_concurrency=16)  # as deployed, but owned by this test


@pytest.fixture
def channel(ray_local):
    made = []

    def make(capacity=10_000):
        raw = {"type": "memory", "capacity": capacity, "transaction_capacity": 1000}
        made.append(RemoteChannel.options(**ACTOR_OPTIONS).remote("hop-test", f"ch{len(made)}", raw))
        return made[-1]

    yield make
    for handle in made:
        ray.kill(handle)


@pytest.fixture
def hop_source(ray_local):
    made = []

    def make(channels: dict, **config):
        raw = {"type": "rayflume", "channels": list(channels), **config}
        made.append(RemoteSource.options(**ACTOR_OPTIONS).remote("hop-test", "in", raw, channels))
        return made[-1]

    yield make
    for handle in made:
        ray.kill(handle)


def test_a_take_refers_to_its_object_and_the_next_tier_stores_it_unread(channel, hop_source):
    agent_channel, collector_channel = channel(), channel()
    ray.get(agent_channel.put.remote(numbered(0, 10), "t1"))
    lease, taken = _ChannelHandlePort.of(agent_channel).take(100, "fwd", 0.0)
    assert isinstance(taken.stored, StoredBatch) and len(taken.stored) == 10
    assert taken.stored.resolve() == taken

    source = hop_source({"mem": collector_channel})
    ray.get(source.append_batch.remote(taken.stored, "batch-1"))
    ray.get(source.append_batch.remote(taken.stored, "batch-1"))  # a retry: acknowledged, not stored
    got = _ChannelHandlePort.of(collector_channel).take(100, "out", 0.0)
    assert numbers(got[1]) == list(range(10))
    counters = ray.get(source.metrics.remote())
    assert counters["EventAcceptedCount"] == 10 and counters["DuplicateBatchCount"] == 1


@pytest.mark.parametrize("reader", [
    {"interceptors": [{"type": "static", "key": "tier", "value": "collector"}]},
    {"selector": {"type": "multiplexing", "header": "tier", "mapping": {"x": ["mem"]}, "default": ["mem"]}},
], ids=["interceptor", "multiplexing"])
def test_a_source_that_reads_events_resolves_a_batch_passed_by_reference(channel, hop_source, reader):
    sent, collector_channel = channel(), channel()
    ray.get(sent.put.remote(numbered(0, 5), "t1"))
    _, taken = _ChannelHandlePort.of(sent).take(100, "fwd", 0.0)
    source = hop_source({"mem": collector_channel}, **reader)
    ray.get(source.append_batch.remote(taken.stored, "batch-1"))
    _, got = _ChannelHandlePort.of(collector_channel).take(100, "out", 0.0)
    assert numbers(got) == list(range(5))
    if "interceptors" in reader:
        assert got.header("tier").to_pylist() == ["collector"] * 5


class _RecordingSource:
    """Stands in for a collector's source actor handle: records what a sink sends. With
    ``dies_once``, its first call stores the batch and then fails, as a receiver that died after
    its channel committed, before it replied."""

    def __init__(self, dies_once=False):
        self.sent = []
        self.stored: dict[str, list[int]] = {}  # by batch id, once: as the receiver's channel stores
        self.append_batch = self
        self.dies_once = dies_once

    def remote(self, payload, batch_id):
        self.sent.append(payload)
        self.stored.setdefault(batch_id, [int(b) for b in payload.bodies()] if isinstance(payload, EventBatch)
                               else None)
        if self.dies_once:
            self.dies_once = False
            raise ray.exceptions.RayActorError()
        return ray.put(None)


def _sink_with_target(instance_header=None, dies_once=False):
    s = RayflumeSinkConfig(type="rayflume", channel="c", tier="collector", policy="load_balance", batch_size=100,
                           call_timeout_s=10, refresh_s=60, max_backoff_s=30,
                           instance_header=instance_header).build("fwd")
    s.start(SinkContext(name="fwd", topology="hop-test", scope="agent/r0"))
    target = _RecordingSource(dies_once)
    s.targets, s._refreshed_at = [("collector/r1", target)], time.monotonic()
    return s, target


def test_the_sink_sends_a_reference_unless_it_changed_the_batch(ray_local):
    b = numbered(0, 10)
    b.stored = StoredBatch(ray.put(b), len(b))
    plain, target = _sink_with_target()
    plain.write(b)
    assert target.sent == [b.stored]

    stamping, target = _sink_with_target(instance_header="agent")
    stamping.write(b)
    [sent] = target.sent
    assert isinstance(sent, EventBatch) and sent.header("agent").to_pylist() == ["agent/r0"] * 10


def test_a_take_with_fill_waits_for_a_full_batch(channel):
    ch = channel()
    ray.get(ch.put.remote(numbered(0, 30), "t1"))
    impatient = _ChannelHandlePort.of(ch)
    lease, first = impatient.take(100, "out", 0.0)
    assert len(first) == 30  # without a fill time a take returns what is there
    impatient.rollback(lease)

    def more():
        ray.get(ch.put.remote(numbered(30, 70), "t2"))

    threading.Timer(0.2, more).start()
    started = time.monotonic()
    lease, full = _ChannelHandlePort.of(ch, fill_s=30).take(100, "out", 0.0)
    assert numbers(full) == list(range(100))
    assert time.monotonic() - started < 20, "it waited for its fill time although 100 events came"


def test_a_take_with_fill_returns_what_is_there_after_its_fill_time(channel):
    ch = channel()
    ray.get(ch.put.remote(numbered(0, 10), "t1"))
    started = time.monotonic()
    lease, got = _ChannelHandlePort.of(ch, fill_s=0.3).take(100, "out", 0.0)
    assert numbers(got) == list(range(10))
    assert time.monotonic() - started >= 0.25


def test_takers_waiting_to_fill_do_not_hold_up_puts(channel):
    ch = channel()
    # more takers than the actor has threads, each willing to wait 20 s to fill its batch
    waiting = [ch.take_lease_and_batch.remote(100, f"sink{i}", 0.0, 20.0) for i in range(20)]
    ray.get(ch.put.remote(numbered(0, 10), "t1"), timeout=30)
    # a put queued behind them would return only once their waits ran out: they must still wait
    firsts = [refs[0] for refs in waiting]  # the call returns (lease, batch) as two refs
    ready, _ = ray.wait(firsts, num_returns=len(firsts), timeout=0)
    assert not ready, "the put waited behind takers filling their batches"


def test_a_batch_the_receiver_stored_before_dying_is_not_stored_twice_when_regrouped(ray_local):
    """The take is rolled back after the receiver stored it; the next take brings the same events
    with more behind them. The receiver must see the stored ones under their old id."""
    from rayflume.channels.memory import MemoryChannel
    from rayflume.errors import DeliveryError

    s, target = _sink_with_target(dies_once=True)
    channel = MemoryChannel("disk", capacity=10_000, transaction_capacity=1000)
    channel.put(numbered(0, 120), "t1")
    lease, taken = channel.take(200, "fwd")
    channel.put(numbered(120, 80), "t2")
    with pytest.raises(DeliveryError):
        s.write(taken)
    channel.rollback(lease)
    lease, taken = channel.take(200, "fwd")
    assert len(taken) == 200  # regrouped: the 120 back at the head, then 80 more
    s.write(taken)
    channel.commit(lease)
    stored = [n for numbers in target.stored.values() for n in numbers]
    assert sorted(stored) == list(range(200)), "each event stored once"
