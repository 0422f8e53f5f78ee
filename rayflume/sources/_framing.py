"""Framing for every source that reads bytes: where each message begins and ends in what was read,
what becomes of one longer than the limit, and the Arrow binary array its body goes into. One home,
so that the sources share one way of finding lines; they differ only in their rules for an
over-long line, and each rule has one framer here:

- **cut** into pieces of the limit, no byte dropped: :func:`frame_lines` for a file read a chunk
  at a time (``taildir``, ``spooldir``; it returns each line's offsets, which are positions in the
  file) and :class:`LineFramer`, the same rules over a stream (``exec``);
- **refused**, the whole line dropped and its place reported: :class:`LineSplitter` over a TCP
  stream and :func:`datagram_lines` over one datagram (``netcat``);
- **cut and marked**: :class:`StreamFramer`, RFC 6587 syslog over TCP, octet-counted (``LEN SP
  MSG``) or ended by ``\\n`` or NUL, detected per message; a cut message's frames carry a status
  (:data:`HEAD`, :data:`CONTINUATION`) that the parser turns into ``Incomplete``
  (``syslog_tcp``); :func:`strip_trailers` for syslog datagrams.

A ``\\r`` right before a line's delimiter is never part of the line. Lines are found with numpy
over a whole read (:func:`split_lines`, :func:`strip_cr`: no per-line Python) and copied into one
Arrow array at once (:func:`gather_ranges`, on :func:`rayflume.event.binary_array`).

Also here: a batch's header map built from per-key value arrays in one pass
(:func:`headers_from_columns`), for the network sources. Functions are pure and thread-safe;
each framer class holds one stream's state and is not thread-safe (one per stream).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayflume.event import EventBatch, binary_array, empty_headers

NL = 10
CR = 13
_EMPTY_I64 = np.zeros(0, dtype=np.int64)
SCAN_BLOCK = 1 << 20  # bytes looked at per delimiter search (see split_lines)


# -- finding lines ---------------------------------------------------------------------------------

def split_lines(arr: np.ndarray, delimiters: tuple[int, ...] = (NL,)):
    """Positions of complete lines in ``arr``: ``(starts, ends, consumed)`` where line i is
    ``arr[starts[i]:ends[i]]`` without its delimiter (``ends[i]`` is the delimiter's index) and
    ``consumed`` is the index after the last delimiter (the unterminated tail starts there). The
    arrays are int64 and the caller's own."""
    if len(arr) <= SCAN_BLOCK:
        ends = _delimiter_positions(arr, delimiters)
    else:
        # By blocks: the comparison's mask is one byte per byte scanned (8 MB for a taildir chunk)
        ends = np.concatenate([_delimiter_positions(arr[i:i + SCAN_BLOCK], delimiters) + i
                               for i in range(0, len(arr), SCAN_BLOCK)])
    if ends.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    starts = np.empty(ends.size, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    return starts, ends.astype(np.int64, copy=False), int(ends[-1]) + 1


def _delimiter_positions(arr: np.ndarray, delimiters: tuple[int, ...]) -> np.ndarray:
    hit = arr == delimiters[0]
    for d in delimiters[1:]:
        hit |= arr == d
    return np.flatnonzero(hit)


def strip_cr(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``ends`` moved back over one ``\\r`` before the delimiter, where there is one (a new array)."""
    # An empty line's ends - 1 is outside it (even -1, for one at 0): the first test masks it out.
    return ends - ((ends > starts) & (arr[ends - 1] == CR))


def gather_ranges(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.BinaryArray:
    """The byte ranges ``arr[starts[i]:ends[i]]`` (ascending, non-overlapping) as a binary array,
    copied once (no per-range Python)."""
    n = len(starts)
    if n == 0:
        return pa.array([], pa.binary())
    bounds = np.empty(2 * n, dtype=np.int64)
    bounds[0::2] = starts
    bounds[1::2] = ends
    if bounds[-1] >= 2**31:
        raise ValueError("more than 2 GiB of frames in one array; read smaller chunks")
    return take_ranges(pa.py_buffer(np.ascontiguousarray(arr)), bounds.astype(np.int32), 0, 2)


def take_ranges(buffer: pa.Buffer, bounds, first: int, stride: int) -> pa.BinaryArray:
    """The byte ranges ``bounds[first + k*stride]`` to ``bounds[first + k*stride + 1]`` of
    ``buffer`` (``bounds`` non-decreasing int32) as a binary array. ``bounds``, read as the offsets
    of one array over ``buffer``, makes every range (and every gap between two) an element: a
    ``take`` of the wanted elements copies their bytes in one C++ pass (measured: 2 ms for 40,000
    ranges of 8 MB, where a boolean mask over the buffer took 72 ms)."""
    offsets = np.asarray(bounds, dtype=np.int32)
    if len(offsets) < 2:
        return pa.array([], pa.binary())
    every = binary_array(offsets, buffer)
    return pc.take(every, pa.array(np.arange(first, len(offsets) - 1, stride, dtype=np.int64)))


# -- files and streams: an over-long line is cut -----------------------------------------------------

@dataclass
class Framed:
    """The events framed from one chunk by :func:`frame_lines`.

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


def empty_framed() -> Framed:
    return Framed(pa.array([], pa.binary()), _EMPTY_I64, _EMPTY_I64)


def frame_lines(data, max_line_bytes: int, at_eof: bool = False, utf8: bool = False) -> Framed:
    """Frame a chunk of ``data`` (bytes-like) into lines with one numpy pass over the chunk and one
    copy of the bodies (without their terminators) into an Arrow binary array; alongside the
    bodies, each line's start offset and the offset just past its terminator (what a file source
    records as its position once the line is acknowledged). A chunk of 2 GiB or more is refused
    (ValueError): read smaller chunks.

    Rules (shared by ``taildir``, ``spooldir`` and, through :class:`LineFramer`, ``exec``):

    - a line ends with ``\\n``; a ``\\r`` right before it is removed too (Flume does the same);
    - an unterminated tail is held (not framed) unless ``at_eof`` says the data is complete, or it
      is already longer than ``max_line_bytes``;
    - a line (or a held tail) longer than ``max_line_bytes`` is cut into pieces of
      ``max_line_bytes``; the pieces are consecutive events and no byte is dropped. A held tail of
      exactly ``max_line_bytes`` is not cut yet: its newline may be the next byte.

    With ``utf8`` a cut of an over-long line never splits a UTF-8 sequence (a piece may then be up
    to 3 bytes shorter than ``max_line_bytes``). The bodies are a copy: ``data`` may be reused.
    """
    if max_line_bytes <= 0:
        raise ValueError("max_line_bytes must be positive")
    arr = np.frombuffer(data, dtype=np.uint8)
    size = arr.size
    if size == 0:
        return empty_framed()
    starts, newlines, complete = split_lines(arr)
    content_ends = strip_cr(arr, starts, newlines)
    ends = newlines + 1

    # The unterminated tail: a final line at EOF, or whole pieces when it is already too long.
    split_count = 0
    if size > complete:
        if at_eof:
            starts = np.append(starts, complete)
            content_ends = np.append(content_ends, size - 1 if arr[size - 1] == CR else size)
            ends = np.append(ends, size)
        elif size - complete > max_line_bytes:
            cuts = np.array(_cut_points(arr, complete, size, max_line_bytes, utf8), dtype=np.int64)
            starts = np.concatenate((starts, [complete], cuts[:-1]))
            content_ends = np.concatenate((content_ends, cuts))
            ends = np.concatenate((ends, cuts))
            split_count += cuts.size  # the held rest is one more piece of that line

    if starts.size == 0:
        return empty_framed()

    lengths = content_ends - starts
    if lengths.max() > max_line_bytes:
        starts, content_ends, ends, cuts = _split_long(arr, starts, content_ends, ends, lengths,
                                                       max_line_bytes, utf8)
        split_count += cuts
    # One take of the bodies' ranges: twice as fast as compacting the chunk with a mask of the
    # terminators (measured on 8 MiB chunks of access-log lines).
    return Framed(gather_ranges(arr, starts, content_ends), starts, ends, split_count)


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
    return binary_array(rebased, data, validity, null_count=bodies.null_count)


class LineFramer:
    """:func:`frame_lines` over a byte stream, a chunk at a time: the same rules, with the
    unterminated tail kept here between chunks (the ``exec`` source's stdout).

    ``feed(chunk)`` returns the complete lines so far as an Arrow binary array (None when there
    are none) and keeps the unterminated tail for the next chunk; ``flush()`` returns that tail
    at end of stream. A line is ended by ``\\n``; a ``\\r`` right before it is removed too. Lines
    longer than ``max_line_bytes`` are cut into pieces of at most that size (``split_count``
    counts the cuts); a tail is cut as soon as it is longer, so the tail kept is never longer
    than ``max_line_bytes``. Not thread-safe.
    """

    def __init__(self, max_line_bytes: int = 1 << 20):
        if max_line_bytes <= 0:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self.split_count = 0
        self._tail = b""

    @property
    def pending_bytes(self) -> int:
        return len(self._tail)

    def feed(self, chunk: bytes) -> pa.BinaryArray | None:
        buf = self._tail + chunk if self._tail else chunk
        framed = frame_lines(buf, self.max_line_bytes)
        self._tail = buf[framed.consumed:]
        return self._lines(framed)

    def flush(self) -> pa.BinaryArray | None:
        """The unterminated last line (end of stream), or None when there is none."""
        if not self._tail:
            return None
        tail, self._tail = self._tail, b""
        return self._lines(frame_lines(tail, self.max_line_bytes, at_eof=True))

    def _lines(self, framed: Framed) -> pa.BinaryArray | None:
        self.split_count += framed.split_count
        return framed.bodies if len(framed) else None


# -- netcat: an over-long line is refused ------------------------------------------------------------

class LineSplitter:
    """Splits a byte stream into lines of at most ``max_line_bytes`` including the newline.

    ``feed`` returns ``(lines, rejected_after)``: the accepted lines (binary array, newline and
    a trailing ``\\r`` removed) and, for every over-long line in input order, how many accepted
    lines of this call came before it. An over-long line is skipped up to its newline while
    memory stays bounded by ``max_line_bytes``. Vectorised with numpy; not thread-safe.
    """

    def __init__(self, max_line_bytes: int):
        if max_line_bytes < 2:
            raise ValueError("max_line_bytes must be at least 2 (one byte and the newline)")
        self.max_line_bytes = max_line_bytes
        self._tail = b""
        self._discarding = False

    def feed(self, data: bytes) -> tuple[pa.BinaryArray, list[int]]:
        buf = self._tail + data if self._tail else bytes(data)
        self._tail = b""
        arr = np.frombuffer(buf, dtype=np.uint8)
        starts, ends, consumed = split_lines(arr)
        ok = (ends - starts + 1) <= self.max_line_bytes
        if self._discarding and len(starts):
            ok[0] = False  # the end of a line already known to be too long
            self._discarding = False
        rest = len(buf) - consumed
        if self._discarding or rest >= self.max_line_bytes:
            # The unterminated tail cannot fit any more: drop it, and the rest of its line.
            self._discarding = True
        else:
            self._tail = buf[consumed:]
        rejected_after = []
        if not ok.all():
            before = np.cumsum(ok) - ok
            rejected_after = [int(x) for x in before[~ok]]
            starts, ends = starts[ok], ends[ok]
        ends = strip_cr(arr, starts, ends)
        return gather_ranges(arr, starts, ends), rejected_after

    @property
    def mid_line(self) -> bool:
        """A line has started and not ended."""
        return bool(self._tail) or self._discarding

    def flush(self) -> tuple[pa.BinaryArray, list[int]]:
        """End of stream: the unterminated last line (or the rejection of an over-long one)."""
        tail, self._tail = self._tail, b""
        if self._discarding:
            self._discarding = False
            return pa.array([], pa.binary()), [0]
        if tail.endswith(b"\r"):
            tail = tail[:-1]
        return pa.array([tail] if tail else [], pa.binary()), []


def datagram_lines(data: bytes, max_line_bytes: int) -> tuple[pa.BinaryArray, int]:
    """The lines of one datagram (the last needs no newline) and how many were too long."""
    if data and not data.endswith(b"\n"):
        data = data + b"\n"
    arr = np.frombuffer(data, dtype=np.uint8)
    starts, ends, _ = split_lines(arr)
    ok = (ends - starts + 1) <= max_line_bytes
    rejected = int((~ok).sum())
    if rejected:
        starts, ends = starts[ok], ends[ok]
    return gather_ranges(arr, starts, strip_cr(arr, starts, ends)), rejected


# -- syslog (RFC 6587): octet-counted or delimited, an over-long message cut and marked --------------

# Frame status codes (from the framer): 0 complete, 1 the first max bytes of a longer message
# (parsed, marked Incomplete), 2 a further piece of such a message (raw, marked Incomplete).
COMPLETE, HEAD, CONTINUATION = 0, 1, 2


class StreamFramer:
    """Splits a TCP byte stream into syslog messages (RFC 6587), detecting the framing per message.

    A message starting with a digit 1-9 followed by up to 10 digits and a space is
    octet-counted (``LEN SP MSG``); anything else is non-transparently framed and ends at ``\\n``
    or NUL (a ``\\r`` before the ``\\n`` is removed; NUL is what Python's SysLogHandler ends
    messages with on TCP). Empty lines are skipped.

    A message longer than ``max_bytes`` is not dropped: its first ``max_bytes`` bytes are a frame
    with status HEAD (parsed, marked Incomplete) and the rest follows in frames of at most
    ``max_bytes`` with status CONTINUATION (kept raw, marked Incomplete). Memory is bounded by
    ``max_bytes`` plus one read. Lines whose first byte is not a digit take a vectorised path
    (numpy delimiter search over the whole chunk); octet-counted input is framed message by
    message. Not thread-safe: one framer per connection.
    """

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._tail = b""
        self._cont_line = False
        self._cont_octets = 0

    @property
    def pending_bytes(self) -> int:
        return len(self._tail)

    @property
    def mid_message(self) -> bool:
        """A message has started and not ended (bytes kept, or the rest of a long one to come)."""
        return bool(self._tail) or self._cont_line or self._cont_octets > 0

    def feed(self, data: bytes) -> tuple[pa.BinaryArray, np.ndarray | None]:
        """The frames completed by ``data``: ``(frames, status)``, status None when all complete."""
        buf = self._tail + data if self._tail else bytes(data)
        self._tail = b""
        fast = None
        pos = 0
        if not self._cont_line and not self._cont_octets and buf:
            fast, pos = self._fast(buf)
        frames: list[bytes] = []
        status: list[int] = []
        if pos < len(buf) or self._cont_octets or self._cont_line:
            pos = self._slow(buf, pos, frames, status)
        self._tail = buf[pos:]
        return _combine(fast, frames, status)

    def flush(self) -> tuple[pa.BinaryArray, np.ndarray | None]:
        """End of stream: the unterminated last message (if any) as a frame."""
        tail, self._tail = self._tail, b""
        frames: list[bytes] = []
        status: list[int] = []
        if tail:
            if self._cont_line or self._cont_octets:
                self._pieces(tail, frames, status)
            else:
                m = re.match(rb"([1-9][0-9]{0,9}) ", tail)
                if m is not None:  # an octet-counted frame cut short by the end of the stream
                    body = tail[m.end():]
                    frames.append(body[: self.max_bytes])
                    status.append(HEAD)
                    if len(body) > self.max_bytes:
                        self._pieces(body[self.max_bytes:], frames, status)
                else:
                    if tail.endswith(b"\r"):
                        tail = tail[:-1]
                    if tail:
                        self._line(tail, frames, status)
        self._cont_line = False
        self._cont_octets = 0
        return _combine(None, frames, status)

    def _fast(self, buf: bytes) -> tuple[pa.BinaryArray | None, int]:
        arr = np.frombuffer(buf, dtype=np.uint8)
        starts, ends, consumed = split_lines(arr, (NL, 0))
        if consumed == 0:
            return None, 0
        ends = strip_cr(arr, starts, ends)
        lengths = ends - starts
        nonempty = lengths > 0
        first = arr[starts[nonempty]]
        if ((first >= 49) & (first <= 57)).any() or (lengths > self.max_bytes).any():
            return None, 0  # octet counting or an over-long line somewhere: frame message by message
        if not nonempty.all():
            starts, ends = starts[nonempty], ends[nonempty]
        return gather_ranges(arr, starts, ends), consumed

    def _slow(self, buf: bytes, pos: int, frames: list, status: list) -> int:
        n = len(buf)
        arr = np.frombuffer(buf, dtype=np.uint8)
        delims = np.flatnonzero((arr == 10) | (arr == 0))
        di = int(np.searchsorted(delims, pos))
        size = self.max_bytes

        def next_delim(at: int) -> int:
            nonlocal di
            while di < len(delims) and delims[di] < at:
                di += 1
            return int(delims[di]) if di < len(delims) else -1

        while True:
            if self._cont_octets:
                take = min(self._cont_octets, n - pos)
                if take == 0:
                    break
                self._pieces(buf[pos:pos + take], frames, status)
                pos += take
                self._cont_octets -= take
                continue
            if self._cont_line:
                d = next_delim(pos)
                if d < 0:
                    # A final '\r' may be the start of a CRLF ending: keep it until the next byte.
                    end = n - 1 if buf[n - 1:n] == b"\r" else n
                    if end > pos:
                        self._pieces(buf[pos:end], frames, status)
                        pos = end
                    break
                end = d - 1 if d > pos and buf[d - 1] == 13 else d
                if end > pos:
                    self._pieces(buf[pos:end], frames, status)
                pos = d + 1
                self._cont_line = False
                continue
            if pos >= n:
                break
            c = buf[pos]
            if 49 <= c <= 57:
                sp = buf.find(b" ", pos, pos + 11)
                if sp < 0:
                    if n - pos < 11 and buf[pos:n].isdigit():
                        break  # maybe a length whose space has not arrived yet
                elif buf[pos:sp].isdigit():
                    length = int(buf[pos:sp])
                    start = sp + 1
                    if length <= size:
                        if n - start < length:
                            break
                        frames.append(buf[start:start + length])
                        status.append(COMPLETE)
                        pos = start + length
                        continue
                    if n - start < size:
                        break
                    frames.append(buf[start:start + size])
                    status.append(HEAD)
                    pos = start + size
                    self._cont_octets = length - size
                    continue
            d = next_delim(pos)
            if d < 0:
                # Cannot end within the limit (allowing for a CRLF's '\r'): cut now, bound the memory.
                if n - pos > size + 1 or (n - pos == size + 1 and buf[n - 1] != 13):
                    frames.append(buf[pos:pos + size])
                    status.append(HEAD)
                    pos += size
                    self._cont_line = True
                    continue
                break
            end = d - 1 if d > pos and buf[d - 1] == 13 else d
            if end > pos:
                self._line(buf[pos:end], frames, status)
            pos = d + 1
        return pos

    def _line(self, line: bytes, frames: list, status: list) -> None:
        size = self.max_bytes
        if len(line) <= size:
            frames.append(line)
            status.append(COMPLETE)
        else:
            frames.append(line[:size])
            status.append(HEAD)
            self._pieces(line[size:], frames, status)

    def _pieces(self, data: bytes, frames: list, status: list) -> None:
        size = self.max_bytes
        for i in range(0, len(data), size):
            frames.append(data[i:i + size])
            status.append(CONTINUATION)


def _combine(fast: pa.BinaryArray | None, frames: list, status: list):
    if not frames:
        if fast is None:
            return pa.array([], pa.binary()), None
        return fast, None
    slow = pa.array(frames, pa.binary())
    codes = np.asarray(status, dtype=np.int8)
    if fast is not None and len(fast):
        slow = pa.concat_arrays([fast, slow])
        codes = np.concatenate([np.zeros(len(fast), dtype=np.int8), codes])
    return slow, (codes if codes.any() else None)


def strip_trailers(frames: pa.BinaryArray) -> pa.BinaryArray:
    """Frames without trailing ``\\n``, ``\\r`` and NUL bytes (for UDP datagrams)."""
    if len(frames) == 0:
        return frames
    return pc.replace_substring_regex(frames, r"[\r\n\x00]+$", "")


# -- headers -------------------------------------------------------------------------------------

def headers_from_columns(n: int, columns: list[tuple[str, pa.Array | None]]) -> pa.MapArray:
    """A ``map<string, string>`` of ``n`` events from ``[(key, values)]``: ``values`` is a string
    array of length ``n`` (null: the event does not get that key) or None (no event does).

    Keys keep the order of ``columns`` within each event. One concatenation and two ``take``s
    for the whole batch, whatever the number of keys.
    """
    cols = [(k, v) for k, v in columns if v is not None]
    if n == 0 or not cols:
        return empty_headers(n)
    arrays = []
    for key, values in cols:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if values.type != pa.string():
            values = values.cast(pa.string())
        if len(values) != n:
            raise ValueError(f"header {key!r}: {len(values)} values for {n} events")
        arrays.append(values)
    k = len(arrays)
    values = pa.concat_arrays(arrays)
    if values.null_count:
        valid = np.asarray(values.is_valid(), dtype=bool)
    else:
        valid = np.ones(k * n, dtype=bool)
    # Event-major order of the key-major concatenation: entry (i, j) is values[j * n + i].
    order = (np.arange(k, dtype=np.int64)[None, :] * n + np.arange(n, dtype=np.int64)[:, None]).ravel()
    live = valid[order]
    selected = order[live]
    counts = live.reshape(n, k).sum(axis=1)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError("too many header entries for one batch")
    keys = pa.array([key for key, _ in cols], pa.string()).take(pa.array(selected // n))
    items = values.take(pa.array(selected))
    return pa.MapArray.from_arrays(pa.array(offsets.astype(np.int32)), keys, items)


def batch_of(headers: pa.MapArray, body: pa.Array) -> EventBatch:
    from rayflume.event import SCHEMA
    if body.type != pa.binary():
        body = body.cast(pa.binary())
    return EventBatch(pa.RecordBatch.from_arrays([headers, body], schema=SCHEMA))
