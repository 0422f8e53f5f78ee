"""Recovery of the file channel at open: its checkpoint, then its log replayed after it.

:func:`recover` rebuilds what the channel held when it stopped, from any
:class:`~rayflume.channels.file.storage.ChannelStorage` (which lists, reads and repairs its own
log; see its :meth:`~rayflume.channels.file.storage.ChannelStorage.replay`):

1. the checkpoint's ranges (every event queued or leased at its replay position) and the txn ids of
   committed puts; a missing or damaged checkpoint means a replay of the whole log;
2. every verified record after that position, in log order: a put adds its rows, unless its txn id
   was seen already (a retried put that was written twice is delivered once); a ``TAKE_COMMIT``
   removes its ranges. Leases that were not committed therefore come back, in log order, ahead of
   everything put after them: a take without a ``TAKE_COMMIT`` record is a rolled-back take;
3. ranges whose record the storage no longer holds are lost, counted in ``MissingEventCount``.

The result is the channel's queue (:class:`Ref` ranges in log order), its committed txn ids and its
delivery totals; replay's findings are counted in the channel's ``stats``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from rayflume.channels.base import IdWindow
from rayflume.channels.file import records
from rayflume.channels.file.checkpoint import Checkpoint
from rayflume.channels.file.records import CorruptRecord, Record
from rayflume.channels.file.storage import ChannelStorage
from rayflume.event import EventBatch

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Ref:
    """Rows ``[start, stop)`` of the put record at (``segment``, ``offset``): one entry of the
    channel's queue, of a lease and of the checkpoint.

    ``batch`` is the record's whole batch when it is cached in memory, else None (read on take).
    ``nbytes`` is this range's share of the record's Arrow bytes.
    """

    segment: int
    offset: int
    size: int
    start: int
    stop: int
    nbytes: int
    batch: EventBatch | None = None

    @property
    def events(self) -> int:
        return self.stop - self.start

    def split(self, k: int) -> tuple["Ref", "Ref"]:
        nb = self.nbytes * k // self.events
        return (Ref(self.segment, self.offset, self.size, self.start, self.start + k, nb, self.batch),
                Ref(self.segment, self.offset, self.size, self.start + k, self.stop,
                    self.nbytes - nb, self.batch))


@dataclass
class Recovery:
    """What the channel holds after recovery: its queue in log order and its committed txn ids."""

    refs: list[Ref]
    txn_ids: list[str]
    events: int
    nbytes: int


def recover(storage: ChannelStorage, channel: str, stats: dict) -> Recovery:
    """Read ``storage``'s checkpoint and replay its log (opening the log); see the module docstring.

    Counts in ``stats``: ``ReplayRecordCount``, ``ReplayFull``, ``CorruptRecordCount``,
    ``MissingEventCount``, ``ReplayDuplicateEventCount``, ``ReplaySeconds`` and what the storage's
    replay finds (torn tails, missing objects).
    """
    t0 = time.monotonic()
    ckpt = storage.read_checkpoint(stats)
    state = _Replayed()
    if ckpt is not None:
        state.load(ckpt)
    storage.replay(ckpt, state.apply, stats)
    stats["CorruptRecordCount"] += state.corrupt
    refs, missing = state.refs(storage.holds)
    if missing:
        stats["MissingEventCount"] += missing
        log.error("file channel '%s': %d events named by the checkpoint are in segments or "
                  "objects that no longer exist; they are lost", channel, missing)
    found = Recovery(refs, state.txns.items(), sum(r.events for r in refs), sum(r.nbytes for r in refs))
    stats["ReplayDuplicateEventCount"] = state.duplicates
    stats["ReplaySeconds"] = round(time.monotonic() - t0, 6)
    log.info("file channel '%s' recovered %d events (%s replay of %d records in %.3fs)",
             channel, found.events, "full" if ckpt is None else "checkpoint",
             stats["ReplayRecordCount"], stats["ReplaySeconds"])
    return found


class _Replayed:
    """The channel's contents rebuilt from a checkpoint and the log records after it."""

    def __init__(self):
        # (segment, offset) -> [record size, [[start, stop, nbytes], ...]], in log order
        self.records: dict[tuple[int, int], list] = {}
        self.txns = IdWindow()
        self.duplicates = 0
        self.corrupt = 0

    def load(self, ckpt: Checkpoint) -> None:
        for seg, off, size, start, stop, nb in sorted(ckpt.refs.tolist()):
            self.records.setdefault((seg, off), [size, []])[1].append([start, stop, nb])
        for txn in ckpt.txn_ids:
            self.txns.add(txn)

    def apply(self, segment: int, rec: Record) -> None:
        try:
            if rec.rtype == records.PUT:
                txn, rows, nbytes, _ = records.parse_put(rec.payload)
                if txn in self.txns:
                    self.duplicates += rows
                    return
                self.txns.add(txn)
                if rows:
                    self.records[(segment, rec.offset)] = [rec.size, [[0, rows, nbytes]]]
            elif rec.rtype == records.TAKE_COMMIT:
                for seg, off, start, stop in records.parse_commit(rec.payload):
                    entry = self.records.get((seg, off))
                    if entry is not None:
                        entry[1] = _subtract(entry[1], start, stop)
                        if not entry[1]:
                            del self.records[(seg, off)]
        except (CorruptRecord, UnicodeDecodeError, ValueError) as exc:
            self.corrupt += 1
            log.error("record at offset %d of segment %d verifies but does not parse (%s); skipped",
                      rec.offset, segment, exc)

    def refs(self, exists: Callable[[int, int], bool]) -> tuple[list[Ref], int]:
        """The surviving ranges in log order, and how many events are in records that are gone.

        ``exists(segment, offset)`` tells whether the record at that address can still be read.
        """
        out, missing = [], 0
        for (seg, off) in sorted(self.records):
            size, ranges = self.records[(seg, off)]
            if not exists(seg, off):
                missing += sum(stop - start for start, stop, _ in ranges)
                continue
            for start, stop, nb in sorted(ranges):
                out.append(Ref(seg, off, size, start, stop, nb))
        return out, missing


def _subtract(ranges: list, a: int, b: int) -> list:
    """``ranges`` minus rows ``[a, b)``, splitting byte counts in proportion."""
    out = []
    for start, stop, nb in ranges:
        if stop <= a or start >= b:
            out.append([start, stop, nb])
            continue
        n = stop - start
        if start < a:
            out.append([start, a, nb * (a - start) // n])
        if b < stop:
            out.append([b, stop, nb * (stop - b) // n])
    return out
