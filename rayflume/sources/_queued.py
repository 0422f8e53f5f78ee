"""The base of the network sources (:class:`QueuedSource`) and how server threads hand events to
the runner: a bounded :class:`HandOff` queue of :class:`Item` objects, each optionally carrying a
:class:`Completion` that the source completes in ``ack()`` (the batch is committed to every
required channel) or with a failure in ``on_put_failure()`` / ``stop()``. A server thread that must
answer its client after the commit (HTTP 200, netcat ``OK``) waits on that completion, always with
a timeout.

Backpressure: the queue is bounded in bytes. A TCP reader blocks in :meth:`HandOff.put` when it
is full, so it stops reading and the client's TCP window closes; a UDP reader or an HTTP request
uses a non-blocking put and drops (UDP, counted) or answers 503 (HTTP).
"""
from __future__ import annotations

import abc
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rayflume.counters import Counters
from rayflume.errors import ChannelFull, TransactionTooLarge
from rayflume.event import EventBatch
from rayflume.sources._network import CONNECTION_COUNTERS
from rayflume.sources.base import Source, SourceContext

POLL_WAIT_S = 0.1


class Completion:
    """The outcome of one handed-off item, waited for by the server thread that produced it.

    States: queued -> taken (by ``poll``) -> succeeded / failed; or queued -> cancelled (the waiter
    gave up before ``poll`` took it, so it is never delivered). Transitions are atomic; the first
    final state wins.
    """

    QUEUED, TAKEN, SUCCEEDED, FAILED, CANCELLED = range(5)

    __slots__ = ("_lock", "_done", "state", "status", "reason")

    def __init__(self):
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.state = Completion.QUEUED
        self.status: int | None = None   # a protocol status for the client (e.g. HTTP 503)
        self.reason = ""

    def _taken(self) -> bool:
        """Mark taken by ``poll``; False if cancelled (or already final). A requeued item is
        taken again."""
        with self._lock:
            if self.state not in (Completion.QUEUED, Completion.TAKEN):
                return False
            self.state = Completion.TAKEN
            return True

    def succeed(self) -> None:
        with self._lock:
            if self.state in (Completion.QUEUED, Completion.TAKEN):
                self.state = Completion.SUCCEEDED
        self._done.set()

    def fail(self, status: int | None, reason: str) -> None:
        with self._lock:
            if self.state in (Completion.QUEUED, Completion.TAKEN):
                self.state = Completion.FAILED
                self.status = status
                self.reason = reason
        self._done.set()

    def cancel(self) -> bool:
        """Withdraw a queued item. False when ``poll`` already took it (it may still commit)."""
        with self._lock:
            if self.state != Completion.QUEUED:
                return self.state == Completion.CANCELLED
            self.state = Completion.CANCELLED
        self._done.set()
        return True

    def wait(self, timeout_s: float | None) -> bool:
        """True once the item succeeded or failed (see ``state``); False on timeout."""
        return self._done.wait(timeout_s)

    @property
    def succeeded(self) -> bool:
        return self.state == Completion.SUCCEEDED


@dataclass
class Item:
    """One unit handed to ``poll``: a source-specific payload with its size and completion."""

    payload: Any
    events: int
    nbytes: int
    completion: Completion | None = None
    solo: bool = False          # deliver in a batch of its own (set after a too-large merged put)
    extra: dict = field(default_factory=dict)


class HandOff:
    """A bounded FIFO of :class:`Item` between server threads and the runner. Thread-safe.

    Bounded by ``max_bytes`` of payload; one item larger than that is still accepted into an
    empty queue, so nothing is ever too large to pass. Cancelled items are skipped by ``take``.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: deque[Item] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def closed(self) -> bool:
        return self._closed

    def _room(self, nbytes: int) -> bool:
        return not self._items or self._bytes + nbytes <= self.max_bytes

    def put(self, item: Item, block: bool = True, timeout_s: float | None = None) -> bool:
        """Queue ``item``; False when closed, or when full and not blocking (or timed out)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not self._closed and not self._room(item.nbytes):
                if not block:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 0.5)
            if self._closed:
                return False
            self._items.append(item)
            self._bytes += item.nbytes
            self._cond.notify_all()
            return True

    def take(self, max_events: int, wait_s: float = 0.0) -> list[Item]:
        """The oldest items, merged while their events fit in ``max_events`` (always at least
        one item if any is queued; a ``solo`` item is returned alone). Waits up to ``wait_s``
        for the first item."""
        out: list[Item] = []
        events = 0
        with self._cond:
            if not self._items and wait_s > 0 and not self._closed:
                self._cond.wait(wait_s)
            while self._items:
                item = self._items[0]
                if out and (item.solo or events + item.events > max_events):
                    break
                self._items.popleft()
                self._bytes -= item.nbytes
                if item.completion is not None and not item.completion._taken():
                    continue  # cancelled by its waiter: never delivered
                out.append(item)
                events += item.events
                if item.solo:
                    break
            if out:
                self._cond.notify_all()
        return out

    def requeue_front(self, items: list[Item]) -> None:
        """Put taken items back at the head, in order (their completions stay taken)."""
        with self._cond:
            for item in reversed(items):
                self._items.appendleft(item)
                self._bytes += item.nbytes
            self._cond.notify_all()

    def close(self) -> list[Item]:
        """Refuse further puts, wake every waiter, and return what was still queued."""
        with self._cond:
            self._closed = True
            left = list(self._items)
            self._items.clear()
            self._bytes = 0
            self._cond.notify_all()
        return left


class QueuedSource(Source):
    """Base of the network sources: server threads :meth:`submit` items, ``poll`` merges queued
    items (up to ``batch_size`` events) into one batch with :meth:`assemble`, ``ack`` completes
    their completions successfully.

    ``on_put_failure`` keeps the batch by default (the runner retries; server threads meanwhile
    block or drop as the queue fills). ``stop`` closes the servers, then fails every completion
    still pending so no client waits for ever.
    """

    counter_names: tuple[str, ...] = CONNECTION_COUNTERS
    waits_in_poll = True  # poll waits on the hand-off queue itself

    def __init__(self, name: str, batch_size: int, buffer_bytes: int):
        self.name = name
        self.batch_size = batch_size
        self.handoff = HandOff(buffer_bytes)
        self._pending_items: list[Item] | None = None
        self._pending_batch: EventBatch | None = None
        self._stopped = threading.Event()
        self.counters: Counters | None = None

    # subclasses ----------------------------------------------------------------------------------
    def open(self) -> None:
        """Start the servers (called by ``start``)."""

    def close(self) -> None:
        """Stop the servers and close every connection (called by ``stop``)."""

    @abc.abstractmethod
    def assemble(self, items: list[Item]) -> EventBatch:
        """One batch of the events of ``items`` (called by ``poll``, on the runner's thread)."""

    # lifecycle -----------------------------------------------------------------------------------
    def start(self, context: SourceContext) -> None:
        super().start(context)
        self.counters = context.counters
        self.counters.create(self.counter_names)
        self.open()

    def set_bound_port(self, port: int) -> None:
        self.bound_port = port
        self.counters.set("BoundPort", port)

    def poll(self) -> EventBatch | None:
        if self._pending_batch is not None:
            return self._pending_batch
        if self._stopped.is_set():
            return None
        items = self.handoff.take(self.batch_size, wait_s=POLL_WAIT_S)
        if not items:
            return None
        try:
            batch = self.assemble(items)
        except Exception as exc:
            for item in items:
                if item.completion is not None:
                    item.completion.fail(500, f"the source could not build events: {exc}")
            raise
        self._pending_items = items
        self._pending_batch = batch
        return batch

    def ack(self) -> None:
        items, self._pending_items, self._pending_batch = self._pending_items, None, None
        for item in items or ():
            if item.completion is not None:
                item.completion.succeed()

    def abandon(self, status: int | None, reason: str) -> None:
        """Fail the pending batch's completions and forget it (the runner will poll again)."""
        items, self._pending_items, self._pending_batch = self._pending_items, None, None
        for item in items or ():
            if item.completion is not None:
                item.completion.fail(status, reason)

    def requeue_pending_solo(self) -> None:
        """Return the pending batch's items to the head of the queue, each to be delivered alone."""
        items, self._pending_items, self._pending_batch = self._pending_items, None, None
        for item in items or ():
            item.solo = True
        self.handoff.requeue_front(items or [])

    @property
    def pending_items(self) -> list[Item]:
        return list(self._pending_items or ())

    def stop(self) -> None:
        # Fail what waits first, so server threads can still answer their clients (HTTP 503)
        # before ``close`` shuts their connections.
        self._stopped.set()
        try:
            for item in self.handoff.close():
                if item.completion is not None:
                    item.completion.fail(503, "the source is stopping")
            self.abandon(503, "the source is stopping")
        finally:
            self.close()


class ReplyingSource(QueuedSource):
    """A source whose clients wait for an answer per request (``http``, ``avro``): a request's
    events are queued as one item, all-or-nothing, and :meth:`submit` waits for their commit.

    Failures are reported with HTTP-style statuses (413: more events than a channel's transaction
    takes, 503: retry later), which other protocols map to their own failure answer. A failed put
    is never retried by the runner: the client was told to retry, so the source moves on.
    Set ``commit_timeout_s`` on the instance.
    """

    commit_timeout_s: float = 30.0

    def submit(self, batch: EventBatch) -> tuple[int, str, dict | None]:
        """Queue a request's events and wait for their commit: ``(status, message, headers)``,
        200 when committed."""
        n = len(batch)
        if n == 0:
            return 200, "", None
        retry = {"Retry-After": "1"}
        completion = Completion()
        if not self.handoff.put(Item(batch, n, batch.nbytes, completion), block=False):
            self.counters.add("EventRejectedCount", n)
            reason = "the source is stopping" if self.handoff.closed else "the source's queue is full"
            return 503, f"{reason}; retry later", retry
        if not completion.wait(self.commit_timeout_s):
            if completion.cancel():
                return 503, (f"not accepted: the channel did not take the events within {self.commit_timeout_s}s; "
                             f"retry later"), retry
            return 503, (f"timed out after {self.commit_timeout_s}s waiting for the commit; the events may still "
                         f"be committed, so a retry may duplicate them"), retry
        if completion.succeeded:
            return 200, "", None
        status = completion.status or 503
        return status, completion.reason, (retry if status == 503 else None)

    # -- runner side ------------------------------------------------------------------------------
    def assemble(self, items: list[Item]) -> EventBatch:
        return EventBatch.concat([item.payload for item in items])

    def on_put_failure(self, errors: dict[str, BaseException]) -> bool:
        items = self.pending_items
        too_large = [ch for ch, exc in errors.items() if isinstance(exc, TransactionTooLarge)]
        if too_large:
            if len(items) > 1:
                self.requeue_pending_solo()  # merged requests too large together: retry them one by one
                return False
            n = items[0].events if items else 0
            self.abandon(413, f"the request holds {n} events, more than the transaction_capacity of channel "
                              f"'{too_large[0]}'; send fewer events per request")
            return False
        full = [ch for ch, exc in errors.items() if isinstance(exc, ChannelFull)]
        if full:
            self.abandon(503, f"channel '{full[0]}' is full; retry later")
        else:
            ch, exc = next(iter(errors.items()))
            self.abandon(503, f"channel '{ch}' is unavailable ({type(exc).__name__}); retry later")
        return False
