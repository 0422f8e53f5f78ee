"""The ``spooldir`` source, driven the way the runner drives it (no Ray)."""
from __future__ import annotations

import json
import os
import random

import pytest
from pydantic import ValidationError

from rayflume.errors import ConfigError
from rayflume.registry import lookup
from rayflume.sources.base import SourceContext
from rayflume.sources.spooldir import POSITIONS_NAME, SpoolDirMissing, SpoolDirSource


def make(spool, start=True, name="spool", **options):
    config = lookup("source", "spooldir").model_validate(
        {"type": "spooldir", "channels": ["c"], "spool_dir": str(spool), "poll_delay_s": 0, **options})
    src = config.build(name)
    if start:
        src.start(SourceContext(name))
    return src


def poll_all(src, limit=10_000) -> list[bytes]:
    out = []
    for _ in range(limit):
        batch = src.poll()
        if batch is None:
            return out
        out.extend(batch.bodies())
        src.ack()
    raise AssertionError("source never ran dry")


def lines(a, b, prefix="l") -> bytes:
    return b"".join(b"%s-%d\n" % (prefix.encode(), i) for i in range(a, b))


def names(a, b, prefix="l") -> list[bytes]:
    return [b"%s-%d" % (prefix.encode(), i) for i in range(a, b)]


def drop(path, data: bytes, mtime: float | None = None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def listing(directory) -> list[str]:
    return sorted(p for p in os.listdir(directory) if not p.startswith("."))


def test_files_are_renamed_only_after_every_line_is_acknowledged(tmp_path):
    drop(tmp_path / "a.log", lines(0, 25) + b"no-newline-at-end")
    src = make(tmp_path, batch_size=10)
    got = []
    for _ in range(2):
        got.extend(src.poll().bodies())
        src.ack()
    last = src.poll()
    assert listing(tmp_path) == ["a.log"], "not renamed while a batch is unacknowledged"
    assert last.bodies() == names(20, 25) + [b"no-newline-at-end"]
    src.ack()
    assert got == names(0, 20)
    assert listing(tmp_path) == ["a.log.COMPLETED"]
    assert src.context.counters["FileCompletedCount"] == 1
    assert src.poll() is None
    assert json.loads((tmp_path / ".flumespool" / POSITIONS_NAME).read_text())["files"] == {}


def test_tracker_dir_policy_leaves_files_and_never_rereads(tmp_path):
    drop(tmp_path / "a.log", lines(0, 3), mtime=1000)
    drop(tmp_path / "b.log", lines(3, 5), mtime=2000)
    src = make(tmp_path, tracking_policy="tracker_dir", tracker_dir=str(tmp_path / "track"), file_suffix=".done")
    assert poll_all(src) == names(0, 5)
    assert listing(tmp_path) == ["a.log", "b.log", "track"]
    assert sorted(os.listdir(tmp_path / "track")) == sorted([POSITIONS_NAME, "a.log.done", "b.log.done",
                                                             "rayflume.lock"])
    assert poll_all(src) == []
    src.stop()
    assert poll_all(make(tmp_path, tracking_policy="tracker_dir", tracker_dir=str(tmp_path / "track"),
                         file_suffix=".done")) == []


def test_delete_immediate(tmp_path):
    drop(tmp_path / "a.log", lines(0, 3))
    src = make(tmp_path, delete_policy="immediate")
    assert poll_all(src) == names(0, 3)
    assert listing(tmp_path) == []


def test_include_and_ignore_patterns_hidden_and_completed_files(tmp_path):
    for name in ["a.log", "b.txt", "skip.log", ".hidden.log", "old.log.COMPLETED"]:
        drop(tmp_path / name, name.encode() + b"\n")
    src = make(tmp_path, include_pattern=r".*\.log", ignore_pattern=r"skip.*")
    assert poll_all(src) == [b"a.log"]
    assert listing(tmp_path) == ["a.log.COMPLETED", "b.txt", "old.log.COMPLETED", "skip.log"]


@pytest.mark.parametrize("order, expected", [("oldest", [b"b", b"c", b"a"]), ("youngest", [b"a", b"c", b"b"])])
def test_consume_order(tmp_path, order, expected):
    drop(tmp_path / "a", b"a\n", mtime=3000)
    drop(tmp_path / "b", b"b\n", mtime=1000)
    drop(tmp_path / "c", b"c\n", mtime=2000)
    assert poll_all(make(tmp_path, consume_order=order)) == expected


def test_consume_order_random_reads_everything(tmp_path):
    for i in range(6):
        drop(tmp_path / f"f{i}", b"%d\n" % i, mtime=1000 + i)
    src = make(tmp_path, consume_order="random", start=False)
    src.rng = random.Random(5)
    src.start(SourceContext("spool"))
    got = poll_all(src)
    assert sorted(got) == [b"%d" % i for i in range(6)]
    assert got != sorted(got), "random order (seeded) differs from the mtime order"


def test_min_file_age_skips_files_still_being_written(tmp_path):
    drop(tmp_path / "fresh.log", b"fresh\n", mtime=10_000)
    drop(tmp_path / "old.log", b"old\n", mtime=9_000)
    src = make(tmp_path, min_file_age_s=60, start=False)
    now = [10_030.0]
    src.wall_clock = lambda: now[0]
    src.start(SourceContext("spool"))
    assert poll_all(src) == [b"old"]
    now[0] = 10_061.0
    assert poll_all(src) == [b"fresh"]


def test_recursive_directory_search(tmp_path):
    drop(tmp_path / "top.log", b"top\n", mtime=1000)
    drop(tmp_path / "sub" / "deep" / "inner.log", b"inner\n", mtime=2000)
    drop(tmp_path / ".hiddendir" / "x.log", b"hidden\n")
    assert poll_all(make(tmp_path)) == [b"top"]
    src = make(tmp_path / "sub", recursive_directory_search=True, file_header=True, basename_header=True,
               basename_header_key="name")
    events = []
    while (batch := src.poll()) is not None:
        events.extend(batch.to_events())
        src.ack()
    assert [(e.body, e.headers) for e in events] == [
        (b"inner", {"file": str(tmp_path / "sub" / "deep" / "inner.log"), "name": "inner.log"})]
    assert os.path.exists(tmp_path / "sub" / "deep" / "inner.log.COMPLETED")


def test_decode_error_fail_delivers_lines_before_and_skips_the_file_only(tmp_path):
    drop(tmp_path / "bad.log", b"good-1\ngood-2\nbad-\xff\xfe\nafter\n", mtime=1000)
    drop(tmp_path / "next.log", b"next\n", mtime=2000)
    src = make(tmp_path)
    assert poll_all(src) == [b"good-1", b"good-2", b"next"]
    assert listing(tmp_path) == ["bad.log", "next.log.COMPLETED"]
    assert src.context.counters["DecodeErrorCount"] == 1
    assert src.context.counters["FileFailedCount"] == 1
    assert "bad.log" in src.status_error and "byte 14" in src.status_error
    assert src.context.counters["LastError"] == src.status_error
    assert list(src.failed_files()) == ["bad.log"]
    src.stop()
    assert poll_all(make(tmp_path)) == [], "a failed file is not read again after a restart"


@pytest.mark.parametrize("policy, body", [("REPLACE", "bad-\ufffd\ufffd".encode()), ("IGNORE", b"bad-")])
def test_decode_error_replace_and_ignore(tmp_path, policy, body):
    drop(tmp_path / "bad.log", b"ok\nbad-\xff\xfe\n")
    src = make(tmp_path, decode_error_policy=policy.lower())
    assert poll_all(src) == [b"ok", body]
    assert src.context.counters["DecodeErrorCount"] == 1
    assert listing(tmp_path) == ["bad.log.COMPLETED"]


def test_other_charsets_become_utf8(tmp_path):
    drop(tmp_path / "latin.log", "café\nnaïve\n".encode("latin-1"))
    assert poll_all(make(tmp_path, input_charset="ISO-8859-1")) == ["café".encode(), "naïve".encode()]


def test_long_lines_are_split_on_character_boundaries(tmp_path):
    drop(tmp_path / "a.log", ("é" * 7 + "\n").encode())
    src = make(tmp_path, max_line_length_bytes=5)
    assert [b.decode() for b in poll_all(src)] == ["éé", "éé", "éé", "é"]
    assert src.context.counters["LinesSplitCount"] == 3
    assert src.context.counters["DecodeErrorCount"] == 0


def test_changed_file_is_reported_and_skipped_while_others_continue(tmp_path):
    drop(tmp_path / "a.log", lines(0, 30), mtime=1000)
    drop(tmp_path / "b.log", lines(0, 3, "b"), mtime=2000)
    src = make(tmp_path, batch_size=10)
    first = src.poll().bodies()
    src.ack()
    with open(tmp_path / "a.log", "ab") as f:  # still being written: it changes after pick-up
        f.write(lines(30, 40))
    rest = poll_all(src)
    assert first == names(0, 10)
    # what was read before the change was seen is delivered; the file is not marked done and the
    # next file is read
    assert rest == names(10, 30) + names(0, 3, "b")
    assert src.context.counters["FileChangedCount"] == 1
    assert "a.log changed after it was picked up" in src.status_error
    assert listing(tmp_path) == ["a.log", "b.log.COMPLETED"]
    assert json.loads((tmp_path / ".flumespool" / POSITIONS_NAME).read_text())["files"]["a.log"]["state"] == "failed"
    src.stop()
    again = make(tmp_path)
    assert poll_all(again) == []
    os.unlink(tmp_path / "a.log")  # the operator removes it: the record goes
    assert poll_all(again) == []
    assert again.failed_files() == {}


def test_change_seen_while_reading_stops_the_file_there(tmp_path):
    drop(tmp_path / "a.log", lines(0, 30), mtime=1000)
    drop(tmp_path / "b.log", b"b\n", mtime=2000)
    src = make(tmp_path, batch_size=10, start=False)
    src.read_chunk_bytes = 40  # a few lines per read: the change is seen before the end
    src.start(SourceContext("spool"))
    first = src.poll().bodies()
    src.ack()
    with open(tmp_path / "a.log", "ab") as f:
        f.write(b"appended\n")
    rest = poll_all(src)
    assert first == names(0, 10)
    assert rest[-1] == b"b" and b"appended" not in rest
    read_of_a = first + rest[:-1]
    assert read_of_a == names(0, len(read_of_a)) and len(read_of_a) < 30
    assert src.context.counters["FileChangedCount"] == 1
    assert listing(tmp_path) == ["a.log", "b.log.COMPLETED"]


def test_reused_name_is_reported_and_skipped(tmp_path):
    drop(tmp_path / "a.log", b"first\n")
    src = make(tmp_path)
    assert poll_all(src) == [b"first"]
    drop(tmp_path / "a.log", b"second\n")
    drop(tmp_path / "c.log", b"other\n")
    assert poll_all(src) == [b"other"]
    assert src.context.counters["FileNameReusedCount"] == 1
    assert "name reused" in src.status_error
    assert poll_all(src) == []
    assert src.context.counters["FileNameReusedCount"] == 1, "reported once"


def test_reused_name_with_tracker_dir(tmp_path):
    drop(tmp_path / "a.log", b"first\n")
    src = make(tmp_path, tracking_policy="tracker_dir")
    assert poll_all(src) == [b"first"]
    os.unlink(tmp_path / "a.log")
    drop(tmp_path / "a.log", b"second, longer\n")
    assert poll_all(src) == []
    assert src.context.counters["FileNameReusedCount"] == 1


def test_resume_after_a_crash_mid_file(tmp_path):
    drop(tmp_path / "a.log", lines(0, 35))
    src = make(tmp_path, batch_size=10)
    src.poll()
    src.ack()
    in_flight = src.poll().bodies()
    src.abandon()  # crash before the ack of the second batch
    again = make(tmp_path, batch_size=10)
    got = poll_all(again)
    assert in_flight == names(10, 20)
    assert got == names(10, 35), "resumes at the acknowledged position, re-reading only the batch in flight"
    assert listing(tmp_path) == ["a.log.COMPLETED"]


def test_crash_after_the_last_ack_before_marking_done(tmp_path, monkeypatch):
    drop(tmp_path / "a.log", lines(0, 5))
    src = make(tmp_path)
    monkeypatch.setattr(SpoolDirSource, "_complete", lambda self, cur: False)
    assert poll_all(src) == names(0, 5)
    src.abandon()
    monkeypatch.undo()
    again = make(tmp_path)
    assert poll_all(again) == [], "everything was acknowledged: nothing is read again"
    assert listing(tmp_path) == ["a.log.COMPLETED"]


def test_file_changed_while_the_source_was_down(tmp_path):
    drop(tmp_path / "a.log", lines(0, 20))
    src = make(tmp_path, batch_size=10)
    src.poll()
    src.ack()
    src.abandon()
    with open(tmp_path / "a.log", "ab") as f:
        f.write(lines(20, 22))
    again = make(tmp_path, batch_size=10)
    assert poll_all(again) == []
    assert again.context.counters["FileChangedCount"] == 1
    assert listing(tmp_path) == ["a.log"]


def test_empty_files_are_completed(tmp_path):
    drop(tmp_path / "empty.log", b"", mtime=1000)
    drop(tmp_path / "x.log", b"x\n", mtime=2000)
    assert poll_all(make(tmp_path)) == [b"x"]
    assert listing(tmp_path) == ["empty.log.COMPLETED", "x.log.COMPLETED"]


def test_one_spool_dir_per_source(tmp_path):
    make(tmp_path)
    other = make(tmp_path, name="other", start=False)
    other.lock_timeout_s = 0.2
    with pytest.raises(ConfigError, match="in use by another running source"):
        other.start(SourceContext("other"))


def test_missing_spool_dir_fails_start_and_check(tmp_path):
    config = lookup("source", "spooldir").model_validate(
        {"type": "spooldir", "channels": ["c"], "spool_dir": str(tmp_path / "nope")})
    assert "is not a directory" in config.check()[0]
    with pytest.raises(SpoolDirMissing, match="spooldir source 's': `spool_dir` .* is not a directory on this node"):
        config.build("s").start(SourceContext("s"))


@pytest.mark.parametrize("options, message", [
    ({"input_charset": "UTF-16"}, "not ASCII-compatible"),
    ({"input_charset": "klingon"}, "not a known charset"),
    ({"include_pattern": "("}, "not a valid regex"),
    ({"consume_order": "newest"}, "oldest"),
    ({"delete_policy": "later"}, "immediate"),
    ({"decode_error_policy": "explode"}, "FAIL"),
    ({"file_suffix": ""}, "must not be empty"),
])
def test_config_errors(tmp_path, options, message):
    with pytest.raises(ValidationError, match=message):
        lookup("source", "spooldir").model_validate(
            {"type": "spooldir", "channels": ["c"], "spool_dir": str(tmp_path), **options})
