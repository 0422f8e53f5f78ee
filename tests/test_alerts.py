"""Alerts (rayflume._private.alerts): the evaluator with an injected clock, the config, the webhook
sender, and on Ray: a dead component fires component_down to a webhook; a dead webhook does not
slow the pipeline."""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from rayflume._private.alerts import AlertEvaluator, AlertRule, WebhookConfig, WebhookSender, parse_alerts
from rayflume._private.backoff import Backoff
from rayflume.channel_contract import wait_until
from rayflume.errors import ConfigError
from rayflume.topology import validate


# -- helpers ---------------------------------------------------------------------------------------
def status(source_state="ALIVE", restarts=0, fill=10.0, size=5, sink_state="ALIVE", unhealthy=False,
           died_at=None):
    """A status() snapshot of one source, one channel and one sink (no tiers); ``died_at``: when
    the controller last saw the source die."""
    sink_counters = {"EventDrainSuccessCount": "3"}
    if unhealthy:
        sink_counters["Unhealthy"] = "1"
    return {"components": [
        {"kind": "SOURCE", "name": "in", "tier": "", "instance": "", "state": source_state, "restarts": restarts,
         "died_at": died_at, "counters": {"EventAcceptedCount": "10"}},
        {"kind": "CHANNEL", "name": "mem", "tier": "", "instance": "", "state": "ALIVE", "restarts": 0,
         "counters": {"ChannelFillPercentage": str(fill), "ChannelSize": str(size)}},
        {"kind": "SINK", "name": "out", "tier": "", "instance": "", "state": sink_state, "restarts": 0,
         "sinks": {"out": sink_counters}},
    ]}


def rule(name="r", type="component_down", threshold=0.0, for_s=5.0, component=None):
    return AlertRule(name, type, threshold, for_s, component)


SINKS = {("", "out"): "mem"}


# -- the evaluator ---------------------------------------------------------------------------------
def test_pending_then_firing_after_for_s_then_resolved():
    ev = AlertEvaluator([rule(for_s=5)], SINKS)
    assert ev.evaluate(status(), 0.0) == []
    assert ev.evaluate(status(source_state="DEAD"), 1.0) == []
    assert "r|SOURCE.in" in ev.pending
    assert ev.evaluate(status(source_state="DEAD"), 5.9) == []
    fired = ev.evaluate(status(source_state="DEAD"), 6.0)
    assert [(a["rule"], a["component"], a["state"]) for a in fired] == [("r", "SOURCE.in", "firing")]
    assert fired[0]["since"] == 1.0
    assert ev.evaluate(status(source_state="DEAD"), 7.0) == []  # fires once, not every evaluation
    assert ev.gauges() == {"AlertFiring_r": 1}
    resolved = ev.evaluate(status(), 8.0)
    assert [(a["component"], a["state"]) for a in resolved] == [("SOURCE.in", "resolved")]
    assert ev.gauges() == {"AlertFiring_r": 0}
    assert [a["state"] for a in ev.report()["recent"]] == ["firing", "resolved"]
    assert ev.report()["firing"] == []


def test_a_condition_that_clears_before_for_s_never_fires():
    ev = AlertEvaluator([rule(for_s=5)], SINKS)
    ev.evaluate(status(source_state="RESTARTING"), 0.0)
    assert ev.evaluate(status(), 3.0) == []
    assert ev.pending == {}
    assert ev.evaluate(status(source_state="RESTARTING"), 4.0) == []  # pending starts anew
    assert ev.evaluate(status(source_state="RESTARTING"), 8.9) == []
    assert len(ev.evaluate(status(source_state="RESTARTING"), 9.0)) == 1


def test_component_down_fires_at_once_on_a_death_the_controller_recovered():
    ev = AlertEvaluator([rule(for_s=5)], SINKS)
    ev.evaluate(status(restarts=0), 0.0)
    fired = ev.evaluate(status(restarts=1, died_at=0.8), 1.0)  # replaced between two looks: ALIVE again
    assert [(a["component"], a["state"]) for a in fired] == [("SOURCE.in", "firing")]
    assert "died" in fired[0]["message"]
    assert ev.evaluate(status(restarts=1, died_at=0.8), 5.7) == []  # down for for_s after the death
    assert [a["state"] for a in ev.evaluate(status(restarts=1, died_at=0.8), 5.8)] == ["resolved"]
    assert ev.evaluate(status(restarts=1, died_at=0.8), 9.0) == []  # one death, one alert


def test_a_death_before_the_first_evaluation_still_fires():
    # The replacement was running before the evaluator first looked (a busy machine, a fresh
    # controller): no earlier restart count to compare with, the death time still tells.
    ev = AlertEvaluator([rule(for_s=5)], SINKS)
    fired = ev.evaluate(status(restarts=1, died_at=9.5), 10.0)
    assert [(a["component"], a["state"]) for a in fired] == [("SOURCE.in", "firing")]


def test_a_death_already_reported_before_a_controller_restart_is_not_reported_again():
    ev = AlertEvaluator([rule(for_s=1)], SINKS)
    assert len(ev.evaluate(status(restarts=1, died_at=0.5), 1.0)) == 1
    assert len(ev.evaluate(status(restarts=1, died_at=0.5), 2.0)) == 1  # resolved
    again = AlertEvaluator([rule(for_s=1)], SINKS, json.loads(json.dumps(ev.to_dict())))
    assert again.evaluate(status(restarts=1, died_at=0.5), 3.0) == []


def test_unhealthy_and_component_filter():
    ev = AlertEvaluator([rule(for_s=0, component="out")], SINKS)
    fired = ev.evaluate(status(source_state="DEAD", unhealthy=True), 0.0)
    assert [a["component"] for a in fired] == ["SINK.out"]  # the source is filtered out


def test_paused_and_finished_components_are_not_down():
    ev = AlertEvaluator([rule(for_s=0)], SINKS)
    assert ev.evaluate(status(source_state="FINISHED", sink_state="PAUSED"), 0.0) == []


def test_channel_fill_above():
    ev = AlertEvaluator([rule("full", "channel_fill_above", threshold=80, for_s=2)], SINKS)
    assert ev.evaluate(status(fill=80.0), 0.0) == []  # above, not at
    ev.evaluate(status(fill=90.0), 1.0)
    fired = ev.evaluate(status(fill=95.0), 3.0)
    assert [(a["component"], a["value"]) for a in fired] == [("CHANNEL.mem", 95.0)]
    assert [a["state"] for a in ev.evaluate(status(fill=10.0), 4.0)] == ["resolved"]


def test_sink_lag_above_reads_the_backlog_of_the_sinks_channel():
    ev = AlertEvaluator([rule("lag", "sink_lag_above", threshold=1000, for_s=0)], SINKS)
    assert ev.evaluate(status(size=1000), 0.0) == []
    fired = ev.evaluate(status(size=5000), 1.0)
    assert [(a["component"], a["value"]) for a in fired] == [("SINK.out", 5000.0)]


def test_restored_state_keeps_firing_and_does_not_notify_again():
    rules = [rule(for_s=1), rule("full", "channel_fill_above", threshold=50, for_s=10)]
    ev = AlertEvaluator(rules, SINKS)
    ev.evaluate(status(source_state="DEAD", fill=90), 0.0)
    assert len(ev.evaluate(status(source_state="DEAD", fill=90), 1.0)) == 1
    state = json.loads(json.dumps(ev.to_dict()))  # as the state store keeps it
    again = AlertEvaluator(rules, SINKS, state)
    assert again.evaluate(status(source_state="DEAD", fill=90), 2.0) == []  # still firing, not re-sent
    assert [a["component"] for a in again.report()["firing"]] == ["SOURCE.in"]
    assert again.pending["full|CHANNEL.mem"] == 0.0  # pending keeps its start
    assert [a["component"] for a in again.evaluate(status(source_state="DEAD", fill=90), 10.0)] == ["CHANNEL.mem"]
    assert [a["state"] for a in again.evaluate(status(), 11.0)] == ["resolved", "resolved"]
    # a rule removed by a redeploy takes its alerts with it
    assert AlertEvaluator([rules[1]], SINKS, state).firing == {}


def test_recent_alerts_are_bounded():
    ev = AlertEvaluator([rule(for_s=0)], SINKS)
    for i in range(300):
        ev.evaluate(status(source_state="DEAD" if i % 2 == 0 else "ALIVE"), float(i))
    assert len(ev.report()["recent"]) == 100


# -- config ----------------------------------------------------------------------------------------
BASE = {"name": "al", "sources": {"in": {"type": "seq", "channels": ["mem"]}},
        "channels": {"mem": {"type": "memory"}}, "sinks": {"out": {"type": "null", "channel": "mem"}}}


def test_alerts_section_is_validated_with_every_error_named():
    ok = validate({**BASE, "alerts": {"rules": [{"name": "down", "type": "component_down", "for_s": 3},
                                                {"name": "lag", "type": "sink_lag_above", "threshold": 10}],
                                      "webhook": {"url": "http://127.0.0.1:1/x", "max_attempts": 2}}})
    assert [r.name for r in ok.alerts.rules] == ["down", "lag"]
    assert ok.alerts.webhook.max_attempts == 2
    with pytest.raises(ConfigError) as info:
        validate({**BASE, "alerts": {"rule": [], "rules": [
            {"name": "a-b", "type": "nope", "for_s": -1, "colour": 1},
            {"name": "x", "type": "channel_fill_above"},
            {"name": "x", "type": "component_down", "threshold": "high"}],
            "webhook": {"url": "ftp://h", "timeout_s": 0, "max_attempts": 0}}})
    text = str(info.value)
    for expected in ("alerts.rule:", "alerts.rules[0].name:", "alerts.rules[0].type: unknown rule type 'nope'",
                     "alerts.rules[0].for_s:", "alerts.rules[0].colour: unknown key",
                     "alerts.rules[1].threshold: required for channel_fill_above",
                     "alerts.rules[2].name: 'x' is used by another rule",
                     "alerts.rules[2].threshold: expected a number",
                     "alerts.webhook.url:", "alerts.webhook.timeout_s:", "alerts.webhook.max_attempts:"):
        assert expected in text, (expected, text)
    errors = []
    assert parse_alerts([1], errors) is None and errors[0].startswith("alerts: expected a mapping")


# -- the webhook sender ----------------------------------------------------------------------------
class _Hook:
    """An HTTP server on 127.0.0.1 that records the JSON bodies POSTed to it."""

    def __init__(self):
        self.bodies = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass  # keep the test's output free of the server's access log

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = _Hook()
    yield h
    h.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_webhook_delivers_in_order(hook):
    sender = WebhookSender(WebhookConfig(hook.url, timeout_s=2, max_attempts=3))
    for i in range(5):
        sender.send({"rule": "r", "n": i})
    wait_until(lambda: len(hook.bodies) == 5, timeout_s=10, what="5 POSTs")
    assert [b["n"] for b in hook.bodies] == list(range(5))
    sender.close()


def test_a_dead_webhook_never_blocks_and_drops_the_oldest_beyond_the_bound():
    url = f"http://127.0.0.1:{_closed_port()}/x"
    sender = WebhookSender(WebhookConfig(url, timeout_s=0.5, max_attempts=3, queue_size=4),
                           backoff=Backoff(initial_s=0.05, max_s=0.2))
    started = time.monotonic()
    for i in range(50):
        sender.send({"rule": "r", "n": i})
    assert time.monotonic() - started < 0.5  # send() only queues
    assert sender.dropped >= 45
    wait_until(lambda: sender.dropped == 50, timeout_s=20, what="every alert given up")
    assert sender.sent == 0
    sender.close()


# -- on Ray ----------------------------------------------------------------------------------------
def test_a_dead_sink_fires_component_down_to_the_webhook(deployed, hook):
    import ray

    from rayflume import testing

    for_s = 2.0
    testing.feed("alerts-in")
    testing.collector("alerts-out").clear()
    handle = deployed({
        "name": "alerting",
        "sources": {"in": {"type": "testing_feed", "feed": "alerts-in", "channels": ["mem"]}},
        "channels": {"mem": {"type": "memory"}},
        "sinks": {"out": {"type": "testing_sink", "channel": "mem", "collector": "alerts-out", "max_restarts": 0}},
        "metrics": {"port": None},
        "alerts": {"rules": [{"name": "down", "type": "component_down", "for_s": for_s, "component": "out"}],
                   "webhook": {"url": hook.url, "timeout_s": 2, "max_attempts": 5}},
    })
    wait_until(lambda: all(c["state"] == "ALIVE" for c in handle.status()["components"]), timeout_s=60,
               interval_s=0.2, what="every component alive")
    # A start-up slower than for_s (a busy machine) is down for the rule too: it must have resolved.
    wait_until(lambda: handle.alerts()["firing"] == [], timeout_s=30, interval_s=0.2, what="no alert firing")
    told = lambda state: sum(b["state"] == state for b in hook.bodies)  # noqa: E731
    wait_until(lambda: told("firing") == told("resolved"), timeout_s=30, interval_s=0.1,
               what="the webhook told of every resolution")
    seen = len(hook.bodies)
    sink = ray.get_actor("alerting/sinks/out", namespace="rayflume")
    os.kill(ray.get(sink.pid.remote()), signal.SIGKILL)
    killed = time.monotonic()
    firing = lambda: [b for b in hook.bodies[seen:] if b["state"] == "firing"]  # noqa: E731
    wait_until(firing, timeout_s=for_s + 2, interval_s=0.05, what="component_down at the webhook")
    took_s = time.monotonic() - killed
    alert = firing()[0]
    assert (alert["rule"], alert["component"], alert["topology"]) == ("down", "SINK.out", "alerting"), alert
    assert took_s <= for_s + 2
    report = handle.alerts()
    assert any(a["rule"] == "down" for a in report["recent"])
    assert "CONTROLLER.alerts" in handle.metrics()
    # the replaced sink runs again: resolved for_s after the death, and the webhook hears it
    wait_until(lambda: any(b["state"] == "resolved" for b in hook.bodies[seen:]), timeout_s=60, interval_s=0.2,
               what="the alert resolved")
    assert handle.metrics()["CONTROLLER.alerts"]["AlertFiring_down"] == "0"


def test_a_dead_webhook_does_not_slow_the_pipeline(deployed):
    from rayflume import testing

    feed = testing.feed("alerts-dead-in")
    out = testing.collector("alerts-dead-out")
    out.clear()
    handle = deployed({
        "name": "alerting-dead-hook",
        "sources": {"in": {"type": "testing_feed", "feed": "alerts-dead-in", "channels": ["mem"]}},
        "channels": {"mem": {"type": "memory"}},
        "sinks": {"out": {"type": "testing_sink", "channel": "mem", "collector": "alerts-dead-out"}},
        "metrics": {"port": None},
        # fires at once for every component and channel: the webhook is tried all along
        "alerts": {"rules": [{"name": "always", "type": "channel_fill_above", "threshold": -1, "for_s": 0},
                             {"name": "lag", "type": "sink_lag_above", "threshold": -1, "for_s": 0}],
                   "webhook": {"url": f"http://127.0.0.1:{_closed_port()}/x", "timeout_s": 5, "max_attempts": 100}},
    })
    wait_until(lambda: len(handle.alerts()["firing"]) == 2, timeout_s=30, interval_s=0.2, what="alerts firing")
    started = time.monotonic()
    total = 20_000
    for start in range(0, total, 1000):
        feed.push([str(i) for i in range(start, start + 1000)])
    out.wait_for(total, timeout_s=60)
    took_s = time.monotonic() - started
    assert sorted(int(b) for b in out.bodies()) == list(range(total))
    assert took_s < 60
    assert [e for e in handle.status()["events"] if "alert always FIRING" in e["message"]]


@pytest.mark.slow
def test_a_firing_alert_stays_firing_across_a_controller_kill_and_is_not_sent_again(deployed, hook):
    import ray

    from rayflume import testing
    from tests.cluster_helpers import controller_pid

    testing.feed("alerts-restart-in")
    testing.collector("alerts-restart-out").clear()
    handle = deployed({
        "name": "alerting-restart",
        "sources": {"in": {"type": "testing_feed", "feed": "alerts-restart-in", "channels": ["mem"]}},
        "channels": {"mem": {"type": "memory"}},
        "sinks": {"out": {"type": "testing_sink", "channel": "mem", "collector": "alerts-restart-out",
                          "max_restarts": 0}},
        "metrics": {"port": None},
        "alerts": {"rules": [{"name": "always", "type": "channel_fill_above", "threshold": -1, "for_s": 0},
                             {"name": "down", "type": "component_down", "for_s": 1, "component": "out"}],
                   "webhook": {"url": hook.url}},
    })
    wait_until(lambda: [b["rule"] for b in hook.bodies] == ["always"], timeout_s=30, interval_s=0.1,
               what="the first alert at the webhook")
    wait_until(lambda: all(c["state"] == "ALIVE" for c in handle.status()["components"]), timeout_s=60,
               interval_s=0.2, what="every component alive")
    pid = controller_pid(handle)
    os.kill(pid, signal.SIGKILL)
    controller_pid(handle, not_pid=pid)
    assert [a["rule"] for a in handle.alerts()["firing"]] == ["always"]
    # A new alert after the restart proves the restarted controller evaluates; the old one was not re-sent.
    sink = ray.get_actor("alerting-restart/sinks/out", namespace="rayflume")
    os.kill(ray.get(sink.pid.remote()), signal.SIGKILL)
    wait_until(lambda: any(b["rule"] == "down" for b in hook.bodies), timeout_s=30, interval_s=0.1,
               what="component_down after the controller restart")
    assert [b["rule"] for b in hook.bodies if b["state"] == "firing"].count("always") == 1
    assert [a["rule"] for a in handle.alerts()["firing"]] == ["always", "down"]


def test_a_death_seen_while_the_replacement_starts_fires_at_once():
    ev = AlertEvaluator([rule(for_s=5)], SINKS)
    ev.evaluate(status(restarts=0), 0.0)
    fired = ev.evaluate(status(source_state="PENDING_CREATION", restarts=1, died_at=0.9), 1.0)
    assert [(a["component"], a["state"]) for a in fired] == [("SOURCE.in", "firing")]


def test_cli_lists_firing_and_recent_alerts():
    from rayflume.cli import format_alerts

    ev = AlertEvaluator([rule(for_s=0)], SINKS)
    ev.evaluate(status(source_state="DEAD"), 1_700_000_000.0)
    text = format_alerts({"name": "al", "rules": [{"name": "r"}], **ev.report()})
    assert "1 alert rule(s), 1 firing" in text
    assert "FIRING   r" in text and "SOURCE.in" in text and "recent:" in text


def test_the_alert_gauge_in_prometheus_text():
    from rayflume._private.metrics import flume_shape, prometheus_text

    ev = AlertEvaluator([rule("down", for_s=0), rule("full", "channel_fill_above", threshold=99)], SINKS)
    ev.evaluate(status(source_state="DEAD"), 0.0)
    text = prometheus_text(flume_shape({("CONTROLLER", "alerts"): ev.gauges()}))
    assert 'rayflume_alert_firing_down{component="CONTROLLER.alerts",kind="CONTROLLER"} 1' in text
    assert 'rayflume_alert_firing_full{component="CONTROLLER.alerts",kind="CONTROLLER"} 0' in text


def test_a_rule_naming_no_component_of_its_kind_is_an_error():
    assert validate({**BASE, "alerts": {"rules": [{"name": "a", "type": "sink_lag_above", "threshold": 1,
                                                   "component": "out"}]}}).alerts.rules[0].component == "out"
    with pytest.raises(ConfigError) as info:
        validate({**BASE, "alerts": {"rules": [{"name": "a", "type": "channel_fill_above", "threshold": 1,
                                                "component": "out"}]}})
    assert "alerts.rules[0].component: no channel is named 'out'; known: mem" in str(info.value)


# -- volume_change ---------------------------------------------------------------------------------------
def test_volume_change_fires_once_for_the_one_broken_hour_of_a_synthetic_week():
    from rayflume._private.volume import HOUR_S, HourlyVolume

    start = 1_796_256_000  # 00:00 UTC
    clock = {"now": float(start)}
    volume = HourlyVolume("category", clock=lambda: clock["now"])
    evaluator = AlertEvaluator([AlertRule("volume_web", "volume_change", threshold=0.5, component="web"),
                                AlertRule("volume_checkout", "volume_change", threshold=0.5, days=7,
                                          value="checkout")])
    broken_hour = 7 * 24 + 14  # day 8, 14:00: logging of 'web' broke, a tenth of its usual volume
    firing = []
    for hour in range(8 * 24 + 3):
        clock["now"] = start + hour * HOUR_S
        usual = 1000 + 400 * (9 <= hour % 24 <= 18)  # busier by day, every day the same
        volume.add("", "main", "web", None, usual // 10 if hour == broken_hour else usual)
        volume.add("", "main", "web", "checkout", 50)  # steady: never fires
        # evaluated several times within each hour, as the controller does every second
        for minute in (1, 20, 59):
            for t in evaluator.evaluate({"components": []}, clock["now"] + minute * 60, volume):
                firing.append((hour, t["rule"], t["state"], t["message"]))
    fired = [f for f in firing if f[2] == "firing"]
    assert [(h, r) for h, r, _, _ in fired] == [(broken_hour + 1, "volume_web")], firing
    assert "-90%" in fired[0][3] and "14:00 UTC" in fired[0][3], fired[0][3]
    assert [(h, r, s) for h, r, s, _ in firing if s == "resolved"] == [(broken_hour + 2, "volume_web", "resolved")]


def test_volume_change_needs_a_threshold_and_days_within_what_is_kept():
    errors: list[str] = []
    parse_alerts({"rules": [{"name": "a", "type": "volume_change"},
                            {"name": "b", "type": "volume_change", "threshold": 0.5, "days": 9},
                            {"name": "c", "type": "volume_change", "threshold": -1},
                            {"name": "d", "type": "channel_fill_above", "threshold": 90, "days": 7}]}, errors)
    assert any(e.startswith("alerts.rules[0].threshold: required for volume_change") for e in errors), errors
    assert any(e.startswith("alerts.rules[1].days: expected a whole number of days from 1 to 8") for e in errors)
    assert any(e.startswith("alerts.rules[2].threshold: the change that fires") for e in errors)
    assert any(e.startswith("alerts.rules[3]: 'days' and 'value' belong to volume_change rules only")
               for e in errors)
