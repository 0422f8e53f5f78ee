"""Leases: the half of the channel contract every channel type shares.

A take leases events to a holder; the lease ends by ``commit``, by ``rollback``, by ``release`` of
its holder, or by expiry once ``lease_timeout_s`` passed since the take or the holder's last
``renew``. :class:`LeaseTable` keeps the leases in flight and their expiry, remembers how the last
``IDEMPOTENCY_WINDOW`` settled leases ended (so a retried commit or rollback is a no-op, and a
commit of a lease that expired or was rolled back raises LeaseUnknown), and runs the take-and-wait
loop. :class:`LeasedChannel` answers the contract's lease calls from a table.

What a lease holds (batches, ranges of log records, pieces of Kafka records, parts in two stores),
how a channel finds the events at its head, and how a lease's events go back there stay the
channel's: the table calls back for them, with the channel's lock held.
"""
from __future__ import annotations

import threading
from abc import abstractmethod
from typing import Callable, Generic, Iterable, Protocol, TypeVar

from rayflume.channels.base import IDEMPOTENCY_WINDOW, Channel, ChannelCounters, IdWindow, now
from rayflume.errors import LeaseUnknown
from rayflume.event import EventBatch

# How a lease ended, as the table remembers it.
COMMITTED = "committed"
ROLLED_BACK = "rolled_back"
EXPIRED = "expired"


class HeldLease(Protocol):
    """What the table reads of a channel's lease (the channel's own lease class)."""

    expires_at: float  # moved by renew

    @property
    def lease_id(self) -> str: ...

    @property
    def holder(self) -> str: ...

    @property
    def events(self) -> int: ...

    @property
    def committing(self) -> bool:
        """A commit of the lease is in flight: it wins, so rollback, release and expiry leave the
        lease alone (only channels whose commit waits outside the lock ever say so)."""
        ...


L = TypeVar("L", bound=HeldLease)
# The channel finds up to max_events events at its head and leases them to holder: the lease (not
# registered yet) and its batches, or None when there is nothing to take now.
LeaseHead = Callable[[int, str], tuple[L, list[EventBatch]] | None]
# The channel returns a lease's events to the head of its queue; how many came back.
GiveBack = Callable[[L], int]


class LeaseTable(Generic[L]):
    """The leases of one channel that are not settled, when each expires, how the recently settled
    ones ended, and the take-and-wait loop.

    Not thread-safe on its own: the caller holds the channel's lock (the lock of ``ready``) around
    every call but :meth:`take`, which takes that lock itself (it is reentrant) to wait on
    ``ready``. ``ready`` is notified whenever events come back to the head. ``counters`` are the
    channel's: the table counts takes, rollbacks and expiries in them.
    """

    def __init__(self, channel: str, lease_timeout_s: float, ready: threading.Condition,
                 counters: ChannelCounters, window: int = IDEMPOTENCY_WINDOW):
        self.channel = channel  # the channel's name, for messages
        self.lease_timeout_s = lease_timeout_s
        self._ready = ready
        self._counters = counters
        self._held: dict[str, L] = {}  # in the order they were handed out
        self._outcomes = IdWindow(window)

    def __len__(self) -> int:
        return len(self._held)

    def get(self, lease_id: str) -> L | None:
        """The lease if it is held (not settled); None otherwise."""
        return self._held.get(lease_id)

    def values(self) -> Iterable[L]:
        """The leases held, oldest first."""
        return self._held.values()

    def expiry(self) -> float:
        """When a lease handed out or renewed now expires (inf with ``lease_timeout_s`` inf)."""
        return now() + self.lease_timeout_s

    # -- taking ------------------------------------------------------------------------------------
    def take(self, max_events: int, holder: str, timeout_s: float, lease_head: LeaseHead[L],
             give_back: GiveBack[L],
             check_open: Callable[[], None] | None = None) -> tuple[str, EventBatch] | None:
        """Lease up to ``max_events`` events to ``holder``, waiting up to ``timeout_s`` for some;
        ``(lease_id, batch)``, or None when none came (and at once for ``max_events`` <= 0).

        Overdue leases are expired first and after every wait, so a dead taker's events are found.
        ``check_open`` (when given) raises once the channel is closed; it runs before the first
        look and after every wait.
        """
        if max_events <= 0:
            return None
        deadline = now() + timeout_s
        with self._ready:
            if check_open is not None:
                check_open()
            self.expire(give_back)
            self._counters.EventTakeAttemptCount += 1
            while (got := lease_head(max_events, holder)) is None:
                remaining = deadline - now()
                if remaining <= 0:
                    return None
                self._ready.wait(remaining)
                if check_open is not None:
                    check_open()
                self.expire(give_back)
            return self.hand_out(*got)

    def hand_out(self, lease: L, batches: list[EventBatch]) -> tuple[str, EventBatch]:
        """Register ``lease`` (taken from the head with ``batches``); what ``take`` returns."""
        self._held[lease.lease_id] = lease
        self._counters.EventTakeSuccessCount += lease.events
        return lease.lease_id, EventBatch.concat(batches)

    # -- settling ----------------------------------------------------------------------------------
    def pop(self, lease_id: str, outcome: str) -> L | None:
        """Settle ``lease_id`` as ``outcome`` (forget the lease, remember how it ended); the lease,
        or None when it is not held (then nothing is remembered)."""
        lease = self._held.pop(lease_id, None)
        if lease is not None:
            self._outcomes.add(lease_id, outcome)
        return lease

    def commit(self, lease_id: str) -> L | None:
        """Settle ``lease_id`` as committed at once: the lease, for the channel to drop its events;
        None for a retried commit. Raises LeaseUnknown as :meth:`to_commit`."""
        lease = self.pop(lease_id, COMMITTED)
        if lease is None:
            self._check_settled(lease_id)
        return lease

    def to_commit(self, lease_id: str) -> L | None:
        """The lease for a commit that makes it durable first and settles it after (``pop``), for
        channels whose commit waits outside the lock; None for a retried commit of a lease already
        committed. Raises LeaseUnknown when it expired, was rolled back or never existed (or was
        settled before the last ``IDEMPOTENCY_WINDOW`` leases): its events were returned and will
        be delivered again."""
        lease = self._held.get(lease_id)
        if lease is None:
            self._check_settled(lease_id)
        return lease

    def rollback(self, lease_id: str, give_back: GiveBack[L]) -> int:
        """Return the events of ``lease_id`` to the head; how many. A no-op (0) when it is settled
        already or a commit of it is in flight (the commit wins)."""
        lease = self._held.get(lease_id)
        if lease is None or lease.committing:
            return 0
        self._counters.RollbackCount += 1
        return self._return([lease], ROLLED_BACK, give_back)

    def release(self, holder: str, give_back: GiveBack[L]) -> int:
        """Roll back every lease of ``holder`` but those being committed; how many events came back."""
        leases = [ls for ls in self._held.values() if ls.holder == holder and not ls.committing]
        self._counters.RollbackCount += len(leases)
        return self._return(leases, ROLLED_BACK, give_back)

    def expire(self, give_back: GiveBack[L]) -> int:
        """Return the events of every overdue lease (but those being committed) to the head; how
        many came back."""
        t = now()
        overdue = [ls for ls in self._held.values() if ls.expires_at <= t and not ls.committing]
        if not overdue:
            return 0
        self._counters.LeaseExpiredCount += len(overdue)
        return self._return(overdue, EXPIRED, give_back)

    def renew(self, holder: str) -> float:
        """Move every lease ``holder`` has now to expire ``lease_timeout_s`` from now; returns
        ``lease_timeout_s``."""
        expires_at = self.expiry()
        for lease in self._held.values():
            if lease.holder == holder:
                lease.expires_at = expires_at
        return self.lease_timeout_s

    def _check_settled(self, lease_id: str) -> None:
        """A commit of ``lease_id``, which is not held: a no-op for a retry, else LeaseUnknown."""
        previous = self._outcomes.get(lease_id)
        if previous == COMMITTED:
            return
        why = "it expired or was rolled back" if previous else "it is unknown to the channel"
        where = f"channel '{self.channel}': " if self.channel else ""
        raise LeaseUnknown(f"{where}cannot commit lease {lease_id}: {why}; its events will be delivered again")

    def _return(self, leases: list[L], outcome: str, give_back: GiveBack[L]) -> int:
        """Settle ``leases`` (oldest first) as ``outcome`` and return their events to the head, the
        newest first, so that they leave again in the order they were taken."""
        n = 0
        for lease in reversed(leases):
            del self._held[lease.lease_id]
            n += give_back(lease)
            self._outcomes.add(lease.lease_id, outcome)
        if n:
            self._ready.notify_all()
        return n


class LeasedChannel(Channel):
    """A channel whose leases a :class:`LeaseTable` keeps (``_leases``); thread-safe as its
    subclass is.

    The contract's ``take`` (the table's take-and-wait loop), ``rollback``, ``release``, ``renew``
    and ``expire_leases`` are answered here. A subclass finds and leases the events at its head
    (:meth:`_lease_head`), says how a lease's events go back to the head (:meth:`_give_back`), and
    implements ``put``, ``commit`` and its sizes.
    """

    def __init__(self, name: str, capacity: int, transaction_capacity: int,
                 byte_capacity: int | None = None, lease_timeout_s: float = 60.0):
        super().__init__(name, capacity, transaction_capacity, byte_capacity, lease_timeout_s)
        self._leases: LeaseTable = LeaseTable(name, lease_timeout_s, self._not_empty, self.counters)

    @abstractmethod
    def _lease_head(self, max_events: int, holder: str):
        """Lease up to ``max_events`` (>= 1) events at the head to ``holder``: ``(lease, batches)``
        with a lease not registered yet (its expiry ``self._leases.expiry()``), or None when there
        is nothing to take now. Called under the lock."""

    @abstractmethod
    def _give_back(self, lease) -> int:
        """Return ``lease``'s events to the head of the queue, in their order; how many came back.
        Called under the lock, the lease already out of the table."""

    def _check_open(self) -> None:
        """Raise when the channel is closed (channels that can be closed say so)."""

    def take(self, max_events: int, holder: str = "", timeout_s: float = 0.0) -> tuple[str, EventBatch] | None:
        self._check_take_size(max_events)
        return self._leases.take(max_events, holder, timeout_s, self._lease_head, self._give_back,
                                 self._check_open)

    def rollback(self, lease_id: str) -> None:
        with self._lock:
            self._leases.rollback(lease_id, self._give_back)

    def release(self, holder: str) -> int:
        with self._lock:
            return self._leases.release(holder, self._give_back)

    def renew(self, holder: str) -> float:
        """Extend ``holder``'s leases to ``lease_timeout_s`` from now; returns ``lease_timeout_s``."""
        with self._lock:
            return self._leases.renew(holder)

    def expire_leases(self) -> int:
        """Return the events of overdue leases to the head; how many events came back."""
        with self._lock:
            return self._leases.expire(self._give_back)
