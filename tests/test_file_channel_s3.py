"""The file channel with its log on an object store (S3 API, a local moto server).

Covers the shared channel contract on S3 storage, crash-reopen, restart on "another node" (no
local files at all), group commit (objects per commit), corrupt and missing objects, the lock
object (a live instance refuses a second one, a dead one's lock lapses, a zombie is fenced),
failed PUTs and GETs, deletion of consumed objects, and the config keys.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import types
import uuid

import pytest
from pydantic import ValidationError

from rayflume.channels.file import (
    ChannelLocked,
    ChannelLockLost,
    ChannelReadError,
    ChannelWriteError,
    FileChannel,
    FileChannelConfig,
    ObjectStore,
    objlog,
)
from rayflume.channels.file.objlog import OBJ_HEADER_SIZE, list_chunks
from rayflume.channels.spillable import SpillableChannelConfig
from tests.channel_contract import ChannelContract, closing_factory, drain, numbered, numbers, wait_until
from tests.s3_server import moto_s3, s3_endpoint  # noqa: F401  (the fixtures)

TTL = 3.0  # lock TTL for these tests: short, so a lapsed lock costs seconds, not the default 15


@pytest.fixture(scope="module")
def bucket(moto_s3):  # noqa: F811
    return moto_s3.make_bucket("rayflume")


@pytest.fixture
def uri(bucket):
    return f"s3://{bucket}/ch-{uuid.uuid4().hex[:10]}"


class FaultyStore(ObjectStore):
    """ObjectStore whose chunk PUTs and GETs can fail, be held, or land and still fail ("ghost")."""

    def __init__(self, filesystem, root, uri):
        super().__init__(filesystem, root, uri)
        # Shared by every copy ``at()`` makes, so a test can steer the channel's stores.
        self.faults = types.SimpleNamespace(put_error=None, ghost=False, get_error=None, gate=None,
                                            held=0, chunk_puts=0, lock_error=None, torn_lock_reads=0,
                                            cond=threading.Condition())

    def put(self, key, parts):
        f = self.faults
        if key == "lock" and f.lock_error is not None:
            raise f.lock_error
        if key.endswith(".rec"):
            with f.cond:
                f.chunk_puts += 1
                if f.gate is not None:
                    f.held += 1
                    f.cond.notify_all()
                    f.cond.wait_for(lambda: f.gate is None, timeout=30)
                    f.held -= 1
            if f.put_error is not None:
                if f.ghost:
                    super().put(key, parts)
                raise f.put_error
        super().put(key, parts)

    def get(self, key):
        if key.endswith(".rec") and self.faults.get_error is not None:
            raise self.faults.get_error
        if key == "lock" and self.faults.lock_error is not None:
            raise self.faults.lock_error
        data = super().get(key)
        if key == "lock" and self.faults.torn_lock_reads:
            self.faults.torn_lock_reads -= 1
            return data[:len(data) // 2]  # what a read racing the owner's renewal can see
        return data

    # test helpers
    def hold(self):
        with self.faults.cond:
            self.faults.gate = threading.Event()

    def unhold(self):
        with self.faults.cond:
            self.faults.gate = None
            self.faults.cond.notify_all()


def open_s3(uri, moto, store=None, **options) -> FileChannel:
    options.setdefault("lock_ttl_s", TTL)
    return FileChannel("s3ch", f"{uri}/checkpoint", [uri], object_store_options=moto.options,
                       store=store, **options)


@pytest.fixture
def channels(uri, moto_s3):  # noqa: F811
    """Open S3 file channels on ``uri`` and close whatever is still open at the end."""
    with closing_factory(lambda **options: open_s3(uri, moto_s3, **options)) as factory:
        yield factory


def faulty(uri, moto) -> FaultyStore:
    return FaultyStore.from_uri(uri, moto.options)


def chunk_objects(ch) -> dict[int, list]:
    return list_chunks(ch._store)


# -- the shared contract ----------------------------------------------------------------------------
class TestS3Contract(ChannelContract):
    durable = True

    @pytest.fixture(autouse=True)
    def _server(self, moto_s3, bucket):  # noqa: F811
        self.moto, self.bucket, self._reopened = moto_s3, bucket, []
        yield
        for ch in self._reopened:
            ch.close()

    def _uri(self, tmp_path) -> str:
        return f"s3://{self.bucket}/contract-{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]}"

    def make_channel(self, tmp_path, **options):
        self._options = options
        return open_s3(self._uri(tmp_path), self.moto, **options)

    def reopen(self, channel, tmp_path):
        channel.close(checkpoint=False)
        ch = open_s3(self._uri(tmp_path), self.moto, **self._options)
        self._reopened.append(ch)
        return ch


# -- durability -------------------------------------------------------------------------------------
def test_one_object_per_commit_and_crash_reopen_keeps_every_committed_put(channels):
    ch = channels()
    before = ch.metrics()["ObjectPutCount"]
    for i in range(6):
        ch.put(numbered(i * 10, 10), f"p{i}")
        assert ch.metrics()["ObjectPutCount"] == before + i + 1  # each commit: exactly one PUT
    lease, b = ch.take(15)
    assert numbers(b) == list(range(15))
    ch.commit(lease)
    assert ch.metrics()["ObjectPutCount"] == before + 7       # a take-commit is one PUT too
    ch.take(10)  # leased, never settled: comes back after the crash
    ch.put(numbered(60, 5), "p6")
    ch.close(checkpoint=False)  # like a crash: recovery replays the log objects
    ch2 = channels()
    m = ch2.metrics()
    assert m["ReplayRecordCount"] == 8 and m["CorruptRecordCount"] == 0 and m["MissingObjectCount"] == 0
    assert drain(ch2) == list(range(15, 65))
    ch2.put(numbered(0, 5), "p0")  # txn ids survive the restart
    assert ch2.size() == 0


def test_group_commit_shares_one_put_among_concurrent_commits(channels, uri, moto_s3):  # noqa: F811
    store = faulty(uri, moto_s3)
    ch = channels(store=store)
    store.hold()
    first = threading.Thread(target=ch.put, args=(numbered(0, 5), "first"))
    first.start()
    wait_until(lambda: store.faults.held == 1, what="the first PUT to be in flight")
    others = [threading.Thread(target=ch.put, args=(numbered(5 * k, 5), f"t{k}")) for k in range(1, 5)]
    for t in others:
        t.start()
    wait_until(lambda: len(ch._log.pending) == 5, what="four puts queued behind the first PUT")
    store.unhold()
    for t in [first, *others]:
        t.join(10)
    assert store.faults.chunk_puts == 2  # five commits, two objects
    assert ch.metrics()["ObjectPutCount"] == 2
    assert sorted(drain(ch)) == list(range(25))


def test_restart_anywhere_with_no_local_files(tmp_path, monkeypatch, uri, moto_s3):  # noqa: F811
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    cfg = FileChannelConfig(type="file", data_dirs=uri, object_store_options=moto_s3.options,
                            lock_ttl_s=TTL)
    assert cfg.node_local is False  # the controller does not pin it to a node
    ch = cfg.build("anywhere")
    try:
        for i in range(4):
            ch.put(numbered(i * 25, 25), f"a{i}")
        lease, _ = ch.take(30)
        ch.commit(lease)
        ch.take(20)  # in flight when the "node" dies
    finally:
        ch.close(checkpoint=False)
    assert list(home.rglob("*")) == []  # nothing was ever written locally...
    assert list(tmp_path.iterdir()) == [home]
    for p in tmp_path.iterdir():  # ...and nothing local is needed: wipe the node
        p.rmdir()
    ch2 = FileChannelConfig(type="file", data_dirs=uri, object_store_options=moto_s3.options,
                            lock_ttl_s=TTL).build("anywhere")
    try:
        assert drain(ch2) == list(range(30, 100))
    finally:
        ch2.close()


def test_reads_after_restart_come_from_the_store_and_a_failed_get_loses_nothing(channels, uri,
                                                                               moto_s3):  # noqa: F811
    ch = channels()
    for i in range(3):
        ch.put(numbered(i * 10, 10), f"r{i}")
    ch.close()  # with a checkpoint: nothing to replay, events are read back on take
    store = faulty(uri, moto_s3)
    ch2 = channels(store=store)
    assert ch2.metrics()["ReplayRecordCount"] == 0
    store.faults.get_error = OSError("injected: service unavailable")
    with pytest.raises(ChannelReadError):
        ch2.take(25)
    assert ch2.size() == 30
    store.faults.get_error = None
    lease, b = ch2.take(25)
    assert numbers(b) == list(range(25))
    ch2.commit(lease)
    assert drain(ch2) == list(range(25, 30))


def test_checkpoint_deletes_consumed_objects(channels):
    ch = channels()
    for i in range(5):
        ch.put(numbered(i * 10, 10), f"d{i}")
    assert sum(map(len, chunk_objects(ch).values())) == 5
    lease, _ = ch.take(25)  # consumes the first two objects, half of the third
    ch.commit(lease)
    assert ch.checkpoint()
    keys = [c.key for cs in chunk_objects(ch).values() for c in cs]
    assert len(keys) == 4  # objects 3-5 (unconsumed events) and the take-commit record
    assert ch.metrics()["ObjectDeleteCount"] == 2
    drain(ch)
    assert ch.checkpoint()
    assert chunk_objects(ch) == {}
    assert set(ch._store.list("")) == {"lock", "checkpoint/checkpoint"}


def test_segments_roll_chain_and_go_whole(channels, monkeypatch):
    monkeypatch.setattr(objlog, "MAX_CHUNKS_PER_SEGMENT", 2)
    ch = channels()
    for i in range(6):
        ch.put(numbered(i * 10, 10), f"s{i}")
    assert len(chunk_objects(ch)) == 3  # two objects per segment
    lease, _ = ch.take(25)
    ch.commit(lease)
    ch.close(checkpoint=False)
    ch2 = channels()
    assert ch2.metrics()["MissingObjectCount"] == 0  # the chain crosses segment boundaries
    assert drain(ch2) == list(range(25, 60))
    assert ch2.checkpoint()
    assert chunk_objects(ch2) == {}
    assert ch2.metrics()["SegmentsDeletedCount"] >= 3


# -- damage ---------------------------------------------------------------------------------------
def _write_then_crash(ch, n=5):
    for i in range(n):
        ch.put(numbered(i * 10, 10), f"w{i}")
    chunks = [c for cs in chunk_objects(ch).values() for c in cs]
    assert len(chunks) == n
    ch.close(checkpoint=False)
    return chunks


def test_corrupt_object_is_skipped_and_counted(channels):
    ch = channels()
    chunks = _write_then_crash(ch)
    store = ch._store
    middle = chunks[2]
    data = bytearray(store.get(middle.key))
    data[OBJ_HEADER_SIZE + 60] ^= 0x10  # one bit inside the put record's payload
    store.put(middle.key, [bytes(data)])
    ch2 = channels()
    m = ch2.metrics()
    assert m["CorruptRecordCount"] == 1 and m["MissingObjectCount"] == 0
    assert drain(ch2) == list(range(20)) + list(range(30, 50))


def test_damaged_object_header_still_yields_its_records(channels):
    ch = channels()
    chunks = _write_then_crash(ch, 3)
    store = ch._store
    data = bytearray(store.get(chunks[1].key))
    data[20] ^= 0xFF  # inside the object header (its start offset)
    store.put(chunks[1].key, [bytes(data)])
    ch2 = channels()
    assert ch2.metrics()["CorruptRecordCount"] == 1  # the header, reported
    assert drain(ch2) == list(range(30))              # records verify on their own


def test_missing_object_in_the_middle_is_detected_and_reported(channels, caplog):
    ch = channels()
    chunks = _write_then_crash(ch)
    ch._store.delete(chunks[2].key)
    ch2 = channels()
    m = ch2.metrics()
    assert m["MissingObjectCount"] == 1 and m["CorruptRecordCount"] == 0
    assert "missing" in caplog.text and chunks[2].key.split("/")[0] in caplog.text
    assert drain(ch2) == list(range(20)) + list(range(30, 50))


def test_missing_first_object_of_a_segment_is_detected(channels):
    ch = channels(max_file_size_bytes=1 << 20)
    ch.put(numbered(0, 10), "a")
    ch._log.cur_sid = None  # force a segment roll, as a failed PUT or max_file_size would
    ch.put(numbered(10, 10), "b")
    ch.put(numbered(20, 10), "c")
    chunks = chunk_objects(ch)
    assert len(chunks) == 2
    second_segment = list(chunks.values())[1]
    ch.close(checkpoint=False)
    ch._store.delete(second_segment[0].key)
    ch2 = channels()
    assert ch2.metrics()["MissingObjectCount"] == 1
    assert drain(ch2) == list(range(10)) + list(range(20, 30))


def test_missing_object_named_by_the_checkpoint_counts_its_events(channels):
    ch = channels()
    for i in range(3):
        ch.put(numbered(i * 10, 10), f"c{i}")
    chunks = [c for cs in chunk_objects(ch).values() for c in cs]
    ch.close()  # checkpoint names all 30 events
    ch._store.delete(chunks[1].key)
    ch2 = channels()
    assert ch2.metrics()["MissingEventCount"] == 10
    assert drain(ch2) == list(range(10)) + list(range(20, 30))


# -- failed PUTs --------------------------------------------------------------------------------------
def test_failed_put_is_not_acknowledged_and_is_not_reported_missing(channels, uri, moto_s3):  # noqa: F811
    store = faulty(uri, moto_s3)
    ch = channels(store=store)
    ch.put(numbered(0, 10), "ok1")
    store.faults.put_error = OSError("injected: PUT failed")
    with pytest.raises(ChannelWriteError):
        ch.put(numbered(10, 10), "lost")
    assert ch.size() == 10 and ch.metrics()["FsyncErrorCount"] == 1
    store.faults.put_error = None
    ch.put(numbered(20, 10), "ok2")
    ch.close(checkpoint=False)
    ch2 = channels()
    assert ch2.metrics()["MissingObjectCount"] == 0  # the next segment chains to the last good object
    assert drain(ch2) == list(range(10)) + list(range(20, 30))


def test_put_that_landed_but_failed_is_delivered_once_after_its_retry(channels, uri, moto_s3):  # noqa: F811
    store = faulty(uri, moto_s3)
    ch = channels(store=store)
    store.faults.put_error, store.faults.ghost = OSError("injected: timeout after the PUT"), True
    with pytest.raises(ChannelWriteError):
        ch.put(numbered(0, 10), "g")
    store.faults.put_error = None
    ch.put(numbered(0, 10), "g")  # the source retries with the same txn id
    ch.close(checkpoint=False)
    ch2 = channels()
    m = ch2.metrics()
    assert m["MissingObjectCount"] == 0 and m["ReplayDuplicateEventCount"] == 10
    assert drain(ch2) == list(range(10))


# -- the lock object ------------------------------------------------------------------------------------
def test_second_instance_refuses_while_the_first_is_alive(channels):
    first = channels()
    first.put(numbered(0, 3), "x")
    t = time.monotonic()
    with pytest.raises(ChannelLocked) as err:
        channels()
    assert time.monotonic() - t < TTL  # refused on seeing a renewal, not after waiting it out
    assert "in use by another live instance" in str(err.value)
    first.put(numbered(3, 3), "y")  # the first one is unaffected
    first.close()
    second = channels()  # a released lock: opens at once
    assert drain(second) == list(range(6))


def test_a_torn_read_of_a_live_lock_does_not_count_as_a_release(channels, uri, moto_s3):  # noqa: F811
    first = channels()
    first.put(numbered(0, 3), "x")
    store = faulty(uri, moto_s3)
    store.faults.torn_lock_reads = 2
    with pytest.raises(ChannelLocked, match="in use by another live instance"):
        channels(store=store)
    assert store.faults.torn_lock_reads == 0  # both torn reads were seen, then a whole one
    first.put(numbered(3, 3), "y")
    assert drain(first) == list(range(6))


def test_dead_instances_lock_lapses_and_the_zombie_cannot_checkpoint(channels):
    old = channels()
    old.put(numbered(0, 5), "x")
    for lk in old._dir_locks:
        lk.abandon()  # a crash or a long pause: the lock object stays, nobody renews it
    t = time.monotonic()
    new = channels()
    assert time.monotonic() - t >= TTL * 0.5  # it had to wait for the lock to lapse
    assert drain(new) == list(range(5))
    assert new.checkpoint()  # deletes the object that held the drained events
    old.close()  # the zombie wakes up: its stale checkpoint must not replace the new owner's
    assert old.metrics()["CheckpointErrorCount"] == 1
    new.close(checkpoint=False)
    again = channels()
    assert again.metrics()["MissingEventCount"] == 0 and again.size() == 0


def test_unrenewable_lock_suspends_writes_until_renewed_then_another_owner_ends_them(
        channels, uri, moto_s3):  # noqa: F811
    store = faulty(uri, moto_s3)
    ch = channels(store=store, lock_ttl_s=1.2)
    ch.put(numbered(0, 5), "a")
    store.faults.lock_error = OSError("injected: store unreachable")
    wait_until(lambda: not ch._locks_valid(), timeout_s=5, what="the lock to lapse")
    with pytest.raises(ChannelLockLost, match="retry it"):
        ch.put(numbered(5, 5), "b")
    assert ch.metrics()["LockValid"] == 0
    store.faults.lock_error = None  # the store is back and nobody took over: writes resume
    wait_until(ch._locks_valid, timeout_s=5, what="the lock to be renewed")
    ch.put(numbered(5, 5), "b")
    m = ch.metrics()
    assert m["LockValid"] == 1 and m["LockLost"] == 0
    # Another instance takes the lock object over: this one has lost the channel for good.
    lock = json.loads(store.get("lock"))
    store.put("lock", [json.dumps(dict(lock, owner="someone-else", seq=1)).encode()])
    wait_until(lambda: ch.metrics()["LockLost"] == 1, timeout_s=5, what="the loss to be noticed")
    with pytest.raises(ChannelLockLost, match="owns the channel now"):
        ch.put(numbered(10, 5), "c")
    assert ch.size() == 10


def test_zombie_loses_its_lock_and_acknowledges_nothing(channels, uri, moto_s3):  # noqa: F811
    store = faulty(uri, moto_s3)
    zombie = channels(store=store)
    zombie.put(numbered(0, 10), "before")
    store.hold()
    errors = []

    def late_put():
        try:
            zombie.put(numbered(100, 10), "late")
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=late_put)
    t.start()
    wait_until(lambda: store.faults.held == 1, what="the zombie's PUT to be in flight")
    for lk in zombie._dir_locks:
        lk.abandon()  # the zombie is paused/partitioned: no more renewals
    owner = channels()  # takes over once the lock lapses
    assert owner._log.epoch > zombie._log.epoch  # disjoint object keys
    store.unhold()  # the zombie's PUT lands after the takeover...
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], ChannelLockLost)  # ...but is not acknowledged
    with pytest.raises(ChannelLockLost):
        zombie.put(numbered(200, 1), "again")
    owner.put(numbered(10, 10), "owner")
    owner.close()
    fresh = channels()
    assert drain(fresh) == list(range(20))
    fresh.close()
    assert chunk_objects(fresh) == {}  # the zombie's unacknowledged object was cleaned up too


# -- config -------------------------------------------------------------------------------------------
def test_config_on_object_store(uri, moto_s3):  # noqa: F811
    cfg = FileChannelConfig(type="file", data_dirs=[uri + "/"], object_store_options=moto_s3.options)
    assert cfg.node_local is False and cfg.on_object_store
    ckpt, data = cfg.storage_dirs("n")
    assert (ckpt, data) == (f"{uri}/checkpoint", [uri])
    opts = cfg.storage_options("n")
    assert opts["object_store_options"] == moto_s3.options and opts["lock_ttl_s"] == 15.0
    assert FileChannelConfig(type="file").node_local is True
    spill = SpillableChannelConfig(type="spillable", data_dirs=uri, object_store_options=moto_s3.options)
    assert spill.node_local is False


@pytest.mark.parametrize("bad", [
    {"data_dirs": ["s3://b/p", "s3://b/q"]},                          # one URI only
    {"data_dirs": "s3://b/p", "checkpoint_dir": "/tmp/local"},        # no local checkpoint
    {"data_dirs": "/tmp/local", "checkpoint_dir": "s3://b/c"},        # nor the other way round
    {"data_dirs": "s3://b/p", "fsync": "interval"},                   # no page cache on S3
    {"data_dirs": "gs://b/p"},                                        # unsupported scheme
    {"data_dirs": "s3:///p"},                                         # no bucket
    {"data_dirs": "s3://b/p?region=x"},                               # options go in the dict
    {"data_dirs": "s3://b/p", "object_store_options": {"no_such_option": 1}},
    {"data_dirs": "/tmp/local", "object_store_options": {"region": "x"}},
    {"data_dirs": "/tmp/local", "lock_ttl_s": 5},
    {"data_dirs": "s3://b/p", "lock_ttl_s": 0},
])
def test_config_rejects_bad_object_store_settings(bad):
    with pytest.raises(ValidationError):
        FileChannelConfig(type="file", **bad)


def test_channel_rejects_a_local_checkpoint_with_remote_segments(uri, moto_s3, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="checkpoint_dir"):
        FileChannel("x", str(tmp_path), [uri], object_store_options=moto_s3.options)
    assert os.listdir(tmp_path) == []
