"""Flume's Avro event (``AvroFlumeEvent``: a map of string headers and a byte body) in Avro binary
encoding, to and from :class:`~rayflume.event.EventBatch`.

Used wherever rayflume meets Flume's serialised event: the ``avro`` source and sink (Flume's
``AvroSourceProtocol``, whose ``appendBatch`` carries an array of these) and Kafka records
written with ``use_flume_event_format`` / read with ``parse_as_flume_event``, which hold one event
each without an object-container header.

Single events and statuses go through fastavro. Arrays of events (the avro hop's payload, where
speed matters) are encoded column-wise: every length prefix of a batch is computed at once with
numpy and the pieces joined by Arrow's element-wise concatenation, so no Python runs per event; and
decoded by one scan that records where each string and body lies, the bytes then gathered once.
Both produce and accept exactly Avro's binary encoding (blocks with negative counts included): the
tests compare them byte for byte with fastavro and the ``avro`` package's reference reader.

Decoding validates the bytes against the schema: truncated or malformed input raises
:class:`FlumeEventError`, never yields a partial batch.
"""
from __future__ import annotations

import io
import json
from typing import Callable

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayflume.errors import RayflumeError
from rayflume.event import HEADERS_TYPE, EventBatch, binary_array
from rayflume.sources._framing import take_ranges

NAMESPACE = "org.apache.flume.source.avro"

EVENT_SCHEMA = {
    "type": "record", "name": "AvroFlumeEvent", "namespace": NAMESPACE,
    "fields": [{"name": "headers", "type": {"type": "map", "values": "string"}},
               {"name": "body", "type": "bytes"}],
}

# Flume's AvroSourceProtocol (flume-ng-sdk's flume.avdl), the text whose MD5 the IPC handshake
# exchanges. Clients and servers compare protocols by that hash and fall back to sending the
# text, so the exact whitespace does not matter; the names and types do.
PROTOCOL = {
    "protocol": "AvroSourceProtocol", "namespace": NAMESPACE,
    "types": [
        {"type": "enum", "name": "Status", "symbols": ["OK", "FAILED", "UNKNOWN"]},
        EVENT_SCHEMA,
    ],
    "messages": {
        "append": {"request": [{"name": "event", "type": "AvroFlumeEvent"}], "response": "Status"},
        "appendBatch": {"request": [{"name": "events", "type": {"type": "array", "items": "AvroFlumeEvent"}}],
                        "response": "Status"},
    },
}
PROTOCOL_JSON = json.dumps(PROTOCOL)

_EVENT = fastavro.parse_schema(EVENT_SCHEMA)
_STATUS = fastavro.parse_schema({"type": "enum", "name": "Status", "namespace": NAMESPACE,
                                 "symbols": ["OK", "FAILED", "UNKNOWN"]})


_MAX_VARINT = 5  # bytes of a zig-zag varint for lengths and counts below 2**34
_NOTHING = pa.scalar(b"", pa.binary())
_EMPTY_MAP = pa.scalar(b"\x00", pa.binary())


class FlumeEventError(RayflumeError):
    """Bytes that are not a valid Avro-encoded Flume event (or array of events)."""


def _batch(records: list[dict]) -> EventBatch:
    if not records:
        return EventBatch.empty()
    bodies = pa.array([r["body"] for r in records], pa.binary())
    if any(r["headers"] for r in records):
        headers = pa.array([list(r["headers"].items()) for r in records], HEADERS_TYPE)
        return EventBatch.from_bodies(bodies, headers)
    return EventBatch.from_bodies(bodies)


def encode_event_array(batch: EventBatch) -> bytes:
    """``batch`` as one Avro ``array<AvroFlumeEvent>`` (the parameter of ``appendBatch``)."""
    return b"".join(event_array_pieces(batch))


def event_array_pieces(batch: EventBatch) -> list:
    """:func:`encode_event_array` as pieces to write in order (bytes and an Arrow buffer),
    without joining them into one copy."""
    n = len(batch)
    if n == 0:
        return [b"\x00"]
    events = _encoded_events(batch)
    offsets = np.frombuffer(events.buffers()[1], dtype=np.int32, count=n + 1, offset=events.offset * 4)
    data = events.buffers()[2]
    return [_varint_bytes(2 * n), memoryview(data)[int(offsets[0]):int(offsets[-1])], b"\x00"]


def _encoded_events(batch: EventBatch) -> pa.BinaryArray:
    """Each event of ``batch`` in Avro binary encoding, as one binary array (its data contiguous)."""
    body = batch.body
    lengths = _lengths(body)
    return pc.binary_join_element_wise(_encoded_headers(batch.headers), _varints(2 * lengths), body, _NOTHING)


def _encoded_headers(headers: pa.MapArray) -> pa.Array | pa.Scalar:
    n = len(headers)
    map_offsets = np.frombuffer(headers.buffers()[1], dtype=np.int32, count=n + 1, offset=headers.offset * 4)
    if map_offsets[-1] == map_offsets[0]:
        return _EMPTY_MAP  # no event has a header: the same byte for every event
    keys = headers.keys.view(pa.binary())
    values = headers.items.view(pa.binary())
    entries = pc.binary_join_element_wise(_varints(2 * _lengths(keys)), keys, _varints(2 * _lengths(values)),
                                          values, _NOTHING)
    # each event's entries are a contiguous run of ``entries``: their bytes, without copying
    entry_offsets = np.frombuffer(entries.buffers()[1], dtype=np.int32, count=len(entries) + 1,
                                  offset=entries.offset * 4)
    inner = binary_array(entry_offsets[map_offsets], entries.buffers()[2])
    counts = np.diff(map_offsets).astype(np.int64)
    # a map is its entry count, the entries, and a terminating zero count; an empty one only the zero
    prefix = _varints(2 * counts)
    if (counts == 0).any():
        prefix = pc.if_else(pa.array(counts == 0), _NOTHING, prefix)
    return pc.binary_join_element_wise(prefix, inner, _EMPTY_MAP, _NOTHING)


def _lengths(values: pa.Array) -> np.ndarray:
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32, count=len(values) + 1, offset=values.offset * 4)
    return np.diff(offsets).astype(np.int64)


def _varints(values: np.ndarray) -> pa.BinaryArray:
    """Non-negative integers (already zig-zag encoded) as Avro varints, one binary value each."""
    v = values.astype(np.uint64)
    sizes = np.ones(len(v), dtype=np.int64)
    for step in range(1, _MAX_VARINT):
        sizes += v >= (1 << (7 * step))
    table = np.empty((len(v), _MAX_VARINT), dtype=np.uint8)
    for j in range(_MAX_VARINT):
        more = (sizes > j + 1).astype(np.uint8) << 7
        table[:, j] = ((v >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8) | more
    data = table[np.arange(_MAX_VARINT) < sizes[:, None]]
    offsets = np.zeros(len(v) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    return binary_array(offsets, data)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_events(batch: EventBatch) -> list[bytes]:
    """Each event of ``batch`` as one Avro-encoded ``AvroFlumeEvent`` (a Kafka record value)."""
    if not len(batch):
        return []
    return _encoded_events(batch).to_pylist()


def read_event_array(stream: io.BytesIO, reserve: Callable[[int], bool] | None = None) -> EventBatch:
    """Read one ``array<AvroFlumeEvent>`` from ``stream`` (left just after it). ``reserve(n)`` is
    asked before each block of ``n`` events is decoded (decoding holds about 100 bytes per event,
    however small the events: an empty one is 2 bytes on the wire); False refuses the array."""
    batch, end = _scan_event_array(stream.getvalue(), stream.tell(), reserve)
    stream.seek(end)
    return batch


def _scan_event_array(data: bytes, pos: int, reserve: Callable[[int], bool] | None) -> tuple[EventBatch, int]:
    """Decode the array starting at ``data[pos]``: one pass records where every key, value and
    body lies; their bytes are then gathered column by column. Returns the batch and the end.

    The pass is the hot loop of the avro source, hence inlined numbers where they are short
    (headers' lengths below 64, bodies' below 8 KiB) and a map offset written only for events
    that have headers."""
    size = len(data)
    bodies: list[int] = []        # start, end, start, end...
    strings: list[int] = []       # key start, key end, value start, value end...
    with_headers: list[int] = []  # event index, entries up to and including it, ... (events with headers)
    entries = events = 0
    mark, add_string = bodies.append, strings.extend
    try:
        while True:
            count, pos = _long(data, pos)
            if count == 0:
                break
            if count < 0:  # a block with its byte size: the size is not needed to read it
                count = -count
                _, pos = _long(data, pos)
            if reserve is not None and not reserve(count):
                raise FlumeEventError(f"an array of {count} events, more than the memory set aside for "
                                      f"decoding allows")
            for index in range(events, events + count):
                if data[pos] == 0:  # no headers: the common case
                    pos += 1
                else:
                    while True:
                        b = data[pos]
                        pairs, pos = (b >> 1, pos + 1) if b < 0x80 and not b & 1 else _long(data, pos)
                        if pairs == 0:
                            break
                        if pairs < 0:
                            pairs = -pairs
                            _, pos = _long(data, pos)
                        for _ in range(pairs):
                            b = data[pos]
                            key_length, pos = (b >> 1, pos + 1) if b < 0x80 and not b & 1 else _length(data, pos)
                            key = pos
                            pos += key_length
                            b = data[pos]
                            length, pos = (b >> 1, pos + 1) if b < 0x80 and not b & 1 else _length(data, pos)
                            add_string((key, key + key_length, pos, pos + length))
                            pos += length
                        entries += pairs
                    with_headers.append(index)
                    with_headers.append(entries)
                # the body's length: one or two bytes for bodies under 8 KiB, inlined
                b = data[pos]
                if b < 0x80:
                    value, pos = b, pos + 1
                else:
                    c = data[pos + 1]
                    value, pos = ((b & 0x7F) | (c << 7), pos + 2) if c < 0x80 else _raw_varint(data, pos)
                if value & 1:
                    raise FlumeEventError(f"not a valid Avro-encoded Flume event: a negative length "
                                          f"({-(value + 1) >> 1})")
                mark(pos)
                pos += value >> 1
                mark(pos)
            events += count
    except IndexError:
        raise FlumeEventError("not a valid Avro-encoded Flume event: the data ends inside an event") from None
    if pos > size:
        raise FlumeEventError(f"not a valid Avro-encoded Flume event: it claims {pos - size} bytes more than "
                              f"it has")
    buffer = pa.py_buffer(data)
    body = take_ranges(buffer, bodies, 0, 2)
    if not entries:
        return EventBatch.from_bodies(body), pos
    keys, values = take_ranges(buffer, strings, 0, 4), take_ranges(buffer, strings, 2, 4)
    try:
        keys, values = keys.view(pa.string()), values.view(pa.string())
        keys.validate(full=True)
        values.validate(full=True)
    except pa.ArrowInvalid as exc:
        raise FlumeEventError(f"not a valid Avro-encoded Flume event: a header is not UTF-8 ({exc})") from None
    # entries before each event: set after each event with headers, carried over the others
    map_offsets = np.zeros(events + 1, dtype=np.int32)
    marks = np.array(with_headers, dtype=np.int64).reshape(-1, 2)
    map_offsets[marks[:, 0] + 1] = marks[:, 1]
    np.maximum.accumulate(map_offsets, out=map_offsets)
    headers = pa.MapArray.from_arrays(pa.array(map_offsets), keys, values)
    return EventBatch.from_bodies(body, headers), pos


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """The zig-zag varint at ``data[pos]`` and the position after it."""
    raw, pos = _raw_varint(data, pos)
    return (raw >> 1) ^ -(raw & 1), pos


def _raw_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``data[pos]`` before zig-zag decoding, and the position after it."""
    shift = result = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise FlumeEventError("not a valid Avro-encoded Flume event: a number longer than 10 bytes")


def _length(data: bytes, pos: int) -> tuple[int, int]:
    length, pos = _long(data, pos)
    if length < 0:
        raise FlumeEventError(f"not a valid Avro-encoded Flume event: a negative length ({length})")
    return length, pos


def read_event(stream: io.BytesIO) -> EventBatch:
    """Read one ``AvroFlumeEvent`` from ``stream`` as a batch of one event."""
    return _batch([_read(stream, _EVENT)])


def decode_events(values: list[bytes]) -> EventBatch:
    """Kafka record values, each one Avro-encoded ``AvroFlumeEvent``, as one batch."""
    records = []
    for value in values:
        stream = io.BytesIO(value)
        records.append(_read(stream, _EVENT))
        if stream.tell() != len(value):
            raise FlumeEventError(f"{len(value) - stream.tell()} bytes follow the Flume event; the value is "
                                  f"not one Avro-encoded AvroFlumeEvent")
    return _batch(records)


def write_status(stream: io.BytesIO, status: str) -> None:
    fastavro.schemaless_writer(stream, _STATUS, status)


def read_status(stream: io.BytesIO) -> str:
    return _read(stream, _STATUS)


def _read(stream: io.BytesIO, schema):
    try:
        return fastavro.schemaless_reader(stream, schema)
    except (EOFError, ValueError, TypeError, IndexError, UnicodeDecodeError, MemoryError, OverflowError) as exc:
        raise FlumeEventError(f"not a valid Avro-encoded Flume event: {type(exc).__name__}: {exc}") from None
