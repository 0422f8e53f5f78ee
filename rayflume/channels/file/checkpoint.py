"""The file channel's checkpoint: a snapshot of its queue that bounds replay.

File layout (``<checkpoint_dir>/checkpoint``)::

    b"RFLCKPT1" (8) | crc32 u32 | json length u64 | refs length u64 | json | refs

``json`` holds the replay position (segment id, offset), the next segment id and lsn, and the
txn ids of committed puts (the idempotency window). ``refs`` is an ``int64`` array of rows
``(segment, record offset, record size, first row, end row, nbytes)``: every event still in the
channel (queued or leased) at the replay position. The crc covers json and refs.

A checkpoint is written to ``checkpoint.tmp``, fsynced, renamed over ``checkpoint`` and the
directory fsynced, so a crash leaves either the old or the new checkpoint, never a mix. Reading
validates magic, lengths, checksum and version and raises :class:`BadCheckpoint` on any mismatch;
the channel then falls back to a full replay of its segments.

On an object store the checkpoint is the object ``<checkpoint_dir>/checkpoint``, replaced by one
PUT: a PUT of one key is atomic (readers see the old or the new object, never a mix) and durable
once it returns, so no temporary object or rename is needed.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from rayflume._private.fileio import FileIO, write_atomic

CHECKPOINT_FILE = "checkpoint"
CHECKPOINT_TMP = "checkpoint.tmp"
MAGIC = b"RFLCKPT1"
VERSION = 1
_HEAD = struct.Struct("<8sIQQ")
REF_FIELDS = 6  # segment, offset, size, start, stop, nbytes


class BadCheckpoint(Exception):
    """The checkpoint is missing, truncated or corrupt."""


class MissingCheckpoint(BadCheckpoint):
    """There is no checkpoint (a new channel, or one that never wrote one)."""


@dataclass
class Checkpoint:
    position: tuple[int, int]              # replay starts at (segment id, offset)
    next_segment_id: int
    next_lsn: int
    txn_ids: list[str] = field(default_factory=list)
    refs: np.ndarray = field(default_factory=lambda: np.zeros((0, REF_FIELDS), np.int64))

    def encode(self) -> bytes:
        meta = json.dumps({
            "version": VERSION,
            "position": list(self.position),
            "next_segment_id": self.next_segment_id,
            "next_lsn": self.next_lsn,
            "txn_ids": self.txn_ids,
        }, separators=(",", ":")).encode()
        refs = np.ascontiguousarray(self.refs, dtype="<i8").reshape(-1, REF_FIELDS).tobytes()
        crc = zlib.crc32(refs, zlib.crc32(meta))
        return _HEAD.pack(MAGIC, crc, len(meta), len(refs)) + meta + refs

    @classmethod
    def decode(cls, data: bytes) -> "Checkpoint":
        if len(data) < _HEAD.size:
            raise BadCheckpoint(f"checkpoint is truncated ({len(data)} bytes)")
        magic, crc, meta_len, refs_len = _HEAD.unpack_from(data, 0)
        if magic != MAGIC:
            raise BadCheckpoint("checkpoint has a bad magic number")
        if _HEAD.size + meta_len + refs_len != len(data):
            raise BadCheckpoint(f"checkpoint length {len(data)} does not match its header "
                                f"({_HEAD.size + meta_len + refs_len})")
        mv = memoryview(data)
        meta_b = mv[_HEAD.size:_HEAD.size + meta_len]
        refs_b = mv[_HEAD.size + meta_len:]
        if zlib.crc32(refs_b, zlib.crc32(meta_b)) != crc:
            raise BadCheckpoint("checkpoint checksum mismatch")
        if refs_len % (8 * REF_FIELDS):
            raise BadCheckpoint("checkpoint refs are not whole rows")
        try:
            meta = json.loads(bytes(meta_b))
            if meta.get("version") != VERSION:
                raise BadCheckpoint(f"checkpoint version {meta.get('version')} is not {VERSION}")
            seg, off = meta["position"]
            ckpt = cls((int(seg), int(off)), int(meta["next_segment_id"]), int(meta["next_lsn"]),
                       [str(t) for t in meta["txn_ids"]],
                       np.frombuffer(refs_b, dtype="<i8").reshape(-1, REF_FIELDS).astype(np.int64))
        except BadCheckpoint:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise BadCheckpoint(f"checkpoint metadata is unreadable: {exc}") from exc
        return ckpt


def write_checkpoint(io: FileIO, directory: str, ckpt: Checkpoint) -> int:
    """Atomically replace the checkpoint in ``directory``; returns its size. Raises OSError."""
    data = ckpt.encode()
    write_atomic(os.path.join(directory, CHECKPOINT_FILE), data, io, tmp=os.path.join(directory, CHECKPOINT_TMP))
    return len(data)


def read_checkpoint(directory: str) -> Checkpoint:
    """The checkpoint in ``directory``; raises BadCheckpoint if it is missing or does not verify."""
    path = os.path.join(directory, CHECKPOINT_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BadCheckpoint(f"no checkpoint at {path}") from None
    except OSError as exc:
        raise BadCheckpoint(f"cannot read {path}: {exc}") from exc
    return Checkpoint.decode(data)


def remove_stale_tmp(io: FileIO, directory: str) -> None:
    """Delete a ``checkpoint.tmp`` left by a crash (through ``io``, like every write)."""
    try:
        io.unlink(os.path.join(directory, CHECKPOINT_TMP))
    except FileNotFoundError:
        pass


def write_checkpoint_object(store, ckpt: Checkpoint) -> int:
    """Replace the checkpoint object of ``store`` (an ObjectStore); returns its size. Raises OSError."""
    data = ckpt.encode()
    store.put(CHECKPOINT_FILE, [data])
    return len(data)


def read_checkpoint_object(store) -> Checkpoint:
    """The checkpoint object of ``store``; BadCheckpoint if missing or damaged, OSError if unreadable."""
    try:
        data = store.get(CHECKPOINT_FILE)
    except FileNotFoundError:
        raise MissingCheckpoint(f"no checkpoint at {store.uri_of(CHECKPOINT_FILE)}") from None
    return Checkpoint.decode(data)
