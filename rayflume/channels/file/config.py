"""Typed configuration of the ``file`` channel."""
from __future__ import annotations

from typing import ClassVar

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rayflume.channels.file.channel import DEFAULT_MAX_FILE_SIZE, DEFAULT_MIN_FREE_SPACE, MiB, FileChannel
from rayflume.config_base import ChannelConfig
from rayflume.registry import register


class FileStorageConfig(ChannelConfig):
    """The write-ahead-log keys shared by the ``file`` and ``spillable`` channels (not registered)."""

    node_local: ClassVar[bool] = True

    checkpoint_dir: str | None = Field(
        None, description="Directory of the checkpoint and its lock. Default: "
                          "~/.rayflume/<type>-channel/<channel name>/checkpoint.")
    data_dirs: list[str] | None = Field(
        None, description="Directories of the log segments (a list or a comma-separated string); new "
                          "segments go to the first, all are replayed. Default: "
                          "~/.rayflume/<type>-channel/<channel name>/data.")
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
            real = [os.path.realpath(os.path.expanduser(d)) for d in value]
            if len(set(real)) != len(real):
                raise ValueError(f"data_dirs lists a directory twice ({value}); list each once")
        return value

    def storage_dirs(self, name: str) -> tuple[str, list[str]]:
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
                    checkpoint_on_close=self.checkpoint_on_close)


@register("channel", "file")
class FileChannelConfig(FileStorageConfig):
    """``file``: a durable write-ahead log on local disk; a put returns once fsynced.

    Every file channel needs its own directories (each is locked while the channel is open).
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
