"""Recovery of the file channel from damaged files and from a SIGKILLed process."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest

from rayflume.channels.file import FileChannel, FileIO, records
from rayflume.channels.file.checkpoint import CHECKPOINT_FILE, CHECKPOINT_TMP
from rayflume.channels.file.log import list_segments
from tests.channel_contract import drain, numbered, wait_until

ROOT = Path(__file__).resolve().parents[1]


class NoSyncIO(FileIO):
    """No fsyncs: these tests damage files on purpose and do not model power loss."""

    def fsync(self, fd):
        pass

    def fsync_dir(self, path):
        pass


def open_channel(base: Path, **options) -> FileChannel:
    options.setdefault("minimum_required_space_bytes", 0)
    options.setdefault("io", NoSyncIO())
    return FileChannel("rc", str(base / "checkpoint"), [str(base / "data")], **options)


def spans(path) -> list[tuple[int, int]]:
    """(offset, size) of each record of a segment file."""
    data = Path(path).read_bytes()
    return [(r.offset, r.size) for r in records.scan(data, records.SEGMENT_HEADER_SIZE)
            if isinstance(r, records.Record)]


def flip_bit(path, offset: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def fresh_copy(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


# -- torn tails -----------------------------------------------------------------------------------
@pytest.mark.parametrize("with_checkpoint", [True, False])
def test_torn_tail_at_every_offset_of_the_last_record(tmp_path, with_checkpoint):
    src = tmp_path / "src"
    ch = open_channel(src)
    for i in range(3):
        ch.put(numbered(i, 1), f"t{i}")
    segment = ch.segment_paths()[max(ch.segment_paths())]
    ch.close(checkpoint=False)
    if not with_checkpoint:
        os.unlink(src / "checkpoint" / CHECKPOINT_FILE)
    name = os.path.basename(segment)
    last_offset, last_size = spans(segment)[-1]
    assert os.path.getsize(segment) == last_offset + last_size
    run = tmp_path / "run"
    for cut in range(1, last_size):
        fresh_copy(src, run)
        target = run / "data" / name
        os.truncate(target, last_offset + cut)
        ch = open_channel(run)
        try:
            assert os.path.getsize(target) == last_offset, f"cut at {cut}: tail not truncated"
            m = ch.metrics()
            assert (m["TornTailCount"], m["CorruptRecordCount"]) == (1, 0), f"cut at {cut}"
            assert drain(ch) == [0, 1], f"cut at {cut}"
        finally:
            ch.close()
    # after a repair the channel takes new puts and reopens cleanly
    ch = open_channel(run)
    ch.put(numbered(7, 1), "new")
    ch.close(checkpoint=False)
    ch = open_channel(run)
    try:
        assert ch.metrics()["TornTailCount"] == 0
        assert drain(ch) == [7]
    finally:
        ch.close()


@pytest.mark.parametrize("garbage", [b"\x00" * 4096, random.Random(1).randbytes(300),
                                     records.RECORD_MAGIC + b"\xff" * 40])
def test_garbage_after_the_last_record_is_truncated(tmp_path, garbage):
    ch = open_channel(tmp_path)
    ch.put(numbered(0, 3), "a")
    segment = ch.segment_paths()[max(ch.segment_paths())]
    ch.close(checkpoint=False)
    good = os.path.getsize(segment)
    with open(segment, "ab") as f:
        f.write(garbage)
    ch = open_channel(tmp_path)
    try:
        assert os.path.getsize(segment) == good
        assert drain(ch) == [0, 1, 2]
        assert ch.metrics()["CorruptRecordCount"] == 0
    finally:
        ch.close()


# -- corruption in the middle ---------------------------------------------------------------------
HEADER_FIELDS = {"magic": (0, 4), "checksum": (4, 8), "length": (8, 12), "type": (12, 13),
                 "lsn": (13, 21)}


def _flip_cases():
    cases = [("length", byte, bit) for byte in range(4) for bit in (0, 3, 7)]
    cases += [("checksum", byte, 5) for byte in range(4)]
    cases += [("payload", pos, bit) for pos, bit in ((0, 0), (50, 2), (200, 7), (-1, 4))]
    cases += [("magic", 1, 1), ("type", 0, 1), ("lsn", 7, 6)]
    return cases


def test_a_flipped_bit_in_a_middle_record_loses_exactly_that_record(tmp_path):
    src = tmp_path / "src"
    ch = open_channel(src)
    for i in range(5):
        ch.put(numbered(i * 2, 2), f"t{i}")
    segment = ch.segment_paths()[max(ch.segment_paths())]
    ch.close(checkpoint=False)
    victim_offset, victim_size = spans(segment)[2]
    name = os.path.basename(segment)
    run = tmp_path / "run"
    for field, pos, bit in _flip_cases():
        fresh_copy(src, run)
        if field == "payload":
            payload_len = victim_size - records.RECORD_HEADER_SIZE
            offset = victim_offset + records.RECORD_HEADER_SIZE + (pos % payload_len)
        else:
            start, _ = HEADER_FIELDS[field]
            offset = victim_offset + start + pos
        flip_bit(run / "data" / name, offset, bit)
        ch = open_channel(run)
        try:
            m = ch.metrics()
            case = f"{field} byte {pos} bit {bit}"
            assert m["CorruptRecordCount"] == 1, case
            assert m["TornTailCount"] == 0, case
            assert drain(ch) == [0, 1, 2, 3, 6, 7, 8, 9], case
        finally:
            ch.close()


def test_corruption_in_an_older_segment_spares_the_others(tmp_path):
    ch = open_channel(tmp_path, max_file_size_bytes=3000)
    for i in range(12):
        ch.put(numbered(i * 2, 2, size=30), f"t{i}")
    segments = ch.segment_paths()
    assert len(segments) >= 3
    ch.close(checkpoint=False)
    first = segments[min(segments)]
    victims = spans(first)
    assert len(victims) >= 3
    offset, size = victims[1]
    flip_bit(first, offset + size - 10, 3)
    ch = open_channel(tmp_path, max_file_size_bytes=3000)
    try:
        assert ch.metrics()["CorruptRecordCount"] == 1
        assert drain(ch) == [x for x in range(24) if x not in (2, 3)]
    finally:
        ch.close()


def test_a_record_damaged_after_replay_is_dropped_at_take(tmp_path):
    ch = open_channel(tmp_path, cache_bytes=0)
    for i in range(3):
        ch.put(numbered(i * 2, 2), f"t{i}")
    segment = ch.segment_paths()[max(ch.segment_paths())]
    offset, size = spans(segment)[1]
    flip_bit(segment, offset + size - 5, 0)  # bit rot under a running channel
    try:
        assert drain(ch) == [0, 1, 4, 5]
        m = ch.metrics()
        assert (m["CorruptRecordCount"], m["CorruptEventCount"]) == (1, 2)
        assert ch.size() == 0
    finally:
        ch.close()


# -- checkpoint damage ----------------------------------------------------------------------------
def _rewrite_with_version(path: Path, version: int) -> None:
    data = path.read_bytes()
    magic, _crc, meta_len, refs_len = struct.unpack_from("<8sIQQ", data, 0)
    head = struct.calcsize("<8sIQQ")
    meta = json.loads(data[head:head + meta_len])
    meta["version"] = version
    meta_b = json.dumps(meta).encode()
    refs = data[head + meta_len:]
    crc = zlib.crc32(refs, zlib.crc32(meta_b))
    path.write_bytes(struct.pack("<8sIQQ", magic, crc, len(meta_b), refs_len) + meta_b + refs)


def _damage(path: Path, how: str) -> None:
    size = path.stat().st_size
    if how == "missing":
        path.unlink()
    elif how == "empty":
        os.truncate(path, 0)
    elif how == "truncated_header":
        os.truncate(path, 10)
    elif how == "truncated_body":
        os.truncate(path, size - 7)
    elif how == "flipped_meta_bit":
        flip_bit(path, 40, 2)
    elif how == "flipped_refs_bit":
        flip_bit(path, size - 3, 6)
    elif how == "flipped_length_bit":
        flip_bit(path, 13, 0)
    elif how == "garbage":
        path.write_bytes(os.urandom(size))
    elif how == "bad_version":
        _rewrite_with_version(path, 99)
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing", "empty", "truncated_header", "truncated_body",
                                 "flipped_meta_bit", "flipped_refs_bit", "flipped_length_bit",
                                 "garbage", "bad_version"])
def test_damaged_checkpoint_falls_back_to_full_replay(tmp_path, how):
    ch = open_channel(tmp_path, max_file_size_bytes=2500)
    for i in range(10):
        ch.put(numbered(i * 3, 3, size=30), f"t{i}")
    lease, _ = ch.take(7)
    ch.commit(lease)
    ch.take(2)  # leased, never committed: must come back
    assert ch.checkpoint()
    deleted_before = ch.metrics()["SegmentsDeletedCount"]
    ch.put(numbered(30, 3, size=30), "t10")
    lease, _ = ch.take(1)
    ch.commit(lease)
    ch.close(checkpoint=True)
    _damage(tmp_path / "checkpoint" / CHECKPOINT_FILE, how)
    ch = open_channel(tmp_path, max_file_size_bytes=2500)
    try:
        m = ch.metrics()
        assert m["ReplayFull"] == 1
        assert drain(ch) == [7, 8] + list(range(10, 33))
        assert m["CorruptRecordCount"] == 0 and m["MissingEventCount"] == 0
    finally:
        ch.close()
    assert deleted_before >= 0


def test_intact_checkpoint_is_used_and_stale_tmp_ignored(tmp_path):
    ch = open_channel(tmp_path)
    for i in range(5):
        ch.put(numbered(i * 3, 3), f"t{i}")
    ch.close(checkpoint=True)
    (tmp_path / "checkpoint" / CHECKPOINT_TMP).write_bytes(b"half a checkpoint")
    ch = open_channel(tmp_path)
    try:
        m = ch.metrics()
        assert (m["ReplayFull"], m["ReplayRecordCount"]) == (0, 0)
        assert not (tmp_path / "checkpoint" / CHECKPOINT_TMP).exists()
        assert drain(ch) == list(range(15))
    finally:
        ch.close()


def test_crash_during_segment_creation_leaves_no_trace(tmp_path):
    ch = open_channel(tmp_path)
    ch.put(numbered(0, 2), "a")
    ch.close(checkpoint=False)
    segments = list_segments([str(tmp_path / "data")])
    half = tmp_path / "data" / f"log-{max(segments) + 1:012d}.seg"
    half.write_bytes(records.segment_header(max(segments) + 1)[:7])
    ch = open_channel(tmp_path)
    try:
        assert not half.exists()
        assert drain(ch) == [0, 1]
    finally:
        ch.close()


# -- process crash ----------------------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import random, sys, threading
    sys.path.insert(0, {root!r})
    from rayflume.channels.file import FileChannel
    from rayflume.event import EventBatch

    checkpoint_dir, data_dir, run = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ch = FileChannel("crash", checkpoint_dir, [data_dir], capacity=10**7,
                     minimum_required_space_bytes=0, max_file_size_bytes=32 * 1024,
                     checkpoint_interval_s=0.02)
    lock = threading.Lock()

    def emit(line):
        with lock:
            sys.stdout.write(line + "\\n")
            sys.stdout.flush()

    def consume():
        rng = random.Random(run)
        while True:
            got = ch.take(rng.randint(1, 8), holder="c", timeout_s=0.05)
            if got is None:
                continue
            lease, batch = got
            ids = ",".join(b.decode() for b in batch.bodies())
            if rng.random() < 0.2:
                ch.rollback(lease)
            else:
                emit("CMT " + ids)   # commit called: the sink has delivered them downstream
                ch.commit(lease)
                emit("DLV " + ids)   # delivered: the take's commit returned

    emit("READY")
    threading.Thread(target=consume, daemon=True).start()
    i = 0
    while True:
        base = run * 1_000_000 + i * 10
        emit(f"TRY {{base}}")
        ch.put(EventBatch.from_bodies([str(base + j).encode() for j in range(10)]), f"r{{run}}-{{i}}")
        emit(f"ACK {{base}}")
        i += 1
""")


class _Child:
    def __init__(self, script: Path, base: Path, run: int):
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(base / "checkpoint"), str(base / "data"), str(run)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.acks = 0
        self.ready = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            if not line.endswith("\n"):
                continue  # cut by the kill
            line = line.rstrip("\n")
            self.lines.append(line)
            if line == "READY":
                self.ready = True
            elif line.startswith("ACK "):
                self.acks += 1

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(30)
        self.proc.stderr.close()


def _crash_run(tmp_path: Path, kills: int, seed: int) -> dict:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT)))
    base = tmp_path / "chan"
    rng = random.Random(seed)
    # Oracle (Jepsen total-queue): an event is delivered only once its take's commit returned
    # (DLV). A commit cut by the kill (CMT without DLV) may or may not have removed its events:
    # those are "maybe delivered". Rolled-back takes deliver nothing, so an event dropped on the
    # rollback path shows up as lost.
    attempted, acked, delivered, committing = Counter(), Counter(), Counter(), set()
    for run in range(1, kills + 1):
        child = _Child(script, base, run)
        try:
            target = rng.randint(1, 25)
            wait_until(lambda: child.acks >= target or child.proc.poll() is not None, timeout_s=60,
                       interval_s=0.001, what=f"{target} acknowledged puts in run {run}")
            assert child.proc.poll() is None, child.proc.stderr.read()
        finally:
            child.kill()
        for line in child.lines:
            kind, _, rest = line.partition(" ")
            if kind == "TRY":
                attempted.update(range(int(rest), int(rest) + 10))
            elif kind == "ACK":
                acked.update(range(int(rest), int(rest) + 10))
            elif kind == "DLV" and rest:
                delivered.update(int(x) for x in rest.split(","))
            elif kind == "CMT" and rest:
                committing.update(int(x) for x in rest.split(","))
    ch = FileChannel("crash", str(base / "checkpoint"), [str(base / "data")],
                     capacity=10**7, minimum_required_space_bytes=0)
    try:
        final = drain(ch)
        metrics = ch.metrics()
    finally:
        ch.close()
    delivered.update(final)
    maybe = committing - set(delivered)
    lost = sorted(set(acked) - set(delivered) - maybe)
    unexpected = sorted(set(delivered) - set(attempted))
    return {"acked": sum(acked.values()), "delivered": sum(delivered.values()), "lost": lost,
            "unexpected": unexpected, "duplicated": sum((delivered - Counter(set(delivered))).values()),
            "corrupt": metrics["CorruptRecordCount"], "final": len(final),
            "maybe_delivered": len(maybe)}


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_acknowledged_event(tmp_path):
    t0 = time.monotonic()
    result = _crash_run(tmp_path, kills=20, seed=7)
    assert result["acked"] > 0
    assert result["lost"] == [], result
    assert result["unexpected"] == [], result
    assert result["corrupt"] == 0, result
    assert time.monotonic() - t0 < 120


@pytest.mark.chaos
def test_sigkill_chaos_long(tmp_path):
    result = _crash_run(tmp_path, kills=150, seed=11)
    assert result["lost"] == [] and result["unexpected"] == [], result


# -- events that carry records ------------------------------------------------------------------
def _events_carrying_a_record(tmp_path, alien_lsn=1, last=False):
    """A channel whose third put holds, as an event body, a valid record (of lsn ``alien_lsn``)."""
    from rayflume.event import EventBatch

    ch = open_channel(tmp_path)
    ch.put(numbered(0, 2), "t0")
    ch.put(numbered(2, 2), "t1")
    segment = ch.segment_paths()[max(ch.segment_paths())]
    alien = numbered(500, 1)
    parts = records.put_payload("alien", 1, alien.nbytes, alien.to_ipc())
    copy = b"".join([records.record_header(records.PUT, alien_lsn, sum(map(len, parts)),
                                           records.payload_crc(parts)), *parts])

    ch.put(EventBatch.from_bodies([b"99", copy + copy]), "t2")
    if not last:
        ch.put(numbered(4, 2), "t3")
    ch.close(checkpoint=False)
    return segment, spans(segment)


def test_a_damaged_record_whose_payload_holds_a_record_is_skipped_whole(tmp_path):
    segment, rec_spans = _events_carrying_a_record(tmp_path)
    offset, size = rec_spans[2]
    flip_bit(segment, offset + size - 3, 1)
    ch = open_channel(tmp_path)
    try:
        assert ch.metrics()["CorruptRecordCount"] == 1
        assert drain(ch) == [0, 1, 2, 3, 4, 5]
    finally:
        ch.close()


def test_a_torn_record_whose_payload_holds_a_record_is_cut_whole(tmp_path):
    segment, rec_spans = _events_carrying_a_record(tmp_path)
    offset, size = rec_spans[2]
    os.truncate(segment, offset + size - 3)  # the torn write keeps both embedded copies
    ch = open_channel(tmp_path)
    try:
        assert (ch.metrics()["CorruptRecordCount"], ch.metrics()["TornTailCount"]) == (0, 1)
        assert drain(ch) == [0, 1, 2, 3]
        assert os.path.getsize(segment) == offset
    finally:
        ch.close()


def test_a_damaged_last_record_is_not_searched_for_records(tmp_path):
    segment, rec_spans = _events_carrying_a_record(tmp_path, alien_lsn=10**9, last=True)
    offset, size = rec_spans[2]
    flip_bit(segment, offset + 30, 1)
    ch = open_channel(tmp_path)
    try:
        assert drain(ch) == [0, 1, 2, 3]
        assert os.path.getsize(segment) == offset
    finally:
        ch.close()
