"""The ``kafka`` source: a consumer-group member reading topics in batches (Flume's ``KafkaSource``).

``poll()`` consumes up to ``batch_size`` records, waiting at most ``batch_duration_s`` to fill the
batch (Flume's ``batchDurationMillis``), and returns them as one batch, one event per record: the
record value is the body; headers ``topic`` (``topic_header``, when ``set_topic_header``),
``partition``, ``offset``, ``timestamp`` (the record timestamp in ms) and ``key`` (when the record
has one), then the record's Kafka headers (with ``copy_kafka_headers``).

Flume's event format (``parse_as_flume_event``, Flume's ``useFlumeEventFormat`` of its Kafka
source): each record value is read as one Avro-encoded ``AvroFlumeEvent`` (what Flume's Kafka sink
writes with ``useFlumeEventFormat`` and Flume's Kafka channel with ``parseAsFlumeEvent``): the
event gets the decoded body and headers. As in Flume, the decoded headers win: ``topic``,
``partition``, ``offset`` and ``timestamp`` are added only where the Flume event lacks them (so an
event keeps the ``timestamp`` it had before it crossed Kafka), the record key always becomes
``key``, and Kafka headers (with ``copy_kafka_headers``) are added where no header has their name.

A record that is not one valid ``AvroFlumeEvent`` (written without the Flume format, a tombstone,
corrupt) is neither dropped nor fatal: it becomes an event with the raw value as body, the usual
metadata headers and header ``rayflume.decode_error`` giving the reason, and is counted in
``EventDecodeFailCount`` (with a warning naming topic, partition and offset). Flume's source logs
an error on such a record and does not deliver it; here nothing is lost, and a selector or
interceptor can route such events by that header.

Delivery: auto commit is off. ``ack()``, which the runner calls only after every required channel
committed the batch, commits the batch's offsets synchronously. So a record is acknowledged to
Kafka only once it is in the channels: **at-least-once**. Duplicates are possible, as in Flume
("duplicates can be present when the source starts"): a batch whose offset commit did not happen
(the source died between the channel commit and the offset commit, the commit failed, or the
partition moved to another member meanwhile) is read again.

Rebalances: partitions are assigned and revoked inside ``poll()`` (librdkafka calls the callbacks
from the consume call). The runner does not poll again before it acknowledged the last batch, so
a revocation normally finds nothing pending. If one does (``on_revoke`` / ``on_lost`` with a batch
not yet acknowledged, e.g. the member was evicted for exceeding ``max.poll.interval.ms`` while a
full channel held the batch), the offsets of the revoked partitions are **not** committed: their
records are redelivered to the partition's new owner from the last committed offset. Nothing is
skipped, at the price of duplicates.

Not thread-safe; the runner calls it from one thread.
"""
from __future__ import annotations

import logging
import re
import time

from pydantic import Field, field_validator, model_validator

from rayflume._private.kafka_common import (
    DECODE_ERROR_HEADER,
    RESERVED_CONSUMER,
    consumer_config,
    flume_messages_to_batch,
    kafka_error_text,
    messages_to_batch,
    validate_client_options,
)
from rayflume.config_base import SourceConfig
from rayflume.errors import RayflumeError
from rayflume.event import EventBatch
from rayflume.registry import register
from rayflume.sources.base import Source, SourceContext

log = logging.getLogger("rayflume.source.kafka")


class KafkaSource(Source):
    """Consumes ``topics`` (or every topic matching ``topics_regex``) as member of ``group_id``."""

    def __init__(self, name: str, config: KafkaSourceConfig):
        self.name = name
        self.bootstrap_servers = config.bootstrap_servers
        topics, regex = config.topics, config.topics_regex or ""  # exactly one is set (the config checks)
        self.subscription = list(topics) if topics else [regex if regex.startswith("^") else "^" + regex]
        self.group_id = config.group_id
        self.batch_size = config.batch_size
        self.batch_duration_s = float(config.batch_duration_s)
        self.auto_offset_reset = config.auto_offset_reset
        self.topic_header = config.topic_header if config.set_topic_header else None
        self.copy_kafka_headers = config.copy_kafka_headers
        self.parse_as_flume_event = config.parse_as_flume_event
        self.overrides = dict(config.consumer)
        self.context = SourceContext(name=name)
        self._consumer = None
        self._pending: EventBatch | None = None
        # next offset to commit per (topic, partition) for the pending batch
        self._pending_offsets: dict[tuple[str, int], int] = {}
        self._assigned: set[tuple[str, int]] = set()
        self._revoked_pending = 0

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, context: SourceContext) -> None:
        super().start(context)
        try:
            from confluent_kafka import Consumer
        except ImportError:  # checked here, on the source's node, not at validation
            raise RayflumeError(f"kafka source '{self.name}': the confluent-kafka package is not installed on "
                                f"this node; pip install confluent-kafka on every node that runs this source "
                                f"(or add it to the cluster's runtime_env)") from None

        conf = consumer_config(self.bootstrap_servers, self.group_id, self.auto_offset_reset, self.overrides)
        conf["error_cb"] = self._on_client_error
        self._consumer = Consumer(conf)
        self._consumer.subscribe(self.subscription, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)

    def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            # Nothing pending is committed: an unacknowledged batch is read again by whoever owns
            # its partitions next.
            self._pending = None
            self._pending_offsets = {}
            try:
                consumer.close()
            except Exception as exc:
                log.warning("kafka source '%s': closing the consumer failed: %s", self.name, exc)

    # -- rebalance callbacks (called from inside consume()) -------------------------------------------
    def _on_assign(self, consumer, partitions) -> None:
        self._assigned.update((p.topic, p.partition) for p in partitions)
        self.context.count("KafkaPartitionsAssignedCount", len(partitions))
        log.info("kafka source '%s': assigned %s", self.name,
                 sorted(f"{p.topic}[{p.partition}]" for p in partitions))

    def _on_revoke(self, consumer, partitions) -> None:
        self._forget(partitions, "revoked")

    def _on_lost(self, consumer, partitions) -> None:
        self._forget(partitions, "lost")

    def _forget(self, partitions, how: str) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self._assigned -= gone
        self.context.count("KafkaPartitionsRevokedCount", len(gone))
        dropped = [tp for tp in self._pending_offsets if tp in gone]
        for tp in dropped:
            # Not acknowledged yet: never commit it; the new owner reads it from the last commit.
            del self._pending_offsets[tp]
        if dropped:
            self._revoked_pending += len(dropped)
            self.context.count("KafkaRevokedUncommittedCount", len(dropped))
        log.info("kafka source '%s': partitions %s %s%s", self.name,
                 sorted(f"{t}[{p}]" for t, p in gone), how,
                 f" ({len(dropped)} with an unacknowledged batch, left uncommitted)" if dropped else "")

    def _on_client_error(self, err) -> None:
        log.debug("kafka source '%s': client error %s", self.name, kafka_error_text(err))

    # -- polling ----------------------------------------------------------------------------------
    def poll(self) -> EventBatch | None:
        if self._pending is not None:
            return self._pending
        from confluent_kafka import KafkaError

        started = time.monotonic()
        deadline = started + self.batch_duration_s
        records = []
        while len(records) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and records:
                break
            got = self._consumer.consume(num_messages=self.batch_size - len(records),
                                         timeout=max(0.0, remaining))
            for m in got:
                err = m.error()
                if err is None:
                    records.append(m)
                elif err.code() != KafkaError._PARTITION_EOF:
                    self.context.count("EventReadFail")
                    log.warning("kafka source '%s': %s", self.name, kafka_error_text(err))
            if remaining <= 0:
                break
        self.context.count("KafkaEventGetTimer", int((time.monotonic() - started) * 1000))
        if not records:
            self.context.count("KafkaEmptyCount")
            return None
        offsets: dict[tuple[str, int], int] = {}
        for m in records:
            tp = (m.topic(), m.partition())
            off = m.offset() + 1
            if off > offsets.get(tp, -1):
                offsets[tp] = off
        self._pending_offsets = offsets
        if self.parse_as_flume_event:
            self._pending = self._flume_events(records)
        else:
            self._pending = messages_to_batch(records, meta=True, topic_header=self.topic_header,
                                              copy_headers=self.copy_kafka_headers)
        return self._pending

    def _flume_events(self, records: list) -> EventBatch:
        batch, failed = flume_messages_to_batch(records, meta=True, topic_header=self.topic_header,
                                                copy_headers=self.copy_kafka_headers)
        if failed:
            self.context.count("EventDecodeFailCount", failed)
            reasons = batch.header(DECODE_ERROR_HEADER).to_pylist()
            first = next(i for i, reason in enumerate(reasons) if reason is not None)
            m = records[first]
            log.warning("kafka source '%s': %d of %d records are not Avro-encoded Flume events (first: %s[%d]@%d: "
                        "%s); delivered with their raw value as body and header '%s'. If the topic holds raw "
                        "bodies, set parse_as_flume_event: false", self.name, failed, len(records), m.topic(),
                        m.partition(), m.offset(), reasons[first], DECODE_ERROR_HEADER)
        return batch

    def ack(self) -> None:
        if self._pending is None:
            return
        offsets, self._pending_offsets = self._pending_offsets, {}
        self._pending = None
        # A partition revoked since the poll has already been dropped from `offsets`.
        owned = [(tp, off) for tp, off in offsets.items() if tp in self._assigned]
        if not owned:
            return
        from confluent_kafka import KafkaException, TopicPartition

        started = time.monotonic()
        try:
            result = self._consumer.commit(offsets=[TopicPartition(t, p, off) for (t, p), off in owned],
                                           asynchronous=False)
            failed = [tp for tp in (result or []) if tp.error is not None]
            if failed:
                raise KafkaException(failed[0].error)
        except KafkaException as exc:
            # The records are in the channels already. Their offsets will be committed with the
            # next batch of the same partition, or they are read again (duplicates, no loss).
            self.context.count("KafkaCommitFailCount")
            log.warning("kafka source '%s': committing offsets failed (%s); those records may be delivered "
                        "again", self.name, exc)
        finally:
            self.context.count("KafkaCommitTimer", int((time.monotonic() - started) * 1000))


@register("source", "kafka")
class KafkaSourceConfig(SourceConfig):
    """``kafka``: consumer-group source, offsets committed after the channels committed."""

    bootstrap_servers: str = Field(min_length=1, description="Kafka brokers, host:port[,host:port...].")
    topics: list[str] | None = Field(None, description="Topics to read.")
    topics_regex: str | None = Field(None, description="Read every topic matching this regex (instead of topics).")
    group_id: str = Field("flume", min_length=1, description="Consumer group (Flume's kafka.consumer.group.id).")
    batch_duration_s: float = Field(1.0, gt=0, description="Longest wait to fill a batch.")
    auto_offset_reset: str = Field("latest", description="Where a group without a committed offset starts: "
                                                         "earliest or latest (Kafka's default).")
    set_topic_header: bool = Field(True, description="Put the record's topic in header `topic_header`.")
    topic_header: str = Field("topic", min_length=1)
    copy_kafka_headers: bool = Field(True, description="Copy the records' Kafka headers into event headers.")
    parse_as_flume_event: bool = Field(
        False, description="Read each record value as one Avro-encoded AvroFlumeEvent (Flume's useFlumeEventFormat "
                           "of its Kafka source): the event gets its headers and body. A record that does not "
                           "decode is kept with its raw value as body and header rayflume.decode_error, and "
                           "counted in EventDecodeFailCount. False: the value is the body.")
    consumer: dict = Field(default_factory=dict, description="librdkafka consumer properties passed through "
                                                             "(Flume's kafka.consumer.*).")

    @field_validator("auto_offset_reset")
    @classmethod
    def _reset(cls, v: str) -> str:
        if v not in ("earliest", "latest"):
            raise ValueError(f"kafka source: `auto_offset_reset` must be earliest or latest, not {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self):
        if bool(self.topics) == bool(self.topics_regex):
            raise ValueError("kafka source: set exactly one of `topics` (a list) and `topics_regex`")
        if self.topics_regex:
            try:
                re.compile(self.topics_regex)
            except re.error as exc:
                raise ValueError(f"kafka source: `topics_regex` is not a valid regex: {exc}") from None
        validate_client_options("kafka source", "consumer", self.consumer, RESERVED_CONSUMER)
        return self

    def check(self) -> list[str]:
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            return ["kafka source: the confluent-kafka package is not installed; pip install confluent-kafka"]
        return []

    def build(self, name: str) -> KafkaSource:
        return KafkaSource(name, self)
