"""The file channel's log on local disk: segment files, appends, fsync and scanning at recovery.

Appends go to the current segment of the first data directory; a new segment is started when the
current one would pass ``max_file_size`` (and after a failure). A record is durable once an fsync
of its segment that started after it was written has returned (group commit and publication in
log order are :class:`~rayflume.channels.file.recordlog.RecordLog`'s); a new segment's file and
directory entry are fsynced before any record in it can be acknowledged. With
``sync_per_commit=False`` a record counts as durable once written, and :meth:`SegmentLog.sync`
(called every ``fsync_interval_s``) is what makes it so.

Failure rule (fsyncgate): when an fsync of a segment fails, every record of that segment that no
successful fsync covered fails, the segment is truncated back to its last durable byte (best
effort) and closed, and the next append creates a new segment. The log never retries an fsync
on a segment it could not sync. A failed write is truncated away and the segment is rolled too.
"""
from __future__ import annotations

import logging
import mmap
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Callable

from rayflume._private.fileio import FileIO
from rayflume.channels.file import records
from rayflume.channels.file.errors import ChannelWriteError
from rayflume.channels.file.recordlog import FAILED, PENDING, SYNCED, LogRecord, RecordLog
from rayflume.channels.file.records import (
    SEGMENT_HEADER_SIZE,
    CorruptRecord,
    Damage,
    Record,
    check_segment_header,
    segment_header,
)

log = logging.getLogger(__name__)

_SEGMENT_RE = re.compile(r"^log-(\d{12})\.seg$")


def segment_name(segment_id: int) -> str:
    return f"log-{segment_id:012d}.seg"


def list_segments(directories) -> dict[int, str]:
    """Segment id -> path over all ``directories`` (ids are unique across them)."""
    found: dict[int, str] = {}
    for d in directories:
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        for name in names:
            m = _SEGMENT_RE.match(name)
            if m:
                sid = int(m.group(1))
                if sid in found:
                    log.error("segment id %d appears twice (%s and %s); using the first",
                              sid, found[sid], os.path.join(d, name))
                    continue
                found[sid] = os.path.join(d, name)
    return dict(sorted(found.items()))


class Segment:
    __slots__ = ("id", "path", "fd", "size", "safe_end", "roll_requested", "failed")

    def __init__(self, segment_id: int, path: str, fd: int, size: int):
        self.id = segment_id
        self.path = path
        self.fd: int | None = fd
        self.size = size          # bytes written
        self.safe_end = size      # end of the last durable record
        self.roll_requested = False
        self.failed = False


class SegmentLog(RecordLog):
    """Appends records to segment files in ``directory``. Thread-safe (see :class:`RecordLog`).

    ``existing`` maps the ids of the segments recovery found to their paths (any data directory).
    """

    def __init__(self, io: FileIO, directory: str, channel: str, *, next_segment_id: int,
                 next_lsn: int, max_file_size: int, sync_per_commit: bool,
                 publish_lock, apply: Callable[[LogRecord], None], existing: dict[int, str]):
        super().__init__(channel, next_segment_id=next_segment_id, next_lsn=next_lsn,
                         max_file_size=max_file_size, publish_lock=publish_lock, apply=apply)
        self.io = io
        self.directory = directory
        self.sync_per_commit = sync_per_commit
        self.segments.update(existing)
        self.cur: Segment | None = None
        self._read_fds: dict[int, int] = {}
        self._read_lock = threading.Lock()

    # -- appending --------------------------------------------------------------------------
    def open_segment(self) -> None:
        with self.write_lock:
            if self.cur is None:
                self._create_segment()

    def _place(self, size: int) -> tuple[int, int]:
        seg = self._writable(size)
        return seg.id, seg.size

    def _write(self, rec: LogRecord, buffers: list) -> None:
        seg = self.cur  # the segment _place chose, made current if it was new
        assert seg is not None and seg.fd is not None
        try:
            self.io.write(seg.fd, buffers)
        except OSError as exc:
            self.stats.write_errors += 1
            self._after_write_error(seg, rec.offset, exc)
            raise ChannelWriteError(
                f"file channel '{self.channel}': writing to {seg.path} failed ({exc}); nothing "
                f"was stored, retry later (free disk space if it is full)") from exc
        seg.size = rec.offset + rec.size
        if not self.sync_per_commit:
            rec.state = SYNCED
            seg.safe_end = seg.size

    def _writable(self, size: int) -> Segment:
        seg = self.cur
        if seg is not None and not seg.roll_requested and (
                seg.size + size <= self.max_file_size or seg.size <= SEGMENT_HEADER_SIZE):
            return seg
        if seg is not None:
            self._seal(seg)
        return self._create_segment()

    def _create_segment(self) -> Segment:
        sid = self.next_segment_id
        self.next_segment_id += 1
        path = os.path.join(self.directory, segment_name(sid))
        fd = None
        try:
            fd = self.io.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
            self.io.write(fd, [segment_header(sid)])
            self.io.fsync(fd)
            self.stats.fsyncs += 1
            # The new file's directory entry must be durable before any ack depends on it.
            self.io.fsync_dir(self.directory)
        except OSError as exc:
            self.stats.write_errors += 1
            if fd is not None:
                _quiet(self.io.close, fd)
            _quiet(self.io.unlink, path)
            raise ChannelWriteError(
                f"file channel '{self.channel}': cannot create segment {path} ({exc}); nothing "
                f"was stored, retry later (free disk space if it is full)") from exc
        seg = Segment(sid, path, fd, SEGMENT_HEADER_SIZE)
        self.segments[sid] = path
        self.cur = seg
        self.stats.segments_created += 1
        return seg

    def _seal(self, seg: Segment) -> None:
        """fsync and close a segment we stop writing to (under write_lock)."""
        try:
            self.io.fsync(seg.fd)
        except OSError as exc:
            self.stats.fsyncs += 1
            self.stats.fsync_errors += 1
            self._doom(seg, exc)
            return
        self.stats.fsyncs += 1
        self._mark_synced(seg, self.written_lsn)
        self._close_writer(seg)

    def _after_write_error(self, seg: Segment, offset: int, exc: OSError) -> None:
        try:
            self.io.truncate(seg.fd, offset)
            seg.size = offset
            seg.roll_requested = True
        except OSError:
            self._doom(seg, exc)

    def _mark_synced(self, seg: Segment, upto_lsn: int) -> None:
        changed = False
        for rec in self.pending:
            if rec.state == PENDING and rec.segment == seg.id and rec.lsn <= upto_lsn:
                rec.state = SYNCED
                seg.safe_end = max(seg.safe_end, rec.offset + rec.size)
                changed = True
        if changed:
            self._notify()

    def _doom(self, seg: Segment, exc: OSError) -> None:
        """An fsync of ``seg`` failed: fail its unsynced records and stop using it (fsyncgate)."""
        message = (f"file channel '{self.channel}': fsync of {seg.path} failed ({exc}); the "
                   f"operation was not stored, retry it (the channel moved to a new segment)")
        log.error("%s", message)
        for rec in self.pending:
            if rec.segment == seg.id and rec.state == PENDING:
                rec.state = FAILED
                rec.error = message
        seg.failed = True
        if seg.fd is not None:
            try:
                self.io.truncate(seg.fd, seg.safe_end)
                seg.size = seg.safe_end
            except OSError:
                pass
            self._close_writer(seg)
        self._notify()

    def _close_writer(self, seg: Segment) -> None:
        if seg.fd is not None:
            _quiet(self.io.close, seg.fd)
            seg.fd = None
        if self.cur is seg:
            self.cur = None

    # -- durability -------------------------------------------------------------------------
    def sync(self) -> None:
        """fsync the current segment, covering every record written so far. Never raises."""
        with self.write_lock:
            seg = self.cur
            if seg is None or seg.fd is None:
                return
            target = self.written_lsn
            # A duplicate descriptor: a concurrent roll may close the segment's own descriptor.
            fd = os.dup(seg.fd)
        error = None
        try:
            self.io.fsync(fd)
        except OSError as exc:
            error = exc
        finally:
            os.close(fd)
        with self.write_lock:
            self.stats.fsyncs += 1
            if error is None:
                self._mark_synced(seg, target)
            else:
                self.stats.fsync_errors += 1
                self._doom(seg, error)

    def replay_position(self) -> tuple[int, int]:
        if self.pending:
            return self.pending[0].segment, self.pending[0].offset
        if self.cur is not None:
            return self.cur.id, self.cur.size
        return self.next_segment_id, SEGMENT_HEADER_SIZE

    # -- reading and deleting ---------------------------------------------------------------
    def read(self, segment_id: int, offset: int, size: int) -> bytes:
        with self._read_lock:
            fd = self._read_fds.get(segment_id)
            if fd is None:
                path = self.segments.get(segment_id)
                if path is None:
                    raise CorruptRecord(f"segment {segment_id} is missing")
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError as exc:
                    raise CorruptRecord(f"cannot open {path}: {exc}") from exc
                self._read_fds[segment_id] = fd
            try:
                return self.io.pread(fd, size, offset)
            except OSError as exc:
                raise CorruptRecord(f"cannot read segment {segment_id} at {offset}: {exc}") from exc

    def delete_before(self, position: tuple[int, int]) -> list[int]:
        """Delete every segment before ``position``'s except the current one (whole files only)."""
        segment_id = position[0]
        with self.write_lock:
            current = self.cur.id if self.cur is not None else None
            doomed = [s for s in self.segments if s < segment_id and s != current]
            paths = {s: self.segments.pop(s) for s in doomed}
        deleted = []
        for sid, path in paths.items():
            with self._read_lock:
                fd = self._read_fds.pop(sid, None)
            if fd is not None:
                _quiet(os.close, fd)
            try:
                self.io.unlink(path)
                deleted.append(sid)
            except FileNotFoundError:
                deleted.append(sid)
            except OSError as exc:
                log.warning("file channel '%s': cannot delete %s: %s", self.channel, path, exc)
        if deleted:
            self.stats.segments_deleted += len(deleted)
            for directory in sorted({os.path.dirname(paths[s]) for s in deleted}):
                try:
                    self.io.fsync_dir(directory)
                except OSError as exc:
                    log.warning("file channel '%s': fsync of %s failed: %s", self.channel,
                                directory, exc)
        return deleted

    def close(self, sync: bool = True) -> None:
        with self.write_lock:
            if self.closed:
                return
            self.closed = True
            if self.cur is not None:
                if sync:
                    self._seal(self.cur)
                else:
                    self._close_writer(self.cur)
        with self._read_lock:
            fds, self._read_fds = list(self._read_fds.values()), {}
        for fd in fds:
            _quiet(os.close, fd)
        self._notify()


# -- scanning at recovery -----------------------------------------------------------------------
@dataclass
class SegmentScan:
    """What scanning one segment found (besides the records handed to the callback)."""

    path: str
    records: int = 0
    last_lsn: int = -1
    corrupt: list[Damage] = field(default_factory=list)
    torn_tail: Damage | None = None
    bad_header: bool = False
    removed: bool = False


def scan_segment(io: FileIO, path: str, segment_id: int, start: int, is_last: bool,
                 on_record: Callable[[Record], None], min_lsn: int = -1) -> SegmentScan:
    """Feed each verified record of a segment from ``start`` to ``on_record`` and repair its tail.

    A damaged span followed by valid records is corruption: reported in ``corrupt``, its records
    are skipped. A damaged tail of the newest segment is a torn write: the file is truncated to
    the end of the last good record and fsynced. A damaged tail of an older segment is reported as
    corruption and left in place. ``on_record`` must copy what it keeps: payloads are views of a
    memory map that is closed on return. ``min_lsn`` is the highest lsn replayed before this
    segment: after damage, only a record with a higher lsn resynchronises the scan.
    """
    result = SegmentScan(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size < SEGMENT_HEADER_SIZE:
            # Only possible when a crash hit the creation of a segment: it holds no record.
            if is_last or size == 0:
                os.close(fd)
                fd = -1
                _quiet(io.unlink, path)
                result.removed = True
                return result
            result.bad_header = True
            return result
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        if fd != -1:
            os.close(fd)
    tail_at = None
    try:
        if not check_segment_header(mm, segment_id):
            result.bad_header = True
        pos = max(start, SEGMENT_HEADER_SIZE)
        if pos > size:
            log.warning("segment %s is shorter (%d) than the checkpoint's replay position %d",
                        path, size, pos)
        for item in records.scan(mm, pos, min_lsn):
            if isinstance(item, Record):
                on_record(item)
                result.records += 1
                result.last_lsn = max(result.last_lsn, item.lsn)
            elif item.tail and is_last:
                result.torn_tail = item
                tail_at = item.start
            else:
                result.corrupt.append(item)
            del item
    finally:
        try:
            mm.close()
        except BufferError:  # a view escaped; the map is freed when it is collected
            pass
    if tail_at is not None:
        try:
            wfd = io.open(path, os.O_WRONLY)
            try:
                io.truncate(wfd, tail_at)
                io.fsync(wfd)
            finally:
                io.close(wfd)
        except OSError as exc:
            # Replay already ignores the tail; the next open finds it again (then as corruption).
            log.error("cannot truncate the torn tail of %s at %d: %s", path, tail_at, exc)
    return result


def _quiet(fn, *args) -> None:
    try:
        fn(*args)
    except OSError:
        pass
