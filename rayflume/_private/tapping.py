"""The driver's side of ``tap``: which actors run a component, reading their taps, and the table.

A component runs once per instance of its tier, each in an actor of its own (a sink inside its
sink group's actor): :func:`tap_targets` finds them by the names the controller gives actors;
:class:`TapReader` keeps one tap read in flight per instance and hands back what arrives;
:func:`tap_stream` re-finds the instances now and then (they come and go with nodes) and yields
events until a limit or an idle timeout; :func:`events_table` makes the ``tap`` table.
The actors' side is :class:`rayflume._private.tap.TapPoint`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import pyarrow as pa
import ray

from rayflume._private.actors import NAMESPACE
from rayflume._private.tap import _checked_sample
from rayflume.errors import RayflumeError
from rayflume.event import HEADERS_TYPE, EventBatch

logger = logging.getLogger("rayflume.tap")

POLL_S = 1.0  # the longest one read waits in an actor: bounds how long it holds one of its threads
# Reads of one instance start at least this far apart: a reader costs at most 10 actor calls a
# second per instance, and sees at most 10 of its tap buffers (10,000 events) a second.
READ_INTERVAL_S = 0.1
ANSWER_GRACE_S = 5.0  # how late past its wait a read may answer before its actor counts as not answering
RESOLVE_EVERY_S = 5.0  # a stream looks for new (or replaced) instances this often
SINGLE_INSTANCE = "main"  # the instance of a topology without tiers, as status() names it

SCHEMA = pa.schema([pa.field("tier", pa.string()), pa.field("instance", pa.string()),
                    pa.field("component", pa.string()), pa.field("headers", HEADERS_TYPE),
                    pa.field("body", pa.binary())])


@dataclass(frozen=True)
class TapTarget:
    """One instance of a tapped component: its tier ("" without tiers), instance, kind (SOURCE or
    SINK), the name of the actor that runs it, and for a sink the name to ask its group for."""

    tier: str
    instance: str
    component: str
    kind: str
    actor_name: str
    sink: str | None = None


def tiers_of(raw: dict) -> dict[str, dict]:
    """``{tier name: its mapping}`` of a raw topology; one tier named "" without ``tiers``."""
    tiers = raw.get("tiers")
    return {str(k): v or {} for k, v in tiers.items()} if isinstance(tiers, dict) else {"": raw}


def group_of(tier: dict, sink: str) -> str:
    """The sink group that runs ``sink`` (the actor is named after it): a group listing it, else
    the sink itself, as :meth:`rayflume.topology.Tier.groups` has it."""
    for group, spec in (tier.get("sink_groups") or {}).items():
        if sink in ((spec or {}).get("sinks") or []):
            return group
    return sink


def tap_targets(raw: dict, component: str, actor_names: Iterable[str]) -> list[TapTarget]:
    """The instances of source or sink ``component`` of the deployed topology ``raw`` (its mapping,
    as the controller keeps it) among the named actors ``actor_names`` (as
    ``ray.util.list_named_actors`` lists them), in every tier that has one of that name. Reads
    names only, so that a topology whose component classes this process cannot import is tapped too.

    Raises ValueError naming the topology's sources and sinks when ``component`` is none of them.
    """
    name = raw.get("name")
    wanted = []  # (tier, kind, actor key, sink)
    for tier_name, tier in tiers_of(raw).items():
        if component in (tier.get("sources") or {}):
            wanted.append((tier_name, "SOURCE", f"source/{component}", None))
        if component in (tier.get("sinks") or {}):
            wanted.append((tier_name, "SINK", f"sinks/{group_of(tier, component)}", component))
    if not wanted:
        raise ValueError(_unknown_component(raw, component))
    names = set(actor_names)
    targets = []
    for tier_name, kind, key, sink in wanted:
        if not tier_name:
            actor = f"{name}/{key}"
            if actor in names:
                targets.append(TapTarget("", SINGLE_INSTANCE, component, kind, actor, sink))
            continue
        prefix, suffix = f"{name}/{tier_name}/", f"/{key}"
        for actor in sorted(names):
            instance = actor[len(prefix):-len(suffix)] if actor.startswith(prefix) and actor.endswith(suffix) else ""
            if instance and "/" not in instance:
                targets.append(TapTarget(tier_name, instance, component, kind, actor, sink))
    return targets


def _unknown_component(raw: dict, component: str) -> str:
    tiers = tiers_of(raw)

    def listed(section: str) -> str:
        names = []
        for tier_name, tier in tiers.items():
            names += [f"{n} (tier {tier_name})" if tier_name else str(n) for n in (tier.get(section) or {})]
        return ", ".join(names) or "none"

    channel = any(component in (tier.get("channels") or {}) for tier in tiers.values())
    hint = "; a channel is seen by tapping a sink that drains it" if channel else ""
    return (f"topology '{raw.get('name')}' has no source or sink named '{component}': its sources are "
            f"{listed('sources')}; its sinks are {listed('sinks')}{hint}")


class TapReader:
    """Reads the taps of ``targets``: one read in flight per instance, kept across calls of
    :meth:`read`, so that events a read took are never left behind between two calls; reads of an
    instance start at least ``min_interval_s`` apart.

    An instance whose actor fails (gone, restarting, too old to have a tap) is left out, with why in
    ``failures``, until :meth:`retarget` names it again.
    """

    def __init__(self, targets: list[TapTarget], sample: float = 1.0, poll_s: float = POLL_S,
                 min_interval_s: float = READ_INTERVAL_S):
        self.sample = _checked_sample(sample)
        self.poll_s = poll_s
        self.min_interval_s = min_interval_s
        self._not_before: dict[TapTarget, float] = {}  # when each instance may be read again
        self.targets: list[TapTarget] = []
        self.failures: dict[TapTarget, str] = {}
        self._handles: dict[TapTarget, object] = {}
        self._in_flight: dict[ray.ObjectRef, TapTarget] = {}
        self.retarget(targets)

    def retarget(self, targets: list[TapTarget]) -> None:
        """Read ``targets`` from now on (failed ones are tried again); reads in flight go on."""
        self.targets = list(targets)
        self.failures = {}
        self._handles = {t: h for t, h in self._handles.items() if t in self.targets}
        self._not_before = {t: due for t, due in self._not_before.items() if t in self.targets}

    @property
    def live(self) -> list[TapTarget]:
        """The targets being read: those that did not fail."""
        return [t for t in self.targets if t not in self.failures]

    def read(self, max_events: int, timeout_s: float) -> list[tuple[TapTarget, EventBatch]]:
        """What arrives within ``timeout_s``: returns once a read brought events (with every other
        read that has answered by then), or at the deadline; reads ask for ``max_events`` each."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        got: list[tuple[TapTarget, EventBatch]] = []
        first = True
        while True:
            now = time.monotonic()
            remaining = deadline - now
            if remaining > 0 or first:
                self._issue(max_events, min(self.poll_s, max(0.0, remaining)), now)
            first = False
            due = self._next_due()
            if not self._in_flight:
                if due is None or due >= deadline:
                    return got
                time.sleep(due - now)  # pacing: an instance read a moment ago is read again at its due time
                continue
            wait = max(0.0, remaining) + ANSWER_GRACE_S
            if due is not None and due < deadline:
                wait = min(wait, max(0.0, due - now))
            ready, _ = ray.wait(list(self._in_flight), num_returns=1, timeout=wait)
            if not ready:
                if due is not None and time.monotonic() < deadline:
                    continue  # an instance is due for its next read
                return got  # no actor answered, even late: they are busy or hung; their reads stay in flight
            ready, _ = ray.wait(list(self._in_flight), num_returns=len(self._in_flight), timeout=0)
            for ref in ready:
                target = self._in_flight.pop(ref)
                try:
                    batch = ray.get(ref)
                except Exception as exc:
                    self._fail(target, exc)
                    continue
                if len(batch):
                    got.append((target, batch))
            if got or time.monotonic() >= deadline:
                return got

    def _issue(self, max_events: int, wait_s: float, now: float) -> None:
        """Start a read of every live instance that has none in flight and is due."""
        busy = set(self._in_flight.values())
        for target in self.live:
            if target in busy or self._not_before.get(target, 0.0) > now:
                continue
            try:
                handle = self._handles.get(target)
                if handle is None:
                    handle = self._handles[target] = ray.get_actor(target.actor_name, namespace=NAMESPACE)
                args = (target.sink,) if target.sink is not None else ()
                ref = handle.tap.remote(*args, max_events, wait_s, self.sample)
            except Exception as exc:  # gone (ValueError), or an actor of a rayflume without tap
                self._fail(target, exc)
                continue
            self._in_flight[ref] = target
            self._not_before[target] = now + self.min_interval_s

    def _next_due(self) -> float | None:
        """When the next live instance without a read in flight may be read, or None if there is none."""
        busy = set(self._in_flight.values())
        idle = [self._not_before.get(t, 0.0) for t in self.live if t not in busy]
        return min(idle) if idle else None

    def _fail(self, target: TapTarget, exc: BaseException) -> None:
        self._handles.pop(target, None)
        if isinstance(exc, AttributeError):
            why = "its actor has no tap (deployed by an older rayflume: deploy the topology again)"
        else:
            why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        self.failures[target] = why
        logger.debug("tap: %s of %s/%s left out: %s", target.component, target.tier, target.instance, why)


def find_targets(handle, component: str) -> list[TapTarget]:
    """The instances of ``component`` in the topology of ``handle`` (a TopologyHandle) as of now.
    Raises TopologyNotRunning when it is not running, ValueError for an unknown component."""
    raw = handle._call("raw_topology")
    prefix = f"{raw.get('name')}/"
    names = [e["name"] for e in ray.util.list_named_actors(all_namespaces=True)
             if e.get("namespace") == NAMESPACE and e["name"].startswith(prefix)]
    return tap_targets(raw, component, names)


def tap_stream(handle, component: str, limit: int | None, idle_timeout_s: float, sample: float = 1.0,
               timeout_s: float | None = None, poll_s: float = POLL_S) -> Iterator[tuple[TapTarget, EventBatch]]:
    """Events of ``component`` as they come, in ``(instance, batch)`` pieces, until ``limit`` events
    (None: no limit), ``idle_timeout_s`` without any, or ``timeout_s`` in all (None: no bound). The
    instances are found again every RESOLVE_EVERY_S. Raises RayflumeError when every instance failed
    to answer (TopologyNotRunning when the topology was stopped)."""
    reader = TapReader(find_targets(handle, component), sample, poll_s)
    resolved = last_event = start = time.monotonic()
    end = start + timeout_s if timeout_s is not None else float("inf")
    left = limit
    while left is None or left > 0:
        now = time.monotonic()
        if now - resolved >= RESOLVE_EVERY_S:
            reader.retarget(find_targets(handle, component))
            resolved = now
        if reader.targets and not reader.live:
            handle._call("ping")  # TopologyNotRunning if it was stopped
            raise RayflumeError(f"no instance of '{component}' of topology '{handle.name}' answered: "
                                + "; ".join(f"{t.tier + '/' if t.tier else ''}{t.instance}: {why}"
                                            for t, why in reader.failures.items()))
        wait = min(idle_timeout_s - (now - last_event), end - now, RESOLVE_EVERY_S)
        if wait <= 0:
            return
        if not reader.targets:
            time.sleep(min(wait, poll_s))  # no instance runs yet (a tier waiting for its node)
            continue
        for target, batch in reader.read(left if left is not None else 1_000, wait):
            if left is not None:
                batch = batch.slice(0, left)
                left -= len(batch)
            last_event = time.monotonic()
            if len(batch):
                yield target, batch


def events_table(parts: Iterable[tuple[TapTarget, EventBatch]]) -> pa.Table:
    """The ``tap`` table of ``parts``: columns tier (null without tiers), instance, component,
    headers and body, one row per event in the order given."""
    batches = []
    for target, batch in parts:
        n = len(batch)
        rb = batch.record_batch
        batches.append(pa.RecordBatch.from_arrays(
            [pa.array([target.tier or None] * n, pa.string()), pa.array([target.instance] * n, pa.string()),
             pa.array([target.component] * n, pa.string()), rb.column(0), rb.column(1)], schema=SCHEMA))
    return pa.Table.from_batches(batches, schema=SCHEMA)
