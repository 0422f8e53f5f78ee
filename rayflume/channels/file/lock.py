"""Exclusive locks on the file channel's directories."""
from __future__ import annotations

import fcntl
import os

from rayflume.channels.file.errors import ChannelLocked

LOCK_FILE = "in_use.lock"


class DirectoryLock:
    """An exclusive ``flock`` on ``<directory>/in_use.lock``, held until :meth:`release`.

    ``flock`` locks belong to an open file description, so a second channel on the same directory
    fails whether it lives in another process or in this one. The kernel drops the lock when the
    holding process dies, so a crash never leaves a stale lock behind.
    """

    def __init__(self, directory: str, channel: str):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_FILE)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise ChannelLocked(
                f"file channel '{channel}': directory {directory} is in use by another channel "
                f"(lock {self.path} is held); give every file channel its own checkpoint_dir and "
                f"data_dirs, or stop the other instance first") from None
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        # Informational only: who holds the lock.
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()} {channel}\n".encode(), 0)
        except OSError:
            pass

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


def lock_directories(directories, channel: str) -> list[DirectoryLock]:
    """Lock each distinct directory (by real path); release all and raise if any is taken."""
    locks: list[DirectoryLock] = []
    seen: set[str] = set()
    try:
        for d in directories:
            real = os.path.realpath(d)
            if real in seen:
                continue
            seen.add(real)
            locks.append(DirectoryLock(d, channel))
    except BaseException:
        for lk in locks:
            lk.release()
        raise
    return locks
