"""Line framing for the file sources, a whole chunk at a time.

:func:`frame_lines` turns a chunk of bytes read from a file into an Arrow binary array of lines
with one numpy pass over the chunk (``np.flatnonzero`` of ``\\n``) and one compaction copy that
drops the line terminators: no per-line Python. Alongside the bodies it returns each line's start
offset and the offset just past its terminator, which is what a source records as its position
once the line is acknowledged.

Rules (shared by ``taildir`` and ``spooldir``):

- a line ends with ``\\n``; a ``\\r`` right before it is removed too (Flume does the same);
- an unterminated tail is held (not framed) unless ``at_eof`` says the data is complete, or it is
  already longer than ``max_line_bytes``;
- a line (or a held tail) longer than ``max_line_bytes`` is cut into pieces of ``max_line_bytes``;
  the pieces are consecutive events and no byte is dropped. A held tail of exactly
  ``max_line_bytes`` is not cut yet: its newline may be the next byte.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

NL = 10
CR = 13
_EMPTY_I64 = np.zeros(0, dtype=np.int64)


@dataclass
class Framed:
    """The events framed from one chunk.

    ``starts[i]`` is where event ``i`` begins in the chunk and ``ends[i]`` is just past it,
    including its terminator (the resume position after it). ``consumed`` is ``ends[-1]`` (0 when
    nothing was framed): the bytes from there on are held for the next read. ``split_count`` is
    the number of cuts made because of ``max_line_bytes``.
    """

    bodies: pa.BinaryArray
    starts: np.ndarray
    ends: np.ndarray
    split_count: int = 0

    @property
    def consumed(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __len__(self) -> int:
        return len(self.bodies)


def _binary(data: np.ndarray, lengths: np.ndarray) -> pa.BinaryArray:
    offsets = np.empty(len(lengths) + 1, dtype=np.int32)
    offsets[0] = 0
    np.cumsum(lengths, out=offsets[1:])
    return pa.BinaryArray.from_buffers(pa.binary(), len(lengths),
                                       [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def empty_framed() -> Framed:
    return Framed(pa.array([], pa.binary()), _EMPTY_I64, _EMPTY_I64)


def frame_lines(data, max_line_bytes: int, at_eof: bool = False, utf8: bool = False) -> Framed:
    """Frame ``data`` (bytes-like) into lines; see the module docstring for the rules.

    With ``utf8`` a cut of an over-long line never splits a UTF-8 sequence (a piece may then be up
    to 3 bytes shorter than ``max_line_bytes``). The bodies are a copy: ``data`` may be reused.
    """
    if max_line_bytes <= 0:
        raise ValueError("max_line_bytes must be positive")
    arr = np.frombuffer(data, dtype=np.uint8)
    size = arr.size
    if size == 0:
        return empty_framed()
    newlines = np.flatnonzero(arr == NL)
    n = newlines.size
    complete = int(newlines[-1]) + 1 if n else 0

    starts = np.empty(n, dtype=np.int64)
    if n:
        starts[0] = 0
        starts[1:] = newlines[:-1] + 1
    content_ends = newlines.astype(np.int64, copy=True)
    ends = content_ends + 1
    # Bytes inside the framed region that belong to no body: the terminators.
    drop = newlines
    if n:
        crlf = (newlines > starts) & (arr[newlines - 1] == CR)
        if crlf.any():
            content_ends[crlf] -= 1
            drop = np.concatenate((newlines, newlines[crlf] - 1))

    # The unterminated tail: a final line at EOF, or whole pieces when it is already too long.
    region = complete
    split_count = 0
    if size > complete:
        if at_eof:
            tail_end = size
            if arr[size - 1] == CR:
                tail_end -= 1
                drop = np.append(drop, size - 1)
            starts = np.append(starts, complete)
            content_ends = np.append(content_ends, tail_end)
            ends = np.append(ends, size)
            region = size
        elif size - complete > max_line_bytes:
            cuts = np.array(_cut_points(arr, complete, size, max_line_bytes, utf8), dtype=np.int64)
            starts = np.concatenate((starts, [complete], cuts[:-1]))
            content_ends = np.concatenate((content_ends, cuts))
            ends = np.concatenate((ends, cuts))
            region = int(cuts[-1])
            split_count += cuts.size  # the held rest is one more piece of that line

    if starts.size == 0:
        return empty_framed()

    lengths = content_ends - starts
    if lengths.max() > max_line_bytes:
        starts, content_ends, ends, cuts = _split_long(arr, starts, content_ends, ends, lengths,
                                                       max_line_bytes, utf8)
        split_count += cuts
        lengths = content_ends - starts

    body_bytes = arr[:region]
    if drop.size:
        keep = np.ones(region, dtype=bool)
        keep[drop] = False
        body_bytes = body_bytes[keep]
    else:
        body_bytes = body_bytes.copy()
    if body_bytes.size > np.iinfo(np.int32).max:
        raise ValueError("a chunk larger than 2 GiB cannot be framed into one Arrow array")
    return Framed(_binary(body_bytes, lengths), starts, ends, split_count)


def _cut_points(arr: np.ndarray, start: int, end: int, size: int, utf8: bool) -> list[int]:
    """Where to cut ``arr[start:end]`` so that what follows the last cut is at most ``size``."""
    cuts = []
    at = start
    while end - at > size:
        cut = at + size
        if utf8:
            back = 0
            while back < 3 and cut - back - 1 > at and (arr[cut - back] & 0xC0) == 0x80:
                back += 1
            if (arr[cut - back] & 0xC0) != 0x80:
                cut -= back
        cuts.append(cut)
        at = cut
    return cuts


def _split_long(arr, starts, content_ends, ends, lengths, size, utf8):
    """Cut over-long lines into pieces; only the last piece of a line owns its terminator.

    Rare (lines longer than the limit), so the cut points of those lines are found in Python;
    everything else stays vectorised.
    """
    long_lines = np.flatnonzero(lengths > size)
    pieces = np.ones(starts.size, dtype=np.int64)
    cut_lists = {}
    for i in long_lines.tolist():
        cuts = _cut_points(arr, int(starts[i]), int(content_ends[i]), size, utf8)
        cut_lists[i] = cuts
        pieces[i] = len(cuts) + 1
    line = np.repeat(np.arange(starts.size), pieces)
    first = np.cumsum(pieces) - pieces
    p_start, p_end, p_resume = starts[line], content_ends[line], ends[line]
    for i, cuts in cut_lists.items():
        f, k = int(first[i]), len(cuts)
        p_start[f + 1:f + k + 1] = cuts
        p_end[f:f + k] = cuts
        p_resume[f:f + k] = cuts
    return p_start, p_end, p_resume, int(pieces.sum() - starts.size)


def compact(bodies: pa.BinaryArray) -> pa.BinaryArray:
    """``bodies`` as an array whose buffers cover exactly its own values, without copying them.

    A slice of an Arrow array keeps the whole parent buffers, and pickling it (which is how a
    batch travels to a channel actor) sends them all: a 1,000-line slice of an 8 MiB chunk would
    ship 8 MiB. The data buffer is re-sliced (zero-copy) and only the offsets are rebuilt.
    """
    n = len(bodies)
    offsets_buf, data_buf = bodies.buffers()[1], bodies.buffers()[2]
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=bodies.offset + n + 1)[bodies.offset:]
    first, last = int(offsets[0]), int(offsets[-1])
    if first == 0 and (data_buf is None or data_buf.size == last) and bodies.offset == 0 \
            and offsets_buf.size == (n + 1) * 4 and bodies.null_count == 0:
        return bodies
    data = data_buf.slice(first, last - first) if data_buf is not None else pa.py_buffer(b"")
    rebased = offsets - np.int32(first) if first else offsets.copy()
    validity = None
    if bodies.null_count:
        validity = pa.array(bodies.is_valid()).buffers()[1]
    return pa.BinaryArray.from_buffers(pa.binary(), n, [validity, pa.py_buffer(rebased), data],
                                       null_count=bodies.null_count)
