"""The ``spooldir`` source (Flume's spooling directory source): reads immutable files dropped into
a directory, one event per line, and marks each file done once all its lines are acknowledged.

**Which files.** Regular files directly in ``spool_dir`` (and below it with
``recursive_directory_search``) whose name matches ``include_pattern`` and not ``ignore_pattern``
(Python regexes matched against the whole file name, like Java's ``matches``). Hidden files and
directories (a leading ``.``), the tracker directory and names ending with ``file_suffix`` are
never read. ``min_file_age_s`` skips files modified less than that many seconds ago: files still
being written. Files are read one at a time, in ``consume_order``: ``oldest`` or ``youngest`` by
modification time (ties by path), or ``random``. The directory is listed at most every
``poll_delay_s`` while the source is idle.

**Delivery.** A file's read position advances only in ``ack()``, after the runner saw the batch
committed. It is recorded in ``<tracker_dir>/rayflume-positions.json`` (replaced atomically: temp
file, fsync, rename, fsync of the directory) together with the file's identity (device, inode,
size, mtime) when the file is picked up and on every acknowledgement. A file is marked done only
after all its lines were acknowledged: renamed to ``<name><file_suffix>`` (``tracking_policy:
rename``), recorded by a marker ``<tracker_dir>/<relative path><file_suffix>`` holding its identity
(``tracker_dir``; the file stays in place), or deleted (``delete_policy: immediate``). After a crash
the source resumes the file at its recorded position: it re-delivers at most the batch that was in
flight, and loses nothing. A batch never spans two files. In a tier each instance keeps its own
positions, in ``<tracker_dir>/<tier>/<instance>/rayflume-positions.json``, as its file channel keeps
its files: an instance that comes back resumes its file while its channel replays what it had
acknowledged, and an instance of another name reads the file in progress again from its start
(duplicates, not loss). The lock, the completed names and the markers stay per spool directory:
one source reads a directory at a time.

**Changed files are skipped, not fatal.** Flume stops the whole source when a file changes after
it was picked up or a name is reused. Here the file is reported (ERROR log, counters
``FileChangedCount`` / ``FileNameReusedCount``, the text in the ``LastError`` counter and in
``SpoolDirSource.status_error``) and skipped: it is left in place, recorded as failed (so a
restart does not read it again) and the other files go on. A failed file is forgotten once it is
removed from the directory. A file is "changed" when its size or mtime differs from when it was
picked up; a name is "reused" when the completed name (``rename``) or a marker with another
identity (``tracker_dir``) already exists. Lines of a changed file read before the change was seen
are delivered.

**Lines and characters.** Lines end with ``\\n`` (a ``\\r`` before it is dropped); a last line without
newline is delivered at the end of the file. ``input_charset`` must be ASCII-compatible (UTF-8,
ISO-8859-x, cp125x, ...). Bodies are UTF-8, as in Flume: UTF-8 input is validated with an Arrow
kernel and passed through unchanged; other charsets, and lines that are not valid UTF-8, are
decoded line by line. ``decode_error_policy``: ``FAIL`` delivers the lines before the first
undecodable one, then reports the file and skips the rest (not a halt of the source); ``REPLACE``
puts U+FFFD in place of bad bytes; ``IGNORE`` drops them. A line longer than
``max_line_length_bytes`` (bytes of input, not characters as in Flume) is delivered as several
events; a UTF-8 cut never splits a character. ``file_header`` and ``basename_header`` add the
file's absolute path and name.
"""
from __future__ import annotations

import codecs
import logging
import os
import random
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from rayflume._private.fileio import fsync_dir
from rayflume.config_base import SourceConfig
from rayflume.errors import RayflumeError
from rayflume.event import EventBatch
from rayflume.interceptors.headers import set_header
from rayflume.registry import register
from rayflume.sources._files import LockedFileSource
from rayflume.sources._files.storage import read_json, remove_stale_temps, write_json_atomic
from rayflume.sources._framing import compact, frame_lines
from rayflume.sources.base import SourceContext

log = logging.getLogger("rayflume.source.spooldir")

READ_CHUNK_BYTES = 4 << 20
POSITIONS_NAME = "rayflume-positions.json"
LOCK_NAME = "rayflume.lock"
FILES_PER_POLL = 64
COUNTERS = ("FileOpenedCount", "FileCompletedCount", "FileFailedCount", "FileChangedCount",
            "FileNameReusedCount", "DecodeErrorCount", "LinesSplitCount", "PositionWriteFail")


def _identity(st) -> dict:
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _same_file(a: dict, st) -> bool:
    return (a["dev"], a["ino"]) == (st.st_dev, st.st_ino)


def _unchanged(a: dict, st) -> bool:
    return _same_file(a, st) and (a["size"], a["mtime_ns"]) == (st.st_size, st.st_mtime_ns)


def ascii_compatible(charset: str) -> bool:
    """Whether lines of ``charset`` text can be framed on the byte ``\\n``."""
    try:
        return "a\n\r".encode(charset) == b"a\n\r"
    except (LookupError, UnicodeError):
        return False


@dataclass(slots=True, eq=False)
class _Current:
    """The file being read: where framing got to (``read_pos``, from the position given), what is
    acknowledged (``committed``, from there too), where to stop (``end``, the size in ``ident``)."""

    relpath: str
    path: str
    fd: int
    ident: dict
    read_pos: int
    committed: int = field(init=False)
    end: int = field(init=False)
    error: str | None = None        # set: the file fails once everything before `end` is acked

    def __post_init__(self) -> None:
        self.committed = self.read_pos
        self.end = self.ident["size"]

    def entry(self, state: str = "reading") -> dict:
        out = {**self.ident, "state": state, "pos": self.committed}
        if self.error:
            out["error"] = self.error
        return out


class SpoolDirMissing(RayflumeError):
    """The spool directory does not exist on the source's node (raised by ``start()``)."""


class SpoolDirSource(LockedFileSource):
    """Reads the files of a spooling directory; see the module docstring for the guarantees.

    ``poll``, ``ack`` and ``stop`` may come from different threads; an internal lock serialises
    them. ``wall_clock`` (epoch seconds, compared with file mtimes) and ``clock`` (monotonic, for
    ``poll_delay_s``) are injectable for tests.
    """

    KIND = "spooldir"
    COUNTERS = COUNTERS
    log = log

    def __init__(self, name: str, config: SpoolDirSourceConfig, read_chunk_bytes: int = READ_CHUNK_BYTES,
                 wall_clock=time.time, clock=time.monotonic, rng: random.Random | None = None):
        self.name = name
        self.config = config
        self.spool_dir = os.path.abspath(os.path.expanduser(config.spool_dir))
        self.tracker_dir = os.path.join(self.spool_dir, os.path.expanduser(config.tracker_dir))
        self.include = re.compile(config.include_pattern)
        self.ignore = re.compile(config.ignore_pattern)
        self.charset = codecs.lookup(config.input_charset).name
        self.utf8 = self.charset == "utf-8"
        self.read_chunk_bytes = max(read_chunk_bytes, config.max_line_length_bytes + 2)
        self.wall_clock = wall_clock
        self.clock = clock
        self.rng = rng or random.Random()
        self.positions_path = os.path.join(self.tracker_dir, POSITIONS_NAME)

        self._store: dict[str, dict] = {}        # relpath -> in-progress or failed file
        self._done: dict[str, tuple] = {}        # relpath -> identity known done (tracker_dir policy)
        self._reported: set[tuple] = set()
        self._current: _Current | None = None
        self._segments: deque = deque()          # (bodies, starts, ends) of the current file
        self._buffered = 0
        self._pending_end = 0
        self._last_scan = float("-inf")
        self._init_file_state()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, context: SourceContext) -> None:
        super().start(context)
        if not os.path.isdir(self.spool_dir):
            # Checked here, on the source's node, not at validation: a later start() checks again.
            raise SpoolDirMissing(f"spooldir source '{self.name}': `spool_dir` {self.spool_dir} is not a directory "
                                  f"on this node; create it or fix `spool_dir`")
        self.positions_path = self._scoped(os.path.join(self.tracker_dir, POSITIONS_NAME))
        os.makedirs(os.path.dirname(self.positions_path), exist_ok=True)
        self._acquire_lock(os.path.join(self.tracker_dir, LOCK_NAME),
                           f"source '{self.name}': spool directory {self.spool_dir} is in use by another "
                           f"running source (lock {self.tracker_dir}/{LOCK_NAME}); give each spooldir "
                           f"source its own directory")
        remove_stale_temps(self.positions_path)
        with self._mutex:
            self._store = self._load_store()
            self._started = True

    def stop(self) -> None:
        with self._mutex:
            self._close_current()
            self._release_lock()

    def abandon(self) -> None:
        """Drop every OS resource without writing anything, as a crash would (for tests)."""
        self.stop()

    # -- the position store -------------------------------------------------------------------------
    def _load_store(self) -> dict:
        data = self._read_state(self.positions_path, "files in progress are read again from their start")
        files = (data or {}).get("files", {}) if isinstance(data, dict) else {}
        return {k: v for k, v in files.items() if isinstance(v, dict) and {"dev", "ino", "size", "mtime_ns",
                                                                              "state", "pos"} <= set(v)}

    def _save_store(self) -> bool:
        try:
            write_json_atomic(self.positions_path, {"format": 1, "source": self.name, "files": self._store})
            return True
        except OSError as exc:
            self.context.count("PositionWriteFail")
            self._report(f"cannot write {self.positions_path} ({exc}); the position stays in memory (a crash "
                         f"re-reads, never loses)")
            return False

    # -- discovery ----------------------------------------------------------------------------------
    def _walk(self):
        """``(relpath, path, stat)`` of every candidate file, before the age and tracking checks."""
        tracker = os.path.realpath(self.tracker_dir)
        stack = [self.spool_dir]
        while stack:
            directory = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError as exc:
                if directory == self.spool_dir:
                    self._report(f"cannot list {directory}: {exc}")
                continue
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                try:
                    if entry.is_dir():
                        if self.config.recursive_directory_search and os.path.realpath(entry.path) != tracker:
                            stack.append(entry.path)
                        continue
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                except OSError:
                    continue
                if name.endswith(self.config.file_suffix) or not self.include.fullmatch(name) \
                        or self.ignore.fullmatch(name):
                    continue
                yield os.path.relpath(entry.path, self.spool_dir), entry.path, st

    def _marker_path(self, relpath: str) -> str:
        return os.path.join(self.tracker_dir, relpath + self.config.file_suffix)

    def _already_done(self, relpath: str, path: str, st) -> bool:
        """With ``rename``: whether the completed name exists (a reused name). With ``tracker_dir``:
        whether a marker says this file is done; a marker for another file is a reused name."""
        if self.config.delete_policy == "immediate":
            return False
        if self.config.tracking_policy == "rename":
            if os.path.lexists(path + self.config.file_suffix):
                self._fail_unread(relpath, st, "FileNameReusedCount",
                                  f"{path}: name reused: {path + self.config.file_suffix} already exists (a file "
                                  f"of this name was completed before); skipped - rename it to process it")
                return True
            return False
        known = self._done.get(relpath)
        if known == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns):
            return True
        try:
            marker = read_json(self._marker_path(relpath))
        except ValueError:
            marker = {}
        if marker is None:
            return False
        if isinstance(marker, dict) and marker.get("dev") is not None and _unchanged(marker, st):
            self._done[relpath] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            return True
        self._fail_unread(relpath, st, "FileNameReusedCount",
                          f"{path}: name reused or file changed after it was completed (marker "
                          f"{self._marker_path(relpath)} records another file); skipped - rename it to "
                          f"process it")
        return True

    def _candidates(self) -> list[tuple[str, str, object]]:
        now = self.wall_clock()
        seen = set()
        out = []
        for relpath, path, st in self._walk():
            seen.add(relpath)
            rec = self._store.get(relpath)
            if rec is not None and rec["state"] == "failed":
                if _same_file(rec, st):
                    continue
                del self._store[relpath]  # another file under a failed name: a new file
                self._save_store()
            if rec is not None and rec["state"] == "reading" and _same_file(rec, st):
                out.append((relpath, path, st))  # resumed first whatever its age
                continue
            if now - st.st_mtime < self.config.min_file_age_s:
                continue
            if self._already_done(relpath, path, st):
                continue
            out.append((relpath, path, st))
        # Records of files that left the directory are dropped.
        gone = [r for r in self._store if r not in seen and (self._current is None or r != self._current.relpath)
                and not os.path.lexists(os.path.join(self.spool_dir, r))]
        if gone:
            for r in gone:
                del self._store[r]
            self._save_store()
        for r in [r for r in self._done if r not in seen]:
            del self._done[r]
        return out

    def _pick(self, candidates):
        resumed = [c for c in candidates if self._store.get(c[0], {}).get("state") == "reading"]
        if resumed:
            return resumed[0]
        if self.config.consume_order == "random":
            return self.rng.choice(candidates)
        key = (lambda c: (c[2].st_mtime_ns, c[1])) if self.config.consume_order == "oldest" else \
            (lambda c: (-c[2].st_mtime_ns, c[1]))
        return min(candidates, key=key)

    def _open_next(self) -> bool:
        now = self.clock()
        if now - self._last_scan < self.config.poll_delay_s:
            return False
        self._last_scan = now
        candidates = self._candidates()
        if not candidates:
            return False
        relpath, path, _ = self._pick(candidates)
        return self._open(relpath, path)

    def _open(self, relpath: str, path: str) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._report(f"cannot open {path}: {exc}; trying again later")
            return False
        st = os.fstat(fd)
        self.context.count("FileOpenedCount")
        rec = self._store.get(relpath)
        if rec is not None and rec["state"] == "reading" and _same_file(rec, st):
            cur = _Current(relpath, path, fd, {k: rec[k] for k in ("dev", "ino", "size", "mtime_ns")},
                           int(rec["pos"]))
            self._current = cur
            if not _unchanged(rec, st):
                self._fail(cur, "FileChangedCount",
                           f"{path} changed while the source was down (size {rec['size']} -> {st.st_size}, "
                           f"mtime changed); skipped after byte {cur.committed}")
                cur.end = cur.read_pos
            else:
                log.info("spooldir '%s': resuming %s at byte %d", self.name, path, cur.committed)
        else:
            self._current = _Current(relpath, path, fd, _identity(st), 0)
            self._store[relpath] = self._current.entry()
            self._save_store()
        return True

    def _close_current(self) -> None:
        cur = self._current
        if cur is not None and cur.fd is not None:
            os.close(cur.fd)
            cur.fd = None
        self._current = None
        self._segments.clear()
        self._buffered = 0

    # -- reading ------------------------------------------------------------------------------------
    def _read(self) -> None:
        cur = self._current
        while self._buffered < self.config.batch_size and cur.read_pos < cur.end:
            st = os.fstat(cur.fd)
            if (st.st_size, st.st_mtime_ns) != (cur.ident["size"], cur.ident["mtime_ns"]):
                self._fail(cur, "FileChangedCount",
                           f"{cur.path} changed after it was picked up (size {cur.ident['size']} -> {st.st_size}); "
                           f"skipped after byte {cur.read_pos} (is it still being written? raise min_file_age_s)")
                cur.end = cur.read_pos
                return
            n = min(self.read_chunk_bytes, cur.end - cur.read_pos)
            data = os.pread(cur.fd, n, cur.read_pos)
            if not data:
                cur.end = cur.read_pos  # shorter than it claimed: caught as a change at completion
                return
            framed = frame_lines(data, self.config.max_line_length_bytes, at_eof=cur.read_pos + len(data) >= cur.end,
                                 utf8=self.utf8)
            if framed.split_count:
                self.context.count("LinesSplitCount", framed.split_count)
            bodies, starts, ends = framed.bodies, framed.starts + cur.read_pos, framed.ends + cur.read_pos
            if len(bodies):
                bodies, keep = self._decode(bodies, starts, cur)
                if keep < len(starts):
                    starts, ends = starts[:keep], ends[:keep]
                if len(bodies):
                    self._segments.append((bodies, starts, ends))
                    self._buffered += len(bodies)
            if cur.error:
                return
            if not framed.consumed:
                return  # cannot happen: a chunk always holds a whole line or a piece of one
            cur.read_pos += framed.consumed

    def _decode(self, bodies: pa.BinaryArray, starts: np.ndarray, cur: _Current):
        """UTF-8 bodies and how many lines are kept (fewer after a FAIL)."""
        if self.utf8:
            try:
                bodies.view(pa.string()).validate(full=True)
                return bodies, len(bodies)
            except pa.ArrowInvalid:
                pass
        # Rare path (another charset, or invalid bytes): no Arrow kernel transcodes, decode per line.
        raw = bodies.to_pylist()
        if self.config.decode_error_policy == "FAIL":
            out = []
            for i, line in enumerate(raw):
                try:
                    out.append(line.decode(self.charset).encode("utf-8"))
                except UnicodeDecodeError as exc:
                    offset = int(starts[i])
                    self._fail(cur, "DecodeErrorCount",
                               f"{cur.path}: the line at byte {offset} is not valid {self.charset} ({exc.reason}); "
                               f"the lines before it are delivered, the rest of the file is skipped "
                               f"(decode_error_policy FAIL; REPLACE or IGNORE would keep it)")
                    cur.end = cur.read_pos = offset
                    return pa.array(out, pa.binary()), i
            return pa.array(out, pa.binary()), len(raw)
        errors = self.config.decode_error_policy.lower()
        bad = 0
        out = []
        for line in raw:
            try:
                text = line.decode(self.charset)
            except UnicodeDecodeError:
                text = line.decode(self.charset, errors)
                bad += 1
            out.append(text.encode("utf-8"))
        if bad:
            self.context.count("DecodeErrorCount", bad)
        return pa.array(out, pa.binary()), len(raw)

    # -- completion ---------------------------------------------------------------------------------
    def _fail(self, cur: _Current, counter: str, message: str) -> None:
        if cur.error is None:
            cur.error = message
            self.context.count(counter)
            self._report(message)

    def _fail_unread(self, relpath: str, st, counter: str, message: str) -> None:
        key = (relpath, st.st_dev, st.st_ino)
        self._store[relpath] = {**_identity(st), "state": "failed", "pos": 0, "error": message}
        self._save_store()
        if key not in self._reported:
            self._reported.add(key)
            self.context.count(counter)
            self.context.count("FileFailedCount")
            self._report(message)

    def _finish_if_done(self) -> None:
        cur = self._current
        if cur is None or cur.read_pos < cur.end or cur.committed < cur.end or self._buffered:
            return
        if cur.error is None:
            problem = self._check_unchanged(cur)
            if problem:
                self._fail(cur, "FileChangedCount", problem)
        if cur.error is not None:
            self._store[cur.relpath] = cur.entry("failed")
            self._save_store()
            self.context.count("FileFailedCount")
            self._reported.add((cur.relpath, cur.ident["dev"], cur.ident["ino"]))
        else:
            if not self._complete(cur):
                return
            self._store.pop(cur.relpath, None)
            self._save_store()
            self.context.count("FileCompletedCount")
        self._close_current()
        self._last_scan = float("-inf")  # look for the next file right away

    def _check_unchanged(self, cur: _Current) -> str | None:
        st = os.fstat(cur.fd)
        if not _unchanged(cur.ident, st):
            return (f"{cur.path} changed after it was picked up (size {cur.ident['size']} -> {st.st_size}); "
                    f"not marked done (is it still being written? raise min_file_age_s)")
        try:
            at_path = os.stat(cur.path)
        except FileNotFoundError:
            return f"{cur.path} was removed while being read; its lines were delivered"
        if not _same_file(cur.ident, at_path):
            return f"{cur.path} was replaced by another file while being read; the new file is skipped"
        return None

    def _complete(self, cur: _Current) -> bool:
        """Mark ``cur`` done with the configured policy; False (reported) if that failed."""
        directory = os.path.dirname(cur.path)
        try:
            if self.config.delete_policy == "immediate":
                os.unlink(cur.path)
                fsync_dir(directory)
            elif self.config.tracking_policy == "rename":
                target = cur.path + self.config.file_suffix
                if os.path.lexists(target):
                    self._fail(cur, "FileNameReusedCount",
                               f"{cur.path}: cannot rename to {target}: it exists (a file of this name was "
                               f"completed before); all its lines were delivered, the file is left in place")
                    self._store[cur.relpath] = cur.entry("failed")
                    self._save_store()
                    self.context.count("FileFailedCount")
                    self._close_current()
                    return False
                os.rename(cur.path, target)
                fsync_dir(directory)
            else:
                marker = self._marker_path(cur.relpath)
                os.makedirs(os.path.dirname(marker), exist_ok=True)
                write_json_atomic(marker, cur.ident)
                self._done[cur.relpath] = (cur.ident["dev"], cur.ident["ino"], cur.ident["size"],
                                           cur.ident["mtime_ns"])
        except OSError as exc:
            self._report(f"cannot mark {cur.path} done ({exc}); retrying")
            return False
        log.info("spooldir '%s': completed %s", self.name, cur.path)
        return True

    # -- runner side --------------------------------------------------------------------------------
    def _next_batch(self) -> EventBatch | None:
        # Several files per poll only when they yield nothing (empty, failed, resumed at their end).
        for _ in range(FILES_PER_POLL):
            try:
                if self._current is None and not self._open_next():
                    return None
                if self._buffered < self.config.batch_size:
                    self._read()
            except OSError as exc:
                cur = self._current
                self._report(f"reading {cur.path if cur else self.spool_dir} failed: {exc}; retrying")
                if cur is not None:
                    self._close_current()
                raise
            if self._buffered:
                return self._take(self.config.batch_size)
            self._finish_if_done()
            if self._current is not None:
                return None
        return None

    def _take(self, want: int) -> EventBatch:
        parts, end = [], 0
        while want > 0 and self._segments:
            bodies, starts, ends = self._segments[0]
            if len(bodies) > want:
                self._segments[0] = (bodies.slice(want), starts[want:], ends[want:])
                bodies, starts, ends = bodies.slice(0, want), starts[:want], ends[:want]
            else:
                self._segments.popleft()
            parts.append(bodies)
            end = int(ends[-1])
            want -= len(bodies)
            self._buffered -= len(bodies)
        self._pending_end = end
        body = compact(parts[0]) if len(parts) == 1 else pa.concat_arrays(parts)
        batch = EventBatch.from_bodies(body)
        cur = self._current
        if self.config.file_header:
            batch = set_header(batch, self.config.file_header_key, cur.path)
        if self.config.basename_header:
            batch = set_header(batch, self.config.basename_header_key, os.path.basename(cur.path))
        return batch

    def _acked(self) -> None:
        cur = self._current
        if cur is None:
            return
        if self._pending_end > cur.committed:
            cur.committed = self._pending_end
            if cur.relpath in self._store:
                self._store[cur.relpath] = cur.entry()
                self._save_store()
        self._finish_if_done()

    @property
    def current_file(self) -> str | None:
        return self._current.path if self._current is not None else None

    def failed_files(self) -> dict[str, str]:
        """``{relative path: why}`` of the files recorded as failed."""
        with self._mutex:
            return {r: v.get("error", "") for r, v in self._store.items() if v["state"] == "failed"}


def _nonempty(what: str, value: str) -> str:
    if not value:
        raise ValueError(f"spooldir source: `{what}` must not be empty")
    return value


@register("source", "spooldir")
class SpoolDirSourceConfig(SourceConfig):
    """``spooldir``: reads immutable files dropped into a directory; each file is marked done
    (renamed, tracked or deleted) only after all its lines were acknowledged."""

    spool_dir: str = Field(min_length=1, description="The directory to read files from.")
    file_suffix: str = Field(".COMPLETED", description="Appended to the name of a completed file (rename) "
                                                       "or of its marker (tracker_dir).")
    delete_policy: Literal["never", "immediate"] = Field("never", description="Delete completed files.")
    tracking_policy: Literal["rename", "tracker_dir"] = Field(
        "rename", description="rename: completed files get `file_suffix`; tracker_dir: they stay in place and "
                              "a marker is written in `tracker_dir`.")
    tracker_dir: str = Field(".flumespool", description="Directory for positions and markers; relative to "
                                                        "`spool_dir` unless absolute.")
    include_pattern: str = Field("^.*$", description="Regex a file name must match to be read.")
    ignore_pattern: str = Field("^$", description="Regex of file names never read.")
    consume_order: Literal["oldest", "youngest", "random"] = Field("oldest", description="Which file next.")
    poll_delay_s: float = Field(0.5, ge=0, description="Least time between directory listings when idle.")
    recursive_directory_search: bool = Field(False, description="Also read files in subdirectories.")
    batch_size: int = Field(100, gt=0, description="Most lines in one batch.")
    input_charset: str = Field("UTF-8", description="Charset of the files (ASCII-compatible); bodies are UTF-8.")
    decode_error_policy: Literal["FAIL", "REPLACE", "IGNORE"] = Field(
        "FAIL", description="What to do with bytes that are not valid `input_charset`.")
    file_header: bool = Field(False, description="Set a header with the file's absolute path.")
    file_header_key: str = Field("file", description="The header `file_header` sets.")
    basename_header: bool = Field(False, description="Set a header with the file's name.")
    basename_header_key: str = Field("basename", description="The header `basename_header` sets.")
    min_file_age_s: float = Field(0.0, ge=0, description="Read only files last modified at least this long ago "
                                                         "(skips files still being written).")
    max_line_length_bytes: int = Field(2048, gt=0, description="Longer lines become several events.")

    @field_validator("decode_error_policy", mode="before")
    @classmethod
    def _upper(cls, v):
        return v.upper() if isinstance(v, str) else v

    @field_validator("include_pattern", "ignore_pattern")
    @classmethod
    def _regex(cls, v: str, info) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"spooldir source: `{info.field_name}` {v!r} is not a valid regex ({exc})") from None
        return v

    @field_validator("input_charset")
    @classmethod
    def _charset(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"spooldir source: `input_charset` {v!r} is not a known charset") from None
        if not ascii_compatible(v):
            raise ValueError(f"spooldir source: `input_charset` {v!r} is not ASCII-compatible (lines are found by "
                             f"the byte '\\n'); convert the files to UTF-8 first")
        return v

    @field_validator("file_suffix", "file_header_key", "basename_header_key")
    @classmethod
    def _not_empty(cls, v: str, info) -> str:
        return _nonempty(info.field_name, v)

    def check(self) -> list[str]:
        """Whether ``spool_dir`` is a writable directory on this machine (for local warnings; the
        source checks the directory on its own node at start)."""
        path = os.path.abspath(os.path.expanduser(self.spool_dir))
        if not os.path.isdir(path):
            return [f"spooldir source: `spool_dir` {path} is not a directory; create it or fix the path"]
        tracker = os.path.join(path, os.path.expanduser(self.tracker_dir))
        writable = tracker if os.path.isdir(tracker) else path
        if not os.access(writable, os.W_OK):
            return [f"spooldir source: {writable} is not writable; the source records positions and marks "
                    f"files done there"]
        return []

    def build(self, name: str) -> SpoolDirSource:
        return SpoolDirSource(name, self)
