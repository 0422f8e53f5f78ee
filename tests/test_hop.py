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
from rayflume.sinks.rayflume import RayflumeSink, _shape, batch_digest
from tests.channel_contract import numbered, numbers


def sink():
    return RayflumeSink("fwd", "collector", None, "load_balance", 100, 10, 2, 30)


def batch(start, n=10):
    return EventBatch.from_bodies([str(i).encode() for i in range(start, start + n)])


def test_new_batches_get_fresh_ids():
    s = sink()
    assert s._batch_id(batch(0)) != s._batch_id(batch(0))


def test_a_failed_batch_keeps_its_id_when_it_comes_back():
    s = sink()
    first = batch(0)
    failed_id = s._batch_id(first)
    s._failed = (_shape(first), batch_digest(first), failed_id)  # what write() records on failure
    assert s._batch_id(batch(0)) == failed_id  # the same events, re-taken after the rollback
    assert s._batch_id(batch(10)) != failed_id  # same shape, other events
    assert s._batch_id(batch(0, 11)) != failed_id  # other shape


def test_digest_depends_on_every_byte():
    a = EventBatch.from_bodies([b"x" * 100, b"y" * 100])
    b = EventBatch.from_bodies([b"x" * 100, b"y" * 99 + b"z"])
    assert _shape(a) == _shape(b) and batch_digest(a) != batch_digest(b)


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
    """Stands in for a collector's source actor handle: records what a sink sends."""

    def __init__(self):
        self.sent = []
        self.append_batch = self

    def remote(self, payload, batch_id):
        self.sent.append(payload)
        return ray.put(None)


def _sink_with_target(instance_header=None):
    s = RayflumeSink("fwd", "collector", None, "load_balance", 100, 10, 60, 30, instance_header)
    s.start(SinkContext(name="fwd", topology="hop-test", scope="agent/r0"))
    target = _RecordingSource()
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
    waiting = [ch.take_lease_and_batch.remote(100, f"sink{i}", 0.0, 5.0) for i in range(20)]  # more than the actor's threads
    started = time.monotonic()
    ray.get(ch.put.remote(numbered(0, 10), "t1"), timeout=30)
    assert time.monotonic() - started < 2.5, "the put waited behind takers filling their batches"
    del waiting
