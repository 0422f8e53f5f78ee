"""Typed configuration of the ``file`` channel."""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rayflume.channels.file.channel import (
    DEFAULT_LOCK_TTL,
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MIN_FREE_SPACE,
    FileChannel,
    MiB,
)
from rayflume.channels.file.objstore import check_uri, is_uri, make_filesystem
from rayflume.config_base import ChannelConfig
from rayflume.registry import register


class FileStorageConfig(ChannelConfig):
    """The write-ahead-log keys shared by the ``file`` and ``spillable`` channels (not registered).

    Storage is either local directories (the channel is then *node-local*: its actor is pinned to
    the node holding the files) or one object-store URI ``s3://bucket/prefix`` in ``data_dirs``
    (the channel may then restart on any node: ``node_local`` is False). On an object store each
    group commit is one new object and a commit returns once its PUT completed; connection settings
    go in ``object_store_options``; ``checkpoint_dir`` defaults to ``<data uri>/checkpoint``; the
    channel holds a heartbeat-renewed lock object (``lock_ttl_s``) instead of ``flock``.
    """

    shared_storage: bool = Field(
        False, description="The directories are on storage every node reaches (NFS, a cluster file "
                           "system): the channel may then move to another node and replay there.")
    checkpoint_dir: str | None = Field(
        None, description="Directory of the checkpoint and its lock, or an object-store URI when "
                          "data_dirs is one. Default: ~/.rayflume/<type>-channel/<channel name>/"
                          "checkpoint, or <data_dirs URI>/checkpoint on an object store.")
    data_dirs: list[str] | None = Field(
        None, description="Directories of the log segments (a list or a comma-separated string); new "
                          "segments go to the first, all are replayed. Or exactly one object-store "
                          "URI, s3://bucket/prefix: the log is then stored there, one object per "
                          "group commit. Default: ~/.rayflume/<type>-channel/<channel name>/data.")
    object_store_options: dict[str, str | int | float | bool] | None = Field(
        None, description="Only with an s3:// data_dirs: keyword arguments of pyarrow.fs.S3FileSystem "
                          "(endpoint_override, region, scheme, access_key, secret_key, "
                          "request_timeout, connect_timeout, ...). Without access_key and secret_key "
                          "the usual AWS credential chain applies (environment, ~/.aws, instance "
                          "metadata).")
    lock_ttl_s: float = Field(
        DEFAULT_LOCK_TTL, gt=0, description="Only with an s3:// data_dirs: lifetime of the channel's "
                                            "lock object, renewed every lock_ttl_s/4. A restart after "
                                            "a crash waits up to this long for the dead instance's "
                                            "lock to lapse.")
    max_file_size_bytes: int = Field(
        DEFAULT_MAX_FILE_SIZE, ge=MiB, description="Size at which a segment file is closed and a new "
                                                   "one started (Flume's maxFileSize).")
    checkpoint_interval_s: float = Field(
        30.0, gt=0, description="Seconds between checkpoints; bounds the replay after a restart.")
    minimum_required_space_bytes: int = Field(
        DEFAULT_MIN_FREE_SPACE, ge=MiB, description="Puts are refused while the data directory has "
                                                    "less free space than this (at least 1 MiB).")
    fsync: Literal["per_commit", "interval"] = Field(
        "per_commit", description="per_commit: a put or commit returns after fsync (durable). "
                                  "interval: fsync every fsync_interval_s; a machine crash can lose "
                                  "up to that interval of acknowledged puts.")
    fsync_interval_s: float = Field(5.0, gt=0, description="fsync period when fsync is 'interval'.")
    checkpoint_on_close: bool = Field(True, description="Write a checkpoint when the channel closes.")

    @field_validator("data_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value):
        if isinstance(value, str):
            value = [d.strip() for d in value.split(",") if d.strip()]
        return value

    @field_validator("data_dirs")
    @classmethod
    def _check_dirs(cls, value):
        if value is not None:
            if not value:
                raise ValueError("data_dirs is empty: give at least one directory or leave it unset")
            if any(is_uri(d) for d in value):
                if len(value) != 1:
                    raise ValueError(f"data_dirs {value}: an object-store URI must be the only entry "
                                     f"(one URI, s3://bucket/prefix, holds the whole log)")
                return [check_uri(value[0])]
            real = [os.path.realpath(os.path.expanduser(d)) for d in value]
            if len(set(real)) != len(real):
                raise ValueError(f"data_dirs lists a directory twice ({value}); list each once")
        return value

    @model_validator(mode="after")
    def _check_storage_kind(self):
        if self.on_object_store:
            if self.checkpoint_dir is not None:
                if not is_uri(self.checkpoint_dir):
                    raise ValueError(
                        f"checkpoint_dir {self.checkpoint_dir!r} is local but data_dirs is on an object "
                        f"store: a local checkpoint would not follow the channel to another node. "
                        f"Leave checkpoint_dir unset (it defaults to <data_dirs URI>/checkpoint) or "
                        f"give an s3:// URI")
                check_uri(self.checkpoint_dir)
            if self.fsync != "per_commit":
                raise ValueError("fsync: interval is not available on an object store (there is no "
                                 "page cache between a write and its PUT; each group commit is one "
                                 "PUT); remove fsync or set it to per_commit")
            try:
                make_filesystem(self.object_store_options)
            except Exception as exc:
                raise ValueError(f"object_store_options {self.object_store_options} are not valid "
                                 f"pyarrow.fs.S3FileSystem arguments: {exc}") from exc
        else:
            if self.checkpoint_dir is not None and is_uri(self.checkpoint_dir):
                raise ValueError(f"checkpoint_dir {self.checkpoint_dir!r} is a URI but data_dirs is not: "
                                 f"put data_dirs on the same object store (one s3:// URI)")
            for key in ("object_store_options", "lock_ttl_s"):
                if key in self.model_fields_set:
                    raise ValueError(f"{key} is only used when data_dirs is an object-store URI "
                                     f"(s3://bucket/prefix); remove it")
        return self

    @property
    def on_object_store(self) -> bool:
        """Whether the log lives on an object store (``data_dirs`` is one URI)."""
        return bool(self.data_dirs) and is_uri(self.data_dirs[0])

    @property
    def node_local(self) -> bool:
        """True for local directories (the actor is pinned to their node); False on an object
        store, or with ``shared_storage`` (directories every node reaches, such as NFS), where
        the channel survives the loss of its node and may restart anywhere."""
        return not (self.on_object_store or self.shared_storage)

    def storage_dirs(self, name: str) -> tuple[str, list[str]]:
        if self.on_object_store:
            data = self.data_dirs[0]
            return (self.checkpoint_dir or f"{data}/checkpoint").rstrip("/"), [data]
        kind = self.type_name or "file"
        base = os.path.join("~", ".rayflume", f"{kind}-channel", name)
        checkpoint_dir = self.checkpoint_dir or os.path.join(base, "checkpoint")
        data_dirs = self.data_dirs or [os.path.join(base, "data")]
        return (os.path.expanduser(checkpoint_dir), [os.path.expanduser(d) for d in data_dirs])

    def storage_options(self, name: str) -> dict:
        checkpoint_dir, data_dirs = self.storage_dirs(name)
        return dict(checkpoint_dir=checkpoint_dir, data_dirs=data_dirs,
                    max_file_size_bytes=self.max_file_size_bytes,
                    checkpoint_interval_s=self.checkpoint_interval_s,
                    minimum_required_space_bytes=self.minimum_required_space_bytes,
                    fsync=self.fsync, fsync_interval_s=self.fsync_interval_s,
                    checkpoint_on_close=self.checkpoint_on_close,
                    **(dict(object_store_options=self.object_store_options,
                            lock_ttl_s=self.lock_ttl_s) if self.on_object_store else {}))


@register("channel", "file")
class FileChannelConfig(FileStorageConfig):
    """``file``: a durable write-ahead log on local disk or an object store; a put returns once
    fsynced (on an object store: once the PUT of its group commit's object completed).

    Every file channel needs its own directories or URI (each is locked while the channel is open).
    """

    capacity: int = Field(1_000_000, gt=0, description="Most events the channel holds.")
    transaction_capacity: int = Field(10_000, gt=0, description="Most events in one put or take.")

    @model_validator(mode="after")
    def _fsync_interval_only_with_interval(self):
        if "fsync_interval_s" in self.model_fields_set and self.fsync != "interval":
            raise ValueError("fsync_interval_s is only used with fsync: interval; remove it or set "
                             "fsync: interval")
        return self

    def build(self, name: str) -> FileChannel:
        return FileChannel(name, capacity=self.capacity, transaction_capacity=self.transaction_capacity,
                           byte_capacity=self.byte_capacity, lease_timeout_s=self.lease_timeout_s,
                           **self.storage_options(name))
