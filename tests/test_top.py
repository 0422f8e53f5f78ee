"""`rayflume top`: rows and rates from two readings, flow order, sorting, the rendering, the live view
in a real pseudo-terminal, `--once` against a running topology; and the Ray export of counters as
Counters (never decreased) and of levels as Gauges."""
from __future__ import annotations

import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time

import pytest

from rayflume._private import metrics as metrics_module
from rayflume._private.metrics import RayExporter, RunningTotals, is_running_total, prometheus_text
from rayflume._private.top import (
    SORT_COLUMNS,
    Snapshot,
    TopView,
    build_rows,
    error_summary,
    fill_bar,
    render,
    rows_as_json,
    sort_rows,
)
from tests.channel_contract import wait_until

ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
CLI_TIMEOUT_S = 120


# -- rows from two readings, without Ray -------------------------------------------------------------
def component(kind, name, counters=None, tier="", instance="", **extra):
    entry = {"kind": kind, "name": name, "tier": tier, "instance": instance, "state": "ALIVE", "restarts": 0,
             "node_id": "n" * 56, **extra}
    if kind == "SINK":
        entry["sinks"] = counters
    else:
        entry["counters"] = counters or {}
    return entry


def scaled(scale: int, **totals) -> dict:
    """Counters as Flume's JSON spells them (strings), each ``scale`` times its base."""
    return {key: str(base * scale) for key, base in totals.items()}


def tiered_status(scale: int) -> dict:
    """A two-tier status whose running totals are ``scale`` times a base, listed the way the
    controller lists them (tiers not in flow order, instances sorted, each instance's channels,
    then sinks, then sources)."""
    def agent(instance):
        return [
            component("CHANNEL", "buf", {**scaled(scale, EventPutSuccessCount=100, EventTakeSuccessCount=90),
                                         "ChannelSize": "250", "ChannelCapacity": "1000"}, "agent", instance),
            component("SINK", "forward", {"forward": scaled(scale, EventDrainAttemptCount=90,
                                                            EventDrainSuccessCount=90)}, "agent", instance),
            component("SOURCE", "tail", {**scaled(scale, EventReceivedCount=100, EventAcceptedCount=100),
                                         "ChannelWriteFail": "3"}, "agent", instance),
        ]
    collector = [
        component("CHANNEL", "disk", {**scaled(scale, EventPutSuccessCount=180, EventTakeSuccessCount=180),
                                      "ChannelSize": "10", "ChannelCapacity": "100", "ChannelFillPercentage": "10.0"},
                  "collector", "r0"),
        component("SINK", "out", {"a": scaled(scale, EventDrainSuccessCount=100, BytesWrittenCount=4096),
                                  "b": {**scaled(scale, EventDrainSuccessCount=80, BytesWrittenCount=1024),
                                        "EventWriteFail": "2"}},
                  "collector", "r0", error="b: DeliveryError: disk full"),
        component("SOURCE", "recv", scaled(scale, EventReceivedCount=180, EventAcceptedCount=180), "collector", "r0"),
    ]
    return {"name": "web", "state": "RUNNING", "version": 2, "tiers": {"collector": {}, "agent": {}},
            "components": collector + agent("host-a") + agent("host-b")}


def two_readings(seconds: float = 2.0, tier_order=("agent", "collector")):
    first = Snapshot(tiered_status(1), taken_at=100.0, node_names={"n" * 56: "10.0.0.7"})
    second = Snapshot(tiered_status(3), taken_at=100.0 + seconds, node_names={"n" * 56: "10.0.0.7"})
    return build_rows(first, second, list(tier_order) if tier_order else None)


def test_rows_come_in_flow_order_tier_by_tier_and_instance_by_instance():
    rows = two_readings()
    assert [(r.scope, r.kind, r.name) for r in rows] == [
        ("agent/host-a", "SOURCE", "tail"), ("agent/host-a", "CHANNEL", "buf"), ("agent/host-a", "SINK", "forward"),
        ("agent/host-b", "SOURCE", "tail"), ("agent/host-b", "CHANNEL", "buf"), ("agent/host-b", "SINK", "forward"),
        ("collector/r0", "SOURCE", "recv"), ("collector/r0", "CHANNEL", "disk"),
        ("collector/r0", "SINK", "out/a"), ("collector/r0", "SINK", "out/b")]
    assert [r.flow_position for r in rows] == list(range(len(rows)))
    # without a known tier order, the status' order of tiers holds; kinds still flow
    unordered = two_readings(tier_order=None)
    assert [r.scope for r in unordered][:3] == ["collector/r0"] * 3
    assert [r.kind for r in unordered][:3] == ["SOURCE", "CHANNEL", "SINK"]


def test_rates_bytes_fill_errors_and_node_from_two_readings():
    rows = {(r.scope, r.name): r for r in two_readings(seconds=2.0)}
    tail = rows[("agent/host-a", "tail")]
    assert (tail.events_in_per_s, tail.events_out_per_s) == (100.0, 100.0)  # (300 - 100) / 2 s
    assert tail.errors == 3 and tail.node == "10.0.0.7" and tail.bytes_per_s is None
    buf = rows[("agent/host-a", "buf")]
    assert (buf.events_in_per_s, buf.events_out_per_s) == (100.0, 90.0)
    assert (buf.channel_size, buf.channel_capacity, buf.fill_percent) == (250.0, 1000.0, 25.0)
    assert rows[("collector/r0", "disk")].fill_percent == 10.0  # ChannelFillPercentage wins when present
    a, b = rows[("collector/r0", "out/a")], rows[("collector/r0", "out/b")]
    assert a.bytes_per_s == 4096.0 and b.bytes_per_s == 1024.0 and a.events_out_per_s == 100.0
    assert a.events_in_per_s is None  # a sink that does not count attempts has no in-rate
    assert b.errors == 2 and b.error == "b: DeliveryError: disk full" == a.error  # the group's error


def test_an_error_loses_ray_colours_and_the_table_shows_its_last_line():
    remote = ("channel 'side' full: \x1b[36mray::ChannelActor.put()\x1b[39m (pid=1)\n  File \"x.py\", line 1, in put\n"
              "rayflume.errors.ChannelFull: channel 'side' is full (2000/2000 events)")
    status = {"name": "t", "tiers": {"": {}}, "components": [component("SOURCE", "gen", {}, error=remote)]}
    [row] = build_rows(None, Snapshot(status, taken_at=1.0))
    assert "\x1b" not in row.error and row.error.startswith("channel 'side' full: ray::ChannelActor.put()")
    assert error_summary(row.error) == "rayflume.errors.ChannelFull: channel 'side' is full (2000/2000 events)"
    assert error_summary("x" * 500, limit=20) == "x" * 19 + "…"


def test_no_rates_from_one_reading_nor_across_a_counter_that_went_down():
    only = build_rows(None, Snapshot(tiered_status(1), taken_at=5.0))
    assert all(r.events_in_per_s is None and r.events_out_per_s is None for r in only)
    first = Snapshot(tiered_status(3), taken_at=1.0)
    restarted = Snapshot(tiered_status(1), taken_at=2.0)
    assert all(r.events_out_per_s is None for r in build_rows(first, restarted))


def test_sorting_cycles_columns_reverses_and_keeps_flow_order_for_ties():
    rows = two_readings()
    by_out = sort_rows(rows, [c[0] for c in SORT_COLUMNS].index("out/s"))
    outs = [r.events_out_per_s or 0 for r in by_out]
    assert outs == sorted(outs, reverse=True) and by_out[0].name == "recv"
    ties = [r for r in by_out if r.events_out_per_s == 100.0]
    assert [r.flow_position for r in ties] == sorted(r.flow_position for r in ties)
    assert [r.name for r in sort_rows(rows, 0, reverse=True)] == [r.name for r in reversed(rows)]
    view = TopView("web", 1.0)
    names = []
    for _ in SORT_COLUMNS:
        names.append(SORT_COLUMNS[view.sort_column][0])
        assert view.key("s")
    assert names == [c[0] for c in SORT_COLUMNS] and view.sort_column == 0  # came round
    assert view.key("r") and view.reverse
    assert view.key("x") and not view.key("q")


def test_render_shows_every_column_and_the_fill_bar():
    from rich.console import Console

    rows = two_readings()
    out = io.StringIO()
    Console(file=out, width=220, color_system=None).print(
        render("web", rows, status={"state": "RUNNING", "version": 2}, sort_column=1, reverse=True, live=True))
    text = out.getvalue()
    for heading in ("TIER/INSTANCE", "KIND", "NAME", "STATE", "IN/S", "OUT/S", "BYTES/S", "FILL", "QUEUED",
                    "RESTARTS", "ERRORS", "NODE", "LAST ERROR"):
        assert heading in text
    assert "rayflume top web" in text and "sort: in/s (reversed)" in text and "q quit" in text
    assert "4.0 KiB" in text and "250/1,000" in text and "disk full" in text
    assert str(fill_bar(40.0)) == "████······  40.0%"
    assert str(fill_bar(100.0)) == "██████████ 100.0%"
    assert str(fill_bar(0.0)) == "··········   0.0%" and str(fill_bar(None)) == "-"
    assert json.loads(rows_as_json(rows))[0]["name"] == "tail"


# -- the Ray export, without Ray ---------------------------------------------------------------------
def test_running_totals_count_growth_and_rebase_a_drop_without_going_negative():
    totals = RunningTotals()
    readings = [0, 10, 25, 5, 8, 8, 40, 0, 3]
    increments = [totals.increment("EventAcceptedCount", v) for v in readings]
    assert increments == [0, 10, 15, 0, 3, 0, 32, 0, 3]
    restored = RunningTotals(restored=True)  # a restarted actor: its reloaded totals were exported before
    assert [restored.increment("EventAcceptedCount", v) for v in (500, 530, 100, 120)] == [0, 30, 0, 20]
    assert RunningTotals().increment("X", 7) == 7  # a fresh component counts from zero


def test_running_totals_never_decrement_whatever_the_readings():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=10**12), max_size=40))
    def check(readings):
        totals = RunningTotals()
        increments = [totals.increment("k", v) for v in readings]
        assert all(i >= 0 for i in increments)
        # what is exported is the sum of the rises (a drop re-bases)
        rises = sum(max(0, b - a) for a, b in zip([0] + readings, readings))
        assert sum(increments) == rises

    check()


class _FakeMetric:
    def __init__(self, name, description="", tag_keys=()):
        self.name, self.tag_keys, self.calls = name, tag_keys, []


class _FakeCounter(_FakeMetric):
    def inc(self, value, tags=None):
        assert value > 0, "Ray refuses increments that are not positive"
        self.calls.append(value)


class _FakeGauge(_FakeMetric):
    def set(self, value, tags=None):
        self.calls.append(value)


def test_exporter_makes_counters_of_running_totals_and_gauges_of_levels(monkeypatch):
    import ray.util.metrics

    monkeypatch.setattr(ray.util.metrics, "Counter", _FakeCounter)
    monkeypatch.setattr(ray.util.metrics, "Gauge", _FakeGauge)
    exporter = RayExporter("t", "SOURCE", "gen", restored=False)
    exporter.export({"EventAcceptedCount": 100, "ChannelWriteFail": 0, "OpenConnectionCount": 3, "BoundPort": 4545,
                     "ChannelFillPercentage": 12.5, "Type": "SOURCE", "Flag": True})
    exporter.export({"EventAcceptedCount": 60, "ChannelWriteFail": 1, "OpenConnectionCount": 1, "BoundPort": 4545,
                     "ChannelFillPercentage": 2.0})  # dropped: restarted and reloaded
    exporter.export({"EventAcceptedCount": 75, "ChannelWriteFail": 1, "OpenConnectionCount": 2, "BoundPort": 4545,
                     "ChannelFillPercentage": 3.0})
    metrics = exporter._metrics
    assert {k: type(m).__name__ for k, m in metrics.items()} == {
        "EventAcceptedCount": "_FakeCounter", "ChannelWriteFail": "_FakeCounter", "OpenConnectionCount": "_FakeGauge",
        "BoundPort": "_FakeGauge", "ChannelFillPercentage": "_FakeGauge"}
    assert metrics["EventAcceptedCount"].name == "rayflume_event_accepted_count"
    assert metrics["EventAcceptedCount"].calls == [100, 15]  # the drop re-based: nothing subtracted
    assert metrics["ChannelWriteFail"].calls == [1]
    assert metrics["OpenConnectionCount"].calls == [3, 1, 2]
    assert metrics["EventAcceptedCount"].tag_keys == ("topology", "tier", "instance", "kind", "component")
    assert exporter.tags == {"topology": "t", "tier": "", "instance": "", "kind": "SOURCE", "component": "gen"}


def test_instances_of_a_tier_export_series_of_their_own():
    tags = [RayExporter("t", "SINK", "out", scope, restored=False).tags for scope in ("agent/node-a", "agent/node-b")]
    assert [(t["tier"], t["instance"]) for t in tags] == [("agent", "node-a"), ("agent", "node-b")]


def test_prometheus_text_types_agree_with_the_exporter():
    text = prometheus_text({"CHANNEL.c": {"Type": "CHANNEL", "ObjectCount": "4", "SegmentCount": "2",
                                          "EventPutSuccessCount": "9"},
                            "SINK.s": {"Type": "SINK", "EventWriteFail": "1"}})
    assert "# TYPE rayflume_object_count gauge" in text and "# TYPE rayflume_segment_count gauge" in text
    assert "# TYPE rayflume_event_put_success_count counter" in text
    assert "# TYPE rayflume_event_write_fail counter" in text
    assert not is_running_total("ChannelSize") and is_running_total("EventAcceptedCount")
    assert metrics_module._GAUGE_COUNTS >= {"OpenConnectionCount"}  # levels named like totals


# -- against a running topology ----------------------------------------------------------------------
def flowing_topology(name: str) -> dict:
    """sequence -> memory -> null, and a second channel to a slow, sometimes failing sink. A source
    puts into both its channels, so the slow sink (about 20 batches of 100 a second) holds the whole
    flow back: counters grow steadily without filling a core."""
    return {
        "name": name, "metrics": {"port": None},
        "sources": {"gen": {"type": "sequence", "batch_size": 100, "channels": ["mem", "side"]}},
        "channels": {"mem": {"type": "memory", "capacity": 5000, "transaction_capacity": 500},
                     "side": {"type": "memory", "capacity": 2000, "transaction_capacity": 500}},
        "sinks": {"out": {"type": "null", "channel": "mem", "batch_size": 100},
                  "slow": {"type": "flaky_sink", "channel": "side", "collector": name, "batch_size": 100,
                           "write_delay_s": 0.05, "fail_every": 7}},
    }


@pytest.fixture(scope="module")
def flowing(ray_local):
    """The topology ``top-flow``, deployed for the whole module, with events flowing; stopped after."""
    import rayflume

    handle = rayflume.deploy(flowing_topology("top-flow"))
    try:
        wait_until(lambda: int(handle.metrics().get("SINK.out", {}).get("EventDrainSuccessCount") or 0) > 0,
                   timeout_s=120, interval_s=0.2, what="events reaching the null sink")
        yield handle, ray_local.get_runtime_context().gcs_address
    finally:
        handle.stop(drain_timeout_s=5)


def rayflume_cli(*args):
    return subprocess.run([sys.executable, "-m", "rayflume.cli", *args], env=ENV, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)


ROW = re.compile(r"^\s*(SOURCE|CHANNEL|SINK)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)")


def test_once_lists_every_component_in_flow_order_with_rates(flowing):
    _, address = flowing
    r = rayflume_cli("top", "top-flow", "--once", "--interval-s", "2", "--address", address)
    assert r.returncode == 0, r.stderr
    rows = [ROW.match(line).groups() for line in r.stdout.splitlines() if ROW.match(line)]
    assert [(kind, name) for kind, name, *_ in rows] == [
        ("SOURCE", "gen"), ("CHANNEL", "mem"), ("CHANNEL", "side"), ("SINK", "out"), ("SINK", "slow")], r.stdout
    for kind, name, state, events_in, events_out in rows:
        assert state == "ALIVE", r.stdout
        assert float(events_in.replace(",", "")) > 0 and float(events_out.replace(",", "")) > 0, (name, r.stdout)
    assert "rayflume top top-flow" in r.stdout and "q quit" not in r.stdout


def test_json_picks_the_only_topology_and_gives_rates_fill_and_errors(flowing):
    handle, address = flowing
    wait_until(lambda: int(handle.metrics()["SINK.slow"].get("EventWriteFail") or 0) > 0, timeout_s=60,
               interval_s=0.2, what="an injected failure of the slow sink")
    r = rayflume_cli("top", "--json", "--interval-s", "1", "--address", address)
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert list(rows) == ["gen", "mem", "side", "out", "slow"]
    assert all(row["events_out_per_s"] > 0 for row in rows.values()), rows
    assert rows["side"]["channel_capacity"] == 2000 and 0 <= rows["side"]["fill_percent"] <= 100
    assert rows["slow"]["errors"] > 0 and rows["out"]["errors"] == 0
    assert all(row["node"] for row in rows.values())


def test_bad_interval_and_unknown_name_exit_2(flowing):
    _, address = flowing
    r = rayflume_cli("top", "top-flow", "--once", "--interval-s", "0", "--address", address)
    assert r.returncode == 2 and "--interval-s must be more than 0" in r.stderr
    r = rayflume_cli("top", "nosuch", "--once", "--address", address)
    assert r.returncode == 2 and "no topology named 'nosuch'" in r.stderr and "top-flow" in r.stderr
    r = rayflume_cli("top", "top-flow", "--address", address)  # stdout is a pipe here
    assert r.returncode == 2 and "needs a terminal" in r.stderr


# -- the live view in a real pseudo-terminal -------------------------------------------------------------
# A session leader that opens a terminal without O_NOCTTY takes it as its controlling terminal, so
# that Ctrl-C typed there reaches it as SIGINT, as in a real terminal.
LAUNCH = ("import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); [os.dup2(fd, n) for n in (0, 1, 2)]; "
          "os.close(fd); os.execv(sys.executable, [sys.executable, '-m', 'rayflume.cli', *sys.argv[2:]])")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>]")


class Terminal:
    """``rayflume ARGS`` running in a pseudo-terminal of 40 rows and 160 columns."""

    def __init__(self, *args):
        import fcntl
        import pty
        import struct

        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        self.settings_before = termios.tcgetattr(self.slave)
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCH, os.ttyname(self.slave), *args],
                                     env={**ENV, "TERM": "xterm-256color"}, start_new_session=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.raw = b""

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", errors="replace"))

    def read(self, timeout_s: float = 0.1) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout_s)
        if ready:
            try:
                self.raw += os.read(self.master, 65536)
            except OSError:  # the other side closed: the program is ending; wait for that instead
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    return

    def wait_for(self, predicate, timeout_s: float, what: str) -> None:
        def seen():
            self.read()
            return predicate(self.text)
        try:
            wait_until(seen, timeout_s=timeout_s, interval_s=0, what=what)
        except AssertionError:
            raise AssertionError(f"{what}; the terminal showed:\n{self.text[-3000:]}") from None

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait_exit(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read()  # keep the terminal drained, or a program writing to it would block
        assert self.proc.poll() is not None, f"still running after {timeout_s}s:\n{self.text[-3000:]}"
        return self.proc.returncode

    def line_settings_restored(self) -> bool:
        flags = termios.ICANON | termios.ECHO | termios.ISIG
        return termios.tcgetattr(self.slave)[3] & flags == self.settings_before[3] & flags

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal():
    opened = []

    def start(*args):
        opened.append(Terminal(*args))
        return opened[-1]

    yield start
    for t in opened:
        t.close()


def _shows_every_row(text: str) -> bool:
    return all(re.search(rf"{kind}\s+{name}\s", text) for kind, name in
               (("SOURCE", "gen"), ("CHANNEL", "mem"), ("CHANNEL", "side"), ("SINK", "out"), ("SINK", "slow")))


def test_live_view_renders_sorts_on_s_and_quits_on_q(flowing, terminal):
    _, address = flowing
    term = terminal("top", "top-flow", "--address", address)
    term.wait_for(lambda text: _shows_every_row(text) and "sort: flow" in text, 90, "the first view")
    # with two readings the rates are numbers: the source's row ends its IN/S cell with a digit
    term.wait_for(lambda text: re.search(r"SOURCE\s+gen\s+ALIVE\s+[\d,.]+\s+[\d,.]+", text), 30, "rates")
    assert "\x1b[?1049h" in term.raw.decode(errors="replace")  # drawn on the alternate screen
    shown = len(term.text)
    term.type(b"s")
    term.wait_for(lambda text: "sort: in/s" in text[shown:], 15, "the sort to move to in/s")
    term.type(b"q")
    assert term.wait_exit(60) == 0, term.text[-3000:]
    assert "\x1b[?1049l" in term.raw.decode(errors="replace")  # the screen given back
    assert term.line_settings_restored()


def test_live_view_quits_on_ctrl_c_and_restores_the_terminal(flowing, terminal):
    _, address = flowing
    term = terminal("top", "top-flow", "--address", address)
    term.wait_for(_shows_every_row, 90, "the first view")
    term.type(b"\x03")  # Ctrl-C, through the terminal's line discipline
    assert term.wait_exit(60) == 128 + signal.SIGINT, term.text[-3000:]
    assert "Traceback" not in term.text
    assert term.line_settings_restored()


# -- the Ray export, in a Ray worker -----------------------------------------------------------------------
def test_counters_are_exported_to_ray_as_counters_and_levels_as_gauges(flowing):
    import ray

    handle, _ = flowing
    wait_until(lambda: int(handle.metrics()["SOURCE.gen"].get("EventAcceptedCount") or 0) > 0, timeout_s=30,
               what="events accepted")

    @ray.remote(num_cpus=0)
    def export_in_a_worker(source: dict, channel: dict) -> dict:
        import re

        from rayflume._private.metrics import RayExporter

        numbers = {k: float(v) for k, v in {**source, **channel}.items() if re.fullmatch(r"-?\d+(\.\d+)?", str(v))}
        exporter = RayExporter("top-flow", "SOURCE", "gen")
        exporter.export(numbers)
        # a counter that went down (a restart that reloaded it): re-based, Ray never asked to decrement
        exporter.export({**numbers, "EventAcceptedCount": numbers["EventAcceptedCount"] / 2})
        exporter.export({**numbers, "EventAcceptedCount": numbers["EventAcceptedCount"] + 5})
        return exporter.metric_types()

    metrics = handle.metrics()
    types = ray.get(export_in_a_worker.remote(metrics["SOURCE.gen"], metrics["CHANNEL.mem"]), timeout=60)
    assert types["EventAcceptedCount"] == "counter"
    assert types["EventPutSuccessCount"] == "counter" and types["ChannelWriteFail"] == "counter"
    assert types["ChannelSize"] == "gauge" and types["ChannelFillPercentage"] == "gauge"
    assert types["StartTime"] == "gauge"
