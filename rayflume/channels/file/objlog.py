"""The file channel's write-ahead log on an object store: one new immutable object per group commit.

Layout under the data URI ``R``::

    R/seg-<segment id, 20 digits>/<start offset, 16 digits>.rec   chunk objects
    R/lock                                                          the ObjectLock

A segment is a virtual byte sequence, exactly as a segment file on disk would be, except that its
bytes are stored as a series of *chunk* objects. A chunk holds the records of one group commit,
framed as in a segment file (see :mod:`rayflume.channels.file.records`), behind a 44-byte header::

    b"RFLOBJ01" | segment u64 | start u64 | prev segment u64 | prev end u64 | crc32 of the 40 bytes

``start`` is the virtual offset of the chunk's first record in its segment; the chunk covers
``[start, start + object size - 44)``, so records keep the (segment, offset) addresses the channel
uses for local segments. ``prev`` is the (segment, end) of the chunk this writer made durable just
before, ``(0, 0)`` for the first: it chains every chunk to its predecessor across segments.

Segment ids are ``epoch << 32 | n``: every owner of the channel (every lock acquisition) takes a
new epoch, so two instances never write the same key, not even a zombie that keeps writing after
it lost its lock. Ids (and lsns) keep growing, so the log order is the order of ids and offsets.

Durability. An append only buffers its record. The group-commit leader (see
:class:`~rayflume.channels.file.recordlog.RecordLog`) takes every buffered record and PUTs it as one
object (more than one only past ``MAX_CHUNK_BYTES`` or a segment roll); when the PUT returned and
the channel still holds its lock, those records are durable and are published. The PUT is the
fsync: there is nothing to fsync and no directory to sync. If a PUT fails, every record not yet
durable fails (nothing is acknowledged), and the next append starts a new segment, so a failed
chunk never leaves a hole inside a segment that later chunks would sit behind.

Replay reads the chunks after the checkpoint's position in order (several GETs in flight) and
checks that they are complete: every chunk must chain (``prev``) to a chunk that exists, or to a
place before the replay position (deleted after a checkpoint, as intended).
A break is a *missing object*, reported with its range; the records after it are replayed. A
missing last object cannot be told from one never written, except through the checkpoint's
references (counted as missing events). A record that fails its checksum is skipped and counted;
an object cannot be torn (a PUT is all or nothing), so damage at its end is corruption too.

Deletion is per chunk: after a checkpoint, every chunk that ends at or before both the checkpoint
position and the oldest event still queued is deleted (in any order: replay never looks before the
position, and nothing queued refers there). A segment is rolled every ``MAX_CHUNKS_PER_SEGMENT``
objects, so consumed objects mostly go a whole segment (one prefix deletion) at a time.
"""
from __future__ import annotations

import bisect
import logging
import re
import struct
import threading
import zlib
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from rayflume.channels.file import records
from rayflume.channels.file.errors import ChannelLockLost, ChannelReadError, ChannelWriteError
from rayflume.channels.file.objstore import ObjectStore
from rayflume.channels.file.recordlog import FAILED, PENDING, SYNCED, LogRecord, LogStats, RecordLog
from rayflume.channels.file.records import CorruptRecord, Record

log = logging.getLogger(__name__)

OBJ_MAGIC = b"RFLOBJ01"
OBJ_HEADER = struct.Struct("<8sQQQQI")
OBJ_HEADER_SIZE = OBJ_HEADER.size  # 44
# Records per object are capped so that a chunk is one PutObject request (pyarrow switches to a
# multipart upload at 10 MiB); a single record larger than this gets an object of its own.
MAX_CHUNK_BYTES = 8 << 20
EPOCH_SHIFT = 32
# Objects fetched ahead of the one being replayed (replay is bound by request latency, not CPU).
REPLAY_PREFETCH = 8
# Concurrent single-object deletions after a checkpoint.
DELETE_PARALLELISM = 8
# A segment is rolled after this many objects, so consumed objects mostly go by whole segments
# (one prefix deletion) rather than one request each.
MAX_CHUNKS_PER_SEGMENT = 1000

_CHUNK_RE = re.compile(r"^seg-(\d{20})/(\d{16})\.rec$")


def segment_prefix(segment_id: int) -> str:
    return f"seg-{segment_id:020d}"


def chunk_key(segment_id: int, start: int) -> str:
    return f"{segment_prefix(segment_id)}/{start:016d}.rec"


def segment_label(segment_id: int) -> str:
    """``epoch.n`` of a segment id, for messages."""
    return f"{segment_id >> EPOCH_SHIFT}.{segment_id & ((1 << EPOCH_SHIFT) - 1)}"


def first_segment_of_epoch(epoch: int) -> int:
    return (epoch << EPOCH_SHIFT) + 1


def chunk_header(segment_id: int, start: int, prev: tuple[int, int]) -> bytes:
    head = struct.pack("<8sQQQQ", OBJ_MAGIC, segment_id, start, prev[0], prev[1])
    return head + struct.pack("<I", zlib.crc32(head))


def parse_chunk_header(data) -> tuple[int, int, tuple[int, int]] | None:
    """``(segment, start, prev)`` of a chunk object, or None if its header does not verify."""
    if len(data) < OBJ_HEADER_SIZE:
        return None
    magic, sid, start, pseg, pend, crc = OBJ_HEADER.unpack_from(data, 0)
    if magic != OBJ_MAGIC or crc != zlib.crc32(bytes(data[:OBJ_HEADER_SIZE - 4])):
        return None
    return sid, start, (pseg, pend)


@dataclass(frozen=True, slots=True)
class Chunk:
    segment: int
    start: int
    end: int
    key: str


def list_chunks(store: ObjectStore) -> dict[int, list[Chunk]]:
    """Segment id -> its chunk objects sorted by start, from one listing of the store."""
    found: dict[int, list[Chunk]] = {}
    for key, size in store.list("").items():
        m = _CHUNK_RE.match(key)
        if m is None:
            continue
        sid, start = int(m.group(1)), int(m.group(2))
        found.setdefault(sid, []).append(Chunk(sid, start, start + max(0, size - OBJ_HEADER_SIZE), key))
    return {sid: sorted(found[sid], key=lambda c: c.start) for sid in sorted(found)}


class ChunkCache:
    """A byte-bounded LRU of chunk objects read back (replay and takes read them in order)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.used = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: str, data: bytes, evict: bool = True) -> None:
        """Cache ``data``; with ``evict=False`` only if it fits without dropping anything (replay
        fills the cache with the oldest objects, which takes need first)."""
        if len(data) > self.max_bytes:
            return
        with self._lock:
            if not evict and self.used + len(data) > self.max_bytes:
                return
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= len(old)
            self._items[key] = data
            self.used += len(data)
            while self.used > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.used -= len(dropped)

    def discard(self, key: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.used -= len(old)


# -- replay ---------------------------------------------------------------------------------------
@dataclass
class ChunkReplay:
    """What replaying the chunk objects found (besides the records handed to the callback)."""

    records: int = 0
    objects: int = 0
    last_lsn: int = -1
    corrupt: list[str] = field(default_factory=list)   # one entry per damaged span or header
    missing: list[str] = field(default_factory=list)   # one entry per break in the chain


def replay_chunks(store: ObjectStore, listing: dict[int, list[Chunk]], position: tuple[int, int],
                  min_lsn: int, on_record: Callable[[int, Record], None],
                  cache: ChunkCache | None = None) -> ChunkReplay:
    """Feed every verified record after ``position`` to ``on_record(segment, record)``, in log order.

    Record offsets handed over are virtual segment offsets. Raises OSError when the store cannot
    be read (the open must fail rather than replay a partial log).
    """
    out = ChunkReplay()
    ends = {(c.segment, c.end) for chunks in listing.values() for c in chunks}
    # Objects entirely before the replay position are not read.
    todo = [c for sid, chunks in listing.items() if sid >= position[0]
            for c in chunks if (sid, c.end) > position]
    last_lsn = min_lsn
    for c, data in _fetch_in_order(store, todo):
        sid = c.segment
        if data is None:
            out.missing.append(f"{store.uri_of(c.key)} was listed but is gone")
            continue
        out.objects += 1
        if cache is not None:
            cache.put(c.key, data, evict=False)
        header = parse_chunk_header(data)
        if header is None or header[0] != sid or header[1] != c.start:
            out.corrupt.append(f"{store.uri_of(c.key)} has a damaged header (its records are "
                               f"read anyway)")
        else:
            prev = header[2]
            if prev != (0, 0) and prev not in ends and prev > position:
                out.missing.append(
                    f"the objects of segment {segment_label(prev[0])} from offset {prev[1]} up "
                    f"to {store.uri_of(c.key)} are missing (the chain of chunks is broken)")
        skip = max(0, position[1] - c.start) if sid == position[0] else 0
        shift = c.start - OBJ_HEADER_SIZE
        for item in records.scan(data, OBJ_HEADER_SIZE + skip, last_lsn):
            if isinstance(item, Record):
                on_record(sid, Record(item.offset + shift, item.size, item.rtype, item.lsn,
                                      item.payload))
                out.records += 1
                last_lsn = max(last_lsn, item.lsn)
            else:
                out.corrupt.append(f"{item.end - item.start} damaged bytes at offset "
                                   f"{item.start + shift} of segment {segment_label(sid)} "
                                   f"({store.uri_of(c.key)}) failed their checksum")
    out.last_lsn = last_lsn
    return out


def _fetch_in_order(store: ObjectStore, chunks: list[Chunk]):
    """Yield ``(chunk, bytes or None if gone)`` in order, with up to REPLAY_PREFETCH GETs in flight."""
    if not chunks:
        return

    def fetch(c: Chunk):
        try:
            return store.get(c.key)
        except FileNotFoundError:
            return None

    with ThreadPoolExecutor(max_workers=REPLAY_PREFETCH, thread_name_prefix="file-channel-replay") as pool:
        it = iter(chunks)
        inflight: deque = deque()
        for c in it:
            inflight.append((c, pool.submit(fetch, c)))
            if len(inflight) >= REPLAY_PREFETCH:
                break
        while inflight:
            c, fut = inflight.popleft()
            nxt = next(it, None)
            if nxt is not None:
                inflight.append((nxt, pool.submit(fetch, nxt)))
            try:
                data = fut.result()
            except BaseException:
                for _, f in inflight:
                    f.cancel()
                raise
            yield c, data


# -- writing --------------------------------------------------------------------------------------
class _Pending:
    """Records buffered for one chunk object."""

    __slots__ = ("segment", "start", "size", "parts", "records")

    def __init__(self, segment: int, start: int):
        self.segment = segment
        self.start = start
        self.size = 0
        self.parts: list = []
        self.records: list[LogRecord] = []


@dataclass
class ObjectLogStats(LogStats):
    objects_written: int = 0   # chunk PUTs that landed while the lock was valid (fsyncs: all tried)
    objects_deleted: int = 0
    bytes_written: int = 0


class ObjectLog(RecordLog):
    """A log of segments stored as chunk objects (see the module docstring). Thread-safe.

    The record states, group commit and publication order are :class:`RecordLog`'s; its
    write-back (``sync``, counted in ``stats.fsyncs``) is one PUT per chunk. ``lock_valid`` is asked
    before each append and after each PUT: records are acknowledged only while it returns True
    (fencing; see :class:`~rayflume.channels.file.objstore.ObjectLock`).
    """

    def __init__(self, store: ObjectStore, channel: str, *, epoch: int, next_lsn: int,
                 max_file_size: int, publish_lock, apply: Callable[[LogRecord], None],
                 listing: dict[int, list[Chunk]], lock_valid: Callable[[], bool],
                 cache: ChunkCache, lock_lost_reason: Callable[[], str] = lambda: ""):
        super().__init__(channel, next_segment_id=first_segment_of_epoch(epoch), next_lsn=next_lsn,
                         max_file_size=max_file_size, publish_lock=publish_lock, apply=apply)
        self.stats: ObjectLogStats = ObjectLogStats()
        self.store = store
        self.epoch = epoch
        self.cache = cache
        self._lock_valid = lock_valid
        self._lock_lost_reason = lock_lost_reason
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        last = (0, 0)
        for sid, chunks in listing.items():
            for c in chunks:
                self._add_chunk(sid, c.start, c.end)
                last = max(last, (sid, c.end))
        self._last_end = last
        self.cur_sid: int | None = None
        self.cur_size = 0
        self._cur_chunks = 0
        self._buffer: list[_Pending] = []
        self._flush_lock = threading.Lock()
        self._lock_failed: set[int] = set()  # lsns of records failed because the lock was not valid

    # -- the chunk index (under write_lock) ----------------------------------------------------
    def _add_chunk(self, sid: int, start: int, end: int) -> None:
        starts = self._starts.setdefault(sid, [])
        ends = self._ends.setdefault(sid, [])
        i = bisect.bisect_left(starts, start)
        starts.insert(i, start)
        ends.insert(i, end)
        self.segments[sid] = self.store.uri_of(segment_prefix(sid))

    def _find(self, sid: int, offset: int) -> tuple[int, int] | None:
        starts = self._starts.get(sid)
        if not starts:
            return None
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0 or offset >= self._ends[sid][i]:
            return None
        return starts[i], self._ends[sid][i]

    def has(self, sid: int, offset: int) -> bool:
        """Whether an object holding the record at (``sid``, ``offset``) is known to exist."""
        with self.write_lock:
            return self._find(sid, offset) is not None

    def object_count(self) -> int:
        with self.write_lock:
            return sum(len(s) for s in self._starts.values())

    # -- appending -----------------------------------------------------------------------------
    def _place(self, size: int) -> tuple[int, int]:
        if not self._lock_valid():
            raise ChannelLockLost(self._lost_message())
        if (self.cur_sid is None or self._cur_chunks >= MAX_CHUNKS_PER_SEGMENT
                or (self.cur_size > 0 and self.cur_size + size > self.max_file_size)):
            self.cur_sid = self.next_segment_id
            self.next_segment_id += 1
            self.cur_size = 0
            self._cur_chunks = 0
            self.stats.segments_created += 1
        return self.cur_sid, self.cur_size

    def _write(self, rec: LogRecord, buffers: list) -> None:
        """Buffer the record in the chunk of the next PUT (a new chunk on a new segment or when full)."""
        self.cur_size += rec.size
        chunk = self._buffer[-1] if self._buffer else None
        if (chunk is None or chunk.segment != rec.segment
                or (chunk.size and chunk.size + rec.size > MAX_CHUNK_BYTES)):
            chunk = _Pending(rec.segment, rec.offset)
            self._buffer.append(chunk)
            self._cur_chunks += 1
        chunk.parts.extend(buffers)
        chunk.size += rec.size
        chunk.records.append(rec)

    def _lost_message(self) -> str:
        why = self._lock_lost_reason()
        if why:
            return (f"file channel '{self.channel}' no longer owns {self.store.uri} ({why}); the "
                    f"operation was not stored. Another instance owns the channel now: close this one")
        return (f"file channel '{self.channel}' could not renew its lock on {self.store.uri} in "
                f"time; the operation was not stored (retry it: writes resume once the lock is "
                f"renewed, unless another instance took the channel over)")

    # -- durability ----------------------------------------------------------------------------
    def sync(self) -> None:
        """PUT every buffered record (one object per chunk). Never raises; failures fail records."""
        with self._flush_lock:
            with self.write_lock:
                batch, self._buffer = self._buffer, []
            for i, chunk in enumerate(batch):
                key = chunk_key(chunk.segment, chunk.start)
                error = None
                if self._lock_valid():  # a write that cannot be acknowledged is not sent at all
                    try:
                        self.store.put(key, [chunk_header(chunk.segment, chunk.start,
                                                          self._last_end), *chunk.parts])
                    except Exception as exc:  # OSError, pyarrow errors: it may or may not have
                        error = exc           # landed; either way nothing is acknowledged
                # Checked after the PUT returned: fencing (see ObjectLock).
                owned = error is None and self._lock_valid()
                with self.write_lock:
                    self.stats.fsyncs += 1
                    if error is None and owned:
                        self.stats.objects_written += 1
                        self.stats.bytes_written += OBJ_HEADER_SIZE + chunk.size
                    if owned:
                        end = chunk.start + chunk.size
                        self._add_chunk(chunk.segment, chunk.start, end)
                        self._last_end = (chunk.segment, end)
                        for rec in chunk.records:
                            rec.state = SYNCED
                        chunk.parts = []
                    else:
                        if error is not None:
                            self.stats.fsync_errors += 1
                            message = (f"file channel '{self.channel}': writing {self.store.uri_of(key)} "
                                       f"failed ({error}); the operation was not stored, retry it")
                            log.error("%s", message)
                        failing = [*batch[i:], *self._buffer]
                        if error is None:
                            message = self._lost_message()
                            log.error("%s", message)
                            self._lock_failed.update(r.lsn for c in failing for r in c.records)
                        self._fail(failing, message)
                        self._buffer = []
                        # Later chunks must not sit behind the one that failed: new segment.
                        self.cur_sid = None
                self._notify()
                if not owned:
                    return

    def _fail(self, chunks: list[_Pending], message: str) -> None:
        for chunk in chunks:
            for rec in chunk.records:
                if rec.state == PENDING:
                    rec.state = FAILED
                    rec.error = message
            chunk.parts = []

    def wait_durable(self, rec: LogRecord) -> None:
        """:meth:`RecordLog.wait_durable`; a record failed because the lock was not valid raises
        :class:`ChannelLockLost`."""
        try:
            super().wait_durable(rec)
        except ChannelWriteError as exc:
            with self.write_lock:
                lock_failed = rec.lsn in self._lock_failed
                self._lock_failed.discard(rec.lsn)
            if lock_failed:
                raise ChannelLockLost(str(exc)) from None
            raise

    def replay_position(self) -> tuple[int, int]:
        if self.pending:
            return self.pending[0].segment, self.pending[0].offset
        if self.cur_sid is not None:
            return self.cur_sid, self.cur_size
        return self.next_segment_id, 0

    # -- reading and deleting ------------------------------------------------------------------
    def read(self, segment_id: int, offset: int, size: int) -> bytes:
        with self.write_lock:
            found = self._find(segment_id, offset)
        if found is None:
            raise CorruptRecord(f"no object of segment {segment_label(segment_id)} holds offset {offset}")
        start, _end = found
        key = chunk_key(segment_id, start)
        data = self.cache.get(key)
        if data is None:
            try:
                data = self.store.get(key)
            except FileNotFoundError:
                raise CorruptRecord(f"object {self.store.uri_of(key)} is missing") from None
            except OSError as exc:
                raise ChannelReadError(
                    f"file channel '{self.channel}': reading {self.store.uri_of(key)} failed ({exc}); "
                    f"the events stay queued, retry the take") from exc
            self.cache.put(key, data)
        pos = OBJ_HEADER_SIZE + offset - start
        return bytes(memoryview(data)[pos:pos + size])

    def delete_before(self, position: tuple[int, int]) -> list[int]:
        """Delete every chunk that ends at or before ``position``.

        Whole segments before the position's segment go with one prefix deletion each (pyarrow
        deletes in batches of 1000 keys); the chunks of a partly consumed segment are deleted one
        by one, several at a time. Returns the ids of segments that no longer hold any chunk.
        """
        with self.write_lock:
            doomed: dict[int, list[tuple[int, int]]] = {}
            for sid in sorted(self._starts):
                if sid > position[0]:
                    break
                starts, ends = self._starts[sid], self._ends[sid]
                gone = [(s, e) for s, e in zip(starts, ends) if (sid, e) <= position]
                if gone:
                    doomed[sid] = gone
                    keep = [(s, e) for s, e in zip(starts, ends) if (sid, e) > position]
                    self._starts[sid] = [s for s, _ in keep]
                    self._ends[sid] = [e for _, e in keep]
            # Only segments before the position's: no record still waiting for its PUT is in them
            # (pending records all lie at or after the position), so nothing lands there later.
            emptied = [sid for sid in self._starts if not self._starts[sid] and sid < position[0]
                       and sid != self.cur_sid]
            for sid in emptied:
                del self._starts[sid], self._ends[sid]
                self.segments.pop(sid, None)
        if not doomed:
            return []
        for sid, chunks in doomed.items():
            for start, _ in chunks:
                self.cache.discard(chunk_key(sid, start))
        whole = [sid for sid in emptied if sid in doomed]
        single = [(sid, s, e) for sid, chunks in doomed.items() if sid not in whole for s, e in chunks]
        failed: list[tuple[int, int, int]] = []

        def drop(item) -> bool:
            sid, start, _ = item
            try:
                self.store.delete(chunk_key(sid, start))
                return True
            except OSError as exc:
                log.warning("file channel '%s': cannot delete %s: %s (retried after the next "
                            "checkpoint)", self.channel, self.store.uri_of(chunk_key(sid, start)), exc)
                return False

        if len(single) > 1:
            with ThreadPoolExecutor(max_workers=DELETE_PARALLELISM,
                                    thread_name_prefix="file-channel-delete") as pool:
                results = list(pool.map(drop, single))
        else:
            results = [drop(item) for item in single]
        failed += [item for item, ok in zip(single, results) if not ok]
        for sid in whole:
            try:
                self.store.delete_prefix(segment_prefix(sid))
            except OSError as exc:
                log.warning("file channel '%s': cannot delete %s: %s (retried after the next "
                            "checkpoint)", self.channel, self.store.uri_of(segment_prefix(sid)), exc)
                failed += [(sid, s, e) for s, e in doomed[sid]]
        with self.write_lock:
            for sid, start, end in failed:
                self._add_chunk(sid, start, end)
            self.stats.objects_deleted += sum(map(len, doomed.values())) - len(failed)
            vanished = [sid for sid in emptied if sid not in self._starts]
            self.stats.segments_deleted += len(vanished)
        return vanished

    def close(self, sync: bool = True) -> None:
        if sync and not self.closed:
            self.sync()
        with self.write_lock:
            if self.closed:
                return
            self.closed = True
            message = f"file channel '{self.channel}' closed before the operation was stored"
            self._fail(self._buffer, message)
            self._buffer = []
            for rec in self.pending:
                if rec.state == PENDING:
                    rec.state = FAILED
                    rec.error = message
        self._notify()
