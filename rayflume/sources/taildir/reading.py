"""Reading and framing for the ``taildir`` source: a file's bytes into segments of whole lines,
segments into batches of events, and the end positions a batch's acknowledgement moves to.

:func:`read_chunk` reads one chunk after a file's read position with ``pread`` and frames it with
:func:`~rayflume.sources._framing.frame_lines` (numpy newline offsets, no per-line Python); an
unterminated last line stays unread (``held``) until its newline arrives or the file is finished.
A segment keeps each line's offsets in its file and the epoch it was read in.
:func:`take_segments` cuts up to a batch from the front of the buffered segments, in the order
they were read, with the end position of each file and epoch in it; :func:`segment_events` makes
a segment's events with the group's headers, the file header and the byte-offset header.
"""
from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rayflume.event import EventBatch
from rayflume.interceptors.headers import set_header
from rayflume.sources._framing import compact, frame_lines
from rayflume.sources.taildir.tracked import _Tracked

BYTE_OFFSET_HEADER = "byteoffset"


@dataclass(slots=True, eq=False)
class _Segment:
    """Framed lines of one file waiting in the buffer; offsets are positions in the file."""

    tracked: _Tracked
    epoch: int
    path: str
    bodies: pa.BinaryArray
    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.bodies)


def read_chunk(t: _Tracked, size: int, chunk_bytes: int, max_line_length_bytes: int,
               at_eof: bool = False) -> tuple[_Segment | None, int]:
    """Frame up to ``chunk_bytes`` of ``t`` (now ``size`` bytes long) from its read position:
    the segment of the whole lines (None: none yet) and how many over-long lines were split.
    Moves ``t.read_pos`` past the lines; ``at_eof`` delivers an unterminated last line too."""
    n = min(chunk_bytes, size - t.read_pos)
    data = os.pread(t.fd, n, t.read_pos)
    framed = frame_lines(data, max_line_length_bytes, at_eof=at_eof)
    t.last_size = size
    t.held = t.read_pos + len(data) >= size and framed.consumed < len(data)
    if not len(framed):
        return None, framed.split_count
    base = t.read_pos
    segment = _Segment(t, t.epoch, t.path, framed.bodies, framed.starts + base, framed.ends + base)
    t.read_pos = base + framed.consumed
    return segment, framed.split_count


def take_segments(segments: deque[_Segment], want: int) -> tuple[list[_Segment], list[tuple[_Tracked, int, int]]]:
    """Up to ``want`` lines from the front of ``segments`` (the last one taken may be cut), and
    ``(tracked, epoch, end)`` for each file and epoch among them: how far an acknowledgement of
    the batch moves that file's position."""
    parts = []
    marks: dict[tuple[int, int], tuple[_Tracked, int, int]] = {}
    while want > 0 and segments:
        seg = segments[0]
        if len(seg) > want:
            part = _Segment(seg.tracked, seg.epoch, seg.path, seg.bodies.slice(0, want),
                            seg.starts[:want], seg.ends[:want])
            seg.bodies, seg.starts, seg.ends = seg.bodies.slice(want), seg.starts[want:], seg.ends[want:]
        else:
            part = segments.popleft()
        parts.append(part)
        marks[id(part.tracked), part.epoch] = (part.tracked, part.epoch, int(part.ends[-1]))
        want -= len(part)
    return parts, list(marks.values())


def segment_events(seg: _Segment, headers: dict | None, file_header_key: str | None,
                   byte_offset_header: bool) -> EventBatch:
    """The events of ``seg``: its lines with ``headers`` (its group's; None: no group), the file's
    path in ``file_header_key`` (None: not set) and, with ``byte_offset_header``, each line's
    offset in header ``byteoffset``."""
    batch = EventBatch.from_bodies(compact(seg.bodies))
    if headers is not None:
        for key, value in headers.items():
            batch = set_header(batch, key, value)
    if file_header_key is not None:
        batch = set_header(batch, file_header_key, seg.path)
    if byte_offset_header:
        batch = set_header(batch, BYTE_OFFSET_HEADER, pa.array(seg.starts).cast(pa.string()))
    return batch
