"""The Python API in a notebook: typed metrics with rates, the rich display, clear errors for a
stopped topology or a lost cluster, and test collectors that start from zero on a new run.

One local Ray serves the module (``ray_local``); the test that shuts Ray down runs in a
subprocess of its own so that it cannot take the module's Ray with it.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
import ray

import rayflume
from rayflume import api, testing
from rayflume._private import frames
from rayflume.topology import validate
from tests.channel_contract import wait_until

REPO = Path(__file__).resolve().parents[1]


def pipeline(name, source, sink, capacity=2000):
    return {"name": name, "metrics": {"port": None},
            "sources": {"gen": {**source, "channels": ["mem"]}},
            "channels": {"mem": {"type": "memory", "capacity": capacity, "transaction_capacity": 500}},
            "sinks": {"out": {**sink, "channel": "mem"}}}


def endless(name):
    """A sequence source that never ends, held back by a slow sink (20 batches of 100 a second),
    so that counters grow at a steady pace without filling a core."""
    return pipeline(name, {"type": "sequence", "batch_size": 100},
                    {"type": "flaky_sink", "collector": name, "batch_size": 100, "write_delay_s": 0.05})


def finite(name, count, collector=None):
    return pipeline(name, {"type": "testing_source", "count": count, "batch_size": 10},
                    {"type": "testing_sink", "collector": collector or name, "batch_size": 10})


@pytest.fixture
def no_pandas(monkeypatch):
    """As if pandas were not installed. Only the API's import is patched: pyarrow imports pandas
    itself when it is installed, and would break without it for the rest of the process."""
    monkeypatch.setattr(frames, "optional_pandas", lambda: None)


def test_pandas_counts_as_missing_when_its_import_fails(monkeypatch):
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
        assert frames.optional_pandas() is None


def delivered(handle) -> int:
    """Events the sink ``out`` delivered; -1 while it has not reported yet."""
    return int(handle.metrics().get("SINK.out", {}).get("EventDrainSuccessCount", -1))


def reporting(handle) -> bool:
    """Whether the source, channel and sink all report their counters (actors start one by one)."""
    m = handle.metrics()
    return all(counter in m.get(key, {}) for key, counter in (
        ("SOURCE.gen", "EventAcceptedCount"), ("CHANNEL.mem", "EventPutSuccessCount"),
        ("SINK.out", "EventDrainSuccessCount")))


def rows_by_component(table: pa.Table) -> dict[str, dict]:
    return {row["component"]: row for row in table.to_pylist()}


# -- metrics_frame ------------------------------------------------------------------------------------
def test_metrics_frame_is_a_typed_arrow_table_with_rates_without_pandas(deployed, no_pandas):
    handle = deployed(endless("nb-rates"))
    wait_until(lambda: reporting(handle), timeout_s=60, interval_s=0.2, what="every component to report")
    first = handle.metrics_frame()
    assert isinstance(first, pa.Table)
    assert first.column_names[:len(api.IDENTITY_COLUMNS)] == list(api.IDENTITY_COLUMNS)
    schema = first.schema
    assert schema.field("EventAcceptedCount").type == pa.int64()
    assert schema.field("ChannelSize").type == pa.int64()
    assert schema.field("Restarts").type == pa.int64()
    assert schema.field("StartTime").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("StopTime").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("ChannelFillPercentage").type == pa.float64()
    assert schema.field(api.rate_column("EventAcceptedCount")).type == pa.float64()
    rows = rows_by_component(first)
    assert set(rows) == {"gen", "mem", "out"}
    assert {(r["kind"], r["type"]) for r in rows.values()} == {
        ("SOURCE", "sequence"), ("CHANNEL", "memory"), ("SINK", "flaky_sink")}
    assert all(r["topology"] == "nb-rates" and r["tier"] is None and r["node"] for r in rows.values())
    assert rows["gen"]["StartTime"] is not None and rows["gen"]["StopTime"] is None  # running: not stopped
    assert rows["gen"]["StartTime"].year >= 2024
    rate_columns = [c for c in first.column_names if c.endswith("PerSecond")]
    assert "EventDrainSuccessPerSecond" in rate_columns and "EventPutSuccessPerSecond" in rate_columns
    assert all(first.column(c).null_count == first.num_rows for c in rate_columns), "no rates on a first call"

    def flowing():
        rows = rows_by_component(handle.metrics_frame())
        flowing.rows = rows
        return (rows["gen"]["EventAcceptedPerSecond"] or 0) > 0 and (rows["out"]["EventDrainSuccessPerSecond"] or 0) > 0

    wait_until(flowing, timeout_s=60, interval_s=0.3, what="positive rates at the source and the sink")
    rows = flowing.rows
    rates = [v for r in rows.values() for c, v in r.items() if c.endswith("PerSecond") and v is not None]
    assert rates and all(v >= 0 for v in rates)
    assert rows["mem"]["EventPutSuccessPerSecond"] is not None and rows["mem"]["EventTakeSuccessPerSecond"] is not None
    # about 20 batches of 100 a second at the sink: a rate, not a count
    assert rows["out"]["EventDrainSuccessPerSecond"] < 20_000


def test_metrics_frame_is_a_dataframe_with_typed_columns_when_pandas_is_installed(deployed):
    pd = pytest.importorskip("pandas")
    handle = deployed(finite("nb-pandas", 200))
    wait_until(lambda: delivered(handle) == 200, timeout_s=60, interval_s=0.1, what="every event delivered")
    frame = handle.metrics_frame()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns[:len(api.IDENTITY_COLUMNS)]) == list(api.IDENTITY_COLUMNS)
    assert str(frame["EventAcceptedCount"].dtype) == "Int64"
    assert str(frame["StartTime"].dtype) == "datetime64[ms, UTC]"
    assert frame["EventDrainSuccessPerSecond"].isna().all(), "no rates on a first call"
    by_component = frame.set_index("component")
    assert by_component.loc["gen", "EventAcceptedCount"] == 200
    assert by_component.loc["out", "EventDrainSuccessCount"] == 200
    at_once = handle.metrics_frame().set_index("component")
    assert pd.isna(at_once.loc["out", "EventDrainSuccessPerSecond"]), "no rate over less than a second"

    def drain_rate():
        return handle.metrics_frame().set_index("component").loc["out", "EventDrainSuccessPerSecond"]

    # finished: nothing more is delivered, and a rate over a second or more says so
    wait_until(lambda: not pd.isna(drain_rate()), timeout_s=10, interval_s=0.2, what="a rate")
    assert drain_rate() == 0.0


def sample_status(counters_gen, counters_mem, name="t"):
    return {"name": name, "state": "RUNNING", "version": 1, "tiers": {}, "events": [], "components": [
        {"kind": "SOURCE", "name": "gen", "tier": "", "instance": "", "node_id": "n1", "state": "ALIVE",
         "counters": counters_gen},
        {"kind": "CHANNEL", "name": "mem", "tier": "", "instance": "", "node_id": "n1", "state": "ALIVE",
         "counters": counters_mem}]}


def test_rates_are_increases_per_second_and_never_negative():
    before = frames.component_rows("t", sample_status({"EventAcceptedCount": "100", "OpenConnectionCount": "5"},
                                                      {"EventPutSuccessCount": "1000"}), None)
    first = frames.Sample(sample_status({}, {}), before, None, {})
    assert first.rates == {}
    after = frames.component_rows("t", sample_status({"EventAcceptedCount": "300", "OpenConnectionCount": "2"},
                                                     {"EventPutSuccessCount": "40"}), None)
    second = frames.Sample(sample_status({}, {}), after, 2.0, first.counts)
    gen, mem = (None, None, "SOURCE", "gen"), (None, None, "CHANNEL", "mem")
    assert second.rates[gen] == {"EventAcceptedCount": 100.0}, "a gauge named ...Count gets no rate"
    # the channel restarted and counts from zero again: its new value is the increase
    assert second.rates[mem] == {"EventPutSuccessCount": 20.0}
    table = second.table
    assert "OpenConnectionPerSecond" not in table.column_names
    assert table.column("EventAcceptedPerSecond").to_pylist() == [100.0, None]


def test_values_are_typed_and_unreadable_ones_kept_as_text():
    rows = frames.component_rows("t", sample_status(
        {"StartTime": "1700000000000", "StopTime": "0", "Ratio": "0.5", "Note": "odd", "Flag": "True",
         "Empty": ""},
        {"StartTime": "1700000001000", "StopTime": "0", "Ratio": "2", "Note": "3", "Flag": "False"}), None)
    table = frames.Sample(sample_status({}, {}), rows, None, {}).table
    assert table.schema.field("StartTime").type == pa.timestamp("ms", tz="UTC")
    assert table.column("StopTime").null_count == 2, "a time of 0 is no time"
    assert table.schema.field("Ratio").type == pa.float64()
    assert table.column("Note").to_pylist() == ["odd", "3"]
    assert table.column("Flag").to_pylist() == [True, False]
    assert table.column("Empty").to_pylist() == [None, None]
    assert "Type" not in table.column_names


# -- the notebook view --------------------------------------------------------------------------------
def test_repr_html_shows_every_component_with_rates_and_fill(deployed):
    handle = deployed(endless("nb-html"))
    first = handle._repr_html_()
    for component in ("gen", "mem", "out"):
        assert f"<code>{component}</code>" in first
    assert "nb-html" in first and "RUNNING" in first
    assert "flaky_sink" in first and "sequence" in first
    assert "appear from the next look" in first
    assert "%" in first, "the channel's fill"

    def shows_rates():
        shows_rates.html = handle._repr_html_()
        return re.search(r"delivered [\d,.]+/s", shows_rates.html) is not None

    wait_until(shows_rates, timeout_s=60, interval_s=0.3, what="the view to show rates")
    assert "rates over the last" in shows_rates.html
    assert "RUNNING" in repr(handle) and "nb-html" in repr(handle)
    copy = pickle.loads(pickle.dumps(handle))  # handles are shared with tasks and other drivers
    assert copy.status()["state"] == "RUNNING"


def test_repr_html_escapes_every_string():
    hostile = "<script>alert(1)</script>"
    status = sample_status({"EventAcceptedCount": "1"}, {"ChannelFillPercentage": "12.5", "ChannelSize": "5",
                                                          "ChannelCapacity": "40"}, name=hostile)
    status["state"] = hostile
    status["components"][0]["error"] = hostile
    status["components"][1]["name"] = hostile
    status["tiers"] = {"": {"placement": "single", "selector": hostile, "instances": {}, "waiting": hostile,
                            "lost": {hostile: hostile}}}
    status["events"] = [{"time": 0, "component": hostile, "message": hostile}]
    rows = frames.component_rows(hostile, status, None)
    view = frames.html_view(hostile, frames.Sample(status, rows, None, {}))
    assert "<script>" not in view
    assert view.count("&lt;script&gt;") >= 8
    assert "12.5% (5 of 40)" in view
    status["components"][1]["counters"] = {"ChannelFillPercentage": "n/a", "ChannelSize": "5"}
    odd = frames.html_view("t", frames.Sample(status, frames.component_rows("t", status, None), None, {}))
    assert "<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>" in odd, "an unreadable fill is left out"


# -- clear errors -------------------------------------------------------------------------------------
def test_a_stopped_topology_raises_topology_not_running(deployed):
    handle = deployed(finite("nb-stopped", 20))
    handle.wait_finished(timeout_s=60)
    handle.stop(drain_timeout_s=5)
    for call in (handle.status, handle.metrics, handle.metrics_frame, handle.finished, handle.stop):
        with pytest.raises(rayflume.TopologyNotRunning, match="rayflume.deploy"):
            call()
    assert "NOT RUNNING" in repr(handle)
    assert "TopologyNotRunning" in handle._repr_html_()
    assert rayflume.get("nb-stopped") is None


def test_a_handle_follows_its_topology_deployed_again(deployed):
    old = deployed(finite("nb-again", 10))
    old.wait_finished(timeout_s=60)
    old.stop(drain_timeout_s=5)
    deployed(finite("nb-again", 30))
    wait_until(lambda: delivered(old) == 30, timeout_s=60, interval_s=0.2,
               what="the old handle to see the new deployment's counts")


# -- collectors -----------------------------------------------------------------------------------------
def test_a_collector_starts_from_zero_when_its_topology_is_deployed_again(deployed):
    out = testing.collector("nb-rerun")
    first = deployed(finite("nb-rerun", 30))
    out.wait_for(30)
    first.stop(drain_timeout_s=5)
    assert out.count() == 30, "the results stay readable after stop()"
    second = deployed(finite("nb-rerun", 30))
    second.wait_finished(timeout_s=60)
    assert out.count() == 30
    assert sorted(int(b) for b in out.bodies()) == list(range(30))


def test_a_running_topology_updated_keeps_its_collector(deployed):
    out = testing.collector("nb-update")
    handle = deployed(finite("nb-update", 25))
    handle.wait_finished(timeout_s=60)
    changed = finite("nb-update", 25)
    changed["sinks"]["out"]["batch_size"] = 5  # an update (the sink is replaced), not a new run
    rayflume.deploy(changed)
    assert out.count() == 25


def test_collectors_named_in_every_tier():
    topology = validate({
        "name": "nb-tiers", "metrics": {"port": None},
        "tiers": {
            "agent": {"sources": {"gen": {"type": "testing_source", "count": 1, "channels": ["c"]}},
                      "channels": {"c": {"type": "memory"}},
                      "sinks": {"fwd": {"type": "rayflume", "tier": "collector", "channel": "c"},
                                "copy": {"type": "flaky_sink", "channel": "c", "collector": "agent-copy"}}},
            "collector": {"placement": {"replicas": 1},
                          "sources": {"in": {"type": "rayflume", "channels": ["m"]}},
                          "channels": {"m": {"type": "memory"}},
                          "sinks": {"out": {"type": "testing_sink", "channel": "m", "collector": "final"}}}}})
    assert testing.collectors_named_in(topology) == {"agent-copy", "final"}


def test_clear_collectors_creates_none(ray_local):
    assert testing.clear_collectors(["nb-never-created"]) == []
    with pytest.raises(ValueError):
        ray.get_actor("collector/nb-never-created", namespace="rayflume")


# -- a lost cluster -----------------------------------------------------------------------------------
LOST_CLUSTER_SCRIPT = textwrap.dedent("""
    import json, logging, ray, rayflume
    from rayflume import api

    said = []

    class Keep(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())

    logging.getLogger("rayflume").addHandler(Keep())
    out = {}
    try:
        rayflume.list_deployed()
    except rayflume.ClusterUnavailable as exc:
        out["before_deploy"] = str(exc)
    out["initialized_before_deploy"] = ray.is_initialized()
    handle = rayflume.deploy({"name": "nb-lost", "metrics": {"port": None},
                              "sources": {"gen": {"type": "testing_source", "count": 5, "channels": ["m"]}},
                              "channels": {"m": {"type": "memory"}},
                              "sinks": {"out": {"type": "null", "channel": "m"}}}, address="local")
    address = api.cluster_address()
    out["deploy_said_where"] = any(address in line for line in said)
    out["running"] = handle.status()["state"]
    ray.shutdown()
    for call in ("status", "metrics", "metrics_frame", "finished", "stop"):
        try:
            getattr(handle, call)()
            out[call] = "no error"
        except rayflume.ClusterUnavailable as exc:
            out[call] = "ClusterUnavailable: " + str(exc)
        except Exception as exc:
            out[call] = type(exc).__name__ + ": " + str(exc)
    for name, call in (("get", lambda: rayflume.get("nb-lost")), ("list_deployed", rayflume.list_deployed)):
        try:
            call()
            out[name] = "no error"
        except rayflume.ClusterUnavailable:
            out[name] = "ClusterUnavailable"
    out["repr"] = repr(handle)
    out["html"] = handle._repr_html_()
    out["initialized_after"] = ray.is_initialized()
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_a_lost_cluster_raises_cluster_unavailable_and_starts_no_ray():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)  # the script's deploy starts a Ray of its own
    proc = subprocess.run([sys.executable, "-c", LOST_CLUSTER_SCRIPT], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"script failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = json.loads(lines[-1][len("RESULT "):])
    assert "not connected to Ray" in out["before_deploy"]
    assert out["initialized_before_deploy"] is False
    assert out["deploy_said_where"], "deploy logs the address of the Ray it started"
    assert out["running"] == "RUNNING"
    for call in ("status", "metrics", "metrics_frame", "finished", "stop"):
        assert out[call].startswith("ClusterUnavailable: "), (call, out[call])
        assert "ray.init(address=" in out[call]
    assert out["get"] == out["list_deployed"] == "ClusterUnavailable"
    assert "not connected" in out["repr"]
    assert "ClusterUnavailable" in out["html"]
    assert out["initialized_after"] is False, "no call started a new Ray"
