"""Configuration of the ``hdfs`` sink (Flume's ``HDFSEventSink`` properties in snake_case).

Flume's defaults are kept, including the roll settings that make tiny files (a file every 30 s,
1024 body bytes or 10 events, whichever comes first). A configuration that leaves all three at
those defaults is logged as a warning when it is validated: for real traffic set ``roll_count: 0``,
``roll_size_bytes`` near the file system's block size (e.g. 134217728) and ``roll_interval_s`` to how
late a file may appear (e.g. 300), with ``idle_timeout_s`` to close buckets that stopped receiving.
"""
from __future__ import annotations

import logging
import os
import zoneinfo
from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from rayflume.config_base import SinkConfig
from rayflume.registry import register
from rayflume.sinks.hdfs.paths import parse_template, static_root
from rayflume.sinks.hdfs.storage import hadoop_message, hadoop_problems, split_uri
from rayflume.sinks.hdfs.writers import make_format

log = logging.getLogger("rayflume.sink.hdfs")

FLUME_ROLL_DEFAULTS = (30.0, 1024, 10)
_ROUND_LIMITS = {"second": 60, "minute": 60, "hour": 24}


def _plain_name(value: str, key: str) -> str:
    if "/" in value or "\\" in value or "\0" in value:
        raise ValueError(f"hdfs sink: {key} {value!r} must be part of a file name, without path separators; "
                         f"put directories in 'path'")
    return value


@register("sink", "hdfs")
class HdfsSinkConfig(SinkConfig):
    """``hdfs``: bucketed, rolling files on HDFS, S3 or a local disk (see :mod:`rayflume.sinks.hdfs`)."""

    _warned: ClassVar[set] = set()

    path: str = Field(min_length=1, description="Directory of the files, with escapes (hdfs.path): "
                      "hdfs://namenode:8020/dir, s3://bucket/prefix, file:///dir or a plain path.")
    file_prefix: str = Field("FlumeData", description="Start of every file name; escapes allowed (hdfs.filePrefix).")
    file_suffix: str = Field("", description="End of every file name (hdfs.fileSuffix); when empty, the "
                             "compression's or format's extension (.gz, .zst, .parquet).")
    in_use_prefix: str = Field("", description="Prefix of a file's name while it is written (hdfs.inUsePrefix).")
    in_use_suffix: str = Field(".tmp", description="Suffix of a file's name while it is written (hdfs.inUseSuffix).")
    roll_interval_s: float = Field(30.0, ge=0, description="Close a file this long after it was opened; 0: never "
                                   "(hdfs.rollInterval).")
    roll_size_bytes: int = Field(1024, ge=0, description="Close a file once it holds this many body bytes "
                                 "(counted before serialisation and compression, as Flume); 0: never (hdfs.rollSize).")
    roll_count: int = Field(10, ge=0, description="Close a file once it holds this many events; 0: never "
                            "(hdfs.rollCount).")
    idle_timeout_s: float = Field(0.0, ge=0, description="Close a file no event was written to for this long; "
                                  "0: never (hdfs.idleTimeout).")
    batch_size: int = Field(100, gt=0, description="Most events taken per transaction (hdfs.batchSize).")
    serializer: Literal["text", "header_and_text", "json", "parquet"] = Field(
        "text", description="Output format: text (bodies), header_and_text, json (lines) or parquet.")
    file_type: Literal["data_stream", "compressed_stream"] = Field(
        "data_stream", description="Flume's hdfs.fileType: compressed_stream requires 'compression'. "
                                   "(SequenceFile is not supported.)")
    append_newline: bool = Field(True, description="text/header_and_text: end every event with a newline.")
    compression: Literal["none", "gzip", "zstd", "snappy"] = Field(
        "none", description="none, gzip or zstd (per batch: a file is a series of complete members); "
                            "for parquet its own codec, snappy allowed too (hdfs.codeC).")
    compression_level: int | None = Field(None, description="Codec level; None: the codec's default.")
    call_timeout_s: float = Field(30.0, gt=0, description="Bound on every file system call; a write that times out "
                                  "is rolled back (hdfs.callTimeout).")
    threads_pool_size: int = Field(10, gt=0, description="Worker threads for file system calls; files of "
                                   "different buckets are written in parallel (hdfs.threadsPoolSize).")
    max_open_files: int = Field(5000, gt=0, description="Most files open at once; the least recently used is "
                                "closed beyond that (hdfs.maxOpenFiles).")
    close_tries: int = Field(0, ge=0, description="Attempts to finish (close and rename) a file; 0: until it "
                             "succeeds (hdfs.closeTries).")
    retry_interval_s: float = Field(180.0, gt=0, description="Seconds between attempts to finish a file "
                                    "(hdfs.retryInterval).")
    round: bool = Field(False, description="Round the event time down before time escapes (hdfs.round).")
    round_value: int = Field(1, gt=0, description="Round down to a multiple of this many units (hdfs.roundValue).")
    round_unit: Literal["second", "minute", "hour"] = Field("second", description="hdfs.roundUnit.")
    time_zone: str | None = Field(None, description="IANA zone of the time escapes; None: this machine's zone "
                                  "(hdfs.timeZone).")
    use_local_timestamp: bool = Field(False, description="Use the sink's clock instead of the events' "
                                      "'timestamp' header (hdfs.useLocalTimeStamp).")
    s3_endpoint_override: str | None = Field(None, description="host:port of an S3-compatible endpoint.")
    s3_region: str | None = Field(None, description="S3 region; us-east-1 when an endpoint is given.")
    s3_access_key: str | None = Field(None, description="S3 access key; None: AWS_ACCESS_KEY_ID, profile or role.")
    s3_secret_key: str | None = Field(None, description="S3 secret key; None: AWS_SECRET_ACCESS_KEY, profile or role.")
    s3_scheme: Literal["http", "https"] | None = Field(None, description="Transport to the S3 endpoint; default https.")
    hdfs_user: str | None = Field(None, description="User to connect to HDFS as; None: the process's user.")

    @field_validator("file_suffix", "in_use_prefix", "in_use_suffix")
    @classmethod
    def _names(cls, value: str, info) -> str:
        return _plain_name(value, info.field_name)

    @field_validator("file_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        tokens = parse_template(value, "file_prefix")
        if any(t.kind == "text" and ("/" in t.value or "\\" in t.value) for t in tokens):
            raise ValueError(f"hdfs sink: file_prefix {value!r} must not contain path separators; put "
                             f"directories (and their escapes) in 'path'")
        if any(t.kind == "time" and t.value == "D" for t in tokens):
            raise ValueError("hdfs sink: file_prefix must not use %D, which prints slashes; use %m-%d-%y")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        scheme, authority, inner = split_uri(value)
        if "%" in authority:
            raise ValueError(f"hdfs sink: path {value!r}: escapes are not allowed in the host or bucket name")
        parse_template(inner, "path")
        if any(s in (".", "..") for s in inner.split("/")):
            raise ValueError(f"hdfs sink: path {value!r} must not contain '.' or '..' segments; write the "
                             f"directory out")
        static_root(inner)
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"hdfs sink: time_zone {value!r} is not a known IANA zone (e.g. UTC, Europe/Paris, "
                             f"America/Los_Angeles)") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "HdfsSinkConfig":
        if not self.in_use_prefix and not self.in_use_suffix:
            raise ValueError("hdfs sink: in_use_prefix and in_use_suffix are both empty, so an unfinished file could "
                             "not be told from a finished one and finished after a crash; set in_use_suffix "
                             "(default '.tmp') or in_use_prefix (e.g. '_')")
        if self.round and self.round_value > _ROUND_LIMITS[self.round_unit]:
            raise ValueError(f"hdfs sink: round_value {self.round_value} is too large for round_unit "
                             f"{self.round_unit}; at most {_ROUND_LIMITS[self.round_unit]}")
        if self.file_type == "compressed_stream" and self.compression == "none":
            raise ValueError("hdfs sink: file_type compressed_stream needs 'compression' (gzip or zstd)")
        if self.compression == "snappy" and self.serializer != "parquet":
            raise ValueError("hdfs sink: compression snappy is only available for serializer parquet; use gzip "
                             "or zstd")
        if self.compression_level is not None and self.compression != "none":
            try:
                make_format(self.serializer, self.append_newline, self.compression, self.compression_level)
                if self.serializer == "parquet":
                    pa.Codec(self.compression, self.compression_level)
            except Exception as exc:  # pyarrow raises OSError or ArrowInvalid for a bad level
                raise ValueError(f"hdfs sink: compression_level {self.compression_level} does not suit "
                                 f"{self.compression}: {exc}") from None
        defaults = (float(self.roll_interval_s), self.roll_size_bytes, self.roll_count)
        if defaults == FLUME_ROLL_DEFAULTS and self.path not in HdfsSinkConfig._warned:
            HdfsSinkConfig._warned.add(self.path)
            log.warning("hdfs sink with path %r keeps Flume's roll defaults (30 s, 1024 bytes, 10 events), which make "
                        "tiny files; set roll_count: 0, roll_size_bytes near the block size (e.g. 134217728) and "
                        "roll_interval_s (e.g. 300), with idle_timeout_s for buckets that go quiet", self.path)
        return self

    @property
    def effective_suffix(self) -> str:
        if self.file_suffix:
            return self.file_suffix
        if self.serializer == "parquet":
            return ".parquet"
        return {"gzip": ".gz", "zstd": ".zst"}.get(self.compression, "")

    def check(self) -> list[str]:
        """What this machine lacks for ``path``: a Hadoop client (hdfs://, viewfs://), S3 support in
        pyarrow (s3://), a writable directory at the local root. The sink checks on its node at start."""
        scheme, _, inner = split_uri(self.path)
        if scheme in ("hdfs", "viewfs"):
            problems = hadoop_problems()
            if problems:
                return [f"`path`: {hadoop_message(self.path, problems)}"]
        elif scheme in ("s3", "s3a", "s3n"):
            try:
                import pyarrow._s3fs  # noqa: F401
            except ImportError:
                return ["`path`: this pyarrow was built without S3 support; install a pyarrow wheel from PyPI"]
        elif scheme == "":
            root = static_root(inner)
            probe = root
            while probe and not os.path.exists(probe):
                probe = os.path.dirname(probe)
            if probe and not (os.path.isdir(probe) and os.access(probe, os.W_OK | os.X_OK)):
                return [f"`path`: cannot create files under {root!r} on this node: {probe!r} is not a writable "
                        f"directory; create the directory or fix `path`"]
        return []

    def build(self, name: str):
        from rayflume.sinks.hdfs.sink import HdfsSink

        return HdfsSink(name, self)
