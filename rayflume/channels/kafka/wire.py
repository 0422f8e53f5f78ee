"""How the ``kafka`` channel's events look as Kafka records, both ways (the formats and when each
is used: :mod:`rayflume.channels.kafka`).

A put becomes records here (:func:`put_records`): one ``arrow`` record for the batch, marked by
its headers, or a record per event (raw body and Kafka headers, or an Avro-encoded Flume event).
A take reads them back here: :func:`arrow_txn` tells an ``arrow`` record (and its put's
transaction id) from any other, which is one event; :func:`run_events` decodes a run of those,
keeping a record that is not a valid Flume event (raw value as body, header
``rayflume.decode_error``) and logging it, never dropping it. Nothing here talks to Kafka or
touches the channel's state: the channel counts, dedupes and leases what these return.
"""
from __future__ import annotations

import logging

from rayflume._private.kafka_common import (
    DECODE_ERROR_HEADER,
    event_header_lists,
    flume_event_values,
    flume_messages_to_batch,
    messages_to_batch,
)
from rayflume.event import EventBatch

log = logging.getLogger("rayflume.channel.kafka")

FORMAT_HEADER = "rayflume.format"
TXN_HEADER = "rayflume.txn"
EVENTS_HEADER = "rayflume.events"
ARROW_FORMAT = b"arrow-ipc"


def put_records(batch: EventBatch, txn_id: str, arrow: bool, flume_format: bool) -> list[tuple]:
    """The ``(value, key, headers)`` of each record a put of ``batch`` produces: one ``arrow``
    record, else one per event (an Avro-encoded Flume event with ``flume_format``)."""
    key = txn_id.encode()
    if arrow:
        return [(batch.to_ipc(), key, [(FORMAT_HEADER, ARROW_FORMAT), (TXN_HEADER, txn_id),
                                       (EVENTS_HEADER, str(len(batch)))])]
    if flume_format:
        # Flume's channel keys each record by the event's `key` header (and its take turns the
        # record key back into that header); an event without one has no key.
        return list(zip(flume_event_values(batch), batch.header("key").to_pylist(), [None] * len(batch)))
    headers = event_header_lists(batch)
    return [(body, key, hdrs) for body, hdrs in zip(batch.body.to_pylist(), headers)]


def arrow_txn(headers: list | None) -> tuple[bool, str | None]:
    """Whether a record with these Kafka headers is an ``arrow`` record, and its put's
    transaction id (None: not one, or it has none)."""
    marker = None
    for k, v in headers or ():
        if k == FORMAT_HEADER:
            marker = v
            break
    if marker != ARROW_FORMAT:
        return False, None
    txn = next((v for k, v in headers or () if k == TXN_HEADER), None)
    return True, txn.decode() if isinstance(txn, bytes) else txn


def run_events(run: list, parse_as_flume_event: bool, channel: str, topic: str) -> tuple[EventBatch, int]:
    """The events of a run of records without the arrow marker (one each), and how many of them
    did not decode as Flume events (with ``parse_as_flume_event``; kept raw, and logged)."""
    if not parse_as_flume_event:
        return messages_to_batch(run, meta=False, copy_headers=True), 0
    batch, failed = flume_messages_to_batch(run, meta=False, topic_header=None, copy_headers=True)
    if failed:
        reasons = batch.header(DECODE_ERROR_HEADER).to_pylist()
        first = next(i for i, r in enumerate(reasons) if r is not None)
        log.warning("kafka channel '%s': %d of %d records are not Avro-encoded Flume events (first: %s[%d]@%d: "
                    "%s); delivered with their raw value as body and header '%s'. If producers write raw "
                    "bodies to this topic, set parse_as_flume_event: false", channel, failed, len(run),
                    topic, run[first].partition(), run[first].offset(), reasons[first], DECODE_ERROR_HEADER)
    return batch, failed
