"""The ``memory`` channel: fast, bounded, and lost if its actor dies.

Batches are held in the channel actor's heap, in arrival order. Capacity counts events and,
optionally, bytes of Arrow buffers (headers and bodies). Delivery guarantee: at-least-once while
the channel actor lives; everything it holds is lost when the actor process dies.
"""
from __future__ import annotations

from collections import deque

from pydantic import Field

from rayflume.channels.base import IdWindow, Lease, split_for_take
from rayflume.channels.leases import LeasedChannel, LeaseTable
from rayflume.config_base import ChannelConfig
from rayflume.event import EventBatch
from rayflume.registry import register


class LeasedQueue:
    """The in-memory queue behind the memory channel and the spillable channel's memory part:
    batches in order, and how many events and bytes are queued and leased. It hands out leases and
    takes them back; which leases are in flight is its owner's to track (a
    :class:`~rayflume.channels.leases.LeaseTable`, or the spillable channel's lease parts).

    Not thread-safe on its own: callers hold the channel's lock.
    """

    def __init__(self):
        self.batches: deque[EventBatch] = deque()
        self.queued_events = 0
        self.queued_bytes = 0
        self.leased_events = 0
        self.leased_bytes = 0

    def append(self, batch: EventBatch) -> None:
        self.batches.append(batch)
        self.queued_events += len(batch)
        self.queued_bytes += batch.nbytes

    def lease(self, max_events: int, holder: str, lease_id: str, expires_at: float) -> Lease | None:
        """Lease up to ``max_events`` events from the head; None when the queue is empty."""
        if not self.batches:
            return None
        taken, rest = split_for_take(self._head_for(max_events), max_events)
        for b in reversed(rest):
            self.batches.appendleft(b)
        lease = Lease(lease_id, holder, taken, expires_at,
                      events=sum(len(b) for b in taken), nbytes=sum(b.nbytes for b in taken))
        self.queued_events -= lease.events
        self.queued_bytes -= lease.nbytes
        self.leased_events += lease.events
        self.leased_bytes += lease.nbytes
        return lease

    def _head_for(self, max_events: int) -> list[EventBatch]:
        head, n = [], 0
        while self.batches and n < max_events:
            b = self.batches.popleft()
            head.append(b)
            n += len(b)
        return head

    def drop(self, lease: Lease) -> None:
        """``lease`` was committed: its events leave for good."""
        self.leased_events -= lease.events
        self.leased_bytes -= lease.nbytes

    def give_back(self, lease: Lease) -> int:
        """Return ``lease``'s events to the head, in their order; how many came back."""
        self.drop(lease)
        for b in reversed(lease.batches):
            self.batches.appendleft(b)
        self.queued_events += lease.events
        self.queued_bytes += lease.nbytes
        return lease.events


class MemoryChannel(LeasedChannel):
    """Queue of batches in the actor's memory. Thread-safe."""

    _leases: LeaseTable[Lease]

    def __init__(self, name: str, capacity: int = 100_000, transaction_capacity: int = 10_000,
                 byte_capacity: int | None = None, lease_timeout_s: float = 60.0):
        super().__init__(name, capacity, transaction_capacity, byte_capacity, lease_timeout_s)
        self._q = LeasedQueue()
        self._committed_txns = IdWindow()

    def put(self, batch: EventBatch, txn_id: str) -> None:
        with self._lock:
            self.counters.EventPutAttemptCount += len(batch)
            if txn_id in self._committed_txns:
                self.counters.DuplicatePutCount += len(batch)
                return
            try:
                self._check_put_size(batch)
                self._check_room(batch)
            except Exception:
                self.counters.EventPutErrorCount += len(batch)
                raise
            if len(batch):
                self._q.append(batch)
            self._committed_txns.add(txn_id)
            self.counters.EventPutSuccessCount += len(batch)
            self._not_empty.notify_all()

    def _lease_head(self, max_events: int, holder: str) -> tuple[Lease, list[EventBatch]] | None:
        lease = self._q.lease(max_events, holder, self.new_lease_id(), self._leases.expiry())
        return None if lease is None else (lease, lease.batches)

    def _give_back(self, lease: Lease) -> int:
        return self._q.give_back(lease)

    def commit(self, lease_id: str) -> None:
        with self._lock:
            lease = self._leases.commit(lease_id)
            if lease is not None:
                self._q.drop(lease)

    def ready_events(self) -> int:
        return self._q.queued_events

    def size(self) -> int:
        with self._lock:
            return self._q.queued_events + self._q.leased_events

    def nbytes(self) -> int:
        with self._lock:
            return self._q.queued_bytes + self._q.leased_bytes


@register("channel", "memory")
class MemoryChannelConfig(ChannelConfig):
    """``memory``: capacity in events (and optionally bytes); contents lost if the actor dies."""

    capacity: int = Field(100_000, gt=0)

    def build(self, name: str) -> MemoryChannel:
        return MemoryChannel(name, self.capacity, self.transaction_capacity, self.byte_capacity,
                             self.lease_timeout_s)
