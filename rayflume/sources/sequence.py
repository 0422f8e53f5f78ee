"""The ``sequence`` source: Flume's ``seq`` generator, vectorised.

Each event's body is a decimal counter (``b"0"``, ``b"1"``, ...) counting up from ``start``, or,
when ``body_size`` is set, that counter left-padded with ``'0'`` to exactly ``body_size`` bytes.
Headers are empty. It is meant for tests and for the throughput benchmark, so a batch is built
straight into an Arrow binary array from a numpy ``uint8`` buffer and ``int32`` offsets: no
per-event Python work.

Delivery: the counter advances only in ``ack()``, so a batch that was never committed is produced
again with the same bodies (as in Flume, a retry reuses the same body: after de-duplication the
sink sees exactly ``total_events`` distinct counters).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from rayflume.config_base import SourceConfig
from rayflume.event import EventBatch, binary_array, empty_headers
from rayflume.registry import register
from rayflume.sources.base import Source, SourceContext

INT64_MAX = 2**63 - 1
# 10**0 .. 10**18: every power of ten an int64 counter can need.
_POW10 = np.array([10**k for k in range(19)], dtype=np.int64)
# Arrow ``binary`` offsets are int32, which bounds the bytes of one batch.
_MAX_BATCH_BYTES = 2**31 - 1


def num_digits(value: int) -> int:
    """Decimal digits of a non-negative integer (``num_digits(0) == 1``)."""
    return len(str(value))


def _digit_matrix(first: int, n: int, width: int) -> np.ndarray:
    """ASCII digits of ``first .. first+n-1``, right-aligned and zero-padded to ``width`` columns.

    ``width`` must hold the largest counter and be at most 19 (int64).
    """
    counters = np.arange(n, dtype=np.int64) + np.int64(first)
    powers = _POW10[width - 1::-1]
    digits = (counters[:, None] // powers[None, :]) % 10
    return digits.astype(np.uint8) + np.uint8(48)


def counter_bodies(first: int, n: int, body_size: int | None = None) -> pa.BinaryArray:
    """The bodies of counters ``first .. first+n-1`` as one Arrow binary array.

    With ``body_size`` None each body is the plain decimal counter; otherwise it is left-padded
    with ``'0'`` to exactly ``body_size`` bytes, and a counter wider than that raises ValueError.
    """
    if n < 0 or first < 0:
        raise ValueError("counter_bodies needs first >= 0 and n >= 0")
    if n == 0:
        return pa.array([], pa.binary())
    last = first + n - 1
    if last > INT64_MAX:
        raise ValueError(f"counter {last} does not fit in int64")
    width = num_digits(last)
    if body_size is None:
        counters = np.arange(n, dtype=np.int64) + np.int64(first)
        lengths = np.searchsorted(_POW10[1:], counters, side="right").astype(np.int32) + 1
        matrix = _digit_matrix(first, n, width)
        # Row-major boolean selection keeps, per row, only its significant (rightmost) digits.
        keep = np.arange(width, dtype=np.int32)[None, :] >= (width - lengths)[:, None]
        data = matrix[keep]
        offsets = np.empty(n + 1, dtype=np.int32)
        offsets[0] = 0
        np.cumsum(lengths, out=offsets[1:])
    else:
        if width > body_size:
            raise ValueError(f"counter {last} has {width} digits, more than body_size={body_size}")
        if n * body_size > _MAX_BATCH_BYTES:
            raise ValueError(f"{n} bodies of {body_size} bytes exceed the 2 GiB of one Arrow binary array")
        data = np.empty((n, body_size), dtype=np.uint8)
        data[:, : body_size - width] = 48
        data[:, body_size - width:] = _digit_matrix(first, n, width)
        offsets = np.arange(0, (n + 1) * body_size, body_size, dtype=np.int32)
    return binary_array(offsets, data)


class SequenceSource(Source):
    """Generates counters ``start, start+1, ...`` in batches of ``batch_size``.

    Not thread-safe (the runner calls it from one thread). ``poll()`` returns None only once
    everything has been produced. Calling ``poll()`` again before ``ack()`` returns the same
    batch: the counter moves only on ``ack()``, so nothing is skipped.
    """

    def __init__(self, name: str, batch_size: int = 1000, total_events: int | None = None,
                 body_size: int | None = None, start: int = 0):
        self.name = name
        self.batch_size = batch_size
        self.body_size = body_size
        self.first = start
        limit = INT64_MAX + 1
        capped_by_width = False
        if body_size is not None and body_size < 19 and 10**body_size < limit:
            limit = 10**body_size
            capped_by_width = True
        if total_events is not None and start + total_events <= limit:
            self.end = start + total_events
            self.capped_by_width = False
        else:
            self.end = limit
            self.capped_by_width = capped_by_width and total_events is None
        self.next = start
        self._pending: EventBatch | None = None
        self._headers: tuple[int, pa.MapArray] | None = None

    def start(self, context: SourceContext) -> None:
        super().start(context)
        if self.capped_by_width:
            context.logger.warning(
                "sequence source '%s': total_events is unlimited but body_size=%d holds counters only "
                "up to %d; the source finishes there (set total_events or a larger body_size)",
                self.name, self.body_size, self.end - 1)

    def _empty_headers(self, n: int) -> pa.MapArray:
        # Batches are mostly the same size; one immutable headers array serves them all.
        if self._headers is None or self._headers[0] != n:
            self._headers = (n, empty_headers(n))
        return self._headers[1]

    def poll(self) -> EventBatch | None:
        if self._pending is not None:
            return self._pending
        n = min(self.batch_size, self.end - self.next)
        if n <= 0:
            return None
        bodies = counter_bodies(self.next, n, self.body_size)
        self._pending = EventBatch.from_bodies(bodies, headers=self._empty_headers(n))
        return self._pending

    def ack(self) -> None:
        if self._pending is not None:
            self.next += len(self._pending)
            self._pending = None

    @property
    def acknowledged(self) -> int:
        """Events acknowledged so far."""
        return self.next - self.first

    @property
    def finished(self) -> bool:
        return self._pending is None and self.next >= self.end


@register("source", "sequence")
class SequenceSourceConfig(SourceConfig):
    """``sequence`` (Flume's ``seq``): counters from ``start`` upward, for tests and benchmarks.

    Unlike Flume (``batchSize`` 1) ``batch_size`` keeps the rayflume default of 1000: one event
    per actor call would cap a pipeline at a few thousand events/s.
    """

    total_events: int | None = Field(
        None, ge=0, description="Events to generate, then the source is finished; None: unlimited.")
    body_size: int | None = Field(
        None, gt=0, description="Body length in bytes: the counter left-padded with '0'. "
                                "None: the plain decimal counter.")
    start: int = Field(0, ge=0, le=INT64_MAX, description="The first counter.")

    @model_validator(mode="after")
    def _check_sizes(self):
        if self.total_events is not None and self.start + self.total_events - 1 > INT64_MAX:
            raise ValueError(f"sequence source: start + total_events exceeds {INT64_MAX}; "
                             f"lower `total_events` or `start`")
        if self.body_size is not None:
            if num_digits(self.start) > self.body_size:
                raise ValueError(f"sequence source: `start`={self.start} is wider than "
                                 f"`body_size`={self.body_size}; raise body_size")
            if self.total_events:
                last = self.start + self.total_events - 1
                if num_digits(last) > self.body_size:
                    raise ValueError(
                        f"sequence source: the last counter {last} has {num_digits(last)} digits, more "
                        f"than `body_size`={self.body_size}; raise body_size to at least "
                        f"{num_digits(last)} or lower total_events")
        widest = self.body_size if self.body_size is not None else 19
        if self.batch_size * widest > _MAX_BATCH_BYTES:
            raise ValueError(f"sequence source: `batch_size`={self.batch_size} bodies of {widest} bytes "
                             f"exceed 2 GiB per batch; lower batch_size or body_size")
        return self

    def build(self, name: str) -> SequenceSource:
        return SequenceSource(name, self.batch_size, self.total_events, self.body_size, self.start)
