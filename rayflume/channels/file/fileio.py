"""The low-level file operations of the file channel, behind one replaceable object.

Everything the channel does to its files goes through a :class:`FileIO`, so tests substitute a
subclass that fails ``write`` or ``fsync`` with ``ENOSPC``/``EIO``, counts fsyncs, or reports
little free space. Descriptors are raw ``os`` descriptors: no user-space buffering sits between a
write and its fsync.
"""
from __future__ import annotations

import os
import shutil


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
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

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
                pass
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
