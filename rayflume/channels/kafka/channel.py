"""The ``kafka`` channel's runtime: the channel contract over a Kafka topic (the guarantees and how
each call maps onto Kafka: :mod:`rayflume.channels.kafka`).

A put produces and waits for the broker's acknowledgement (:mod:`.client`); a take reads records
into a queue of pieces at the head, outside the channel lock, and leases from it through the
channel's :class:`~rayflume.channels.leases.LeaseTable`; a commit marks the events of the lease
done and commits the partitions' positions (:mod:`.offsets`), retried by the next commit or by
housekeeping when Kafka refuses. How events look as records is :mod:`.wire`'s.

Thread-safe: the channel actor calls it from several threads.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from rayflume._private.kafka_common import kafka_error_text
from rayflume.channels.base import IdWindow, now
from rayflume.channels.kafka.client import connect, produce
from rayflume.channels.kafka.offsets import _Lease, _PartitionState, _Piece, _Record, skip_metadata
from rayflume.channels.kafka.wire import arrow_txn, put_records, run_events
from rayflume.channels.leases import LeasedChannel, LeaseTable
from rayflume.errors import ChannelError
from rayflume.event import EventBatch

if TYPE_CHECKING:  # the config module builds this class
    from rayflume.channels.kafka.config import KafkaChannelConfig

log = logging.getLogger("rayflume.channel.kafka")

UNBOUNDED = 2**63 - 1


class KafkaChannel(LeasedChannel):
    """A channel stored in a Kafka topic; see :mod:`rayflume.channels.kafka`."""

    _leases: LeaseTable[_Lease]

    def __init__(self, name: str, config: KafkaChannelConfig):
        super().__init__(name, config.capacity or UNBOUNDED, config.transaction_capacity, None,
                         config.lease_timeout_s)
        self.config = config
        self.bounded = config.capacity is not None
        # unset: follows use_flume_event_format (the config refused it with parse_as_flume_event: false)
        self.parse_as_flume_event = (config.use_flume_event_format if config.parse_as_flume_event is None
                                     else config.parse_as_flume_event)
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
        if self.parse_as_flume_event:
            self.counters.extra["EventDecodeFailCount"] = 0

        try:
            import confluent_kafka  # noqa: F401
        except ImportError:  # checked here, on the channel's node, not at validation
            raise ChannelError(f"channel '{name}': the confluent-kafka package is not installed on this node; pip "
                               f"install confluent-kafka on every node that runs this channel (or add it to the "
                               f"cluster's runtime_env)") from None
        try:
            self._producer, self._consumer, self._parts = connect(
                config.bootstrap_servers, config.topic, config.group_id, config.producer, config.consumer,
                config.auto_offset_reset, config.create_topic, config.partitions, config.replication_factor,
                config.call_timeout_s, config.poll_timeout_s, self._on_client_error)
        except ChannelError:
            raise
        except Exception as exc:  # KafkaException, timeouts: the broker is unreachable or refuses
            raise ChannelError(f"channel '{name}': cannot set up topic '{config.topic}' on Kafka at "
                               f"{config.bootstrap_servers} ({exc}); check bootstrap_servers and that the broker is "
                               f"up") from exc

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
                if state is not None:
                    state.put(offset, events, nbytes)
            self._committed_txns.add(txn_id)
            self.counters.EventPutSuccessCount += n
            self.counters.extra["KafkaEventSendTimer"] += int((time.monotonic() - started) * 1000)
            self._not_empty.notify_all()

    def _produce(self, batch: EventBatch, txn_id: str) -> list[tuple[int, int, int, int]]:
        """Produce the batch and wait for every acknowledgement; [(partition, offset, events, bytes)]."""
        config = self.config
        arrow = config.format == "arrow" and not config.use_flume_event_format
        records = put_records(batch, txn_id, arrow, config.use_flume_event_format)
        if arrow:
            events, nbytes = len(batch), batch.nbytes
        else:  # a record per event
            events, nbytes = 1, max(1, batch.nbytes // max(1, len(batch)))
        return produce(self._producer, records, events, nbytes, self.name, config.topic, config.bootstrap_servers,
                       config.call_timeout_s)

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
                limit = max(deadline, start + self.config.poll_timeout_s) if unread else deadline
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
            batch, failed = run_events(run, self.parse_as_flume_event, self.name, self.config.topic)
            if failed:
                with self._lock:
                    self.counters.extra["EventDecodeFailCount"] += failed
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
            arrow, txn = arrow_txn(m.headers())
            if not arrow:
                if run and run[-1].partition() != m.partition():
                    flush_run()
                run.append(m)
                continue
            flush_run()
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
                          self.name, self.config.topic, p, off, exc)
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
                state = self._parts.get(piece.record.partition)
                # None: a partition we do not own, or a record read twice.
                accepted = state.accept(piece) if state is not None else None
                if accepted is not None and len(accepted.batch):
                    self._ready.append(accepted)
                    self._ready_events += len(accepted.batch)
                    self._held_events += len(accepted.batch)
                    self._held_bytes += accepted.batch.nbytes
            # Records with nothing to deliver (duplicates, unreadable) may let the offset move on.
            self._advance_offsets()

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

        moves, topic = [], self.config.topic
        for p, state in self._parts.items():
            position = state.position()
            if position != state.committed:
                moves.append((p, position, TopicPartition(topic, p, position[0], skip_metadata(position[1]))))
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

        total, topic = 0, self.config.topic
        for p, state in self._parts.items():
            try:
                _, cached_high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            except Exception:
                cached_high = -1
            total += state.unread(cached_high)
        return total

    def size(self) -> int:
        with self._lock:
            return self._held_events + self._unread_estimate()

    def nbytes(self) -> int:
        with self._lock:
            return self._held_bytes + sum(s.own_bytes() for s in self._parts.values())

    def metrics(self) -> dict:
        out = super().metrics()
        if not self.bounded:
            out["ChannelCapacity"] = 0
            out["ChannelFillPercentage"] = 0.0
        out["KafkaTopic"] = self.config.topic
        return out

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with self._fetch_lock:
            try:
                self._producer.flush(min(self.config.call_timeout_s, 5.0))
            except Exception:
                pass  # closing: every acknowledged put was flushed before its put returned
            try:
                # No commit here: what was read and not committed is read again by the next instance.
                self._consumer.close()
            except Exception as exc:
                log.warning("kafka channel '%s': closing the consumer failed: %s", self.name, exc)
