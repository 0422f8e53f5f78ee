"""Errors of the file channel (all :class:`~rayflume.errors.ChannelError`)."""
from __future__ import annotations

from rayflume.errors import ChannelError, ChannelFull


class ChannelWriteError(ChannelError):
    """A write or fsync of the channel's log failed (disk full, I/O error).

    The put or commit that raised it was not acknowledged and is not applied; retry it later. After
    an fsync error the channel never writes to that segment again: it rolls to a new one.
    """


class InsufficientDiskSpace(ChannelWriteError, ChannelFull):
    """Free space on the data directory is below ``minimum_required_space_bytes``.

    Also a :class:`~rayflume.errors.ChannelFull`: nothing was written, back off and retry.
    """


class ChannelLocked(ChannelError):
    """Another channel instance (in this or another process) holds a lock on the directory."""


class ChannelClosed(ChannelError):
    """The channel was closed."""


class ChannelLockLost(ChannelWriteError, ChannelLocked):
    """This instance lost its lock on an object store (another instance may own the channel now).

    The put or commit that raised it was not acknowledged; the instance refuses every later write.
    Close it; the channel's new owner (or a restart) continues from the store.
    """


class ChannelReadError(ChannelError):
    """Reading queued events back from an object store failed (a network or service error).

    The take that raised it leased nothing; the events stay at the head of the queue. Retry.
    """
