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

Layout: :mod:`.channel` holds the runtime channel, :mod:`.config` its properties (importing
this package registers the type), :mod:`.wire` the record formats both ways, :mod:`.offsets` the
per-partition bookkeeping of what was read and committed, :mod:`.client` the Kafka clients' set-up
and the acknowledged produce.

Thread-safe: the channel actor calls it from several threads.
"""
from rayflume.channels.kafka.channel import UNBOUNDED, KafkaChannel
from rayflume.channels.kafka.config import KafkaChannelConfig
from rayflume.channels.kafka.offsets import SKIP_PREFIX
from rayflume.channels.kafka.wire import ARROW_FORMAT, EVENTS_HEADER, FORMAT_HEADER, TXN_HEADER

__all__ = ["ARROW_FORMAT", "EVENTS_HEADER", "FORMAT_HEADER", "KafkaChannel", "KafkaChannelConfig", "SKIP_PREFIX",
           "TXN_HEADER", "UNBOUNDED"]
