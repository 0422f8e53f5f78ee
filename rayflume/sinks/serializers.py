"""Event serializers for file-writing sinks (Flume's ``EventSerializer`` types).

A serializer turns a whole :class:`~rayflume.event.EventBatch` into one contiguous buffer with
Arrow kernels; no per-event Python loop. The result is a ``pyarrow.Buffer`` (it supports the
buffer protocol, so ``file.write(buffer)`` takes it without a copy; ``to_pybytes()`` gives bytes).

- ``text`` (Flume's ``BodyTextEventSerializer``): each body, followed by ``\\n`` when
  ``append_newline`` is true (the default).
- ``header_and_text`` (Flume's ``HeaderAndBodyTextEventSerializer``): ``{k1=v1, k2=v2} body``
  per event, plus ``\\n`` when ``append_newline``. Headers print in the event's order (Java printed
  a HashMap, in no fixed order); a header without a value prints ``k=null`` as in Java.

A null body is written as an empty body and a null header map as ``{}``. Serializers hold no
state and are safe to share between threads.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayflume.event import EventBatch

__all__ = ["EventSerializer", "TextSerializer", "HeaderAndTextSerializer", "SERIALIZERS",
           "make_serializer", "values_buffer"]

_EMPTY = pa.py_buffer(b"")
# Offsets of binary arrays are int32: a result at or above this size needs large_binary.
_INT32_LIMIT = 2**31 - 1


def values_buffer(arr: pa.Array) -> pa.Buffer:
    """The bytes of every value of a binary/string array, back to back, without copying.

    Values of null slots are included as stored (Arrow builders store them empty); fill nulls
    first when that matters.
    """
    if len(arr) == 0:
        return _EMPTY
    bufs = arr.buffers()
    width = 8 if pa.types.is_large_binary(arr.type) or pa.types.is_large_string(arr.type) else 4
    offsets = np.frombuffer(bufs[1], dtype=np.int64 if width == 8 else np.int32,
                            count=len(arr) + 1, offset=arr.offset * width)
    start, end = int(offsets[0]), int(offsets[-1])
    if bufs[2] is None or end == start:
        return _EMPTY
    return bufs[2].slice(start, end - start)


def _bodies(batch: EventBatch, extra_bytes: int) -> pa.Array:
    """Bodies without nulls, widened to large_binary when the output would not fit int32 offsets."""
    body = batch.body
    if body.null_count:
        body = pc.fill_null(body, pa.scalar(b"", pa.binary()))
    if body.nbytes + extra_bytes >= _INT32_LIMIT:
        body = body.cast(pa.large_binary())
    return body


class EventSerializer(ABC):
    """Turns a batch into the bytes a file sink appends."""

    name = ""

    def __init__(self, append_newline: bool = True):
        self.append_newline = bool(append_newline)

    @abstractmethod
    def serialize(self, batch: EventBatch) -> pa.Buffer:
        """The batch as one buffer, ready to append to a file."""


class TextSerializer(EventSerializer):
    """``text``: bodies only, each followed by a newline when ``append_newline``."""

    name = "text"

    def serialize(self, batch: EventBatch) -> pa.Buffer:
        n = len(batch)
        if n == 0:
            return _EMPTY
        body = _bodies(batch, n)
        if not self.append_newline:
            return values_buffer(body)
        sep = pa.scalar(b"\n", body.type)
        # Joining each body with an empty string puts exactly one separator after every body.
        joined = pc.binary_join_element_wise(body, pa.scalar(b"", body.type), sep)
        return values_buffer(joined)


class HeaderAndTextSerializer(EventSerializer):
    """``header_and_text``: ``{k1=v1, k2=v2} body`` per event, newline-terminated when ``append_newline``."""

    name = "header_and_text"

    def serialize(self, batch: EventBatch) -> pa.Buffer:
        n = len(batch)
        if n == 0:
            return _EMPTY
        headers = batch.headers
        raw = np.asarray(headers.offsets, dtype=np.int64)
        start, end = int(raw[0]), int(raw[-1])
        # A sliced map column shares its longer key/item children: cut them to this batch.
        keys = headers.keys.slice(start, end - start)
        items = headers.items.slice(start, end - start)
        if items.null_count:
            items = pc.fill_null(items, "null")
        pairs = pc.binary_join_element_wise(keys, items, "=")
        per_event = pa.ListArray.from_arrays(pa.array(raw - start, pa.int32()), pairs)
        text = pc.binary_join(per_event, ", ")
        if headers.null_count:
            text = pc.if_else(headers.is_valid(), text, pa.scalar("", pa.string()))
        body = _bodies(batch, int(text.nbytes) + 4 * n)
        text = text.cast(body.type)
        parts = [pa.scalar(b"{", body.type), text, pa.scalar(b"} ", body.type), body]
        if self.append_newline:
            parts.append(pa.scalar(b"\n", body.type))
        return values_buffer(pc.binary_join_element_wise(*parts, pa.scalar(b"", body.type)))


SERIALIZERS: dict[str, type[EventSerializer]] = {
    TextSerializer.name: TextSerializer,
    HeaderAndTextSerializer.name: HeaderAndTextSerializer,
}


def make_serializer(name: str, append_newline: bool = True) -> EventSerializer:
    """The serializer called ``name`` (``text`` or ``header_and_text``)."""
    try:
        cls = SERIALIZERS[name]
    except KeyError:
        raise ValueError(f"unknown serializer {name!r}; use one of {sorted(SERIALIZERS)}") from None
    return cls(append_newline=append_newline)
