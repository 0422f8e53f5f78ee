"""One output file of the ``hdfs`` sink, from its in-use name to its final name, and the recovery of
in-use files a crashed sink left behind.

Names (as Flume's ``BucketWriter``): the final name is ``<file_prefix>.<counter><file_suffix>``
where ``counter`` starts at the sink's start time in epoch milliseconds and grows by one per file,
and ``file_suffix`` defaults to the format's extension (``.gz``, ``.zst``, ``.parquet``) when it is
empty. A sink running as one instance of a tier (several instances may write the same directory)
adds its instance after the prefix, ``<file_prefix>.<tier>-<instance>.<counter><file_suffix>``, so
instances never produce the same name and each recovers only its own unfinished files. While open,
the file is ``<in_use_prefix><final name><in_use_suffix>``
(``FlumeData.1700000000000.tmp``). On an object store each write is a part object
``<in_use_prefix><final name>.part-000001<in_use_suffix>``.

Finishing a file (:meth:`BucketFile.finish`):

- local disk, byte format: rename the in-use file to the final name (done while the file is still
  locked, then the lock is dropped);
- HDFS and object stores (part files), byte format: one part is moved to the final name (HDFS: a
  rename; S3: a server-side copy and a delete); several parts are concatenated into the final
  file (read back and written again: finishing such a file moves its bytes twice), then deleted;
- Parquet: the journal (in-use file or parts) is converted to a Parquet file under the final name,
  then deleted. An empty file is deleted, never finished.

Finishing never overwrites: if the final name exists already (another writer's file, or the result
of a finish that crashed before it could clean up), the file is finished under a fresh counter. So
a crash can cause duplicates (at-least-once), never loss.

Recovery (:func:`recover`) finishes in-use files found under the sink's root whose names match the
sink's naming pattern. A local file locked by a live writer is skipped; a local file is first cut
back to its whole batches (see :meth:`~rayflume.sinks.hdfs.writers.Format.valid_length`): only the
batch that was being written when the process died can be torn. Part files are complete (a part
exists only once its close returned) and need no cut.
"""
from __future__ import annotations

import logging
import posixpath
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from rayflume.event import EventBatch
from rayflume.sinks.hdfs.paths import Token
from rayflume.sinks.hdfs.storage import AppendHandle, FileEntry, Storage
from rayflume.sinks.hdfs.writers import Format, read_frames

log = logging.getLogger("rayflume.sink.hdfs")

__all__ = ["Naming", "BucketFile", "InUseGroup", "find_in_use", "recover"]


class Naming:
    """File names of one sink: final, in-use and part names, and the pattern recovery matches.

    ``allocate()`` hands out counters (epoch ms at first, then +1 each), thread-safe.
    """

    def __init__(self, prefix_tokens: list[Token], file_suffix: str, in_use_prefix: str, in_use_suffix: str,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000), owner: str = ""):
        self.file_suffix = file_suffix
        self.in_use_prefix = in_use_prefix
        self.in_use_suffix = in_use_suffix
        self.owner = owner
        self._owner = f".{owner}" if owner else ""
        self._clock_ms = clock_ms
        self._last = 0
        self._lock = threading.Lock()
        prefix_re = "".join(re.escape(t.value) if t.kind == "text" else "[^/]*?" for t in prefix_tokens)
        self.pattern = re.compile(
            f"^{re.escape(in_use_prefix)}(?P<final>{prefix_re}{re.escape(self._owner)}\\.(?P<counter>\\d+)"
            f"{re.escape(file_suffix)})(?:\\.part-(?P<part>\\d+))?{re.escape(in_use_suffix)}$")

    def allocate(self) -> int:
        with self._lock:
            self._last = max(self._clock_ms(), self._last + 1)
            return self._last

    def final(self, prefix: str, counter: int) -> str:
        return f"{prefix}{self._owner}.{counter}{self.file_suffix}"

    def in_use(self, final: str) -> str:
        return f"{self.in_use_prefix}{final}{self.in_use_suffix}"

    def part(self, final: str, n: int) -> str:
        return f"{self.in_use_prefix}{final}.part-{n:06d}{self.in_use_suffix}"

    def prefix_of(self, final: str) -> str:
        """The rendered prefix a final name was made from (everything before ``.<counter><suffix>``)."""
        core = final[: len(final) - len(self.file_suffix)] if self.file_suffix else final
        core = core.rsplit(".", 1)[0]
        return core[: len(core) - len(self._owner)] if self._owner else core


class BucketFile:
    """One file of one bucket. Its methods run in worker threads, one call at a time per file.

    ``events`` and ``body_bytes`` (what the roll triggers count, as Flume: body bytes before
    serialisation) and ``bytes_written`` count what was durably written.
    """

    def __init__(self, storage: Storage, fmt: Format, naming: Naming, directory: str, prefix: str,
                 opened_at: float):
        self.storage = storage
        self.fmt = fmt
        self.naming = naming
        self.directory = directory
        self.prefix = prefix
        self.counter = naming.allocate()
        self.opened_at = opened_at
        self.last_write = opened_at
        self.events = 0
        self.body_bytes = 0
        self.bytes_written = 0
        self.handle: AppendHandle | None = None
        self.parts: list[str] = []
        self.dirty = False      # a write failed: the tail may hold part of an uncommitted batch
        self.finished = False
        self.final_path: str | None = None

    # -- names ----------------------------------------------------------------------------------
    @property
    def final_name(self) -> str:
        return self.naming.final(self.prefix, self.counter)

    @property
    def in_use_path(self) -> str:
        return self.storage.join(self.directory, self.naming.in_use(self.final_name))

    def in_use_paths(self) -> list[str]:
        """What exists of this file while it is open."""
        return list(self.parts) if not self.storage.appendable else ([self.in_use_path] if self.handle else [])

    @property
    def opened(self) -> bool:
        return self.handle is not None or bool(self.parts)

    # -- writing (worker thread) -----------------------------------------------------------------
    def append(self, batch: EventBatch, body_bytes: int, now: float) -> int:
        """Write ``batch`` durably to this file; returns the bytes written. Raises on failure, after
        cutting the file back where the storage allows (the file must then be finished, not reused)."""
        payload = self.fmt.encode(batch)
        if self.storage.appendable:
            if self.handle is None:
                for _ in range(100):
                    try:
                        self.handle = self.storage.open_append(self.in_use_path)
                        break
                    except FileExistsError:
                        self.counter = self.naming.allocate()  # never write over someone's file
                else:
                    raise FileExistsError(f"no free file name under {self.directory}")
            before = self.handle.size
            try:
                self.handle.write(payload)
                self.handle.sync()
            except BaseException:
                self.dirty = True
                try:
                    if self.handle.truncate(before):
                        self.handle.sync()
                        self.dirty = False
                except OSError:
                    pass
                raise
        else:
            part = self.storage.join(self.directory, self.naming.part(self.final_name, len(self.parts) + 1))
            self.storage.write_object(part, [payload])
            self.parts.append(part)
        self.events += len(batch)
        self.body_bytes += body_bytes
        self.bytes_written += payload.size
        self.last_write = now
        return payload.size

    # -- finishing (worker thread) ---------------------------------------------------------------
    def finish(self) -> str | None:
        """Close the file and give it its final name; returns the final path (None if it was empty).
        Idempotent; on failure it may be called again."""
        if self.finished:
            return self.final_path
        if self.storage.appendable:
            if self.handle is None:
                self.finished = True
                return None
            self.final_path = finish_appended(self.storage, self.fmt, self.naming, self.directory,
                                              self.final_name, self.in_use_path, self.handle, cut=self.dirty)
            self.handle = None
        else:
            self.final_path = finish_parts(self.storage, self.fmt, self.naming, self.directory,
                                           self.final_name, self.parts)
        self.finished = True
        return self.final_path

    def __repr__(self) -> str:
        return f"BucketFile({self.storage.display(self.storage.join(self.directory, self.final_name))}, " \
               f"events={self.events})"


# -- shared by finish and recovery -------------------------------------------------------------------
def _free_final(storage: Storage, naming: Naming, directory: str, final: str) -> str:
    """A final path that does not exist yet: ``final``, or the same prefix with a fresh counter."""
    path = storage.join(directory, final)
    if not storage.exists(path):
        return path
    prefix = naming.prefix_of(final)
    for _ in range(100):
        path = storage.join(directory, naming.final(prefix, naming.allocate()))
        if not storage.exists(path):
            log.warning("hdfs sink: %s exists already; finishing under %s instead",
                        storage.display(storage.join(directory, final)), storage.display(path))
            return path
    raise FileExistsError(f"no free final name for {final} in {directory}")


def finish_appended(storage: Storage, fmt: Format, naming: Naming, directory: str, final: str, in_use: str,
                    handle: AppendHandle | None, cut: bool) -> str | None:
    """Finish a grown (local) in-use file, closing ``handle``. ``cut``: keep only its whole batches
    first (after a failed write or a crash)."""
    try:
        if fmt.journal:
            data = storage.read(in_use)
            batches, _ = read_frames(data)
            del data
            if not batches:
                storage.delete(in_use)
                return None
            target = _free_final(storage, naming, directory, final)
            out = storage.open_output(target)
            try:
                fmt.write_parquet(out, batches)
            finally:
                out.close()
            storage.make_durable(target)
            storage.delete(in_use)
            return target
        size = handle.size if handle is not None else None
        if cut or size is None:
            data = storage.read(in_use)
            total = len(memoryview(data))
            good = fmt.valid_length(data)
            if good == 0:
                del data
                storage.delete(in_use)
                return None
            if good < total:
                log.warning("hdfs sink: %s ends with %d bytes of an unfinished batch; they are dropped",
                            storage.display(in_use), total - good)
                if handle is not None and handle.truncate(good):
                    handle.sync()
                else:
                    target = _free_final(storage, naming, directory, final)
                    storage.write_object(target, [memoryview(data)[:good]])
                    del data
                    storage.delete(in_use)
                    return target
            del data
        elif size == 0:
            storage.delete(in_use)
            return None
        target = _free_final(storage, naming, directory, final)
        try:
            # Locally the file is still locked here: no other sink's recovery can race this rename.
            storage.move(in_use, target)
        except FileNotFoundError:
            if storage.exists(in_use):
                raise
            # An earlier attempt failed after the lock was dropped and another sink's recovery
            # finished the file meanwhile: nothing is left to do.
            log.warning("hdfs sink: %s was finished by someone else", storage.display(in_use))
            return None
        return target
    finally:
        if handle is not None:
            handle.close()


def finish_parts(storage: Storage, fmt: Format, naming: Naming, directory: str, final: str,
                 parts: list[str]) -> str | None:
    """Assemble part objects into the final object, then delete them."""
    if not parts:
        return None
    target = _free_final(storage, naming, directory, final)
    if fmt.journal:
        batches = []
        for p in parts:
            batches.extend(read_frames(storage.read(p))[0])
        if batches:
            out = storage.open_output(target)
            try:
                fmt.write_parquet(out, batches)
            finally:
                out.close()
        else:
            target = None
    elif len(parts) == 1:
        storage.move(parts[0], target)  # S3: server-side copy + delete
        return target
    else:
        storage.write_object(target, (storage.read(p) for p in parts))
    for p in parts:
        storage.delete(p)
    return target


# -- recovery ------------------------------------------------------------------------------------
@dataclass
class InUseGroup:
    """The in-use file (appendable storage) or the parts (object store) of one unfinished file."""

    directory: str
    final: str
    paths: list[str] = field(default_factory=list)


def find_in_use(entries: list[FileEntry], naming: Naming, storage: Storage) -> list[InUseGroup]:
    """Group the listed files that are this sink's unfinished files, parts in order."""
    groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for e in entries:
        directory, name = posixpath.split(e.path)
        m = naming.pattern.match(name)
        if not m:
            continue
        part = int(m.group("part")) if m.group("part") else 0
        groups.setdefault((directory, m.group("final")), []).append((part, e.path))
    out = []
    for (directory, final), items in sorted(groups.items()):
        out.append(InUseGroup(directory, final, [p for _, p in sorted(items)]))
    return out


def recover(storage: Storage, fmt: Format, naming: Naming, group: InUseGroup) -> str | None | bool:
    """Finish one unfinished file; returns its final path, None if it was empty (deleted), or False
    when a live writer holds it (skipped)."""
    if storage.appendable:
        in_use = group.paths[0]
        handle = storage.claim(in_use)
        if handle is None:
            return False
        return finish_appended(storage, fmt, naming, group.directory, group.final, in_use, handle, cut=True)
    return finish_parts(storage, fmt, naming, group.directory, group.final, group.paths)
