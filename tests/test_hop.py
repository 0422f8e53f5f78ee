"""The rayflume hop sink's batch ids: stable for a retried batch, fresh otherwise."""
from rayflume.event import EventBatch
from rayflume.sinks.rayflume import RayflumeSink, _shape, batch_digest


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
