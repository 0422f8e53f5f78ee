"""The file channel under simulated power loss (tests/powerloss_fs.py), in-process, no Ray.

Each run drives a seeded random workload (puts, concurrent puts sharing an fsync, takes that are
committed, rolled back or left leased, checkpoints that delete consumed segments, 4 KiB segments so
they roll often) over a :class:`PowerLossIO`, cuts the power just before one chosen file operation,
writes the disk image a reboot would find, opens a new channel on it and drains it.

Oracle (Jepsen's total-queue, per the channel's contract with ``fsync="per_commit"``):

* a put is acknowledged when ``put()`` returned; an event is *consumed* when the ``commit()`` of
  the take that returned it returned; an event whose commit was called but raised or never
  returned is *maybe consumed* (its sink already delivered it downstream);
* lost = acknowledged - consumed - maybe consumed - recovered: must be empty;
* unexpected = recovered - attempted: must be empty;
* duplicate bound: **zero** for consumed events: an event whose take commit returned never comes
  back (the TAKE_COMMIT record was fsynced before commit returned). No event is recovered twice.
  A maybe-consumed event may come back once (at-least-once: one duplicate downstream at most);
* recovery counts no corrupt record and no missing event: a power cut only loses unsynced bytes.

The last test applies the same layer to the taildir position file (written through the same
``FileIO`` seam).

Set ``RAYFLUME_POWERLOSS_SEED`` to explore other seeds; a failure names the seed, workload, crash
point and mode that reproduce it.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from rayflume.channels.file import FileChannel, FileIO
from rayflume.channels.file.errors import ChannelWriteError
from tests.channel_contract import numbered, numbers
from tests.powerloss_fs import MODES, PowerLossIO

SEED = int(os.environ.get("RAYFLUME_POWERLOSS_SEED", "1207"))
# 30 workloads x (1 dry run + 10 crashes) = 330 power losses, a few seconds; raise for longer runs
WORKLOADS = int(os.environ.get("RAYFLUME_POWERLOSS_WORKLOADS", "30"))
CRASHES_PER_WORKLOAD = 10
STEPS = 36
SEGMENT_BYTES = 4096
CATEGORIES = ("put", "group_commit", "segment_roll", "checkpoint_write", "segment_delete",
              "take_commit", "any")


def categories(label) -> set[str]:
    """The crash-point categories an operation label (phase, op, file kind) belongs to."""
    phase, op, kind = label
    cats = {"any"}
    if phase in ("put", "group_commit", "take_commit"):
        cats.add(phase)
    if (op == "create" and kind == "segment") or op.endswith("+roll"):
        cats.add("segment_roll")
    if kind in ("checkpoint", "dir:checkpoint") and op != "mkdir":
        cats.add("checkpoint_write")
    if (op == "unlink" and kind == "segment") or (phase == "checkpoint" and kind == "dir:data"):
        cats.add("segment_delete")
    return cats


def open_channel(base: Path, io: FileIO) -> FileChannel:
    return FileChannel("pl", str(base / "checkpoint"), [str(base / "data")], io=io,
                       max_file_size_bytes=SEGMENT_BYTES, checkpoint_interval_s=3600,
                       minimum_required_space_bytes=0, checkpoint_on_close=False,
                       lease_timeout_s=3600)


class History:
    def __init__(self):
        self.lock = threading.Lock()
        self.attempted: set[int] = set()
        self.acked: set[int] = set()
        self.consumed: set[int] = set()
        self.maybe_consumed: set[int] = set()
        self.next_id = 0

    def ids(self, n: int) -> int:
        with self.lock:
            first = self.next_id
            self.next_id += n
            self.attempted.update(range(first, first + n))
            return first


def _put(ch, hist: History, n: int, size: int) -> None:
    first = hist.ids(n)
    ch.put(numbered(first, n, size=size), f"p{first}")
    with hist.lock:
        hist.acked.update(range(first, first + n))


def _group_put(ch, io: PowerLossIO, hist: History, wrng: random.Random) -> None:
    """Three concurrent puts; the first fsync waits until all three wrote (the later ones share
    the next fsync)."""
    sizes = [wrng.randint(50, 300) for _ in range(3)]
    errors = []

    def one(size):
        try:
            _put(ch, hist, 2, size)
        except (ChannelWriteError, OSError) as exc:
            errors.append(exc)

    io.hold_first_fsync(len(sizes))
    threads = [threading.Thread(target=one, args=(s,)) for s in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a concurrent put hung"
    if errors:
        raise errors[0]


def run_workload(base: Path, io: PowerLossIO, workload_seed: int, hist: History) -> None:
    """Drive the channel until the workload ends or the power is lost; abandons the channel."""
    wrng = random.Random(workload_seed)
    io.phase = "open"
    try:
        ch = open_channel(base, io)
    except OSError:
        assert io.crashed, "the channel did not open without a power loss"
        return
    held = []
    try:
        for _ in range(STEPS):
            step = wrng.choices(["put", "group_commit", "take_commit", "take_rollback",
                                 "take_hold", "checkpoint"], [5, 1.5, 3.5, 1, 0.4, 1.2])[0]
            io.phase = step
            try:
                if step == "put":
                    _put(ch, hist, wrng.randint(1, 4), wrng.randint(20, 400))
                elif step == "group_commit":
                    _group_put(ch, io, hist, wrng)
                elif step == "checkpoint":
                    assert ch.checkpoint() or io.crashed, "checkpoint failed without a crash"
                else:
                    got = ch.take(wrng.randint(1, 10))
                    if got is None:
                        continue
                    lease, batch = got
                    taken = numbers(batch)
                    if step == "take_commit":
                        try:
                            ch.commit(lease)
                        except BaseException:
                            hist.maybe_consumed.update(taken)
                            raise
                        hist.consumed.update(taken)
                    elif step == "take_rollback":
                        ch.rollback(lease)
                    else:
                        held.append(lease)
            except (ChannelWriteError, OSError):
                if not io.crashed:
                    raise
            if io.crashed:
                break
    finally:
        io.phase = "close"
        io.crash()      # the power goes out now if it did not already
        ch.close(checkpoint=False)   # only releases locks and threads: every write fails


class _NoSyncIO(FileIO):
    """Real files without real fsyncs, for the drain after recovery: the disk image it runs on is
    thrown away, so its own durability is not under test (saves two real syncs per take)."""

    def fsync(self, fd: int) -> None:
        pass

    def fsync_dir(self, path: str) -> None:
        pass


def recover(base: Path, io: FileIO | None = None) -> tuple[list[int], dict]:
    """Open a channel on ``base``, drain it committing every take, close it."""
    ch = open_channel(base, io or _NoSyncIO())
    try:
        out = []
        while True:
            got = ch.take(1000)
            if got is None:
                break
            lease, batch = got
            out += numbers(batch)
            ch.commit(lease)
        return out, ch.metrics()
    finally:
        ch.close(checkpoint=False)


def check(hist: History, recovered: list[int], metrics: dict) -> list[str]:
    """What the oracle objects to (empty when the run kept the contract)."""
    got = set(recovered)
    problems = []
    lost = hist.acked - hist.consumed - hist.maybe_consumed - got
    if lost:
        problems.append(f"lost acknowledged events {sorted(lost)[:20]} ({len(lost)})")
    unexpected = got - hist.attempted
    if unexpected:
        problems.append(f"never-put events appeared {sorted(unexpected)[:20]}")
    resurrected = got & hist.consumed
    if resurrected:
        problems.append(f"committed takes came back {sorted(resurrected)[:20]} ({len(resurrected)})")
    twice = [e for e, c in Counter(recovered).items() if c > 1]
    if twice:
        problems.append(f"events recovered twice {sorted(twice)[:20]}")
    for key in ("CorruptRecordCount", "MissingEventCount"):
        if metrics.get(key):
            problems.append(f"{key}={metrics[key]}")
    return problems


def one_run(tmp: Path, name: str, workload_seed: int, crash_at: int | None, mode: str,
            fs_seed: int, second_crash_at: int | None = None, io_cls=PowerLossIO):
    """One power loss (and optionally a second one during recovery); returns (io, problems)."""
    base = tmp / name
    base.mkdir()     # the channel makes its directories through the seam
    io = io_cls(str(base), fs_seed, mode, crash_at)
    hist = History()
    run_workload(base, io, workload_seed, hist)
    image = Path(io.materialize(str(tmp / (name + "-after"))))
    if second_crash_at is not None:
        io2 = io_cls(str(image), fs_seed + 1, mode, second_crash_at)
        io2.phase = "recovery"
        try:
            open_channel(image, io2).close(checkpoint=False)
        except OSError:     # the power went out while it made its directories
            assert io2.crashed
        io2.crash()
        io.recovery_label = io2.crash_label
        image = Path(io2.materialize(str(tmp / (name + "-after2"))))
    recovered, metrics = recover(image)
    return io, hist, check(hist, recovered, metrics)


@pytest.fixture
def scratch(tmp_path):
    """Where the runs keep their files: a tmpfs directory when there is one, else ``tmp_path``.
    The layer models durability; the real files only hold the bytes, and on a disk shared with
    other tests creating and deleting the runs' thousands of files took a third of the time."""
    shm = "/dev/shm"
    try:
        usable = os.path.isdir(shm) and os.access(shm, os.W_OK) and \
            shutil.disk_usage(shm).free > 256 << 20
    except OSError:
        usable = False
    if not usable:
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="rayflume-powerloss-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _tidy(tmp: Path, name: str, keep: Path | None) -> None:
    """Remove one run's directories; a failed run's go to ``keep`` (tmp_path) for inspection."""
    for suffix in ("", "-after", "-after2"):
        path = tmp / (name + suffix)
        if not path.exists():
            continue
        if keep is not None and keep != tmp:
            shutil.move(str(path), str(keep / path.name))
        elif keep is None:
            shutil.rmtree(path, ignore_errors=True)


def crash_campaign(tmp: Path, workloads: int, io_cls=PowerLossIO, keep: Path | None = None):
    """``workloads`` seeded workloads, each with a dry run (that ends with its own power loss) and
    CRASHES_PER_WORKLOAD cuts aimed at the categories in turn; returns (runs, runs with a second
    crash during recovery, Counter of crash-point categories, failure messages, held fsyncs
    released by their timeout)."""
    rng = random.Random(SEED)
    covered: Counter = Counter()
    runs = second = gate_timeouts = 0
    failures = []
    for w in range(workloads):
        workload_seed = rng.randrange(1 << 30)
        # A dry run counts the file operations (and ends with its own power loss: one more point).
        dry, hist, problems = one_run(tmp, f"w{w}-dry", workload_seed, None, "drop",
                                      rng.randrange(1 << 30), io_cls=io_cls)
        runs += 1
        gate_timeouts += dry.gate_timeouts
        if problems:
            failures.append(f"seed={SEED} workload={w} crash_at=end mode=drop: {problems}")
        _tidy(tmp, f"w{w}-dry", keep if problems else None)
        ops = dry.ops
        for j in range(CRASHES_PER_WORKLOAD):
            want = CATEGORIES[(w * CRASHES_PER_WORKLOAD + j) % len(CATEGORIES)]
            candidates = [i + 1 for i, label in enumerate(ops) if want in categories(label)]
            if want == "segment_delete":   # also just after the deletions became durable
                candidates += [i + 2 for i, label in enumerate(ops)
                               if label == ("checkpoint", "fsync_dir", "dir:data")]
            crash_at = rng.choice(candidates) if candidates else rng.randint(1, len(ops))
            mode = MODES[(w + j) % len(MODES)]
            fs_seed = rng.randrange(1 << 30)
            again = rng.randint(1, 14) if j % 4 == 3 else None
            io, hist, problems = one_run(tmp, f"w{w}-c{j}", workload_seed, crash_at, mode,
                                         fs_seed, again, io_cls=io_cls)
            runs += 1
            gate_timeouts += io.gate_timeouts
            if io.crash_label is not None:
                covered.update(categories(io.crash_label))
            if again is not None:
                second += 1
                if getattr(io, "recovery_label", None) is not None:
                    covered["second_crash_in_recovery"] += 1
            if problems:
                failures.append(f"seed={SEED} workload={w} crash_at={crash_at} mode={mode} "
                                f"fs_seed={fs_seed} second_crash_at={again} "
                                f"label={io.crash_label}: {problems}")
            _tidy(tmp, f"w{w}-c{j}", keep if problems else None)
    return runs, second, covered, failures, gate_timeouts


def test_power_loss_at_random_points_keeps_every_acknowledged_event(scratch, tmp_path):
    t0 = time.monotonic()
    runs, second, covered, failures, gate_timeouts = crash_campaign(scratch, WORKLOADS,
                                                                    keep=tmp_path)
    elapsed = time.monotonic() - t0
    print(f"power-loss runs: {runs} ({second} with a second crash during recovery) in "
          f"{elapsed:.1f}s; crash points by category: {dict(covered)}; seed={SEED}; "
          f"group-commit fsyncs released by their timeout: {gate_timeouts}")
    assert not failures, f"{len(failures)} of {runs} runs broke the contract:\n" + "\n".join(failures[:10])
    assert runs >= min(200, WORKLOADS * (CRASHES_PER_WORKLOAD + 1))
    for cat in CATEGORIES[:-1]:
        assert covered[cat] >= 10, (cat, dict(covered))


class _NoParentFsyncIO(PowerLossIO):
    """A mutant: the channel's directories are made without fsyncing their parents (the bug this
    layer found, since fixed in FileIO.makedirs)."""

    def makedirs(self, path: str) -> None:
        path = os.path.abspath(path)
        if os.path.isdir(path):
            return
        self.makedirs(os.path.dirname(path))
        self.mkdir(path)


def test_the_oracle_catches_a_missing_directory_fsync(scratch):
    """The campaign above still fails when durability is broken: two of its workloads under the
    mutant lose acknowledged events in most runs (about two thirds of the 209 runs)."""
    runs, _, _, failures, _ = crash_campaign(scratch, 2, io_cls=_NoParentFsyncIO)
    lost = [f for f in failures if "lost acknowledged events" in f]
    assert len(lost) >= runs // 4, (len(lost), runs, failures[:3])


def test_concurrent_puts_share_one_fsync(tmp_path):
    """The group-commit phase of the workload really groups: 3 puts, fewer fsyncs."""
    io = PowerLossIO(str(tmp_path), 1, "drop")
    ch = open_channel(tmp_path, io)
    try:
        hist = History()
        before = io.fsyncs
        _group_put(ch, io, hist, random.Random(1))
        # 2: the leader synced its own write and the two that queued behind it share the next
        # fsync; 1 (a busy machine): all three wrote before the leader took its sync point.
        assert io.fsyncs - before in (1, 2)
        assert io.gate_timeouts == 0     # released by the third write, not by its 10 s timeout
        assert len(hist.acked) == 6
    finally:
        ch.close(checkpoint=False)


@pytest.mark.parametrize("mode", MODES)
def test_the_simulation_loses_unsynced_data(tmp_path, mode):
    """Sanity of the layer itself: synced bytes survive, unsynced ones may not, torn is a prefix."""
    d = tmp_path / "d"
    d.mkdir()
    io = PowerLossIO(str(tmp_path), 5, mode)
    a = str(d / "a")
    fd = io.open(a, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    io.write(fd, [b"durable"])
    io.fsync(fd)
    io.fsync_dir(str(d))
    io.write(fd, [b"-unsynced"])
    io.close(fd)
    fd = io.open(str(d / "b"), os.O_WRONLY | os.O_CREAT)   # its entry is never made durable
    io.write(fd, [b"b"])
    io.fsync(fd)
    io.close(fd)
    io.mkdir(str(tmp_path / "e"))      # a new directory whose parent is never fsynced
    fd = io.open(str(tmp_path / "e" / "f"), os.O_WRONLY | os.O_CREAT)
    io.write(fd, [b"f"])
    io.fsync(fd)
    io.close(fd)
    io.fsync_dir(str(tmp_path / "e"))
    io.crash()
    with pytest.raises(OSError):
        io.fsync_dir(str(d))
    out = Path(io.materialize(str(tmp_path / "img")))
    data = (out / "d" / "a").read_bytes()
    assert data.startswith(b"durable") and b"durable-unsynced".startswith(data)
    if mode == "drop":
        assert data == b"durable" and not (out / "d" / "b").exists()
        assert not (out / "e").exists()


# -- the taildir position file --------------------------------------------------------------------
def test_taildir_position_file_is_old_or_new_after_power_loss(tmp_path):
    """After a power cut at any operation of a sequence of position updates, the position file
    holds a complete version: the last one whose write returned, or the one being written."""
    import json

    from rayflume.sources._files import storage

    rng = random.Random(SEED)
    versions = [{"inode": 7, "pos": i * 1000, "file": "/var/log/app.log" + "x" * i}
                for i in range(6)]
    runs = 0
    for mode in MODES:
        for crash_at in range(1, 5 * (len(versions) - 1) + 2):
            base = tmp_path / f"{mode}-{crash_at}"
            base.mkdir()
            path = str(base / "taildir_position.json")
            storage.write_json_atomic(path, versions[0])        # durable before the test starts
            io = PowerLossIO(str(base), rng.randrange(1 << 30), mode, crash_at)
            done = 0
            try:
                for i in range(1, len(versions)):
                    storage.write_json_atomic(path, versions[i], io=io)
                    done = i
            except OSError:
                assert io.crashed
            io.crash()
            image = Path(io.materialize(str(tmp_path / f"img-{mode}-{crash_at}")))
            raw = (image / "taildir_position.json").read_bytes()
            got = json.loads(raw)      # never torn, never empty
            allowed = versions[done:done + 2]
            assert got in allowed, (mode, crash_at, raw, done)
            runs += 1
    assert runs >= 75
