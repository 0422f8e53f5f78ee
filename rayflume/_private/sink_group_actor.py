"""The sink group actor: a sink processor over one or more sinks, each fed by its channel.

:class:`SinkGroupActor` checks its sinks' configs in the constructor and starts them in a thread
of its own, with retries, so that a sink that cannot start yet is a status of the actor. On start
every sink releases the leases its previous incarnation held (its batches return to the channel
at once) and goes on counting from the channel's delivery totals; a heartbeat then renews the
sinks' leases until ``stop`` settled them, so a lease expires only when the actor's process is
gone. Which sinks are paused is the controller's (:mod:`rayflume._private.pausing`), read before
any sink takes and changed by the controller's pushes.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time

import ray

from rayflume._private.actor_base import EXPORT_EVERY_S, TAP_MAX_WAIT_S, _Component, _typed, logger, start_with_retries
from rayflume._private.channel_ports import ChannelDirectory, _ChannelHandlePort
from rayflume._private.metrics import RayExporter
from rayflume._private.pausing import read_pause_state
from rayflume._private.runners import SinkRunner, run_sink_group
from rayflume._private.state_store import RayKVStore
from rayflume._private.tap import TapPoint
from rayflume.counters import Counters
from rayflume.event import EventBatch
from rayflume.sinks.base import SinkContext

# A pause answers the controller once the paused sinks settled their batch in hand, or after this
# long (a slow write): below the controller's PAUSE_CONFIRM_S, so that it hears the answer.
PAUSE_SETTLE_WAIT_S = 4.0
PAUSE_SETTLE_POLL_S = 0.02


class SinkGroupActor(_Component):
    """Runs a sink group. The constructor only checks configs; sinks start in the group's thread,
    with retries, so that a sink that cannot start yet (a missing directory, a dead channel) is a
    status of this actor rather than a failed constructor.

    Once the sinks started, a heartbeat thread renews every sink's leases (its write in progress,
    its prefetched take) a third of the channel's ``lease_timeout_s`` apart, until ``stop`` has
    settled them; so a lease expires only when this actor's process is gone, however slow a write.

    Pause: which sinks are paused is the controller's (:mod:`rayflume._private.pausing`). The
    sinks start paused as the controller's stored state says, read before any of them takes, so
    a restart of this actor (or its replacement) never writes a batch while paused; the
    controller's pushes (:meth:`set_paused`) change it while it runs.
    """

    kind = "SINK"
    HEARTBEAT_MIN_S = 0.1
    HEARTBEAT_MAX_S = 10.0

    def __init__(self, topology: str, group: str, raw_sinks: dict, raw_processor: dict | None,
                 channels: dict, scope: str = "", metrics_export=None):
        self._init_identity(topology, group, scope, metrics_export)
        self.channels = ChannelDirectory(topology, scope, channels)
        self.configs = {s: _typed("sink", raw, f"sinks.{s}") for s, raw in raw_sinks.items()}
        self.processor_config = _typed("processor", raw_processor or {"type": "default"},
                                       f"sink_groups.{group}.processor")
        self.runners: list[SinkRunner] = []
        self.counters = {s: Counters() for s in raw_sinks}
        # one per sink, made now: a tap read before the sinks started arms it for when they do
        self.taps: dict[str, TapPoint] = {s: TapPoint() for s in raw_sinks}
        self.error: str | None = None
        # The pause state applied here, and its number in the controller's sequence of changes:
        # a push or a stored state older than what was applied is ignored.
        self._pause_lock = threading.Lock()
        self._pause_seq = 0
        self._paused: set[str] = set()
        self._heartbeat_stop = threading.Event()  # set by stop() once the runners settled
        self._heartbeat_thread: threading.Thread | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"sinks-{group}")
        self._thread.start()

    def _start_sinks(self) -> None:
        """Start every sink (all or none) and build the processor over them, each sink paused or
        not as the controller's stored state says (raises when it cannot be read: retried)."""
        stored_seq, stored_paused = read_pause_state(RayKVStore(), self.topology, self.scope) \
            if self.topology else (0, set())
        runners: list[SinkRunner] = []
        try:
            for sink_name, config in self.configs.items():
                sink = config.build(sink_name)
                counters = self.counters[sink_name]
                sink.start(SinkContext(name=sink_name, topology=self.topology, scope=self.scope,
                                       logger=logging.getLogger(f"rayflume.sink.{sink_name}"),
                                       counters=counters))
                holder = "/".join(p for p in (self.topology, self.scope, self.name, sink_name) if p)
                port = _ChannelHandlePort(self.channels, config.channel, fill_s=config.batch_duration_s)
                runners.append(SinkRunner(sink_name, sink, port, holder, counters,
                                          pipelined=len(self.configs) == 1, tap=self.taps[sink_name]))
                # Leases of our previous incarnation return to the channel now, not at their timeout;
                # the counters go on from what the channel counted for all our incarnations.
                port._get(port.handle.release.remote(holder), 60)
                counters.update(port._get(port.handle.delivery_totals.remote(holder), 60))
        except BaseException:
            for r in runners:
                with contextlib.suppress(Exception):
                    r.sink.stop()
            raise
        self.processor = self.processor_config.build(runners)
        with self._pause_lock:  # a push may have come meanwhile: the newer state wins
            if stored_seq > self._pause_seq:
                self._apply_pause(stored_seq, stored_paused)
            for r in runners:
                r.set_paused(r.name in self._paused)
            self.runners = runners  # published paused: the group's loop starts after this

    def _report(self, message: str | None) -> None:
        self.error = message

    def _run(self) -> None:
        if not start_with_retries(f"sink group '{self.name}' of topology '{self.topology}'",
                                  self._start_sinks, self.stopping, self._report):
            return
        exporters = {r.name: RayExporter(self.topology, "SINK", r.name, self.scope, export=self.metrics_export)
                     for r in self.runners}

        def export_loop():
            while not self.stopping.wait(EXPORT_EVERY_S):
                for sink_name, exporter in exporters.items():
                    exporter.export(self.counters[sink_name])

        threading.Thread(target=export_loop, daemon=True).start()
        self._heartbeat_thread = threading.Thread(target=self._heartbeat, daemon=True,
                                                  name=f"sinks-{self.name}-heartbeat")
        self._heartbeat_thread.start()
        run_sink_group(self.processor, self.runners, self.stopping)

    def _heartbeat(self) -> None:
        """Renew every runner's leases, then wait a third of the smallest lease timeout the channels
        returned (within HEARTBEAT_MIN_S..HEARTBEAT_MAX_S); until ``stop`` settled the runners.
        A failed renewal is logged at debug and retried next round."""
        period = 1.0  # until the channels tell their lease timeouts
        while not self._heartbeat_stop.is_set():
            calls = []
            for r in self.runners:
                try:
                    calls.append((r, r.channel.handle.renew.remote(r.holder)))
                except Exception as exc:
                    logger.debug("sink '%s': cannot renew its leases: %r", r.name, exc)
            deadline = time.monotonic() + period
            timeouts = []
            for r, ref in calls:
                try:
                    timeouts.append(float(r.channel._get(ref, max(0.0, deadline - time.monotonic()))))
                except Exception as exc:
                    logger.debug("sink '%s': cannot renew its leases: %r", r.name, exc)
            if timeouts:
                period = min(max(min(timeouts) / 3, self.HEARTBEAT_MIN_S), self.HEARTBEAT_MAX_S)
            self._heartbeat_stop.wait(period)

    def set_hop_targets(self, tier: str, source: str, targets: list) -> int:
        """The controller's push of ``tier``'s live receiving instances, for this group's sinks that
        send there; returns how many took them (0 before the sinks started: they ask at start)."""
        return sum(bool(getattr(r.sink, "set_hop_targets", lambda *a: False)(tier, source, targets))
                   for r in self.runners)

    def set_paused(self, sinks: list[str], seq: int) -> dict:
        """The controller's push: exactly ``sinks`` of this group are paused (the others run), as of
        its pause state number ``seq``; ignored when older than the state applied here. A sink
        being paused finishes (or rolls back) the batch in hand and returns its prefetched take;
        then it takes nothing until resumed.

        Waits up to PAUSE_SETTLE_WAIT_S for that, so that a pause that answers ``settled`` means
        the sinks write nothing more. Returns ``{"seq", "paused", "settled"}`` as applied."""
        with self._pause_lock:
            if seq >= self._pause_seq:
                self._apply_pause(seq, set(sinks))
            applied = {"seq": self._pause_seq, "paused": sorted(self._paused)}
        deadline = time.monotonic() + PAUSE_SETTLE_WAIT_S
        while not self._pause_settled() and time.monotonic() < deadline and not self.stopping.is_set():
            time.sleep(PAUSE_SETTLE_POLL_S)
        return {**applied, "settled": self._pause_settled()}

    def _pause_settled(self) -> bool:
        """Whether every paused sink that runs has settled its batch in hand (its gauge is 1)."""
        return all(r.counters.get("Paused") == 1 for r in list(self.runners) if r.paused)

    def _apply_pause(self, seq: int, sinks: set[str]) -> None:
        """Under ``_pause_lock``: make ``sinks`` (of this group) the paused ones."""
        self._pause_seq, self._paused = seq, {s for s in sinks if s in self.configs}
        if not self.runners:  # not started: nothing in hand, so the gauge is right at once
            for s in self.configs:
                self.counters[s].set("Paused", int(s in self._paused))
        for r in self.runners:  # a running sink's gauge turns 1 once its batch in hand settled
            r.set_paused(r.name in self._paused)

    def tap(self, sink_name: str, max_events: int = 100, wait_s: float = 1.0, sample: float = 1.0) -> EventBatch:
        """Up to ``max_events`` of the events sink ``sink_name`` of this group wrote since the last
        tap, waiting up to ``wait_s`` (at most TAP_MAX_WAIT_S) for some; see
        :class:`~rayflume._private.tap.TapPoint`. ValueError for a sink not in this group."""
        tap = self.taps.get(sink_name)
        if tap is None:
            raise ValueError(f"sink group '{self.name}' of topology '{self.topology}' has no sink "
                             f"'{sink_name}'; its sinks: {', '.join(self.taps)}")
        return tap.read(max_events, min(wait_s, TAP_MAX_WAIT_S), sample)

    def metrics(self) -> dict:
        """Counters per sink of this group."""
        return {name: {**c.snapshot(), **self._times()} for name, c in self.counters.items()}

    def info(self) -> dict:
        errors = {r.name: r.last_error for r in self.runners if r.last_error}
        if self.error:
            errors = {**{s: self.error for s in self.configs}, **errors}
        state = getattr(getattr(self, "processor", None), "state", None)
        return {**self._base_info(), "sinks": list(self.configs), "errors": errors,
                "started": bool(self.runners), "processor": state() if callable(state) else None,
                "paused": sorted(self._paused), "pause_seq": self._pause_seq}

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the batch in flight, then flush and close every sink."""
        self.stopping.set()
        self._thread.join(timeout_s)
        for r in self.runners:
            r.close()
            try:
                r.sink.stop()
            except Exception:
                logger.exception("sink '%s': stop failed", r.name)
        # Renewed until here: the last batch's write and the runners' settling keep their leases.
        self._heartbeat_stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout_s)
        self.stop_time_ms = int(time.time() * 1000)


RemoteSinkGroup = ray.remote(SinkGroupActor)
