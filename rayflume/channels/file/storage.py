"""Where the file channel keeps its log, checkpoint and lock: one protocol, two implementations.

:class:`ChannelStorage` is everything :class:`~rayflume.channels.file.channel.FileChannel` asks of
its storage. The channel holds one and never asks which kind it is:

* :class:`~rayflume.channels.file.disk_storage.DiskStorage`: segment files in local directories
  (:class:`~rayflume.channels.file.log.SegmentLog`), the checkpoint file, ``flock`` locks;
* :class:`~rayflume.channels.file.object_storage.ObjectStorage`: chunk objects on an object store
  (:class:`~rayflume.channels.file.objlog.ObjectLog`), the checkpoint object, heartbeat-renewed
  lock objects.

Life cycle: :meth:`~ChannelStorage.lock` (exclusive ownership, or raise); recovery
(:func:`rayflume.channels.file.recovery.recover`, through :meth:`~ChannelStorage.read_checkpoint`,
:meth:`~ChannelStorage.replay` and :meth:`~ChannelStorage.holds`), which opens the log;
:meth:`~ChannelStorage.start`; appends, reads and checkpoints; :meth:`~ChannelStorage.close`.

What both promise the channel:

* :meth:`~ChannelStorage.wait_durable` returns only once the record survives a crash of the
  process and of the machine (unless the log syncs on an interval), and raises
  :class:`~rayflume.channels.file.errors.ChannelWriteError` when it will never be stored;
  concurrent waiters share one write-back (group commit);
* durable records are handed to the channel's ``apply`` callback under ``publish_lock``, in log order;
* a checkpoint is replaced atomically: a crash leaves the old or the new one;
* while :meth:`~ChannelStorage.ownership_lost` says so, this instance writes no checkpoint and
  deletes nothing (another instance may own the storage now).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Generic, TypeVar

from rayflume.channels.file.checkpoint import Checkpoint
from rayflume.channels.file.recordlog import LogRecord, RecordLog
from rayflume.channels.file.records import Record

# ``on_record(segment, record)``: one verified record found by replay, in log order.
OnRecord = Callable[[int, Record], None]

LogT = TypeVar("LogT", bound=RecordLog)


class ChannelStorage(ABC, Generic[LogT]):
    """The storage protocol of the file channel (see the module docstring). Thread-safe once open.

    The log's part (append, group commit, read, position) is implemented here once, over the
    :class:`~rayflume.channels.file.recordlog.RecordLog` that :meth:`replay` opens; the rest is
    each storage's own. ``stats`` arguments are the channel's counters (``CorruptRecordCount``,
    ``ReplayFull``...), updated where recovery finds something to count.
    """

    on_object_store: bool

    def __init__(self, channel: str, checkpoint_dir: str, data_dirs: list[str]):
        self.channel = channel
        self.checkpoint_dir = checkpoint_dir
        self.data_dirs = data_dirs
        self.locks: list = []  # held from lock() until close()
        self._log: LogT | None = None

    @property
    def log(self) -> LogT:
        """The log, open once :meth:`replay` has run."""
        if self._log is None:
            raise RuntimeError(f"file channel '{self.channel}': its log is not open (replay first)")
        return self._log

    # -- opening -------------------------------------------------------------------------------
    @abstractmethod
    def lock(self) -> None:
        """Create what must exist and take exclusive ownership; raise ChannelLocked if another
        instance holds it (ChannelWriteError if the storage cannot be reached)."""

    @abstractmethod
    def read_checkpoint(self, stats: dict) -> Checkpoint | None:
        """List the log and read the checkpoint; None (logged) when replay must read everything."""

    @abstractmethod
    def replay(self, ckpt: Checkpoint | None, on_record: OnRecord, stats: dict) -> None:
        """Hand every verified record after ``ckpt``'s position to ``on_record``, in log order,
        counting and logging damage; then open the log to append after everything it found."""

    @abstractmethod
    def holds(self, segment: int, offset: int) -> bool:
        """Whether the record at (``segment``, ``offset``) can still be read (after replay)."""

    def start(self) -> None:
        """Get ready for the first append (on disk: create a segment; an object store's segment
        exists once its first chunk is written). ChannelWriteError if that failed: the first
        append tries again."""

    # -- the log ---------------------------------------------------------------------------------
    def append(self, rtype: int, kind: str, parts: list, crc_of_payload: int, data) -> LogRecord:
        """Write one record (see :meth:`RecordLog.append`); it counts once :meth:`wait_durable` returned."""
        return self.log.append(rtype, kind, parts, crc_of_payload, data)

    def wait_durable(self, rec: LogRecord) -> None:
        """Return once ``rec`` is durable and published; raise ChannelWriteError if it never will be."""
        self.log.wait_durable(rec)

    def sync(self) -> None:
        """Make every record appended so far durable (the interval mode's fsync). Never raises."""
        self.log.sync()

    def read(self, segment: int, offset: int, size: int) -> bytes:
        """A record's bytes; CorruptRecord if they are gone, ChannelReadError if unreachable now."""
        return self.log.read(segment, offset, size)

    def position(self) -> tuple[tuple[int, int], int, int]:
        """(replay position, next segment id, next lsn) for a checkpoint; call it under ``publish_lock``
        so that nothing is published in between."""
        log = self.log
        with log.write_lock:
            return log.replay_position(), log.next_segment_id, log.next_lsn

    def segment_paths(self) -> dict[int, str]:
        """Segment id -> where it is (a path or a URI), for every segment the log keeps."""
        log = self.log
        with log.write_lock:
            return dict(log.segments)

    # -- checkpoints, space, ownership -----------------------------------------------------------
    @abstractmethod
    def write_checkpoint(self, ckpt: Checkpoint) -> None:
        """Replace the checkpoint atomically, once everything it names is durable. Raises OSError."""

    @abstractmethod
    def delete_before(self, position: tuple[int, int]) -> None:
        """Delete log data holding only records before ``position`` (never while ownership is lost)."""

    @abstractmethod
    def free_bytes(self) -> int | None:
        """Free space where puts are written, or None when there is no such figure to check."""

    @abstractmethod
    def ownership_lost(self) -> str:
        """Why this instance may not write to its storage now; "" while it owns it."""

    def metrics(self) -> dict:
        """The storage's counters for the channel's metrics."""
        log = self.log
        stats = log.stats
        return dict(FsyncCount=stats.fsyncs, FsyncErrorCount=stats.fsync_errors,
                    WriteErrorCount=stats.write_errors, SegmentCount=len(log.segments),
                    SegmentsDeletedCount=stats.segments_deleted)

    def close(self, sync: bool = True) -> None:
        """Close the log (with ``sync``, making what was appended durable first) and release the locks."""
        try:
            if self._log is not None:
                self._log.close(sync=sync)
        finally:
            for lk in self.locks:
                lk.release()
            self.locks = []
