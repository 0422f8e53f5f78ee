"""What both logs of the file channel share: record states, group commit and publication in log order.

A log appends records to *segments* (files in a directory: :class:`~rayflume.channels.file.log.SegmentLog`;
runs of immutable objects on an object store: :class:`~rayflume.channels.file.objlog.ObjectLog`)
and addresses each record by (segment id, offset). :class:`RecordLog` is the part that does not
depend on where the bytes go:

* every record gets the next lsn and is written (or buffered) under ``write_lock``, in lsn order;
* a record is *durable* once a write-back (an fsync, an object PUT) that started after it was
  appended has returned. :meth:`RecordLog.wait_durable` makes the caller wait for that, and one
  thread at a time (the leader) runs the write-back for everybody who is waiting, so N concurrent
  puts share one (group commit);
* durable records are *published* (handed to the channel's ``apply`` callback, under the channel's
  lock) strictly in log order, so takers see puts, and removals of committed takes, in that order.

Record states: ``PENDING`` (written, not yet covered by a write-back), ``SYNCED`` (durable, not yet
published), ``PUBLISHED``, ``FAILED`` (its write-back failed: the caller gets a
:class:`ChannelWriteError` and the record is never published).
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from rayflume.channels.file.errors import ChannelClosed, ChannelWriteError
from rayflume.channels.file.records import RECORD_HEADER_SIZE, record_header

PENDING, SYNCED, PUBLISHED, FAILED = "pending", "synced", "published", "failed"


@dataclass(slots=True, eq=False)
class LogRecord:
    """A record appended in this process, tracked until it is published or failed."""

    lsn: int
    kind: str
    segment: int
    offset: int
    size: int
    data: Any
    state: str = PENDING
    error: str = ""


@dataclass
class LogStats:
    fsyncs: int = 0            # write-backs: fsyncs on disk, object PUTs on an object store
    fsync_errors: int = 0
    write_errors: int = 0
    segments_created: int = 0
    segments_deleted: int = 0


class RecordLog(ABC):
    """Appends records, makes them durable by group commit and publishes them in order. Thread-safe.

    A subclass says where a record goes (:meth:`_place`), writes or buffers its bytes
    (:meth:`_write`) and makes records durable (:meth:`sync`: it marks them ``SYNCED`` or
    ``FAILED`` and calls :meth:`_notify`). ``segments`` maps each segment id the log keeps to where
    it lives (a path or a URI), for messages and metrics.

    Lock order: the channel's lock (``publish_lock``) before ``write_lock``; nobody takes
    ``write_lock`` while holding the internal sync condition.
    """

    def __init__(self, channel: str, *, next_segment_id: int, next_lsn: int, max_file_size: int,
                 publish_lock, apply: Callable[[LogRecord], None]):
        self.channel = channel
        self.next_segment_id = next_segment_id
        self.next_lsn = next_lsn
        self.written_lsn = next_lsn - 1
        self.max_file_size = max_file_size
        self.publish_lock = publish_lock
        self.apply = apply
        self.segments: dict[int, str] = {}
        self.pending: deque[LogRecord] = deque()
        self.write_lock = threading.Lock()
        self.stats = LogStats()
        self.closed = False
        self._sync_cond = threading.Condition(threading.Lock())
        self._syncing = False

    # -- appending --------------------------------------------------------------------------
    def append(self, rtype: int, kind: str, parts: list, crc_of_payload: int, data) -> LogRecord:
        """Write one record; returns it PENDING (or already SYNCED, see :meth:`_write`).

        Raises ChannelWriteError (nothing was stored) or ChannelClosed.
        """
        payload_len = sum(len(p) for p in parts)
        size = RECORD_HEADER_SIZE + payload_len
        with self.write_lock:
            if self.closed:
                raise ChannelClosed(f"file channel '{self.channel}' is closed")
            segment, offset = self._place(size)
            lsn = self.next_lsn
            self.next_lsn += 1
            rec = LogRecord(lsn, kind, segment, offset, size, data)
            self._write(rec, [record_header(rtype, lsn, payload_len, crc_of_payload), *parts])
            self.pending.append(rec)
            self.written_lsn = lsn
            return rec

    @abstractmethod
    def _place(self, size: int) -> tuple[int, int]:
        """(segment, offset) of the next record, ``size`` bytes; rolls the segment when it must.

        Under ``write_lock``. Raises ChannelWriteError when there is nowhere to write.
        """

    @abstractmethod
    def _write(self, rec: LogRecord, buffers: list) -> None:
        """Write or buffer ``rec``'s bytes (``buffers``) at the place :meth:`_place` gave.

        Under ``write_lock``. Raises ChannelWriteError, with nothing stored. May mark ``rec``
        ``SYNCED`` at once when durability is not per commit.
        """

    # -- durability -------------------------------------------------------------------------
    @abstractmethod
    def sync(self) -> None:
        """Make every record appended so far durable (``SYNCED``) or ``FAILED``. Never raises."""

    def wait_durable(self, rec: LogRecord) -> None:
        """Return once ``rec`` is published; raise ChannelWriteError if it failed."""
        while True:
            with self._sync_cond:
                while True:
                    state = rec.state
                    if state == PUBLISHED:
                        return
                    if state == FAILED:
                        raise ChannelWriteError(rec.error)
                    if state == SYNCED:
                        lead = False
                        break
                    if not self._syncing:
                        self._syncing = True
                        lead = True
                        break
                    self._sync_cond.wait()
            if lead:
                try:
                    self.sync()
                finally:
                    with self._sync_cond:
                        self._syncing = False
                        self._sync_cond.notify_all()
            self.publish()

    def publish(self) -> None:
        """Hand every durable record at the head of the log to ``apply``, in log order."""
        with self.publish_lock:
            with self.write_lock:
                ready = []
                while self.pending and self.pending[0].state in (SYNCED, FAILED):
                    ready.append(self.pending.popleft())
            for rec in ready:
                if rec.state == SYNCED:
                    try:
                        self.apply(rec)
                    finally:
                        rec.state = PUBLISHED
        if ready:
            self._notify()

    def _notify(self) -> None:
        with self._sync_cond:
            self._sync_cond.notify_all()

    @abstractmethod
    def replay_position(self) -> tuple[int, int]:
        """Where a replay must start so that no unpublished record is skipped (under write_lock)."""

    # -- reading, deleting, closing ---------------------------------------------------------
    @abstractmethod
    def read(self, segment_id: int, offset: int, size: int) -> bytes:
        """The ``size`` bytes of the record at (``segment_id``, ``offset``); CorruptRecord if gone."""

    @abstractmethod
    def delete_before(self, position: tuple[int, int]) -> list[int]:
        """Delete what holds only records before ``position``; the ids of segments now gone."""

    @abstractmethod
    def close(self, sync: bool = True) -> None:
        """Stop appending; with ``sync``, make what was appended durable first."""
