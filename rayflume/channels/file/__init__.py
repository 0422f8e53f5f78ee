"""The ``file`` channel: a durable write-ahead log (see :mod:`rayflume.channels.file.channel`)."""
from rayflume._private.fileio import FileIO
from rayflume.channels.file.channel import FileChannel
from rayflume.channels.file.config import FileChannelConfig, FileStorageConfig
from rayflume.channels.file.errors import (
    ChannelClosed,
    ChannelLocked,
    ChannelLockLost,
    ChannelReadError,
    ChannelWriteError,
    InsufficientDiskSpace,
)
from rayflume.channels.file.objstore import ObjectLock, ObjectStore

__all__ = ["FileChannel", "FileChannelConfig", "FileStorageConfig", "FileIO", "ChannelWriteError",
           "InsufficientDiskSpace", "ChannelLocked", "ChannelClosed", "ChannelLockLost",
           "ChannelReadError", "ObjectStore", "ObjectLock"]
