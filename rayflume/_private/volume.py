"""Hourly event volume per source, and per value of one configured header: what
``TopologyHandle.volume()`` and ``rayflume volume`` read, and what a ``volume_change`` alert rule
compares (this hour against the same hour N days earlier).

:class:`HourlyVolume` is a plain object with an injected clock. The controller feeds it the
counters its history thread samples every 2 s (:meth:`HourlyVolume.observe`): the growth of a
source's ``EventAcceptedCount`` since the previous reading is added to the current UTC hour of
that source, and, when the topology configures ``volume: {header: NAME}``, the growth of the
source's ``Volume.<value>`` counters (counted by the source runner after its interceptors, see
:data:`VOLUME_PREFIX`) to the current hour of that header value. A reading below the previous one
is a reset (the component restarted and counts from zero): the new reading is counted whole.
Events are attributed to the hour in which the controller saw them counted, so an hour's edge
is blurred by at most one sampling interval.

Bounds (memory and the size of the stored document):

* hours: only the last ``retention_hours`` (default 8 days + 1 hour, :data:`RETENTION_HOURS`) are
  kept; older hours are dropped whenever the current hour changes;
* header values: at most ``max_values`` (default 200) distinct values per (tier, instance,
  source); further values are counted under :data:`OTHER` (``(other)``);
* series: at most ``max_series`` (default 4,000) (tier, instance, source, value) series in all;
  a new header value beyond it goes to its source's ``(other)`` (let in beyond the cap, so that
  no value's events vanish: at most one more series per source), a new source beyond it is not
  counted (``dropped_events`` says how many events were left out).

So the store holds at most ``(max_series + sources) x retention_hours`` counts (4,000 x 193,
about 772k integers: some 30 MB of Python objects; 7.9 MB as the stored JSON document when every
count has 8 digits, measured) and one baseline per counter a source reports (at most
``max_values`` + 2 per source), whatever the topology does; a topology with a few sources and a
few dozen values holds a few thousand counts.

``to_doc()``/``from_doc()`` round-trip everything (counts and baselines), so a controller that
restores the document it saved counts on from the saved baselines: what it saw between its last
save and its death is counted once, after the restart, in the hour of the restart.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

import pyarrow as pa

from rayflume.counters import Counters

HOUR_S = 3600
RETENTION_HOURS = 8 * 24 + 1  # 8 whole days back from any hour of the current one
MAX_VALUES = 200
MAX_SERIES = 4000
VOLUME_PREFIX = "Volume."  # a source's per-header-value counters: Volume.<value>
OTHER = "(other)"  # header values beyond the per-source cap
NONE = "(none)"  # events without the header
DOC_VERSION = 1
ACCEPTED = "EventAcceptedCount"

# (tier, instance, source, header value or None for the source's whole volume)
SeriesKey = tuple[str, str, str, "str | None"]
_TIME = pa.timestamp("s", tz="UTC")


def hour_of(t_s: float) -> int:
    """The UTC hour ``t_s`` (epoch seconds) falls in, as hours since the epoch."""
    return int(t_s // HOUR_S)


class HourlyVolume:
    """Counts of accepted events per UTC hour and series (see the module docstring for the bounds
    and the reset rule). Not thread-safe: the controller calls it from one thread."""

    def __init__(self, header: str | None = None, retention_hours: int = RETENTION_HOURS,
                 max_values: int = MAX_VALUES, max_series: int = MAX_SERIES,
                 clock: Callable[[], float] = time.time):
        if retention_hours < 1 or max_values < 1 or max_series < 1:
            raise ValueError("retention_hours, max_values and max_series must be at least 1")
        self.header = header
        self.retention_hours = int(retention_hours)
        self.max_values = int(max_values)
        self.max_series = int(max_series)
        self.clock = clock
        self._counts: dict[SeriesKey, dict[int, int]] = {}
        self._baselines: dict[tuple[str, str, str, str], float] = {}  # (tier, inst, source, counter)
        self._values: dict[tuple[str, str, str], int] = {}  # header values kept per source
        self.dropped_events = 0
        self._last_hour = hour_of(clock())

    # -- counting ----------------------------------------------------------------------------------
    def observe(self, tier: str, instance: str, source: str, counters: dict, at: float | None = None) -> None:
        """Add what ``counters`` (a source's counters as ``metrics()`` reports them) grew since this
        source's previous reading to the hour of ``at`` (default: now). The first reading of a
        counter counts whole (the source counted it since it was deployed, or since a restart that
        lost its previous total); a reading below the previous one is a reset and counts whole."""
        hour = hour_of(self.clock() if at is None else at)
        self._roll(hour)
        for key, raw in counters.items():
            if key == ACCEPTED:
                value = None
            elif self.header is not None and isinstance(key, str) and key.startswith(VOLUME_PREFIX):
                value = key[len(VOLUME_PREFIX):]
            else:
                continue
            reading = _number(raw)
            if reading is None:
                continue
            bkey = (tier, instance, source, key)
            previous = self._baselines.get(bkey)
            grown = reading if previous is None or reading < previous else reading - previous
            self._baselines[bkey] = reading
            if grown > 0:
                self.add(tier, instance, source, value, int(grown), hour=hour)

    def add(self, tier: str, instance: str, source: str, value: str | None, events: int,
            at: float | None = None, hour: int | None = None) -> None:
        """Add ``events`` to one series' hour (``hour`` since the epoch, else the hour of ``at``,
        else now), applying the bounds: a value beyond the source's cap goes to ``(other)``."""
        if hour is None:
            hour = hour_of(self.clock() if at is None else at)
        if hour <= self._last_hour - self.retention_hours:
            return  # older than what is kept
        key = (tier, instance, source, value)
        series = self._counts.get(key)
        if series is None:
            if value is not None:
                per_source = (tier, instance, source)
                kept = self._values.get(per_source, 0)
                if value != OTHER and (kept >= self.max_values or len(self._counts) >= self.max_series):
                    return self.add(tier, instance, source, OTHER, events, hour=hour)
            if len(self._counts) >= self.max_series and not (value == OTHER and self._counts):
                self.dropped_events += events
                return
            series = self._counts[key] = {}
            if value is not None and value != OTHER:
                self._values[(tier, instance, source)] = self._values.get((tier, instance, source), 0) + 1
        series[hour] = series.get(hour, 0) + events

    def _roll(self, hour: int) -> None:
        """Drop the hours that left the retention window when the current hour changes."""
        if hour <= self._last_hour:
            return
        self._last_hour = hour
        oldest = hour - self.retention_hours + 1
        for key in list(self._counts):
            series = self._counts[key]
            for h in [h for h in series if h < oldest]:
                del series[h]
            if not series:
                del self._counts[key]
                if key[3] is not None and key[3] != OTHER:
                    per_source = key[:3]
                    self._values[per_source] = self._values.get(per_source, 1) - 1

    def prune(self) -> None:
        """Apply the retention to the current time (done on every reading anyway)."""
        self._roll(hour_of(self.clock()))

    # -- reading -----------------------------------------------------------------------------------
    def hour_volume(self, hour_start_s: float, source: str | None = None, value: str | None = None,
                    tier: str | None = None, instance: str | None = None) -> int:
        """Events accepted in the UTC hour containing ``hour_start_s``, summed over the series that
        match: every instance (and tier) unless named; the source's whole volume when ``value`` is
        None, else that header value's. 0 for an hour with no count or no longer kept."""
        hour = hour_of(hour_start_s)
        total = 0
        for (t, i, s, v), series in self._counts.items():
            if v == value and (source is None or s == source) and (tier is None or t == tier) \
                    and (instance is None or i == instance):
                total += series.get(hour, 0)
        return total

    def sources(self) -> list[str]:
        """The names of the sources with a count kept, sorted."""
        return sorted({s for (_, _, s, _) in self._counts})

    def compare(self, hour_start_s: float, days_back: int = 7, **match) -> tuple[int, int]:
        """``(volume of the hour containing hour_start_s, volume of the same hour days_back days
        earlier)`` for the series :meth:`hour_volume` matches with ``match`` (source, value, tier,
        instance): what a ``volume_change`` alert rule compares. The earlier hour is 0 when it is
        older than what is kept (more than 8 days back by default)."""
        return (self.hour_volume(hour_start_s, **match),
                self.hour_volume(hour_start_s - days_back * 24 * HOUR_S, **match))

    def rows(self, days: float = 8, by_header: bool = False) -> list[dict]:
        """One dict per (hour, series) with a count, of the last ``days`` days (the current hour
        included), sorted by hour then series: hour (epoch seconds of the hour's start), tier,
        instance, source, value (None unless ``by_header``), events."""
        first = hour_of(self.clock()) - int(days * 24) + 1
        out = []
        for (t, i, s, v), series in self._counts.items():
            if (v is not None) != bool(by_header):
                continue
            for h, n in series.items():
                if h >= first:
                    out.append({"hour": h * HOUR_S, "tier": t, "instance": i, "source": s, "value": v,
                                "events": n})
        out.sort(key=lambda r: (r["hour"], r["tier"], r["instance"], r["source"], r["value"] or ""))
        return out

    def table(self, days: float = 8, by_header: bool = False, header_column: str | None = None) -> pa.Table:
        """:meth:`rows` as a pyarrow Table: hour (UTC timestamp of the hour's start), tier (None in a
        topology without tiers), instance, source, the header value (null unless ``by_header``;
        column ``header_column``, default the header's name or ``value``), events (int64)."""
        rows = self.rows(days, by_header)
        name = header_column or self.header or "value"
        return pa.table({
            "hour": pa.array([r["hour"] for r in rows], _TIME),
            "tier": pa.array([r["tier"] or None for r in rows], pa.string()),  # None: no tiers
            "instance": pa.array([r["instance"] for r in rows], pa.string()),
            "source": pa.array([r["source"] for r in rows], pa.string()),
            name: pa.array([r["value"] for r in rows], pa.string()),
            "events": pa.array([r["events"] for r in rows], pa.int64()),
        })

    def __len__(self) -> int:
        """The number of (series, hour) counts held."""
        return sum(len(s) for s in self._counts.values())

    # -- persistence -------------------------------------------------------------------------------
    def to_doc(self) -> dict:
        """A JSON-able dict of everything (counts, baselines, bounds): each series as its first hour
        and the counts of the consecutive hours from there (0 for an hour without events)."""
        series = []
        for (t, i, s, v), counts in self._counts.items():
            if not counts:
                continue
            first, last = min(counts), max(counts)
            series.append([t, i, s, v, first, [counts.get(h, 0) for h in range(first, last + 1)]])
        return {"version": DOC_VERSION, "header": self.header, "last_hour": self._last_hour,
                "dropped": self.dropped_events,
                "baselines": [[t, i, s, k, n] for (t, i, s, k), n in self._baselines.items()],
                "series": series}

    def restore(self, doc: dict | None) -> None:
        """Load what :meth:`to_doc` wrote (added to what is held; the bounds still apply). Baselines
        of header values are dropped when the stored header is not this store's (the header
        setting changed): they would be another header's values."""
        if not doc or doc.get("version") != DOC_VERSION:
            return
        same_header = doc.get("header") == self.header
        self._last_hour = max(self._last_hour, int(doc.get("last_hour", self._last_hour)))
        self.dropped_events += int(doc.get("dropped", 0))
        for t, i, s, k, n in doc.get("baselines", []):
            if k == ACCEPTED or same_header:
                self._baselines[(t, i, s, k)] = n
        for t, i, s, v, first, counts in doc.get("series", []):
            if v is not None and not same_header:
                continue
            for offset, n in enumerate(counts):
                if n:
                    self.add(t, i, s, v, int(n), hour=int(first) + offset)
        self.prune()

    @classmethod
    def from_doc(cls, doc: dict | None, **kwargs) -> "HourlyVolume":
        """A store holding what ``doc`` (from :meth:`to_doc`) held; ``kwargs`` as for the class."""
        store = cls(**kwargs)
        store.restore(doc)
        return store


def _number(value) -> float | None:
    """A counter's reading (an int, or the string Flume's JSON shape makes of it), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def strip_volume(counters: dict) -> dict:
    """``counters`` without the per-header-value ``Volume.<value>`` counters (kept out of the
    history and of exported metrics: the volume store is where they are read)."""
    if not any(isinstance(k, str) and k.startswith(VOLUME_PREFIX) for k in counters):
        return counters
    return {k: v for k, v in counters.items() if not (isinstance(k, str) and k.startswith(VOLUME_PREFIX))}


def count_header_values(counters: Counters, values: Iterable[tuple[str | None, int]], max_values: int) -> None:
    """Add ``(value, events)`` pairs to ``counters`` as ``Volume.<value>`` (``(none)`` for events
    without the header), at most ``max_values`` distinct keys in ``counters``; further values are
    counted under ``Volume.(other)``."""
    kept = None
    for value, n in values:
        key = VOLUME_PREFIX + (NONE if value is None else value)
        if key not in counters:
            if kept is None:
                kept = sum(1 for k in counters if isinstance(k, str) and k.startswith(VOLUME_PREFIX)
                           and k != VOLUME_PREFIX + OTHER)
            if kept >= max_values:
                key = VOLUME_PREFIX + OTHER
            elif key != VOLUME_PREFIX + OTHER:
                kept += 1
        counters.add(key, n)
