"""The ``taildir`` source's runtime: tailing the files of its groups, batch by batch, with positions
that move only on acknowledgement. See :mod:`rayflume.sources.taildir` for the guarantees.

:class:`TaildirSource` owns the tracked files and keeps their state consistent: it scans the
groups' directories (:mod:`.groups`) for new, renamed, rotated and deleted files, opens and closes
them, tells replaced content from the file that was there (:mod:`.tracked`), reads and frames
them into the buffer (:mod:`.reading`), and persists the acknowledged positions (:mod:`.positions`).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from rayflume.event import EventBatch
from rayflume.sources._files import LockedFileSource
from rayflume.sources._files.storage import remove_stale_temps
from rayflume.sources.base import SourceContext
from rayflume.sources.taildir.groups import FileGroup, find_identity, list_matches
from rayflume.sources.taildir.positions import default_position_file, stored_positions, write_positions
from rayflume.sources.taildir.reading import _Segment, read_chunk, segment_events, take_segments
from rayflume.sources.taildir.tracked import _EMPTY_FP, FINGERPRINT_BYTES, _Tracked

if TYPE_CHECKING:  # the config module builds this class
    from rayflume.sources.taildir.config import TaildirSourceConfig

log = logging.getLogger("rayflume.source.taildir")

READ_CHUNK_BYTES = 8 << 20
SCAN_INTERVAL_S = 0.2

COUNTERS = ("FileOpenedCount", "FileClosedCount", "FileRenamedCount", "FileRotatedCount",
            "FileDeletedCount", "FileTruncatedCount", "FileReplacedCount", "FileReadFail",
            "LinesSplitCount", "PositionWriteCount", "PositionWriteFail")


class TaildirSource(LockedFileSource):
    """Tails the files of its groups; see :mod:`rayflume.sources.taildir` for the guarantees.

    ``poll``, ``ack`` and ``stop`` may be called from different threads; an internal lock
    serialises them. ``clock`` (monotonic seconds) is injectable for tests of idle timeouts.
    """

    KIND = "taildir"
    COUNTERS = COUNTERS
    log = log

    def __init__(self, name: str, config: TaildirSourceConfig, read_chunk_bytes: int = READ_CHUNK_BYTES,
                 scan_interval_s: float = SCAN_INTERVAL_S, clock=time.monotonic):
        self.name = name
        self.groups = [FileGroup.parse(g, spec, config.headers.get(g)) for g, spec in config.filegroups.items()]
        self._group_by_name = {g.name: g for g in self.groups}
        self.config = config
        self.position_file = config.position_file  # as configured until start(); then the path in use
        # A chunk must be able to hold a whole line of the maximum length plus its terminator.
        self.read_chunk_bytes = max(read_chunk_bytes, config.max_line_length_bytes + 2)
        self.scan_interval_s = scan_interval_s
        self.clock = clock

        self.files: dict[tuple[int, int], _Tracked] = {}
        self._segments: deque[_Segment] = deque()
        self._buffered = 0
        self._pending_marks: list[tuple[_Tracked, int, int]] = []
        self._dirty = False
        self._last_write = float("-inf")
        self._last_scan = float("-inf")
        self._init_file_state()
        # Read-ahead: a thread of its own reads and frames the next batch while the runner delivers
        # the one ``poll`` returned. What it reads only fills the buffer; positions still move only
        # with acknowledgements.
        self._fill_wanted = threading.Event()
        self._reader_stop = threading.Event()
        self._reader: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, context: SourceContext) -> None:
        super().start(context)
        path = self.config.position_file or default_position_file(self.name, context.topology)
        # In a tier, <dir>/<tier>/<instance>/<file>: each instance has its own positions (and lock).
        self.position_file = self._scoped(os.path.abspath(os.path.expanduser(path)))
        os.makedirs(os.path.dirname(self.position_file), exist_ok=True)
        self._acquire_lock(self.position_file + ".lock",
                           f"source '{self.name}': `position_file` {self.position_file} is in use by "
                           f"another running source; give each taildir source its own position_file")
        try:
            remove_stale_temps(self.position_file)
            with self._mutex:
                stored = self._load_positions()
                self._initial_scan(stored)
                self._started = True
                self._write_positions(force=True)
            if self.config.read_ahead:
                self._reader_stop.clear()
                self._reader = threading.Thread(target=self._read_ahead_loop, daemon=True,
                                                name=f"taildir-{self.name}-read-ahead")
                self._reader.start()
        except BaseException:
            # The actor calls start() again (with back-off): leave nothing behind. Our own flock
            # would refuse the retry's lock on a new descriptor (flock is per open file
            # description), so the retry would fail as "in use by another running source".
            with self._mutex:
                for t in self.files.values():
                    self._close(t)
                self.files.clear()
                self._release_lock()
            raise

    def _read_ahead_loop(self) -> None:
        while not self._reader_stop.is_set():
            self._fill_wanted.wait()
            self._fill_wanted.clear()
            with self._mutex:
                if self._started and not self._reader_stop.is_set() and self._buffered < self.config.batch_size:
                    try:
                        self._fill(self.clock())
                    except Exception:  # poll reads (and reports) the same files again
                        log.exception("taildir '%s': reading ahead failed", self.name)

    def _stop_reader(self) -> None:
        self._reader_stop.set()
        self._fill_wanted.set()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join()
        self._reader = None

    def stop(self) -> None:
        self._stop_reader()
        with self._mutex:
            if self._started:
                self._write_positions(force=True)
            for t in self.files.values():
                self._close(t)
            self._release_lock()

    def abandon(self) -> None:
        """Drop every OS resource without writing positions, as a crash would (for tests)."""
        self._stop_reader()
        with self._mutex:
            for t in self.files.values():
                if t.fd is not None:
                    os.close(t.fd)
                    t.fd = None
            self._release_lock()

    # -- position file ------------------------------------------------------------------------------
    def _load_positions(self) -> dict:
        data = self._read_state(self.position_file, "files are tailed as if never seen (from the start, "
                                                    "or the end with skip_to_end)")
        return stored_positions(data, self.position_file, self._report)

    def _write_positions(self, force: bool = False) -> None:
        if not force:
            if not self._dirty:
                return
            if self.clock() - self._last_write < self.config.write_pos_interval_s:
                return
        try:
            write_positions(self.position_file, self.name, self.files.values())
        except OSError as exc:
            self.context.count("PositionWriteFail")
            self._report(f"cannot write position file {self.position_file} ({exc}); positions stay in "
                        f"memory and are written at the next acknowledgement (a crash meanwhile "
                        f"re-reads, never loses)")
            return
        self._dirty = False
        self._last_write = self.clock()
        self.context.count("PositionWriteCount")

    # -- discovery ----------------------------------------------------------------------------------
    def _list_matches(self) -> dict:
        """``{(dev, ino): (path, group, stat)}`` for every regular file matching a group."""
        return list_matches(self.groups, self._report)

    def _initial_scan(self, stored: dict) -> None:
        now = self.clock()
        for key, (path, group, st) in self._list_matches().items():
            entry = stored.pop(key, None)
            t = _Tracked(key, path, group, 0, 0, _EMPTY_FP, now)
            t.seen_size = st.st_size
            # If it cannot be opened now, a recorded position is kept as it is: the first read
            # checks the fingerprint anyway.
            opened = self._open(t)
            if entry is not None and (not opened or t.fingerprint_matches(entry["fp_len"], entry["fp"])):
                t.fp_len, t.fp = entry["fp_len"], entry["fp"]
                t.read_pos = t.committed = entry["pos"]
                if entry["path"] != path:
                    log.info("taildir '%s': %s is now %s; resuming at byte %d", self.name, entry["path"],
                             path, entry["pos"])
                if st.st_size < entry["pos"]:
                    self._new_epoch(t, f"shrank from {entry['pos']} to {st.st_size} bytes while the source "
                                       f"was down (copytruncate)", "FileTruncatedCount")
            else:
                if entry is not None:
                    self.context.count("FileReplacedCount")
                    log.info("taildir '%s': %s reuses the inode of %s with other content; reading it from "
                             "the start", self.name, path, entry["path"])
                elif self.config.skip_to_end:
                    t.read_pos = t.committed = st.st_size
                    self._dirty = True
                if opened:
                    self._refresh_fingerprint(t, st.st_size)
            self.files[key] = t
        # Identities recorded but no longer at a matching path: rotated away (app.log -> app.log.1)
        # before we finished them. Look for them under any name in their directory.
        for key, entry in stored.items():
            t = _Tracked(key, entry["path"], entry["group"], entry["pos"], entry["fp_len"], entry["fp"], now)
            t.gone = True
            if self._find_moved(t):
                log.info("taildir '%s': resuming rotated file %s (was %s) at byte %d", self.name, t.path,
                         entry["path"], t.committed)
                self.files[key] = t
            else:
                log.info("taildir '%s': %s is gone; forgetting its position", self.name, entry["path"])
                self._dirty = True
        self._last_scan = now

    def _scan(self) -> None:
        now = self.clock()
        self._last_scan = now
        found = self._list_matches()
        new_files = False
        for key, (path, group, st) in found.items():
            t = self.files.get(key)
            if t is None:
                t = _Tracked(key, path, group, 0, 0, _EMPTY_FP, now)
                t.seen_size = st.st_size
                self.files[key] = t
                new_files = True
                continue
            t.seen_size = st.st_size
            if t.path != path or t.gone:
                # A rename keeps the identity and so the position: never re-read (Flume re-reads here).
                self.context.count("FileRenamedCount")
                log.info("taildir '%s': %s is now %s; keeping its position %d", self.name, t.path, path,
                         t.committed)
                t.path, t.gone, t.group = path, False, group
                self._dirty = True
        for key, t in list(self.files.items()):
            if key in found or t.gone:
                continue
            t.gone = True
            self._dirty = True
            if t.fd is None and not t.finished:
                # Closed while idle, then rotated or deleted: it may have grown before it moved.
                if not self._find_moved(t):
                    self.context.count("FileDeletedCount")
                    self._forget(t)
            else:
                self.context.count("FileRotatedCount")
        if new_files:
            # Persist a new file's identity at once: a restart must not take it for a file that
            # was never seen (skip_to_end would skip it).
            self._write_positions(force=True)

    def _find_moved(self, t: _Tracked) -> bool:
        """Find ``t``'s identity under any name in its directory and open it there.

        Content that no longer matches what was recorded (shorter than the position, or another
        fingerprint) is what a copytruncate leaves, and it may have been rotated away afterwards
        while nobody looked (copytruncate, then rename, both while the source was down): the
        identity is kept and read again from byte 0, exactly as for a file found under a matching
        name. Forgetting it would silently drop every line written after the truncation.
        """
        found = find_identity(os.path.dirname(t.path), t.key)
        if found is None:
            return False
        path, st = found
        old_path, t.path = t.path, path
        if not self._open(t):
            t.path = old_path
            return False
        if st.st_size < t.committed:
            self._new_epoch(t, f"shrank from {t.committed} to {st.st_size} bytes before it was "
                               f"rotated away from {old_path} (copytruncate)", "FileTruncatedCount")
            self._refresh_fingerprint(t, st.st_size)
        elif not t.fingerprint_matches(t.fp_len, t.fp):
            self._new_epoch(t, f"has new content under the same inode (rotated away from {old_path})",
                            "FileReplacedCount")
            self._refresh_fingerprint(t, st.st_size)
        t.seen_size = st.st_size
        self._dirty = True
        return True

    # -- files --------------------------------------------------------------------------------------
    def _open(self, t: _Tracked) -> bool:
        try:
            fd = os.open(t.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError as exc:
            self.context.count("FileReadFail")
            self._report(f"cannot open {t.path}: {exc}")
            return False
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != t.key:
            os.close(fd)  # the name now points at another file; the scan will sort it out
            return False
        t.fd = fd
        self.context.count("FileOpenedCount")
        return True

    def _close(self, t: _Tracked) -> None:
        if t.fd is not None:
            try:
                os.close(t.fd)
            finally:
                t.fd = None
                self.context.count("FileClosedCount")

    def _forget(self, t: _Tracked) -> None:
        self._close(t)
        self.files.pop(t.key, None)
        self._dirty = True

    def _refresh_fingerprint(self, t: _Tracked, size: int) -> None:
        if t.refresh_fingerprint(size):
            self._dirty = True

    def _new_epoch(self, t: _Tracked, why: str, counter: str) -> None:
        """The content under ``t``'s identity was replaced: tail it again from the start."""
        self.context.count(counter)
        log.warning("taildir '%s': %s %s; reading it again from the start (lines not yet read from "
                    "the old content are lost, as with any copytruncate)", self.name, t.path, why)
        t.restart()
        self._dirty = True

    def _read_file(self, t: _Tracked, now: float) -> int:
        """Frame up to one chunk of ``t`` into the buffer; the number of events added."""
        if t.finished:
            return 0
        if t.fd is None:
            if t.gone:
                # Lost its descriptor after it moved (a read error): find it again, or let it go.
                if not self._find_moved(t):
                    self._forget(t)
                    return 0
            elif t.seen_size == t.read_pos:
                return 0
            elif not self._open(t):
                return 0
            t.last_growth = now
        try:
            st = os.fstat(t.fd)
            size = st.st_size
            if size != t.last_size:
                if size < t.read_pos:
                    self._new_epoch(t, f"shrank from {t.read_pos} to {size} bytes (copytruncate)",
                                    "FileTruncatedCount")
                elif t.fp_len and not t.fingerprint_matches(t.fp_len, t.fp):
                    self._new_epoch(t, "has new content under the same inode", "FileReplacedCount")
                if t.fp_len < FINGERPRINT_BYTES:
                    self._refresh_fingerprint(t, size)
            if size > t.read_pos and not (t.held and size == t.last_size):
                return self._read_chunk(t, size, now)
            t.last_size = size
            self._maybe_finish(t, st, now)
        except OSError as exc:
            self.context.count("FileReadFail")
            self._report(f"reading {t.path} failed: {exc}; retrying")
            self._close(t)
        return 0

    def _read_chunk(self, t: _Tracked, size: int, now: float, at_eof: bool = False) -> int:
        segment, split = read_chunk(t, size, self.read_chunk_bytes, self.config.max_line_length_bytes, at_eof)
        if split:
            self.context.count("LinesSplitCount", split)
        if segment is None:
            return 0
        self._segments.append(segment)
        self._buffered += len(segment)
        t.last_growth = now
        return len(segment)

    def _maybe_finish(self, t: _Tracked, st, now: float) -> None:
        """Nothing new to read: close idle files; finish rotated or deleted ones."""
        idle = now - t.last_growth >= self.config.idle_timeout_s
        deleted = st.st_nlink == 0
        if t.gone and (deleted or idle):
            if t.held:
                # The file will not grow any more: its unterminated last line is complete.
                self._read_chunk(t, st.st_size, now, at_eof=True)
            if deleted:
                self.context.count("FileDeletedCount")
            self._close(t)
            t.finished = True
        elif idle and not t.held and t.fd is not None:
            self._close(t)  # reopened by the next scan that sees it grow

    def _drop_finished(self) -> None:
        for t in [t for t in self.files.values() if t.finished and t.committed >= t.read_pos]:
            log.info("taildir '%s': finished %s at byte %d", self.name, t.path, t.committed)
            self._forget(t)

    # -- runner side --------------------------------------------------------------------------------
    def _next_batch(self) -> EventBatch | None:
        now = self.clock()
        if self._buffered < self.config.batch_size:
            if now - self._last_scan >= self.scan_interval_s:
                self._scan()
            self._fill(now)
        self._drop_finished()
        self._write_positions()
        if self._buffered == 0:
            return None
        batch = self._take(self.config.batch_size)
        if self.config.read_ahead:
            self._fill_wanted.set()   # the reader fills once poll releases the mutex
        return batch

    def _fill(self, now: float) -> None:
        # One chunk per file per round, so one busy file cannot starve the others; rotated-away
        # files go first, their lines are older.
        while self._buffered < self.config.batch_size:
            order = sorted(self.files.values(), key=lambda t: (not t.gone, t.path))
            added = 0
            for t in order:
                if self._buffered >= self.config.batch_size:
                    break
                added += self._read_file(t, now)
            if not added:
                break

    def _take(self, want: int) -> EventBatch:
        parts, self._pending_marks = take_segments(self._segments, want)
        self._buffered -= sum(len(part) for part in parts)
        return EventBatch.concat([self._events(part) for part in parts])

    def _events(self, seg: _Segment) -> EventBatch:
        group, config = self._group_by_name.get(seg.tracked.group), self.config
        return segment_events(seg, None if group is None else group.headers,
                              config.file_header_key if config.file_header else None, config.byte_offset_header)

    def _acked(self) -> None:
        for t, epoch, end in self._pending_marks:
            if t.epoch == epoch and end > t.committed:
                t.committed = end
                self._dirty = True
        self._pending_marks = []
        self._drop_finished()
        if self._started:
            self._write_positions()

    @property
    def buffered_events(self) -> int:
        return self._buffered

    def positions(self) -> dict[str, int]:
        """``{path: acknowledged byte position}`` of every tracked file (for tests and status)."""
        with self._mutex:
            return {t.path: t.committed for t in self.files.values()}
