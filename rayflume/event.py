"""Events and event batches.

An :class:`Event` is what users see: a ``dict[str, str]`` of headers and a ``bytes`` body.
An :class:`EventBatch` is what moves: a ``pyarrow.RecordBatch`` with the schema
``headers: map<string, string>, body: binary``. Batches cross actor boundaries without
per-event pickling, and interceptors, selectors and sinks work on them with Arrow kernels.
Converting between the two is explicit and cheap; hot paths never need to.

An ``EventBatch`` is immutable: every operation returns a new batch sharing buffers where it can.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HEADERS_TYPE = pa.map_(pa.string(), pa.string())
SCHEMA = pa.schema([pa.field("headers", HEADERS_TYPE), pa.field("body", pa.binary())])


@dataclass
class Event:
    """One event: string headers and a byte body, as in Flume."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def empty_headers(n: int) -> pa.MapArray:
    """The header column of ``n`` events without headers."""
    offsets = pa.array(np.zeros(n + 1, dtype=np.int32))
    return pa.MapArray.from_arrays(offsets, pa.array([], pa.string()), pa.array([], pa.string()))


class FlatHeaders:
    """A header column as normalised flat arrays, for vectorised header operations
    (:meth:`EventBatch.header`, :mod:`rayflume.interceptors.headers`).

    ``offsets`` (int64, length n + 1) starts at 0 and indexes ``keys`` and ``items``, which hold
    exactly the entries of these events (a sliced batch's map column shares a longer child array).
    ``live`` is False for the entries of a null map: they are treated as absent.
    """

    __slots__ = ("n", "offsets", "keys", "items", "live")

    def __init__(self, headers: pa.MapArray):
        self.n = len(headers)
        raw = np.asarray(headers.offsets, dtype=np.int64)
        start, end = int(raw[0]), int(raw[-1])
        self.offsets = raw - start
        self.keys = headers.keys.slice(start, end - start)
        self.items = headers.items.slice(start, end - start)
        self.live = None
        if headers.null_count:
            # Arrow allows a null map slot to span entries; they are not part of the event.
            valid = np.asarray(headers.is_valid(), dtype=bool)
            self.live = np.repeat(valid, self.lengths())

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def entry_events(self) -> np.ndarray:
        """The event index of every entry."""
        return np.repeat(np.arange(self.n, dtype=np.int64), self.lengths())

    def lookup(self, key: str) -> pa.StringArray:
        """The value of ``key`` for every event (its first occurrence); null where it is missing.

        The result of ``pyarrow.compute.map_lookup(headers, key, "first")``, about 8x faster on
        large batches: only the keys are compared, and only matching values are gathered."""
        n = self.n
        if len(self.keys) == 0:
            return pa.nulls(n, pa.string())
        matches = np.asarray(pc.fill_null(pc.equal(self.keys, key), False), dtype=bool)
        if self.live is not None:
            matches &= self.live
        found = np.flatnonzero(matches)
        if len(found) == 0:
            return pa.nulls(n, pa.string())
        events = np.searchsorted(self.offsets, found, side="right") - 1
        first = np.ones(len(found), dtype=bool)
        first[1:] = events[1:] != events[:-1]
        found, events = found[first], events[first]
        if len(events) == n:
            return self.items.take(pa.array(found))
        position = np.full(n, -1, dtype=np.int64)
        position[events] = np.arange(len(events), dtype=np.int64)
        return self.items.take(pa.array(found)).take(pa.array(position, mask=position < 0))


def binary_array(offsets: np.ndarray, data, validity: pa.Buffer | None = None, *, null_count: int = -1,
                 value_type: pa.DataType = pa.binary()) -> pa.Array:
    """An Arrow ``binary`` array (or ``value_type``, e.g. ``pa.string()``) of ``len(offsets) - 1``
    values built straight from its buffers: value ``i`` is ``data[offsets[i]:offsets[i + 1]]``.

    ``offsets`` is a contiguous int32 numpy array (checked: other widths would be misread);
    ``data`` is bytes, a contiguous numpy array or a ``pa.Buffer``; ``validity`` an Arrow validity
    bitmap (None: no nulls). Nothing is copied: the array keeps ``offsets`` and ``data``, so the
    caller must not change them afterwards. The offsets are not validated (a batch builder's hot
    path); they must start at 0 or later, not decrease and stay within ``data``.
    """
    if offsets.dtype != np.int32:
        raise TypeError(f"binary array offsets must be int32, not {offsets.dtype}")
    buffer = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
    return pa.Array.from_buffers(value_type, len(offsets) - 1, [validity, pa.py_buffer(offsets), buffer],
                                 null_count=null_count)


def _as_binary(body: pa.Array) -> pa.Array:
    if body.type == pa.binary():
        return body
    if body.type in (pa.large_binary(), pa.string(), pa.large_string()):
        return body.cast(pa.binary())
    raise TypeError(f"event bodies must be binary or string, not {body.type}")


class EventBatch:
    """An immutable batch of events backed by a ``pyarrow.RecordBatch``.

    Construction validates the schema; ``len(batch)`` is the number of events and ``nbytes`` the
    size of the Arrow buffers (bodies and headers), which is what byte capacities count.

    ``stored`` is set by the runtime on a batch read from Ray's object store: a reference to that
    copy (a ``rayflume._private.stored.StoredBatch``), which a sink sending the batch on to
    another actor may pass instead of copying the batch again. It is None for a batch built in
    this process; an operation that changes the events returns a batch without it.
    """

    __slots__ = ("record_batch", "stored")

    def __init__(self, record_batch: pa.RecordBatch):
        if not record_batch.schema.equals(SCHEMA):
            raise TypeError(f"an EventBatch needs schema {SCHEMA}, got {record_batch.schema}")
        self.record_batch = record_batch
        self.stored = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def empty(cls) -> "EventBatch":
        return cls.from_bodies([])

    @classmethod
    def from_bodies(cls, bodies, headers: pa.MapArray | None = None) -> "EventBatch":
        """A batch from an Arrow array (or a Python sequence) of bodies, with empty headers unless given."""
        body = bodies if isinstance(bodies, pa.Array) else pa.array(list(bodies), pa.binary())
        if isinstance(body, pa.ChunkedArray):
            body = body.combine_chunks()
        body = _as_binary(body)
        if headers is None:
            headers = empty_headers(len(body))
        return cls(pa.RecordBatch.from_arrays([headers, body], schema=SCHEMA))

    @classmethod
    def from_events(cls, events: Iterable[Event]) -> "EventBatch":
        events = list(events)
        headers = pa.array([list(e.headers.items()) for e in events], HEADERS_TYPE)
        body = pa.array([e.body for e in events], pa.binary())
        return cls(pa.RecordBatch.from_arrays([headers, body], schema=SCHEMA))

    @classmethod
    def concat(cls, batches: Sequence["EventBatch"]) -> "EventBatch":
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        return cls(pa.concat_batches([b.record_batch for b in batches]))

    # -- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.record_batch.num_rows

    def __repr__(self) -> str:
        return f"EventBatch(events={len(self)}, nbytes={self.nbytes})"

    def __eq__(self, other) -> bool:
        return isinstance(other, EventBatch) and self.record_batch.equals(other.record_batch)

    def __reduce__(self):
        rb = self.record_batch
        # A slice pickles with its parent's whole buffers; send only the sliced part.
        if rb.num_rows and rb.get_total_buffer_size() > 2 * rb.nbytes + 4096:
            return (EventBatch.from_ipc, (self.ipc_buffer(),))
        return (EventBatch, (rb,))

    @property
    def nbytes(self) -> int:
        return self.record_batch.nbytes

    @property
    def body(self) -> pa.BinaryArray:
        return self.record_batch.column(1)

    @property
    def headers(self) -> pa.MapArray:
        return self.record_batch.column(0)

    def to_events(self) -> list[Event]:
        headers = self.headers.to_pylist()
        return [Event(body=b, headers=dict(h)) for b, h in zip(self.body.to_pylist(), headers)]

    def bodies(self) -> list[bytes]:
        return self.body.to_pylist()

    def header(self, key: str) -> pa.StringArray:
        """The value of header ``key`` for every event (its first occurrence); null where the
        event lacks it."""
        return FlatHeaders(self.headers).lookup(key)

    # -- transformation -----------------------------------------------------------------------
    def slice(self, offset: int, length: int | None = None) -> "EventBatch":
        return EventBatch(self.record_batch.slice(offset, length))

    def filter(self, mask) -> "EventBatch":
        return EventBatch(self.record_batch.filter(mask))

    def take(self, indices) -> "EventBatch":
        return EventBatch(self.record_batch.take(indices))

    def with_body(self, body: pa.Array) -> "EventBatch":
        return EventBatch(pa.RecordBatch.from_arrays([self.headers, _as_binary(body)], schema=SCHEMA))

    def with_headers(self, headers: pa.MapArray) -> "EventBatch":
        return EventBatch(pa.RecordBatch.from_arrays([headers, self.body], schema=SCHEMA))

    # -- serialisation (file channel payloads, tier hops) ---------------------------------------
    def to_ipc(self) -> bytes:
        return self.ipc_buffer().to_pybytes()

    def ipc_buffer(self) -> pa.Buffer:
        """The batch as an Arrow IPC stream, in an Arrow buffer: no copy into Python bytes (it goes
        to ``os.writev``, ``zlib.crc32`` and pickle as it is)."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, SCHEMA) as writer:
            writer.write_batch(self.record_batch)
        return sink.getvalue()

    @classmethod
    def from_ipc(cls, data) -> "EventBatch":
        reader = pa.ipc.open_stream(pa.py_buffer(data) if isinstance(data, (bytes, bytearray, memoryview)) else data)
        batches = [b for b in reader]
        if not batches:
            return cls.empty()
        return cls(batches[0] if len(batches) == 1 else pa.concat_batches(batches))
