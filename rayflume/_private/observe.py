"""Reading a topology's ``status()`` for people: what ``rayflume top`` and the notebook view share.

* :func:`component_entries`: one :class:`ComponentEntry` per source, channel and sink of a status
  (a sink group gives one per sink);
* :func:`parse_counter` and :func:`numeric_counters`: Flume's counters (strings in its JSON) as
  Python values and as numbers;
* :func:`rate_per_second`: the growth of a running total between two readings, with the rule for a
  total that went down (its component restarted and counts from zero again) named by
  :class:`CounterReset`;
* :func:`is_running_total`: which counters only grow (the rule of :mod:`rayflume._private.metrics`);
* :func:`plain_error` and :func:`error_summary`: a component's error without terminal colours, and
  its one line worth showing;
* :func:`format_rate`: a rate as the views print it.
"""
from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field

from rayflume._private.metrics import is_running_total

__all__ = ["ComponentEntry", "CounterReset", "component_entries", "error_summary", "format_rate",
           "is_running_total", "numeric_counters", "parse_counter", "plain_error", "rate_per_second"]


@dataclass(frozen=True)
class ComponentEntry:
    """One source, channel or sink as ``status()`` reports it, values as the status gives them.

    ``group`` is the name the status lists the component under: for a sink, the sink group it is
    in (a lone sink is a group of itself, of the same name); ``name`` is the component's own name.
    ``tier`` and ``instance`` are "" in a topology without tiers. ``counters`` are Flume's, not
    parsed (see :func:`parse_counter`), never None.
    """

    tier: str
    instance: str
    kind: str
    group: str
    name: str
    node_id: str | None
    state: object
    restarts: int
    error: object
    counters: dict = field(default_factory=dict)
    died_at: float | None = None  # when the controller last saw it die (epoch seconds); None: never

    @property
    def label(self) -> str:
        """The name to show: ``group/sink`` for a sink in a group of another name, else ``name``."""
        return self.name if self.name == self.group else f"{self.group}/{self.name}"


def component_entries(status: dict) -> list[ComponentEntry]:
    """The components of ``status`` in the order it lists them; a sink group's sinks each give an
    entry (in the group's order) sharing the group's state, node, restarts, death time and error, except that a
    running sink an operator paused (its ``Paused`` counter is 1) is ``PAUSED``."""
    entries = []
    for component in status.get("components", []):
        kind, group = component["kind"], component["name"]
        if kind == "SINK":
            members = list((component.get("sinks") or {}).items())
        else:
            members = [(group, component.get("counters"))]
        for name, counters in members:
            state = component.get("state")
            if kind == "SINK" and state == "ALIVE" and parse_counter((counters or {}).get("Paused")) == 1:
                state = "PAUSED"  # running, but taking nothing until resumed (rayflume pause)
            entries.append(ComponentEntry(
                tier=component.get("tier") or "", instance=component.get("instance") or "", kind=kind,
                group=group, name=name, node_id=component.get("node_id"), state=state,
                restarts=int(component.get("restarts") or 0), error=component.get("error"),
                counters=dict(counters or {}), died_at=component.get("died_at")))
    return entries


_INTEGER = re.compile(r"^-?\d+$")


def parse_counter(value):
    """A counter as Flume's JSON spells it (a string) as a Python value: a whole number as int, a
    decimal as float, ``True``/``False`` as bool, "" as None, anything else as the text itself.
    Values that are already None, bool, int or float are returned unchanged."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = str(value).strip()
    if not text:
        return None
    if _INTEGER.match(text):
        return int(text)
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def numeric_counters(counters: dict | None) -> dict[str, float]:
    """The counters of ``counters`` that are finite numbers (after :func:`parse_counter`), as floats;
    booleans, text, empty values and infinities are left out."""
    out = {}
    for key, value in (counters or {}).items():
        parsed = parse_counter(value)
        if isinstance(parsed, bool) or not isinstance(parsed, (int, float)):
            continue
        try:
            number = float(parsed)
        except OverflowError:  # a whole number beyond any float: not a count anyone keeps
            continue
        if math.isfinite(number):
            out[key] = number
    return out


class CounterReset(enum.Enum):
    """What the growth of a running total is when it went down between two readings (its
    component restarted and counts from zero again)."""

    #: Unknowable: the reading gives no rate this once (``rayflume top``).
    NO_RATE = "no rate"
    #: All of its new value counts as grown since the restart (as Prometheus' ``rate()`` takes a
    #: counter reset; the notebook's frames).
    COUNTS_FROM_ZERO = "counts from zero"


def rate_per_second(before: float | None, now: float, seconds: float, on_reset: CounterReset) -> float | None:
    """How much a running total grew per second from ``before`` to ``now``, ``seconds`` apart.

    None when it cannot be known: no earlier reading (``before`` None), no time between the two, or
    a total that went down under :attr:`CounterReset.NO_RATE`. Never negative.
    """
    if before is None or seconds <= 0:
        return None
    if now >= before:
        return (now - before) / seconds
    if on_reset is CounterReset.COUNTS_FROM_ZERO:
        return max(now, 0) / seconds
    return None


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain_error(text) -> str:
    """A component's error as text without the terminal escapes (colours) Ray puts into remote
    tracebacks, without surrounding blanks; "" for no error."""
    return _ANSI.sub("", str(text or "")).strip()


ERROR_SUMMARY_CHARS = 160


def error_summary(error: str, limit: int = ERROR_SUMMARY_CHARS) -> str:
    """One line of an error: its last non-empty line (the exception's own message, after a
    traceback), stripped, at most ``limit`` characters (cut ones end in ``…``)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[:limit - 1] + "…"


def format_rate(value: float | None) -> str:
    """A rate for display: ``-`` when unknown (None), one decimal below 10 (``2.5``), else whole
    with thousands separators (``12,345``)."""
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"
