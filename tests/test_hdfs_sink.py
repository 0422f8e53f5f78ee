"""The ``hdfs`` sink on the local file system: formats, rolls, in-use names, recovery, failures,
validation, and one end-to-end pipeline on Ray."""
from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayflume.errors import DeliveryError
from rayflume.event import Event, EventBatch
from rayflume.sinks.base import SinkContext
from rayflume.sinks.hdfs.config import HdfsSinkConfig
from rayflume.sinks.hdfs.sink import HdfsSink
from rayflume.sinks.hdfs.storage import LocalStorage
from rayflume.sinks.hdfs.writers import encode_frame
from tests.channel_contract import wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_ROLL = {"roll_interval_s": 0, "roll_size_bytes": 0, "roll_count": 0}


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(path, **kw) -> HdfsSinkConfig:
    return HdfsSinkConfig(type="hdfs", channel="c", path=str(path), **{**NO_ROLL, **kw})


def started(path, clock=None, storage=None, **kw) -> HdfsSink:
    sink = HdfsSink("t", config(path, **kw), clock=clock or FakeClock(), storage=storage)
    sink.start(SinkContext("t"))
    return sink


def numbered(first: int, n: int, headers: dict | None = None) -> EventBatch:
    return EventBatch.from_events([Event(f"e{i:06d}".encode(), dict(headers or {})) for i in range(first, first + n)])


def local_files(root) -> list[str]:
    out = []
    for d, _dirs, names in os.walk(root):
        out.extend(os.path.relpath(os.path.join(d, n), root) for n in names)
    return sorted(out)


def decode(data: bytes, serializer: str = "text", compression: str = "none") -> list[bytes]:
    """The bodies in one finished file's bytes."""
    if serializer == "parquet":
        return pq.read_table(pa.BufferReader(data)).column("body").to_pylist()
    if compression == "gzip":
        data = gzip.decompress(data)
    elif compression == "zstd":
        data = pa.CompressedInputStream(pa.BufferReader(data), "zstd").read()
    lines = data.split(b"\n")
    assert lines[-1] == b"", "a file must end with a whole line"
    lines = lines[:-1]
    if serializer == "json":
        out = []
        for line in lines:
            obj = json.loads(line)
            out.append(obj["body"].encode() if "body" in obj else base64.b64decode(obj["body_base64"]))
        return out
    if serializer == "header_and_text":
        return [line.split(b"} ", 1)[1] for line in lines]
    return lines


def local_bodies(root, **fmt) -> list[bytes]:
    out = []
    for rel in local_files(root):
        with open(os.path.join(root, rel), "rb") as fh:
            out.extend(decode(fh.read(), **fmt))
    return out


def expected(first: int, n: int) -> list[bytes]:
    return [f"e{i:06d}".encode() for i in range(first, first + n)]


# -- names, in-use files, formats ---------------------------------------------------------------------
def test_written_under_in_use_name_then_renamed(tmp_path):
    sink = started(tmp_path / "out")
    sink.write(numbered(0, 5))
    names = local_files(tmp_path / "out")
    assert len(names) == 1 and names[0].startswith("FlumeData.") and names[0].endswith(".tmp")
    with open(tmp_path / "out" / names[0], "rb") as fh:
        assert fh.read() == b"".join(b + b"\n" for b in expected(0, 5))  # durable before write returned
    sink.write(numbered(5, 5))
    sink.stop()
    names = local_files(tmp_path / "out")
    assert len(names) == 1 and names[0] == names[0].removesuffix(".tmp") and not names[0].endswith(".tmp")
    assert local_bodies(tmp_path / "out") == expected(0, 10)
    assert sink.context.counters["ConnectionCreatedCount"] == 1
    assert sink.context.counters["ConnectionClosedCount"] == 1


def test_prefixes_and_suffixes(tmp_path):
    sink = started(tmp_path / "out", file_prefix="app-%{h}", file_suffix=".log", in_use_prefix="_",
                   in_use_suffix=".open")
    sink.write(numbered(0, 3, {"h": "x"}))
    (name,) = local_files(tmp_path / "out")
    assert name.startswith("_app-x.") and name.endswith(".log.open")
    sink.stop()
    (name,) = local_files(tmp_path / "out")
    assert name.startswith("app-x.") and name.endswith(".log")


@pytest.mark.parametrize("serializer,compression", [("text", "none"), ("text", "gzip"), ("text", "zstd"),
                                                    ("json", "none"), ("json", "gzip"),
                                                    ("header_and_text", "none"), ("parquet", "none"),
                                                    ("parquet", "zstd"), ("parquet", "snappy")])
def test_formats_are_readable(tmp_path, serializer, compression):
    sink = started(tmp_path / "out", serializer=serializer, compression=compression)
    for k in range(3):
        sink.write(numbered(k * 4, 4, {"k": str(k)}))
    sink.stop()
    (name,) = local_files(tmp_path / "out")
    ext = {"gzip": ".gz", "zstd": ".zst"}.get(compression, "") if serializer != "parquet" else ".parquet"
    assert name.endswith(ext)
    assert local_bodies(tmp_path / "out", serializer=serializer, compression=compression) == expected(0, 12)


def test_parquet_has_a_row_group_per_batch_and_the_event_columns(tmp_path):
    sink = started(tmp_path / "out", serializer="parquet")
    sink.write(numbered(0, 100, {"host": "a", "timestamp": "1"}))
    sink.write(numbered(100, 50))
    sink.write(EventBatch.from_events([Event(b"\xff\x00", {"k": "v"})]))
    sink.stop()
    (name,) = local_files(tmp_path / "out")
    f = pq.ParquetFile(tmp_path / "out" / name)
    assert f.metadata.num_rows == 151 and f.metadata.num_row_groups == 3
    table = f.read()
    assert table.schema.names == ["headers", "body"]
    assert table.schema.field("headers").type == pa.map_(pa.string(), pa.string())
    assert table.column("headers")[0].as_py() == [("host", "a"), ("timestamp", "1")]
    assert table.column("body")[150].as_py() == b"\xff\x00"


def test_json_lines_carry_headers_and_encode_non_utf8_bodies(tmp_path):
    sink = started(tmp_path / "out", serializer="json")
    sink.write(EventBatch.from_events([Event('a "q"\n\t\\ é'.encode(), {"host": "h\"1", "n": "\x01"}),
                                       Event(b"\xff\xfe", {}), Event(b"", {"x": ""})]))
    sink.stop()
    (name,) = local_files(tmp_path / "out")
    lines = (tmp_path / "out" / name).read_bytes().splitlines()
    objs = [json.loads(line) for line in lines]
    assert objs[0] == {"headers": {"host": 'h"1', "n": "\x01"}, "body": 'a "q"\n\t\\ é'}
    assert objs[1] == {"headers": {}, "body_base64": base64.b64encode(b"\xff\xfe").decode()}
    assert objs[2] == {"headers": {"x": ""}, "body": ""}


def test_header_and_text(tmp_path):
    sink = started(tmp_path / "out", serializer="header_and_text")
    sink.write(EventBatch.from_events([Event(b"body", {"a": "1", "b": "2"})]))
    sink.stop()
    (name,) = local_files(tmp_path / "out")
    assert (tmp_path / "out" / name).read_bytes() == b"{a=1, b=2} body\n"


def test_compressed_files_are_one_member_per_batch(tmp_path):
    sink = started(tmp_path / "out", compression="gzip", file_type="compressed_stream")
    sink.write(numbered(0, 3))
    sink.write(numbered(3, 3))
    sink.stop()
    (name,) = local_files(tmp_path / "out")
    data = (tmp_path / "out" / name).read_bytes()
    assert data.count(b"\x1f\x8b\x08") == 2
    assert gzip.decompress(data) == b"".join(b + b"\n" for b in expected(0, 6))


# -- buckets and roll triggers ---------------------------------------------------------------------
def test_flume_rounding_example_on_disk(tmp_path):
    sink = started(tmp_path / "flume" / "events" / "%Y-%m-%d" / "%H%M" / "%S", round=True, round_value=10,
                   round_unit="minute", time_zone="UTC")
    stamp = int(datetime(2012, 6, 12, 11, 54, 34, tzinfo=timezone.utc).timestamp() * 1000)
    sink.write(numbered(0, 2, {"timestamp": str(stamp)}))
    sink.stop()
    (name,) = local_files(tmp_path / "flume")
    assert os.path.dirname(name) == "events/2012-06-12/1150/00"


def test_hostile_host_header_stays_under_the_root(tmp_path):
    root = tmp_path / "root"
    sink = started(root / "%{host}", file_prefix="%{host}")
    sink.write(EventBatch.from_events([Event(b"x", {"host": h}) for h in
                                       ["../../etc", "..", "/etc/passwd", "a/../../../b", "ok"]]))
    sink.stop()
    for d, _dirs, names in os.walk(tmp_path):
        for n in names:
            path = os.path.realpath(os.path.join(d, n))
            assert path.startswith(str(root.resolve()) + os.sep), path
    assert len(local_files(root)) == 5
    assert os.listdir(tmp_path) == ["root"]


def test_roll_count_splits_a_batch(tmp_path):
    sink = started(tmp_path / "out", roll_count=10)
    sink.write(numbered(0, 25))
    assert sink.wait_closed(10) is True  # full files are closed at once, finished in the background
    names = local_files(tmp_path / "out")
    assert [n.endswith(".tmp") for n in names] == [False, False, True]
    sink.stop()
    names = local_files(tmp_path / "out")
    sizes = [len(decode((tmp_path / "out" / n).read_bytes())) for n in names]
    assert sizes == [10, 10, 5]  # names sort by counter: the order the files were opened
    assert local_bodies(tmp_path / "out") == expected(0, 25)


def test_roll_size_counts_body_bytes_like_flume(tmp_path):
    # Flume appends while the file holds fewer than rollSize body bytes: 7-byte bodies, 20 bytes ->
    # 3 events (0, 7, 14 < 20) make 21 bytes, then the file rolls.
    sink = started(tmp_path / "out", roll_size_bytes=20)
    sink.write(numbered(0, 4))
    sink.write(numbered(4, 4))
    sink.stop()
    counts = [len(decode((tmp_path / "out" / n).read_bytes())) for n in local_files(tmp_path / "out")]
    assert counts == [3, 3, 2]
    assert local_bodies(tmp_path / "out") == expected(0, 8)


def test_roll_interval_closes_on_maintain_and_on_write(tmp_path):
    clock = FakeClock()
    sink = started(tmp_path / "out", clock=clock, roll_interval_s=30)
    sink.write(numbered(0, 2))
    clock.now += 29
    sink.maintain()
    assert local_files(tmp_path / "out")[0].endswith(".tmp")
    clock.now += 1
    sink.maintain()
    sink.wait_closed(10)
    assert not any(n.endswith(".tmp") for n in local_files(tmp_path / "out"))
    sink.write(numbered(2, 2))
    clock.now += 30
    sink.write(numbered(4, 2))  # the due file is closed before this batch is appended
    sink.wait_closed(10)
    names = local_files(tmp_path / "out")
    assert len(names) == 3 and [n.endswith(".tmp") for n in names] == [False, False, True]
    sink.stop()
    assert local_bodies(tmp_path / "out") == expected(0, 6)


def test_idle_timeout_closes_quiet_buckets_only(tmp_path):
    clock = FakeClock()
    sink = started(tmp_path / "out" / "%{b}", clock=clock, idle_timeout_s=10)
    sink.write(numbered(0, 1, {"b": "busy"}))
    sink.write(numbered(1, 1, {"b": "quiet"}))
    clock.now += 6
    sink.write(numbered(2, 1, {"b": "busy"}))
    clock.now += 5
    sink.maintain()
    sink.wait_closed(10)
    names = local_files(tmp_path / "out")
    assert [n for n in names if n.endswith(".tmp")] == [n for n in names if n.startswith("busy/")]
    assert any(n.startswith("quiet/") and not n.endswith(".tmp") for n in names)
    assert len(sink.open_files) == 1


def test_max_open_files_closes_the_least_recently_used(tmp_path):
    sink = started(tmp_path / "out" / "%{b}", max_open_files=2)
    sink.write(numbered(0, 1, {"b": "a"}))
    sink.write(numbered(1, 1, {"b": "b"}))
    sink.write(numbered(2, 1, {"b": "a"}))   # a is now the most recently used
    sink.write(numbered(3, 1, {"b": "c"}))
    sink.wait_closed(10)
    open_dirs = sorted(os.path.basename(f.directory) for f in sink.open_files)
    assert open_dirs == ["a", "c"]
    assert [n for n in local_files(tmp_path / "out") if not n.endswith(".tmp")][0].startswith("b/")
    sink.stop()
    assert sorted(local_bodies(tmp_path / "out")) == expected(0, 4)


def test_missing_timestamp_rolls_the_batch_back(tmp_path):
    sink = started(tmp_path / "out" / "%Y")
    with pytest.raises(DeliveryError, match="timestamp interceptor.*use_local_timestamp"):
        sink.write(numbered(0, 3))
    assert local_files(tmp_path) == []


def test_use_local_timestamp(tmp_path):
    sink = HdfsSink("t", config(tmp_path / "out" / "%Y", use_local_timestamp=True, time_zone="UTC"),
                    wall_clock=lambda: datetime(2030, 1, 1, tzinfo=timezone.utc).timestamp())
    sink.start(SinkContext("t"))
    sink.write(numbered(0, 3))
    sink.stop()
    (name,) = local_files(tmp_path / "out")
    assert name.startswith("2030/FlumeData.")


# -- failures ------------------------------------------------------------------------------------
class _Faulty(LocalStorage):
    """Local storage whose appends can block or fail half-way, on demand."""

    def __init__(self):
        super().__init__()
        self.block = threading.Event()
        self.blocking = False
        self.fail_next = False

    def open_append(self, path):
        handle = super().open_append(path)
        storage = self
        write, sync = handle.write, handle.sync

        def faulty_write(data):
            if storage.fail_next:
                storage.fail_next = False
                write(memoryview(data)[: len(memoryview(data)) // 2])
                raise OSError(28, "No space left on device")
            write(data)

        def slow_sync():
            if storage.blocking:
                storage.block.wait(30)
            sync()

        handle.write, handle.sync = faulty_write, slow_sync
        return handle


def test_a_failed_write_is_cut_back_and_the_file_finished(tmp_path):
    storage = _Faulty()
    sink = started(tmp_path / "out", storage=storage)
    sink.write(numbered(0, 3))
    storage.fail_next = True
    with pytest.raises(DeliveryError, match="No space left"):
        sink.write(numbered(3, 3))
    assert sink.context.counters["ConnectionFailedCount"] == 1
    sink.maintain()  # finishes the failed file: cut back to its committed batch
    assert sink.wait_closed(10) is True
    assert not any(n.endswith(".tmp") for n in local_files(tmp_path / "out"))
    sink.write(numbered(3, 3))  # the retried batch goes to a new file
    sink.stop()
    assert local_bodies(tmp_path / "out") == expected(0, 6)
    assert len(local_files(tmp_path / "out")) == 2


def test_call_timeout_rolls_back_and_the_file_is_finished_once_the_call_returns(tmp_path):
    storage = _Faulty()
    sink = started(tmp_path / "out", storage=storage, call_timeout_s=0.3)
    sink.write(numbered(0, 2))
    storage.blocking = True
    t0 = time.monotonic()
    with pytest.raises(DeliveryError, match="no answer within 0.3"):
        sink.write(numbered(2, 2))
    assert time.monotonic() - t0 < 5
    assert sink.context.counters["CallTimeoutCount"] == 1
    sink.maintain()
    assert len(sink.pending_files) == 1  # its call is still running: not touched yet
    assert any(n.endswith(".tmp") for n in local_files(tmp_path / "out"))
    storage.blocking = False
    storage.block.set()
    wait_until(lambda: (sink.maintain(), not sink.pending_files)[1], timeout_s=10, what="finished file")
    sink.write(numbered(2, 2))
    sink.stop()
    bodies = local_bodies(tmp_path / "out")
    assert set(bodies) == set(expected(0, 4))  # the timed-out batch may be there twice: at-least-once
    assert not any(n.endswith(".tmp") for n in local_files(tmp_path / "out"))


# -- recovery --------------------------------------------------------------------------------------
_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from rayflume.event import Event, EventBatch
from rayflume.sinks.base import SinkContext
from rayflume.sinks.hdfs.config import HdfsSinkConfig
cfg = HdfsSinkConfig(**json.loads(sys.argv[2]))
sink = cfg.build("crash")
sink.start(SinkContext("crash"))
i = 0
while True:
    sink.write(EventBatch.from_events([Event(f"e{j:06d}".encode(), {"b": str(j % 3)}) for j in range(i, i + 50)]))
    i += 50
    print(i, flush=True)
"""


@pytest.mark.parametrize("serializer,compression", [("text", "none"), ("text", "gzip"), ("json", "zstd"),
                                                    ("parquet", "none")])
def test_crash_with_open_files_then_restart(tmp_path, serializer, compression):
    raw = {"type": "hdfs", "channel": "c", "path": str(tmp_path / "out" / "%{b}"), "serializer": serializer,
           "compression": compression, "roll_count": 400, "roll_size_bytes": 0, "roll_interval_s": 0}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, REPO, json.dumps(raw)], stdout=subprocess.PIPE,
                             text=True)
    committed = 0
    try:
        while committed < 1000:
            line = child.stdout.readline()
            assert line, "the writer died on its own"
            committed = int(line)
    finally:
        child.send_signal(signal.SIGKILL)  # mid-stream: it keeps writing until the signal lands
        child.wait()
    assert any(n.endswith(".tmp") for n in local_files(tmp_path / "out"))
    sink = HdfsSink("crash", HdfsSinkConfig(**raw))
    sink.start(SinkContext("crash"))
    names = local_files(tmp_path / "out")
    assert names and not any(n.endswith(".tmp") for n in names)
    assert sink.context.counters["FilesRecoveredCount"] >= 3
    bodies = local_bodies(tmp_path / "out", serializer=serializer, compression=compression)
    assert set(expected(0, committed)) <= set(bodies)          # nothing committed is missing
    assert set(bodies) <= set(expected(0, committed + 50))     # and nothing else is there (no torn rows)
    sink.stop()


@pytest.mark.parametrize("serializer,compression,tail", [("text", "none", b"e9999"),
                                                         ("text", "gzip", b"\x1f\x8b\x08\x00\x00"),
                                                         ("text", "zstd", b"\x28\xb5\x2f\xfd\x20\x05"),
                                                         ("parquet", "none", b"RFJ1\x05")])
def test_torn_tail_of_an_in_use_file_is_cut(tmp_path, serializer, compression, tail):
    cfg = config(tmp_path / "out", serializer=serializer, compression=compression)
    sink = HdfsSink("t", cfg)
    batch = numbered(0, 4)
    good = sink.fmt.encode(batch).to_pybytes() if serializer != "parquet" else encode_frame(batch).to_pybytes()
    os.makedirs(tmp_path / "out")
    name = f"FlumeData.123{cfg.effective_suffix}.tmp"
    (tmp_path / "out" / name).write_bytes(good + tail)
    sink.start(SinkContext("t"))
    (final,) = local_files(tmp_path / "out")
    assert final == name.removesuffix(".tmp")
    assert local_bodies(tmp_path / "out", serializer=serializer, compression=compression) == expected(0, 4)


def test_empty_in_use_file_is_deleted_and_foreign_files_are_left(tmp_path):
    out = tmp_path / "out"
    os.makedirs(out / "sub")
    (out / "sub" / "FlumeData.1.tmp").write_bytes(b"")
    (out / "other.tmp").write_bytes(b"not ours")
    (out / "FlumeData.2").write_bytes(b"finished\n")
    started(out / "%{x}")
    assert local_files(out) == ["FlumeData.2", "other.tmp"]


def test_recovery_never_overwrites_a_finished_file(tmp_path):
    out = tmp_path / "out"
    os.makedirs(out)
    (out / "FlumeData.5").write_bytes(b"old\n")
    (out / "FlumeData.5.tmp").write_bytes(b"new\n")
    started(out)
    assert sorted(local_bodies(out)) == [b"new", b"old"]
    assert len(local_files(out)) == 2


def test_a_live_writers_file_is_not_taken_over(tmp_path):
    first = started(tmp_path / "out")
    first.write(numbered(0, 3))
    second = started(tmp_path / "out")  # same root and naming: its recovery must skip the locked file
    assert [n.endswith(".tmp") for n in local_files(tmp_path / "out")] == [True]
    second.write(numbered(3, 3))
    second.stop()
    first.write(numbered(6, 3))
    first.stop()
    assert sorted(local_bodies(tmp_path / "out")) == expected(0, 9)


# -- validation --------------------------------------------------------------------------------------
def test_hdfs_without_a_hadoop_client_fails_start_not_validation_with_what_to_install(monkeypatch):
    for var in ("JAVA_HOME", "HADOOP_HOME", "ARROW_LIBHDFS_DIR", "CLASSPATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    cfg = HdfsSinkConfig(type="hdfs", channel="c", path="hdfs://namenode:8020/flume/%Y")
    (problem,) = cfg.check()
    for word in ("libhdfs", "HADOOP_HOME", "CLASSPATH", "JAVA_HOME", "hadoop classpath --glob",
                 "hdfs://namenode:8020"):
        assert word in problem
    from rayflume.topology import local_environment_warnings, validate

    # The client is needed on the sink's node, not here: validation passes, a local warning says it.
    topo = validate({"name": "h", "sources": {"s": {"type": "sequence", "channels": ["c"]}},
                     "channels": {"c": {"type": "memory"}},
                     "sinks": {"k": {"type": "hdfs", "channel": "c", "path": "hdfs://namenode:8020/x"}}})
    (warning,) = local_environment_warnings(topo)
    assert warning.startswith("sinks.k: ") and "libhdfs" in warning
    sink = cfg.build("k")
    with pytest.raises(DeliveryError, match="hdfs sink 'k': .*JAVA_HOME"):
        sink.start(SinkContext("k"))


def test_hdfs_check_names_only_what_is_missing(monkeypatch, tmp_path):
    java = tmp_path / "jdk"
    (java / "lib" / "server").mkdir(parents=True)
    (java / "lib" / "server" / "libjvm.so").write_bytes(b"")
    monkeypatch.setenv("JAVA_HOME", str(java))
    monkeypatch.setenv("CLASSPATH", "/opt/hadoop/share/hadoop/common/*")
    monkeypatch.delenv("HADOOP_HOME", raising=False)
    monkeypatch.delenv("ARROW_LIBHDFS_DIR", raising=False)
    (problem,) = HdfsSinkConfig(type="hdfs", channel="c", path="hdfs:///x").check()
    assert "libhdfs.so not found" in problem and "JAVA_HOME is not set" not in problem
    assert "not on CLASSPATH" not in problem


@pytest.mark.parametrize("kw,fragment", [
    ({"in_use_suffix": ""}, "both empty"),
    ({"round": True, "round_unit": "hour", "round_value": 25}, "at most 24"),
    ({"compression": "snappy"}, "only available for serializer parquet"),
    ({"file_type": "compressed_stream"}, "needs 'compression'"),
    ({"file_prefix": "a/b"}, "path separators"),
    ({"file_prefix": "%D"}, "%D"),
    ({"path": "/x/%Q"}, "unknown escape"),
    ({"path": "/x/%{h}/../y"}, "'..'"),
    ({"path": "s3://%{h}/x"}, "bucket"),
    ({"time_zone": "Mars/Olympus"}, "IANA"),
    ({"file_type": "sequence_file"}, "file_type"),
])
def test_bad_configs(tmp_path, kw, fragment):
    raw = {"type": "hdfs", "channel": "c", "path": str(tmp_path), **kw}
    with pytest.raises(ValueError, match=fragment):
        HdfsSinkConfig(**raw)


def test_flume_roll_defaults_are_kept_but_warned_about(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="rayflume.sink.hdfs"):
        cfg = HdfsSinkConfig(type="hdfs", channel="c", path=str(tmp_path / "warned"))
    assert (cfg.roll_interval_s, cfg.roll_size_bytes, cfg.roll_count) == (30, 1024, 10)
    assert (cfg.file_prefix, cfg.in_use_suffix, cfg.batch_size, cfg.max_open_files) == ("FlumeData", ".tmp", 100, 5000)
    assert "tiny files" in caplog.text


def test_unwritable_local_root_fails_the_check_and_start(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    blocked = HdfsSinkConfig(type="hdfs", channel="c", path=str(tmp_path / "file" / "x"), **NO_ROLL)
    assert "not a writable directory" in blocked.check()[0]
    assert HdfsSinkConfig(type="hdfs", channel="c", path=str(tmp_path / "new" / "%Y"), **NO_ROLL).check() == []
    with pytest.raises(DeliveryError, match="hdfs sink 'k': .*not a writable directory"):
        blocked.build("k").start(SinkContext("k"))


# -- on Ray ------------------------------------------------------------------------------------------
def test_pipeline_sequence_memory_hdfs(deployed, tmp_path):
    out = tmp_path / "ray-out"
    handle = deployed({
        "name": "hdfs-e2e", "metrics": {"port": None},
        "sources": {"gen": {"type": "sequence", "total_events": 20000, "batch_size": 1000, "channels": ["mem"],
                            "interceptors": [{"type": "timestamp"}, {"type": "static", "key": "k", "value": "v"}]}},
        "channels": {"mem": {"type": "memory", "capacity": 20000, "transaction_capacity": 5000}},
        "sinks": {"out": {"type": "hdfs", "channel": "mem", "path": str(out / "%{k}" / "%Y-%m-%d"),
                          "batch_size": 5000, "roll_count": 6000, "roll_size_bytes": 0, "roll_interval_s": 0}},
    })
    handle.wait_finished(timeout_s=90)
    handle.stop(drain_timeout_s=10)
    names = local_files(out)
    assert names and not any(n.endswith(".tmp") for n in names)
    assert all(n.startswith("v/") for n in names)
    bodies = local_bodies(out)
    assert sorted(int(b) for b in set(bodies)) == list(range(20000))
    assert len(names) == 4  # 6000-event files: 6000, 6000, 6000, 2000


def test_tier_instances_name_their_files_and_recover_only_their_own(tmp_path):
    from rayflume.sinks.hdfs.sink import instance_tag

    out = tmp_path / "out"
    os.makedirs(out)
    (out / "FlumeData.collector-0.7.tmp").write_bytes(b"zero\n")     # instance 0's unfinished file
    (out / "FlumeData.collector-10.8.tmp").write_bytes(b"ten\n")     # instance 10's
    (out / "FlumeData.9.tmp").write_bytes(b"untiered\n")             # a sink outside tiers
    sink = HdfsSink("t", config(out))
    sink.start(SinkContext("t", scope="collector/0"))
    assert sorted(local_files(out)) == ["FlumeData.9.tmp", "FlumeData.collector-0.7", "FlumeData.collector-10.8.tmp"]
    sink.write(numbered(0, 2))
    sink.stop()
    mine = [n for n in local_files(out) if n.startswith("FlumeData.collector-0.") and n != "FlumeData.collector-0.7"]
    assert len(mine) == 1 and not mine[0].endswith(".tmp")
    assert instance_tag("collector/0") == "collector-0"
    assert instance_tag("agent/" + "f" * 56).startswith("agent-fff") and len(instance_tag("agent/" + "f" * 56)) == 40


def test_flume_default_rolls_make_many_small_files_and_all_are_finished(tmp_path):
    sink = HdfsSink("t", HdfsSinkConfig(type="hdfs", channel="c", path=str(tmp_path / "out"), threads_pool_size=2),
                    clock=FakeClock())
    sink.start(SinkContext("t"))
    for k in range(3):
        sink.write(numbered(k * 105, 105))  # 10 events per file; a file left part-full is continued
    sink.stop()
    names = local_files(tmp_path / "out")
    assert not any(n.endswith(".tmp") for n in names)
    assert len(names) == 32  # 31 full files and the last 5 events
    assert sorted(local_bodies(tmp_path / "out")) == expected(0, 315)
    assert sink.context.counters["ConnectionClosedCount"] == 32


def test_part_files_on_a_generic_pyarrow_filesystem_as_for_hdfs(tmp_path):
    """HDFS goes through ArrowStorage (part files, closed per write); exercised here on pyarrow's
    LocalFileSystem, which renames like HDFS does."""
    import pyarrow.fs as pafs

    from rayflume.sinks.hdfs.storage import ArrowStorage

    def storage():
        return ArrowStorage(pafs.LocalFileSystem(), "hdfs", scheme="hdfs", authority="nn:8020")

    out = tmp_path / "out"
    sink = started(out / "%{b}", storage=storage(), roll_count=6)
    sink.write(numbered(0, 4, {"b": "x"}))
    sink.write(numbered(4, 4, {"b": "x"}))  # fills the first file (6), starts a second one
    sink.wait_closed(10)
    names = local_files(out)
    assert [n for n in names if not n.endswith(".tmp")] == [names[0].split(".part-")[0]]  # 2 parts assembled
    assert [n.split(".part-")[1] for n in names if n.endswith(".tmp")] == ["000001.tmp"]
    sink.write(numbered(8, 3, {"b": "y"}))
    # dies without stop(); a new sink on the same root finishes the parts
    restarted = started(out / "%{b}", storage=storage(), roll_count=6)
    assert not any(n.endswith(".tmp") for n in local_files(out))
    assert restarted.context.counters["FilesRecoveredCount"] == 2
    assert sorted(local_bodies(out)) == expected(0, 11)


def test_the_path_uri_picks_the_filesystem(tmp_path, monkeypatch):
    import pyarrow.fs as pafs

    from rayflume.sinks.hdfs.storage import resolve

    storage, inner = resolve(f"file://{tmp_path}/a/%Y")
    assert isinstance(storage, LocalStorage) and isinstance(storage.filesystem, pafs.LocalFileSystem)
    assert inner == f"{tmp_path}/a/%Y"
    storage, inner = resolve("relative/%{h}")
    assert isinstance(storage, LocalStorage) and inner == os.path.join(os.getcwd(), "relative/%{h}")
    storage, inner = resolve("s3a://bkt/pre/%Y", s3_endpoint_override="127.0.0.1:1", s3_scheme="http",
                             s3_access_key="k", s3_secret_key="s")
    assert isinstance(storage.filesystem, pafs.S3FileSystem) and inner == "bkt/pre/%Y" and not storage.appendable
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(OSError, match="libhdfs"):
        resolve("hdfs://nn:8020/flume")
