"""The controller's time series of its components' counters: what ``TopologyHandle.history()``
and ``TopologyHandle.plot()`` read.

:class:`MetricsHistory` keeps samples: at a time, the numeric counters of every component that
answered (:func:`numeric_counters`). The controller records one every
:func:`history_interval_s` seconds (:data:`HISTORY_INTERVAL_S`, 2 s, unless the environment
variable :data:`INTERVAL_ENV` of the controller's process says otherwise) from a thread of its
own. :meth:`MetricsHistory.table` turns the samples of a window into the long table the handle
returns: one row per (sample time, component), the counters typed as ``metrics_frame()`` types
them, and a ``<Name>PerSecond`` rate per monotonic counter between the component's consecutive
samples (a counter that went down, its component restarted, counts from zero:
:attr:`~rayflume._private.observe.CounterReset.COUNTS_FROM_ZERO`, as in ``metrics_frame()``).

Memory is bounded whatever the number of components: at most ``max_samples`` samples
(:data:`HISTORY_MAX_SAMPLES`, 1,800: one hour at the default interval) holding at most
``max_values`` counter values in all (:data:`HISTORY_MAX_VALUES`, 2,000,000); the oldest samples
go first when either bound is reached, so a topology with many components keeps a shorter span
(with 100 components of about 20 counters each, 1,000 samples: 33 minutes at 2 s). Values are
kept in flat arrays of 8 bytes each (16 MB at most), and the names (which components, which
counters) once per sample, shared with the sample before when they did not change (the usual
case); so the store holds about 20 MB at the very most. One sample's components beyond
``max_values`` are left out of it (logged).

The history lives in the controller's memory only: it starts anew when the controller restarts
(Ray restarts it after a crash; a redeploy of a running topology keeps it), and ends with
``stop()``. Keeping it in the GCS would cost a write of every sample; a restart loses at most the
last hour of a view, while the counters themselves are kept by the components.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from array import array
from bisect import bisect_left
from collections import deque
from typing import Callable, Iterable

import pyarrow as pa

from rayflume._private import frames
from rayflume._private.observe import CounterReset, parse_counter, rate_per_second

logger = logging.getLogger("rayflume.history")

HISTORY_INTERVAL_S = 2.0
HISTORY_MAX_SAMPLES = 1800  # one hour at HISTORY_INTERVAL_S
HISTORY_MAX_VALUES = 2_000_000  # counter values in all samples: 8 bytes each
INTERVAL_ENV = "RAYFLUME_HISTORY_INTERVAL_S"
MIN_INTERVAL_S = 0.1  # a shorter interval would mostly measure the cost of asking
KEY_COLUMNS = ("time", "tier", "instance", "kind", "component")
_TIME = pa.timestamp("ms", tz="UTC")
_INT64 = (-(1 << 63), (1 << 63) - 1)

# tier ("" without tiers), instance, kind (SOURCE, CHANNEL, SINK), component
ComponentKey = tuple[str, str, str, str]


def history_interval_s(environ=None) -> float:
    """The sampling interval the controller uses: :data:`INTERVAL_ENV` of ``environ`` (default
    ``os.environ``) when it is a number of seconds of at least :data:`MIN_INTERVAL_S`, else
    :data:`HISTORY_INTERVAL_S` (a value that is not is logged and ignored). Set it in the
    controller's environment: the topology's ``runtime_env: {env_vars: {...}}``, or the
    environment of ``ray start``/``ray.init`` on the head node."""
    environ = os.environ if environ is None else environ
    text = environ.get(INTERVAL_ENV)
    if text is None or not text.strip():
        return HISTORY_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < MIN_INTERVAL_S:
        logger.warning("%s=%r is not a number of seconds of at least %g; sampling every %g s", INTERVAL_ENV,
                       text, MIN_INTERVAL_S, HISTORY_INTERVAL_S)
        return HISTORY_INTERVAL_S
    return value


def numeric_counters(counters: dict | None) -> dict[str, int | float]:
    """The counters of ``counters`` worth a time series: whole numbers within 64 bits (as int) and
    finite decimals (as float; so is a whole number beyond 64 bits, as ``metrics_frame()`` keeps
    it), after :func:`~rayflume._private.observe.parse_counter`; booleans, text, empty values and
    numbers beyond a float are left out."""
    out: dict[str, int | float] = {}
    for name, value in (counters or {}).items():
        value = parse_counter(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            try:
                value = float(value)
            except OverflowError:
                continue
        if isinstance(value, int) or math.isfinite(value):
            out[name] = value
    return out


class _Sample:
    """One sample, compactly: ``layout`` is a tuple of ``(key, int names, float names)`` per
    component (shared with the previous sample when equal), ``ints`` and ``floats`` the values in
    layout order."""

    __slots__ = ("time", "layout", "ints", "floats")

    def __init__(self, at: float, layout: tuple, ints: array, floats: array):
        self.time = at
        self.layout = layout
        self.ints = ints
        self.floats = floats

    @property
    def size(self) -> int:
        """The number of values it holds (what counts against ``max_values``)."""
        return len(self.ints) + len(self.floats)

    def components(self) -> dict[ComponentKey, dict[str, int | float]]:
        """``{key: {counter: value}}``, in the order recorded."""
        out = {}
        i = f = 0
        for key, int_names, float_names in self.layout:
            counters = {}
            for name in int_names:
                counters[name] = self.ints[i]
                i += 1
            for name in float_names:
                counters[name] = self.floats[f]
                f += 1
            out[key] = counters
        return out


class MetricsHistory:
    """A bounded time series of components' numeric counters (see the module docstring for the
    bounds and what they cost). Thread-safe: the controller records from its sampling thread while
    the handle's calls read.

    ``clock`` gives the time of a sample in seconds since the epoch (``time.time``; injected by
    tests); samples are kept in the order recorded, which is expected to be the clock's order (a
    clock set back gives no rate, never a negative one, across that step).
    """

    def __init__(self, max_samples: int = HISTORY_MAX_SAMPLES, max_values: int = HISTORY_MAX_VALUES,
                 clock: Callable[[], float] = time.time):
        if max_samples < 1 or max_values < 1:
            raise ValueError("max_samples and max_values must be at least 1")
        self.max_samples = max_samples
        self.max_values = max_values
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: deque[_Sample] = deque()
        self._values = 0  # values held by self._samples

    def __len__(self) -> int:
        """The number of samples kept."""
        return len(self._samples)

    @property
    def values_kept(self) -> int:
        """The number of counter values kept, over every sample (at most ``max_values``)."""
        return self._values

    def record(self, components: Iterable[tuple[ComponentKey, dict]], at: float | None = None) -> None:
        """Add a sample of ``components`` (``(key, counters)`` pairs; the counters are filtered by
        :func:`numeric_counters`) taken at ``at`` (None: now, by the clock), then drop the oldest
        samples beyond the bounds. A component given twice keeps its first counters."""
        at = self._clock() if at is None else at
        layout, ints, floats = [], array("q"), array("d")
        seen, left_out = set(), 0
        for key, counters in components:
            if key in seen:
                continue
            seen.add(key)
            values = numeric_counters(counters)
            if len(ints) + len(floats) + len(values) > self.max_values:
                left_out += 1
                continue
            int_names, float_names = [], []
            for name, value in values.items():
                if isinstance(value, int):
                    int_names.append(name)
                    ints.append(value)
                else:
                    float_names.append(name)
                    floats.append(value)
            layout.append((tuple(key), tuple(int_names), tuple(float_names)))
        if left_out:
            logger.warning("history sample: %d component(s) left out, beyond %d values per sample", left_out,
                           self.max_values)
        shape = tuple(layout)
        with self._lock:
            if self._samples and self._samples[-1].layout == shape:
                shape = self._samples[-1].layout  # one copy of the names for a run of equal samples
            sample = _Sample(at, shape, ints, floats)
            self._samples.append(sample)
            self._values += sample.size
            while len(self._samples) > self.max_samples or self._values > self.max_values:
                self._values -= self._samples.popleft().size

    def samples(self, window_s: float, now: float | None = None) -> tuple[list[_Sample], _Sample | None]:
        """The samples taken at most ``window_s`` seconds before ``now`` (None: the clock's now),
        oldest first, and the sample just before them (for their first rates; None when none is
        kept)."""
        now = self._clock() if now is None else now
        with self._lock:
            kept = list(self._samples)
        start = bisect_left([s.time for s in kept], now - window_s)
        return kept[start:], kept[start - 1] if start > 0 else None

    def table(self, window_s: float, now: float | None = None) -> pa.Table:
        """The samples of the last ``window_s`` seconds (see :meth:`samples`) as a long table, one
        row per (sample, component), oldest first:

        * ``time`` (UTC timestamp, ms), ``tier`` (None without tiers), ``instance``, ``kind``,
          ``component``;
        * every counter any row has, alphabetically, typed as ``metrics_frame()`` types them
          (whole numbers int64, ``...Time`` as UTC timestamps with 0 as null, decimals float64);
          null where the component did not report it;
        * per integer counter with a rate (``frames.has_rate_column``), ``<Name>PerSecond``: its
          increase per second since the component's previous sample (the sample before the window
          included). Null for a component's first sample, never negative: a counter that went
          down counts its new value from zero.
        """
        window, before = self.samples(window_s, now)
        keys: list = []
        counters: list[dict] = []
        rates: list[dict] = []
        last: dict[ComponentKey, tuple[float, dict]] = {}  # key -> (time, counters) of its latest sample
        if before is not None:
            last = {key: (before.time, values) for key, values in before.components().items()}
        for sample in window:
            for key, values in sample.components().items():
                keys.append((sample.time, key))
                counters.append(values)
                previous = last.get(key)
                row_rates = {}
                if previous is not None:
                    then, old = previous
                    for name, value in values.items():
                        if isinstance(value, int) and isinstance(old.get(name), int) and frames.has_rate_column(name):
                            row_rates[name] = rate_per_second(old[name], value, sample.time - then,
                                                              CounterReset.COUNTS_FROM_ZERO)
                rates.append(row_rates)
                last[key] = (sample.time, values)
        columns: dict[str, pa.Array] = {
            "time": pa.array([int(round(at * 1000)) for at, _ in keys], _TIME),
            "tier": pa.array([key[0] or None for _, key in keys], pa.string()),
            "instance": pa.array([key[1] for _, key in keys], pa.string()),
            "kind": pa.array([key[2] for _, key in keys], pa.string()),
            "component": pa.array([key[3] for _, key in keys], pa.string()),
        }
        with_rates = []
        for name in sorted({n for values in counters for n in values}):
            column = frames._typed_column([values.get(name) for values in counters], frames._is_time(name))
            columns[name] = column
            if frames.has_rate_column(name) and pa.types.is_integer(column.type):
                with_rates.append(name)
        for name in with_rates:
            columns[frames.rate_column(name)] = pa.array([r.get(name) for r in rates], pa.float64())
        return pa.table(columns)
