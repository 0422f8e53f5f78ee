"""The ``kafka`` channel's offset bookkeeping: what it read of each partition, which of those events
are committed, and the position it commits to Kafka.

Kafka keeps one committed position per partition and group, a prefix; the channel's leases are
committed in any order. So each partition keeps the records read and not all committed
(:class:`_Record`, with the ranges of their events done, merged), and the position to commit
(:meth:`_PartitionState.position`) is the first event not done: the offset of the first record
not done, plus, for an ``arrow`` record partly done, the number of its events done, carried in the
offset's metadata (``rayflume.skip=N``) so that a restarted channel resumes inside the record
(:func:`skip_metadata`, :func:`skip_of`). The position last committed is kept per partition: a
commit Kafka refused leaves the difference to the channel's next commit, which retries it.

Nothing here talks to Kafka or takes a lock: the channel calls it under its lock.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from rayflume.event import EventBatch

SKIP_PREFIX = "rayflume.skip="


def skip_metadata(skip: int) -> str:
    """The offset metadata of a position ``skip`` events into its record ("" at a record's start)."""
    return f"{SKIP_PREFIX}{skip}" if skip else ""


def skip_of(metadata: str | None) -> int:
    """The events of the record at a committed offset already done, from the offset's metadata."""
    meta = metadata or ""
    if meta.startswith(SKIP_PREFIX):
        try:
            return int(meta[len(SKIP_PREFIX):])
        except ValueError:
            return 0
    return 0


@dataclass(eq=False)
class _Record:
    """Events read from one partition and not all committed yet.

    An ``arrow`` record is one Kafka record (``offsets`` None): its commit position is ``offset``
    plus, when partly done, the count of its done events. A run of single-event records has
    ``offsets`` (one per event): committing its first ``j`` events moves the position to
    ``offsets[j]``.
    """

    partition: int
    offset: int          # offset of the first Kafka record
    end: int             # offset after the last Kafka record
    events: int
    skip: int = 0        # events of an arrow record done before this channel read it
    offsets: list | None = None
    done: list = field(default_factory=list)  # committed [start, stop) event ranges, merged

    def uncommitted(self) -> int:
        return self.events - sum(b - a for a, b in self.done)

    def mark_done(self, start: int, stop: int) -> None:
        ranges = sorted(self.done + [[start, stop]])
        merged: list = []
        for a, b in ranges:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.done = merged

    def prefix_done(self) -> int:
        return self.done[0][1] if self.done and self.done[0][0] == 0 else 0


@dataclass(eq=False)
class _Piece:
    """A slice of a record's events, waiting at the head or held by a lease."""

    record: _Record
    start: int           # index of the first event within the record
    batch: EventBatch


@dataclass
class _Lease:
    lease_id: str
    holder: str
    pieces: list
    expires_at: float
    events: int
    committing: bool = False  # never: a commit settles the lease at once, under the lock


class _PartitionState:
    def __init__(self, start: int, skip: int):
        self.start = start
        self.next_offset = start          # offset after the last record read
        self.first_skip = skip            # events of the record at `start` done before a restart
        self.records: deque[_Record] = deque()
        self.own: deque[tuple[int, int, int]] = deque()  # (offset, events, bytes) put, not read yet
        self.committed = (start, skip)    # position last committed to Kafka
        self.last_end = start             # offset after the last record that reached `records`
        self.high = start                 # the partition's end offset when last asked

    def put(self, offset: int, events: int, nbytes: int) -> None:
        """This channel's put landed at ``offset``: counted as unread until a take reads it."""
        if offset >= self.next_offset:
            self.own.append((offset, events, nbytes))

    def accept(self, piece: _Piece) -> _Piece | None:
        """Take in a piece just read (a whole record or run): the part of it to deliver, or None
        when the record was read before (it is then left out)."""
        rec = piece.record
        if rec.offset < self.last_end:
            return None
        if self.first_skip and rec.offset == self.start and rec.offsets is None:
            # Resuming inside a partly committed arrow record.
            rec.skip = min(self.first_skip, rec.events)
            rec.mark_done(0, rec.skip)
            piece = _Piece(rec, rec.skip, piece.batch.slice(rec.skip))
        self.first_skip = 0
        self.next_offset = max(self.next_offset, rec.end)
        self.last_end = rec.end
        while self.own and self.own[0][0] < self.next_offset:
            self.own.popleft()
        self.records.append(rec)
        return piece

    def position(self) -> tuple[int, int]:
        """``(offset, events done in the record there)`` of the first event not committed yet;
        records all committed leave the front on the way."""
        while self.records and self.records[0].uncommitted() == 0:
            self.records.popleft()
        if self.records:
            head = self.records[0]
            done = head.prefix_done()
            if head.offsets is not None:
                return (head.offsets[done], 0)
            return (head.offset, done)
        if self.first_skip:
            return self.committed  # the partly committed record at the start is not read yet
        return (self.last_end, 0)

    def unread(self, cached_high: int) -> int:
        """Events in the partition not read yet: this channel's puts exactly, others' records as
        one each (``cached_high``: the end offset the consumer last saw, -1 unknown)."""
        own_events = sum(e for _, e, _ in self.own)
        high = self.own[-1][0] + 1 if self.own else 0
        high = max(high, cached_high, self.high)
        return own_events + max(0, high - self.next_offset - len(self.own))

    def own_bytes(self) -> int:
        return sum(b for _, _, b in self.own)
