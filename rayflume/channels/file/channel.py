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
so the channel survives the loss of its node and may restart on any node. Each group commit is one
new immutable object and a put or commit returns once its PUT returned (``fsync="interval"`` is
refused); a missing object is detected at replay and counted (``MissingObjectCount``); a
heartbeat-renewed lock object replaces ``flock``, and an instance that lost it acknowledges nothing
(:class:`ChannelLockLost`) and writes no checkpoint; a failed GET fails the take with
:class:`ChannelReadError` and leaves the events queued. See
:mod:`rayflume.channels.file.object_storage`. Connection settings are ``object_store_options``
(``pyarrow.fs.S3FileSystem`` keyword arguments).

Structure
---------
The channel holds one :class:`~rayflume.channels.file.storage.ChannelStorage` (local segments:
:mod:`~rayflume.channels.file.disk_storage`; object store:
:mod:`~rayflume.channels.file.object_storage`) and asks it for everything that depends on where the
log lives; recovery at open is :mod:`rayflume.channels.file.recovery`. This module keeps the queue,
the leases, the txn ids and the counters.
"""
from __future__ import annotations

import logging
import math
import threading
from collections import deque

import numpy as np
import pyarrow as pa

from rayflume._private.fileio import FileIO
from rayflume.channels.base import IdWindow, now
from rayflume.channels.file import records
from rayflume.channels.file.checkpoint import Checkpoint
from rayflume.channels.file.disk_storage import DiskStorage
from rayflume.channels.file.errors import ChannelClosed, ChannelReadError, ChannelWriteError, InsufficientDiskSpace
from rayflume.channels.file.object_storage import ObjectStorage
from rayflume.channels.file.objstore import ObjectStore, is_uri
from rayflume.channels.file.recordlog import PUBLISHED, LogRecord, RecordLog
from rayflume.channels.file.records import CorruptRecord
from rayflume.channels.file.recovery import Ref, recover
from rayflume.channels.file.storage import ChannelStorage
from rayflume.channels.leases import COMMITTED, LeasedChannel, LeaseTable
from rayflume.errors import ChannelFull
from rayflume.event import EventBatch

log = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_MAX_FILE_SIZE = 256 * MiB
DEFAULT_MIN_FREE_SPACE = 524_288_000
DEFAULT_CACHE_BYTES = 64 * MiB
DEFAULT_LOCK_TTL = 15.0
FSYNC_MODES = ("per_commit", "interval")


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

    ``io`` replaces the low-level file operations (tests inject faults with it), ``store`` the
    object store (an :class:`ObjectStore` subclass, re-rooted at the channel's URIs). ``cache_bytes``
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
        self.minimum_required_space_bytes = minimum_required_space_bytes
        self.checkpoint_on_close = checkpoint_on_close
        self.cache_bytes = cache_bytes

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

        self._storage = self._choose_storage(checkpoint_dir, data_dirs, io, object_store_options, store,
                                             fsync=fsync, lock_ttl_s=lock_ttl_s, max_file_size=max_file_size_bytes)
        self.checkpoint_dir = self._storage.checkpoint_dir
        self.data_dirs = self._storage.data_dirs
        self._storage.lock()
        try:
            found = recover(self._storage, name, self._stats)
            self._queue.extend(found.refs)
            self._queued_events, self._queued_bytes = found.events, found.nbytes
            for txn in found.txn_ids:
                self._committed_txns.add(txn)
            try:
                self._storage.start()
            except ChannelWriteError as exc:
                # Start anyway (takes free space); the first put retries creating a segment.
                log.error("%s", exc)
            self.checkpoint()
        except BaseException:
            self._storage.close(sync=False)
            raise
        sync_interval_s = fsync_interval_s if fsync != "per_commit" else math.inf
        self._maintenance = threading.Thread(target=self._maintain, args=(checkpoint_interval_s, sync_interval_s),
                                             name=f"file-channel-{name}", daemon=True)
        self._maintenance.start()

    def _choose_storage(self, checkpoint_dir: str, data_dirs: list[str], io: FileIO | None,
                        options: dict | None, store: ObjectStore | None, fsync: str, lock_ttl_s: float,
                        max_file_size: int) -> ChannelStorage:
        # The one place that asks which kind of storage this is: everything after talks to the
        # storage protocol only.
        if store is not None or is_uri(checkpoint_dir) or any(is_uri(d) for d in data_dirs):
            return ObjectStorage(self.name, checkpoint_dir, data_dirs, fsync=fsync, options=options,
                                 store=store, lock_ttl_s=lock_ttl_s, max_file_size=max_file_size,
                                 publish_lock=self._lock, apply=self._apply)
        return DiskStorage(self.name, checkpoint_dir, data_dirs, io=io or FileIO(),
                           sync_per_commit=fsync == "per_commit", max_file_size=max_file_size,
                           publish_lock=self._lock, apply=self._apply)

    @property
    def on_object_store(self) -> bool:
        """Whether the log and checkpoint live on an object store (``data_dirs`` is a URI)."""
        return self._storage.on_object_store

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
            rec = self._storage.append(records.PUT, "put", parts, crc, (txn_id, n, nb, batch))
            self._storage.wait_durable(rec)
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
                rec = self._storage.append(records.TAKE_COMMIT, "commit", [payload],
                                           records.payload_crc([payload]), lease)
                lease.commit_rec = rec
        try:
            self._storage.wait_durable(rec)
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
            self._storage.close(sync=True)

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
        """Segment id -> path (on an object store: URI prefix) of every segment the channel keeps."""
        return self._storage.segment_paths()

    def checkpoint(self) -> bool:
        """Write a checkpoint now and delete segments it makes unnecessary; False if it failed."""
        with self._checkpoint_lock:
            lost = self._storage.ownership_lost()
            if lost:
                # A zombie must not replace the new owner's checkpoint nor delete its objects.
                log.error("file channel '%s': no checkpoint written: %s", self.name, lost)
                with self._lock:
                    self._stats["CheckpointErrorCount"] += 1
                return False
            with self._lock:
                position, next_segment, next_lsn = self._storage.position()
                rows = [(r.segment, r.offset, r.size, r.start, r.stop, r.nbytes)
                        for lease in self._leases.values() for r in lease.refs]
                rows += [(r.segment, r.offset, r.size, r.start, r.stop, r.nbytes) for r in self._queue]
                txns = self._committed_txns.items()
                self._dirty = False
            refs = np.array(rows, dtype=np.int64).reshape(-1, 6)
            try:
                self._storage.write_checkpoint(Checkpoint(position, next_segment, next_lsn, txns, refs))
            except OSError as exc:
                with self._lock:
                    self._dirty = True
                    self._stats["CheckpointErrorCount"] += 1
                log.error("file channel '%s': writing the checkpoint in %s failed: %s; replay after "
                          "a restart will be longer", self.name, self.checkpoint_dir, exc)
                return False
            cutoff = position
            if len(refs):
                seg = int(refs[:, 0].min())
                cutoff = min(cutoff, (seg, int(refs[refs[:, 0] == seg, 1].min())))
            self._storage.delete_before(cutoff)
            with self._lock:
                self._stats["CheckpointCount"] += 1
            return True

    def metrics(self) -> dict:
        with self._lock:
            self.counters.extra.update(self._stats, CacheBytes=self._cache_used, **self._storage.metrics())
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
        free = self._storage.free_bytes()
        if free is not None and free - record_size < self.minimum_required_space_bytes:
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
        data = self._storage.read(ref.segment, ref.offset, ref.size)
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

    def _maintain(self, checkpoint_interval_s: float, sync_interval_s: float) -> None:
        """Checkpoint every ``checkpoint_interval_s`` (when anything changed) and sync the log every
        ``sync_interval_s`` (``fsync: interval``; infinite with ``per_commit``, where commits sync)."""
        next_checkpoint = now() + checkpoint_interval_s
        next_sync = now() + sync_interval_s
        while True:
            wake = min(next_checkpoint, next_sync)
            if self._stop.wait(max(0.0, wake - now())):
                return
            try:
                t = now()
                if t >= next_sync:
                    self._storage.sync()
                    next_sync = t + sync_interval_s
                if t >= next_checkpoint:
                    if self._dirty:
                        self.checkpoint()
                    next_checkpoint = t + checkpoint_interval_s
            except Exception:  # keep the channel running; the error is logged
                log.exception("file channel '%s': background checkpoint/fsync failed", self.name)

    # -- internals the tests reach (test_file_channel_s3) ------------------------------------
    @property
    def _log(self) -> RecordLog:
        return self._storage.log

    @property
    def _store(self) -> ObjectStore | None:
        """The object store of a channel on one; None on local disk."""
        return getattr(self._storage, "store", None)

    @property
    def _dir_locks(self) -> list:
        return self._storage.locks

    def _locks_valid(self) -> bool:
        return not self._storage.ownership_lost()
