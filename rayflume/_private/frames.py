"""The notebook's view of a topology: :meth:`rayflume.api.TopologyHandle.metrics_frame` and the
handle's ``_repr_html_``.

A :class:`Sample` is one look at a topology: its ``status()``, one row per component
(:func:`component_rows`) and the rates of its running totals since an earlier look, which a
:class:`RateHistory` picks. :attr:`Sample.table` is the typed Arrow table ``metrics_frame()``
returns (as a pandas DataFrame through :func:`as_frame` when pandas is installed);
:func:`html_view` is the notebook's display of it.

The component entries, counter parsing, rates, error summaries and rate formatting are
:mod:`rayflume._private.observe`'s, shared with ``rayflume top``. A running total that went down
(its component restarted) counts from zero here (:attr:`CounterReset.COUNTS_FROM_ZERO`): a frame's
rates are never negative and never missing for a component that was seen before.
"""
from __future__ import annotations

import html
import importlib
import time

import pyarrow as pa

from rayflume._private.observe import (
    CounterReset,
    component_entries,
    error_summary,
    format_rate,
    is_running_total,
    parse_counter,
    plain_error,
    rate_per_second,
)
from rayflume.topology import Topology

# Rates are measured over at least this long: two looks a moment apart (metrics_frame() and then the
# handle's display, say) would give rates of a few events over a few milliseconds.
MIN_RATE_INTERVAL_S = 1.0
IDENTITY_COLUMNS = ("topology", "tier", "instance", "kind", "component", "type", "node", "state")
ERROR_SHOWN_CHARS = 200  # of an error's last line, in the notebook view
_INT64 = (-(1 << 63), (1 << 63) - 1)
_TIMESTAMP = pa.timestamp("ms", tz="UTC")


def _is_time(counter: str) -> bool:
    """Flume's times (StartTime, StopTime) are epoch milliseconds named ``...Time``."""
    return counter.endswith("Time")


def has_rate_column(counter: str) -> bool:
    """Whether a frame gives ``counter`` a rate column: a running total (by the rule of
    :func:`rayflume._private.metrics.is_running_total`, so not a gauge named like a counter such as
    ``OpenConnectionCount``) named ``<Name>Count``."""
    return counter.endswith("Count") and is_running_total(counter)


def rate_column(counter: str) -> str:
    """``EventAcceptedCount`` -> ``EventAcceptedPerSecond``: the rate column of a counter."""
    return f"{counter[:-len('Count')]}PerSecond"


def _config_type(topology: Topology | None, tier: str, kind: str, name: str) -> str | None:
    """The configured type of component ``name`` (``memory``, ``avro``...), None when unknown."""
    tier_spec = topology.tiers.get(tier) if topology is not None else None
    if tier_spec is None:
        return None
    section = {"SOURCE": tier_spec.sources, "CHANNEL": tier_spec.channels, "SINK": tier_spec.sinks}.get(kind, {})
    cfg = section.get(name)
    return getattr(cfg, "type", None)


def component_rows(topology_name: str, status: dict, topology: Topology | None) -> list[dict]:
    """One row per component of ``status`` (a sink group: one per sink, named as the sink), in the
    status' order: the :data:`IDENTITY_COLUMNS` (``tier`` and ``instance`` None without tiers),
    ``error`` as reported, and ``counters`` parsed (:func:`parse_counter`), ``Type`` left out (it
    is the ``kind``)."""
    rows = []
    for entry in component_entries(status):
        rows.append({
            "topology": topology_name, "tier": entry.tier or None, "instance": entry.instance or None,
            "kind": entry.kind, "component": entry.name,
            "type": _config_type(topology, entry.tier, entry.kind, entry.name),
            "node": entry.node_id, "state": entry.state, "error": entry.error,
            "counters": {k: parse_counter(v) for k, v in entry.counters.items() if k != "Type"}})
    return rows


def row_key(row: dict) -> tuple:
    """What identifies a row of :func:`component_rows` across looks: tier, instance, kind, component."""
    return row["tier"], row["instance"], row["kind"], row["component"]


class Sample:
    """One look at a topology: its status, its rows, and the rates since an earlier look.

    ``interval_s`` is the time since the earlier sample whose ``previous_counts`` are given (None:
    no earlier sample, no rates); ``rates`` maps a row key to ``{counter: increase per second}``
    for the counters with a rate column (:func:`has_rate_column`) both samples have, never negative
    (:attr:`CounterReset.COUNTS_FROM_ZERO`); ``counts`` are this sample's, for later rates.
    """

    def __init__(self, status: dict, rows: list[dict], interval_s: float | None, previous_counts: dict):
        self.status = status
        self.rows = rows
        self.interval_s = interval_s
        self.counts = {row_key(r): {k: v for k, v in r["counters"].items()
                                    if has_rate_column(k) and isinstance(v, int) and not isinstance(v, bool)}
                       for r in rows}
        self.rates: dict[tuple, dict[str, float]] = {}
        if interval_s is not None and interval_s > 0:
            for key, counts in self.counts.items():
                before = previous_counts.get(key)
                if before is None:
                    continue
                self.rates[key] = {
                    counter: rate_per_second(before[counter], now, interval_s, CounterReset.COUNTS_FROM_ZERO)
                    for counter, now in counts.items() if counter in before}

    @property
    def table(self) -> pa.Table:
        """The rows as ``metrics_frame()`` documents them: identity columns, then every counter
        any row reports (alphabetically, typed by :func:`_typed_column`), then a rate column per
        integer counter with one."""
        counters = sorted({k for r in self.rows for k in r["counters"]})
        columns: dict[str, pa.Array] = {
            name: pa.array([r[name] for r in self.rows], pa.string()) for name in IDENTITY_COLUMNS}
        with_rates = []
        for counter in counters:
            column = _typed_column([r["counters"].get(counter) for r in self.rows], _is_time(counter))
            columns[counter] = column
            if has_rate_column(counter) and pa.types.is_integer(column.type):
                with_rates.append(counter)
        for counter in with_rates:
            columns[rate_column(counter)] = pa.array(
                [self.rates.get(row_key(r), {}).get(counter) for r in self.rows], pa.float64())
        return pa.table(columns)


class RateHistory:
    """The earlier samples' counts of one handle, for rates: each new sample's rates are measured
    since the newest earlier sample at least :data:`MIN_RATE_INTERVAL_S` old. Only that sample
    and those after it are kept."""

    def __init__(self):
        self._samples: list[tuple[float, dict]] = []  # (time.monotonic(), Sample.counts), oldest first

    def forget(self) -> None:
        """Drop every earlier sample: the next one has no rates (a new deployment counts anew)."""
        self._samples = []

    def sample(self, status: dict, rows: list[dict], taken_at: float) -> Sample:
        """The sample of ``rows`` (of ``status``, read at ``taken_at`` by ``time.monotonic()``),
        with rates since the newest earlier sample at least MIN_RATE_INTERVAL_S old (none if
        there is none); remembered for later rates."""
        earlier = [s for s in self._samples if taken_at - s[0] >= MIN_RATE_INTERVAL_S]
        reference = earlier[-1] if earlier else None
        interval = taken_at - reference[0] if reference is not None else None
        sample = Sample(status, rows, interval, reference[1] if reference is not None else {})
        kept = [s for s in self._samples if reference is None or s[0] >= reference[0]]
        self._samples = kept + [(taken_at, sample.counts)]
        return sample


def _typed_column(values: list, is_time: bool) -> pa.Array:
    """The narrowest Arrow type that holds every value: timestamp (for a time column of whole
    numbers; 0 and below are null), bool, int64, float64, else string."""
    present = [v for v in values if v is not None]
    bools = all(isinstance(v, bool) for v in present)
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in present)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    if present and ints and not all(_INT64[0] <= v <= _INT64[1] for v in present):
        ints = False  # beyond 64 bits: not a counter any component keeps; kept as float
    if is_time and ints:
        return pa.array([v if v is not None and v > 0 else None for v in values], _TIMESTAMP)
    if present and bools:
        return pa.array(values, pa.bool_())
    if ints:
        return pa.array(values, pa.int64())
    if numbers:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else str(v) for v in values], pa.string())


def optional_pandas():
    """The pandas module, or None when it is not installed (it is optional: the `notebook` extra)."""
    try:
        # imported by name: pandas is an optional extra, never a requirement of the package
        return importlib.import_module("pandas")
    except ImportError:
        return None


def as_frame(table: pa.Table):
    """A pandas DataFrame of ``table`` when pandas can be imported, else ``table`` itself.
    Integers and booleans keep their type with nulls (pandas' nullable dtypes)."""
    pandas = optional_pandas()
    if pandas is None:
        return table
    nullable = {pa.int64(): pandas.Int64Dtype(), pa.bool_(): pandas.BooleanDtype()}
    return table.to_pandas(types_mapper=nullable.get)


# -- the notebook view ------------------------------------------------------------------------------
# Per kind: the counters whose rates the view shows, with their labels.
_VIEW_RATES = {"SOURCE": (("EventAcceptedCount", "accepted"),),
               "CHANNEL": (("EventPutSuccessCount", "in"), ("EventTakeSuccessCount", "out")),
               "SINK": (("EventDrainSuccessCount", "delivered"),)}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def html_view(name: str, sample: Sample) -> str:
    """The notebook view of topology ``name`` from ``sample``: state, tiers, one table row per
    component (state and last error line, rates, channel fill, restarts) and the recent events.
    Every string from the topology is escaped."""
    esc = html.escape
    status = sample.status
    head = (f"<b>rayflume topology</b> <code>{esc(name)}</code>: <b>{esc(str(status.get('state')))}</b>, "
            f"version {esc(str(status.get('version')))}")
    if status.get("finished"):
        head += ", finished"
    if status.get("metrics_url"):
        head += f", metrics at <code>{esc(str(status['metrics_url']))}</code>"
    parts = [f"<div class=\"rayflume-topology\"><p>{head}</p>"]
    tier_lines = []
    for tier_name, tier in (status.get("tiers") or {}).items():
        placement = tier.get("placement") or ""
        line = (f"<li><code>{esc(tier_name or name)}</code>: {esc(str(placement))} on "
                f"{esc(str(tier.get('selector')))}, {len(tier.get('instances') or {})} instance(s)")
        if tier.get("waiting"):
            line += f"; <b>waiting</b>: {esc(str(tier['waiting']))}"
        for channel, why in (tier.get("lost") or {}).items():
            line += f"; <b>LOST</b> {esc(str(channel))}: {esc(str(why))}"
        tier_lines.append(line + "</li>")
    if tier_lines:
        parts.append("<p>tiers:</p><ul>" + "".join(tier_lines) + "</ul>")
    header = ("tier", "instance", "kind", "component", "type", "state", "rates", "channel fill", "restarts")
    parts.append("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead><tbody>")
    for row in sample.rows:
        counters = row["counters"]
        rates = sample.rates.get(row_key(row))
        shown = []
        for counter, label in _VIEW_RATES.get(row["kind"], ()):
            if rates is not None and counter in rates:
                shown.append(f"{label} {format_rate(rates[counter])}/s")
            elif counter in counters:  # reported now, not in the earlier sample: measurable next look
                shown.append(f"{label} …")
        fill = ""
        percent, size, capacity = (counters.get(k) for k in ("ChannelFillPercentage", "ChannelSize",
                                                              "ChannelCapacity"))
        if row["kind"] == "CHANNEL" and _is_number(percent):
            fill = f"{float(percent):.1f}%"
            if _is_number(size) and _is_number(capacity) and capacity:
                fill += f" ({size:,} of {capacity:,})"
        state = esc(str(row["state"]))
        if row.get("error"):
            full = plain_error(row["error"])
            state += f"<br><small title=\"{esc(full)}\">{esc(error_summary(full, ERROR_SHOWN_CHARS))}</small>"
        cells = (esc(str(row["tier"] or "")), esc(str(row["instance"] or "")), esc(str(row["kind"])),
                 f"<code>{esc(str(row['component']))}</code>", esc(str(row["type"] or "")), state,
                 esc(", ".join(shown)), esc(fill), esc(str(counters.get("Restarts", ""))))
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</tbody></table>")
    if sample.interval_s is None:
        note = (f"rates (…) appear from the next look at least {MIN_RATE_INTERVAL_S:g} s after this one: "
                f"they are measured between two samples (display the handle again, or call metrics_frame())")
    else:
        note = f"rates over the last {sample.interval_s:.1f} s (since the previous look)"
    parts.append(f"<p><small>{esc(note)}</small></p>")
    events = (status.get("events") or [])[-5:]
    if events:
        items = "".join(f"<li>{esc(time.strftime('%H:%M:%S', time.localtime(e.get('time', 0))))} "
                        f"{esc(str(e.get('component')))}: {esc(str(e.get('message')))}</li>" for e in events)
        parts.append(f"<details><summary>recent events</summary><ul>{items}</ul></details>")
    parts.append("</div>")
    return "".join(parts)


def html_failure(name: str, exc: BaseException) -> str:
    """The notebook view of topology ``name`` when it could not be read: the exception's type and
    message, escaped, instead of a traceback."""
    return (f"<div><b>rayflume topology</b> <code>{html.escape(name)}</code>: "
            f"<b>{html.escape(type(exc).__name__)}</b><br>{html.escape(str(exc))}</div>")
