"""Typed configuration of the ``kafka`` channel, and its checks."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from rayflume._private.kafka_common import (
    RESERVED_CONSUMER,
    RESERVED_PRODUCER,
    check_producer_overrides,
    validate_client_options,
)
from rayflume.channels.kafka.channel import KafkaChannel
from rayflume.config_base import ChannelConfig
from rayflume.registry import register


@register("channel", "kafka")
class KafkaChannelConfig(ChannelConfig):
    """``kafka``: a topic is the channel (Flume's Kafka channel); see :mod:`rayflume.channels.kafka`."""

    needs_sink: ClassVar[bool] = False
    needs_source: ClassVar[bool] = False

    bootstrap_servers: str = Field(min_length=1, description="Kafka brokers, host:port[,host:port...].")
    topic: str = Field("flume-channel", min_length=1, description="The topic that stores the channel.")
    group_id: str = Field("flume", min_length=1, description="Consumer group whose offsets the channel commits.")
    format: Literal["arrow", "events"] = Field("arrow", description="arrow: one record per put (Arrow IPC); "
                                                                    "events: one record per event (raw body, "
                                                                    "headers as Kafka headers).")
    use_flume_event_format: bool = Field(
        False, description="Put each event as one record whose value is an Avro-encoded AvroFlumeEvent (headers "
                           "and body) keyed by its `key` header, as Flume's Kafka channel writes with "
                           "parseAsFlumeEvent, so Flume agents can take them. Replaces `format`.")
    parse_as_flume_event: bool | None = Field(
        None, description="Take records without rayflume's arrow marker as Avro-encoded AvroFlumeEvents (what Flume's "
                          "Kafka channel and, with useFlumeEventFormat, its Kafka sink write); one that does not "
                          "decode is delivered raw with header rayflume.decode_error and counted in "
                          "EventDecodeFailCount. Unset: the value of use_flume_event_format.")
    capacity: int | None = Field(None, gt=0, description="Most events in the channel; None: unbounded "
                                                         "(Kafka's retention is the bound).")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a group without committed offsets starts (Flume: latest; earliest "
                                "so that puts made before the first take are not skipped).")
    poll_timeout_s: float = Field(0.5, gt=0, description="Longest wait for records known to be in the topic "
                                                         "(Flume's pollTimeout).")
    call_timeout_s: float = Field(30.0, gt=0, description="Longest wait for a put's acknowledgement and for "
                                                          "metadata calls.")
    create_topic: bool = Field(True, description="Create the topic at start if it does not exist.")
    partitions: int = Field(1, gt=0, description="Partitions of a topic the channel creates (1 keeps FIFO).")
    replication_factor: int = Field(-1, description="Replication of a topic the channel creates; -1: the "
                                                    "broker's default.")
    producer: dict = Field(default_factory=dict, description="librdkafka producer properties passed through.")
    consumer: dict = Field(default_factory=dict, description="librdkafka consumer properties passed through.")

    @model_validator(mode="after")
    def _check(self):
        who = "kafka channel"
        if self.byte_capacity is not None:
            raise ValueError(f"{who}: `byte_capacity` is not supported (Kafka's retention bounds the channel); "
                             f"remove it, or bound events with `capacity`")
        validate_client_options(who, "producer", self.producer, RESERVED_PRODUCER)
        check_producer_overrides(who, self.producer)
        validate_client_options(who, "consumer", self.consumer, RESERVED_CONSUMER)
        if self.replication_factor == 0 or self.replication_factor < -1:
            raise ValueError(f"{who}: `replication_factor` must be -1 (broker default) or at least 1")
        if self.use_flume_event_format:
            if "format" in self.model_fields_set:
                raise ValueError(f"{who}: `format` and `use_flume_event_format` both choose how puts are written; "
                                 f"remove `format` (use_flume_event_format writes one Flume event per record)")
            if self.parse_as_flume_event is False:
                raise ValueError(f"{who}: `use_flume_event_format` writes Flume events that the channel itself must "
                                 f"read back; remove `parse_as_flume_event: false`")
        elif self.parse_as_flume_event and self.format == "events":
            raise ValueError(f"{who}: `format: events` writes raw bodies, which `parse_as_flume_event` cannot decode; "
                             f"set `use_flume_event_format: true` (instead of format) to write Flume events, or "
                             f"use `format: arrow`")
        return self

    def check(self) -> list[str]:
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            return ["kafka channel: the confluent-kafka package is not installed; pip install confluent-kafka"]
        return []

    def build(self, name: str) -> KafkaChannel:
        return KafkaChannel(name, self)
