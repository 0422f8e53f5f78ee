"""The Flume mapping table's channels: how each Flume channel type's properties become rayflume keys.

The file channel's properties are shared by the file and spillable channels (:data:`FILE_CHANNEL`);
``fsyncInterval`` is carried over only where Flume applies it.
"""
from __future__ import annotations

from rayflume.flume_conf.tables.entries import (
    BYTE_BUFFER,
    COMMA_LIST,
    KEEP_ALIVE,
    MS,
    SECONDS,
    ComponentMapping,
    Prop,
    _kafka_acks,
    enum,
    kafka_passthrough,
    no,
)

FILE_CHANNEL = (
    Prop("checkpointDir", "checkpoint_dir"), Prop("dataDirs", "data_dirs", COMMA_LIST),
    Prop("transactionCapacity", "transaction_capacity"),
    Prop("checkpointInterval", "checkpoint_interval_s", MS), Prop("maxFileSize", "max_file_size_bytes"),
    Prop("minimumRequiredSpace", "minimum_required_space_bytes"),
    no("keep-alive", KEEP_ALIVE),
    no("useDualCheckpoints", "rayflume writes each checkpoint atomically beside the previous one, so one "
                             "directory is enough; remove it"),
    no("backupCheckpointDir", "rayflume writes each checkpoint atomically; remove it"),
    no("compressBackupCheckpoint", "there is no backup checkpoint; remove it"),
    Prop("checkpointOnClose", "checkpoint_on_close"),
    no("use-fast-replay", "replay always uses the checkpoint and the logs after it; remove it"),
    no("use-log-replay-v1", "replay always uses the checkpoint and the logs after it; remove it"),
    no("encryption.*", "the file channel does not encrypt its logs: use an encrypted file system (LUKS, an "
                       "encrypted volume) for data_dirs", error=True),
    Prop("fsyncPerTransaction", "fsync", enum({"true": "per_commit", "false": "interval"}, "use true or false")),
    Prop("fsyncInterval", "fsync_interval_s", SECONDS),
)


def _fsync_interval_needs_interval(mapping: dict, warn) -> None:
    if "fsync_interval_s" in mapping and mapping.get("fsync") != "interval":
        mapping.pop("fsync_interval_s")
        warn("fsyncInterval: not carried over: it only applies with fsyncPerTransaction = false (as in Flume)")


CHANNELS = (
    ComponentMapping("channel", "memory", "memory", (
        Prop("capacity", "capacity"), Prop("transactionCapacity", "transaction_capacity"),
        no("keep-alive", KEEP_ALIVE),
        Prop("byteCapacity", "byte_capacity",
             why="Flume counts body bytes only; rayflume counts the events' Arrow buffers (bodies and headers)"),
        no("byteCapacityBufferPercentage", BYTE_BUFFER),
    ), flume_defaults=(("capacity", 100, "Flume's memory channel holds 100 events by default; rayflume's 100000"),
                       ("transaction_capacity", 100, "Flume's default transactionCapacity is 100; rayflume's "
                                                     "10000"))),
    ComponentMapping("channel", "file", "file", (Prop("capacity", "capacity"), *FILE_CHANNEL),
                     finish=_fsync_interval_needs_interval),
    ComponentMapping("channel", "SPILLABLEMEMORY", "spillable", (
        Prop("memoryCapacity", "memory_capacity"), Prop("overflowCapacity", "overflow_capacity"),
        no("overflowTimeout", "a put spills to the overflow at once when memory is full; remove it"),
        Prop("byteCapacity", "byte_capacity",
             why="limits the memory part; rayflume counts the events' Arrow buffers"),
        no("byteCapacityBufferPercentage", BYTE_BUFFER),
        no("avgEventSize", "rayflume measures the events' sizes; remove it"),
        no("capacity", "the channel holds memoryCapacity + overflowCapacity events (as in Flume, which refuses "
                       "capacity here); remove it"),
        *FILE_CHANNEL,
    ), finish=_fsync_interval_needs_interval),
    ComponentMapping("channel", "org.apache.flume.channel.kafka.KafkaChannel", "kafka", (
        Prop("kafka.bootstrap.servers", "bootstrap_servers"), Prop("kafka.topic", "topic"),
        Prop("kafka.consumer.group.id", "group_id"),
        Prop("kafka.consumer.auto.offset.reset", "auto_offset_reset"),
        Prop("transactionCapacity", "transaction_capacity"), Prop("capacity", "capacity"),
        Prop("parseAsFlumeEvent", "parse_as_flume_event",
             why="Flume's default (true) also writes Avro-encoded events; rayflume writes its own records unless "
                 "use_flume_event_format is set, and reads both"),
        Prop("pollTimeout", "poll_timeout_s", MS),
        no("defaultPartitionId", "the channel writes to the partitions of its topic itself; remove it"),
        no("partitionIdHeader", "the channel writes to the partitions of its topic itself; remove it"),
        no("migrateZookeeperOffsets", "offsets are in Kafka since Flume 1.7; remove it"),
        no("zookeeperConnect", "deprecated in Flume; use kafka.bootstrap.servers"),
        no("keep-alive", KEEP_ALIVE),
        Prop("brokerList", "bootstrap_servers", why="Flume's deprecated name of kafka.bootstrap.servers"),
        Prop("topic", "topic", why="Flume's deprecated name of kafka.topic"),
        Prop("groupId", "group_id", why="Flume's deprecated name of kafka.consumer.group.id"),
        *kafka_passthrough("producer", "producer", "producer"),
        *kafka_passthrough("consumer", "consumer", "consumer"),
    ), finish=_kafka_acks),
)
