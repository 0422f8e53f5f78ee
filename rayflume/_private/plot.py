"""``TopologyHandle.plot()``: a topology's history (:mod:`rayflume._private.history`) as a
matplotlib Figure, throughput per source and sink above, channel fill below.

matplotlib is optional (the ``notebook`` extra) and imported only when a plot is asked for; without
it :func:`require_matplotlib` raises an ImportError saying what to install.
"""
from __future__ import annotations

import importlib
import math

import pyarrow as pa

# Per kind: the rate column plotted as the component's throughput (events/s), and what it means.
THROUGHPUT_COLUMNS = {"SOURCE": ("EventAcceptedPerSecond", "accepted"),
                      "SINK": ("EventDrainSuccessPerSecond", "delivered")}
FILL_COLUMN = "ChannelFillPercentage"
INSTALL_HINT = "pip install 'rayflume[notebook]'"


def require_matplotlib():
    """``matplotlib.pyplot`` (with ``matplotlib.dates`` imported), or an ImportError naming the
    extra to install. Imported by name: matplotlib is an optional extra, never a requirement."""
    try:
        importlib.import_module("matplotlib.dates")
        return importlib.import_module("matplotlib.pyplot")
    except ImportError as exc:
        raise ImportError(f"handle.plot() needs matplotlib, which is not installed ({exc}): {INSTALL_HINT}") from None


def _label(row: dict) -> str:
    """``source gen``, or ``agent/r0 source gen`` in a topology with tiers."""
    where = f"{row['tier']}/{row['instance']} " if row.get("tier") else ""
    return f"{where}{row['kind'].lower()} {row['component']}"


def _series(table: pa.Table, kinds: dict) -> dict[str, tuple[list, list]]:
    """``{label: (times, values)}`` of the rows of the given kinds, ``kinds`` mapping a kind to the
    column to take; a missing value is NaN (a gap in the line). A kind whose column the table does
    not have gives nothing."""
    wanted = {kind: column for kind, column in kinds.items() if column in table.column_names}
    if not wanted:
        return {}
    columns = ["time", "tier", "instance", "kind", "component", *sorted(set(wanted.values()))]
    series: dict[str, tuple[list, list]] = {}
    for row in table.select(columns).to_pylist():
        column = wanted.get(row["kind"])
        if column is None:
            continue
        times, values = series.setdefault(_label(row), ([], []))
        value = row[column]
        times.append(row["time"])
        values.append(math.nan if value is None else float(value))
    return series


def history_figure(name: str, table: pa.Table, window_s: float):
    """A Figure of topology ``name``'s history ``table`` (the long table of
    :meth:`MetricsHistory.table`) over ``window_s`` seconds: two axes sharing the time axis (UTC),
    events/s per source (accepted) and sink (delivered) above, fill (%) per channel below, each
    with a legend. An axis with nothing to draw yet says so.

    The figure is made with pyplot (so a notebook's inline backend shows it) and closed there at
    once: returned as a cell's value it is shown once, and ``savefig`` works on it (headless, with
    the Agg backend, too)."""
    plt = require_matplotlib()
    mdates = importlib.import_module("matplotlib.dates")
    fig, (rates_ax, fill_ax) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), layout="constrained")
    plt.close(fig)
    throughput = _series(table, {kind: column for kind, (column, _) in THROUGHPUT_COLUMNS.items()})
    for label, (times, values) in throughput.items():
        rates_ax.plot(times, values, label=label)
    rates_ax.set_title(f"rayflume topology '{name}': throughput (sources accepted, sinks delivered), "
                       f"last {window_s:g} s")
    rates_ax.set_ylabel("events/s")
    fills = _series(table, {"CHANNEL": FILL_COLUMN})
    for label, (times, values) in fills.items():
        fill_ax.plot(times, values, label=label)
    fill_ax.set_title("channel fill")
    fill_ax.set_ylabel("fill (%)")
    fill_ax.set_ylim(0, max([100.0, *(v for _, vs in fills.values() for v in vs if not math.isnan(v))]))
    fill_ax.set_xlabel("time (UTC)")
    for ax, drawn in ((rates_ax, throughput), (fill_ax, fills)):
        if drawn:
            ax.legend(loc="upper left", fontsize="small")
        else:  # say why the axis is empty rather than leave a blank frame
            ax.text(0.5, 0.5, "no samples yet", transform=ax.transAxes, ha="center", va="center")
        ax.grid(True, alpha=0.3)
    locator = mdates.AutoDateLocator()
    fill_ax.xaxis.set_major_locator(locator)
    fill_ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    return fig
