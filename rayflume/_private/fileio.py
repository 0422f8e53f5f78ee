"""Low-level file operations behind one replaceable object, and the durable directory and
atomic-replace steps every file writer of rayflume shares.

:class:`FileIO` is the seam: the file channel does everything to its files through one, and
:func:`write_atomic` does every step through the one it is given, so tests substitute a subclass
that fails ``write`` or ``fsync`` with ``ENOSPC``/``EIO``, counts fsyncs, models a power cut or
reports little free space. Descriptors are raw ``os`` descriptors: no user-space buffering sits
between a write and its fsync.

:func:`fsync_dir` makes a directory's entries durable (a file's own fsync does not: after a power
cut a new, renamed or deleted file may be back as it was without it). :func:`write_atomic` replaces
a file so that a reader, or a restart after a crash at any instant, finds either the previous
complete content or the new one, never a torn file.
"""
from __future__ import annotations

import os
import shutil


def fsync_dir(path: str, best_effort: bool = False) -> None:
    """Make a directory's entries (created, renamed, deleted files) durable. Raises OSError.

    ``best_effort``: a directory that cannot be opened or fsynced is passed over instead (some
    file systems refuse fsync on directories); what the files' own fsyncs made durable still holds.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        if best_effort:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not best_effort:
            raise
    finally:
        os.close(fd)


class FileIO:
    """Thin wrappers over ``os`` calls. Thread-safe (stateless)."""

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def write(self, fd: int, buffers) -> None:
        """Write every byte of ``buffers`` (a list of bytes-like objects) or raise OSError."""
        views = [memoryview(b).cast("B") for b in buffers if len(b)]
        while views:
            n = os.writev(fd, views)
            while n and views:
                if n >= len(views[0]):
                    n -= len(views.pop(0))
                else:
                    views[0] = views[0][n:]
                    n = 0

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        chunks = []
        while size > 0:
            chunk = os.pread(fd, size, offset)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def fsync(self, fd: int) -> None:
        """Make a file's data (and its size) durable."""
        os.fdatasync(fd)

    def fsync_dir(self, path: str) -> None:
        """Make a directory's entries (created, renamed, deleted files) durable."""
        fsync_dir(path)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def makedirs(self, path: str) -> None:
        """Create ``path`` and its missing parents durably: the parent of every created directory
        is fsynced, so a power cut cannot take away the directory, and every file in it, that
        acknowledged data lives in. When ``path`` exists its parent is fsynced too (best effort):
        a crash may have come between an earlier mkdir and its fsync."""
        path = os.path.abspath(path)
        parent = os.path.dirname(path)
        if os.path.isdir(path):
            try:
                self.fsync_dir(parent)
            except PermissionError:
                pass  # a parent this process may not open (/ on some systems): the directory exists
            return
        if parent != path:
            self.makedirs(parent)
        try:
            self.mkdir(path)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
        self.fsync_dir(parent)

    def disk_free(self, path: str) -> int:
        return shutil.disk_usage(path).free


class _FullSyncIO(FileIO):
    """The default of :func:`write_atomic`: ``fsync`` flushes a file's metadata (times, mode) as
    well. Small state files written now and then do not need the little fdatasync saves."""

    def fsync(self, fd: int) -> None:
        os.fsync(fd)


def write_atomic(path: str, data, io: FileIO | None = None, tmp: str | None = None) -> None:
    """Replace ``path`` with ``data`` (bytes-like): a reader, or a restart after a crash at any
    instant, finds either the previous complete content or the new one, never a torn file.

    ``data`` is written to ``tmp`` (default ``<path>.tmp``; next to the target, as a rename does not
    cross file systems), fsynced, renamed over ``path``, and the directory is fsynced, every step
    through ``io`` (default: plain ``os`` calls, the file synced with a full ``fsync``) so that a
    test's FileIO sees or fails each one.
    Raises OSError; ``tmp`` may then be left behind (writers remove stale temporaries when they start).
    """
    if io is None:
        io = _FullSyncIO()
    if tmp is None:
        tmp = path + ".tmp"
    fd = io.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        io.write(fd, [data])
        io.fsync(fd)
    finally:
        io.close(fd)
    io.replace(tmp, path)
    io.fsync_dir(os.path.dirname(os.path.abspath(path)))
