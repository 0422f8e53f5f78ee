"""The ``kafka`` sink: publishes each event as one Kafka record (Flume's ``KafkaSink``).

Delivery: ``write(batch)`` produces every event of the batch, then waits (``flush``) until the
broker acknowledged every record of the batch or ``call_timeout_s`` passed. It returns, and the
runner commits the channel take, only when every delivery report of the batch came back without
an error; otherwise it raises and the take is rolled back and retried later. With the defaults
(``acks=all``, ``enable.idempotence=true``) an acknowledged record is in every in-sync replica, and
librdkafka's own retries inside one producer session neither duplicate nor reorder records. A
batch that is retried after a failure (a timeout, a broker outage, a restarted sink) may have been
partly written before: delivery is **at-least-once**, duplicates possible, nothing acknowledged is
lost.

Records of a failed batch that are still queued in the producer when ``write`` gives up stay
there; the next ``write`` first waits for them (up to ``call_timeout_s``) before producing
anything, so each delivery report is counted against the batch that produced it. By default a
record waits at most ``call_timeout_s`` in the producer (``message.timeout.ms``), so a broker
outage fails batches quickly while the channel keeps the events.

Routing:

* ``topic``: the topic, or a template with ``%{header}`` references computed per event.
* ``allow_topic_override`` (default true): an event's ``topic_header`` header ("topic") wins over
  ``topic``. Beware: the ``kafka`` source sets that header, so a kafka source -> kafka sink
  pipeline writes back to the topic it reads unless this is false (as in Flume).
* ``key_header`` ("key"): that header, when present, is the record's key (so the partition).
* ``partition_id_header`` / ``default_partition_id``: an explicit partition (Flume's keys).
* ``include_headers`` (default false): the event's headers become the record's Kafka headers
  (Flume's sink never writes Kafka headers; its consumers see only the value).

Record value (``use_flume_event_format``, Flume's ``useFlumeEventFormat``):

* false (default): the event's body, as is. Its headers are lost to a reader unless
  ``include_headers`` sends them as Kafka headers.
* true: one Avro-encoded ``AvroFlumeEvent`` (``{headers: map<string>, body: bytes}``, namespace
  ``org.apache.flume.source.avro``, Avro binary encoding, no container header): every header of
  the event and its body, as Flume's Kafka sink writes it. A Flume Kafka source with
  ``useFlumeEventFormat = true`` or a Flume Kafka channel with ``parseAsFlumeEvent = true`` (its
  default) reads the event back whole; so do the rayflume ``kafka`` source and channel with
  ``parse_as_flume_event``. All headers are encoded, ``topic`` and ``key`` included, as Flume does;
  a header whose value is null is sent as an empty string (Avro's map has no null). Routing
  (topic, key, partition) is unchanged. The batch is encoded column-wise
  (:func:`rayflume.flume_avro.encode_events`), about 0.5 us an event without headers and 1 us
  with three; ``scripts/bench_kafka.py --flume-event-format`` measures the sink with it.

``producer`` passes librdkafka properties through (Flume's ``kafka.producer.*``), e.g.
``{compression.type: lz4, linger.ms: 20}``.

Called from one thread at a time (see :class:`~rayflume.sinks.base.Sink`).
"""
from __future__ import annotations

import logging
import time

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from rayflume._private.kafka_common import (
    RESERVED_PRODUCER,
    check_producer_overrides,
    constant_or_list,
    event_header_lists,
    flume_event_values,
    kafka_error_text,
    producer_config,
    render_template,
    validate_client_options,
)
from rayflume.config_base import SinkConfig
from rayflume.errors import DeliveryError, RayflumeError
from rayflume.event import EventBatch
from rayflume.registry import register
from rayflume.sinks.base import Sink, SinkContext

log = logging.getLogger("rayflume.sink.kafka")


def _transient_codes() -> frozenset:
    from confluent_kafka import KafkaError

    return frozenset({KafkaError._MSG_TIMED_OUT, KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT,
                      KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                      KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS,
                      KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND, KafkaError.LEADER_NOT_AVAILABLE,
                      KafkaError.NOT_LEADER_FOR_PARTITION})


# Delivery errors after which the same producer can still succeed; any other one replaces it.
try:
    _TRANSIENT = _transient_codes()
except ImportError:  # confluent-kafka missing here: start() says so on the sink's node
    _TRANSIENT = frozenset()


class KafkaSink(Sink):
    """Produces batches to Kafka; see the module docstring for the guarantees."""

    def __init__(self, name: str, config: KafkaSinkConfig):
        self.name = name
        self.config = config
        self.use_flume_event_format = config.use_flume_event_format
        self.batch_size = config.batch_size
        self.context = SinkContext(name=name)
        self._producer = None
        self._errors: list = []
        self._fatal: str | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, context: SinkContext) -> None:
        super().start(context)
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:  # checked here, on the sink's node, not at validation
            raise RayflumeError(f"kafka sink '{self.name}': the confluent-kafka package is not installed on this "
                                f"node; pip install confluent-kafka on every node that runs this sink (or add it "
                                f"to the cluster's runtime_env)") from None
        self._producer = self._new_producer()

    def _new_producer(self):
        from confluent_kafka import Producer

        timeout_ms = max(1000, int(self.config.call_timeout_s * 1000))
        conf = producer_config(self.config.bootstrap_servers, self.config.producer, message_timeout_ms=timeout_ms)
        # Only failed records call back into Python: a successful batch costs no per-record callback.
        conf["delivery.report.only.error"] = True
        conf["on_delivery"] = self._on_error_report
        conf["error_cb"] = self._on_client_error
        self._fatal = None
        producer = Producer(conf)
        self.context.count("ConnectionCreatedCount")
        return producer

    def _on_error_report(self, err, msg) -> None:
        if err is not None:
            self._errors.append(err)

    def _on_client_error(self, err) -> None:
        if err.fatal():
            self._fatal = kafka_error_text(err)
        else:
            log.debug("kafka sink '%s': client error %s", self.name, kafka_error_text(err))

    def stop(self) -> None:
        if self._producer is not None:
            left = self._producer.flush(min(self.config.call_timeout_s, 10.0))
            if left:
                log.warning("kafka sink '%s': %d records still unacknowledged at stop; their batch was "
                            "not committed and will be delivered again", self.name, left)
            self._producer = None
            self.context.count("ConnectionClosedCount")

    # -- delivery ---------------------------------------------------------------------------------
    def write(self, batch: EventBatch) -> None:
        n = len(batch)
        if n == 0:
            return
        if self._producer is None:
            self._producer = self._new_producer()
        started = time.monotonic()
        deadline = started + self.config.call_timeout_s
        self._settle_previous(deadline)
        self._errors.clear()
        values = flume_event_values(batch) if self.use_flume_event_format else batch.body.to_pylist()
        topics, keys, partitions, headers = self._routing(batch)
        try:
            self._produce_all(values, topics, keys, partitions, headers, deadline)
        except DeliveryError:
            raise
        except Exception as exc:  # KafkaException: an event refused before sending, or a broken producer
            err = exc.args[0] if exc.args else None
            fatal = bool(getattr(err, "fatal", lambda: True)())
            self.context.count("KafkaDeliveryErrorCount")
            if fatal:
                self._reset_producer(f"produce failed: {exc}")
            from confluent_kafka import KafkaError

            hint = ""
            if getattr(err, "code", lambda: None)() == KafkaError.MSG_SIZE_TOO_LARGE:
                hint = (": an event is larger than the producer's message.max.bytes and can never be delivered "
                        "as is; raise producer.message.max.bytes (and the topic's max.message.bytes) or drop "
                        "such events with an interceptor")
            raise DeliveryError(f"kafka sink '{self.name}': the producer refused an event of the batch of {n} "
                                f"({kafka_error_text(err) if err is not None else exc}){hint}; the take is rolled "
                                f"back") from exc
        left = self._producer.flush(max(0.0, deadline - time.monotonic()))
        self.context.count("KafkaEventSendTimer", int((time.monotonic() - started) * 1000))
        if left:
            self.context.count("ConnectionFailedCount")
            raise DeliveryError(f"kafka sink '{self.name}': {left} of {n} records not acknowledged within "
                                f"call_timeout_s={self.config.call_timeout_s}s (broker "
                                f"{self.config.bootstrap_servers} down or slow?); the take is rolled back and retried")
        if self._errors:
            first = kafka_error_text(self._errors[0])
            failed = len(self._errors)
            broken = [e for e in self._errors if e.code() not in _TRANSIENT]
            self._errors.clear()
            self.context.count("KafkaDeliveryErrorCount", failed)
            if self._fatal:
                self._reset_producer(self._fatal)
            elif broken:
                # The broker refused the producer's identity or sequence (e.g. PRODUCER_FENCED or
                # UNKNOWN_PRODUCER_ID after the broker restarted): this producer will not recover,
                # a new one (new producer id) will.
                self._reset_producer(kafka_error_text(broken[0]))
            raise DeliveryError(f"kafka sink '{self.name}': {failed} of {n} records failed ({first}); the "
                                f"take is rolled back and retried")
        if self._fatal:
            # Every record of this batch was acknowledged, but the producer cannot go on.
            self._reset_producer(self._fatal)

    def _settle_previous(self, deadline: float) -> None:
        """Wait for records a failed write left in the producer, so reports are not mixed up."""
        if self._fatal:
            self._reset_producer(self._fatal)
            return
        if len(self._producer):
            left = self._producer.flush(max(0.0, deadline - time.monotonic()))
            if left:
                raise DeliveryError(f"kafka sink '{self.name}': {left} records of an earlier failed batch are "
                                    f"still unacknowledged (broker {self.config.bootstrap_servers} unreachable?); "
                                    f"retrying later")

    def _reset_producer(self, why: str) -> None:
        log.warning("kafka sink '%s': recreating the producer (%s)", self.name, why)
        old, self._producer = self._producer, None
        if old is not None:
            try:
                old.purge()
                old.flush(0)
            except Exception:
                pass
        self.context.count("ConnectionClosedCount")
        self._producer = self._new_producer()

    def _routing(self, batch: EventBatch):
        """Per-event topic, key, partition and headers: a constant where all events agree."""
        config = self.config
        topics = render_template(batch, config.topic)
        if config.allow_topic_override:
            override = batch.header(config.topic_header)
            if override.null_count < len(override):
                base = topics if isinstance(topics, pa.Array) else pa.scalar(topics, pa.string())
                topics = pc.coalesce(override, base)
        if isinstance(topics, pa.Array):
            topics = constant_or_list(topics)
        keys = None
        if config.key_header:
            k = batch.header(config.key_header)
            if k.null_count < len(k):
                keys = k.to_pylist()
        partitions = config.default_partition_id
        if config.partition_id_header:
            p = batch.header(config.partition_id_header)
            if p.null_count < len(p):
                try:
                    p = p.cast(pa.int32())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise DeliveryError(f"kafka sink '{self.name}': header '{config.partition_id_header}' must "
                                        f"hold partition numbers: {exc}") from exc
                fallback = -1 if config.default_partition_id is None else config.default_partition_id
                partitions = pc.fill_null(p, fallback).to_pylist()
        headers = event_header_lists(batch) if config.include_headers else None
        return topics, keys, partitions, headers

    def _produce_all(self, values, topics, keys, partitions, headers, deadline: float) -> None:
        producer = self._producer
        produce = producer.produce
        n = len(values)
        simple = isinstance(topics, str) and keys is None and headers is None and not isinstance(partitions, list)
        i = 0
        while i < n:
            try:
                if simple:
                    topic = topics
                    if partitions is None:
                        while i < n:
                            produce(topic, values[i])
                            i += 1
                    else:
                        while i < n:
                            produce(topic, values[i], partition=partitions)
                            i += 1
                else:
                    while i < n:
                        produce(topics if isinstance(topics, str) else topics[i], values[i],
                                None if keys is None else keys[i],
                                partition=(-1 if partitions is None else
                                           partitions if isinstance(partitions, int) else partitions[i]),
                                headers=None if headers is None else headers[i])
                        i += 1
            except BufferError:
                # The producer's local queue is full: serve delivery reports until there is room.
                if time.monotonic() >= deadline:
                    raise DeliveryError(f"kafka sink '{self.name}': the producer queue stayed full for "
                                        f"call_timeout_s={self.config.call_timeout_s}s; the take is rolled back")
                producer.poll(0.005)


@register("sink", "kafka")
class KafkaSinkConfig(SinkConfig):
    """``kafka``: one record per event, committed only once every record of the batch was acknowledged."""

    bootstrap_servers: str = Field(min_length=1, description="Kafka brokers, host:port[,host:port...] "
                                                             "(Flume's kafka.bootstrap.servers).")
    topic: str = Field("default-flume-topic", min_length=1,
                       description="The topic, or a template with %{header} references.")
    allow_topic_override: bool = Field(True, description="An event's `topic_header` header overrides `topic`.")
    topic_header: str = Field("topic", min_length=1, description="The header that names an event's topic.")
    key_header: str | None = Field("key", description="The header used as the record key; None: no key.")
    partition_id_header: str | None = Field(None, description="A header holding the partition number.")
    default_partition_id: int | None = Field(None, ge=0, description="Partition for every record; None: "
                                                                     "the producer's partitioner.")
    include_headers: bool = Field(False, description="Send event headers as Kafka record headers.")
    use_flume_event_format: bool = Field(
        False, description="Write each record value as one Avro-encoded AvroFlumeEvent (headers and body), as "
                           "Flume's useFlumeEventFormat, so that Flume's Kafka source (useFlumeEventFormat) and "
                           "channel (parseAsFlumeEvent) read whole events; false: the value is the raw body.")
    call_timeout_s: float = Field(30.0, gt=0, description="Longest wait for a batch's acknowledgements.")
    producer: dict = Field(default_factory=dict, description="librdkafka producer properties passed through "
                                                             "(Flume's kafka.producer.*).")

    @model_validator(mode="after")
    def _check(self):
        who = "kafka sink"
        validate_client_options(who, "producer", self.producer, RESERVED_PRODUCER)
        check_producer_overrides(who, self.producer)
        if "%{" in self.topic and "}" not in self.topic.split("%{", 1)[1]:
            raise ValueError(f"{who}: `topic` {self.topic!r} has an unclosed %{{...}} reference")
        return self

    def check(self) -> list[str]:
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            return ["kafka sink: the confluent-kafka package is not installed; pip install confluent-kafka"]
        return []

    def build(self, name: str) -> KafkaSink:
        return KafkaSink(name, self)
