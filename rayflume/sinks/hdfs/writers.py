"""Output formats of the ``hdfs`` sink: what bytes a batch becomes, and how a finished file is made.

Byte formats (``text``, ``header_and_text``, ``json``) turn a batch into one buffer with Arrow
kernels. With ``compression`` (gzip or zstd) every batch becomes one *complete* gzip member or zstd
frame: a file is a concatenation of members, which every gzip/zstd reader (``gzip``, ``zcat``,
``pyarrow.CompressedInputStream``, Hadoop's codecs) reads as one stream, and whose committed prefix
stays readable after a crash. The in-use file already holds the final bytes: finishing it is a
rename.

``parquet`` cannot be appended to: a Parquet file is unreadable until its footer is written. So
while a Parquet file is open its in-use file is a *journal*: one frame per batch, each frame an
Arrow IPC stream of the batch behind a length and a CRC-32. Finishing the file converts the journal
to Parquet (``pyarrow.parquet.ParquetWriter`` on a ``pyarrow.fs`` output stream, one row group per
journal frame, i.e. per batch written) under the final name, then deletes the journal. A crash
leaves a journal whose complete frames are exactly the committed batches; recovery converts them.
The Parquet schema is the event schema: ``headers: map<string, string>``, ``body: binary``.

``json`` writes one object per line, ``{"headers": {"k": "v", ...}, "body": "..."}``, with the body
as text when it is valid UTF-8. A body that is not valid UTF-8 is written as
``"body_base64": "<standard base64>"`` instead of ``"body"``, so that no byte is lost or replaced;
readers check which key is present. A null header value is written as JSON ``null``.

Recovery of a byte format's in-use file after a crash (:meth:`ByteFormat.valid_length`) keeps its
longest prefix made of whole batches: complete gzip members or zstd frames, or for uncompressed
newline-terminated formats everything up to the last newline (a batch is always written whole and
ends with a newline, so a partial last line belongs to a batch that was never committed).

Formats hold no per-file state and are safe to share between threads.
"""
from __future__ import annotations

import base64
import struct
import threading
import zlib
from abc import ABC, abstractmethod

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayflume.event import SCHEMA, EventBatch
from rayflume.sinks.serializers import EventSerializer, make_serializer, values_buffer

__all__ = ["JsonSerializer", "Format", "ByteFormat", "ParquetFormat", "make_format", "FORMATS",
           "COMPRESSIONS", "gzip_members_end", "zstd_frames_end", "encode_frame", "read_frames"]

FORMATS = ("text", "header_and_text", "json", "parquet")
COMPRESSIONS = ("none", "gzip", "zstd", "snappy")
_EXTENSIONS = {"gzip": ".gz", "zstd": ".zst"}
_INT32_LIMIT = 2**31 - 1

# -- JSON lines ----------------------------------------------------------------------------------
_SHORT_ESCAPES = {8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}


def _json_escape(arr: pa.Array) -> pa.Array:
    """JSON string escaping of a string array (quotes, backslashes and the control characters present)."""
    if len(arr) == 0:
        return arr
    arr = pc.replace_substring(arr, "\\", "\\\\")
    arr = pc.replace_substring(arr, '"', '\\"')
    data = np.frombuffer(values_buffer(arr), dtype=np.uint8)
    present = np.unique(data[data < 32]) if len(data) else ()
    for c in present:
        c = int(c)
        arr = pc.replace_substring(arr, chr(c), _SHORT_ESCAPES.get(c, f"\\u{c:04x}"))
    return arr


def _utf8_mask(body: pa.Array) -> np.ndarray:
    """True where the body is valid UTF-8. Only bodies with non-ASCII bytes are checked one by one."""
    n = len(body)
    try:
        body.cast(pa.string())
        return np.ones(n, dtype=bool)
    except pa.ArrowInvalid:
        pass
    offsets = np.frombuffer(body.buffers()[1], dtype=np.int32 if body.type == pa.binary() else np.int64,
                            count=n + 1, offset=body.offset * (4 if body.type == pa.binary() else 8))
    data = np.frombuffer(body.buffers()[2], dtype=np.uint8) if body.buffers()[2] is not None else np.zeros(0, np.uint8)
    high = np.concatenate(([0], np.cumsum(data >= 0x80, dtype=np.int64)))
    candidates = np.flatnonzero(high[offsets[1:]] - high[offsets[:-1]] > 0)
    mask = np.ones(n, dtype=bool)
    for i in candidates:
        raw = data[offsets[i]:offsets[i + 1]].tobytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            mask[i] = False
    return mask


class JsonSerializer(EventSerializer):
    """``json``: one JSON object per line with ``headers`` and ``body`` (see the module docstring)."""

    name = "json"

    def serialize(self, batch: EventBatch) -> pa.Buffer:
        n = len(batch)
        if n == 0:
            return pa.py_buffer(b"")
        body = batch.body
        if body.null_count:
            body = pc.fill_null(body, pa.scalar(b"", pa.binary()))
        valid = _utf8_mask(body)
        text = body if valid.all() else pc.if_else(pa.array(valid), body, pa.scalar(b"", body.type))
        large = body.nbytes * 2 + batch.headers.nbytes * 2 + 64 * n >= _INT32_LIMIT
        stype = pa.large_string() if large else pa.string()
        text = _json_escape(text.cast(stype))
        if not valid.all():
            b64_text: list[str] = [""] * n
            bad = np.flatnonzero(~valid)
            # Only the bodies that are not UTF-8 go through Python.
            for i, raw in zip(bad, body.take(pa.array(bad)).to_pylist()):
                b64_text[i] = base64.b64encode(raw).decode("ascii")
            b64 = pa.array(b64_text, stype)
            key = pc.if_else(pa.array(valid), pa.scalar('"body":"', stype), pa.scalar('"body_base64":"', stype))
            text = pc.if_else(pa.array(valid), text, b64)
        else:
            key = pa.scalar('"body":"', stype)
        headers = self._headers(batch.headers, stype)
        parts = [pa.scalar('{"headers":{', stype), headers, pa.scalar("},", stype), key, text,
                 pa.scalar('"}\n', stype)]
        line = pc.binary_join_element_wise(*parts, pa.scalar("", stype))
        return values_buffer(line)

    @staticmethod
    def _headers(headers: pa.MapArray, stype) -> pa.Array:
        """``"k":"v",...`` per event (without braces)."""
        raw = np.asarray(headers.offsets, dtype=np.int64)
        start, end = int(raw[0]), int(raw[-1])
        keys = _json_escape(headers.keys.slice(start, end - start).cast(stype))
        items = headers.items.slice(start, end - start).cast(stype)
        quoted = pc.binary_join_element_wise(pa.scalar('"', stype), _json_escape(items), pa.scalar('"', stype),
                                             pa.scalar("", stype))
        if items.null_count:
            quoted = pc.if_else(items.is_valid(), quoted, pa.scalar("null", stype))
        pairs = pc.binary_join_element_wise(pa.scalar('"', stype), keys, pa.scalar('":', stype), quoted,
                                            pa.scalar("", stype))
        list_type = pa.large_list(stype) if stype == pa.large_string() else pa.list_(stype)
        offsets = pa.array(raw - start, pa.int64() if stype == pa.large_string() else pa.int32())
        per_event = (pa.LargeListArray if stype == pa.large_string() else pa.ListArray).from_arrays(offsets, pairs)
        assert per_event.type == list_type
        joined = pc.binary_join(per_event, pa.scalar(",", stype))
        if headers.null_count:
            joined = pc.if_else(headers.is_valid(), joined, pa.scalar("", stype))
        return joined


# -- crash recovery scanners ---------------------------------------------------------------------
def gzip_members_end(data) -> int:
    """Length of the longest prefix of ``data`` made of complete gzip members."""
    view = memoryview(data)
    total = len(view)
    pos = good = 0
    chunk = 1 << 20
    while pos < total:
        d = zlib.decompressobj(wbits=31)
        fed = pos
        try:
            while not d.eof and fed < total:
                d.decompress(view[fed:fed + chunk], 1 << 16)
                # Drain what the output limit held back without feeding more input.
                while d.unconsumed_tail and not d.eof:
                    d.decompress(d.unconsumed_tail, 1 << 16)
                fed = min(fed + chunk, total)
        except zlib.error:
            return good
        if not d.eof:
            return good
        pos = fed - len(d.unused_data)
        good = pos
    return good


_ZSTD_MAGIC = 0xFD2FB528


def zstd_frames_end(data) -> int:
    """Length of the longest prefix of ``data`` made of complete zstd frames (walks frame and block
    headers; skippable frames count as frames)."""
    view = memoryview(data)
    total = len(view)
    pos = 0
    while pos + 4 <= total:
        magic = int.from_bytes(view[pos:pos + 4], "little")
        if magic & 0xFFFFFFF0 == 0x184D2A50:  # skippable frame
            if pos + 8 > total:
                return pos
            size = int.from_bytes(view[pos + 4:pos + 8], "little")
            if pos + 8 + size > total:
                return pos
            pos += 8 + size
            continue
        if magic != _ZSTD_MAGIC or pos + 5 > total:
            return pos
        fhd = view[pos + 4]
        fcs_flag, single, checksum, dict_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3
        header = 1 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + \
            ((1 if single else 0), 2, 4, 8)[fcs_flag]
        p = pos + 4 + header
        while True:
            if p + 3 > total:
                return pos
            bh = int.from_bytes(view[p:p + 3], "little")
            last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
            if btype == 3:
                return pos
            p += 3 + (1 if btype == 1 else bsize)
            if p > total:
                return pos
            if last:
                break
        p += 4 if checksum else 0
        if p > total:
            return pos
        pos = p
    return pos


# -- journal frames (Parquet files in progress) ----------------------------------------------------
_FRAME_MAGIC = b"RFJ1"
_FRAME = struct.Struct("<4sQI")


def encode_frame(batch: EventBatch) -> pa.Buffer:
    """One journal frame: magic, payload length, CRC-32, then the batch as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SCHEMA) as writer:
        writer.write_batch(batch.record_batch)
    payload = sink.getvalue()
    head = _FRAME.pack(_FRAME_MAGIC, payload.size, zlib.crc32(payload))
    return pa.py_buffer(b"".join((head, memoryview(payload))))


def read_frames(data) -> tuple[list[pa.RecordBatch], int]:
    """The batches of the complete, intact frames at the start of ``data``, and where they end."""
    view = memoryview(data)
    total = len(view)
    pos = 0
    batches: list[pa.RecordBatch] = []
    while pos + _FRAME.size <= total:
        magic, size, crc = _FRAME.unpack_from(view, pos)
        start = pos + _FRAME.size
        if magic != _FRAME_MAGIC or start + size > total:
            break
        payload = view[start:start + size]
        if zlib.crc32(payload) != crc:
            break
        try:
            reader = pa.ipc.open_stream(pa.py_buffer(payload))
            batches.extend(b for b in reader if b.num_rows)
        except (pa.ArrowInvalid, OSError):
            break
        pos = start + size
    return batches, pos


# -- formats --------------------------------------------------------------------------------------
class Format(ABC):
    """How batches become a file's bytes."""

    name = ""
    journal = False  # the in-use file is a journal converted at finish (Parquet)
    extension = ""   # added to final names when file_suffix is empty (Flume adds the codec's)

    @abstractmethod
    def encode(self, batch: EventBatch) -> pa.Buffer:
        """The bytes appended to the in-use file (or written as one part object) for ``batch``."""

    @abstractmethod
    def valid_length(self, data) -> int:
        """How much of an in-use file's content survives recovery (whole batches only)."""


class ByteFormat(Format):
    """``text``, ``header_and_text`` or ``json``, optionally gzip- or zstd-compressed per batch."""

    def __init__(self, serializer: str = "text", append_newline: bool = True, compression: str = "none",
                 compression_level: int | None = None):
        if compression not in ("none", "gzip", "zstd"):
            raise ValueError(f"compression {compression!r} is not available for {serializer}; "
                             f"use none, gzip or zstd")
        self.name = serializer
        self.serializer = JsonSerializer() if serializer == "json" else make_serializer(serializer, append_newline)
        self.newline_terminated = serializer == "json" or append_newline
        self.compression = compression
        self.compression_level = compression_level
        if compression != "none":
            pa.Codec(compression, compression_level)  # fail now on a bad level
        # A pyarrow Codec keeps stream state and is not thread-safe: one per worker thread.
        self._codecs = threading.local()
        self.extension = _EXTENSIONS.get(compression, "")

    def encode(self, batch: EventBatch) -> pa.Buffer:
        data = self.serializer.serialize(batch)
        if self.compression == "none" or data.size == 0:
            return data
        codec = getattr(self._codecs, "codec", None)
        if codec is None:
            codec = self._codecs.codec = pa.Codec(self.compression, self.compression_level)
        return codec.compress(data)

    def valid_length(self, data) -> int:
        if self.compression == "gzip":
            return gzip_members_end(data)
        if self.compression == "zstd":
            return zstd_frames_end(data)
        view = memoryview(data)
        if not self.newline_terminated:
            return len(view)
        end = len(view)
        while end > 0:
            start = max(0, end - (1 << 20))
            i = bytes(view[start:end]).rfind(b"\n")
            if i >= 0:
                return start + i + 1
            end = start
        return 0


class ParquetFormat(Format):
    """``parquet``: journal frames while open, one Parquet file (a row group per batch) when finished."""

    name = "parquet"
    journal = True
    extension = ".parquet"

    def __init__(self, compression: str = "none", compression_level: int | None = None):
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression {compression!r} is not available for parquet; use one of {COMPRESSIONS}")
        self.compression = compression
        self.compression_level = compression_level

    def encode(self, batch: EventBatch) -> pa.Buffer:
        return encode_frame(batch)

    def valid_length(self, data) -> int:
        return read_frames(data)[1]

    def write_parquet(self, out, batches: list[pa.RecordBatch]) -> int:
        """Write ``batches`` as one Parquet file to the output stream ``out`` (one row group each)."""
        rows = 0
        with pq.ParquetWriter(out, SCHEMA, compression=self.compression,
                              compression_level=self.compression_level) as writer:
            for b in batches:
                writer.write_batch(b, row_group_size=max(b.num_rows, 1))
                rows += b.num_rows
        return rows


def make_format(serializer: str, append_newline: bool = True, compression: str = "none",
                compression_level: int | None = None) -> Format:
    if serializer == "parquet":
        return ParquetFormat(compression, compression_level)
    if serializer not in FORMATS:
        raise ValueError(f"unknown serializer {serializer!r}; use one of {FORMATS}")
    return ByteFormat(serializer, append_newline, compression, compression_level)
