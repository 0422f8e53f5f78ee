"""The file channel on a real full disk (issue 12).

Each test mounts a small tmpfs, puts the channel's checkpoint and data directories on it, and
fills it for real: the ``ENOSPC`` comes from the kernel, not from an injected fault. The disk is
filled from outside the channel by a filler file the test writes; :class:`DiskIO` (the channel's
file-operation seam, otherwise the real calls) only chooses *when*: just before the channel writes
a record, so the kernel takes part of that record and refuses the rest (the middle of a segment
write), or while another put's fsync is in progress (the middle of a group commit).

The oracle, checked event by event: every put that returned is delivered exactly once, across
the full disk, freeing space and reopening the channel from its files; nothing of a refused put
ever appears. Tests skip, with the reason, where the machine cannot mount a tmpfs.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import threading
from collections import Counter

import pytest

from rayflume.channels.file import ChannelWriteError, FileChannel, FileChannelConfig, FileIO, InsufficientDiskSpace
from rayflume.errors import ChannelError, ChannelFull
from rayflume.event import EventBatch
from tests.channel_contract import wait_until

KiB, MiB = 1 << 10, 1 << 20
DISK_SIZE = 8 * MiB
NAME = "full-disk"
ENOSPC_TEXT = os.strerror(errno.ENOSPC)
WAIT_S = 10.0


# -- identifiable events ----------------------------------------------------------------------
def events(prefix: str, n: int, size: int = KiB) -> EventBatch:
    """``n`` events whose bodies start with their identity ``<prefix>-<i>``, padded to ``size``."""
    return EventBatch.from_bodies([f"{prefix}-{i:05d}|".encode().ljust(size, b".")
                                   for i in range(n)])


def ids(batch: EventBatch) -> list[str]:
    return [body.split(b"|", 1)[0].decode() for body in batch.bodies()]


def put_acked(ch: FileChannel, acked: list[str], txn_id: str, batch: EventBatch) -> None:
    """Put ``batch``; once the put returned, its events are acknowledged."""
    ch.put(batch, txn_id)
    acked.extend(ids(batch))


def drain(ch: FileChannel, max_events: int = 70) -> list[str]:
    """Take and commit until the channel is empty; the identities committed, in order."""
    out = []
    while (got := ch.take(max_events)) is not None:
        lease, batch = got
        ch.commit(lease)
        out += ids(batch)
    return out


def assert_exactly_once(delivered: list[str], acked: list[str]) -> None:
    assert len(set(acked)) == len(acked), "the test acknowledged an identity twice"
    seen = Counter(delivered)
    dupes = sorted(i for i, n in seen.items() if n > 1)
    assert not dupes, f"delivered more than once: {dupes[:10]}"
    lost = [i for i in acked if i not in seen]
    assert not lost, f"acknowledged but never delivered: {lost[:10]} ({len(lost)} in all)"
    extra = sorted(set(seen) - set(acked))
    assert not extra, f"delivered but never acknowledged: {extra[:10]}"
    assert delivered == acked  # a file channel is FIFO


# -- the small disk ---------------------------------------------------------------------------
def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class DiskIO(FileIO):
    """The real file operations, with two hooks on the channel's segment files.

    ``before_next_segment_write(fn)`` runs ``fn`` (the test filling the disk) just before the
    channel's next write to a segment; a write the kernel fails is recorded in ``failed_writes``
    as (path, file size before it, bytes of it that landed before the error).
    ``hold_next_segment_fsync()`` makes the next segment fsync wait until the returned event is
    set (``fsync_held`` is set while it waits).
    """

    def __init__(self):
        self._before_write = None
        self._fsync_gate: threading.Event | None = None
        self.fsync_held = threading.Event()
        self.failed_writes: list[tuple[str, int, int]] = []
        self.segment_writes = 0

    def before_next_segment_write(self, fn) -> None:
        self._before_write = fn

    def hold_next_segment_fsync(self) -> threading.Event:
        self._fsync_gate = threading.Event()
        return self._fsync_gate

    def write(self, fd, buffers):
        path = _fd_path(fd)
        if not path.endswith(".seg"):
            return super().write(fd, buffers)
        hook, self._before_write = self._before_write, None
        if hook is not None:
            hook()
        before = os.fstat(fd).st_size
        try:
            super().write(fd, buffers)
        except OSError:
            self.failed_writes.append((path, before, os.fstat(fd).st_size - before))
            raise
        self.segment_writes += 1

    def fsync(self, fd):
        gate = self._fsync_gate
        if gate is not None and _fd_path(fd).endswith(".seg"):
            self._fsync_gate = None
            self.fsync_held.set()
            gate.wait(WAIT_S)  # the test asserts what happened meanwhile; never hang
        super().fsync(fd)


class SmallDisk:
    """A mounted tmpfs of ``DISK_SIZE`` bytes, filler files on it, and channels opened on it."""

    def __init__(self, root: str):
        self.root = root
        self.checkpoint_dir = os.path.join(root, "checkpoint")
        self.data_dir = os.path.join(root, "data")
        self.page = os.statvfs(root).f_frsize
        self.fillers: list[str] = []
        self.channels: list[FileChannel] = []

    def free(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Write a filler file until the kernel says ENOSPC, then give back ``leave`` bytes."""
        assert leave % self.page == 0
        path = os.path.join(self.root, f"filler-{len(self.fillers)}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.fillers.append(path)
        chunk = b"\xff" * (256 * KiB)
        try:
            while True:
                try:
                    os.write(fd, chunk)  # the last one may be short; the next then fails
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
            os.ftruncate(fd, os.fstat(fd).st_size - leave)
        finally:
            os.close(fd)
        assert self.free() == leave, f"filled {self.root} to {self.free()} bytes free, not {leave}"

    def unfill(self) -> None:
        """Space returns: delete every filler file."""
        while self.fillers:
            os.unlink(self.fillers.pop())

    def open_channel(self, **options) -> FileChannel:
        options.setdefault("minimum_required_space_bytes", 0)
        options.setdefault("checkpoint_interval_s", 3600.0)  # no background checkpoint mid-test
        ch = FileChannel(NAME, self.checkpoint_dir, [self.data_dir], **options)
        self.channels.append(ch)
        return ch

    def open_from_config(self, **keys) -> FileChannel:
        """The channel as a topology builds it (validated keys, no test seam)."""
        cfg = FileChannelConfig(type="file", checkpoint_dir=self.checkpoint_dir,
                                data_dirs=[self.data_dir], checkpoint_interval_s=3600.0, **keys)
        ch = cfg.build(NAME)
        self.channels.append(ch)
        return ch

    def close_all(self) -> None:
        for ch in self.channels:
            try:
                ch.close()
            except Exception:
                pass


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@pytest.fixture
def disk(tmp_path):
    """A fresh ``DISK_SIZE`` tmpfs; channels on it are closed and it is unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root (this runs as uid {os.geteuid()}); the real "
                    f"full-disk tests cannot run here")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount command on this machine; cannot mount a small tmpfs")
    root = tmp_path / "disk"
    root.mkdir()
    done = _run("mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(root))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs on {root} (mount exited {done.returncode}: "
                    f"{' '.join((done.stderr or done.stdout).split())}); the machine does not allow it")
    small = None
    try:
        assert os.path.ismount(root)
        small = SmallDisk(str(root))
        assert small.free() == DISK_SIZE
        yield small
    finally:
        try:
            if small is not None:
                small.close_all()
        finally:
            if _run("umount", str(root)).returncode != 0:
                _run("umount", "-l", str(root))  # never leave the mount behind
                pytest.fail(f"{root} was busy at unmount (lazily unmounted): a file stayed open")


# -- the tests --------------------------------------------------------------------------------
def test_enospc_in_the_middle_of_a_record_refuses_the_put_and_loses_nothing(disk):
    io = DiskIO()
    ch = disk.open_channel(io=io)
    acked: list[str] = []
    for k in range(5):
        put_acked(ch, acked, f"a{k}", events(f"a{k}", 40))
    seg_path = ch.segment_paths()[max(ch.segment_paths())]
    seg_size = os.path.getsize(seg_path)

    # Another writer takes all but two pages while the put is on its way to the disk: the guard
    # saw plenty of room, the kernel takes two pages of the ~41 KiB record and refuses the rest.
    io.before_next_segment_write(lambda: disk.fill(leave=2 * disk.page))
    lost = events("lost", 40)
    with pytest.raises(ChannelWriteError) as refused:
        ch.put(lost, "t-lost")
    err = refused.value
    assert type(err) is ChannelWriteError, "the kernel's ENOSPC, not the free-space guard"
    assert isinstance(err, ChannelError) and isinstance(err.__cause__, OSError)
    assert err.__cause__.errno == errno.ENOSPC
    message = str(err)
    for part in (f"'{NAME}'", disk.data_dir, ENOSPC_TEXT, "free disk space"):
        assert part in message, f"{part!r} missing from: {message}"
    [(path, before, landed)] = io.failed_writes
    assert (path, before) == (seg_path, seg_size)
    assert 0 < landed < lost.nbytes, f"{landed} bytes landed: not a write refused mid-record"

    # Nothing of the refused put was applied: the half record is cut off again, its space given
    # back, its events not queued, its txn id not committed.
    assert os.path.getsize(seg_path) == seg_size
    assert disk.free() == 2 * disk.page
    assert ch.size() == len(acked) and not ch.has_committed("t-lost")
    m = ch.metrics()
    assert (m["WriteErrorCount"], m["DiskSpaceRefusalCount"], m["EventPutErrorCount"]) == (1, 0, 40)

    # While the disk stays full the source's retry is refused up front, typed as backpressure.
    with pytest.raises(InsufficientDiskSpace) as refused_again:
        ch.put(lost, "t-lost")
    assert isinstance(refused_again.value, ChannelFull)
    message = str(refused_again.value)
    for part in (f"'{NAME}'", f"{2 * disk.page} bytes free on {disk.data_dir}",
                 "minimum_required_space_bytes=0", "Free disk space"):
        assert part in message, f"{part!r} missing from: {message}"
    # it says why 8 KiB free is too little under a floor of 0: the size of the put
    needs = re.search(r"this put needs (\d+) bytes", message)
    assert needs, f"the refusal does not say how much the put needs: {message}"
    assert int(needs.group(1)) > lost.nbytes > 2 * disk.page
    assert ch.size() == len(acked) and not ch.has_committed("t-lost")

    # Draining works on the full disk (a commit record fits in what is left).
    delivered = []
    for _ in range(2):
        lease, batch = ch.take(50)
        ch.commit(lease)
        delivered += ids(batch)
    assert delivered == acked[:100]

    # Space returns: the retried put and new ones succeed.
    disk.unfill()
    put_acked(ch, acked, "t-lost", lost)
    put_acked(ch, acked, "b0", events("b0", 40))
    assert ch.has_committed("t-lost")
    lease, batch = ch.take(50)
    ch.commit(lease)
    delivered += ids(batch)
    _in_flight = ch.take(30)  # taken, never committed: must come back after the restart

    # Reopen from the files on the tmpfs by replay alone (no closing checkpoint), as after a crash.
    ch.close(checkpoint=False)
    ch = disk.open_channel(io=DiskIO())
    assert ch.metrics()["CorruptRecordCount"] == 0 and ch.metrics()["TornTailCount"] == 0
    delivered += drain(ch)
    assert_exactly_once(delivered, acked)
    assert sum(i.startswith("lost-") for i in delivered) == 40


def test_commit_on_a_completely_full_disk_waits_for_space_and_loses_nothing(disk):
    io = DiskIO()
    ch = disk.open_channel(io=io)
    acked: list[str] = []
    for k in range(4):
        put_acked(ch, acked, f"a{k}", events(f"a{k}", 40))
    lease, first = ch.take(60)
    assert ids(first) == acked[:60]

    # The disk fills to the last byte under a put: refused, and now the log must roll to a new
    # segment, which needs a page the disk does not have.
    io.before_next_segment_write(lambda: disk.fill(leave=0))
    with pytest.raises(ChannelWriteError):
        ch.put(events("lost", 40), "t-lost")
    assert disk.free() == 0
    with pytest.raises(ChannelWriteError) as refused:
        ch.commit(lease)
    assert type(refused.value) is ChannelWriteError
    for part in (f"'{NAME}'", disk.data_dir, ENOSPC_TEXT, "free disk space"):
        assert part in str(refused.value)
    assert ch.size() == len(acked)  # the lease still holds its 60 events
    with pytest.raises(InsufficientDiskSpace):
        ch.put(events("lost", 40), "t-lost")

    # Restart on the still-full disk: no segment and no checkpoint can be written, it opens anyway
    # and reads every acknowledged event back from the tmpfs (the lease was never committed).
    ch.close(checkpoint=False)
    ch = disk.open_channel(io=DiskIO(), cache_bytes=0)
    assert ch.size() == len(acked)
    assert ch.metrics()["CheckpointErrorCount"] >= 1
    lease, batch = ch.take(60)
    assert ids(batch) == acked[:60]
    with pytest.raises(ChannelWriteError):
        ch.commit(lease)
    with pytest.raises(InsufficientDiskSpace):
        ch.put(events("lost", 40), "t-lost")
    assert not ch.has_committed("t-lost")

    # Space returns: the same commit goes through on retry, puts are accepted again.
    disk.unfill()
    ch.commit(lease)
    delivered = ids(batch)
    put_acked(ch, acked, "b0", events("b0", 40))
    delivered += drain(ch)
    assert_exactly_once(delivered, acked)
    assert not any(i.startswith("lost-") for i in delivered)

    put_acked(ch, acked, "c0", events("c0", 10))
    ch.close()
    ch = disk.open_channel(io=DiskIO())
    assert drain(ch) == acked[-10:]


def test_enospc_in_the_middle_of_a_group_commit_fails_only_the_refused_put(disk):
    io = DiskIO()
    ch = disk.open_channel(io=io)
    acked: list[str] = []
    put_acked(ch, acked, "a0", events("a0", 40))

    outcome: dict[str, BaseException | None] = {}

    def put_in_thread(txn: str) -> threading.Thread:
        def run():
            try:
                ch.put(events(txn, 40), txn)
                outcome[txn] = None
            except BaseException as exc:
                outcome[txn] = exc
        t = threading.Thread(target=run, name=f"put-{txn}", daemon=True)
        t.start()
        return t

    # g1 is written and its fsync (the group commit's leader) is held; g2 is written meanwhile
    # and waits for a sync; then the disk fills under g3's write.
    release = io.hold_next_segment_fsync()
    try:
        writes = io.segment_writes
        t1 = put_in_thread("g1")
        assert io.fsync_held.wait(WAIT_S), "g1 never reached its fsync"
        t2 = put_in_thread("g2")
        wait_until(lambda: io.segment_writes == writes + 2, WAIT_S, what="g2's record is written")
        io.before_next_segment_write(lambda: disk.fill(leave=disk.page))
        with pytest.raises(ChannelWriteError) as refused:
            ch.put(events("g3", 40), "g3")
        assert ENOSPC_TEXT in str(refused.value)
        [(_path, _before, landed)] = io.failed_writes
        assert landed > 0
        assert t1.is_alive() and t2.is_alive() and not outcome, "acknowledged before the fsync"
    finally:
        release.set()  # let g1's fsync finish, also when an assertion failed (the disk unmounts)
    for t in (t1, t2):
        t.join(WAIT_S)
        assert not t.is_alive()
    assert outcome == {"g1": None, "g2": None}
    acked += ids(events("g1", 40)) + ids(events("g2", 40))
    assert [ch.has_committed(t) for t in ("g1", "g2", "g3")] == [True, True, False]
    assert ch.size() == len(acked)

    # The written-but-refused record is gone from the segment: a replay of the files (still on a
    # full disk) finds g1 and g2 and nothing of g3.
    ch.close(checkpoint=False)
    ch = disk.open_channel(io=DiskIO())
    assert ch.metrics()["CorruptRecordCount"] == 0
    assert ch.size() == len(acked)
    disk.unfill()
    put_acked(ch, acked, "g3", events("g3", 40))  # the source's retry, once space is back
    assert_exactly_once(drain(ch), acked)


def test_free_space_floor_refuses_puts_and_draining_gives_the_space_back(disk):
    floor = 2 * MiB
    ch = disk.open_from_config(minimum_required_space_bytes=floor, max_file_size_bytes=MiB)
    acked: list[str] = []
    refused = None
    for k in range(200):
        try:
            put_acked(ch, acked, f"p{k}", events(f"p{k}", 100))
        except InsufficientDiskSpace as exc:
            refused = (k, exc)
            break
    assert refused is not None, "the disk never reached the free-space floor"
    k, exc = refused
    assert isinstance(exc, ChannelFull)
    for part in (f"'{NAME}'", disk.data_dir, f"minimum_required_space_bytes={floor}"):
        assert part in str(exc)
    # The guard stopped puts before the disk itself ran out: no write ever failed.
    assert ch.metrics()["WriteErrorCount"] == 0
    assert disk.free() >= floor - disk.page
    assert ch.size() == len(acked) == 100 * k and not ch.has_committed(f"p{k}")

    # Draining works below the floor, and it is what gives the space back: once everything is
    # committed a checkpoint deletes the drained segments.
    delivered = drain(ch)
    assert_exactly_once(delivered, acked)
    with pytest.raises(InsufficientDiskSpace):
        ch.put(events(f"p{k}", 100), f"p{k}")
    assert ch.checkpoint()
    assert disk.free() >= DISK_SIZE - 2 * MiB
    after: list[str] = []
    put_acked(ch, after, f"p{k}", events(f"p{k}", 100))  # the refused put, retried

    # Another writer pushes free space under the floor: refused; it deletes its file: accepted.
    disk.fill(leave=floor // 2)
    with pytest.raises(InsufficientDiskSpace):
        ch.put(events("q0", 100), "q0")
    assert ch.metrics()["WriteErrorCount"] == 0
    disk.unfill()
    put_acked(ch, after, "q0", events("q0", 100))

    ch.close()
    ch = disk.open_from_config(minimum_required_space_bytes=floor, max_file_size_bytes=MiB)
    assert_exactly_once(drain(ch), after)
