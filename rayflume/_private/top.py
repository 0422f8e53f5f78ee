"""``rayflume top``: a live, full-screen view of a deployed topology, like ``vector top``.

The data is the topology's ``status()`` (every component with its state, restarts, error, node
and counters), read once per interval. Rates need two readings: :func:`build_rows` turns two
:class:`Snapshot` s into one :class:`Row` per source, channel and sink, with events in and out per
second, bytes per second where a counter counts bytes, the channel's fill, restarts and errors.
Rows come in flow order: tier by tier from the first hop to the last, instance by instance, and
in each instance its sources, then its channels, then its sinks. A view can be sorted by another
column (:data:`SORT_COLUMNS`).

Three layers, so that most of it is tested without a terminal or a cluster:

* pure data: :func:`build_rows`, :func:`sort_rows`, :func:`rows_as_json`;
* rendering with ``rich``: :func:`render`;
* the terminal: :class:`KeyReader` (keys without Enter, the terminal restored on exit),
  :class:`Sampler` (reads the status in a thread of its own, so that a slow or restarting
  controller never holds up the keys), :func:`run_live` and :func:`print_once`.

Reading the status (component entries, numeric counters, rates, error lines, rate formatting) is
:mod:`rayflume._private.observe`'s, shared with the notebook view. Here a counter that went down
between two readings (a restart) gives no rate for that reading (:attr:`CounterReset.NO_RATE`).
"""
from __future__ import annotations

import collections
import json
import math
import os
import queue
import select
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from rayflume._private.observe import (
    ComponentEntry,
    CounterReset,
    component_entries,
    error_summary,
    format_rate,
    is_running_total,
    plain_error,
    rate_per_second,
)

# ``numeric`` is this module's name for it (rayflume top had it before observe.py did)
from rayflume._private.observe import numeric_counters as numeric

FLOW_ORDER = {"SOURCE": 0, "CHANNEL": 1, "SINK": 2}
# What counts the events entering and leaving each kind of component.
EVENTS_IN = {"SOURCE": "EventReceivedCount", "CHANNEL": "EventPutSuccessCount", "SINK": "EventDrainAttemptCount"}
EVENTS_OUT = {"SOURCE": "EventAcceptedCount", "CHANNEL": "EventTakeSuccessCount", "SINK": "EventDrainSuccessCount"}


def is_byte_total(key: str) -> bool:
    """Whether counter ``key`` is a running total of bytes (``BytesWrittenCount``)."""
    return "Bytes" in key and is_running_total(key)


def is_error_total(key: str) -> bool:
    """Whether counter ``key`` tallies failures (``ChannelWriteFail``, ``EventWriteFail``,
    ``ConnectionFailedCount``, ``ProtocolErrorCount``...)."""
    return is_running_total(key) and ("Fail" in key or "Error" in key)


@dataclass(frozen=True)
class Snapshot:
    """One reading of a topology: its ``status()``, when it was taken (``time.monotonic()``),
    and a printable name of each node (``{node id: name}``)."""

    status: dict
    taken_at: float
    node_names: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One source, channel or sink, as the view shows it. Rates are None when they cannot be
    known yet (one reading only, the counter is missing, or it went down after a restart)."""

    tier: str
    instance: str
    kind: str
    name: str  # a sink in a group of another name is ``group/sink``
    state: str
    restarts: int
    node: str
    error: str  # the whole text (a remote traceback, say); the table shows its last line
    events_in_per_s: float | None
    events_out_per_s: float | None
    bytes_per_s: float | None
    errors: int
    channel_size: float | None
    channel_capacity: float | None
    fill_percent: float | None
    flow_position: int

    @property
    def scope(self) -> str:
        """``tier/instance``, or "" in a single-tier topology."""
        return f"{self.tier}/{self.instance}" if self.tier else ""


def _summed_rate(previous: dict | None, current: dict, keys, seconds: float) -> float | None:
    """Growth per second of the sum of counters ``keys`` between two readings (numeric counters of
    one component); None when unknowable: no earlier reading, a counter missing from either, or a
    sum that went down (a restart: no rate this once, :attr:`CounterReset.NO_RATE`)."""
    keys = [k for k in keys if k in current]
    if previous is None or not keys or any(k not in previous for k in keys):
        return None
    return rate_per_second(sum(previous[k] for k in keys), sum(current[k] for k in keys), seconds,
                           CounterReset.NO_RATE)


def _fill(counters: dict) -> tuple[float | None, float | None, float | None]:
    """(events queued, capacity, percent full) of a channel's counters."""
    size, capacity = counters.get("ChannelSize"), counters.get("ChannelCapacity")
    if capacity == 0:  # a channel without a bound (kafka) has no fill
        return size, None, None
    percent = counters.get("ChannelFillPercentage")
    if percent is None and size is not None and capacity:
        percent = 100.0 * size / capacity
    return size, capacity, percent


def build_rows(previous: Snapshot | None, current: Snapshot, tier_order: list[str] | None = None) -> list[Row]:
    """The rows of ``current`` in flow order, with rates over the time since ``previous`` (None:
    no rates yet).

    Flow order: tiers in ``tier_order`` (from the first hop to the last; tiers it does not name
    follow in the order the status lists them), then instances by id, then sources before
    channels before sinks, each kind in the order of the topology.
    """
    seconds = current.taken_at - previous.taken_at if previous is not None else 0.0
    before = {}
    if previous is not None:
        before = {_row_key(entry): numeric(entry.counters) for entry in component_entries(previous.status)}
    listed = list((current.status.get("tiers") or {}).keys())
    order = list(tier_order or []) + [t for t in listed if t not in (tier_order or [])]
    tier_rank = {t: i for i, t in enumerate(order)}
    staged = []
    for position, entry in enumerate(component_entries(current.status)):
        kind, counters = entry.kind, numeric(entry.counters)
        last = before.get(_row_key(entry))
        size, capacity, percent = _fill(counters) if kind == "CHANNEL" else (None, None, None)
        node_id = entry.node_id or ""
        state = entry.state if entry.state is not None else "?"
        row = Row(tier=entry.tier, instance=entry.instance, kind=kind, name=entry.label, state=str(state),
                  restarts=entry.restarts, node=current.node_names.get(node_id) or node_id[:12],
                  error=plain_error(entry.error),
                  events_in_per_s=_summed_rate(last, counters, [EVENTS_IN[kind]], seconds),
                  events_out_per_s=_summed_rate(last, counters, [EVENTS_OUT[kind]], seconds),
                  bytes_per_s=_summed_rate(last, counters, [k for k in counters if is_byte_total(k)], seconds),
                  errors=int(sum(v for k, v in counters.items() if is_error_total(k))),
                  channel_size=size, channel_capacity=capacity, fill_percent=percent, flow_position=0)
        staged.append(((tier_rank.get(entry.tier, len(order)), entry.instance, FLOW_ORDER[kind], position), row))
    staged.sort(key=lambda item: item[0])
    return [replace(row, flow_position=i) for i, (_, row) in enumerate(staged)]


def _row_key(entry: ComponentEntry) -> tuple[str, str, str, str]:
    """What identifies a row across readings: tier, instance, kind and shown name."""
    return entry.tier, entry.instance, entry.kind, entry.label


# (column name, what it sorts by, largest first). "flow" is the topology's own order.
SORT_COLUMNS: list[tuple[str, Callable[[Row], object], bool]] = [
    ("flow", lambda r: r.flow_position, False),
    ("in/s", lambda r: r.events_in_per_s or 0.0, True),
    ("out/s", lambda r: r.events_out_per_s or 0.0, True),
    ("bytes/s", lambda r: r.bytes_per_s or 0.0, True),
    ("fill", lambda r: r.fill_percent if r.fill_percent is not None else -1.0, True),
    ("restarts", lambda r: r.restarts, True),
    ("errors", lambda r: r.errors, True),
    ("name", lambda r: (r.name, r.scope), False),
]


def sort_rows(rows: list[Row], column: int = 0, reverse: bool = False) -> list[Row]:
    """``rows`` sorted by ``SORT_COLUMNS[column]`` (its natural direction, flipped by
    ``reverse``); ties keep flow order."""
    _, key, largest_first = SORT_COLUMNS[column % len(SORT_COLUMNS)]
    ordered = sorted(rows, key=lambda r: r.flow_position)
    return sorted(ordered, key=key, reverse=largest_first != reverse)


def rows_as_json(rows: list[Row]) -> str:
    """The rows as a JSON list of objects (one per row, the fields of :class:`Row`)."""
    return json.dumps([asdict(r) for r in rows], indent=2)


# -- rendering -----------------------------------------------------------------------------------
FILL_BAR_WIDTH = 10


BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes_rate(value: float | None) -> str:
    """Bytes per second for the table, in binary units (``4.0 KiB``); ``-`` when unknown."""
    if value is None:
        return "-"
    power = 0
    while value >= 1024 and power < len(BYTE_UNITS) - 1:
        value /= 1024
        power += 1
    return f"{value:.0f} B" if power == 0 else f"{value:.1f} {BYTE_UNITS[power]}"


def fill_bar(percent: float | None):
    """A channel's fill as ``████······  42.0%``, green, yellow from 50 %, red from 80 %."""
    from rich.text import Text

    if percent is None:
        return Text("-")
    clamped = min(max(percent, 0.0), 100.0)
    filled = math.floor(clamped / 100 * FILL_BAR_WIDTH + 0.5)  # half a cell or more shows
    style = "red" if clamped >= 80 else "yellow" if clamped >= 50 else "green"
    bar = Text("█" * filled, style=style)
    bar.append("·" * (FILL_BAR_WIDTH - filled), style="dim")
    bar.append(f" {percent:5.1f}%")
    return bar


STATE_STYLES = {"ALIVE": "green", "RUNNING": "green", "FINISHED": "blue", "RESTARTING": "yellow",
                "PENDING_CREATION": "yellow", "PAUSED": "magenta"}


def render(name: str, rows: list[Row], *, sort_column: int = 0, reverse: bool = False,
           status: dict | None = None, problem: str | None = None, interval_s: float = 1.0,
           live: bool = True):
    """The view: a header line (topology, state, totals, sort, keys) over the table of ``rows``
    (in the order given). ``problem`` (why the last reading failed) shows in red under the
    header. ``live`` adds the keys to the header."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    tiered = any(r.tier for r in rows)
    show_errors = any(r.error for r in rows)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
    if tiered:
        table.add_column("TIER/INSTANCE", no_wrap=True)
    table.add_column("KIND", no_wrap=True)
    table.add_column("NAME", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("IN/S", justify="right", no_wrap=True)
    table.add_column("OUT/S", justify="right", no_wrap=True)
    table.add_column("BYTES/S", justify="right", no_wrap=True)
    table.add_column("FILL", no_wrap=True)
    table.add_column("QUEUED", justify="right", no_wrap=True)
    table.add_column("RESTARTS", justify="right", no_wrap=True)
    table.add_column("ERRORS", justify="right", no_wrap=True)
    table.add_column("NODE", no_wrap=True)
    if show_errors:
        table.add_column("LAST ERROR", overflow="fold", ratio=1)
    for r in rows:
        queued = "-" if r.channel_size is None else (
            f"{r.channel_size:,.0f}" + (f"/{r.channel_capacity:,.0f}" if r.channel_capacity else ""))
        cells = [r.scope] if tiered else []
        cells += [r.kind, r.name, Text(r.state, style=STATE_STYLES.get(r.state, "red")),
                  format_rate(r.events_in_per_s), format_rate(r.events_out_per_s), format_bytes_rate(r.bytes_per_s),
                  fill_bar(r.fill_percent), queued,
                  Text(str(r.restarts), style="yellow" if r.restarts else ""),
                  Text(f"{r.errors:,}", style="red" if r.errors else ""), r.node or "-"]
        if show_errors:
            cells.append(Text(error_summary(r.error), style="red"))
        table.add_row(*cells)
    status = status or {}
    total_in = sum(r.events_in_per_s or 0 for r in rows if r.kind == "SOURCE")
    total_out = sum(r.events_out_per_s or 0 for r in rows if r.kind == "SINK")
    sort_name = SORT_COLUMNS[sort_column % len(SORT_COLUMNS)][0]
    header = Text.assemble(("rayflume top ", "bold"), (name, "bold cyan"),
                           f"  {status.get('state', '?')}",
                           f" (version {status['version']})" if status.get("version") else "",
                           f"  in {format_rate(total_in)} ev/s  out {format_rate(total_out)} ev/s",
                           f"  every {interval_s:g} s  sort: {sort_name}{' (reversed)' if reverse else ''}")
    if live:
        header.append("   keys: s sort  r reverse  q quit", style="dim")
    parts = [header]
    if problem:
        parts.append(Text(problem, style="bold red"))
    elif not rows:
        parts.append(Text("reading the topology...", style="dim"))
    parts.append(table)
    return Group(*parts)


# -- reading the topology -------------------------------------------------------------------------
def node_names() -> dict[str, str]:
    """``{node id: its address}`` of the cluster's nodes; where live nodes share an address (several
    Ray nodes on one machine), or a node has none, the start of its id is added."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("NodeID")]
    sharing = collections.Counter(n.get("NodeManagerAddress") or "" for n in nodes if n.get("Alive"))
    names = {}
    for n in nodes:
        address = n.get("NodeManagerAddress") or ""
        names[n["NodeID"]] = address if address and sharing[address] <= 1 else f"{address}#{n['NodeID'][:6]}"
    return names


def tier_flow_order(name: str) -> list[str] | None:
    """Tiers of topology ``name`` from the first hop to the last (as they are drained), or None
    when the controller cannot say (the status' own order is used then)."""
    import ray

    from rayflume._private import planner
    from rayflume._private.actors import NAMESPACE
    from rayflume._private.controller import controller_name
    from rayflume.topology import validate

    try:
        controller = ray.get_actor(controller_name(name), namespace=NAMESPACE)
        return planner.drain_order(validate(ray.get(controller.raw_topology.remote(), timeout=10)))
    except Exception:  # an order is a nicety: the view works without it
        return None


def take_snapshot(handle) -> Snapshot:
    """A reading of ``handle`` (a :class:`rayflume.api.TopologyHandle`) now."""
    status = handle.status()
    taken_at = time.monotonic()
    try:
        names = node_names()
    except Exception:  # node names are a nicety: node ids are shown instead
        names = {}
    return Snapshot(status, taken_at, names)


class Sampler:
    """Calls ``take()`` every ``interval_s`` in a daemon thread and posts each result to ``inbox``
    as ``("sample", Snapshot)`` or ``("problem", message)``. A slow ``take`` delays the next one,
    never the thread that reads ``inbox``."""

    def __init__(self, take: Callable[[], Snapshot], interval_s: float, inbox: queue.Queue):
        self._take, self.interval_s, self._inbox = take, interval_s, inbox
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rayflume-top-sampler")

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._inbox.put(("sample", self._take()))
            except Exception as exc:  # shown in the view; the next reading may succeed
                text = str(exc).strip().splitlines()
                self._inbox.put(("problem", f"cannot read the topology: {type(exc).__name__}: "
                                            f"{text[0] if text else ''}"))
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Stop sampling; True when the thread ended within ``timeout_s`` (False: a reading is
        still in flight, abandoned in its daemon thread)."""
        self._stop.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


class KeyReader:
    """Hands every key pressed on the terminal ``fd`` to ``on_key``, at once (cbreak mode: no
    Enter needed, no echo), from a daemon thread. Ctrl-C still interrupts the main thread (the
    terminal's signals stay on). The terminal's settings are restored on exit, whatever happened
    meanwhile. On a ``fd`` that is not a terminal it reads nothing."""

    def __init__(self, on_key: Callable[[str], None], fd: int | None = None):
        self._on_key = on_key
        self.fd = sys.stdin.fileno() if fd is None else fd
        self._saved = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "KeyReader":
        import termios
        import tty

        if not os.isatty(self.fd):
            return self
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd, termios.TCSANOW)
        self._thread = threading.Thread(target=self._read, daemon=True, name="rayflume-top-keys")
        self._thread.start()
        return self

    def _read(self) -> None:
        while not self._stop.is_set():
            # a short select, so that the thread notices the stop (a blocking read would not)
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(self.fd, 64)
            if not data:  # the terminal went away
                return
            for key in data.decode("utf-8", errors="ignore"):
                self._on_key(key)

    def __exit__(self, *exc_info) -> None:
        import termios

        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None


class TopView:
    """What the live view shows and how keys change it: the last two readings, the sort column
    and direction, and the last problem."""

    def __init__(self, name: str, interval_s: float, tier_order: list[str] | None = None):
        self.name, self.interval_s, self.tier_order = name, interval_s, tier_order
        self.previous: Snapshot | None = None
        self.current: Snapshot | None = None
        self.sort_column, self.reverse = 0, False
        self.problem: str | None = None

    def add(self, snapshot: Snapshot) -> None:
        self.previous, self.current, self.problem = self.current, snapshot, None

    def key(self, key: str) -> bool:
        """Apply a key; False for a key that quits."""
        if key in ("q", "Q"):
            return False
        if key == "s":
            self.sort_column = (self.sort_column + 1) % len(SORT_COLUMNS)
        elif key == "S":
            self.sort_column = (self.sort_column - 1) % len(SORT_COLUMNS)
        elif key == "r":
            self.reverse = not self.reverse
        return True

    def rows(self) -> list[Row]:
        if self.current is None:
            return []
        return sort_rows(build_rows(self.previous, self.current, self.tier_order), self.sort_column, self.reverse)

    def renderable(self, live: bool = True):
        status = self.current.status if self.current is not None else None
        return render(self.name, self.rows(), sort_column=self.sort_column, reverse=self.reverse, status=status,
                      problem=self.problem, interval_s=self.interval_s, live=live)


def run_live(handle, interval_s: float = 1.0, console=None) -> int:
    """The full-screen view of ``handle``'s topology, redrawn at every reading (every
    ``interval_s``) and at every key, until ``q`` (returns 0) or Ctrl-C (KeyboardInterrupt
    propagates). The terminal (screen and key settings) is restored either way."""
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    inbox: queue.Queue = queue.Queue()
    view = TopView(handle.name, interval_s, tier_flow_order(handle.name))
    sampler = Sampler(lambda: take_snapshot(handle), interval_s, inbox)
    try:
        with KeyReader(lambda key: inbox.put(("key", key))), \
                Live(view.renderable(), console=console, screen=True, auto_refresh=False) as live:
            sampler.start()
            while True:
                what, value = inbox.get()
                if what == "key" and not view.key(value):
                    return 0
                if what == "sample":
                    view.add(value)
                elif what == "problem":
                    view.problem = value
                live.update(view.renderable(), refresh=True)
    finally:
        sampler.stop()


def print_once(handle, interval_s: float = 1.0, as_json: bool = False, out=None) -> list[Row]:
    """Read ``handle``'s topology twice, ``interval_s`` apart, and print one table (or, with
    ``as_json``, the rows as JSON) with the rates between the two readings; returns the rows."""
    from rich.console import Console

    out = out or sys.stdout
    first = take_snapshot(handle)
    view = TopView(handle.name, interval_s, tier_flow_order(handle.name))
    view.add(first)
    # the spacing between the two readings is the point: the rates are measured over it
    time.sleep(max(0.0, interval_s - (time.monotonic() - first.taken_at)))
    view.add(take_snapshot(handle))
    rows = view.rows()
    if as_json:
        out.write(rows_as_json(rows) + "\n")
        return rows
    terminal = out.isatty()
    # Piped into a script, a table at the default 80 columns would cut cells: give it room.
    width = None if terminal or os.environ.get("COLUMNS") else 200
    Console(file=out, width=width).print(view.renderable(live=False))
    return rows
