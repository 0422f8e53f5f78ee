"""The file channel's storage on local disk: segment files, a checkpoint file and ``flock`` locks.

Layout: ``<data_dirs[0]>/log-<id>.seg`` segment files (every data directory is replayed, new
segments go to the first; see :mod:`rayflume.channels.file.log`), ``<checkpoint_dir>/checkpoint``
(see :mod:`rayflume.channels.file.checkpoint`) and an ``in_use.lock`` in each directory, locked
exclusively for as long as the channel is open (see :mod:`rayflume.channels.file.lock`). Every
write, fsync, unlink and directory creation goes through one
:class:`~rayflume._private.fileio.FileIO`, the seam tests inject faults and power cuts with.

Replay scans the segments from the checkpoint's position: a torn tail (a partial last record from
a crash mid-write) of the newest segment is truncated and fsynced; a record in the middle that
does not verify is skipped, counted in ``CorruptRecordCount`` and logged, and the scan
resynchronises on the next record marker. A missing or corrupt checkpoint means a full replay.
"""
from __future__ import annotations

import logging
import os
from functools import partial

from rayflume._private.fileio import FileIO
from rayflume.channels.file.checkpoint import (
    CHECKPOINT_FILE,
    BadCheckpoint,
    Checkpoint,
    read_checkpoint,
    remove_stale_tmp,
    write_checkpoint,
)
from rayflume.channels.file.lock import lock_directories
from rayflume.channels.file.log import SegmentLog, list_segments, scan_segment
from rayflume.channels.file.storage import ChannelStorage, OnRecord

log = logging.getLogger(__name__)


class DiskStorage(ChannelStorage[SegmentLog]):
    """Segment files in local directories (see the module docstring).

    ``sync_per_commit=False`` is the interval mode: appends count as durable once written and
    :meth:`sync` (every ``fsync_interval_s``) fsyncs them.
    """

    on_object_store = False

    def __init__(self, channel: str, checkpoint_dir: str, data_dirs: list[str], *, io: FileIO,
                 sync_per_commit: bool, max_file_size: int, publish_lock, apply):
        super().__init__(channel, os.path.abspath(os.path.expanduser(checkpoint_dir)),
                         [os.path.abspath(os.path.expanduser(d.strip())) for d in data_dirs])
        self.io = io
        self.sync_per_commit = sync_per_commit
        self.max_file_size = max_file_size
        self.publish_lock = publish_lock
        self.apply = apply
        self._found: dict[int, str] = {}  # segment id -> path, listed at recovery

    def lock(self) -> None:
        for d in [self.checkpoint_dir, *self.data_dirs]:
            # Through the seam, fsyncing each new directory's parent: os.makedirs alone left a
            # new channel's directories undurable, so a power cut could remove the data
            # directory with the puts it had acknowledged (found for the power-loss tests).
            self.io.makedirs(d)
        self.locks = lock_directories([self.checkpoint_dir, *self.data_dirs], self.channel)

    # -- recovery --------------------------------------------------------------------------------
    def read_checkpoint(self, stats: dict) -> Checkpoint | None:
        remove_stale_tmp(self.io, self.checkpoint_dir)
        self._found = list_segments(self.data_dirs)
        try:
            return read_checkpoint(self.checkpoint_dir)
        except BadCheckpoint as exc:
            if self._found or os.path.exists(os.path.join(self.checkpoint_dir, CHECKPOINT_FILE)):
                log.warning("file channel '%s': %s; replaying all %d segments", self.channel, exc,
                            len(self._found))
                stats["ReplayFull"] = 1
            return None

    def replay(self, ckpt: Checkpoint | None, on_record: OnRecord, stats: dict) -> None:
        segments = self._found
        if ckpt is not None:
            start_segment, start_offset = ckpt.position
            next_segment, next_lsn = ckpt.next_segment_id, ckpt.next_lsn
        else:
            start_segment, start_offset = (min(segments) if segments else 1), 0
            next_segment, next_lsn = 1, 1
        last = max(segments) if segments else None
        seen_lsn = -1
        for sid, path in list(segments.items()):
            if sid < start_segment:
                continue
            scan = scan_segment(self.io, path, sid, start_offset if sid == start_segment else 0,
                                sid == last, partial(on_record, sid), seen_lsn)
            if scan.removed:
                del segments[sid]
                continue
            stats["ReplayRecordCount"] += scan.records
            seen_lsn = max(seen_lsn, scan.last_lsn)
            next_lsn = max(next_lsn, scan.last_lsn + 1)
            if scan.bad_header:
                log.error("file channel '%s': segment %s has a damaged header; reading its records "
                          "anyway", self.channel, path)
            for d in scan.corrupt:
                stats["CorruptRecordCount"] += 1
                log.error("file channel '%s': skipped %d damaged bytes at offset %d of %s (a record "
                          "failed its checksum); its events are lost", self.channel, d.end - d.start,
                          d.start, path)
            if scan.torn_tail is not None:
                stats["TornTailCount"] += 1
                log.warning("file channel '%s': truncated a torn write at offset %d of %s (%d bytes "
                            "of an unfinished record)", self.channel, scan.torn_tail.start, path,
                            scan.torn_tail.end - scan.torn_tail.start)
        if last is not None:  # ids are never reused, not even those of removed empty segments
            next_segment = max(next_segment, last + 1)
        self._log = SegmentLog(
            self.io, self.data_dirs[0], self.channel, next_segment_id=next_segment, next_lsn=next_lsn,
            max_file_size=self.max_file_size, sync_per_commit=self.sync_per_commit,
            publish_lock=self.publish_lock, apply=self.apply, existing=segments)

    def holds(self, segment: int, offset: int) -> bool:
        return segment in self._found  # whole files: a segment that is there holds its records

    def start(self) -> None:
        self.log.open_segment()

    # -- checkpoints, space, ownership -----------------------------------------------------------
    def write_checkpoint(self, ckpt: Checkpoint) -> None:
        if not self.sync_per_commit:
            self.log.sync()  # everything the snapshot names must be durable before it is
        write_checkpoint(self.io, self.checkpoint_dir, ckpt)

    def delete_before(self, position: tuple[int, int]) -> None:
        self.log.delete_before(position)

    def free_bytes(self) -> int | None:
        try:
            return self.io.disk_free(self.data_dirs[0])
        except OSError:
            return None

    def ownership_lost(self) -> str:
        return ""  # an flock is held until it is released: it cannot be lost
