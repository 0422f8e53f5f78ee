"""The loops inside source and sink actors, written against plain callables so they can be
tested without Ray.

``SourceRunner`` polls a source, intercepts, routes, and puts into channels until every
required channel committed (the batch is kept and retried with back-off meanwhile), then
acknowledges the source. ``SinkRunner`` is one sink's take -> write -> commit step, rolled back
on any failure; sink processors drive several of them. A paused ``SinkRunner`` (the operator's
pause switch, :mod:`rayflume._private.pausing`) takes nothing and holds no lease.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Callable, Protocol

import pyarrow.compute as pc

from rayflume._private.backoff import Backoff
from rayflume._private.tap import TapPoint
from rayflume._private.volume import count_header_values
from rayflume.counters import Counters
from rayflume.errors import ChannelFull, DeliveryError, LeaseUnknown
from rayflume.event import EventBatch
from rayflume.interceptors.base import InterceptorChain
from rayflume.processors.base import Status
from rayflume.selectors.base import ChannelSelector
from rayflume.sinks.base import Sink
from rayflume.sources.base import Source

logger = logging.getLogger("rayflume.runner")


class ChannelPort(Protocol):
    """How a runner talks to one channel: synchronous calls that raise on failure.

    The last four are the pipelined sink's (``SinkRunner(pipelined=True)``, one sink draining its
    channel alone); a port used only unpipelined need not have them."""

    def put(self, batch: EventBatch, txn_id: str) -> None: ...

    def take(self, max_events: int, holder: str, timeout_s: float) -> tuple[str, EventBatch] | None:
        """``(lease id, batch)``, or None when the channel had nothing within ``timeout_s``; a
        prefetched take (see :meth:`prefetch`) is handed out first."""

    def commit(self, lease_id: str) -> None: ...

    def rollback(self, lease_id: str) -> None: ...

    def prefetch(self, max_events: int, holder: str, timeout_s: float) -> None:
        """Start the next take now; the next :meth:`take` returns its result."""

    def release_prefetched(self) -> None:
        """Roll a prefetched take back (its events go back to the head of the channel)."""

    def commit_later(self, lease_id: str, events: int) -> int:
        """Send the commit without waiting for it; returns the events of earlier such commits
        whose lease had expired (delivered again by another take: duplicates)."""

    def settle(self) -> int:
        """Wait for every commit sent by :meth:`commit_later`; returns what :meth:`commit_later`
        returns for them."""


SOURCE_COUNTERS = ("EventReceivedCount", "EventAcceptedCount", "AppendBatchReceivedCount",
                   "AppendBatchAcceptedCount", "ChannelWriteFail", "EventReadFail",
                   "GenericProcessingFail", "OptionalChannelWriteFail", "EventDroppedByInterceptorCount",
                   "EventRejectedCount")
SINK_COUNTERS = ("ConnectionCreatedCount", "ConnectionClosedCount", "ConnectionFailedCount",
                 "BatchEmptyCount", "BatchUnderflowCount", "BatchCompleteCount",
                 "EventDrainAttemptCount", "EventDrainSuccessCount", "EventWriteFail",
                 "ChannelReadFail", "RollbackCount", "DuplicateDeliveryCount")


def _tally(required: dict, events: int) -> tuple | None:
    """The channel that counts a batch as accepted: the first of its required channels by name."""
    return (min(required), events) if required else None


class _Runner:
    """What source and sink runners share: a name, their counters (created here), the last error
    (None while things go well) and a tap (a new, disarmed one by default)."""

    def __init__(self, name: str, counters: Counters, counter_names: tuple[str, ...], tap: TapPoint | None):
        self.name = name
        self.counters = counters
        counters.create(counter_names)
        self.last_error: str | None = None
        self.tap = tap if tap is not None else TapPoint()


class SourceRunner(_Runner):
    """Drives one source. ``put_many(subbatches, txn_id, tally)`` puts sub-batches into channels
    concurrently and returns ``{channel: exception or None}``; the runner retries the failed
    required ones. ``tally`` is ``(channel, events)`` or None: the one channel of the batch that
    counts it as this source's accepted events (see :mod:`rayflume._private.ledger`), and how many.

    Delivery: a batch is acknowledged to the source only after every required channel committed
    it. Optional channels are tried once; their failures are counted and logged.

    ``tap`` (a new, disarmed :class:`~rayflume._private.tap.TapPoint` by default) is offered each
    intercepted batch once its required channels committed it, while someone reads the tap.
    """

    def __init__(self, name: str, source: Source, chain: InterceptorChain, selector: ChannelSelector,
                 put_many: Callable[[dict[str, EventBatch], str, tuple | None], dict[str, BaseException | None]],
                 counters: Counters, backoff: Backoff | None = None, idle_backoff: Backoff | None = None,
                 tap: TapPoint | None = None):
        super().__init__(name, counters, SOURCE_COUNTERS, tap)
        self.source = source
        self.chain = chain
        self.selector = selector
        self.put_many = put_many
        self.backoff = backoff or Backoff(0.05, 5.0)
        self.idle_backoff = idle_backoff or Backoff(0.005, 0.5)
        self.stopping = threading.Event()
        self._volume_lock = threading.Lock()  # the cap on distinct values is checked, then kept
        # Per-value volume (topology ``volume: {header: NAME}``): None costs nothing per batch.
        self.volume_header: str | None = None
        self.volume_max_values = 200

    def run_once(self) -> bool:
        """Poll once and deliver what came; True if a batch was delivered."""
        try:
            batch = self.source.poll()
        except Exception as exc:
            self.counters.add("EventReadFail", 1)
            self._note_error(f"read failed: {exc!r}")
            self._sleep(self.backoff.next_delay())
            return False
        if batch is None or len(batch) == 0:
            if batch is not None:
                self.source.ack()
            if not self.source.waits_in_poll:
                self._sleep(self.idle_backoff.next_delay())
            return False
        self.idle_backoff.reset()
        self.counters.add("EventReceivedCount", len(batch))
        self.counters.add("AppendBatchReceivedCount", 1)
        if not self.deliver(batch):
            return False
        self.source.ack()
        return True

    def deliver(self, batch: EventBatch) -> bool:
        """Intercept, route and put until committed; False only if stopped before that."""
        intercepted = self.chain.intercept(batch)
        self.counters.add("EventDroppedByInterceptorCount", len(batch) - len(intercepted))
        routing = self.selector.route(intercepted)
        txn_id = uuid.uuid4().hex
        pending = dict(routing.required)
        tally = _tally(routing.required, len(intercepted))
        while pending:
            results = self.put_many(pending, txn_id, tally if tally and tally[0] in pending else None)
            failed = {ch: exc for ch, exc in results.items() if exc is not None}
            if not failed:
                break
            pending = {ch: pending[ch] for ch in failed}
            self.counters.add("ChannelWriteFail", 1)
            for ch, exc in failed.items():
                kind = "full" if isinstance(exc, ChannelFull) else "failed"
                self._note_error(f"channel '{ch}' {kind}: {exc}; keeping the batch and retrying",
                                 level=logging.DEBUG if kind == "full" else logging.WARNING)
            if not self.source.on_put_failure(failed):
                self.counters.add("EventRejectedCount", len(intercepted))
                return False
            if self.stopping.is_set():
                return False
            self._sleep(self.backoff.next_delay())
        self.backoff.reset()
        if self.volume_header is not None:
            self._count_volume(intercepted)
        if self.tap.armed:  # the whole cost of the tap while nobody reads it
            self.tap.offer(intercepted)
        if routing.optional:
            # A channel can be required for some events and optional for others: the optional put
            # needs its own id, or the channel would take it for a retry of the required one.
            for ch, refusal in self.put_many(routing.optional, txn_id + ":optional", None).items():
                if refusal is not None:
                    self.counters.add("OptionalChannelWriteFail", 1)
                    self._note_error(f"optional channel '{ch}' refused a batch: {refusal}")
        self.counters.add("EventAcceptedCount", len(intercepted))
        self.counters.add("AppendBatchAcceptedCount", 1)
        self.last_error = None
        return True

    def deliver_once(self, batch: EventBatch, txn_id: str) -> None:
        """Intercept, route and put ``batch`` once; raise the first refusal of a required channel.

        For batches pushed by a caller that retries on its own (a tier hop): channels deduplicate
        by ``txn_id``, so the caller's retry with the same id is not stored twice. Thread-safe.
        With no interceptors and a selector that does not read events, ``batch`` may be anything
        with a length that ``put_many`` understands (a batch passed by reference).
        """
        intercepted = self.chain.intercept(batch)
        routing = self.selector.route(intercepted)
        tally = _tally(routing.required, len(intercepted))
        failed = {ch: exc for ch, exc in self.put_many(routing.required, txn_id, tally).items() if exc is not None}
        self.counters.add("EventReceivedCount", len(batch))
        self.counters.add("AppendBatchReceivedCount", 1)
        self.counters.add("EventDroppedByInterceptorCount", len(batch) - len(intercepted))
        if failed:
            self.counters.add("ChannelWriteFail", 1)
        if failed:
            ch, exc = next(iter(failed.items()))
            raise exc
        if self.tap.armed:  # a batch passed by reference is read only here, only while tapped
            self.tap.offer(intercepted)
        if routing.optional:
            for refusal in self.put_many(routing.optional, txn_id + ":optional", None).values():
                if refusal is not None:
                    self.counters.add("OptionalChannelWriteFail", 1)
        if self.volume_header is not None:
            self._count_volume(intercepted)
        self.counters.add("EventAcceptedCount", len(intercepted))
        self.counters.add("AppendBatchAcceptedCount", 1)

    def _count_volume(self, batch) -> None:
        """Count the committed ``batch``'s values of ``volume_header`` into ``Volume.<value>``
        counters (one Arrow ``value_counts``, no loop over events; bounded, see
        :func:`rayflume._private.volume.count_header_values`). A batch passed by reference
        (not read here) is not counted."""
        if not isinstance(batch, EventBatch) or len(batch) == 0 or self.volume_header is None:
            return
        counts = pc.value_counts(batch.header(self.volume_header))
        with self._volume_lock:
            count_header_values(self.counters, zip(counts.field("values").to_pylist(),
                                                   counts.field("counts").to_pylist()),
                                self.volume_max_values)

    def run(self) -> None:
        while not self.stopping.is_set() and not self.source.finished:
            try:
                self.run_once()
            except Exception as exc:  # never let the loop die: count, log, back off
                self.counters.add("GenericProcessingFail", 1)
                self._note_error(f"unexpected error: {exc!r}", exc_info=True)
                self._sleep(self.backoff.next_delay())

    def _note_error(self, message: str, level: int = logging.WARNING, exc_info: bool = False) -> None:
        self.last_error = message
        logger.log(level, "source '%s': %s", self.name, message, exc_info=exc_info)

    def _sleep(self, seconds: float) -> None:
        self.stopping.wait(seconds)


class SinkRunner(_Runner):
    """One sink over its channel: ``process()`` is a single take -> write -> commit.

    Returns READY after a committed batch and BACKOFF when the channel had nothing; raises
    DeliveryError after rolling the take back when the sink failed. ``tap`` (a new, disarmed
    :class:`~rayflume._private.tap.TapPoint` by default) is offered each batch the sink wrote,
    while someone reads the tap.

    Pause (:meth:`set_paused`, from the sink group's actor): the batch in hand is finished by the
    ``process()`` call that took it (written and committed, or rolled back); after that,
    ``process()`` takes nothing and returns BACKOFF, and :meth:`park` returns a prefetched take to
    the head of the channel and waits for the outstanding commits, so a paused sink holds no lease
    and every event it did not write stays in the channel, in order. The ``Paused`` counter (a
    0/1 gauge) becomes 1 once that is done (nothing in hand, nothing more written) and 0 at resume.
    """

    def __init__(self, name: str, sink: Sink, channel: ChannelPort, holder: str, counters: Counters,
                 take_timeout_s: float = 0.1, pipelined: bool = False, tap: TapPoint | None = None):
        super().__init__(name, counters, SINK_COUNTERS, tap)
        counters.create(["Paused"])  # a level (0/1), not a total: not in SINK_COUNTERS
        # Pipelined (one sink draining its channel alone): the next take is in flight while this
        # batch is written, and commits are not waited for (their outcome is reaped later), with
        # the port's pipelined calls (see ChannelPort).
        self.pipelined = pipelined
        self.sink = sink
        self.channel = channel
        self.holder = holder
        self.take_timeout_s = take_timeout_s
        # Set from the actor's threads, read by the group's thread between batches (a bool swap).
        self.paused = False
        self._parked = False  # paused, and its prefetched take and pending commits are settled
        self._pause_lock = threading.Lock()  # keeps the gauge right when a resume meets a park

    def set_paused(self, paused: bool) -> None:
        """Pause or resume; takes effect at the next ``process()`` (the batch in hand is finished)."""
        with self._pause_lock:
            if paused and not self.paused:
                # A new pause: whatever was prefetched since the last one must be parked again. (Only
                # the group's thread parks and takes, so a park running now finishes before any take.)
                self._parked = False
            self.paused = bool(paused)
            if not paused:
                self.counters.set("Paused", 0)

    def park(self) -> None:
        """While paused, hold nothing: roll a prefetched take back to the head of the channel and
        wait for pending commits (pipelined mode). Raises when the channel cannot be reached (the
        caller retries: until it succeeded the sink may still hold a lease). Once done it does
        nothing until the next pause."""
        if not self.paused or self._parked:
            return
        if self.pipelined:
            try:
                self.channel.release_prefetched()
                self.counters.add("DuplicateDeliveryCount", self.channel.settle())
            except Exception as exc:
                raise DeliveryError(f"sink '{self.name}' is paused but cannot settle its last takes with its "
                                    f"channel yet ({exc!r}); retrying") from exc
        with self._pause_lock:
            if self.paused:  # not resumed meanwhile
                self._parked = True
                self.counters.set("Paused", 1)

    def process(self) -> Status:
        if self.paused:  # processors skip paused sinks; this keeps any other caller from taking
            self.park()
            return Status.BACKOFF
        try:
            got = self.channel.take(self.sink.batch_size, self.holder, self.take_timeout_s)
        except Exception as exc:
            self.counters.add("ChannelReadFail", 1)
            raise DeliveryError(f"sink '{self.name}': cannot take from its channel: {exc}") from exc
        if got is None:
            self.counters.add("BatchEmptyCount", 1)
            return Status.BACKOFF
        lease_id, batch = got
        n = len(batch)
        self.counters.add("EventDrainAttemptCount", n)
        if self.pipelined:
            self.channel.prefetch(self.sink.batch_size, self.holder, self.take_timeout_s)
        try:
            self.sink.write(batch)
        except Exception as exc:
            self.counters.add("EventWriteFail", 1)
            self.counters.add("RollbackCount", 1)
            self.last_error = f"write failed: {exc!r}"
            try:
                if self.pipelined:
                    # the later events first, so that both batches return to the head in order
                    self.channel.release_prefetched()
                self.channel.rollback(lease_id)
            except Exception:
                # The lease expires on its own and the events return to the channel.
                logger.warning("sink '%s': rollback failed; the lease will expire", self.name)
            raise DeliveryError(f"sink '{self.name}' failed to deliver {n} events: {exc}") from exc
        if self.pipelined:
            self.counters.add("DuplicateDeliveryCount", self.channel.commit_later(lease_id, n))
        else:
            try:
                self.channel.commit(lease_id)
            except LeaseUnknown:
                # Delivered, but the lease expired first: the events will be delivered again.
                self.counters.add("DuplicateDeliveryCount", n)
        if self.tap.armed:  # the whole cost of the tap while nobody reads it
            self.tap.offer(batch)
        self.counters.add("EventDrainSuccessCount", n)
        if n >= self.sink.batch_size:
            self.counters.add("BatchCompleteCount", 1)
        else:
            self.counters.add("BatchUnderflowCount", 1)
        self.last_error = None
        return Status.READY

    def close(self) -> None:
        """Return a prefetched take and wait for outstanding commits (pipelined mode)."""
        if self.pipelined:
            try:
                self.channel.release_prefetched()
                self.counters.add("DuplicateDeliveryCount", self.channel.settle())
            except Exception:
                logger.warning("sink '%s': could not settle its last takes; leases will expire", self.name)


PAUSED_POLL_S = 0.1  # how soon a group whose sinks are all paused notices a resume


def run_sink_group(processor, runners: list[SinkRunner], stopping: threading.Event,
                   maintain_every_s: float = 0.5) -> None:
    """The sink-group loop: process until stopped; back off when idle or failing.

    Paused sinks are parked between batches (see :meth:`SinkRunner.park`) and skipped by the
    processors; while every sink of the group is paused nothing is taken and the loop only waits
    for a resume (and keeps calling the sinks' ``maintain()``, so their roll and idle rules go on
    closing files)."""
    backoff = Backoff(0.1, 5.0)
    last_maintain = 0.0
    while not stopping.is_set():
        try:
            paused = [r for r in runners if r.paused]
            for r in paused:
                r.park()
            if len(paused) == len(runners):
                stopping.wait(PAUSED_POLL_S)
            # BACKOFF needs no sleep here: take() already waited take_timeout_s for data; unless
            # some sinks are paused, when the processor may have found none it could use without
            # taking anything (a failover group's primary paused and its backup penalised)
            elif processor.process() is Status.BACKOFF and paused:
                stopping.wait(PAUSED_POLL_S)
            backoff.reset()
        except DeliveryError as exc:
            logger.warning("%s; backing off", exc)
            stopping.wait(backoff.next_delay())
        except Exception:
            logger.exception("sink group: unexpected error; backing off")
            stopping.wait(backoff.next_delay())
        now = time.monotonic()
        if now - last_maintain >= maintain_every_s:
            last_maintain = now
            for r in runners:
                try:
                    r.sink.maintain()
                except Exception:
                    logger.exception("sink '%s': maintain() failed", r.name)
