"""The counters' time series: the controller's bounded store (without Ray, with an injected clock),
``handle.history()`` and ``handle.plot()`` on a running topology, and their errors.

The Ray tests sample every 0.5 s instead of 2 s: the controller reads
``RAYFLUME_HISTORY_INTERVAL_S``, which their topologies set through ``runtime_env: {env_vars}``.
"""
from __future__ import annotations

import math
import sys
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import pyarrow as pa
import pytest

import rayflume
from rayflume._private import frames, plot
from rayflume._private.history import (
    HISTORY_INTERVAL_S,
    INTERVAL_ENV,
    KEY_COLUMNS,
    MetricsHistory,
    history_interval_s,
    numeric_counters,
)
from tests.channel_contract import wait_until

TEST_INTERVAL_S = 0.5


class FakeClock:
    """A clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def source(accepted, start_ms=1_700_000_000_000, **more):
    return ("", "main", "SOURCE", "gen"), {"EventAcceptedCount": accepted, "StartTime": start_ms, "StopTime": 0,
                                          **more}


def channel(size, fill):
    return ("", "main", "CHANNEL", "mem"), {"EventPutSuccessCount": size, "ChannelSize": size,
                                           "ChannelFillPercentage": fill, "OpenConnectionCount": 3}


def rows(table: pa.Table, component: str | None = None) -> list[dict]:
    return [r for r in table.to_pylist() if component is None or r["component"] == component]


# -- the store, without Ray ------------------------------------------------------------------------
def test_the_number_of_samples_stays_at_its_bound():
    clock = FakeClock()
    history = MetricsHistory(max_samples=10, clock=clock)
    for i in range(100):
        history.record([source(i * 10)])
        clock.advance(2)
    assert len(history) == 10
    assert history.values_kept == 10 * 3
    kept = rows(history.table(window_s=1e9))
    assert len(kept) == 10
    assert [r["EventAcceptedCount"] for r in kept] == [i * 10 for i in range(90, 100)], "the oldest went first"


def test_the_number_of_values_stays_at_its_bound_whatever_the_number_of_components():
    clock = FakeClock()
    history = MetricsHistory(max_samples=1000, max_values=100, clock=clock)
    many = [((f"t{i}", "r0", "SOURCE", "gen"), {"EventAcceptedCount": i, "StartTime": 1, "StopTime": 0})
            for i in range(10)]  # 30 values a sample
    for _ in range(50):
        history.record(many)
        clock.advance(1)
    assert history.values_kept <= 100
    assert len(history) == 3, "as many whole samples as 100 values hold"
    assert history.values_kept == 90
    # a sample larger than the whole budget keeps the components that fit
    history.record([((f"t{i}", "r0", "SOURCE", "gen"), {"EventAcceptedCount": i}) for i in range(150)])
    assert history.values_kept <= 100
    last = history.samples(window_s=0.0)[0]
    assert len(last) == 1 and len(last[0].components()) == 100


def test_a_window_selects_the_samples_of_its_last_seconds():
    clock = FakeClock()
    history = MetricsHistory(clock=clock)
    for i in range(51):  # t0 .. t0+100 every 2 s
        history.record([source(i * 100), channel(i, i / 10)])
        if i < 50:
            clock.advance(2)
    table = history.table(window_s=10)
    times = sorted({r["time"] for r in rows(table)})
    assert len(times) == 6  # t0+90 .. t0+100
    assert times[-1] == datetime.fromtimestamp(clock.now, timezone.utc)
    assert times[0] == datetime.fromtimestamp(clock.now - 10, timezone.utc)
    assert table.num_rows == 12, "a row per (sample, component)"
    assert table.column_names[:len(KEY_COLUMNS)] == list(KEY_COLUMNS)
    # the first sample of the window has a rate, measured since the sample before the window
    first = rows(table, "gen")[0]
    assert first["EventAcceptedPerSecond"] == pytest.approx(50.0)
    assert history.table(window_s=10, now=clock.now + 1000).num_rows == 0
    clock.advance(1000)
    assert history.table(window_s=10).num_rows == 0, "the window ends at the clock's now"


def test_rates_between_samples_count_a_reset_from_zero_and_are_never_negative():
    clock = FakeClock()
    history = MetricsHistory(clock=clock)
    for accepted in (0, 100, 300, 40, 40):  # 300 -> 40: the source restarted and counts from zero
        history.record([source(accepted), channel(accepted, 12.5)])
        clock.advance(2)
    table = history.table(window_s=3600)
    gen = rows(table, "gen")
    assert [r["EventAcceptedPerSecond"] for r in gen] == [None, 50.0, 100.0, 20.0, 0.0]
    assert [r["EventAcceptedCount"] for r in gen] == [0, 100, 300, 40, 40]
    schema = table.schema
    assert schema.field("time").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("EventAcceptedCount").type == pa.int64()
    assert schema.field("StartTime").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("ChannelFillPercentage").type == pa.float64()
    assert schema.field("EventAcceptedPerSecond").type == pa.float64()
    assert gen[0]["StopTime"] is None and gen[0]["StartTime"].year == 2023
    assert gen[0]["tier"] is None and gen[0]["instance"] == "main" and gen[0]["kind"] == "SOURCE"
    # levels have no rate column, even one named like a counter
    assert "ChannelSizePerSecond" not in table.column_names
    assert "OpenConnectionPerSecond" not in table.column_names
    assert "ChannelFillPercentagePerSecond" not in table.column_names
    mem = rows(table, "mem")
    assert [r["EventPutSuccessPerSecond"] for r in mem] == [None, 50.0, 100.0, 20.0, 0.0]


def test_a_component_missing_from_a_sample_gets_its_rate_over_the_longer_interval():
    clock = FakeClock()
    history = MetricsHistory(clock=clock)
    history.record([source(0), channel(0, 0.0)])
    clock.advance(2)
    history.record([channel(5, 0.5)])  # the source did not answer in time
    clock.advance(2)
    history.record([source(400), channel(10, 1.0)])
    gen = rows(history.table(window_s=60), "gen")
    assert len(gen) == 2
    assert gen[1]["EventAcceptedPerSecond"] == pytest.approx(100.0)  # 400 over 4 s


def test_equal_consecutive_samples_share_their_names():
    clock = FakeClock()
    history = MetricsHistory(clock=clock)
    history.record([source(1), channel(1, 0.1)])
    clock.advance(2)
    history.record([source(2), channel(2, 0.2)])
    clock.advance(2)
    history.record([source(3)])
    older, newer, changed = history.samples(window_s=60)[0]
    assert older.layout is newer.layout
    assert changed.layout is not newer.layout


def test_only_numeric_counters_are_kept():
    assert numeric_counters({"A": 1, "B": "2", "C": "2.5", "D": True, "E": "text", "F": None, "G": "",
                             "H": float("nan"), "I": 1.5}) == {"A": 1, "B": 2, "C": 2.5, "I": 1.5}
    # beyond 64 bits: a float, as metrics_frame() keeps it; beyond a float: left out
    assert numeric_counters({"big": 2 ** 70, "huge": 10 ** 400}) == {"big": float(2 ** 70)}


def test_an_empty_history_is_a_table_with_the_key_columns():
    table = MetricsHistory(clock=FakeClock()).table(window_s=60)
    assert table.num_rows == 0 and table.column_names == list(KEY_COLUMNS)


def test_the_interval_comes_from_the_environment_when_it_is_a_usable_number():
    assert history_interval_s({}) == HISTORY_INTERVAL_S
    assert history_interval_s({INTERVAL_ENV: "0.5"}) == 0.5
    for bad in ("fast", "0", "-1", "0.01", "nan", "inf"):
        assert history_interval_s({INTERVAL_ENV: bad}) == HISTORY_INTERVAL_S, bad


def test_the_table_is_pyarrow_without_pandas_and_a_typed_dataframe_with_it(monkeypatch):
    clock = FakeClock()
    history = MetricsHistory(clock=clock)
    for accepted in (0, 10):
        history.record([source(accepted)])
        clock.advance(1)
    table = history.table(window_s=60)
    with monkeypatch.context() as patched:
        patched.setattr(frames, "optional_pandas", lambda: None)
        assert frames.as_frame(table) is table
    pd = pytest.importorskip("pandas")
    frame = frames.as_frame(table)
    assert isinstance(frame, pd.DataFrame)
    assert str(frame["EventAcceptedCount"].dtype) == "Int64"
    assert str(frame["time"].dtype) == "datetime64[ms, UTC]"


# -- the plot, without Ray ---------------------------------------------------------------------------
def plotted_table() -> pa.Table:
    clock = FakeClock()
    history = MetricsHistory(clock=clock)
    sink = ("", "main", "SINK", "out")
    for i in range(6):
        history.record([source(i * 100), channel(i, i * 10.0), (sink, {"EventDrainSuccessCount": i * 90})])
        clock.advance(2)
    return history.table(window_s=60)


def labels(ax) -> set[str]:
    return {line.get_label() for line in ax.get_lines()}


def test_the_plot_has_throughput_and_fill_axes_and_saves_as_png(tmp_path):
    pytest.importorskip("matplotlib")
    fig = plot.history_figure("demo", plotted_table(), 60)
    rates_ax, fill_ax = fig.axes
    assert labels(rates_ax) == {"source gen", "sink out"}
    assert labels(fill_ax) == {"channel mem"}
    assert rates_ax.get_ylabel() == "events/s" and fill_ax.get_ylabel() == "fill (%)"
    assert rates_ax.get_legend() is not None and fill_ax.get_legend() is not None
    gen = next(line for line in rates_ax.get_lines() if line.get_label() == "source gen")
    values = list(gen.get_ydata())
    assert math.isnan(values[0]) and values[1:] == [50.0] * 5
    out = tmp_path / "history.png"
    fig.savefig(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000


def test_a_plot_of_an_empty_history_says_there_is_nothing_yet():
    pytest.importorskip("matplotlib")
    fig = plot.history_figure("demo", MetricsHistory(clock=FakeClock()).table(window_s=60), 60)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert not ax.get_lines()
        assert any("no samples yet" in t.get_text() for t in ax.texts)


def test_without_matplotlib_the_plot_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.dates", None)  # its import raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'rayflume\[notebook\]'"):
        plot.require_matplotlib()


# -- on Ray ------------------------------------------------------------------------------------------
def endless(name):
    """A sequence source that never ends, held back by a slow sink (about 20 batches of 100 a
    second), so that the counters grow at a steady pace without filling a core."""
    return {"name": name, "metrics": {"port": None},
            # the controller's environment: sample every TEST_INTERVAL_S
            "runtime_env": {"env_vars": {INTERVAL_ENV: str(TEST_INTERVAL_S)}},
            "sources": {"gen": {"type": "sequence", "batch_size": 100, "channels": ["mem"]}},
            "channels": {"mem": {"type": "memory", "capacity": 2000, "transaction_capacity": 500}},
            "sinks": {"out": {"type": "flaky_sink", "channel": "mem", "collector": name, "batch_size": 100,
                              "write_delay_s": 0.05}}}


def test_history_and_plot_of_a_running_topology(deployed, monkeypatch, tmp_path):
    handle = deployed(endless("hist-run"))

    def flowing():
        table = handle._history_table(window_s=60)
        flowing.table = table
        by_component: dict[str, list[dict]] = {}
        for row in table.to_pylist():
            by_component.setdefault(row["component"], []).append(row)
        if set(by_component) != {"gen", "mem", "out"}:
            return False
        if any(len({r["time"] for r in rs}) < 2 for rs in by_component.values()):
            return False
        return (any((r.get("EventAcceptedPerSecond") or 0) > 0 for r in by_component["gen"])
                and any((r.get("EventDrainSuccessPerSecond") or 0) > 0 for r in by_component["out"]))

    wait_until(flowing, timeout_s=90, interval_s=0.5, what="two samples of every component, with positive rates")
    table = flowing.table
    assert table.column_names[:len(KEY_COLUMNS)] == list(KEY_COLUMNS)
    assert table.schema.field("EventAcceptedCount").type == pa.int64()
    assert table.schema.field("Restarts").type == pa.int64()
    assert table.schema.field("ChannelFillPercentage").type == pa.float64()
    rates = [v for r in table.to_pylist() for c, v in r.items() if c.endswith("PerSecond") and v is not None]
    assert rates and all(v >= 0 for v in rates)
    out_rates = [r["EventDrainSuccessPerSecond"] for r in table.to_pylist()
                 if r["component"] == "out" and r["EventDrainSuccessPerSecond"] is not None]
    assert max(out_rates) < 20_000, "a rate, not a count"
    times = sorted({r["time"] for r in table.to_pylist()})
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    assert min(gaps) >= TEST_INTERVAL_S * 0.8, "sampled at the interval the environment set"

    # the public method: a DataFrame with pandas, the same table without
    pd = pytest.importorskip("pandas")
    frame = handle.history(window_s=60)
    assert isinstance(frame, pd.DataFrame)
    assert set(frame["component"]) == {"gen", "mem", "out"}
    assert str(frame["EventAcceptedCount"].dtype) == "Int64"
    with monkeypatch.context() as patched:
        patched.setattr(frames, "optional_pandas", lambda: None)
        assert isinstance(handle.history(window_s=60), pa.Table)
    with pytest.raises(ValueError, match="window_s"):
        handle.history(window_s=0)

    pytest.importorskip("matplotlib")
    fig = handle.plot(window_s=60)
    assert type(fig).__name__ == "Figure" and len(fig.axes) == 2
    assert labels(fig.axes[0]) == {"source gen", "sink out"}
    assert labels(fig.axes[1]) == {"channel mem"}
    out = tmp_path / "pipeline.png"
    fig.savefig(out)
    assert out.stat().st_size > 1000


class Stub:
    """Stands for a component actor: ``metrics()`` answers ``counters`` after ``delay_s``;
    ``calls()`` (answered while metrics() sleeps) says how many metrics() calls it started."""

    def __init__(self, counters: dict, delay_s: float = 0.0):
        self.counters, self.delay_s, self.started = counters, delay_s, 0

    def metrics(self) -> dict:
        self.started += 1
        time.sleep(self.delay_s)  # the injected fault: an actor slow to answer, which a sample must not wait for
        return self.counters

    def calls(self) -> int:
        return self.started


def test_a_sample_waits_a_bounded_time_and_never_piles_calls_on_a_stuck_actor(ray_local):
    from rayflume._private import controller as ctl

    remote_stub = ray_local.remote(max_concurrency=2)(Stub)
    fast = remote_stub.remote({"EventAcceptedCount": 5, "Name": "text"})
    group = remote_stub.remote({"k1": {"EventDrainSuccessCount": 3}, "k2": {"EventDrainSuccessCount": 4}})
    stuck = remote_stub.remote({"EventPutSuccessCount": 1}, delay_s=60)
    # started (a worker process each) before the clock of a sample runs
    assert ray_local.get([a.calls.remote() for a in (fast, group, stuck)], timeout=120) == [0, 0, 0]
    inst = ctl._Instance("", "main", None)
    inst.components = {("SOURCE", "gen"): ctl._Managed("SOURCE", "gen", None, handle=fast, replacements=1),
                       ("SINK", "g"): ctl._Managed("SINK", "g", None, handle=group),
                       ("CHANNEL", "mem"): ctl._Managed("CHANNEL", "mem", None, handle=stuck),
                       ("CHANNEL", "gone"): ctl._Managed("CHANNEL", "gone", None, handle=None)}
    controller = SimpleNamespace(instances={("", "main"): inst}, _history_pending={})
    try:
        for _ in range(3):
            started = time.monotonic()
            sample = dict(ctl.TopologyController._history_sample(controller))
            assert time.monotonic() - started < ctl.HISTORY_CALL_TIMEOUT_S + 5
            assert sample == {("", "main", "SOURCE", "gen"): {"EventAcceptedCount": 5, "Name": "text", "Restarts": 1},
                              ("", "main", "SINK", "k1"): {"EventDrainSuccessCount": 3, "Restarts": 0},
                              ("", "main", "SINK", "k2"): {"EventDrainSuccessCount": 4, "Restarts": 0}}
        assert ray_local.get(stuck.calls.remote(), timeout=30) == 1, "asked once until it answers"
        assert ray_local.get(fast.calls.remote(), timeout=30) == 3
        assert list(controller._history_pending) == [stuck._actor_id]
    finally:
        for actor in (fast, group, stuck):
            ray_local.kill(actor)


def test_history_after_stop_raises_topology_not_running(deployed):
    handle = deployed(endless("hist-stop"))
    wait_until(lambda: handle._history_table(window_s=60).num_rows > 0, timeout_s=60, interval_s=0.5,
               what="a first sample")
    handle.stop(drain_timeout_s=5)
    with pytest.raises(rayflume.TopologyNotRunning):
        handle.history(window_s=60)
    with pytest.raises(rayflume.TopologyNotRunning):
        handle.plot(window_s=60)
