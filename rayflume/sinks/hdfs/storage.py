"""File systems of the ``hdfs`` sink: which ``pyarrow.fs`` a path names, and the few operations the
sink needs from it.

``resolve(path, ...)`` splits a sink path into a file system and a path inside it:

- ``hdfs://namenode:8020/dir`` (``hdfs:///dir`` for the configured default file system):
  ``pyarrow.fs.HadoopFileSystem``. It needs a Hadoop client on the node: a JVM (``JAVA_HOME``),
  ``libhdfs.so`` (``$HADOOP_HOME/lib/native`` or ``ARROW_LIBHDFS_DIR``) and the Hadoop jars on the
  ``CLASSPATH`` (``hadoop classpath --glob``). :func:`hadoop_problems` says what is missing.
- ``s3://bucket/prefix`` (also ``s3a://`` and ``s3n://``): ``pyarrow.fs.S3FileSystem`` with the
  sink's ``s3_*`` options (credentials from the environment or instance profile when not given).
- a plain path or ``file:///dir``: ``pyarrow.fs.LocalFileSystem``; relative paths are made absolute.

Two storage kinds hide the differences that matter for durability:

- :class:`LocalStorage` (local disks) is *appendable*: an open file is one in-use file that grows,
  and ``sync`` (``fdatasync``) makes what was appended durable before the take is committed.
- :class:`ArrowStorage` (HDFS, S3 and any other ``pyarrow.fs``) is not. On S3 an object exists only
  once completely uploaded, with no append and no rename. On HDFS, pyarrow's output stream offers
  ``flush()`` only, which libhdfs maps to Java's ``FSDataOutputStream.flush()``: unlike ``hflush``
  (what Flume calls) it does not wait for the DataNodes, so a batch "flushed" that way can still be
  lost with the sink's process. A *closed* file is complete on both (on HDFS: acknowledged by every
  DataNode of its pipeline, what ``hflush`` gives; on disk only if the cluster sets
  ``dfs.datanode.synconclose``). So each write of an open file is written as its own *part file*,
  complete when its close returns; finishing the file assembles the parts into the final file (see
  :mod:`rayflume.sinks.hdfs.bucket`). On HDFS, moving a single part is a rename.

Local files are written with ``os`` calls, not a ``pyarrow`` stream, because a take is committed
right after a write returns and pyarrow's local streams cannot ``fsync``. A local in-use file is
held under an exclusive ``flock`` while it is written, so that the recovery of another sink (or of
a restarted sink) never finishes a file a live writer still appends to.

Every method may block on I/O; the sink runs them in worker threads under ``call_timeout_s``.
"""
from __future__ import annotations

import errno
import fcntl
import glob
import os
import posixpath
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa
import pyarrow.fs as pafs

from rayflume._private.fileio import fsync_dir

__all__ = ["FileEntry", "Storage", "AppendHandle", "LocalStorage", "ArrowStorage", "resolve",
           "hadoop_problems", "hadoop_message", "split_uri", "fs_path"]

_S3_SCHEMES = ("s3", "s3a", "s3n")


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int


def split_uri(path: str) -> tuple[str, str, str]:
    """``(scheme, authority, path)`` of a sink path without decoding it (escapes stay as written).

    A plain path has scheme ``""``. ``file:`` URIs and plain paths are returned absolute.
    """
    if "://" not in path:
        return "", "", _absolute(path)
    scheme, rest = path.split("://", 1)
    scheme = scheme.lower()
    authority, sep, inner = rest.partition("/")
    if scheme == "file":
        if authority not in ("", "localhost"):
            raise ValueError(f"file URI {path!r} names host {authority!r}; use file:///absolute/path")
        return "", "", _absolute("/" + inner)
    return scheme, authority, "/" + inner if sep else "/"


def _absolute(path: str) -> str:
    """``path`` made absolute, its static directory part (before any escape) normalised."""
    cut = path.find("%")
    head, tail = (path, "") if cut < 0 else (path[:cut], path[cut:])
    slash = head.rfind("/")
    if slash < 0:
        head, tail = "", head + tail
    else:
        head, tail = head[:slash + 1], head[slash + 1:] + tail
    base = os.path.normpath(os.path.join(os.getcwd(), head or "."))
    return base if not tail else base.rstrip("/") + "/" + tail


def hadoop_problems() -> list[str]:
    """What is missing for ``pyarrow.fs.HadoopFileSystem`` on this machine (empty when nothing is)."""
    problems = []
    java_home = os.environ.get("JAVA_HOME", "")
    if not java_home:
        problems.append("JAVA_HOME is not set")
    elif not any(glob.glob(os.path.join(java_home, pattern)) for pattern in
                 ("lib/server/libjvm.so", "jre/lib/*/server/libjvm.so", "lib/*/server/libjvm.so",
                  "lib/server/libjvm.dylib", "libjvm.so")):
        problems.append(f"no libjvm under JAVA_HOME={java_home}")
    hadoop_home = os.environ.get("HADOOP_HOME", "")
    lib_dirs = [d for d in (os.environ.get("ARROW_LIBHDFS_DIR", ""),
                            os.path.join(hadoop_home, "lib", "native") if hadoop_home else "") if d]
    if not any(os.path.exists(os.path.join(d, name)) for d in lib_dirs for name in ("libhdfs.so", "libhdfs.dylib")):
        where = ", ".join(lib_dirs) if lib_dirs else "HADOOP_HOME and ARROW_LIBHDFS_DIR are not set"
        problems.append(f"libhdfs.so not found ({where})")
    classpath = os.environ.get("CLASSPATH", "")
    hadoop_bin = os.path.join(hadoop_home, "bin", "hadoop") if hadoop_home else shutil.which("hadoop")
    if "hadoop" not in classpath.lower() and not (hadoop_bin and os.access(hadoop_bin, os.X_OK)):
        problems.append("the Hadoop jars are not on CLASSPATH and no `hadoop` command is found to list them")
    return problems


def hadoop_message(path: str, problems: list[str]) -> str:
    return (f"path {path!r} needs a Hadoop client on every node that runs this sink, and this one lacks it: "
            f"{'; '.join(problems)}. Install a JDK and set JAVA_HOME; install Hadoop (its native libhdfs is "
            f"$HADOOP_HOME/lib/native/libhdfs.so) and set HADOOP_HOME, or set ARROW_LIBHDFS_DIR to the directory "
            f"holding libhdfs.so; put the Hadoop jars on the CLASSPATH "
            f"(export CLASSPATH=$($HADOOP_HOME/bin/hadoop classpath --glob))")


class AppendHandle(ABC):
    """An open, growing in-use file."""

    size: int = 0

    @abstractmethod
    def write(self, data) -> None:
        """Append ``data``."""

    @abstractmethod
    def sync(self) -> None:
        """Make everything written so far durable."""

    def truncate(self, size: int) -> bool:
        """Cut the file back to ``size`` after a failed write; False when the storage cannot."""
        return False

    @abstractmethod
    def close(self) -> None:
        """Close the file."""


class Storage:
    """The operations the sink needs. ``appendable`` storages grow in-use files; others upload parts."""

    appendable = True
    kind = ""
    filesystem: pafs.FileSystem

    def join(self, directory: str, name: str) -> str:
        return f"{directory.rstrip('/')}/{name}"

    def list_files(self, root: str) -> list[FileEntry]:
        infos = self.filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        return [FileEntry(i.path, i.size or 0) for i in infos if i.type == pafs.FileType.File]

    def exists(self, path: str) -> bool:
        return self.filesystem.get_file_info(path).type != pafs.FileType.NotFound

    def read(self, path: str):
        """The whole content of ``path`` (a buffer)."""
        with self.filesystem.open_input_stream(path) as f:
            return f.read_buffer()

    def open_append(self, path: str) -> AppendHandle:
        """Only for ``appendable`` storages; the others upload parts."""
        raise TypeError(f"{self.kind} storage has no appendable files")

    def claim(self, path: str) -> AppendHandle | None:
        """Open an in-use file left by someone else for recovery; None when a live writer holds it.
        Only for ``appendable`` storages."""
        raise TypeError(f"{self.kind} storage has no appendable files")

    def write_object(self, path: str, buffers: Iterable) -> None:
        """Create (or replace) ``path`` with the concatenation of ``buffers``, durably."""
        with self.filesystem.open_output_stream(path) as f:
            for b in buffers:
                f.write(b)
        self.make_durable(path)

    def open_output(self, path: str):
        """A pyarrow output stream creating ``path`` (for the Parquet writer); call make_durable after."""
        return self.filesystem.open_output_stream(path)

    def make_durable(self, path: str) -> None:
        """After a closed output stream: nothing on HDFS/S3 (close is durable), fsync locally."""

    def move(self, src: str, dst: str) -> None:
        self.filesystem.move(src, dst)

    def delete(self, path: str) -> None:
        try:
            self.filesystem.delete_file(path)
        except FileNotFoundError:
            pass

    def display(self, path: str) -> str:
        return path


# -- local ------------------------------------------------------------------------------------------
class _LocalHandle(AppendHandle):
    def __init__(self, fd: int, size: int = 0):
        self.fd = fd
        self.size = size

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.size += n

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def truncate(self, size: int) -> bool:
        os.ftruncate(self.fd, size)
        os.lseek(self.fd, size, os.SEEK_SET)
        self.size = size
        return True

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)  # releases the flock


class LocalStorage(Storage):
    """A local disk through ``os`` calls (fsync; flock on in-use files)."""

    appendable = True
    kind = "local"

    def __init__(self):
        self.filesystem = pafs.LocalFileSystem()
        self._dirs: set[str] = set()

    def _makedirs(self, directory: str) -> None:
        if directory in self._dirs:
            return
        missing = []
        d = directory
        while d and d != "/" and not os.path.isdir(d):
            missing.append(d)
            d = os.path.dirname(d)
        os.makedirs(directory, exist_ok=True)
        # New directory entries must survive a crash too, or the files under them are unreachable.
        for created in reversed(missing):
            fsync_dir(os.path.dirname(created), best_effort=True)
        self._dirs.add(directory)

    def list_files(self, root: str) -> list[FileEntry]:
        out = []
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                p = os.path.join(dirpath, name)
                try:
                    out.append(FileEntry(p, os.stat(p).st_size))
                except FileNotFoundError:
                    pass
        return out

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def read(self, path: str):
        return pa.memory_map(path).read_buffer()

    def open_append(self, path: str) -> AppendHandle:
        directory = os.path.dirname(path)
        self._makedirs(directory)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        fsync_dir(directory, best_effort=True)
        return _LocalHandle(fd)

    def claim(self, path: str) -> AppendHandle | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        return _LocalHandle(fd, os.fstat(fd).st_size)

    def write_object(self, path: str, buffers: Iterable) -> None:
        self._makedirs(os.path.dirname(path))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            handle = _LocalHandle(fd)
            for b in buffers:
                handle.write(b)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(os.path.dirname(path), best_effort=True)

    def open_output(self, path: str):
        self._makedirs(os.path.dirname(path))
        return self.filesystem.open_output_stream(path)

    def make_durable(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(os.path.dirname(path), best_effort=True)

    def move(self, src: str, dst: str) -> None:
        self._makedirs(os.path.dirname(dst))
        os.rename(src, dst)

    def delete(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# -- pyarrow file systems (HDFS, S3, ...) ------------------------------------------------------------
class ArrowStorage(Storage):
    """Any ``pyarrow.fs`` file system, written in part files (see the module docstring)."""

    appendable = False

    def __init__(self, filesystem: pafs.FileSystem, kind: str, scheme: str = "", authority: str = ""):
        self.filesystem = filesystem
        self.kind = kind
        self.scheme = scheme
        self.authority = authority
        self._dirs: set[str] = set()

    def _ensure_dir(self, path: str) -> None:
        # Object stores need no directories (and S3 would get marker objects); others may.
        if self.kind == "s3":
            return
        directory = posixpath.dirname(path)
        if directory and directory not in self._dirs:
            self.filesystem.create_dir(directory, recursive=True)
            self._dirs.add(directory)

    def write_object(self, path: str, buffers: Iterable) -> None:
        self._ensure_dir(path)
        super().write_object(path, buffers)

    def open_output(self, path: str):
        self._ensure_dir(path)
        return super().open_output(path)

    def move(self, src: str, dst: str) -> None:
        self._ensure_dir(dst)
        super().move(src, dst)

    def display(self, path: str) -> str:
        if self.kind == "s3":
            return f"s3://{path}"
        return f"{self.scheme}://{self.authority}{path}" if self.scheme else path


def fs_path(path: str) -> str:
    """The path template inside the file system a sink path names (``bucket/prefix/...`` on S3)."""
    scheme, authority, inner = split_uri(path)
    if scheme in ("", "hdfs", "viewfs"):
        return inner
    return authority + inner.rstrip("/") if inner != "/" else authority


def resolve(path: str, *, s3_endpoint_override: str | None = None, s3_region: str | None = None,
            s3_access_key: str | None = None, s3_secret_key: str | None = None, s3_scheme: str | None = None,
            hdfs_user: str | None = None) -> tuple[Storage, str]:
    """The storage a sink path names, and the path template inside it (escapes untouched).

    Raises OSError (with what to install) when ``hdfs://`` has no Hadoop client here.
    """
    scheme, authority, _ = split_uri(path)
    inner = fs_path(path)
    if scheme == "":
        return LocalStorage(), inner
    if scheme in _S3_SCHEMES:
        if not authority:
            raise ValueError(f"S3 path {path!r} names no bucket; write s3://bucket/prefix")
        kwargs = dict(region=s3_region or ("us-east-1" if s3_endpoint_override else None),
                      endpoint_override=s3_endpoint_override, scheme=s3_scheme,
                      access_key=s3_access_key, secret_key=s3_secret_key,
                      # a small part object goes up in one PUT instead of a three-request multipart upload
                      allow_delayed_open=True)
        fs = pafs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})
        return ArrowStorage(fs, "s3", scheme="s3", authority=authority), inner
    if scheme in ("hdfs", "viewfs"):
        problems = hadoop_problems()
        if problems:
            raise OSError(hadoop_message(path, problems))
        host, _, port = authority.partition(":")
        fs = pafs.HadoopFileSystem(host or "default", int(port) if port else 0, user=hdfs_user)
        return ArrowStorage(fs, "hdfs", scheme=scheme, authority=authority), inner
    # Any other file system pyarrow knows (gs://, abfs://, ...): treated as an object store.
    fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{authority}/")
    return ArrowStorage(fs, scheme, scheme=scheme, authority=authority), inner
