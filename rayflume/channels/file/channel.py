"""The ``file`` channel: a durable write-ahead log of Arrow batches on local disk.

On-disk format
--------------
``<data_dirs[0]>/log-<id>.seg`` are segment files: a 20-byte header, then records framed as
``magic | crc32 | length | type | lsn | payload`` (see :mod:`rayflume.channels.file.records`).
Two record types exist:

* ``PUT``: one committed put: its txn id, row count, Arrow byte size and the batch as an Arrow IPC
  stream. The put's events are addressed by (segment id, record offset, row range).
* ``TAKE_COMMIT``: the (segment, record offset, first row, end row) ranges of one committed take.

Rollbacks are not logged: a take without a ``TAKE_COMMIT`` record is, on recovery, exactly a
rolled-back take, so a rollback record would change nothing that replay computes.

``<checkpoint_dir>/checkpoint`` is a snapshot of every event still in the channel (as ranges of
put records), the txn ids of committed puts and the log position it covers (see
:mod:`rayflume.channels.file.checkpoint`). Each directory holds an ``in_use.lock`` that this
instance locks exclusively (``flock``) for as long as it is open.

Commit rule
-----------
``put`` returns only after its record is written and fsynced (and, when the record opened a new
segment, after the directory was fsynced). ``commit`` of a take returns only after its
``TAKE_COMMIT`` record is fsynced. Concurrent puts and commits share fsyncs (group commit): one
thread runs the fsync for all records written before it started. Records become visible (puts to
takers, commits as removals) in log order, only once durable. With ``fsync="interval"`` puts and
commits return after the write and a background thread fsyncs every ``fsync_interval_s``: weaker,
a machine crash can lose up to that interval of acknowledged puts (and resurrect committed takes).

Recovery
--------
On open the channel locks its directories, reads the checkpoint and replays the segments from the
checkpoint's position: puts are added (skipping txn ids already seen, so a retried put that was
written twice is delivered once), ``TAKE_COMMIT`` ranges are removed. Leases that were not
committed come back, in log order, ahead of everything put after them. A torn tail (a partial last
record from a crash mid-write) is truncated and fsynced; a record in the middle that does not verify
is skipped, counted in ``CorruptRecordCount`` and logged, and the scan resynchronises on the next
record marker. A missing or corrupt checkpoint means a full replay of every segment. After replay a
new segment is started and a checkpoint written; segments older than both the checkpoint position
and every live event are deleted after each checkpoint.

Failures
--------
A write or fsync error fails the put or commit with :class:`ChannelWriteError` (nothing is
acknowledged); after an fsync error the segment is truncated to its last durable record, closed,
and the next operation starts a new segment. When free space on the data directory is below
``minimum_required_space_bytes`` puts are refused with :class:`InsufficientDiskSpace` (a
``ChannelFull``); takes and commits still work, because draining is what frees space.

On an object store
------------------
When ``data_dirs`` is one URI ``s3://bucket/prefix`` (and ``checkpoint_dir`` a URI too, by default
``<data uri>/checkpoint``) the same log lives in the object store and nothing is written locally,
so the channel survives the loss of its node and may restart on any node. An object store has no
append and no fsync; an object is durable once its PUT returned. So (see
:mod:`rayflume.channels.file.objlog`):

* each group commit writes one new immutable object ``<uri>/seg-<segment>/<offset>.rec`` holding
  the records of that group commit, framed and checksummed as on disk; a put or commit returns
  only after the PUT of its object returned (that PUT is the fsync, and concurrent commits share
  it); ``fsync="interval"`` is refused;
* replay lists the objects and reads those after the checkpoint's position, in order; every object
  names its predecessor, so a missing object in the middle is detected, logged and counted
  (``MissingObjectCount``); a record that fails its checksum is skipped and counted as on disk;
  an object cannot be torn;
* the checkpoint is the object ``<checkpoint_dir>/checkpoint``, replaced by one (atomic) PUT;
  after each checkpoint, objects holding only consumed records are deleted;
* instead of ``flock``, a lock object ``<uri>/lock`` names the owner and is renewed by a heartbeat
  (:class:`~rayflume.channels.file.objstore.ObjectLock`, advisory): a second instance refuses to
  open while the owner renews it, a crashed owner's lock lapses after ``lock_ttl_s``; an
  instance that cannot renew its lock acknowledges nothing (puts and commits fail with
  :class:`ChannelLockLost`) and writes no checkpoint until it renews it, and for good once another
  instance took it over; segment ids carry the owner's epoch, so a zombie never overwrites the new
  owner's objects;
* event data stays cached in memory as on disk (``cache_bytes``); events that are not (after a
  restart) are read back with a GET, objects cached in a small LRU; a failed GET fails the take
  with :class:`ChannelReadError` and leaves the events queued.

Connection settings are ``object_store_options`` (``pyarrow.fs.S3FileSystem`` keyword arguments).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rayflume._private.fileio import FileIO
from rayflume.channels.base import IdWindow, now
from rayflume.channels.file import records
from rayflume.channels.file.checkpoint import (
    BadCheckpoint,
    Checkpoint,
    MissingCheckpoint,
    read_checkpoint,
    read_checkpoint_object,
    remove_stale_tmp,
    write_checkpoint,
    write_checkpoint_object,
)
from rayflume.channels.file.errors import ChannelClosed, ChannelReadError, ChannelWriteError, InsufficientDiskSpace
from rayflume.channels.file.lock import lock_directories
from rayflume.channels.file.log import PUBLISHED, LogRecord, SegmentLog, list_segments, scan_segment
from rayflume.channels.file.objlog import EPOCH_SHIFT, ChunkCache, ObjectLog, list_chunks, replay_chunks
from rayflume.channels.file.objstore import ObjectLock, ObjectStore, check_uri, is_uri
from rayflume.channels.file.records import CorruptRecord, Record
from rayflume.channels.leases import COMMITTED, LeasedChannel, LeaseTable
from rayflume.errors import ChannelFull
from rayflume.event import EventBatch

log = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_MAX_FILE_SIZE = 256 * MiB
DEFAULT_MIN_FREE_SPACE = 524_288_000
DEFAULT_CACHE_BYTES = 64 * MiB
DEFAULT_LOCK_TTL = 15.0
CHUNK_CACHE_BYTES = 32 * MiB
FSYNC_MODES = ("per_commit", "interval")


@dataclass(slots=True)
class Ref:
    """Rows ``[start, stop)`` of the put record at (``segment``, ``offset``).

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


class FileLease:
    __slots__ = ("lease_id", "holder", "refs", "expires_at", "events", "nbytes", "commit_rec")

    def __init__(self, lease_id: str, holder: str, refs: list[Ref], expires_at: float):
        self.lease_id = lease_id
        self.holder = holder
        self.refs = refs
        self.expires_at = expires_at
        self.events = sum(r.events for r in refs)
        self.nbytes = sum(r.nbytes for r in refs)
        self.commit_rec: LogRecord | None = None

    @property
    def committing(self) -> bool:
        """Its TAKE_COMMIT record is written and not yet durable: the commit wins over rollback,
        release and expiry."""
        return self.commit_rec is not None


class FileChannel(LeasedChannel):
    """A durable channel backed by a write-ahead log (see the module docstring).

    Thread-safe. Delivery: at-least-once across crashes of the process and of the machine
    (``fsync="per_commit"``); every put that returned is delivered unless its bytes are damaged on
    disk, in which case the loss is counted (``CorruptRecordCount``) and logged.

    ``io`` replaces the low-level file operations (tests inject faults with it). ``cache_bytes``
    bounds how much of the queued data is also kept in memory to serve takes without a read.
    """

    _leases: LeaseTable[FileLease]

    def __init__(self, name: str, checkpoint_dir: str, data_dirs, capacity: int = 1_000_000,
                 transaction_capacity: int = 10_000, byte_capacity: int | None = None,
                 lease_timeout_s: float = 60.0, max_file_size_bytes: int = DEFAULT_MAX_FILE_SIZE,
                 checkpoint_interval_s: float = 30.0,
                 minimum_required_space_bytes: int = DEFAULT_MIN_FREE_SPACE,
                 fsync: str = "per_commit", fsync_interval_s: float = 5.0,
                 checkpoint_on_close: bool = True, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 io: FileIO | None = None, object_store_options: dict | None = None,
                 lock_ttl_s: float = DEFAULT_LOCK_TTL, store: ObjectStore | None = None):
        super().__init__(name, capacity, transaction_capacity, byte_capacity, lease_timeout_s)
        if isinstance(data_dirs, str):
            data_dirs = [d for d in data_dirs.split(",") if d.strip()]
        if not data_dirs:
            raise ValueError(f"file channel '{name}': data_dirs is empty; give at least one directory")
        if fsync not in FSYNC_MODES:
            raise ValueError(f"file channel '{name}': fsync must be one of {FSYNC_MODES}, not {fsync!r}")
        self._store: ObjectStore | None = None
        self._ckpt_store: ObjectStore | None = None
        if store is not None or is_uri(checkpoint_dir) or any(is_uri(d) for d in data_dirs):
            self._init_object_store(name, checkpoint_dir, data_dirs, fsync, object_store_options,
                                    store)
        else:
            self.checkpoint_dir = os.path.abspath(os.path.expanduser(checkpoint_dir))
            self.data_dirs = [os.path.abspath(os.path.expanduser(d.strip())) for d in data_dirs]
        self.lock_ttl_s = lock_ttl_s
        self.max_file_size_bytes = max_file_size_bytes
        self.checkpoint_interval_s = checkpoint_interval_s
        self.minimum_required_space_bytes = minimum_required_space_bytes
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.checkpoint_on_close = checkpoint_on_close
        self.cache_bytes = cache_bytes
        self._io = io or FileIO()

        self._queue: deque[Ref] = deque()
        self._committed_txns = IdWindow()
        self._inflight_txns: set[str] = set()
        self._txn_done = threading.Condition(self._lock)
        self._queued_events = self._queued_bytes = 0
        self._leased_events = self._leased_bytes = 0
        self._reserved_events = self._reserved_bytes = 0
        self._cache_used = 0
        self._closed = False
        self._dirty = True
        self._checkpoint_lock = threading.Lock()
        self._stop = threading.Event()
        self._stats = dict(CorruptRecordCount=0, CorruptEventCount=0, TornTailCount=0,
                           MissingEventCount=0, MissingObjectCount=0, DiskSpaceRefusalCount=0,
                           CheckpointCount=0,
                           CheckpointErrorCount=0, ReplayRecordCount=0, ReplayFull=0,
                           ReplayDuplicateEventCount=0, ReplaySeconds=0.0)

        self._log: SegmentLog | None = None
        if self._store is None:
            for d in [self.checkpoint_dir, *self.data_dirs]:
                # Through the seam, fsyncing each new directory's parent: os.makedirs alone left a
                # new channel's directories undurable, so a power cut could remove the data
                # directory with the puts it had acknowledged (found for the power-loss tests).
                self._io.makedirs(d)
            self._dir_locks = lock_directories([self.checkpoint_dir, *self.data_dirs], name)
        else:
            self._dir_locks = self._lock_object_store()
        try:
            self._recover()
            try:
                self._log.open_segment()
            except ChannelWriteError as exc:
                # Start anyway (takes free space); the first put retries creating a segment.
                log.error("%s", exc)
            self.checkpoint()
        except BaseException:
            if self._log is not None:
                self._log.close(sync=False)
            self._release_dir_locks()
            raise
        self._maintenance = threading.Thread(target=self._maintain, name=f"file-channel-{name}",
                                             daemon=True)
        self._maintenance.start()

    # -- object-store storage ------------------------------------------------------------------
    def _init_object_store(self, name, checkpoint_dir, data_dirs, fsync, options, store) -> None:
        where = f"file channel '{name}'"
        if len(data_dirs) != 1 or not is_uri(data_dirs[0]) or not is_uri(checkpoint_dir):
            raise ValueError(
                f"{where}: on an object store data_dirs is exactly one URI and checkpoint_dir a URI "
                f"too (got checkpoint_dir={checkpoint_dir!r}, data_dirs={list(data_dirs)!r}); a "
                f"local checkpoint next to remote segments would not survive a move to another node")
        if fsync != "per_commit":
            raise ValueError(f"{where}: fsync must be 'per_commit' on an object store: there is no "
                             f"page cache between a write and its PUT, each group commit is one PUT")
        try:
            self.data_dirs = [check_uri(data_dirs[0].strip())]
            self.checkpoint_dir = check_uri(checkpoint_dir)
            self._store = store.at(self.data_dirs[0]) if store is not None else \
                ObjectStore.from_uri(self.data_dirs[0], options)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from exc
        self._ckpt_store = self._store.at(self.checkpoint_dir)

    def _lock_object_store(self) -> list[ObjectLock]:
        roots = [self._store]
        if not self._store.contains(self._ckpt_store):
            roots.append(self._ckpt_store)
        locks: list[ObjectLock] = []
        try:
            for st in roots:
                lk = ObjectLock(st, self.name, self.lock_ttl_s)
                try:
                    lk.acquire()
                except OSError as exc:
                    lk.abandon()
                    raise ChannelWriteError(
                        f"file channel '{self.name}': cannot take its lock in {st.uri} ({exc}); it "
                        f"did not open. Check that the object store is reachable and "
                        f"object_store_options are right") from exc
                locks.append(lk)
        except BaseException:
            for lk in locks:
                lk.release()
            raise
        return locks

    def _locks_valid(self) -> bool:
        return all(lk.valid() for lk in self._dir_locks)

    def _lock_lost_reason(self) -> str:
        return "; ".join(lk.lost_reason for lk in self._dir_locks if lk.lost_reason)

    @property
    def on_object_store(self) -> bool:
        """Whether the log and checkpoint live on an object store (``data_dirs`` is a URI)."""
        return self._store is not None

    # -- recovery ------------------------------------------------------------------------------
    def _recover(self) -> None:
        if self._store is not None:
            self._recover_objects()
            return
        t0 = time.monotonic()
        remove_stale_tmp(self._io, self.checkpoint_dir)
        segments = list_segments(self.data_dirs)
        state = _Recovered()
        try:
            ckpt = read_checkpoint(self.checkpoint_dir)
        except BadCheckpoint as exc:
            ckpt = None
            if segments or os.path.exists(os.path.join(self.checkpoint_dir, "checkpoint")):
                log.warning("file channel '%s': %s; replaying all %d segments", self.name, exc,
                            len(segments))
                self._stats["ReplayFull"] = 1
        if ckpt is not None:
            state.load(ckpt)
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
            scan = scan_segment(self._io, path, sid, start_offset if sid == start_segment else 0,
                                sid == last, lambda rec, sid=sid: state.apply(sid, rec), seen_lsn)
            if scan.removed:
                del segments[sid]
                continue
            self._stats["ReplayRecordCount"] += scan.records
            seen_lsn = max(seen_lsn, scan.last_lsn)
            next_lsn = max(next_lsn, scan.last_lsn + 1)
            if scan.bad_header:
                log.error("file channel '%s': segment %s has a damaged header; reading its records "
                          "anyway", self.name, path)
            for d in scan.corrupt:
                self._stats["CorruptRecordCount"] += 1
                log.error("file channel '%s': skipped %d damaged bytes at offset %d of %s (a record "
                          "failed its checksum); its events are lost", self.name, d.end - d.start,
                          d.start, path)
            if scan.torn_tail is not None:
                self._stats["TornTailCount"] += 1
                log.warning("file channel '%s': truncated a torn write at offset %d of %s (%d bytes "
                            "of an unfinished record)", self.name, scan.torn_tail.start, path,
                            scan.torn_tail.end - scan.torn_tail.start)
        if last is not None:  # ids are never reused, not even those of removed empty segments
            next_segment = max(next_segment, last + 1)
        self._log = SegmentLog(
            self._io, self.data_dirs[0], self.name, next_segment_id=next_segment, next_lsn=next_lsn,
            max_file_size=self.max_file_size_bytes, sync_per_commit=self.fsync == "per_commit",
            publish_lock=self._lock, apply=self._apply, existing=segments)
        self._load_recovered(state, lambda seg, _off: seg in segments, ckpt is None, t0)

    def _recover_objects(self) -> None:
        t0 = time.monotonic()
        store = self._store
        try:
            listing = list_chunks(store)
            try:
                ckpt = read_checkpoint_object(self._ckpt_store)
            except MissingCheckpoint:
                ckpt = None
                if listing:
                    log.warning("file channel '%s': no checkpoint in %s; replaying all %d objects",
                                self.name, self.checkpoint_dir, sum(map(len, listing.values())))
                    self._stats["ReplayFull"] = 1
            except BadCheckpoint as exc:
                ckpt = None
                log.warning("file channel '%s': %s; replaying all %d objects", self.name, exc,
                            sum(map(len, listing.values())))
                self._stats["ReplayFull"] = 1
            state = _Recovered()
            if ckpt is not None:
                state.load(ckpt)
                position, next_lsn = ckpt.position, ckpt.next_lsn
            else:
                first = next(iter(listing.values()), None)
                position, next_lsn = ((first[0].segment, first[0].start) if first else (0, 0)), 1
            cache = ChunkCache(CHUNK_CACHE_BYTES)
            replay = replay_chunks(store, listing, tuple(position), -1, state.apply, cache)
        except OSError as exc:
            raise ChannelReadError(
                f"file channel '{self.name}': cannot read its log from {store.uri} ({exc}); it did "
                f"not open. Check that the object store is reachable and object_store_options "
                f"are right") from exc
        self._stats["ReplayRecordCount"] += replay.records
        self._stats["ReplayObjectCount"] = replay.objects
        for what in replay.corrupt:
            self._stats["CorruptRecordCount"] += 1
            log.error("file channel '%s': %s; the records there are lost", self.name, what)
        for what in replay.missing:
            self._stats["MissingObjectCount"] += 1
            log.error("file channel '%s': %s; their events are lost (and takes they committed "
                      "may be delivered again)", self.name, what)
        # A new epoch for this owner: its segment ids never collide with any earlier writer's.
        epoch = max([lk.epoch for lk in self._dir_locks]
                    + [(sid >> EPOCH_SHIFT) + 1 for sid in listing]
                    + ([(ckpt.next_segment_id >> EPOCH_SHIFT) + 1] if ckpt is not None else []))
        for lk in self._dir_locks:
            lk.epoch = epoch
        self._log = ObjectLog(
            store, self.name, epoch=epoch, next_lsn=max(next_lsn, replay.last_lsn + 1),
            max_file_size=self.max_file_size_bytes, publish_lock=self._lock, apply=self._apply,
            listing=listing, lock_valid=self._locks_valid, cache=cache,
            lock_lost_reason=self._lock_lost_reason)
        self._load_recovered(state, self._log.has, ckpt is None, t0)

    def _load_recovered(self, state: "_Recovered", exists, full: bool, t0: float) -> None:
        self._stats["CorruptRecordCount"] += state.corrupt
        refs, missing = state.refs(exists)
        if missing:
            self._stats["MissingEventCount"] += missing
            log.error("file channel '%s': %d events named by the checkpoint are in segments or "
                      "objects that no longer exist; they are lost", self.name, missing)
        self._queue.extend(refs)
        self._queued_events = sum(r.events for r in refs)
        self._queued_bytes = sum(r.nbytes for r in refs)
        for txn in state.txns.items():
            self._committed_txns.add(txn)
        self._stats["ReplayDuplicateEventCount"] = state.duplicates
        self._stats["ReplaySeconds"] = round(time.monotonic() - t0, 6)
        log.info("file channel '%s' recovered %d events (%s replay of %d records in %.3fs)",
                 self.name, self._queued_events, "full" if full else "checkpoint",
                 self._stats["ReplayRecordCount"], self._stats["ReplaySeconds"])

    # -- the contract --------------------------------------------------------------------------
    def put(self, batch: EventBatch, txn_id: str) -> None:
        n = len(batch)
        nb = batch.nbytes
        with self._lock:
            self._check_open()
            self.counters.EventPutAttemptCount += n
            while txn_id in self._inflight_txns:
                self._txn_done.wait()
                self._check_open()
            if txn_id in self._committed_txns:
                self.counters.DuplicatePutCount += n
                return
            try:
                self._check_put_size(batch)
                if n == 0:  # nothing to store; remember the txn id like any other put
                    self._committed_txns.add(txn_id)
                    return
                self._reserve(n, nb)
            except Exception:
                self.counters.EventPutErrorCount += n
                raise
            self._inflight_txns.add(txn_id)
        rec = None
        try:
            parts = records.put_payload(txn_id, n, nb, batch.ipc_buffer())
            crc = records.payload_crc(parts)
            self._check_free_space(records.RECORD_HEADER_SIZE + sum(len(p) for p in parts))
            rec = self._log.append(records.PUT, "put", parts, crc, (txn_id, n, nb, batch))
            self._log.wait_durable(rec)
        except BaseException:
            with self._lock:
                if rec is None or rec.state != PUBLISHED:
                    self._reserved_events -= n
                    self._reserved_bytes -= nb
                self._inflight_txns.discard(txn_id)
                self._txn_done.notify_all()
                self.counters.EventPutErrorCount += n
            raise
        with self._lock:
            self._inflight_txns.discard(txn_id)
            self._txn_done.notify_all()
            self.counters.EventPutSuccessCount += n

    # Leases live in memory only: a restart returns them all (on replay a take without a
    # TAKE_COMMIT record is a rolled-back take), so take, rollback, release, renew and expiry log
    # nothing and are the lease table's (LeasedChannel). Only a commit is logged, see commit().
    def _lease_head(self, max_events: int, holder: str) -> tuple[FileLease, list[EventBatch]] | None:
        while self._queue:
            refs, batches = self._materialize(self._pop_head(max_events))
            if refs:
                lease = FileLease(self.new_lease_id(), holder, refs, self._leases.expiry())
                self._leased_events += lease.events
                self._leased_bytes += lease.nbytes
                return lease, batches
            # every record it popped was unreadable (dropped and counted): look further
        return None

    def commit(self, lease_id: str) -> None:
        # Not the table's one-step commit: the commit is durable only once its TAKE_COMMIT record
        # is fsynced, outside the lock. Meanwhile the lease is committing (commit_rec set), so
        # rollback, release and expiry leave it alone; _apply settles it once the record is durable.
        with self._lock:
            lease = self._leases.to_commit(lease_id)
            if lease is None:
                return
            rec = lease.commit_rec
            if rec is None:
                self._check_open()
                payload = records.commit_payload(
                    (r.segment, r.offset, r.start, r.stop) for r in lease.refs)
                # Appended under the channel lock so a concurrent retry of this commit waits on
                # the same record; the write is small.
                rec = self._log.append(records.TAKE_COMMIT, "commit", [payload],
                                       records.payload_crc([payload]), lease)
                lease.commit_rec = rec
        try:
            self._log.wait_durable(rec)
        except ChannelWriteError:
            with self._lock:
                if lease.commit_rec is rec:
                    lease.commit_rec = None
            raise

    def ready_events(self) -> int:
        return self._queued_events

    def size(self) -> int:
        with self._lock:
            return self._queued_events + self._leased_events

    def nbytes(self) -> int:
        with self._lock:
            return self._queued_bytes + self._leased_bytes

    def close(self, checkpoint: bool | None = None) -> None:
        """Stop the channel, write a checkpoint (``checkpoint_on_close`` unless told) and unlock.

        ``close(checkpoint=False)`` leaves recovery to replay, as after a crash.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._not_empty.notify_all()
            self._txn_done.notify_all()
        self._stop.set()
        if self._maintenance is not threading.current_thread():
            self._maintenance.join(timeout=60)
        try:
            if self.checkpoint_on_close if checkpoint is None else checkpoint:
                self.checkpoint()
        finally:
            self._log.close(sync=True)
            self._release_dir_locks()

    # -- extras --------------------------------------------------------------------------------
    def has_committed(self, txn_id: str) -> bool:
        """Whether a put with ``txn_id`` is committed (within the idempotency window)."""
        with self._lock:
            return txn_id in self._committed_txns

    def corrupt_event_count(self) -> int:
        """Events dropped so far because their record could not be read back
        (``CorruptEventCount``); a cheap read, without the rest of :meth:`metrics`."""
        with self._lock:
            return self._stats["CorruptEventCount"]

    def segment_paths(self) -> dict[int, str]:
        """Segment id -> path of every segment file the channel keeps."""
        with self._log.write_lock:
            return dict(self._log.segments)

    def checkpoint(self) -> bool:
        """Write a checkpoint now and delete segments it makes unnecessary; False if it failed."""
        with self._checkpoint_lock:
            if self._store is not None and not self._locks_valid():
                # A zombie must not replace the new owner's checkpoint nor delete its objects.
                log.error("file channel '%s': no checkpoint written: this instance no longer owns "
                          "%s (%s)", self.name, self._store.uri,
                          self._lock_lost_reason() or "its lock lapsed")
                with self._lock:
                    self._stats["CheckpointErrorCount"] += 1
                return False
            with self._lock:
                with self._log.write_lock:
                    position = self._log.replay_position()
                    next_segment, next_lsn = self._log.next_segment_id, self._log.next_lsn
                rows = [(r.segment, r.offset, r.size, r.start, r.stop, r.nbytes)
                        for lease in self._leases.values() for r in lease.refs]
                rows += [(r.segment, r.offset, r.size, r.start, r.stop, r.nbytes) for r in self._queue]
                txns = self._committed_txns.items()
                self._dirty = False
            if self.fsync != "per_commit":
                self._log.sync()  # everything the snapshot names must be durable before it is
            refs = np.array(rows, dtype=np.int64).reshape(-1, 6)
            ckpt = Checkpoint(position, next_segment, next_lsn, txns, refs)
            try:
                if self._ckpt_store is not None:
                    write_checkpoint_object(self._ckpt_store, ckpt)
                else:
                    write_checkpoint(self._io, self.checkpoint_dir, ckpt)
            except OSError as exc:
                with self._lock:
                    self._dirty = True
                    self._stats["CheckpointErrorCount"] += 1
                log.error("file channel '%s': writing the checkpoint in %s failed: %s; replay after "
                          "a restart will be longer", self.name, self.checkpoint_dir, exc)
                return False
            cutoff = tuple(position)
            if len(refs):
                seg = int(refs[:, 0].min())
                cutoff = min(cutoff, (seg, int(refs[refs[:, 0] == seg, 1].min())))
            if self._store is None or self._locks_valid():
                self._log.delete_before(cutoff)
            with self._lock:
                self._stats["CheckpointCount"] += 1
            return True

    def metrics(self) -> dict:
        with self._lock:
            stats = self._log.stats
            self.counters.extra.update(
                self._stats, FsyncCount=stats.fsyncs, FsyncErrorCount=stats.fsync_errors,
                WriteErrorCount=stats.write_errors, SegmentCount=len(self._log.segments),
                SegmentsDeletedCount=stats.segments_deleted, CacheBytes=self._cache_used)
            if self._store is not None:
                self.counters.extra.update(
                    ObjectPutCount=stats.objects_written, ObjectDeleteCount=stats.objects_deleted,
                    ObjectBytesWritten=stats.bytes_written, ObjectCount=self._log.object_count(),
                    LockRenewCount=sum(lk.renewals for lk in self._dir_locks),
                    LockValid=int(self._locks_valid()),
                    LockLost=int(any(lk.lost_reason for lk in self._dir_locks)))
            return super().metrics()

    # -- internals -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosed(f"file channel '{self.name}' is closed")

    def _reserve(self, n: int, nb: int) -> None:
        used = self._queued_events + self._leased_events + self._reserved_events
        if used + n > self.capacity:
            raise ChannelFull(
                f"channel '{self.name}' is full ({used}/{self.capacity} events); sinks are not "
                f"keeping up: add sinks, raise capacity, or let the source back off")
        used_b = self._queued_bytes + self._leased_bytes + self._reserved_bytes
        if self.byte_capacity is not None and used_b + nb > self.byte_capacity:
            raise ChannelFull(
                f"channel '{self.name}' is full ({used_b}/{self.byte_capacity} bytes); sinks are "
                f"not keeping up: add sinks, raise byte_capacity, or let the source back off")
        self._reserved_events += n
        self._reserved_bytes += nb

    def _check_free_space(self, record_size: int) -> None:
        if self._store is not None:
            return  # an object store has no free-space figure to check
        try:
            free = self._io.disk_free(self.data_dirs[0])
        except OSError:
            return
        if free - record_size < self.minimum_required_space_bytes:
            with self._lock:
                self._stats["DiskSpaceRefusalCount"] += 1
            raise InsufficientDiskSpace(
                f"file channel '{self.name}': {free} bytes free on {self.data_dirs[0]}; this put "
                f"needs {record_size} bytes, which would leave less than "
                f"minimum_required_space_bytes={self.minimum_required_space_bytes}, so it was "
                f"refused and nothing was stored. Free disk space (sinks draining the channel free "
                f"it too) or lower minimum_required_space_bytes, then retry")

    def _apply(self, rec: LogRecord) -> None:
        """Make a durable record visible (called by the log under the channel lock, in log order)."""
        self._dirty = True
        if rec.kind == "put":
            txn_id, n, nb, batch = rec.data
            rec.data = None
            ref = Ref(rec.segment, rec.offset, rec.size, 0, n, nb)
            if self._cache_used + nb <= self.cache_bytes:
                ref.batch = batch
                self._cache_used += nb
            self._queue.append(ref)
            self._queued_events += n
            self._queued_bytes += nb
            self._reserved_events -= n
            self._reserved_bytes -= nb
            self._committed_txns.add(txn_id)
            self._not_empty.notify_all()
        else:
            lease: FileLease = rec.data
            rec.data = None
            if self._leases.pop(lease.lease_id, COMMITTED) is None:
                return
            self._leased_events -= lease.events
            self._leased_bytes -= lease.nbytes
            self._cache_used -= sum(r.nbytes for r in lease.refs if r.batch is not None)

    def _pop_head(self, max_events: int) -> list[Ref]:
        taken, n = [], 0
        q = self._queue
        while q and n < max_events:
            ref = q[0]
            room = max_events - n
            if ref.events <= room:
                q.popleft()
            else:
                ref, q[0] = ref.split(room)
            taken.append(ref)
            n += ref.events
            self._queued_events -= ref.events
            self._queued_bytes -= ref.nbytes
        return taken

    def _materialize(self, refs: list[Ref]) -> tuple[list[Ref], list[EventBatch]]:
        """Batches for ``refs``; refs whose record cannot be read back are dropped and counted."""
        good, batches = [], []
        loaded: dict[tuple[int, int], EventBatch] = {}
        for ref in refs:
            full = ref.batch
            if full is None:
                key = (ref.segment, ref.offset)
                full = loaded.get(key)
                if full is None:
                    try:
                        full = loaded[key] = self._load(ref)
                    except ChannelReadError:
                        # A transient read failure must not drop anything: put every popped
                        # range back at the head, in order, and let the take fail.
                        for back in reversed(refs):
                            self._queued_events += back.events
                            self._queued_bytes += back.nbytes
                            self._push_front(back)
                        raise
                    except CorruptRecord as exc:
                        self._stats["CorruptRecordCount"] += 1
                        self._stats["CorruptEventCount"] += ref.events
                        self._dirty = True
                        log.error("file channel '%s': record at offset %d of segment %d cannot be "
                                  "read back (%s); its %d events are dropped", self.name,
                                  ref.offset, ref.segment, exc, ref.events)
                        continue
            good.append(ref)
            if ref.start == 0 and ref.stop == len(full):
                batches.append(full)
            else:
                batches.append(full.slice(ref.start, ref.events))
        return good, batches

    def _load(self, ref: Ref) -> EventBatch:
        data = self._log.read(ref.segment, ref.offset, ref.size)
        rec = records.decode_record(data, records.PUT)
        _txn, rows, _nb, ipc = records.parse_put(rec.payload)
        try:
            batch = EventBatch.from_ipc(ipc)
        except (pa.ArrowException, TypeError) as exc:
            raise CorruptRecord(f"its Arrow payload does not decode: {exc}") from exc
        if len(batch) != rows or ref.stop > rows:
            raise CorruptRecord(f"it holds {len(batch)} rows, expected {rows}")
        return batch

    def _give_back(self, lease: FileLease) -> int:
        for ref in reversed(lease.refs):
            self._push_front(ref)
        self._leased_events -= lease.events
        self._leased_bytes -= lease.nbytes
        self._queued_events += lease.events
        self._queued_bytes += lease.nbytes
        return lease.events

    def _push_front(self, ref: Ref) -> None:
        q = self._queue
        if q:
            head = q[0]
            if head.segment == ref.segment and head.offset == ref.offset and ref.stop == head.start:
                batch = ref.batch
                if (head.batch is None) != (ref.batch is None):
                    # Merged ranges share one cache state: drop the cached copy.
                    self._cache_used -= head.nbytes if head.batch is not None else ref.nbytes
                    batch = None
                q[0] = Ref(ref.segment, ref.offset, ref.size, ref.start, head.stop,
                           ref.nbytes + head.nbytes, batch)
                return
        q.appendleft(ref)

    def _maintain(self) -> None:
        next_checkpoint = now() + self.checkpoint_interval_s
        next_sync = now() + self.fsync_interval_s
        interval_mode = self.fsync != "per_commit"
        while True:
            wake = min(next_checkpoint, next_sync) if interval_mode else next_checkpoint
            if self._stop.wait(max(0.0, wake - now())):
                return
            try:
                t = now()
                if interval_mode and t >= next_sync:
                    self._log.sync()
                    next_sync = t + self.fsync_interval_s
                if t >= next_checkpoint:
                    if self._dirty:
                        self.checkpoint()
                    next_checkpoint = t + self.checkpoint_interval_s
            except Exception:  # keep the channel running; the error is logged
                log.exception("file channel '%s': background checkpoint/fsync failed", self.name)

    def _release_dir_locks(self) -> None:
        for lk in self._dir_locks:
            lk.release()
        self._dir_locks = []


class _Recovered:
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

    def refs(self, exists) -> tuple[list[Ref], int]:
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
