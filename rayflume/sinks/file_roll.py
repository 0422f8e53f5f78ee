"""The ``file_roll`` sink: appends batches to files in a local directory, rolling them on a timer
(Flume's ``RollingFileSink``).

Files are named like Flume's default path manager, ``<prefix><series-ms>-<counter>[.<extension>]``:
``series-ms`` is the wall-clock time in milliseconds when the sink started, ``counter`` counts the
files of that series from 1, zero-padded to six digits so that names sort by creation. A restarted
sink starts a new series later than every series already in the directory (and a series that would
pass 999999 files starts a new one), so the order holds across restarts; an existing file is never
overwritten.

Rolling: a file is closed once it has been open ``roll_interval_s`` seconds, checked in ``write``
and in ``maintain`` (which the runner calls even when idle), so an idle sink does not keep a file
open past its interval. The next file is opened by the next ``write``, so unlike Flume an idle sink
leaves no trail of empty files. ``roll_interval_s: 0`` never rolls: everything goes to one file
(per sink start).

Delivery: ``write`` serialises the whole batch into one buffer with Arrow kernels, writes it, and
``fsync``s the file before returning, so a committed take is on disk. It is **at-least-once**: if the
sink dies after ``write`` and before the runner committed the take, the batch is taken and written
again, so it appears twice. If a write fails, the partial write is cut off (the file is truncated
back, best effort) and the file is closed before the error is raised; the retried batch goes to a
new file.

Called from one thread at a time (see :class:`~rayflume.sinks.base.Sink`).
"""
from __future__ import annotations

import errno
import logging
import os
import re
import time
from typing import Callable

from pydantic import Field, field_validator

from rayflume._private.fileio import fsync_dir
from rayflume.config_base import SinkConfig
from rayflume.errors import DeliveryError
from rayflume.event import EventBatch
from rayflume.registry import register
from rayflume.sinks.base import Sink, SinkContext
from rayflume.sinks.serializers import SERIALIZERS, make_serializer

log = logging.getLogger("rayflume.sink.file_roll")

COUNTER_DIGITS = 6
_COUNTER_LIMIT = 10**COUNTER_DIGITS - 1


def file_name(prefix: str, series_ms: int, counter: int, extension: str) -> str:
    name = f"{prefix}{series_ms}-{counter:0{COUNTER_DIGITS}d}"
    return f"{name}.{extension}" if extension else name


class FileRollSink(Sink):
    """Writes batches to rolling files under ``directory``; see the module docstring.

    ``clock`` (monotonic seconds) times the rolls; ``wall_clock`` (epoch seconds) names the files.
    Both are injectable for tests.
    """

    def __init__(self, name: str, directory: str, roll_interval_s: float = 30.0, serializer: str = "text",
                 append_newline: bool = True, prefix: str = "", extension: str = "", batch_size: int = 100,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time):
        if roll_interval_s < 0:
            raise ValueError(f"file_roll sink {name!r}: roll_interval_s must be >= 0 (0 = never roll)")
        self.name = name
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self.roll_interval_s = float(roll_interval_s)
        self.serializer = make_serializer(serializer, append_newline)
        self.prefix = prefix
        self.extension = extension.lstrip(".")
        self.batch_size = batch_size
        self.clock = clock
        self.wall_clock = wall_clock
        self.context = SinkContext(name=name)
        self._fd: int | None = None
        self._path: str | None = None
        self._opened_at = 0.0
        self._pos = 0
        self._series_ms = 0
        self._counter = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, context: SinkContext) -> None:
        super().start(context)
        os.makedirs(self.directory, exist_ok=True)
        self._series_ms = max(int(self.wall_clock() * 1000), self._latest_series() + 1)
        self._counter = 0

    def write(self, batch: EventBatch) -> None:
        if self._fd is not None and self._due():
            self._close()
        if len(batch) == 0:
            return
        # Serialise before touching the file: a bad batch must not leave an empty file behind.
        payload = self.serializer.serialize(batch)
        if self._fd is None:
            self._open()
        fd, before = self._fd, self._pos
        try:
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError as exc:
            self.context.count("ConnectionFailedCount")
            self._undo(before)
            hint = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "check the directory"
            raise DeliveryError(f"file_roll sink {self.name!r}: writing {len(batch)} events to "
                                f"{self._path or 'its file'} "
                                f"failed: {exc}; the take is rolled back, {hint}") from exc
        self._pos = before + len(payload)
        self.context.count("BytesWrittenCount", len(payload))

    def maintain(self) -> None:
        if self._fd is not None and self._due():
            self._close()

    def stop(self) -> None:
        self._close()

    # -- status ---------------------------------------------------------------------------------
    @property
    def current_path(self) -> str | None:
        """The file being written, or None between a roll and the next write."""
        return self._path if self._fd is not None else None

    # -- files ----------------------------------------------------------------------------------
    def _due(self) -> bool:
        return self.roll_interval_s > 0 and self.clock() - self._opened_at >= self.roll_interval_s

    def _latest_series(self) -> int:
        """The newest series already in the directory from this prefix, so a restart sorts after it."""
        pattern = re.compile(re.escape(self.prefix) + r"(\d+)-\d+" +
                             (re.escape("." + self.extension) if self.extension else "") + r"$")
        latest = 0
        for entry in os.listdir(self.directory):
            m = pattern.match(entry)
            if m:
                latest = max(latest, int(m.group(1)))
        return latest

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        while True:
            if self._counter >= _COUNTER_LIMIT:
                self._series_ms = max(int(self.wall_clock() * 1000), self._series_ms + 1)
                self._counter = 0
            self._counter += 1
            path = os.path.join(self.directory,
                                file_name(self.prefix, self._series_ms, self._counter, self.extension))
            try:
                fd = os.open(path, flags, 0o644)
                break
            except FileExistsError:
                continue  # never overwrite: someone else's file holds this name; take the next
            except OSError as exc:
                self.context.count("ConnectionFailedCount")
                raise DeliveryError(f"file_roll sink {self.name!r}: cannot create {path}: {exc}; "
                                    f"check that the directory is writable") from exc
        self._fd, self._path, self._pos, self._opened_at = fd, path, 0, self.clock()
        # The new file's directory entry must survive a crash too, or its fsynced data is unreachable.
        fsync_dir(self.directory, best_effort=True)
        self.context.count("ConnectionCreatedCount")
        log.debug("file_roll sink %r: opened %s", self.name, path)

    def _undo(self, length: int) -> None:
        """Cut the file back to ``length`` after a failed write, then abandon it.

        After a failed write or fsync the kernel's view of the file is not to be trusted (Linux may
        drop the dirty pages and report success later), so the next write starts a new file.
        """
        try:
            os.ftruncate(self._fd, length)
        except OSError:
            log.warning("file_roll sink %r: could not truncate %s after a failed write; a partial batch "
                        "may remain at its end", self.name, self._path)
        self._close()

    def _close(self) -> None:
        if self._fd is None:
            return
        fd, path = self._fd, self._path
        self._fd = None
        try:
            os.close(fd)
        except OSError as exc:
            # Every byte was fsynced by its write, so nothing is lost; say so and move on.
            log.warning("file_roll sink %r: closing %s failed: %s", self.name, path, exc)
        self.context.count("ConnectionClosedCount")
        log.debug("file_roll sink %r: closed %s", self.name, path)


_BAD_NAME_CHARS = ("/", "\\", "\0")


@register("sink", "file_roll")
class FileRollSinkConfig(SinkConfig):
    """``file_roll``: rolling files in a local directory; at-least-once (see the module docstring)."""

    directory: str = Field(min_length=1, description="Directory of the files; created if missing "
                                                     "(Flume's sink.directory). Relative to the sink's working "
                                                     "directory.")
    roll_interval_s: float = Field(30.0, ge=0, description="Seconds a file stays open before it is closed "
                                                          "and the next write opens a new one; 0 never rolls.")
    batch_size: int = Field(100, gt=0, description="Most events taken in one transaction (sink.batchSize).")
    serializer: str = Field("text", description="text (bodies) or header_and_text ({k=v, ...} body).")
    append_newline: bool = Field(True, description="End every event with a newline (serializer.appendNewline).")
    prefix: str = Field("", description="Start of every file name (sink.pathManager.prefix).")
    extension: str = Field("", description="File name extension, without the dot (sink.pathManager.extension).")

    @field_validator("serializer")
    @classmethod
    def _known_serializer(cls, value: str) -> str:
        if value not in SERIALIZERS:
            raise ValueError(f"file_roll sink: unknown serializer {value!r}; use one of {sorted(SERIALIZERS)}")
        return value

    @field_validator("prefix", "extension")
    @classmethod
    def _plain_name(cls, value: str, info) -> str:
        if any(c in value for c in _BAD_NAME_CHARS) or value in (".", ".."):
            raise ValueError(f"file_roll sink: {info.field_name} {value!r} must be part of a file name, without "
                             f"path separators; put directories in 'directory'")
        return value.lstrip(".") if info.field_name == "extension" else value

    def build(self, name: str) -> FileRollSink:
        return FileRollSink(name, self.directory, roll_interval_s=self.roll_interval_s,
                            serializer=self.serializer, append_newline=self.append_newline,
                            prefix=self.prefix, extension=self.extension, batch_size=self.batch_size)
