"""The ``spillable`` channel: memory while the backlog is small, an embedded file log beyond it.

Flume's spillable memory channel (and the DualChannel idea): puts go to an in-memory queue while
the backlog is below ``memory_capacity`` events (and ``byte_capacity`` bytes, if set) and the
overflow is empty; otherwise they go to an embedded :class:`~rayflume.channels.file.FileChannel`
(the overflow, up to ``overflow_capacity`` events). Takes drain memory first, then the overflow.
Once something spilled, later puts go to the overflow too until it is empty again, so events leave
in the order they came (FIFO across both parts).

Delivery guarantee: only what is on disk survives a crash. Events in the memory part are lost if
the process dies (as with the ``memory`` channel); events in the overflow are durable exactly as in
the ``file`` channel (a put that spilled returns only after fsync). After a restart the channel
holds what the overflow recovered and takes new puts into the overflow until it drains.

Unlike Flume there is no ``overflowTimeout``: a put spills at once when memory is full.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from pydantic import Field, model_validator

from rayflume.channels.base import (IDEMPOTENCY_WINDOW, Channel, IdWindow, check_commit_of_settled_lease, now,
                                    renew_held)
from rayflume.channels.file.channel import FileChannel
from rayflume.channels.file.config import FileStorageConfig
from rayflume.channels.file.errors import ChannelClosed
from rayflume.channels.memory import LeasedQueue
from rayflume.errors import ChannelFull
from rayflume.event import EventBatch
from rayflume.registry import register

_NEVER = float("inf")


@dataclass
class _SpillLease:
    lease_id: str
    holder: str
    expires_at: float
    memory_lease: str | None
    memory_events: int
    overflow_lease: str | None
    overflow_events: int
    committing: bool = False


class SpillableChannel(Channel):
    """Memory first, overflowing to a file log; FIFO across both. Thread-safe.

    ``file_options`` go to the overflow :class:`FileChannel` (``checkpoint_dir``, ``data_dirs``,
    ``max_file_size_bytes``, ``fsync``, ...). With ``overflow_capacity=0`` there is no overflow and
    the channel behaves like a ``memory`` channel of ``memory_capacity`` events.
    """

    def __init__(self, name: str, memory_capacity: int = 10_000, overflow_capacity: int = 100_000_000,
                 transaction_capacity: int = 10_000, byte_capacity: int | None = None,
                 lease_timeout_s: float = 60.0, checkpoint_dir: str | None = None,
                 data_dirs=None, **file_options):
        super().__init__(name, memory_capacity + overflow_capacity, transaction_capacity,
                         byte_capacity, lease_timeout_s)
        self.memory_capacity = memory_capacity
        self.overflow_capacity = overflow_capacity
        self._mem = LeasedQueue()
        self._overflow: FileChannel | None = None
        if overflow_capacity > 0:
            if checkpoint_dir is None or not data_dirs:
                raise ValueError(f"spillable channel '{name}': an overflow needs checkpoint_dir and "
                                 f"data_dirs (or set overflow_capacity to 0)")
            # Leases of the overflow never expire by themselves: this channel expires its own
            # leases, both parts together.
            self._overflow = FileChannel(f"{name}.overflow", checkpoint_dir, data_dirs,
                                         capacity=overflow_capacity,
                                         transaction_capacity=transaction_capacity,
                                         lease_timeout_s=_NEVER, **file_options)
        self._txns = IdWindow()
        self._leases: dict[str, _SpillLease] = {}
        self._outcomes: OrderedDict[str, str] = OrderedDict()
        self._overflow_inflight = 0
        self._spilled = 0
        self._closed = False

    # -- the contract --------------------------------------------------------------------------
    def put(self, batch: EventBatch, txn_id: str) -> None:
        n = len(batch)
        with self._lock:
            self._check_open()
            self.counters.EventPutAttemptCount += n
            if txn_id in self._txns or (self._overflow is not None
                                        and self._overflow.has_committed(txn_id)):
                self.counters.DuplicatePutCount += n
                return
            try:
                self._check_put_size(batch)
            except Exception:
                self.counters.EventPutErrorCount += n
                raise
            if self._memory_takes(batch):
                if n:
                    self._mem.append(batch)
                self._txns.add(txn_id)
                self.counters.EventPutSuccessCount += n
                self._not_empty.notify_all()
                return
            if self._overflow is None:
                self.counters.EventPutErrorCount += n
                raise ChannelFull(
                    f"channel '{self.name}' is full ({self._memory_events()}/{self.memory_capacity} "
                    f"events in memory, no overflow); add sinks, raise memory_capacity or set "
                    f"overflow_capacity")
            self._overflow_inflight += 1
        try:
            self._overflow.put(batch, txn_id)
        except BaseException:
            with self._lock:
                self._overflow_inflight -= 1
                self.counters.EventPutErrorCount += n
            raise
        with self._lock:
            self._overflow_inflight -= 1
            self._spilled += n
            self.counters.EventPutSuccessCount += n
            self._not_empty.notify_all()

    def take(self, max_events: int, holder: str = "", timeout_s: float = 0.0):
        self._check_take_size(max_events)
        if max_events <= 0:
            return None
        deadline = now() + timeout_s
        with self._lock:
            self._check_open()
            self._expire_locked()
            self.counters.EventTakeAttemptCount += 1
            while True:
                mem = None
                if self._mem.batches:
                    mem = self._mem.lease(max_events, holder, self.new_lease_id(), _NEVER)
                got = mem.events if mem else 0
                over = None
                if got < max_events and not self._mem.batches and self._overflow is not None:
                    try:
                        over = self._overflow.take(max_events - got, holder)
                    except BaseException:
                        if mem is not None:
                            self._mem.settle(mem.lease_id, "rolled_back")
                        raise
                if mem is not None or over is not None:
                    break
                remaining = deadline - now()
                if remaining <= 0:
                    return None
                self._not_empty.wait(remaining)
                self._check_open()
                self._expire_locked()
            batches = list(mem.batches) if mem else []
            if over is not None:
                batches.append(over[1])
            lease = _SpillLease(self.new_lease_id(), holder, now() + self.lease_timeout_s,
                                mem.lease_id if mem else None, got,
                                over[0] if over else None, len(over[1]) if over else 0)
            self._leases[lease.lease_id] = lease
            self.counters.EventTakeSuccessCount += lease.memory_events + lease.overflow_events
            return lease.lease_id, EventBatch.concat(batches)

    def commit(self, lease_id: str) -> None:
        with self._lock:
            lease = self._leases.get(lease_id)
            if lease is None:
                check_commit_of_settled_lease(self.name, lease_id, self._outcomes.get(lease_id))
                return
            lease.committing = True
        if lease.overflow_lease is not None:
            try:
                self._overflow.commit(lease.overflow_lease)  # durable before anything is forgotten
            except BaseException:
                with self._lock:
                    lease.committing = False
                raise
        with self._lock:
            if self._leases.pop(lease_id, None) is not None:
                if lease.memory_lease is not None:
                    self._mem.settle(lease.memory_lease, "committed")
                self._remember(lease_id, "committed")

    def rollback(self, lease_id: str) -> None:
        with self._lock:
            lease = self._leases.get(lease_id)
            if lease is None or lease.committing:
                return
            self._return([lease], "rolled_back")
            self.counters.RollbackCount += 1

    def release(self, holder: str) -> int:
        with self._lock:
            leases = [ls for ls in self._leases.values() if ls.holder == holder and not ls.committing]
            self.counters.RollbackCount += len(leases)
            # Newest first, so the oldest lease's events end up at the head.
            return self._return(list(reversed(leases)), "rolled_back")

    def renew(self, holder: str) -> float:
        """Extend ``holder``'s leases (both parts: the parts' own leases never expire) to
        ``lease_timeout_s`` from now; returns ``lease_timeout_s``."""
        with self._lock:
            renew_held(self._leases.values(), holder, now() + self.lease_timeout_s)
            return self.lease_timeout_s

    def expire_leases(self) -> int:
        with self._lock:
            return self._expire_locked()

    def ready_events(self) -> int:
        with self._lock:
            return self._mem.queued_events + (self._overflow.ready_events() if self._overflow else 0)

    def size(self) -> int:
        with self._lock:
            return self._memory_events() + (self._overflow.size() if self._overflow else 0)

    def nbytes(self) -> int:
        with self._lock:
            mem = self._mem.queued_bytes + self._mem.leased_bytes
            return mem + (self._overflow.nbytes() if self._overflow else 0)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._not_empty.notify_all()
        if self._overflow is not None:
            self._overflow.close()

    def metrics(self) -> dict:
        with self._lock:
            over = self._overflow.metrics() if self._overflow is not None else {}
            self.counters.extra.update(
                SpilledEventCount=self._spilled, MemoryChannelSize=self._memory_events(),
                MemoryCapacity=self.memory_capacity, OverflowChannelSize=over.get("ChannelSize", 0),
                OverflowCapacity=self.overflow_capacity,
                OverflowCorruptRecordCount=over.get("CorruptRecordCount", 0),
                OverflowFsyncCount=over.get("FsyncCount", 0))
            return super().metrics()

    @property
    def overflow(self) -> FileChannel | None:
        """The embedded file channel (None without overflow)."""
        return self._overflow

    # -- internals -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosed(f"spillable channel '{self.name}' is closed")

    def _memory_events(self) -> int:
        return self._mem.queued_events + self._mem.leased_events

    def _memory_takes(self, batch: EventBatch) -> bool:
        """Whether ``batch`` goes to memory: the overflow is empty and memory has room."""
        if self._overflow is not None and (self._overflow_inflight or self._overflow.size()):
            return False
        if self._memory_events() + len(batch) > self.memory_capacity:
            return False
        if self.byte_capacity is not None:
            held = self._mem.queued_bytes + self._mem.leased_bytes
            if held + batch.nbytes > self.byte_capacity:
                return False
        return True

    def _return(self, leases: list[_SpillLease], outcome: str) -> int:
        n = 0
        for lease in leases:
            del self._leases[lease.lease_id]
            if lease.memory_lease is not None:
                self._mem.settle(lease.memory_lease, outcome)
            if lease.overflow_lease is not None:
                self._overflow.rollback(lease.overflow_lease)
            self._remember(lease.lease_id, outcome)
            n += lease.memory_events + lease.overflow_events
        if n:
            self._not_empty.notify_all()
        return n

    def _expire_locked(self) -> int:
        t = now()
        overdue = [ls for ls in self._leases.values() if ls.expires_at <= t and not ls.committing]
        if not overdue:
            return 0
        self.counters.LeaseExpiredCount += len(overdue)
        # Newest first, so the oldest lease's events end up at the head.
        return self._return(list(reversed(overdue)), "expired")

    def _remember(self, lease_id: str, outcome: str) -> None:
        self._outcomes[lease_id] = outcome
        if len(self._outcomes) > IDEMPOTENCY_WINDOW:
            self._outcomes.popitem(last=False)


@register("channel", "spillable")
class SpillableChannelConfig(FileStorageConfig):
    """``spillable``: memory first, overflowing to a file log; only the overflow survives a crash.

    ``capacity`` is not a key: the channel holds ``memory_capacity + overflow_capacity`` events.
    ``byte_capacity`` limits the memory part.
    """

    memory_capacity: int = Field(10_000, ge=0, description="Most events held in memory.")
    overflow_capacity: int = Field(100_000_000, ge=0,
                                   description="Most events in the file overflow; 0 disables it.")

    @model_validator(mode="before")
    @classmethod
    def _no_capacity(cls, data):
        if isinstance(data, dict) and "capacity" in data:
            raise ValueError("spillable channel: 'capacity' is not a key; set memory_capacity and "
                             "overflow_capacity instead")
        return data

    @model_validator(mode="after")
    def _some_capacity(self):
        if self.memory_capacity + self.overflow_capacity == 0:
            raise ValueError("spillable channel: memory_capacity and overflow_capacity are both 0; "
                             "give at least one of them a positive value")
        return self

    def build(self, name: str) -> SpillableChannel:
        options = self.storage_options(name) if self.overflow_capacity > 0 else {}
        return SpillableChannel(name, memory_capacity=self.memory_capacity,
                                overflow_capacity=self.overflow_capacity,
                                transaction_capacity=self.transaction_capacity,
                                byte_capacity=self.byte_capacity,
                                lease_timeout_s=self.lease_timeout_s, **options)
