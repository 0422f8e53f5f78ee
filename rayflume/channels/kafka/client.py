"""The ``kafka`` channel's Kafka clients: setting up its producer and consumer, and producing a
put's records until every one is acknowledged.

:func:`connect` creates the idempotent producer, the topic (when asked) and a consumer assigned
every partition of the topic (assigned, not subscribed: no group rebalances), each from the
group's committed position (resuming inside a partly committed ``arrow`` record, see
:mod:`.offsets`) or, without one, from ``auto_offset_reset``. :func:`produce` returns only once
Kafka acknowledged every record, and raises ChannelError otherwise: a put that raised is not
committed, and its caller retries it.

``confluent_kafka`` is imported in the calls, not here: the channel checks it is installed on its
node, and modules that only name the channel type never load it.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from rayflume._private.kafka_common import (
    consumer_config,
    ensure_topic,
    kafka_error_text,
    partitions_of,
    producer_config,
)
from rayflume.channels.kafka.offsets import _PartitionState, skip_of
from rayflume.errors import ChannelError


def connect(bootstrap_servers: str, topic: str, group_id: str, producer: dict, consumer: dict,
            auto_offset_reset: str, create_topic: bool, partitions: int, replication_factor: int,
            call_timeout_s: float, poll_timeout_s: float,
            on_error: Callable) -> tuple[object, object, dict[int, _PartitionState]]:
    """``(producer, consumer, {partition: state})``: the clients set up and the consumer assigned
    every partition of ``topic`` at its start position. ``on_error`` gets the clients' errors."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, Producer, TopicPartition

    # The producer first: an idempotent producer needs a while (about 0.5 s with librdkafka)
    # to get its producer id, which then overlaps with the consumer's set-up.
    pconf = producer_config(bootstrap_servers, producer,
                            message_timeout_ms=max(1000, int(call_timeout_s * 1000)), linger_ms=1)
    pconf["error_cb"] = on_error
    kafka_producer = Producer(pconf)
    if create_topic:
        ensure_topic(bootstrap_servers, topic, partitions, replication_factor, call_timeout_s,
                     producer)
    cconf = consumer_config(bootstrap_servers, group_id, auto_offset_reset, consumer)
    cconf.setdefault("fetch.wait.max.ms", 100)
    cconf["error_cb"] = on_error
    kafka_consumer = Consumer(cconf)
    parts = partitions_of(kafka_consumer, topic, call_timeout_s)
    committed = kafka_consumer.committed([TopicPartition(topic, p) for p in parts], timeout=call_timeout_s)
    states: dict[int, _PartitionState] = {}
    assignment = []
    for tp in committed:
        low, high = kafka_consumer.get_watermark_offsets(TopicPartition(topic, tp.partition),
                                                         timeout=call_timeout_s)
        skip = 0
        if tp.offset >= 0:
            start = tp.offset
            skip = skip_of(tp.metadata)
            position = start
        else:
            start = low if auto_offset_reset == "earliest" else high
            position = OFFSET_BEGINNING if auto_offset_reset == "earliest" else OFFSET_END
        state = _PartitionState(start, skip)
        state.high = high
        states[tp.partition] = state
        assignment.append(TopicPartition(topic, tp.partition, position))
    kafka_consumer.assign(assignment)
    # ListOffsets may understate the end of a partition (tansu 0.6 answers the base offset of
    # the last record batch + 1); the high watermark of the first fetch response is right, so
    # wait briefly for it: size() and take() then know how much is unread from the start.
    deadline = time.monotonic() + poll_timeout_s
    while time.monotonic() < deadline:
        known = [kafka_consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1]
                 for p in states]
        if all(h >= 0 for h in known):
            break
        time.sleep(0.01)
    return kafka_producer, kafka_consumer, states


def produce(producer, records: list[tuple], events: int, nbytes: int, channel: str, topic: str,
            bootstrap_servers: str, call_timeout_s: float) -> list[tuple[int, int, int, int]]:
    """Produce ``records`` (``(value, key, headers)``) and wait for every acknowledgement;
    ``[(partition, offset, events, bytes)]``, each record counted as ``events`` events of
    ``nbytes`` bytes."""
    from confluent_kafka import KafkaException

    done = threading.Event()
    reports: list = []
    errors: list = []
    expected = len(records)

    def on_delivery(err, msg):
        # Callbacks may run in any thread that polls the producer: list appends are atomic.
        if err is not None:
            errors.append(err)
        else:
            reports.append((msg.partition(), msg.offset(), events, nbytes))
        if len(reports) + len(errors) >= expected:
            done.set()

    deadline = time.monotonic() + call_timeout_s
    try:
        for value, record_key, hdrs in records:
            while True:
                try:
                    producer.produce(topic, value, record_key, on_delivery=on_delivery, headers=hdrs)
                    break
                except BufferError:
                    if time.monotonic() >= deadline:
                        raise ChannelError(f"channel '{channel}': the Kafka producer queue stayed full "
                                           f"for {call_timeout_s}s")
                    producer.poll(0.005)
        while not done.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChannelError(
                    f"channel '{channel}': Kafka did not acknowledge the put within call_timeout_s="
                    f"{call_timeout_s}s (broker {bootstrap_servers} down?); retry it")
            producer.poll(min(remaining, 0.05))
    except KafkaException as exc:
        raise ChannelError(f"channel '{channel}': producing to topic '{topic}' failed: {exc}") from exc
    if errors:
        raise ChannelError(f"channel '{channel}': {len(errors)} of {expected} Kafka records failed "
                           f"({kafka_error_text(errors[0])}); the put is not committed, retry it")
    return reports
