"""Vectorised framing and header building for the network sources: lines found with numpy over a
whole read (:func:`split_lines`, :func:`strip_cr`), ranges gathered into one Arrow binary array
(:func:`gather_ranges`), and a batch's header map built from per-key value arrays in one pass
(:func:`headers_from_columns`). Pure functions; thread-safe.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayflume.event import EventBatch


def binary_from(data: np.ndarray | bytes, offsets: np.ndarray) -> pa.BinaryArray:
    """A binary array over ``data`` with int32 ``offsets`` (len = n + 1, starting at 0)."""
    buf = pa.py_buffer(data if isinstance(data, (bytes, bytearray)) else np.ascontiguousarray(data))
    return pa.BinaryArray.from_buffers(pa.binary(), len(offsets) - 1,
                                       [None, pa.py_buffer(np.ascontiguousarray(offsets, dtype=np.int32)), buf])


def gather_ranges(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.BinaryArray:
    """The byte ranges ``arr[starts[i]:ends[i]]`` (ascending, non-overlapping) as a binary array,
    copied once (no per-range Python)."""
    n = len(starts)
    if n == 0:
        return pa.array([], pa.binary())
    bounds = np.empty(2 * n, dtype=np.int64)
    bounds[0::2] = starts
    bounds[1::2] = ends
    if bounds[-1] >= 2**31:
        raise ValueError("more than 2 GiB of frames in one array; read smaller chunks")
    return take_ranges(pa.py_buffer(np.ascontiguousarray(arr)), bounds.astype(np.int32), 0, 2)


def take_ranges(buffer: pa.Buffer, bounds, first: int, stride: int) -> pa.BinaryArray:
    """The byte ranges ``bounds[first + k*stride]`` to ``bounds[first + k*stride + 1]`` of
    ``buffer`` (``bounds`` non-decreasing int32) as a binary array. ``bounds``, read as the offsets
    of one array over ``buffer``, makes every range (and every gap between two) an element: a
    ``take`` of the wanted elements copies their bytes in one C++ pass (measured: 2 ms for 40,000
    ranges of 8 MB, where a boolean mask over the buffer took 72 ms)."""
    offsets = np.asarray(bounds, dtype=np.int32)
    if len(offsets) < 2:
        return pa.array([], pa.binary())
    every = pa.BinaryArray.from_buffers(pa.binary(), len(offsets) - 1, [None, pa.py_buffer(offsets), buffer])
    return pc.take(every, pa.array(np.arange(first, len(offsets) - 1, stride, dtype=np.int64)))


def split_lines(arr: np.ndarray, delimiters: tuple[int, ...] = (10,)):
    """Positions of complete lines in ``arr``: ``(starts, ends, consumed)`` where line i is
    ``arr[starts[i]:ends[i]]`` without its delimiter and ``consumed`` is the index after the last
    delimiter (the unterminated tail starts there)."""
    hit = arr == delimiters[0]
    for d in delimiters[1:]:
        hit |= arr == d
    ends = np.flatnonzero(hit)
    if ends.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    starts = np.empty(ends.size, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    return starts, ends.astype(np.int64), int(ends[-1]) + 1


def strip_cr(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``ends`` moved back over one ``\\r`` before the delimiter, where there is one."""
    ends = ends.copy()
    nonempty = ends > starts
    cr = np.zeros(len(ends), dtype=bool)
    cr[nonempty] = arr[ends[nonempty] - 1] == 13
    ends[cr] -= 1
    return ends


def empty_headers(n: int) -> pa.MapArray:
    offsets = pa.array(np.zeros(n + 1, dtype=np.int32))
    return pa.MapArray.from_arrays(offsets, pa.array([], pa.string()), pa.array([], pa.string()))


def headers_from_columns(n: int, columns: list[tuple[str, pa.Array | None]]) -> pa.MapArray:
    """A ``map<string, string>`` of ``n`` events from ``[(key, values)]``: ``values`` is a string
    array of length ``n`` (null: the event does not get that key) or None (no event does).

    Keys keep the order of ``columns`` within each event. One concatenation and two ``take``s
    for the whole batch, whatever the number of keys.
    """
    cols = [(k, v) for k, v in columns if v is not None]
    if n == 0 or not cols:
        return empty_headers(n)
    arrays = []
    for key, values in cols:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if values.type != pa.string():
            values = values.cast(pa.string())
        if len(values) != n:
            raise ValueError(f"header {key!r}: {len(values)} values for {n} events")
        arrays.append(values)
    k = len(arrays)
    values = pa.concat_arrays(arrays)
    if values.null_count:
        valid = np.asarray(values.is_valid(), dtype=bool)
    else:
        valid = np.ones(k * n, dtype=bool)
    # Event-major order of the key-major concatenation: entry (i, j) is values[j * n + i].
    order = (np.arange(k, dtype=np.int64)[None, :] * n + np.arange(n, dtype=np.int64)[:, None]).ravel()
    live = valid[order]
    selected = order[live]
    counts = live.reshape(n, k).sum(axis=1)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError("too many header entries for one batch")
    keys = pa.array([key for key, _ in cols], pa.string()).take(pa.array(selected // n))
    items = values.take(pa.array(selected))
    return pa.MapArray.from_arrays(pa.array(offsets.astype(np.int32)), keys, items)


def batch_of(headers: pa.MapArray, body: pa.Array) -> EventBatch:
    from rayflume.event import SCHEMA
    if body.type != pa.binary():
        body = body.cast(pa.binary())
    return EventBatch(pa.RecordBatch.from_arrays([headers, body], schema=SCHEMA))
