"""Shared pieces of the Kafka source, channel and sink (confluent-kafka / librdkafka).

* Client option handling: the typed keys of each component become librdkafka properties, and the
  component's passthrough dict (Flume's ``kafka.producer.*`` / ``kafka.consumer.*``) is merged on
  top after validation. Options a component needs to control itself (callbacks, auto commit) are
  refused with a message saying which typed key to use instead.
* Batch conversion, both directions, with as little Python per event as the client allows:
  ``confluent_kafka`` hands out one ``Message`` object per record and takes one ``produce()`` call
  per record, so one attribute read per record and field is the floor; everything after that
  (header maps, topic templates, key columns) is built with Arrow kernels and numpy.
"""
from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayflume.event import SCHEMA, EventBatch

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
