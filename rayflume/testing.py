"""In-memory sources and sinks shared by tests and notebooks.

Sinks run in their own actors, so "in memory" means in a named :class:`EventCollector` actor
that the ``testing_sink`` writes into and the test or notebook reads::

    collector = rayflume.testing.collector("results")        # get-or-create
    handle = rayflume.deploy({... "sinks": {"out": {"type": "testing_sink", "channel": "mem",
                                                    "collector": "results"}}})
    collector.wait_for(1000)
    bodies = collector.bodies()

A collector is scoped to a run of the topologies that name it: ``rayflume.deploy`` empties every
collector a topology's ``testing_sink``/``flaky_sink`` names when it deploys that topology afresh
(none of that name is running), so re-running a notebook cell counts from zero. Updating a running
topology (deploying it again while it runs) keeps what was collected, and so does ``stop()``: the
results stay readable after it.

Components:

* source ``testing_source``: a fixed list of bodies (or ``count`` numbered bodies), finite.
* source ``testing_feed``: batches pushed into an :class:`EventFeed` actor; a batch stays in the
  feed until the source acknowledged it, so a restarted source re-reads what was in flight.
* sink ``testing_sink``: appends every batch to a collector.
* sink ``flaky_sink``: like ``testing_sink`` but fails on purpose (the first ``fail_first``
  writes, then every ``fail_every``-th write), for failover and retry tests; ``write_delay_s``
  makes every write that long (a slow sink), and ``write_delay_knob`` names a :func:`knob` whose
  value, when set, replaces it while the sink runs (a sink that slows down and speeds up).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Optional

import pyarrow as pa
import ray
from pydantic import Field, model_validator

from rayflume.config_base import SinkConfig, SourceConfig
from rayflume.errors import DeliveryError
from rayflume.event import Event, EventBatch
from rayflume.registry import register
from rayflume.sinks.base import Sink
from rayflume.sources.base import Source

if TYPE_CHECKING:
    from rayflume.topology import Topology

NAMESPACE = "rayflume"
COLLECTOR_CLEAR_TIMEOUT_S = 30.0
logger = logging.getLogger("rayflume.testing")


# -- collector and feed actors ---------------------------------------------------------------------
class _Collector:
    """Keeps every batch it is given, in arrival order, with the name of the sink that sent it."""

    def __init__(self):
        self.batches: list[tuple[str, EventBatch]] = []
        self.events = 0

    def add(self, batch: EventBatch, sink: str = "") -> None:
        self.batches.append((sink, batch))
        self.events += len(batch)

    def count(self, sink: Optional[str] = None) -> int:
        if sink is None:
            return self.events
        return sum(len(b) for s, b in self.batches if s == sink)

    def batch(self, sink: Optional[str] = None) -> EventBatch:
        return EventBatch.concat([b for s, b in self.batches if sink is None or s == sink])

    def clear(self) -> None:
        self.batches.clear()
        self.events = 0


class EventCollector:
    """A handle on a named collector actor (get-or-create by name)."""

    def __init__(self, name: str, **actor_options):
        self.name = name
        self.actor: Any = ray.remote(_Collector).options(
            name=f"collector/{name}", namespace=NAMESPACE, get_if_exists=True, num_cpus=0,
            lifetime="detached", **actor_options).remote()

    def add(self, batch: EventBatch, sink: str = "") -> None:
        ray.get(self.actor.add.remote(batch, sink))

    def count(self, sink: Optional[str] = None) -> int:
        return ray.get(self.actor.count.remote(sink))

    def batch(self, sink: Optional[str] = None) -> EventBatch:
        return ray.get(self.actor.batch.remote(sink))

    def events(self, sink: Optional[str] = None) -> list[Event]:
        return self.batch(sink).to_events()

    def bodies(self, sink: Optional[str] = None) -> list[bytes]:
        return self.batch(sink).bodies()

    def clear(self) -> None:
        ray.get(self.actor.clear.remote())

    def wait_for(self, n: int, timeout_s: float = 60.0, sink: Optional[str] = None) -> int:
        """Wait until at least ``n`` events arrived; raises TimeoutError with the count so far."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.count(sink)
            if got >= n:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"collector '{self.name}' has {got} events, waited {timeout_s}s for {n}")
            time.sleep(0.05)

    def kill(self) -> None:
        ray.kill(self.actor, no_restart=True)


def collector(name: str, **actor_options) -> EventCollector:
    """Get or create the named collector; ``actor_options`` (e.g. a scheduling strategy) apply
    when it is created. Its contents are emptied when a topology naming it is deployed afresh (see
    the module's docstring)."""
    return EventCollector(name, **actor_options)


def collectors_named_in(topology: "Topology") -> set[str]:
    """Names of the collectors the sinks of ``topology`` (every tier) write into."""
    return {cfg.collector for tier in topology.tiers.values() for cfg in tier.sinks.values()
            if isinstance(cfg, CollectSinkConfig)}


def clear_collectors(names) -> list[str]:
    """Empty the named collectors that exist, without creating the others (a sink creates its
    collector when it starts). Returns the names emptied. A collector that does not answer within
    ``COLLECTOR_CLEAR_TIMEOUT_S`` is left as it is, with a warning: a deploy is not refused for it."""
    refs = {}
    for name in sorted(set(names)):
        try:
            actor = ray.get_actor(f"collector/{name}", namespace=NAMESPACE)
        except ValueError:  # none of that name: nothing to empty
            continue
        refs[name] = actor.clear.remote()
    cleared = []
    for name, ref in refs.items():
        try:
            ray.get(ref, timeout=COLLECTOR_CLEAR_TIMEOUT_S)
            cleared.append(name)
        except ray.exceptions.RayActorError:
            # it died since the look-up: the next sink to start creates an empty one
            continue
        except ray.exceptions.GetTimeoutError:
            logger.warning("collector '%s' did not answer within %g s; it keeps what an earlier run collected",
                           name, COLLECTOR_CLEAR_TIMEOUT_S)
    return cleared


class _Feed:
    def __init__(self):
        self.queue: list[EventBatch] = []
        self.in_flight: dict[int, EventBatch] = {}
        self.next_token = 0
        self.closed = False

    def push(self, batch: EventBatch) -> None:
        self.queue.append(batch)

    def next(self):
        if not self.queue:
            return None
        self.next_token += 1
        batch = self.queue.pop(0)
        self.in_flight[self.next_token] = batch
        return self.next_token, batch

    def ack(self, token: int) -> None:
        self.in_flight.pop(token, None)

    def requeue_in_flight(self) -> None:
        self.queue[:0] = [self.in_flight[t] for t in sorted(self.in_flight)]
        self.in_flight.clear()

    def close(self) -> None:
        self.closed = True

    def done(self) -> bool:
        return self.closed and not self.queue and not self.in_flight


class EventFeed:
    """A handle on a named feed actor that a ``testing_feed`` source reads from."""

    def __init__(self, name: str):
        self.name = name
        self.actor: Any = ray.remote(_Feed).options(
            name=f"feed/{name}", namespace=NAMESPACE, get_if_exists=True, num_cpus=0,
            lifetime="detached").remote()

    def push(self, events) -> None:
        """Push an EventBatch, a list of Events, or a list of bodies (bytes or str)."""
        if not isinstance(events, EventBatch):
            events = list(events)
            if events and isinstance(events[0], Event):
                events = EventBatch.from_events(events)
            else:
                events = EventBatch.from_bodies([e.encode() if isinstance(e, str) else e for e in events])
        ray.get(self.actor.push.remote(events))

    def close(self) -> None:
        """No more pushes: the source finishes once everything was acknowledged."""
        ray.get(self.actor.close.remote())

    def kill(self) -> None:
        ray.kill(self.actor, no_restart=True)


def feed(name: str) -> EventFeed:
    return EventFeed(name)


class _Knob:
    def __init__(self):
        self.value = None

    def set(self, value) -> None:
        self.value = value

    def get(self):
        return self.value


class Knob:
    """A handle on a named knob actor: a value a test sets while a topology runs, read by the
    components that name the knob (``flaky_sink``'s ``write_delay_knob``). Unset (None) at first."""

    def __init__(self, name: str):
        self.name = name
        self.actor: Any = ray.remote(_Knob).options(
            name=f"knob/{name}", namespace=NAMESPACE, get_if_exists=True, num_cpus=0,
            lifetime="detached").remote()

    def set(self, value) -> None:
        ray.get(self.actor.set.remote(value))

    def get(self):
        return ray.get(self.actor.get.remote())

    def kill(self) -> None:
        ray.kill(self.actor, no_restart=True)


def knob(name: str) -> Knob:
    """Get or create the named knob."""
    return Knob(name)


# -- sources ---------------------------------------------------------------------------------------
class ListSource(Source):
    """Emits a fixed batch of bodies in ``batch_size`` slices, then finishes."""

    def __init__(self, batch: EventBatch, batch_size: int):
        self.batch = batch
        self.batch_size = batch_size
        self.offset = 0
        self.pending = 0

    def poll(self) -> EventBatch | None:
        if self.offset >= len(self.batch):
            return None
        out = self.batch.slice(self.offset, self.batch_size)
        self.pending = len(out)
        return out

    def ack(self) -> None:
        self.offset += self.pending
        self.pending = 0

    @property
    def finished(self) -> bool:
        return self.offset >= len(self.batch)


@register("source", "testing_source")
class ListSourceConfig(SourceConfig):
    """``testing_source``: the given ``bodies``, or ``count`` bodies "0".."count-1"; finite."""

    bodies: list[str] | None = None
    count: int | None = Field(None, ge=0)
    headers: dict[str, str] = Field(default_factory=dict, description="Headers set on every event.")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.bodies is None) == (self.count is None):
            raise ValueError("give exactly one of 'bodies' or 'count'")
        return self

    def build(self, name: str) -> ListSource:
        bodies = self.bodies if self.bodies is not None else [str(i) for i in range(self.count or 0)]
        arr = pa.array(bodies, pa.string()).cast(pa.binary())
        if self.headers:
            batch = EventBatch.from_events(Event(b, dict(self.headers)) for b in arr.to_pylist())
        else:
            batch = EventBatch.from_bodies(arr)
        return ListSource(batch, self.batch_size)


class FeedSource(Source):
    """Reads batches pushed into an :class:`EventFeed`; finishes when the feed is closed and empty."""

    def __init__(self, feed_name: str):
        self.feed_name = feed_name
        self.token = None
        self._done = False

    def start(self, context) -> None:
        super().start(context)
        self.feed = EventFeed(self.feed_name).actor
        ray.get(self.feed.requeue_in_flight.remote())  # what a previous incarnation had in flight

    def poll(self) -> EventBatch | None:
        got = ray.get(self.feed.next.remote())
        if got is None:
            self._done = ray.get(self.feed.done.remote())
            return None
        self.token, batch = got
        return batch

    def ack(self) -> None:
        if self.token is not None:
            ray.get(self.feed.ack.remote(self.token))
            self.token = None

    @property
    def finished(self) -> bool:
        return self._done


@register("source", "testing_feed")
class FeedSourceConfig(SourceConfig):
    """``testing_feed``: batches pushed with ``rayflume.testing.feed(name).push(...)``."""

    feed: str

    def build(self, name: str) -> FeedSource:
        return FeedSource(self.feed)


# -- sinks -----------------------------------------------------------------------------------------
class CollectSink(Sink):
    """Appends every batch to the named collector; ``write`` returns once the collector has it."""

    def __init__(self, name: str, collector_name: str, batch_size: int):
        self.name = name
        self.collector_name = collector_name
        self.batch_size = batch_size

    def start(self, context) -> None:
        super().start(context)
        self.collector = EventCollector(self.collector_name).actor

    def write(self, batch: EventBatch) -> None:
        ray.get(self.collector.add.remote(batch, self.name))


@register("sink", "testing_sink")
class CollectSinkConfig(SinkConfig):
    """``testing_sink``: collects into ``rayflume.testing.collector(collector)``."""

    collector: str

    def build(self, name: str) -> CollectSink:
        return CollectSink(name, self.collector, self.batch_size)


class FlakySink(CollectSink):
    """Fails the first ``fail_first`` writes, then every ``fail_every``-th write (0: never); every
    write first sleeps ``write_delay_s``, or the value of the knob ``write_delay_knob`` while it is
    set (read at most every ``KNOB_READ_INTERVAL_S``, so the knob costs no call per write)."""

    KNOB_READ_INTERVAL_S = 0.1

    def __init__(self, name, collector_name, batch_size, fail_first: int, fail_every: int,
                 write_delay_s: float = 0.0, write_delay_knob: str | None = None):
        super().__init__(name, collector_name, batch_size)
        self.fail_first = fail_first
        self.fail_every = fail_every
        self.write_delay_s = write_delay_s
        self.write_delay_knob = write_delay_knob
        self.writes = 0
        self._knob_delay_s = write_delay_s
        self._knob_read_at = float("-inf")

    def start(self, context) -> None:
        super().start(context)
        if self.write_delay_knob is not None:
            self.knob = Knob(self.write_delay_knob).actor

    def _delay_s(self) -> float:
        if self.write_delay_knob is None:
            return self.write_delay_s
        t = time.monotonic()
        if t - self._knob_read_at >= self.KNOB_READ_INTERVAL_S:
            value = ray.get(self.knob.get.remote())
            self._knob_delay_s = self.write_delay_s if value is None else float(value)
            self._knob_read_at = t
        return self._knob_delay_s

    def write(self, batch: EventBatch) -> None:
        delay_s = self._delay_s()
        if delay_s:
            time.sleep(delay_s)
        self.writes += 1
        if self.writes <= self.fail_first or (self.fail_every and self.writes % self.fail_every == 0):
            self.context.count("InjectedFailureCount")
            raise DeliveryError(f"flaky sink '{self.name}': injected failure on write {self.writes}")
        super().write(batch)


@register("sink", "flaky_sink")
class FlakySinkConfig(CollectSinkConfig):
    """``flaky_sink``: a ``testing_sink`` that fails on purpose."""

    fail_first: int = Field(0, ge=0)
    fail_every: int = Field(0, ge=0)
    write_delay_s: float = Field(0, ge=0)
    write_delay_knob: str | None = Field(
        None, description="Name of a rayflume.testing.knob: while it holds a number, every write "
                          "sleeps that many seconds instead of write_delay_s.")

    def build(self, name: str) -> FlakySink:
        return FlakySink(name, self.collector, self.batch_size, self.fail_first, self.fail_every,
                         self.write_delay_s, self.write_delay_knob)
