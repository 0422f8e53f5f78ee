"""The ``kafka`` channel: a Kafka topic is the channel's storage (Flume's Kafka channel).

A put produces to the topic and returns once the broker acknowledged it (``acks=all``, idempotent
producer); a take reads from the topic and leases what it read; a commit commits the consumer
group's offsets; a rollback returns the leased events to the head. Because the data lives in
Kafka, the channel survives the loss of its actor and its node, and either side may be another
program: a topology may have no source writing to the channel (other producers fill the topic)
or no sink draining it (other consumers read the topic), so ``needs_sink`` is False.

Record format (``format``):

* ``arrow`` (default): one Kafka record per put, the batch as Arrow IPC, with record headers
  ``rayflume.format: arrow-ipc``, ``rayflume.txn`` (the put's transaction id) and
  ``rayflume.events``. A put is atomic (one record) and cheap; event headers are kept exactly.
  Other programs reading the topic need Arrow (``EventBatch.from_ipc``).
* ``events``: one record per event, body as the value and the event's headers as Kafka headers,
  like Flume's ``parseAsFlumeEvent: false`` but keeping headers. Readable by any Kafka client. A
  put that fails half way may have written a prefix of its events (retried: duplicates).

A take accepts both formats whatever ``format`` says: a record without the ``arrow-ipc`` marker
is one event (value as body, Kafka headers as headers; with ``parse_as_flume_event`` a Flume
event, below), so records from any producer drain. Records a Flume agent writes with
``parseAsFlumeEvent: false`` (or Flume's Kafka sink without ``useFlumeEventFormat``) are raw
bodies: read them without ``parse_as_flume_event``.

Sharing the topic with Flume (a Flume agent's Kafka channel, sink or source on the same topic,
e.g. during a migration). Flume's Kafka channel reads and writes with one switch,
``parseAsFlumeEvent`` (default true): each record value is one Avro-encoded ``AvroFlumeEvent``
(headers and body; false: the raw body, headers lost, and a take gives the body with no
headers). Here the two directions are separate keys:

* ``parse_as_flume_event`` (take side; default: the value of ``use_flume_event_format``): a
  record without the ``arrow-ipc`` marker is decoded as one ``AvroFlumeEvent``: the event gets its
  headers and body; the record key, when there is one, becomes header ``key`` (as in Flume's
  channel, whose put keys each record by that header); Kafka headers are added where no header
  has their name. Records of this channel's own ``arrow`` puts are still recognised by their
  marker, so ``format: arrow`` with ``parse_as_flume_event: true`` drains a topic that Flume
  agents fill while keeping rayflume's own cheap format for its own puts (only rayflume reads
  those). A record that does not decode (a raw body from a producer without the Flume format, a
  tombstone, corrupt bytes) is delivered, not dropped: raw value as body, Kafka headers as
  headers, plus header ``rayflume.decode_error`` with the reason; it is counted in
  ``EventDecodeFailCount`` and logged with its offset. (An unreadable ``arrow`` record is a broken
  batch of several events with no usable body; it is skipped and counted in
  ``EventTakeErrorCount``, as before. An undecodable Flume record is one event whose value is most
  likely a raw body, so delivering it loses nothing; Flume's own channel throws on it, logs
  "Ensure the setting for parseAsFlumeEvent is correct", and does not deliver it.)
* ``use_flume_event_format`` (put side): each event is written as one record whose value is the
  Avro-encoded ``AvroFlumeEvent`` (every header and the body) and whose key is the event's
  ``key`` header (none without it), exactly what Flume's Kafka channel writes with
  ``parseAsFlumeEvent: true``, so a Flume agent's Kafka channel or its Kafka source with
  ``useFlumeEventFormat`` can take them. It replaces ``format`` (set one of the two) and needs the
  take side to parse what it wrote, so ``parse_as_flume_event`` may not be false. Guarantees are
  those of ``events``: a failed put may have written a prefix of its events (retried: duplicates),
  no transaction id survives a restart, and on a topic with several partitions the events of one
  put spread by key. A header with a null value is written with an empty value (Avro's map has no
  null). Header values stay strings; a Flume reader sees the same map.

How the contract maps onto Kafka:

* ``put`` is idempotent per ``txn_id`` while the channel actor lives (a window of recent ids).
  Across a restart of the channel, a retried ``arrow`` put still in the backlog is recognised at
  take time by its ``rayflume.txn`` header and skipped (``DuplicatePutCount``).
* ``take`` consumes every partition of the topic (assigned, not subscribed: no group rebalances;
  two channels with the same topic and group would both read everything) and leases up to
  ``max_events``; a large ``arrow`` record can be split across takes.
  When the channel knows there is data in the topic it has not read yet, a take waits up to
  ``poll_timeout_s`` for it even if the caller's ``timeout_s`` is shorter.
* ``commit`` commits offsets in Kafka up to the first event not yet committed: Kafka offsets are
  a prefix, so a lease committed out of order is remembered and covered when the earlier ones
  commit. A partly committed ``arrow`` record is committed with its offset and the number of its
  events already done in the offset metadata (``rayflume.skip=N``), so a restarted channel
  resumes inside the record. A broker that does not keep offset metadata (tansu 0.6 drops it)
  makes a restarted channel deliver such a record again whole (duplicates, never loss).
* ``rollback`` (and lease expiry, ``release``) returns the events to the head of the channel from
  memory; a restarted channel starts from the committed offsets, which is the same as seeking
  back: every event not committed is delivered again. **At-least-once**; FIFO per partition (use
  one partition, the default when the channel creates the topic, for a FIFO channel).
* ``size()`` counts events read and not committed, events this channel put and has not read
  yet, and records other producers added that it has not read yet (one event each: exact for
  ``events`` records, an estimate for another producer's ``arrow`` records).
* Capacity: unbounded by default (Kafka's retention is the bound). With ``capacity`` set, a put
  is refused with ChannelFull when ``size()`` would exceed it. ``byte_capacity`` is not supported.

Thread-safe: the channel actor calls it from several threads.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from rayflume._private.kafka_common import (
    DECODE_ERROR_HEADER,
    RESERVED_CONSUMER,
    RESERVED_PRODUCER,
    check_producer_overrides,
    consumer_config,
    ensure_topic,
    event_header_lists,
    flume_event_values,
    flume_messages_to_batch,
    kafka_error_text,
    messages_to_batch,
    partitions_of,
    producer_config,
    validate_client_options,
)
from rayflume.channels.base import IdWindow, now
from rayflume.channels.leases import LeasedChannel, LeaseTable
from rayflume.config_base import ChannelConfig
from rayflume.errors import ChannelError
from rayflume.event import EventBatch
from rayflume.registry import register

log = logging.getLogger("rayflume.channel.kafka")

FORMAT_HEADER = "rayflume.format"
TXN_HEADER = "rayflume.txn"
EVENTS_HEADER = "rayflume.events"
ARROW_FORMAT = b"arrow-ipc"
SKIP_PREFIX = "rayflume.skip="
UNBOUNDED = 2**63 - 1


@dataclass(eq=False)
class _Record:
    """Events read from one partition and not all committed yet.

    An ``arrow`` record is one Kafka record (``offsets`` None): its commit position is ``offset``
    plus, when partly done, the count of its done events. A run of single-event records has
    ``offsets`` (one per event): committing its first ``j`` events moves the position to
    ``offsets[j]``.
    """

    partition: int
    offset: int          # offset of the first Kafka record
    end: int             # offset after the last Kafka record
    events: int
    skip: int = 0        # events of an arrow record done before this channel read it
    offsets: list | None = None
    done: list = field(default_factory=list)  # committed [start, stop) event ranges, merged

    def uncommitted(self) -> int:
        return self.events - sum(b - a for a, b in self.done)

    def mark_done(self, start: int, stop: int) -> None:
        ranges = sorted(self.done + [[start, stop]])
        merged: list = []
        for a, b in ranges:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.done = merged

    def prefix_done(self) -> int:
        return self.done[0][1] if self.done and self.done[0][0] == 0 else 0


@dataclass(eq=False)
class _Piece:
    """A slice of a record's events, waiting at the head or held by a lease."""

    record: _Record
    start: int           # index of the first event within the record
    batch: EventBatch


@dataclass
class _Lease:
    lease_id: str
    holder: str
    pieces: list
    expires_at: float
    events: int
    committing: bool = False  # never: a commit settles the lease at once, under the lock


class _PartitionState:
    def __init__(self, start: int, skip: int):
        self.start = start
        self.next_offset = start          # offset after the last record read
        self.first_skip = skip            # events of the record at `start` done before a restart
        self.records: deque[_Record] = deque()
        self.own: deque[tuple[int, int, int]] = deque()  # (offset, events, bytes) put, not read yet
        self.committed = (start, skip)    # position last committed to Kafka
        self.last_end = start             # offset after the last record that reached `records`
        self.high = start                 # the partition's end offset when last asked


class KafkaChannel(LeasedChannel):
    """A channel stored in a Kafka topic; see the module docstring."""

    _leases: LeaseTable[_Lease]

    def __init__(self, name: str, bootstrap_servers: str, topic: str = "flume-channel", group_id: str = "flume",
                 format: str = "arrow", capacity: int | None = None, transaction_capacity: int = 10_000,
                 lease_timeout_s: float = 60.0, auto_offset_reset: str = "earliest", poll_timeout_s: float = 0.5,
                 call_timeout_s: float = 30.0, create_topic: bool = True, partitions: int = 1,
                 replication_factor: int = -1, producer: dict | None = None, consumer: dict | None = None,
                 use_flume_event_format: bool = False, parse_as_flume_event: bool | None = None):
        super().__init__(name, capacity or UNBOUNDED, transaction_capacity, None, lease_timeout_s)
        if parse_as_flume_event is None:
            parse_as_flume_event = use_flume_event_format
        if use_flume_event_format and not parse_as_flume_event:
            raise ValueError(f"channel '{name}': use_flume_event_format writes Flume events that this channel must "
                             f"read back; leave parse_as_flume_event unset or set it to true")
        self.bounded = capacity is not None
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.group_id = group_id
        self.format = format
        self.use_flume_event_format = use_flume_event_format
        self.parse_as_flume_event = parse_as_flume_event
        self.poll_timeout_s = poll_timeout_s
        self.call_timeout_s = call_timeout_s
        self._fetch_lock = threading.Lock()
        self._committed_txns = IdWindow()
        self._seen_txns = IdWindow()
        self._ready: deque[_Piece] = deque()
        self._held_events = 0             # read and not committed (ready + leased)
        self._ready_events = 0
        self._held_bytes = 0
        self._closed = False
        self._commit_dirty = False
        self._avg_events = 0
        self._parts: dict[int, _PartitionState] = {}
        self.counters.extra.update(KafkaCommitFailCount=0, KafkaEventSendTimer=0, KafkaEventGetTimer=0,
                                   KafkaCommitTimer=0)
        if parse_as_flume_event:
            self.counters.extra["EventDecodeFailCount"] = 0

        try:
            import confluent_kafka  # noqa: F401
        except ImportError:  # checked here, on the channel's node, not at validation
            raise ChannelError(f"channel '{name}': the confluent-kafka package is not installed on this node; pip "
                               f"install confluent-kafka on every node that runs this channel (or add it to the "
                               f"cluster's runtime_env)") from None
        try:
            self._connect(producer or {}, consumer or {}, auto_offset_reset, create_topic, partitions,
                          replication_factor)
        except ChannelError:
            raise
        except Exception as exc:  # KafkaException, timeouts: the broker is unreachable or refuses
            raise ChannelError(f"channel '{name}': cannot set up topic '{topic}' on Kafka at {bootstrap_servers} "
                               f"({exc}); check bootstrap_servers and that the broker is up") from exc

    def _connect(self, producer: dict, consumer: dict, auto_offset_reset: str, create_topic: bool,
                 partitions: int, replication_factor: int) -> None:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, Producer, TopicPartition

        bootstrap_servers, topic, call_timeout_s = self.bootstrap_servers, self.topic, self.call_timeout_s
        poll_timeout_s, group_id = self.poll_timeout_s, self.group_id
        # The producer first: an idempotent producer needs a while (about 0.5 s with librdkafka)
        # to get its producer id, which then overlaps with the consumer's set-up.
        pconf = producer_config(bootstrap_servers, producer,
                                message_timeout_ms=max(1000, int(call_timeout_s * 1000)), linger_ms=1)
        pconf["error_cb"] = self._on_client_error
        self._producer = Producer(pconf)
        if create_topic:
            ensure_topic(bootstrap_servers, topic, partitions, replication_factor, call_timeout_s,
                         producer)
        cconf = consumer_config(bootstrap_servers, group_id, auto_offset_reset, consumer)
        cconf.setdefault("fetch.wait.max.ms", 100)
        cconf["error_cb"] = self._on_client_error
        self._consumer = Consumer(cconf)
        parts = partitions_of(self._consumer, topic, call_timeout_s)
        committed = self._consumer.committed([TopicPartition(topic, p) for p in parts], timeout=call_timeout_s)
        assignment = []
        for tp in committed:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, tp.partition),
                                                             timeout=call_timeout_s)
            skip = 0
            if tp.offset >= 0:
                start = tp.offset
                meta = tp.metadata or ""
                if meta.startswith(SKIP_PREFIX):
                    try:
                        skip = int(meta[len(SKIP_PREFIX):])
                    except ValueError:
                        skip = 0
                position = start
            else:
                start = low if auto_offset_reset == "earliest" else high
                position = OFFSET_BEGINNING if auto_offset_reset == "earliest" else OFFSET_END
            state = _PartitionState(start, skip)
            state.high = high
            self._parts[tp.partition] = state
            assignment.append(TopicPartition(topic, tp.partition, position))
        self._consumer.assign(assignment)
        # ListOffsets may understate the end of a partition (tansu 0.6 answers the base offset of
        # the last record batch + 1); the high watermark of the first fetch response is right, so
        # wait briefly for it: size() and take() then know how much is unread from the start.
        deadline = time.monotonic() + poll_timeout_s
        while time.monotonic() < deadline:
            known = [self._consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1]
                     for p in self._parts]
            if all(h >= 0 for h in known):
                break
            time.sleep(0.01)

    def _on_client_error(self, err) -> None:
        log.debug("kafka channel '%s': client error %s", self.name, kafka_error_text(err))

    # -- put ----------------------------------------------------------------------------------------
    def put(self, batch: EventBatch, txn_id: str) -> None:
        n = len(batch)
        with self._lock:
            if self._closed:
                raise ChannelError(f"channel '{self.name}' is closed")
            self.counters.EventPutAttemptCount += n
            if txn_id in self._committed_txns:
                self.counters.DuplicatePutCount += n
                return
            try:
                self._check_put_size(batch)
                if self.bounded:
                    self._check_room(batch)
            except Exception:
                self.counters.EventPutErrorCount += n
                raise
        if n == 0:
            with self._lock:
                self._committed_txns.add(txn_id)
            return
        started = time.monotonic()
        try:
            delivered = self._produce(batch, txn_id)
        except Exception:
            with self._lock:
                self.counters.EventPutErrorCount += n
            raise
        with self._lock:
            for partition, offset, events, nbytes in delivered:
                state = self._parts.get(partition)
                if state is not None and offset >= state.next_offset:
                    state.own.append((offset, events, nbytes))
            self._committed_txns.add(txn_id)
            self.counters.EventPutSuccessCount += n
            self.counters.extra["KafkaEventSendTimer"] += int((time.monotonic() - started) * 1000)
            self._not_empty.notify_all()

    def _produce(self, batch: EventBatch, txn_id: str) -> list[tuple[int, int, int, int]]:
        """Produce the batch and wait for every acknowledgement; [(partition, offset, events, bytes)]."""
        from confluent_kafka import KafkaException

        key = txn_id.encode()
        done = threading.Event()
        reports: list = []
        errors: list = []
        if self.format == "arrow" and not self.use_flume_event_format:
            expected = 1
            payload = batch.to_ipc()
            sizes = [len(batch)]

            def on_delivery(err, msg):
                if err is not None:
                    errors.append(err)
                else:
                    reports.append((msg.partition(), msg.offset(), sizes[0], batch.nbytes))
                done.set()

            records = [(payload, key, [(FORMAT_HEADER, ARROW_FORMAT), (TXN_HEADER, txn_id),
                                       (EVENTS_HEADER, str(len(batch)))])]
        else:  # a record per event
            expected = len(batch)
            per_event = max(1, batch.nbytes // max(1, len(batch)))
            if self.use_flume_event_format:
                # Flume's channel keys each record by the event's `key` header (and its take turns
                # the record key back into that header); an event without one has no key.
                records = list(zip(flume_event_values(batch), batch.header("key").to_pylist(), [None] * expected))
            else:
                headers = event_header_lists(batch)
                records = [(body, key, hdrs) for body, hdrs in zip(batch.body.to_pylist(), headers)]

            def on_delivery(err, msg):
                # Callbacks may run in any thread that polls the producer: list appends are atomic.
                if err is not None:
                    errors.append(err)
                else:
                    reports.append((msg.partition(), msg.offset(), 1, per_event))
                if len(reports) + len(errors) >= expected:
                    done.set()

        deadline = time.monotonic() + self.call_timeout_s
        try:
            for value, record_key, hdrs in records:
                while True:
                    try:
                        self._producer.produce(self.topic, value, record_key, on_delivery=on_delivery, headers=hdrs)
                        break
                    except BufferError:
                        if time.monotonic() >= deadline:
                            raise ChannelError(f"channel '{self.name}': the Kafka producer queue stayed full "
                                               f"for {self.call_timeout_s}s")
                        self._producer.poll(0.005)
            while not done.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChannelError(
                        f"channel '{self.name}': Kafka did not acknowledge the put within call_timeout_s="
                        f"{self.call_timeout_s}s (broker {self.bootstrap_servers} down?); retry it")
                self._producer.poll(min(remaining, 0.05))
        except KafkaException as exc:
            raise ChannelError(f"channel '{self.name}': producing to topic '{self.topic}' failed: {exc}") from exc
        if errors:
            raise ChannelError(f"channel '{self.name}': {len(errors)} of {expected} Kafka records failed "
                               f"({kafka_error_text(errors[0])}); the put is not committed, retry it")
        return reports

    # -- take ---------------------------------------------------------------------------------------
    def take(self, max_events: int, holder: str = "", timeout_s: float = 0.0):
        # Not the lease table's take-and-wait loop: events arrive by reading the broker, outside the
        # channel lock (a fetch waits up to 0.1 s), not by a put notifying; and while the topic holds
        # events not read yet a take waits for a full batch, up to poll_timeout_s. Leases are the
        # table's all the same (_lease hands out what _lease_head found).
        self._check_take_size(max_events)
        if max_events <= 0:
            return None
        start = now()
        deadline = start + timeout_s
        with self._lock:
            self.expire_leases()
            self.counters.EventTakeAttemptCount += 1
        while True:
            with self._lock:
                ready = self._ready_events
                unread = self._unread_estimate()
                if ready >= max_events or (ready and not unread):
                    return self._lease(max_events, holder)
                # Events known to be in the topic and not read yet are worth poll_timeout_s.
                limit = max(deadline, start + self.poll_timeout_s) if unread else deadline
                if now() >= limit:
                    return self._lease(max_events, holder) if ready else None
            self._fetch(max_events - ready, max(0.0, min(limit - now(), 0.1)))

    def _fetch(self, wanted: int, wait_s: float) -> None:
        """Read records into the head queue; waits up to ``wait_s`` for the first one."""
        if not self._fetch_lock.acquire(timeout=max(wait_s, 0.001)):
            return
        try:
            with self._lock:
                if self._closed:
                    return
                per_record = self._events_per_record()
            started = time.monotonic()
            want = max(1, min(wanted // per_record, 10_000))
            msgs = self._consumer.consume(num_messages=want, timeout=0)
            if not msgs and wait_s > 0:
                msgs = self._consumer.consume(num_messages=1, timeout=wait_s)
                if msgs and want > 1:
                    msgs += self._consumer.consume(num_messages=want - 1, timeout=0)
            if msgs:
                self._ingest(msgs)
                with self._lock:
                    self.counters.extra["KafkaEventGetTimer"] += int((time.monotonic() - started) * 1000)
        finally:
            self._fetch_lock.release()

    def _events_per_record(self) -> int:
        # Until a record was read, assume large records: a take must not pull many big ones at once.
        return self._avg_events if self._avg_events else 1000

    def _ingest(self, msgs: list) -> None:
        """Turn consumed records into records and pieces at the tail of the head queue."""
        from confluent_kafka import KafkaError

        pieces: list[_Piece] = []
        run: list = []
        sizes = []

        def flush_run():
            if not run:
                return
            if self.parse_as_flume_event:
                batch = self._flume_events(run)
            else:
                batch = messages_to_batch(run, meta=False, copy_headers=True)
            offs = [m.offset() for m in run]
            rec = _Record(run[0].partition(), offs[0], offs[-1] + 1, len(run), offsets=offs)
            pieces.append(_Piece(rec, 0, batch))
            run.clear()

        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    with self._lock:
                        self.counters.EventTakeErrorCount += 1
                    log.warning("kafka channel '%s': %s", self.name, kafka_error_text(err))
                continue
            headers = m.headers()
            marker = None
            if headers:
                for k, v in headers:
                    if k == FORMAT_HEADER:
                        marker = v
                        break
            if marker != ARROW_FORMAT:
                if run and run[-1].partition() != m.partition():
                    flush_run()
                run.append(m)
                continue
            flush_run()
            txn = next((v for k, v in headers if k == TXN_HEADER), None)
            txn = txn.decode() if isinstance(txn, bytes) else txn
            p, off = m.partition(), m.offset()
            with self._lock:
                duplicate = txn is not None and txn in self._seen_txns
                if txn is not None and not duplicate:
                    self._seen_txns.add(txn)
            if duplicate:
                with self._lock:
                    self.counters.DuplicatePutCount += 1
                pieces.append(_Piece(_Record(p, off, off + 1, 0), 0, EventBatch.empty()))
                continue
            try:
                batch = EventBatch.from_ipc(m.value())
            except Exception as exc:
                with self._lock:
                    self.counters.EventTakeErrorCount += 1
                log.error("kafka channel '%s': record %s[%d]@%d is not a readable Arrow batch (%s); skipped",
                          self.name, self.topic, p, off, exc)
                pieces.append(_Piece(_Record(p, off, off + 1, 0), 0, EventBatch.empty()))
                continue
            sizes.append(len(batch))
            pieces.append(_Piece(_Record(p, off, off + 1, len(batch)), 0, batch))
        flush_run()
        with self._lock:
            if sizes or len(pieces):
                counts = sizes + [1] * sum(p.record.events for p in pieces if p.record.offsets is not None)
                self._avg_events = max(1, sum(counts) // max(1, len(counts)))
            for piece in pieces:
                rec = piece.record
                state = self._parts.get(rec.partition)
                if state is None or rec.offset < state.last_end:
                    continue  # a partition we do not own, or a record read twice
                if state.first_skip and rec.offset == state.start and rec.offsets is None:
                    # Resuming inside a partly committed arrow record.
                    rec.skip = min(state.first_skip, rec.events)
                    rec.mark_done(0, rec.skip)
                    piece = _Piece(rec, rec.skip, piece.batch.slice(rec.skip))
                state.first_skip = 0
                state.next_offset = max(state.next_offset, rec.end)
                state.last_end = rec.end
                while state.own and state.own[0][0] < state.next_offset:
                    state.own.popleft()
                state.records.append(rec)
                if len(piece.batch):
                    self._ready.append(piece)
                    self._ready_events += len(piece.batch)
                    self._held_events += len(piece.batch)
                    self._held_bytes += piece.batch.nbytes
            # Records with nothing to deliver (duplicates, unreadable) may let the offset move on.
            self._advance_offsets()

    def _flume_events(self, run: list) -> EventBatch:
        """Records of a run (no arrow marker) decoded as Flume events; undecodable ones kept raw."""
        batch, failed = flume_messages_to_batch(run, meta=False, topic_header=None, copy_headers=True)
        if failed:
            with self._lock:
                self.counters.extra["EventDecodeFailCount"] += failed
            reasons = batch.header(DECODE_ERROR_HEADER).to_pylist()
            first = next(i for i, r in enumerate(reasons) if r is not None)
            log.warning("kafka channel '%s': %d of %d records are not Avro-encoded Flume events (first: %s[%d]@%d: "
                        "%s); delivered with their raw value as body and header '%s'. If producers write raw "
                        "bodies to this topic, set parse_as_flume_event: false", self.name, failed, len(run),
                        self.topic, run[first].partition(), run[first].offset(), reasons[first],
                        DECODE_ERROR_HEADER)
        return batch

    def _lease(self, max_events: int, holder: str) -> tuple[str, EventBatch] | None:
        got = self._lease_head(max_events, holder)
        return None if got is None else self._leases.hand_out(*got)

    def _lease_head(self, max_events: int, holder: str) -> tuple[_Lease, list[EventBatch]] | None:
        """Lease up to ``max_events`` of the events already read (no fetch); None when none are."""
        taken: list[_Piece] = []
        n = 0
        while self._ready and n < max_events:
            piece = self._ready.popleft()
            room = max_events - n
            if len(piece.batch) > room:
                rest = _Piece(piece.record, piece.start + room, piece.batch.slice(room))
                piece = _Piece(piece.record, piece.start, piece.batch.slice(0, room))
                self._ready.appendleft(rest)
            taken.append(piece)
            n += len(piece.batch)
        if not taken:
            return None
        self._ready_events -= n
        return _Lease(self.new_lease_id(), holder, taken, self._leases.expiry(), n), [p.batch for p in taken]

    # -- settle ---------------------------------------------------------------------------------------
    def _give_back(self, lease: _Lease) -> int:
        for piece in reversed(lease.pieces):
            self._ready.appendleft(piece)
        self._ready_events += lease.events
        return lease.events

    def commit(self, lease_id: str) -> None:
        # The table settles the lease; committing it in Kafka is this channel's: offsets are a
        # prefix per partition, so the records it covers are marked done and the offsets move up
        # to the first event not done yet (a lease committed out of order waits for earlier ones).
        with self._lock:
            lease = self._leases.commit(lease_id)
            if lease is not None:
                for piece in lease.pieces:
                    piece.record.mark_done(piece.start, piece.start + len(piece.batch))
                    self._held_events -= len(piece.batch)
                    self._held_bytes -= piece.batch.nbytes
            if lease is not None or self._commit_dirty:
                self._advance_offsets()

    def _advance_offsets(self) -> None:
        """Commit, per partition, the position of the first event not committed yet."""
        from confluent_kafka import KafkaException, TopicPartition

        moves = []
        for p, state in self._parts.items():
            while state.records and state.records[0].uncommitted() == 0:
                state.records.popleft()
            if state.records:
                head = state.records[0]
                done = head.prefix_done()
                if head.offsets is not None:
                    position = (head.offsets[done], 0)
                else:
                    position = (head.offset, done)
            elif state.first_skip:
                position = state.committed  # the partly committed record at the start is not read yet
            else:
                position = (state.last_end, 0)
            if position != state.committed:
                meta = f"{SKIP_PREFIX}{position[1]}" if position[1] else ""
                moves.append((p, position, TopicPartition(self.topic, p, position[0], meta)))
        if not moves:
            self._commit_dirty = False
            return
        started = time.monotonic()
        try:
            result = self._consumer.commit(offsets=[m[2] for m in moves], asynchronous=False)
            failed = [tp for tp in (result or []) if tp.error is not None]
            if failed:
                raise KafkaException(failed[0].error)
            for p, position, _ in moves:
                self._parts[p].committed = position
            self._commit_dirty = False
        except KafkaException as exc:
            # The events stay committed in the channel; the offsets follow with the next commit
            # (or housekeeping). A restart before that delivers them again.
            self._commit_dirty = True
            self.counters.extra["KafkaCommitFailCount"] += 1
            log.warning("kafka channel '%s': committing offsets failed (%s); retrying later", self.name, exc)
        finally:
            self.counters.extra["KafkaCommitTimer"] += int((time.monotonic() - started) * 1000)

    def expire_leases(self) -> int:
        """Return the events of overdue leases to the head; how many events came back. Also retries
        committing offsets that a failed Kafka commit left behind (the actor calls this
        periodically)."""
        with self._lock:
            n = super().expire_leases()
            if self._commit_dirty:
                self._advance_offsets()
            return n

    # -- sizes --------------------------------------------------------------------------------------
    def _unread_estimate(self) -> int:
        """Events in the topic this channel has not read: its own puts exactly, others' records as one."""
        from confluent_kafka import TopicPartition

        total = 0
        for p, state in self._parts.items():
            own_events = sum(e for _, e, _ in state.own)
            high = state.own[-1][0] + 1 if state.own else 0
            try:
                _, cached_high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            except Exception:
                cached_high = -1
            high = max(high, cached_high, state.high)
            foreign = max(0, high - state.next_offset - len(state.own))
            total += own_events + foreign
        return total

    def size(self) -> int:
        with self._lock:
            return self._held_events + self._unread_estimate()

    def nbytes(self) -> int:
        with self._lock:
            return self._held_bytes + sum(b for s in self._parts.values() for _, _, b in s.own)

    def metrics(self) -> dict:
        out = super().metrics()
        if not self.bounded:
            out["ChannelCapacity"] = 0
            out["ChannelFillPercentage"] = 0.0
        out["KafkaTopic"] = self.topic
        return out

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with self._fetch_lock:
            try:
                self._producer.flush(min(self.call_timeout_s, 5.0))
            except Exception:
                pass
            try:
                # No commit here: what was read and not committed is read again by the next instance.
                self._consumer.close()
            except Exception as exc:
                log.warning("kafka channel '%s': closing the consumer failed: %s", self.name, exc)


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
        return KafkaChannel(name, self.bootstrap_servers, self.topic, self.group_id, self.format, self.capacity,
                            self.transaction_capacity, self.lease_timeout_s, self.auto_offset_reset,
                            self.poll_timeout_s, self.call_timeout_s, self.create_topic, self.partitions,
                            self.replication_factor, self.producer, self.consumer,
                            use_flume_event_format=self.use_flume_event_format,
                            parse_as_flume_event=self.parse_as_flume_event)
