"""Shared pieces of the Kafka source, channel and sink (confluent-kafka / librdkafka).

* Client option handling: the typed keys of each component become librdkafka properties, and the
  component's passthrough dict (Flume's ``kafka.producer.*`` / ``kafka.consumer.*``) is merged on
  top after validation. Options a component needs to control itself (callbacks, auto commit) are
  refused with a message saying which typed key to use instead.
* Batch conversion, both directions, with as little Python per event as the client allows:
  ``confluent_kafka`` hands out one ``Message`` object per record and takes one ``produce()`` call
  per record, so one attribute read per record and field is the floor; everything after that
  (header maps, topic templates, key columns) is built with Arrow kernels and numpy.
* Flume's event format on Kafka (``useFlumeEventFormat`` / ``parseAsFlumeEvent``): each record
  value one Avro ``AvroFlumeEvent`` (:mod:`rayflume.flume_avro`). :func:`flume_event_values`
  encodes a batch, :func:`flume_messages_to_batch` decodes records; a record that is not a valid
  Flume event is kept (raw value as body, header :data:`DECODE_ERROR_HEADER`), never dropped.
"""
from __future__ import annotations

import io
import re
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayflume.event import HEADERS_TYPE, SCHEMA, EventBatch
from rayflume.flume_avro import FlumeEventError, decode_events, encode_events, read_event_array

# Header of an event whose Kafka record should have held an Avro-encoded Flume event and did not:
# the reason. Its body is then the record's raw value.
DECODE_ERROR_HEADER = "rayflume.decode_error"

# Values librdkafka properties accept from Python.
OptionValue = str | int | float | bool
_TEMPLATE = re.compile(r"%\{([^}]*)\}")

# Client properties a component sets itself; the passthrough dict may not override them.
_RESERVED_COMMON = {
    "bootstrap.servers": "bootstrap_servers",
    "metadata.broker.list": "bootstrap_servers",
    "error_cb": None,
    "throttle_cb": None,
    "stats_cb": None,
    "logger": None,
}
RESERVED_PRODUCER = {**_RESERVED_COMMON, "on_delivery": None, "delivery.report.only.error": None,
                     "dr_cb": None, "dr_msg_cb": None, "transactional.id": None}
RESERVED_CONSUMER = {**_RESERVED_COMMON, "group.id": "group_id", "enable.auto.commit": None,
                     "enable.auto.offset.store": None, "on_commit": None,
                     "auto.offset.reset": "auto_offset_reset"}


def validate_client_options(component: str, key: str, options: dict, reserved: dict) -> dict:
    """Check a passthrough dict of librdkafka properties; returns it with values as given.

    Raises ValueError naming the component, the key and what to do.
    """
    out: dict[str, OptionValue] = {}
    for name, value in (options or {}).items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{component}: `{key}` keys must be librdkafka property names (strings), "
                             f"got {name!r}")
        if name in reserved:
            typed = reserved[name]
            hint = f"set `{typed}` instead" if typed else "rayflume sets it itself; remove it"
            raise ValueError(f"{component}: `{key}.{name}` cannot be set here: {hint}")
        if not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"{component}: `{key}.{name}` must be a string, number or boolean, "
                             f"got {type(value).__name__}")
        out[name] = value
    return out


def option_is(options: dict, name: str, *values: str) -> bool:
    """Whether ``options[name]`` (a librdkafka property, any type) equals one of ``values``."""
    if name not in options:
        return False
    v = options[name]
    text = str(v).lower() if not isinstance(v, bool) else ("true" if v else "false")
    return text in {x.lower() for x in values}


def producer_config(bootstrap_servers: str, overrides: dict, message_timeout_ms: int | None = None,
                    linger_ms: int | None = None) -> dict:
    """librdkafka producer properties: ``acks=all`` and idempotence unless ``overrides`` say
    otherwise, then ``overrides`` (already validated) on top."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, "acks": "all",
                            "enable.idempotence": True}
    if message_timeout_ms is not None:
        conf["message.timeout.ms"] = int(message_timeout_ms)
    if linger_ms is not None:
        conf["linger.ms"] = linger_ms
    conf.update(overrides)
    return conf


def check_producer_overrides(component: str, overrides: dict) -> None:
    """librdkafka refuses an idempotent producer with ``acks`` other than all: say so up front."""
    idempotent = not option_is(overrides, "enable.idempotence", "false", "0")
    for name in ("acks", "request.required.acks"):
        if name in overrides and idempotent and not option_is(overrides, name, "all", "-1"):
            raise ValueError(f"{component}: `producer.{name}`={overrides[name]!r} needs "
                             f"`producer.enable.idempotence: false` (an idempotent producer requires "
                             f"acks=all); acks other than all can lose acknowledged events")


def consumer_config(bootstrap_servers: str, group_id: str, auto_offset_reset: str, overrides: dict) -> dict:
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, "group.id": group_id,
                            "enable.auto.commit": False, "enable.auto.offset.store": False,
                            "auto.offset.reset": auto_offset_reset}
    conf.update(overrides)
    return conf


def kafka_error_text(err) -> str:
    try:
        return f"{err.name()}: {err.str()}"
    except Exception:  # not a KafkaError
        return str(err)


# -- topic templates ----------------------------------------------------------------------------
def render_template(batch: EventBatch, template: str) -> pa.StringArray | str:
    """``template`` with each ``%{header}`` replaced by that header of every event (empty when an
    event lacks it), computed for the whole batch with Arrow kernels. Returns the template itself
    when it has no header reference."""
    parts = _TEMPLATE.split(template)
    if len(parts) == 1:
        return template
    n = len(batch)
    columns: list = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if part:
                columns.append(pa.scalar(part, pa.string()))
        else:
            values = batch.header(part) if n else pa.array([], pa.string())
            columns.append(pc.fill_null(values, ""))
    if not any(isinstance(c, pa.Array) for c in columns):
        return "".join(c.as_py() for c in columns)
    return pc.binary_join_element_wise(*columns, pa.scalar("", pa.string()))


def constant_or_list(values: pa.Array):
    """A Python constant when every value is the same (and not null), else the Python list."""
    if len(values) == 0:
        return []
    if values.null_count == 0:
        first = values[0]
        if pc.all(pc.equal(values, first)).as_py():
            return first.as_py()
    return values.to_pylist()


# -- batch -> Kafka records ---------------------------------------------------------------------------
def event_header_lists(batch: EventBatch) -> list[list[tuple[str, str]] | None]:
    """Each event's headers as a list of ``(key, value)`` pairs (None for an event without any)."""
    headers = batch.headers
    n = len(batch)
    raw = np.asarray(headers.offsets, dtype=np.int64)
    start, end = int(raw[0]), int(raw[-1])
    if end == start:
        return [None] * n
    keys = headers.keys.slice(start, end - start).to_pylist()
    items = pc.fill_null(headers.items.slice(start, end - start), "").to_pylist()
    pairs = list(zip(keys, items))
    bounds = (raw - start).tolist()
    return [pairs[bounds[i]:bounds[i + 1]] or None for i in range(n)]


def flume_event_values(batch: EventBatch) -> list[bytes]:
    """Each event of ``batch`` as one Avro-encoded ``AvroFlumeEvent`` (headers and body), the record
    value Flume's Kafka sink and channel write with ``useFlumeEventFormat`` / ``parseAsFlumeEvent``.

    Flume's headers are a ``map<string>`` and its body ``bytes``, neither of which has a null: a
    header whose value is null is sent with an empty value (as :func:`event_header_lists` does for
    Kafka headers), a null body as an empty one.
    """
    headers = batch.headers
    if len(batch) and headers.items.null_count:  # rare: rebuilt in Python
        filled = [[(k, "" if v is None else v) for k, v in h] if h else [] for h in headers.to_pylist()]
        batch = batch.with_headers(pa.array(filled, HEADERS_TYPE))
    if batch.body.null_count:
        batch = batch.with_body(pc.fill_null(batch.body, b""))
    return encode_events(batch)


# -- Kafka messages -> batch --------------------------------------------------------------------------
def _strings(values: list) -> pa.Array:
    """Header values from Kafka (bytes or None) as an Arrow string array, invalid UTF-8 replaced."""
    arr = pa.array(values, pa.binary())
    try:
        return arr.cast(pa.string())
    except pa.ArrowInvalid:
        return pa.array([None if v is None else v.decode("utf-8", "replace") for v in values], pa.string())


def messages_to_batch(messages: list, meta: bool = True, topic_header: str | None = "topic",
                      copy_headers: bool = True, now_ms: int | None = None) -> EventBatch:
    """One event per Kafka message: the value is the body (a null value gives an empty body).

    With ``meta`` every event gets the headers ``partition``, ``offset``, ``timestamp`` (the
    record's timestamp in ms; the time of reading when the record has none), ``key`` (when the
    record has a key; decoded as UTF-8, invalid bytes replaced) and ``topic_header`` (unless
    None). With ``copy_headers`` the record's Kafka headers follow; one whose name collides with
    a metadata header is dropped, so no event has the same header twice.

    ``messages`` must hold records only (no error messages).
    """
    n = len(messages)
    if n == 0:
        return EventBatch.empty()
    body = pa.array([m.value() for m in messages], pa.binary())
    if body.null_count:
        body = pc.fill_null(body, b"")
    key_cols: list[pa.Array] = []
    val_cols: list[pa.Array] = []
    has_key = np.zeros(n, dtype=bool)
    key_values = None
    if meta:
        if topic_header:
            key_cols.append(topic_header)
            val_cols.append(pa.array([m.topic() for m in messages], pa.string()))
        key_cols.append("partition")
        val_cols.append(pa.array([m.partition() for m in messages], pa.int64()).cast(pa.string()))
        key_cols.append("offset")
        val_cols.append(pa.array([m.offset() for m in messages], pa.int64()).cast(pa.string()))
        stamps = np.array([m.timestamp() for m in messages], dtype=np.int64).reshape(n, 2)
        ts = stamps[:, 1]
        missing = stamps[:, 0] == 0  # TIMESTAMP_NOT_AVAILABLE
        if missing.any():
            ts = np.where(missing, now_ms if now_ms is not None else int(time.time() * 1000), ts)
        key_cols.append("timestamp")
        val_cols.append(pa.array(ts, pa.int64()).cast(pa.string()))
        raw_keys = [m.key() for m in messages]
        has_key = np.fromiter((k is not None for k in raw_keys), dtype=bool, count=n)
        if has_key.any():
            key_values = _strings([k for k in raw_keys if k is not None])
    fixed = len(key_cols)
    fixed_names = set(key_cols) | ({"key"} if meta else set())

    hdr_counts = np.zeros(n, dtype=np.int64)
    hdr_keys: list[str] = []
    hdr_vals: list = []
    if copy_headers:
        for i, m in enumerate(messages):
            hs = m.headers()
            if hs:
                kept = [(k, v) for k, v in hs if k not in fixed_names] if fixed_names else hs
                hdr_counts[i] = len(kept)
                for k, v in kept:
                    hdr_keys.append(k)
                    hdr_vals.append(v)

    lengths = fixed + has_key.astype(np.int64) + hdr_counts
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if total == 0:
        return EventBatch.from_bodies(body)
    # Every entry goes at a computed position of the flat key/value arrays: fixed headers first,
    # then the key, then the record's own headers, in record order.
    source_keys: list[pa.Array] = []
    source_vals: list[pa.Array] = []
    order = np.empty(total, dtype=np.int64)
    starts = offsets[:-1]
    base = 0
    for j in range(fixed):
        order[starts + j] = base + np.arange(n)
        source_keys.append(pa.array(np.full(n, key_cols[j], dtype=object), pa.string()))
        source_vals.append(val_cols[j])
        base += n
    if key_values is not None:
        keyed = np.flatnonzero(has_key)
        order[starts[keyed] + fixed] = base + np.arange(len(keyed))
        source_keys.append(pa.array(np.full(len(keyed), "key", dtype=object), pa.string()))
        source_vals.append(key_values)
        base += len(keyed)
    if hdr_keys:
        h_total = len(hdr_keys)
        event_of = np.repeat(np.arange(n), hdr_counts)
        h_starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(hdr_counts, out=h_starts[1:])
        within = np.arange(h_total) - h_starts[:-1][event_of]
        order[starts[event_of] + fixed + has_key[event_of] + within] = base + np.arange(h_total)
        source_keys.append(pa.array(hdr_keys, pa.string()))
        source_vals.append(_strings(hdr_vals))
    flat_keys = pa.concat_arrays(source_keys).take(pa.array(order))
    flat_vals = pa.concat_arrays(source_vals).take(pa.array(order))
    headers = pa.MapArray.from_arrays(pa.array(offsets.astype(np.int32)), flat_keys, flat_vals)
    return EventBatch(pa.RecordBatch.from_arrays([headers, body], schema=SCHEMA))


def _decode_each(values: list) -> tuple[pa.MapArray, pa.BinaryArray, pa.StringArray, int]:
    """Decode each record value as one ``AvroFlumeEvent``: ``(headers, bodies, errors, failed)``, one
    entry per value. A value that does not decode has no headers, its raw bytes as body and the
    reason in ``errors`` (null for the others); ``failed`` counts them."""
    raw = [b"" if v is None else v for v in values]
    decoded = _decode_all(raw)
    if decoded is not None:
        return decoded.headers, decoded.body, pa.nulls(len(raw), pa.string()), 0
    # At least one is not a Flume event: find which, one at a time (rare, so not fast).
    headers: list = []
    bodies: list = []
    errors: list = []
    for value in raw:
        try:
            one = decode_events([value])
        except FlumeEventError as exc:
            headers.append([])
            bodies.append(value)
            errors.append(str(exc) if value else "empty record value (a tombstone?), not a Flume event")
            continue
        headers.append(one.headers[0].as_py() or [])
        bodies.append(one.body[0].as_py())
        errors.append(None)
    failed = sum(1 for e in errors if e is not None)
    return (pa.array(headers, HEADERS_TYPE), pa.array(bodies, pa.binary()), pa.array(errors, pa.string()),
            failed)


def _varint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes of Avro's (zigzag) varint of each non-negative value."""
    zigzag = np.asarray(values, dtype=np.int64) * 2
    sizes = np.ones(len(zigzag), dtype=np.int64)
    for bits in range(7, 63, 7):
        sizes += zigzag >= (1 << bits)
    return sizes


def _varint(value: int) -> bytes:
    """Avro's (zigzag) varint of a non-negative ``value``."""
    zigzag, out = value * 2, bytearray()
    while zigzag >= 0x80:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def _flume_event_sizes(batch: EventBatch) -> np.ndarray:
    """Bytes of each event of a decoded batch as one Avro-encoded ``AvroFlumeEvent`` the way Avro
    writers lay it out (Flume's Java writer, fastavro, the ``avro`` package): the header map in one
    block (count, entries, a 0 ending it; a lone 0 when empty), then the body, every length a
    minimal varint."""
    n = len(batch)
    events, names, values = _map_entries(batch.headers)
    counts = np.bincount(events, minlength=n)
    name_bytes = pc.binary_length(names).to_numpy(zero_copy_only=False).astype(np.int64)
    value_bytes = pc.fill_null(pc.binary_length(values), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    entry_bytes = _varint_sizes(name_bytes) + name_bytes + _varint_sizes(value_bytes) + value_bytes
    map_bytes = np.bincount(events, weights=entry_bytes, minlength=n).astype(np.int64)
    maps = np.where(counts > 0, _varint_sizes(counts) + map_bytes + 1, 1)
    body_bytes = pc.fill_null(pc.binary_length(batch.body), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return maps + _varint_sizes(body_bytes) + body_bytes


def _decode_all(raw: list[bytes]) -> EventBatch | None:
    """Every value decoded in one fastavro call (as the items of one Avro array), or None unless
    each value is exactly one ``AvroFlumeEvent``.

    One array read instead of one call per value saves the per-call overhead (fastavro's is about
    10 us). The values are joined, so a value with bytes missing or left over would shift the ones
    after it: the result is accepted only if the encoded size of every decoded event equals the
    length of its value, which means each item was read from exactly the bytes of its own value.
    A writer that lays an event out differently (several map blocks, padded varints) fails the
    check and is decoded value by value, correctly, only slower; so is anything the array reader
    refuses (the per-value decoding then says which values are bad).
    """
    n = len(raw)
    joined = b"".join([_varint(n), *raw, b"\x00"])
    stream = io.BytesIO(joined)
    try:
        batch = read_event_array(stream)
    except Exception:  # noqa: BLE001 - joined garbage may fail in any way; decoded one by one instead
        return None
    if len(batch) != n or stream.tell() != len(joined):
        return None
    lengths = np.fromiter((len(v) for v in raw), dtype=np.int64, count=n)
    if not np.array_equal(_flume_event_sizes(batch), lengths):
        return None
    return batch


def _map_entries(headers: pa.MapArray) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """``(event index of each entry, names, values)`` of a map array, its slice applied."""
    raw = np.asarray(headers.offsets, dtype=np.int64)
    start, end = int(raw[0]), int(raw[-1])
    events = np.repeat(np.arange(len(headers)), np.diff(raw))
    return events, headers.keys.slice(start, end - start), headers.items.slice(start, end - start)


def _rank_within_event(events: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """For entries sorted by event: each entry's position among its event's entries."""
    starts = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    return np.arange(len(events)) - starts[:-1][events]


def _merge_headers(first: pa.MapArray, second: pa.MapArray, second_wins: bool) -> pa.MapArray:
    """Per event, the headers of ``first`` then those of ``second``. Where both have a header of
    the same name, ``second``'s replaces ``first``'s if ``second_wins``, else it is left out.
    Built with Arrow kernels and numpy: one pass per distinct name in ``second``."""
    n = len(first)
    f_events, f_names, f_values = _map_entries(first)
    s_events, s_names, s_values = _map_entries(second)
    if len(s_events) == 0:
        return first
    keep_first = np.ones(len(f_events), dtype=bool)
    keep_second = np.ones(len(s_events), dtype=bool)
    if len(f_events):
        for name in pc.unique(s_names).to_pylist():
            in_first = pc.equal(f_names, name).to_numpy(zero_copy_only=False)
            if not in_first.any():
                continue
            in_second = pc.equal(s_names, name).to_numpy(zero_copy_only=False)
            has = np.zeros(n, dtype=bool)
            if second_wins:
                has[s_events[in_second]] = True
                keep_first &= ~(in_first & has[f_events])
            else:
                has[f_events[in_first]] = True
                keep_second &= ~(in_second & has[s_events])
    f_kept, s_kept = f_events[keep_first], s_events[keep_second]
    f_counts = np.bincount(f_kept, minlength=n)
    s_counts = np.bincount(s_kept, minlength=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(f_counts + s_counts, out=offsets[1:])
    order = np.empty(int(offsets[-1]), dtype=np.int64)
    order[offsets[:-1][f_kept] + _rank_within_event(f_kept, f_counts)] = np.arange(len(f_kept))
    order[offsets[:-1][s_kept] + f_counts[s_kept] + _rank_within_event(s_kept, s_counts)] = \
        len(f_kept) + np.arange(len(s_kept))
    take = pa.array(order)
    names = pa.concat_arrays([f_names.filter(pa.array(keep_first)), s_names.filter(pa.array(keep_second))])
    values = pa.concat_arrays([f_values.filter(pa.array(keep_first)), s_values.filter(pa.array(keep_second))])
    return pa.MapArray.from_arrays(pa.array(offsets.astype(np.int32)), names.take(take), values.take(take))


def _headers_from_columns(n: int, columns: list[tuple[str, pa.Array]]) -> pa.MapArray:
    """Per event, one header per ``(name, values)`` column where the value is not null, in order."""
    valid = [values.is_valid().to_numpy(zero_copy_only=False) for _, values in columns]
    counts = np.sum(valid, axis=0, dtype=np.int64) if columns else np.zeros(n, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    before = np.zeros(n, dtype=np.int64)  # headers of earlier columns, per event
    order = np.empty(int(offsets[-1]), dtype=np.int64)
    names, values, base = [], [], 0
    for (name, column), mask in zip(columns, valid):
        events = np.flatnonzero(mask)
        order[offsets[events] + before[events]] = base + np.arange(len(events))
        before += mask
        base += len(events)
        names.append(pa.array(np.full(len(events), name, dtype=object), pa.string()))
        values.append(column.filter(pa.array(mask)))
    if base == 0:
        return pa.MapArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array([], pa.string()),
                                       pa.array([], pa.string()))
    take = pa.array(order)
    return pa.MapArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.concat_arrays(names).take(take),
                                   pa.concat_arrays(values).take(take))


def flume_messages_to_batch(messages: list, meta: bool = True, topic_header: str | None = "topic",
                            copy_headers: bool = True, now_ms: int | None = None) -> tuple[EventBatch, int]:
    """One event per Kafka message whose value is an Avro-encoded ``AvroFlumeEvent`` (what Flume
    writes with ``useFlumeEventFormat`` / ``parseAsFlumeEvent``); returns the batch and how many
    records did not decode.

    The event is the decoded body and headers. The record key, when there is one, becomes header
    ``key`` (replacing one of the Flume event's: Flume's Kafka source and channel do the same). As
    in Flume's Kafka source, the decoded headers win over the metadata: with ``meta`` the headers
    ``topic_header`` (unless None), ``partition``, ``offset`` and ``timestamp`` are added only
    where the Flume event has no such header (an event that crossed Kafka before keeps its
    original ``timestamp``). With ``copy_headers`` the record's Kafka headers are added where the
    event has no header of that name.

    A record whose value is not one valid ``AvroFlumeEvent`` (a raw body from a producer without
    the Flume format, a tombstone, corrupt bytes) is kept: its raw value is the body, its headers
    are built as above from nothing, and header :data:`DECODE_ERROR_HEADER` says why it failed.
    ``messages`` must hold records only (no error messages).
    """
    n = len(messages)
    if n == 0:
        return EventBatch.empty(), 0
    headers, bodies, errors, failed = _decode_each([m.value() for m in messages])
    keys = [m.key() for m in messages]
    if any(k is not None for k in keys):
        headers = _merge_headers(headers, _headers_from_columns(n, [("key", _strings(keys))]), second_wins=True)
    if meta:
        columns = []
        if topic_header:
            columns.append((topic_header, pa.array([m.topic() for m in messages], pa.string())))
        columns.append(("partition", pa.array([m.partition() for m in messages], pa.int64()).cast(pa.string())))
        columns.append(("offset", pa.array([m.offset() for m in messages], pa.int64()).cast(pa.string())))
        stamps = np.array([m.timestamp() for m in messages], dtype=np.int64).reshape(n, 2)
        ts = stamps[:, 1]
        missing = stamps[:, 0] == 0  # TIMESTAMP_NOT_AVAILABLE
        if missing.any():
            ts = np.where(missing, now_ms if now_ms is not None else int(time.time() * 1000), ts)
        columns.append(("timestamp", pa.array(ts, pa.int64()).cast(pa.string())))
        headers = _merge_headers(headers, _headers_from_columns(n, columns), second_wins=False)
    if copy_headers and any(m.headers() for m in messages):
        kafka_headers = messages_to_batch(messages, meta=False, copy_headers=True).headers
        headers = _merge_headers(headers, kafka_headers, second_wins=False)
    if failed:
        headers = _merge_headers(headers, _headers_from_columns(n, [(DECODE_ERROR_HEADER, errors)]),
                                 second_wins=True)
    return EventBatch.from_bodies(bodies, headers), failed


def ensure_topic(bootstrap_servers: str, topic: str, partitions: int, replication_factor: int,
                 timeout_s: float, client_options: dict | None = None) -> int:
    """Create ``topic`` if it does not exist; returns its partition count."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    conf = {"bootstrap.servers": bootstrap_servers}
    for k, v in (client_options or {}).items():
        if k.startswith(("security.", "sasl.", "ssl.", "client.", "socket.")):
            conf[k] = v
    admin = AdminClient(conf)
    meta = admin.list_topics(timeout=timeout_s)
    existing = meta.topics.get(topic)
    if existing is not None and existing.error is None:
        return len(existing.partitions)
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                            replication_factor=replication_factor)],
                                  operation_timeout=timeout_s, request_timeout=timeout_s)
    try:
        futures[topic].result(timeout_s)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    deadline = time.monotonic() + timeout_s
    while True:
        t = admin.list_topics(topic=topic, timeout=timeout_s).topics.get(topic)
        if t is not None and t.error is None and t.partitions:
            return len(t.partitions)
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic!r} not visible {timeout_s}s after creating it")
        time.sleep(0.05)


def partitions_of(consumer, topic: str, timeout_s: float) -> list[int]:
    meta = consumer.list_topics(topic=topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        err = meta.error if meta is not None else "no metadata"
        raise RuntimeError(f"topic {topic!r} is not available: {err}")
    return sorted(meta.partitions)
