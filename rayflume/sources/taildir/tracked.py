"""A file the ``taildir`` source tails, as it knows it: its identity, the fingerprint of its first
bytes, how far it was read and acknowledged, and the epoch of the content under the identity.

The identity (device, inode) survives a rename; the fingerprint (BLAKE2b of the first
:data:`FINGERPRINT_BYTES` bytes, fewer while the file is shorter) tells a reused inode, or content
replaced under the same inode, from the file that was there. Content found replaced starts a new
epoch (:meth:`_Tracked.restart`): it is read again from byte 0, and acknowledgements of lines read
in an older epoch no longer move the position. What the source counts, logs and persists about
these changes stays the source's.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

FINGERPRINT_BYTES = 256


def fingerprint(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


_EMPTY_FP = fingerprint(b"")


@dataclass(slots=True, eq=False)
class _Tracked:
    """One file identity (device, inode, and the fingerprint of its first bytes) being tailed.

    ``read_pos`` is how far lines were framed into the buffer; ``committed`` how far they were
    acknowledged (what the position file records); both start at the position given.
    ``epoch`` changes when the content under the identity is replaced (copytruncate, inode reuse):
    acknowledgements of lines read in an older epoch no longer move the position.
    """

    key: tuple[int, int]
    path: str
    group: str
    read_pos: int
    fp_len: int
    fp: str
    last_growth: float
    committed: int = field(init=False)
    epoch: int = 0
    fd: int | None = None
    last_size: int = -1     # size at the last read attempt
    seen_size: int = -1     # size the last directory scan saw
    held: bool = False      # the bytes after read_pos are an unterminated line up to last_size
    gone: bool = False      # no matching path names this identity any more
    finished: bool = False  # read to the end for good: dropped once everything is acknowledged

    def __post_init__(self) -> None:
        self.committed = self.read_pos

    def entry(self) -> dict:
        return {"dev": self.key[0], "ino": self.key[1], "pos": self.committed, "path": self.path,
                "group": self.group, "fp_len": self.fp_len, "fp": self.fp}

    def prefix(self, n: int) -> bytes:
        """The first ``n`` bytes of the open file (fewer when it is shorter)."""
        return os.pread(self.fd, n, 0) if n else b""

    def fingerprint_matches(self, fp_len: int, fp: str) -> bool:
        data = self.prefix(fp_len)
        return len(data) == fp_len and fingerprint(data) == fp

    def refresh_fingerprint(self, size: int) -> bool:
        """Fingerprint more of the open file, now ``size`` bytes long, while the fingerprint covers
        fewer than :data:`FINGERPRINT_BYTES`; whether it changed."""
        n = min(size, FINGERPRINT_BYTES)
        if n > self.fp_len:
            data = self.prefix(n)
            self.fp_len, self.fp = len(data), fingerprint(data)
            return True
        return False

    def restart(self) -> None:
        """The content under the identity was replaced: read it again from byte 0, in a new epoch."""
        self.epoch += 1
        self.read_pos = self.committed = 0
        self.fp_len, self.fp = 0, _EMPTY_FP
        self.held = False
        self.last_size = -1
