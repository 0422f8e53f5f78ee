"""Sink processors: default, failover and load_balance, driven with fake sinks and a fake clock."""
from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from rayflume.errors import DeliveryError
from rayflume.processors import (
    DefaultProcessorConfig,
    DefaultSinkProcessor,
    FailoverProcessorConfig,
    FailoverSinkProcessor,
    LoadBalanceProcessorConfig,
    LoadBalancingSinkProcessor,
    Status,
)
from rayflume.processors.failover import effective_priorities, penalty_s
from rayflume.registry import lookup


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


class FakeSink:
    """A sink whose ``process()`` returns READY, returns BACKOFF or raises, as ``mode`` says."""

    def __init__(self, name: str, mode: str = "ok", log: list | None = None):
        self.name = name
        self.mode = mode
        self.calls = 0
        self.delivered = 0
        self.log = log if log is not None else []

    def process(self) -> Status:
        self.calls += 1
        self.log.append(self.name)
        if self.mode == "fail":
            raise ConnectionError(f"{self.name} target is down")
        if self.mode == "backoff":
            return Status.BACKOFF
        self.delivered += 1
        return Status.READY


def sinks(*names, log=None):
    log = [] if log is None else log
    return [FakeSink(n, log=log) for n in names]


# -- default ------------------------------------------------------------------------------------

def test_default_calls_its_one_sink_and_passes_the_status():
    s = FakeSink("a")
    p = DefaultProcessorConfig(type="default").build([s])
    assert p.process() is Status.READY
    s.mode = "backoff"
    assert p.process() is Status.BACKOFF
    assert s.calls == 2
    assert p.state()["sinks"]["a"]["delivered"] == 1


def test_default_wraps_a_failure_in_delivery_error_naming_the_sink():
    s = FakeSink("a", mode="fail")
    p = DefaultSinkProcessor([s])
    with pytest.raises(DeliveryError, match="'a'") as info:
        p.process()
    assert isinstance(info.value.__cause__, ConnectionError)


def test_default_refuses_several_sinks():
    with pytest.raises(ValueError, match="exactly one sink"):
        DefaultSinkProcessor(sinks("a", "b"))


# -- failover -----------------------------------------------------------------------------------

def make_failover(names=("hi", "mid", "lo"), priority=None, max_penalty_s=30.0):
    clock = FakeClock()
    group = sinks(*names)
    priority = priority if priority is not None else {"hi": 10, "mid": 5, "lo": 1}
    p = FailoverProcessorConfig(type="failover", priority=priority, max_penalty_s=max_penalty_s).build(
        group, clock=clock, name="g")
    return p, {s.name: s for s in group}, clock


def test_failover_uses_only_the_highest_priority_sink():
    p, s, _ = make_failover()
    for _ in range(5):
        assert p.process() is Status.READY
    assert (s["hi"].calls, s["mid"].calls, s["lo"].calls) == (5, 0, 0)
    assert p.active == "hi"


def test_failover_moves_to_the_next_priority_in_the_same_call():
    p, s, _ = make_failover()
    s["hi"].mode = "fail"
    assert p.process() is Status.READY
    assert s["hi"].calls == 1 and s["mid"].delivered == 1 and s["lo"].calls == 0
    assert p.active == "mid"
    st = p.state()["sinks"]
    assert st["hi"]["state"] == "failed" and st["hi"]["retry_in_s"] == 2.0
    assert st["mid"]["state"] == "live" and st["mid"]["retry_in_s"] is None
    # While the penalty runs, the failed sink is not called at all.
    for _ in range(3):
        assert p.process() is Status.READY
    assert s["hi"].calls == 1 and s["mid"].delivered == 4


def test_failover_returns_to_the_recovered_sink_after_its_penalty():
    p, s, clock = make_failover()
    s["hi"].mode = "fail"
    p.process()
    s["hi"].mode = "ok"
    clock.advance(1.9)
    p.process()
    assert s["hi"].calls == 1, "tried before its penalty expired"
    clock.advance(0.1)
    mid_before = s["mid"].calls
    assert p.process() is Status.READY
    # The probe delivered this call's batch: the standby sink was not also called.
    assert s["hi"].delivered == 1 and s["mid"].calls == mid_before
    assert p.active == "hi" and p.state()["sinks"]["hi"]["state"] == "live"
    p.process()
    assert s["hi"].delivered == 2 and s["mid"].calls == mid_before


def test_failover_penalty_doubles_and_is_capped():
    p, s, clock = make_failover(max_penalty_s=10.0)
    s["hi"].mode = "fail"
    p.process()
    waits = []
    for _ in range(5):
        wait = p.state()["sinks"]["hi"]["retry_in_s"]
        waits.append(wait)
        clock.advance(wait - 0.01)
        calls = s["hi"].calls
        p.process()
        assert s["hi"].calls == calls, "probed before its penalty expired"
        clock.advance(0.01)
        p.process()
        assert s["hi"].calls == calls + 1, "not probed once its penalty expired"
    assert waits == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert p.state()["sinks"]["hi"]["consecutive_failures"] == 6
    assert [penalty_s(n, 30.0) for n in (1, 2, 3, 4, 5, 6, 100)] == [2, 4, 8, 16, 30, 30, 30]


def test_failover_failure_count_resets_after_recovery():
    p, s, clock = make_failover()
    s["hi"].mode = "fail"
    p.process()
    clock.advance(2)
    p.process()  # fails again: 4 s
    assert p.state()["sinks"]["hi"]["retry_in_s"] == 4.0
    s["hi"].mode = "ok"
    clock.advance(4)
    p.process()
    assert p.active == "hi"
    s["hi"].mode = "fail"
    p.process()
    assert p.state()["sinks"]["hi"]["retry_in_s"] == 2.0


def test_failover_tries_expired_failed_sinks_in_priority_order():
    p, s, clock = make_failover()
    s["hi"].mode = s["mid"].mode = "fail"
    assert p.process() is Status.READY  # hi fails, mid fails, lo delivers
    assert p.active == "lo"
    s["hi"].mode = s["mid"].mode = "ok"
    clock.advance(2)
    order = []
    for sink in s.values():
        sink.log = order
    assert p.process() is Status.READY
    assert order == ["hi"]
    assert p.active == "hi"
    p.process()
    assert order == ["hi", "mid"], "mid's penalty had expired too: it is probed (and delivers) next"
    assert p.state()["sinks"]["mid"]["state"] == "live"
    p.process()
    assert order == ["hi", "mid", "hi"]


def test_failover_all_failing_raises_naming_the_sinks():
    p, s, clock = make_failover()
    for sink in s.values():
        sink.mode = "fail"
    with pytest.raises(DeliveryError) as info:
        p.process()
    msg = str(info.value)
    assert all(name in msg for name in ("hi", "mid", "lo")) and "'g'" in msg
    assert p.active is None
    # All in the failed pool with penalties running: nothing is called, the call still fails.
    calls = sum(x.calls for x in s.values())
    with pytest.raises(DeliveryError, match="retried in 2.0 s"):
        p.process()
    assert sum(x.calls for x in s.values()) == calls
    # Once penalties expire and a sink works again, delivery resumes.
    s["lo"].mode = "ok"
    clock.advance(2)
    assert p.process() is Status.READY
    assert p.active == "lo"


def test_failover_passes_backoff_on():
    p, s, _ = make_failover()
    s["hi"].mode = "backoff"
    assert p.process() is Status.BACKOFF
    assert s["mid"].calls == 0 and p.active == "hi"


def test_failover_probe_backoff_keeps_the_sink_failed_and_uses_the_live_one():
    p, s, clock = make_failover(names=("hi", "lo"), priority={"hi": 2, "lo": 1})
    s["hi"].mode = "fail"
    p.process()
    s["hi"].mode = "backoff"
    clock.advance(2)
    assert p.process() is Status.READY
    assert s["lo"].delivered == 2
    assert p.state()["sinks"]["hi"]["state"] == "failed"
    # Only BACKOFF from the probe and nothing live: BACKOFF, not an error.
    s["lo"].mode = "fail"
    with pytest.raises(DeliveryError):
        p.process()
    assert p.process() is Status.BACKOFF


def test_failover_unnamed_sinks_rank_below_named_ones_in_group_order():
    assert effective_priorities(["a", "b", "c", "d"], {"c": -5, "a": 3}) == {"a": 3, "b": -6, "c": -5, "d": -7}
    assert effective_priorities(["a", "b"], {}) == {"a": -1, "b": -2}
    p, s, _ = make_failover(names=("x", "y", "z"), priority={"z": 1})
    assert p.active == "z"
    s["z"].mode = "fail"
    p.process()
    assert p.active == "x"


def test_failover_config_validation():
    with pytest.raises(ValidationError, match="priorities must be unique"):
        FailoverProcessorConfig(type="failover", priority={"a": 1, "b": 1})
    with pytest.raises(ValidationError):
        FailoverProcessorConfig(type="failover", max_penalty_s=0)
    with pytest.raises(ValidationError):
        FailoverProcessorConfig(type="failover", maxpenalty=30)
    cfg = FailoverProcessorConfig(type="failover", priority={"a": 2, "b": 1})
    assert cfg.sinks_named() == {"a", "b"} and cfg.max_penalty_s == 30.0
    with pytest.raises(ValueError, match="not in the group"):
        cfg.build(sinks("a", "c"))
    with pytest.raises(ValueError, match="unique"):
        FailoverSinkProcessor(sinks("a", "b"), priority={"a": 1, "b": 1})


# -- load_balance -------------------------------------------------------------------------------

def make_lb(n=3, **kw):
    clock = FakeClock()
    log: list = []
    group = sinks(*[f"s{i}" for i in range(n)], log=log)
    cfg = LoadBalanceProcessorConfig(type="load_balance", **kw)
    p = cfg.build(group, clock=clock, rng=random.Random(7), name="lb")
    return p, group, clock, log


def test_round_robin_spreads_evenly_in_turn():
    p, group, _, log = make_lb()
    for _ in range(300):
        assert p.process() is Status.READY
    assert [s.delivered for s in group] == [100, 100, 100]
    assert log[:6] == ["s0", "s1", "s2", "s0", "s1", "s2"]


def test_random_uses_every_sink():
    p, group, _, _ = make_lb(selector="random")
    for _ in range(300):
        p.process()
    counts = [s.delivered for s in group]
    assert sum(counts) == 300 and min(counts) > 50, counts


def test_without_backoff_a_failing_sinks_turn_passes_to_the_next():
    p, group, _, log = make_lb()
    group[1].mode = "fail"
    for _ in range(6):
        assert p.process() is Status.READY
    assert [s.delivered for s in group] == [2, 0, 4]
    assert group[1].calls == 2, "without backoff the failing sink keeps getting its turn"
    assert p.state()["sinks"]["s1"]["failures"] == 2
    assert p.state()["sinks"]["s1"]["state"] == "live"


def test_backoff_excludes_a_failing_sink_then_readmits_it():
    p, group, clock, _ = make_lb(backoff=True)
    group[1].mode = "fail"
    for _ in range(6):
        p.process()
    assert group[1].calls == 1
    st = p.state()["sinks"]["s1"]
    assert st["state"] == "backed_off" and st["retry_in_s"] == 2.0
    clock.advance(2)
    for _ in range(3):
        p.process()
    assert group[1].calls == 2, "re-admitted after 2 s and failed again"
    assert p.state()["sinks"]["s1"]["retry_in_s"] == 4.0
    group[1].mode = "ok"
    clock.advance(3.99)
    for _ in range(3):
        p.process()
    assert group[1].calls == 2
    clock.advance(0.01)
    for _ in range(6):
        p.process()
    assert group[1].delivered == 2
    assert p.state()["sinks"]["s1"]["consecutive_failures"] == 0


def test_backoff_is_capped_by_selector_max_timeout():
    p, group, clock, _ = make_lb(n=2, backoff=True, selector_max_timeout_s=5)
    group[0].mode = "fail"
    waits = []
    for _ in range(4):
        calls = group[0].calls
        while group[0].calls == calls:
            p.process()
        waits.append(p.state()["sinks"]["s0"]["retry_in_s"])
        clock.advance(waits[-1])
    assert waits == [2.0, 4.0, 5.0, 5.0]


def test_load_balance_all_failing_raises_naming_the_sinks():
    p, group, clock, _ = make_lb(backoff=True)
    for s in group:
        s.mode = "fail"
    with pytest.raises(DeliveryError) as info:
        p.process()
    assert all(s.name in str(info.value) for s in group) and "'lb'" in str(info.value)
    calls = sum(s.calls for s in group)
    with pytest.raises(DeliveryError, match="backed off"):
        p.process()
    assert sum(s.calls for s in group) == calls
    group[2].mode = "ok"
    clock.advance(2)
    assert p.process() is Status.READY


def test_load_balance_all_failing_without_backoff_raises():
    p, group, _, _ = make_lb()
    for s in group:
        s.mode = "fail"
    for _ in range(3):
        with pytest.raises(DeliveryError):
            p.process()
    assert [s.calls for s in group] == [3, 3, 3]


def test_load_balance_backoff_propagation():
    p, group, _, _ = make_lb()
    for s in group:
        s.mode = "backoff"
    assert p.process() is Status.BACKOFF
    assert [s.calls for s in group] == [1, 1, 1]
    # One sink with data is enough for READY, whoever's turn it is.
    group[2].mode = "ok"
    assert p.process() is Status.READY
    # A failure plus BACKOFFs: nothing was deliverable anywhere else, so BACKOFF.
    group[2].mode = "fail"
    assert p.process() is Status.BACKOFF


def test_load_balance_config_validation():
    with pytest.raises(ValidationError, match="unknown selector 'weighted'"):
        LoadBalanceProcessorConfig(type="load_balance", selector="weighted")
    with pytest.raises(ValidationError):
        LoadBalanceProcessorConfig(type="load_balance", selector_max_timeout_s=0)
    with pytest.raises(ValidationError):
        LoadBalanceProcessorConfig(type="load_balance", max_timeout=3)
    cfg = LoadBalanceProcessorConfig(type="load_balance")
    assert (cfg.selector, cfg.backoff, cfg.selector_max_timeout_s) == ("round_robin", False, 30.0)
    with pytest.raises(ValueError, match="unknown selector"):
        LoadBalancingSinkProcessor(sinks("a"), selector="nope")


def test_processors_are_registered():
    assert lookup("processor", "default") is DefaultProcessorConfig
    assert lookup("processor", "failover") is FailoverProcessorConfig
    assert lookup("processor", "load_balance") is LoadBalanceProcessorConfig
    assert isinstance(lookup("processor", "failover")(type="failover").build(sinks("a")), FailoverSinkProcessor)
