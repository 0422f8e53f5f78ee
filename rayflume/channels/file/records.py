"""Framing of the records in the file channel's segment files, and the scanner that reads them back.

A segment starts with a 20-byte header::

    b"RFLSEG\\x00\\x01" (8)  segment id u64  crc32 of the first 16 bytes u32

followed by records, each::

    magic (4) | crc32 (4) | payload length u32 | type u8 | lsn u64 | payload
    '--------- 21-byte header, little-endian ------------------'

``crc32`` is ``zlib.crc32(header[8:21], zlib.crc32(payload))``: it covers the payload *and* the
length, type and lsn fields, so a flipped bit anywhere after the checksum is detected. The checksum
algorithm (zlib's CRC-32) is fixed by the segment header's version byte. ``lsn`` is a log sequence
number that grows by one per record for the lifetime of the channel.

The magic marker lets the scanner resynchronise after a damaged length field: it searches forward
for the next marker whose record verifies, so one bad record costs that record only and the scan
never loops or hangs.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Iterator

SEGMENT_MAGIC = b"RFLSEG\x00\x01"
SEGMENT_HEADER = struct.Struct("<8sQI")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 20

RECORD_MAGIC = b"\xb1\x79\x37\x9e"
RECORD_HEADER = struct.Struct("<4sIIBQ")
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 21

# A sanity bound on one record's payload: a length field above it is treated as damaged.
MAX_PAYLOAD = 1 << 31

PUT = 1          # a committed put: txn id, row count, Arrow bytes and the Arrow IPC stream
TAKE_COMMIT = 2  # committed takes: (segment, record offset, first row, end row) ranges
RECORD_TYPES = (PUT, TAKE_COMMIT)

_PUT_PREFIX = struct.Struct("<IQH")       # rows, Arrow nbytes, txn id length
_RANGE = struct.Struct("<QQII")           # segment id, record offset, first row, end row
_COUNT = struct.Struct("<I")


class CorruptRecord(Exception):
    """A record read back from a segment does not verify."""


# -- segment header -------------------------------------------------------------------------------
def segment_header(segment_id: int) -> bytes:
    head = SEGMENT_MAGIC + struct.pack("<Q", segment_id)
    return head + struct.pack("<I", zlib.crc32(head))


def check_segment_header(data, segment_id: int) -> bool:
    if len(data) < SEGMENT_HEADER_SIZE:
        return False
    magic, sid, crc = SEGMENT_HEADER.unpack_from(data, 0)
    return magic == SEGMENT_MAGIC and sid == segment_id and crc == zlib.crc32(bytes(data[:16]))


# -- records --------------------------------------------------------------------------------------
def payload_crc(parts) -> int:
    crc = 0
    for p in parts:
        crc = zlib.crc32(p, crc)
    return crc


def record_header(rtype: int, lsn: int, payload_len: int, crc_of_payload: int) -> bytes:
    """The 21-byte header; ``crc_of_payload`` is :func:`payload_crc` of the payload parts."""
    fields = struct.pack("<IBQ", payload_len, rtype, lsn)
    crc = zlib.crc32(fields, crc_of_payload)
    return RECORD_MAGIC + struct.pack("<I", crc) + fields


def put_payload(txn_id: str, rows: int, nbytes: int, ipc: bytes) -> list:
    txn = txn_id.encode()
    if len(txn) > 0xFFFF:
        raise ValueError(f"txn id longer than 65535 bytes: {txn_id[:40]}...")
    return [_PUT_PREFIX.pack(rows, nbytes, len(txn)) + txn, ipc]


def parse_put(payload) -> tuple[str, int, int, memoryview]:
    """``(txn_id, rows, nbytes, ipc)`` of a PUT payload."""
    rows, nbytes, n = _PUT_PREFIX.unpack_from(payload, 0)
    start = _PUT_PREFIX.size
    txn = bytes(payload[start:start + n]).decode()
    return txn, rows, nbytes, memoryview(payload)[start + n:]


def commit_payload(ranges) -> bytes:
    """``ranges``: iterable of (segment id, record offset, first row, end row)."""
    ranges = list(ranges)
    out = bytearray(_COUNT.pack(len(ranges)))
    for r in ranges:
        out += _RANGE.pack(*r)
    return bytes(out)


def parse_commit(payload) -> list[tuple[int, int, int, int]]:
    (n,) = _COUNT.unpack_from(payload, 0)
    if _COUNT.size + n * _RANGE.size != len(payload):
        raise CorruptRecord("take-commit payload length does not match its range count")
    return list(_RANGE.iter_unpack(memoryview(payload)[_COUNT.size:]))


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    size: int          # header + payload
    rtype: int
    lsn: int
    payload: memoryview


def _record_at(mv: memoryview, pos: int, end: int) -> Record | None:
    """The record starting at ``pos`` if one starts there and verifies, else None."""
    if end - pos < RECORD_HEADER_SIZE:
        return None
    magic, crc, length, rtype, lsn = RECORD_HEADER.unpack_from(mv, pos)
    if magic != RECORD_MAGIC or length > MAX_PAYLOAD or rtype not in RECORD_TYPES:
        return None
    stop = pos + RECORD_HEADER_SIZE + length
    if stop > end:
        return None
    payload = mv[pos + RECORD_HEADER_SIZE:stop]
    if zlib.crc32(mv[pos + 8:pos + RECORD_HEADER_SIZE], zlib.crc32(payload)) != crc:
        return None
    return Record(pos, stop - pos, rtype, lsn, payload)


def decode_record(data, expected_type: int | None = None) -> Record:
    """Verify a record read back whole (``data`` starts with its header); raise CorruptRecord."""
    mv = memoryview(data)
    rec = _record_at(mv, 0, len(mv))
    if rec is None or rec.size != len(mv) or (expected_type is not None and rec.rtype != expected_type):
        raise CorruptRecord("record does not verify (bad magic, length, type or checksum)")
    return rec


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes ``[start, end)`` of a segment that hold no verifiable record.

    ``tail`` is True when no valid record follows (a torn write, or damage at the very end).
    """

    start: int
    end: int
    tail: bool


def scan(data, start: int, min_lsn: int = -1) -> Iterator[Record | Damage]:
    """Yield the records of a segment body from offset ``start``, and the damaged spans between them.

    ``data`` is bytes-like and supports ``find`` (bytes, mmap). After a record that does not verify,
    the scanner first trusts its length field if a valid record starts right after it (a flipped
    payload or checksum bit), and otherwise searches forward for the next magic marker whose record
    verifies (a damaged length field) and continues the lsn sequence (lsn above every lsn seen so
    far, and above ``min_lsn``), so a copy of an older record inside a payload is not taken for a
    record. Each yielded :class:`Damage` spans exactly one resync.
    """
    mv = memoryview(data)
    end = len(mv)
    pos = start
    last_lsn = min_lsn
    while pos < end:
        rec = _record_at(mv, pos, end)
        if rec is not None:
            yield rec
            pos += rec.size
            last_lsn = max(last_lsn, rec.lsn)
            continue
        nxt = _resync(data, mv, pos, end, last_lsn)
        if nxt is None:
            yield Damage(pos, end, True)
            return
        yield Damage(pos, nxt, False)
        pos = nxt


def _resync(data, mv: memoryview, pos: int, end: int, last_lsn: int) -> int | None:
    if end - pos >= RECORD_HEADER_SIZE:
        magic, _crc, length, _t, _lsn = RECORD_HEADER.unpack_from(mv, pos)
        if magic == RECORD_MAGIC and length <= MAX_PAYLOAD:
            # An intact header whose record spans the rest of the file, or ends where a valid
            # record starts: trust its length rather than search its payload (which may itself
            # hold bytes that look like records, e.g. events carrying segment files).
            after = pos + RECORD_HEADER_SIZE + length
            if after == end:
                return None
            if after < end and _continues(_record_at(mv, after, end), last_lsn):
                return after
    q = data.find(RECORD_MAGIC, pos + 1, end)
    while q != -1:
        if _continues(_record_at(mv, q, end), last_lsn):
            return q
        q = data.find(RECORD_MAGIC, q + 1, end)
    return None


def _continues(rec: Record | None, last_lsn: int) -> bool:
    return rec is not None and rec.lsn > last_lsn
