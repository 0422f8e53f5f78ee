"""The file channel: the shared contract, locking, group commit, segment deletion, faults, config."""
from __future__ import annotations

import errno
import os
import threading

import pytest
from pydantic import ValidationError

from rayflume.channels.file import (
    ChannelLocked,
    ChannelWriteError,
    FileChannel,
    FileChannelConfig,
    FileIO,
    InsufficientDiskSpace,
)
from rayflume.channels.file.log import list_segments
from rayflume.errors import ChannelError, ChannelFull
from rayflume.registry import lookup
from tests.channel_contract import ReopeningContract, closing_factory, drain, numbered, numbers

MiB = 1 << 20


def open_channel(tmp_path, **options) -> FileChannel:
    options.setdefault("minimum_required_space_bytes", 0)
    return FileChannel("fc", str(tmp_path / "checkpoint"), [str(tmp_path / "data")], **options)


@pytest.fixture
def channels(tmp_path):
    """Open file channels on ``tmp_path`` and close whatever is still open at the end."""
    with closing_factory(lambda **options: open_channel(tmp_path, **options)) as factory:
        yield factory


def reopen(ch: FileChannel, factory, checkpoint: bool = False, **options) -> FileChannel:
    ch.close(checkpoint=checkpoint)
    return factory(**options)


class FaultyIO(FileIO):
    """FileIO whose writes, fsyncs, truncations and free-space reports can be made to fail."""

    def __init__(self):
        self.write_errno: int | None = None
        self.partial_write = False
        self.fsync_errno: int | None = None
        self.truncate_fails = False
        self.free: int | None = None
        self.fsyncs = 0
        self._count_lock = threading.Lock()

    def write(self, fd, buffers):
        if self.write_errno is not None:
            if self.partial_write:
                data = b"".join(bytes(b) for b in buffers)
                os.write(fd, data[: max(1, len(data) // 2)])
            raise OSError(self.write_errno, os.strerror(self.write_errno))
        super().write(fd, buffers)

    def fsync(self, fd):
        with self._count_lock:
            self.fsyncs += 1
        if self.fsync_errno is not None:
            raise OSError(self.fsync_errno, os.strerror(self.fsync_errno))
        super().fsync(fd)

    def truncate(self, fd, size):
        if self.truncate_fails:
            raise OSError(errno.EIO, "injected truncate failure")
        super().truncate(fd, size)

    def disk_free(self, path):
        return self.free if self.free is not None else super().disk_free(path)


# -- the shared contract ------------------------------------------------------------------------
class TestFileChannelContract(ReopeningContract):
    durable = True
    extra_options: dict = {}

    def open_channel(self, tmp_path, **options):
        return open_channel(tmp_path, **self.extra_options, **options)


class TestFileChannelContractReadsFromDisk(TestFileChannelContract):
    """Every take reads its events back from the segment files (no in-memory copy)."""

    extra_options = {"cache_bytes": 0}


class TestFileChannelContractIntervalFsync(TestFileChannelContract):
    extra_options = {"fsync": "interval", "fsync_interval_s": 0.05}


# -- restart semantics ----------------------------------------------------------------------------
@pytest.mark.parametrize("checkpoint", [False, True])
def test_uncommitted_leases_come_back_in_order_after_restart(channels, checkpoint):
    ch = channels()
    ch.put(numbered(0, 4), "a")
    ch.put(numbered(4, 4), "b")
    ch.put(numbered(8, 4), "c")
    l1, b1 = ch.take(3)
    l2, b2 = ch.take(3)
    l3, b3 = ch.take(3)
    assert numbers(b2) == [3, 4, 5]
    ch.commit(l2)
    ch2 = reopen(ch, channels, checkpoint=checkpoint)
    assert ch2.size() == 9
    assert drain(ch2) == [0, 1, 2, 6, 7, 8, 9, 10, 11]


def test_replay_starts_at_the_checkpoint(channels):
    ch = channels()
    for i in range(20):
        ch.put(numbered(i * 5, 5), f"t{i}")
    lease, _ = ch.take(30)
    ch.commit(lease)
    assert ch.checkpoint()
    ch.put(numbered(100, 5), "after-1")
    ch.put(numbered(105, 5), "after-2")
    lease, _ = ch.take(5)
    ch.commit(lease)
    ch2 = reopen(ch, channels)
    m = ch2.metrics()
    assert m["ReplayFull"] == 0
    assert m["ReplayRecordCount"] == 3  # two puts and one take-commit after the checkpoint
    assert drain(ch2) == list(range(35, 110))


def test_txn_ids_survive_restart_without_checkpoint(channels):
    ch = channels()
    ch.put(numbered(0, 3), "a")
    ch.put(numbered(3, 3), "b")
    ch2 = reopen(ch, channels)
    ch2.put(numbered(0, 3), "a")
    assert ch2.metrics()["DuplicatePutCount"] == 3
    assert drain(ch2) == list(range(6))


# -- locking ------------------------------------------------------------------------------------
def test_second_instance_on_the_same_directories_fails_clearly(channels, tmp_path):
    ch = channels()
    with pytest.raises(ChannelLocked) as err:
        open_channel(tmp_path)
    assert isinstance(err.value, ChannelError)
    assert str(tmp_path / "checkpoint") in str(err.value) and "in use" in str(err.value)
    # only the data directory shared: still refused, naming that directory
    with pytest.raises(ChannelLocked) as err:
        FileChannel("other", str(tmp_path / "other-checkpoint"), [str(tmp_path / "data")],
                    minimum_required_space_bytes=0)
    assert str(tmp_path / "data") in str(err.value)
    ch.put(numbered(0, 2), "a")
    ch.close()
    ch2 = channels()
    assert drain(ch2) == [0, 1]


def test_same_directory_for_checkpoint_and_data(tmp_path):
    ch = FileChannel("fc", str(tmp_path), [str(tmp_path)], minimum_required_space_bytes=0)
    try:
        ch.put(numbered(0, 3), "a")
        ch.close(checkpoint=False)
        ch = FileChannel("fc", str(tmp_path), [str(tmp_path)], minimum_required_space_bytes=0)
        assert drain(ch) == [0, 1, 2]
    finally:
        ch.close()


# -- group commit ---------------------------------------------------------------------------------
class SlowFsyncIO(FileIO):
    """An fsync that takes a while, like a real disk under load, and is counted."""

    def __init__(self, delay_s: float):
        self.delay = threading.Event()
        self.delay_s = delay_s
        self.fsyncs = 0
        self._lock = threading.Lock()

    def fsync(self, fd):
        with self._lock:
            self.fsyncs += 1
        self.delay.wait(self.delay_s)  # never set: a fixed fsync latency
        super().fsync(fd)


def test_group_commit_shares_fsyncs_between_threads(channels):
    io = SlowFsyncIO(0.005)
    ch = channels(io=io, capacity=100_000)
    base = io.fsyncs
    threads, per_thread = 16, 10
    barrier = threading.Barrier(threads)
    errors = []

    def producer(t):
        barrier.wait()
        try:
            for i in range(per_thread):
                ch.put(numbered((t * per_thread + i) * 3, 3), f"t{t}-{i}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors
    puts = threads * per_thread
    fsyncs = io.fsyncs - base
    assert ch.size() == puts * 3
    assert fsyncs < puts, f"{fsyncs} fsyncs for {puts} puts: no group commit"
    assert sorted(drain(ch)) == list(range(puts * 3))


def test_concurrent_commits_share_fsyncs(channels):
    io = SlowFsyncIO(0.005)
    ch = channels(io=io, capacity=100_000)
    for i in range(32):
        ch.put(numbered(i * 2, 2), f"p{i}")
    leases = [ch.take(2)[0] for _ in range(32)]
    base = io.fsyncs
    barrier = threading.Barrier(16)

    def committer(mine):
        barrier.wait()
        for lease in mine:
            ch.commit(lease)

    ts = [threading.Thread(target=committer, args=(leases[i::16],)) for i in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert ch.size() == 0
    assert io.fsyncs - base < 32


# -- segments -------------------------------------------------------------------------------------
def test_segments_roll_and_are_deleted_once_consumed_and_checkpointed(channels, tmp_path):
    ch = channels(max_file_size_bytes=4096)
    for i in range(40):
        ch.put(numbered(i * 10, 10, size=20), f"t{i}")
    segments = ch.segment_paths()
    assert len(segments) > 3
    ch.checkpoint()
    assert len(ch.segment_paths()) == len(segments)  # nothing consumed: all kept
    assert drain(ch) == list(range(400))
    assert ch.checkpoint()
    kept = ch.segment_paths()
    assert len(kept) == 1
    on_disk = list_segments([str(tmp_path / "data")])
    assert on_disk == kept
    assert ch.metrics()["SegmentsDeletedCount"] == len(segments) - 1
    ch.put(numbered(400, 2), "more")
    ch2 = reopen(ch, channels, max_file_size_bytes=4096)
    assert drain(ch2) == [400, 401]


def test_a_leased_event_keeps_its_segment(channels):
    ch = channels(max_file_size_bytes=4096)
    for i in range(30):
        ch.put(numbered(i * 10, 10, size=20), f"t{i}")
    first = min(ch.segment_paths())
    lease, b = ch.take(5)
    assert numbers(b) == [0, 1, 2, 3, 4]
    rest = ch.take(ch.size() - 5)
    ch.commit(rest[0])
    ch.checkpoint()
    assert first in ch.segment_paths() and os.path.exists(ch.segment_paths()[first])
    ch.commit(lease)
    ch.checkpoint()
    assert first not in ch.segment_paths()


def test_background_checkpoint_runs(channels):
    from tests.channel_contract import wait_until

    ch = channels(checkpoint_interval_s=0.05)
    ch.put(numbered(0, 3), "a")
    before = ch.metrics()["CheckpointCount"]
    wait_until(lambda: ch.metrics()["CheckpointCount"] > before, timeout_s=10,
               what="a periodic checkpoint")


# -- faults: write errors, fsync errors, disk space -----------------------------------------------
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("partial", [False, True])
def test_write_error_fails_the_put_and_the_channel_recovers(channels, err, partial):
    io = FaultyIO()
    ch = channels(io=io)
    ch.put(numbered(0, 3), "a")
    io.write_errno, io.partial_write = err, partial
    with pytest.raises(ChannelWriteError) as exc:
        ch.put(numbered(100, 3), "lost")
    assert os.strerror(err) in str(exc.value)
    assert ch.size() == 3
    assert ch.metrics()["EventPutErrorCount"] == 3
    io.write_errno = None
    ch.put(numbered(3, 3), "b")
    assert ch.size() == 6
    ch2 = reopen(ch, channels)
    assert drain(ch2) == list(range(6))
    assert ch2.metrics()["CorruptRecordCount"] == 0


def test_write_error_with_failed_truncate_is_never_delivered(channels):
    io = FaultyIO()
    ch = channels(io=io)
    ch.put(numbered(0, 3), "a")
    io.write_errno, io.partial_write, io.truncate_fails = errno.EIO, True, True
    with pytest.raises(ChannelWriteError):
        ch.put(numbered(100, 3), "lost")
    io.write_errno = None
    io.truncate_fails = False
    ch.put(numbered(3, 3), "b")
    ch2 = reopen(ch, channels)
    assert drain(ch2) == list(range(6))  # the half-written record is skipped, never delivered


def test_fsync_error_fails_the_put_and_abandons_the_segment(channels):
    io = FaultyIO()
    ch = channels(io=io)
    ch.put(numbered(0, 3), "a")
    failed_segment = max(ch.segment_paths())
    size_before = os.path.getsize(ch.segment_paths()[failed_segment])
    io.fsync_errno = errno.EIO
    with pytest.raises(ChannelWriteError) as exc:
        ch.put(numbered(100, 3), "lost")
    assert "fsync" in str(exc.value)
    assert ch.size() == 3
    # the unsynced record was truncated away; the segment is never written again
    assert os.path.getsize(ch.segment_paths()[failed_segment]) == size_before
    io.fsync_errno = None
    ch.put(numbered(3, 3), "b")
    assert max(ch.segment_paths()) > failed_segment
    assert os.path.getsize(ch.segment_paths()[failed_segment]) == size_before
    assert ch.metrics()["FsyncErrorCount"] == 1
    ch2 = reopen(ch, channels)
    assert drain(ch2) == list(range(6))


def test_fsync_error_then_retry_of_the_same_txn_is_delivered_once(channels):
    # The record of the failed put stays on disk (truncation fails too); the source retries with
    # the same txn id; replay must deliver it once.
    io = FaultyIO()
    ch = channels(io=io)
    io.fsync_errno, io.truncate_fails = errno.EIO, True
    with pytest.raises(ChannelWriteError):
        ch.put(numbered(0, 3), "x")
    io.fsync_errno, io.truncate_fails = None, False
    ch.put(numbered(0, 3), "x")
    ch.put(numbered(3, 1), "y")
    ch2 = reopen(ch, channels)
    assert drain(ch2) == [0, 1, 2, 3]
    assert ch2.metrics()["ReplayDuplicateEventCount"] == 3


def test_commit_fsync_error_keeps_the_lease(channels):
    io = FaultyIO()
    ch = channels(io=io)
    ch.put(numbered(0, 10), "a")
    lease, _ = ch.take(4)
    io.fsync_errno = errno.EIO
    with pytest.raises(ChannelWriteError):
        ch.commit(lease)
    assert ch.size() == 10
    io.fsync_errno = None
    ch.commit(lease)
    assert ch.size() == 6
    ch2 = reopen(ch, channels)
    assert drain(ch2) == list(range(4, 10))


def test_segment_creation_failure_fails_the_put_and_recovers(channels):
    io = FaultyIO()
    ch = channels(io=io, max_file_size_bytes=2048)
    ch.put(numbered(0, 20, size=50), "a")  # fills the first segment: the next put must roll
    io.write_errno = errno.ENOSPC
    with pytest.raises(ChannelWriteError):
        ch.put(numbered(100, 20, size=50), "lost")
    io.write_errno = None
    ch.put(numbered(20, 20, size=50), "b")
    ch2 = reopen(ch, channels, max_file_size_bytes=2048)
    assert drain(ch2) == list(range(40))


def test_puts_are_refused_below_the_free_space_floor(channels):
    io = FaultyIO()
    ch = channels(io=io, minimum_required_space_bytes=100 * MiB)
    io.free = 1 << 40
    ch.put(numbered(0, 4), "a")
    io.free = 10 * MiB
    with pytest.raises(InsufficientDiskSpace) as exc:
        ch.put(numbered(4, 4), "b")
    assert isinstance(exc.value, ChannelFull) and isinstance(exc.value, ChannelWriteError)
    assert "minimum_required_space_bytes" in str(exc.value)
    assert ch.size() == 4
    # draining still works while space is short
    lease, _ = ch.take(2)
    ch.commit(lease)
    io.free = 1 << 40
    ch.put(numbered(4, 4), "b")
    assert drain(ch) == [2, 3, 4, 5, 6, 7]
    assert ch.metrics()["DiskSpaceRefusalCount"] == 1


def test_closed_channel_refuses_operations(channels):
    ch = channels()
    ch.close()
    with pytest.raises(ChannelError):
        ch.put(numbered(0, 1), "a")
    with pytest.raises(ChannelError):
        ch.take(1)


# -- config -------------------------------------------------------------------------------------
def test_config_is_registered_and_builds(tmp_path):
    cls = lookup("channel", "file")
    assert cls is FileChannelConfig
    cfg = cls(type="file", checkpoint_dir=str(tmp_path / "c"),
              data_dirs=f"{tmp_path / 'd1'}, {tmp_path / 'd2'}", capacity=50,
              minimum_required_space_bytes=MiB)
    assert cfg.data_dirs == [str(tmp_path / "d1"), str(tmp_path / "d2")]
    assert cfg.transaction_capacity == 10_000 and cfg.checkpoint_interval_s == 30
    ch = cfg.build("cfgchan")
    try:
        assert ch.capacity == 50 and ch.data_dirs[0] == str(tmp_path / "d1")
        ch.put(numbered(0, 2), "a")
        assert drain(ch) == [0, 1]
    finally:
        ch.close()
    assert os.path.exists(tmp_path / "d2" / "in_use.lock")


def test_config_defaults():
    cfg = FileChannelConfig(type="file")
    assert cfg.capacity == 1_000_000
    assert cfg.minimum_required_space_bytes == 524_288_000
    assert cfg.fsync == "per_commit"
    ckpt, data = cfg.storage_dirs("c1")
    assert ckpt.endswith(os.path.join("file-channel", "c1", "checkpoint"))
    assert data[0].endswith(os.path.join("file-channel", "c1", "data"))


@pytest.mark.parametrize("bad", [
    {"minimum_required_space_bytes": 1000},
    {"fsync": "never"},
    {"fsync_interval_s": 1.0},
    {"data_dirs": []},
    {"data_dirs": ["/tmp/x", "/tmp/x"]},
    {"max_file_size_bytes": 10},
    {"maxFileSize": 10},
])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        FileChannelConfig(type="file", **bad)


# -- the commit rule ------------------------------------------------------------------------------
class GatedIO(FileIO):
    """Segment fsyncs block while the gate is closed; every operation is logged in order."""

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.blocked = threading.Event()
        self.ops: list[tuple[str, str]] = []

    @staticmethod
    def _path(fd) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return "?"

    def open(self, path, flags, mode=0o644):
        fd = super().open(path, flags, mode)
        self.ops.append(("open", os.path.basename(path)))
        return fd

    def write(self, fd, buffers):
        self.ops.append(("write", os.path.basename(self._path(fd))))
        super().write(fd, buffers)

    def fsync(self, fd):
        path = self._path(fd)
        if path.endswith(".seg") and not self.gate.is_set():
            self.blocked.set()
            assert self.gate.wait(30)
        self.ops.append(("fsync", os.path.basename(path)))
        super().fsync(fd)

    def fsync_dir(self, path):
        self.ops.append(("fsync_dir", os.path.basename(path)))
        super().fsync_dir(path)


def test_put_returns_only_after_fsync(channels):
    io = GatedIO()
    ch = channels(io=io)
    io.gate.clear()
    done = threading.Event()
    t = threading.Thread(target=lambda: (ch.put(numbered(0, 3), "a"), done.set()))
    t.start()
    assert io.blocked.wait(10)
    assert not done.is_set() and ch.size() == 0 and ch.take(3) is None
    io.gate.set()
    t.join(10)
    assert done.is_set() and ch.size() == 3


def test_a_new_segment_is_fsynced_with_its_directory_before_the_put_returns(channels):
    io = GatedIO()
    ch = channels(io=io, max_file_size_bytes=1024)
    ch.put(numbered(0, 10, size=60), "a")  # fills the first segment
    first = max(ch.segment_paths())
    io.ops.clear()
    ch.put(numbered(10, 10, size=60), "b")
    second = max(ch.segment_paths())
    assert second == first + 1
    old, new = os.path.basename(ch.segment_paths()[first]), os.path.basename(ch.segment_paths()[second])
    ops = io.ops
    assert ops[:5] == [("fsync", old), ("open", new), ("write", new), ("fsync", new), ("fsync_dir", "data")]
    assert ops[5:] == [("write", new), ("fsync", new)]


def test_checkpoint_during_an_unsynced_put_keeps_that_put(channels):
    io = GatedIO()
    ch = channels(io=io)
    ch.put(numbered(0, 2), "a")
    io.gate.clear()
    t = threading.Thread(target=ch.put, args=(numbered(2, 2), "b"))
    t.start()
    assert io.blocked.wait(10)
    assert ch.checkpoint()  # the record of "b" is written but not yet durable nor visible
    io.gate.set()
    t.join(10)
    assert ch.size() == 4
    ch2 = reopen(ch, channels)
    assert drain(ch2) == [0, 1, 2, 3]


def test_opens_and_drains_while_the_disk_refuses_writes(channels):
    ch = channels()
    ch.put(numbered(0, 4), "a")
    ch.close(checkpoint=False)
    io = FaultyIO()
    io.write_errno = errno.ENOSPC
    ch = channels(io=io)  # cannot create a segment nor write a checkpoint: opens anyway
    assert ch.metrics()["CheckpointErrorCount"] == 1
    lease, b = ch.take(2)
    assert numbers(b) == [0, 1]
    with pytest.raises(ChannelWriteError):
        ch.put(numbered(4, 1), "b")
    io.write_errno = None
    ch.commit(lease)
    ch.put(numbered(4, 1), "b")
    ch2 = reopen(ch, channels)
    assert drain(ch2) == [2, 3, 4]
