"""The ``taildir`` source (Flume's TAILDIR): tails files line by line without losing or re-reading
acknowledged lines across rotation, truncation and restarts.

**File groups.** ``filegroups`` maps a group name to an absolute path whose directory part is
literal and whose last component is a Python regex matched against whole file names in that
directory (Flume's rule: "regular expressions can be used for the file name only"), for example
``/var/log/app/.*\\.log``. A file matched by several groups belongs to the first. ``headers`` sets
static headers per group; ``file_header`` adds the file's path and ``byte_offset_header`` the
line's byte offset in its file (header ``byteoffset``). Directories are listed every 0.2 s, so files
(and directories) that appear later are picked up; new files are read from their start.

**Identity and positions.** A file is tracked by its identity: device and inode, plus a
fingerprint (BLAKE2b) of its first 256 bytes (fewer while the file is shorter). A rename keeps the
identity, so a renamed file is never read again from the start (Flume's reader does that when the
path it cached for an inode changes). The fingerprint tells a reused inode, or content replaced
under the same inode, from the file that was there: such a file is read from its start.

Positions advance **only in** ``ack()``, after the runner saw every required channel commit the
batch. The position file (JSON: ``dev, ino, pos, path, group, fp_len, fp`` per file) is replaced
atomically: temp file, fsync, rename, fsync of the directory. With ``write_pos_interval_s: 0``
(the default) it is written on every acknowledgement; a larger value writes it at most that often
(fewer fsyncs; positions in memory still move only on ack). Trade-off: after a crash the source
resumes from the last *written* positions, so it re-delivers what was acknowledged after that
write, plus the one batch that was in flight, and never loses a line. The position file is locked
(``flock``) so two sources cannot share it. In a tier each instance keeps its own position file,
in the subdirectory ``<tier>/<instance>`` of the configured file's directory, as its file channel
keeps its files: an instance that comes back on its machine resumes from its own positions while
its channel replays what it had acknowledged, and an instance of another name reads from the
start rather than skip lines that sit in a channel that is not its own.

**Rotation and the other cases.**

- Rename rotation (``app.log`` -> ``app.log.1``, a new ``app.log``): the old identity keeps its open
  descriptor and is read to its end, the new file from its start. A file no longer named by any
  matching path is finished once it got no new data for ``idle_timeout_s`` (the writer may still
  hold it briefly) or at once when it is deleted; its unterminated last line is then delivered.
  If the source restarts before finishing a rotated file, it finds the identity again under any
  name in the same directory (``app.log.1``, ``app.log.2`` ...) and resumes it.
- copytruncate: a file found shorter than its read position, or whose fingerprint changed, is read
  again from byte 0 (counted in ``FileTruncatedCount`` / ``FileReplacedCount``). **Guarantee:** lines
  the source had not read before the truncation exist only in the copy and are lost, as are lines
  the application wrote between the copy and the truncation; that is inherent to copytruncate.
  Lines read before the truncation are still delivered.
- Deleted files: an open file is read to its end and then closed. A file closed while idle and then
  deleted is forgotten.
- Partial last lines are held until their newline arrives; a line longer than
  ``max_line_length_bytes`` is delivered in pieces of that size (``LinesSplitCount``); nothing is
  dropped. ``\\r\\n`` endings lose the ``\\r`` too.
- ``skip_to_end`` starts files present at start-up that have no recorded position at their end
  (Flume's rule). Files discovered later are always read from their start and their identity is
  written to the position file at once, so a restart does not skip them.
- ``idle_timeout_s`` closes files without new data; they are reopened when a scan sees them grow.

**Crash guarantee.** SIGKILL of the source at any instant loses no line that was in a file the
source can still reach by its identity, and duplicates at most the batch that was in flight
(plus, with ``write_pos_interval_s > 0``, what was acknowledged since the last write).

**Speed.** Files are read in 8 MiB chunks with ``pread`` and framed by
:func:`~rayflume.sources._framing.frame_lines` (numpy newline offsets, one compaction copy,
an Arrow binary array built from the offsets: no per-line Python).

Counters: ``FileOpenedCount``, ``FileClosedCount``, ``FileRenamedCount``, ``FileRotatedCount``,
``FileDeletedCount``, ``FileTruncatedCount``, ``FileReplacedCount``, ``FileReadFail``,
``LinesSplitCount``, ``PositionWriteCount``, ``PositionWriteFail``, and ``LastError`` (the last
problem reported, as text; also ``TaildirSource.status_error``).
"""
from rayflume.sources._framing import Framed, frame_lines
from rayflume.sources.taildir.config import TaildirSourceConfig
from rayflume.sources.taildir.groups import FileGroup
from rayflume.sources.taildir.positions import default_position_file
from rayflume.sources.taildir.reading import BYTE_OFFSET_HEADER
from rayflume.sources.taildir.source import TaildirSource

__all__ = ["BYTE_OFFSET_HEADER", "FileGroup", "Framed", "TaildirSource", "TaildirSourceConfig",
           "default_position_file", "frame_lines"]
