"""The channel contract every channel type implements.

A channel is a bounded queue of event batches with Flume's transaction semantics, made safe for
actor calls that may be retried:

* ``put(batch, txn_id)`` enqueues the whole batch or nothing. It is idempotent per ``txn_id``: a
  retried put with an id the channel has already committed is a no-op. When there is no room it
  raises :class:`~rayflume.errors.ChannelFull` and enqueues nothing.
* ``take(max_events, holder)`` leases up to ``max_events`` events from the head and returns
  ``(lease_id, batch)``, or ``None`` when the channel is empty. Leased events stay owned by the
  channel until ``commit(lease_id)`` removes them or ``rollback(lease_id)`` returns them to the head.
  A lease not settled within ``lease_timeout_s`` is rolled back by the channel. Commit and rollback
  are idempotent; committing a lease that already expired raises
  :class:`~rayflume.errors.LeaseUnknown` (its events were returned and will be delivered again).
* ``release(holder)`` rolls back every lease of ``holder`` (used when a sink restarts).
* ``renew(holder)`` extends every lease ``holder`` has now to ``lease_timeout_s`` from now and
  returns ``lease_timeout_s``. A live taker renews well within that period (a sink group does it
  from a heartbeat thread), so its leases expire only once it stopped renewing for
  ``lease_timeout_s``: a slow write does not lose its lease, a dead taker's events come back.
  Leases taken after the call, and other holders' leases, are not affected.
* ``wait_for_batch(n, timeout_s)`` lets a sink fill its batches: it waits until ``n`` events are
  ready to take, for channels that can tell (``ready_events()`` is not None).

Implementations are thread-safe: the channel actor calls them from several threads. The lease half
(leases in flight, expiry, idempotent settling, the take-and-wait loop) is implemented once, in
:mod:`rayflume.channels.leases`.
"""
from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field

from rayflume.event import EventBatch

# How many settled transaction and lease ids a channel remembers to make retries no-ops.
IDEMPOTENCY_WINDOW = 100_000


@dataclass
class Lease:
    """Events handed to a taker and not yet committed or rolled back."""

    lease_id: str
    holder: str
    batches: list[EventBatch]
    expires_at: float
    events: int = 0
    nbytes: int = 0
    committing: bool = False  # a commit is in flight: rollback, release and expiry leave it alone


class IdWindow:
    """A bounded set of recently seen ids (oldest forgotten first), each with an optional value
    (how a lease ended, for instance). Not thread-safe."""

    def __init__(self, size: int = IDEMPOTENCY_WINDOW):
        self._ids: OrderedDict[str, str | None] = OrderedDict()
        self._size = size

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def add(self, key: str, value: str | None = None) -> None:
        self._ids[key] = value
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def get(self, key: str) -> str | None:
        """The value ``key`` was added with; None as well when it is not (or no longer) held."""
        return self._ids.get(key)

    def items(self) -> list[str]:
        return list(self._ids)


@dataclass
class ChannelCounters:
    """Flume's CHANNEL counters."""

    EventPutAttemptCount: int = 0
    EventPutSuccessCount: int = 0
    EventTakeAttemptCount: int = 0
    EventTakeSuccessCount: int = 0
    EventPutErrorCount: int = 0
    EventTakeErrorCount: int = 0
    RollbackCount: int = 0
    LeaseExpiredCount: int = 0
    DuplicatePutCount: int = 0
    extra: dict = field(default_factory=dict)


class Channel(ABC):
    """A bounded transactional queue of batches. See the module docstring for the contract."""

    def __init__(self, name: str, capacity: int, transaction_capacity: int,
                 byte_capacity: int | None = None, lease_timeout_s: float = 60.0):
        self.name = name
        self.capacity = capacity
        self.transaction_capacity = transaction_capacity
        self.byte_capacity = byte_capacity
        self.lease_timeout_s = lease_timeout_s
        self.counters = ChannelCounters()
        self._lock = threading.RLock()
        self._not_empty = threading.Condition(self._lock)

    # -- the contract --------------------------------------------------------------------------
    @abstractmethod
    def put(self, batch: EventBatch, txn_id: str) -> None:
        """Enqueue ``batch`` atomically; a no-op when ``txn_id`` was already committed."""

    @abstractmethod
    def take(self, max_events: int, holder: str = "", timeout_s: float = 0.0) -> tuple[str, EventBatch] | None:
        """Lease up to ``max_events`` from the head, waiting up to ``timeout_s`` for one; None if empty."""

    @abstractmethod
    def commit(self, lease_id: str) -> None:
        """Remove the leased events for good. Idempotent."""

    @abstractmethod
    def rollback(self, lease_id: str) -> None:
        """Return the leased events to the head of the queue. Idempotent."""

    @abstractmethod
    def release(self, holder: str) -> int:
        """Roll back every lease held by ``holder``; returns how many events came back."""

    @abstractmethod
    def renew(self, holder: str) -> float:
        """Extend every lease of ``holder`` to ``lease_timeout_s`` from now; returns ``lease_timeout_s``."""

    @abstractmethod
    def expire_leases(self) -> int:
        """Roll back leases older than ``lease_timeout_s``; returns how many events came back."""

    @abstractmethod
    def size(self) -> int:
        """Events in the channel, leased or not."""

    def ready_events(self) -> int | None:
        """Events queued and not leased; None when the channel cannot tell without taking."""
        return None

    def wait_for_batch(self, max_events: int, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` until ``max_events`` events are ready to take.

        Returns early once they are, and at once when ``ready_events()`` is None. Takes nothing:
        a sink calls it before ``take`` to trade a little latency for full batches.
        """
        deadline = now() + timeout_s
        with self._not_empty:
            while True:
                ready = self.ready_events()
                remaining = deadline - now()
                if ready is None or ready >= max_events or remaining <= 0:
                    return
                self._not_empty.wait(remaining)

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes in the channel, leased or not."""

    def close(self) -> None:
        """Release resources (files, locks). The channel is unusable afterwards."""

    # -- shared helpers --------------------------------------------------------------------------
    @staticmethod
    def new_lease_id() -> str:
        return uuid.uuid4().hex

    def _check_put_size(self, batch: EventBatch) -> None:
        from rayflume.errors import TransactionTooLarge

        if len(batch) > self.transaction_capacity:
            raise TransactionTooLarge(
                f"channel '{self.name}': a put of {len(batch)} events exceeds transaction_capacity="
                f"{self.transaction_capacity}; lower the source's batch_size or raise the channel's "
                f"transaction_capacity")

    def _check_take_size(self, max_events: int) -> None:
        from rayflume.errors import TransactionTooLarge

        if max_events > self.transaction_capacity:
            raise TransactionTooLarge(
                f"channel '{self.name}': a take of {max_events} events exceeds transaction_capacity="
                f"{self.transaction_capacity}; lower the sink's batch_size")

    def _check_room(self, batch: EventBatch) -> None:
        from rayflume.errors import ChannelFull

        if self.size() + len(batch) > self.capacity:
            raise ChannelFull(
                f"channel '{self.name}' is full ({self.size()}/{self.capacity} events); sinks are not "
                f"keeping up: add sinks, raise capacity, or let the source back off")
        if self.byte_capacity is not None and self.nbytes() + batch.nbytes > self.byte_capacity:
            raise ChannelFull(
                f"channel '{self.name}' is full ({self.nbytes()}/{self.byte_capacity} bytes); sinks are "
                f"not keeping up: add sinks, raise byte_capacity, or let the source back off")

    def metrics(self) -> dict:
        """Flume's CHANNEL counters as a flat dict."""
        with self._lock:
            size = self.size()
            c = self.counters
            out = {k: v for k, v in vars(c).items() if k != "extra"}
            out.update(c.extra)
            out.update(ChannelSize=size, ChannelCapacity=self.capacity,
                       ChannelFillPercentage=round(100.0 * size / self.capacity, 3),
                       ChannelBytes=self.nbytes())
            return out


def split_for_take(batches, max_events: int) -> tuple[list[EventBatch], list[EventBatch]]:
    """Split a head-first list of batches into (taken, rest) with at most ``max_events`` taken.

    Slices the last batch when it straddles the limit (zero-copy).
    """
    taken: list[EventBatch] = []
    n = 0
    rest = list(batches)
    while rest and n < max_events:
        head = rest[0]
        room = max_events - n
        if len(head) <= room:
            taken.append(rest.pop(0))
            n += len(head)
        else:
            taken.append(head.slice(0, room))
            rest[0] = head.slice(room)
            n += room
    return taken, rest


def now() -> float:
    return time.monotonic()
