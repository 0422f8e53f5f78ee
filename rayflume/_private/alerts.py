"""Alert rules on a topology's status, evaluated by its controller: plain classes, no Ray.

Rules (the topology's ``alerts.rules``), each ``{name, type, threshold, for_s, component}``:

* ``component_down``: a component is *down* while its state is not ALIVE, FINISHED or PAUSED
  (DEAD, RESTARTING, PENDING_CREATION, LOST, UNKNOWN...) or its counters say ``Unhealthy``. It
  fires once a component has been down for ``for_s``. A component the controller saw *die* (Ray
  restarted it, or the controller replaced it after its restarts ran out: the status entry's
  ``died_at``, epoch seconds) fires at once, even if it is back before an evaluation looks, since
  the recovery would otherwise hide the death; it stays down for ``for_s`` after the death. The
  death time comes from the controller rather than from a restart count compared between two
  evaluations, so a death before the first evaluation is not missed. ``threshold`` is unused.
* ``channel_fill_above``: a channel's ``ChannelFillPercentage`` is above ``threshold`` (percent).
* ``sink_lag_above``: a sink's backlog, the ``ChannelSize`` (events waiting) of the channel it
  drains, is above ``threshold`` events: events accepted from the sources that the sink has not
  taken yet. One clear number, rather than a comparison of rates that needs two readings.
* ``volume_change``: a source's events in the last complete UTC hour differ from the same hour
  ``days`` (default 7) days earlier by more than ``threshold`` (a fraction: 0.5 is 50% either
  way), from the controller's hourly volume (:mod:`rayflume._private.volume`); with ``value``,
  only the events whose volume header (the topology's ``volume.header``) has that value. An hour
  with no events ``days`` earlier has nothing to compare with and never fires. It fires at once
  (the hour is over), stays firing while that hour is the last complete one, and resolves with
  the next hour that compares normally: each broken hour is reported once.

``component`` (optional) limits a rule to the components whose name (or sink group name, or full
metric name such as ``SINK.agent.r0.hdfs``) equals it.

:class:`AlertEvaluator` turns a status snapshot (``TopologyController.status()``) taken at a time
into transitions: a condition that starts holding is *pending*; pending for ``for_s`` it *fires*;
a firing alert whose condition no longer holds is *resolved*. Each (rule, component) fires at most
once until it resolves. Its state (pending since, firing set, last restart counts, a bounded list
of recent alerts) is a JSON-able dict (:meth:`AlertEvaluator.to_dict`); an evaluator restored from
it keeps what was firing firing and does not report it again.

:class:`WebhookSender` POSTs each transition as JSON from a thread of its own, with a bounded
queue (the oldest is dropped when full, and logged) and exponential back-off between attempts: a
dead webhook never blocks the caller.

:class:`AlertsLoop` is the controller's alerts thread: every :data:`ALERT_INTERVAL_S`, at a fixed
rate, it evaluates the rules on a fresh status at wall-clock time (so pending-since times mean the
same after a controller restart). A slow or hung component delays that thread, never a reconcile
tick. Each transition is logged (warning), added to the controller's events and queued for the
webhook. The evaluator's state is handed to the controller to store with its desired state
whenever it changes, and a restarted controller passes it back: alerts firing keep firing without
being notified again.
"""
from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Callable, ContextManager

from rayflume._private.backoff import Backoff
from rayflume._private.observe import component_entries, numeric_counters, parse_counter

logger = logging.getLogger("rayflume.alerts")
# The alerts thread runs in the controller: its lines are the controller's, as the reconcile loop's.
controller_logger = logging.getLogger("rayflume.controller")

RULE_TYPES = ("component_down", "channel_fill_above", "sink_lag_above", "volume_change")
RULE_KEYS = ("name", "type", "threshold", "for_s", "component", "days", "value")
MAX_VOLUME_DAYS = 8  # how far back the hourly volume is kept
WEBHOOK_KEYS = ("url", "timeout_s", "max_attempts", "queue_size")
ALERTS_KEYS = ("rules", "webhook")
RULE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # it is part of a Prometheus metric name
RUNNING_STATES = ("ALIVE", "FINISHED", "PAUSED")
RECENT_ALERTS = 100  # transitions kept for status()/`rayflume alerts`
# How often the controller evaluates the rules, in a thread of their own (one status() each time).
ALERT_INTERVAL_S = 1.0
ALERT_CALL_TIMEOUT_S = 0.5  # how long an evaluation waits for the components' answers, in all


@dataclass(frozen=True)
class AlertRule:
    name: str
    type: str
    threshold: float = 0.0
    for_s: float = 0.0
    component: str | None = None
    days: int = 7  # volume_change: compare with the same hour this many days earlier
    value: str | None = None  # volume_change: only events with this value of the volume header


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    timeout_s: float = 5.0
    max_attempts: int = 5
    queue_size: int = 1000


@dataclass(frozen=True)
class AlertsConfig:
    rules: tuple = ()
    webhook: WebhookConfig | None = None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_alerts(raw, errors: list[str], path: str = "alerts") -> AlertsConfig | None:
    """The ``alerts`` section as an :class:`AlertsConfig`; every problem is appended to ``errors``
    as ``path.key: message`` (None is returned when there is any)."""
    if raw is None:
        return None
    before = len(errors)
    if not isinstance(raw, dict):
        errors.append(f"{path}: expected a mapping with 'rules' (a list) and optionally 'webhook'; "
                      f"got {type(raw).__name__}")
        return None
    for key in raw:
        if key not in ALERTS_KEYS:
            errors.append(f"{path}.{key}: unknown key; alerts has {', '.join(ALERTS_KEYS)}")
    rules = []
    raw_rules = raw.get("rules", [])
    if not isinstance(raw_rules, list):
        errors.append(f"{path}.rules: expected a list of {{name, type, threshold, for_s, component}}")
        raw_rules = []
    seen = set()
    for i, r in enumerate(raw_rules):
        where = f"{path}.rules[{i}]"
        if not isinstance(r, dict):
            errors.append(f"{where}: expected a mapping with name, type, threshold, for_s")
            continue
        for key in r:
            if key not in RULE_KEYS:
                errors.append(f"{where}.{key}: unknown key; a rule has {', '.join(RULE_KEYS)}")
        name = r.get("name")
        if not isinstance(name, str) or not RULE_NAME_RE.match(name):
            errors.append(f"{where}.name: "
                          f"{'required key is missing' if name is None else repr(name) + ' is not valid'};"
                          f" use letters, digits and '_', starting with a letter")
        elif name in seen:
            errors.append(f"{where}.name: '{name}' is used by another rule; names must be unique")
        seen.add(name)
        rtype = r.get("type")
        if rtype not in RULE_TYPES:
            errors.append(f"{where}.type: "
                          f"{'required key is missing' if rtype is None else f'unknown rule type {rtype!r}'};"
                          f" known types: {', '.join(RULE_TYPES)}")
        threshold = r.get("threshold", 0.0)
        if rtype in ("channel_fill_above", "sink_lag_above", "volume_change") and "threshold" not in r:
            errors.append(f"{where}.threshold: required for {rtype}")
        elif not _number(threshold):
            errors.append(f"{where}.threshold: expected a number; got {threshold!r}")
        elif rtype == "volume_change" and threshold <= 0:
            errors.append(f"{where}.threshold: the change that fires, as a fraction above 0 (0.5: 50% either "
                          f"way); got {threshold!r}")
        days = r.get("days", 7)
        if rtype != "volume_change" and ("days" in r or "value" in r):
            errors.append(f"{where}: 'days' and 'value' belong to volume_change rules only")
        elif not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_VOLUME_DAYS:
            errors.append(f"{where}.days: expected a whole number of days from 1 to {MAX_VOLUME_DAYS} (the hourly "
                          f"volume is kept {MAX_VOLUME_DAYS} days); got {days!r}")
        value = r.get("value")
        if value is not None and not isinstance(value, str):
            errors.append(f"{where}.value: expected a header value (text); got {value!r}")
        for_s = r.get("for_s", 0.0)
        if not _number(for_s) or for_s < 0:
            errors.append(f"{where}.for_s: expected seconds, 0 or more; got {for_s!r}")
        component = r.get("component")
        if component is not None and not isinstance(component, str):
            errors.append(f"{where}.component: expected a component name; got {component!r}")
        if len(errors) == before:
            rules.append(AlertRule(name, rtype, float(threshold), float(for_s), component, days, value))
    webhook = None
    raw_hook = raw.get("webhook")
    if raw_hook is not None:
        where = f"{path}.webhook"
        if not isinstance(raw_hook, dict):
            errors.append(f"{where}: expected a mapping with url, and optionally timeout_s, max_attempts, queue_size")
        else:
            for key in raw_hook:
                if key not in WEBHOOK_KEYS:
                    errors.append(f"{where}.{key}: unknown key; webhook has {', '.join(WEBHOOK_KEYS)}")
            url = raw_hook.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                errors.append(f"{where}.url: expected an http:// or https:// URL; got {url!r}")
            timeout_s = raw_hook.get("timeout_s", 5.0)
            if not _number(timeout_s) or timeout_s <= 0:
                errors.append(f"{where}.timeout_s: expected seconds, more than 0; got {timeout_s!r}")
            for key, default in (("max_attempts", 5), ("queue_size", 1000)):
                value = raw_hook.get(key, default)
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    errors.append(f"{where}.{key}: expected a whole number of at least 1; got {value!r}")
            if len(errors) == before:
                webhook = WebhookConfig(url, float(timeout_s), raw_hook.get("max_attempts", 5),
                                        raw_hook.get("queue_size", 1000))
    return AlertsConfig(tuple(rules), webhook) if len(errors) == before else None


def check_components(config: AlertsConfig | None, tiers: dict, errors: list[str], path: str = "alerts") -> None:
    """Append an error for each rule whose ``component`` names no component of ``tiers`` (a
    topology's tiers) of a kind the rule looks at. A full metric name (``SINK.agent.r0.hdfs``) is
    checked by its last part, the component's name."""
    if config is None:
        return
    kinds = {"component_down": ("sources", "channels", "sinks", "sink_groups"),
             "channel_fill_above": ("channels",), "sink_lag_above": ("sinks", "sink_groups"),
             "volume_change": ("sources",)}
    for i, r in enumerate(config.rules):
        if r.component is None:
            continue
        names = {n for t in tiers.values() for section in kinds[r.type] for n in (getattr(t, section, None) or {})}
        if r.component not in names and r.component.rsplit(".", 1)[-1] not in names:
            what = " or ".join(k.replace("_", " ")[:-1] for k in kinds[r.type])
            errors.append(f"{path}.rules[{i}].component: no {what} is named '{r.component}'; "
                          f"known: {', '.join(sorted(names)) or 'none'}")


def component_key(entry) -> str:
    """The metric name of a status entry: ``KIND.name`` or ``KIND.tier.instance.name``."""
    return f"{entry.kind}.{entry.tier}.{entry.instance}.{entry.name}" if entry.tier else f"{entry.kind}.{entry.name}"


def _matches(rule: AlertRule, entry, key: str) -> bool:
    return rule.component is None or rule.component in (entry.name, entry.group, key)


class AlertEvaluator:
    """Evaluates ``rules`` on status snapshots; see the module docstring for the rules.

    ``sink_channels`` maps ``(tier, sink)`` to the channel that sink drains (``sink_lag_above``
    reads that channel's size; tier "" in a topology without tiers). Not thread-safe: one caller.
    """

    def __init__(self, rules, sink_channels: dict | None = None, state: dict | None = None):
        self.rules = {r.name: r for r in rules}
        self.sink_channels = dict(sink_channels or {})
        self.pending: dict[str, float] = {}  # "rule|component" -> since
        self.firing: dict[str, dict] = {}  # "rule|component" -> the firing alert
        self.died_at: dict[str, float] = {}  # component -> the last death seen (its died_at)
        self.recent: deque = deque(maxlen=RECENT_ALERTS)
        if state:
            self._load(state)

    # -- state -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able state; :class:`AlertEvaluator` (``state=``) restores it."""
        return {"pending": dict(self.pending), "firing": dict(self.firing), "died_at": dict(self.died_at),
                "recent": list(self.recent)}

    def _load(self, state: dict) -> None:
        # Alerts of rules a redeploy removed are dropped: nothing evaluates them any more.
        known = lambda key: key.split("|", 1)[0] in self.rules  # noqa: E731
        self.pending = {k: float(v) for k, v in (state.get("pending") or {}).items() if known(k)}
        self.firing = {k: dict(v) for k, v in (state.get("firing") or {}).items() if known(k)}
        self.died_at = {k: float(v) for k, v in (state.get("died_at") or {}).items()}
        self.recent.extend(state.get("recent") or [])

    # -- evaluation --------------------------------------------------------------------------------
    def _observe(self, status: dict, now: float) -> dict[str, tuple[float, str, bool]]:
        """``{"rule|component": (value, why, at_once)}`` for every condition that holds now."""
        entries = component_entries(status)
        keys = {id(e): component_key(e) for e in entries}
        died = set()
        for e in entries:
            key = keys[id(e)]
            if e.died_at is not None and e.died_at > self.died_at.get(key, -math.inf):
                self.died_at[key] = e.died_at
                died.add(key)
        sizes = {}  # (tier, instance, channel) -> ChannelSize
        for e in entries:
            if e.kind == "CHANNEL":
                size = numeric_counters(e.counters).get("ChannelSize")
                if size is not None:
                    sizes[(e.tier, e.instance, e.name)] = size
        held = {}
        for rule in self.rules.values():
            for e in entries:
                key = keys[id(e)]
                if not _matches(rule, e, key):
                    continue
                hit = None
                if rule.type == "component_down":
                    unhealthy = parse_counter(e.counters.get("Unhealthy")) == 1
                    recently_died = now - self.died_at.get(key, -math.inf) < rule.for_s
                    if e.state not in RUNNING_STATES or unhealthy:
                        # a death seen while its replacement is still starting fires at once too
                        hit = (1.0, f"{key} is {e.state}{' (unhealthy)' if unhealthy else ''}", key in died)
                    elif key in died or recently_died:
                        hit = (1.0, f"{key} died (restarts: {e.restarts})", key in died)
                elif rule.type == "channel_fill_above" and e.kind == "CHANNEL":
                    fill = numeric_counters(e.counters).get("ChannelFillPercentage")
                    if fill is not None and fill > rule.threshold:
                        hit = (fill, f"{key} is {fill:g}% full (above {rule.threshold:g}%)", False)
                elif rule.type == "sink_lag_above" and e.kind == "SINK":
                    channel = self.sink_channels.get((e.tier, e.name))
                    backlog = sizes.get((e.tier, e.instance, channel))
                    if backlog is not None and backlog > rule.threshold:
                        hit = (backlog, f"{key} is {backlog:g} events behind in channel '{channel}' "
                                        f"(above {rule.threshold:g})", False)
                if hit is not None:
                    held[f"{rule.name}|{key}"] = hit
        return held

    def _observe_volume(self, volume, now: float) -> dict[str, tuple[float, str, bool]]:
        """The volume_change conditions that hold for the last complete UTC hour before ``now``
        (epoch seconds), read from ``volume`` (a :class:`~rayflume._private.volume.HourlyVolume`)."""
        held = {}
        hour_s = (math.floor(now / 3600) - 1) * 3600
        for rule in self.rules.values():
            if rule.type != "volume_change":
                continue
            sources = [rule.component] if rule.component else volume.sources()
            for source in sources:
                current, before = volume.compare(hour_s, rule.days, source=source, value=rule.value)
                if before <= 0:
                    continue
                change = (current - before) / before
                if abs(change) > rule.threshold:
                    what = f"source '{source}'" + (f" ({rule.value})" if rule.value is not None else "")
                    held[f"{rule.name}|{source}"] = (round(change, 4), (
                        f"{what} accepted {current:,} events in the hour from "
                        f"{time.strftime('%Y-%m-%d %H:00 UTC', time.gmtime(hour_s))}, {change:+.0%} against "
                        f"{before:,} the same hour {rule.days} day(s) earlier (threshold {rule.threshold:.0%})"), True)
        return held

    def evaluate(self, status: dict, now: float, volume=None) -> list[dict]:
        """The transitions at time ``now`` (epoch seconds when there are volume_change rules, else
        any clock the caller keeps using): dicts with ``rule, type, component, state`` ("firing"
        or "resolved"), ``value, threshold, for_s, since, time, message``, each also appended to
        :attr:`recent`. ``volume`` (the hourly volume) is read by volume_change rules; without it
        they hold nothing."""
        held = self._observe(status, now)
        if volume is not None:
            held.update(self._observe_volume(volume, now))
        out = []
        for key in list(self.pending):
            if key not in held:
                del self.pending[key]
        for key, (value, why, at_once) in held.items():
            if key in self.firing:
                continue
            since = self.pending.setdefault(key, now)
            rule = self.rules[key.split("|", 1)[0]]
            if at_once or now - since >= rule.for_s:
                del self.pending[key]
                alert = {"rule": rule.name, "type": rule.type, "component": key.split("|", 1)[1],
                         "state": "firing", "value": value, "threshold": rule.threshold, "for_s": rule.for_s,
                         "since": since, "time": now, "message": why}
                self.firing[key] = alert
                out.append(alert)
        for key in list(self.firing):
            if key not in held:
                alert = self.firing.pop(key)
                alert = {**alert, "state": "resolved", "time": now,
                         "message": f"resolved: {alert['component']} back to normal"}
                out.append(alert)
        self.recent.extend(out)
        return out

    def report(self) -> dict:
        """``{"firing": [...], "recent": [...]}`` (oldest first) for status() and the CLI."""
        return {"firing": sorted(self.firing.values(), key=lambda a: (a["since"], a["rule"], a["component"])),
                "recent": list(self.recent)}

    def gauges(self) -> dict[str, int]:
        """``{"AlertFiring_<rule>": number of components it fires for}`` for every rule (0 when none),
        for the metrics endpoint."""
        counts = {f"AlertFiring_{name}": 0 for name in self.rules}
        for alert in self.firing.values():
            counts[f"AlertFiring_{alert['rule']}"] = counts.get(f"AlertFiring_{alert['rule']}", 0) + 1
        return counts


class WebhookSender:
    """POSTs alerts as JSON to ``config.url`` from a daemon thread.

    Guarantees: :meth:`send` never blocks (it appends to a queue of at most ``queue_size``; when
    full, the oldest alert is dropped and logged). Each alert is tried up to ``max_attempts`` times,
    ``timeout_s`` each, with exponential back-off between tries; an alert that fails every try is
    dropped and logged. Delivery is in order, at most once per successful POST (a POST whose answer
    is lost is tried again: the receiver may see an alert twice).
    """

    def __init__(self, config: WebhookConfig, backoff: Backoff | None = None, label: str = ""):
        self.config = config
        self.label = label
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._backoff = backoff or Backoff(initial_s=0.2, max_s=10.0)
        self.sent = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="alert-webhook")
        self._thread.start()

    def send(self, alert: dict) -> None:
        with self._cond:
            if len(self._queue) >= self.config.queue_size:
                old = self._queue.popleft()
                self.dropped += 1
                logger.warning("%salert webhook queue full (%d): dropped %s %s for %s", self.label,
                               self.config.queue_size, old.get("rule"), old.get("state"), old.get("component"))
            self._queue.append(alert)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _post(self, alert: dict) -> None:
        body = json.dumps(alert, default=str).encode()
        request = urllib.request.Request(self.config.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
            response.read()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                alert = self._queue[0]
            for attempt in range(1, self.config.max_attempts + 1):
                try:
                    self._post(alert)
                    self.sent += 1
                    self._backoff.reset()
                    break
                except Exception as exc:  # any failure: unreachable, timeout, HTTP error
                    if attempt == self.config.max_attempts:
                        self.dropped += 1
                        logger.warning("%salert webhook %s failed %d time(s) (%s): dropped %s %s for %s", self.label,
                                       self.config.url, attempt, exc, alert.get("rule"), alert.get("state"),
                                       alert.get("component"))
                        break
                    with self._cond:
                        if self._cond.wait_for(lambda: self._closed, timeout=self._backoff.next_delay()):
                            return
            with self._cond:
                # send() may have dropped it as the oldest meanwhile
                if self._queue and self._queue[0] is alert:
                    self._queue.popleft()


class AlertsLoop:
    """The alerts thread of the controller of topology ``name`` (see the module docstring), written
    against callables as the runners are: ``topology()`` is the deployed topology (a redeploy that
    changes its ``alerts`` rebuilds the evaluator, keeping the state of the rules it still has),
    ``status(call_timeout_s)`` a fresh status, evaluated only while ``running()``, ``volume()`` a
    context holding the hourly volume still, ``store_state(state)`` stores the evaluator's state;
    ``state`` is the stored one, ``events`` the controller's event list. The thread ends when
    ``stopping`` is set. :meth:`report` and :meth:`gauges` may be called from any thread."""

    def __init__(self, name: str, topology: Callable, status: Callable[[float], dict], running: Callable[[], bool],
                 volume: Callable[[], ContextManager], events: deque, store_state: Callable[[dict], None],
                 stopping: threading.Event, state: dict | None = None):
        self.name = name
        self._topology, self._status, self._running, self._volume = topology, status, running, volume
        self._events, self._store_state, self._stopping = events, store_state, stopping
        self._lock = threading.Lock()
        self.evaluator: AlertEvaluator | None = None
        self._config: AlertsConfig | None = None
        self._sender: WebhookSender | None = None
        # Until an evaluator exists (and after a redeploy drops the rules) the last stored state is
        # kept, so that rules coming back do not forget what was firing.
        self._state = state
        self._saved: dict | None = None  # what this thread stored last
        self._thread = threading.Thread(target=self._loop, daemon=True, name="alerts")

    def start(self) -> None:
        self.configure(self._topology())  # restored alerts are reported from the start
        self._thread.start()

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()

    def _loop(self) -> None:
        """Evaluates the rules every ALERT_INTERVAL_S, in this thread so that neither slow components
        nor webhook delivery delay a reconcile tick."""
        next_at = time.monotonic() + ALERT_INTERVAL_S
        # At a fixed rate: a slow evaluation does not stretch the time to notice a death.
        while not self._stopping.wait(max(0.0, next_at - time.monotonic())):
            next_at = max(next_at + ALERT_INTERVAL_S, time.monotonic())
            try:
                self._tick()
            except Exception:
                controller_logger.exception("topology '%s': alert evaluation failed", self.name)

    def configure(self, topology) -> None:
        """(Re)build the evaluator for ``topology.alerts`` (a deploy or redeploy), keeping the state
        of the rules it still has (see AlertEvaluator: firing ones stay firing, not notified again)."""
        config = topology.alerts
        sink_channels = {(tier_name, sink): getattr(cfg, "channel", None)
                         for tier_name, tier in topology.tiers.items() for sink, cfg in tier.sinks.items()}
        with self._lock:
            state = self.evaluator.to_dict() if self.evaluator is not None else self._state
            self.evaluator = AlertEvaluator(config.rules, sink_channels, state) if config else None
            self._config = config
            old, self._sender = self._sender, None
            if config is not None and config.webhook is not None:
                self._sender = WebhookSender(config.webhook, label=f"topology '{self.name}': ")
        if old is not None:
            old.close()

    def _tick(self) -> None:
        topology = self._topology()
        if topology.alerts is not self._config:
            self.configure(topology)
        if self.evaluator is None or not self._running():
            return
        # A replacement actor still starting would hold a full status up for seconds; its state
        # (from the GCS) is what component_down needs, so the answers are waited for briefly.
        status = self._status(ALERT_CALL_TIMEOUT_S)
        with self._lock, self._volume() as volume:  # the controller's sampling thread feeds the volume
            transitions = self.evaluator.evaluate(status, time.time(), volume)
            state = self.evaluator.to_dict()
        for alert in transitions:
            message = f"alert {alert['rule']} {alert['state'].upper()}: {alert['message']}"
            controller_logger.warning("topology '%s': %s", self.name, message)
            self._events.append({"time": alert["time"], "component": "alerts", "message": message})
            if self._sender is not None:
                self._sender.send({**alert, "topology": self.name})
        if state != self._saved:
            # Stored with the desired state, so a restarted controller keeps firing alerts firing.
            self._store_state(state)
            self._state = self._saved = state

    def report(self) -> dict:
        """``{"rules", "firing": [...], "recent": [...]}``: the rules, the firing alerts and the last
        transitions (oldest first); empty lists when the topology has no alert rules."""
        with self._lock:
            report = self.evaluator.report() if self.evaluator is not None else {"firing": [], "recent": []}
            rules = [r.__dict__ for r in self._config.rules] if self._config else []
        return {"rules": rules, **report}

    def gauges(self) -> dict[str, int] | None:
        """:meth:`AlertEvaluator.gauges` (None without alert rules)."""
        with self._lock:
            return self.evaluator.gauges() if self.evaluator is not None else None
