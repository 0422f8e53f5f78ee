"""The ``memory`` channel: fast, bounded, and lost if its actor dies.

Batches are held in the channel actor's heap, in arrival order. Capacity counts events and,
optionally, bytes of Arrow buffers (headers and bodies). Delivery guarantee: at-least-once while
the channel actor lives; everything it holds is lost when the actor process dies.
"""
from __future__ import annotations

from collections import OrderedDict, deque

from pydantic import Field

from rayflume.channels.base import (
    IDEMPOTENCY_WINDOW,
    Channel,
    IdWindow,
    Lease,
    check_commit_of_settled_lease,
    now,
    renew_held,
    split_for_take,
)
from rayflume.config_base import ChannelConfig
from rayflume.event import EventBatch
from rayflume.registry import register


class LeasedQueue:
    """The in-memory queue plus leases behind the memory channel and the spillable channel.

    Not thread-safe on its own: callers hold the channel's lock.
    """

    def __init__(self, name: str = ""):
        self.name = name  # the channel's, for messages
        self.batches: deque[EventBatch] = deque()
        self.leases: dict[str, Lease] = {}
        self.outcomes: OrderedDict[str, str] = OrderedDict()
        self.queued_events = 0
        self.queued_bytes = 0
        self.leased_events = 0
        self.leased_bytes = 0

    def append(self, batch: EventBatch) -> None:
        self.batches.append(batch)
        self.queued_events += len(batch)
        self.queued_bytes += batch.nbytes

    def lease(self, max_events: int, holder: str, lease_id: str, timeout_s: float) -> Lease | None:
        if not self.batches:
            return None
        taken, rest = split_for_take(self._head_for(max_events), max_events)
        for b in reversed(rest):
            self.batches.appendleft(b)
        lease = Lease(lease_id, holder, taken, now() + timeout_s,
                      events=sum(len(b) for b in taken), nbytes=sum(b.nbytes for b in taken))
        self.queued_events -= lease.events
        self.queued_bytes -= lease.nbytes
        self.leased_events += lease.events
        self.leased_bytes += lease.nbytes
        self.leases[lease_id] = lease
        return lease

    def _head_for(self, max_events: int) -> list[EventBatch]:
        head, n = [], 0
        while self.batches and n < max_events:
            b = self.batches.popleft()
            head.append(b)
            n += len(b)
        return head

    def settle(self, lease_id: str, outcome: str) -> Lease | None:
        """Mark ``lease_id`` committed or rolled back; the lease, or None if already settled.

        Raises LeaseUnknown for a commit of a lease that was rolled back or never existed.
        """
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            if outcome == "committed":
                check_commit_of_settled_lease(self.name, lease_id, self.outcomes.get(lease_id))
            return None
        self.leased_events -= lease.events
        self.leased_bytes -= lease.nbytes
        if outcome != "committed":
            for b in reversed(lease.batches):
                self.batches.appendleft(b)
            self.queued_events += lease.events
            self.queued_bytes += lease.nbytes
        self._remember(lease_id, outcome)
        return lease

    def _remember(self, lease_id: str, outcome: str) -> None:
        self.outcomes[lease_id] = outcome
        if len(self.outcomes) > IDEMPOTENCY_WINDOW:
            self.outcomes.popitem(last=False)

    def expired(self) -> list[str]:
        t = now()
        return [lid for lid, lease in self.leases.items() if lease.expires_at <= t]

    def held_by(self, holder: str) -> list[str]:
        return [lid for lid, lease in self.leases.items() if lease.holder == holder]

    def renew(self, holder: str, expires_at: float) -> None:
        """Move the expiry of every lease of ``holder`` to ``expires_at``."""
        renew_held(self.leases.values(), holder, expires_at)


class MemoryChannel(Channel):
    """Queue of batches in the actor's memory. Thread-safe."""

    def __init__(self, name: str, capacity: int = 100_000, transaction_capacity: int = 10_000,
                 byte_capacity: int | None = None, lease_timeout_s: float = 60.0):
        super().__init__(name, capacity, transaction_capacity, byte_capacity, lease_timeout_s)
        self._q = LeasedQueue(name)
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

    def take(self, max_events: int, holder: str = "", timeout_s: float = 0.0):
        self._check_take_size(max_events)
        deadline = now() + timeout_s
        with self._lock:
            self.expire_leases()
            self.counters.EventTakeAttemptCount += 1
            while not self._q.batches:
                remaining = deadline - now()
                if remaining <= 0:
                    return None
                self._not_empty.wait(remaining)
                self.expire_leases()
            lease = self._q.lease(max_events, holder, self.new_lease_id(), self.lease_timeout_s)
            self.counters.EventTakeSuccessCount += lease.events
            return lease.lease_id, EventBatch.concat(lease.batches)

    def commit(self, lease_id: str) -> None:
        with self._lock:
            self._q.settle(lease_id, "committed")

    def rollback(self, lease_id: str) -> None:
        with self._lock:
            if self._q.settle(lease_id, "rolled_back") is not None:
                self.counters.RollbackCount += 1
                self._not_empty.notify_all()

    def release(self, holder: str) -> int:
        with self._lock:
            n = 0
            for lid in self._q.held_by(holder):
                n += self._q.settle(lid, "rolled_back").events
                self.counters.RollbackCount += 1
            if n:
                self._not_empty.notify_all()
            return n

    def renew(self, holder: str) -> float:
        """Extend ``holder``'s leases to ``lease_timeout_s`` from now; returns ``lease_timeout_s``."""
        with self._lock:
            self._q.renew(holder, now() + self.lease_timeout_s)
            return self.lease_timeout_s

    def expire_leases(self) -> int:
        """Return the events of overdue leases to the head; how many events came back."""
        with self._lock:
            n = 0
            for lid in self._q.expired():
                n += self._q.settle(lid, "expired").events
                self.counters.LeaseExpiredCount += 1
            if n:
                self._not_empty.notify_all()
            return n

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
