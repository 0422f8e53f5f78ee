"""Durable little files for the file sources: atomic JSON replacement and an exclusive lock.

:func:`write_json_atomic` replaces a JSON state file through
:func:`~rayflume._private.fileio.write_atomic` (temporary file next to the target, fsync, rename,
fsync of the directory), so a reader (or a restart after a crash at any instant) sees either the
previous complete content or the new one, never a torn file.

:class:`ExclusiveLock` is an ``flock`` on a lock file: it keeps two sources from sharing one
position file or spool directory. The kernel drops it when its process dies (SIGKILL included),
so a restarted actor gets it back at once.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time

from rayflume._private.fileio import FileIO, write_atomic


def write_json_atomic(path: str, obj, io: FileIO | None = None) -> None:
    """Replace ``path`` with ``obj`` as JSON: temp file ``<path>.tmp-<pid>``, fsync, rename, fsync
    the directory, every step through ``io`` (default: plain ``os`` calls; tests inject faults)."""
    data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    write_atomic(path, data, io, tmp=f"{path}.tmp-{os.getpid()}")


def read_json(path: str):
    """The JSON in ``path``, or None when the file does not exist. Raises ValueError when it is
    not valid JSON (the caller decides what a corrupt state file means)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None


def remove_stale_temps(path: str) -> None:
    """Delete ``<path>.tmp-*`` files left by a crash in the middle of :func:`write_json_atomic`."""
    directory, base = os.path.split(os.path.abspath(path))
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(base + ".tmp-"):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


class LockHeld(OSError):
    """Another live process holds the lock."""


class ExclusiveLock:
    """An exclusive ``flock`` on ``path`` (created if missing), held until :meth:`release`."""

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def acquire(self, timeout_s: float = 10.0) -> None:
        """Take the lock, retrying up to ``timeout_s`` (a previous holder may be exiting).
        Raises :class:`LockHeld` when it stays taken."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockHeld(exc.errno, f"{self.path} is locked by another process") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None
