"""``tap``: the TapPoint's guarantees (bounded, sampled, off when nobody reads, reads wait on a
condition), the runners' hooks, and on Ray: tapping a source and a sink of a running topology
(single-tier and tiered) shows events the sink received while the sink still receives every event;
unknown components and stopped topologies are refused; ``rayflume tap`` prints JSON lines.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pytest

from rayflume import testing
from rayflume._private.runners import SinkRunner, SourceRunner
from rayflume._private.tap import ROW_OVERHEAD_BYTES, TapPoint, sampled_rows
from rayflume._private.tapping import TapTarget, events_table, tap_stream, tap_targets
from rayflume.cli import build_parser, main, tap_lines
from rayflume.counters import Counters
from rayflume.errors import TopologyNotRunning
from rayflume.event import Event, EventBatch
from rayflume.interceptors.base import InterceptorChain
from rayflume.interceptors.builtin import StaticInterceptorConfig
from rayflume.processors.base import Status
from rayflume.selectors.replicating import ReplicatingSelectorConfig
from rayflume.topology import validate
from tests.channel_contract import wait_until

ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def bodies(start: int, stop: int, size: int = 0) -> EventBatch:
    return EventBatch.from_bodies([str(i).zfill(size).encode() for i in range(start, stop)])


def numbers(batch: EventBatch) -> list[int]:
    return [int(b) for b in batch.bodies()]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- TapPoint ------------------------------------------------------------------------------------------
def test_off_until_read_and_keeps_nothing_then():
    tap = TapPoint()
    assert tap.armed is False
    tap.offer(bodies(0, 10))  # a stray offer while disarmed (the runner's check raced a disarm)
    assert tap.stats()["buffered_events"] == 0
    assert len(tap.read(10)) == 0
    assert tap.armed is True
    tap.offer(bodies(0, 10))
    assert numbers(tap.read(100)) == list(range(10))
    assert len(tap.read(100)) == 0, "a read removes what it returns"


def test_capacity_bound_drops_the_oldest_and_counts_them():
    tap = TapPoint(capacity=5)
    tap.read(0)
    tap.offer(bodies(0, 4))
    tap.offer(bodies(4, 10))
    stats = tap.stats()
    assert stats["buffered_events"] == 5 and stats["dropped"] == 5
    assert numbers(tap.read(3)) == [5, 6, 7]
    tap.offer(bodies(10, 1000))  # a batch far larger than the capacity: only its newest rows are copied
    assert numbers(tap.read(100)) == list(range(995, 1000))
    assert tap.stats()["dropped"] == 5 + 985 + 2  # 985 never copied, then 8 and 9 pushed out


def test_byte_bound_drops_the_oldest_and_an_oversized_event_at_once():
    size = 100 + ROW_OVERHEAD_BYTES  # a 100-byte body, no headers
    tap = TapPoint(capacity=1000, max_bytes=3 * size + 10)
    tap.read(0)
    tap.offer(bodies(0, 2, size=100))
    tap.offer(bodies(2, 5, size=100))
    assert tap.stats()["buffered_bytes"] == 3 * size
    assert numbers(tap.read(10)) == [2, 3, 4]
    tap.offer(EventBatch.from_bodies([b"x" * 1000]))  # larger than the whole bound
    assert tap.stats()["buffered_events"] == 0 and tap.stats()["dropped"] == 3
    # header keys and values count too: 10 bytes of them fill the bound exactly, 12 exceed it
    tap.offer(EventBatch.from_events([Event(b"1" * 100, {"k" * 5: "v" * 5}), Event(b"2" * 100),
                                      Event(b"3" * 100)]))
    assert [b[:1] for b in tap.read(10).bodies()] == [b"1", b"2", b"3"]
    tap.offer(EventBatch.from_events([Event(b"1" * 100, {"k" * 6: "v" * 6}), Event(b"2" * 100),
                                      Event(b"3" * 100)]))
    assert [b[:1] for b in tap.read(10).bodies()] == [b"2", b"3"]


def test_sample_keeps_an_evenly_spaced_fraction_across_batches():
    tap = TapPoint(sample=0.25)
    tap.read(0)
    for start in range(0, 100, 7):
        tap.offer(bodies(start, min(start + 7, 100)))
    kept = numbers(tap.read(1000))
    assert kept == list(range(3, 100, 4))
    # the reader's sample applies from its read on
    tap.read(0, sample=0.5)
    tap.offer(bodies(100, 110))
    assert len(tap.read(100)) == 5
    with pytest.raises(ValueError, match="sample"):
        tap.read(0, sample=0)


def test_sampled_rows_are_the_last_ones_within_the_batch():
    rows, sampled = sampled_rows(seen=0, n=10_000, fraction=1.0, last=1000)
    assert sampled == 10_000 and rows.tolist() == list(range(9000, 10_000))
    for fraction in (0.1, 0.3, 0.999):
        seen, total = 0, 0
        for n in (7, 13, 100, 1, 1000, 3):
            rows, sampled = sampled_rows(seen, n, fraction, 10**9)
            assert len(rows) == sampled and all(0 <= r < n for r in rows)
            seen, total = seen + n, total + sampled
        assert abs(total - seen * fraction) <= 1


def test_kept_rows_are_copies():
    tap = TapPoint()
    tap.read(0)
    batch = bodies(0, 10_000, size=200)
    tap.offer(batch)
    got = tap.read(10_000)
    assert len(got) == 1000
    data = batch.body.buffers()[2]
    kept = got.body.buffers()[2]
    assert not (data.address <= kept.address < data.address + data.size), "the tap holds the tapped batch's buffer"
    assert kept.size < data.size / 5


def test_disarms_and_drops_its_buffer_after_idle_off_s():
    clock = Clock()
    tap = TapPoint(idle_off_s=5.0, clock=clock)
    tap.read(0)
    clock.now = 4.0
    tap.offer(bodies(0, 3))
    assert tap.armed and tap.stats()["buffered_events"] == 3
    clock.now = 9.5  # 5.5 s after the last read
    tap.offer(bodies(3, 6))
    assert tap.armed is False
    assert tap.stats()["buffered_events"] == 0, "a disarmed tap holds nothing"
    assert tap.stats()["dropped"] == 3
    # a reader back after the pause sees only what flows from then on
    clock.now = 20.0
    assert len(tap.read(10)) == 0 and tap.armed
    tap.offer(bodies(6, 8))
    assert numbers(tap.read(10)) == [6, 7]


def test_idle_check_on_read_drops_stale_events():
    clock = Clock()
    tap = TapPoint(idle_off_s=5.0, clock=clock)
    tap.read(0)
    tap.offer(bodies(0, 3))
    clock.now = 6.0  # no offer came since to notice: the next read does
    assert len(tap.read(10)) == 0


def test_a_waiting_reader_keeps_the_tap_armed():
    clock = Clock()
    tap = TapPoint(idle_off_s=5.0, clock=clock)
    got = []
    reader = threading.Thread(target=lambda: got.append(tap.read(10, wait_s=30)))
    reader.start()
    wait_until(lambda: tap._waiting == 1, what="the reader waiting")
    clock.now = 100.0
    tap.offer(bodies(0, 2))
    reader.join(10)
    assert not reader.is_alive() and numbers(got[0]) == [0, 1]


def test_read_waits_on_a_condition_and_returns_when_events_come():
    tap = TapPoint()
    t0 = time.monotonic()
    assert len(tap.read(10, wait_s=0.05)) == 0
    assert 0.04 <= time.monotonic() - t0 < 5
    got = []
    reader = threading.Thread(target=lambda: got.append((tap.read(10, wait_s=60), time.monotonic())))
    reader.start()
    wait_until(lambda: tap._waiting == 1, what="the reader waiting")
    offered = time.monotonic()
    tap.offer(bodies(0, 4))
    reader.join(30)
    assert not reader.is_alive()
    batch, returned = got[0]
    assert numbers(batch) == [0, 1, 2, 3]
    assert returned - offered < 5, "the reader was not woken by the offer"


def test_offer_never_raises():
    tap = TapPoint()
    tap.read(0)

    class Broken:
        def resolve(self, timeout_s):
            raise RuntimeError("object lost")

    tap.offer(Broken())
    tap.offer(object())
    assert tap.stats()["buffered_events"] == 0


def test_concurrent_offers_stay_within_bounds():
    tap = TapPoint(capacity=100)
    tap.read(0)
    threads = [threading.Thread(target=lambda s=s: [tap.offer(bodies(s + i * 10, s + i * 10 + 10))
                                                   for i in range(50)]) for s in (0, 10_000, 20_000, 30_000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = tap.stats()
    assert stats["buffered_events"] == 100 and stats["offered"] == 2000 and stats["dropped"] == 1900
    assert len(set(numbers(tap.read(1000)))) == 100


# -- the runners' hooks ------------------------------------------------------------------------------
class ExplodingTap:
    """A tap that is never armed; any offer fails the test."""

    armed = False

    def offer(self, batch):
        raise AssertionError("offered while disarmed")


class OneShotSource:
    waits_in_poll = False
    finished = False

    def __init__(self, batch):
        self.batch = batch

    def poll(self):
        batch, self.batch = self.batch, None
        return batch

    def ack(self):
        pass  # nothing to acknowledge: the source makes its batches up

    def on_put_failure(self, failed):
        return True


def source_runner(batch, tap, put_many=None):
    selector = ReplicatingSelectorConfig(type="replicating").build(["mem"])
    chain = InterceptorChain([StaticInterceptorConfig(type="static", key="env", value="tapped").build()])
    put_many = put_many or (lambda subbatches, txn_id, tally: {ch: None for ch in subbatches})
    return SourceRunner("gen", OneShotSource(batch), chain, selector, put_many, Counters(), tap=tap)


def test_source_runner_offers_the_intercepted_batch_once_committed():
    tap = TapPoint()
    tap.read(0)
    attempts = []

    def put_many(subbatches, txn_id, tally):
        attempts.append(txn_id)
        # the first put is refused: nothing may be offered until the retry committed it
        return {ch: (RuntimeError("down") if len(attempts) == 1 else None) for ch in subbatches}

    runner = source_runner(bodies(0, 5), tap, put_many)
    runner.backoff.next_delay = lambda: 0.0
    assert runner.run_once()
    assert len(attempts) == 2
    got = tap.read(10)
    assert numbers(got) == list(range(5))
    assert got.header("env").to_pylist() == ["tapped"] * 5  # after the interceptors


def test_source_runner_deliver_once_offers_and_disarmed_taps_are_not_called():
    tap = TapPoint()
    tap.read(0)
    runner = source_runner(None, tap)
    runner.deliver_once(bodies(0, 3), "txn-1")
    assert numbers(tap.read(10)) == [0, 1, 2]
    quiet = source_runner(bodies(0, 3), ExplodingTap())
    assert quiet.run_once()
    quiet.deliver_once(bodies(3, 6), "txn-2")
    runner = SourceRunner("g", OneShotSource(None), InterceptorChain([]), None, None, Counters())
    assert isinstance(runner.tap, TapPoint)


class OnePort:
    def __init__(self, batch):
        self.batch = batch
        self.committed = []
        self.rolled_back = []

    def take(self, max_events, holder, timeout_s):
        batch, self.batch = self.batch, None
        return None if batch is None else ("lease-1", batch)

    def commit(self, lease_id):
        self.committed.append(lease_id)

    def rollback(self, lease_id):
        self.rolled_back.append(lease_id)


class ListSink:
    batch_size = 100

    def __init__(self, fail=False):
        self.fail = fail
        self.written = []

    def write(self, batch):
        if self.fail:
            raise OSError("disk full")
        self.written.append(batch)


def test_sink_runner_offers_what_was_written_and_nothing_that_failed():
    tap = TapPoint()
    tap.read(0)
    runner = SinkRunner("out", ListSink(), OnePort(bodies(0, 4)), "h", Counters(), tap=tap)
    assert runner.process() is Status.READY
    assert numbers(tap.read(10)) == [0, 1, 2, 3]
    failing = SinkRunner("out", ListSink(fail=True), OnePort(bodies(0, 4)), "h", Counters(), tap=tap)
    with pytest.raises(Exception, match="disk full"):
        failing.process()
    assert len(tap.read(10)) == 0
    quiet = SinkRunner("out", ListSink(), OnePort(bodies(0, 4)), "h", Counters(), tap=ExplodingTap())
    assert quiet.process() is Status.READY
    assert isinstance(SinkRunner("out", ListSink(), OnePort(None), "h", Counters()).tap, TapPoint)


# -- finding the instances, the table, the CLI's lines --------------------------------------------------
def two_tier_spec(name, replicas=2, sink=None):
    return {"name": name, "metrics": {"port": None}, "tiers": {
        "agent": {"placement": {"replicas": 1},
                  "sources": {"gen": {"type": "sequence", "batch_size": 100, "channels": ["mem"]}},
                  "channels": {"mem": {"type": "memory", "capacity": 2000, "transaction_capacity": 500}},
                  "sinks": {"fwd": {"type": "rayflume", "tier": "collector", "channel": "mem", "batch_size": 100}}},
        "collector": {"placement": {"replicas": replicas},
                      "sources": {"in": {"type": "rayflume", "channels": ["mem"]}},
                      "channels": {"mem": {"type": "memory", "capacity": 2000, "transaction_capacity": 500}},
                      "sinks": {"out": sink or {"type": "null", "channel": "mem", "batch_size": 100}}}}}


def test_tap_targets_single_tier_groups_and_tiers():
    single = validate({"name": "t", "sources": {"gen": {"type": "sequence", "channels": ["mem"]}},
                       "channels": {"mem": {"type": "memory"}},
                       "sinks": {"a": {"type": "null", "channel": "mem"}, "b": {"type": "null", "channel": "mem"}},
                       "sink_groups": {"g": {"sinks": ["a", "b"], "processor": {"type": "failover"}}}}).raw
    names = ["t/source/gen", "t/sinks/g", "t/channel/mem", "t/controller", "other/source/gen"]
    assert tap_targets(single, "gen", names) == [TapTarget("", "main", "gen", "SOURCE", "t/source/gen")]
    assert tap_targets(single, "b", names) == [TapTarget("", "main", "b", "SINK", "t/sinks/g", "b")]
    assert tap_targets(single, "gen", []) == []  # not started (yet): nothing to read
    with pytest.raises(ValueError) as refused:
        tap_targets(single, "mem", names)
    assert "sources are gen" in str(refused.value) and "sinks are a, b" in str(refused.value)
    assert "channel is seen by tapping a sink" in str(refused.value)

    tiered = validate(two_tier_spec("w")).raw
    names = ["w/collector/r0/source/in", "w/collector/r1/source/in", "w/collector/r1/sinks/out",
             "w/agent/r2/source/gen", "w/collector/r0/x/source/in"]
    assert [(t.tier, t.instance) for t in tap_targets(tiered, "in", names)] == [("collector", "r0"),
                                                                                ("collector", "r1")]
    assert tap_targets(tiered, "out", names) == [TapTarget("collector", "r1", "out", "SINK",
                                                           "w/collector/r1/sinks/out", "out")]
    with pytest.raises(ValueError, match=r"gen \(tier agent\), in \(tier collector\)"):
        tap_targets(tiered, "nope", names)
    # names only: a component class this process cannot import does not stand in the way
    custom = {"name": "c", "sources": {"mine": {"type": "not_installed_here.sources:Mine", "channels": ["m"]}},
              "channels": {"m": {"type": "memory"}}, "sinks": {"out": {"type": "null", "channel": "m"}}}
    assert [t.actor_name for t in tap_targets(custom, "mine", ["c/source/mine"])] == ["c/source/mine"]


def test_events_table_and_cli_lines():
    target = TapTarget("", "main", "out", "SINK", "t/sinks/out", "out")
    batch = EventBatch.from_events([Event("héllo".encode(), {"k": "v"}), Event(b"\xff\xfe")])
    table = events_table([(target, batch)])
    assert table.schema.names == ["tier", "instance", "component", "headers", "body"]
    assert table.schema.field("headers").type == pa.map_(pa.string(), pa.string())
    assert table.column("tier").to_pylist() == [None, None]
    assert table.column("body").to_pylist() == ["héllo".encode(), b"\xff\xfe"]
    assert events_table([]).num_rows == 0
    lines = [json.loads(line) for line in tap_lines(target, batch, "json")]
    assert lines[0] == {"component": "out", "tier": None, "instance": "main", "headers": {"k": "v"}, "body": "héllo"}
    assert lines[1]["body_base64"] == "//4=" and "body" not in lines[1]
    assert tap_lines(target, batch, "text") == ["héllo", "\ufffd\ufffd"]


def test_cli_tap_arguments(capsys):
    args = build_parser().parse_args(["tap", "weblogs", "out"])
    assert (args.limit, args.format, args.timeout_s, args.sample) == (10, "json", 10.0, 1.0)
    # refused before connecting to anything
    assert main(["tap", "weblogs", "out", "--limit", "-1"]) == 2
    assert main(["tap", "weblogs", "out", "--sample", "1.5"]) == 2
    assert "--sample must be a fraction" in capsys.readouterr().err


# -- on Ray --------------------------------------------------------------------------------------------
def fed(name):
    return {"name": name, "metrics": {"port": None},
            "sources": {"gen": {"type": "testing_feed", "feed": name, "channels": ["mem"],
                                "interceptors": [{"type": "static", "key": "env", "value": "tapped"}]}},
            "channels": {"mem": {"type": "memory", "capacity": 5000, "transaction_capacity": 500}},
            "sinks": {"out": {"type": "testing_sink", "collector": name, "channel": "mem", "batch_size": 100}}}


class Pusher:
    """Pushes numbered 50-event batches into a feed, each once the previous one reached the sink,
    until stopped (at most ``limit`` events)."""

    def __init__(self, name, limit=50_000):
        self.feed = testing.feed(name)
        self.collector = testing.collector(name)
        self.pushed = 0
        self.limit = limit
        self.stopping = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while not self.stopping.is_set() and self.pushed < self.limit:
                self.feed.push([f"e{i}" for i in range(self.pushed, self.pushed + 50)])
                self.pushed += 50
                self.collector.wait_for(self.pushed, timeout_s=60)
        except Exception as exc:
            self.error = exc

    def stop(self) -> int:
        self.stopping.set()
        self.thread.join(120)
        assert not self.thread.is_alive() and self.error is None, self.error
        return self.pushed


def test_tap_a_source_and_a_sink_without_taking_anything(deployed):
    handle = deployed(fed("tap-flow"))
    pusher = Pusher("tap-flow")
    try:
        at_source = handle.tap("gen", n=20, timeout_s=60)
        at_sink = handle.tap("out", n=20, timeout_s=60, sample=0.5)
    finally:
        pushed = pusher.stop()
    pusher.feed.close()
    pusher.collector.wait_for(pushed, timeout_s=60)
    received = pusher.collector.bodies()
    # the tap removed nothing, and the sink got every event once (a memory channel, no failures)
    assert sorted(received) == sorted(f"e{i}".encode() for i in range(pushed))
    assert at_source.num_rows == 20 and at_sink.num_rows == 20
    assert set(at_source.column("body").to_pylist()) <= set(received)
    assert set(at_sink.column("body").to_pylist()) <= set(received)
    assert at_source.column("component").to_pylist() == ["gen"] * 20
    assert at_sink.column("instance").to_pylist() == ["main"] * 20
    assert at_source.column("tier").null_count == 20
    # the source is seen after its interceptors
    assert all(dict(h) == {"env": "tapped"} for h in at_source.column("headers").to_pylist())
    sink_numbers = [int(b[1:]) for b in at_sink.column("body").to_pylist()]
    assert all(b - a == 2 for a, b in zip(sink_numbers, sink_numbers[1:])), "sample=0.5 keeps every other event"


def test_unknown_component_and_stopped_topology_are_refused(deployed):
    handle = deployed(fed("tap-refused"))
    with pytest.raises(ValueError) as refused:
        handle.tap("nosuch", n=1, timeout_s=1)
    assert "'nosuch'" in str(refused.value) and "gen" in str(refused.value) and "out" in str(refused.value)
    assert handle.tap("gen", n=0).num_rows == 0
    empty = handle.tap("gen", n=5, timeout_s=0.5)  # nothing flows: an empty table after the timeout
    assert empty.num_rows == 0 and empty.schema.names == ["tier", "instance", "component", "headers", "body"]
    handle.stop(drain_timeout_s=5)
    with pytest.raises(TopologyNotRunning):
        handle.tap("gen", n=1, timeout_s=1)


@pytest.mark.slow
def test_tap_every_instance_of_a_tier_and_a_hop_passed_by_reference(deployed):
    handle = deployed(two_tier_spec("tap-tiers", replicas=2))

    def replicas_delivering():
        """The collector's instances, once each one's sink delivered (replicas are named r1, r2...)."""
        m = handle.metrics()
        counts = {k.split(".")[2]: int(v.get("EventDrainSuccessCount", 0)) for k, v in m.items()
                  if k.startswith("SINK.collector.")}
        return set(counts) if len(counts) == 2 and all(counts.values()) else None

    wait_until(replicas_delivering, timeout_s=120, interval_s=0.2, what="both collector replicas delivering")
    replicas = replicas_delivering()
    # `in` is a receiving source without interceptors: it passes hops on by reference, read only by the tap
    at_source = handle.tap("in", n=1000, timeout_s=120)
    at_sink = handle.tap("out", n=1000, timeout_s=120)
    for table in (at_source, at_sink):
        assert table.num_rows == 1000
        assert (set(table.column("tier").to_pylist()) == {"collector"}
                and set(table.column("instance").to_pylist()) <= replicas)
        assert all(b.isdigit() for b in table.column("body").to_pylist())

    def instances_seen(component: str) -> set:
        """The instances a tap stream of ``component`` shows events from, until it showed both replicas.
        (One table may come from one instance alone: the first instance to answer can fill it.)"""
        seen = set()
        for target, _batch in tap_stream(handle, component, limit=None, idle_timeout_s=30, timeout_s=60):
            seen.add(target.instance)
            if seen >= replicas:
                break
        return seen

    # the agent's sink sends its 100-event batches round-robin: both replicas' events are tapped
    assert instances_seen("in") == replicas and instances_seen("out") == replicas


def test_cli_tap_prints_json_lines(deployed, ray_local):
    deployed({"name": "tap-cli", "metrics": {"port": None},
              "sources": {"gen": {"type": "sequence", "batch_size": 100, "channels": ["mem"]}},
              "channels": {"mem": {"type": "memory", "capacity": 2000, "transaction_capacity": 500}},
              "sinks": {"out": {"type": "flaky_sink", "collector": "tap-cli", "channel": "mem", "batch_size": 100,
                                "write_delay_s": 0.05}}})
    address = ray_local.get_runtime_context().gcs_address
    r = subprocess.run([sys.executable, "-m", "rayflume.cli", "tap", "tap-cli", "out", "--limit", "5",
                        "--timeout-s", "60", "--address", address], env=ENV, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(events) == 5, r.stdout
    for event in events:
        assert event["component"] == "out" and event["instance"] == "main" and event["tier"] is None
        assert event["body"].isdigit() and event["headers"] == {}
    numbers_seen = [int(e["body"]) for e in events]
    assert numbers_seen == sorted(numbers_seen), "events come in the order they flowed"
