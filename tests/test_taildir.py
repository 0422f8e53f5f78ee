"""The ``taildir`` source: framing, positions, rotation, truncation, restarts (no Ray), then a
SIGKILL crash test of the source actor on Ray."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time

import numpy as np
import pytest
from pydantic import ValidationError

from rayflume.errors import ConfigError
from rayflume.registry import lookup
from rayflume.sources._files import storage
from rayflume.sources.base import SourceContext
from rayflume.sources.taildir import TaildirSourceConfig, frame_lines
from tests.channel_contract import wait_until


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make(tmp_path, groups=None, name="tail", start=True, **options):
    groups = groups or {"g": str(tmp_path / "logs" / r"app\.log")}
    options.setdefault("position_file", str(tmp_path / "pos.json"))
    # These tests change files between polls and expect each poll to read what is there then;
    # reading ahead (on by default) has tests of its own.
    options.setdefault("read_ahead", False)
    config = lookup("source", "taildir").model_validate(
        {"type": "taildir", "channels": ["c"], "filegroups": groups, **options})
    src = config.build(name)
    src.scan_interval_s = 0.0  # scan on every poll: tests need no waiting
    src.clock = FakeClock()
    if start:
        src.start(SourceContext(name))
    return src


def poll_all(src, ack=True, limit=1000) -> list[bytes]:
    """Poll (and ack) until the source has nothing more; every body, in order."""
    out = []
    for _ in range(limit):
        batch = src.poll()
        if batch is None:
            return out
        out.extend(batch.bodies())
        if not ack:
            return out
        src.ack()
    raise AssertionError("source never ran dry")


def write(path, data: bytes, mode="ab"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as f:
        f.write(data)


def lines(a, b) -> bytes:
    return b"".join(b"line-%d\n" % i for i in range(a, b))


def names(a, b) -> list[bytes]:
    return [b"line-%d" % i for i in range(a, b)]


# -- framing ---------------------------------------------------------------------------------------

def _reference_frames(data: bytes, size: int, at_eof: bool):
    out, pos = [], 0
    while True:
        i = data.find(b"\n", pos)
        if i < 0:
            tail = data[pos:]
            if tail and at_eof:
                content = tail[:-1] if tail.endswith(b"\r") else tail
                end = len(data)
            elif len(tail) > size:
                content = tail[:(len(tail) - 1) // size * size]
                end = pos + len(content)
            else:
                return out
        else:
            content = data[pos:i][:-1] if data[pos:i].endswith(b"\r") else data[pos:i]
            end = i + 1
        pieces = [content[j:j + size] for j in range(0, len(content), size)] or [b""]
        start = pos
        for k, piece in enumerate(pieces):
            out.append((piece, start, end if k == len(pieces) - 1 else start + len(piece)))
            start += len(piece)
        if i < 0:
            return out
        pos = i + 1


def test_frame_lines_matches_a_reference_on_random_input():
    rng = random.Random(7)
    for _ in range(3000):
        data = bytes(rng.choice(b"ab\r\n") for _ in range(rng.randint(0, 40)))
        size = rng.randint(1, 6)
        at_eof = rng.random() < 0.5
        framed = frame_lines(data, size, at_eof)
        got = list(zip(framed.bodies.to_pylist(), framed.starts.tolist(), framed.ends.tolist()))
        assert got == _reference_frames(data, size, at_eof), (data, size, at_eof)


def test_frame_lines_holds_tail_and_cuts_long_lines():
    framed = frame_lines(b"ab\r\ncd\nxyz", 10)
    assert framed.bodies.to_pylist() == [b"ab", b"cd"] and framed.consumed == 7
    framed = frame_lines(b"0123456789ABCDEF\nxy", 5)
    assert framed.bodies.to_pylist() == [b"01234", b"56789", b"ABCDE", b"F"]
    assert framed.ends.tolist() == [5, 10, 15, 17] and framed.split_count == 3
    # an unterminated tail of exactly max bytes waits for its newline; one byte more is cut
    assert len(frame_lines(b"abcde", 5)) == 0
    assert frame_lines(b"abcdef", 5).bodies.to_pylist() == [b"abcde"]
    assert frame_lines(b"tail\r", 5, at_eof=True).bodies.to_pylist() == [b"tail"]


# -- basic tailing ---------------------------------------------------------------------------------

def test_tails_appends_and_holds_partial_lines(tmp_path):
    log = tmp_path / "logs" / "app.log"
    write(log, lines(0, 5) + b"partial")
    src = make(tmp_path)
    assert poll_all(src) == names(0, 5)
    write(log, b"-done\n" + lines(5, 8))
    assert poll_all(src) == [b"partial-done"] + names(5, 8)
    assert poll_all(src) == []
    assert src.positions() == {str(log): os.path.getsize(log)}
    src.stop()


def test_batches_are_at_most_batch_size(tmp_path):
    write(tmp_path / "logs" / "app.log", lines(0, 25))
    src = make(tmp_path, batch_size=10)
    sizes = []
    while (batch := src.poll()) is not None:
        sizes.append(len(batch))
        src.ack()
    assert sizes == [10, 10, 5]


def test_groups_headers_and_file_header(tmp_path):
    write(tmp_path / "a" / "x.log", b"a1\na2\n")
    write(tmp_path / "a" / "skip.txt", b"no\n")
    write(tmp_path / "b" / "y.log", b"b1\n")
    src = make(tmp_path, groups={"ga": str(tmp_path / "a" / r".*\.log"), "gb": str(tmp_path / "b" / ".*")},
               headers={"ga": {"tier": "web", "dc": "east"}, "gb": {"tier": "db"}}, file_header=True,
               file_header_key="path")
    events = []
    while (batch := src.poll()) is not None:
        events.extend(batch.to_events())
        src.ack()
    by_body = {e.body: e.headers for e in events}
    assert set(by_body) == {b"a1", b"a2", b"b1"}
    assert by_body[b"a1"] == {"tier": "web", "dc": "east", "path": str(tmp_path / "a" / "x.log")}
    assert by_body[b"b1"] == {"tier": "db", "path": str(tmp_path / "b" / "y.log")}


def test_byte_offset_header(tmp_path):
    write(tmp_path / "logs" / "app.log", b"ab\r\ncdef\n\nxyz\n")
    src = make(tmp_path, byte_offset_header=True, max_line_length_bytes=2)
    events = [e for e in src.poll().to_events()]
    assert [(e.body, e.headers["byteoffset"]) for e in events] == [
        (b"ab", "0"), (b"cd", "4"), (b"ef", "6"), (b"", "9"), (b"xy", "10"), (b"z", "12")]


def test_skip_to_end_applies_to_files_present_at_start_only(tmp_path):
    write(tmp_path / "logs" / "old.log", lines(0, 3))
    src = make(tmp_path, groups={"g": str(tmp_path / "logs" / r".*\.log")}, skip_to_end=True)
    assert poll_all(src) == []
    write(tmp_path / "logs" / "old.log", lines(3, 5))
    write(tmp_path / "logs" / "new.log", lines(10, 12))
    assert sorted(poll_all(src)) == sorted(names(3, 5) + names(10, 12))
    src.stop()
    # a restart does not skip anything: every file now has a recorded position
    write(tmp_path / "logs" / "new.log", lines(12, 13))
    again = make(tmp_path, groups={"g": str(tmp_path / "logs" / r".*\.log")}, skip_to_end=True)
    assert poll_all(again) == names(12, 13)


def test_files_and_directories_appearing_later(tmp_path):
    src = make(tmp_path, groups={"g": str(tmp_path / "later" / r".*\.log")})
    assert poll_all(src) == []
    write(tmp_path / "later" / "one.log", lines(0, 2))
    assert poll_all(src) == names(0, 2)
    write(tmp_path / "later" / "two.log", lines(2, 4))
    assert poll_all(src) == names(2, 4)


def test_long_lines_are_cut_not_dropped(tmp_path):
    write(tmp_path / "logs" / "app.log", b"x" * 25 + b"\nshort\n" + b"y" * 12)
    src = make(tmp_path, max_line_length_bytes=10)
    got = poll_all(src)
    assert got == [b"x" * 10, b"x" * 10, b"x" * 5, b"short", b"y" * 10]
    assert src.context.counters["LinesSplitCount"] == 3
    write(tmp_path / "logs" / "app.log", b"yy\n")
    assert poll_all(src) == [b"yyyy"]


# -- positions -------------------------------------------------------------------------------------

def test_restart_resumes_exactly_and_never_rereads_acked_lines(tmp_path):
    log = tmp_path / "logs" / "app.log"
    write(log, lines(0, 10))
    src = make(tmp_path, batch_size=4)
    assert poll_all(src) == names(0, 10)
    write(log, lines(10, 12) + b"half")
    assert poll_all(src) == names(10, 12)
    src.stop()
    doc = json.loads((tmp_path / "pos.json").read_text())
    st = os.stat(log)
    [entry] = doc["files"]
    assert (entry["dev"], entry["ino"], entry["pos"], entry["path"]) == (st.st_dev, st.st_ino, st.st_size - 4,
                                                                         str(log))
    write(log, b"-line\n" + lines(12, 14))
    again = make(tmp_path, batch_size=4)
    assert poll_all(again) == [b"half-line"] + names(12, 14)


def test_positions_advance_only_on_ack(tmp_path):
    log = tmp_path / "logs" / "app.log"
    write(log, lines(0, 10))
    src = make(tmp_path, batch_size=4)
    first = src.poll()
    src.ack()
    second = src.poll()
    assert src.poll() is second, "an unacknowledged batch is returned again"
    assert json.loads((tmp_path / "pos.json").read_text())["files"][0]["pos"] == len(lines(0, 4))
    src.abandon()  # crash: the second batch was never acknowledged
    again = make(tmp_path, batch_size=4)
    assert first.bodies() == names(0, 4)
    assert poll_all(again) == second.bodies() + names(8, 10) == names(4, 10)


def test_write_pos_interval_writes_at_most_that_often_but_still_only_acked(tmp_path):
    log = tmp_path / "logs" / "app.log"
    write(log, lines(0, 30))
    src = make(tmp_path, batch_size=10, write_pos_interval_s=5.0)
    src.poll()
    src.ack()
    writes = src.context.counters["PositionWriteCount"]
    src.poll()
    src.ack()
    assert src.context.counters["PositionWriteCount"] == writes  # within the interval: not written
    src.clock.now += 6
    batch = src.poll()
    assert json.loads((tmp_path / "pos.json").read_text())["files"][0]["pos"] == len(lines(0, 20))
    src.abandon()
    assert batch.bodies() == names(20, 30)
    # the crash re-reads the unwritten window and the batch in flight, never less
    assert poll_all(make(tmp_path, batch_size=10)) == names(20, 30)


def test_position_file_is_replaced_atomically(tmp_path, monkeypatch):
    log = tmp_path / "logs" / "app.log"
    write(log, lines(0, 6))
    src = make(tmp_path, batch_size=3)
    src.poll()
    src.ack()
    before = (tmp_path / "pos.json").read_bytes()
    calls = []
    real_fsync = os.fsync

    def failing_fsync(fd):
        calls.append(fd)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", failing_fsync)
    src.poll()
    src.ack()  # the write fails after the temp file was written
    monkeypatch.setattr(storage.os, "fsync", real_fsync)
    assert calls
    assert (tmp_path / "pos.json").read_bytes() == before, "a failed write leaves the old file whole"
    assert src.context.counters["PositionWriteFail"] == 1
    assert "No space left" in src.status_error and "No space left" in src.context.counters["LastError"]
    assert any(p.name.startswith("pos.json.tmp-") for p in tmp_path.iterdir())
    src.abandon()
    again = make(tmp_path, batch_size=3)
    assert not any(p.name.startswith("pos.json.tmp-") for p in tmp_path.iterdir()), "stale temp removed"
    assert poll_all(again) == names(3, 6)


def test_corrupt_position_file_is_moved_aside(tmp_path):
    write(tmp_path / "logs" / "app.log", lines(0, 2))
    (tmp_path / "pos.json").write_text("{not json")
    src = make(tmp_path)
    assert poll_all(src) == names(0, 2)
    assert any(p.name.startswith("pos.json.corrupt-") for p in tmp_path.iterdir())
    assert "unreadable" in src.status_error


def test_one_position_file_cannot_be_shared(tmp_path):
    make(tmp_path)
    other = make(tmp_path, name="other", start=False)
    other.lock_timeout_s = 0.2
    with pytest.raises(ConfigError, match="in use by another running source"):
        other.start(SourceContext("other"))


def test_reused_inode_with_other_content_is_read_from_the_start(tmp_path):
    log = tmp_path / "logs" / "app.log"
    write(log, lines(0, 5))
    src = make(tmp_path)
    poll_all(src)
    src.stop()
    # Same inode, other content and more bytes than the recorded position: only the fingerprint
    # can tell (this is what inode reuse looks like).
    with open(log, "r+b") as f:
        f.write(b"other-0\n" + lines(100, 110))
    again = make(tmp_path)
    assert poll_all(again) == [b"other-0"] + names(100, 110)
    assert again.context.counters["FileReplacedCount"] == 1


# -- rotation, truncation, deletion ----------------------------------------------------------------

def test_rename_rotation_finishes_old_file_then_new_one(tmp_path):
    log = tmp_path / "logs" / "app.log"
    write(log, lines(0, 3))
    src = make(tmp_path, idle_timeout_s=5)
    assert poll_all(src) == names(0, 3)
    os.rename(log, str(log) + ".1")
    write(str(log) + ".1", lines(3, 5) + b"last-of-old")  # the app still writes to its old descriptor
    write(log, lines(5, 7))
    got = poll_all(src)
    assert sorted(got) == sorted(names(3, 7))
    assert got.index(b"line-4") < got.index(b"line-5"), "the rotated file's lines come first"
    assert src.context.counters["FileRotatedCount"] == 1
    assert len(src.files) == 2
    src.clock.now += 6  # idle: the rotated file is finished, its unterminated last line delivered
    assert poll_all(src) == [b"last-of-old"]
    assert len(src.files) == 1
    assert [e["path"] for e in json.loads((tmp_path / "pos.json").read_text())["files"]] == [str(log)]


def test_rename_to_a_matching_name_is_not_reread(tmp_path):
    logs = tmp_path / "logs"
    write(logs / "a.log", lines(0, 3))
    src = make(tmp_path, groups={"g": str(logs / r".*\.log")})
    assert poll_all(src) == names(0, 3)
    os.rename(logs / "a.log", logs / "b.log")
    write(logs / "b.log", lines(3, 4))
    assert poll_all(src) == names(3, 4)
    assert src.context.counters["FileRenamedCount"] == 1


def test_restart_finds_a_file_rotated_while_down(tmp_path):
    log = tmp_path / "logs" / "app.log"
    write(log, lines(0, 10))
    src = make(tmp_path, batch_size=4)
    src.poll()
    src.ack()
    src.poll()  # in flight when the source dies
    src.abandon()
    os.rename(log, str(log) + ".1")
    write(str(log) + ".1", lines(10, 12))
    os.rename(str(log) + ".1", str(log) + ".2")  # rotated twice while the source was down
    write(log, lines(100, 103))
    again = make(tmp_path, batch_size=4)
    got = poll_all(again)
    assert sorted(got) == sorted(names(4, 12) + names(100, 103))
    assert len(got) == len(set(got))


def test_read_ahead_fills_the_next_batch_while_one_is_delivered(tmp_path):
    log = tmp_path / "logs" / "app.log"
    write(log, lines(0, 50))
    src = make(tmp_path, batch_size=10, read_ahead=True)
    try:
        got = []
        while True:
            batch = src.poll()
            if batch is None:
                break
            # while the runner would deliver this batch, the next one is read and framed
            wait_until(lambda: src.buffered_events >= min(10, 50 - len(got) - len(batch)), timeout_s=10,
                       what="the read-ahead to fill the buffer")
            assert src.positions()[str(log)] == len(lines(0, len(got))), "reading ahead moved no position"
            got += batch.bodies()
            src.ack()
        assert got == names(0, 50)
        assert src._reader is not None and src._reader.is_alive()
    finally:
        src.stop()
    assert src._reader is None, "stop() ends the read-ahead thread"


def test_copytruncate_restarts_at_zero(tmp_path):
    log = tmp_path / "logs" / "app.log"
    write(log, lines(0, 5))
    src = make(tmp_path)
    assert poll_all(src) == names(0, 5)
    shutil.copy(log, str(log) + ".1")
    os.truncate(log, 0)
    write(log, lines(5, 7))
    assert poll_all(src) == names(5, 7)
    assert src.context.counters["FileTruncatedCount"] == 1
    # truncated and grown past the old position before the source looked: the fingerprint tells
    os.truncate(log, 0)
    write(log, lines(50, 70))
    assert poll_all(src) == names(50, 70)
    assert src.context.counters["FileReplacedCount"] == 1


def test_copytruncate_while_down(tmp_path):
    log = tmp_path / "logs" / "app.log"
    write(log, lines(0, 20))
    src = make(tmp_path)
    poll_all(src)
    src.stop()
    os.truncate(log, 0)
    write(log, lines(20, 22))
    assert poll_all(make(tmp_path)) == names(20, 22)


def test_deleted_file_is_read_to_its_end_then_dropped(tmp_path):
    logs = tmp_path / "logs"
    write(logs / "a.log", lines(0, 2))
    write(logs / "b.log", lines(2, 4))
    src = make(tmp_path, groups={"g": str(logs / r".*\.log")}, batch_size=1000)
    assert sorted(poll_all(src)) == sorted(names(0, 4))
    write(logs / "a.log", lines(4, 6))
    os.unlink(logs / "a.log")  # deleted with unread lines: the open descriptor still reads them
    assert poll_all(src) == names(4, 6)
    poll_all(src)
    assert [os.path.basename(p) for p in src.positions()] == ["b.log"]
    assert src.context.counters["FileDeletedCount"] == 1
    # a file closed while idle and then deleted is forgotten
    src.clock.now += 1000
    poll_all(src)
    assert all(t.fd is None for t in src.files.values())
    os.unlink(logs / "b.log")
    poll_all(src)
    assert src.positions() == {}
    assert json.loads((tmp_path / "pos.json").read_text())["files"] == []


def test_idle_files_are_closed_and_reopened_on_growth(tmp_path):
    log = tmp_path / "logs" / "app.log"
    write(log, lines(0, 2))
    src = make(tmp_path, idle_timeout_s=10)
    poll_all(src)
    src.clock.now += 11
    poll_all(src)
    [t] = src.files.values()
    assert t.fd is None
    write(log, lines(2, 3))
    assert poll_all(src) == names(2, 3)
    assert t.fd is not None


# -- config ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"filegroups": {"g": "relative/.*"}}, "absolute path"),
    ({"filegroups": {"g": "/var/log/("}}, "not a valid regex"),
    ({"filegroups": {"g": "/var/log/"}}, "add a file name regex"),
    ({"filegroups": {"g": "/var/log/.*"}, "headers": {"h": {"a": "b"}}}, "not in `filegroups`"),
    ({"filegroups": {"g": "/var/log/.*"}, "idle_timeout_s": 0}, "greater than 0"),
    ({"filegroups": {"g": "/var/log/.*"}, "max_batch_count": 3}, "Extra inputs"),
])
def test_config_errors(options, message):
    with pytest.raises(ValidationError, match=message):
        TaildirSourceConfig(type="taildir", channels=["c"], **options)


def test_default_position_file_is_per_topology(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    src = TaildirSourceConfig(type="taildir", channels=["c"], filegroups={"g": str(tmp_path / "x")}).build("s")
    src.start(SourceContext("s", topology="topo"))
    assert src.position_file == str(tmp_path / ".rayflume" / "taildir" / "topo" / "s.json")
    assert os.path.exists(src.position_file)
    src.stop()


# -- Ray: SIGKILL of the source actor while a writer appends, rotates and copytruncates ---------------

LINE_PAYLOAD = b" " + b"x" * 40


class Writer(threading.Thread):
    """Appends numbered lines to app.log; rotates it by rename (app.log.N shift) every
    ``rotate_every`` lines and does one copytruncate, only after the collector has every line
    written so far (lines not yet read at a truncation are lost by the nature of copytruncate)."""

    def __init__(self, log_path, total, rotate_every, copytruncate_at, caught_up, tracked=lambda inode: True):
        super().__init__(daemon=True)
        # Taildir follows only names that match and identities it recorded: a generation created
        # and renamed away while no source runs is never seen, by design. So rotation waits until
        # a source has recorded the current app.log.
        self.tracked = tracked
        self.path = log_path
        self.total = total
        self.rotate_every = rotate_every
        self.copytruncate_at = copytruncate_at
        self.caught_up = caught_up
        self.written = 0
        self.rotations = 0
        self.error = None
        self.generations = []  # (first line, inode, monotonic time it became app.log) for diagnostics

    def rotate(self):
        rotated = sorted((int(p.rsplit(".", 1)[1]) for p in os.listdir(os.path.dirname(self.path))
                          if p.startswith("app.log.")), reverse=True)
        for k in rotated:
            os.rename(f"{self.path}.{k}", f"{self.path}.{k + 1}")
        os.rename(self.path, f"{self.path}.1")
        self.rotations += 1

    def run(self):
        try:
            rng = random.Random(3)
            f = open(self.path, "ab")
            self.generations.append((0, os.fstat(f.fileno()).st_ino, time.monotonic()))
            while self.written < self.total:
                n = min(rng.randint(5, 40), self.total - self.written)
                f.write(b"".join(b"%09d%s\n" % (i, LINE_PAYLOAD) for i in range(self.written, self.written + n)))
                f.flush()
                self.written += n
                if self.written >= self.copytruncate_at > self.written - n:
                    wait_until(lambda: self.caught_up(self.written), timeout_s=120, interval_s=0.2,
                               what="the pipeline to catch up before copytruncate")
                    shutil.copy(self.path, os.path.join(os.path.dirname(self.path), "copytruncated.log"))
                    f.truncate(0)
                    f.seek(0)
                elif self.written // self.rotate_every != (self.written - n) // self.rotate_every:
                    inode = os.fstat(f.fileno()).st_ino
                    wait_until(lambda: self.tracked(inode), timeout_s=120, interval_s=0.05,
                               what="a source to record the current app.log before it rotates")
                    f.close()
                    self.rotate()
                    f = open(self.path, "ab")
                    self.generations.append((self.written, os.fstat(f.fileno()).st_ino, time.monotonic()))
                time.sleep(rng.uniform(0.002, 0.01))
            f.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


def source_pid(topology, name, timeout_s=60):
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            actor = ray.get_actor(f"{topology}/source/{name}", namespace="rayflume")
            return ray.get(actor.pid.remote(), timeout=10)
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.ActorDiedError,
                ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_source_under_rotation_and_copytruncate(deployed, tmp_path):
    from rayflume import testing

    logs = tmp_path / "logs"
    logs.mkdir()
    log = str(logs / "app.log")
    batch_size = 200
    collector = testing.collector("taildir-crash")
    collector.clear()

    def delivered():
        return {int(b[:9]) for b in collector.bodies()}

    def tracked(inode):
        try:
            with open(tmp_path / "pos.json") as f:
                return any(int(e["ino"]) == inode for e in json.load(f)["files"])
        except (OSError, ValueError, KeyError):
            return False

    writer = Writer(log, total=30_000, rotate_every=6_000, copytruncate_at=15_000,
                    caught_up=lambda n: len(delivered()) >= n, tracked=tracked)
    open(log, "wb").close()
    handle = deployed({
        "name": "taildir-crash", "metrics": {"port": None},
        "sources": {"tail": {"type": "taildir", "channels": ["mem"], "batch_size": batch_size,
                             "filegroups": {"app": os.path.join(str(logs), r"app\.log")},
                             "position_file": str(tmp_path / "pos.json"), "idle_timeout_s": 2}},
        "channels": {"mem": {"type": "memory", "capacity": 200_000, "transaction_capacity": 1000}},
        "sinks": {"out": {"type": "testing_sink", "channel": "mem", "collector": "taildir-crash",
                          "batch_size": 1000}},
    })
    source_pid("taildir-crash", "tail")
    writer.start()
    rng = random.Random(11)
    kills = 0
    kill_times = []
    while kills < 10 or writer.is_alive():
        pid = source_pid("taildir-crash", "tail")
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(pid, signal.SIGKILL)
        kills += 1
        if kills > 40:
            break
        kill_times.append(time.monotonic())
    writer.join(timeout=120)

    def diagnostics():
        got = np.zeros(writer.written + 1, dtype=bool)
        got[[n for n in delivered() if n <= writer.written]] = True
        missing = np.flatnonzero(~got[:writer.written])
        runs = np.split(missing, np.flatnonzero(np.diff(missing) != 1) + 1) if missing.size else []
        t0 = writer.generations[0][2] if writer.generations else 0.0
        files = {n: os.stat(os.path.join(str(logs), n)).st_ino for n in sorted(os.listdir(str(logs)))}
        try:
            with open(tmp_path / "pos.json") as f:
                pos = f.read()
        except OSError as exc:
            pos = repr(exc)
        import datetime
        wall0 = datetime.datetime.fromtimestamp(time.time() - (time.monotonic() - t0)).strftime("%H:%M:%S.%f")
        return (f"writer started at {wall0} (t=0, monotonic {t0:.3f}); missing {missing.size} of "
                f"{writer.written} lines, ranges "
                f"{[(int(r[0]), int(r[-1])) for r in runs][:20]}; file generations (first line, inode, "
                f"t): {[(a, b, round(c - t0, 2)) for a, b, c in writer.generations]}; kills at "
                f"{[round(k - t0, 2) for k in kill_times]}; files {files}; pos.json {pos}")

    assert writer.error is None, f"{writer.error}; {diagnostics()}"
    assert not writer.is_alive()
    total = writer.total
    try:
        wait_until(lambda: len(delivered()) >= total, timeout_s=90, interval_s=0.5,
                   what=f"all {total} lines delivered")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {diagnostics()}") from None
    bodies = collector.bodies()
    numbers = np.array([int(b[:9]) for b in bodies])
    assert all(b[9:] == LINE_PAYLOAD for b in bodies)
    assert set(numbers.tolist()) == set(range(total)), "every written line is delivered"
    counts = np.bincount(numbers, minlength=total)
    duplicated = np.flatnonzero(counts > 1)
    extra = int((counts[duplicated] - 1).sum())
    # contiguous runs of duplicated line numbers: one in-flight batch per kill
    runs = int(np.count_nonzero(np.diff(duplicated) != 1)) + 1 if duplicated.size else 0
    print(f"\ntaildir crash test: {kills} kills, {writer.rotations} rotations, 1 copytruncate, "
          f"{total} lines, {extra} duplicates in {runs} runs")
    assert extra <= kills * batch_size, f"{extra} duplicates for {kills} kills of batches of {batch_size}"
    assert runs <= 2 * kills

    # The source's counter went on across its restarts: it accepted every delivered line,
    # re-read ones included (the channel is not killed here, so its per-source total is exact).
    def accepted():  # None while the source restarts and has not reported its counters yet
        value = handle.metrics().get("SOURCE.tail", {}).get("EventAcceptedCount")
        return None if value is None else int(value)
    delivered_count = len(collector.bodies())
    wait_until(lambda: accepted() == delivered_count, timeout_s=30,
               what=f"EventAcceptedCount to equal the {delivered_count} delivered lines")
