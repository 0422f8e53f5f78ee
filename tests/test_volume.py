"""Hourly volume (rayflume._private.volume, handle.volume(), `rayflume volume`) and the topology's
metric filter (metrics.export) for the metrics endpoint and Ray's metrics exporter."""
from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest

from rayflume._private.metrics import RayExporter, filter_metrics, prometheus_text
from rayflume._private.runners import SourceRunner
from rayflume._private.volume import HOUR_S, OTHER, RETENTION_HOURS, HourlyVolume, count_header_values, strip_volume
from rayflume.channel_contract import wait_until
from rayflume.counters import Counters
from rayflume.errors import ConfigError
from rayflume.event import Event, EventBatch
from rayflume.topology import metrics_export_warnings, validate

T0 = 1_700_000_000 // HOUR_S * HOUR_S  # the start of a UTC hour
DAY_S = 24 * HOUR_S


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def store(**kwargs) -> tuple[HourlyVolume, Clock]:
    clock = Clock()
    return HourlyVolume(clock=clock, **kwargs), clock


# -- the store ------------------------------------------------------------------------------------
def test_counter_growth_goes_to_the_hour_it_was_seen_in():
    vol, clock = store()
    vol.observe("", "0", "src", {"EventAcceptedCount": 10})  # first reading counts whole
    clock.t = T0 + HOUR_S - 1
    vol.observe("", "0", "src", {"EventAcceptedCount": "25"})  # Flume's JSON strings too
    clock.t = T0 + HOUR_S
    vol.observe("", "0", "src", {"EventAcceptedCount": 40})
    assert vol.hour_volume(T0) == 25
    assert vol.hour_volume(T0 + 1800, source="src") == 25
    assert vol.hour_volume(T0 + HOUR_S) == 15
    assert vol.hour_volume(T0 + 2 * HOUR_S) == 0
    assert [(r["hour"], r["events"], r["value"]) for r in vol.rows()] == [(T0, 25, None), (T0 + HOUR_S, 15, None)]


def test_a_drop_is_a_reset_and_counts_from_zero():
    vol, clock = store(header="category")
    vol.observe("", "0", "src", {"EventAcceptedCount": 100, "Volume.a": 60, "Volume.b": 40})
    vol.observe("", "0", "src", {"EventAcceptedCount": 7, "Volume.a": 7, "Volume.b": 40})  # a restart
    vol.observe("", "0", "src", {"EventAcceptedCount": 9, "Volume.a": 9, "Volume.b": 40})
    assert vol.hour_volume(T0, source="src") == 109
    assert vol.hour_volume(T0, source="src", value="a") == 69
    assert vol.hour_volume(T0, source="src", value="b") == 40


def test_instances_are_series_of_their_own_and_summed_unless_named():
    vol, _ = store()
    vol.observe("agent", "n1", "src", {"EventAcceptedCount": 3})
    vol.observe("agent", "n2", "src", {"EventAcceptedCount": 4})
    vol.observe("collector", "r0", "in", {"EventAcceptedCount": 7, "EventReceivedCount": 99})
    assert vol.hour_volume(T0, source="src") == 7
    assert vol.hour_volume(T0, source="src", instance="n2") == 4
    assert vol.hour_volume(T0, tier="collector") == 7
    table = vol.table()
    assert table.column_names == ["hour", "tier", "instance", "source", "value", "events"]
    assert table.num_rows == 3


def test_header_values_beyond_the_cap_go_to_other():
    vol, _ = store(header="category", max_values=2)
    vol.observe("", "0", "src", {"EventAcceptedCount": 10, "Volume.a": 1, "Volume.b": 2, "Volume.c": 3,
                                 "Volume.d": 4})
    by_value = {r["value"]: r["events"] for r in vol.rows(by_header=True)}
    assert by_value == {"a": 1, "b": 2, OTHER: 7}
    # the per-source cap is per source: another source keeps two values of its own
    vol.observe("", "0", "src2", {"Volume.c": 5, "Volume.d": 6, "Volume.e": 1})
    assert vol.hour_volume(T0, source="src2", value="c") == 5
    assert vol.hour_volume(T0, source="src2", value=OTHER) == 1


def test_the_store_wide_series_cap_bounds_memory():
    vol, _ = store(header="h", max_values=100, max_series=5)
    for s in range(4):
        vol.observe("", "0", f"s{s}", {"EventAcceptedCount": 1})
    vol.observe("", "0", "s0", {"Volume.x": 1, "Volume.y": 1})  # 5th series: x; y goes to (other)... once room
    assert len(vol._counts) <= 6  # the (other) bucket of a source is let in so that nothing vanishes
    vol.observe("", "0", "s9", {"EventAcceptedCount": 5})  # a new source beyond the cap
    assert vol.hour_volume(T0, source="s9") == 0 and vol.dropped_events >= 5


def test_source_side_counting_is_bounded_with_other():
    counters = Counters()
    count_header_values(counters, [("a", 2), ("b", 3), (None, 1)], max_values=2)
    count_header_values(counters, [("a", 1), ("c", 4)], max_values=2)
    assert counters == {"Volume.a": 3, "Volume.b": 3, "Volume.(other)": 5}
    assert strip_volume({"EventAcceptedCount": 1, **counters}) == {"EventAcceptedCount": 1}


def test_retention_keeps_8_days_and_drops_older_hours():
    vol, clock = store()
    vol.add("", "0", "src", None, 5)  # at T0
    clock.t = T0 + 8 * DAY_S  # 8 days later, same hour: still kept (compared against a week ago and more)
    vol.observe("", "0", "src", {"EventAcceptedCount": 1})
    assert vol.hour_volume(T0) == 5
    clock.t = T0 + RETENTION_HOURS * HOUR_S
    vol.prune()
    assert vol.hour_volume(T0) == 0
    assert vol.hour_volume(T0 + 8 * DAY_S) == 1
    vol.add("", "0", "src", None, 3, at=T0)  # too old to be kept
    assert vol.hour_volume(T0) == 0
    assert len(vol) == 1


def test_same_hour_n_days_earlier():
    vol, clock = store(header="category")
    for day in range(8):
        clock.t = T0 + day * DAY_S + 600
        vol.add("", "0", "src", None, 100 + day)
        vol.add("", "0", "src", "checkout", 10 + day)
    now = T0 + 7 * DAY_S + 1200
    assert vol.compare(now, days_back=7, source="src") == (107, 100)
    assert vol.compare(now, days_back=1, source="src", value="checkout") == (17, 16)
    assert vol.compare(now + HOUR_S, days_back=7) == (0, 0)
    assert vol.compare(now, days_back=9) == (107, 0)  # older than kept


def test_serialise_restore_round_trip_goes_on_from_the_baselines():
    vol, clock = store(header="category", max_values=3)
    vol.observe("t", "i", "src", {"EventAcceptedCount": 10, "Volume.a": 6, "Volume.b": 4})
    clock.t = T0 + 3 * HOUR_S
    vol.observe("t", "i", "src", {"EventAcceptedCount": 15, "Volume.a": 11, "Volume.b": 4})
    doc = json.loads(json.dumps(vol.to_doc()))  # what the state store keeps
    again = HourlyVolume.from_doc(doc, header="category", max_values=3, clock=clock)
    assert again.rows(by_header=True) == vol.rows(by_header=True)
    assert again.rows() == vol.rows()
    # a restarted controller reads the same counters again: nothing counted twice
    again.observe("t", "i", "src", {"EventAcceptedCount": 18, "Volume.a": 14, "Volume.b": 4})
    assert again.hour_volume(T0 + 3 * HOUR_S) == 8
    assert again.hour_volume(T0 + 3 * HOUR_S, value="a") == 8
    # another header: per-source hours kept, the old header's values not
    other = HourlyVolume.from_doc(doc, header="service", clock=clock)
    assert other.hour_volume(T0) == 10 and other.rows(by_header=True) == []
    assert len(json.dumps(doc)) < 1000  # compact: dense hour ranges, no per-hour keys


def test_source_runner_counts_header_values_after_interceptors_only_when_configured():
    counters = Counters()

    class Chain:
        def intercept(self, batch):
            return batch

    runner = SourceRunner("s", None, Chain(), None, None, counters)
    batch = EventBatch.from_events([Event(b"1", {"category": "a"}), Event(b"2", {"category": "b"}),
                                    Event(b"3", {"category": "a"}), Event(b"4", {})])
    assert runner.volume_header is None  # not configured: deliver() does not call _count_volume
    runner.volume_header = "category"
    runner._count_volume(batch)
    assert {k: v for k, v in counters.items() if k.startswith("Volume.")} == \
        {"Volume.a": 2, "Volume.b": 1, "Volume.(none)": 1}


# -- configuration ---------------------------------------------------------------------------------
def base(**extra):
    return {"name": "v", "sources": {"s": {"type": "testing_source", "count": 1, "channels": ["c"]}},
            "channels": {"c": {"type": "memory"}},
            "sinks": {"k": {"type": "testing_sink", "collector": "v", "channel": "c"}}, **extra}


def test_config_volume_and_export_are_validated_with_paths():
    topo = validate(base(volume={"header": "category", "max_values": 50},
                         metrics={"port": None, "export": ["EventReceivedCount", "ChannelSize"]}))
    assert (topo.volume_header, topo.volume_max_values) == ("category", 50)
    assert topo.metrics_export == ("EventReceivedCount", "ChannelSize")
    assert validate(base()).metrics_export is None and validate(base()).volume_header is None
    with pytest.raises(ConfigError) as err:
        validate(base(volume={"header": "", "max_values": 0, "headr": "x"},
                      metrics={"export": ["EventReceivedCount", "rayflume_x{}", 3]}))
    text = str(err.value)
    for path in ("volume.header:", "volume.max_values:", "volume.headr:", "metrics.export[1]:",
                 "metrics.export[2]:"):
        assert path in text, text
    with pytest.raises(ConfigError, match="metrics.export: expected a non-empty list"):
        validate(base(metrics={"export": []}))
    # names are not errors (custom components have counters of their own); a likely typo warns
    typo = validate(base(metrics={"export": ["EventRecievedCount", "MyCustomCount", "ChannelSize"]}))
    assert metrics_export_warnings(typo) == [
        "metrics.export[0]: no built-in component reports 'EventRecievedCount'; did you mean "
        "'EventReceivedCount'? (a name no component reports exports nothing)"]


def test_cli_validate_warns_of_a_misspelt_exported_counter(tmp_path, capsys):
    from rayflume import cli

    path = tmp_path / "t.yaml"
    path.write_text(json.dumps(base(metrics={"port": None, "export": ["ChanelSize"]})))
    assert cli.main(["validate", str(path)]) == 0
    assert "did you mean 'ChannelSize'?" in capsys.readouterr().err


# -- the filter, without Ray -------------------------------------------------------------------------
def test_filter_keeps_only_named_counters_and_never_volume():
    metrics = {"SOURCE.s": {"Type": "SOURCE", "EventReceivedCount": "5", "EventAcceptedCount": "5",
                            "AppendBatchReceivedCount": "1", "Volume.a": "5", "StartTime": "1"},
               "CHANNEL.c": {"Type": "CHANNEL", "ChannelSize": "0", "EventPutSuccessCount": "5"},
               "CONTROLLER.alerts": {"Type": "CONTROLLER", "AlertFiring_x": "1"}}
    export = frozenset({"EventReceivedCount", "ChannelSize"})
    text = prometheus_text(filter_metrics(metrics, export))
    names = {line.split("{")[0] for line in text.splitlines() if not line.startswith("#")}
    assert names == {"rayflume_event_received_count", "rayflume_channel_size", "rayflume_alert_firing_x"}
    everything = prometheus_text(filter_metrics(metrics, None))
    assert "rayflume_append_batch_received_count" in everything and "volume" not in everything


# -- on Ray -------------------------------------------------------------------------------------------
EXPORT = ["EventReceivedCount", "EventAcceptedCount", "ChannelSize", "EventDrainSuccessCount"]


def test_ray_exporter_exports_only_the_named_counters(ray_local):
    import ray

    @ray.remote(num_cpus=0)
    def exported_set(export):
        exporter = RayExporter("vol-exp", "SOURCE", "s", "", restored=False, export=export)
        exporter.export({"EventReceivedCount": 3, "EventAcceptedCount": 3, "AppendBatchReceivedCount": 1,
                         "ChannelWriteFail": 0, "Volume.a": 3, "StartTime": 1})
        return exporter.metric_types()

    assert ray.get(exported_set.remote(EXPORT)) == {"EventReceivedCount": "counter", "EventAcceptedCount": "counter"}
    everything = ray.get(exported_set.remote(None))
    assert "AppendBatchReceivedCount" in everything and "Volume.a" not in everything


def volume_topology(name):
    return {"name": name, "metrics": {"host": "127.0.0.1", "port": 0, "export": EXPORT},
            "volume": {"header": "category"},
            "sources": {"in": {"type": "testing_feed", "feed": name, "channels": ["mem"]}},
            "channels": {"mem": {"type": "memory", "capacity": 5000, "transaction_capacity": 500}},
            "sinks": {"out": {"type": "testing_sink", "collector": name, "channel": "mem", "batch_size": 100}}}


def events(category, n):
    return [Event(f"{category}-{i}".encode(), {"category": category} if category else {}) for i in range(n)]


def volumes(handle):
    """(events per source over every hour, {header value: events}) from handle.volume()."""
    import pyarrow as pa

    def table(by_header):
        t = handle.volume(days=8, by_header=by_header)
        return t if isinstance(t, pa.Table) else pa.Table.from_pandas(t, preserve_index=False)

    per_source = table(False).to_pylist()
    assert all(r["header_value"] is None for r in per_source)
    by_value: dict = {}
    for r in table(True).to_pylist():
        by_value[r["header_value"]] = by_value.get(r["header_value"], 0) + r["events"]
    return sum(r["events"] for r in per_source if r["source"] == "in"), by_value


def wait_volume(handle, total, by_value, timeout_s=60.0):
    seen = {}

    def reached():
        seen["now"] = volumes(handle)
        assert seen["now"][0] <= total, f"counted twice: {seen['now']}"
        return seen["now"] == (total, by_value)

    try:
        wait_until(reached, timeout_s=timeout_s, interval_s=0.5, what=f"volume {total} {by_value}")
    except AssertionError:
        raise AssertionError(f"volume {seen.get('now')} never reached {(total, by_value)}") from None


@pytest.mark.slow
def test_volume_per_source_and_category_survives_a_controller_sigkill_and_export_filters(deployed):
    from rayflume import testing
    from rayflume._private.controller import volume_key
    from rayflume._private.state_store import RayKVStore
    from tests.cluster_helpers import controller_pid

    name = "vol-ray"
    feed, sink = testing.feed(name), testing.collector(name)
    handle = deployed(volume_topology(name))
    feed.push(events("checkout", 30) + events("search", 20) + events(None, 10))
    sink.wait_for(60, timeout_s=60)
    wait_volume(handle, 60, {"checkout": 30, "search": 20, "(none)": 10})

    # the metrics endpoint serves only the exported counters (handle.metrics() keeps everything)
    url = handle.status()["metrics_url"]
    with urllib.request.urlopen(url + "?format=prometheus", timeout=10) as response:
        text = response.read().decode()
    names = {line.split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert names == {"rayflume_event_received_count", "rayflume_event_accepted_count",
                     "rayflume_channel_size", "rayflume_event_drain_success_count"}, names
    with urllib.request.urlopen(url, timeout=10) as response:
        assert set(json.loads(response.read())["SOURCE.in"]) == {"Type", "EventReceivedCount", "EventAcceptedCount"}
    assert "AppendBatchReceivedCount" in handle.metrics()["SOURCE.in"]

    # stored (at most every 30 s), then more events, then the controller SIGKILLed: nothing lost
    # and nothing counted twice
    kv = RayKVStore()
    wait_until(lambda: sum(sum(s[5]) for s in (kv.get(volume_key(name)) or {}).get("series", [])
                           if s[3] is None) == 60, timeout_s=60, interval_s=0.5, what="the volume stored")
    feed.push(events("checkout", 10))
    sink.wait_for(70, timeout_s=60)
    wait_volume(handle, 70, {"checkout": 40, "search": 20, "(none)": 10})
    pid = controller_pid(handle)
    os.kill(pid, signal.SIGKILL)
    controller_pid(handle, not_pid=pid)
    feed.push(events("search", 5))
    sink.wait_for(75, timeout_s=60)
    wait_volume(handle, 75, {"checkout": 40, "search": 25, "(none)": 10})


def test_cli_volume_json(deployed, capsys):
    from rayflume import cli, testing

    name = "vol-cli"
    feed, sink = testing.feed(name), testing.collector(name)
    handle = deployed(volume_topology(name))
    feed.push(events("a", 5))
    sink.wait_for(5, timeout_s=60)
    wait_volume(handle, 5, {"a": 5})
    assert cli.main(["volume", name, "--days", "1", "--json", "--by-header"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["source"], r["header_value"], r["events"]) for r in rows] == [("in", "a", 5)]
    assert rows[0]["hour"] % HOUR_S == 0
    assert cli.main(["volume", name]) == 0
    assert "in" in capsys.readouterr().out
