"""A simulated power loss behind the file channel's :class:`FileIO` seam (tests only).

:class:`PowerLossIO` performs every operation on the real files (so the channel reads, lists and
maps them as usual) and keeps, beside them, a model of what a disk would hold after a power cut:

* per file (inode): the bytes made durable by its last ``fsync``, and the writes and truncations
  since then, in order;
* per directory: the entries (name -> inode) made durable by its last ``fsync_dir``, and the
  creates, renames and unlinks since then, in order.

A file's fsync does not make its directory entry durable, and a directory fsync does not make file
data durable (POSIX; what LazyFS and ALICE model). :meth:`PowerLossIO.crash` ("the power goes
out") builds the image a reboot would find: the durable state plus, chosen by a seeded RNG per
mode, nothing of the unsynced operations (``drop``), a random prefix of each file's and each
directory's unsynced operations, the last kept write possibly torn at a random byte (``prefix``),
or for each file and directory independently all, none or a prefix (``mixed``: a later write to
one file survives while an earlier one to another does not). After a crash every operation raises
``OSError(EIO)``, as on a dead machine, so nothing can be acknowledged any more; reads keep working.
:meth:`materialize` writes the image into a fresh directory for recovery to open.

Only operations that go through the seam are modelled. Files present under ``root`` when the
object is created are taken as durable. Renames must stay within one directory.
"""
from __future__ import annotations

import errno
import fcntl
import os
import random
import threading

from rayflume.channels.file import FileIO

MODES = ("drop", "prefix", "mixed")


class _Inode:
    __slots__ = ("durable", "pending", "path")

    def __init__(self, durable: bytes, path: str):
        self.durable = bytearray(durable)
        self.pending: list[tuple] = []   # ("write", offset, bytes) | ("trunc", size)
        self.path = path                 # last known name (for labelling only)


class _Dir:
    __slots__ = ("durable", "pending")

    def __init__(self, entries: dict[str, int]):
        self.durable = dict(entries)       # name -> inode id
        self.pending: list[tuple] = []    # ("link", name, ino) | ("unlink", name) | ("rename", a, b)


def _apply_file(data: bytearray, op: tuple, cut: int | None = None) -> None:
    if op[0] == "write":
        _, off, chunk = op
        if cut is not None:
            chunk = chunk[:cut]
        if len(data) < off:
            data.extend(bytes(off - len(data)))
        data[off:off + len(chunk)] = chunk
    else:
        size = op[1]
        del data[size:]
        if len(data) < size:
            data.extend(bytes(size - len(data)))


def _apply_dir(entries: dict, op: tuple) -> None:
    if op[0] == "link":
        entries[op[1]] = op[2]
    elif op[0] == "unlink":
        entries.pop(op[1], None)
    elif op[1] in entries:
        entries[op[2]] = entries.pop(op[1])


class PowerLost(OSError):
    """Raised by every operation once the power is out."""


class PowerLossIO(FileIO):
    """A :class:`FileIO` that can lose, on :meth:`crash`, what was not fsynced (see module doc).

    ``crash_at``: the power goes out just before the ``crash_at``-th mutating operation (1-based;
    create/truncating open, write, truncate, fsync, fsync_dir, replace, unlink, mkdir); None: only an
    explicit :meth:`crash`. Directories must exist at the start or be made with :meth:`mkdir`.
    ``phase`` is a label the test sets; the crash records it with the
    operation in :attr:`crash_label`. :attr:`ops` lists the label of every mutating operation.
    Thread-safe (one lock around every operation).
    """

    def __init__(self, root: str, seed: int, mode: str = "mixed", crash_at: int | None = None):
        assert mode in MODES, mode
        self.root = os.path.abspath(root)
        self.rng = random.Random(seed)
        self.mode = mode
        self.crash_at = crash_at
        self.phase = ""
        self.ops: list[tuple[str, str, str]] = []   # (phase, op, file kind)
        self.crash_label: tuple[str, str, str] | None = None
        self.image: dict[str, bytes] | None = None
        self.crashed = False
        self.rolling = False          # between a segment's create and its directory's fsync
        self._rolling_dir = ""
        self.fsyncs = 0
        self._cond = threading.Condition()
        self._gate: int | None = None   # writer threads the next held fsync waits for
        self._writers: set[int] = set()  # threads that wrote since hold_first_fsync()
        self.gate_timeouts = 0           # held fsyncs released by the timeout (should stay 0)
        self._opened: set[int] = set()              # descriptors returned by open()
        self._inodes: dict[int, _Inode] = {}
        self._dirs: dict[str, _Dir] = {}
        self._live: dict[str, int] = {}            # path -> inode id
        self._by_real: dict[tuple[int, int], int] = {}
        self._next_ino = 1
        self._dir_inos: dict[int, str] = {}        # inode id -> path, for directories
        for d, subdirs, names in os.walk(self.root):
            entries = {}
            for name in subdirs:
                entries[name] = self._new_dir_inode(os.path.join(d, name))
            for name in names:
                path = os.path.join(d, name)
                with open(path, "rb") as f:
                    ino = self._new_inode(f.read(), path)
                st = os.stat(path)
                self._by_real[(st.st_dev, st.st_ino)] = ino
                self._live[path] = ino
                entries[name] = ino
            self._dirs[d] = _Dir(entries)

    # -- model helpers ---------------------------------------------------------------------------
    def _new_inode(self, data: bytes, path: str) -> int:
        ino = self._next_ino
        self._next_ino += 1
        self._inodes[ino] = _Inode(data, path)
        return ino

    def _new_dir_inode(self, path: str) -> int:
        ino = self._new_inode(b"", path)
        self._dir_inos[ino] = path
        return ino

    def _dir(self, path: str) -> _Dir:
        d = os.path.dirname(os.path.abspath(path))
        if d not in self._dirs:
            raise AssertionError(f"{d} was not there at the start nor made through the seam "
                                 f"(mkdir): its durability cannot be modelled")
        return self._dirs[d]

    def _ino_of_fd(self, fd: int) -> int:
        st = os.fstat(fd)
        return self._by_real[(st.st_dev, st.st_ino)]

    @staticmethod
    def kind(path: str) -> str:
        name = os.path.basename(path)
        if os.path.isdir(path):
            return "dir:" + name
        if name.endswith(".seg"):
            return "segment"
        if name.startswith("checkpoint"):
            return "checkpoint"
        return name

    def _step(self, op: str, path: str) -> None:
        """Count a mutating operation; cut the power when it is the chosen one (lock held)."""
        if self.crashed:
            raise PowerLost(errno.EIO, f"power lost (before {op} {path})")
        label = (self.phase, op, "dir:" + os.path.basename(path) if op == "mkdir" else self.kind(path))
        if self.rolling and op != "create":
            label = (self.phase, op + "+roll", label[2])
        self.ops.append(label)
        if self.crash_at is not None and len(self.ops) >= self.crash_at:
            self.crash_label = label
            self._crash_locked()
            raise PowerLost(errno.EIO, f"power lost (before {op} {path})")

    # -- the crash ---------------------------------------------------------------------------------
    def crash(self) -> None:
        with self._cond:
            if not self.crashed:
                self._crash_locked()

    def _keep(self, n: int) -> int:
        """How many of ``n`` unsynced operations of one file or directory survive."""
        if n == 0:
            return 0
        mode = self.mode
        if mode == "mixed":
            mode = self.rng.choice(("drop", "all", "prefix"))
        if mode == "drop":
            return 0
        if mode == "all":
            return n
        return self.rng.randint(0, n)

    def _crash_locked(self) -> None:
        self.crashed = True
        contents: dict[int, bytes] = {}
        for ino, node in self._inodes.items():
            data = bytearray(node.durable)
            k = self._keep(len(node.pending))
            for i, op in enumerate(node.pending[:k]):
                cut = None
                if i == k - 1 and op[0] == "write" and self.mode != "drop" and self.rng.random() < 0.5:
                    cut = self.rng.randint(0, len(op[2]))    # a torn last write
                _apply_file(data, op, cut)
            contents[ino] = bytes(data)
        listing: dict[str, dict[str, int]] = {}
        for d, node in self._dirs.items():
            entries = dict(node.durable)
            for op in node.pending[:self._keep(len(node.pending))]:
                _apply_dir(entries, op)
            listing[d] = entries
        image: dict[str, bytes] = {}
        todo = [self.root]              # only directories whose own entry survived are reachable
        while todo:
            d = todo.pop()
            rel = os.path.relpath(d, self.root)
            image[os.path.join(rel, "")] = b""   # the directory itself
            for name, ino in listing[d].items():
                if ino in self._dir_inos:
                    todo.append(self._dir_inos[ino])
                else:
                    image[os.path.normpath(os.path.join(rel, name))] = contents[ino]
        self.image = image
        self._cond.notify_all()

    def materialize(self, dest: str) -> str:
        """Write the crash image under ``dest`` (a new directory); returns ``dest``."""
        assert self.image is not None, "crash() first"
        for rel, data in sorted(self.image.items()):
            path = os.path.join(dest, rel)
            if rel.endswith(os.sep):
                os.makedirs(path, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        return dest

    # -- group commit --------------------------------------------------------------------------------
    def hold_first_fsync(self, writers: int) -> None:
        """Make the next group-commit fsync wait until ``writers`` distinct threads have written
        since this call (or the power is lost), so the committers that came after the leader queue
        behind its fsync and share the following one.

        Counted from this call on, not from the held fsync: when a writer gets in before the leader
        reaches its fsync, waiting for later writes would wait in vain (the timeout, 10 s, then
        releases it; that made this module slow). Only an fsync of a descriptor this object did not
        open is held: the log's group commit fsyncs a duplicate outside its write lock, while
        sealing a segment fsyncs the segment's own descriptor under that lock (holding that one
        would deadlock the writers it waits for)."""
        with self._cond:
            self._gate = writers
            self._writers = set()

    # -- FileIO ------------------------------------------------------------------------------------
    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        path = os.path.abspath(path)
        with self._cond:
            exists = path in self._live
            creating = bool(flags & os.O_CREAT) and not exists
            truncating = bool(flags & os.O_TRUNC) and exists
            if creating or truncating:
                self._step("create" if creating else "open_trunc", path)
            fd = os.open(path, flags, mode)
            st = os.fstat(fd)
            if creating:
                ino = self._new_inode(b"", path)
                self._by_real[(st.st_dev, st.st_ino)] = ino
                self._live[path] = ino
                self._dir(path).pending.append(("link", os.path.basename(path), ino))
                if path.endswith(".seg"):
                    self.rolling, self._rolling_dir = True, os.path.dirname(path)
            else:
                ino = self._by_real[(st.st_dev, st.st_ino)]
                if truncating:
                    self._inodes[ino].pending.append(("trunc", 0))
            self._opened.add(fd)
            return fd

    def close(self, fd: int) -> None:
        with self._cond:
            self._opened.discard(fd)
        os.close(fd)

    def write(self, fd: int, buffers) -> None:
        with self._cond:
            ino = self._ino_of_fd(fd)
            node = self._inodes[ino]
            self._step("write", node.path)
            data = b"".join(bytes(memoryview(b).cast("B")) for b in buffers)
            append = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)
            offset = os.fstat(fd).st_size if append else os.lseek(fd, 0, os.SEEK_CUR)
            super().write(fd, [data])
            node.pending.append(("write", offset, data))
            self._writers.add(threading.get_ident())
            self._cond.notify_all()

    def fsync(self, fd: int) -> None:
        with self._cond:
            if self._gate is not None and fd not in self._opened:
                n, self._gate = self._gate, None
                if not self._cond.wait_for(lambda: self.crashed or len(self._writers) >= n,
                                           timeout=10):
                    self.gate_timeouts += 1
            node = self._inodes[self._ino_of_fd(fd)]
            self._step("fsync", node.path)
            for op in node.pending:     # no real fsync: the model is the disk
                _apply_file(node.durable, op)
            node.pending.clear()
            self.fsyncs += 1

    def mkdir(self, path: str) -> None:
        path = os.path.abspath(path)
        with self._cond:
            parent = self._dir(path)
            self._step("mkdir", path)
            os.mkdir(path)
            parent.pending.append(("link", os.path.basename(path), self._new_dir_inode(path)))
            self._dirs[path] = _Dir({})

    def fsync_dir(self, path: str) -> None:
        path = os.path.abspath(path)
        with self._cond:
            self._step("fsync_dir", path)
            node = self._dirs.get(path)
            if node is None:     # above the root: not modelled
                return
            for op in node.pending:
                _apply_dir(node.durable, op)
            node.pending.clear()
            if path == self._rolling_dir:
                self.rolling = False

    def truncate(self, fd: int, size: int) -> None:
        with self._cond:
            node = self._inodes[self._ino_of_fd(fd)]
            self._step("truncate", node.path)
            os.ftruncate(fd, size)
            node.pending.append(("trunc", size))

    def replace(self, src: str, dst: str) -> None:
        src, dst = os.path.abspath(src), os.path.abspath(dst)
        if os.path.dirname(src) != os.path.dirname(dst):
            raise AssertionError("PowerLossIO models renames within one directory only")
        with self._cond:
            self._step("replace", dst)
            os.replace(src, dst)
            ino = self._live.pop(src)
            self._live[dst] = ino
            self._inodes[ino].path = dst
            self._dir(dst).pending.append(("rename", os.path.basename(src), os.path.basename(dst)))

    def unlink(self, path: str) -> None:
        path = os.path.abspath(path)
        with self._cond:
            if not self.crashed and not os.path.lexists(path):
                raise FileNotFoundError(errno.ENOENT, "no such file", path)
            self._step("unlink", path)
            os.unlink(path)
            self._live.pop(path, None)
            self._dir(path).pending.append(("unlink", os.path.basename(path)))

    def disk_free(self, path: str) -> int:
        return 1 << 40
