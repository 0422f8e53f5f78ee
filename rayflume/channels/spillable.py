"""The ``spillable`` channel: memory while the backlog is small, an embedded file log beyond it.

Two modes, set by ``mode``:

``spill`` (the default; Flume's spillable memory channel): puts go to an in-memory queue while
memory holds fewer than ``memory_capacity`` events (and ``byte_capacity`` bytes, if set) and the
overflow is empty; otherwise they go to an embedded :class:`~rayflume.channels.file.FileChannel`
(the overflow, up to ``overflow_capacity`` events). Once something spilled, later puts go to the
overflow too until it is empty again, so after a spike a sink that keeps a small steady backlog
keeps every event on the fsynced disk log until the overflow happens to run empty.

``dual`` (the DualChannel large Flume users run): the route follows the backlog (events in the
channel, leased or not) with hysteresis. In *memory mode* every put goes to memory; the put that
brings the backlog to ``switch_threshold`` switches to *disk mode*, where every put goes to the
overflow and returns only once fsynced. When the backlog falls below ``switch_back_threshold``
(default: half of ``switch_threshold``) puts go to memory again; between the two thresholds the
channel stays in the mode it is in, so it does not flap. After a spike, puts return to memory as
soon as the backlog is small, not once the whole overflow drained. Capacity: the channel holds at
most ``memory_capacity + overflow_capacity`` events in all, in either part (in disk mode the file
log may use memory's share); memory holds fewer than ``switch_threshold`` events, which may not
exceed ``memory_capacity``.

Order, in both modes: the channel keeps the sequence of its *runs* (so many events in memory,
then so many on disk, then so many in memory, ...) and a take walks it from the head, so a newer
memory event never leaves before an older disk event, nor the other way round, across any number
of switches. A put to memory waits for disk puts still in flight (one fsync at most), so the runs
follow the order in which puts returned: the order of every source (which puts a batch only after
the previous one returned) is kept.

Delivery guarantee: only what is on disk survives a crash. Events in the memory part are lost if
the process dies (as with the ``memory`` channel); events in the overflow are durable exactly as in
the ``file`` channel (a put that went to disk returns only after fsync; in ``dual`` mode that is
every put acknowledged in disk mode). After a restart the channel holds what the overflow
recovered: ``spill`` takes new puts into the overflow until it drains; ``dual`` starts in disk
mode when the recovered backlog is at least ``switch_back_threshold``.

Counters besides the channel's: ``SpilledEventCount`` (events put to disk), ``DiskMode`` (1 while
new puts go to disk: ``dual``'s disk mode, or in ``spill`` while the overflow is not empty),
``ModeSwitchCount`` (changes of ``DiskMode``), ``MemoryChannelSize``, ``OverflowChannelSize``;
with ``dual`` also ``SwitchThreshold`` and ``SwitchBackThreshold``.

Unlike Flume there is no ``overflowTimeout``: a put spills at once when memory is full.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, model_validator

from rayflume.channels.base import IdWindow, Lease
from rayflume.channels.file.channel import FileChannel
from rayflume.channels.file.config import FileStorageConfig
from rayflume.channels.file.errors import ChannelClosed
from rayflume.channels.leases import COMMITTED, LeasedChannel, LeaseTable
from rayflume.channels.memory import LeasedQueue
from rayflume.errors import ChannelFull
from rayflume.event import EventBatch
from rayflume.registry import register

_NEVER = float("inf")
MODES = ("spill", "dual")
log = logging.getLogger("rayflume.channels.spillable")


def dual_thresholds(memory_capacity: int, switch_threshold: int | None,
                    switch_back_threshold: int | None) -> tuple[int, int]:
    """``(switch_threshold, switch_back_threshold)`` of a ``dual`` channel, defaults filled in
    (``memory_capacity``, then half of it); ValueError naming the key when they do not fit."""
    threshold = memory_capacity if switch_threshold is None else switch_threshold
    if threshold < 2:
        raise ValueError(f"switch_threshold is {threshold}: with mode: dual it must be at least 2 (it "
                         f"defaults to memory_capacity); raise switch_threshold or memory_capacity")
    if threshold > memory_capacity:
        raise ValueError(f"switch_threshold ({threshold}) is above memory_capacity ({memory_capacity}): "
                         f"memory would be full before the backlog reached it; lower switch_threshold "
                         f"or raise memory_capacity")
    back = threshold // 2 if switch_back_threshold is None else switch_back_threshold
    if not 1 <= back < threshold:
        raise ValueError(f"switch_back_threshold ({back}) must be at least 1 and below switch_threshold "
                         f"({threshold}): puts return to memory once the backlog falls below it; lower "
                         f"switch_back_threshold or leave it unset (half of switch_threshold)")
    return threshold, back


@dataclass
class _Part:
    """One store's share of a take: consecutive events of one run, leased from memory (``mem``, a
    :class:`LeasedQueue` lease no table tracks: it lives and ends with its channel lease) or from
    the overflow (``lease_id``, a lease of the file channel)."""

    disk: bool
    events: int
    lease_id: str = ""
    mem: Lease | None = None
    committed: bool = False  # a disk part whose commit returned (a commit may fail half-way)


@dataclass
class _SpillLease:
    """A lease of this channel: its parts, head first. The parts' own leases never expire (memory
    parts are not tracked, the overflow's lease_timeout_s is infinite), so expiring, renewing or
    releasing this lease covers all of them."""

    lease_id: str
    holder: str
    expires_at: float
    parts: list[_Part] = field(default_factory=list)
    committing: bool = False

    @property
    def events(self) -> int:
        return sum(p.events for p in self.parts)


class SpillableChannel(LeasedChannel):
    """Memory first, overflowing to a file log, in ``mode`` "spill" or "dual" (see the module
    docstring); FIFO across both parts. Thread-safe.

    ``file_options`` go to the overflow :class:`FileChannel` (``checkpoint_dir``, ``data_dirs``,
    ``max_file_size_bytes``, ``fsync``, ...). With ``overflow_capacity=0`` (``spill`` only) there is
    no overflow and the channel behaves like a ``memory`` channel of ``memory_capacity`` events.
    ``switch_threshold`` and ``switch_back_threshold`` (events) are ``dual``'s, see
    :func:`dual_thresholds` for their defaults.
    """

    _leases: LeaseTable[_SpillLease]

    def __init__(self, name: str, memory_capacity: int = 10_000, overflow_capacity: int = 100_000_000,
                 transaction_capacity: int = 10_000, byte_capacity: int | None = None,
                 lease_timeout_s: float = 60.0, checkpoint_dir: str | None = None,
                 data_dirs=None, mode: str = "spill", switch_threshold: int | None = None,
                 switch_back_threshold: int | None = None, **file_options):
        super().__init__(name, memory_capacity + overflow_capacity, transaction_capacity,
                         byte_capacity, lease_timeout_s)
        if mode not in MODES:
            raise ValueError(f"spillable channel '{name}': mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.memory_capacity = memory_capacity
        self.overflow_capacity = overflow_capacity
        self.switch_threshold = self.switch_back_threshold = None
        if mode == "dual":
            if overflow_capacity <= 0:
                raise ValueError(f"spillable channel '{name}': mode dual needs an overflow; set "
                                 f"overflow_capacity above 0, or use mode spill")
            try:
                self.switch_threshold, self.switch_back_threshold = dual_thresholds(
                    memory_capacity, switch_threshold, switch_back_threshold)
            except ValueError as exc:
                raise ValueError(f"spillable channel '{name}': {exc}") from None
        elif switch_threshold is not None or switch_back_threshold is not None:
            raise ValueError(f"spillable channel '{name}': switch thresholds are only used with mode dual")
        self._mem = LeasedQueue()
        self._overflow: FileChannel | None = None
        if overflow_capacity > 0:
            if checkpoint_dir is None or not data_dirs:
                raise ValueError(f"spillable channel '{name}': an overflow needs checkpoint_dir and "
                                 f"data_dirs (or set overflow_capacity to 0)")
            # Leases of the overflow never expire by themselves: this channel expires its own
            # leases, all parts together. In dual mode the channel bounds the total itself and the
            # log may use memory's share of it (disk mode puts nothing into memory).
            self._overflow = FileChannel(f"{name}.overflow", checkpoint_dir, data_dirs,
                                         capacity=self.capacity if mode == "dual" else overflow_capacity,
                                         transaction_capacity=transaction_capacity,
                                         lease_timeout_s=_NEVER, **file_options)
        self._txns = IdWindow()
        # Queued (not leased) events in put order, as runs [on_disk, events]; the memory runs add
        # up to the memory queue and the disk runs to the overflow's queue, each FIFO itself.
        self._runs: deque[list] = deque()
        recovered = self._overflow.ready_events() if self._overflow is not None else 0
        if recovered:
            self._runs.append([True, recovered])
        self._disk_queued = recovered  # events of the disk runs
        self._disk_leased = 0  # overflow events in leases, not committed
        self._disk_inflight = 0  # events of disk puts not returned yet
        self._inflight_txns: set[str] = set()
        self._disk_done = threading.Condition(self._lock)
        self._disk_mode = bool(recovered) if mode == "spill" else recovered >= self.switch_back_threshold
        self._switches = 0
        self._spilled = 0
        self._closed = False

    # -- the contract --------------------------------------------------------------------------
    def put(self, batch: EventBatch, txn_id: str) -> None:
        n = len(batch)
        with self._lock:
            self._check_open()
            self.counters.EventPutAttemptCount += n
            while True:
                # A retry of a put still in flight waits for it, then finds its txn id.
                while txn_id in self._inflight_txns:
                    self._disk_done.wait()
                    self._check_open()
                if txn_id in self._txns or (self._overflow is not None
                                            and self._overflow.has_committed(txn_id)):
                    self.counters.DuplicatePutCount += n
                    return
                try:
                    self._check_put_size(batch)
                    to_disk = n > 0 and self._route(batch)
                except Exception:
                    self.counters.EventPutErrorCount += n
                    raise
                if to_disk:
                    break
                if self._disk_inflight:
                    # A disk put that has not returned may be older than this one: wait for it
                    # (one fsync), or this batch could be taken before it.
                    self._disk_done.wait()
                    self._check_open()
                    continue
                if n:
                    self._mem.append(batch)
                    self._push_run(False, n)
                self._txns.add(txn_id)
                self.counters.EventPutSuccessCount += n
                self._not_empty.notify_all()
                return
            self._disk_inflight += n
            self._inflight_txns.add(txn_id)
            self._update_mode()
        try:
            self._overflow.put(batch, txn_id)
        except BaseException:
            with self._lock:
                self._disk_inflight -= n
                self._inflight_txns.discard(txn_id)
                self.counters.EventPutErrorCount += n
                self._update_mode()
                self._disk_done.notify_all()
            raise
        with self._lock:
            self._disk_inflight -= n
            self._inflight_txns.discard(txn_id)
            # Registered once durable and visible in the overflow. Concurrent disk puts may
            # register in another order than the log's, which changes nothing (they make one disk
            # run); no memory put registers while one is in flight, so the runs match both queues.
            self._push_run(True, n)
            self._disk_queued += n
            self._spilled += n
            self.counters.EventPutSuccessCount += n
            self._update_mode()
            self._disk_done.notify_all()
            self._not_empty.notify_all()

    def _lease_head(self, max_events: int, holder: str) -> tuple[_SpillLease, list[EventBatch]] | None:
        parts, batches = self._lease_runs(max_events, holder)
        if not parts:
            return None
        return _SpillLease(self.new_lease_id(), holder, self._leases.expiry(), parts), batches

    def _give_back(self, lease: _SpillLease) -> int:
        return self._return_parts(lease.parts)

    def commit(self, lease_id: str) -> None:
        # Not the table's one-step commit: the disk parts are committed in the overflow (an fsync)
        # outside the lock, the lease marked committing meanwhile so that rollback, release and
        # expiry leave it alone; it is settled only once every disk part is durable.
        with self._lock:
            lease = self._leases.to_commit(lease_id)
            if lease is None:
                return
            lease.committing = True
        try:
            for part in lease.parts:
                if part.disk and not part.committed:
                    self._overflow.commit(part.lease_id)  # durable before anything is forgotten
                    with self._lock:
                        if not part.committed:
                            part.committed = True
                            self._disk_leased -= part.events
        except BaseException:
            with self._lock:
                lease.committing = False
            raise
        with self._lock:
            if self._leases.pop(lease_id, COMMITTED) is not None:
                for part in lease.parts:
                    if part.mem is not None:
                        self._mem.drop(part.mem)
                self._update_mode()

    def ready_events(self) -> int:
        with self._lock:
            return self._mem.queued_events + self._disk_queued

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
            self._disk_done.notify_all()
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
                OverflowFsyncCount=over.get("FsyncCount", 0), DiskMode=int(self._disk_mode),
                ModeSwitchCount=self._switches)
            if self.mode == "dual":
                self.counters.extra.update(SwitchThreshold=self.switch_threshold,
                                           SwitchBackThreshold=self.switch_back_threshold)
            return super().metrics()

    @property
    def disk_mode(self) -> bool:
        """Whether new puts go to the overflow: ``dual``'s disk mode; in ``spill``, while the
        overflow holds something."""
        with self._lock:
            return self._disk_mode

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

    def _memory_has_room(self, batch: EventBatch) -> bool:
        if self._memory_events() + len(batch) > self.memory_capacity:
            return False
        if self.byte_capacity is not None:
            held = self._mem.queued_bytes + self._mem.leased_bytes
            if held + batch.nbytes > self.byte_capacity:
                return False
        return True

    def _backlog(self) -> int:
        """Events in the channel, leased or not, and in disk puts that have not returned."""
        return self._memory_events() + self._disk_queued + self._disk_leased + self._disk_inflight

    def _route(self, batch: EventBatch) -> bool:
        """Whether ``batch`` goes to disk (else memory), switching ``dual``'s mode when the put
        crosses a threshold; raises ChannelFull when it fits nowhere. Called under the lock."""
        if self.mode == "spill":
            if not (self._disk_queued or self._disk_leased or self._disk_inflight) \
                    and self._memory_has_room(batch):
                return False
            if self._overflow is None:
                raise ChannelFull(
                    f"channel '{self.name}' is full ({self._memory_events()}/{self.memory_capacity} "
                    f"events in memory, no overflow); add sinks, raise memory_capacity or set "
                    f"overflow_capacity")
            return True
        n, backlog = len(batch), self._backlog()
        if backlog + n > self.capacity:
            raise ChannelFull(
                f"channel '{self.name}' is full ({backlog}/{self.capacity} events: memory_capacity + "
                f"overflow_capacity); sinks are not keeping up: add sinks, raise overflow_capacity, or "
                f"let the source back off")
        if self._disk_mode:
            # Back to memory only if this put does not reach switch_threshold again.
            if backlog < self.switch_back_threshold and backlog + n < self.switch_threshold:
                self._set_disk_mode(False)
        elif backlog + n >= self.switch_threshold:
            self._set_disk_mode(True)
        # In memory mode memory holds less than switch_threshold <= memory_capacity events, so
        # only byte_capacity can leave it without room: the put then spills.
        return self._disk_mode or not self._memory_has_room(batch)

    def _update_mode(self) -> None:
        """Follow the backlog after it changed without a put routing (a disk put started or
        ended, a commit). Called under the lock."""
        if self.mode == "spill":
            self._set_disk_mode(bool(self._disk_queued or self._disk_leased or self._disk_inflight))
        elif self._disk_mode and self._backlog() < self.switch_back_threshold:
            self._set_disk_mode(False)

    def _set_disk_mode(self, disk: bool) -> None:
        if disk != self._disk_mode:
            self._disk_mode = disk
            self._switches += 1

    def _push_run(self, disk: bool, n: int, front: bool = False) -> None:
        """Add ``n`` queued events of one part at the tail of the runs (at the head: ``front``)."""
        if n <= 0:
            return
        runs = self._runs
        end = 0 if front else -1
        if runs and runs[end][0] == disk:
            runs[end][1] += n
        elif front:
            runs.appendleft([disk, n])
        else:
            runs.append([disk, n])

    def _consume_disk(self, n: int) -> None:
        """``n`` queued overflow events left its queue from the head: off the disk runs, head
        first. Normally all from the head run; a take that skipped unreadable records (counted by
        the overflow) may have gone on into later disk runs."""
        self._disk_queued -= n
        kept: deque[list] = deque()
        for disk, events in self._runs:
            if disk and n:
                gone = min(events, n)
                events -= gone
                n -= gone
            if events:
                if kept and kept[-1][0] == disk:
                    kept[-1][1] += events
                else:
                    kept.append([disk, events])
        self._runs = kept

    def _lease_runs(self, max_events: int, holder: str) -> tuple[list[_Part], list[EventBatch]]:
        """Lease up to ``max_events`` queued events from the head of the runs, in order: the parts
        (one per run) and their batches. Called under the lock."""
        parts: list[_Part] = []
        batches: list[EventBatch] = []
        got = 0
        try:
            while got < max_events and self._runs:
                disk, run = self._runs[0]
                want = min(run, max_events - got)
                if not disk:
                    lease = self._mem.lease(want, holder, "", _NEVER)
                    self._runs[0][1] -= lease.events
                    if not self._runs[0][1]:
                        self._runs.popleft()
                    parts.append(_Part(False, lease.events, mem=lease))
                    batches += lease.batches
                    got += lease.events
                    continue
                corrupt = self._overflow.corrupt_event_count()
                over = self._overflow.take(want, holder)
                taken = len(over[1]) if over is not None else 0
                dropped = self._overflow.corrupt_event_count() - corrupt  # unreadable, counted
                if over is not None and taken + dropped > run:
                    # Every record it popped for this run was unreadable and the overflow went on
                    # into a later disk run: back to its head with those, so that they leave after
                    # the memory run before them.
                    self._overflow.rollback(over[0])
                    over, taken = None, 0
                self._consume_disk(taken + dropped)
                if over is None:
                    if not dropped:
                        # Nothing left the overflow although the runs say it holds events: never
                        # expected; stop rather than loop, the log names the channel.
                        log.error("spillable channel '%s': the overflow has fewer events ready than "
                                  "its runs count (%d)", self.name, run)
                        break
                    continue
                self._disk_leased += taken
                parts.append(_Part(True, taken, lease_id=over[0]))
                batches.append(over[1])
                got += taken
        except BaseException:
            self._return_parts(parts)
            raise
        return parts, batches

    def _return_parts(self, parts: list[_Part]) -> int:
        """Return the parts of a lease to the heads of their stores and of the runs, last part
        first, so they come back in their order. Called under the lock."""
        n = 0
        for part in reversed(parts):
            if part.mem is not None:
                self._mem.give_back(part.mem)
            else:
                if part.committed:
                    continue  # its commit returned before a later part's failed: gone for good
                self._overflow.rollback(part.lease_id)
                self._disk_leased -= part.events
                self._disk_queued += part.events
            self._push_run(part.disk, part.events, front=True)
            n += part.events
        return n


@register("channel", "spillable")
class SpillableChannelConfig(FileStorageConfig):
    """``spillable``: memory first, overflowing to a file log; only the overflow survives a crash.

    ``capacity`` is not a key: the channel holds ``memory_capacity + overflow_capacity`` events.
    ``byte_capacity`` limits the memory part. ``mode: dual`` switches between memory and the file
    log at ``switch_threshold`` events of backlog and back below ``switch_back_threshold``.
    """

    memory_capacity: int = Field(10_000, ge=0, description="Most events held in memory.")
    overflow_capacity: int = Field(100_000_000, ge=0,
                                   description="Most events in the file overflow; 0 disables it. "
                                               "With mode dual the file log may also use memory's "
                                               "share of the total.")
    mode: Literal["spill", "dual"] = Field(
        "spill", description="spill: memory until it is full, then the file log until the overflow "
                             "is empty again. dual: memory while the backlog is below "
                             "switch_threshold, the file log (every put fsynced) from there until it "
                             "falls below switch_back_threshold.")
    switch_threshold: int | None = Field(
        None, ge=2, description="mode dual: backlog (events, leased or not) at which puts switch to "
                                "the file log; at most memory_capacity. Default: memory_capacity.")
    switch_back_threshold: int | None = Field(
        None, ge=1, description="mode dual: backlog below which puts return to memory; below "
                                "switch_threshold. Default: half of switch_threshold.")

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

    @model_validator(mode="after")
    def _dual_keys(self):
        if self.mode != "dual":
            for key in ("switch_threshold", "switch_back_threshold"):
                if key in self.model_fields_set:
                    raise ValueError(f"spillable channel: {key} is only used with mode: dual; remove "
                                     f"it or set mode: dual")
            return self
        if self.overflow_capacity == 0:
            raise ValueError("spillable channel: mode: dual needs an overflow, but overflow_capacity "
                             "is 0; give overflow_capacity a positive value or use mode: spill")
        try:
            dual_thresholds(self.memory_capacity, self.switch_threshold, self.switch_back_threshold)
        except ValueError as exc:
            raise ValueError(f"spillable channel: {exc}") from None
        return self

    def build(self, name: str) -> SpillableChannel:
        options = self.storage_options(name) if self.overflow_capacity > 0 else {}
        return SpillableChannel(name, memory_capacity=self.memory_capacity,
                                overflow_capacity=self.overflow_capacity,
                                transaction_capacity=self.transaction_capacity,
                                byte_capacity=self.byte_capacity,
                                lease_timeout_s=self.lease_timeout_s, mode=self.mode,
                                switch_threshold=self.switch_threshold,
                                switch_back_threshold=self.switch_back_threshold, **options)
