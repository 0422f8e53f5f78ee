"""The ``hdfs`` sink on S3 (a moto server on loopback) through ``pyarrow.fs.S3FileSystem``."""
from __future__ import annotations

from datetime import datetime, timezone

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rayflume.errors import DeliveryError
from rayflume.sinks.base import SinkContext
from rayflume.sinks.hdfs.config import HdfsSinkConfig
from rayflume.sinks.hdfs.sink import HdfsSink
from tests.s3_server import s3_endpoint  # noqa: F401  (the fixture)
from tests.test_hdfs_sink import NO_ROLL, FakeClock, decode, expected, numbered


def s3_config(endpoint, path, **kw) -> HdfsSinkConfig:
    return HdfsSinkConfig(type="hdfs", channel="c", path=path, **{**NO_ROLL, **endpoint.sink_options(), **kw})


def s3_sink(endpoint, path, clock=None, **kw) -> HdfsSink:
    sink = HdfsSink("s3", s3_config(endpoint, path, **kw), clock=clock or FakeClock())
    sink.start(SinkContext("s3"))
    return sink


def objects(endpoint, bucket) -> dict[str, int]:
    infos = endpoint.filesystem().get_file_info(pafs.FileSelector(bucket, recursive=True))
    return {i.path[len(bucket) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}


def bodies(endpoint, bucket, **fmt) -> list[bytes]:
    fs = endpoint.filesystem()
    out = []
    for key in sorted(objects(endpoint, bucket)):
        with fs.open_input_stream(f"{bucket}/{key}") as f:
            out.extend(decode(f.read(), **fmt))
    return out


@pytest.fixture
def bucket(s3_endpoint):  # noqa: F811
    return s3_endpoint.make_bucket()


def test_parts_while_open_then_one_final_object(s3_endpoint, bucket):  # noqa: F811
    sink = s3_sink(s3_endpoint, f"s3://{bucket}/logs")
    sink.write(numbered(0, 3))
    sink.write(numbered(3, 3))
    keys = sorted(objects(s3_endpoint, bucket))
    assert len(keys) == 2 and all(k.startswith("logs/FlumeData.") and k.endswith(".tmp") for k in keys)
    assert [k.split(".part-")[1] for k in keys] == ["000001.tmp", "000002.tmp"]
    sink.stop()
    (key,) = objects(s3_endpoint, bucket)
    assert key.startswith("logs/FlumeData.") and ".part-" not in key and not key.endswith(".tmp")
    assert bodies(s3_endpoint, bucket) == expected(0, 6)


def test_roll_count_on_s3(s3_endpoint, bucket):  # noqa: F811
    sink = s3_sink(s3_endpoint, f"s3://{bucket}/logs", roll_count=10)
    sink.write(numbered(0, 25))
    assert sink.wait_closed(20) is True
    keys = sorted(objects(s3_endpoint, bucket))
    assert [k.endswith(".tmp") for k in keys] == [False, False, True]
    sink.stop()
    keys = sorted(objects(s3_endpoint, bucket))
    assert len(keys) == 3 and not any(k.endswith(".tmp") for k in keys)
    assert bodies(s3_endpoint, bucket) == expected(0, 25)


def test_roll_interval_and_idle_timeout_on_s3(s3_endpoint, bucket):  # noqa: F811
    clock = FakeClock()
    sink = s3_sink(s3_endpoint, f"s3://{bucket}/%{{b}}", clock=clock, roll_interval_s=60, idle_timeout_s=10)
    sink.write(numbered(0, 2, {"b": "x"}))
    sink.write(numbered(2, 2, {"b": "y"}))
    clock.now += 8
    sink.write(numbered(4, 2, {"b": "y"}))
    clock.now += 3
    sink.maintain()  # x idle for 11 s: finished; y written 3 s ago: open
    sink.wait_closed(20)
    keys = objects(s3_endpoint, bucket)
    assert [k for k in keys if k.endswith(".tmp")] and all(k.startswith("y/") for k in keys if k.endswith(".tmp"))
    clock.now += 50
    sink.maintain()  # y open for 61 s: rolled
    sink.wait_closed(20)
    assert not any(k.endswith(".tmp") for k in objects(s3_endpoint, bucket))
    assert sorted(bodies(s3_endpoint, bucket)) == expected(0, 6)


@pytest.mark.parametrize("serializer,compression", [("text", "gzip"), ("json", "zstd"), ("parquet", "zstd")])
def test_formats_on_s3(s3_endpoint, bucket, serializer, compression):  # noqa: F811
    sink = s3_sink(s3_endpoint, f"s3://{bucket}/f", serializer=serializer, compression=compression)
    for k in range(3):
        sink.write(numbered(k * 5, 5, {"k": str(k)}))
    sink.stop()
    (key,) = objects(s3_endpoint, bucket)
    assert bodies(s3_endpoint, bucket, serializer=serializer, compression=compression) == expected(0, 15)
    if serializer == "parquet":
        f = pq.ParquetFile(f"{bucket}/{key}", filesystem=s3_endpoint.filesystem())
        assert f.metadata.num_rows == 15 and f.metadata.num_row_groups == 3
        assert f.schema_arrow.names == ["headers", "body"]


def test_flume_rounding_and_hostile_header_on_s3(s3_endpoint, bucket):  # noqa: F811
    sink = s3_sink(s3_endpoint, f"s3://{bucket}/flume/events/%{{host}}/%Y-%m-%d/%H%M/%S", round=True,
                   round_value=10, round_unit="minute", time_zone="UTC")
    stamp = str(int(datetime(2012, 6, 12, 11, 54, 34, tzinfo=timezone.utc).timestamp() * 1000))
    sink.write(numbered(0, 1, {"timestamp": stamp, "host": "web1"}))
    sink.write(numbered(1, 1, {"timestamp": stamp, "host": "../../../other"}))
    sink.stop()
    keys = sorted(objects(s3_endpoint, bucket))
    assert all(k.startswith("flume/events/") for k in keys)
    dirs = sorted(k.rsplit("/", 1)[0] for k in keys)
    assert dirs == ["flume/events/_________other/2012-06-12/1150/00", "flume/events/web1/2012-06-12/1150/00"]


@pytest.mark.parametrize("serializer", ["text", "parquet"])
def test_crash_with_open_files_then_restart_on_s3(s3_endpoint, bucket, serializer):  # noqa: F811
    path = f"s3://{bucket}/crash/%{{b}}"
    crashed = s3_sink(s3_endpoint, path, serializer=serializer, roll_count=7)
    for i in range(0, 30, 5):
        crashed.write(numbered(i, 5, {"b": str(i % 2)}))
    crashed.wait_closed(20)  # its full files are finished; then it dies without stop():
    # its open files stay parts under in-use names.
    assert any(k.endswith(".tmp") for k in objects(s3_endpoint, bucket))
    restarted = s3_sink(s3_endpoint, path, serializer=serializer, roll_count=7)
    keys = objects(s3_endpoint, bucket)
    assert keys and not any(k.endswith(".tmp") for k in keys)
    assert restarted.context.counters["FilesRecoveredCount"] == 2
    assert sorted(bodies(s3_endpoint, bucket, serializer=serializer)) == expected(0, 30)
    restarted.stop()


def test_large_file_assembled_from_parts(s3_endpoint, bucket):  # noqa: F811
    # Above pyarrow's multipart threshold, so the final upload is a multipart upload.
    sink = s3_sink(s3_endpoint, f"s3://{bucket}/big", batch_size=20000)
    body = b"x" * 1000
    from rayflume.event import EventBatch
    batch = EventBatch.from_bodies([body] * 6000)
    for _ in range(3):
        sink.write(batch)
    sink.stop()
    (key,) = objects(s3_endpoint, bucket)
    assert objects(s3_endpoint, bucket)[key] == 3 * 6000 * 1001


def test_missing_bucket_rolls_back(s3_endpoint):  # noqa: F811
    sink = s3_sink(s3_endpoint, "s3://no-such-bucket-here/x", call_timeout_s=20)
    with pytest.raises(DeliveryError):
        sink.write(numbered(0, 2))
    sink.stop()
