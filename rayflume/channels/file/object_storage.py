"""The file channel's storage on an object store: chunk objects, a checkpoint object, lock objects.

``data_dirs`` is one URI ``s3://bucket/prefix`` and ``checkpoint_dir`` a URI too (by default
``<data uri>/checkpoint``); nothing is written locally, so the channel survives the loss of its node
and may restart on any node. An object store has no append and no fsync; an object is durable once
its PUT returned. So:

* each group commit writes one new immutable object ``<uri>/seg-<segment>/<offset>.rec`` holding
  the records of that group commit, framed and checksummed as on disk (see
  :mod:`rayflume.channels.file.objlog`); a put or commit returns only after the PUT of its object
  returned (that PUT is the fsync, and concurrent commits share it); ``fsync="interval"`` is refused;
* replay lists the objects and reads those after the checkpoint's position, in order; every object
  names its predecessor, so a missing object in the middle is detected, logged and counted
  (``MissingObjectCount``); a record that fails its checksum is skipped and counted as on disk;
  an object cannot be torn. A store that cannot be read fails the open with
  :class:`ChannelReadError` rather than replay part of the log;
* the checkpoint is the object ``<checkpoint_dir>/checkpoint``, replaced by one (atomic) PUT;
  after each checkpoint, objects holding only consumed records are deleted;
* instead of ``flock``, a lock object ``<uri>/lock`` (and one under the checkpoint URI when it lies
  elsewhere) names the owner and is renewed by a heartbeat
  (:class:`~rayflume.channels.file.objstore.ObjectLock`, advisory): a second instance refuses to
  open while the owner renews it, a crashed owner's lock lapses after ``lock_ttl_s``; an instance
  that cannot renew its lock acknowledges nothing (puts and commits fail with
  :class:`ChannelLockLost`) and writes no checkpoint and deletes nothing until it renews it, and
  for good once another instance took it over; segment ids carry the owner's epoch, so a zombie
  never overwrites the new owner's objects;
* objects read back (by replay, then by takes of events not cached in memory) are kept in a small
  LRU (``CHUNK_CACHE_BYTES``); a failed GET fails the take with :class:`ChannelReadError`.

Connection settings are ``object_store_options`` (``pyarrow.fs.S3FileSystem`` keyword arguments).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

from rayflume.channels.file.checkpoint import (
    BadCheckpoint,
    Checkpoint,
    MissingCheckpoint,
    read_checkpoint_object,
    write_checkpoint_object,
)
from rayflume.channels.file.errors import ChannelReadError, ChannelWriteError
from rayflume.channels.file.objlog import EPOCH_SHIFT, Chunk, ChunkCache, ObjectLog, list_chunks, replay_chunks
from rayflume.channels.file.objstore import ObjectLock, ObjectStore, check_uri, is_uri
from rayflume.channels.file.storage import ChannelStorage, OnRecord

log = logging.getLogger(__name__)

CHUNK_CACHE_BYTES = 32 << 20


class ObjectStorage(ChannelStorage[ObjectLog]):
    """Chunk objects under one URI (see the module docstring).

    ``store`` (an :class:`ObjectStore`, or a subclass that injects faults) replaces the store
    ``options`` would connect to; it is re-rooted at the channel's URIs.
    """

    on_object_store = True

    def __init__(self, channel: str, checkpoint_dir: str, data_dirs: list[str], *, fsync: str,
                 options: dict | None, store: ObjectStore | None, lock_ttl_s: float,
                 max_file_size: int, publish_lock, apply):
        where = f"file channel '{channel}'"
        if len(data_dirs) != 1 or not is_uri(data_dirs[0]) or not is_uri(checkpoint_dir):
            raise ValueError(
                f"{where}: on an object store data_dirs is exactly one URI and checkpoint_dir a URI "
                f"too (got checkpoint_dir={checkpoint_dir!r}, data_dirs={list(data_dirs)!r}); a "
                f"local checkpoint next to remote segments would not survive a move to another node")
        if fsync != "per_commit":
            raise ValueError(f"{where}: fsync must be 'per_commit' on an object store: there is no "
                             f"page cache between a write and its PUT, each group commit is one PUT")
        try:
            data_uri = check_uri(data_dirs[0].strip())
            super().__init__(channel, check_uri(checkpoint_dir), [data_uri])
            self.store = store.at(data_uri) if store is not None else ObjectStore.from_uri(data_uri, options)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from exc
        self.checkpoint_store = self.store.at(self.checkpoint_dir)
        self.lock_ttl_s = lock_ttl_s
        self.max_file_size = max_file_size
        self.publish_lock = publish_lock
        self.apply = apply
        self._listing: dict[int, list[Chunk]] = {}

    # -- ownership -------------------------------------------------------------------------------
    def lock(self) -> None:
        roots = [self.store]
        if not self.store.contains(self.checkpoint_store):
            roots.append(self.checkpoint_store)
        locks: list[ObjectLock] = []
        try:
            for st in roots:
                lk = ObjectLock(st, self.channel, self.lock_ttl_s)
                try:
                    lk.acquire()
                except OSError as exc:
                    lk.abandon()
                    raise ChannelWriteError(
                        f"file channel '{self.channel}': cannot take its lock in {st.uri} ({exc}); it "
                        f"did not open. Check that the object store is reachable and "
                        f"object_store_options are right") from exc
                locks.append(lk)
        except BaseException:
            for lk in locks:
                lk.release()
            raise
        self.locks = locks

    def locks_valid(self) -> bool:
        return all(lk.valid() for lk in self.locks)

    def lock_lost_reason(self) -> str:
        return "; ".join(lk.lost_reason for lk in self.locks if lk.lost_reason)

    def ownership_lost(self) -> str:
        if self.locks_valid():
            return ""
        return (f"this instance no longer owns {self.store.uri} "
                f"({self.lock_lost_reason() or 'its lock lapsed'})")

    # -- recovery --------------------------------------------------------------------------------
    @contextmanager
    def _reading(self):
        try:
            yield
        except OSError as exc:
            raise ChannelReadError(
                f"file channel '{self.channel}': cannot read its log from {self.store.uri} ({exc}); it "
                f"did not open. Check that the object store is reachable and object_store_options "
                f"are right") from exc

    def read_checkpoint(self, stats: dict) -> Checkpoint | None:
        with self._reading():
            self._listing = listing = list_chunks(self.store)
            try:
                return read_checkpoint_object(self.checkpoint_store)
            except MissingCheckpoint:
                if listing:
                    log.warning("file channel '%s': no checkpoint in %s; replaying all %d objects",
                                self.channel, self.checkpoint_dir, sum(map(len, listing.values())))
                    stats["ReplayFull"] = 1
            except BadCheckpoint as exc:
                log.warning("file channel '%s': %s; replaying all %d objects", self.channel, exc,
                            sum(map(len, listing.values())))
                stats["ReplayFull"] = 1
            return None

    def replay(self, ckpt: Checkpoint | None, on_record: OnRecord, stats: dict) -> None:
        listing = self._listing
        if ckpt is not None:
            position, next_lsn = ckpt.position, ckpt.next_lsn
        else:
            first = next(iter(listing.values()), None)
            position, next_lsn = ((first[0].segment, first[0].start) if first else (0, 0)), 1
        cache = ChunkCache(CHUNK_CACHE_BYTES)
        with self._reading():
            replay = replay_chunks(self.store, listing, position, -1, on_record, cache)
        stats["ReplayRecordCount"] += replay.records
        stats["ReplayObjectCount"] = replay.objects
        for what in replay.corrupt:
            stats["CorruptRecordCount"] += 1
            log.error("file channel '%s': %s; the records there are lost", self.channel, what)
        for what in replay.missing:
            stats["MissingObjectCount"] += 1
            log.error("file channel '%s': %s; their events are lost (and takes they committed "
                      "may be delivered again)", self.channel, what)
        # A new epoch for this owner: its segment ids never collide with any earlier writer's.
        epoch = max([lk.epoch for lk in self.locks]
                    + [(sid >> EPOCH_SHIFT) + 1 for sid in listing]
                    + ([(ckpt.next_segment_id >> EPOCH_SHIFT) + 1] if ckpt is not None else []))
        for lk in self.locks:
            lk.epoch = epoch
        self._log = ObjectLog(
            self.store, self.channel, epoch=epoch, next_lsn=max(next_lsn, replay.last_lsn + 1),
            max_file_size=self.max_file_size, publish_lock=self.publish_lock, apply=self.apply,
            listing=listing, lock_valid=self.locks_valid, cache=cache,
            lock_lost_reason=self.lock_lost_reason)

    def holds(self, segment: int, offset: int) -> bool:
        return self.log.has(segment, offset)

    # -- checkpoints, space, metrics -------------------------------------------------------------
    def write_checkpoint(self, ckpt: Checkpoint) -> None:
        write_checkpoint_object(self.checkpoint_store, ckpt)

    def delete_before(self, position: tuple[int, int]) -> None:
        if self.locks_valid():  # a zombie must not delete the new owner's objects
            self.log.delete_before(position)

    def free_bytes(self) -> int | None:
        return None  # an object store has no free-space figure to check

    def metrics(self) -> dict:
        stats = self.log.stats
        return {**super().metrics(), "ObjectPutCount": stats.objects_written,
                "ObjectDeleteCount": stats.objects_deleted, "ObjectBytesWritten": stats.bytes_written,
                "ObjectCount": self.log.object_count(),
                "LockRenewCount": sum(lk.renewals for lk in self.locks),
                "LockValid": int(self.locks_valid()),
                "LockLost": int(any(lk.lost_reason for lk in self.locks))}
