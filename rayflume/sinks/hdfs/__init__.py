"""The ``hdfs`` sink: Flume's HDFS sink over any ``pyarrow.fs`` file system (HDFS, S3, local disk).

Events are routed to bucket directories by Flume's path escapes (:mod:`.paths`), appended to
rolling files in the chosen format (:mod:`.writers`), written under an in-use name and renamed
(or assembled, on object stores) when a roll closes them (:mod:`.bucket`), on the file system the
path names (:mod:`.storage`). :mod:`.sink` holds the runtime sink and documents its delivery
guarantees; :mod:`.config` its properties.
"""
from rayflume.sinks.hdfs.config import HdfsSinkConfig

__all__ = ["HdfsSinkConfig"]
