"""A window onto the events a source hands to its channels or a sink has written: ``rayflume tap``.

A :class:`TapPoint` sits in a runner's hot path (see :mod:`rayflume._private.runners`). While
nobody taps it is *disarmed*, and the runner pays one attribute check per batch
(``if tap.armed:``). A reader arms it by reading; from then on every batch offered leaves a sample
of its events in a small buffer that the reader drains. When no read came for ``idle_off_s`` the
tap disarms itself and drops its buffer: a reader that went away (a closed terminal, a killed
notebook) leaves no cost behind, and no thread is needed to notice, since the check is made on the
next offer or read.

No Ray here: the runners are tested without it, and so is this.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Callable

import numpy as np

from rayflume.event import EventBatch

logger = logging.getLogger("rayflume.tap")

DEFAULT_CAPACITY = 1_000
DEFAULT_MAX_BYTES = 16 << 20
DEFAULT_IDLE_OFF_S = 5.0
ROW_OVERHEAD_BYTES = 16  # the offsets a kept event costs besides its headers and body
RESOLVE_TIMEOUT_S = 10.0


def _value_offsets(array) -> np.ndarray:
    """The ``len + 1`` value offsets of a (possibly sliced) binary, string or list array, zero-copy.
    For binary and string arrays they index the data buffer: differences of them are byte lengths."""
    n = len(array)
    buffers = array.buffers()
    if n == 0 or buffers[1] is None:
        return np.zeros(n + 1, dtype=np.int32)
    return np.frombuffer(buffers[1], dtype=np.int32, count=n + 1, offset=array.offset * 4)


def row_sizes(batch: EventBatch, rows: np.ndarray) -> np.ndarray:
    """Bytes each of ``rows`` of ``batch`` takes once copied: body, header keys and values, plus
    ROW_OVERHEAD_BYTES. Reads only the offsets of those rows: O(len(rows)), whatever the batch."""
    body = _value_offsets(batch.body)
    sizes = body[rows + 1].astype(np.int64) - body[rows] + ROW_OVERHEAD_BYTES
    headers = batch.headers
    entries = _value_offsets(headers)  # each row's first and last header entry in the key/item children
    start, end = entries[rows], entries[rows + 1]
    if (end > start).any():
        for child in (headers.keys, headers.items):
            offsets = _value_offsets(child)
            sizes += offsets[end].astype(np.int64) - offsets[start]
    return sizes


def sampled_rows(seen: int, n: int, fraction: float, last: int) -> tuple[np.ndarray, int]:
    """(rows, sampled): which rows of a batch of ``n`` events to keep when ``seen`` events came
    before it, and how many of its events the sample takes. ``fraction`` of all events is sampled
    with a deterministic stride (event ``i`` of the stream is when ``floor((i + 1) * fraction) >
    floor(i * fraction)``: evenly spaced, every event at 1.0); the rows are the ``last`` sampled
    ones at most. O(rows), not O(n)."""
    first_k = math.floor(seen * fraction) + 1
    last_k = math.floor((seen + n) * fraction)
    sampled = max(0, last_k - first_k + 1)
    first_k = max(first_k, last_k - last + 1)
    if last_k < first_k:
        return np.zeros(0, dtype=np.int64), sampled
    if fraction == 1.0:
        return np.arange(first_k - 1 - seen, last_k - seen, dtype=np.int64), sampled
    k = np.arange(first_k, last_k + 1, dtype=np.float64)
    # the i with i * f < k <= (i + 1) * f; increasing in k, by at least 1 since f <= 1
    rows = np.ceil(k / fraction).astype(np.int64) - 1 - seen
    return np.clip(rows, 0, n - 1), sampled  # float rounding at the edges must not leave the batch


class TapPoint:
    """A bounded, sampled, self-disarming buffer of the events flowing past one point. Thread-safe.

    Guarantees:

    * Off when nobody taps: until the first :meth:`read`, and again once no read came for
      ``idle_off_s``, ``armed`` is False, :meth:`offer` is not called by the runners, and the tap
      holds no events.
    * Never in the way: :meth:`offer` never raises and never blocks on a reader (it takes a lock
      held only for bookkeeping); it removes nothing from the batch nor from any channel, and keeps
      no reference to the offered batch: the kept rows are copied, so a tapped batch's (possibly
      large, possibly object-store) buffers are freed as they would be untapped.
    * Bounded: the buffer holds at most ``capacity`` events and ``max_bytes`` bytes (as
      :func:`row_sizes` counts them); the oldest go first, and ``dropped`` counts every sampled
      event that was dropped unread (an event larger than ``max_bytes`` on its own is dropped at
      once). The copying per offered batch is bounded the same way.
    * Sampled: of the events offered while armed, a ``sample`` fraction is kept, evenly spaced
      (every event at 1.0, every 10th at 0.1), across batch boundaries.
    * :meth:`read` returns the oldest buffered events first and removes them; several readers at
      once share one buffer (each event goes to one of them), and the latest read's ``sample``
      applies.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, max_bytes: int = DEFAULT_MAX_BYTES,
                 idle_off_s: float = DEFAULT_IDLE_OFF_S, sample: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        if capacity < 1 or max_bytes < 1:
            raise ValueError("a tap needs room for at least one event")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.idle_off_s = idle_off_s
        self.sample = _checked_sample(sample)
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._chunks: deque = deque()  # (EventBatch copied, row sizes), oldest first
        self._events = 0
        self._bytes = 0
        self._seen = 0  # events offered since armed: where the sampling stride stands
        self._waiting = 0  # readers inside read(): the tap stays armed for them
        self._last_read = 0.0
        self.dropped = 0
        self.offered = 0
        # Read by the runners without the lock: a stale value costs one batch more or less.
        self.armed = False

    # -- the runner's side ------------------------------------------------------------------------
    def offer(self, batch) -> None:
        """Keep a sample of ``batch`` for the reader (call only ``if tap.armed``). ``batch`` is an
        EventBatch, or a reference to one with ``resolve(timeout_s)`` (a tier hop passed on unread),
        read only here."""
        try:
            if not isinstance(batch, EventBatch):
                batch = batch.resolve(timeout_s=RESOLVE_TIMEOUT_S)
            with self._cond:
                if not self.armed or self._expired():
                    return
                n = len(batch)
                rows, sampled = sampled_rows(self._seen, n, self.sample, self.capacity)
                self._seen += n
                self.offered += n
                if len(rows) == 0:
                    return
                sizes = row_sizes(batch, rows)
                # keep the newest rows that fit in max_bytes: the older ones would be dropped first
                fits = int(np.searchsorted(np.cumsum(sizes[::-1]), self.max_bytes, side="right"))
                self.dropped += sampled - fits
                if fits == 0:
                    return
                rows, sizes = rows[-fits:], sizes[-fits:]
                self._chunks.append((batch.take(rows), sizes))  # take copies: nothing of `batch` is held
                self._events += fits
                self._bytes += int(sizes.sum())
                self._trim()
                self._cond.notify_all()
        except Exception:  # a tap must never break the pipeline it watches
            logger.debug("tap: could not keep a sample of a batch", exc_info=True)

    # -- the reader's side ------------------------------------------------------------------------
    def read(self, max_events: int = 100, wait_s: float = 0.0, sample: float | None = None) -> EventBatch:
        """Arm the tap, wait up to ``wait_s`` until events are buffered, and return (and remove) up
        to ``max_events`` of the oldest; an empty batch when none came in time. ``sample`` (a
        fraction in (0, 1]) changes the sampling from now on."""
        with self._cond:
            self._expired()  # a reader back after a pause of idle_off_s: what was kept is stale
            if sample is not None:
                self.sample = _checked_sample(sample)
            if not self.armed:
                self._seen = 0
            self.armed = True
            self._last_read = self._clock()
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: self._events > 0, timeout=max(0.0, wait_s))
            finally:
                self._waiting -= 1
            out = self._pop(max(0, int(max_events)))
            self._last_read = self._clock()  # a long wait was no idleness
            return out

    def stats(self) -> dict:
        """What the tap holds and did: armed, sample, buffered events and bytes, offered, dropped."""
        with self._cond:
            self._expired()
            return {"armed": self.armed, "sample": self.sample, "buffered_events": self._events,
                    "buffered_bytes": self._bytes, "offered": self.offered, "dropped": self.dropped}

    # -- inside the lock --------------------------------------------------------------------------
    def _expired(self) -> bool:
        """Disarm (and drop the buffer) if no read came for idle_off_s and none waits; whether it did."""
        if self.armed and not self._waiting and self._clock() - self._last_read > self.idle_off_s:
            self.armed = False
            self._chunks.clear()
            self.dropped += self._events
            self._events = self._bytes = 0
            return True
        return False

    def _trim(self) -> None:
        """Drop the oldest events until within capacity and max_bytes."""
        while self._events > self.capacity or self._bytes > self.max_bytes:
            chunk, sizes = self._chunks[0]
            over_events = self._events - self.capacity
            over_bytes = self._bytes - self.max_bytes
            drop = max(over_events, int(np.searchsorted(np.cumsum(sizes), over_bytes, side="left")) + 1
                       if over_bytes > 0 else 0)
            if drop >= len(chunk):
                self._chunks.popleft()
                drop = len(chunk)
            else:
                # a copy of the rest, so that the dropped rows' memory goes too
                self._chunks[0] = (chunk.take(np.arange(drop, len(chunk))), sizes[drop:])
            self._events -= drop
            self._bytes -= int(sizes[:drop].sum())
            self.dropped += drop

    def _pop(self, max_events: int) -> EventBatch:
        out = []
        while self._chunks and max_events > 0:
            chunk, sizes = self._chunks[0]
            if len(chunk) <= max_events:
                self._chunks.popleft()
                part, size = chunk, int(sizes.sum())
            else:
                part, size = chunk.slice(0, max_events), int(sizes[:max_events].sum())
                self._chunks[0] = (chunk.take(np.arange(max_events, len(chunk))), sizes[max_events:])
            out.append(part)
            max_events -= len(part)
            self._events -= len(part)
            self._bytes -= size
        return EventBatch.concat(out)


def _checked_sample(sample: float) -> float:
    sample = float(sample)
    if not 0 < sample <= 1:
        raise ValueError(f"sample must be a fraction in (0, 1], got {sample:g}")
    return sample
